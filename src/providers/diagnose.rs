//! Why a callback was refused, in words an operator can act on: the
//! diagnosis kept with each quarantined callback (docs/quarantine.md).
//!
//! The verifiers in `nowpayments.rs` and `nova.rs` decide; this only
//! explains. It looks at the signature where the provider puts it (missing,
//! not hex, the wrong length), at the body (JSON or not, which callback it
//! looks like), lists the signed forms the verifier tries, says how far a
//! Nova timestamp was off, and tries the secrets of every other configured
//! source, which finds a secret pasted into the wrong source and callbacks
//! posted to the wrong URL. It never names a secret or a signature it
//! computed.

use http::HeaderMap;
use time::OffsetDateTime;

use super::{nova, nowpayments};
use crate::canonical::{self, Value};
use crate::config::{ProviderKind, Source};
use crate::event;
use crate::store::quarantine::{Diagnosis, Refusal};

/// The headers any verifier reads: what the quarantine keeps of a request.
pub const SIGNATURE_HEADERS: [&str; 2] = [nowpayments::SIGNATURE_HEADER, nova::SIGNATURE_HEADER];

/// Looks at a callback to `source` refused for `reason`, received at
/// `received_at`; `sources` is every configured source (`source` among
/// them), whose secrets are tried too.
pub fn diagnose(
    source: &Source,
    sources: &[Source],
    reason: Refusal,
    headers: &HeaderMap,
    body: &[u8],
    received_at: OffsetDateTime,
) -> Diagnosis {
    let mut d = Diagnosis {
        checked_at: (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64,
        secrets_tried: source.secrets.len(),
        ..Diagnosis::default()
    };
    let parsed = canonical::parse(body);
    let signature = match source.kind {
        ProviderKind::Nowpayments => nowpayments_signature(&mut d, headers, parsed.as_ref().ok()),
        ProviderKind::Nova => nova_signature(&mut d, headers, parsed.as_ref().ok()),
    };
    match &parsed {
        Ok(v) => d.findings.push(describe_body(source.kind, v)),
        Err(e) => {
            // A duplicate key is quoted in the error: keep it short.
            let e: String = e.to_string().chars().take(120).collect();
            d.findings.push(format!("the body is not JSON ({e}), {} bytes", body.len()))
        }
    }
    if source.kind == ProviderKind::Nova
        && let Ok(v) = &parsed
    {
        timestamp(&mut d, source, v, received_at);
    }
    let verifies_here = verifies(source, headers, body);
    d.findings.push(match (verifies_here, d.secrets_tried) {
        (true, _) => "the signature verifies with a secret of this source".into(),
        (false, 1) => "the source's secret does not verify the body in any of these forms".into(),
        (false, n) => format!("none of the source's {n} secrets verifies the body in any of these forms"),
    });
    d.verifies_with_source = sources
        .iter()
        .filter(|other| other.name != source.name && verifies(other, headers, body))
        .map(|other| other.name.clone())
        .next();
    if let Some(other) = &d.verifies_with_source {
        d.findings.push(format!("the body verifies with a secret of source '{other}'"));
    }
    d.summary = summary(source, reason, &d, signature, verifies_here, parsed.is_ok());
    d
}

/// Whether `source`'s verifier accepts the signature (not the timestamp).
fn verifies(source: &Source, headers: &HeaderMap, body: &[u8]) -> bool {
    match source.kind {
        ProviderKind::Nowpayments => nowpayments::verify(&source.secrets, headers, body).is_ok(),
        ProviderKind::Nova => nova::verify(&source.secrets, headers, body).is_ok(),
    }
}

/// What was wrong with the signature as sent, before any secret is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signature {
    Missing,
    Malformed,
    WellFormed,
}

/// Checks a hex signature of `bytes` bytes, as text found in `place`.
fn hex_signature(d: &mut Diagnosis, place: &str, text: &str, bytes: usize, other: &str) -> Signature {
    let text = text.trim();
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        d.findings.push(format!("{place} is not hexadecimal ({} characters)", text.len()));
        return Signature::Malformed;
    }
    if text.len() != bytes * 2 {
        let hint = match text.len() {
            n if n == bytes * 4 || n == bytes => format!(" ({n} is what {other} sends)"),
            _ => String::new(),
        };
        d.findings.push(format!("{place} has {} hex digits, not {}{hint}", text.len(), bytes * 2));
        return Signature::Malformed;
    }
    d.findings.push(format!("{place} is a well-formed signature of {bytes} bytes"));
    Signature::WellFormed
}

