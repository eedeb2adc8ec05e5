//! End-to-end and ingest benchmark: unique signed NOWPayments IPNs (~700
//! bytes) posted over keep-alive connections on loopback.
//!
//! Each round, every server a separate process so the load generator's
//! costs are the same for all:
//! 1. the ceiling: a bare hyper server that reads the body and answers 200,
//!    with its CPU per request;
//! 2. the headline, end to end: the relay (`ipn-relay serve`, this build, a
//!    fresh store) with one endpoint pointing at a receiver in this process
//!    that answers 200 at once, ingest and delivery running together. Closed
//!    loop: delivered events per second from the first post to the last
//!    arrival, and relay CPU per delivered event; then open loop at half that
//!    rate: latency from each post's scheduled time to its arrival;
//! 3. the ceiling again, so a drifting machine shows;
//! 4. secondary: admission alone, the endpoint held to one attempt a second.
//!
//! Run: `cargo bench --bench ingest`. Env: BENCH_RUNS (rounds, default 3),
//! BENCH_SECS (per load, default 5, after a 1 s warm-up), BENCH_CONNECTIONS
//! (default 32), BENCH_MAX_IN_FLIGHT (the endpoint's, default 64),
//! BENCH_RELAY_WORKERS (the relay's `worker_threads`, default its own),
//! BENCH_RELAY_BIN (another build of the relay, for an A/B comparison),
//! BENCH_ORDERING (the endpoint's `ordering`, unset by default; every event
//! is its own payment, so `subject` measures what the gates cost) and
//! BENCH_STORE=redis to run the relay on a private redis-server with AOF and
//! `appendfsync always` (the embedded store's guarantee). Ends with a
//! markdown table of the rounds for BENCHMARKS.md.

#[path = "../tests/it/common.rs"]
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use ipn_relay::providers::nowpayments;
use tokio::net::TcpStream;

const ROLE_ENV: &str = "IPN_RELAY_BENCH_ROLE";

/// Set when the relay runs on Redis: its URL.
static REDIS_URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
/// Set when the relay runs on Redis: the redis-server's process id.
static REDIS_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
/// Set with BENCH_REPLICA_ACK: the relays' `min_replicas_ack`.
static REPLICA_ACK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Waits until a write on the primary at `url` is confirmed by `n`
/// replicas (right after a full sync `WAIT` can answer 0 for a moment).
async fn replicated(url: &str, n: u32) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for _ in 0..200 {
        let _: () = redis::cmd("SET").arg("probe").arg(1).query_async(&mut conn).await.unwrap();
        let acks: u32 = redis::cmd("WAIT").arg(n).arg(100).query_async(&mut conn).await.unwrap();
        if acks >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the replicas never confirmed a write");
}

