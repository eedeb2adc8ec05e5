//! `ipn-relay store …`: what the store of a running relay holds, and a
//! backup of it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Subcommand;

use super::{Answer, Client, ClientError, Connection, print, root_cause};
use crate::admin::api::StoreView;

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Records by kind, the store's size and its oldest event.
    Stats,
    /// Save a consistent copy of the embedded store to FILE, taken while
    /// the relay serves (a relay started on it has everything admitted
    /// before the copy began). FILE must not exist.
    Backup { file: PathBuf },
}

pub async fn store(conn: &Connection, cmd: StoreCommand) -> Result<(), ClientError> {
    let client = Client::new(conn)?;
    match cmd {
        StoreCommand::Stats => {
            let s: Answer<StoreView> = client.call(reqwest::Method::GET, "/admin/store", None).await?;
            print(conn, &s.json, &s.body, render_stats);
        }
        StoreCommand::Backup { file } => {
            let started = Instant::now();
            let bytes = backup(&client, &file).await?;
            println!("saved {} to {} in {:.1}s", bytes_text(bytes), file.display(), started.elapsed().as_secs_f64());
        }
    }
    Ok(())
}

/// Streams the snapshot to `FILE.partial`, syncs it, and renames it to
/// `file`: an interrupted backup never leaves a truncated `file`.
async fn backup(client: &Client, file: &Path) -> Result<u64, ClientError> {
    if file.exists() {
        return Err(ClientError::BadRequest(format!("{} exists; name a new file", file.display())));
    }
    let mut partial = file.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut req =
        client.http.get(format!("{}/admin/store/snapshot", client.base)).timeout(Duration::from_secs(24 * 3600));
    if let Some(t) = &client.token {
        req = req.bearer_auth(t);
    }
    let unreachable = |e: reqwest::Error| {
        ClientError::Unreachable(format!("cannot reach the relay's admin API at {}: {}", client.base, root_cause(&e)))
    };
    let mut resp = req.send().await.map_err(unreachable)?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        // The relay's error, read as every command reads one.
        return Err(
            match client.read::<serde_json::Value>(&reqwest::Method::GET, "/admin/store/snapshot", status, &text) {
                Err(e) => e,
                Ok(_) => ClientError::Failed(format!("the relay answered HTTP {status}")),
            },
        );
    }
    let write_err = |e: std::io::Error| ClientError::Failed(format!("cannot write {}: {e}", partial.display()));
    // A `.partial` left by an interrupted run is written over.
    let mut out = std::fs::File::create(&partial).map_err(write_err)?;
    let mut written = 0u64;
    let copied = async {
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            ClientError::Failed(format!("the snapshot was cut off after {written} bytes: {}", root_cause(&e)))
        })? {
            out.write_all(&chunk).map_err(write_err)?;
            written += chunk.len() as u64;
        }
        out.sync_all().map_err(write_err)?;
        Ok::<_, ClientError>(())
    }
    .await;
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    // A link, not a rename: it fails if FILE appeared meanwhile, so nothing
    // is ever overwritten.
    let linked = std::fs::hard_link(&partial, file);
    let _ = std::fs::remove_file(&partial);
    linked.map_err(|e| ClientError::Failed(format!("cannot create {}: {e}", file.display())))?;
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    Ok(written)
}

fn render_stats(s: &StoreView) -> String {
    let mut out = String::new();
    let deliveries: u64 = s.deliveries.values().sum();
    let by_state: Vec<String> = s.deliveries.iter().map(|(state, n)| format!("{} {n}", state.as_str())).collect();
    let size = match s.kind.as_str() {
        "redis" => format!("{} (the Redis server's used_memory)", bytes_text(s.bytes)),
        _ => bytes_text(s.bytes),
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
        ("quarantine", format!("{} refused callbacks, {} bytes", s.quarantine_items, s.quarantine_bytes)),
        (
            "retention",
            format!(
                "delivered {}, dead {}, replay jobs {}; {} queue entries to look at",
                s.retention.delivered, s.retention.dead, s.retention.replay_jobs, s.retention_queue
            ),
        ),
    ] {
        let _ = writeln!(out, "{:<14}{v}", format!("{k}:"));
    }
    out
}

/// Bytes for people: 1.5 MiB.
fn bytes_text(n: u64) -> String {
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
        assert_eq!(bytes_text(512), "512 B");
        assert_eq!(bytes_text(1536), "1.5 KiB");
        assert_eq!(bytes_text(134 * 1024 * 1024), "134.0 MiB");
    }
}
