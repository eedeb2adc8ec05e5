//! The operator commands of the command line: `deliveries list/show`,
//! `events show`, `subject`, `replay`, `discard`, `store` and `quarantine`, over the admin API of a running
//! relay.
//!
//! Output is a table for people and, with `--json`, the API's own JSON for
//! scripts. Exit codes: 0 done, 1 the relay could not be reached or failed,
//! 2 a bad request (a bad filter, say), 3 a missing or wrong token, 4 no such
//! id.

mod quarantine;
mod render;
mod store;

pub use quarantine::{QuarantineCommand, quarantine};
pub use store::{StoreCommand, store};

use std::time::Duration;

use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::admin::api::{
    DeliveryDetail, DeliveryPage, DiscardOneRequest, DiscardOneResult, DiscardRequest, DiscardResult, ErrorBody,
    EventView, ReplayJobView, ReplayRequest, ReplayResult, SubjectView,
};
use render::{
    render_delivery, render_discard, render_discarded, render_event, render_job, render_list, render_replayed,
    render_subject,
};

/// What failed, and the exit code it gives.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
    /// Some of several requests failed, each already reported: the exit
    /// code of the first failure, and a summary.
    #[error("{1}")]
    Partial(u8, String),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable(_) | ClientError::Failed(_) => 1,
            ClientError::BadRequest(_) => 2,
            ClientError::Unauthorized(_) => 3,
            ClientError::NotFound(_) => 4,
            ClientError::Partial(code, _) => *code,
        }
    }
}

#[derive(Args, Clone)]
pub struct Connection {
    /// The relay's admin listener.
    #[arg(long, env = "IPN_RELAY_ADMIN_URL", default_value = "http://127.0.0.1:9090", global = true)]
    admin_url: String,
    /// The admin token (server.admin_token).
    #[arg(long, env = "IPN_RELAY_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args, Clone, Default)]
pub struct Filters {
    /// pending, in_flight, delivered, dead, discarded or orphaned.
    #[arg(long)]
    state: Option<String>,
    /// A source name from the configuration.
    #[arg(long)]
    source: Option<String>,
    /// An endpoint name (from the configuration, or one removed from it).
    #[arg(long)]
    endpoint: Option<String>,
    /// A normalised event type, e.g. deposit.confirmed.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Created at or after: an RFC 3339 time or a duration ago (24h).
    #[arg(long)]
    since: Option<String>,
    /// Created before: an RFC 3339 time or a duration ago.
    #[arg(long)]
    until: Option<String>,
}

impl Filters {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        [
            ("state", &self.state),
            ("source", &self.source),
            ("endpoint", &self.endpoint),
            ("type", &self.event_type),
            ("since", &self.since),
            ("until", &self.until),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }

    fn is_empty(&self) -> bool {
        self.pairs().is_empty()
    }
}

#[derive(Subcommand)]
pub enum DeliveriesCommand {
    /// List deliveries, newest first.
    List {
        #[command(flatten)]
        filters: Filters,
        /// Deliveries per page (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue from a previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One delivery with every attempt.
    Show { id: String },
}

#[derive(Subcommand)]
pub enum EventsCommand {
    /// One event and its deliveries.
    Show { id: String },
}

#[derive(Args)]
pub struct ReplayArgs {
    /// Delivery ids to replay. Without ids, replays the deliveries that the
    /// filters, --max or --cursor select: dead ones unless --state delivered.
    /// A bare `replay` does nothing: say --state dead to mean every dead one.
    ids: Vec<String>,
    #[command(flatten)]
    filters: Filters,
    /// Also replay delivered deliveries named by id.
    #[arg(long)]
    include_delivered: bool,
    /// Most deliveries one bulk replay considers (1 to 10000).
    #[arg(long)]
    max: Option<usize>,
    /// Go on below a bulk replay that stopped at --max: the cursor it printed.
    #[arg(long)]
    cursor: Option<String>,
}

impl ReplayArgs {
    /// Whether a bulk replay was asked for: a filter, a bound or a cursor.
    fn selects(&self) -> bool {
        !self.filters.is_empty() || self.max.is_some() || self.cursor.is_some()
    }
}

#[derive(Args)]
pub struct DiscardArgs {
    /// Delivery ids to discard. Without ids, discards the deliveries that
    /// the filters, --max or --cursor select: dead ones unless --state
    /// pending or orphaned. A bare `discard` does nothing.
    ids: Vec<String>,
    #[command(flatten)]
    filters: Filters,
    /// Why these deliveries will not be sent; kept on each one.
    #[arg(long)]
    reason: String,
    /// Most deliveries one bulk discard considers (1 to 100000).
    #[arg(long)]
    max: Option<usize>,
    /// Go on below a bulk discard that stopped at --max: the cursor it printed.
    #[arg(long)]
    cursor: Option<String>,
}

/// An answer of the admin API: the JSON as it came, which `--json` prints,
/// and read as the type the route answers with, which the tables show.
struct Answer<T> {
    json: Value,
    body: T,
}

/// A blocking-free client for one command.
struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(c: &Connection) -> Result<Client, ClientError> {
        let http = crate::http::client_builder()
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ClientError::Failed(format!("cannot build an HTTP client: {e}")))?;
        Ok(Client { http, base: c.admin_url.trim_end_matches('/').to_owned(), token: c.token.clone() })
    }

