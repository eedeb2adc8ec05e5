//! How a store operation fails: [`StoreError`], its two constructors, and
//! [`Context`] for words about an error that should stay its cause.

use std::fmt;
use std::sync::Arc;

/// Why a store operation failed.
///
/// **Text and source.** A store error's own text says only what failed
/// here, `store unavailable` or `corrupt record KEY`; what caused it (a redb
/// or Redis error, a JSON error, or words when there is no error to keep) is
/// its [`source`](std::error::Error::source), and the text never repeats
/// it. So whatever walks the chain says the cause once. Logs, answers and
/// the command line print a store error with its causes through
/// [`Chain`](crate::http::Chain): "store unavailable: disk full", the text
/// these errors had when the cause was folded into the message. `%e` alone
/// says only the first part.
///
/// The cause is shared (an `Arc`), so that one failed commit fails every
/// operation in it with the same error. `Error` is implemented here rather
/// than derived so that `source()` hands out the cause itself, which can be
/// downcast, and not the `Arc` around it.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The store cannot be reached or written: ingress answers 503 and the
    /// caller may retry later. Nothing was admitted.
    Unavailable(Cause),
    /// A stored record could not be read back.
    Corrupt { key: String, cause: Cause },
}

/// What caused a [`StoreError`].
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(_) => f.write_str("store unavailable"),
            StoreError::Corrupt { key, .. } => write!(f, "corrupt record {key}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Unavailable(cause) | StoreError::Corrupt { cause, .. } => Some(&**cause),
        }
    }
}

/// The store could not be reached or written, because of `cause`: an error,
/// or words (a `&str` or `String`, which become an error that says them)
/// when there is no error to keep.
pub(crate) fn unavailable(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::Unavailable(Arc::from(cause.into()))
}

/// The record at `key` could not be read back, because of `cause` (an
/// error, or words, as for [`unavailable`]).
pub(crate) fn corrupt(key: &str, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::Corrupt { key: key.to_owned(), cause: Arc::from(cause.into()) }
}

/// Words about what was being done, with the error that stopped it as the
/// source: the cause of "cannot open FILE" is the error opening it.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub(crate) struct Context {
    what: String,
    #[source]
    cause: Box<dyn std::error::Error + Send + Sync>,
}

impl Context {
    pub(crate) fn new(what: impl Into<String>, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Context {
        Context { what: what.into(), cause: cause.into() }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;
    use crate::http::Chain;
    use crate::store::Delivery;

    /// Each error's own text, from `e` down to its root cause: what a chain
    /// walker prints.
    fn links(e: &(dyn Error + 'static)) -> Vec<String> {
        std::iter::successors(Some(e), |&e| e.source()).map(|e| e.to_string()).collect()
    }

    #[test]
    fn a_store_error_keeps_its_cause_as_its_source() {
        let e = unavailable(std::io::Error::new(std::io::ErrorKind::StorageFull, "disk full"));
        let cause = e.source().and_then(|c| c.downcast_ref::<std::io::Error>()).expect("the io error is the source");
        assert_eq!(cause.kind(), std::io::ErrorKind::StorageFull);

        let bad_json = serde_json::from_slice::<Delivery>(b"not json").unwrap_err();
        let e = corrupt("dlv_x", bad_json);
        assert!(e.source().is_some_and(|c| c.is::<serde_json::Error>()));
        assert!(matches!(&e, StoreError::Corrupt { key, .. } if key == "dlv_x"));

        // Words about an error keep the error beneath them.
        let e = unavailable(Context::new("cannot open /x/relay.redb", std::io::Error::other("locked")));
        let context = e.source().expect("the context is the source");
        assert_eq!(context.to_string(), "cannot open /x/relay.redb");
        assert!(context.source().is_some_and(|c| c.is::<std::io::Error>()));
    }

    #[test]
    fn walking_a_store_error_says_each_cause_once() {
        let e = unavailable(std::io::Error::other("disk full"));
        assert_eq!(links(&e), ["store unavailable", "disk full"]);
        assert_eq!(Chain(&e).to_string(), "store unavailable: disk full");

        let e = corrupt("dlv_x", "event record missing");
        assert_eq!(links(&e), ["corrupt record dlv_x", "event record missing"]);
        assert_eq!(Chain(&e).to_string(), "corrupt record dlv_x: event record missing");

        let e = unavailable(Context::new("cannot open /x/relay.redb", std::io::Error::other("locked")));
        assert_eq!(links(&e), ["store unavailable", "cannot open /x/relay.redb", "locked"]);
        assert_eq!(Chain(&e).to_string(), "store unavailable: cannot open /x/relay.redb: locked");

        // A clone (one failed commit answers many) shares the same cause.
        let again = e.clone();
        assert_eq!(Chain(&again).to_string(), Chain(&e).to_string());
    }

    #[test]
    fn a_redis_cause_is_said_once() {
        // redis prints an I/O error as its own text and returns it as its
        // source too; the chain says it once.
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        let e = unavailable(::redis::RedisError::from(refused));
        assert_eq!(
            links(&e),
            ["store unavailable", "Connection refused (os error 111)", "Connection refused (os error 111)"]
        );
        assert_eq!(Chain(&e).to_string(), "store unavailable: Connection refused (os error 111)");
    }
}
