//! Acknowledged means replicated: with `min_replicas_ack = 1` an
//! admission's 200 waits for a replica to confirm its writes (`WAIT`), and
//! without one it answers 503; the provider's retry then finds the event
//! stored and, once a replica confirms, gets `duplicate`. Real processes on
//! loopback: a primary and a replica.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use ipn_relay::config::Config;

/// A redis-server on a loopback TCP port, killed when dropped.
pub(crate) struct TcpRedis {
    child: std::process::Child,
    pub(crate) port: u16,
    dir: tempfile::TempDir,
    tls: Option<NodeTls>,
}

/// TLS for test nodes and sentinels: each speaks only TLS on its port,
/// replicates and watches the others over TLS, and asks every client for a
/// certificate the CA signed (they present `client_cert` to each other).
#[derive(Clone)]
pub(crate) struct NodeTls {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub client_cert: std::path::PathBuf,
    pub client_key: std::path::PathBuf,
}

/// The configuration lines that make a node or sentinel listen at `port`:
/// plain TCP, or TLS alone with `tls`'s files.
fn listen(port: u16, tls: Option<&NodeTls>) -> String {
    tls.map_or_else(|| format!("port {port}\n"), |t| t.config(port))
}

impl NodeTls {
    /// The configuration lines that put a node or sentinel on TLS at `port`.
    fn config(&self, port: u16) -> String {
        format!(
            "port 0\ntls-port {port}\ntls-cert-file \"{}\"\ntls-key-file \"{}\"\ntls-ca-cert-file \"{}\"\n\
             tls-client-cert-file \"{}\"\ntls-client-key-file \"{}\"\ntls-replication yes\ntls-auth-clients yes\n",
            self.cert.display(),
            self.key.display(),
            self.ca.display(),
            self.client_cert.display(),
            self.client_key.display()
        )
    }
}

/// A client of the node or sentinel at `port`, over TLS (trusting the test
/// CA, with the client certificate) when `tls` says so, with `password` if
/// any.
pub(crate) fn client_for(port: u16, tls: Option<&NodeTls>, password: Option<&str>) -> redis::Client {
    let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
    match tls {
        None => redis::Client::open(format!("redis://{auth}127.0.0.1:{port}/")).unwrap(),
        Some(tls) => {
            let root_cert = Some(std::fs::read(&tls.ca).unwrap());
            let client_tls = Some(redis::ClientTlsConfig {
                client_cert: std::fs::read(&tls.client_cert).unwrap(),
                client_key: std::fs::read(&tls.client_key).unwrap(),
            });
            let certs = redis::TlsCertificates { client_tls, root_cert };
            redis::Client::build_with_tls(format!("rediss://{auth}127.0.0.1:{port}/"), certs).unwrap()
        }
    }
}

