//! The operator commands of the command line: `deliveries list/show`,
//! `events show` and `replay`, over the admin API of a running relay.
//!
//! Output is a table for people and, with `--json`, the API's own JSON for
//! scripts. Exit codes: 0 done, 1 the relay could not be reached or failed,
//! 2 a bad request (a bad filter, say), 3 a missing or wrong token, 4 no such
//! id.

use std::fmt::Write as _;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::admin::api::{
    DeliveryDetail, DeliveryPage, DeliveryView, DiscardRequest, DiscardResult, ErrorBody, EventView, ReplayJobView,
    ReplayRequest, ReplayResult,
};
use crate::store::DeliveryState;

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
    /// pending, in_flight, delivered, dead or orphaned.
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
    /// End the orphaned deliveries of an endpoint that is no longer in the
    /// configuration: they become dead, with the reason, history kept.
    Discard {
        /// The removed endpoint's name.
        #[arg(long)]
        endpoint: String,
        /// Most deliveries one run discards (1 to 100000).
        #[arg(long)]
        max: Option<usize>,
    },
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
        DeliveriesCommand::Discard { endpoint, max } => {
            let body = json_body(&DiscardRequest { endpoint, max })?;
            let r: Answer<DiscardResult> = client.call(reqwest::Method::POST, "/admin/discard", Some(body)).await?;
            print(conn, &r.json, &r.body, |r| {
                let mut s = format!("discarded {} orphaned deliveries to {}\n", r.discarded, r.endpoint);
                if r.truncated {
                    s.push_str("stopped at --max; run the same command again for the rest\n");
                }
                s
            });
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

pub async fn replay(conn: &Connection, args: ReplayArgs) -> Result<(), ClientError> {
    let client = Client::new(conn)?;
    if !args.ids.is_empty() {
        if args.selects() {
            return Err(ClientError::BadRequest("give delivery ids or filters, not both".into()));
        }
        let q = if args.include_delivered { "?include_delivered=true" } else { "" };
        // Every id is tried, whatever happens to the others; each gets a line.
        let mut out = ReplaySummary { replayed: 0, skipped: 0, failed: 0, deliveries: Vec::new() };
        let mut failed = Vec::new();
        for id in &args.ids {
            let path = format!("/admin/deliveries/{}/replay{q}", path_segment(id));
            let outcome = match client.call::<ReplayResult>(reqwest::Method::POST, &path, None).await {
                Ok(r) => {
                    out.replayed += r.body.replayed;
                    out.skipped += r.body.skipped;
                    Outcome::Done(r.body)
                }
                // The relay is gone or refuses the token: the rest would fail alike.
                Err(e @ (ClientError::Unreachable(_) | ClientError::Unauthorized(_))) => return Err(e),
                Err(e) => {
                    let error = e.to_string();
                    failed.push(e);
                    Outcome::Failed { error }
                }
            };
            out.deliveries.push(IdOutcome { id: id.clone(), outcome });
        }
        out.failed = failed.len();
        print(conn, &out, &out, |out| {
            let mut s = String::new();
            for IdOutcome { id, outcome } in &out.deliveries {
                let _ = match outcome {
                    Outcome::Failed { error } => writeln!(s, "{id}  failed  ({error})"),
                    Outcome::Done(r) if r.replayed == 1 => writeln!(s, "{id}  replayed  (now {})", state_text(r.state)),
                    Outcome::Done(r) => writeln!(s, "{id}  skipped  (now {})", state_text(r.state)),
                };
            }
            let _ = writeln!(s, "replayed {}, skipped {}, failed {}", out.replayed, out.skipped, out.failed);
            s
        });
        // Exit as the first failure says (4 for an unknown id, …).
        return match failed.into_iter().next() {
            Some(e) => Err(ClientError::Partial(
                e.exit_code(),
                format!("{} of {} ids not replayed", out.failed, args.ids.len()),
            )),
            None => Ok(()),
        };
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
    // The same selection again, as the relay resolved it (a relative
    // `--since 24h` becomes the time it meant), with the new cursor.
    let mut again: Vec<String> = vec!["ipn-relay replay".into()];
    let f = &r.body.filter;
    for (k, v) in [
        ("state", f.state.map(DeliveryState::as_str)),
        ("source", f.source.as_deref()),
        ("endpoint", f.endpoint.as_deref()),
        ("type", f.event_type.as_deref()),
        ("since", f.since.as_deref()),
        ("until", f.until.as_deref()),
    ] {
        if let Some(v) = v {
            again.push(format!("--{k} {}", shell_word(v)));
        }
    }
    if let Some(max) = args.max {
        again.push(format!("--max {max}"));
    }
    print(conn, &r.json, &r.body, |job| {
        let mut s = format!(
            "replayed {}, skipped {} of {} considered (job {})\n",
            job.replayed, job.skipped, job.considered, job.job
        );
        if job.truncated {
            let _ = writeln!(
                s,
                "stopped at --max with more deliveries possibly matching; for the next ones run:\n  {} --cursor {}",
                again.join(" "),
                or_dash(job.continue_cursor.as_deref())
            );
        }
        s
    });
    Ok(())
}

/// What `replay ID…` prints with `--json`: a line per id, then totals.
#[derive(Serialize)]
struct ReplaySummary {
    replayed: usize,
    skipped: usize,
    failed: usize,
    deliveries: Vec<IdOutcome>,
}

#[derive(Serialize)]
struct IdOutcome {
    id: String,
    #[serde(flatten)]
    outcome: Outcome,
}

/// The relay's answer for one id, or why there is none.
#[derive(Serialize)]
#[serde(untagged)]
enum Outcome {
    Done(ReplayResult),
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

/// An absent value as table text: `-`.
fn or_dash(v: Option<&str>) -> String {
    v.unwrap_or("-").to_owned()
}

/// A delivery's state as table text; `-` if it has none.
fn state_text(s: Option<DeliveryState>) -> String {
    or_dash(s.map(DeliveryState::as_str))
}

/// Left-aligned columns, two spaces apart; long cells are cut.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    const MAX_CELL: usize = 60;
    let cut = |s: &str| -> String {
        if s.chars().count() > MAX_CELL {
            format!("{}…", s.chars().take(MAX_CELL - 1).collect::<String>())
        } else {
            s.to_owned()
        }
    };
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| cut(c)).collect()).collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).chain([header[i].len()]).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in std::iter::once(header.iter().map(|h| h.to_string()).collect::<Vec<_>>()).chain(rows) {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

fn delivery_rows(items: &[DeliveryView]) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.state.as_str().to_owned(),
                d.endpoint.clone(),
                d.event_type.clone(),
                d.attempts.to_string(),
                d.created_at.clone(),
                or_dash(d.last_error.as_deref()),
            ]
        })
        .collect()
}

