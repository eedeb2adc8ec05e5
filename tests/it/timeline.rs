//! A payment's timeline through a running relay: the lifecycle fields in
//! what endpoints receive, a regression skipped for one endpoint and
//! delivered to another, `GET /admin/subjects/…`, `ipn-relay subject`, and
//! the regressions counter.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::admin::{Running, TOKEN, args, cli, get};
use crate::common::*;

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema/event.schema.json")).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

#[tokio::test]
async fn a_payments_timeline_shows_its_regression_skipped_for_one_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, ledger) =
        (Receiver::start(|_| Reply::Status(200)).await, Receiver::start(|_| Reply::Status(200)).await);
    let store = Arc::new(ipn_relay::store::embedded::EmbeddedStore::open(&dir.path().join("relay.redb")).unwrap());
    let text = format!(
        "{}\n[[endpoints]]\nname = \"backend\"\nurl = \"{}\"\nsecret = \"{ENDPOINT_SECRET}\"\nordering = \"subject\"\nregressions = \"skip\"\n\n[[endpoints]]\nname = \"ledger\"\nurl = \"{}\"\nsecret = \"{ENDPOINT_SECRET}\"\n",
        base_config(&dir.path().join("unused.redb")).replacen(
            "[server]\n",
            &format!("[server]\nadmin_token = \"{TOKEN}\"\n"),
            1
        ),
        backend.url(),
        ledger.url()
    );
    let relay = Running::start(&text, store).await;
    let c = client();
    for status in ["waiting", "finished", "confirming"] {
        let body = payment_ipn(5077125051, status);
        let (code, v) = post_to(&c, relay.addr, body).await.unwrap();
        assert_eq!((code, v["status"].as_str()), (200, Some("accepted")), "{v}");
    }
    // Another payment's event is not in its timeline.
    post_to(&c, relay.addr, payment_ipn(42, "waiting")).await.unwrap();

    assert!(
        eventually(Duration::from_secs(20), || backend.received().len() == 3 && ledger.received().len() == 4).await
    );
    let bodies = |r: &Receiver| -> Vec<Value> {
        r.received().iter().map(|x| serde_json::from_slice(&x.body).unwrap()).collect()
    };
    let backend_got: Vec<(Value, Value)> = bodies(&backend)
        .into_iter()
        .filter(|v| v["subject"]["id"] == "5077125051")
        .map(|v| (v["provider_status"].clone(), v["sequence"].clone()))
        .collect();
    // The regression was not sent to the endpoint that skips them.
    assert_eq!(backend_got, [("waiting".into(), 1.into()), ("finished".into(), 2.into())]);
    let schema = schema();
    let ledger_got = bodies(&ledger);
    for v in &ledger_got {
        assert!(schema.is_valid(v), "{v}");
    }
    let late = ledger_got.iter().find(|v| v["provider_status"] == "confirming").unwrap();
    assert_eq!(
        (&late["sequence"], &late["previous_status"], &late["regression"]),
        (&3.into(), &"finished".into(), &true.into())
    );

    let admin = relay.admin_url();
    let url = format!("{admin}/admin/subjects/nowpayments/payment/5077125051");
    let states = |e: &Value| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = e["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["endpoint"].as_str().unwrap().to_owned(), d["state"].as_str().unwrap().to_owned()))
            .collect();
        v.sort();
        v
    };
    let pair = |a: &str, b: &str| vec![("backend".to_owned(), a.to_owned()), ("ledger".to_owned(), b.to_owned())];
    // The last finishes are recorded just after the receivers answered.
    let mut t = Value::Null;
    for _ in 0..200 {
        let (code, v) = get(&c, url.clone(), Some(TOKEN)).await;
        assert_eq!(code, 200, "{v}");
        t = v;
        let events = t["events"].as_array().unwrap();
        if events.len() == 3
            && states(&events[1]) == pair("delivered", "delivered")
            && states(&events[2]) == pair("skipped", "delivered")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = t["events"].as_array().unwrap();
    let rows: Vec<(u64, &str, bool)> = events
        .iter()
        .map(|e| {
            (
                e["sequence"].as_u64().unwrap(),
                e["provider_status"].as_str().unwrap(),
                e["regression"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, [(1, "waiting", false), (2, "finished", false), (3, "confirming", true)]);
    assert_eq!(states(&events[0]), pair("delivered", "delivered"));
    assert_eq!(states(&events[1]), pair("delivered", "delivered"));
    assert_eq!(states(&events[2]), pair("skipped", "delivered"));
    assert_eq!(events[2]["previous_status"], "finished");

    let (code, v) = get(&c, format!("{admin}/admin/subjects/nowpayments/payment/999"), Some(TOKEN)).await;
    assert_eq!((code, error_code(&v)), (404, "not_found"));
    let (code, _) = get(&c, format!("{admin}/admin/subjects/nowpayments/payment/5077125051"), None).await;
    assert_eq!(code, 401);

    let conn = ["--admin-url", &admin, "--token", TOKEN];
    let (code, out, err) =
        cli(&args(&[&["subject", "nowpayments", "payment", "5077125051"], &conn[..]].concat())).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("payment 5077125051 from nowpayments: 3 events"), "{out}");
    assert!(lines[1].starts_with("SEQ"), "{out}");
    assert!(lines[4].starts_with('3') && lines[4].contains("confirming") && lines[4].contains("REGRESSION"), "{out}");
    assert!(lines[4].contains("backend: skipped"), "{out}");
    let (code, out, _) =
        cli(&args(&[&["subject", "nowpayments", "payment", "5077125051", "--json"], &conn[..]].concat())).await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 3);
    let (code, _, err) = cli(&args(&[&["subject", "nowpayments", "payment", "999"], &conn[..]].concat())).await;
    assert_eq!(code, 4, "{err}");

    let metrics = c.get(format!("{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "ipn_relay_regressions_total{source=\"nowpayments\"} 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l == "ipn_relay_regressions_total{source=\"nova\"} 0"));
    relay.stop().await;
}
