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
use serde::{Deserialize, Serialize};

/// What an answer that could not be written as JSON says instead.
const UNWRITABLE: &str = r#"{"error":{"code":"internal","message":"the answer could not be written as JSON"}}"#;

/// A JSON answer with `status`.
///
/// Written through a [`serde_json::Value`], whose object keys come out
/// sorted: so the bytes of an answer do not depend on the order a type
/// declares its fields in, and are what they were when every answer was
/// built with `json!`.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let (status, text) = match serde_json::to_value(body) {
        Ok(value) => (status, value.to_string()),
        // Only a map with keys that are not strings fails; no answer has one.
        Err(e) => {
            tracing::error!(error = %e, "an answer could not be written as JSON");
            (StatusCode::INTERNAL_SERVER_ERROR, UNWRITABLE.to_owned())
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The error body every listener answers with, and the admin CLI reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a machine-readable `code` (`bad_request`, `not_found`,
/// `unavailable`, …) and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Read as empty when a body leaves it out, so the message still shows.
    #[serde(default)]
    pub code: String,
    pub message: String,
}

/// The error body every listener answers with.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = ErrorBody { error: ErrorDetail { code: code.to_owned(), message: message.to_owned() } };
    json_response(status, &body)
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

/// The admin listener's responses: whole JSON or text, or a file streamed
/// from disk (a store snapshot).
pub(crate) type AdminBody = http_body_util::Either<Full<Bytes>, FileBody>;

/// A file's bytes as a response body, read 64 KiB at a time. The file is
/// usually already unlinked, so it goes when the body does.
pub(crate) struct FileBody {
    file: tokio::fs::File,
    buf: Box<[u8]>,
    len: u64,
}

impl FileBody {
    pub(crate) fn new(file: tokio::fs::File, len: u64) -> FileBody {
        FileBody { file, buf: vec![0; 64 * 1024].into_boxed_slice(), len }
    }
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        use tokio::io::AsyncRead;
        let this = &mut *self;
        let mut read = tokio::io::ReadBuf::new(&mut this.buf);
        match std::pin::Pin::new(&mut this.file).poll_read(cx, &mut read) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Some(Err(e))),
            std::task::Poll::Ready(Ok(())) if read.filled().is_empty() => std::task::Poll::Ready(None),
            std::task::Poll::Ready(Ok(())) => {
                std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::copy_from_slice(read.filled())))))
            }
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.len)
    }
}

/// The rate-limit key of a client: IPv4 addresses as they are, IPv6 by /64,
/// since one IPv6 client usually owns a whole /64 and could rotate through it.
pub(crate) fn rate_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1)))
        }
        v4 => v4,
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

    #[tokio::test]
    async fn error_bodies_have_one_shape_and_read_back() {
        let resp = error_response(StatusCode::NOT_FOUND, "not_found", "no delivery \"dlv_x\"");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, r#"{"error":{"code":"not_found","message":"no delivery \"dlv_x\""}}"#);
        let body: ErrorBody = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((body.error.code.as_str(), body.error.message.as_str()), ("not_found", "no delivery \"dlv_x\""));
    }

    #[tokio::test]
    async fn answers_are_written_with_sorted_keys_whatever_the_declaration_order() {
        #[derive(Serialize)]
        struct Unsorted {
            b: u8,
            a: Option<u8>,
        }
        let resp = json_response(StatusCode::OK, &Unsorted { b: 1, a: None });
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, r#"{"a":null,"b":1}"#);
        // A map with keys that are not strings cannot be JSON: a 500, not a panic.
        let resp = json_response(StatusCode::OK, &std::collections::BTreeMap::from([((1, 2), 3)]));
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, UNWRITABLE);
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