fn nowpayments_signature(d: &mut Diagnosis, headers: &HeaderMap, parsed: Option<&Value>) -> Signature {
    let header = nowpayments::SIGNATURE_HEADER;
    let Some(value) = headers.get(header) else {
        d.findings.push(format!("the request has no {header} header"));
        if headers.contains_key(nova::SIGNATURE_HEADER) {
            d.findings.push(format!("it has an {} header, as Nova sends", nova::SIGNATURE_HEADER));
        }
        return Signature::Missing;
    };
    let Ok(text) = value.to_str() else {
        d.findings.push(format!("the {header} header is not plain text"));
        return Signature::Malformed;
    };
    let sig = hex_signature(d, &format!("the {header} header"), text, 64, "an HMAC-SHA256, such as Nova's");
    d.forms_tried.push("the body as received".into());
    if let Some(v) = parsed {
        d.forms_tried.push("keys sorted, arrays kept (JSON.stringify of the sorted object)".into());
        if v.has_array() {
            d.forms_tried.push("keys sorted, arrays as index-keyed objects (NOWPayments' sortObject)".into());
        }
    }
    sig
}

fn nova_signature(d: &mut Diagnosis, headers: &HeaderMap, parsed: Option<&Value>) -> Signature {
    let header = nova::SIGNATURE_HEADER;
    if let Some(value) = headers.get(header) {
        let Ok(text) = value.to_str() else {
            d.findings.push(format!("the {header} header is not plain text"));
            return Signature::Malformed;
        };
        let text = text.trim();
        let text = text.strip_prefix("sha256=").unwrap_or(text);
        d.forms_tried.push(format!("the body as received ({header} header)"));
        return hex_signature(d, &format!("the {header} header"), text, 32, "an HMAC-SHA512, such as NOWPayments'");
    }
    let field = match parsed.and_then(|v| v.get("signature")) {
        None => {
            d.findings.push(format!("the request has no {header} header and the body no `signature` field"));
            if headers.contains_key(nowpayments::SIGNATURE_HEADER) {
                d.findings.push(format!("it has an {} header, as NOWPayments sends", nowpayments::SIGNATURE_HEADER));
            }
            return Signature::Missing;
        }
        Some(Value::String(s)) => s.to_string(),
        Some(_) => {
            d.findings.push("the body's `signature` field is not a string".into());
            return Signature::Malformed;
        }
    };
    d.forms_tried.extend([
        "the body without `signature`, compact, keys in received order, numbers as written".to_owned(),
        "the same with numbers as JavaScript prints them".to_owned(),
        "the body without `signature`, keys sorted".to_owned(),
    ]);
    hex_signature(d, "the body's `signature` field", &field, 32, "an HMAC-SHA512, such as NOWPayments'")
}

/// Which callback the body looks like.
fn describe_body(kind: ProviderKind, v: &Value) -> String {
    let text = |key: &str| match v.get(key) {
        Some(Value::String(s)) => Some(quote(s)),
        Some(Value::Number(n)) => Some(quote(n)),
        _ => None,
    };
    if !matches!(v, Value::Object(_)) {
        return "the body is JSON but not an object".into();
    }
    if let (Some(id), Some(status)) = (text("payment_id"), text("payment_status")) {
        return format!("the body looks like a NOWPayments payment IPN (payment_id {id}, status {status})");
    }
    if let (Some(id), Some(status)) = (text("id"), text("status"))
        && (v.get("batch_withdrawal_id").is_some() || v.get("address").is_some())
    {
        return format!("the body looks like a NOWPayments payout IPN (id {id}, status {status})");
    }
    if let (Some(name), Some(Value::Object(_))) = (text("event"), v.get("data")) {
        return format!("the body looks like a Nova webhook (event {name})");
    }
    match kind {
        ProviderKind::Nowpayments => {
            "the body is a JSON object but has neither payment_id and payment_status nor a payout's fields".into()
        }
        ProviderKind::Nova => "the body is a JSON object but has no `event` and `data`".into(),
    }
}

