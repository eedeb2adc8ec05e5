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
use serde_json::{Value, json};

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

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| {
            ClientError::Unreachable(format!("cannot reach the relay's admin API at {}: {}", self.base, root_cause(&e)))
        })?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| ClientError::Failed(format!("the relay's answer was cut off: {}", root_cause(&e))))?;
        let value: Value = serde_json::from_str(&text).map_err(|_| {
            ClientError::Failed(format!("the admin API at {} answered HTTP {status} with no JSON", self.base))
        })?;
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"]["message"].as_str().unwrap_or("no message").to_owned();
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
            let page = client.call(reqwest::Method::GET, &format!("/admin/deliveries{}", query(&pairs)), None).await?;
            print(conn, &page, render_list);
        }
        DeliveriesCommand::Show { id } => {
            let d =
                client.call(reqwest::Method::GET, &format!("/admin/deliveries/{}", path_segment(&id)), None).await?;
            print(conn, &d, render_delivery);
        }
        DeliveriesCommand::Discard { endpoint, max } => {
            let mut body = json!({"endpoint": endpoint});
            if let Some(max) = max {
                body["max"] = json!(max);
            }
            let r = client.call(reqwest::Method::POST, "/admin/discard", Some(body)).await?;
            print(conn, &r, |v| {
                let mut s = format!("discarded {} orphaned deliveries to {}\n", v["discarded"], text(&v["endpoint"]));
                if v["truncated"] == true {
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
    let e = client.call(reqwest::Method::GET, &format!("/admin/events/{}", path_segment(&id)), None).await?;
    print(conn, &e, render_event);
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
        let mut results = Vec::new();
        let (mut replayed, mut skipped, mut failed) = (0, 0, Vec::new());
        for id in &args.ids {
            let path = format!("/admin/deliveries/{}/replay{q}", path_segment(id));
            match client.call(reqwest::Method::POST, &path, None).await {
                Ok(r) => {
                    replayed += r["replayed"].as_u64().unwrap_or(0);
                    skipped += r["skipped"].as_u64().unwrap_or(0);
                    results.push(
                        json!({"id": id, "replayed": r["replayed"], "skipped": r["skipped"], "state": r["state"]}),
                    );
                }
                // The relay is gone or refuses the token: the rest would fail alike.
                Err(e @ (ClientError::Unreachable(_) | ClientError::Unauthorized(_))) => return Err(e),
                Err(e) => {
                    results.push(json!({"id": id, "error": e.to_string()}));
                    failed.push(e);
                }
            }
        }
        let out = json!({"replayed": replayed, "skipped": skipped, "failed": failed.len(), "deliveries": results});
        print(conn, &out, |v| {
            let mut s = String::new();
            for d in v["deliveries"].as_array().into_iter().flatten() {
                let id = d["id"].as_str().unwrap_or("");
                let _ = match d["error"].as_str() {
                    Some(e) => writeln!(s, "{id}  failed  ({e})"),
                    None if d["replayed"] == 1 => writeln!(s, "{id}  replayed  (now {})", text(&d["state"])),
                    None => writeln!(s, "{id}  skipped  (now {})", text(&d["state"])),
                };
            }
            let _ = writeln!(s, "replayed {}, skipped {}, failed {}", v["replayed"], v["skipped"], v["failed"]);
            s
        });
        // Exit as the first failure says (4 for an unknown id, …).
        return match failed.into_iter().next() {
            Some(e) => Err(ClientError::Partial(
                e.exit_code(),
                format!("{} of {} ids not replayed", out["failed"], args.ids.len()),
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
    let mut body = serde_json::Map::new();
    for (k, v) in args.filters.pairs() {
        body.insert(k.to_owned(), Value::String(v));
    }
    if let Some(max) = args.max {
        body.insert("max".into(), json!(max));
    }
    if let Some(cursor) = &args.cursor {
        body.insert("cursor".into(), json!(cursor));
    }
    let r = client.call(reqwest::Method::POST, "/admin/replay", Some(Value::Object(body))).await?;
    // The same selection again, as the relay resolved it (a relative
    // `--since 24h` becomes the time it meant), with the new cursor.
    let mut again: Vec<String> = vec!["ipn-relay replay".into()];
    for k in ["state", "source", "endpoint", "type", "since", "until"] {
        if let Some(v) = r["filter"][k].as_str() {
            again.push(format!("--{k} {}", shell_word(v)));
        }
    }
    if let Some(max) = args.max {
        again.push(format!("--max {max}"));
    }
    print(conn, &r, |v| {
        let mut s = format!(
            "replayed {}, skipped {} of {} considered (job {})\n",
            v["replayed"],
            v["skipped"],
            v["considered"],
            text(&v["job"])
        );
        if v["truncated"] == true {
            let _ = writeln!(
                s,
                "stopped at --max with more deliveries possibly matching; for the next ones run:\n  {} --cursor {}",
                again.join(" "),
                text(&v["continue_cursor"])
            );
        }
        s
    });
    Ok(())
}

fn print(conn: &Connection, value: &Value, render: impl Fn(&Value) -> String) {
    if conn.json {
        println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    } else {
        print!("{}", render(value));
    }
}

/// A JSON value as table text: strings bare, null as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
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

fn delivery_rows(items: &[Value]) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|d| {
            ["id", "state", "endpoint", "type", "attempts", "created_at", "last_error"]
                .iter()
                .map(|k| text(&d[*k]))
                .collect()
        })
        .collect()
}

const DELIVERY_HEADER: [&str; 7] = ["ID", "STATE", "ENDPOINT", "TYPE", "ATTEMPTS", "CREATED", "LAST ERROR"];

fn render_list(page: &Value) -> String {
    let items = page["items"].as_array().cloned().unwrap_or_default();
    match (items.is_empty(), page["next_cursor"].as_str()) {
        (true, None) => "no deliveries match\n".to_owned(),
        // The relay examines a bounded number of deliveries per page.
        (true, Some(c)) => {
            format!("none of the newest deliveries examined match; to look further back add --cursor {c}\n")
        }
        (false, cursor) => {
            let mut out = table(&DELIVERY_HEADER, &delivery_rows(&items));
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

fn render_delivery(d: &Value) -> String {
    let mut out = String::new();
    for k in [
        "id",
        "event_id",
        "endpoint",
        "source",
        "type",
        "state",
        "attempts",
        "next_attempt_at",
        "last_error",
        "created_at",
        "updated_at",
    ] {
        let _ = writeln!(out, "{:<18}{}", format!("{k}:"), text(&d[k]));
    }
    let history = d["history"].as_array().cloned().unwrap_or_default();
    out.push('\n');
    if history.is_empty() {
        out.push_str("no attempts yet\n");
    } else {
        let rows: Vec<Vec<String>> = history
            .iter()
            .map(|a| {
                let result = match (&a["status"], &a["error"]) {
                    (Value::Number(code), _) => format!("HTTP {code}"),
                    (_, e) => text(e),
                };
                vec![
                    text(&a["number"]),
                    text(&a["started_at"]),
                    format!("{} ms", text(&a["duration_ms"])),
                    result,
                    text(&a["response_excerpt"]).replace(['\n', '\r'], " "),
                ]
            })
            .collect();
        out.push_str(&table(&["#", "STARTED", "DURATION", "RESULT", "RESPONSE"], &rows));
    }
    out
}

fn render_event(e: &Value) -> String {
    let mut out = serde_json::to_string_pretty(&e["event"]).unwrap_or_default();
    out.push_str("\n\n");
    let items = e["deliveries"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        out.push_str("no deliveries (no endpoint matched)\n");
    } else {
        out.push_str(&table(&DELIVERY_HEADER, &delivery_rows(&items)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(render_list(&json!({"items": [], "next_cursor": null})), "no deliveries match\n");
        let out = render_list(&json!({"items": [], "next_cursor": "dlv_0"}));
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
