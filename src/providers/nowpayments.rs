//! NOWPayments IPNs: `x-nowpayments-sig` verification and normalisation.
//!
//! NOWPayments signs `JSON.stringify(sortObject(params))` with HMAC-SHA512.
//! The body usually arrives in exactly that form, so the raw bytes are tried
//! first: it is the cheapest check and the only one that needs no parsing.
//! Only when it fails do we rebuild the canonical form from the parsed body,
//! first keeping arrays (what a careful re-implementation signs), then with
//! arrays turned into index-keyed objects (what the documented `sortObject`
//! really does to them).

use http::HeaderMap;
use sha2::{Digest, Sha256, Sha512};

use super::{
    ProviderError, SignedNumbers, Verified, covered_by_sorted_form, decode_hex_signature, dedupe_key, key_part,
    parse_signed, provider_time,
};
use crate::canonical::{self, ArrayStyle, Value};
use crate::config::Secret;
use crate::event::{Normalised, Subject};
use crate::mac;

pub const SIGNATURE_HEADER: &str = "x-nowpayments-sig";

type HmacSha512 = hmac::Hmac<Sha512>;

/// Verifies the signature against every secret and accepted form, then
/// normalises the body.
pub fn process(secrets: &[Secret], headers: &HeaderMap, body: &[u8]) -> Result<Normalised, ProviderError> {
    normalise(&verify(secrets, headers, body)?)
}

/// Returns the parsed body if the signature matches any secret over any of
/// the accepted forms.
pub fn verify<'a>(secrets: &[Secret], headers: &HeaderMap, body: &'a [u8]) -> Result<Verified<'a>, ProviderError> {
    let header = headers.get(SIGNATURE_HEADER).ok_or(ProviderError::InvalidSignature("missing"))?;
    let header = header.to_str().map_err(|_| ProviderError::InvalidSignature("malformed"))?;
    let sig = decode_hex_signature(header, 64)?;

    if mac::matches_any::<HmacSha512>(secrets, body, &sig) {
        // Signed as sent; a body that is not acceptable JSON is now a client
        // error rather than a forgery.
        return parse_signed(body);
    }
    // An unverified body that does not parse is reported as a bad signature:
    // an unauthenticated sender learns nothing about our parser.
    let value = canonical::parse(body).map_err(|_| ProviderError::InvalidSignature("wrong"))?;
    // Both sorted forms leave `__proto__` out, so a body verified through
    // them must not carry one.
    let sorted = canonical::canonical(&value, ArrayStyle::Array);
    if mac::matches_any::<HmacSha512>(secrets, sorted.as_bytes(), &sig) {
        covered_by_sorted_form(&value)?;
        return Ok(Verified::new(value, body, SignedNumbers::Ecmascript));
    }
    if value.has_array() {
        let indexed = canonical::canonical(&value, ArrayStyle::IndexedObject);
        if mac::matches_any::<HmacSha512>(secrets, indexed.as_bytes(), &sig) {
            covered_by_sorted_form(&value)?;
            return Ok(Verified::new(value, body, SignedNumbers::Ecmascript));
        }
    }
    Err(ProviderError::InvalidSignature("wrong"))
}

/// The signature NOWPayments would send for `body`: HMAC-SHA512 over the
/// documented `sortObject` form, lowercase hex. A body that is not JSON is
/// signed as it is.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let msg = match canonical::parse(body) {
        Ok(v) => canonical::canonical(&v, ArrayStyle::IndexedObject).into_bytes(),
        Err(_) => body.to_vec(),
    };
    hex_hmac(secret, &msg)
}

/// Lowercase hex HMAC-SHA512 of exactly `msg`.
pub fn hex_hmac(secret: &[u8], msg: &[u8]) -> String {
    mac::hex::<HmacSha512>(secret, msg)
}

fn status_of(v: &Value, key: &str) -> Result<String, ProviderError> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s.to_string()),
        _ => Err(ProviderError::BadRequest(format!("`{key}` must be a string"))),
    }
}

fn payment_type(status: &str) -> &'static str {
    match status.to_ascii_lowercase().as_str() {
        "waiting" | "confirming" | "confirmed" | "sending" => "deposit.pending",
        "partially_paid" => "deposit.partially_paid",
        "finished" => "deposit.confirmed",
        "failed" | "expired" => "deposit.failed",
        "refunded" => "deposit.refunded",
        _ => "unknown",
    }
}

