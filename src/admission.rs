//! Admission: a verified, normalised callback becomes a stored event with
//! one delivery per matching endpoint, durably, before anyone is told it
//! was taken. Ingress admits what providers send; a quarantine reverify
//! admits, by the same path, what was refused before (`quarantine`).

use std::sync::Arc;

use time::OffsetDateTime;

use crate::config::{Config, Source};
use crate::event::{Event, Normalised};
use crate::http::Chain;
use crate::metrics::Metrics;
use crate::store::{Admission, DeliveryId, EventId, NewDelivery, NewEvent, Numbering, Store};
use crate::wake::Wake;

/// Where a recovered event came from: the quarantine item, and whether its
/// timestamp's tolerance was waived.
#[derive(Debug, Clone)]
pub(crate) struct Recovery {
    pub from: String,
    pub stale_timestamp_accepted: bool,
}

/// The store did not take the event: failed, or did not answer within
/// `admission_timeout` (the write may still commit; a retry is then a
/// duplicate).
#[derive(Debug, thiserror::Error)]
#[error("the store did not take the event")]
pub(crate) struct NotAdmitted;

pub(crate) struct Admitter {
    store: Arc<dyn Store>,
    wake: Arc<Wake>,
    metrics: Arc<Metrics>,
    dedupe_ttl_ms: u64,
}

impl Admitter {
    pub(crate) fn new(config: &Config, store: Arc<dyn Store>, wake: Arc<Wake>, metrics: Arc<Metrics>) -> Admitter {
        Admitter { store, wake, metrics, dedupe_ttl_ms: config.store.dedupe_ttl.as_millis() as u64 }
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Stores the event of `normalised` from `source`, received at
    /// `received_at`, with a delivery to each endpoint of `config` that
    /// wants it, and wakes their loops.
    pub(crate) async fn admit(
        &self,
        config: &Config,
        source: &Source,
        normalised: Normalised,
        received_at: OffsetDateTime,
        recovery: Option<Recovery>,
    ) -> Result<(Admission, EventId), NotAdmitted> {
        let mut event = Event::new(&source.name, source.kind.as_str(), normalised, received_at);
        if let Some(r) = recovery {
            event.recovered_from = Some(r.from);
            event.stale_timestamp_accepted = r.stale_timestamp_accepted;
        }
        let received_ms = (received_at.unix_timestamp_nanos() / 1_000_000) as u64;
        let deliveries = config
            .endpoints
            .iter()
            .filter(|ep| ep.wants(&source.name, &event.event_type))
            .map(|ep| NewDelivery { id: DeliveryId::new(received_ms), endpoint: ep.name.clone(), policy: ep.policy() })
            .collect::<Vec<_>>();
        if deliveries.is_empty() {
            tracing::info!(source = %source.name, event_id = %event.id, event_type = %event.event_type, "event matches no endpoint; stored without deliveries");
        }
        let id = event.id.clone();
        let endpoints: Vec<String> = deliveries.iter().map(|d| d.endpoint.clone()).collect();
        let (json, subject) = match event.subject_ref() {
            Some(subject) => {
                let (json, at) = event.to_json_unnumbered();
                (json, Some(Numbering { subject, at }))
            }
            None => (event.to_json(), None),
        };
        let new = NewEvent {
            id: event.id.clone(),
            source: source.name.clone(),
            event_type: event.event_type.clone(),
            received_at: received_ms,
            json,
            subject,
        };
        let admit = self.store.admit(new, deliveries, self.dedupe_ttl_ms);
        match tokio::time::timeout(config.server.admission_timeout, admit).await {
            Ok(Ok(admission)) => {
                if let Admission::Accepted { regression } = admission {
                    endpoints.iter().for_each(|ep| self.wake.wake(ep));
                    if regression {
                        self.metrics.regression(&source.name);
                    }
                }
                Ok((admission, id))
            }
            Ok(Err(e)) => {
                tracing::error!(source = %source.name, event_id = %id, error = %Chain(&e), "admission failed");
                Err(NotAdmitted)
            }
            Err(_) => {
                // The write may still commit later; the provider's retry is
                // then answered "duplicate". Never a 200 before the commit.
                tracing::error!(source = %source.name, event_id = %id, "admission timed out; the store is not answering");
                Err(NotAdmitted)
            }
        }
    }
}
