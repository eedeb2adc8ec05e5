//! The admin listener: health and readiness for orchestrators.
//!
//! `/healthz` says the process is up; `/readyz` says the store accepts
//! writes, so a load balancer stops sending callbacks to a relay that would
//! only answer 503. Both are unauthenticated and reveal nothing else.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::config::Config;
use crate::ingress::json_response;
use crate::store::Store;

/// A readiness probe must answer quickly even when the store hangs.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Admin {
    _config: Arc<Config>,
    store: Arc<dyn Store>,
}

impl Admin {
    pub fn new(config: Arc<Config>, store: Arc<dyn Store>) -> Admin {
        Admin { _config: config, store }
    }

    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
            (&Method::GET, "/readyz") => match tokio::time::timeout(READY_TIMEOUT, self.store.ping()).await {
                Ok(Ok(())) => json_response(StatusCode::OK, &json!({"status": "ready"})),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "not ready");
                    json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "unavailable"}))
                }
                Err(_) => json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "unavailable"})),
            },
            _ => json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": {"code": "not_found", "message": "no such route"}}),
            ),
        }
    }
}
