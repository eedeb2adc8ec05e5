//! Provider callbacks: proving they are genuine and normalising them.
//!
//! Each provider module owns its signature check and its mapping to the
//! normalised event; nothing else in the crate knows a provider's format.
//! Both are pure functions of the headers, the body bytes and the clock.

pub mod diagnose;
pub mod nova;
pub mod nowpayments;

use http::HeaderMap;
use time::OffsetDateTime;

use crate::canonical::{self, Value};
use crate::config::{ProviderKind, Source};
use crate::event::{self, Normalised};

#[cfg(test)]
pub(crate) fn verified_as_written(body: &[u8]) -> Verified<'_> {
    Verified::new(canonical::parse(body).expect("test body is JSON"), body, SignedNumbers::AsWritten)
}

/// Why a callback is refused. Messages never contain secrets or the
/// signature we expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Missing, malformed or wrong signature. The reason is for debug logs.
    #[error("signature {0}")]
    InvalidSignature(&'static str),
    #[error("timestamp outside the accepted tolerance")]
    StaleTimestamp,
    #[error("{0}")]
    BadRequest(String),
    /// Genuinely signed, but only through a re-serialised form that leaves
    /// out a member the body carries: refused whole rather than passed on
    /// with an unsigned part.
    #[error(
        "`{0}` is not covered by the signature: only a re-serialised form of the body verified, and that form leaves this member out"
    )]
    UnsignedContent(String),
}

/// Verifies and normalises one callback for `source`.
pub fn process(
    source: &Source,
    headers: &HeaderMap,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<Normalised, ProviderError> {
    match source.kind {
        ProviderKind::Nowpayments => nowpayments::process(&source.secrets, headers, body),
        ProviderKind::Nova => nova::process(&source.secrets, source.timestamp_tolerance, headers, body, now),
    }
}

/// Decodes a hex signature of `len` bytes, in either case.
fn decode_hex_signature(text: &str, len: usize) -> Result<Vec<u8>, ProviderError> {
    let text = text.trim();
    if text.len() != len * 2 {
        return Err(ProviderError::InvalidSignature("malformed"));
    }
    hex::decode(text).map_err(|_| ProviderError::InvalidSignature("malformed"))
}

/// Which text of the body's numbers a signature covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedNumbers {
    /// The signed bytes held the literals as they arrived (the raw body, or
    /// a compact form in received order with literals as written).
    AsWritten,
    /// Only a re-serialised form verified, in which numbers are printed the
    /// ECMAScript way. The literals in the body are then unauthenticated:
    /// `0.1` and `0.10000000000000000001` sign the same. What we pass on is
    /// the signed text.
    Ecmascript,
}

/// A body whose signature checked out.
#[derive(Debug, Clone)]
pub struct Verified<'a> {
    pub value: Value<'a>,
    raw: &'a [u8],
    numbers: SignedNumbers,
}

impl<'a> Verified<'a> {
    pub fn new(value: Value<'a>, raw: &'a [u8], numbers: SignedNumbers) -> Verified<'a> {
        Verified { value, raw, numbers }
    }

    /// A scalar field of `obj` as an id or amount string: strings as they
    /// are, numbers as signed. Null, absent, booleans and containers give
    /// `None`.
    fn text(&self, obj: &Value, key: &str) -> Option<String> {
        match obj.get(key)? {
            Value::String(s) => Some(s.to_string()),
            Value::Number(n) => match self.numbers {
                SignedNumbers::AsWritten => Some((*n).to_owned()),
                SignedNumbers::Ecmascript => Some(canonical::ecmascript_number(n)).filter(|t| t != "null"),
            },
            _ => None,
        }
    }

    /// The event's `payload`: the body itself when it was signed as is and
    /// is already compact, else its compact form with numbers as signed.
    fn payload(&self) -> String {
        match (self.numbers, std::str::from_utf8(self.raw)) {
            (SignedNumbers::AsWritten, Ok(text)) if canonical::is_compact(self.raw) => text.to_owned(),
            (SignedNumbers::AsWritten, _) => self.value.to_compact(),
            (SignedNumbers::Ecmascript, _) => canonical::stringify(&self.value),
        }
    }
}

/// Refuses a body verified through the sorted canonical form if it carries a
/// member that form leaves out (`__proto__`, at any depth). Stripping it
/// would also be safe; refusing tells the sender, and no genuine provider
/// body has one.
fn covered_by_sorted_form(value: &Value) -> Result<(), ProviderError> {
    match canonical::dropped_member(value) {
        Some(path) => Err(ProviderError::UnsignedContent(path)),
        None => Ok(()),
    }
}

/// The body of a raw-signed request, parsed: now a malformed body is the
/// sender's error, not a forgery.
fn parse_signed(body: &[u8]) -> Result<Verified<'_>, ProviderError> {
    let value = canonical::parse(body).map_err(|e| ProviderError::BadRequest(e.to_string()))?;
    Ok(Verified::new(value, body, SignedNumbers::AsWritten))
}

/// A dedupe-key component: numbers in their ECMAScript form, so `15` and
/// `15.0` are the same payment.
fn key_part(v: Option<&Value>) -> serde_json::Value {
    match v {
        Some(Value::String(s)) => s.to_string().into(),
        Some(Value::Number(n)) => canonical::ecmascript_number(n).into(),
        Some(Value::Bool(b)) => b.to_string().into(),
        Some(other @ (Value::Array(_) | Value::Object(_))) => {
            canonical::canonical(other, canonical::ArrayStyle::Array).into()
        }
        Some(Value::Null) | None => serde_json::Value::Null,
    }
}

/// An unambiguous key from its parts.
fn dedupe_key(kind: &str, parts: &[serde_json::Value]) -> String {
    let mut all = vec![serde_json::Value::from(kind)];
    all.extend_from_slice(parts);
    serde_json::Value::Array(all).to_string()
}

/// A provider time, as RFC 3339 text or epoch milliseconds, normalised to UTC
/// milliseconds. Unparseable times give `None` rather than refusing a
/// verified callback.
fn provider_time(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => event::parse_rfc3339(s).map(event::rfc3339_millis),
        Value::Number(n) => {
            let ms: f64 = n.parse().ok()?;
            // Up to 9999-12-31, the last time RFC 3339 can write.
            if !(0.0..=253_402_300_799_000.0).contains(&ms) {
                return None;
            }
            OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok().map(event::rfc3339_millis)
        }
        _ => None,
    }
}
