//! `canonical::parse` on arbitrary bytes. Whatever it accepts, every output
//! form must be acceptable to it again, and the compact form must parse back
//! to the same value.
#![no_main]

use ipn_relay::canonical::{self, ArrayStyle};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = canonical::parse(data) else { return };
    for (form, out) in [
        ("canonical Array", canonical::canonical(&v, ArrayStyle::Array)),
        ("canonical IndexedObject", canonical::canonical(&v, ArrayStyle::IndexedObject)),
        ("stringify", canonical::stringify(&v)),
    ] {
        if let Err(e) = canonical::parse(out.as_bytes()) {
            panic!("{form} output {out:?} is refused by parse: {e}");
        }
    }
    let compact = v.to_compact();
    match canonical::parse(compact.as_bytes()) {
        Ok(back) => assert_eq!(back, v, "to_compact output {compact:?} parses to a different value"),
        Err(e) => panic!("to_compact output {compact:?} is refused by parse: {e}"),
    }
});
