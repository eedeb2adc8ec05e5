//! Console sessions: signing in with the admin token gives a random session
//! id in an `HttpOnly`, `SameSite=Strict` cookie, kept in this process's
//! memory (a restart signs everyone out). A session ends at sign-out, after
//! `IDLE` without a request, `LIFETIME` after sign-in, or when the admin
//! token changes (a reload). Every POST must come from the console's own
//! origin and carry the session's CSRF token.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub(super) const COOKIE: &str = "ipn_relay_session";
/// A session ends this long after its last request.
pub(super) const IDLE: Duration = Duration::from_secs(60 * 60);
/// And at the latest this long after sign-in.
pub(super) const LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// Sessions held at once; signing in beyond it ends the oldest.
const MAX_SESSIONS: usize = 1_000;
/// Client addresses the sign-in limiter tracks before it forgets idle ones.
const MAX_TRACKED: usize = 10_000;

/// A signed-in browser.
#[derive(Clone)]
pub(super) struct Session {
    /// Sent in every form and compared with what comes back.
    pub csrf: String,
    started: Instant,
    last_seen: Instant,
    /// The admin token's digest when it began.
    token: [u8; 32],
}

pub(crate) struct Sessions {
    /// By the digest of the session id: the id itself is never kept.
    live: Mutex<HashMap<[u8; 32], Session>>,
    /// Sign-in attempts per client address: one address guessing cannot
    /// lock the operator, at another, out.
    sign_ins: DefaultKeyedRateLimiter<std::net::IpAddr>,
    /// When idle addresses were last forgotten (ms since the epoch).
    pruned: std::sync::atomic::AtomicU64,
}

impl Default for Sessions {
    fn default() -> Sessions {
        let quota = Quota::per_minute(NonZeroU32::new(20).expect("non-zero"))
            .allow_burst(NonZeroU32::new(5).expect("non-zero"));
        Sessions { live: Mutex::new(HashMap::new()), sign_ins: RateLimiter::keyed(quota), pruned: Default::default() }
    }
}

/// 32 random bytes as hex.
fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn digest(s: &[u8]) -> [u8; 32] {
    Sha256::digest(s).into()
}

/// Why a sign-in was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SignInError {
    WrongToken,
    TooMany,
    Disabled,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks `given`, from `client`, against the admin token (`None`: the
    /// admin API is disabled) and starts a session: its id, for the cookie.
    pub(super) fn sign_in(
        &self,
        client: std::net::IpAddr,
        expected: Option<&[u8]>,
        given: &[u8],
    ) -> Result<String, SignInError> {
        // Forget idle addresses at most once a second, as ingress does.
        let now = crate::store::now_millis();
        let last = self.pruned.load(std::sync::atomic::Ordering::Relaxed);
        if self.sign_ins.len() > MAX_TRACKED && now.saturating_sub(last) >= 1_000 {
            self.pruned.store(now, std::sync::atomic::Ordering::Relaxed);
            self.sign_ins.retain_recent();
        }
        if self.sign_ins.check_key(&client).is_err() {
            return Err(SignInError::TooMany);
        }
        let expected = digest(expected.ok_or(SignInError::Disabled)?);
        // Digests compared in constant time hide the token's length too.
        if !bool::from(digest(given).ct_eq(&expected)) {
            return Err(SignInError::WrongToken);
        }
        let id = random_hex();
        let now = Instant::now();
        let session = Session { csrf: random_hex(), started: now, last_seen: now, token: expected };
        let mut live = self.lock();
        live.retain(|_, s| s.alive(now, &expected));
        if live.len() >= MAX_SESSIONS
            && let Some(oldest) = live.iter().min_by_key(|(_, s)| s.started).map(|(k, _)| *k)
        {
            live.remove(&oldest);
        }
        live.insert(digest(id.as_bytes()), session);
        Ok(id)
    }

    /// The session the request's cookie names, if it is alive under the
    /// admin token `expected`; its idle time starts again.
    pub(super) fn find(&self, headers: &HeaderMap, expected: Option<&[u8]>) -> Option<Session> {
        let id = cookie(headers, COOKIE)?;
        let expected = digest(expected?);
        let key = digest(id.as_bytes());
        let now = Instant::now();
        let mut live = self.lock();
        let session = live.get_mut(&key)?;
        if !session.alive(now, &expected) {
            live.remove(&key);
            return None;
        }
        session.last_seen = now;
        Some(session.clone())
    }

    /// Ends the session the request's cookie names.
    pub(super) fn sign_out(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            self.lock().remove(&digest(id.as_bytes()));
        }
    }
}

impl Session {
    fn alive(&self, now: Instant, token: &[u8; 32]) -> bool {
        now.duration_since(self.last_seen) < IDLE
            && now.duration_since(self.started) < LIFETIME
            && bool::from(self.token.ct_eq(token))
    }

