//! The built `ipn-relay` binary: `check-config` summaries and exit codes,
//! and `sign` matching what the verifiers accept.

mod common;

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
    assert!(!stdout.contains("dev-nowpayments-ipn-secret"), "the summary must not print secrets: {stdout}");
}

#[test]
fn check_config_names_the_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "dup.toml",
            "[server]\nlisten = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:2\"\n[[sources]]\nname = \"a\"\nkind = \"nova\"\nsecrets = [\"x\"]\n[[sources]]\nname = \"a\"\nkind = \"nowpayments\"\nsecrets = [\"y\"]\n",
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
    let payment = common::fixture("nowpayments/docs-payment-ipn.json");
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
