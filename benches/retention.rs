//! Retention and the quarantine under load: the store stops growing,
//! purging a backlog does not slow admissions down, and neither does a
//! flood of forged callbacks.
//!
//! Run: `cargo bench --bench retention -- soak`, `-- purge` or `-- flood`, with
//! `BENCH_STORE=redis` for a private redis-server (AOF, `appendfsync
//! always`) instead of the embedded file.
//!
//! - **soak**: the relay (retention of one minute for every class) takes
//!   SOAK_RATE signed IPNs a second (default 500) for SOAK_MINUTES (default
//!   12) while delivering them to a receiver that answers 200, with
//!   `dedupe_ttl` SOAK_DEDUPE_TTL (default 1m; dedupe keys outlive their
//!   events by design and bound the store's size as well). Every minute
//!   it prints the store's size (the file, or Redis's `used_memory`), the
//!   events stored and the events removed so far.
//! - **purge**: PURGE_EVENTS settled events (default 333,334: a million
//!   records with their deliveries and attempts) are written straight into
//!   a store, then one relay takes PURGE_RATE IPNs a second (default
//!   1,000) in a warm-up window (not counted), then PURGE_PAIRS (default
//!   4) pairs of windows of PURGE_SECS
//!   (default 15): the first of each pair with a retention the backlog is
//!   not due for (no purging), the second with one it is all past, switched
//!   by a reload. It prints each window's ingest latency (open loop, from
//!   each post's scheduled time) and what retention removed meanwhile, and
//!   the median p99 of each half. On Redis each row also says how many AOF
//!   rewrites have run so far (a rewrite forks the server and stalls fsyncs).
//! - **flood**: one relay takes FLOOD_RATE genuine IPNs a second (default
//!   500) in windows of FLOOD_SECS (default 15), in FLOOD_ROUNDS (default
//!   3) rounds of three: no flood; a flood of forged callbacks (wrong
//!   signature, real-looking bodies, each from another address through a
//!   trusted proxy) over FLOOD_CONNS connections (default 16) as fast as
//!   they go, with the quarantine off; the same flood with it on. The
//!   quarantine is switched by a reload, and is filled up to its cap
//!   (64 MiB) in the first flood window with it on. It prints each window's
//!   genuine ingest latency, the forgeries sent, and what the quarantine
//!   kept and dropped, then the median p99 of each kind of window.

#[path = "../tests/it/common.rs"]
mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipn_relay::providers::nowpayments;
use ipn_relay::store::{AttemptResult, DeliveryId, NewDelivery, NewEvent, Next, Store};

const TOKEN: &str = "bench-admin-token-0123456789";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("retention benchmark: run with `cargo bench --bench retention -- soak|purge|flood`");
        return;
    }
    let mode =
        std::env::args().skip(1).find(|a| a == "soak" || a == "purge" || a == "flood").unwrap_or_else(|| "soak".into());
    let redis = (std::env::var("BENCH_STORE").as_deref() == Ok("redis"))
        .then(|| common::RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = Target { dir: dir.path().to_owned(), redis_url: redis.as_ref().map(|r| r.url.clone()) };
    match mode.as_str() {
        "soak" => rt.block_on(soak(&target)),
        "flood" => rt.block_on(flood(&target)),
        _ => rt.block_on(purge(&target)),
    }
}

/// Where the relay keeps its data.
struct Target {
    dir: std::path::PathBuf,
    redis_url: Option<String>,
}

impl Target {
    fn store_toml(&self) -> String {
        match &self.redis_url {
            Some(url) => format!("kind = \"redis\"\nurl = \"{url}\"\nprefix = \"bench\""),
            None => format!("path = \"{}\"", self.dir.join("relay.redb").display()),
        }
    }

    /// Writes the backlog straight into the store, and closes it.
    async fn backlog(&self, n: u64) {
        match &self.redis_url {
            Some(url) => {
                let s = Arc::new(ipn_relay::store::redis::RedisStore::connect(url, "bench").await.unwrap());
                backlog(s, n).await;
            }
            None => {
                let s =
                    Arc::new(ipn_relay::store::embedded::EmbeddedStore::open(&self.dir.join("relay.redb")).unwrap());
                backlog(s.clone(), n).await;
                Arc::into_inner(s).unwrap().close().await;
            }
        }
    }

