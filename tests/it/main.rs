//! Integration tests, one binary with a module per area, so the crate and
//! its dependencies link once. Each module drives the real server, stores
//! and processes; `common` starts them.

mod common;

mod admin;
mod backup;
mod canonical_node;
mod cli;
mod crash;
mod delivery;
mod discard;
mod event_schema;
mod ingress;
mod layout;
mod lifecycle;
mod metrics;
mod ordering;
mod redis_relays;
mod reload;
mod restart;
mod retention;
mod store_conformance;
mod store_failure;
mod timeline;
