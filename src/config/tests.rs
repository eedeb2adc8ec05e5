use super::env::interpolate;
use super::validate::event_pattern;
use super::*;

const BASE: &str = r#"
[server]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9090"

[[sources]]
name = "nowpayments"
kind = "nowpayments"
secrets = ["s1-0123456789abcdef"]
"#;

/// The environment every test parses with: only `SET_TOKEN` is set.
fn env(name: &str) -> Option<String> {
    (name == "SET_TOKEN").then(|| "a-strong-admin-token-from-env".to_owned())
}

fn parse_text(text: &str) -> Result<Config, ConfigError> {
    Config::parse_with_env(text, Path::new("test.toml"), &env)
}

fn parse(extra: &str) -> Result<Config, ConfigError> {
    parse_text(&format!("{BASE}{extra}"))
}

fn err(extra: &str) -> String {
    parse(extra).expect_err("config should be refused").to_string()
}

const EP: &str = "\n[[endpoints]]\nname = \"be\"\nurl = \"http://127.0.0.1:3000/x\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n";

#[test]
fn example_config_is_valid() {
    let example = include_str!("../../config.example.toml");
    let cfg = Config::parse(example, Path::new("config.example.toml")).unwrap();
    assert_eq!(cfg.sources.len(), 2);
    assert!(!cfg.endpoints.is_empty());
}

#[test]
fn minimal_config_gets_defaults() {
    let cfg = parse("").unwrap();
    assert_eq!(cfg.server.max_body_bytes, 65536);
    assert_eq!(cfg.store.dedupe_ttl, Duration::from_secs(30 * 86400));
    assert_eq!(cfg.delivery.max_attempts, 12);
    assert!(matches!(cfg.store.kind, StoreKind::Embedded { .. }));
}

#[test]
fn interpolates_variables_with_defaults() {
    let env = |n: &str| (n == "SET").then(|| "value".to_owned());
    assert_eq!(interpolate("a${SET}b", env).unwrap(), ("avalueb".into(), vec![]));
    assert_eq!(interpolate("${UNSET:-dev}", env).unwrap(), ("dev".into(), vec!["UNSET".into()]));
    assert_eq!(interpolate("${UNSET:-}", env).unwrap(), ("".into(), vec!["UNSET".into()]));
    assert!(interpolate("${UNSET}", env).unwrap_err().contains("UNSET is not set"));
    assert!(interpolate("${bad name}", env).is_err());
    assert!(interpolate("${OPEN", env).is_err());
}

#[test]
fn missing_variable_names_the_line() {
    let e = err("\n[[sources]]\nname = \"nova\"\nkind = \"nova\"\nsecrets = [\"${UNSET}\"]\n");
    assert!(e.contains("UNSET is not set"), "{e}");
    assert!(e.contains("line 14"), "{e}");
}

#[test]
fn records_defaulted_variables() {
    let cfg =
        parse("\n[[sources]]\nname = \"nova\"\nkind = \"nova\"\nsecrets = [\"${UNSET:-dev-0123456789abcdef}\"]\n")
            .unwrap();
    assert_eq!(cfg.defaulted_vars, vec!["UNSET".to_owned()]);
    assert_eq!(cfg.sources[1].secrets[0].expose(), b"dev-0123456789abcdef");
}

#[test]
fn syntax_errors_name_the_line() {
    let e = Config::parse("[server]\nlisten = \"127.0.0.1:1\"\nadmin_listen = oops\n", Path::new("c.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 3"), "{e}");
}

#[test]
fn unknown_keys_are_refused() {
    let e = err("\n[delivery]\nmax_attempt = 3\n");
    assert!(e.contains("unknown field `max_attempt`"), "{e}");
    let e = err(&format!("{EP}colour = \"blue\"\n"));
    assert!(e.contains("unknown field `colour`"), "{e}");
}

