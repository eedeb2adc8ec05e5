//! Integration tests, one binary with a module per area, so the crate and
//! its dependencies link once. Each module drives the real server, stores
//! and processes; `common` starts them.

/// One test per case on each store: `mod embedded_store` and `mod
/// redis_store`, where each case calls the enclosing module's async
/// function of that name with a fresh store (made by `$embedded` or
/// `$redis`, which return it with a guard kept for the test's length).
macro_rules! on_both_stores {
    ($embedded:expr, $redis:expr, [$($case:ident),* $(,)?]) => {
        mod embedded_store {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let (store, _guard) = $embedded;
                    super::$case(store).await;
                }
            )*
        }
        mod redis_store {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let (store, _guard) = $redis;
                    super::$case(store).await;
                }
            )*
        }
    };
}

mod common;

mod admin;
mod backup;
mod canonical_node;
mod cli;
mod console;
mod crash;
mod delivery;
mod discard;
mod event_schema;
mod ingress;
mod layout;
mod lifecycle;
mod metrics;
mod ordering;
mod quarantine;
mod quarantine_store;
mod redis_cluster;
mod redis_failover;
mod redis_limits;
mod redis_relays;
mod redis_replicas;
mod redis_split_brain;
mod redis_tls;
mod reload;
mod restart;
mod retention;
mod store_conformance;
mod store_failure;
mod timeline;
mod webdriver;
