//! Backup of the embedded store under load: `ipn-relay store backup FILE`
//! while callbacks keep coming; a relay started on the copy knows every
//! event acknowledged before the backup began (a provider's retry is a
//! duplicate) and holds its deliveries.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::admin::{Running, TOKEN, args, cli, config, get, post};
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_holds_everything_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.redb");
    let store = Arc::new(ipn_relay::store::embedded::EmbeddedStore::open(&path).unwrap());
    let backend = Receiver::start(|_| Reply::Status(200)).await;
    let ledger = Receiver::start(|_| Reply::Status(503)).await;
    let store_toml = format!("path = \"{}\"", path.display());
    let relay = Running::start(&config(&store_toml, &backend.url(), &ledger.url()), store).await;
    let c = client();

    // Callbacks keep coming, from four senders, all through the backup.
    let acked: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..4u64)
        .map(|w| {
            let (c, acked, stop, addr) = (c.clone(), acked.clone(), stop.clone(), relay.addr);
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let payment = 60_000_000 + w * 1_000_000 + i;
                    if let Some((200, v)) = post_to(&c, addr, payment_ipn(payment, "finished")).await {
                        acked.lock().unwrap().push((payment, v["id"].as_str().unwrap().to_owned()));
                    }
                    i += 1;
                }
            })
        })
        .collect();
    assert!(eventually(std::time::Duration::from_secs(30), || acked.lock().unwrap().len() >= 300).await);

    let a = relay.admin_url();
    let conn = ["--admin-url".to_owned(), a.clone(), "--token".to_owned(), TOKEN.to_owned()];
    let copy = dir.path().join("backup/copy.redb");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    let before: Vec<(u64, String)> = acked.lock().unwrap().clone();
    let (code, out, err) = cli(&[args(&["store", "backup", copy.to_str().unwrap()]), conn.to_vec()].concat()).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("saved ") && out.contains("copy.redb"), "{out}");
    let after = acked.lock().unwrap().len();
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.await.unwrap();
    }
    assert!(after > before.len(), "callbacks were admitted while the backup ran");
    // A second backup to the same file is refused; nothing is overwritten.
    let (code, _, err) = cli(&[args(&["store", "backup", copy.to_str().unwrap()]), conn.to_vec()].concat()).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("exists"), "{err}");
    assert!(!dir.path().join("backup/copy.redb.partial").exists());
    // The relay's temporary copies are gone: unlinked as soon as they exist.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".ipn-relay-snapshot-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The snapshot route is GET only, and needs the token.
    assert_eq!(post(&c, format!("{a}/admin/store/snapshot"), None).await.0, 405);
    assert_eq!(get(&c, format!("{a}/admin/store/snapshot"), None).await.0, 401);
    relay.stop().await;

    // A relay on the copy: every event acknowledged before the backup is
    // there with its deliveries, and a retry of it is a duplicate.
    let copy_store = Arc::new(ipn_relay::store::embedded::EmbeddedStore::open(&copy).unwrap());
    let copy_toml = format!("path = \"{}\"", copy.display());
    let restored = Running::start(&config(&copy_toml, &backend.url(), &ledger.url()), copy_store).await;
    let r = restored.admin_url();
    for (_, id) in &before {
        let (status, v) = get(&c, format!("{r}/admin/events/{id}"), Some(TOKEN)).await;
        assert_eq!(status, 200, "{id} missing from the copy");
        assert_eq!(v["deliveries"].as_array().unwrap().len(), 2, "{id}: deliveries held");
    }
    for (payment, id) in before.iter().step_by(7) {
        let (status, v) = post_to(&c, restored.addr, payment_ipn(*payment, "finished")).await.unwrap();
        assert_eq!((status, v["status"].as_str(), v["id"].as_str()), (200, Some("duplicate"), Some(id.as_str())));
    }
    let (_, stats) = get(&c, format!("{r}/admin/store"), Some(TOKEN)).await;
    assert!(stats["events"].as_u64().unwrap() >= before.len() as u64, "{stats}");
    restored.stop().await;
}

/// On Redis the snapshot route says how to back up instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backups_are_redis_s_own() {
    let server = RedisServer::start();
    let store = Arc::new(ipn_relay::store::redis::RedisStore::connect(&server.url, "bk").await.unwrap());
    let toml = format!("kind = \"redis\"\nurl = \"{}\"\nprefix = \"bk\"", server.url);
    let relay = Running::start(&config(&toml, "http://127.0.0.1:9/", "http://127.0.0.1:9/"), store).await;
    let c = client();
    let (status, v) = get(&c, format!("{}/admin/store/snapshot", relay.admin_url()), Some(TOKEN)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("not_supported")), "{v}");
    relay.stop().await;
}
