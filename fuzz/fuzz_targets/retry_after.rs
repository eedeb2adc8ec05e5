//! `delivery::parse_retry_after` on arbitrary UTF-8.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = ipn_relay::delivery::parse_retry_after(s);
    }
});
