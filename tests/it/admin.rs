//! The admin API and the operator CLI against a real relay, on both stores:
//! deliveries go dead while a receiver fails, a filtered bulk replay brings
//! them to `delivered` once it is fixed, and everything outside the filter is
//! left alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::*;
use ipn_relay::config::Config;
use ipn_relay::store::{DeliveryFilter, DeliveryState, Store};
use serde_json::{Value, json};

pub(crate) const TOKEN: &str = "admin-test-token";

/// The endpoints of `config`.
pub(crate) fn endpoints() -> Vec<String> {
    vec!["backend".into(), "ledger".into()]
}

/// A relay running in this process on `store`.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    admin: SocketAddr,
    served: Served,
}

impl Running {
    pub(crate) async fn start(text: &str, store: Arc<dyn Store>) -> Running {
        let config = Arc::new(Config::parse(text, std::path::Path::new("admin-test.toml")).unwrap());
        let served = Served::start(config, store).await;
        Running { addr: served.addr, admin: served.admin, served }
    }

    pub(crate) async fn stop(self) {
        let _ = self.served.stop.send(());
        self.served.task.await.unwrap().unwrap();
    }

    pub(crate) fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }
}

/// Two endpoints whose receivers fail; dead after two attempts.
pub(crate) fn config(store: &str, backend: &str, ledger: &str) -> String {
    let text = base_config(std::path::Path::new("unused.redb")).replace("path = \"unused.redb\"", store).replacen(
        "[server]\n",
        &format!("[server]\nadmin_token = \"{TOKEN}\"\n"),
        1,
    );
    format!("{text}{}visibility_timeout = \"5s\"\n", backend_and_ledger(backend, ledger))
}

/// A receiver that answers 500 until the flag is set, then 200.
pub(crate) async fn failing_until_fixed() -> (Arc<AtomicBool>, Receiver) {
    let fixed = Arc::new(AtomicBool::new(false));
    let receiver = Receiver::start({
        let fixed = fixed.clone();
        move |_| if fixed.load(Ordering::SeqCst) { Reply::Status(200) } else { Reply::Status(500) }
    })
    .await;
    (fixed, receiver)
}

pub(crate) async fn get(c: &reqwest::Client, url: String, token: Option<&str>) -> (u16, Value) {
    let mut req = c.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    answer(req.send().await.unwrap()).await
}

pub(crate) async fn post(c: &reqwest::Client, url: String, body: Option<Value>) -> (u16, Value) {
    let mut req = c.post(url).bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    answer(req.send().await.unwrap()).await
}

