//! A primary the sentinels replaced while it stayed alive (cut off from
//! them, not from the relay) keeps taking writes that the new primary never
//! sees. With `min_replicas_ack`, none of them may be answered 200: the
//! replica check runs where the admission is, or the admission is a 503.
//! (Found by review: the check once ran on whichever connection was current,
//! so the new primary's replica confirmed admissions written on the old.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::redis_replicas::{TcpRedis, connect, redis_relay_config, replicated};
use ipn_relay::config::Config;
use ipn_relay::store::Store;

const MASTER: &str = "main";

async fn ask<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd(args[0]).arg(&args[1..]).query_async(&mut conn).await
}

async fn named(sentinels: &[TcpRedis]) -> Vec<Option<u16>> {
    let mut out = vec![];
    for s in sentinels {
        let a: Option<Vec<String>> = ask(s.port, &["SENTINEL", "get-master-addr-by-name", MASTER]).await.ok();
        out.push(a.and_then(|a| a.get(1)?.parse().ok()));
    }
    out
}

fn relay_config(sentinels: &[TcpRedis], ack_timeout: &str) -> Arc<Config> {
    let list: Vec<String> = sentinels.iter().map(|s| format!("\"127.0.0.1:{}\"", s.port)).collect();
    let store = format!(
        "kind = \"redis\"\nurl = \"redis://127.0.0.1/0\"\nprefix = \"split\"\nsentinels = [{}]\nmaster_name = \"{MASTER}\"\nmin_replicas_ack = 1\nreplica_ack_timeout = \"{ack_timeout}\"",
        list.join(", ")
    );
    redis_relay_config(&store, "http://127.0.0.1:9/", "")
}

/// The case docs/scaling.md says `min_replicas_ack` turns into 503s: the
/// old primary A is alive but cut off from the sentinels, which have made B
/// (with a replica) the primary. Emulated by re-pointing the sentinels
/// (SENTINEL REMOVE / MONITOR), which leaves A a lone primary. Admissions
/// written on A whose INCR+WAIT batch runs after the 1 s check reconnected
/// to B are confirmed by B's replica and answered 200: they are on A only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_admission_written_on_a_replaced_primary_is_answered_200() {
    let a = TcpRedis::start(&[]);
    let b = TcpRedis::start(&[]);
    let _b2 = TcpRedis::start(&["--replicaof", "127.0.0.1", &b.port.to_string()]);
    replicated(&b, 1).await;
    let sentinels: Vec<TcpRedis> = (0..3)
        .map(|_| {
            TcpRedis::start_sentinel(&format!(
                "sentinel monitor {MASTER} 127.0.0.1 {} 2\nsentinel down-after-milliseconds {MASTER} 60000\n",
                a.port
            ))
        })
        .collect();
    while named(&sentinels).await.iter().any(|p| *p != Some(a.port)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let config = relay_config(&sentinels, "2s");
    let served = Served::start(config.clone(), Arc::new(connect(&config).await)).await;
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let posters: Vec<_> = (0..4u64)
        .map(|w| {
            let (accepted, refused, stop, addr, c) =
                (accepted.clone(), refused.clone(), stop.clone(), served.addr, client());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    match post_to(&c, addr, payment_ipn(w * 1_000_000 + i, "finished")).await {
                        Some((200, v)) => accepted.lock().unwrap().push(v["id"].as_str().unwrap().to_owned()),
                        _ => drop(refused.fetch_add(1, Ordering::Relaxed)),
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = accepted.lock().unwrap().len();
    // The sentinels fail over to B; A never hears of it.
    for s in &sentinels {
        let _: () = ask(s.port, &["SENTINEL", "REMOVE", MASTER]).await.unwrap();
        let _: () = ask(s.port, &["SENTINEL", "MONITOR", MASTER, "127.0.0.1", &b.port.to_string(), "2"]).await.unwrap();
    }
    let switched = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    for p in posters {
        p.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    let store = connect(&config).await; // the sentinels name B now
    let (mut lost, mut on_a) = (0, 0);
    for id in &accepted {
        if store.event(&id.as_str().into()).await.unwrap().is_none() {
            lost += 1;
            let on: i64 = ask(a.port, &["EXISTS", &format!("{{split}}:event:{id}")]).await.unwrap();
            on_a += on;
        }
    }
    eprintln!(
        "split brain: 200s before the switch {before}; after {} (in {:?}); 503/cut {}; answered 200 but not on the \
         primary the sentinels name: {lost} (of which on the cut-off old primary only: {on_a})",
        accepted.len() - before,
        switched.elapsed(),
        refused.load(Ordering::Relaxed)
    );
    assert_eq!(before, 0, "A has no replica: nothing may be acknowledged before the switch");
    assert_eq!(lost, 0, "callbacks answered 200 whose admission B (the current primary) never saw");
}