/// A value from the (unauthenticated) body as the diagnosis quotes it: at
/// most [`QUOTED`] characters, control characters escaped, so the
/// description stays small and prints safely.
fn quote(s: &str) -> String {
    let mut out: String = s.chars().take(QUOTED).flat_map(char::escape_debug).collect();
    if s.chars().count() > QUOTED {
        out.push('…');
    }
    out
}

const QUOTED: usize = 40;

/// How far a Nova body's `timestamp` is from `received_at`, in seconds
/// (positive: ahead); `None` without an RFC 3339 `timestamp`.
pub fn timestamp_offset(v: &Value, received_at: OffsetDateTime) -> Option<i64> {
    let ts = v.get("timestamp").and_then(Value::as_str).and_then(event::parse_rfc3339)?;
    Some((ts - received_at).whole_seconds())
}

/// How far a Nova body's `timestamp` is from its receipt.
fn timestamp(d: &mut Diagnosis, source: &Source, v: &Value, received_at: OffsetDateTime) {
    let Some(offset) = timestamp_offset(v, received_at) else {
        d.findings.push("the body has no RFC 3339 `timestamp`".into());
        return;
    };
    d.timestamp_offset_secs = Some(offset);
    let side = if offset >= 0 { "ahead of" } else { "behind" };
    let tolerance = match source.timestamp_tolerance {
        Some(t) => format!("tolerance {} s", t.as_secs()),
        None => "no tolerance configured".into(),
    };
    d.findings.push(format!("the timestamp is {} s {side} the time the relay received it ({tolerance})", offset.abs()));
}

