//! The console: the admin API in a browser, under `/ui/` on the admin
//! listener (docs/console.md). Server-rendered HTML with no script at all;
//! every page is read through the admin API's own routes, in process, so
//! the console shows and does exactly what the API would, with the same
//! checks and the same errors.
//!
//! Signing in with the admin token starts a session ([`session`]); every
//! other page needs one, and every POST also needs the console's own
//! origin and the session's CSRF token. Answers carry a strict
//! `Content-Security-Policy`: the pages load nothing but `/ui/style.css`.

mod html;
mod pages;
mod replay;
mod session;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Admin, ApiError};
pub(crate) use session::Sessions;
use session::SignInError;

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";
const STYLE: &str = include_str!("style.css");
/// Largest console form.
const MAX_FORM: usize = 16 * 1024;

/// What a console handler answers: a page, or a redirect after a POST.
pub(super) enum Reply {
    Page(StatusCode, String),
    SeeOther(String),
}

/// A parsed form or query: (name, value), in order.
pub(super) type Form = Vec<(String, String)>;

/// The value of `name` in `form`, or "".
pub(super) fn get<'a>(form: &'a Form, name: &str) -> &'a str {
    form.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
}

impl Admin {
    /// Whether console cookies need TLS: when the browser reached the
    /// console over it (a TLS proxy in front of a loopback listener), and
    /// always on an admin listener beyond loopback, which must sit behind it
    /// (docs/console.md).
    fn secure_cookie(&self, headers: &http::HeaderMap) -> bool {
        session::over_tls(headers) || !self.live.current().server.admin_listen.ip().is_loopback()
    }

    fn admin_token(&self) -> Option<Vec<u8>> {
        self.live.current().server.admin_token.as_ref().map(|t| t.expose().to_vec())
    }

    pub(super) async fn console<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let peer = parts.extensions.get::<std::net::SocketAddr>().copied();
        let path = parts.uri.path().to_owned();
        let query: Form = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()).into_owned().collect();
        let post = parts.method == Method::POST;
        if !post && parts.method != Method::GET && parts.method != Method::HEAD {
            return respond(Reply::Page(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into()));
        }
        match (post, path.as_str()) {
            (false, "/ui/style.css") => {
                let mut r = Response::new(Full::new(Bytes::from_static(STYLE.as_bytes())));
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
                return with_headers(r);
            }
            (false, "/ui") => return respond(Reply::SeeOther("/ui/".into())),
            (false, "/ui/login") => return respond(pages::sign_in(None)),
            (true, "/ui/login") => return self.sign_in(&parts.headers, peer, body).await,
            _ => {}
        }
        let token = self.admin_token();
        let Some(session) = self.sessions.find(&parts.headers, token.as_deref()) else {
            return match post {
                true if path == "/ui/logout" && session::same_origin(&parts.headers) => {
                    // Nothing to end: clear the cookie and go to sign-in.
                    let mut r = respond(Reply::SeeOther("/ui/login".into()));
                    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(self.secure_cookie(&parts.headers))) {
                        r.headers_mut().insert(header::SET_COOKIE, v);
                    }
                    r
                }
                true => refused(StatusCode::UNAUTHORIZED, "Your session has ended; sign in again."),
                false => respond(Reply::SeeOther("/ui/login".into())),
            };
        };
        if !post {
            let reply = self.console_page(&path, &query, &session).await;
            return respond(reply);
        }
        if !session::same_origin(&parts.headers) {
            tracing::warn!(path, peer = ?peer, "console POST refused: not from the console's origin");
            return refused(StatusCode::FORBIDDEN, "Refused: this form was not sent from the console.");
        }
        let form = match read_form(body).await {
            Ok(f) => f,
            Err(message) => return respond(Reply::Page(StatusCode::BAD_REQUEST, message)),
        };
        if !session.csrf_matches(get(&form, "csrf")) {
            tracing::warn!(path, peer = ?peer, "console POST refused: missing or wrong CSRF token");
            return refused(StatusCode::FORBIDDEN, "Refused: the form's token does not match your session.");
        }
        if path == "/ui/logout" {
            self.sessions.sign_out(&parts.headers);
            let mut r = respond(Reply::SeeOther("/ui/login".into()));
            if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(self.secure_cookie(&parts.headers))) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            return r;
        }
        let reply = self.console_action(&path, &form, &session).await;
        respond(reply)
    }

    async fn sign_in<B>(
        &self,
        headers: &http::HeaderMap,
        peer: Option<std::net::SocketAddr>,
        body: B,
    ) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if !session::same_origin(headers) {
            return refused(StatusCode::FORBIDDEN, "Refused: this form was not sent from the console.");
        }
        let form = match read_form(body).await {
            Ok(f) => f,
            Err(message) => return respond(pages::sign_in(Some(&message))),
        };
        let token = self.admin_token();
        // The client behind a trusted proxy, as ingress finds it, grouped
        // as ingress groups it (an IPv6 /64 is one client). In-process
        // callers (tests) have no peer: one shared address.
        let trusted = self.live.current().server.trusted_proxies.clone();
        let client = peer
            .and_then(|p| crate::ingress::client_ip(p.ip(), headers, &trusted))
            .map_or(std::net::IpAddr::from([0, 0, 0, 0]), crate::http::rate_key);
        match self.sessions.sign_in(client, token.as_deref(), get(&form, "token").trim().as_bytes()) {
            Ok(id) => {
                tracing::info!(peer = ?peer, "console: signed in");
                let mut r = respond(Reply::SeeOther("/ui/".into()));
                if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&id, self.secure_cookie(headers))) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            }
            Err(e) => {
                tracing::warn!(reason = ?e, peer = ?peer, "console: sign-in refused");
                let (status, message) = match e {
                    SignInError::WrongToken => (StatusCode::UNAUTHORIZED, "Wrong admin token."),
                    SignInError::TooMany => {
                        (StatusCode::TOO_MANY_REQUESTS, "Too many sign-in attempts; wait a minute.")
                    }
                    SignInError::Disabled => {
                        (StatusCode::UNAUTHORIZED, "The admin API is disabled: set server.admin_token.")
                    }
                };
                let Reply::Page(_, body) = pages::sign_in(Some(message)) else { unreachable!() };
                respond(Reply::Page(status, body))
            }
        }
    }

    /// Calls the admin API's route `path` (with its query) in process, and
    /// reads the answer as `T`.
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, ApiError> {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(body))
            .map_err(|e| ApiError::bad(format!("{path}: {e}")))?;
        let response = self.route(req).await?;
        let bytes = response.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("reading {path}'s answer: {e}"))
        })
    }
}

async fn read_form<B>(body: B) -> Result<Form, String>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let bytes =
        crate::http::read_body(body, MAX_FORM, None).await.map_err(|e| format!("The form could not be read: {e}"))?;
    Ok(form_urlencoded::parse(&bytes).into_owned().collect())
}

/// A refusal page with no navigation (there may be no session).
fn refused(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = format!("<p>{}</p><p><a href=\"/ui/\">Back to the console</a></p>", html::esc(message));
    respond(Reply::Page(status, html::page("Refused", "", None, None, &body)))
}

fn respond(reply: Reply) -> Response<Full<Bytes>> {
    let mut r = match reply {
        Reply::Page(status, body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            r
        }
        Reply::SeeOther(to) => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::SEE_OTHER;
            if let Ok(v) = HeaderValue::from_str(&to) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
    };
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    with_headers(r)
}

fn with_headers(mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: with it browsers send `Origin: null` on the
    // console's own form posts, which the origin check refuses.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    r
}
