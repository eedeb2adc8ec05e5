//! The built `ipn-relay` binary: `check-config` summaries and exit codes,
//! and `sign` matching what the verifiers accept.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use ipn_relay::providers::{nova, nowpayments};

fn relay(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ipn-relay"));
    for var in [
        "IPN_RELAY_CONFIG",
        "IPN_RELAY_ADMIN_TOKEN",
        "NOWPAYMENTS_IPN_SECRET",
        "NOVA_API_SECRET",
        "PAYMENTS_BACKEND_WEBHOOK_SECRET",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_summarises_the_example_and_exits_0() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let out = relay(&["check-config", "--config", example]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("is valid"), "{stdout}");
    assert!(stdout.contains("source    nowpayments (nowpayments) → POST /hooks/nowpayments"), "{stdout}");
    assert!(stdout.contains("WARNING   ${NOWPAYMENTS_IPN_SECRET} is not set"), "{stdout}");
    // The example's endpoint keeps the defaults: no ordering, regressions delivered.
    assert!(stdout.contains("(timeout 10s, max in flight 16)\n"), "{stdout}");
    assert!(!stdout.contains("dev-nowpayments-ipn-secret"), "the summary must not print secrets: {stdout}");
}

#[test]
fn check_config_names_the_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "dup.toml",
            "[server]\nlisten = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:2\"\n[[sources]]\nname = \"a\"\nkind = \"nova\"\nsecrets = [\"x-0123456789abcdef\"]\n[[sources]]\nname = \"a\"\nkind = \"nowpayments\"\nsecrets = [\"y-0123456789abcdef\"]\n",
            "sources[1].name: duplicate source name \"a\"",
        ),
        ("syntax.toml", "[server]\nlisten = \"127.0.0.1:1\"\nadmin_listen = = 2\n", "line 3"),
        (
            "env.toml",
            "[server]\nlisten = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:2\"\n[[sources]]\nname = \"a\"\nkind = \"nova\"\nsecrets = [\"${IPN_RELAY_CLI_TEST_UNSET}\"]\n",
            "IPN_RELAY_CLI_TEST_UNSET is not set",
        ),
    ];
    for (name, body, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let out = relay(&["check-config", "--config", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(text(&out.stderr).contains(expected), "{name}: {}", text(&out.stderr));
    }
    let out = relay(&["check-config", "--config", "/nonexistent/ipn-relay.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/ipn-relay.toml"), "{}", text(&out.stderr));
}

#[test]
fn serve_refuses_an_invalid_config_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:1\"\n").unwrap();
    let out = relay(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("admin_listen"), "{}", text(&out.stderr));
}

#[test]
fn sign_prints_what_the_verifiers_accept() {
    let payment = crate::common::fixture("nowpayments/docs-payment-ipn.json");
    let out = relay(&["sign", "nowpayments", "--secret", "s3cret", payment.to_str().unwrap()]);
    assert!(out.status.success());
    let body = std::fs::read(&payment).unwrap();
    assert_eq!(text(&out.stdout).trim(), nowpayments::sign(b"s3cret", &body));

    // Nova from standard input.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ipn-relay"))
        .args(["sign", "nova", "--secret", "k"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"{\"event\":\"x.y\"}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), nova::sign(b"k", b"{\"event\":\"x.y\"}"));
}

/// The log at debug level, in JSON: every callback and delivery line carries
/// its span (source, event id, endpoint), and no line carries a secret, a
/// signature or the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_ids_and_never_secrets_signatures_or_bodies() {
    use crate::common::*;
    let endpoint_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let rx = Receiver::start(|seen| if seen == 0 { Reply::Status(500) } else { Reply::Status(200) }).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("relay.redb");
    let text = format!(
        "{}\n[[endpoints]]\nname = \"backend\"\nurl = \"{}\"\nsecret = \"{endpoint_secret}\"\n\n[delivery]\ninitial_backoff = \"100ms\"\njitter = 0.0\n\n[log]\nformat = \"json\"\n",
        base_config(&store),
        rx.url()
    );
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, text).unwrap();
    let relay = spawn_relay_logging(&config, "debug");
    let c = client();
    let body = payment_ipn(77, "finished");
    let signature = nowpayments::sign(NP_SECRET.as_bytes(), body.as_bytes());
    let (status, v) = post_to(&c, relay.addr, body.clone()).await.unwrap();
    assert_eq!(status, 200, "{v}");
    let event_id = v["id"].as_str().unwrap().to_owned();
    let forged = c
        .post(format!("http://{}/hooks/nowpayments", relay.addr))
        .header("x-nowpayments-sig", "ab".repeat(64))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    assert!(eventually(std::time::Duration::from_secs(5), || rx.delivered_ids().contains(&event_id)).await);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let lines = relay.log.lock().unwrap().clone();
    let delivered_sig = rx.received()[0].headers["webhook-signature"].to_str().unwrap().to_owned();
    for line in &lines {
        for secret in
            [NP_SECRET, endpoint_secret, &endpoint_secret[6..], &signature, &delivered_sig[3..], &"ab".repeat(64)]
        {
            assert!(!line.contains(secret), "a secret or signature in the log: {line}");
        }
        assert!(!line.contains("0x8f2b9c1d4e7a6b5c3d2e1f0a9b8c7d6e5f4a3b2c"), "the body in the log: {line}");
    }
    let parsed: Vec<serde_json::Value> = lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let with = |message: &str| {
        parsed.iter().find(|v| v["message"] == message).unwrap_or_else(|| panic!("no {message:?} in {lines:#?}"))
    };
    let admitted = with("callback admitted");
    assert_eq!(
        (admitted["span"]["source"].as_str(), admitted["span"]["event_id"].as_str()),
        (Some("nowpayments"), Some(event_id.as_str()))
    );
    assert_eq!(with("callback refused")["span"]["source"], "nowpayments");
    for message in ["delivery failed; retry scheduled", "delivered"] {
        let line = with(message);
        assert_eq!(
            (line["span"]["endpoint"].as_str(), line["span"]["event_id"].as_str()),
            (Some("backend"), Some(event_id.as_str()))
        );
    }
}
