//! Nova webhooks: HMAC-SHA256 verification, timestamp tolerance and
//! normalisation.
//!
//! Nova either signs the raw body and sends the signature in `X-Signature`
//! (optionally `sha256=`-prefixed), or puts it in the body's `signature`
//! field, computed over the body without that field. For the in-body form we
//! cannot know how the sender serialised, so we accept the compact form in
//! received key order (numbers as written, or as JavaScript prints them) and
//! the canonical form. When the header is present, only the header counts: a
//! sender cannot fall back to a weaker form by adding a body field.

use std::time::Duration;

use http::HeaderMap;
use sha2::Sha256;
use time::OffsetDateTime;

use super::{
    ProviderError, SignedNumbers, Verified, covered_by_sorted_form, decode_hex_signature, dedupe_key, key_part,
    parse_signed, provider_time,
};
use crate::canonical::{self, ArrayStyle, Value};
use crate::config::Secret;
use crate::event::{self, Normalised, Subject};
use crate::mac;

pub const SIGNATURE_HEADER: &str = "x-signature";

type HmacSha256 = hmac::Hmac<Sha256>;

/// Verifies, checks the timestamp and normalises one webhook.
pub fn process(
    secrets: &[Secret],
    tolerance: Option<Duration>,
    headers: &HeaderMap,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<Normalised, ProviderError> {
    let verified = verify(secrets, headers, body)?;
    let n = normalise(&verified)?;
    let value = &verified.value;
    // Checked after the signature: only a genuine webhook learns it is stale.
    if let Some(tolerance) = tolerance {
        let ts = value
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(event::parse_rfc3339)
            .ok_or_else(|| ProviderError::BadRequest("`timestamp` must be an RFC 3339 time".into()))?;
        let skew = (now - ts).unsigned_abs();
        if skew > tolerance {
            return Err(ProviderError::StaleTimestamp);
        }
    }
    Ok(n)
}

/// Returns the parsed body if a secret signed it in an accepted form.
pub fn verify<'a>(secrets: &[Secret], headers: &HeaderMap, body: &'a [u8]) -> Result<Verified<'a>, ProviderError> {
    if let Some(header) = headers.get(SIGNATURE_HEADER) {
        let header = header.to_str().map_err(|_| ProviderError::InvalidSignature("malformed"))?;
        let hex = header.trim();
        let hex = hex.strip_prefix("sha256=").unwrap_or(hex);
        let sig = decode_hex_signature(hex, 32)?;
        if mac::matches_any::<HmacSha256>(secrets, body, &sig) {
            return parse_signed(body);
        }
        return Err(ProviderError::InvalidSignature("wrong"));
    }

    let value = canonical::parse(body).map_err(|_| ProviderError::InvalidSignature("missing"))?;
    let Value::Object(members) = &value else {
        return Err(ProviderError::InvalidSignature("missing"));
    };
    let sig = match value.get("signature") {
        Some(Value::String(s)) => decode_hex_signature(s, 32)?,
        Some(_) => return Err(ProviderError::InvalidSignature("malformed")),
        None => return Err(ProviderError::InvalidSignature("missing")),
    };
    let unsigned = Value::Object(members.iter().filter(|(k, _)| k != "signature").cloned().collect());
    // Received order with literals as written authenticates the literals;
    // the re-serialised forms authenticate only their ECMAScript text.
    if mac::matches_any::<HmacSha256>(secrets, unsigned.to_compact().as_bytes(), &sig) {
        return Ok(Verified::new(value, body, SignedNumbers::AsWritten));
    }
    if mac::matches_any::<HmacSha256>(secrets, canonical::stringify(&unsigned).as_bytes(), &sig) {
        return Ok(Verified::new(value, body, SignedNumbers::Ecmascript));
    }
    // The sorted form leaves `__proto__` out: a body verified through it
    // must not carry one.
    if mac::matches_any::<HmacSha256>(secrets, canonical::canonical(&unsigned, ArrayStyle::Array).as_bytes(), &sig) {
        covered_by_sorted_form(&value)?;
        return Ok(Verified::new(value, body, SignedNumbers::Ecmascript));
    }
    Err(ProviderError::InvalidSignature("wrong"))
}

/// Lowercase hex HMAC-SHA256 of exactly `msg`: the `X-Signature` Nova sends.
pub fn sign(secret: &[u8], msg: &[u8]) -> String {
    mac::hex::<HmacSha256>(secret, msg)
}