/// Waits until something listens on `port`.
fn listening(port: u16) {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < until, "redis-server did not come up");
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl TcpRedis {
    pub(crate) fn start(args: &[&str]) -> TcpRedis {
        TcpRedis::start_with(args, None)
    }

    /// On TLS alone, with `tls`'s files.
    pub(crate) fn start_with(args: &[&str], tls: Option<&NodeTls>) -> TcpRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        TcpRedis::start_on(port, args, tls)
    }

    /// A Redis Cluster node: its data port and its cluster bus port, picked
    /// together so that they differ.
    pub(crate) fn start_cluster_node(args: &[&str]) -> TcpRedis {
        let data = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let bus = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (port, bus_port) = (data.local_addr().unwrap().port(), bus.local_addr().unwrap().port());
        drop((data, bus));
        let bus_port = bus_port.to_string();
        let mut all = vec!["--cluster-enabled", "yes", "--cluster-port", &bus_port];
        all.extend_from_slice(args);
        TcpRedis::start_on(port, &all, None)
    }

    /// Starts from a config file in the node's own directory, written from
    /// `args` (`--key value …`). Sentinel rewrites that file when it turns
    /// the node into a replica (`CONFIG REWRITE`), so a restarted node comes
    /// back in the role it last had, as it would in production.
    fn start_on(port: u16, args: &[&str], tls: Option<&NodeTls>) -> TcpRedis {
        let dir = tempfile::tempdir().unwrap();
        let listen = listen(port, tls);
        let mut text = format!(
            "{listen}bind 127.0.0.1\nsave \"\"\nrepl-diskless-sync-delay 0\ndir \"{}\"\nlogfile \"{}/redis.log\"\n",
            dir.path().display(),
            dir.path().display()
        );
        for arg in args {
            match arg.strip_prefix("--") {
                Some(key) if !text.ends_with('\n') => text.push_str(&format!("\n{key}")),
                Some(key) => text.push_str(key),
                None => text.push_str(&format!(" \"{arg}\"")),
            }
        }
        text.push('\n');
        std::fs::write(dir.path().join("redis.conf"), text).unwrap();
        let child = TcpRedis::spawn(dir.path(), port);
        TcpRedis { child, port, dir, tls: tls.cloned() }
    }

    fn spawn(dir: &std::path::Path, port: u16) -> std::process::Child {
        let child = std::process::Command::new("redis-server")
            .arg(dir.join("redis.conf"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        listening(port);
        child
    }

    /// A Redis Sentinel on a loopback port, configured by `config` (its
    /// `sentinel monitor` lines). Sentinel rewrites its file, which lives
    /// in the sentinel's own directory.
    pub(crate) fn start_sentinel(config: &str) -> TcpRedis {
        TcpRedis::start_sentinel_with(config, None)
    }

    /// A sentinel on TLS alone, with `tls`'s files.
    pub(crate) fn start_sentinel_with(config: &str, tls: Option<&NodeTls>) -> TcpRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let file = dir.path().join("sentinel.conf");
        let listen = listen(port, tls);
        let text = format!("{listen}bind 127.0.0.1\ndir {0}\nlogfile {0}/sentinel.log\n{config}", dir.path().display());
        std::fs::write(&file, text).unwrap();
        let child = std::process::Command::new("redis-server")
            .arg(&file)
            .arg("--sentinel")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        listening(port);
        TcpRedis { child, port, dir, tls: tls.cloned() }
    }

    /// What a sentinel logged so far.
    pub(crate) fn sentinel_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A client of this node, over TLS if it speaks TLS.
    pub(crate) fn client(&self) -> redis::Client {
        client_for(self.port, self.tls.as_ref(), None)
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn restart(&mut self) {
        self.kill();
        self.child = TcpRedis::spawn(self.dir.path(), self.port);
    }
}

impl Drop for TcpRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until a write on `primary` is confirmed by `n` replicas: right
/// after a full sync `WAIT` can answer 0 for a moment.
pub(crate) async fn replicated(primary: &TcpRedis, n: i64) {
    let client = primary.client();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for _ in 0..200 {
        let _: () = redis::cmd("SET").arg("probe").arg(1).query_async(&mut conn).await.unwrap();
        let acks: i64 = redis::cmd("WAIT").arg(n).arg(100).query_async(&mut conn).await.unwrap();
        if acks >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the replica never confirmed a write");
}

/// The standard relay config on the Redis `[store]` keys in `store`, with
/// one endpoint `backend` at `backend_url`; `extra` follows it (more
/// endpoint keys, then other tables). The Redis tests' one way to build it.
pub(crate) fn redis_relay_config(store: &str, backend_url: &str, extra: &str) -> Arc<Config> {
    let text = base_config(std::path::Path::new("unused.redb")).replace("path = \"unused.redb\"", store);
    let text = format!(
        "{text}\n[[endpoints]]\nname = \"backend\"\nurl = \"{backend_url}\"\nsecret = \"{ENDPOINT_SECRET}\"\n{extra}"
    );
    Arc::new(Config::parse(&text, std::path::Path::new("redis-test.toml")).unwrap())
}

fn relay_config(url: &str, replicas: u32) -> Arc<Config> {
    let store = format!(
        "kind = \"redis\"\nurl = \"{url}\"\nprefix = \"acks\"\nmin_replicas_ack = {replicas}\nreplica_ack_timeout = \"1s\""
    );
    redis_relay_config(&store, "http://127.0.0.1:9/", "")
}

/// The Redis store `config` names, connected as the relay connects it.
pub(crate) async fn connect(config: &Config) -> ipn_relay::store::redis::RedisStore {
    let ipn_relay::config::StoreKind::Redis { url, prefix, options } = &config.store.kind else { unreachable!() };
    ipn_relay::store::redis::RedisStore::connect_with(url.expose(), prefix, options).await.unwrap()
}

async fn start(config: Arc<Config>) -> Served {
    Served::start(config.clone(), Arc::new(connect(&config).await)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_waits_for_a_replica_and_is_503_without_one() {
    let primary = TcpRedis::start(&["--appendonly", "yes"]);
    let mut replica = TcpRedis::start(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    replicated(&primary, 1).await;
    let served = start(relay_config(&primary.url(), 1)).await;
    let c = client();

    let (status, v) = post_to(&c, served.addr, payment_ipn(1, "finished")).await.unwrap();
    assert_eq!((status, v["status"].as_str()), (200, Some("accepted")), "{v}");
    // The replica has the event already: the 200 came after its ack.
    let event_key = format!("{{acks}}:event:{}", v["id"].as_str().unwrap());
    let mut on_replica = redis::Client::open(replica.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let exists: i64 = redis::cmd("EXISTS").arg(&event_key).query_async(&mut on_replica).await.unwrap();
    assert_eq!(exists, 1);

    // No replica: stored on the primary, but not acknowledged.
    replica.kill();
    let started = std::time::Instant::now();
    let (status, v) = post_to(&c, served.addr, payment_ipn(2, "finished")).await.unwrap();
    assert_eq!((status, error_code(&v)), (503, "unavailable"), "{v}");
    // Within the 1 s timeout and a margin for a loaded machine, not hung.
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // The provider's retry once a replica is back: duplicate, and a 200.
    replica.restart();
    replicated(&primary, 1).await;
    let (status, v) = post_to(&c, served.addr, payment_ipn(2, "finished")).await.unwrap();
    assert_eq!((status, v["status"].as_str()), (200, Some("duplicate")), "{v}");
    let _ = served.stop.send(());
    served.task.await.unwrap().unwrap();

    // With min_replicas_ack = 0 the same loss of the replica is not seen.
    replica.kill();
    let served = start(relay_config(&primary.url(), 0)).await;
    let (status, _) = post_to(&c, served.addr, payment_ipn(3, "finished")).await.unwrap();
    assert_eq!(status, 200);
    let _ = served.stop.send(());
    served.task.await.unwrap().unwrap();
}
