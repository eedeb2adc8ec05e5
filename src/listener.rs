//! One HTTP/1.1 listener: accepting, connection limits and the defence
//! against clients that hold connections without using them.
//!
//! At most `max_connections` are open. A full listener does not stop
//! accepting; it closes a connection that is doing nothing useful to make
//! room: one with no request in progress (between requests, or connected
//! and never finishing a request head), or one whose request body has been
//! trickling in for more than a second. Only when every open connection is
//! busy with a request that is being handled or answered does accepting
//! wait, with the kernel's backlog holding the rest. So neither half request
//! lines, nor keep-alive connections poked once a second, nor bodies sent a
//! byte at a time can lock out a health check or a provider.
//!
//! A connection's phase is tracked by wrapping its request and response
//! bodies: a request is "reading" from its head until its body has been
//! read, "handling" until its response body has been written out.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::shutdown::stopped;

/// A request body read for longer than this, on a full listener, marks its
/// connection as one to close: a provider's callback arrives in
/// milliseconds.
const SLOW_BODY_MS: u64 = 1_000;

/// Connection limits of one listener.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub grace: Duration,
}

/// Accepts HTTP/1.1 connections and serves `handler` on each until `stop`,
/// then lets open requests finish within `limits.grace`.
pub(crate) async fn serve<F, Fut, B>(listener: TcpListener, limits: Limits, mut stop: watch::Receiver<bool>, handler: F)
where
    F: Fn(hyper::Request<RequestBody>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    let conns = Arc::new(Mutex::new(Connections::default()));
    let freed = Arc::new(Notify::new());
    'accept: loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        // Make room: close an idle connection, or wait for a busy one to end.
        while lock(&conns).make_room(limits.max_connections, uptime_ms()) {
            tokio::select! {
                _ = freed.notified() => {}
                _ = stopped(&mut stop) => break 'accept,
            }
        }
        let _ = stream.set_nodelay(true);
        let (id, state, close) = lock(&conns).open();
        let handler = handler.clone();
        let svc = service_fn(move |req: hyper::Request<Incoming>| {
            let handler = handler.clone();
            let state = state.clone();
            async move {
                state.set(if req.body().is_end_stream() { Phase::Handling } else { Phase::Reading });
                let req = req.map(|inner| RequestBody { inner, state: state.clone() });
                let response = handler(req, peer).await;
                Ok::<_, Infallible>(response.map(|inner| ResponseBody { inner, _answering: Answering(state) }))
            }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
        let (conns, freed) = (conns.clone(), freed.clone());
        tokio::spawn(async move {
            tokio::select! {
                result = conn => if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection closed with an error");
                },
                _ = close.notified() => tracing::debug!(%peer, "idle connection closed to make room"),
            }
            lock(&conns).closed(id);
            freed.notify_one();
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.grace) => tracing::warn!(grace = ?limits.grace, "grace period over; closing remaining connections"),
    }
}

fn lock(conns: &Mutex<Connections>) -> std::sync::MutexGuard<'_, Connections> {
    conns.lock().unwrap_or_else(|e| e.into_inner())
}

/// The open connections of one listener, oldest first.
#[derive(Default)]
struct Connections {
    next_id: u64,
    open: std::collections::BTreeMap<u64, Connection>,
}

struct Connection {
    state: Arc<ConnState>,
    close: Arc<Notify>,
}

impl Connections {
    fn open(&mut self) -> (u64, Arc<ConnState>, Arc<Notify>) {
        self.next_id += 1;
        let c = Connection { state: Arc::default(), close: Arc::new(Notify::new()) };
        let handles = (self.next_id, c.state.clone(), c.close.clone());
        self.open.insert(self.next_id, c);
        handles
    }

    fn closed(&mut self, id: u64) {
        self.open.remove(&id);
    }

    /// Below `max` open, or made so by closing the oldest connection that
    /// is doing nothing useful; true if every one is busy and none can go.
    fn make_room(&mut self, max: usize, now: u64) -> bool {
        if self.open.len() < max {
            return false;
        }
        let idle = self.open.iter().find(|(_, c)| c.state.closable(now)).map(|(id, _)| *id);
        match idle.and_then(|id| self.open.remove(&id)) {
            Some(c) => {
                // A permit is kept if the task is not waiting yet.
                c.close.notify_one();
                false
            }
            None => true,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Phase {
    /// No request in progress.
    Idle = 0,
    /// A request head arrived; its body is being read.
    Reading = 1,
    /// The body is read; the request is being handled or answered.
    Handling = 2,
}

/// A connection's phase and when it began, in ms of [`uptime_ms`].
#[derive(Default)]
struct ConnState {
    phase: AtomicU8,
    since: AtomicU64,
}

impl ConnState {
    fn set(&self, phase: Phase) {
        self.since.store(uptime_ms(), Ordering::Release);
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// Whether closing it to make room loses nothing worth keeping.
    fn closable(&self, now: u64) -> bool {
        match self.phase.load(Ordering::Acquire) {
            p if p == Phase::Idle as u8 => true,
            p if p == Phase::Reading as u8 => now.saturating_sub(self.since.load(Ordering::Acquire)) >= SLOW_BODY_MS,
            _ => false,
        }
    }
}

/// Milliseconds since the first call; never 0.
fn uptime_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}

/// A request's body, which moves its connection from reading to handling
/// once it has been read to the end (or failed).
pub struct RequestBody {
    inner: Incoming,
    state: Arc<ConnState>,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = &polled {
            self.state.set(Phase::Handling);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Marks its connection idle when dropped: hyper drops a response body once
/// it has written it out (or the connection is gone).
struct Answering(Arc<ConnState>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.set(Phase::Idle);
    }
}

/// A response's body, holding its connection busy until written.
struct ResponseBody<B> {
    inner: B,
    _answering: Answering,
}

impl<B: Body<Data = Bytes> + Unpin> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_listener_closes_the_oldest_useless_connection_and_never_a_busy_one() {
        let mut conns = Connections::default();
        let (first, first_state, first_close) = conns.open();
        let (second, second_state, second_close) = conns.open();
        let now = uptime_ms() + 10_000;
        assert!(!conns.make_room(3, now), "below the cap nothing is closed");
        // The oldest is handling a request: the next oldest idle one goes.
        first_state.set(Phase::Handling);
        assert!(!conns.make_room(2, now));
        assert!(conns.open.contains_key(&first) && !conns.open.contains_key(&second));
        assert!(notified(&second_close) && !notified(&first_close));
        drop(second_state);
        // All busy: the caller has to wait, however long it handles.
        assert!(conns.make_room(1, now + 60_000));
        // A body trickling in for a second is closable; a fresh one is not.
        first_state.set(Phase::Reading);
        let since = first_state.since.load(Ordering::Acquire);
        assert!(conns.make_room(1, since + SLOW_BODY_MS - 1));
        assert!(!conns.make_room(1, since + SLOW_BODY_MS));
        assert!(conns.open.is_empty() && notified(&first_close));
        // Answered: idle again at once, so keep-alive connections poked now
        // and then cannot hold the listener.
        let (_, state, _) = conns.open();
        state.set(Phase::Handling);
        drop(Answering(state.clone()));
        assert!(state.closable(uptime_ms()));
    }

    /// Whether `n` holds a notification, without waiting.
    fn notified(n: &Notify) -> bool {
        let fut = n.notified();
        let mut fut = std::pin::pin!(fut);
        fut.as_mut().poll(&mut Context::from_waker(std::task::Waker::noop())).is_ready()
    }
}
