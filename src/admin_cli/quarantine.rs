//! `ipn-relay quarantine list|show|reverify`: the refused callbacks the
//! relay kept, and admitting them once the cause is fixed
//! (docs/quarantine.md), over the admin API.

use std::fmt::Write as _;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{Answer, Client, ClientError, Connection, json_body, path_segment, print, query};
use crate::admin::quarantine::{QuarantineDetail, QuarantinePageView, QuarantineView, ReverifyResult};

#[derive(Args, Clone, Default)]
pub struct QuarantineFilters {
    /// A source name (also one removed from the configuration).
    #[arg(long)]
    source: Option<String>,
    /// invalid_signature or stale_timestamp.
    #[arg(long)]
    reason: Option<String>,
    /// Received at or after: an RFC 3339 time or a duration ago (24h).
    #[arg(long)]
    since: Option<String>,
    /// Received before: an RFC 3339 time or a duration ago.
    #[arg(long)]
    until: Option<String>,
}

impl QuarantineFilters {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        [("source", &self.source), ("reason", &self.reason), ("since", &self.since), ("until", &self.until)]
            .into_iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
            .collect()
    }
}

#[derive(Subcommand)]
pub enum QuarantineCommand {
    /// List refused callbacks kept by the quarantine, newest first, with
    /// what the relay found wrong.
    List {
        #[command(flatten)]
        filters: QuarantineFilters,
        /// Items per page (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue from a previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One refused callback: its diagnosis, headers and body.
    Show { id: String },
    /// Verify kept callbacks again with the configuration in force and
    /// admit those that pass; by id, or every one the filters select.
    Reverify {
        /// Quarantine ids (qtn_…). Without ids, the filters or --max select.
        ids: Vec<String>,
        #[command(flatten)]
        filters: QuarantineFilters,
        /// Most items one reverify by filter considers (1 to 10000; 1000
        /// unless given).
        #[arg(long)]
        max: Option<usize>,
        /// Admit a Nova callback whose only fault is its timestamp (within
        /// half of store.dedupe_ttl of its receipt).
        #[arg(long)]
        allow_stale: bool,
        /// Verify against this source instead, and admit as its events:
        /// for callbacks the provider posted to the wrong URL.
        #[arg(long)]
        as_source: Option<String>,
    },
}

/// The body of `POST /admin/quarantine/reverify`.
#[derive(Serialize)]
struct ReverifyRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max: Option<usize>,
    allow_stale: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    as_source: Option<String>,
}

pub async fn quarantine(conn: &Connection, cmd: QuarantineCommand) -> Result<(), ClientError> {
    let client = Client::new(conn)?;
    match cmd {
        QuarantineCommand::List { filters, limit, cursor } => {
            let mut pairs = filters.pairs();
            pairs.push(("limit", limit.to_string()));
            if let Some(c) = cursor {
                pairs.push(("cursor", c));
            }
            let path = format!("/admin/quarantine{}", query(&pairs));
            let page: Answer<QuarantinePageView> = client.call(reqwest::Method::GET, &path, None).await?;
            print(conn, &page.json, &page.body, render_list);
        }
        QuarantineCommand::Show { id } => {
            let path = format!("/admin/quarantine/{}", path_segment(&id));
            let item: Answer<QuarantineDetail> = client.call(reqwest::Method::GET, &path, None).await?;
            print(conn, &item.json, &item.body, render_item);
        }
        QuarantineCommand::Reverify { ids, filters, max, allow_stale, as_source } => {
            let selects = !filters.pairs().is_empty() || max.is_some();
            let request = match (ids.is_empty(), selects) {
                (false, true) => {
                    return Err(ClientError::BadRequest("give quarantine ids or filters, not both".into()));
                }
                (true, false) => {
                    return Err(ClientError::BadRequest(
                        "name quarantine ids, or select them with --source, --reason, --since, --until or --max".into(),
                    ));
                }
                (false, false) => ReverifyRequest {
                    ids: Some(ids),
                    source: None,
                    reason: None,
                    since: None,
                    until: None,
                    max: None,
                    allow_stale,
                    as_source,
                },
                (true, true) => {
                    let QuarantineFilters { source, reason, since, until } = filters;
                    ReverifyRequest { ids: None, source, reason, since, until, max, allow_stale, as_source }
                }
            };
            let path = "/admin/quarantine/reverify";
            let r: Answer<ReverifyResult> =
                client.call(reqwest::Method::POST, path, Some(json_body(&request)?)).await?;
            print(conn, &r.json, &r.body, render_reverify);
        }
    }
    Ok(())
}

