//! `providers::nowpayments::process`. Input: the `x-nowpayments-sig` header
//! value, a newline, the body (no newline: no header, all body). Besides the
//! fuzzed header, the body is also tried with valid signatures so the fuzzer
//! gets past the HMAC: NOWPayments' own (`sign`, the indexed sortObject
//! form), the raw body's (`hex_hmac`) and the array-keeping canonical form's.
//! An accepted IPN's payload must be JSON our parser accepts.
#![no_main]

use http::{HeaderMap, HeaderValue};
use ipn_relay::canonical::{self, ArrayStyle};
use ipn_relay::config::Secret;
use ipn_relay::providers::nowpayments::{self, SIGNATURE_HEADER};
use libfuzzer_sys::fuzz_target;

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

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (HeaderValue::from_bytes(&data[..i]).ok(), &data[i + 1..]),
        None => (None, data),
    };
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
