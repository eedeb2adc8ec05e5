//! ipn-relay: verifies, dedupes and durably relays payment-provider callbacks.
//!
//! The modules follow the pipeline: [`ingress`] takes `POST /hooks/{source}`,
//! [`providers`] verify and normalise each provider's callbacks (using the
//! [`canonical`] JSON form), [`event`] is the normalised event, and [`store`]
//! admits it atomically with its dedupe key and deliveries. [`delivery`]
//! sends each delivery to its endpoint with `retry`s; [`admin`] and
//! `admin_cli` let operators list and [`replay`] them, both ends speaking
//! the types of [`admin::api`]; [`metrics`] counts it
//! all for Prometheus. Refused callbacks are kept and recovered by
//! `quarantine`; it and ingress admit through `admission`. [`server`] runs
//! the listeners, [`cli`] the binary.
//! Shared plumbing has its own small modules: `http` (JSON error bodies,
//! body reading, the outgoing client), `listener` (connection accounting),
//! `mac` (HMAC), `shutdown` and `wake` (signals between tasks).
//!
//! The public surface is what the binary, the integration tests, the
//! benchmarks and the fuzz targets use: the store, configuration, canonical
//! form, providers and event types whole, and from the other modules only
//! the entry points they name (`server::run`, `delivery::Sender`,
//! `ingress::client_ip`, `admin::parse`, …). Everything else is
//! `pub(crate)` or private, so the dead-code lint sees it.

#![forbid(unsafe_code)]

pub mod activity;
pub mod admin;
mod admin_cli;
mod admission;
pub mod canonical;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod event;
mod http;
pub mod ingress;
pub mod lifecycle;
mod listener;
mod mac;
pub mod metrics;
pub mod providers;
mod purge;
mod quarantine;
mod reload;
pub mod replay;
mod retry;
pub mod server;
mod shutdown;
pub mod store;
mod wake;
