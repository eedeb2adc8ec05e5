//! `ipn-relay store …`: what the store of a running relay holds.

use std::fmt::Write as _;

use clap::Subcommand;

use super::{Answer, Client, ClientError, Connection, print};
use crate::admin::api::StoreView;

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Records by kind, the store's size and its oldest event.
    Stats,
}

pub async fn store(conn: &Connection, cmd: StoreCommand) -> Result<(), ClientError> {
    let client = Client::new(conn)?;
    match cmd {
        StoreCommand::Stats => {
            let s: Answer<StoreView> = client.call(reqwest::Method::GET, "/admin/store", None).await?;
            print(conn, &s.json, &s.body, render_stats);
        }
    }
    Ok(())
}

fn render_stats(s: &StoreView) -> String {
    let mut out = String::new();
    let deliveries: u64 = s.deliveries.values().sum();
    let by_state: Vec<String> = s.deliveries.iter().map(|(state, n)| format!("{} {n}", state.as_str())).collect();
    let size = match s.kind.as_str() {
        "redis" => format!("{} (the Redis server's used_memory)", bytes(s.bytes)),
        _ => bytes(s.bytes),
    };
    for (k, v) in [
        ("store", s.kind.clone()),
        ("size", size),
        ("events", s.events.to_string()),
        ("deliveries", format!("{deliveries} ({})", by_state.join(", "))),
        ("attempts", s.attempts.to_string()),
        ("replay jobs", s.replay_jobs.to_string()),
        ("dedupe keys", s.dedupe_keys.to_string()),
        ("oldest event", s.oldest_event_at.clone().unwrap_or_else(|| "-".into())),
        (
            "retention",
            format!(
                "delivered {}, dead {}, replay jobs {}; {} events queued to look at",
                s.retention.delivered, s.retention.dead, s.retention.replay_jobs, s.retention_queue
            ),
        ),
    ] {
        let _ = writeln!(out, "{:<14}{v}", format!("{k}:"));
    }
    out
}

/// Bytes for people: 1.5 MiB.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(134 * 1024 * 1024), "134.0 MiB");
    }
}