#[test]
fn durations_are_human_readable() {
    let cfg = parse("\n[delivery]\ninitial_backoff = \"1h 30m\"\nmax_backoff = \"2d\"\nvisibility_timeout = \"90s\"\n")
        .unwrap();
    assert_eq!(cfg.delivery.initial_backoff, Duration::from_secs(5400));
    assert_eq!(cfg.delivery.max_backoff, Duration::from_secs(2 * 86400));
    assert!(err("\n[delivery]\ninitial_backoff = \"soon\"\n").contains("invalid duration \"soon\""));
}

#[test]
fn checks_the_previous_signing_secret() {
    let same = format!("{EP}previous_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n");
    assert!(err(&same).contains("endpoints[0].previous_secret: is the same as secret"), "{}", err(&same));
    let bad = format!("{EP}previous_secret = \"plain\"\n");
    assert!(err(&bad).contains("endpoints[0].previous_secret"), "{}", err(&bad));
    let ok = parse(&format!("{EP}previous_secret = \"whsec_c2Vjb25kLWVuZHBvaW50LXNlY3JldC1rZXktMTIz\"\n")).unwrap();
    assert!(ok.endpoints[0].previous_signing_key.is_some());
}

#[test]
fn refuses_redis_urls_it_cannot_connect_to() {
    let store = |url: &str| format!("\n[store]\nkind = \"redis\"\nurl = \"{url}\"\n");
    assert!(err(&store("http://redis.internal:6379")).contains("store.url: must start with redis://"));
    for ok in [
        "redis://127.0.0.1:6379/0",
        "rediss://redis.internal:6380/0",
        "unix:///run/redis.sock",
        "redis+unix:///run/redis.sock",
    ] {
        assert!(parse(&store(ok)).is_ok(), "{ok}");
    }
}

#[test]
fn redis_tls_files_need_rediss_go_in_pairs_and_must_be_readable() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, "-----BEGIN CERTIFICATE-----\n").unwrap();
        p.display().to_string()
    };
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client.key"));
    let store = |url: &str, files: &str| format!("\n[store]\nkind = \"redis\"\nurl = \"{url}\"\n{files}");
    let all = format!("tls_ca_file = \"{ca}\"\ntls_cert_file = \"{cert}\"\ntls_key_file = \"{key}\"\n");
    let cfg = parse(&store("rediss://redis.internal:6380/0", &all)).unwrap();
    let StoreKind::Redis { options, .. } = &cfg.store.kind else { panic!("redis") };
    assert_eq!(options.tls.ca_file.as_deref(), Some(Path::new(&ca)));
    assert!(options.tls.client.is_some());
    assert!(cfg.summary().contains("client certificate"), "{}", cfg.summary());
    let e = err(&store("redis://redis.internal:6379/0", &all));
    assert!(e.contains("need a rediss:// url"), "{e}");
    let e = err(&store("rediss://r:6380/0", &format!("tls_cert_file = \"{cert}\"\n")));
    assert!(e.contains("tls_cert_file and tls_key_file go together"), "{e}");
    let e = err(&store("rediss://r:6380/0", "tls_ca_file = \"/nonexistent/ca.pem\"\n"));
    assert!(e.contains("store.tls_ca_file") && e.contains("cannot read /nonexistent/ca.pem"), "{e}");
    let e = err(&store("rediss://r:6380/0#insecure", ""));
    assert!(e.contains("store.url") && e.contains("#insecure"), "{e}");
    let der = dir.path().join("ca.der");
    std::fs::write(&der, [0x30, 0x82, 0x01]).unwrap();
    let e = err(&store("rediss://r:6380/0", &format!("tls_ca_file = \"{}\"\n", der.display())));
    assert!(e.contains("is not PEM"), "{e}");
    let e = err(&format!("\n[store]\ntls_ca_file = \"{ca}\"\n"));
    assert!(e.contains("apply to kind = \"redis\" only"), "{e}");
}

