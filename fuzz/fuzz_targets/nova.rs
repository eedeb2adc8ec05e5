//! `providers::nova::process`. Input: one flags byte, the `X-Signature`
//! header value, a newline, the body (no newline: no header, all body).
//! Flags: bit 0 disables the timestamp tolerance; bits 1–2 pick the form
//! the in-body signature is computed over; bits 3–7 move "now" in hours.
//! Each input runs with the fuzzed header, with a valid header signature
//! over the raw body, with no header at all, and (when the body is an
//! object) re-signed in the body's `signature` field, no header. An
//! accepted webhook's payload must be JSON our parser accepts.
#![no_main]

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use ipn_relay::canonical::{self, ArrayStyle, Value};
use ipn_relay::config::Secret;
use ipn_relay::providers::nova::{self, SIGNATURE_HEADER};
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;
use time::macros::datetime;

const SECRET: &[u8] = b"nova-fuzz-secret";
/// A little after the documented deposit's timestamp.
const AT: OffsetDateTime = datetime!(2025-03-06 00:06:00 UTC);

fn headers(sig: Option<HeaderValue>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(sig) = sig {
        h.insert(SIGNATURE_HEADER, sig);
    }
    h
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let (header, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (HeaderValue::from_bytes(&rest[..i]).ok(), &rest[i + 1..]),
        None => (None, rest),
    };
    let tolerance = (flags & 1 == 0).then_some(Duration::from_secs(300));
    let now = AT + Duration::from_secs(3600 * u64::from(flags >> 3));
    let secrets = [Secret::new("old-rotated"), Secret::new(SECRET)];
    let run = |h: &HeaderMap, body: &[u8]| {
        if let Ok(n) = nova::process(&secrets, tolerance, h, body, now) {
            if let Err(e) = canonical::parse(n.payload.as_bytes()) {
                panic!("accepted webhook's payload {:?} is not JSON: {e}", n.payload);
            }
        }
    };

    let has_header = header.is_some();
    run(&headers(header), body);
    run(&headers(Some(HeaderValue::from_str(&nova::sign(SECRET, body)).unwrap())), body);
    if has_header {
        run(&HeaderMap::new(), body);
    }

    // The in-body form: drop any `signature` member, sign what is left the
    // way a sender might have serialised it, and append the signature.
    let Ok(Value::Object(members)) = canonical::parse(body) else { return };
    let unsigned = Value::Object(members.into_iter().filter(|(k, _)| k != "signature").collect());
    let form = match (flags >> 1) & 3 {
        0 => unsigned.to_compact(),
        1 => canonical::stringify(&unsigned),
        _ => canonical::canonical(&unsigned, ArrayStyle::Array),
    };
    let Value::Object(mut m) = unsigned else { unreachable!() };
    m.push(("signature".into(), Value::String(nova::sign(SECRET, form.as_bytes()).into())));
    run(&HeaderMap::new(), Value::Object(m).to_compact().as_bytes());
});