/// A fresh key prefix for each relay run on Redis.
static RUN: AtomicU64 = AtomicU64::new(0);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn main() {
    if std::env::var(ROLE_ENV).as_deref() == Ok("bare") {
        return bare_server(std::env::args().nth(1).unwrap().parse().unwrap());
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // useful either way. Only run when invoked as a benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        println!("ingest benchmark: run with `cargo bench --bench ingest`");
        return;
    }
    let secs: u64 = env_or("BENCH_SECS", 5);
    let conns: usize = env_or("BENCH_CONNECTIONS", 32);
    let runs: usize = env_or("BENCH_RUNS", 3);
    let acks: u32 = env_or("BENCH_REPLICA_ACK", 0);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let _redis = (std::env::var("BENCH_STORE").as_deref() == Ok("redis")).then(|| {
        let durable = ["--appendonly", "yes", "--appendfsync", "always"];
        let Some(port) = (acks > 0).then(free_port) else {
            let redis = common::RedisServer::start_with(&durable);
            REDIS_URL.set(redis.url.clone()).unwrap();
            REDIS_PID.set(redis.pid()).unwrap();
            return vec![redis];
        };
        // BENCH_REPLICA_ACK=N: the primary on a loopback port for N replicas
        // to follow, each as durable as it, and every admission waits for
        // them (min_replicas_ack).
        let port = port.to_string();
        let mut args = durable.to_vec();
        args.extend(["--port", &port, "--bind", "127.0.0.1", "--repl-diskless-sync-delay", "0"]);
        let primary = common::RedisServer::start_with(&args);
        let mut servers = vec![];
        for _ in 0..acks {
            let mut args = durable.to_vec();
            args.extend(["--replicaof", "127.0.0.1", &port]);
            servers.push(common::RedisServer::start_with(&args));
        }
        rt.block_on(replicated(&primary.url, acks));
        REDIS_URL.set(primary.url.clone()).unwrap();
        REDIS_PID.set(primary.pid()).unwrap();
        REPLICA_ACK.set(acks).unwrap();
        servers.insert(0, primary);
        servers
    });
    let body_len = common::payment_ipn(1_000_000_000, "finished").len();
    let store = match (REDIS_URL.get(), acks) {
        (None, _) => "embedded".to_owned(),
        (Some(_), 0) => "redis (AOF, appendfsync always)".to_owned(),
        (Some(_), n) => format!("redis (AOF, appendfsync always) with {n} replica(s) confirming each admission"),
    };
    println!(
        "ingest benchmark: {conns} connections, {secs}s per run, IPN body {body_len} bytes, {} cores, {store} store, {runs} rounds",
        num_cpus()
    );
    let mut rows = Vec::new();
    for round in 1..=runs {
        println!("\n## round {round}");
        rows.push(rt.block_on(round_of(conns, secs, round as u64)));
    }
    // On Redis: the same closed-loop run with two relays sharing it.
    if REDIS_URL.get().is_some() {
        let two = rt.block_on(end_to_end_on(2, conns, secs, None, 9_000_000_000));
        two.print("two ipn-relays sharing Redis, end to end, closed loop (CPU: both relays; RSS: the larger)");
    }
    println!("\n{}", Row::HEADER);
    for row in &rows {
        println!("{}", row.markdown());
    }
}

/// One round: the ceiling before and after, the relay end to end (closed
/// loop, then open loop at half that rate), and ingest alone.
async fn round_of(conns: usize, secs: u64, round: u64) -> Row {
    let ids = round * 1_000_000_000;
    let before = bare(conns, secs, ids).await;
    before.print("bare hyper (ceiling, before)");
    // Headline: ingest and delivery together.
    let full = end_to_end(conns, secs, None, ids + 100_000_000).await;
    full.print("ipn-relay end to end, closed loop (ingest and delivery together)");
    let half_rate = full.delivered_per_sec / 2.0;
    let half = end_to_end(conns, secs, Some(half_rate), ids + 200_000_000).await;
    half.print(&format!("ipn-relay end to end at {half_rate:.0} events/s (half), open loop"));
    let after = bare(conns, secs, ids + 300_000_000).await;
    after.print("bare hyper (ceiling, after)");
    // Secondary: admission alone, the endpoint held back.
    let dir = tempfile::tempdir().unwrap();
    let (mut relay, addr) = spawn_relay(dir.path());
    let cpu0 = cpu_seconds(relay.id());
    let ingest = load(addr, conns, Duration::from_secs(secs), None, ids + 400_000_000).await;
    let ingest_cpu = cpu_seconds(relay.id()) - cpu0;
    relay.kill().ok();
    relay.wait().ok();
    ingest.print("ipn-relay ingest alone (delivery held back)");
    let ceiling = (before.rps + after.rps) / 2.0;
    let bare_cpu = (before.cpu_us_per_request + after.cpu_us_per_request) / 2.0;
    let row = Row {
        ceiling_before: before.rps,
        ceiling_after: after.rps,
        bare_cpu_us: bare_cpu,
        bare_rss_mib: before.rss_mib.max(after.rss_mib),
        delivered_per_sec: full.delivered_per_sec,
        relay_cpu_us: full.cpu_us_per_event,
        redis_cpu_us: full.redis_cpu_us_per_event,
        half_p50_ms: half.p50_ms,
        half_p99_ms: half.p99_ms,
        rss_mib: full.rss_mib.max(half.rss_mib),
        ingest_rps: ingest.rps(),
        ingest_cpu_us: ingest_cpu * 1e6 / ingest.all_ok.max(1) as f64,
    };
    println!(
        "  => end to end {:.1} % of the ceiling; relay CPU per delivered event {:.1} µs = {:.1}× the bare server's {:.1} µs per request",
        100.0 * row.delivered_per_sec / ceiling,
        row.relay_cpu_us,
        row.relay_cpu_us / bare_cpu,
        bare_cpu
    );
    row
}