#[test]
fn redis_behind_sentinel_or_in_a_cluster() {
    use crate::config::Topology;
    let sentinel = "\n[store]\nkind = \"redis\"\nurl = \"redis://:pw@ignored/2\"\nsentinels = [\"10.0.0.1:26379\", \"[::1]:26380\"]\nmaster_name = \"relay\"\n";
    let cfg = parse(sentinel).unwrap();
    let StoreKind::Redis { options, .. } = &cfg.store.kind else { panic!("redis") };
    let want = vec![("10.0.0.1".to_owned(), 26379), ("::1".to_owned(), 26380)];
    assert_eq!(options.topology, Topology::Sentinel { sentinels: want, master_name: "relay".into(), password: None });
    let with_password = format!("{sentinel}sentinel_password = \"s3ntinel-pw\"\n");
    let cfg = parse(&with_password).unwrap();
    let StoreKind::Redis { options, .. } = &cfg.store.kind else { panic!("redis") };
    assert!(matches!(&options.topology, Topology::Sentinel { password: Some(p), .. } if p == "s3ntinel-pw"));
    assert!(!format!("{cfg:?}").contains("s3ntinel-pw"), "the sentinels' password shows in Debug");
    let e = err(&with_password.replace("s3ntinel-pw", ""));
    assert!(e.contains("store.sentinel_password: must not be empty"), "{e}");
    let e = err("\n[store]\nkind = \"redis\"\nsentinel_password = \"pw\"\n");
    assert!(e.contains("store.sentinel_password: applies with sentinels only"), "{e}");
    let e = err("\n[store]\nsentinel_password = \"pw\"\n");
    assert!(e.contains("apply to Redis only"), "{e}");
    let e = err("\n[store]\nkind = \"redis-cluster\"\nurls = [\"redis://a:1\"]\nsentinel_password = \"pw\"\n");
    assert!(e.contains("not url, sentinels, master_name or sentinel_password"), "{e}");
    assert!(cfg.summary().contains("named by 2 sentinel(s)"), "{}", cfg.summary());
    let e = err("\n[store]\nkind = \"redis\"\nsentinels = [\"10.0.0.1:26379\"]\n");
    assert!(e.contains("sentinels and master_name go together"), "{e}");
    for bad in ["10.0.0.1", "redis://10.0.0.1:26379", "admin:s3cret@10.0.0.1:26379", "::1:26379", "[]:1"] {
        let e = err(&sentinel.replace("\"10.0.0.1:26379\"", &format!("{bad:?}")));
        assert!(e.contains("store.sentinels") && e.contains("must be host:port"), "{bad}: {e}");
        assert!(!e.contains("s3cret"), "{e}");
    }
    let e = err(&sentinel.replace("\"[::1]:26380\"", "\"10.0.0.1:26379\""));
    assert!(e.contains("lists a sentinel twice"), "{e}");
    let e = err(&sentinel.replace("redis://:pw@ignored/2", "unix:///tmp/r.sock"));
    assert!(e.contains("store.url"), "{e}");

    let seeds = "urls = [\"redis://:pw@10.0.0.1:6379\", \"redis://:pw@10.0.0.2:6379\"]\n";
    let cfg = parse(&format!("\n[store]\nkind = \"redis-cluster\"\n{seeds}")).unwrap();
    let StoreKind::Redis { options, url, .. } = &cfg.store.kind else { panic!("redis") };
    assert!(matches!(&options.topology, Topology::Cluster { urls } if urls.len() == 2));
    assert_eq!(url.expose(), "redis://:pw@10.0.0.1:6379");
    let e =
        err("\n[store]\nkind = \"redis-cluster\"\nurls = [\"redis://10.0.0.1:6379\", \"redis://:pw@10.0.0.2:6379\"]\n");
    assert!(e.contains("same user, password and database"), "{e}");
    let e = err("\n[store]\nkind = \"redis-cluster\"\nurls = [\"redis://10.0.0.1:6379/3\"]\n");
    assert!(e.contains("only database 0"), "{e}");
    assert!(!format!("{cfg:?}").contains("pw@"), "a seed's password shows in Debug");
    let e = err("\n[store]\nkind = \"redis-cluster\"\n");
    assert!(e.contains("store.urls: needs at least one seed"), "{e}");
    let e = err(&format!("\n[store]\nkind = \"redis-cluster\"\nurl = \"redis://a:1\"\n{seeds}"));
    assert!(e.contains("not url, sentinels, master_name or sentinel_password"), "{e}");
    let e = err("\n[store]\nkind = \"redis-cluster\"\nurls = [\"redis://a:1\", \"rediss://b:1\"]\n");
    assert!(e.contains("must all use TLS (rediss://) or none"), "{e}");
    let e = err(&format!("\n[store]\nkind = \"redis\"\n{seeds}"));
    assert!(e.contains("store.urls: applies to kind = \"redis-cluster\" only"), "{e}");
    let e = err(&format!("\n[store]\n{seeds}"));
    assert!(e.contains("apply to Redis only"), "{e}");
}

