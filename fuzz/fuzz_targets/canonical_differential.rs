//! Differential test of `canonical::parse` against `serde_json`.
//!
//! Whenever our strict parser accepts, serde_json must accept the same bytes
//! (the one expected exception: serde_json refuses a number that overflows
//! f64, which we accept and print as `null` like JSON.stringify), must read
//! the same value, and our canonical output must parse back with serde_json
//! to that value. "Same" follows src/canonical.rs: objects compare as maps,
//! `"__proto__"` keys are dropped by the canonical form (sortObject assigns
//! them as the prototype), numbers compare as f64, and an overflowing number
//! is `null` in the canonical form.
#![no_main]

use std::collections::BTreeMap;

use ipn_relay::canonical::{self, ArrayStyle, Value};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Norm {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Norm>),
    Obj(BTreeMap<String, Norm>),
}

/// Our value, normalised. `canonical_rules` applies what the canonical form
/// does: `__proto__` dropped, overflowing numbers as null.
fn from_ours(v: &Value, canonical_rules: bool) -> Norm {
    match v {
        Value::Null => Norm::Null,
        Value::Bool(b) => Norm::Bool(*b),
        Value::Number(n) => {
            let f: f64 = n.parse().expect("a literal our parser accepted is a valid f64 literal");
            if canonical_rules && !f.is_finite() { Norm::Null } else { Norm::Num(f) }
        }
        Value::String(s) => Norm::Str(s.to_string()),
        Value::Array(items) => Norm::Arr(items.iter().map(|i| from_ours(i, canonical_rules)).collect()),
        Value::Object(members) => Norm::Obj(
            members
                .iter()
                .filter(|(k, _)| !(canonical_rules && k == "__proto__"))
                .map(|(k, v)| (k.to_string(), from_ours(v, canonical_rules)))
                .collect(),
        ),
    }
}

fn from_serde(v: &serde_json::Value, drop_proto: bool) -> Norm {
    match v {
        serde_json::Value::Null => Norm::Null,
        serde_json::Value::Bool(b) => Norm::Bool(*b),
        serde_json::Value::Number(n) => Norm::Num(n.as_f64().expect("finite number")),
        serde_json::Value::String(s) => Norm::Str(s.clone()),
        serde_json::Value::Array(items) => Norm::Arr(items.iter().map(|i| from_serde(i, drop_proto)).collect()),
        serde_json::Value::Object(m) => Norm::Obj(
            m.iter()
                .filter(|(k, _)| !(drop_proto && k.as_str() == "__proto__"))
                .map(|(k, v)| (k.clone(), from_serde(v, drop_proto)))
                .collect(),
        ),
    }
}

fn has_overflowing_number(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.parse::<f64>().is_ok_and(|f| f.is_infinite()),
        Value::Array(items) => items.iter().any(has_overflowing_number),
        Value::Object(members) => members.iter().any(|(_, v)| has_overflowing_number(v)),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(ours) = canonical::parse(data) else { return };
    let expected = match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(original) => {
            // Both parsers must read the same value from the same bytes.
            assert_eq!(from_ours(&ours, false), from_serde(&original, false), "parsers disagree on {data:?}");
            from_serde(&original, true)
        }
        Err(e) => {
            let text = e.to_string();
            assert!(
                has_overflowing_number(&ours) && text.starts_with("number out of range"),
                "we accept what serde_json refuses ({text}): {data:?}"
            );
            from_ours(&ours, true)
        }
    };
    let out = canonical::canonical(&ours, ArrayStyle::Array);
    let back: serde_json::Value = match serde_json::from_str(&out) {
        Ok(v) => v,
        Err(e) => panic!("serde_json refuses our canonical output {out:?}: {e}"),
    };
    assert_eq!(from_serde(&back, false), expected, "canonical output {out:?} changes the value of {data:?}");
});
