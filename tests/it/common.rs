//! Shared helpers: start the real server in-process on 127.0.0.1:0 with a
//! fresh redb file, and sign requests the way providers do.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipn_relay::config::Config;
use ipn_relay::providers::{nova, nowpayments};
use ipn_relay::store::embedded::EmbeddedStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const NP_SECRET: &str = "np-test-secret-0001";
pub const NOVA_SECRET: &str = "nova-test-secret";
/// The Standard Webhooks secret of the test endpoints.
pub const ENDPOINT_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// `[server]` and the two standard sources, the `backend` endpoint, then `extra`.
pub fn config_text(store_path: &Path, extra: &str) -> String {
    format!(
        r#"{}
[[endpoints]]
name = "backend"
url = "http://127.0.0.1:9/hooks"
secret = "{ENDPOINT_SECRET}"
events = ["deposit.*"]
{extra}
"#,
        base_config(store_path)
    )
}

/// `[server]` and the two standard sources, no endpoints.
/// Endpoints `backend` and `ledger` (2 s timeouts) and a `[delivery]`
/// table that gives up after two quick attempts, with no jitter; it ends
/// inside `[delivery]`, so more delivery keys may follow.
pub fn backend_and_ledger(backend: &str, ledger: &str) -> String {
    format!(
        "
[[endpoints]]
name = \"backend\"
url = \"{backend}\"
secret = \"{ENDPOINT_SECRET}\"
timeout = \"2s\"

[[endpoints]]
name = \"ledger\"
url = \"{ledger}\"
secret = \"{ENDPOINT_SECRET}\"
timeout = \"2s\"

[delivery]
max_attempts = 2
initial_backoff = \"100ms\"
max_backoff = \"200ms\"
jitter = 0.0
"
    )
}

pub fn base_config(store_path: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
max_body_bytes = 4096
body_read_timeout = "1s"
header_read_timeout = "1s"
shutdown_grace = "5s"

[store]
path = "{}"

[[sources]]
name = "nowpayments"
kind = "nowpayments"
secrets = ["old-rotated-secret", "{NP_SECRET}"]

[[sources]]
name = "nova"
kind = "nova"
secrets = ["{NOVA_SECRET}"]
timestamp_tolerance = "5m"
"#,
        store_path.display()
    )
}

pub struct Relay {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub store: Arc<EmbeddedStore>,
    pub config: Arc<Config>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    pub dir: Option<tempfile::TempDir>,
}

