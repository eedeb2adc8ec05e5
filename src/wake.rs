//! Wake-ups from ingress to the delivery loops.
//!
//! A delivery loop sleeps until its endpoint's next delivery is due. When
//! ingress admits a delivery for an endpoint it wakes that endpoint's loop,
//! so a new event goes out at once instead of at the next poll. Losing a
//! wake-up costs latency, never a delivery: the loops also poll the store.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::Config;

/// One notifier per configured endpoint.
#[derive(Default)]
pub struct Wake {
    endpoints: HashMap<String, Arc<Notify>>,
}

impl Wake {
    pub fn new(config: &Config) -> Wake {
        Wake { endpoints: config.endpoints.iter().map(|e| (e.name.clone(), Arc::new(Notify::new()))).collect() }
    }

    /// Wakes `endpoint`'s delivery loop (a permit is kept if it is busy).
    pub fn wake(&self, endpoint: &str) {
        if let Some(n) = self.endpoints.get(endpoint) {
            n.notify_one();
        }
    }

    /// What `endpoint`'s delivery loop waits on.
    pub fn notifier(&self, endpoint: &str) -> Arc<Notify> {
        self.endpoints.get(endpoint).cloned().unwrap_or_default()
    }
}
