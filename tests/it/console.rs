//! The console in a real browser (Debian's `chromium` through
//! `chromedriver`): sign in, find a dead delivery a failing receiver made,
//! read its attempts, fix the receiver, replay from the page and see it
//! delivered; bulk replay with its confirmation. Then what must be
//! refused: a wrong token, a POST without the session, without the CSRF
//! token or from another origin (a real page on another port that submits
//! a form to the console), and any resource from elsewhere. The run takes
//! the screenshots in docs/.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ipn_relay::store::embedded::EmbeddedStore;

use crate::admin::{Running, TOKEN, config, failing_until_fixed, list_all, wait_for};
use crate::common::*;
use crate::webdriver::Browser;

/// Serves one HTML page on another port of the same host: another origin
/// (but the same site, so a `SameSite=Strict` cookie alone would not stop
/// its form).
async fn serve_page(html: String) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                html.len()
            );
            let _ = s.write_all(response.as_bytes()).await;
        }
    });
    addr
}

/// Writes a screenshot: into docs/ with `IPN_RELAY_UPDATE_SCREENSHOTS=1`
/// (how the README's are made), else beside the test build, so a test run
/// leaves the checkout as it was.
fn screenshot(name: &str, png: &[u8]) {
    let dir = match std::env::var("IPN_RELAY_UPDATE_SCREENSHOTS").as_deref() {
        Ok("1") => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"),
        _ => std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    };
    let path = dir.join(name);
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The CSRF token in a console page.
fn csrf_in(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
    html[at..at + 64].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_a_dead_delivery_fixes_the_receiver_and_replays_it_from_the_browser() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("relay.redb")).unwrap());
    let (fixed, receiver) = failing_until_fixed().await;
    let url = receiver.url();
    let text = config(&format!("path = \"{}\"", dir.path().join("relay.redb").display()), &url, &url);
    let relay = Running::start(&text, store).await;
    let c = client();
    for id in [4_101, 4_102] {
        let r = post_np_at(&c, relay.addr, &payment_ipn(id, "finished"), NP_SECRET).await;
        assert_eq!(r.status(), 200);
    }
    // Markup in a provider's field is shown as text, never run.
    let hostile = payment_ipn(4_104, "finished").replacen(
        "Deposit of 0.00656612 ETH",
        "<img src=x onerror=alert(1)><b>bold</b>",
        1,
    );
    assert_eq!(post_np_at(&c, relay.addr, &hostile, NP_SECRET).await.status(), 200);
    let r = post_np_at(&c, relay.addr, &payment_ipn(4_103, "finished"), "not-the-secret-000").await;
    assert_eq!(r.status(), 401);
    // Three events, each to backend and ledger, dead after two attempts.
    wait_for(&c, &relay, "state=dead", 6).await;

    let console = relay.admin_url();
    let browser = Browser::start().await;
    browser.goto(&format!("{console}/ui/")).await;
    assert!(browser.url().await.ends_with("/ui/login"), "no session: sent to sign in");

    // A wrong token is refused.
    browser.type_into("#token", "not-the-admin-token").await;
    browser.follow("button[type=submit]").await;
    let source = browser.source().await;
    assert!(source.contains("Wrong admin token"), "{source}");
    assert_eq!(browser.count("nav").await, 0, "nothing shown without a session");

    browser.type_into("#token", TOKEN).await;
    browser.follow("button[type=submit]").await;
    assert!(browser.url().await.ends_with("/ui/"), "{}", browser.url().await);
    let overview = browser.text("main").await;
    assert!(overview.contains("dead 6"), "{overview}");
    assert!(overview.contains("backend failing (6 in a row)"), "{overview}");
    assert!(overview.contains("nowpayments accepted 3"), "{overview}");
    assert!(overview.contains("nowpayments invalid_signature 1"), "{overview}");
    // Everything the page loaded came from the console itself.
    let loaded = browser.execute("return performance.getEntriesByType('resource').map(e => e.name)").await;
    let loaded: Vec<&str> = loaded.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(loaded, [format!("{console}/ui/style.css")], "only the console's stylesheet");
    screenshot("console-overview.png", &browser.screenshot().await);

    // The newest dead delivery, from the overview's table.
    browser.follow("main table:last-of-type tbody a").await;
    let title = browser.text("h1").await;
    assert!(title.starts_with("Delivery dlv_"), "{title}");
    let id = title.trim_start_matches("Delivery ").to_owned();
    let attempts = browser.text("table").await;
    assert_eq!(browser.count("table tbody tr").await, 2, "{attempts}");
    assert_eq!(attempts.matches("HTTP 500").count(), 2, "{attempts}");
    let payload = browser.text("pre.payload").await;
    assert!(payload.contains("\"payment_id\""), "{payload}");
    assert!(payload.contains("<img src=x onerror=alert(1)><b>bold</b>"), "shown as text: {payload}");
    assert_eq!(browser.count("main img, main b").await, 0, "no markup from the payload became elements");
    screenshot("console-delivery.png", &browser.screenshot().await);

    // Fixed: replay it from the page.
    fixed.store(true, Ordering::SeqCst);
    browser.follow(&format!("form[action='/ui/deliveries/{id}/replay'] button")).await;
    assert!(browser.text(".notice").await.starts_with("Replayed"));
    let mut state = String::new();
    for _ in 0..100 {
        browser.goto(&format!("{console}/ui/deliveries/{id}")).await;
        state = browser.text("dd .state").await;
        if state == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "delivered");
    let delivered = receiver.received().iter().filter(|r| matches!(r.reply, Reply::Status(200))).count();
    assert_eq!(delivered, 1);

    // Bulk replay: the confirmation says how many, then replays them.
    browser.follow("nav a[href='/ui/replay']").await;
    browser.follow("form.filters button").await;
    assert_eq!(browser.text("#matching").await, "5 deliveries");
    browser.follow("form[method=post][action='/ui/replay'] button").await;
    assert!(browser.url().await.contains("/ui/replays/rpl_"), "{}", browser.text("main").await);
    wait_for(&c, &relay, "state=delivered", 6).await;
    assert_eq!(list_all(&c, &relay, "state=dead").await.len(), 0);

    // Another origin's page submits a form to the console; the browser
    // sends the session cookie (same site), and the console refuses it.
    let attempts_before = receiver.received().len();
    let evil = serve_page(format!(
        "<form method=post action=\"{console}/ui/deliveries/{id}/replay\">\
         <input name=csrf value=guess><input name=include_delivered value=true></form>\
         <script>document.forms[0].submit()</script>"
    ))
    .await;
    browser.goto(&format!("http://{evil}/")).await;
    let mut refused = String::new();
    for _ in 0..50 {
        if browser.url().await.starts_with(&console) {
            refused = browser.text("main").await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused.contains("not sent from the console"), "{refused}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), attempts_before, "nothing was sent again");

    // Signing out ends the session.
    browser.goto(&format!("{console}/ui/")).await;
    browser.follow(".signout button").await;
    assert!(browser.url().await.ends_with("/ui/login"));
    browser.goto(&format!("{console}/ui/deliveries")).await;
    assert!(browser.url().await.ends_with("/ui/login"));
    drop(browser);
    relay.stop().await;
}

/// The same checks without a browser, where a header or a status says it.
#[tokio::test]
async fn the_console_refuses_what_is_not_signed_in_same_origin_and_carrying_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("relay.redb")).unwrap());
    let text = config(
        &format!("path = \"{}\"", dir.path().join("relay.redb").display()),
        "http://127.0.0.1:9/",
        "http://127.0.0.1:9/",
    );
    let relay = Running::start(&text, store).await;
    let console = relay.admin_url();
    let origin = console.clone();
    let c = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    // Without a session: pages send to sign-in, actions are refused.
    let r = c.get(format!("{console}/ui/")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/login");
    let r = c
        .post(format!("{console}/ui/replay"))
        .header("origin", &origin)
        .body("state=dead&max=10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The sign-in page has the policy and no external anything.
    let r = c.get(format!("{console}/ui/login")).send().await.unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.starts_with("default-src 'none'")
            && csp.contains("form-action 'self'")
            && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let html = r.text().await.unwrap();
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("<script"), "{html}");

    // Signing in: only from the console's origin, and only with the token.
    let sign_in = |token: &str, origin: Option<&str>| {
        let mut req = c.post(format!("{console}/ui/login")).header("content-type", "application/x-www-form-urlencoded");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.body(format!("token={token}")).send()
    };
    assert_eq!(sign_in(TOKEN, None).await.unwrap().status(), 403);
    assert_eq!(sign_in(TOKEN, Some("http://evil.example")).await.unwrap().status(), 403);
    assert_eq!(sign_in("wrong-token-wrong-token", Some(&origin)).await.unwrap().status(), 401);
    let r = sign_in(TOKEN, Some(&origin)).await.unwrap();
    assert_eq!(r.status(), 303);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=43200"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "a loopback admin listener is plain HTTP: {set_cookie}");
    // Reached through a TLS proxy (the browser's origin is https), the
    // cookie is for TLS only.
    let tls_origin = origin.replacen("http://", "https://", 1);
    let r = sign_in(TOKEN, Some(&tls_origin)).await.unwrap();
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("; Secure"), "{:?}", r.headers());
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let page = c.get(format!("{console}/ui/")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csrf = csrf_in(&page.text().await.unwrap());

    // With the session: the origin and the CSRF token are still needed.
    let replay = |origin: Option<&str>, body: String| {
        let mut req = c
            .post(format!("{console}/ui/replay"))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.body(body).send()
    };
    assert_eq!(replay(None, format!("csrf={csrf}&state=dead&max=10")).await.unwrap().status(), 403);
    assert_eq!(
        replay(Some("http://127.0.0.1:1"), format!("csrf={csrf}&state=dead&max=10")).await.unwrap().status(),
        403
    );
    assert_eq!(replay(Some(&origin), "state=dead&max=10".into()).await.unwrap().status(), 403);
    assert_eq!(
        replay(Some(&origin), format!("csrf={}&state=dead&max=10", "0".repeat(64))).await.unwrap().status(),
        403
    );
    let r = replay(Some(&origin), format!("csrf={csrf}&state=dead&max=10")).await.unwrap();
    assert_eq!(r.status(), 303, "{:?}", r.text().await);

    // The bearer-token API is as it was: a session cookie is not a token.
    let r = c.get(format!("{console}/admin/deliveries")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Signed out, the cookie opens nothing.
    let r = c
        .post(format!("{console}/ui/logout"))
        .header("cookie", &cookie)
        .header("origin", &origin)
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let r = c.get(format!("{console}/ui/")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 303);
    // Signing out again, with the session gone, still clears the cookie.
    let r = c
        .post(format!("{console}/ui/logout"))
        .header("cookie", &cookie)
        .header("origin", &origin)
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/ui/login"));
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    // From another origin it clears nothing (a forced sign-out).
    let r = c.post(format!("{console}/ui/logout")).header("origin", "http://evil.example").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none(), "{:?}", r.headers());
    relay.stop().await;
}