impl Relay {
    /// Starts a relay with the standard config plus `extra` TOML.
    pub async fn start(extra: &str) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Relay::start_at(&dir.path().join("relay.redb"), extra).await;
        r.dir = Some(dir);
        r
    }

    pub async fn start_at(store_path: &Path, extra: &str) -> Relay {
        Relay::start_with(store_path, "", extra).await
    }

    /// `server_extra` goes into `[server]`, `extra` at the end.
    pub async fn start_with(store_path: &Path, server_extra: &str, extra: &str) -> Relay {
        let text = config_text(store_path, extra).replacen("[server]\n", &format!("[server]\n{server_extra}\n"), 1);
        Relay::start_text(store_path, &text).await
    }

    /// Starts a relay on exactly this configuration text.
    pub async fn start_text(store_path: &Path, text: &str) -> Relay {
        let config = Arc::new(Config::parse(text, Path::new("test.toml")).unwrap());
        let store = Arc::new(EmbeddedStore::open(store_path).unwrap());
        let served = Served::start(config.clone(), store.clone()).await;
        Relay {
            addr: served.addr,
            admin: served.admin,
            store,
            config,
            stop: Some(served.stop),
            task: Some(served.task),
            dir: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Signals shutdown and waits for the server to finish.
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

/// A relay server running in this process on any store, until `stop` is
/// sent.
pub struct Served {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub stop: oneshot::Sender<()>,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl Served {
    /// Binds the configured listeners and runs the server on `store`.
    pub async fn start(config: Arc<Config>, store: Arc<dyn ipn_relay::store::Store>) -> Served {
        let ingress = TcpListener::bind(config.server.listen).await.unwrap();
        let admin = TcpListener::bind(config.server.admin_listen).await.unwrap();
        let (addr, admin_addr) = (ingress.local_addr().unwrap(), admin.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let sender = ipn_relay::delivery::Sender::new(&config).unwrap();
        let task = tokio::spawn(ipn_relay::server::run(config, store, sender, ingress, admin, async move {
            let _ = stopped.await;
        }));
        Served { addr, admin: admin_addr, stop, task }
    }
}

pub fn client() -> reqwest::Client {
    // reqwest is built without a default TLS provider (the relay uses ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Idle connections are dropped before the relay's 1 s header timeout
    // closes them, so a reused connection is never one the relay is closing.
    reqwest::Client::builder().pool_idle_timeout(std::time::Duration::from_millis(500)).build().unwrap()
}

/// A NOWPayments payment IPN of about 700 bytes, unique by `payment_id`.
pub fn payment_ipn(payment_id: u64, status: &str) -> String {
    format!(
        r#"{{"actually_paid":0.00656612,"actually_paid_at_fiat":0,"fee":{{"currency":"eth","depositFee":0.000002,"serviceFee":0,"withdrawalFee":0}},"invoice_id":null,"order_description":"Deposit of 0.00656612 ETH to casino wallet 7f3c for player account 4857392011 (web, eu-2)","order_id":"deposit_a79c3f0e-5d2b-4c1a-9e8f-{payment_id:012}","outcome_amount":0.0065,"outcome_currency":"eth","parent_payment_id":null,"pay_address":"0x8f2b9c1d4e7a6b5c3d2e1f0a9b8c7d6e5f4a3b2c","pay_amount":0.00656612,"pay_currency":"eth","payin_extra_id":null,"payment_extra_ids":null,"payment_id":{payment_id},"payment_status":"{status}","price_amount":25,"price_currency":"usd","purchase_id":"4857392011","updated_at":1765249461097}}"#
    )
}

pub async fn post_np(c: &reqwest::Client, relay: &Relay, body: &str, secret: &str) -> reqwest::Response {
    post_np_at(c, relay.addr, body, secret).await
}

/// A NOWPayments IPN signed with `secret`, posted to the relay at `addr`.
pub async fn post_np_at(c: &reqwest::Client, addr: SocketAddr, body: &str, secret: &str) -> reqwest::Response {
    let sig = nowpayments::sign(secret.as_bytes(), body.as_bytes());
    c.post(format!("http://{addr}/hooks/nowpayments"))
        .header("x-nowpayments-sig", sig)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

pub fn nova_body(event: &str, id: &str, timestamp: &str) -> String {
    format!(
        r#"{{"event":"{event}","data":{{"id":"{id}","userId":"user_8a2f","amount":100,"currency":"USDT","network":"TRC20","txHash":"T9f8a2"}},"timestamp":"{timestamp}"}}"#
    )
}

pub async fn post_nova(c: &reqwest::Client, relay: &Relay, body: &str) -> reqwest::Response {
    let sig = nova::sign(NOVA_SECRET.as_bytes(), body.as_bytes());
    c.post(relay.url("/hooks/nova"))
        .header("X-Signature", format!("sha256={sig}"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// Status and parsed JSON body of a response.
pub async fn answer(r: reqwest::Response) -> (u16, serde_json::Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("response is not JSON ({e}): {text:?}"));
    (status, json)
}

pub fn error_code(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("no error.code in {v}"))
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap()
}

pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

/// What a test receiver does with one request, given how many requests with
/// the same `webhook-id` came before it (0 for the first).
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    Status(u16),
    /// Status with `Retry-After` seconds.
    RetryAfter(u16, u64),
    /// Answer 200 after this long.
    Slow(std::time::Duration),
    /// Close the connection without answering.
    Reset,
}

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: std::time::Instant,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
    pub reply: Reply,
    /// The answer was handed to the connection (not cut off by a client
    /// that went away first).
    pub answered: bool,
}

impl Received {
    pub fn webhook_id(&self) -> String {
        self.headers["webhook-id"].to_str().unwrap().to_owned()
    }
}

/// A real HTTP receiver on 127.0.0.1:0 whose answers follow `plan`.
pub struct Receiver {
    pub addr: SocketAddr,
    pub log: Arc<std::sync::Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(plan: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
        use http_body_util::BodyExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Arc<std::sync::Mutex<Vec<Received>>> = Arc::default();
        let plan = Arc::new(plan);
        // Requests seen per webhook id, so that a long run does not scan
        // the whole log at every request.
        let seen_by_id: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>> = Arc::default();
        let (log2, plan2) = (log.clone(), plan.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (log, plan, seen_by_id) = (log2.clone(), plan2.clone(), seen_by_id.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (log, plan, seen_by_id) = (log.clone(), plan.clone(), seen_by_id.clone());
                        async move {
                            let at = std::time::Instant::now();
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let id =
                                parts.headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                            let (reply, index) = {
                                let mut log = log.lock().unwrap();
                                let seen = {
                                    let mut by_id = seen_by_id.lock().unwrap();
                                    let n = by_id.entry(id).or_default();
                                    *n += 1;
                                    *n - 1
                                };
                                let reply = plan(seen);
                                log.push(Received { at, headers: parts.headers, body, reply, answered: false });
                                (reply, log.len() - 1)
                            };
                            let status = match reply {
                                Reply::Status(s) | Reply::RetryAfter(s, _) => s,
                                Reply::Slow(d) => {
                                    // If the client goes away meanwhile, this
                                    // future is dropped: never answered.
                                    tokio::time::sleep(d).await;
                                    200
                                }
                                Reply::Reset => return Err("reset"),
                            };
                            log.lock().unwrap()[index].answered = true;
                            let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
                                b"{\"ok\":true}",
                            )));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            if let Reply::RetryAfter(_, secs) = reply {
                                resp.headers_mut().insert("retry-after", secs.into());
                            }
                            Ok::<_, &'static str>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver { addr, log }
    }

    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    /// Distinct webhook ids answered 2xx.
    pub fn delivered_ids(&self) -> std::collections::HashSet<String> {
        self.received()
            .iter()
            .filter(|r| r.answered && matches!(r.reply, Reply::Status(200..=299) | Reply::Slow(_)))
            .map(Received::webhook_id)
            .collect()
    }
}

/// Polls `cond` every 20 ms for up to `limit`.
pub async fn eventually(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        if cond() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    cond()
}

/// The relay binary running as a child process, killed when dropped (so a
/// failing test leaves no relay behind).
pub struct RelayProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// Every line the relay logged to stdout so far.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
    /// Run by a wrapper in a process group of its own, killed as a whole.
    group: bool,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let pid = self.child.id();
        if self.group && pid > 1 {
            let _ = std::process::Command::new("kill").args(["-s", "KILL", "--", &format!("-{pid}")]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ipn-relay serve` and waits for its "ingress listening" log line.
pub fn spawn_relay(config: &Path) -> RelayProcess {
    spawn_relay_logging(config, "info")
}

/// Like [`spawn_relay`], with `RUST_LOG` set to `filter`.
pub fn spawn_relay_logging(config: &Path, filter: &str) -> RelayProcess {
    spawn_relay_under(config, filter, &[])
}

/// Like [`spawn_relay_logging`], run by `wrapper` (a command and its
/// arguments, e.g. `faketime -f +120s`), which gets the relay's command line.
pub fn spawn_relay_under(config: &Path, filter: &str, wrapper: &[&str]) -> RelayProcess {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_ipn-relay");
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            // faketime forks the relay and waits for it: a process group of
            // their own lets dropping the RelayProcess kill both, or the
            // relay would outlive the test holding its stderr (the test
            // command's pipe) open.
            use std::os::unix::process::CommandExt;
            let mut c = Command::new(program);
            c.args(args).arg(bin).process_group(0);
            c
        }
        None => Command::new(bin),
    };
    let mut child = command
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut addr, mut admin) = (None, None);
    let log: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    while addr.is_none() || admin.is_none() {
        let line = lines.next().expect("relay exited before listening").unwrap();
        log.lock().unwrap().push(line.clone());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let at = || v["addr"].as_str().and_then(|a| a.parse::<SocketAddr>().ok());
        match v["message"].as_str() {
            Some("ingress listening") => addr = at(),
            Some("admin listening") => admin = at(),
            _ => {}
        }
    }
    let (addr, admin) = (addr.unwrap(), admin.unwrap());
    // Keep draining the log so the child never blocks on a full pipe.
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            kept.lock().unwrap().push(line);
        }
    });
    RelayProcess { child, addr, admin, log, group: !wrapper.is_empty() }
}

/// Posts a signed NOWPayments IPN to a relay at `addr`; `None` if the
/// relay is gone (connection lost) or answered something unreadable.
pub async fn post_to(c: &reqwest::Client, addr: SocketAddr, body: String) -> Option<(u16, serde_json::Value)> {
    let sig = nowpayments::sign(NP_SECRET.as_bytes(), body.as_bytes());
    let r = c
        .post(format!("http://{addr}/hooks/nowpayments"))
        .header("x-nowpayments-sig", sig)
        .body(body)
        .send()
        .await
        .map_err(|e| eprintln!("POST to {addr} failed: {e:?}"))
        .ok()?;
    let status = r.status().as_u16();
    let text = r.text().await.map_err(|e| eprintln!("reading the answer from {addr} failed: {e:?}")).ok()?;
    let v =
        serde_json::from_str(&text).map_err(|e| eprintln!("answer from {addr} is not JSON ({e}): {text:?}")).ok()?;
    Some((status, v))
}

/// A private redis-server on a unix socket (no TCP), killed when dropped.
pub struct RedisServer {
    child: std::process::Child,
    pub url: String,
    pub dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts one with extra `redis-server` arguments (e.g. persistence).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = RedisServer::spawn(dir.path(), &extra);
        let sock = dir.path().join("redis.sock");
        RedisServer { child, url: format!("redis+unix://{}", sock.display()), dir, extra }
    }

    fn spawn(dir: &Path, extra: &[String]) -> std::process::Child {
        let sock = dir.join("redis.sock");
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--dir"])
            .arg(dir)
            .arg("--unixsocket")
            .arg(&sock)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(std::time::Instant::now() < until, "redis-server did not come up");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child
    }

    /// Starts it again on the same directory and socket (and so, with
    /// persistence on, the same data).
    pub fn restart(&mut self) {
        self.kill();
        self.child = RedisServer::spawn(self.dir.path(), &self.extra);
    }

    /// The redis-server's process id (for CPU figures in benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
