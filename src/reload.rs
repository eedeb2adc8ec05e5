//! Live reload: SIGHUP or `POST /admin/reload` reads the configuration file
//! again and applies it without a restart (docs/operations.md).
//!
//! [`Live`] holds the configuration in force. Every request and every
//! delivery loop reads it when it starts, so a change applies to new work
//! at once and never to work half done: ingress swaps its sources (secrets,
//! allow lists, rate limits, tolerance) before the reload answers, so the
//! next callback is checked against them; delivery restarts the loop of
//! each endpoint that changed once its requests in flight have ended,
//! starts new endpoints and stops removed ones (their waiting deliveries
//! become `orphaned`, as at a start without them). What only a restart can
//! change (listen addresses, the store, listener limits, worker threads,
//! the log format) is refused with the key that differs, and a file that
//! does not validate is refused with its error; either way the running
//! configuration stays.

use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::config::Config;
use crate::http::Chain;
use crate::metrics::Metrics;
use crate::store::{Store, now_millis};

/// What takes in a new configuration before a reload answers.
type Hook = Box<dyn Fn(&Arc<Config>) + Send + Sync>;

/// The configuration in force, and where it came from.
pub(crate) struct Live {
    config: watch::Sender<Arc<Config>>,
    /// The file to read again; none for a relay started from text (tests).
    path: Option<PathBuf>,
    metrics: Arc<Metrics>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Applied synchronously before a reload answers (ingress).
    hooks: std::sync::Mutex<Vec<Hook>>,
    /// The hash of the text in force.
    loaded: std::sync::Mutex<String>,
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error("this relay was not started from a configuration file")]
    NoFile,
    #[error("{0}")]
    Invalid(String),
    #[error("{key} differs from the running configuration and only takes effect at a restart")]
    NeedsRestart { key: &'static str },
}

impl Refused {
    /// The `result` label of `ipn_relay_config_reloads_total`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Refused::NoFile | Refused::Invalid(_) => "invalid",
            Refused::NeedsRestart { .. } => "needs_restart",
        }
    }
}

/// A reload that applied.
#[derive(Debug)]
pub(crate) struct Reloaded {
    pub hash: String,
    /// False when the file was unchanged.
    pub changed: bool,
}

/// The first 16 hex digits of the SHA-256 of the file's text.
pub(crate) fn hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

impl Live {
    pub(crate) fn new(config: Arc<Config>, path: Option<PathBuf>, metrics: Arc<Metrics>) -> Arc<Live> {
        let text = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
        let loaded = hash(&text);
        metrics.config_loaded(&loaded);
        let (config, _) = watch::channel(config);
        let (reloading, hooks, loaded) = (Default::default(), Default::default(), std::sync::Mutex::new(loaded));
        Arc::new(Live { config, path, metrics, reloading, hooks, loaded })
    }

    pub(crate) fn current(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// Changes, for those that act on them in their own time (delivery).
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.config.subscribe()
    }

    /// Runs `hook` with every configuration applied, before the reload
    /// answers.
    pub(crate) fn on_reload(&self, hook: impl Fn(&Arc<Config>) + Send + Sync + 'static) {
        self.hooks.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(hook));
    }

    /// Reads the file again and applies it, or says why not.
    pub(crate) async fn reload(&self) -> Result<Reloaded, Refused> {
        let _one = self.reloading.lock().await;
        let result = self.read_and_apply();
        match &result {
            Ok(r) => {
                self.metrics.reloaded("ok");
                tracing::info!(hash = %r.hash, changed = r.changed, "configuration reloaded");
            }
            Err(e) => {
                self.metrics.reloaded(e.label());
                tracing::warn!(error = %e, "configuration reload refused; the running configuration stays");
            }
        }
        result
    }

    fn read_and_apply(&self) -> Result<Reloaded, Refused> {
        let path = self.path.as_ref().ok_or(Refused::NoFile)?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| Refused::Invalid(format!("cannot read {}: {e}", path.display())))?;
        // The first line only: a TOML error goes on to quote the offending
        // line, which may hold a secret, and this goes to the log.
        let new = Config::parse(&text, path).map_err(|e| {
            let all = e.to_string();
            let first = all.lines().next().unwrap_or_default();
            match all.lines().nth(1) {
                Some(_) => Refused::Invalid(format!("{first} (`ipn-relay check-config` shows where)")),
                None => Refused::Invalid(first.to_owned()),
            }
        })?;
        let old = self.current();
        if let Some(key) = needs_restart(&old, &new) {
            return Err(Refused::NeedsRestart { key });
        }
        for var in &new.defaulted_vars {
            tracing::warn!(variable = %var, "!!! DEVELOPMENT DEFAULT IN USE after reload: ${{{var}}} is not set");
        }
        let hash = hash(&text);
        let new = Arc::new(new);
        for hook in self.hooks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            hook(&new);
        }
        self.metrics.configure(&new);
        self.metrics.config_loaded(&hash);
        self.config.send_replace(new);
        let previous = std::mem::replace(&mut *self.loaded.lock().unwrap_or_else(|e| e.into_inner()), hash.clone());
        Ok(Reloaded { changed: previous != hash, hash })
    }
}

/// The first key whose change only a restart applies.
fn needs_restart(old: &Config, new: &Config) -> Option<&'static str> {
    let (o, n) = (&old.server, &new.server);
    let differs: [(&'static str, bool); 9] = [
        ("server.listen", o.listen != n.listen),
        ("server.admin_listen", o.admin_listen != n.admin_listen),
        ("server.header_read_timeout", o.header_read_timeout != n.header_read_timeout),
        ("server.shutdown_grace", o.shutdown_grace != n.shutdown_grace),
        ("server.max_connections", o.max_connections != n.max_connections),
        ("server.worker_threads", o.worker_threads != n.worker_threads),
        ("store", old.store.kind != new.store.kind),
        ("store.dedupe_ttl", old.store.dedupe_ttl != new.store.dedupe_ttl),
        ("log.format", old.log_format != new.log_format),
    ];
    differs.into_iter().find_map(|(key, d)| d.then_some(key))
}

/// Brings the store in line with the configured endpoints (see
/// [`Store::reconcile_endpoints`]) and says what it found. Returns whether
/// it got through; a store that is down now is tried again by housekeeping.
pub(crate) async fn reconcile(store: &dyn Store, endpoints: &[String], orphan_others: bool) -> bool {
    match store.reconcile_endpoints(endpoints, orphan_others, now_millis()).await {
        Ok(found) => {
            for (endpoint, n) in &found.orphaned {
                tracing::warn!(
                    endpoint = %endpoint,
                    deliveries = n,
                    "deliveries to an endpoint that is not in the configuration are orphaned: nothing will send them. Add the endpoint back to deliver them, or close them with `ipn-relay discard --state orphaned --endpoint {endpoint} --reason TEXT`"
                );
            }
            for (endpoint, n) in &found.adopted {
                tracing::info!(endpoint = %endpoint, deliveries = n, "orphaned deliveries to a configured endpoint are pending again");
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "could not check deliveries against the configured endpoints; will retry");
            false
        }
    }
}
