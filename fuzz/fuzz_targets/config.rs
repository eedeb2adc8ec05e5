//! `Config::parse` on arbitrary UTF-8: refused or accepted, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = ipn_relay::config::Config::parse(text, Path::new("fuzz.toml")) {
            // What `check-config` prints for an accepted file.
            let _ = cfg.summary();
        }
    }
});
