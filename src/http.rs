//! HTTP pieces both listeners and both clients share: JSON answers, the
//! error body, reading a request body within limits, the TLS provider, the
//! outgoing client, and the two ways an error's chain of causes is told
//! (its root cause, or the whole chain on one line).
//!
//! Every error the relay answers, on ingress and on the admin API, has one
//! shape, `{"error":{"code","message"}}`: a machine-readable `code` and a
//! message for people.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};

/// A JSON answer with `status`.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The error body every listener answers with.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &serde_json::json!({"error": {"code": code, "message": message}}))
}

/// Why a request body could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("request body not received in time")]
    Timeout,
    #[error("could not read the request body: {0}")]
    Failed(String),
}

/// Reads a whole body of at most `max` bytes, within `timeout` if given;
/// the cap holds while reading, whatever the headers declared.
pub async fn read_body<B>(body: B, max: usize, timeout: Option<Duration>) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let collect = Limited::new(body, max).collect();
    let collected = match timeout {
        Some(t) => tokio::time::timeout(t, collect).await.map_err(|_| BodyError::Timeout)?,
        None => collect.await,
    };
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge(max)),
        Err(e) => Err(BodyError::Failed(e.to_string())),
    }
}

/// Installs the TLS crypto provider every HTTP client here uses: rustls
/// with ring, which needs no C toolchain beyond cc to build.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A builder for an outgoing client, the TLS provider installed.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_tls_provider();
    reqwest::Client::builder()
}

/// The last error of `e`'s source chain (`e` itself if it has none): the
/// one that says what actually went wrong, e.g. "Connection refused".
pub fn root_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> &'a (dyn std::error::Error + 'static) {
    let mut root = e;
    while let Some(next) = root.source() {
        root = next;
    }
    root
}

/// An error and its causes on one line, "outer: inner: root", as logs,
/// answers and messages show it. A cause whose text ends its wrapper's text
/// is not said again: some wrappers (redis's, for one) print their cause as
/// their own text and also return it as their source.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut said = self.0.to_string();
        f.write_str(&said)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !said.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            said = text;
            next = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_are_capped_and_timed() {
        let body = Full::new(Bytes::from_static(b"0123456789"));
        assert_eq!(read_body(body.clone(), 10, None).await.unwrap(), Bytes::from_static(b"0123456789"));
        assert_eq!(read_body(body, 9, None).await, Err(BodyError::TooLarge(9)));
        let never = http_body_util::StreamBody::new(futures_never());
        let r = read_body(never, 10, Some(Duration::from_millis(10))).await;
        assert_eq!(r, Err(BodyError::Timeout));
    }

    fn futures_never()
    -> impl futures_core::Stream<Item = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> + Send {
        tokio_stream::pending()
    }

    #[test]
    fn the_root_cause_is_the_end_of_the_chain() {
        let inner = std::io::Error::other("Connection refused");
        let outer = std::io::Error::other(Wrapped(inner));
        assert_eq!(root_cause(&outer).to_string(), "Connection refused");
        let alone = std::io::Error::other("alone");
        assert!(std::ptr::addr_eq(root_cause(&alone), &alone as &dyn std::error::Error));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrapped(#[source] std::io::Error);

    #[test]
    fn a_chain_says_every_cause_once() {
        let refused = || std::io::Error::other("Connection refused");
        assert_eq!(Chain(&Wrapped(refused())).to_string(), "wrapped: Connection refused");
        // A wrapper that prints its cause as its own text, as redis's does,
        // and returns it as its source too.
        assert_eq!(Chain(&Loud(refused())).to_string(), "Connection refused");
        assert_eq!(Chain(&refused()).to_string(), "Connection refused");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Loud(#[source] std::io::Error);
}
