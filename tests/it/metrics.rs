//! Metrics after a scripted run (accepted, duplicate, forged, refused,
//! delivered, retried, dead, replayed): exact values, `promtool check
//! metrics`, and a real Prometheus scraping the relay that evaluates every
//! expression of the Grafana dashboard and the alert rules.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use ipn_relay::store::{DeliveryState, Store};
use serde_json::Value;

const TOKEN: &str = "metrics-test-token";

/// `backend` fails each event's first attempt, then takes it; `ledger`
/// always fails and gives up after two attempts.
async fn scripted_run(forged: usize) -> (Relay, Receiver, Receiver) {
    let backend = Receiver::start(|seen| if seen == 0 { Reply::Status(500) } else { Reply::Status(200) }).await;
    let ledger = Receiver::start(|_| Reply::Status(503)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.redb");
    let text = format!(
        "{}{}",
        base_config(&path).replacen("[server]\n", &format!("[server]\nadmin_token = \"{TOKEN}\"\n"), 1),
        backend_and_ledger(&backend.url(), &ledger.url())
    );
    let mut relay = Relay::start_text(&path, &text).await;
    relay.dir = Some(dir);
    let c = client();
    let first = payment_ipn(1, "finished");
    assert_eq!(answer(post_np(&c, &relay, &first, NP_SECRET).await).await.0, 200);
    assert_eq!(answer(post_np(&c, &relay, &payment_ipn(2, "finished"), NP_SECRET).await).await.0, 200);
    let (_, dup) = answer(post_np(&c, &relay, &first, NP_SECRET).await).await;
    assert_eq!(dup["status"], "duplicate");
    forge(&relay, 0..forged as u64).await;
    assert_eq!(answer(post_np(&c, &relay, "{\"payment_id\":", NP_SECRET).await).await.0, 400);
    let r = c.post(relay.url("/hooks/paypal")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 404);

    settle(&relay, 2).await;
    (relay, backend, ledger)
}

/// Waits until `n` deliveries are delivered (backend) and `n` dead (ledger).
async fn settle(relay: &Relay, n: u64) {
    for _ in 0..250 {
        let counts = relay.store.counts().await.unwrap();
        if counts.contains(&(DeliveryState::Delivered, n)) && counts.contains(&(DeliveryState::Dead, n)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("deliveries did not settle at {n} delivered and {n} dead: {:?}", relay.store.counts().await.unwrap());
}

/// Posts IPNs signed with a wrong secret; each is refused.
async fn forge(relay: &Relay, ids: std::ops::Range<u64>) {
    let c = client();
    for i in ids {
        let (status, _) = answer(post_np(&c, relay, &payment_ipn(100 + i, "finished"), "forged").await).await;
        assert_eq!(status, 401);
    }
}

async fn scrape(relay: &Relay) -> String {
    let r = client().get(format!("http://{}/metrics", relay.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    r.text().await.unwrap()
}

/// `name{a="x",b="y"}` → value, labels in name order.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut labels: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
        labels.sort();
        out.insert(format!("{name}{{{}}}", labels.join(",")), value.parse().unwrap());
    }
    out
}

fn value(s: &BTreeMap<String, f64>, key: &str) -> f64 {
    *s.get(key).unwrap_or_else(|| panic!("no series {key}"))
}

#[tokio::test]
async fn counters_match_a_scripted_run_exactly() {
    let (relay, _backend, _ledger) = scripted_run(1).await;
    let text = scrape(&relay).await;
    let s = samples(&text);
    let ingress = |source: &str, outcome: &str| {
        value(&s, &format!("ipn_relay_ingress_requests_total{{outcome=\"{outcome}\",source=\"{source}\"}}"))
    };
    assert_eq!(ingress("nowpayments", "accepted"), 2.0);
    assert_eq!(ingress("nowpayments", "duplicate"), 1.0);
    assert_eq!(ingress("nowpayments", "invalid_signature"), 1.0);
    assert_eq!(ingress("nowpayments", "bad_request"), 1.0);
    assert_eq!(ingress("nowpayments", "stale_timestamp"), 0.0);
    assert_eq!(ingress("unknown", "unknown_source"), 1.0, "an unconfigured source name never becomes a label");
    assert!(!text.contains("paypal"));
    for outcome in ipn_relay::metrics::INGRESS_OUTCOMES {
        assert_eq!(ingress("nova", outcome), 0.0, "every series exists from the start");
    }
    assert_eq!(value(&s, "ipn_relay_ingress_duration_seconds_count{source=\"nowpayments\"}"), 5.0);
    assert_eq!(value(&s, "ipn_relay_ingress_duration_seconds_count{source=\"unknown\"}"), 1.0);

    let deliveries = |endpoint: &str, outcome: &str| {
        value(&s, &format!("ipn_relay_deliveries_total{{endpoint=\"{endpoint}\",outcome=\"{outcome}\"}}"))
    };
    assert_eq!(
        [deliveries("backend", "delivered"), deliveries("backend", "retry"), deliveries("backend", "dead")],
        [2.0, 2.0, 0.0]
    );
    assert_eq!(
        [deliveries("ledger", "delivered"), deliveries("ledger", "retry"), deliveries("ledger", "dead")],
        [0.0, 2.0, 2.0]
    );
    assert_eq!(value(&s, "ipn_relay_delivery_duration_seconds_count{endpoint=\"backend\"}"), 4.0);
    assert_eq!(value(&s, "ipn_relay_delivery_duration_seconds_count{endpoint=\"ledger\"}"), 4.0);

    let state = |st: &str| value(&s, &format!("ipn_relay_deliveries{{state=\"{st}\"}}"));
    assert_eq!([state("pending"), state("in_flight"), state("delivered"), state("dead")], [0.0, 0.0, 2.0, 2.0]);
    assert_eq!(value(&s, "ipn_relay_oldest_pending_age_seconds{}"), 0.0);
    assert_eq!(value(&s, "ipn_relay_store_ready{}"), 1.0);
    // The embedded store is this relay's own: no other clock to compare.
    assert_eq!(value(&s, "ipn_relay_store_clock_offset_seconds{}"), 0.0);
    assert_eq!(value(&s, "ipn_relay_replays_total{}"), 0.0);
    assert_eq!(value(&s, &format!("ipn_relay_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), 1.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    for ep in ["backend", "ledger"] {
        let beat = value(&s, &format!("ipn_relay_delivery_last_poll_timestamp_seconds{{endpoint=\"{ep}\"}}"));
        assert!(now - beat < 10.0, "{ep} polled {}s ago", now - beat);
    }

    // A replay counts, and the open delivery shows in the age gauge once
    // the store-backed gauges are read again.
    let dead = relay
        .store
        .list(&ipn_relay::store::DeliveryFilter { state: Some(DeliveryState::Dead), ..Default::default() }, None, 1)
        .await
        .unwrap()
        .items
        .remove(0);
    let r = client()
        .post(format!("http://{}/admin/deliveries/{}/replay", relay.admin, dead.id))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let s = samples(&scrape(&relay).await);
    assert_eq!(value(&s, "ipn_relay_replays_total{}"), 1.0);

    // The exposition passes Prometheus's own linter.
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool must be installed (scripts/test installs Debian's prometheus package)");
    use std::io::Write;
    lint.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real Prometheus (Debian's package), killed when dropped.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    async fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/alerts.yml");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: ipn-relay\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus must be installed (scripts/test installs Debian's prometheus package)");
        let url = format!("http://127.0.0.1:{port}");
        let p = Prometheus { child, url, _dir: dir };
        for _ in 0..300 {
            if let Ok(r) = client().get(format!("{}/-/ready", p.url)).send().await
                && r.status() == 200
            {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("prometheus did not become ready");
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in query {
            q.append_pair(k, v);
        }
        let r = client().get(format!("{}{path}?{}", self.url, q.finish())).send().await.unwrap();
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(v["status"], "success", "{path} {query:?}: {v}");
        v
    }

    async fn query(&self, expr: &str) -> Vec<Value> {
        self.api("/api/v1/query", &[("query", expr)]).await["data"]["result"].as_array().unwrap().clone()
    }
}

async fn wait_for_scrapes(prom: &Prometheus, n: u64) {
    let mut scrapes = 0;
    for _ in 0..300 {
        let up = prom.query("count_over_time(up{job=\"ipn-relay\"}[1m])").await;
        scrapes = up.first().and_then(|r| r["value"][1].as_str()).and_then(|v| v.parse().ok()).unwrap_or(0);
        if scrapes >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("prometheus scraped the relay {scrapes} times, not {n}");
}

/// Every `expr` of the dashboard, with Grafana's own variables filled in.
fn dashboard_exprs() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboards/ipn-relay.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap().replace("$__rate_interval", "20s");
            out.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", panel["title"]);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_evaluates_every_dashboard_and_alert_expression() {
    let (relay, _backend, _ledger) = scripted_run(1).await;
    let prom = Prometheus::start(relay.admin).await;
    wait_for_scrapes(&prom, 2).await;
    // A burst of forged callbacks while Prometheus watches: enough to trip
    // the spike alert.
    forge(&relay, 1000..1150).await;
    // And one more event, delivered to backend after a retry and dead at
    // ledger, so delivery counters move while Prometheus watches.
    let c = client();
    assert_eq!(answer(post_np(&c, &relay, &payment_ipn(3, "finished"), NP_SECRET).await).await.0, 200);
    settle(&relay, 3).await;
    // Several more scrapes, so rates have two samples or more.
    wait_for_scrapes(&prom, 6).await;
    assert_eq!(prom.query("up{job=\"ipn-relay\"} == 1").await.len(), 1);

    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 15, "{} dashboard expressions", exprs.len());
    for (title, expr) in &exprs {
        let result = prom.query(expr).await;
        assert!(!result.is_empty(), "dashboard panel {title:?}: {expr} returned no data");
    }

    // The alert rules as Prometheus loaded them from grafana/alerts.yml.
    let mut rules = Vec::new();
    for _ in 0..100 {
        let v = prom.api("/api/v1/rules", &[]).await;
        rules = v["data"]["groups"][0]["rules"].as_array().cloned().unwrap_or_default();
        if !rules.is_empty()
            && rules.iter().all(|r| r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001")))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rules.len(), 12, "{rules:?}");
    let metric = regex_lite_names();
    for rule in &rules {
        let (name, query) = (rule["name"].as_str().unwrap(), rule["query"].as_str().unwrap());
        assert_eq!(rule["health"], "ok", "{name}: {}", rule["lastError"]);
        // The expression runs, and every series it reads exists.
        prom.query(query).await;
        for m in metric(query) {
            assert!(!prom.query(&format!("count({m})")).await.is_empty(), "{name}: no series {m}");
        }
    }
    // The conditions this run creates hold: dead deliveries, forged
    // callbacks, an endpoint (ledger) whose every attempt failed.
    for firing in ["IpnRelayDeadDeliveries", "IpnRelayInvalidSignatureSpike", "IpnRelayDeliveriesStalled"] {
        let rule = rules.iter().find(|r| r["name"] == firing).unwrap();
        let result = prom.query(rule["query"].as_str().unwrap()).await;
        assert!(!result.is_empty(), "{firing} should hold after this run");
    }
    // And the healthy ones stay quiet.
    for quiet in [
        "IpnRelayStoreNotReady",
        "IpnRelayWorkerStalled",
        "IpnRelayDown",
        "IpnRelayBacklogAging",
        "IpnRelayClockSkew",
        "IpnRelayOrphanedDeliveries",
    ] {
        let rule = rules.iter().find(|r| r["name"] == quiet).unwrap();
        assert!(prom.query(rule["query"].as_str().unwrap()).await.is_empty(), "{quiet} fired on a healthy relay");
    }
    // Only the failing endpoint is stalled, not the one that delivers.
    let stalled = rules.iter().find(|r| r["name"] == "IpnRelayDeliveriesStalled").unwrap();
    let stalled = prom.query(stalled["query"].as_str().unwrap()).await;
    let endpoints: Vec<&str> = stalled.iter().map(|r| r["metric"]["endpoint"].as_str().unwrap()).collect();
    assert_eq!(endpoints, ["ledger"]);

    // promtool agrees with the files as shipped.
    let grafana = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts.test.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let out = std::process::Command::new("promtool").args(&args).current_dir(&grafana).output().unwrap();
        assert!(out.status.success(), "promtool {args:?}: {}", String::from_utf8_lossy(&out.stdout));
    }
}

/// The metric names an expression reads.
fn regex_lite_names() -> impl Fn(&str) -> Vec<String> {
    |expr: &str| {
        let mut names = Vec::new();
        let bytes = expr.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let starts = (expr[i..].starts_with("ipn_relay_") || expr[i..].starts_with("up{"))
                && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
            if starts {
                let end =
                    expr[i..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(expr.len(), |e| i + e);
                names.push(expr[i..end].to_owned());
                i = end;
            } else {
                i += 1;
            }
        }
        names.sort();
        names.dedup();
        names
    }
}
