//! One HTTP exchange with an endpoint: the Standard Webhooks signature, the
//! request's outcome, `Retry-After` and the start of the response body.

use std::time::Duration;

use base64::Engine as _;
use sha2::Sha256;

use super::EXCERPT_BYTES;
use crate::config::Endpoint;
use crate::store::AttemptResult;

/// The `webhook-signature` header: the signature with the endpoint's key,
/// then, during a rotation, one with the previous key, space-separated as
/// Standard Webhooks allows, so receivers holding either secret verify.
pub(crate) fn signatures(ep: &Endpoint, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut header = sign(ep.signing_key.expose(), webhook_id, timestamp, body);
    if let Some(previous) = &ep.previous_signing_key {
        header.push(' ');
        header.push_str(&sign(previous.expose(), webhook_id, timestamp, body));
    }
    header
}

/// The Standard Webhooks signature of one attempt: `v1,` and base64
/// HMAC-SHA256 over `{id}.{timestamp}.{body}` with the endpoint's key.
pub(crate) fn sign(key: &[u8], webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    let parts = [webhook_id.as_bytes(), b".", timestamp.as_bytes(), b".", body];
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(crate::mac::mac::<hmac::Hmac<Sha256>>(key, &parts))
    )
}

/// Sends one request: the attempt's result, the endpoint's Retry-After and
/// the start of the response body.
pub(super) async fn send(request: reqwest::RequestBuilder) -> (AttemptResult, Option<Duration>, Option<String>) {
    match request.send().await {
        Ok(mut resp) => {
            let code = resp.status().as_u16();
            let retry_after =
                resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
            let mut body = Vec::new();
            while body.len() < EXCERPT_BYTES {
                match resp.chunk().await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    _ => break,
                }
            }
            body.truncate(EXCERPT_BYTES);
            let excerpt = (!body.is_empty()).then(|| String::from_utf8_lossy(&body).into_owned());
            (AttemptResult::Status { code }, retry_after, excerpt)
        }
        Err(e) => (AttemptResult::Error { class: error_class(&e).into(), detail: error_detail(&e) }, None, None),
    }
}

fn error_class(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else if e.is_request() {
        // Typically the connection was reset or closed mid-exchange.
        "connection"
    } else {
        "other"
    }
}

/// The error's root cause: "Connection refused (os error 111)",
/// "operation timed out". reqwest's own message is left out: it repeats the
/// endpoint URL, which may hold credentials, and says no more than the class.
fn error_detail(e: &reqwest::Error) -> String {
    let root = crate::http::root_cause(e);
    let out =
        if std::ptr::addr_eq(root, e as &dyn std::error::Error) { "no detail".to_owned() } else { root.to_string() };
    out.chars().take(300).collect()
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let delta = at - time::OffsetDateTime::now_utc();
    Some(Duration::from_secs(delta.whole_seconds().max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification.
        let key = base64::engine::general_purpose::STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
