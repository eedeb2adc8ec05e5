//! How the operator commands show the admin API's answers to people:
//! aligned tables, a line per replayed or discarded id, and the command
//! that goes on below a truncated bulk replay or discard. Pure functions of the [`crate::admin::api`]
//! types, so they are tested without a relay.

use std::fmt::Write as _;

use super::{IdOutcome, IdsSummary, Outcome};
use crate::admin::api::{
    DeliveryDetail, DeliveryPage, DeliveryView, DiscardOneResult, DiscardResult, EventView, FilterView, ReplayJobView,
    ReplayResult, SubjectView,
};
use crate::store::DeliveryState;

/// An absent value as table text: `-`.
fn or_dash(v: Option<&str>) -> String {
    v.unwrap_or("-").to_owned()
}

/// A delivery's state as table text; `-` if it has none.
fn state_text(s: Option<DeliveryState>) -> String {
    or_dash(s.map(DeliveryState::as_str))
}

/// Left-aligned columns, two spaces apart; long cells are cut.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
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
                d.id.to_string(),
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

pub(super) fn render_list(page: &DeliveryPage) -> String {
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

pub(super) fn render_delivery(detail: &DeliveryDetail) -> String {
    let d = &detail.delivery;
    let mut out = String::new();
    for (k, v) in [
        ("id", d.id.to_string()),
        ("event_id", d.event_id.to_string()),
        ("endpoint", d.endpoint.clone()),
        ("source", d.source.clone()),
        ("type", d.event_type.clone()),
        ("state", d.state.as_str().to_owned()),
        ("attempts", d.attempts.to_string()),
        ("next_attempt_at", or_dash(d.next_attempt_at.as_deref())),
        ("last_error", or_dash(d.last_error.as_deref())),
        ("discard_reason", or_dash(d.discard_reason.as_deref())),
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

pub(super) fn render_event(e: &EventView) -> String {
    let mut out = serde_json::to_string_pretty(&e.event).unwrap_or_default();
    out.push_str("\n\n");
    if e.deliveries.is_empty() {
        out.push_str("no deliveries (no endpoint matched)\n");
    } else {
        out.push_str(&table(&DELIVERY_HEADER, &delivery_rows(&e.deliveries)));
    }
    out
}

/// A subject's timeline: one row per event, its deliveries' states by
/// endpoint in the last column.
pub(super) fn render_subject(s: &SubjectView) -> String {
    let rows: Vec<Vec<String>> = s
        .events
        .iter()
        .map(|e| {
            let deliveries: Vec<String> =
                e.deliveries.iter().map(|d| format!("{}: {}", d.endpoint, d.state.as_str())).collect();
            vec![
                e.sequence.to_string(),
                e.received_at.clone().unwrap_or_default(),
                e.event_type.clone().unwrap_or_default(),
                e.provider_status.clone().unwrap_or_default(),
                if e.regression { "REGRESSION".to_owned() } else { String::new() },
                e.event_id.to_string(),
                if deliveries.is_empty() { "(none)".to_owned() } else { deliveries.join(", ") },
            ]
        })
        .collect();
    let mut out = format!("{} {} from {}: {} events\n", s.kind, s.id, s.source, s.events.len());
    out.push_str(&table(&["SEQ", "RECEIVED", "TYPE", "STATUS", "", "EVENT", "DELIVERIES"], &rows));
    out
}

/// One line per id, then the totals.
pub(super) fn render_replayed(out: &IdsSummary<ReplayResult>) -> String {
    render_ids(out, |r| match r.replayed {
        1 => format!("replayed  (now {})", state_text(r.state)),
        _ => format!("skipped  (now {})", state_text(r.state)),
    })
}

/// One line per id, then the totals.
pub(super) fn render_discarded(out: &IdsSummary<DiscardOneResult>) -> String {
    render_ids(out, |r| match r.discarded {
        1 => "discarded".to_owned(),
        _ => format!("skipped  (already {})", r.state.as_str()),
    })
}

fn render_ids<T>(out: &IdsSummary<T>, line: impl Fn(&T) -> String) -> String {
    let mut s = String::new();
    for IdOutcome { id, outcome } in &out.deliveries {
        let _ = match outcome {
            Outcome::Failed { error } => writeln!(s, "{id}  failed  ({error})"),
            Outcome::Done(r) => writeln!(s, "{id}  {}", line(r)),
        };
    }
    let (done, n) = out.done;
    let _ = writeln!(s, "{done} {n}, skipped {}, failed {}", out.skipped, out.failed);
    s
}

/// A bulk discard; if it stopped at `max`, the command that goes on below it.
pub(super) fn render_discard(r: &DiscardResult, max: Option<usize>) -> String {
    let mut s = format!("discarded {}, skipped {} of {} considered", r.discarded, r.skipped, r.considered);
    if r.in_flight > 0 {
        let _ = write!(s, "; {} being sent, left to finish", r.in_flight);
    }
    s.push('\n');
    if r.truncated {
        let _ = writeln!(
            s,
            "stopped at --max with more deliveries possibly matching; for the next ones run:\n  {} --reason {} --cursor {}",
            again("discard", &r.filter, max),
            shell_word(&r.reason),
            or_dash(r.continue_cursor.as_deref())
        );
    }
    s
}

/// A bulk replay job; if it stopped at `max`, the command that goes on
/// below it.
pub(super) fn render_job(job: &ReplayJobView, max: Option<usize>) -> String {
    let mut s = format!(
        "replayed {}, skipped {} of {} considered (job {})\n",
        job.replayed, job.skipped, job.considered, job.job
    );
    if job.truncated {
        let _ = writeln!(
            s,
            "stopped at --max with more deliveries possibly matching; for the next ones run:\n  {} --cursor {}",
            again("replay", &job.filter, max),
            or_dash(job.continue_cursor.as_deref())
        );
    }
    s
}

/// The same selection again, as the relay resolved it (a relative
/// `--since 24h` becomes the time it meant), and the same `--max`.
fn again(command: &str, f: &FilterView, max: Option<usize>) -> String {
    let mut again: Vec<String> = vec![format!("ipn-relay {command}")];
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
    if let Some(max) = max {
        again.push(format!("--max {max}"));
    }
    again.join(" ")
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

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
        let page = |v: Value| -> DeliveryPage { serde_json::from_value(v).unwrap() };
        assert_eq!(render_list(&page(json!({"items": [], "next_cursor": null}))), "no deliveries match\n");
        let out = render_list(&page(json!({"items": [], "next_cursor": "dlv_0"})));
        assert!(!out.contains("no deliveries match") && out.contains("--cursor dlv_0"), "{out}");
    }

    #[test]
    fn a_truncated_job_prints_the_command_that_goes_on_below_it() {
        let mut job: ReplayJobView = serde_json::from_value(json!({
            "job": "rpl_1", "replayed": 2, "skipped": 0, "not_found": 0, "not_configured": 0, "considered": 2,
            "finished": true, "truncated": true, "continue_cursor": "dlv_c",
            "filter": {"state": "dead", "source": null, "endpoint": "backend", "type": "a b",
                       "since": "2027-01-15T08:00:00.000Z", "until": null},
            "created_at": "2027-01-15T08:00:00.000Z", "updated_at": "2027-01-15T08:00:01.000Z"
        }))
        .unwrap();
        assert_eq!(
            render_job(&job, Some(2)),
            "replayed 2, skipped 0 of 2 considered (job rpl_1)\n\
             stopped at --max with more deliveries possibly matching; for the next ones run:\n  \
             ipn-relay replay --state dead --endpoint backend --type 'a b' --since 2027-01-15T08:00:00.000Z --max 2 \
             --cursor dlv_c\n"
        );
        job.truncated = false;
        assert_eq!(render_job(&job, Some(2)), "replayed 2, skipped 0 of 2 considered (job rpl_1)\n");
    }

    #[test]
    fn follow_up_commands_quote_what_the_shell_would_split() {
        assert_eq!(shell_word("deposit.confirmed"), "deposit.confirmed");
        assert_eq!(shell_word("2026-11-20T08:00:00+01:00"), "2026-11-20T08:00:00+01:00");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