#[test]
fn urls_with_credentials_never_print_their_password() {
    let text = format!(
        "\n[store]\nkind = \"redis\"\nurl = \"redis://relay:s3cr3t-redis-pw@redis.internal:6379/0\"\n{}",
        EP.replace("http://127.0.0.1:3000/x", "https://hook:s3cr3t-http-pw@backend.internal/x")
    );
    let cfg = parse(&text).unwrap();
    let shown = format!("{cfg:?} {} {}", cfg.summary(), cfg.endpoints[0].url);
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(shown.contains("redis://relay:***@redis.internal:6379/0"), "{shown}");
    assert!(shown.contains("https://hook:***@backend.internal/x"), "{shown}");
    // The clients still get the real thing.
    let StoreKind::Redis { url, .. } = &cfg.store.kind else { panic!("redis") };
    assert_eq!(url.expose(), "redis://relay:s3cr3t-redis-pw@redis.internal:6379/0");
    assert_eq!(cfg.endpoints[0].url.expose().to_string(), "https://hook:s3cr3t-http-pw@backend.internal/x");
}

#[test]
fn refuses_two_sources_with_one_name() {
    let e = err("\n[[sources]]\nname = \"nowpayments\"\nkind = \"nova\"\nsecrets = [\"x-0123456789abcdef\"]\n");
    assert!(e.contains("sources[1].name: duplicate source name \"nowpayments\""), "{e}");
}

