//! HMAC, the one way the relay signs and checks signatures: providers'
//! signatures on their callbacks, and ours on every delivery.

use hmac::{KeyInit, Mac};

use crate::config::Secret;

/// HMAC-`M` under `key` of the concatenation of `parts`.
pub fn mac<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC takes a key of any length; `new_from_slice` only fails for
    // fixed-size MACs, which these are not.
    let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Lowercase hex HMAC-`M` of exactly `msg`: what providers send.
pub fn hex<M: Mac + KeyInit>(key: &[u8], msg: &[u8]) -> String {
    hex::encode(mac::<M>(key, &[msg]))
}

/// Whether `sig` is the HMAC-`M` of `msg` under any of `secrets`, each
/// compared in constant time.
pub fn matches_any<M: Mac + KeyInit>(secrets: &[Secret], msg: &[u8], sig: &[u8]) -> bool {
    secrets.iter().any(|secret| {
        let Ok(mut mac) = <M as KeyInit>::new_from_slice(secret.expose()) else { return false };
        mac.update(msg);
        mac.verify_slice(sig).is_ok()
    })
}
