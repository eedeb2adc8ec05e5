//! The admin API's request parsers: query strings and JSON bodies as the
//! handlers read them, before any look-up in the configuration or the store.
//! Pure functions, so they are tested here and fuzzed whole (`fuzz/`) without
//! a server.
//!
//! Strict on purpose: a parameter given twice, a duplicate body key or an
//! unknown name is a 400 naming it, never a guess, because a bulk replay that
//! guessed wrong would replay the wrong deliveries.

use serde_json::Value;

use super::{ApiError, MAX_PAGE};
use crate::store::{DeliveryState, Millis, now_millis};

/// A query string's parameters, refusing any given twice: with two values
/// a reader could take either, and a bulk replay must never guess.
pub(super) fn query_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if pairs.iter().any(|(k, _)| *k == key) {
            return Err(ApiError::bad(format!("{}: given more than once", shown(&key))));
        }
        pairs.push((key.into_owned(), value.into_owned()));
    }
    Ok(pairs)
}

/// A parameter name as an error message shows it: an empty one as `''`.
fn shown(key: &str) -> &str {
    if key.is_empty() { "''" } else { key }
}

/// A request body as a JSON object; empty means `{}`. Duplicate keys are
/// refused (the strict parser ingress uses), for the same reason as
/// repeated query parameters.
pub(super) fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match crate::canonical::parse(body) {
        Err(crate::canonical::ParseError::DuplicateKey(key)) => {
            return Err(ApiError::bad(format!("{}: given more than once", shown(&key))));
        }
        Err(e) => return Err(ApiError::bad(format!("body: not JSON: {e}"))),
        Ok(_) => {}
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(ApiError::bad("body: expected a JSON object")),
        Err(e) => Err(ApiError::bad(format!("body: not JSON: {e}"))),
    }
}

pub(super) fn parse_limit(value: &str) -> Result<usize, ApiError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_PAGE).contains(n))
        .ok_or_else(|| ApiError::bad(format!("limit: expected a whole number from 1 to {MAX_PAGE}, got '{value}'")))
}

/// A cursor is a delivery id, as a page's `next_cursor` gives it.
pub(super) fn parse_cursor(value: &str) -> Result<String, ApiError> {
    if crate::store::DeliveryId::is_well_formed(value) {
        Ok(value.to_owned())
    } else {
        Err(ApiError::bad(format!("cursor: not a cursor this API gave: '{value}'")))
    }
}

/// An RFC 3339 time, or a duration meaning that long ago (`90m`, `24h`).
pub(super) fn parse_time(name: &str, value: &str, now: Millis) -> Result<Millis, ApiError> {
    if let Some(t) = crate::event::parse_rfc3339(value) {
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        return u64::try_from(ms).map_err(|_| ApiError::bad(format!("{name}: before 1970: '{value}'")));
    }
    if let Ok(ago) = humantime::parse_duration(value) {
        let ago = Millis::try_from(ago.as_millis())
            .map_err(|_| ApiError::bad(format!("{name}: duration too long: '{value}'")))?;
        return Ok(now.saturating_sub(ago));
    }
    Err(ApiError::bad(format!(
        "{name}: expected an RFC 3339 time (2026-11-20T08:00:00Z) or a duration ago (24h), got '{value}'"
    )))
}

/// The admin API's pure parsers, whole, for the fuzz targets (`fuzz/`):
/// query strings and request bodies as the handlers read them, minus the
/// look-ups in the configuration and the store.
#[doc(hidden)]
pub mod parse {
    use super::*;

    /// Parses a query string; the number of parameters, or the 400 message.
    pub fn query(query: &str) -> Result<usize, String> {
        let pairs = query_pairs(query).map_err(|ApiError(_, _, m)| m)?;
        for (key, value) in &pairs {
            check(key, value).map_err(|ApiError(_, _, m)| m)?;
        }
        Ok(pairs.len())
    }