/// A round's figures, as one line of the table in BENCHMARKS.md.
struct Row {
    ceiling_before: f64,
    ceiling_after: f64,
    bare_cpu_us: f64,
    bare_rss_mib: f64,
    delivered_per_sec: f64,
    relay_cpu_us: f64,
    redis_cpu_us: Option<f64>,
    half_p50_ms: f64,
    half_p99_ms: f64,
    rss_mib: f64,
    ingest_rps: f64,
    ingest_cpu_us: f64,
}

impl Row {
    const HEADER: &str = "| ceiling before / after (req/s) | end to end (events/s) | of ceiling | relay CPU per event | bare CPU per request | ratio | redis-server CPU per event | half rate p50 / p99 | relay peak RSS | ingest alone | ingest CPU per request |\n|---|---|---|---|---|---|---|---|---|---|---|";

    fn markdown(&self) -> String {
        let ceiling = (self.ceiling_before + self.ceiling_after) / 2.0;
        format!(
            "| {:.0} / {:.0} | {:.0} | {:.1} % | {:.1} µs | {:.1} µs | {:.1}× | {} | {:.2} / {:.2} ms | {:.1} MiB (bare {:.1}) | {:.0} req/s ({:.1} %) | {:.1} µs |",
            self.ceiling_before,
            self.ceiling_after,
            self.delivered_per_sec,
            100.0 * self.delivered_per_sec / ceiling,
            self.relay_cpu_us,
            self.bare_cpu_us,
            self.relay_cpu_us / self.bare_cpu_us,
            self.redis_cpu_us.map_or("–".to_owned(), |us| format!("{us:.1} µs")),
            self.half_p50_ms,
            self.half_p99_ms,
            self.rss_mib,
            self.bare_rss_mib,
            self.ingest_rps,
            100.0 * self.ingest_rps / ceiling,
            self.ingest_cpu_us,
        )
    }
}

/// The ceiling: load on a fresh bare hyper process, with its CPU and RSS.
struct Bare {
    rps: f64,
    cpu_us_per_request: f64,
    rss_mib: f64,
    run: Run,
}

impl Bare {
    fn print(&self, name: &str) {
        self.run.print(name);
        println!("  bare CPU: {:.1} µs per request   peak RSS: {:.1} MiB", self.cpu_us_per_request, self.rss_mib);
    }
}

async fn bare(conns: usize, secs: u64, first_id: u64) -> Bare {
    let port = free_port();
    let mut bare = Command::new(std::env::current_exe().unwrap())
        .arg(port.to_string())
        .env(ROLE_ENV, "bare")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_listening(addr);
    let cpu0 = cpu_seconds(bare.id());
    let run = load(addr, conns, Duration::from_secs(secs), None, first_id).await;
    let cpu = cpu_seconds(bare.id()) - cpu0;
    let rss_mib = peak_rss_kib(bare.id()) as f64 / 1024.0;
    bare.kill().ok();
    bare.wait().ok();
    Bare { rps: run.rps(), cpu_us_per_request: cpu * 1e6 / run.all_ok.max(1) as f64, rss_mib, run }
}

struct EndToEnd {
    accepted: usize,
    delivered: usize,
    requests: usize,
    delivered_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_event: f64,
    /// On Redis: redis-server CPU per delivered event.
    redis_cpu_us_per_event: Option<f64>,
    rss_mib: f64,
}

impl EndToEnd {
    fn print(&self, name: &str) {
        println!(
            "{name}\n  {:.0} delivered events/s ({} of {} delivered, {} requests at the receiver)   post→receiver p50 {:.2} ms  p99 {:.2} ms\n  relay CPU: {:.1} µs per delivered event   peak RSS: {:.1} MiB",
            self.delivered_per_sec,
            self.delivered,
            self.accepted,
            self.requests,
            self.p50_ms,
            self.p99_ms,
            self.cpu_us_per_event,
            self.rss_mib
        );
        if let Some(us) = self.redis_cpu_us_per_event {
            println!("  redis-server CPU: {us:.1} µs per delivered event (at one full core: {:.0} events/s)", 1e6 / us);
        }
    }
}

async fn redis_query(url: &str, args: &[&str]) -> String {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let v: redis::Value = redis::cmd(args[0]).arg(&args[1..]).query_async(&mut conn).await.unwrap();
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        other => format!("{other:?}"),
    }
}

