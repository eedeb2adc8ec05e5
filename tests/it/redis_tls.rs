//! TLS to Redis: a private `redis-server` with `--tls-port` and
//! certificates made here (a CA, a server certificate for 127.0.0.1, a
//! client certificate). The relay connects with `rediss://`, its CA and its
//! client certificate (rustls, no OpenSSL); without the client certificate,
//! or trusting another CA, it refuses to start, saying why. Sentinel over
//! TLS, with nodes and sentinels that speak only TLS, follows a failover.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use crate::redis_failover::SentinelSet;
use crate::redis_replicas::{NodeTls, connect, redis_relay_config};
use ipn_relay::config::{RedisOptions, RedisTls};
use ipn_relay::store::Store;
use ipn_relay::store::redis::RedisStore;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};

/// Files of one test PKI.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &Path, name: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = |client: bool| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.extended_key_usages =
            vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
        (p.signed_by(&key, &ca_cert, &ca_key).unwrap(), key)
    };
    let (server, server_key) = leaf(false);
    let (client, client_key) = leaf(true);
    let write = |file: &str, pem: String| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, pem).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        server_cert: write("server.pem", server.pem()),
        server_key: write("server.key", server_key.serialize_pem()),
        client_cert: write("client.pem", client.pem()),
        client_key: write("client.key", client_key.serialize_pem()),
    }
}

/// A redis-server that speaks only TLS on a loopback port and asks every
/// client for a certificate signed by the test CA.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_redis(dir: &Path, pki: &Pki) -> TlsRedis {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new("redis-server")
        .args(["--port", "0", "--bind", "127.0.0.1", "--save", "", "--tls-port", &port.to_string()])
        .arg("--dir")
        .arg(dir)
        .arg("--tls-cert-file")
        .arg(&pki.server_cert)
        .arg("--tls-key-file")
        .arg(&pki.server_key)
        .arg("--tls-ca-cert-file")
        .arg(&pki.ca)
        .args(["--tls-auth-clients", "yes"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server must be installed (scripts/test installs it)");
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < until, "redis-server with TLS did not come up");
        std::thread::sleep(Duration::from_millis(10));
    }
    TlsRedis { child, port }
}

fn tls(pki: &Pki, client: bool) -> RedisOptions {
    let tls = RedisTls {
        ca_file: Some(pki.ca.clone()),
        client: client.then(|| (pki.client_cert.clone(), pki.client_key.clone())),
    };
    RedisOptions { tls, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_works_over_tls_and_refuses_to_start_without_its_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (good, other) = (pki(dir.path(), "good"), pki(dir.path(), "other"));
    let redis = tls_redis(dir.path(), &good);
    let url = format!("rediss://127.0.0.1:{}/", redis.port);

    let store = RedisStore::connect_with(&url, "tls", &tls(&good, true)).await.unwrap();
    let event = crate::store_conformance::event("evt_tls", "np", "deposit.confirmed", 1_000);
    let admitted = store.admit(event, crate::store_conformance::deliveries(1_000, &["be"]), 60_000).await.unwrap();
    assert_eq!(admitted, ipn_relay::store::Admission::Accepted { regression: false });
    assert!(store.event(&"evt_tls".into()).await.unwrap().is_some());

    let chain = |e: ipn_relay::store::StoreError| {
        std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(": ")
    };
    // The server asks for a client certificate: without one, the start
    // fails (TLS 1.3 says so only at the first read, hence the PING).
    let Err(e) = RedisStore::connect_with(&url, "tls", &tls(&good, false)).await else {
        panic!("connected without a client certificate")
    };
    let e = chain(e);
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // A server whose certificate another CA signed is not trusted.
    let Err(e) = RedisStore::connect_with(&url, "tls", &tls(&other, true)).await else {
        panic!("trusted a server signed by another CA")
    };
    let e = chain(e);
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // Nor over plain TCP: the port speaks only TLS.
    let plain = format!("redis://127.0.0.1:{}/", redis.port);
    assert!(RedisStore::connect(&plain, "tls").await.is_err());
}

/// The relay binary on a rediss:// store: a callback is admitted and
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_serves_on_a_tls_redis() {
    let dir = tempfile::tempdir().unwrap();
    let good = pki(dir.path(), "good");
    let redis = tls_redis(dir.path(), &good);
    let receiver = Receiver::start(|_| Reply::Status(200)).await;
    let store = format!(
        "kind = \"redis\"\nurl = \"rediss://127.0.0.1:{}/\"\nprefix = \"tls\"\ntls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        redis.port,
        good.ca.display(),
        good.client_cert.display(),
        good.client_key.display()
    );
    let text = base_config(Path::new("unused.redb")).replace("path = \"unused.redb\"", &store);
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "{text}\n[[endpoints]]\nname = \"backend\"\nurl = \"{}\"\nsecret = \"{ENDPOINT_SECRET}\"\n\n[log]\nformat = \"json\"\n",
            receiver.url()
        ),
    )
    .unwrap();
    let relay = spawn_relay(&path);
    let c = client();
    let (status, v) = post_to(&c, relay.addr, payment_ipn(31337, "finished")).await.unwrap();
    assert_eq!((status, v["status"].as_str()), (200, Some("accepted")), "{v}");
    assert!(eventually(Duration::from_secs(10), || receiver.received().len() == 1).await);
}

/// Sentinel over TLS: a primary, a replica and three sentinels that speak
/// only TLS (they replicate and watch each other over it) and ask every
/// client for a certificate. The relay asks the sentinels over TLS, reaches
/// the primary they name over TLS, trusting the test CA (`tls_ca_file`) and
/// showing its client certificate to both, and follows a failover by
/// itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_follows_a_failover_among_sentinels_and_nodes_on_tls() {
    let dir = tempfile::tempdir().unwrap();
    let good = pki(dir.path(), "sentinel");
    let tls = NodeTls {
        ca: good.ca.clone(),
        cert: good.server_cert.clone(),
        key: good.server_key.clone(),
        client_cert: good.client_cert.clone(),
        client_key: good.client_key.clone(),
    };
    let mut set = SentinelSet::start_tls(1, tls).await;
    let config = redis_relay_config(&set.store_toml("sentinel-tls", 0), "http://127.0.0.1:9/", "");
    let served = Served::start(config.clone(), std::sync::Arc::new(connect(&config).await)).await;
    let c = client();
    let (status, v) = post_to(&c, served.addr, payment_ipn(4101, "finished")).await.unwrap();
    assert_eq!((status, v["status"].as_str()), (200, Some("accepted")), "{v}");
    let before = v["id"].as_str().unwrap().to_owned();
    assert!(set.settled().await, "the replica has the first callback");

    set.kill_primary().await;
    // The relay finds the new primary through the sentinels, over TLS:
    // 503s during the gap, then the next callback is stored.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        match post_to(&c, served.addr, payment_ipn(4102, "finished")).await {
            Some((200, v)) => break v["id"].as_str().unwrap().to_owned(),
            Some((503, _)) | None => {}
            Some((status, v)) => panic!("{status} {v}"),
        }
        assert!(std::time::Instant::now() < until, "the relay did not follow the failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let store = connect(&config).await;
    for id in [before, after] {
        assert!(store.event(&id.as_str().into()).await.unwrap().is_some(), "{id} is on the new primary");
    }
    let _ = served.stop.send(());
}
