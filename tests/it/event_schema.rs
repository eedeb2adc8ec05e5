//! Every normalised event we can produce validates against the published
//! schema, `schema/event.schema.json`.

use std::time::Duration;

use crate::common::*;
use ipn_relay::config::{ProviderKind, Source};
use ipn_relay::event::Event;
use ipn_relay::providers::{self, nova, nowpayments};
use time::OffsetDateTime;

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema/event.schema.json")).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn source(kind: ProviderKind, secret: &str) -> Source {
    Source {
        name: kind.as_str().into(),
        kind,
        secrets: vec![ipn_relay::config::Secret::new(secret)],
        allow_ips: vec![],
        rate_limit: None,
        timestamp_tolerance: Some(Duration::from_secs(300)),
    }
}

fn event(src: &Source, headers: http::HeaderMap, body: &[u8], now: OffsetDateTime) -> serde_json::Value {
    let n = providers::process(src, &headers, body, now)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)));
    serde_json::from_slice(&Event::new(&src.name, src.kind.as_str(), n, now).to_json()).unwrap()
}

fn assert_valid(v: &serde_json::Value) {
    let errors: Vec<String> = schema().iter_errors(v).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{v}\n{errors:#?}");
}

#[test]
fn every_normalised_test_event_validates() {
    let np = source(ProviderKind::Nowpayments, NP_SECRET);
    let mut bodies: Vec<String> =
        ["docs-payment-ipn.json", "docs-payout-ipn.json", "docs-custodial-recurring-ipn.json"]
            .iter()
            .map(|f| std::fs::read_to_string(fixture(&format!("nowpayments/{f}"))).unwrap())
            .collect();
    for status in ["waiting", "partially_paid", "finished", "failed", "refunded", "brand_new"] {
        bodies.push(payment_ipn(9, status));
    }
    bodies.push(r#"{"id":"5","batch_withdrawal_id":"6","status":"FINISHED","amount":"1.5","currency":"usdttrc20","address":"a","hash":"0xabc"}"#.into());
    bodies.push(r#"{"something":"else"}"#.into());
    let now = OffsetDateTime::now_utc();
    for body in &bodies {
        let mut h = http::HeaderMap::new();
        h.insert(
            nowpayments::SIGNATURE_HEADER,
            nowpayments::sign(NP_SECRET.as_bytes(), body.as_bytes()).parse().unwrap(),
        );
        assert_valid(&event(&np, h, body.as_bytes(), now));
    }

    let nv = source(ProviderKind::Nova, NOVA_SECRET);
    let doc = std::fs::read_to_string(fixture("nova/deposit-confirmed.json")).unwrap();
    let doc_time = time::macros::datetime!(2025-03-06 00:05:00 UTC);
    let mut nova_bodies = vec![(doc, doc_time)];
    for e in ["deposit.failed", "payout.completed", "payout.failed", "transfer.completed", "refund.created", "Weird"] {
        nova_bodies.push((nova_body(e, "x1", &now_rfc3339()), now));
    }
    for (body, at) in nova_bodies {
        let mut h = http::HeaderMap::new();
        h.insert(nova::SIGNATURE_HEADER, nova::sign(NOVA_SECRET.as_bytes(), body.as_bytes()).parse().unwrap());
        assert_valid(&event(&nv, h, body.as_bytes(), at));
    }
}

#[test]
fn the_schema_rejects_what_is_not_an_event() {
    let v = schema();
    assert!(!v.is_valid(&serde_json::json!({"id": "evt_1"})));
    let np = source(ProviderKind::Nowpayments, NP_SECRET);
    let body = payment_ipn(1, "finished");
    let mut h = http::HeaderMap::new();
    h.insert(nowpayments::SIGNATURE_HEADER, nowpayments::sign(NP_SECRET.as_bytes(), body.as_bytes()).parse().unwrap());
    let mut e = event(&np, h, body.as_bytes(), OffsetDateTime::now_utc());
    e["amount"] = serde_json::json!(0.5);
    assert!(!v.is_valid(&e), "a numeric amount must be refused");
}
