//! `GET /admin/overview`, and the count behind a bulk replay's
//! confirmation (`"dry_run": true`).

use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::api::{self, FilterView};
use super::{Admin, Answer};
use crate::http::json_response;
use crate::store::{DeliveryFilter, DeliveryState, now_millis};

/// Open deliveries looked at for each endpoint's oldest pending one.
const OLDEST_SCAN: usize = 2_000;
/// Deliveries read per page while counting a selection, and pages at most:
/// each page examines a bounded number of records, so this bounds the work
/// of one count.
const COUNT_PAGE: usize = 1_000;
const COUNT_PAGES: usize = 20;

impl Admin {
    pub(super) async fn overview(&self) -> Answer {
        let counts = self.store.counts().await?;
        let oldest = self.store.oldest_open_by_endpoint(OLDEST_SCAN).await?;
        let config = self.live.current();
        let mut names: Vec<String> = config.endpoints.iter().map(|e| e.name.clone()).collect();
        for (name, _) in &oldest {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        let activity = &self.metrics.activity;
        let endpoints = names
            .into_iter()
            .map(|name| {
                let h = activity.health(&name);
                EndpointHealthView {
                    configured: config.endpoints.iter().any(|e| e.name == name),
                    last_success_at: h.last_success_at.map(api::time),
                    last_failure_at: h.last_failure_at.map(api::time),
                    last_error: h.last_error,
                    consecutive_failures: h.consecutive_failures,
                    in_flight: h.in_flight,
                    oldest_pending_at: oldest.iter().find(|(e, _)| *e == name).map(|(_, at)| api::time(*at)),
                    name,
                }
            })
            .collect();
        let callbacks = activity
            .callbacks(now_millis())
            .into_iter()
            .map(|((source, outcome), count)| CallbackCount { source, outcome: outcome.to_owned(), count })
            .collect();
        let view = OverviewView {
            deliveries: counts.into_iter().collect(),
            endpoints,
            callbacks,
            window_minutes: crate::activity::WINDOW_MINUTES,
        };
        Ok(json_response(StatusCode::OK, &view))
    }

    /// How many deliveries `filter` selects below `cursor`, counting to `max`.
    pub(super) async fn preview(&self, filter: DeliveryFilter, max: usize, cursor: Option<String>) -> Answer {
        let (mut matching, mut cursor, mut pages) = (0, cursor, 0);
        let (truncated, counted_all) = loop {
            let page = self.store.list(&filter, cursor.as_deref(), COUNT_PAGE.min(max - matching + 1)).await?;
            matching += page.items.len();
            pages += 1;
            if matching > max {
                matching = max;
                break (true, true);
            }
            match page.next_cursor {
                None => break (false, true),
                Some(_) if pages == COUNT_PAGES => break (false, false),
                Some(next) => cursor = Some(next),
            }
        };
        Ok(json_response(StatusCode::OK, &ReplayPreview { matching, truncated, counted_all, filter: (&filter).into() }))
    }
}

/// `GET /admin/overview`: the console's first page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverviewView {
    /// Deliveries in the store by state.
    pub deliveries: std::collections::BTreeMap<DeliveryState, u64>,
    pub endpoints: Vec<EndpointHealthView>,
    /// Callbacks this relay answered in the last `window_minutes`, by
    /// source and outcome.
    pub callbacks: Vec<CallbackCount>,
    pub window_minutes: u64,
}

/// One endpoint's health. The delivery figures are this relay's since it
/// started; `oldest_pending_at` is the store's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointHealthView {
    pub name: String,
    /// False for an endpoint removed from the configuration that still has
    /// deliveries pending.
    pub configured: bool,
    pub last_success_at: Option<String>,
    pub last_failure_at: Option<String>,
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
    pub in_flight: u64,
    /// When its oldest delivery still pending or in flight was created,
    /// among the store's oldest open deliveries (`null`: none of those).
    pub oldest_pending_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackCount {
    pub source: String,
    pub outcome: String,
    pub count: u64,
}

/// `POST /admin/replay` with `"dry_run": true`: how many deliveries the
/// selection holds (at most `max`), replaying nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayPreview {
    pub matching: usize,
    /// More match than `max`: a replay would stop at `max`.
    pub truncated: bool,
    /// False when the count stopped after 20 pages of listing without
    /// reaching either `max` or the end (a filter that matches few of very
    /// many deliveries): then at least `matching` match.
    pub counted_all: bool,
    pub filter: FilterView,
}