#[test]
fn refuses_bad_endpoint_url_and_secret() {
    let e = err(&EP.replace("http://127.0.0.1:3000/x", "ftp://host/x"));
    assert!(e.contains("endpoints[0].url"), "{e}");
    let e = err(&EP.replace("http://127.0.0.1:3000/x", "not a url"));
    assert!(e.contains("endpoints[0].url"), "{e}");
    let e = err(&EP.replace("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "plain-secret"));
    assert!(e.contains("endpoints[0].secret") && e.contains("whsec_"), "{e}");
    let e = err(&EP.replace("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_!!!"));
    assert!(e.contains("not valid base64"), "{e}");
}

#[test]
fn refuses_tolerance_longer_than_dedupe_ttl() {
    let e = err(
        "\n[store]\ndedupe_ttl = \"1h\"\n\n[[sources]]\nname = \"nova\"\nkind = \"nova\"\nsecrets = [\"x-0123456789abcdef\"]\ntimestamp_tolerance = \"2h\"\n",
    );
    assert!(e.contains("sources[1].timestamp_tolerance") && e.contains("dedupe_ttl"), "{e}");
}

#[test]
fn refuses_tolerance_more_than_half_the_dedupe_ttl() {
    let e = err(
        "\n[store]\ndedupe_ttl = \"1h\"\n\n[[sources]]\nname = \"nova\"\nkind = \"nova\"\nsecrets = [\"x-0123456789abcdef\"]\ntimestamp_tolerance = \"31m\"\n",
    );
    assert!(e.contains("sources[1].timestamp_tolerance"), "{e}");
    assert!(parse("\n[store]\ndedupe_ttl = \"1h\"\n\n[[sources]]\nname = \"nova\"\nkind = \"nova\"\nsecrets = [\"x-0123456789abcdef\"]\ntimestamp_tolerance = \"30m\"\n").is_ok());
}

#[test]
fn summary_hides_credentials_and_warns_about_catch_all_proxies() {
    let cfg = parse(&EP.replace("http://127.0.0.1:3000/x", "https://user:hunter2@backend.internal/hooks@v1")).unwrap();
    let summary = cfg.summary();
    assert!(!summary.contains("hunter2"), "{summary}");
    assert!(summary.contains("https://user:***@backend.internal/hooks@v1"), "{summary}");
    let text = BASE.replace("[server]\n", "[server]\ntrusted_proxies = [\"0.0.0.0/0\"]\n");
    let cfg = Config::parse(&text, Path::new("c.toml")).unwrap();
    assert!(cfg.summary().contains("catch-all"), "{}", cfg.summary());
}

#[test]
fn zero_tolerance_disables_the_check() {
    let cfg =
        parse("\n[[sources]]\nname = \"nova\"\nkind = \"nova\"\nsecrets = [\"x-0123456789abcdef\"]\ntimestamp_tolerance = \"0s\"\n")
            .unwrap();
    assert_eq!(cfg.sources[1].timestamp_tolerance, None);
}

#[test]
fn refuses_public_admin_listener_without_token() {
    let text = BASE.replace("admin_listen = \"127.0.0.1:9090\"", "admin_listen = \"0.0.0.0:9090\"");
    let e = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
    assert!(e.contains("server.admin_token"), "{e}");
    let with_token = text.replace("[server]\n", "[server]\nadmin_token = \"t0ken-t0ken-t0ken\"\n");
    assert!(Config::parse(&with_token, Path::new("c.toml")).is_ok());
}

#[test]
fn refuses_weak_secrets_and_weak_public_admin_tokens() {
    let source = |secrets: &str| format!("\n[[sources]]\nname = \"nova\"\nkind = \"nova\"\nsecrets = {secrets}\n");
    for (secrets, says) in [
        (r#"[" "]"#, "secrets[0]: is only whitespace"),
        (r#"["a"]"#, "secrets[0]: is 1 bytes without surrounding whitespace; at least 16"),
        (r#"["a               "]"#, "secrets[0]: is 1 bytes"),
        (r#"["long-enough-secret-1", ""]"#, "secrets[1]: is empty"),
        (r#"["               \t  "]"#, "secrets[0]: is only whitespace"),
    ] {
        let e = err(&source(secrets));
        assert!(e.contains(says), "{secrets}: {e}");
        assert!(!e.contains("long-enough"), "the error must not quote a secret: {e}");
    }
    assert!(parse(&source(r#"["0123456789abcdef"]"#)).is_ok(), "16 bytes is enough");

    let public = BASE.replace("admin_listen = \"127.0.0.1:9090\"", "admin_listen = \"0.0.0.0:9090\"");
    let with = |base: &str, token: &str| {
        parse_text(&base.replace("[server]\n", &format!("[server]\nadmin_token = \"{token}\"\n")))
            .map_err(|e| e.to_string())
    };
    let e = with(&public, "x").unwrap_err();
    assert!(e.contains("server.admin_token: is 1 bytes") && e.contains("0.0.0.0:9090"), "{e}");
    assert!(with(&public, "   ").unwrap_err().contains("only whitespace"));
    let e = with(&public, "${UNSET:-dev-admin-token-long-enough}").unwrap_err();
    assert!(e.contains("development fallback"), "{e}");
    assert!(with(&public, "a-strong-admin-token-0123").is_ok());
    // Set in the environment: the variable, not a fallback, is in use.
    let cfg = with(&public, "${SET_TOKEN:-dev-admin-token-long-enough}").unwrap();
    assert_eq!(cfg.server.admin_token.unwrap().expose(), b"a-strong-admin-token-from-env");
    assert!(cfg.defaulted_vars.is_empty());
    // A fallback elsewhere in the file does not taint the token.
    let elsewhere = public.replace("s1-0123456789abcdef", "${UNSET:-s1-0123456789abcdef}");
    let cfg = with(&elsewhere, "${SET_TOKEN}").unwrap();
    assert_eq!(cfg.defaulted_vars, vec!["UNSET".to_owned()]);
    // On loopback only this machine can reach it: short is allowed,
    // whitespace never.
    assert!(with(BASE, "x").is_ok());
    assert!(with(BASE, "${UNSET:-dev-admin-token}").is_ok());
    assert!(with(BASE, " ").unwrap_err().contains("only whitespace"));
}

#[test]
fn refuses_visibility_timeout_not_above_endpoint_timeout() {
    let e = err(&format!("{EP}timeout = \"60s\"\n"));
    assert!(e.contains("delivery.visibility_timeout"), "{e}");
    let e = err(&format!("{EP}timeout = \"59800ms\"\n"));
    assert!(e.contains("by at least 500ms"), "{e}");
    assert!(parse(&format!("{EP}timeout = \"59500ms\"\n")).is_ok());
    // Found by the config fuzz target: this overflowed and panicked.
    let e = err(&format!("{EP}timeout = \"18446744073709551615s\"\n"));
    assert!(e.contains("longer than 100 years"), "{e}");
    assert!(err(&format!("{EP}timeout = \"101years\"\n")).contains("longer than 100 years"));
}

#[test]
fn refuses_bad_patterns_cidrs_and_source_filters() {
    assert!(err(&format!("{EP}events = [\"deposit*\"]\n")).contains("endpoints[0].events"));
    assert!(err(&format!("{EP}sources = [\"nope\"]\n")).contains("no source is named \"nope\""));
    assert!(
        err("\n[[sources]]\nname = \"x\"\nkind = \"nova\"\nsecrets = [\"x-0123456789abcdef\"]\nallow_ips = [\"10.0.0.0/33\"]\n")
            .contains("invalid CIDR")
    );
    assert!(
        err("\n[[sources]]\nname = \"Bad Name\"\nkind = \"nova\"\nsecrets = [\"x-0123456789abcdef\"]\n")
            .contains("sources[1].name")
    );
}

#[test]
fn event_patterns_match_types() {
    let p = |s| event_pattern("k", s).unwrap();
    assert!(p("*").matches("deposit.confirmed"));
    assert!(p("deposit.*").matches("deposit.confirmed"));
    assert!(!p("deposit.*").matches("deposits.confirmed"));
    assert!(!p("deposit.*").matches("payout.failed"));
    assert!(p("payout.failed").matches("payout.failed"));
    assert!(!p("payout.failed").matches("payout.failed2"));
    assert!(p("unknown").matches("unknown"));
}

#[test]
fn secrets_do_not_show_in_debug() {
    let cfg = parse(EP).unwrap();
    let dbg = format!("{cfg:?}");
    assert!(!dbg.contains("\"s1\""), "{dbg}");
}

#[test]
fn every_string_value_is_resolved_whatever_it_becomes() {
    let cfg = parse(
        "\n[[sources]]\nname = \"${UNSET:-nova}\"\nkind = \"${UNSET:-nova}\"\nsecrets = [\"0123456789abcdef\"]\ntimestamp_tolerance = \"${UNSET:-2m}\"\n[log]\nformat = \"${UNSET:-json}\"\n",
    )
    .unwrap();
    assert_eq!(cfg.sources[1].name, "nova");
    assert_eq!(cfg.sources[1].kind, ProviderKind::Nova);
    assert_eq!(cfg.sources[1].timestamp_tolerance, Some(Duration::from_secs(120)));
    assert_eq!(cfg.log_format, LogFormat::Json);
    // Keys are never resolved.
    assert!(err("\n[delivery]\n\"${UNSET:-max_attempts}\" = 3\n").contains("unknown field"));
}

#[test]
fn errors_quote_values_as_written_never_what_a_variable_put_in_them() {
    let lookup = |name: &str| (name == "SECRET").then(|| "live-secret-do-not-log-0123456789".to_owned());
    let parse = |extra: &str| {
        Config::parse_with_env(&format!("{BASE}{extra}"), Path::new("t.toml"), &lookup).unwrap_err().to_string()
    };
    for extra in [
        // A secret where a list belongs: the type error names the value.
        "\n[[sources]]\nname = \"nova\"\nkind = \"nova\"\nsecrets = \"${SECRET}\"\n",
        // A secret where a kind belongs.
        "\n[[sources]]\nname = \"nova\"\nkind = \"${SECRET}\"\nsecrets = [\"0123456789abcdef\"]\n",
        // A secret where a duration belongs.
        "\n[delivery]\ninitial_backoff = \"${SECRET}\"\n",
    ] {
        let e = parse(extra);
        assert!(!e.contains("live-secret"), "{e}");
        assert!(e.contains("${SECRET}"), "names the value as written: {e}");
    }
}

#[test]
fn a_key_the_file_may_not_have_is_reported_before_an_unset_variable() {
    let e = err("\n[delivery]\ncolour = \"${UNSET}\"\n");
    assert!(e.contains("unknown field `colour`"), "{e}");
    let e = err("\n[delivery]\ninitial_backoff = \"${UNSET}\"\n");
    assert!(e.contains("UNSET is not set") && e.ends_with('\n'), "{e:?}");
}

#[test]
fn a_duplicate_name_is_the_first_thing_said_about_an_entry() {
    let e = err("\n[[sources]]\nname = \"nowpayments\"\nkind = \"nowpayments\"\nsecrets = [\"x\"]\n");
    assert!(e.contains("sources[1].name: duplicate source name"), "{e}");
    let e = err(&format!("{EP}{}", EP.replace("http://", "ftp://")));
    assert!(e.contains("endpoints[1].name: duplicate endpoint name"), "{e}");
    let e = err(&format!("{EP}sources = [\"nope\"]\ntimeout = \"0s\"\n"));
    assert!(e.contains("endpoints[0].sources: no source is named"), "{e}");
}

#[test]
fn worker_threads_default_by_store_and_are_bounded() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cfg = parse("").unwrap();
    assert_eq!(cfg.server.workers(&cfg.store.kind), cores.saturating_sub(1).max(1));
    let redis = StoreKind::Redis {
        url: Url::new("redis://127.0.0.1/".into()),
        prefix: "p".into(),
        options: Default::default(),
    };
    assert_eq!(cfg.server.workers(&redis), cores);
    let with = |n: &str| BASE.replace("[server]\n", &format!("[server]\nworker_threads = {n}\n"));
    let cfg = parse_text(&with("3")).unwrap();
    assert_eq!(cfg.server.workers(&cfg.store.kind), 3);
    for bad in ["0", "1025"] {
        let e = parse_text(&with(bad)).unwrap_err().to_string();
        assert!(e.contains("server.worker_threads: must be between 1 and 1024"), "{e}");
    }
}

#[test]
fn endpoint_lifecycle_policy_defaults_parses_and_refuses_unknown_values() {
    let cfg = parse(EP).unwrap();
    assert_eq!((cfg.endpoints[0].ordering, cfg.endpoints[0].regressions), (Ordering::None, Regressions::Deliver));
    assert_eq!(cfg.endpoints[0].policy(), crate::store::Policy { ordered: false, skip_regressions: false });
    let cfg = parse(&format!("{EP}ordering = \"subject\"\nregressions = \"skip\"\n")).unwrap();
    assert_eq!(cfg.endpoints[0].policy(), crate::store::Policy { ordered: true, skip_regressions: true });
    assert!(cfg.summary().contains("in order per payment, regressions skipped"), "{}", cfg.summary());
    let e = err(&format!("{EP}ordering = \"payment\"\n"));
    assert!(e.contains("ordering") && e.contains("subject"), "{e}");
    let e = err(&format!("{EP}regressions = \"drop\"\n"));
    assert!(e.contains("regressions") && e.contains("skip"), "{e}");
}

#[test]
fn quarantine_defaults_parses_and_refuses_what_would_keep_nothing() {
    let q = parse("").unwrap().quarantine;
    assert!(q.enabled);
    assert_eq!((q.ttl, q.max_bytes, q.max_per_client_per_minute.get()), (Duration::from_secs(7 * 86400), 64 << 20, 60));
    let cfg =
        parse("[quarantine]\nenabled = false\nttl = \"36h\"\nmax_bytes = 1048576\nmax_per_client_per_minute = 5\n")
            .unwrap();
    let q = cfg.quarantine;
    assert_eq!((q.enabled, q.ttl, q.max_bytes), (false, Duration::from_secs(36 * 3600), 1 << 20));
    assert!(cfg.summary().contains("quarantine off"), "{}", cfg.summary());
    assert!(parse("").unwrap().summary().contains("quarantine keeps refused callbacks 7d, up to 67108864 bytes"));
    let e = err("[quarantine]\nmax_bytes = 1000\n");
    assert!(e.contains("quarantine.max_bytes") && e.contains("server.max_body_bytes (65536)"), "{e}");
    let e = err("[quarantine]\nttl = \"0s\"\n");
    assert!(e.contains("quarantine.ttl"), "{e}");
    // Default 7d, or dedupe_ttl if shorter.
    let short = parse("[store]\ndedupe_ttl = \"1h\"\n").unwrap();
    assert_eq!(short.quarantine.ttl, Duration::from_secs(3600));
    let e = err("[quarantine]\nttl = \"31d\"\n");
    assert!(e.contains("quarantine.ttl") && e.contains("store.dedupe_ttl (30days)"), "{e}");
    let e = err("[quarantine]\nmax_per_client_per_minute = 0\n");
    assert!(e.contains("quarantine.max_per_client_per_minute"), "{e}");
    let e = err("[quarantine]\nmax_byte = 1\n");
    assert!(e.contains("max_byte"), "{e}");
}

#[test]
fn replica_acks_are_for_redis_and_bounded() {
    let redis = "\n[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"\n";
    let cfg = parse(&format!("{redis}min_replicas_ack = 1\nreplica_ack_timeout = \"250ms\"\n")).unwrap();
    let StoreKind::Redis { options, .. } = &cfg.store.kind else { panic!("redis") };
    assert_eq!((options.min_replicas_ack, options.replica_ack_timeout), (1, Duration::from_millis(250)));
    assert!(cfg.summary().contains("1 replica(s) confirm each admission within 250ms"), "{}", cfg.summary());
    let cfg = parse(redis).unwrap();
    let StoreKind::Redis { options, .. } = &cfg.store.kind else { panic!("redis") };
    assert_eq!((options.min_replicas_ack, options.replica_ack_timeout), (0, Duration::from_secs(1)));
    let e = err(&format!("{redis}min_replicas_ack = 1\nreplica_ack_timeout = \"4s\"\n"));
    assert!(e.contains("a third of server.admission_timeout (10s)"), "{e}");
    let e = err(&format!("{redis}replica_ack_timeout = \"5ms\"\n"));
    assert!(e.contains("store.replica_ack_timeout"), "{e}");
    let e = err("\n[store]\nmin_replicas_ack = 1\n");
    assert!(e.contains("apply to kind = \"redis\" only"), "{e}");
}
