//! Live reload against the relay binary: twenty reloads (SIGHUP and
//! `POST /admin/reload`) under load with no callback failing, a rotated
//! secret honoured by the very next callback, endpoints changed, added and
//! removed, and bad files refused with the running configuration kept.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use ipn_relay::providers::nowpayments;

const TOKEN: &str = "reload-test-admin-token";
const ROTATED: &str = "np-rotated-secret-000002";

/// The relay's file: `extra_secret` added to the NOWPayments source, the
/// `backend` endpoint at `backend`, and `ledger` when given.
fn config_file(store: &std::path::Path, extra_secret: bool, backend: &str, ledger: Option<&str>) -> String {
    let mut text = base_config(store).replacen("[server]\n", &format!("[server]\nadmin_token = \"{TOKEN}\"\n"), 1);
    if extra_secret {
        text = text.replacen(&format!("\"{NP_SECRET}\""), &format!("\"{NP_SECRET}\", \"{ROTATED}\""), 1);
    }
    text.push_str(&format!(
        "\n[[endpoints]]\nname = \"backend\"\nurl = \"{backend}\"\nsecret = \"{ENDPOINT_SECRET}\"\ntimeout = \"2s\"\n"
    ));
    if let Some(ledger) = ledger {
        text.push_str(&format!(
            "\n[[endpoints]]\nname = \"ledger\"\nurl = \"{ledger}\"\nsecret = \"{ENDPOINT_SECRET}\"\ntimeout = \"2s\"\n"
        ));
    }
    text.push_str("\n[log]\nformat = \"json\"\n");
    text
}

async fn reload(c: &reqwest::Client, admin: std::net::SocketAddr) -> (u16, serde_json::Value) {
    let r = c.post(format!("http://{admin}/admin/reload")).bearer_auth(TOKEN).send().await.unwrap();
    answer(r).await
}

