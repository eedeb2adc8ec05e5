//! The quarantine against a real relay, on both stores: callbacks refused
//! by a configuration mistake are kept with a diagnosis that names the
//! cause, and once it is fixed a reverify admits each exactly once, with
//! its first receipt time, while a forgery among them stays. Also: a stale
//! Nova callback needs `allow_stale`, a flood of forgeries from many
//! addresses never takes the quarantine past `max_bytes`, and a client's
//! share is bounded.

use std::sync::Arc;
use std::time::Duration;

use crate::admin::{TOKEN, get, post};
use crate::common::*;
use ipn_relay::providers::{nova, nowpayments};
use ipn_relay::store::Store;
use ipn_relay::store::quarantine::QuarantineStore;
use serde_json::{Value, json};

/// The standard sources on `store`, with the admin token, the NOWPayments
/// secret replaced by `np_secret`, and one endpoint at `url`.
fn config(store: &str, np_secret: &str, url: &str, extra: &str) -> String {
    let text = base_config(std::path::Path::new("unused.redb"))
        .replace("path = \"unused.redb\"", store)
        .replace(&format!("\"{NP_SECRET}\""), &format!("\"{np_secret}\""))
        .replacen("[server]\n", &format!("[server]\nadmin_token = \"{TOKEN}\"\n"), 1);
    format!(
        "{text}
[[endpoints]]
name = \"backend\"
url = \"{url}\"
secret = \"{ENDPOINT_SECRET}\"
{extra}"
    )
}

/// A fresh embedded store, the directory it lives in, and its `[store]`
/// line.
fn embedded() -> (tempfile::TempDir, Arc<ipn_relay::store::embedded::EmbeddedStore>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.redb");
    let store = Arc::new(ipn_relay::store::embedded::EmbeddedStore::open(&path).unwrap());
    let toml = format!("path = \"{}\"", path.display());
    (dir, store, toml)
}