/// Prints Redis's commands by CPU per delivered event, from `INFO
/// commandstats` (commands a script runs count under their own names too).
fn command_costs(info: &str, events: usize) {
    let mut rows: Vec<(String, f64, f64)> = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |k: &str| rest.split(',').find_map(|f| f.strip_prefix(k)?.parse::<f64>().ok());
            Some((name.to_owned(), field("calls=")?, field("usec=")?))
        })
        .collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    let n = events.max(1) as f64;
    let list: Vec<String> = rows
        .iter()
        .take(14)
        .map(|(name, calls, usec)| format!("{name} {:.2}×/{:.1} µs", calls / n, usec / n))
        .collect();
    println!("  redis commands per delivered event (calls / CPU): {}", list.join(", "));
}

/// One end-to-end run against a fresh relay and receiver.
async fn end_to_end(conns: usize, secs: u64, rate: Option<f64>, first_id: u64) -> EndToEnd {
    end_to_end_on(1, conns, secs, rate, first_id).await
}

/// An end-to-end run against `relays` relays sharing one store (Redis),
/// the connections split between them.
async fn end_to_end_on(relays: usize, conns: usize, secs: u64, rate: Option<f64>, first_id: u64) -> EndToEnd {
    let max_in_flight: usize = env_or("BENCH_MAX_IN_FLIGHT", 64);
    // Only when asked: a relay built before `ordering` existed refuses the key.
    let ordering = std::env::var("BENCH_ORDERING").map(|o| format!("ordering = \"{o}\"\n")).unwrap_or_default();
    let arrivals: Arrivals = Arc::default();
    let receiver = start_receiver(arrivals.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let endpoints = format!(
        "\n[[endpoints]]\nname = \"receiver\"\nurl = \"http://{receiver}/events\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nmax_in_flight = {max_in_flight}\n{ordering}"
    );
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let mut children: Vec<(Child, SocketAddr)> =
        (0..relays).map(|i| spawn_relay_as(dir.path(), &endpoints, &format!("relay{i}"), run)).collect();
    let cpu0: f64 = children.iter().map(|(c, _)| cpu_seconds(c.id())).sum();
    let redis_cpu0 = REDIS_PID.get().map(|pid| cpu_seconds(*pid));
    if let Some(url) = REDIS_URL.get() {
        redis_query(url, &["CONFIG", "RESETSTAT"]).await;
    }
    let sends: Sends = Arc::default();
    let loads: Vec<_> = children
        .iter()
        .enumerate()
        .map(|(i, (_, addr))| {
            let rate = rate.map(|r| r / relays as f64);
            load_inner(
                *addr,
                conns / relays,
                Duration::from_secs(secs),
                rate,
                first_id + i as u64 * 50_000_000,
                Some(sends.clone()),
            )
        })
        .collect();
    for l in loads {
        l.await;
    }
    let accepted = sends.lock().unwrap().len();
    let until = Instant::now() + Duration::from_secs(120);
    while arrivals.lock().unwrap().len() < accepted && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = children.iter().map(|(c, _)| cpu_seconds(c.id())).sum::<f64>() - cpu0;
    let redis_cpu = redis_cpu0.map(|c0| cpu_seconds(*REDIS_PID.get().unwrap()) - c0);
    let rss = children.iter().map(|(c, _)| peak_rss_kib(c.id())).max().unwrap_or(0);
    if let Some(url) = REDIS_URL.get() {
        command_costs(&redis_query(url, &["INFO", "commandstats"]).await, arrivals.lock().unwrap().len());
    }
    for (c, _) in &mut children {
        c.kill().ok();
        c.wait().ok();
    }
    let sends = sends.lock().unwrap();
    let arrivals = arrivals.lock().unwrap();
    let sent_at: std::collections::HashMap<&str, Instant> = sends.iter().map(|(id, t)| (id.as_str(), *t)).collect();
    let mut first_arrival: std::collections::HashMap<&str, Instant> = std::collections::HashMap::new();
    for (id, t) in arrivals.iter() {
        first_arrival.entry(id.as_str()).or_insert(*t);
    }
    let mut latencies: Vec<u32> = first_arrival
        .iter()
        .filter_map(|(id, t)| sent_at.get(id).map(|s| t.duration_since(*s).as_micros() as u32))
        .collect();
    latencies.sort_unstable();
    let first_send = sends.iter().map(|(_, t)| *t).min().unwrap_or_else(Instant::now);
    let last_arrival = first_arrival.values().copied().max().unwrap_or(first_send);
    let pct = |p: f64| {
        latencies.get(((latencies.len() as f64 - 1.0) * p).round() as usize).map_or(f64::NAN, |us| *us as f64 / 1000.0)
    };
    EndToEnd {
        accepted,
        delivered: first_arrival.len(),
        requests: arrivals.len(),
        delivered_per_sec: first_arrival.len() as f64 / last_arrival.duration_since(first_send).as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        cpu_us_per_event: cpu * 1e6 / first_arrival.len().max(1) as f64,
        redis_cpu_us_per_event: redis_cpu.map(|c| c * 1e6 / first_arrival.len().max(1) as f64),
        rss_mib: rss as f64 / 1024.0,
    }
}

type Sends = Arc<std::sync::Mutex<Vec<(String, Instant)>>>;
type Arrivals = Arc<std::sync::Mutex<Vec<(String, Instant)>>>;

/// A receiver that answers 200 at once and notes when each webhook-id came.
async fn start_receiver(arrivals: Arrivals) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let _ = stream.set_nodelay(true);
            let arrivals = arrivals.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let arrivals = arrivals.clone();
                    async move {
                        let id = req.headers().get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                        let _ = req.into_body().collect().await;
                        arrivals.lock().unwrap().push((id, Instant::now()));
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn spawn_relay(dir: &Path) -> (Child, SocketAddr) {
    spawn_relay_with(dir, "")
}

/// The relay with the tests' standard config (one source secret), or with
/// `endpoints` instead of the standard endpoint when given.
fn spawn_relay_with(dir: &Path, endpoints: &str) -> (Child, SocketAddr) {
    spawn_relay_as(dir, endpoints, "relay", RUN.fetch_add(1, Ordering::Relaxed))
}

/// One relay named `name` (its config and embedded file); on Redis, relays
/// of the same `run` share one key prefix.
fn spawn_relay_as(dir: &Path, endpoints: &str, name: &str, run: u64) -> (Child, SocketAddr) {
    let dir = &dir.join(name);
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    let admin = free_port();
    let base = if endpoints.is_empty() {
        // Admission alone: each event still gets its delivery stored, but the
        // endpoint is held to one attempt a second so that delivery work
        // does not share the measurement.
        common::config_text(&dir.join("relay.redb"), "rate_limit = { per_second = 1 }")
    } else {
        format!("{}{endpoints}", common::base_config(&dir.join("relay.redb")))
    };
    let base = match REDIS_URL.get() {
        Some(url) => base.replace(
            &format!("path = \"{}\"", dir.join("relay.redb").display()),
            &format!(
                "kind = \"redis\"\nurl = \"{url}\"\nprefix = \"bench-{run}\"\nmin_replicas_ack = {}",
                REPLICA_ACK.get().copied().unwrap_or(0)
            ),
        ),
        None => base,
    };
    let text = base
        .replace(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\""),
        )
        .replace("max_body_bytes = 4096", "max_body_bytes = 65536")
        // One secret, as outside a rotation.
        .replace("secrets = [\"old-rotated-secret\", ", "secrets = [");
    // BENCH_RELAY_WORKERS: the relay's worker threads instead of its default.
    let text = match std::env::var("BENCH_RELAY_WORKERS") {
        Ok(n) => {
            assert!(text.contains("[server]\n"), "the relay's config has no [server] table to set worker_threads in");
            text.replacen("[server]\n", &format!("[server]\nworker_threads = {n}\n"), 1)
        }
        Err(_) => text,
    };
    let config = dir.join("relay.toml");
    std::fs::write(&config, format!("{text}\n[log]\nformat = \"json\"\n")).unwrap();
    // Keep the relay's log for a look after the run.
    let log = std::fs::File::create(Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-relay.log")).unwrap();
    // BENCH_RELAY_BIN runs another build of the relay (an A/B comparison in one run).
    let bin = std::env::var_os("BENCH_RELAY_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_ipn-relay").into());
    let child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(log)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let addr = ([127, 0, 0, 1], port).into();
    wait_listening(addr);
    (child, addr)
}

fn wait_listening(addr: SocketAddr) {
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < until, "nothing listening on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Peak resident set size of a process, from /proc (KiB).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ
}

struct Run {
    ok: u64,
    /// Good answers including the warm-up's: what the server's CPU was spent on.
    all_ok: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Run {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    fn print(&self, name: &str) {
        println!(
            "{name}\n  {:.0} req/s ({} ok, {} errors)   latency p50 {:.2} ms  p99 {:.2} ms",
            self.rps(),
            self.ok,
            self.errors,
            self.percentile_ms(0.50),
            self.percentile_ms(0.99)
        );
    }
}

/// Drives `conns` connections for `duration` (after a one-second warm-up).
/// Closed loop when `rate` is `None`, else `rate` requests per second spread
/// evenly over the connections. Payment ids start at `first_id`, so every
/// request is unique.
async fn load(addr: SocketAddr, conns: usize, duration: Duration, rate: Option<f64>, first_id: u64) -> Run {
    load_inner(addr, conns, duration, rate, first_id, None).await
}

async fn load_inner(
    addr: SocketAddr,
    conns: usize,
    duration: Duration,
    rate: Option<f64>,
    first_id: u64,
    sends: Option<Sends>,
) -> Run {
    let next_id = Arc::new(AtomicU64::new(first_id));
    let warmup = Duration::from_secs(1);
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let tasks: Vec<_> = (0..conns)
        .map(|i| {
            let next_id = next_id.clone();
            let interval = rate.map(|r| Duration::from_secs_f64(conns as f64 / r));
            // Stagger open-loop senders so their requests interleave.
            let offset = interval.map(|iv| iv.mul_f64(i as f64 / conns as f64)).unwrap_or_default();
            tokio::spawn(connection(addr, next_id, start + offset, measure_from, end, interval, sends.clone()))
        })
        .collect();
    let mut run = Run { ok: 0, all_ok: 0, errors: 0, elapsed: duration, latencies_us: Vec::new() };
    for t in tasks {
        let (ok, all_ok, errors, lat) = t.await.unwrap();
        run.ok += ok;
        run.all_ok += all_ok;
        run.errors += errors;
        run.latencies_us.extend(lat);
    }
    run.latencies_us.sort_unstable();
    run
}

async fn connection(
    addr: SocketAddr,
    next_id: Arc<AtomicU64>,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    interval: Option<Duration>,
    sends: Option<Sends>,
) -> (u64, u64, u64, Vec<u32>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let (mut ok, mut all_ok, mut errors, mut lat) = (0u64, 0u64, 0u64, Vec::with_capacity(1 << 16));
    let mut scheduled = start;
    tokio::time::sleep_until(start.into()).await;
    loop {
        if interval.is_some() {
            tokio::time::sleep_until(scheduled.into()).await;
        } else {
            scheduled = Instant::now();
        }
        if scheduled >= end {
            break;
        }
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let body = common::payment_ipn(id, "finished");
        let sig = nowpayments::hex_hmac(common::NP_SECRET.as_bytes(), body.as_bytes());
        let req = Request::post("/hooks/nowpayments")
            .header("host", "bench")
            .header("content-type", "application/json")
            .header("x-nowpayments-sig", sig)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        if sender.ready().await.is_err() {
            break;
        }
        let result = sender.send_request(req).await;
        let done = Instant::now();
        let good = match result {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                if let (Some(sends), true) = (&sends, status == 200) {
                    // {"status":"accepted","id":"evt_…"}
                    if let Some(id) = std::str::from_utf8(&body)
                        .ok()
                        .and_then(|b| b.split("\"id\":\"").nth(1))
                        .and_then(|r| r.split('"').next())
                    {
                        // From the scheduled time: a post that waited behind a slow
                        // answer on its connection counts that wait (open loop).
                        sends.lock().unwrap().push((id.to_owned(), scheduled));
                    }
                }
                status == 200
            }
            Err(_) => false,
        };
        all_ok += good as u64;
        if scheduled >= measure_from {
            if good {
                ok += 1;
                lat.push(done.duration_since(scheduled).as_micros().min(u32::MAX as u128) as u32);
            } else {
                errors += 1;
            }
        }
        if let Some(iv) = interval {
            scheduled += iv;
        }
    }
    (ok, all_ok, errors, lat)
}

/// The ceiling: hyper reading each request body and answering 200 with a
/// small JSON body, on tokio's default runtime (a worker per core) and the
/// system allocator.
fn bare_server(port: u16) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(
                        br#"{"status":"accepted","id":"evt_00000000000000000000000000000000"}"#,
                    )));
                    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
}
