//! ipn-relay: verifies, dedupes and durably relays payment-provider callbacks.
//!
//! The modules follow the pipeline: [`ingress`] takes `POST /hooks/{source}`,
//! [`providers`] verify and normalise each provider's callbacks (using the
//! [`canonical`] JSON form), [`event`] is the normalised event, and [`store`]
//! admits it atomically with its dedupe key and deliveries. [`delivery`]
//! sends each delivery to its endpoint with [`retry`]s; [`admin`] and
//! [`admin_cli`] let operators list and [`replay`] them, both ends speaking
//! the types of [`admin::api`]; [`metrics`] counts it all for Prometheus.
//! [`server`] runs the listeners, [`cli`] the binary.

#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_cli;
pub mod canonical;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod event;
pub mod http;
pub mod ingress;
pub mod listener;
pub mod mac;
pub mod metrics;
pub mod providers;
pub mod replay;
pub mod retry;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod wake;