async fn metric(c: &reqwest::Client, admin: &str, name: &str) -> f64 {
    let text = c.get(format!("{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every quarantined item the filter query selects, following cursors.
async fn quarantined(c: &reqwest::Client, admin: &str, query: &str) -> Vec<Value> {
    let (mut items, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let mut url = format!("{admin}/admin/quarantine?limit=7&{query}");
        if let Some(cur) = &cursor {
            url.push_str(&format!("&cursor={cur}"));
        }
        let (status, page) = get(c, url, Some(TOKEN)).await;
        assert_eq!(status, 200, "{page}");
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
}

async fn wait_quarantined(c: &reqwest::Client, admin: &str, query: &str, n: usize) -> Vec<Value> {
    for _ in 0..500 {
        let items = quarantined(c, admin, query).await;
        if items.len() >= n {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never {n} quarantined for {query}");
}

/// The story on one store: a wrong secret, 50 deposits refused and kept,
/// the diagnosis, the fix, the recovery, and the forgery that stays.
async fn a_wrong_secret_is_recovered_after_the_fix(store: Arc<dyn Store>, store_toml: &str) {
    let receiver = Receiver::start(|_| Reply::Status(200)).await;
    // The operator pasted a wrong secret: the provider signs with NP_SECRET.
    let wrong = config(store_toml, "pasted-the-wrong-secret", &receiver.url(), "");
    let relay = crate::admin::Running::start(&wrong, store.clone()).await;
    let (c, admin) = (client(), relay.admin_url());

    let mut sent_at = Vec::new();
    for i in 0..50 {
        let (status, v) =
            answer(post_np_at(&c, relay.addr, &payment_ipn(90_000 + i, "finished"), NP_SECRET).await).await;
        assert_eq!((status, error_code(&v)), (401, "invalid_signature"));
        sent_at.push(time::OffsetDateTime::now_utc());
    }
    // A forgery, signed with a secret nobody configured.
    let forged_body = payment_ipn(99_999, "finished");
    let (status, _) = answer(post_np_at(&c, relay.addr, &forged_body, "attackers-guess").await).await;
    assert_eq!(status, 401);
    // Refused callbacks that are not forgeries or staleness are not kept.
    let r = c.post(format!("http://{}/hooks/nowpayments", relay.addr)).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c.post(format!("http://{}/hooks/paypal", relay.addr)).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 404);

    let items = wait_quarantined(&c, &admin, "source=nowpayments", 52).await;
    assert_eq!(items.len(), 52, "51 signed callbacks and one unsigned are kept");
    for item in &items {
        assert_eq!(item["reason"], "invalid_signature");
        assert_eq!(item["client"], "127.0.0.1");
        assert!(item.get("body").is_none(), "listings carry no body");
    }
    let signed: Vec<&Value> = items.iter().filter(|i| i["headers"]["x-nowpayments-sig"].is_string()).collect();
    assert_eq!(signed.len(), 51);
    let d = &signed[0]["diagnosis"];
    assert!(d["summary"].as_str().unwrap().contains("secret is wrong or was rotated"), "{d}");
    assert_eq!(d["secrets_tried"], 2);
    assert!(d["findings"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().contains("payment IPN")), "{d}");
    let unsigned = items.iter().find(|i| !i["headers"]["x-nowpayments-sig"].is_string()).unwrap();
    assert!(unsigned["diagnosis"]["summary"].as_str().unwrap().contains("No signature"), "{unsigned}");

    // One item, whole: the body as it came.
    let id = signed[0]["id"].as_str().unwrap();
    let (status, one) = get(&c, format!("{admin}/admin/quarantine/{id}"), Some(TOKEN)).await;
    assert_eq!(status, 200, "{one}");
    assert!(one["body"].as_str().unwrap().starts_with(r#"{"actually_paid":0.00656612"#));
    assert_eq!(get(&c, format!("{admin}/admin/quarantine/{id}"), None).await.0, 401);
    assert_eq!(get(&c, format!("{admin}/admin/quarantine/qtn_nothere"), Some(TOKEN)).await.0, 404);
    assert_eq!(
        metric(&c, &admin, "ipn_relay_quarantined_total{reason=\"invalid_signature\",source=\"nowpayments\"}").await,
        52.0
    );
    assert_eq!(metric(&c, &admin, "ipn_relay_quarantine_items").await, 52.0);

    // Reverify before the fix admits nothing and refreshes the diagnosis.
    let (status, r) = post(&c, format!("{admin}/admin/quarantine/reverify"), Some(json!({"ids": [id]}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["items"][0]["outcome"], "refused");
    assert!(receiver.received().is_empty());

    // Bad requests say what is wrong.
    for body in [
        json!({"ids": [id], "source": "nowpayments"}),
        json!({"ids": []}),
        json!({"ids": ["dlv_1"]}),
        json!({"max": 0}),
        json!({"allow_stale": "yes"}),
        json!({"reason": "forged"}),
        json!({"colour": "red"}),
    ] {
        let (status, v) = post(&c, format!("{admin}/admin/quarantine/reverify"), Some(body.clone())).await;
        assert_eq!((status, error_code(&v)), (400, "bad_request"), "{body}: {v}");
    }

    // The fix: the right secret, and a restart on the same store.
    relay.stop().await;
    let fixed = config(store_toml, NP_SECRET, &receiver.url(), "");
    let relay = crate::admin::Running::start(&fixed, store.clone()).await;
    let admin = relay.admin_url();
    let (status, r) =
        post(&c, format!("{admin}/admin/quarantine/reverify"), Some(json!({"source": "nowpayments"}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["considered"], 52);
    assert_eq!(r["counts"], json!({"admitted": 50, "refused": 2}), "{r}");
    let outcomes = r["items"].as_array().unwrap();
    // Oldest first, as they arrived.
    let ids: Vec<&str> = outcomes.iter().map(|o| o["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);

    assert!(eventually(Duration::from_secs(20), || receiver.delivered_ids().len() == 50).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = receiver.received();
    assert_eq!(got.len(), 50, "each recovered deposit is delivered once");
    for (n, r) in got.iter().enumerate() {
        let event: Value = serde_json::from_slice(&r.body).unwrap();
        let recovered = event["recovered_from"].as_str().unwrap();
        let outcome = outcomes.iter().find(|o| o["id"] == recovered).unwrap();
        assert_eq!(outcome["outcome"], "admitted");
        assert_eq!(outcome["event_id"], event["id"]);
        assert_eq!(event["stale_timestamp_accepted"], false);
        // received_at is the first receipt: before the fix, not now.
        let received = ipn_relay::event::parse_rfc3339(event["received_at"].as_str().unwrap()).unwrap();
        assert!(received <= sent_at[49] && received + Duration::from_secs(60) > sent_at[0], "{n}: {event}");
        assert_eq!(event["type"], "deposit.confirmed");
    }

    // What is left: the forgery and the unsigned one, still refused.
    let left = quarantined(&c, &admin, "").await;
    assert_eq!(left.len(), 2);
    assert!(left.iter().any(|i| i["headers"]["x-nowpayments-sig"].is_string()));
    // A second reverify is a no-op.
    let (_, again) =
        post(&c, format!("{admin}/admin/quarantine/reverify"), Some(json!({"source": "nowpayments"}))).await;
    assert_eq!(again["counts"], json!({"refused": 2}), "{again}");
    // Ids already recovered are gone.
    let (_, gone) = post(&c, format!("{admin}/admin/quarantine/reverify"), Some(json!({"ids": [ids[0]]}))).await;
    assert_eq!(gone["items"][0]["outcome"], "not_found");
    // The provider's own retry, now verified, is a duplicate of the recovered event.
    let (status, v) = answer(post_np_at(&c, relay.addr, &payment_ipn(90_000, "finished"), NP_SECRET).await).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("duplicate")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 50);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_wrong_secret_is_recovered_after_the_fix() {
    let (_dir, store, store_toml) = embedded();
    a_wrong_secret_is_recovered_after_the_fix(store, &store_toml).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_wrong_secret_is_recovered_after_the_fix() {
    let redis = RedisServer::start();
    let store = Arc::new(ipn_relay::store::redis::RedisStore::connect(&redis.url, "qtn").await.unwrap());
    let toml = format!("kind = \"redis\"\nurl = \"{}\"\nprefix = \"qtn\"", redis.url);
    a_wrong_secret_is_recovered_after_the_fix(store, &toml).await;
}

/// A genuine Nova webhook whose timestamp is outside the tolerance is kept
/// as stale and admitted only with `allow_stale`, and the event says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_nova_callback_needs_allow_stale() {
    let receiver = Receiver::start(|_| Reply::Status(200)).await;
    let (_dir, store, store_toml) = embedded();
    let text = config(&store_toml, NP_SECRET, &receiver.url(), "");
    let relay = crate::admin::Running::start(&text, store).await;
    let (c, admin) = (client(), relay.admin_url());

    let old = time::OffsetDateTime::now_utc() - Duration::from_secs(600);
    let ts = old.format(&time::format_description::well_known::Rfc3339).unwrap();
    let body = nova_body("deposit.confirmed", "dep_stale_1", &ts);
    let sig = nova::sign(NOVA_SECRET.as_bytes(), body.as_bytes());
    let r =
        c.post(format!("http://{}/hooks/nova", relay.addr)).header("x-signature", sig).body(body).send().await.unwrap();
    let (status, v) = answer(r).await;
    assert_eq!((status, error_code(&v)), (401, "stale_timestamp"));

    let items = wait_quarantined(&c, &admin, "reason=stale_timestamp", 1).await;
    let item = &items[0];
    let offset = item["diagnosis"]["timestamp_offset_secs"].as_i64().unwrap();
    assert!((-602..=-599).contains(&offset), "{item}");
    assert!(item["diagnosis"]["summary"].as_str().unwrap().contains("allow_stale"), "{item}");
    let id = item["id"].as_str().unwrap();

    let url = format!("{admin}/admin/quarantine/reverify");
    let (_, r) = post(&c, url.clone(), Some(json!({"ids": [id]}))).await;
    assert_eq!(
        (r["items"][0]["outcome"].as_str(), r["items"][0]["reason"].as_str()),
        (Some("refused"), Some("stale_timestamp"))
    );
    let (_, r) = post(&c, url.clone(), Some(json!({"ids": [id], "allow_stale": true}))).await;
    assert_eq!(r["items"][0]["outcome"], "admitted", "{r}");
    assert!(eventually(Duration::from_secs(10), || receiver.received().len() == 1).await);
    let event: Value = serde_json::from_slice(&receiver.received()[0].body).unwrap();
    assert_eq!((event["stale_timestamp_accepted"].as_bool(), event["recovered_from"].as_str()), (Some(true), Some(id)));
    relay.stop().await;
}

/// 100,000 forged callbacks from many addresses (through a trusted proxy)
/// never take the quarantine past `max_bytes`; what does not fit is
/// counted as dropped, and a genuine callback sent during the flood is
/// admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forgeries_stays_within_max_bytes() {
    const MAX_BYTES: u64 = 256 * 1024;
    let receiver = Receiver::start(|_| Reply::Status(200)).await;
    let (_dir, store, store_toml) = embedded();
    let text = config(
        &store_toml,
        NP_SECRET,
        &receiver.url(),
        &format!("[quarantine]\nmax_bytes = {MAX_BYTES}\nmax_per_client_per_minute = 3\n"),
    )
    .replacen("[server]\n", "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n", 1);
    let relay = crate::admin::Running::start(&text, store.clone()).await;
    let (c, admin) = (client(), relay.admin_url());
    let addr = relay.addr;

    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..32u32 {
        let (c, sent) = (c.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..3125u32 {
                let n = w * 3125 + i;
                // 20,000 addresses, five forgeries each.
                let from = std::net::Ipv4Addr::from(0x0a00_0000 + n / 5);
                let body = payment_ipn(1_000_000 + u64::from(n), "finished");
                let r = c
                    .post(format!("http://{addr}/hooks/nowpayments"))
                    .header("x-nowpayments-sig", "ab".repeat(64))
                    .header("x-forwarded-for", from.to_string())
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 401);
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    // Half way, a genuine deposit goes through as usual.
    while sent.load(std::sync::atomic::Ordering::Relaxed) < 50_000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, v) = answer(post_np_at(&c, addr, &payment_ipn(42, "finished"), NP_SECRET).await).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("accepted")));
    for t in tasks {
        t.await.unwrap();
    }
    // Every forgery is accounted for once the writer has caught up.
    let (mut kept, mut full, mut rate, mut busy) = (0.0, 0.0, 0.0, 0.0);
    for _ in 0..200 {
        kept = metric(&c, &admin, "ipn_relay_quarantined_total{reason=\"invalid_signature\",source=\"nowpayments\"}")
            .await;
        full = metric(&c, &admin, "ipn_relay_quarantine_dropped_total{reason=\"full\"}").await;
        rate = metric(&c, &admin, "ipn_relay_quarantine_dropped_total{reason=\"client_rate\"}").await;
        busy = metric(&c, &admin, "ipn_relay_quarantine_dropped_total{reason=\"busy\"}").await;
        if kept + full + rate + busy >= 100_000.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let size = store.quarantine_size().await.unwrap();
    // Full: less room left than one more item takes.
    assert!(size.bytes <= MAX_BYTES && size.bytes > MAX_BYTES - 4_000, "{size:?}");
    assert_eq!(kept as u64, size.items);
    eprintln!("flood: kept {kept}, full {full}, busy {busy}, client_rate {rate}; {size:?}");
    // Three a minute per address: two of every five forgeries are not kept.
    assert_eq!(rate, 40_000.0);
    assert_eq!(kept + full + busy + rate, 100_000.0, "kept {kept}, full {full}, busy {busy}, rate {rate}");
    assert_eq!(metric(&c, &admin, "ipn_relay_quarantine_bytes").await as u64, size.bytes);
    assert!(eventually(Duration::from_secs(10), || receiver.received().len() == 1).await);
    relay.stop().await;
}

/// The relay binary, logging at debug: refused callbacks never put their
/// body or signature in a log line (only the admin API shows them); the
/// operator fixes the secret with a reload and recovers them with the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stay_out_of_logs_and_the_cli_recovers_after_a_reload() {
    let receiver = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("path = \"{}\"", dir.path().join("relay.redb").display());
    let path = dir.path().join("relay.toml");
    let file = |secret: &str| format!("{}\n[log]\nformat = \"json\"\n", config(&store, secret, &receiver.url(), ""));
    std::fs::write(&path, file("pasted-the-wrong-secret")).unwrap();
    let relay = spawn_relay_logging(&path, "debug");
    let c = client();

    const MARKER: &str = "MARKER-b0d1e5-never-logged";
    let mut sigs = Vec::new();
    for i in 0..3 {
        let body = payment_ipn(70_000 + i, "finished").replace("casino wallet", MARKER);
        let sig = nowpayments::sign(NP_SECRET.as_bytes(), body.as_bytes());
        let r = c
            .post(format!("http://{}/hooks/nowpayments", relay.addr))
            .header("x-nowpayments-sig", &sig)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        sigs.push(sig);
    }
    let admin = format!("http://{}", relay.admin);
    let conn = |cmd: &[&str]| {
        let mut a = crate::admin::args(cmd);
        a.extend(crate::admin::args(&["--admin-url", &admin, "--token", TOKEN]));
        a
    };
    let items = wait_quarantined(&c, &admin, "", 3).await;
    let id = items[0]["id"].as_str().unwrap().to_owned();

    let (code, out, err) = crate::admin::cli(&conn(&["quarantine", "list"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id) && out.contains("invalid_signature") && out.contains("secret is wrong"), "{out}");
    let (code, out, _) = crate::admin::cli(&conn(&["quarantine", "show", &id])).await;
    assert_eq!(code, 0);
    assert!(out.contains(MARKER) && out.contains("x-nowpayments-sig") && out.contains("forms tried"), "{out}");
    let (code, _, err) = crate::admin::cli(&conn(&["quarantine", "reverify"])).await;
    assert_eq!(code, 2, "a bare reverify does nothing: {err}");
    let (code, _, err) = crate::admin::cli(&conn(&["quarantine", "reverify", &id, "--source", "nowpayments"])).await;
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = crate::admin::cli(&conn(&["quarantine", "show", "qtn_0000000000000000000000000000"])).await;
    assert_eq!(code, 4);

    // The fix, by reload.
    std::fs::write(&path, file(NP_SECRET)).unwrap();
    let r = c.post(format!("{admin}/admin/reload")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (code, out, err) = crate::admin::cli(&conn(&["quarantine", "reverify", "--since", "1h", "--json"])).await;
    assert_eq!(code, 0, "{err}");
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["counts"], json!({"admitted": 3}), "{out}");
    assert!(eventually(Duration::from_secs(10), || receiver.delivered_ids().len() == 3).await);
    let (code, out, _) = crate::admin::cli(&conn(&["quarantine", "list"])).await;
    assert_eq!((code, out.lines().count()), (0, 1), "only the header is left: {out}");

    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = relay.log.lock().unwrap().clone();
    assert!(
        log.iter().any(|l| l.contains("callback refused") && l.contains("quarantine_id")),
        "refusals are logged with their quarantine id"
    );
    assert!(log.iter().any(|l| l.contains("quarantined callback recovered")));
    for line in &log {
        assert!(!line.contains(MARKER), "a body reached the log: {line}");
        for sig in &sigs {
            assert!(!line.contains(&sig[..32]), "a signature reached the log: {line}");
        }
    }
}

/// Items go after `ttl`, by the relay's own retention task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_callbacks_expire_after_the_ttl() {
    let (_dir, store, store_toml) = embedded();
    let text = config(&store_toml, NP_SECRET, "http://127.0.0.1:9/", "[quarantine]\nttl = \"1s\"\n");
    let relay = crate::admin::Running::start(&text, store.clone()).await;
    let c = client();
    let (status, _) = answer(post_np_at(&c, relay.addr, &payment_ipn(5, "finished"), "wrong").await).await;
    assert_eq!(status, 401);
    assert!(
        eventually(Duration::from_secs(5), || futures_now(store.quarantine_size()).is_some_and(|s| s.items == 1)).await
    );
    assert!(
        eventually(Duration::from_secs(10), || futures_now(store.quarantine_size())
            .is_some_and(|s| s.items == 0 && s.bytes == 0))
        .await
    );
    relay.stop().await;
}

/// Runs a store read to completion from a synchronous check.
fn futures_now<T>(f: impl Future<Output = Result<T, ipn_relay::store::StoreError>>) -> Option<T> {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f)).ok()
}

/// A provider's retries of a refused callback are kept once. Its own
/// addresses (the source's `allow_ips`) may have ten times the per-client
/// limit kept; a source without an allow list has the limit itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_kept_once_and_allow_listed_providers_are_not_rate_limited() {
    let (_dir, store, store_toml) = embedded();
    let text = config(&store_toml, NP_SECRET, "http://127.0.0.1:9/", "[quarantine]\nmax_per_client_per_minute = 3\n")
        .replacen("kind = \"nowpayments\"\n", "kind = \"nowpayments\"\nallow_ips = [\"127.0.0.0/8\"]\n", 1);
    let relay = crate::admin::Running::start(&text, store.clone()).await;
    let (c, admin) = (client(), relay.admin_url());
    for round in 0..2 {
        for i in 0..10 {
            let r = post_np_at(&c, relay.addr, &payment_ipn(300 + i, "finished"), "rotated-at-the-provider").await;
            assert_eq!(r.status(), 401, "round {round}");
        }
    }
    for i in 0..5 {
        let body = nova_body("deposit.confirmed", &format!("dep_{i}"), &now_rfc3339());
        let r = c.post(format!("http://{}/hooks/nova", relay.addr)).header("x-signature", "ab".repeat(32)).body(body);
        assert_eq!(r.send().await.unwrap().status(), 401);
    }
    let dropped = |reason: &'static str| {
        let (c, admin) = (c.clone(), admin.clone());
        async move { metric(&c, &admin, &format!("ipn_relay_quarantine_dropped_total{{reason=\"{reason}\"}}")).await }
    };
    for _ in 0..200 {
        if dropped("duplicate").await >= 10.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dropped("duplicate").await, 10.0, "the second round is the provider retrying");
    assert_eq!(dropped("client_rate").await, 2.0, "nova has no allow list: 3 a minute from 127.0.0.1");
    assert_eq!(quarantined(&c, &admin, "source=nowpayments").await.len(), 10);
    assert_eq!(quarantined(&c, &admin, "source=nova").await.len(), 3);
    relay.stop().await;
}

/// Found in review: a reverify cut short by `max` takes the oldest items,
/// so a payment's events are admitted in the order they came; a reverify
/// may name 10,000 ids; empty callbacks count against `max_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_reverify_takes_the_oldest_and_empty_callbacks_take_room() {
    let receiver = Receiver::start(|_| Reply::Status(200)).await;
    let (_dir, store, store_toml) = embedded();
    let extra = "[quarantine]\nmax_bytes = 65536\n";
    let wrong = config(&store_toml, "pasted-the-wrong-secret", &receiver.url(), extra).replacen(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        1,
    );
    let relay = crate::admin::Running::start(&wrong, store.clone()).await;
    let (c, admin) = (client(), relay.admin_url());
    for status in ["waiting", "confirming", "finished"] {
        let r = post_np_at(&c, relay.addr, &payment_ipn(777, status), NP_SECRET).await;
        assert_eq!(r.status(), 401);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_quarantined(&c, &admin, "", 3).await;
    // Empty unsigned callbacks from many addresses: each still costs room.
    for i in 0..200u32 {
        let from = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        let r = c.post(format!("http://{}/hooks/nowpayments", relay.addr)).header("x-forwarded-for", from.to_string());
        assert_eq!(r.send().await.unwrap().status(), 401);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let size = store.quarantine_size().await.unwrap();
    assert!(size.bytes <= 65_536 && size.items < 33, "{size:?}");

    relay.stop().await;
    let fixed = config(&store_toml, NP_SECRET, &receiver.url(), extra);
    let relay = crate::admin::Running::start(&fixed, store.clone()).await;
    let admin = relay.admin_url();
    let url = format!("{admin}/admin/quarantine/reverify");
    for round in 0..3 {
        let (status, r) = post(&c, url.clone(), Some(json!({"source": "nowpayments", "max": 1}))).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["truncated"], true, "round {round}: {r}");
    }
    assert!(eventually(Duration::from_secs(10), || receiver.delivered_ids().len() == 3).await);
    let mut events: Vec<Value> = receiver.received().iter().map(|r| serde_json::from_slice(&r.body).unwrap()).collect();
    events.sort_by_key(|e| e["sequence"].as_u64());
    let statuses: Vec<&str> = events.iter().map(|e| e["provider_status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["waiting", "confirming", "finished"]);
    assert!(events.iter().all(|e| e["regression"] == false), "{events:?}");

    // 10,000 ids fit in one request.
    let ids: Vec<String> = (0..10_000).map(|i| format!("qtn_{i:028x}")).collect();
    let (status, r) = post(&c, url.clone(), Some(json!({ "ids": ids }))).await;
    assert_eq!((status, r["counts"]["not_found"].as_u64()), (200, Some(10_000)));
    relay.stop().await;
}

/// A NOWPayments IPN the provider posted to the Nova URL is diagnosed as
/// signed by the other source and recovered as that source's with
/// `as_source`, if its client is in that source's `allow_ips`; an item
/// `as_source` does not admit keeps its description. A Nova webhook is
/// admitted only while its timestamp is within half of `dedupe_ttl` of the
/// reverify (not of its receipt), `allow_stale` or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_url_callbacks_are_recovered_as_their_source_and_old_webhooks_are_not() {
    let receiver = Receiver::start(|_| Reply::Status(200)).await;
    let (_dir, store, store_toml) = embedded();
    let text = config(&store_toml, NP_SECRET, &receiver.url(), "")
        .replace("[store]\n", "[store]\ndedupe_ttl = \"1m\"\n")
        .replace("timestamp_tolerance = \"5m\"", "timestamp_tolerance = \"5s\"");
    let listed = text.replacen("kind = \"nowpayments\"\n", "kind = \"nowpayments\"\nallow_ips = [\"10.0.0.0/8\"]\n", 1);
    let relay = crate::admin::Running::start(&listed, store.clone()).await;
    let (c, admin) = (client(), relay.admin_url());
    let url = format!("{admin}/admin/quarantine/reverify");

    // A genuine Nova webhook sent 25 s ago: stale on arrival (5 s), yet
    // within half of dedupe_ttl of its receipt.
    let sent = time::OffsetDateTime::now_utc() - Duration::from_secs(25);
    let ts = sent.format(&time::format_description::well_known::Rfc3339).unwrap();
    let body = nova_body("deposit.confirmed", "dep_late", &ts);
    let sig = nova::sign(NOVA_SECRET.as_bytes(), body.as_bytes());
    let r = c.post(format!("http://{}/hooks/nova", relay.addr)).header("x-signature", sig).body(body);
    assert_eq!(r.send().await.unwrap().status(), 401);
    let stale = wait_quarantined(&c, &admin, "reason=stale_timestamp", 1).await.remove(0);

    let body = payment_ipn(4242, "finished");
    let sig = nowpayments::sign(NP_SECRET.as_bytes(), body.as_bytes());
    let r = c.post(format!("http://{}/hooks/nova", relay.addr)).header("x-nowpayments-sig", sig).body(body);
    assert_eq!(r.send().await.unwrap().status(), 401);
    let item = wait_quarantined(&c, &admin, "reason=invalid_signature", 1).await.remove(0);
    assert_eq!(item["diagnosis"]["verifies_with_source"], "nowpayments", "{item}");
    let id = item["id"].as_str().unwrap();
    let (_, r) = post(&c, url.clone(), Some(json!({"ids": [id]}))).await;
    assert_eq!(r["items"][0]["outcome"], "refused");
    let (status, r) = post(&c, url.clone(), Some(json!({"ids": [id], "as_source": "paypal"}))).await;
    assert_eq!(status, 400, "{r}");
    // 127.0.0.1 is not among nowpayments' addresses.
    let (_, r) = post(&c, url.clone(), Some(json!({"ids": [id], "as_source": "nowpayments"}))).await;
    assert_eq!(r["items"][0]["outcome"], "ip_not_allowed", "{r}");
    // Tried as nowpayments', the stale Nova item is refused but stays as it was.
    let (_, r) =
        post(&c, url.clone(), Some(json!({"ids": [stale["id"]], "as_source": "nowpayments", "allow_stale": true})))
            .await;
    assert_eq!(r["items"][0]["outcome"], "ip_not_allowed", "{r}");
    relay.stop().await;

    let relay = crate::admin::Running::start(&text, store).await;
    let admin = relay.admin_url();
    let url = format!("{admin}/admin/quarantine/reverify");
    let (_, r) = post(&c, url.clone(), Some(json!({"ids": [stale["id"]], "as_source": "nowpayments"}))).await;
    assert_eq!(r["items"][0]["outcome"], "refused", "{r}");
    let (_, kept) = get(&c, format!("{admin}/admin/quarantine/{}", stale["id"].as_str().unwrap()), Some(TOKEN)).await;
    assert_eq!((kept["reason"].as_str(), &kept["diagnosis"]), (Some("stale_timestamp"), &stale["diagnosis"]));
    let (_, r) = post(&c, url.clone(), Some(json!({"ids": [id], "as_source": "nowpayments"}))).await;
    assert_eq!(r["items"][0]["outcome"], "admitted", "{r}");
    assert!(eventually(Duration::from_secs(10), || receiver.received().len() == 1).await);
    let event: Value = serde_json::from_slice(&receiver.received()[0].body).unwrap();
    assert_eq!((event["source"].as_str(), event["recovered_from"].as_str()), (Some("nowpayments"), Some(id)));

    // Now more than 30 s after it was sent: a copy admitted then may have
    // lost its dedupe key, so even allow_stale does not admit it.
    let wait = (sent + Duration::from_secs(31)) - time::OffsetDateTime::now_utc();
    if wait.is_positive() {
        tokio::time::sleep(wait.unsigned_abs()).await;
    }
    let (_, r) = post(&c, url, Some(json!({"ids": [stale["id"]], "allow_stale": true}))).await;
    assert_eq!(r["items"][0]["outcome"], "refused", "{r}");
    assert!(r["items"][0]["summary"].as_str().unwrap().contains("half of store.dedupe_ttl from now"), "{r}");
    assert_eq!(receiver.received().len(), 1);
    relay.stop().await;
}
