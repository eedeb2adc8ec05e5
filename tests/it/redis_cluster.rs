//! Redis Cluster: the relay's keys share the `{prefix}` hash tag, so they
//! live in one slot; the relay delivers through a three-primary cluster
//! with a replica each, and when the primary holding its slot is killed,
//! follows the promoted replica (`MOVED`) with no acknowledged callback
//! lost (`min_replicas_ack = 1`). Real processes on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::redis_replicas::{TcpRedis, connect, redis_relay_config};
use ipn_relay::config::Config;
use ipn_relay::store::Store;

const PREFIX: &str = "clustered";

/// Six nodes made into three primaries with a replica each.
async fn cluster() -> Vec<TcpRedis> {
    let nodes: Vec<TcpRedis> = (0..6)
        .map(|_| {
            TcpRedis::start_cluster_node(&["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000"])
        })
        .collect();
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let out = std::process::Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .output()
        .expect("redis-cli must be installed (it comes with redis-server; scripts/test installs it)");
    assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
    let until = Instant::now() + Duration::from_secs(30);
    for n in &nodes {
        while !ask::<String>(n.port, &["CLUSTER", "INFO"]).await.is_some_and(|i| i.contains("cluster_state:ok")) {
            assert!(Instant::now() < until, "the cluster did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    nodes
}

async fn ask<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> Option<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    redis::cmd(args[0]).arg(&args[1..]).query_async(&mut conn).await.ok()
}

/// The port of the primary that holds the prefix's slot, as `node` sees it.
async fn slot_owner(node: u16) -> Option<u16> {
    let slot: i64 = ask(node, &["CLUSTER", "KEYSLOT", &format!("{{{PREFIX}}}:")]).await?;
    let nodes: String = ask(node, &["CLUSTER", "NODES"]).await?;
    nodes.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let primary = fields.get(2)?.contains("master") && !fields[2].contains("fail");
        let owns = fields.get(8..)?.iter().any(|range| match range.split_once('-') {
            Some((a, b)) => a.parse::<i64>().is_ok_and(|a| a <= slot) && b.parse::<i64>().is_ok_and(|b| slot <= b),
            None => range.parse::<i64>().is_ok_and(|s| s == slot),
        });
        let port = fields.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
        (primary && owns).then_some(port)
    })
}

fn relay_config(nodes: &[TcpRedis], receiver: &str) -> Arc<Config> {
    let seeds: Vec<String> = nodes.iter().take(3).map(|n| format!("\"redis://127.0.0.1:{}/\"", n.port)).collect();
    let store = format!(
        "kind = \"redis-cluster\"\nurls = [{}]\nprefix = \"{PREFIX}\"\nmin_replicas_ack = 1\nreplica_ack_timeout = \"300ms\"",
        seeds.join(", ")
    );
    // Claims taken just before the failover come back after a short
    // visibility timeout.
    redis_relay_config(&store, receiver, "timeout = \"2s\"\n\n[delivery]\nvisibility_timeout = \"5s\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_delivers_through_a_cluster_and_follows_a_failover_of_its_slot() {
    let mut nodes = cluster().await;
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let config = relay_config(&nodes, &rx.url());
    let served = Served::start(config.clone(), Arc::new(connect(&config).await)).await;
    let c = client();
    for i in 0..50u64 {
        let (status, v) = post_to(&c, served.addr, payment_ipn(500_000 + i, "finished")).await.unwrap();
        assert_eq!((status, v["status"].as_str()), (200, Some("accepted")), "{v}");
    }
    assert!(eventually(Duration::from_secs(20), || rx.delivered_ids().len() == 50).await, "delivered");

    // Kill the primary that holds the relay's slot under a stream of IPNs.
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let poster = {
        let (accepted, refused, stop, addr, c) =
            (accepted.clone(), refused.clone(), stop.clone(), served.addr, c.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                match post_to(&c, addr, payment_ipn(600_000 + i, "finished")).await {
                    Some((200, v)) => accepted.lock().unwrap().push(v["id"].as_str().unwrap().to_owned()),
                    Some((503, _)) | None => drop(refused.fetch_add(1, Ordering::Relaxed)),
                    Some((status, v)) => panic!("{status} {v}"),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let owner = slot_owner(nodes[0].port).await.expect("an owner of the slot");
    let survivor = nodes.iter().find(|n| n.port != owner).unwrap().port;
    let before = accepted.lock().unwrap().len();
    nodes.iter_mut().find(|n| n.port == owner).unwrap().kill();
    let until = Instant::now() + Duration::from_secs(30);
    while slot_owner(survivor).await.is_none_or(|p| p == owner) {
        assert!(Instant::now() < until, "no replica took over the slot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // With min_replicas_ack = 1 the promoted primary needs a replica of its
    // own: the killed node comes back as one (its nodes.conf says so).
    nodes.iter_mut().find(|n| n.port == owner).unwrap().restart();
    let until = Instant::now() + Duration::from_secs(30);
    while accepted.lock().unwrap().len() < before + 50 {
        assert!(Instant::now() < until, "the relay did not follow the failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    poster.await.unwrap();
    let accepted = accepted.lock().unwrap().clone();
    eprintln!("cluster failover: {} accepted, {} refused (503)", accepted.len(), refused.load(Ordering::Relaxed));
    let store = connect(&config).await;
    let mut lost = 0;
    for id in &accepted {
        if store.event(&id.as_str().into()).await.unwrap().is_none() {
            lost += 1;
        }
    }
    assert_eq!(lost, 0, "acknowledged callbacks lost in the failover");
    // Every callback answered 200 is delivered; a 503 may have been stored
    // too (its replica did not confirm in time), and is delivered as well.
    let all = eventually(Duration::from_secs(30), || {
        let delivered = rx.delivered_ids();
        accepted.iter().all(|id| delivered.contains(id))
    })
    .await;
    assert!(all, "{} delivered, of {} accepted after the first 50", rx.delivered_ids().len(), accepted.len());
}
