//! The admin API's parsers (`admin::parse`): a query string and a request
//! body, as the handlers read them. Input: the query, a newline, the body.
//! Refused or accepted, never a panic; whatever is refused says which
//! parameter.
#![no_main]

use ipn_relay::admin::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (query, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(query) = std::str::from_utf8(query) {
        if let Err(message) = parse::query(query) {
            assert!(message.contains(':') || message.starts_with("unknown"), "{message}");
        }
    }
    if let Err(message) = parse::body(body) {
        assert!(message.contains(':'), "{message}");
    }
});