/// `word.word` in lowercase letters, digits and underscores.
fn is_dotted_type(s: &str) -> bool {
    let word = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    matches!(s.split_once('.'), Some((a, b)) if word(a) && word(b))
}

/// Maps a verified webhook to the normalised event (docs/event-format.md).
pub fn normalise(verified: &Verified) -> Result<Normalised, ProviderError> {
    let v = &verified.value;
    let text_field = |obj: &Value, key: &str| verified.text(obj, key);
    let Some(Value::String(name)) = v.get("event") else {
        return Err(ProviderError::BadRequest("`event` must be a string".into()));
    };
    let data = match v.get("data") {
        Some(d @ Value::Object(_)) => d,
        _ => return Err(ProviderError::BadRequest("`data` must be an object".into())),
    };
    let id = text_field(data, "id")
        .ok_or_else(|| ProviderError::BadRequest("`data.id` must be a string or number".into()))?;
    if !matches!(v.get("timestamp"), Some(Value::String(_))) {
        return Err(ProviderError::BadRequest("`timestamp` must be an RFC 3339 time".into()));
    }
    // The five documented events keep their names, as does any other
    // `word.word` event; anything else is `unknown` but still delivered.
    let (event_type, subject_kind) = if is_dotted_type(name) {
        (name.to_string(), name.split('.').next().unwrap_or_default().to_owned())
    } else {
        ("unknown".to_owned(), "unknown".to_owned())
    };
    Ok(Normalised {
        dedupe_key: dedupe_key("nova", &[name.to_string().into(), key_part(data.get("id"))]),
        event_type,
        provider_status: Some(name.to_string()),
        subject: Subject { kind: subject_kind, id: Some(id) },
        amount: text_field(data, "amount"),
        currency: text_field(data, "currency"),
        network: text_field(data, "network"),
        user_id: text_field(data, "userId"),
        order_id: text_field(data, "orderId"),
        tx_hash: text_field(data, "txHash"),
        occurred_at: provider_time(v.get("timestamp")),
        payload: verified.payload(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(body: &[u8]) -> Result<Normalised, ProviderError> {
        normalise(&super::super::verified_as_written(body))
    }
    use http::HeaderValue;
    use time::macros::datetime;

    const DEPOSIT: &str = include_str!("../../tests/fixtures/nova/deposit-confirmed.json");
    const AT: OffsetDateTime = datetime!(2025-03-06 00:06:00 UTC);
    const FIVE_MIN: Option<Duration> = Some(Duration::from_secs(300));

    fn secrets() -> Vec<Secret> {
        vec![Secret::new("old"), Secret::new("nova-secret")]
    }

    fn with_header(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SIGNATURE_HEADER, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn header_signature_over_raw_body_with_or_without_prefix() {
        let sig = sign(b"nova-secret", DEPOSIT.as_bytes());
        for h in [sig.clone(), format!("sha256={sig}"), sig.to_uppercase()] {
            let n = process(&secrets(), FIVE_MIN, &with_header(&h), DEPOSIT.as_bytes(), AT).unwrap();
            assert_eq!(n.event_type, "deposit.confirmed");
        }
        let wrong = sign(b"nope", DEPOSIT.as_bytes());
        assert_eq!(
            process(&secrets(), FIVE_MIN, &with_header(&wrong), DEPOSIT.as_bytes(), AT),
            Err(ProviderError::InvalidSignature("wrong"))
        );
        assert_eq!(
            process(&secrets(), FIVE_MIN, &with_header("sha256=abc"), DEPOSIT.as_bytes(), AT),
            Err(ProviderError::InvalidSignature("malformed"))
        );
        assert_eq!(
            process(&secrets(), FIVE_MIN, &HeaderMap::new(), DEPOSIT.as_bytes(), AT),
            Err(ProviderError::InvalidSignature("missing"))
        );
    }

    fn with_body_signature(unsigned: &Value, signed_form: &str) -> Vec<u8> {
        let sig = sign(b"nova-secret", signed_form.as_bytes());
        let Value::Object(mut m) = unsigned.clone() else { unreachable!() };
        m.push(("signature".into(), Value::String(sig.into())));
        Value::Object(m).to_compact().into_bytes()
    }

    #[test]
    fn in_body_signature_over_received_order_or_canonical_form() {
        let unsigned = canonical::parse(DEPOSIT.as_bytes()).unwrap();
        for form in [unsigned.to_compact(), canonical::canonical(&unsigned, ArrayStyle::Array)] {
            let body = with_body_signature(&unsigned, &form);
            let n = process(&secrets(), FIVE_MIN, &HeaderMap::new(), &body, AT).unwrap();
            assert_eq!(n.subject.id.as_deref(), Some("dep_001"));
        }
        // Signed over something else: refused.
        let body = with_body_signature(&unsigned, "{}");
        assert_eq!(
            process(&secrets(), FIVE_MIN, &HeaderMap::new(), &body, AT),
            Err(ProviderError::InvalidSignature("wrong"))
        );
    }

    #[test]
    fn in_body_signature_over_a_reserialised_form_passes_on_the_signed_numbers() {
        let body =
            br#"{"event":"deposit.confirmed","data":{"id":"d1","amount":1e2},"timestamp":"2025-03-06T00:05:00Z"}"#;
        let unsigned = canonical::parse(body).unwrap();
        // Signed as JavaScript would print it: amount 100, not 1e2.
        let signed = with_body_signature(&unsigned, &canonical::stringify(&unsigned));
        let n = process(&secrets(), FIVE_MIN, &HeaderMap::new(), &signed, AT).unwrap();
        assert_eq!(n.amount.as_deref(), Some("100"));
        // Signed over the literals as written: 1e2 is authentic and kept.
        let signed = with_body_signature(&unsigned, &unsigned.to_compact());
        let n = process(&secrets(), FIVE_MIN, &HeaderMap::new(), &signed, AT).unwrap();
        assert_eq!(n.amount.as_deref(), Some("1e2"));
    }

    #[test]
    fn in_body_signature_over_the_sorted_form_refuses_members_it_leaves_out() {
        let unsigned = canonical::parse(DEPOSIT.as_bytes()).unwrap();
        let sig = sign(b"nova-secret", canonical::canonical(&unsigned, ArrayStyle::Array).as_bytes());
        let with = |member: &str, nested: bool| {
            let mut text = String::from_utf8(unsigned.to_compact().into_bytes()).unwrap();
            if nested {
                text = text.replacen(r#""data":{"#, &format!(r#""data":{{{member},"#), 1);
            } else {
                text.insert_str(1, &format!("{member},"));
            }
            text.pop();
            format!(r#"{text},"signature":"{sig}"}}"#)
        };
        // The sorted form verifies without the extra member...
        let plain = with_body_signature(&unsigned, &canonical::canonical(&unsigned, ArrayStyle::Array));
        assert!(process(&secrets(), FIVE_MIN, &HeaderMap::new(), &plain, AT).is_ok());
        // ...and the same signature cannot carry one in.
        for (body, path) in [
            (with(r#""__proto__":{"event":"withdrawal.completed"}"#, false), "__proto__"),
            (with(r#""__proto__":{"amount":"1000000"}"#, true), "data.__proto__"),
        ] {
            assert_eq!(
                process(&secrets(), FIVE_MIN, &HeaderMap::new(), body.as_bytes(), AT),
                Err(ProviderError::UnsignedContent(path.into())),
                "{body}"
            );
        }
        // Signed in received order, where the member is part of the signed
        // text, it is covered and passes on.
        let body = with(r#""__proto__":{"x":1}"#, true);
        let value = canonical::parse(body.as_bytes()).unwrap();
        let Value::Object(members) = &value else { unreachable!() };
        let unsigned_with = Value::Object(members.iter().filter(|(k, _)| k != "signature").cloned().collect());
        let body = with_body_signature(&unsigned_with, &unsigned_with.to_compact());
        let n = process(&secrets(), FIVE_MIN, &HeaderMap::new(), &body, AT).unwrap();
        assert!(n.payload.contains("__proto__"), "{}", n.payload);
    }

    #[test]
    fn a_signed_timestamp_past_the_last_utc_year_is_a_bad_request_not_a_panic() {
        // Found by the nova fuzz target.
        let body = br#"{"event":"deposit.confirmed","data":{"id":"d1"},"timestamp":"9999-12-31T23:59:59-01:00"}"#;
        let h = with_header(&sign(b"nova-secret", body));
        assert!(matches!(process(&secrets(), FIVE_MIN, &h, body, AT), Err(ProviderError::BadRequest(_))));
        let n = process(&secrets(), None, &h, body, AT).unwrap();
        assert_eq!(n.occurred_at, None);
    }

    #[test]
    fn header_wins_over_body_signature() {
        let unsigned = canonical::parse(DEPOSIT.as_bytes()).unwrap();
        let body = with_body_signature(&unsigned, &unsigned.to_compact());
        let wrong = sign(b"nope", &body);
        assert_eq!(
            process(&secrets(), FIVE_MIN, &with_header(&wrong), &body, AT),
            Err(ProviderError::InvalidSignature("wrong"))
        );
    }

    #[test]
    fn stale_timestamps_are_refused_in_both_directions() {
        let sig = sign(b"nova-secret", DEPOSIT.as_bytes());
        let h = with_header(&sig);
        let late = datetime!(2025-03-06 00:10:01 UTC);
        let early = datetime!(2025-03-06 00:00:00 UTC) - Duration::from_secs(1);
        assert_eq!(process(&secrets(), FIVE_MIN, &h, DEPOSIT.as_bytes(), late), Err(ProviderError::StaleTimestamp));
        assert_eq!(process(&secrets(), FIVE_MIN, &h, DEPOSIT.as_bytes(), early), Err(ProviderError::StaleTimestamp));
        assert!(process(&secrets(), FIVE_MIN, &h, DEPOSIT.as_bytes(), datetime!(2025-03-06 00:10:00 UTC)).is_ok());
        // Disabled tolerance accepts any time.
        assert!(process(&secrets(), None, &h, DEPOSIT.as_bytes(), late).is_ok());
    }

    #[test]
    fn normalises_the_documented_deposit() {
        let n = norm(DEPOSIT.as_bytes()).unwrap();
        assert_eq!(n.event_type, "deposit.confirmed");
        assert_eq!(n.provider_status.as_deref(), Some("deposit.confirmed"));
        assert_eq!(n.subject, Subject { kind: "deposit".into(), id: Some("dep_001".into()) });
        assert_eq!(n.amount.as_deref(), Some("100"));
        assert_eq!(n.currency.as_deref(), Some("USDT"));
        assert_eq!(n.network.as_deref(), Some("TRC20"));
        assert_eq!(n.user_id.as_deref(), Some("user_8a2f"));
        assert_eq!(n.tx_hash.as_deref(), Some("T9f8a2...3b1c"));
        assert_eq!(n.occurred_at.as_deref(), Some("2025-03-06T00:05:00.000Z"));
    }

    #[test]
    fn event_names_pass_through_or_become_unknown() {
        let t = |e: &str| {
            let body = format!(r#"{{"event":"{e}","data":{{"id":1}},"timestamp":"2025-03-06T00:05:00Z"}}"#);
            norm(body.as_bytes()).unwrap().event_type
        };
        for known in ["deposit.confirmed", "deposit.failed", "payout.completed", "payout.failed", "transfer.completed"]
        {
            assert_eq!(t(known), known);
        }
        assert_eq!(t("refund.created"), "refund.created");
        assert_eq!(t("weird"), "unknown");
        assert_eq!(t("a.b.c"), "unknown");
        assert_eq!(t("Deposit.Confirmed"), "unknown");
    }

    #[test]
    fn missing_required_fields_are_bad_requests() {
        for body in [
            r#"{"data":{"id":1},"timestamp":"2025-03-06T00:05:00Z"}"#,
            r#"{"event":"deposit.confirmed","timestamp":"2025-03-06T00:05:00Z"}"#,
            r#"{"event":"deposit.confirmed","data":{},"timestamp":"2025-03-06T00:05:00Z"}"#,
            r#"{"event":"deposit.confirmed","data":{"id":1}}"#,
        ] {
            let sig = sign(b"nova-secret", body.as_bytes());
            let r = process(&secrets(), FIVE_MIN, &with_header(&sig), body.as_bytes(), AT);
            assert!(matches!(r, Err(ProviderError::BadRequest(_))), "{body}: {r:?}");
        }
    }

    #[test]
    fn dedupe_key_is_event_and_data_id() {
        let k = |body: &str| norm(body.as_bytes()).unwrap().dedupe_key;
        let a = k(r#"{"event":"deposit.confirmed","data":{"id":"d1","amount":1},"timestamp":"2025-03-06T00:05:00Z"}"#);
        assert_eq!(
            a,
            k(r#"{"event":"deposit.confirmed","data":{"id":"d1","amount":2},"timestamp":"2025-03-07T00:05:00Z"}"#)
        );
        assert_ne!(a, k(r#"{"event":"deposit.failed","data":{"id":"d1"},"timestamp":"2025-03-06T00:05:00Z"}"#));
    }
}
