//! A small W3C WebDriver client over HTTP, enough to drive Debian's
//! `chromium` through `chromium-driver` (`chromedriver`): open pages, find
//! elements by CSS, type, click, read text, run a script, take a
//! screenshot. `scripts/test` installs both.

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session, ended (and the driver stopped) on drop.
pub struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
}

impl Browser {
    pub async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: Chromium's processes stop with it.
            .process_group(0)
            .spawn()
            .expect("chromedriver must be installed (scripts/test installs chromium-driver)");
        // A wedged driver fails the test instead of hanging it.
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        while http.get(format!("http://127.0.0.1:{port}/status")).send().await.is_err() {
            assert!(Instant::now() < until, "chromedriver did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--hide-scrollbars", "--force-color-profile=srgb"]
            }
        }}});
        let mut browser = Browser { driver, base: format!("http://127.0.0.1:{port}"), http };
        let v = browser.send(reqwest::Method::POST, "/session", caps).await;
        let id = v["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}")).to_owned();
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        self.try_send(method, path, body).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// The command's value, or why there is none.
    async fn try_send(&self, method: reqwest::Method, path: &str, body: Value) -> Result<Value, String> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base));
        if method == reqwest::Method::POST {
            req = req.header("content-type", "application/json").body(body.to_string());
        }
        let failed = |e: reqwest::Error| format!("WebDriver {path}: {e}");
        let text = req.send().await.map_err(failed)?.text().await.map_err(failed)?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("WebDriver {path}: {e}: {text}"))?;
        if let Some(e) = v["value"].get("error") {
            return Err(format!("WebDriver {path}: {e}: {}", v["value"]["message"]));
        }
        Ok(v.get("value").cloned().unwrap_or(v))
    }

    pub async fn goto(&self, url: &str) {
        self.send(reqwest::Method::POST, "/url", json!({"url": url})).await;
    }

    pub async fn url(&self) -> String {
        self.send(reqwest::Method::GET, "/url", Value::Null).await.as_str().unwrap().to_owned()
    }

    /// The first element matching `css`; fails the test if there is none.
    pub async fn find(&self, css: &str) -> String {
        let v = self.send(reqwest::Method::POST, "/element", json!({"using": "css selector", "value": css})).await;
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_owned()
    }

    /// How many elements match `css`.
    pub async fn count(&self, css: &str) -> usize {
        let v = self.send(reqwest::Method::POST, "/elements", json!({"using": "css selector", "value": css})).await;
        v.as_array().map_or(0, |a| a.len())
    }

    pub async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.send(reqwest::Method::POST, &format!("/element/{el}/click"), json!({})).await;
    }

    /// Clicks a link or a submit button and waits until the page it leads
    /// to has loaded (a click returns before the navigation ends).
    pub async fn follow(&self, css: &str) {
        self.execute("window.__left = false").await;
        self.click(css).await;
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            // Asked while the page changes, the driver may answer an error:
            // ask again.
            let loaded = "return window.__left === undefined && document.readyState === 'complete'";
            let body = json!({"script": loaded, "args": []});
            if self.try_send(reqwest::Method::POST, "/execute/sync", body).await == Ok(Value::Bool(true)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no new page within 20 s of clicking {css}");
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.send(reqwest::Method::POST, &format!("/element/{el}/value"), json!({"text": text})).await;
    }

    /// The visible text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let el = self.find(css).await;
        self.send(reqwest::Method::GET, &format!("/element/{el}/text"), Value::Null).await.as_str().unwrap().to_owned()
    }

    /// The page's markup.
    pub async fn source(&self) -> String {
        self.send(reqwest::Method::GET, "/source", Value::Null).await.as_str().unwrap().to_owned()
    }

    /// Runs `script` in the page and returns its value.
    pub async fn execute(&self, script: &str) -> Value {
        self.send(reqwest::Method::POST, "/execute/sync", json!({"script": script, "args": []})).await
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        let v = self.send(reqwest::Method::GET, "/screenshot", Value::Null).await;
        base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-s", "KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}