    /// Sends a request and reads a success as `T`; `body` is a request
    /// type of [`crate::admin::api`], as JSON.
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Answer<T>, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.map_err(|e| {
            ClientError::Unreachable(format!("cannot reach the relay's admin API at {}: {}", self.base, root_cause(&e)))
        })?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| ClientError::Failed(format!("the relay's answer was cut off: {}", root_cause(&e))))?;
        self.read(&method, path, status, &text)
    }

    /// An answer to `method path`: a success read as `T`, or the error it
    /// reports.
    fn read<T: DeserializeOwned>(
        &self,
        method: &reqwest::Method,
        path: &str,
        status: reqwest::StatusCode,
        text: &str,
    ) -> Result<Answer<T>, ClientError> {
        let value: Value = serde_json::from_str(text).map_err(|_| {
            ClientError::Failed(format!("the admin API at {} answered HTTP {status} with no JSON", self.base))
        })?;
        if status.is_success() {
            // A relay of another version, or not a relay: say so, rather
            // than print a table of blanks.
            let body = T::deserialize(&value).map_err(|e| {
                ClientError::Failed(format!(
                    "the admin API at {} answered {method} {path} with JSON this command cannot read ({e}); \
                     is it a relay of the same version?",
                    self.base
                ))
            })?;
            return Ok(Answer { json: value, body });
        }
        let message = ErrorBody::deserialize(&value).map_or_else(|_| "no message".to_owned(), |b| b.error.message);
        Err(match status.as_u16() {
            400 => ClientError::BadRequest(message),
            401 if self.token.is_none() => {
                ClientError::Unauthorized(format!("{message}: pass --token or set IPN_RELAY_ADMIN_TOKEN"))
            }
            401 => ClientError::Unauthorized(message),
            404 if message == "no such route" => ClientError::Failed(format!(
                "{} is not a relay's admin listener (its answer: {message}); check --admin-url",
                self.base
            )),
            404 => ClientError::NotFound(message),
            code => ClientError::Failed(format!("{message} (HTTP {code})")),
        })
    }
}

/// A request body as the API reads it.
fn json_body(body: &impl Serialize) -> Result<String, ClientError> {
    serde_json::to_string(body).map_err(|e| ClientError::Failed(format!("cannot write the request as JSON: {e}")))
}

fn root_cause(e: &reqwest::Error) -> String {
    crate::http::root_cause(e).to_string()
}

