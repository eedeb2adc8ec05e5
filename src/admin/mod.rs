//! The admin listener (docs/operations.md): health, readiness and the admin API.
//!
//! `/metrics` is the Prometheus text exposition ([`crate::metrics`]).
//! `/healthz` says the process is up; `/readyz` says the store accepts
//! writes, so a load balancer stops sending callbacks to a relay that would
//! only answer 503. Both are unauthenticated and reveal nothing else.
//!
//! `/admin/*` needs `Authorization: Bearer <admin_token>`, compared in
//! constant time; with no token configured the admin API refuses every
//! request. Answers are JSON, of the types in [`api`]; errors are
//! `{"error":{"code","message"}}` with a message that names the offending
//! parameter.

pub(crate) mod api;
mod console;
mod discard;
mod overview;
mod params;
pub(crate) mod quarantine;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::admission::Admitter;
use crate::http::{AdminBody, BodyError, json_response};
use crate::metrics::Metrics;
use crate::reload::Live;
use crate::replay::{self, Running};
use crate::store::{DeliveryFilter, DeliveryId, DeliveryState, EventId, Store, StoreError, now_millis};
use api::{AttemptView, DeliveryDetail, DeliveryPage, DeliveryView, EventView, ReplayJobView, ReplayResult};
use http_body_util::Either;

#[doc(hidden)]
pub use params::parse;
use params::{json_object, parse_cursor, parse_limit, parse_time, query_pairs};

/// A readiness probe must answer quickly even when the store hangs.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// Deliveries per listing page unless `limit` says otherwise, and at most.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;
/// Deliveries one bulk replay considers unless `max` says otherwise, and at most.
const DEFAULT_REPLAY_MAX: usize = 1000;
const MAX_REPLAY_MAX: usize = 10_000;
/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 16 * 1024;

pub(crate) struct Admin {
    /// The configuration in force: a reload applies to the next request.
    live: Arc<Live>,
    store: Arc<dyn Store>,
    /// Admits what a quarantine reverify recovers.
    admitter: Arc<Admitter>,
    running: Running,
    metrics: Arc<Metrics>,
    /// Signed-in console browsers.
    sessions: console::Sessions,
}

/// An admin API error: status, code, message.
#[derive(Debug)]
struct ApiError(StatusCode, &'static str, String);

impl ApiError {
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, "bad_request", message.into())
    }
    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, "not_found", message.into())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %crate::http::Chain(&e), "admin request failed: store unavailable");
                ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the store is unavailable; try again".into())
            }
            StoreError::Corrupt { .. } => {
                tracing::error!(error = %crate::http::Chain(&e), "admin request met a corrupt record");
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, "corrupt_record", crate::http::Chain(&e).to_string())
            }
        }
    }
}

type Answer = Result<Response<Full<Bytes>>, ApiError>;

impl Admin {
    pub(crate) fn new(live: Arc<Live>, admitter: Arc<Admitter>, running: Running, metrics: Arc<Metrics>) -> Admin {
        Admin { live, store: admitter.store().clone(), admitter, running, metrics, sessions: Default::default() }
    }