    /// For Redis: AOF rewrites so far, whether one is running and how long
    /// the last took, from `INFO persistence` (a rewrite forks the server
    /// and competes with every fsync) as extra table cells; empty for the
    /// embedded store.
    async fn aof_cells(&self) -> String {
        let Some(url) = &self.redis_url else { return String::new() };
        let mut c = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO").arg("persistence").query_async(&mut c).await.unwrap();
        let field = |name: &str| {
            info.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).unwrap_or("?").trim().to_owned()
        };
        format!(
            " {} | {} | {} |",
            field("aof_rewrites"),
            field("aof_rewrite_in_progress"),
            field("aof_last_rewrite_time_sec")
        )
    }

    /// The file's size, or the Redis server's `used_memory`.
    async fn bytes(&self) -> u64 {
        match &self.redis_url {
            Some(url) => {
                let mut c =
                    redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
                let info: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await.unwrap();
                info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap()
            }
            None => std::fs::metadata(self.dir.join("relay.redb")).map(|m| m.len()).unwrap_or(0),
        }
    }
}

struct Relay {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    receiver: SocketAddr,
    dedupe_ttl: String,
}

impl Relay {
    /// Rewrites the config file with another `[retention]` and has the
    /// running relay reload it.
    async fn set_retention(&self, target: &Target, retention: &str) {
        let text =
            config_text(target, (self.addr.port(), self.admin.port()), self.receiver, retention, &self.dedupe_ttl);
        std::fs::write(target.dir.join("relay.toml"), text).unwrap();
        let r = common::client()
            .post(format!("http://{}/admin/reload", self.admin))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "reload refused: {}", r.text().await.unwrap());
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(target: &Target, ports: (u16, u16), receiver: SocketAddr, retention: &str, dedupe_ttl: &str) -> String {
    let (port, admin) = ports;
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
admin_token = "{TOKEN}"
trusted_proxies = ["127.0.0.1/32"]

[store]
{store}
dedupe_ttl = "{dedupe_ttl}"

[[sources]]
name = "nowpayments"
kind = "nowpayments"
secrets = ["{secret}"]

[[endpoints]]
name = "be"
url = "http://{receiver}/"
secret = "{endpoint_secret}"
max_in_flight = 64

[retention]
{retention}

[log]
format = "json"
"#,
        store = target.store_toml(),
        secret = common::NP_SECRET,
        endpoint_secret = common::ENDPOINT_SECRET,
    )
}

fn spawn_relay(target: &Target, receiver: SocketAddr, retention: &str, dedupe_ttl: &str) -> Relay {
    let (port, admin) = (free_port(), free_port());
    let text = config_text(target, (port, admin), receiver, retention, dedupe_ttl);
    let config = target.dir.join("relay.toml");
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ipn-relay"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let admin: SocketAddr = ([127, 0, 0, 1], admin).into();
    for _ in 0..600 {
        if std::net::TcpStream::connect(admin).is_ok() {
            return Relay { child, addr, admin, receiver, dedupe_ttl: dedupe_ttl.to_owned() };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the relay did not start listening");
}

/// A receiver that answers 200 at once.
async fn start_receiver() -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(bytes::Bytes::from_static(b"ok"))))
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
    addr
}

