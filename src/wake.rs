//! Wake-ups from ingress to the delivery loops.
//!
//! A delivery loop sleeps until its endpoint's next delivery is due. When
//! ingress admits a delivery for an endpoint it wakes that endpoint's loop,
//! so a new event goes out at once instead of at the next poll. Losing a
//! wake-up costs latency, never a delivery: the loops also poll the store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

use crate::config::Config;

/// One notifier per endpoint; an endpoint added by a reload gets its own
/// when its loop starts.
#[derive(Default)]
pub struct Wake {
    endpoints: RwLock<HashMap<String, Arc<Notify>>>,
}

impl Wake {
    pub fn new(config: &Config) -> Wake {
        let endpoints = config.endpoints.iter().map(|e| (e.name.clone(), Arc::new(Notify::new()))).collect();
        Wake { endpoints: RwLock::new(endpoints) }
    }

    /// Wakes `endpoint`'s delivery loop (a permit is kept if it is busy).
    pub fn wake(&self, endpoint: &str) {
        if let Some(n) = self.endpoints.read().unwrap_or_else(|e| e.into_inner()).get(endpoint) {
            n.notify_one();
        }
    }

    /// What `endpoint`'s delivery loop waits on.
    pub fn notifier(&self, endpoint: &str) -> Arc<Notify> {
        let mut endpoints = self.endpoints.write().unwrap_or_else(|e| e.into_inner());
        endpoints.entry(endpoint.to_owned()).or_default().clone()
    }
}