fn sighup(relay: &RelayProcess) {
    let status = std::process::Command::new("kill").args(["-HUP", &relay.child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

async fn post_signed(c: &reqwest::Client, addr: std::net::SocketAddr, payment: u64, secret: &str) -> u16 {
    let body = payment_ipn(payment, "finished");
    let sig = nowpayments::sign(secret.as_bytes(), body.as_bytes());
    let r = c.post(format!("http://{addr}/hooks/nowpayments")).header("x-nowpayments-sig", sig).body(body);
    r.send().await.unwrap().status().as_u16()
}

async fn metric(c: &reqwest::Client, admin: std::net::SocketAddr, prefix: &str) -> Option<String> {
    let text = c.get(format!("http://{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find(|l| l.starts_with(prefix)).map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_callback() {
    let first = Receiver::start(|_| Reply::Status(200)).await;
    let second = Receiver::start(|_| Reply::Status(200)).await;
    let ledger = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("relay.redb");
    let path = dir.path().join("relay.toml");
    let a = config_file(&store, false, &first.url(), None);
    let b = config_file(&store, true, &second.url(), Some(&ledger.url()));
    std::fs::write(&path, &a).unwrap();
    let relay = spawn_relay(&path);
    let c = client();

    // Four senders all through the reloads, signed with the secret both
    // files keep.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let senders: Vec<_> = (0..4u64)
        .map(|w| {
            let (c, stop, failures, acked, addr) =
                (c.clone(), stop.clone(), failures.clone(), acked.clone(), relay.addr);
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    match post_to(&c, addr, payment_ipn(70_000_000 + w * 1_000_000 + i, "finished")).await {
                        Some((200, v)) => drop(acked.lock().unwrap().insert(v["id"].as_str().unwrap().to_owned())),
                        other => {
                            eprintln!("callback failed during reloads: {other:?}");
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();

    for n in 0..20u64 {
        let to_b = n % 2 == 0;
        std::fs::write(&path, if to_b { &b } else { &a }).unwrap();
        if n % 4 < 2 {
            let (status, v) = reload(&c, relay.admin).await;
            assert_eq!((status, v["result"].as_str()), (200, Some("ok")), "{v}");
            // The rotated secret holds for the very next callback, and only
            // while the file has it.
            let status = post_signed(&c, relay.addr, 90_000_000 + n, ROTATED).await;
            assert_eq!(status, if to_b { 200 } else { 401 }, "reload {n}");
        } else {
            sighup(&relay);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // The last reload was by SIGHUP, to `a`: make sure it applied.
    assert!(
        eventually(Duration::from_secs(10), || relay
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("configuration reloaded"))
            .count()
            >= 20)
        .await,
        "twenty reloads logged"
    );
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no callback failed during the reloads");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "load ran: {}", acked.len());

    // Every acknowledged event reaches `backend`, at whichever URL was in
    // force when it was sent.
    let all = || {
        let mut got = first.delivered_ids();
        got.extend(second.delivered_ids());
        acked.iter().all(|id| got.contains(id))
    };
    assert!(eventually(Duration::from_secs(30), all).await, "not every acknowledged event was delivered");
    assert!(!second.received().is_empty() && !ledger.received().is_empty(), "the second file's endpoints were used");

    // `ledger` is gone from the file in force: so are its series (a frozen
    // heartbeat would page someone).
    let poll = metric(&c, relay.admin, "ipn_relay_delivery_last_poll_timestamp_seconds{endpoint=\"ledger\"}").await;
    assert_eq!(poll, None);
    let reloads = metric(&c, relay.admin, "ipn_relay_config_reloads_total{result=\"ok\"}").await.unwrap();
    assert_eq!(reloads, "ipn_relay_config_reloads_total{result=\"ok\"} 20");
    let hash = ipn_relay_hash(&a);
    let info = metric(&c, relay.admin, "ipn_relay_config_info").await.unwrap();
    assert_eq!(info, format!("ipn_relay_config_info{{hash=\"{hash}\"}} 1"));
    let _ = ledger;
}

/// The first 16 hex digits of the file's SHA-256, as the relay labels it.
fn ipn_relay_hash(text: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_or_a_restart_only_change_is_refused_and_the_running_config_stays() {
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("relay.redb");
    let path = dir.path().join("relay.toml");
    let good = config_file(&store, true, &rx.url(), None);
    std::fs::write(&path, &good).unwrap();
    let relay = spawn_relay(&path);
    let c = client();

    // Not TOML; a value that does not validate; a key only a restart changes.
    for (text, status, needle) in [
        ("this is not toml".to_owned(), 422, "relay.toml"),
        (good.replace("max_body_bytes = 4096", "max_body_bytes = 10"), 422, "max_body_bytes"),
        (good.replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"", 1), 409, "server.listen"),
        (good.replace(&format!("path = \"{}\"", store.display()), "path = \"/tmp/other.redb\""), 409, "store"),
    ] {
        std::fs::write(&path, &text).unwrap();
        let (got, v) = reload(&c, relay.admin).await;
        assert_eq!(got, status, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{needle}: {v}");
        // Still the running configuration: the rotated secret still works.
        assert_eq!(post_signed(&c, relay.addr, 91_000_000 + got as u64, ROTATED).await, 200);
    }
    let invalid = metric(&c, relay.admin, "ipn_relay_config_reloads_total{result=\"invalid\"}").await.unwrap();
    assert_eq!(invalid, "ipn_relay_config_reloads_total{result=\"invalid\"} 2");
    let restart = metric(&c, relay.admin, "ipn_relay_config_reloads_total{result=\"needs_restart\"}").await.unwrap();
    assert_eq!(restart, "ipn_relay_config_reloads_total{result=\"needs_restart\"} 2");
    assert!(relay.log.lock().unwrap().iter().any(|l| l.contains("configuration reload refused")));
    // A token-less request is refused, as on every admin route.
    let r = c.post(format!("http://{}/admin/reload", relay.admin)).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

/// A callback whose body was still arriving when a reload revoked its
/// secret is checked against the configuration in force once it is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_revoked_while_a_body_arrives_admits_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("relay.redb");
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, config_file(&store, true, &rx.url(), None)).unwrap();
    let relay = spawn_relay(&path);
    let c = client();
    let body = payment_ipn(92_000_001, "finished");
    let sig = nowpayments::sign(ROTATED.as_bytes(), body.as_bytes());
    let mut conn = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let head = format!(
        "POST /hooks/nowpayments HTTP/1.1\r\nhost: relay\r\nx-nowpayments-sig: {sig}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body.as_bytes()[..body.len() / 2]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&path, config_file(&store, false, &rx.url(), None)).unwrap();
    assert_eq!(reload(&c, relay.admin).await.0, 200);
    conn.write_all(&body.as_bytes()[body.len() / 2..]).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}