/// Text from an unauthenticated request as a terminal should show it:
/// control characters (an escape sequence could rewrite the screen or the
/// clipboard) escaped, line breaks kept.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '\n' | '\t' => vec![c],
            // Bidi overrides and zero-width characters could make text
            // read as something else.
            c if c.is_control() || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}') => {
                c.escape_unicode().collect()
            }
            c => vec![c],
        })
        .collect()
}

fn render_list(page: &QuarantinePageView) -> String {
    let rows: Vec<Vec<String>> = page
        .items
        .iter()
        .map(|q| {
            vec![
                q.id.clone(),
                q.received_at.clone(),
                q.source.clone(),
                q.reason.as_str().to_owned(),
                printable(&q.client),
                printable(&q.diagnosis.summary),
            ]
        })
        .collect();
    let mut out = super::render::table(&["ID", "RECEIVED", "SOURCE", "REASON", "CLIENT", "DIAGNOSIS"], &rows);
    if let Some(c) = &page.next_cursor {
        let _ = writeln!(out, "more: --cursor {c}");
    }
    out
}

fn render_item(d: &QuarantineDetail) -> String {
    let q: &QuarantineView = &d.item;
    let mut out = String::new();
    let _ = writeln!(out, "id          {}", q.id);
    let _ = writeln!(out, "source      {}", q.source);
    let _ = writeln!(out, "reason      {}", q.reason.as_str());
    let _ = writeln!(out, "received    {}", q.received_at);
    let _ = writeln!(out, "client      {}", q.client);
    let _ = writeln!(out, "size        {} bytes", q.size);
    for (name, value) in &q.headers {
        let _ = writeln!(out, "header      {name}: {}", printable(value));
    }
    let _ = writeln!(out, "\ndiagnosis   {} (checked {})", printable(&q.diagnosis.summary), q.diagnosis.checked_at);
    for f in &q.diagnosis.findings {
        let _ = writeln!(out, "  - {}", printable(f));
    }
    if !q.diagnosis.forms_tried.is_empty() {
        let _ = writeln!(
            out,
            "forms tried with {} secret(s): {}",
            q.diagnosis.secrets_tried,
            q.diagnosis.forms_tried.join("; ")
        );
    }
    match (&d.body, &d.body_base64) {
        (Some(text), _) => drop(writeln!(out, "\nbody\n{}", printable(text))),
        (None, Some(b64)) => drop(writeln!(out, "\nbody (not UTF-8, base64)\n{b64}")),
        (None, None) => {}
    }
    out
}

fn render_reverify(r: &ReverifyResult) -> String {
    let rows: Vec<Vec<String>> = r
        .items
        .iter()
        .map(|i| {
            let text = |k: &str| printable(i.get(k).and_then(|v| v.as_str()).unwrap_or("-"));
            vec![text("id"), text("outcome"), text("event_id"), text("summary")]
        })
        .collect();
    let mut out = super::render::table(&["ID", "OUTCOME", "EVENT", "WHY"], &rows);
    let counts: Vec<String> = r.counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let _ = writeln!(
        out,
        "{} considered: {}",
        r.considered,
        if counts.is_empty() { "-".into() } else { counts.join(", ") }
    );
    if r.truncated {
        let _ = writeln!(out, "more matched than --max: run it again to go on");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_from_a_request_are_escaped_for_the_terminal() {
        assert_eq!(printable("a\u{1b}]52;c;x\u{7}b\r\nc\td"), "a\\u{1b}]52;c;x\\u{7}b\\u{d}\nc\td");
        assert_eq!(printable("pay\u{202e}gnp.exe"), "pay\\u{202e}gnp.exe");
        assert_eq!(printable("plain ünïcode"), "plain ünïcode");
    }
}