fn query(pairs: &[(&str, String)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    let q = q.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

fn path_segment(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

/// Runs an operator command and prints its output.
pub async fn deliveries(conn: &Connection, cmd: DeliveriesCommand) -> Result<(), ClientError> {
    let client = Client::new(conn)?;
    match cmd {
        DeliveriesCommand::List { filters, limit, cursor } => {
            let mut pairs = filters.pairs();
            pairs.push(("limit", limit.to_string()));
            if let Some(c) = cursor {
                pairs.push(("cursor", c));
            }
            let path = format!("/admin/deliveries{}", query(&pairs));
            let page: Answer<DeliveryPage> = client.call(reqwest::Method::GET, &path, None).await?;
            print(conn, &page.json, &page.body, render_list);
        }
        DeliveriesCommand::Show { id } => {
            let path = format!("/admin/deliveries/{}", path_segment(&id));
            let d: Answer<DeliveryDetail> = client.call(reqwest::Method::GET, &path, None).await?;
            print(conn, &d.json, &d.body, render_delivery);
        }
    }
    Ok(())
}

pub async fn events(conn: &Connection, cmd: EventsCommand) -> Result<(), ClientError> {
    let client = Client::new(conn)?;
    let EventsCommand::Show { id } = cmd;
    let path = format!("/admin/events/{}", path_segment(&id));
    let e: Answer<EventView> = client.call(reqwest::Method::GET, &path, None).await?;
    print(conn, &e.json, &e.body, render_event);
    Ok(())
}

/// `ipn-relay subject SOURCE KIND ID`: a subject's timeline.
pub async fn subject(conn: &Connection, source: &str, kind: &str, id: &str) -> Result<(), ClientError> {
    let client = Client::new(conn)?;
    let seg = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    let path = format!("/admin/subjects/{}/{}/{}", seg(source), seg(kind), seg(id));
    let s: Answer<SubjectView> = client.call(reqwest::Method::GET, &path, None).await?;
    print(conn, &s.json, &s.body, render_subject);
    Ok(())
}

pub async fn replay(conn: &Connection, args: ReplayArgs) -> Result<(), ClientError> {
    let client = Client::new(conn)?;
    if !args.ids.is_empty() {
        if args.selects() {
            return Err(ClientError::BadRequest("give delivery ids or filters, not both".into()));
        }
        let q = if args.include_delivered { "?include_delivered=true" } else { "" };
        let (deliveries, failed) =
            each_id(&client, &args.ids, |id| format!("/admin/deliveries/{}/replay{q}", path_segment(id)), None).await?;
        let done = deliveries.iter().filter_map(|d| match &d.outcome {
            Outcome::Done(r) => Some(r),
            Outcome::Failed { .. } => None,
        });
        let (replayed, skipped) = done.fold((0, 0), |(r, s), d: &ReplayResult| (r + d.replayed, s + d.skipped));
        let out = IdsSummary { done: ("replayed", replayed), skipped, failed: failed.len(), deliveries };
        print(conn, &out, &out, render_replayed);
        return partial(failed, "replayed", args.ids.len());
    }
    if !args.selects() {
        return Err(ClientError::BadRequest(
            "name delivery ids, or select deliveries with filters (for every dead one: --state dead)".into(),
        ));
    }
    if args.include_delivered {
        return Err(ClientError::BadRequest(
            "with filters, use --state delivered to replay delivered deliveries".into(),
        ));
    }
    let Filters { state, source, endpoint, event_type, since, until } = args.filters;
    let request =
        ReplayRequest { state, source, endpoint, event_type, since, until, max: args.max, cursor: args.cursor };
    let r: Answer<ReplayJobView> =
        client.call(reqwest::Method::POST, "/admin/replay", Some(json_body(&request)?)).await?;
    print(conn, &r.json, &r.body, |job| render_job(job, args.max));
    Ok(())
}

pub async fn discard(conn: &Connection, args: DiscardArgs) -> Result<(), ClientError> {
    let client = Client::new(conn)?;
    let selects = !args.filters.is_empty() || args.max.is_some() || args.cursor.is_some();
    if !args.ids.is_empty() {
        if selects {
            return Err(ClientError::BadRequest("give delivery ids or filters, not both".into()));
        }
        let body = json_body(&DiscardOneRequest { reason: args.reason.clone() })?;
        let path = |id: &str| format!("/admin/deliveries/{}/discard", path_segment(id));
        let (deliveries, failed) = each_id(&client, &args.ids, path, Some(body)).await?;
        let discarded = deliveries
            .iter()
            .filter(|d| matches!(&d.outcome, Outcome::Done(DiscardOneResult { discarded: 1, .. })))
            .count();
        let skipped = args.ids.len() - failed.len() - discarded;
        let out = IdsSummary { done: ("discarded", discarded), skipped, failed: failed.len(), deliveries };
        print(conn, &out, &out, render_discarded);
        return partial(failed, "discarded", args.ids.len());
    }
    if !selects {
        return Err(ClientError::BadRequest(
            "name delivery ids, or select deliveries with filters (for every dead one: --state dead)".into(),
        ));
    }
    let Filters { state, source, endpoint, event_type, since, until } = args.filters;
    let select =
        ReplayRequest { state, source, endpoint, event_type, since, until, max: args.max, cursor: args.cursor };
    let request = DiscardRequest { select, reason: args.reason };
    let r: Answer<DiscardResult> =
        client.call(reqwest::Method::POST, "/admin/discard", Some(json_body(&request)?)).await?;
    print(conn, &r.json, &r.body, |d| render_discard(d, args.max));
    Ok(())
}

/// Calls `path(id)` for every id, whatever happens to the others; each gets
/// an outcome. Stops at once only when the relay is gone or refuses the
/// token, since the rest would fail alike.
async fn each_id<T: DeserializeOwned>(
    client: &Client,
    ids: &[String],
    path: impl Fn(&str) -> String,
    body: Option<String>,
) -> Result<(Vec<IdOutcome<T>>, Vec<ClientError>), ClientError> {
    let (mut out, mut failed) = (Vec::new(), Vec::new());
    for id in ids {
        let outcome = match client.call::<T>(reqwest::Method::POST, &path(id), body.clone()).await {
            Ok(r) => Outcome::Done(r.body),
            Err(e @ (ClientError::Unreachable(_) | ClientError::Unauthorized(_))) => return Err(e),
            Err(e) => {
                let error = e.to_string();
                failed.push(e);
                Outcome::Failed { error }
            }
        };
        out.push(IdOutcome { id: id.clone(), outcome });
    }
    Ok((out, failed))
}

/// Exits as the first failure says (4 for an unknown id, …).
fn partial(failed: Vec<ClientError>, done: &str, of: usize) -> Result<(), ClientError> {
    let n = failed.len();
    match failed.into_iter().next() {
        Some(e) => Err(ClientError::Partial(e.exit_code(), format!("{n} of {of} ids not {done}"))),
        None => Ok(()),
    }
}

/// What `replay ID…` and `discard ID…` print: totals, the first named by
/// what was done (`replayed`, `discarded`), and an outcome per id.
struct IdsSummary<T> {
    done: (&'static str, usize),
    skipped: usize,
    failed: usize,
    deliveries: Vec<IdOutcome<T>>,
}

impl<T: Serialize> Serialize for IdsSummary<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(4))?;
        map.serialize_entry(self.done.0, &self.done.1)?;
        map.serialize_entry("skipped", &self.skipped)?;
        map.serialize_entry("failed", &self.failed)?;
        map.serialize_entry("deliveries", &self.deliveries)?;
        map.end()
    }
}

#[derive(Serialize)]
struct IdOutcome<T> {
    id: String,
    #[serde(flatten)]
    outcome: Outcome<T>,
}

/// The relay's answer for one id, or why there is none.
#[derive(Serialize)]
#[serde(untagged)]
enum Outcome<T> {
    Done(T),
    Failed { error: String },
}

/// `json` with `--json`, else `body` rendered for people. The JSON goes
/// through a [`Value`], so its keys come out sorted, as the relay's do.
fn print<T>(conn: &Connection, json: &impl Serialize, body: &T, render: impl Fn(&T) -> String) {
    if conn.json {
        let value = serde_json::to_value(json).unwrap_or_default();
        println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    } else {
        print!("{}", render(body));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_answer_that_is_not_the_expected_type_is_a_clear_failure() {
        let conn = Connection { admin_url: "http://127.0.0.1:9".into(), token: Some("t".into()), json: false };
        let client = Client::new(&conn).unwrap();
        let read = |status: u16, text: &str| {
            let status = reqwest::StatusCode::from_u16(status).unwrap();
            client.read::<DeliveryPage>(&reqwest::Method::GET, "/admin/deliveries?limit=50", status, text)
        };
        let page = read(200, r#"{"items":[],"next_cursor":"dlv_0"}"#).unwrap();
        assert_eq!((page.body.next_cursor.as_deref(), &page.json["next_cursor"]), (Some("dlv_0"), &json!("dlv_0")));
        let Err(ClientError::Failed(message)) = read(200, r#"{"deliveries":[]}"#) else { panic!("read as a page") };
        assert!(
            message.starts_with("the admin API at http://127.0.0.1:9 answered GET /admin/deliveries?limit=50")
                && message.contains("missing field `items`"),
            "{message}"
        );
        // Errors keep their exit codes; an error body of another shape has no message.
        let bad = read(400, r#"{"error":{"code":"bad_request","message":"state: unknown state 'x'"}}"#);
        assert!(matches!(bad, Err(ClientError::BadRequest(m)) if m == "state: unknown state 'x'"));
        assert!(matches!(read(404, r#"{"error":"gone"}"#), Err(ClientError::NotFound(m)) if m == "no message"));
        // A message without a code is still shown.
        assert!(
            matches!(read(404, r#"{"error":{"message":"no delivery x"}}"#), Err(ClientError::NotFound(m)) if m == "no delivery x")
        );
        assert!(
            matches!(read(502, "<html>"), Err(ClientError::Failed(m)) if m.contains("HTTP 502 Bad Gateway with no JSON"))
        );
    }

    #[test]
    fn queries_are_encoded() {
        assert_eq!(
            query(&[("type", "deposit.confirmed".into()), ("since", "2026-11-20T08:00:00+01:00".into())]),
            "?type=deposit.confirmed&since=2026-11-20T08%3A00%3A00%2B01%3A00"
        );
        assert_eq!(query(&[]), "");
    }
}