    /// Whether `given` is this session's CSRF token.
    pub(super) fn csrf_matches(&self, given: &str) -> bool {
        given.len() == self.csrf.len() && bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// The value of cookie `name` in the request, if sent once.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        for pair in value.to_str().ok()?.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k == name
            {
                if found.is_some() {
                    // Two cookies of one name: one was planted; trust neither.
                    return None;
                }
                found = Some(v);
            }
        }
    }
    found
}

/// Whether the browser reached the console over TLS, as its `Origin` says.
pub(super) fn over_tls(headers: &HeaderMap) -> bool {
    headers.get(header::ORIGIN).is_some_and(|o| o.as_bytes().starts_with(b"https://"))
}

/// Whether the request comes from the console's own origin: `Origin` names
/// the host the request was sent to. Browsers send `Origin` with every
/// POST; a request without one is refused.
pub(super) fn same_origin(headers: &HeaderMap) -> bool {
    let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST)) else {
        return false;
    };
    let (Ok(origin), Ok(host)) = (origin.to_str(), host.to_str()) else { return false };
    let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

/// The `Set-Cookie` value that starts a session (`Secure` when the console
/// is reached over TLS).
pub(super) fn set_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}", LIFETIME.as_secs())
}

/// The `Set-Cookie` value that removes it.
pub(super) fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(n: u8) -> std::net::IpAddr {
        std::net::IpAddr::from([10, 0, 0, n])
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn a_session_needs_the_right_token_and_ends_at_sign_out_or_a_new_token() {
        let sessions = Sessions::default();
        let token = b"the-admin-token-0123456789".as_slice();
        assert_eq!(sessions.sign_in(ip(1), Some(token), b"wrong"), Err(SignInError::WrongToken));
        assert_eq!(sessions.sign_in(ip(1), None, token), Err(SignInError::Disabled));
        let id = sessions.sign_in(ip(1), Some(token), token).unwrap();
        let headers = with_cookie(&format!("other=1; {COOKIE}={id}"));
        let session = sessions.find(&headers, Some(token)).expect("signed in");
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches(&"0".repeat(64)));
        // A reload that changes the token ends it.
        assert!(sessions.find(&headers, Some(b"a-new-admin-token-0123456")).is_none());
        assert!(sessions.find(&headers, Some(token)).is_none(), "ended for good");
        let id = sessions.sign_in(ip(2), Some(token), token).unwrap();
        let headers = with_cookie(&format!("{COOKIE}={id}"));
        sessions.sign_out(&headers);
        assert!(sessions.find(&headers, Some(token)).is_none());
        // A made-up id, or the same name twice, finds nothing.
        assert!(sessions.find(&with_cookie(&format!("{COOKIE}={}", "a".repeat(64))), Some(token)).is_none());
        let id = sessions.sign_in(ip(3), Some(token), token).unwrap();
        assert!(sessions.find(&with_cookie(&format!("{COOKIE}={id}; {COOKIE}=x")), Some(token)).is_none());
    }

    #[test]
    fn a_session_ends_after_an_idle_hour_or_twelve_hours_in_all() {
        let token = digest(b"the-admin-token-0123456789");
        // Times after sign-in (a monotonic clock may not reach 12 h back).
        let start = Instant::now();
        let at = |d: Duration| start + d;
        let session = |last_seen| Session { csrf: String::new(), started: start, last_seen, token };
        assert!(session(at(LIFETIME / 2)).alive(at(LIFETIME / 2 + IDLE / 2), &token));
        assert!(!session(at(LIFETIME / 2)).alive(at(LIFETIME / 2 + IDLE), &token), "idle for an hour");
        let busy = session(at(LIFETIME - Duration::from_secs(1)));
        assert!(busy.alive(at(LIFETIME - Duration::from_millis(1)), &token));
        assert!(!busy.alive(at(LIFETIME), &token), "twelve hours after sign-in");
        assert!(!session(start).alive(start, &digest(b"another-token-0123456789")), "another token");
    }

    #[test]
    fn sign_ins_are_rate_limited_per_client_address() {
        let sessions = Sessions::default();
        let token = b"the-admin-token-0123456789".as_slice();
        let refused =
            (0..10).filter(|_| sessions.sign_in(ip(1), Some(token), b"guess") == Err(SignInError::TooMany)).count();
        assert!(refused >= 5, "{refused}");
        // That address waits, the right token too; another address does not.
        assert_eq!(sessions.sign_in(ip(1), Some(token), token), Err(SignInError::TooMany));
        assert!(sessions.sign_in(ip(2), Some(token), token).is_ok());
    }

    #[test]
    fn origin_must_name_the_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9090"));
        assert!(!same_origin(&h), "no Origin");
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:9090"));
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }
}
