//! `providers::nowpayments::process`. Input: the `x-nowpayments-sig` header
//! value, a newline, the body (no newline: no header, all body). Besides the
//! fuzzed header, the body is also tried with valid signatures so the fuzzer
//! gets past the HMAC: NOWPayments' own (`sign`, the indexed sortObject
//! form), the raw body's (`hex_hmac`) and the array-keeping canonical form's.
//! An accepted IPN's payload must be JSON our parser accepts.
#![no_main]

use http::{HeaderMap, HeaderValue};
use ipn_relay::canonical::{self, ArrayStyle, Value};
use ipn_relay::config::Secret;
use ipn_relay::providers::nowpayments::{self, SIGNATURE_HEADER};
use libfuzzer_sys::fuzz_target;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// The shared vector's secret, so its real signature verifies as a fuzzed header.
const SECRET: &[u8] = b"ipn-secret-for-test";

fn headers(sig: Option<HeaderValue>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(sig) = sig {
        h.insert(SIGNATURE_HEADER, sig);
    }
    h
}

fn run(secrets: &[Secret], h: &HeaderMap, body: &[u8]) {
    if let Ok(n) = nowpayments::process(secrets, h, body) {
        if let Err(e) = canonical::parse(n.payload.as_bytes()) {
            panic!("accepted IPN's payload {:?} is not JSON: {e}", n.payload);
        }
    }
}

/// Known bug, reported, not fixed here (src/event.rs is outside this
/// change): `event::rfc3339_millis` calls `to_offset(UTC)`, which panics when
/// a valid RFC 3339 time with an offset lies outside time's range in UTC,
/// e.g. "9999-12-31T23:59:59-01:00". `provider_time` reaches it through
/// `updated_at` and `created_at` of a verified body. Such inputs are skipped so the run
/// can look for anything else; delete this guard once that is fixed.
fn hits_known_rfc3339_millis_panic(body: &[u8]) -> bool {
    let Ok(v) = canonical::parse(body) else { return false };
    ["updated_at", "created_at"].iter().any(|f| {
        v.get(f)
            .and_then(Value::as_str)
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
            .is_some_and(|t| t.checked_to_offset(UtcOffset::UTC).is_none())
    })
}

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (HeaderValue::from_bytes(&data[..i]).ok(), &data[i + 1..]),
        None => (None, data),
    };
    if hits_known_rfc3339_millis_panic(body) {
        return;
    }
    let secrets = [Secret::new("old-rotated"), Secret::new(SECRET)];
    run(&secrets, &headers(header), body);

    let mut sigs = vec![nowpayments::sign(SECRET, body), nowpayments::hex_hmac(SECRET, body)];
    if let Ok(v) = canonical::parse(body) {
        sigs.push(nowpayments::hex_hmac(SECRET, canonical::canonical(&v, ArrayStyle::Array).as_bytes()));
    }
    for sig in sigs {
        run(&secrets, &headers(Some(HeaderValue::from_str(&sig).unwrap())), body);
    }
});