/// Posts `rate` unique signed IPNs a second for `secs`, open loop over 16
/// connections; returns each post's latency from its scheduled time, in
/// microseconds, and the number of failures.
async fn load(addr: SocketAddr, rate: f64, secs: f64, first_id: u64) -> (Vec<u64>, usize) {
    let c = common::client();
    let conns = 16usize;
    let per_conn = Duration::from_secs_f64(conns as f64 / rate);
    let n = (rate * secs) as u64 / conns as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let tasks: Vec<_> = (0..conns as u64)
        .map(|w| {
            let c = c.clone();
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0usize);
                let offset = per_conn.mul_f64(w as f64 / conns as f64);
                for i in 0..n {
                    let scheduled = start + offset + per_conn.mul_f64(i as f64);
                    tokio::time::sleep_until(scheduled.into()).await;
                    let body = common::payment_ipn(first_id + i * conns as u64 + w, "finished");
                    let sig = nowpayments::sign(common::NP_SECRET.as_bytes(), body.as_bytes());
                    let r = c
                        .post(format!("http://{addr}/hooks/nowpayments"))
                        .header("x-nowpayments-sig", sig)
                        .body(body)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => lat.push(scheduled.elapsed().as_micros() as u64),
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (lat, e) = t.await.unwrap();
        all.extend(lat);
        errors += e;
    }
    all.sort_unstable();
    (all, errors)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// The relay's `/admin/store` answer.
async fn store_view(relay: &Relay) -> serde_json::Value {
    let c = common::client();
    let r = c.get(format!("http://{}/admin/store", relay.admin)).bearer_auth(TOKEN).send().await.unwrap();
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

/// The relay's `ipn_relay_retention_removed_total{kind="event"}`.
async fn removed_events(relay: &Relay) -> u64 {
    let c = common::client();
    let text = c.get(format!("http://{}/metrics", relay.admin)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("ipn_relay_retention_removed_total{kind=\"event\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn soak(target: &Target) {
    let rate: f64 = env_or("SOAK_RATE", 500.0);
    let minutes: u64 = env_or("SOAK_MINUTES", 12);
    let store = if target.redis_url.is_some() { "redis (AOF, appendfsync always)" } else { "embedded" };
    println!("retention soak: {rate} IPNs/s for {minutes} min, retention 1m for every class, {store} store");
    let receiver = start_receiver().await;
    let dedupe_ttl = std::env::var("SOAK_DEDUPE_TTL").unwrap_or_else(|_| "1m".into());
    println!("dedupe_ttl {dedupe_ttl}: dedupe keys outlive their events by design, so they bound the size too");
    let relay = spawn_relay(target, receiver, "delivered = \"1m\"\ndead = \"1m\"\nreplay_jobs = \"1m\"", &dedupe_ttl);
    println!("| minute | posted | failed | events stored | removed so far | store size (MiB) |");
    println!("|---|---|---|---|---|---|");
    let (mut posted, mut failed) = (0usize, 0usize);
    for minute in 1..=minutes {
        let (lat, errors) = load(relay.addr, rate, 60.0, minute * 1_000_000_000).await;
        posted += lat.len() + errors;
        failed += errors;
        let view = store_view(&relay).await;
        println!(
            "| {minute} | {posted} | {failed} | {} | {} | {:.1} |",
            view["events"],
            removed_events(&relay).await,
            target.bytes().await as f64 / (1024.0 * 1024.0)
        );
    }
}

async fn purge(target: &Target) {
    let events: u64 = env_or("PURGE_EVENTS", 333_334);
    let rate: f64 = env_or("PURGE_RATE", 1000.0);
    let secs: f64 = env_or("PURGE_SECS", 15.0);
    let store_kind = if target.redis_url.is_some() { "redis (AOF, appendfsync always)" } else { "embedded" };
    println!(
        "retention purge: {events} settled events ({} records) as backlog, ingest at {rate}/s in windows of {secs}s, {store_kind} store",
        events * 3
    );
    let t0 = Instant::now();
    target.backlog(events).await;
    println!(
        "backlog written in {:.1}s; store size {:.1} MiB",
        t0.elapsed().as_secs_f64(),
        target.bytes().await as f64 / 1048576.0
    );
    let receiver = start_receiver().await;
    // One relay; retention is switched off and on between windows by a
    // reload, so both halves of each pair see the same machine, file and
    // page cache. The backlog outlasts the windows at default settings.
    let pairs: u64 = env_or("PURGE_PAIRS", 4);
    let (off, on) = ("delivered = \"100d\"", "delivered = \"1m\"");
    let relay = spawn_relay(target, receiver, off, "30d");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let aof = match target.redis_url {
        Some(_) => (" AOF rewrites so far | rewriting | last rewrite (s) |", "---|---|---|"),
        None => ("", ""),
    };
    println!(
        "| window | retention | posted | failed | ingest p50 (ms) | p99 (ms) | p99.9 (ms) | events removed in the window |{}",
        aof.0
    );
    println!("|---|---|---|---|---|---|---|---|{}", aof.1);
    // A warm-up window first, not counted: right after the backlog is
    // written Redis is still catching up on its AOF, and the relay's
    // caches are cold.
    let (lat, _) = load(relay.addr, rate, secs, 4_000_000_000).await;
    println!(
        "| warm-up | not due (100d) | {} | | {:.2} | {:.2} | {:.2} | 0 |{}",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 0.999),
        target.aof_cells().await
    );
    let (mut p99_off, mut p99_on) = (Vec::new(), Vec::new());
    for window in 0..2 * pairs {
        let purging = window % 2 == 1;
        relay.set_retention(target, if purging { on } else { off }).await;
        // Let a step that was running when retention went off finish.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = removed_events(&relay).await;
        let (lat, errors) = load(relay.addr, rate, secs, 5_000_000_000 + window * 100_000_000).await;
        let removed = removed_events(&relay).await - before;
        let p99 = pct(&lat, 0.99);
        if purging {
            p99_on.push(p99)
        } else {
            p99_off.push(p99)
        }
        println!(
            "| {} | {} | {} | {errors} | {:.2} | {p99:.2} | {:.2} | {removed} |{}",
            window + 1,
            if purging { "all due (1m): purging" } else { "not due (100d)" },
            lat.len() + errors,
            pct(&lat, 0.5),
            pct(&lat, 0.999),
            target.aof_cells().await
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (m_off, m_on) = (median(&mut p99_off), median(&mut p99_on));
    println!(
        "median ingest p99: {m_off:.2} ms without purging, {m_on:.2} ms while purging ({:+.0} %)",
        (m_on / m_off - 1.0) * 100.0
    );
    let view = store_view(&relay).await;
    println!("store after: {} events, {} queued for retention", view["events"], view["retention_queue"]);
}

/// Writes `n` events, each delivered once two days ago: a million records
/// for n = 333,334.
async fn backlog<S: Store>(store: Arc<S>, n: u64) {
    let at = ipn_relay::store::now_millis() - 2 * 86_400_000;
    let mut admitted = 0;
    while admitted < n {
        let chunk = (n - admitted).min(2000);
        let tasks: Vec<_> = (admitted..admitted + chunk)
            .map(|i| {
                let s = store.clone();
                tokio::spawn(async move {
                    let id = format!("evt_backlog{i:010}");
                    let json = format!(
                        r#"{{"id":"{id}","received_at":"2026-11-28T00:00:00.000Z","pad":"{}"}}"#,
                        "x".repeat(600)
                    );
                    let event = NewEvent {
                        id: id.into(),
                        source: "nowpayments".into(),
                        event_type: "deposit.confirmed".into(),
                        received_at: at,
                        json: json.into_bytes(),
                        subject: None,
                    };
                    let d = NewDelivery { id: DeliveryId::new(at), endpoint: "be".into(), policy: Default::default() };
                    s.admit(event, vec![d], 60_000).await.unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        admitted += chunk;
        loop {
            let claims = store.claim_due("be", at, 2000, 600_000).await.unwrap();
            if claims.is_empty() {
                break;
            }
            let tasks: Vec<_> = claims
                .into_iter()
                .map(|c| {
                    let s = store.clone();
                    tokio::spawn(async move {
                        let attempt = ipn_relay::store::Attempt {
                            number: 0,
                            started_at: at,
                            duration_ms: 2,
                            result: AttemptResult::Status { code: 200 },
                            response_excerpt: Some("ok".into()),
                        };
                        let d = c.delivery;
                        s.finish(&d.id, d.claim_token, attempt, Next::Delivered).await.unwrap();
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        }
    }
}

/// Posts forged NOWPayments IPNs over `conns` connections until `stop`,
/// each from another address (`X-Forwarded-For`, 10.0.0.0/8 from `first`);
/// returns how many were sent.
async fn forge(addr: SocketAddr, conns: u32, first: u32, stop: Arc<std::sync::atomic::AtomicBool>) -> u64 {
    use std::sync::atomic::Ordering;
    let c = common::client();
    let wrong = nowpayments::sign(b"an-attackers-guess-at-the-secret", b"x");
    let tasks: Vec<_> = (0..conns)
        .map(|w| {
            let (c, stop, wrong) = (c.clone(), stop.clone(), wrong.clone());
            tokio::spawn(async move {
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let n = first.wrapping_add(w + conns * sent as u32);
                    let from = std::net::Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff));
                    let r = c
                        .post(format!("http://{addr}/hooks/nowpayments"))
                        .header("x-nowpayments-sig", &wrong)
                        .header("x-forwarded-for", from.to_string())
                        .body(common::payment_ipn(u64::from(n), "finished"))
                        .send()
                        .await;
                    assert!(r.is_ok_and(|r| r.status() == 401), "a forgery was not refused");
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    sent
}

/// The relay's quarantine figures: (kept so far, dropped so far, bytes held).
async fn quarantine_figures(relay: &Relay) -> (u64, u64, u64) {
    let c = common::client();
    let text = c.get(format!("http://{}/metrics", relay.admin)).send().await.unwrap().text().await.unwrap();
    let sum = |prefix: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    (
        sum("ipn_relay_quarantined_total{"),
        sum("ipn_relay_quarantine_dropped_total{"),
        sum("ipn_relay_quarantine_bytes "),
    )
}

async fn flood(target: &Target) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let rate: f64 = env_or("FLOOD_RATE", 500.0);
    let secs: f64 = env_or("FLOOD_SECS", 15.0);
    let rounds: u64 = env_or("FLOOD_ROUNDS", 3);
    let conns: u32 = env_or("FLOOD_CONNS", 16);
    let store_kind = if target.redis_url.is_some() { "redis (AOF, appendfsync always)" } else { "embedded" };
    println!(
        "quarantine flood: genuine IPNs at {rate}/s in windows of {secs}s; forgeries over {conns} connections; {store_kind} store"
    );
    let receiver = start_receiver().await;
    let retention = |on: bool| format!("delivered = \"7d\"\n\n[quarantine]\nenabled = {on}");
    let relay = spawn_relay(target, receiver, &retention(false), "30d");
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "| window | flood | quarantine | genuine posted | failed | p50 (ms) | p99 (ms) | p99.9 (ms) | forgeries sent | kept | not kept | quarantine MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let (lat, _) = load(relay.addr, rate, secs, 7_000_000_000).await;
    println!(
        "| warm-up | no | off | {} | | {:.2} | {:.2} | {:.2} | | | | |",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 0.999)
    );
    let mut p99s: [Vec<f64>; 3] = Default::default();
    let mut first = 0u32;
    for window in 0..3 * rounds {
        let kind = (window % 3) as usize;
        let (flooding, quarantine) = (kind > 0, kind == 2);
        relay.set_retention(target, &retention(quarantine)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = quarantine_figures(&relay).await;
        let stop = Arc::new(AtomicBool::new(false));
        let forging = flooding.then(|| tokio::spawn(forge(relay.addr, conns, first, stop.clone())));
        let (lat, errors) = load(relay.addr, rate, secs, 8_000_000_000 + window * 100_000_000).await;
        stop.store(true, Ordering::Relaxed);
        let sent = match forging {
            Some(f) => f.await.unwrap(),
            None => 0,
        };
        first = first.wrapping_add(sent as u32 + conns);
        // Let the quarantine's writer drain before reading its figures.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = quarantine_figures(&relay).await;
        let p99 = pct(&lat, 0.99);
        p99s[kind].push(p99);
        println!(
            "| {} | {} | {} | {} | {errors} | {:.2} | {p99:.2} | {:.2} | {sent} | {} | {} | {:.1} |",
            window + 1,
            if flooding { "yes" } else { "no" },
            if quarantine { "on" } else { "off" },
            lat.len() + errors,
            pct(&lat, 0.5),
            pct(&lat, 0.999),
            after.0 - before.0,
            after.1 - before.1,
            after.2 as f64 / 1048576.0
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [mut none, mut off, mut on] = p99s;
    let (none, off, on) = (median(&mut none), median(&mut off), median(&mut on));
    println!(
        "median genuine p99: {none:.2} ms without a flood, {off:.2} ms in a flood with the quarantine off, {on:.2} ms with it on ({:+.0} % against off, {:+.0} % against no flood)",
        (on / off - 1.0) * 100.0,
        (on / none - 1.0) * 100.0
    );
}
