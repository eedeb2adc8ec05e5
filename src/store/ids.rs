//! The ids of events and deliveries, as types: a function that wants a
//! delivery cannot be handed an event's id.
//!
//! - [`EventId`]: `evt_` and 128 bits of SHA-256 over the source name and
//!   the dedupe key, so the same callback always has the same id.
//! - [`DeliveryId`]: `dlv_`, 12 hex digits of its creation time in
//!   milliseconds, 16 random hex digits; ids sort by creation time, which is
//!   what cursors rely on.
//!
//! Ids read back from a store or taken from a request are wrapped as they
//! are: they only name a record, and one that names nothing finds nothing.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Millis;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> $name {
                $name(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> $name {
                $name(id.to_owned())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id_type!(
    /// The id of an event: the same for every copy of one callback.
    EventId
);

id_type!(
    /// The id of a delivery: one event to one endpoint.
    DeliveryId
);

impl EventId {
    /// The id of the event `source` admits under `dedupe_key`.
    pub fn derive(source: &str, dedupe_key: &str) -> EventId {
        let mut h = Sha256::new();
        h.update(source.as_bytes());
        h.update([0u8]);
        h.update(dedupe_key.as_bytes());
        let digest = h.finalize();
        EventId(format!("evt_{}", hex::encode(&digest[..16])))
    }
}

impl DeliveryId {
    /// A new id for a delivery created at `now`.
    pub fn new(now: Millis) -> DeliveryId {
        DeliveryId(format!("dlv_{:012x}{:016x}", now, rand::random::<u64>()))
    }

    /// When the delivery was created, from the time its id begins with.
    pub fn created_at(&self) -> Option<Millis> {
        u64::from_str_radix(self.0.strip_prefix("dlv_")?.get(..12)?, 16).ok()
    }

    /// Whether `s` has the form [`DeliveryId::new`] gives: the check for a
    /// cursor taken from a request.
    pub fn is_well_formed(s: &str) -> bool {
        s.strip_prefix("dlv_").is_some_and(|hex| hex.len() == 28 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_stable_and_separate_source_from_key() {
        assert_eq!(EventId::derive("np", "a"), EventId::derive("np", "a"));
        assert_ne!(EventId::derive("np", "a"), EventId::derive("np2", "a"));
        assert_ne!(EventId::derive("np", "xa"), EventId::derive("npx", "a"));
        let id = EventId::derive("np", "a");
        assert!(id.as_str().starts_with("evt_") && id.as_str().len() == 4 + 32, "{id}");
    }

    #[test]
    fn delivery_ids_carry_their_time_and_sort_by_it() {
        let a = DeliveryId::new(1_700_000_000_000);
        let b = DeliveryId::new(1_700_000_000_001);
        assert!(a < b);
        assert_eq!(a.created_at(), Some(1_700_000_000_000));
        assert!(DeliveryId::is_well_formed(a.as_str()));
        assert!(!DeliveryId::is_well_formed("dlv_xyz"));
        assert_eq!(DeliveryId::from("evt_1").created_at(), None);
    }

    #[test]
    fn ids_serialise_as_plain_strings() {
        let id = DeliveryId::from("dlv_0000000000010000000000000001");
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""dlv_0000000000010000000000000001""#);
        assert_eq!(format!("{id} {id:?}"), r#"dlv_0000000000010000000000000001 "dlv_0000000000010000000000000001""#);
    }
}