/// Every delivery the filter query selects, following cursors.
pub(crate) async fn list_all(c: &reqwest::Client, relay: &Running, query: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/admin/deliveries?limit=4&{query}", relay.admin_url());
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

pub(crate) async fn wait_for(c: &reqwest::Client, relay: &Running, query: &str, n: usize) -> Vec<Value> {
    for _ in 0..500 {
        let items = list_all(c, relay, query).await;
        if items.len() == n {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never {n} deliveries for {query}: {:?}", list_all(c, relay, query).await.len());
}

/// Runs the built binary with `args`; returns exit code, stdout, stderr.
pub(crate) async fn cli(args: &[String]) -> (i32, String, String) {
    let args = args.to_vec();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipn-relay"))
            .args(&args)
            .env_remove("IPN_RELAY_ADMIN_TOKEN")
            .env_remove("IPN_RELAY_ADMIN_URL")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

pub(crate) fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The whole story on one store: failures, dead letters, a filtered replay,
/// the history, auth, bad filters and the CLI.
async fn dead_deliveries_are_found_and_replayed(store: Arc<dyn Store>, store_toml: &str) {
    let (fixed, backend) = failing_until_fixed().await;
    let ledger = Receiver::start(|_| Reply::Status(503)).await;
    let relay = Running::start(&config(store_toml, &backend.url(), &ledger.url()), store.clone()).await;
    let c = client();

    let mut event_ids = Vec::new();
    for i in 0..6 {
        let body = payment_ipn(7000 + i, "finished");
        let (status, v) = post_to(&c, relay.addr, body).await.unwrap();
        assert_eq!(status, 200, "{v}");
        event_ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let dead = wait_for(&c, &relay, "state=dead", 12).await;
    assert!(
        dead.iter().all(|d| d["attempts"] == 2 && (d["last_error"] == "HTTP 500" || d["last_error"] == "HTTP 503"))
    );

    // Auth: every admin route refuses a missing or a wrong token.
    let a = relay.admin_url();
    let some_id = dead[0]["id"].as_str().unwrap();
    let routes = [
        ("GET", format!("{a}/admin/deliveries")),
        ("GET", format!("{a}/admin/deliveries/{some_id}")),
        ("GET", format!("{a}/admin/events/{}", event_ids[0])),
        ("POST", format!("{a}/admin/deliveries/{some_id}/replay")),
        ("POST", format!("{a}/admin/replay")),
        ("GET", format!("{a}/admin/replays/rpl_x")),
        ("GET", format!("{a}/admin/nothing-here")),
    ];
    for (method, url) in &routes {
        for token in [None, Some("wrong-token"), Some("")] {
            let mut req = c.request(method.parse().unwrap(), url);
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            let (status, v) = answer(r).await;
            assert_eq!((status, error_code(&v)), (401, "unauthorized"), "{method} {url} with {token:?}");
        }
    }
    // The open routes say nothing else.
    assert_eq!(get(&c, format!("{a}/healthz"), None).await, (200, json!({"status": "ok"})));
    assert_eq!(get(&c, format!("{a}/readyz"), None).await, (200, json!({"status": "ready"})));
    assert_eq!(get(&c, format!("{a}/deliveries"), None).await.0, 404);

    // Bad filters are 400s that name the parameter.
    for (query, needle) in [
        ("state=deed", "state:"),
        ("since=yesterday", "since:"),
        ("until=2026-13-01", "until:"),
        ("since=1h&until=2h", "since must be before until"),
        ("limit=0", "limit:"),
        ("limit=5000", "limit:"),
        ("cursor=bogus", "cursor:"),
        ("since=18446744073709552s", "since: duration too long"),
        ("stat=dead", "unknown parameter 'stat'"),
        ("endpoint=nope", "endpoint:"),
        ("source=paypal", "source:"),
    ] {
        let (status, v) = get(&c, format!("{a}/admin/deliveries?{query}"), Some(TOKEN)).await;
        assert_eq!(status, 400, "{query}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{query}: {v}");
    }
    for (body, needle) in [
        (json!({"state": "pending"}), "only dead, discarded or delivered"),
        (json!({"endpoint": 7}), "endpoint: expected a string"),
        (json!({"max": 0}), "max:"),
        (json!({"state": "dead", "endpont": "backend"}), "unknown parameter 'endpont'"),
        (json!(["dead"]), "expected a JSON object"),
    ] {
        let (status, v) = post(&c, format!("{a}/admin/replay"), Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{body}: {v}");
    }
    let r = c.post(format!("{a}/admin/replay")).bearer_auth(TOKEN).body("{\"state\":").send().await.unwrap();
    assert_eq!(answer(r).await.0, 400);

    // The event view: the event as delivered, with its two deliveries.
    let (status, ev) = get(&c, format!("{a}/admin/events/{}", event_ids[0]), Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(ev["event"]["id"], event_ids[0].as_str());
    assert_eq!(ev["deliveries"].as_array().unwrap().len(), 2);
    assert_eq!(get(&c, format!("{a}/admin/events/evt_nope"), Some(TOKEN)).await.0, 404);
    assert_eq!(get(&c, format!("{a}/admin/deliveries/dlv_nope"), Some(TOKEN)).await.0, 404);
    assert_eq!(post(&c, format!("{a}/admin/deliveries/dlv_nope/replay"), None).await.0, 404);

    // A dry run counts what a bulk replay would take, to `max`, and
    // replays nothing.
    let dead = list_all(&c, &relay, "state=dead&endpoint=backend").await.len();
    assert!(dead >= 2, "{dead}");
    for (max, matching, truncated) in [(dead + 5, dead, false), (dead, dead, false), (dead - 1, dead - 1, true)] {
        let body = json!({"state": "dead", "endpoint": "backend", "max": max, "dry_run": true});
        let (status, v) = post(&c, format!("{a}/admin/replay"), Some(body)).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!((v["matching"].as_u64(), v["truncated"].as_bool()), (Some(matching as u64), Some(truncated)), "{v}");
        assert_eq!(v["counted_all"], true, "{v}");
        assert_eq!(v["filter"]["endpoint"], "backend");
    }
    let (status, v) = post(&c, format!("{a}/admin/replay"), Some(json!({"dry_run": "yes"}))).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(list_all(&c, &relay, "state=dead&endpoint=backend").await.len(), dead, "nothing replayed");

    // The overview: the store's counts, each endpoint failing, the callbacks.
    let (status, o) = get(&c, format!("{a}/admin/overview"), Some(TOKEN)).await;
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["deliveries"]["dead"].as_u64(), Some(list_all(&c, &relay, "state=dead").await.len() as u64));
    let names: Vec<&str> = o["endpoints"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["backend", "ledger"]);
    assert!(o["endpoints"][0]["consecutive_failures"].as_u64().unwrap() >= 2, "{o}");
    assert_eq!(o["endpoints"][0]["last_error"], "HTTP 500");
    assert!(o["endpoints"][0]["last_success_at"].is_null());
    assert!(
        o["callbacks"].as_array().unwrap().iter().any(|x| x["outcome"] == "accepted" && x["count"].as_u64() > Some(0))
    );

    // The receiver is fixed; replay the backend's dead deliveries only.
    fixed.store(true, Ordering::SeqCst);
    let (status, r) =
        post(&c, format!("{a}/admin/replay"), Some(json!({"state": "dead", "endpoint": "backend", "since": "1h"})))
            .await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(
        (r["replayed"].as_u64(), r["skipped"].as_u64(), r["finished"].as_bool()),
        (Some(6), Some(0), Some(true))
    );
    let job = r["job"].as_str().unwrap();
    let (status, j) = get(&c, format!("{a}/admin/replays/{job}"), Some(TOKEN)).await;
    assert_eq!((status, j["replayed"].as_u64()), (200, Some(6)));

    let delivered = wait_for(&c, &relay, "state=delivered&endpoint=backend", 6).await;
    assert!(delivered.iter().all(|d| d["attempts"] == 3 && d["last_error"].is_null()));
    // Outside the filter: untouched.
    let still_dead = list_all(&c, &relay, "state=dead").await;
    assert_eq!(still_dead.len(), 6);
    assert!(still_dead.iter().all(|d| d["endpoint"] == "ledger" && d["attempts"] == 2));
    assert!(ledger.received().len() == 12, "the ledger got no new attempt");

    // The history shows the failures and the success, under one webhook-id.
    let id = delivered[0]["id"].as_str().unwrap();
    let (status, d) = get(&c, format!("{a}/admin/deliveries/{id}"), Some(TOKEN)).await;
    assert_eq!(status, 200);
    let history = d["history"].as_array().unwrap();
    let results: Vec<_> = history.iter().map(|h| (h["number"].as_u64().unwrap(), h["status"].as_u64())).collect();
    assert_eq!(results, [(1, Some(500)), (2, Some(500)), (3, Some(200))]);
    let webhook_id = d["event_id"].as_str().unwrap();
    let sent: Vec<_> = backend.received().into_iter().filter(|r| r.webhook_id() == webhook_id).collect();
    assert_eq!(sent.len(), 3, "three attempts carried webhook-id {webhook_id}");
    assert_eq!(sent[2].headers["x-ipn-relay-attempt"], "3");

    // One at a time: a dead ledger delivery is replayed; asking again while
    // it is pending or in flight is a counted no-op.
    let one = still_dead[0]["id"].as_str().unwrap();
    let (status, r) = post(&c, format!("{a}/admin/deliveries/{one}/replay"), None).await;
    assert_eq!((status, r["replayed"].as_u64()), (202, Some(1)), "{r}");
    let (status, r) = post(&c, format!("{a}/admin/deliveries/{one}/replay"), None).await;
    assert_eq!((status, r["replayed"].as_u64(), r["skipped"].as_u64()), (202, Some(0), Some(1)), "{r}");
    // A delivered one only on request.
    let (_, r) = post(&c, format!("{a}/admin/deliveries/{id}/replay"), None).await;
    assert_eq!(r["skipped"].as_u64(), Some(1));
    let (_, r) = post(&c, format!("{a}/admin/deliveries/{id}/replay?include_delivered=true"), None).await;
    assert_eq!(r["replayed"].as_u64(), Some(1));
    assert!(
        eventually(Duration::from_secs(5), || backend
            .received()
            .iter()
            .filter(|r| r.webhook_id() == webhook_id)
            .count()
            == 4)
        .await
    );

    // The replayed ledger delivery fails twice more and is dead again.
    wait_for(&c, &relay, "state=dead", 6).await;

    // The CLI, as the built binary, against this relay.
    let conn = ["--admin-url".to_owned(), a.clone(), "--token".to_owned(), TOKEN.to_owned()];
    let with = |rest: &[&str]| [args(rest), conn.to_vec()].concat();
    let (code, out, err) = cli(&with(&["deliveries", "list", "--state", "dead", "--endpoint", "ledger"])).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("LAST ERROR"), "{out}");
    assert!(lines[1..].iter().all(|l| l.contains("dead") && l.contains("ledger") && l.contains("HTTP 503")), "{out}");
    let (code, out, _) = cli(&with(&["deliveries", "list", "--state", "dead", "--json"])).await;
    assert_eq!(code, 0);
    let page: Value = serde_json::from_str(&out).unwrap();
    let n_dead = page["items"].as_array().unwrap().len();
    assert_eq!(n_dead, 6, "{page}");
    let (code, out, _) = cli(&with(&["deliveries", "show", id])).await;
    assert_eq!(code, 0);
    assert!(out.contains("HTTP 500") && out.contains("HTTP 200") && out.contains(webhook_id), "{out}");
    let (code, out, _) = cli(&with(&["events", "show", &event_ids[0]])).await;
    assert_eq!(code, 0);
    assert!(out.contains(&event_ids[0]) && out.contains("backend") && out.contains("ledger"), "{out}");
    let (code, out, err) = cli(&with(&["replay", "--state", "dead", "--endpoint", "ledger"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("replayed {n_dead}, skipped 0")), "{out}");
    let (code, out, _) = cli(&with(&["replay", one, "--json"])).await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["deliveries"][0]["id"], one);
    // Several ids: each is tried and reported, even after an unknown one.
    let two = still_dead[1]["id"].as_str().unwrap();
    let (code, out, err) = cli(&with(&["replay", one, "dlv_000000000000ffffffffffffffff", two])).await;
    assert_eq!(code, 4, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with(one) && lines[1].contains("failed") && lines[2].starts_with(two), "{out}");
    assert!(err.contains("1 of 3 ids not replayed"), "{err}");

    // Errors a script can tell apart.
    let (code, _, err) = cli(&args(&["deliveries", "list", "--admin-url", &a, "--token", "nope"])).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("wrong bearer token"), "{err}");
    let (code, _, err) = cli(&args(&["deliveries", "list", "--admin-url", &a])).await;
    assert_eq!(code, 3);
    assert!(err.contains("--token"), "{err}");
    let (code, _, err) = cli(&with(&["deliveries", "show", "dlv_000000000000ffffffffffffffff"])).await;
    assert_eq!(code, 4, "{err}");
    let (code, _, err) = cli(&with(&["deliveries", "list", "--state", "deed"])).await;
    assert_eq!(code, 2);
    assert!(err.contains("state: unknown state 'deed'"), "{err}");
    let (code, _, err) =
        cli(&args(&["deliveries", "list", "--admin-url", &format!("{a}/api"), "--token", TOKEN])).await;
    assert_eq!(code, 1, "a wrong URL is not an unknown id: {err}");
    assert!(err.contains("check --admin-url"), "{err}");
    let r =
        c.get(format!("{a}/admin/deliveries")).header("authorization", format!("bearer {TOKEN}")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the auth scheme is case-insensitive");
    let (code, _, err) = cli(&with(&["replay"])).await;
    assert_eq!(code, 2, "{err}");

    relay.stop().await;
    let (code, _, err) = cli(&with(&["deliveries", "list"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the relay's admin API"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_dead_deliveries_are_found_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.redb");
    let store = Arc::new(ipn_relay::store::embedded::EmbeddedStore::open(&path).unwrap());
    dead_deliveries_are_found_and_replayed(store, &format!("path = \"{}\"", path.display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dead_deliveries_are_found_and_replayed() {
    let redis = RedisServer::start();
    let store = Arc::new(ipn_relay::store::redis::RedisStore::connect(&redis.url, "admin").await.unwrap());
    dead_deliveries_are_found_and_replayed(
        store,
        &format!("kind = \"redis\"\nurl = \"{}\"\nprefix = \"admin\"", redis.url),
    )
    .await;
}

/// A bulk replay cut off half way (its process stopped after the first step)
/// is resumed when the relay starts again, and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_replay_cut_off_half_way_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.redb");
    let (fixed, backend) = failing_until_fixed().await;
    let ledger = Receiver::start(|_| Reply::Status(200)).await;
    let text = config(&format!("path = \"{}\"", path.display()), &backend.url(), &ledger.url());
    let store = Arc::new(ipn_relay::store::embedded::EmbeddedStore::open(&path).unwrap());
    let relay = Running::start(&text, store.clone()).await;
    let c = client();
    for i in 0..30 {
        assert_eq!(post_to(&c, relay.addr, payment_ipn(9000 + i, "finished")).await.unwrap().0, 200);
    }
    wait_for(&c, &relay, "state=dead", 30).await;
    relay.stop().await;

    // The first step commits, then the process "stops".
    let filter = DeliveryFilter { state: Some(DeliveryState::Dead), ..Default::default() };
    let job = ipn_relay::replay::create(store.as_ref(), filter, false, 1000, None).await.unwrap();
    let job = ipn_relay::replay::step(store.as_ref(), &job, 10, &endpoints()).await.unwrap().unwrap();
    assert_eq!((job.replayed, job.finished), (10, false));
    let Ok(store) = Arc::try_unwrap(store) else { panic!("the stopped relay still holds the store") };
    store.close().await;

    fixed.store(true, Ordering::SeqCst);
    let store = Arc::new(ipn_relay::store::embedded::EmbeddedStore::open(&path).unwrap());
    let relay = Running::start(&text, store.clone()).await;
    wait_for(&c, &relay, "state=delivered&endpoint=backend", 30).await;
    let done = store.replay_job(&job.id).await.unwrap().unwrap();
    assert_eq!((done.replayed, done.skipped, done.finished), (30, 0, true));
    // Each delivery was replayed once: two failures, then one success.
    for d in list_all(&c, &relay, "endpoint=backend").await {
        assert_eq!(d["attempts"], 3, "{d}");
    }
    relay.stop().await;
}

/// What an operator meets past the first page: strict parameters, an empty
/// listing that says so, and a truncated bulk replay continued exactly by
/// the command the CLI prints, however many deliveries share a millisecond.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_bulk_replay_is_continued_exactly_and_paging_is_strict() {
    use ipn_relay::store::{Attempt, AttemptResult, DeliveryId, LIST_SCAN_LIMIT, NewDelivery, NewEvent, Next};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.redb");
    let store = Arc::new(ipn_relay::store::embedded::EmbeddedStore::open(&path).unwrap());
    let event = |id: &str, at: u64| NewEvent {
        id: id.into(),
        source: "nowpayments".into(),
        event_type: "deposit.confirmed".into(),
        received_at: at,
        json: b"{}".to_vec(),
        subject: None,
    };
    let settle = |next: Next| async move {
        // Finished now: settled deliveries are kept for the retention.
        let attempt = Attempt {
            number: 0,
            started_at: ipn_relay::store::now_millis(),
            duration_ms: 1,
            result: AttemptResult::Status { code: 500 },
            response_excerpt: None,
        };
        (attempt, next)
    };
    // Seven dead deliveries created in one millisecond, an hour ago...
    let hour_ago = ipn_relay::store::now_millis() - 3_600_000;
    let dead: Vec<NewDelivery> = (0..7)
        .map(|_| NewDelivery { id: DeliveryId::new(hour_ago), endpoint: "backend".into(), policy: Default::default() })
        .collect();
    store.admit(event("evt_dead", hour_ago), dead, 60_000).await.unwrap();
    for c in store.claim_due("backend", hour_ago, 100, 5_000).await.unwrap() {
        let (a, next) = settle(Next::Dead).await;
        assert!(store.finish(&c.delivery.id, c.delivery.claim_token, a, next).await.unwrap());
    }
    // ...under more delivered ones than one listing page examines.
    let later = hour_ago + 1_000;
    let many: Vec<NewDelivery> = (0..LIST_SCAN_LIMIT + 50)
        .map(|_| NewDelivery { id: DeliveryId::new(later), endpoint: "ledger".into(), policy: Default::default() })
        .collect();
    store.admit(event("evt_many", later), many, 60_000).await.unwrap();
    for c in store.claim_due("ledger", later, LIST_SCAN_LIMIT + 50, 5_000).await.unwrap() {
        let (a, next) = settle(Next::Delivered).await;
        assert!(store.finish(&c.delivery.id, c.delivery.claim_token, a, next).await.unwrap());
    }

    // Replayed deliveries fail again and die again (two quick attempts), so
    // only the cursor keeps a follow-up from replaying them a second time.
    let backend = Receiver::start(|_| Reply::Status(500)).await;
    let text = config(&format!("path = \"{}\"", path.display()), &backend.url(), "http://127.0.0.1:9/");
    let relay = Running::start(&text, store.clone()).await;
    let a = relay.admin_url();
    let c = client();

    // Repeats are refused, naming the key, in the query and in the body.
    let (status, v) = get(&c, format!("{a}/admin/deliveries?state=dead&state=pending"), Some(TOKEN)).await;
    assert_eq!((status, v["error"]["message"].as_str()), (400, Some("state: given more than once")), "{v}");
    let r = c
        .post(format!("{a}/admin/replay"))
        .bearer_auth(TOKEN)
        .body(r#"{"state":"dead","state":"delivered"}"#)
        .send()
        .await
        .unwrap();
    let (status, v) = answer(r).await;
    assert_eq!((status, v["error"]["message"].as_str()), (400, Some("state: given more than once")), "{v}");
    let (status, _) =
        post(&c, format!("{a}/admin/deliveries/dlv_0/replay?include_delivered=true&include_delivered=false"), None)
            .await;
    assert_eq!(status, 400);
    assert_eq!(list_all(&c, &relay, "state=delivered").await.len(), LIST_SCAN_LIMIT + 50, "nothing was replayed");

    // Nothing pending: an empty page, and no cursor to follow.
    let (status, page) = get(&c, format!("{a}/admin/deliveries?state=pending&limit=3"), Some(TOKEN)).await;
    assert_eq!((status, page), (200, json!({"items": [], "next_cursor": null})));
    let conn = ["--admin-url".to_owned(), a.clone(), "--token".to_owned(), TOKEN.to_owned()];
    let with = |rest: &[&str]| [args(rest), conn.to_vec()].concat();
    let (code, out, err) = cli(&with(&["deliveries", "list", "--state", "pending", "--limit", "3"])).await;
    assert_eq!((code, out.as_str()), (0, "no deliveries match\n"), "{err}");

    // `--max` alone replays dead ones, as the help says; each truncated run
    // prints the command for the next, which goes on exactly where it stopped.
    let mut command = args(&["replay", "--max", "2", "--since", "2h"]);
    let mut replayed = 0;
    for round in 0.. {
        assert!(round < 10, "the follow-up commands never finished");
        let (code, out, err) = cli(&[command.clone(), conn.to_vec()].concat()).await;
        assert_eq!(code, 0, "{err}");
        replayed += out.split(',').next().unwrap().trim_start_matches("replayed ").parse::<usize>().unwrap();
        // Let the replayed ones die again first.
        wait_for(&c, &relay, "state=dead", 7).await;
        let Some(next) = out.lines().find_map(|l| l.trim().strip_prefix("ipn-relay ")) else { break };
        // A relative time means what it meant the first time: printed as a time.
        assert!(!next.contains("2h") && next.contains("--since 20") && next.contains("--cursor dlv_"), "{next}");
        command = next.split(' ').map(str::to_owned).collect();
    }
    assert_eq!(replayed, 7, "every dead delivery replayed once");
    for d in list_all(&c, &relay, "state=dead").await {
        assert_eq!(d["attempts"], 3, "replayed exactly once: {d}");
    }
    relay.stop().await;
}

/// An endpoint removed from the configuration: its pending deliveries are
/// orphaned at start (not left pending for ever), found by its name, never
/// replayed into a void, discarded on request, and delivered once the
/// endpoint is configured again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_of_a_removed_endpoint_are_orphaned_found_refused_and_recovered() {
    use ipn_relay::store::{Attempt, AttemptResult, DeliveryId, NewDelivery, NewEvent, Next, now_millis};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.redb");
    let store = Arc::new(ipn_relay::store::embedded::EmbeddedStore::open(&path).unwrap());
    // What a relay configured with `backend` and `ledger` left: three events,
    // the ledger's first delivery dead, its other two pending.
    assert!(store.reconcile_endpoints(&endpoints(), true, now_millis()).await.unwrap().orphaned.is_empty());
    let at = now_millis() - 60_000;
    for i in 0..3u64 {
        let event = NewEvent {
            id: format!("evt_gone{i}").into(),
            source: "nowpayments".into(),
            event_type: "deposit.confirmed".into(),
            received_at: at + i,
            json: b"{}".to_vec(),
            subject: None,
        };
        let ds = ["backend", "ledger"].map(|e| NewDelivery {
            id: DeliveryId::new(at + i),
            endpoint: e.into(),
            policy: Default::default(),
        });
        store.admit(event, ds.to_vec(), 60_000).await.unwrap();
    }
    let first = store.claim_due("ledger", at, 1, 5_000).await.unwrap().remove(0);
    let failed = Attempt {
        number: 0,
        started_at: at,
        duration_ms: 1,
        result: AttemptResult::Status { code: 500 },
        response_excerpt: None,
    };
    assert!(store.finish(&first.delivery.id, first.delivery.claim_token, failed, Next::Dead).await.unwrap());
    let dead_id = first.delivery.id.clone();

    // Restarted with `backend` only.
    let backend = Receiver::start(|_| Reply::Status(200)).await;
    let ledger = Receiver::start(|_| Reply::Status(200)).await;
    let both = config(&format!("path = \"{}\"", path.display()), &backend.url(), &ledger.url());
    let start = both.find("[[endpoints]]\nname = \"ledger\"").unwrap();
    let end = both[start..].find("[delivery]").unwrap() + start;
    let backend_only = format!("{}{}", &both[..start], &both[end..]);
    let relay = Running::start(&backend_only, store.clone()).await;
    let a = relay.admin_url();
    let c = client();
    wait_for(&c, &relay, "state=delivered&endpoint=backend", 3).await;

    // Found by name, in a state that says why nothing moves.
    let ledger_items = list_all(&c, &relay, "endpoint=ledger").await;
    let mut states: Vec<&str> = ledger_items.iter().map(|d| d["state"].as_str().unwrap()).collect();
    states.sort();
    assert_eq!(states, ["dead", "orphaned", "orphaned"], "{ledger_items:?}");
    let (status, v) = get(&c, format!("{a}/admin/deliveries?endpoint=ledgr"), Some(TOKEN)).await;
    assert_eq!(status, 400, "a name never seen is still a typo: {v}");
    // Counted, and not aged as pending for ever.
    let text = c.get(format!("{a}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("ipn_relay_deliveries{state=\"orphaned\"} 2"), "{text}");
    assert!(text.contains("ipn_relay_oldest_pending_age_seconds 0"), "{text}");

    // Never replayed into a void: by id, by filter, or swept up by a bulk replay.
    let (status, v) = post(&c, format!("{a}/admin/deliveries/{dead_id}/replay"), None).await;
    assert_eq!((status, error_code(&v)), (409, "endpoint_not_configured"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("'ledger' is not in the configuration"), "{v}");
    let (status, v) = post(&c, format!("{a}/admin/replay"), Some(json!({"state": "dead", "endpoint": "ledger"}))).await;
    assert_eq!((status, error_code(&v)), (409, "endpoint_not_configured"), "{v}");
    let (status, v) = post(&c, format!("{a}/admin/replay"), Some(json!({"state": "dead"}))).await;
    assert_eq!((status, v["replayed"].as_u64(), v["not_configured"].as_u64()), (202, Some(0), Some(1)), "{v}");
    assert_eq!(store.delivery(&dead_id).await.unwrap().unwrap().0.state, DeliveryState::Dead);

    // Discarded on request, one at a time here, with a reason.
    let conn = ["--admin-url".to_owned(), a.clone(), "--token".to_owned(), TOKEN.to_owned()];
    let with = |rest: &[&str]| [args(rest), conn.to_vec()].concat();
    let (status, v) = post(&c, format!("{a}/admin/discard"), Some(json!({"endpoint": "ledger"}))).await;
    assert_eq!(
        (status, v["error"]["message"].as_str()),
        (400, Some("reason: required (why these deliveries will not be sent)")),
        "{v}"
    );
    let discard =
        ["discard", "--state", "orphaned", "--endpoint", "ledger", "--max", "1", "--reason", "ledger retired"];
    let (code, out, err) = cli(&with(&discard)).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("discarded 1, skipped 0 of 1 considered\nstopped at --max"), "{out}");
    assert!(out.contains("ipn-relay discard --state orphaned --endpoint ledger --until "), "{out}");
    let (code, _, err) = cli(&with(&["discard", "--state", "orphaned", "--endpoint", "ledger"])).await;
    assert_eq!(code, 2, "no reason: {err}");
    assert!(err.contains("--reason"), "{err}");
    let discarded = list_all(&c, &relay, "state=discarded&endpoint=ledger").await;
    assert_eq!(discarded.len(), 1);
    assert_eq!(discarded[0]["discard_reason"], "ledger retired");
    assert_eq!(list_all(&c, &relay, "state=orphaned").await.len(), 1);
    relay.stop().await;

    // Configured again: the orphaned one that is left is delivered.
    let relay = Running::start(&both, store.clone()).await;
    wait_for(&c, &relay, "state=delivered&endpoint=ledger", 1).await;
    assert_eq!(list_all(&c, &relay, "state=orphaned").await.len(), 0);
    assert_eq!(ledger.received().len(), 1);
    relay.stop().await;
}