fn payout_type(status: &str) -> &'static str {
    match status.to_ascii_lowercase().as_str() {
        "creating" | "waiting" | "processing" | "sending" => "payout.pending",
        "finished" => "payout.completed",
        "failed" | "rejected" | "cancelled" => "payout.failed",
        _ => "unknown",
    }
}

fn present(v: &Value, key: &str) -> bool {
    v.get(key).is_some_and(|x| !x.is_null())
}

/// Maps a verified IPN to the normalised event (the table in docs/event-format.md).
pub fn normalise(verified: &Verified) -> Result<Normalised, ProviderError> {
    let v = &verified.value;
    let text_field = |obj: &Value, key: &str| verified.text(obj, key);
    if !matches!(v, Value::Object(_)) {
        return Err(ProviderError::BadRequest("IPN body must be a JSON object".into()));
    }
    let occurred_at = provider_time(v.get("updated_at").filter(|x| !x.is_null()).or_else(|| v.get("created_at")));
    let payload = verified.payload();

    if present(v, "payment_id") && present(v, "payment_status") {
        let status = status_of(v, "payment_status")?;
        let id = text_field(v, "payment_id")
            .ok_or_else(|| ProviderError::BadRequest("`payment_id` must be a string or number".into()))?;
        return Ok(Normalised {
            dedupe_key: dedupe_key(
                "payment",
                &[key_part(v.get("payment_id")), status.to_ascii_lowercase().into(), key_part(v.get("actually_paid"))],
            ),
            event_type: payment_type(&status).into(),
            provider_status: Some(status),
            subject: Subject { kind: "payment".into(), id: Some(id) },
            amount: text_field(v, "actually_paid"),
            currency: text_field(v, "pay_currency"),
            network: None,
            user_id: None,
            order_id: text_field(v, "order_id"),
            tx_hash: None,
            occurred_at,
            payload,
        });
    }

    let is_payout =
        present(v, "batch_withdrawal_id") || (present(v, "id") && present(v, "status") && present(v, "address"));
    if is_payout {
        let status = status_of(v, "status")?;
        let id = text_field(v, "id")
            .ok_or_else(|| ProviderError::BadRequest("payout `id` must be a string or number".into()))?;
        return Ok(Normalised {
            dedupe_key: dedupe_key("payout", &[key_part(v.get("id")), status.to_ascii_lowercase().into()]),
            event_type: payout_type(&status).into(),
            provider_status: Some(status),
            subject: Subject { kind: "payout".into(), id: Some(id) },
            amount: text_field(v, "amount"),
            currency: text_field(v, "currency"),
            network: None,
            user_id: None,
            order_id: None,
            tx_hash: text_field(v, "hash"),
            occurred_at,
            payload,
        });
    }

    // Verified but of a kind we do not model: delivered as `unknown`, never
    // dropped. Deduped on its whole canonical content.
    let digest = Sha256::digest(canonical::canonical(v, ArrayStyle::Array).as_bytes());
    Ok(Normalised {
        dedupe_key: dedupe_key("other", &[hex::encode(digest).into()]),
        event_type: "unknown".into(),
        provider_status: v.get("status").or_else(|| v.get("payment_status")).and_then(Value::as_str).map(str::to_owned),
        subject: Subject { kind: "unknown".into(), id: text_field(v, "id") },
        amount: text_field(v, "amount"),
        currency: text_field(v, "currency"),
        network: None,
        user_id: None,
        order_id: text_field(v, "order_id"),
        tx_hash: None,
        occurred_at,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(body: &[u8]) -> Result<Normalised, ProviderError> {
        normalise(&super::super::verified_as_written(body))
    }
    use http::HeaderValue;

    const PAYMENT: &str = include_str!("../../tests/fixtures/nowpayments/docs-payment-ipn.json");
    const PAYOUT: &str = include_str!("../../tests/fixtures/nowpayments/docs-payout-ipn.json");
    const CUSTODIAL: &str = include_str!("../../tests/fixtures/nowpayments/docs-custodial-recurring-ipn.json");
    const VECTOR: &str = include_str!("../../tests/fixtures/nowpayments/vector-canonical-form.json");

    fn secrets(s: &[&str]) -> Vec<Secret> {
        s.iter().map(|s| Secret::new(*s)).collect()
    }

    fn headers(sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SIGNATURE_HEADER, HeaderValue::from_str(sig).unwrap());
        h
    }

    fn check(secret: &str, sig: &str, body: &[u8]) -> Result<Normalised, ProviderError> {
        process(&secrets(&[secret]), &headers(sig), body)
    }

    #[test]
    fn shared_vector_verifies_over_the_canonical_form_only() {
        let v: serde_json::Value = serde_json::from_str(VECTOR).unwrap();
        let secret = v["ipn_secret"].as_str().unwrap();
        let raw = v["raw_body"].as_str().unwrap();
        let sig = v["x_nowpayments_sig"].as_str().unwrap();
        assert_ne!(hex_hmac(secret.as_bytes(), raw.as_bytes()), sig, "the raw body must not be what was signed");
        let n = check(secret, sig, raw.as_bytes()).unwrap();
        assert_eq!(n.event_type, "deposit.confirmed");
        assert_eq!(n.order_id.as_deref(), Some("NOWPAY-42-1-abc"));
        // Either case of hex.
        assert!(check(secret, &sig.to_uppercase(), raw.as_bytes()).is_ok());
        assert_eq!(check("other-secret", sig, raw.as_bytes()), Err(ProviderError::InvalidSignature("wrong")));
    }

    #[test]
    fn accepts_raw_canonical_and_indexed_forms_with_any_secret() {
        let body = br#"{"payment_id":5,"payment_status":"waiting","items":[{"b":1,"a":2}],"actually_paid":0.000002}"#;
        let v = canonical::parse(body).unwrap();
        let forms = [
            body.to_vec(),
            canonical::canonical(&v, ArrayStyle::Array).into_bytes(),
            canonical::canonical(&v, ArrayStyle::IndexedObject).into_bytes(),
        ];
        for form in &forms {
            let sig = hex_hmac(b"new", form);
            let n = process(&secrets(&["old", "new"]), &headers(&sig), body).unwrap();
            assert_eq!(n.event_type, "deposit.pending");
            assert_eq!(n.amount.as_deref(), Some("0.000002"));
        }
        // The same signatures over a re-ordered or re-spaced body still pass
        // through the canonical forms, except the raw one.
        let reordered =
            br#"{ "actually_paid": 2e-6, "items": [ {"a":2,"b":1} ], "payment_status": "waiting", "payment_id": 5 }"#;
        assert!(check("new", &hex_hmac(b"new", &forms[1]), reordered).is_ok());
        assert!(check("new", &hex_hmac(b"new", &forms[2]), reordered).is_ok());
        assert_eq!(
            check("new", &hex_hmac(b"new", &forms[0]), reordered),
            Err(ProviderError::InvalidSignature("wrong"))
        );
    }

    #[test]
    fn numbers_come_from_the_signed_text() {
        let body = br#"{"actually_paid":0.1,"payment_id":12345678901234567890,"payment_status":"finished"}"#;
        // The raw body was signed: its literals are authentic, kept as written.
        let n = check("s", &hex_hmac(b"s", body), body).unwrap();
        assert_eq!(n.subject.id.as_deref(), Some("12345678901234567890"));
        // NOWPayments signs the canonical form, where the id prints as
        // 12345678901234567000. A body whose literals differ from it verifies
        // only through that form, so the signed text is what is passed on.
        let sig = sign(b"s", body);
        let rewritten = br#"{"payment_status":"finished","actually_paid":0.10000000000000000001,"payment_id":12345678901234567891}"#;
        let n = check("s", &sig, rewritten).unwrap();
        assert_eq!(n.amount.as_deref(), Some("0.1"));
        assert_eq!(n.subject.id.as_deref(), Some("12345678901234567000"));
        assert!(n.payload.contains(r#""actually_paid":0.1,"#), "{}", n.payload);
        assert!(!n.payload.contains("0.10000000000000000001"), "{}", n.payload);
    }

    #[test]
    fn refuses_wrong_missing_and_malformed_signatures() {
        let body = PAYMENT.as_bytes();
        let good = sign(b"s", body);
        assert!(check("s", &good, body).is_ok());
        assert_eq!(check("t", &good, body), Err(ProviderError::InvalidSignature("wrong")));
        assert_eq!(process(&secrets(&["s"]), &HeaderMap::new(), body), Err(ProviderError::InvalidSignature("missing")));
        assert_eq!(check("s", &good[..100], body), Err(ProviderError::InvalidSignature("malformed")));
        assert_eq!(check("s", &format!("{}zz", &good[..126]), body), Err(ProviderError::InvalidSignature("malformed")));
        // A changed value breaks every form.
        let tampered = PAYMENT.replace("\"actually_paid\":15", "\"actually_paid\":16");
        assert_eq!(check("s", &good, tampered.as_bytes()), Err(ProviderError::InvalidSignature("wrong")));
    }

    #[test]
    fn members_the_signed_form_leaves_out_are_refused_at_any_depth() {
        // NOWPayments' sortObject drops `__proto__`, so a signature over the
        // canonical form says nothing about it.
        let signed =
            br#"{"fee":{"currency":"trx","depositFee":1},"items":[{"a":1}],"payment_id":7,"payment_status":"waiting"}"#;
        let sig = sign(b"s", signed);
        assert!(check("s", &sig, signed).is_ok());
        for (body, path) in [
            (
                r#"{"__proto__":{"isAdmin":true,"payment_status":"finished"},"fee":{"currency":"trx","depositFee":1},"items":[{"a":1}],"payment_id":7,"payment_status":"waiting"}"#,
                "__proto__",
            ),
            (
                r#"{"fee":{"currency":"trx","depositFee":1,"__proto__":{"payment_status":"finished"}},"items":[{"a":1}],"payment_id":7,"payment_status":"waiting"}"#,
                "fee.__proto__",
            ),
            (
                r#"{"fee":{"currency":"trx","depositFee":1},"items":[{"a":1,"__proto__":1}],"payment_id":7,"payment_status":"waiting"}"#,
                "items[0].__proto__",
            ),
        ] {
            assert_eq!(check("s", &sig, body.as_bytes()), Err(ProviderError::UnsignedContent(path.into())), "{body}");
            // The arrays-kept canonical form leaves it out as well.
            let v = canonical::parse(signed).unwrap();
            let array_sig = hex_hmac(b"s", canonical::canonical(&v, ArrayStyle::Array).as_bytes());
            assert_eq!(check("s", &array_sig, body.as_bytes()), Err(ProviderError::UnsignedContent(path.into())));
            // Signed as sent, the member is covered and passes on.
            assert!(check("s", &hex_hmac(b"s", body.as_bytes()), body.as_bytes()).is_ok());
            // Without a good signature it stays a forgery, not a hint.
            assert_eq!(check("t", &sig, body.as_bytes()), Err(ProviderError::InvalidSignature("wrong")));
        }
    }

    #[test]
    fn whitespace_changes_verify_through_the_canonical_form() {
        let good = sign(b"s", PAYMENT.as_bytes());
        let respaced = PAYMENT.replace(',', " ,\n\t ");
        assert!(check("s", &good, respaced.as_bytes()).is_ok());
    }

    #[test]
    fn truncated_body_with_raw_signature_is_a_bad_request() {
        let truncated = &PAYMENT.as_bytes()[..PAYMENT.len() / 2];
        let sig = hex_hmac(b"s", truncated);
        assert!(matches!(check("s", &sig, truncated), Err(ProviderError::BadRequest(_))));
        // Without a valid signature it is just a forgery.
        assert_eq!(check("s", &"0".repeat(128), truncated), Err(ProviderError::InvalidSignature("wrong")));
    }

    #[test]
    fn duplicate_keys_are_refused_even_when_signed() {
        let body = br#"{"payment_id":1,"payment_status":"finished","payment_status":"failed"}"#;
        let sig = hex_hmac(b"s", body);
        assert!(matches!(check("s", &sig, body), Err(ProviderError::BadRequest(m)) if m.contains("duplicate key")));
    }

    #[test]
    fn normalises_the_documented_payment() {
        let n = check("s", &sign(b"s", PAYMENT.as_bytes()), PAYMENT.as_bytes()).unwrap();
        assert_eq!(n.event_type, "deposit.confirmed");
        assert_eq!(n.provider_status.as_deref(), Some("finished"));
        assert_eq!(n.subject, Subject { kind: "payment".into(), id: Some("123456789".into()) });
        assert_eq!(n.amount.as_deref(), Some("15"));
        assert_eq!(n.currency.as_deref(), Some("trx"));
        assert_eq!(n.order_id, None);
        assert!(n.payload.contains(r#""depositFee":0.09853637216235617"#));
    }

    #[test]
    fn normalises_the_documented_payout_with_uppercase_status() {
        let n = check("s", &sign(b"s", PAYOUT.as_bytes()), PAYOUT.as_bytes()).unwrap();
        assert_eq!(n.event_type, "payout.pending");
        assert_eq!(n.provider_status.as_deref(), Some("CREATING"));
        assert_eq!(n.subject, Subject { kind: "payout".into(), id: Some("123456789".into()) });
        assert_eq!(n.amount.as_deref(), Some("50"));
        assert_eq!(n.currency.as_deref(), Some("usdttrc20"));
        assert_eq!(n.occurred_at.as_deref(), Some("2023-07-27T15:29:40.803Z"));
    }

    #[test]
    fn unrecognised_ipns_are_unknown_not_dropped() {
        let n = check("s", &sign(b"s", CUSTODIAL.as_bytes()), CUSTODIAL.as_bytes()).unwrap();
        assert_eq!(n.event_type, "unknown");
        assert_eq!(n.subject.kind, "unknown");
        assert_eq!(n.amount.as_deref(), Some("12.171365564140688"));
    }

    #[test]
    fn status_tables_match_the_spec() {
        for (s, t) in [
            ("waiting", "deposit.pending"),
            ("confirming", "deposit.pending"),
            ("confirmed", "deposit.pending"),
            ("sending", "deposit.pending"),
            ("partially_paid", "deposit.partially_paid"),
            ("finished", "deposit.confirmed"),
            ("failed", "deposit.failed"),
            ("expired", "deposit.failed"),
            ("refunded", "deposit.refunded"),
            ("FINISHED", "deposit.confirmed"),
            ("something_new", "unknown"),
        ] {
            assert_eq!(payment_type(s), t, "payment {s}");
        }
        for (s, t) in [
            ("CREATING", "payout.pending"),
            ("waiting", "payout.pending"),
            ("PROCESSING", "payout.pending"),
            ("SENDING", "payout.pending"),
            ("FINISHED", "payout.completed"),
            ("FAILED", "payout.failed"),
            ("REJECTED", "payout.failed"),
            ("cancelled", "payout.failed"),
            ("NEW_STATE", "unknown"),
        ] {
            assert_eq!(payout_type(s), t, "payout {s}");
        }
    }

    #[test]
    fn dedupe_key_tracks_status_and_amount() {
        let n = |body: &str| norm(body.as_bytes()).unwrap().dedupe_key;
        let a = n(r#"{"payment_id":1,"payment_status":"confirming","actually_paid":0}"#);
        assert_ne!(a, n(r#"{"payment_id":1,"payment_status":"finished","actually_paid":0}"#));
        assert_ne!(a, n(r#"{"payment_id":1,"payment_status":"confirming","actually_paid":1}"#));
        assert_eq!(a, n(r#"{"payment_status":"confirming","actually_paid":0.0,"payment_id":"1","extra":2}"#));
        assert_eq!(
            n(r#"{"id":"7","status":"FINISHED","address":"a"}"#),
            n(r#"{"id":7,"status":"finished","address":"b"}"#)
        );
    }

    #[test]
    fn epoch_millisecond_times_are_normalised() {
        let n = norm(br#"{"payment_id":1,"payment_status":"waiting","updated_at":1765249461097}"#).unwrap();
        assert_eq!(n.occurred_at.as_deref(), Some("2025-12-09T03:04:21.097Z"));
    }

    #[test]
    fn wrong_types_for_required_fields_are_bad_requests() {
        let r = norm(br#"{"payment_id":1,"payment_status":7}"#);
        assert!(matches!(r, Err(ProviderError::BadRequest(_))));
        let r = norm(b"[1,2]");
        assert!(matches!(r, Err(ProviderError::BadRequest(_))));
    }
}