const DELIVERY_HEADER: [&str; 7] = ["ID", "STATE", "ENDPOINT", "TYPE", "ATTEMPTS", "CREATED", "LAST ERROR"];

fn render_list(page: &DeliveryPage) -> String {
    let items = &page.items;
    match (items.is_empty(), page.next_cursor.as_deref()) {
        (true, None) => "no deliveries match\n".to_owned(),
        // The relay examines a bounded number of deliveries per page.
        (true, Some(c)) => {
            format!("none of the newest deliveries examined match; to look further back add --cursor {c}\n")
        }
        (false, cursor) => {
            let mut out = table(&DELIVERY_HEADER, &delivery_rows(items));
            if let Some(c) = cursor {
                let _ = writeln!(out, "more: add --cursor {c}");
            }
            out
        }
    }
}

/// `s` quoted for a POSIX shell if it needs it.
fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/+@%=,".contains(&b)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn render_delivery(detail: &DeliveryDetail) -> String {
    let d = &detail.delivery;
    let mut out = String::new();
    for (k, v) in [
        ("id", d.id.clone()),
        ("event_id", d.event_id.clone()),
        ("endpoint", d.endpoint.clone()),
        ("source", d.source.clone()),
        ("type", d.event_type.clone()),
        ("state", d.state.as_str().to_owned()),
        ("attempts", d.attempts.to_string()),
        ("next_attempt_at", or_dash(d.next_attempt_at.as_deref())),
        ("last_error", or_dash(d.last_error.as_deref())),
        ("created_at", d.created_at.clone()),
        ("updated_at", d.updated_at.clone()),
    ] {
        let _ = writeln!(out, "{:<18}{v}", format!("{k}:"));
    }
    let history = &detail.history;
    out.push('\n');
    if history.is_empty() {
        out.push_str("no attempts yet\n");
    } else {
        let rows: Vec<Vec<String>> = history
            .iter()
            .map(|a| {
                let result = match a.status {
                    Some(code) => format!("HTTP {code}"),
                    None => or_dash(a.error.as_deref()),
                };
                vec![
                    a.number.to_string(),
                    a.started_at.clone(),
                    format!("{} ms", a.duration_ms),
                    result,
                    or_dash(a.response_excerpt.as_deref()).replace(['\n', '\r'], " "),
                ]
            })
            .collect();
        out.push_str(&table(&["#", "STARTED", "DURATION", "RESULT", "RESPONSE"], &rows));
    }
    out
}

fn render_event(e: &EventView) -> String {
    let mut out = serde_json::to_string_pretty(&e.event).unwrap_or_default();
    out.push_str("\n\n");
    if e.deliveries.is_empty() {
        out.push_str("no deliveries (no endpoint matched)\n");
    } else {
        out.push_str(&table(&DELIVERY_HEADER, &delivery_rows(&e.deliveries)));
    }
    out
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
        assert!(
            matches!(read(502, "<html>"), Err(ClientError::Failed(m)) if m.contains("HTTP 502 Bad Gateway with no JSON"))
        );
    }

    #[test]
    fn tables_align_and_cut_long_cells() {
        let long = "x".repeat(80);
        let t = table(&["A", "LONG"], &[vec!["1".into(), long], vec!["22".into(), "b".into()]]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "A   LONG");
        assert!(lines[1].starts_with("1   xxx") && lines[1].ends_with('…'), "{}", lines[1]);
        assert_eq!(lines[1].chars().count(), 4 + 60);
        assert_eq!(lines[2], "22  b");
    }

    #[test]
    fn an_empty_page_says_whether_older_deliveries_were_left_unexamined() {
        let page = |v: Value| -> DeliveryPage { serde_json::from_value(v).unwrap() };
        assert_eq!(render_list(&page(json!({"items": [], "next_cursor": null}))), "no deliveries match\n");
        let out = render_list(&page(json!({"items": [], "next_cursor": "dlv_0"})));
        assert!(!out.contains("no deliveries match") && out.contains("--cursor dlv_0"), "{out}");
    }

    #[test]
    fn follow_up_commands_quote_what_the_shell_would_split() {
        assert_eq!(shell_word("deposit.confirmed"), "deposit.confirmed");
        assert_eq!(shell_word("2026-11-20T08:00:00+01:00"), "2026-11-20T08:00:00+01:00");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
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
