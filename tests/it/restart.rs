//! Durability across a crash: the relay binary runs as a child process, takes
//! a stream of unique IPNs, and is killed with SIGKILL in the middle of it.
//! Started again on the same file, it still has every event it answered 200
//! for, and each of their repeats is a duplicate.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;
use ipn_relay::store::Store;
use ipn_relay::store::embedded::EmbeddedStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_event_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("relay.redb");
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, format!("{}\n[log]\nformat = \"json\"\n", config_text(&store_path, ""))).unwrap();

    let mut relay = spawn_relay(&config);
    let c = client();
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<(u64, String)>::new()));
    let answered = Arc::new(AtomicUsize::new(0));

    // 8 concurrent senders, 1,000 IPNs in all; the kill lands mid-stream.
    let senders: Vec<_> = (0..8u64)
        .map(|w| {
            let (c, accepted, answered) = (c.clone(), accepted.clone(), answered.clone());
            let addr = relay.addr;
            tokio::spawn(async move {
                for i in 0..125u64 {
                    let id = 1_000_000 + w * 1000 + i;
                    match post_to(&c, addr, payment_ipn(id, "finished")).await {
                        Some((200, v)) => {
                            assert_eq!(v["status"], "accepted");
                            accepted.lock().unwrap().push((id, v["id"].as_str().unwrap().to_owned()));
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Some((status, v)) => panic!("unexpected {status}: {v}"),
                        None => return, // connection died with the relay
                    }
                }
            })
        })
        .collect();
    while answered.load(Ordering::Relaxed) < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    relay.child.kill().unwrap(); // SIGKILL
    relay.child.wait().unwrap();
    for s in senders {
        s.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() >= 300 && accepted.len() < 1000,
        "the kill must land mid-stream: {} accepted",
        accepted.len()
    );

    // Restart on the same file: every accepted IPN is a duplicate now.
    let mut relay = spawn_relay(&config);
    for (payment_id, event_id) in &accepted {
        let (status, v) = post_to(&c, relay.addr, payment_ipn(*payment_id, "finished")).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(v["status"], "duplicate", "payment {payment_id} lost its dedupe key");
        assert_eq!(v["id"], event_id.as_str());
    }
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();

    // And every accepted event is there with its delivery.
    let store = EmbeddedStore::open(&store_path).unwrap();
    for (_, event_id) in &accepted {
        assert!(store.event(&event_id.as_str().into()).await.unwrap().is_some(), "{event_id} lost");
        assert_eq!(
            store.event_deliveries(&event_id.as_str().into()).await.unwrap().len(),
            1,
            "{event_id} lost its delivery"
        );
    }
    eprintln!("kill -9 after {} accepted IPNs: all present after restart", accepted.len());
}