    pub(crate) async fn handle<B>(&self, req: Request<B>) -> Response<AdminBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if req.uri().path() == "/admin/store/snapshot" {
            let answer = match self.authorize(&req) {
                Ok(()) if req.method() == Method::GET => self.snapshot().await,
                Ok(()) => Err(ApiError(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET".into())),
                Err(e) => Err(e),
            };
            return answer.unwrap_or_else(|e| error_response(e).map(Either::Left));
        }
        self.answer(req).await.map(Either::Left)
    }

    /// `GET /admin/store/snapshot`: a consistent copy of the embedded store,
    /// streamed from a file beside it (see `store::embedded::snapshot`).
    async fn snapshot(&self) -> Result<Response<AdminBody>, ApiError> {
        let started = std::time::Instant::now();
        let Some((file, len)) = self.store.snapshot().await? else {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "not_supported",
                "the Redis store is backed up with Redis's own persistence (see docs/operations.md)".into(),
            ));
        };
        tracing::info!(
            bytes = len,
            took_ms = started.elapsed().as_millis() as u64,
            "store snapshot taken; streaming it"
        );
        let body = crate::http::FileBody::new(tokio::fs::File::from_std(file), len);
        let mut response = Response::new(Either::Right(body));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"ipn-relay-snapshot.redb\""),
        );
        Ok(response)
    }

    async fn answer<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path().to_owned();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/metrics") => {
                let text = self.metrics.render(self.store.as_ref()).await;
                let mut response = Response::new(Full::new(Bytes::from(text)));
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
                response
            }
            (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
            (&Method::GET, "/readyz") => match tokio::time::timeout(READY_TIMEOUT, self.store.ping()).await {
                Ok(Ok(())) => json_response(StatusCode::OK, &json!({"status": "ready"})),
                Ok(Err(e)) => {
                    tracing::warn!(error = %crate::http::Chain(&e), "not ready");
                    json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "unavailable"}))
                }
                Err(_) => json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "unavailable"})),
            },
            (_, p) if p == "/ui" || p.starts_with("/ui/") => self.console(req).await,
            (_, p) if p == "/admin" || p.starts_with("/admin/") => {
                if let Err(e) = self.authorize(&req) {
                    return error_response(e);
                }
                match self.route(req).await {
                    Ok(response) => response,
                    Err(e) => error_response(e),
                }
            }
            _ => error_response(ApiError::not_found("no such route")),
        }
    }

    fn authorize<B>(&self, req: &Request<B>) -> Result<(), ApiError> {
        let unauthorized = |m: &str| ApiError(StatusCode::UNAUTHORIZED, "unauthorized", m.to_owned());
        // Digests compared in constant time hide the token's length as well
        // as its bytes. Read per request: a reload may change the token.
        let config = self.live.current();
        let Some(expected) =
            config.server.admin_token.as_ref().map(|t| -> [u8; 32] { Sha256::digest(t.expose()).into() })
        else {
            return Err(unauthorized("the admin API is disabled: set server.admin_token"));
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            // The scheme is case-insensitive (RFC 7235).
            .and_then(|v| v.get(..7).filter(|p| p.eq_ignore_ascii_case(b"bearer ")).map(|_| &v[7..]))
            .ok_or_else(|| unauthorized("missing bearer token"))?;
        let given: [u8; 32] = Sha256::digest(given).into();
        match bool::from(given.ct_eq(&expected)) {
            true => Ok(()),
            false => Err(unauthorized("wrong bearer token")),
        }
    }

    async fn route<B>(&self, req: Request<B>) -> Answer
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let segments: Vec<&str> = path.trim_start_matches("/admin/").split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["overview"]) => self.overview().await,
            (&Method::GET, ["events", id]) => self.event(&EventId::from(*id)).await,
            (&Method::GET, ["subjects", source, kind, id]) => self.subject(source, kind, id).await,
            (&Method::GET, ["deliveries"]) => self.list(&query).await,
            (&Method::GET, ["deliveries", id]) => self.delivery(&DeliveryId::from(*id)).await,
            (&Method::POST, ["deliveries", id, "replay"]) => self.replay_one(&DeliveryId::from(*id), &query).await,
            (&Method::POST, ["replay"]) => {
                let body = read_body(req.into_body()).await?;
                self.replay_bulk(&body).await
            }
            (&Method::GET, ["replays", id]) => self.replay_job(id).await,
            (&Method::POST, ["reload"]) => match self.live.reload().await {
                Ok(r) => {
                    Ok(json_response(StatusCode::OK, &json!({"result": "ok", "hash": r.hash, "changed": r.changed})))
                }
                Err(e @ crate::reload::Refused::NeedsRestart { .. }) => {
                    Err(ApiError(StatusCode::CONFLICT, "needs_restart", e.to_string()))
                }
                Err(e) => Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", e.to_string())),
            },
            (&Method::GET, ["store"]) => {
                let stats = self.store.stats().await?;
                let config = self.live.current();
                let kind = match config.store.kind {
                    crate::config::StoreKind::Embedded { .. } => "embedded",
                    crate::config::StoreKind::Redis { .. } => "redis",
                };
                Ok(json_response(StatusCode::OK, &api::StoreView::new(kind, &stats, &config.retention)))
            }
            (&Method::GET, ["quarantine"]) => self.quarantine_list(&query).await,
            (&Method::GET, ["quarantine", id]) => self.quarantine_item(id).await,
            (&Method::POST, ["quarantine", "reverify"]) => {
                let body = read_body_up_to(req.into_body(), quarantine::MAX_REVERIFY_BODY).await?;
                self.quarantine_reverify(&body).await
            }
            (&Method::POST, ["deliveries", id, "discard"]) => {
                let body = read_body(req.into_body()).await?;
                self.discard_one(&DeliveryId::from(*id), &body).await
            }
            (&Method::POST, ["discard"]) => {
                let body = read_body(req.into_body()).await?;
                self.discard_bulk(&body).await
            }
            (
                _,
                ["overview"]
                | ["events", _]
                | ["subjects", _, _, _]
                | ["deliveries"]
                | ["deliveries", _]
                | ["replays", _]
                | ["store"],
            ) => Err(ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} not allowed here"),
            )),
            (_, ["quarantine", "reverify"]) => {
                Err(ApiError(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use POST".into()))
            }
            (_, ["quarantine"] | ["quarantine", _]) => {
                Err(ApiError(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET".into()))
            }
            (_, ["deliveries", _, "replay" | "discard"] | ["replay"] | ["discard"] | ["reload"]) => {
                Err(ApiError(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use POST".into()))
            }
            _ => Err(ApiError::not_found("no such route")),
        }
    }

    async fn event(&self, id: &EventId) -> Answer {
        let event = self.store.event(id).await?.ok_or_else(|| ApiError::not_found(format!("no event {id}")))?;
        let body: Value = serde_json::from_slice(&event.json).map_err(|e| crate::store::corrupt(id.as_str(), e))?;
        let deliveries = self.store.event_deliveries(id).await?.iter().map(DeliveryView::from).collect();
        Ok(json_response(StatusCode::OK, &EventView { event: body, deliveries }))
    }

    /// A subject's timeline. Each segment is percent-decoded: an id with a
    /// `/` in it is sent as `%2F`.
    async fn subject(&self, source: &str, kind: &str, id: &str) -> Answer {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| ApiError::bad(format!("'{s}' is not UTF-8 once percent-decoded")))
        };
        let (source, kind, id) = (decode(source)?, decode(kind)?, decode(id)?);
        let entries = self.store.subject(&crate::lifecycle::key(&source, &kind, &id)).await?;
        if entries.is_empty() {
            return Err(ApiError::not_found(format!("no events of {kind} {id} from {source}")));
        }
        let events = entries.iter().map(api::TimelineItem::new).collect::<Result<_, _>>()?;
        Ok(json_response(StatusCode::OK, &api::SubjectView { source, kind, id, events }))
    }

    async fn list(&self, query: &str) -> Answer {
        let mut filter = DeliveryFilter::default();
        let (mut limit, mut cursor) = (DEFAULT_PAGE, None);
        for (key, value) in query_pairs(query)? {
            match key.as_ref() {
                "limit" => limit = parse_limit(&value)?,
                "cursor" => cursor = Some(parse_cursor(&value)?),
                k => self.filter_param(&mut filter, k, &value).await?,
            }
        }
        let page = self.store.list(&filter, cursor.as_deref(), limit).await?;
        let items = page.items.iter().map(DeliveryView::from).collect();
        Ok(json_response(StatusCode::OK, &DeliveryPage { items, next_cursor: page.next_cursor }))
    }

    /// Applies one filter parameter; unknown names are errors, so a typo
    /// never widens a listing or a bulk replay to everything.
    async fn filter_param(&self, filter: &mut DeliveryFilter, key: &str, value: &str) -> Result<(), ApiError> {
        match key {
            "state" => {
                filter.state = Some(DeliveryState::parse(value).ok_or_else(|| {
                    let states: Vec<&str> = DeliveryState::ALL.iter().map(|s| s.as_str()).collect();
                    ApiError::bad(format!("state: unknown state '{value}' ({})", states.join(", ")))
                })?)
            }
            "source" => {
                if !self.live.current().sources.iter().any(|s| s.name == value) {
                    return Err(ApiError::bad(format!("source: no source named '{value}' in the configuration")));
                }
                filter.source = Some(value.to_owned());
            }
            "endpoint" => {
                // An endpoint removed from the configuration is still found
                // by name: its orphaned and old deliveries are listed and
                // discarded by it.
                if !self.is_configured(value) && !self.store.known_endpoints().await?.iter().any(|e| e == value) {
                    return Err(ApiError::bad(format!(
                        "endpoint: no endpoint named '{value}' in the configuration or among the stored deliveries"
                    )));
                }
                filter.endpoint = Some(value.to_owned());
            }
            "type" => {
                if value.is_empty() {
                    return Err(ApiError::bad("type: must not be empty"));
                }
                filter.event_type = Some(value.to_owned());
            }
            "since" => filter.since = Some(parse_time("since", value, now_millis())?),
            "until" => filter.until = Some(parse_time("until", value, now_millis())?),
            other => return Err(ApiError::bad(format!("unknown parameter '{other}'"))),
        }
        if let (Some(since), Some(until)) = (filter.since, filter.until)
            && since >= until
        {
            return Err(ApiError::bad("since must be before until"));
        }
        Ok(())
    }

    fn is_configured(&self, endpoint: &str) -> bool {
        self.live.current().endpoints.iter().any(|e| e.name == endpoint)
    }

    /// Why deliveries to `endpoint` cannot be replayed here, if it is not
    /// configured.
    fn not_configured(&self, endpoint: &str) -> Option<ApiError> {
        (!self.is_configured(endpoint)).then(|| {
            ApiError(
                StatusCode::CONFLICT,
                "endpoint_not_configured",
                format!(
                    "endpoint '{endpoint}' is not in the configuration, so nothing would send its deliveries; add it back to deliver them (its orphaned ones resume by themselves), or end them with `ipn-relay discard --state orphaned --endpoint {endpoint} --reason TEXT`"
                ),
            )
        })
    }

    async fn delivery(&self, id: &DeliveryId) -> Answer {
        let (d, attempts) =
            self.store.delivery(id).await?.ok_or_else(|| ApiError::not_found(format!("no delivery {id}")))?;
        let history = attempts.iter().map(AttemptView::from).collect();
        Ok(json_response(StatusCode::OK, &DeliveryDetail { delivery: DeliveryView::from(&d), history }))
    }

    async fn replay_one(&self, id: &DeliveryId, query: &str) -> Answer {
        let mut include_delivered = false;
        for (key, value) in query_pairs(query)? {
            match (key.as_ref(), value.as_ref()) {
                ("include_delivered", "true") => include_delivered = true,
                ("include_delivered", "false") => include_delivered = false,
                ("include_delivered", v) => {
                    return Err(ApiError::bad(format!("include_delivered: expected true or false, got '{v}'")));
                }
                (other, _) => return Err(ApiError::bad(format!("unknown parameter '{other}'"))),
            }
        }
        if let Some((d, _)) = self.store.delivery(id).await?
            && let Some(refusal) = self.not_configured(&d.endpoint)
        {
            return Err(refusal);
        }
        let count = self.store.replay(std::slice::from_ref(id), include_delivered, now_millis()).await?;
        if count.not_found > 0 {
            return Err(ApiError::not_found(format!("no delivery {id}")));
        }
        if count.replayed > 0 {
            self.metrics.replayed(count.replayed);
            tracing::info!(delivery_id = %id, "delivery replayed");
        }
        let state = self.store.delivery(id).await?.map(|(d, _)| d.state);
        let result = ReplayResult { replayed: count.replayed, skipped: count.skipped, state };
        Ok(json_response(StatusCode::ACCEPTED, &result))
    }

    /// What the body of a bulk request (replay, discard) selects: the
    /// filter (`state` is `dead` unless given), at most `max` deliveries
    /// (`default` unless given, 1 to `most`), below `cursor`. Keys in `own`
    /// are the caller's to read.
    async fn selection(
        &self,
        fields: &serde_json::Map<String, Value>,
        default: usize,
        most: usize,
        own: &[&str],
    ) -> Result<(DeliveryFilter, usize, Option<String>), ApiError> {
        let mut filter = DeliveryFilter { state: Some(DeliveryState::Dead), ..Default::default() };
        let (mut max, mut cursor) = (default, None);
        for (key, value) in fields {
            if own.contains(&key.as_str()) {
                continue;
            }
            if key == "max" {
                max = value
                    .as_u64()
                    .filter(|m| (1..=most as u64).contains(m))
                    .ok_or_else(|| ApiError::bad(format!("max: expected a whole number from 1 to {most}")))?
                    as usize;
                continue;
            }
            let Some(text) = value.as_str() else {
                return Err(ApiError::bad(format!("{key}: expected a string")));
            };
            if key == "cursor" {
                cursor = Some(parse_cursor(text)?);
                continue;
            }
            self.filter_param(&mut filter, key, text).await?;
        }
        Ok((filter, max, cursor))
    }

    async fn replay_bulk(&self, body: &[u8]) -> Answer {
        let fields = json_object(body)?;
        let dry_run = match fields.get("dry_run") {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| ApiError::bad("dry_run: expected true or false"))?,
        };
        let (filter, max, cursor) = self.selection(&fields, DEFAULT_REPLAY_MAX, MAX_REPLAY_MAX, &["dry_run"]).await?;
        if let Some(refusal) = filter.endpoint.as_deref().and_then(|e| self.not_configured(e)) {
            return Err(refusal);
        }
        let include_delivered = match filter.state {
            Some(DeliveryState::Dead | DeliveryState::Discarded) => false,
            Some(DeliveryState::Delivered) => true,
            _ => return Err(ApiError::bad("state: only dead, discarded or delivered deliveries can be replayed")),
        };
        if dry_run {
            return self.preview(filter, max, cursor).await;
        }
        let job = replay::create(self.store.as_ref(), filter, include_delivered, max, cursor).await?;
        tracing::info!(job = %job.id, filter = ?job.filter, max, "bulk replay started");
        // The job runs in its own task: a client that hangs up does not stop
        // it half way (and housekeeping resumes it if this process stops).
        let id = job.id.clone();
        let guard = self.running.enter(&id);
        let endpoints: Arc<[String]> = self.live.current().endpoints.iter().map(|e| e.name.clone()).collect();
        match replay::spawn(self.store.clone(), job, guard, endpoints, self.metrics.clone()).await {
            Ok(Ok(job)) => Ok(json_response(StatusCode::ACCEPTED, &ReplayJobView::from(&job))),
            Ok(Err(_)) => {
                // Logged by the job's task.
                Err(ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("the store failed during replay job {id}; the relay resumes it (GET /admin/replays/{id})"),
                ))
            }
            Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("replay job {id}: {e}"))),
        }
    }

    async fn replay_job(&self, id: &str) -> Answer {
        let job = self.store.replay_job(id).await?.ok_or_else(|| ApiError::not_found(format!("no replay job {id}")))?;
        Ok(json_response(StatusCode::OK, &ReplayJobView::from(&job)))
    }
}

async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    read_body_up_to(body, MAX_ADMIN_BODY).await
}

async fn read_body_up_to<B>(body: B, max: usize) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    crate::http::read_body(body, max, None).await.map_err(|e| match e {
        BodyError::TooLarge(_) => ApiError(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", e.to_string()),
        _ => ApiError::bad(format!("body: {e}")),
    })
}

fn error_response(ApiError(status, code, message): ApiError) -> Response<Full<Bytes>> {
    let mut response = crate::http::error_response(status, code, &message);
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}