fn summary(
    source: &Source,
    reason: Refusal,
    d: &Diagnosis,
    signature: Signature,
    verifies_here: bool,
    json: bool,
) -> String {
    let name = &source.name;
    if reason == Refusal::StaleTimestamp || verifies_here {
        let off = d.timestamp_offset_secs.map(|s| format!(" ({} s off)", s.abs())).unwrap_or_default();
        return match reason {
            Refusal::StaleTimestamp => format!(
                "Stale timestamp{off}, genuine signature: the relay's clock or the sender's is wrong (check NTP), or the callback was delayed or replayed. Once you are sure it is genuine, reverify it with allow_stale."
            ),
            Refusal::InvalidSignature => {
                format!(
                    "Verifies now: the configuration in force accepts it (source '{name}'); reverify it to admit it."
                )
            }
        };
    }
    if let Some(other) = &d.verifies_with_source {
        return format!(
            "Signed with the secret of source '{other}': either that secret was pasted into source '{name}' by mistake, or the provider posts to /hooks/{name} callbacks meant for /hooks/{other}. Fix the configuration or the provider's callback URL, then reverify."
        );
    }
    match signature {
        Signature::Missing => format!(
            "No signature where source '{name}' expects one: a proxy may strip the header, the provider may not be set up to sign, or it was not sent by the provider. It cannot be admitted until a signed copy arrives."
        ),
        Signature::Malformed => format!(
            "Malformed signature (see the findings): check that the provider's callbacks go to the right source ('{name}' now), and that no proxy rewrites the header."
        ),
        Signature::WellFormed if !json => format!(
            "Body changed on the way, or not a provider callback: it is not JSON and no secret of source '{name}' signs it as received (a proxy re-encoding or truncating it?)."
        ),
        Signature::WellFormed => format!(
            "The secret is wrong or was rotated, a proxy changed the body, or it is forged: no secret of source '{name}' verifies this callback. If the provider's secret changed, add the new one to the source's secrets (keep the old one until the change is complete), then reverify."
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use http::HeaderValue;
    use time::macros::datetime;

    const PAYMENT: &str = include_str!("../../tests/fixtures/nowpayments/docs-payment-ipn.json");
    const DEPOSIT: &str = include_str!("../../tests/fixtures/nova/deposit-confirmed.json");

    fn source(name: &str, kind: ProviderKind, secrets: &[&str]) -> Source {
        Source {
            name: name.into(),
            kind,
            secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
            timestamp_tolerance: Some(std::time::Duration::from_secs(300)),
            allow_ips: vec![],
            rate_limit: None,
        }
    }

    fn header(name: &'static str, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(v).unwrap());
        h
    }

    const AT: OffsetDateTime = datetime!(2025-03-06 00:06:00 UTC);

    #[test]
    fn a_wrong_secret_is_named_and_no_secret_leaks() {
        let np = source("np", ProviderKind::Nowpayments, &["configured-secret", "older-secret"]);
        let sig = nowpayments::sign(b"rotated-secret", PAYMENT.as_bytes());
        let d = diagnose(
            &np,
            std::slice::from_ref(&np),
            Refusal::InvalidSignature,
            &header(nowpayments::SIGNATURE_HEADER, &sig),
            PAYMENT.as_bytes(),
            AT,
        );
        assert!(d.summary.contains("secret is wrong or was rotated"), "{}", d.summary);
        assert_eq!(d.secrets_tried, 2);
        assert!(d.findings.iter().any(|f| f.contains("well-formed signature of 64 bytes")));
        assert!(d.findings.iter().any(|f| f.contains("NOWPayments payment IPN")), "{:?}", d.findings);
        assert!(d.findings.iter().any(|f| f.contains("none of the source's 2 secrets")));
        assert!(d.forms_tried.len() >= 2);
        let all = serde_json::to_string(&d).unwrap();
        for secret in ["configured-secret", "older-secret", "rotated-secret"] {
            assert!(!all.contains(secret));
        }
        let expected = nowpayments::sign(b"configured-secret", PAYMENT.as_bytes());
        assert!(!all.contains(&expected[..16]));
    }

    #[test]
    fn a_secret_of_another_source_is_found() {
        let np = source("np", ProviderKind::Nowpayments, &["np-secret"]);
        let shop = source("shop", ProviderKind::Nowpayments, &["shop-secret"]);
        let sig = nowpayments::sign(b"shop-secret", PAYMENT.as_bytes());
        let h = header(nowpayments::SIGNATURE_HEADER, &sig);
        let d = diagnose(&np, &[np.clone(), shop], Refusal::InvalidSignature, &h, PAYMENT.as_bytes(), AT);
        assert_eq!(d.verifies_with_source.as_deref(), Some("shop"));
        assert!(d.summary.contains("secret of source 'shop'"), "{}", d.summary);

        // A Nova webhook posted to a NOWPayments source.
        let nova_src = source("nova", ProviderKind::Nova, &["nova-secret"]);
        let h = header(nova::SIGNATURE_HEADER, &nova::sign(b"nova-secret", DEPOSIT.as_bytes()));
        let d = diagnose(&np, &[np.clone(), nova_src], Refusal::InvalidSignature, &h, DEPOSIT.as_bytes(), AT);
        assert_eq!(d.verifies_with_source.as_deref(), Some("nova"));
        assert!(d.findings.iter().any(|f| f.contains("no x-nowpayments-sig header")));
        assert!(d.findings.iter().any(|f| f.contains("as Nova sends")));
    }

    #[test]
    fn malformed_and_missing_signatures_say_what_is_wrong() {
        let np = source("np", ProviderKind::Nowpayments, &["s"]);
        let one = std::slice::from_ref(&np);
        let cases = [
            (HeaderMap::new(), "no x-nowpayments-sig header", "No signature"),
            (header(nowpayments::SIGNATURE_HEADER, "zz"), "not hexadecimal", "Malformed signature"),
            (
                header(nowpayments::SIGNATURE_HEADER, &"ab".repeat(32)),
                "has 64 hex digits, not 128",
                "Malformed signature",
            ),
        ];
        for (h, finding, summary) in cases {
            let d = diagnose(&np, one, Refusal::InvalidSignature, &h, PAYMENT.as_bytes(), AT);
            assert!(d.findings.iter().any(|f| f.contains(finding)), "{finding}: {:?}", d.findings);
            assert!(d.summary.contains(summary), "{summary}: {}", d.summary);
        }
        let d = diagnose(
            &np,
            one,
            Refusal::InvalidSignature,
            &header(nowpayments::SIGNATURE_HEADER, &"ab".repeat(32)),
            PAYMENT.as_bytes(),
            AT,
        );
        assert!(d.findings.iter().any(|f| f.contains("Nova")), "{:?}", d.findings);
        // A body that is not JSON.
        let h = header(nowpayments::SIGNATURE_HEADER, &"ab".repeat(64));
        let d = diagnose(&np, one, Refusal::InvalidSignature, &h, b"payment_id=5&status=finished", AT);
        assert!(d.findings.iter().any(|f| f.starts_with("the body is not JSON")));
        assert!(d.summary.contains("not JSON"), "{}", d.summary);
    }

    #[test]
    fn the_description_stays_within_its_allowance_whatever_the_body() {
        let np =
            source("np-source-with-a-long-name-0123456789-abcdefghijklmnopqrstuvwx", ProviderKind::Nowpayments, &["s"]);
        let nova_src =
            source("nova-source-with-a-long-name-0123456789-abcdefghijklmnopqrstu", ProviderKind::Nova, &["s"]);
        let long = "\\u001b]52;c;".repeat(5000);
        let bodies = [
            format!(r#"{{"payment_id":"{long}","payment_status":"{long}","items":[1]}}"#),
            format!(r#"{{"id":"{long}","status":"{long}","address":"x"}}"#),
            format!(r#"{{"event":"{long}","data":{{}},"timestamp":"{long}","signature":"{long}"}}"#),
            format!("{{\"broken\": {long}"),
            format!(r#"{{"{long}":1,"{long}":2}}"#),
        ];
        for body in &bodies {
            for (src, h) in
                [(&np, header(nowpayments::SIGNATURE_HEADER, &"ab".repeat(64))), (&nova_src, HeaderMap::new())]
            {
                let d =
                    diagnose(src, &[np.clone(), nova_src.clone()], Refusal::StaleTimestamp, &h, body.as_bytes(), AT);
                let meta = crate::store::quarantine::Quarantined {
                    id: "qtn_0123456789abcdef0123456789ab".into(),
                    source: src.name.clone(),
                    reason: Refusal::StaleTimestamp,
                    received_at: u64::MAX,
                    client: "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".into(),
                    headers: vec![],
                    size: u64::MAX,
                    digest: "f".repeat(64),
                    diagnosis: d,
                };
                let len = serde_json::to_vec(&meta).unwrap().len() as u64;
                assert!(len < crate::store::quarantine::DESCRIPTION_BYTES, "{len}: {meta:?}");
                assert!(meta.diagnosis.findings.iter().all(|f| !f.contains('\u{1b}')), "{:?}", meta.diagnosis);
            }
        }
    }

    #[test]
    fn nova_staleness_is_measured_and_in_body_signatures_are_read() {
        let nova_src = source("nova", ProviderKind::Nova, &["nova-secret"]);
        let one = std::slice::from_ref(&nova_src);
        let h = header(nova::SIGNATURE_HEADER, &nova::sign(b"nova-secret", DEPOSIT.as_bytes()));
        let late = AT + time::Duration::seconds(900);
        let d = diagnose(&nova_src, one, Refusal::StaleTimestamp, &h, DEPOSIT.as_bytes(), late);
        let ts = serde_json::from_str::<serde_json::Value>(DEPOSIT).unwrap()["timestamp"].as_str().unwrap().to_owned();
        let expected = (event::parse_rfc3339(&ts).unwrap() - late).whole_seconds();
        assert_eq!(d.timestamp_offset_secs, Some(expected));
        assert!(d.summary.contains("allow_stale"), "{}", d.summary);
        assert!(d.findings.iter().any(|f| f.contains("behind the time the relay received it (tolerance 300 s)")));

        let d = diagnose(
            &nova_src,
            one,
            Refusal::InvalidSignature,
            &HeaderMap::new(),
            br#"{"event":"deposit.confirmed","data":{},"signature":"abc"}"#,
            AT,
        );
        assert!(d.findings.iter().any(|f| f.contains("`signature` field has 3 hex digits")), "{:?}", d.findings);
        assert_eq!(d.forms_tried.len(), 3);
    }
}