    /// Parses a replay or discard body; the number of keys, or the 400 message.
    pub fn body(body: &[u8]) -> Result<usize, String> {
        let fields = json_object(body).map_err(|ApiError(_, _, m)| m)?;
        for (key, value) in &fields {
            match (key.as_str(), value) {
                ("max", v) => {
                    v.as_u64().ok_or_else(|| format!("{key}: expected a whole number"))?;
                }
                (_, Value::String(text)) => check(key, text).map_err(|ApiError(_, _, m)| m)?,
                _ => return Err(format!("{key}: expected a string")),
            }
        }
        Ok(fields.len())
    }

    fn check(key: &str, value: &str) -> Result<(), ApiError> {
        match key {
            "limit" => parse_limit(value).map(drop),
            "cursor" => parse_cursor(value).map(drop),
            "since" | "until" => parse_time(key, value, now_millis()).map(drop),
            "state" => DeliveryState::parse(value).map(drop).ok_or_else(|| ApiError::bad("state: unknown")),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    #[test]
    fn times_parse_as_rfc3339_or_duration_ago() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_time("since", "2027-01-15T08:00:00Z", now).ok(), Some(1_800_000_000_000));
        assert_eq!(parse_time("since", "24h", now).ok(), Some(now - 86_400_000));
        let ApiError(status, _, message) = parse_time("since", "yesterday", now).unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.starts_with("since: expected an RFC 3339 time"), "{message}");
    }

    #[test]
    fn repeated_query_parameters_and_duplicate_body_keys_are_refused() {
        let ApiError(status, _, message) = query_pairs("state=dead&state=pending").unwrap_err();
        assert_eq!((status, message.as_str()), (StatusCode::BAD_REQUEST, "state: given more than once"));
        // Encoded spellings of one name are one name.
        assert!(query_pairs("state=dead&%73tate=pending").is_err());
        assert_eq!(query_pairs("=x&=y").unwrap_err().2, "'': given more than once");
        assert_eq!(query_pairs("state=dead&limit=3").unwrap().len(), 2);
        let ApiError(_, _, message) = json_object(br#"{"state":"dead","state":"delivered"}"#).unwrap_err();
        assert_eq!(message, "state: given more than once");
        let ApiError(_, _, message) = json_object(br#"{"state":"dead","st\u0061te":"delivered"}"#).unwrap_err();
        assert_eq!(message, "state: given more than once");
        assert!(json_object(b" ").unwrap().is_empty());
        assert!(json_object(b"[]").is_err());
        assert_eq!(json_object(br#"{"state":"dead","max":2}"#).unwrap().len(), 2);
    }

    #[test]
    fn the_fuzzed_parsers_accept_and_refuse_like_the_handlers() {
        assert_eq!(parse::query("limit=5&state=dead&since=24h"), Ok(3));
        assert_eq!(parse::query("state=dead&state=dead"), Err("state: given more than once".into()));
        assert!(parse::query("limit=0").unwrap_err().starts_with("limit:"));
        assert_eq!(parse::body(br#"{"state":"dead","max":3,"cursor":"dlv_0190a1b2c3d4e5f60718293a4b5c"}"#), Ok(3));
        assert!(parse::body(br#"{"max":"3"}"#).is_err());
        assert!(parse::body(br#"{"cursor":"dlv_x"}"#).unwrap_err().starts_with("cursor:"));
    }

    #[test]
    fn cursors_and_limits_are_checked() {
        assert!(parse_cursor("dlv_0190a1b2c3d4e5f60718293a4b5c").is_ok());
        assert!(parse_cursor(crate::store::DeliveryId::new(now_millis()).as_str()).is_ok(), "every id is a cursor");
        assert!(parse_cursor("dlv_xyz").is_err());
        assert!(parse_cursor("").is_err());
        assert_eq!(parse_limit("1000").ok(), Some(1000));
        assert!(parse_limit("0").is_err());
        assert!(parse_limit("1001").is_err());
        assert!(parse_limit("ten").is_err());
    }
}
