//! The browser side, in real headless Chromium against real relays: the
//! admin dashboard at `/admin` and the browser client `/herald.js` on a
//! page of another origin.
//!
//! Each test starts `tests/browser/driver.mjs` (Node.js, npm's
//! `playwright-core` and Debian's `/usr/bin/chromium`) and drives it one
//! JSON command per line; the relays, streams and publishers are the
//! harness's own. A missing prerequisite fails the test (`.ci/run`
//! installs them), it never skips it. Browser tests run one at a time:
//! two cores cannot run several Chromiums and keep a dashboard's refresh
//! within the seconds these tests allow it.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How soon the dashboard must show a change (it refreshes every second).
const FOLLOW: Duration = Duration::from_secs(3);
/// Longest wait for one command of the driver.
const COMMAND_WAIT: Duration = Duration::from_secs(30);

/// One browser test at a time (see the module header).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Fails with what to install when a prerequisite is missing.
fn check_prerequisites() {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("Node.js is required for the browser tests (`node`: {e})"));
    assert!(node.status.success(), "`node --version` failed");
    let chromium = std::env::var("HERALD_TEST_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: the browser tests need Debian's Chromium \
         (apt-get install -y chromium; .ci/run does it)"
    );
    let playwright = browser_dir().join("node_modules/playwright-core/package.json");
    assert!(
        playwright.exists(),
        "{} is missing: run `npm ci --prefix tests/browser` (.ci/run does it)",
        playwright.display()
    );
}

/// Headless Chromium behind `tests/browser/driver.mjs`.
struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    next_id: u64,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Browser {
    async fn launch() -> Self {
        check_prerequisites();
        let dir = tempfile::tempdir().expect("temp dir");
        let stderr = dir.path().join("driver.log");
        let mut child = Command::new("node")
            .arg(browser_dir().join("driver.mjs"))
            .current_dir(browser_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("driver log"))
            .kill_on_drop(true)
            .spawn()
            .expect("start node tests/browser/driver.mjs");
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self {
            child,
            stdin,
            lines,
            next_id: 0,
            stderr,
            _dir: dir,
        }
    }

    /// Sends one command; returns its value, panics on its error.
    async fn call(&mut self, cmd: &str, mut args: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        args["id"] = json!(id);
        args["cmd"] = json!(cmd);
        let line = format!("{args}\n");
        let stdin = self.stdin.as_mut().expect("driver running");
        if let Err(e) = stdin.write_all(line.as_bytes()).await {
            panic!("driver is gone ({e}):\n{}", self.driver_log());
        }
        let answer = loop {
            let next = tokio::time::timeout(COMMAND_WAIT, self.lines.next_line()).await;
            match next {
                Ok(Ok(Some(text))) => {
                    if let Ok(answer) = serde_json::from_str::<Value>(&text) {
                        if answer["id"] == json!(id) {
                            break answer;
                        }
                    }
                }
                Ok(_) => panic!("driver ended during {cmd}:\n{}", self.driver_log()),
                Err(_) => panic!("driver: no answer to {cmd} within {COMMAND_WAIT:?}"),
            }
        };
        if answer["ok"] != json!(true) {
            panic!("browser: {cmd} {line} failed: {}", answer["error"]);
        }
        answer["value"].clone()
    }

    fn driver_log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// A fresh profile (empty sessionStorage) at `url`, `width` px wide.
    async fn open(&mut self, url: &str, width: u32) {
        self.call("open", json!({ "url": url, "width": width }))
            .await;
    }

    async fn fill(&mut self, selector: &str, value: &str) {
        self.call("fill", json!({ "selector": selector, "value": value }))
            .await;
    }

    async fn click(&mut self, selector: &str) {
        self.call("click", json!({ "selector": selector })).await;
    }

    async fn text(&mut self, selector: &str) -> Option<String> {
        let text = self.call("text", json!({ "selector": selector })).await;
        text.as_str().map(str::to_owned)
    }

    async fn value(&mut self, selector: &str) -> String {
        let value = self.call("value", json!({ "selector": selector })).await;
        value.as_str().unwrap_or_default().to_owned()
    }

    async fn visible(&mut self, selector: &str) -> bool {
        self.call("visible", json!({ "selector": selector })).await == json!(true)
    }

    async fn count(&mut self, selector: &str) -> u64 {
        let n = self.call("count", json!({ "selector": selector })).await;
        n.as_u64().unwrap_or(0)
    }

    /// Waits until `selector` is visible (or `state`: hidden, detached).
    async fn wait_for(&mut self, selector: &str, state: &str) {
        self.call("waitFor", json!({ "selector": selector, "state": state }))
            .await;
    }

    async fn eval(&mut self, expr: &str) -> Value {
        self.call("eval", json!({ "expr": expr })).await
    }

    /// Polls `expr` until `done` holds; returns the last value.
    async fn eval_until(
        &mut self,
        what: &str,
        expr: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let value = self.eval(expr).await;
            if done(&value) {
                return value;
            }
            if Instant::now() >= deadline {
                panic!("{what}: not within {within:?}; last {expr} = {value}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls the text of `selector` until it is `want`; returns how long.
    async fn wait_text(&mut self, selector: &str, want: &str, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let text = self.text(selector).await;
            if text.as_deref().map(str::trim) == Some(want) {
                return start.elapsed();
            }
            if start.elapsed() >= within {
                panic!("{selector}: {text:?}, not {want:?}, after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asserts the page threw nothing and logged no error but failed
    /// requests (a 401 is logged so): a CSP violation would show here.
    async fn assert_clean_console(&mut self) {
        let log = self.call("log", json!({})).await;
        assert_eq!(log["pageErrors"], json!([]), "errors thrown in the page");
        let noise: Vec<&Value> = log["console"]
            .as_array()
            .expect("console")
            .iter()
            .filter(|m| {
                !m.as_str()
                    .unwrap_or_default()
                    .contains("Failed to load resource")
            })
            .collect();
        assert!(noise.is_empty(), "console errors: {noise:?}");
    }

    /// Ends the driver and its Chromium.
    async fn close(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(COMMAND_WAIT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- browser driver log ---\n{}", self.driver_log());
        }
    }
}

/// Selector of a map's row on the dashboard.
fn map_row(slug: &str) -> String {
    format!(r#"[data-testid="map-row"][data-map-slug="{slug}"]"#)
}

/// Opens `/admin` in a fresh profile and signs in with the admin token.
async fn sign_in(browser: &mut Browser, relay: &Relay) {
    browser.open(&relay.url("/admin"), 1280).await;
    browser.fill("#token-input", ADMIN).await;
    browser.click("#sign-in").await;
    browser.wait_for("#dashboard", "visible").await;
}

async fn admin_delete(relay: &Relay, path: &str) -> u16 {
    relay
        .http
        .delete(relay.url(path))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("admin DELETE")
        .status()
        .as_u16()
}

/// A port free now, for a relay that must come back on the same one.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

backend_tests!(
    dashboard_follows_connections_and_disconnects,
    dashboard_edits_limits_and_keys,
);

/// The count on the page follows real streams opening and closing, and
/// the page's Disconnect ends a real stream.
async fn dashboard_follows_connections_and_disconnects(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let mut browser = Browser::launch().await;
    sign_in(&mut browser, &relay).await;
    let count = format!(r#"{} [data-testid="map-connections"]"#, map_row(&map.slug));
    browser.wait_text(&count, "0", FOLLOW).await;

    let mut first = relay.subscribe(&map.slug, &map.key, "", None).await;
    let connected = envelope(&first.connected().await);
    let mut second = relay.subscribe(&map.slug, &map.key, "", None).await;
    second.connected().await;
    let took = browser.wait_text(&count, "2", FOLLOW).await;
    eprintln!("two streams shown after {took:?}");
    drop(second);
    let took = browser.wait_text(&count, "1", FOLLOW).await;
    eprintln!("one closed stream shown after {took:?}");
    browser.wait_text("#stat-connections", "1", FOLLOW).await;

    // Disconnect, from the connection list filtered by this map.
    let conn_id = connected["connection_id"].as_str().expect("connection id");
    browser.fill("#conn-map", &map.slug).await;
    browser.click("#conn-filter").await;
    let row = format!(r#"[data-testid="conn-row"][data-conn-id="{conn_id}"]"#);
    browser.wait_for(&row, "visible").await;
    assert_eq!(browser.count(r#"[data-testid="conn-row"]"#).await, 1);
    browser
        .click(&format!(r#"{row} [data-testid="disconnect"]"#))
        .await;
    assert!(
        first.ends_within(FOLLOW).await,
        "the stream did not end after Disconnect"
    );
    browser.wait_for(&row, "detached").await;
    browser.wait_text(&count, "0", FOLLOW).await;
    browser.assert_clean_console().await;
    browser.close().await;
}

/// A limit edited in place is persisted; a key created on the page is
/// shown once and works; revoked on the page, it stops working.
async fn dashboard_edits_limits_and_keys(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let mut browser = Browser::launch().await;
    sign_in(&mut browser, &relay).await;
    let row = map_row(&map.slug);
    browser.wait_for(&row, "visible").await;
    browser
        .click(&format!(r#"{row} [data-testid="manage-map"]"#))
        .await;
    browser.wait_for("#map-detail", "visible").await;
    browser
        .wait_text("#detail-title", &format!("Map {}", map.slug), FOLLOW)
        .await;

    // Limits, edited in place and saved.
    browser.fill("#limit-max-connections", "7").await;
    browser.fill("#limit-max-per-key", "3").await;
    browser.click("#limits-save").await;
    let deadline = Instant::now() + FOLLOW;
    loop {
        let got = relay
            .admin_json(&format!("/api/admin/maps/{}", map.slug))
            .await;
        if got["limits"] == json!({ "max_connections": 7, "max_connections_per_key": 3 }) {
            break;
        }
        assert!(Instant::now() < deadline, "limits not saved: {got}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser
        .wait_text(
            &format!(r#"{row} [data-testid="map-max-connections"]"#),
            "7",
            FOLLOW,
        )
        .await;
    // Persisted: a reload (the token stays in the tab's session) shows it.
    browser
        .call("goto", json!({ "url": relay.url("/admin") }))
        .await;
    browser.wait_for("#dashboard", "visible").await;
    browser
        .click(&format!(r#"{row} [data-testid="manage-map"]"#))
        .await;
    browser
        .eval_until(
            "limits shown after a reload",
            "[document.getElementById('limit-max-connections').value, \
             document.getElementById('limit-max-per-key').value]",
            FOLLOW,
            |v| *v == json!(["7", "3"]),
        )
        .await;

    // A new key: shown once, and it works.
    browser.click("#create-key").await;
    browser.wait_for("#new-key", "visible").await;
    let key = browser.value("#new-key-value").await;
    let key_id = browser
        .eval("document.getElementById('new-key').dataset.keyId")
        .await;
    let key_id = key_id.as_str().expect("key id on the page").to_owned();
    assert!(!key.is_empty() && key != map.key, "new key {key:?}");
    let mut stream = relay.subscribe(&map.slug, &key, "", None).await;
    stream.connected().await;
    let key_row = format!(r#"[data-testid="key-row"][data-key-id="{key_id}"]"#);
    browser
        .wait_text(
            &format!(r#"{key_row} [data-testid="key-connections"]"#),
            "1",
            FOLLOW,
        )
        .await;
    browser.click("#dismiss-key").await;
    let shown = browser
        .eval(&format!(
            "document.documentElement.outerHTML.includes({key:?}) || \
             document.body.innerText.includes({key:?}) || \
             document.getElementById('new-key-value').value !== ''"
        ))
        .await;
    assert_eq!(shown, json!(false), "the key is shown only once");

    // Revoked from the page: its stream ends and it is refused.
    browser
        .click(&format!(r#"{key_row} [data-testid="revoke"]"#))
        .await;
    assert!(
        stream.ends_within(FOLLOW).await,
        "the revoked key's stream did not end"
    );
    let refused = relay
        .stream_request(&format!("/api/maps/{}/events/stream", map.slug), &key, None)
        .await;
    expect_error(refused, 401, "UNAUTHORIZED", "revoked key").await;
    browser.wait_for(&key_row, "detached").await;
    let keys = relay
        .admin_json(&format!("/api/admin/maps/{}", map.slug))
        .await;
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(1), "{keys}");

    // Readable on a phone: nothing wider than 360 px.
    browser.call("viewport", json!({ "width": 360 })).await;
    let width = browser.eval("document.documentElement.scrollWidth").await;
    assert!(
        width.as_u64() <= Some(360),
        "page {width} px wide at 360 px"
    );
    browser.assert_clean_console().await;
    browser.close().await;
}

/// The tail shows published events of a map or of every map, filtered;
/// a wrong token is refused visibly; signing out forgets the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_tail_and_sign_in() {
    let _serial = SERIAL.lock().await;
    let relay = Relay::start(Backend::Sqlite).await;
    let map = relay.create_map().await;
    let other = relay.create_map().await;
    let mut browser = Browser::launch().await;

    // A wrong token: an error in the alert region, no dashboard.
    browser.open(&relay.url("/admin"), 1280).await;
    browser.fill("#token-input", "not-the-admin-token").await;
    browser.click("#sign-in").await;
    browser.wait_for("#alert", "visible").await;
    let alert = browser.text("#alert-text").await.unwrap_or_default();
    assert!(
        alert.contains("refused") && alert.contains("401"),
        "alert: {alert:?}"
    );
    assert_eq!(
        browser
            .eval("document.getElementById('alert').getAttribute('role')")
            .await,
        json!("alert")
    );
    assert!(!browser.visible("#dashboard").await, "dashboard shown");
    assert_eq!(
        browser.eval("sessionStorage.length").await,
        json!(0),
        "a refused token is not kept"
    );

    // The right one, by keyboard: the alert goes, the token is in
    // sessionStorage only.
    browser.fill("#token-input", ADMIN).await;
    browser
        .call(
            "press",
            json!({ "selector": "#token-input", "key": "Enter" }),
        )
        .await;
    browser.wait_for("#dashboard", "visible").await;
    assert!(!browser.visible("#alert").await, "stale alert");
    let url = browser.eval("location.href").await;
    assert!(!url.as_str().unwrap_or_default().contains(ADMIN), "{url}");

    // Tail of one map, filtered by type.
    browser.fill("#tail-map-input", &map.slug).await;
    browser.fill("#tail-events", "tail.*").await;
    browser.click("#tail-start").await;
    browser
        .wait_for(r#"#tail-state[data-state="open"]"#, "visible")
        .await;
    let ids = relay
        .publish(
            &map.slug,
            json!([
                { "type": "tail.hello", "source": "svc", "payload": { "n": 1 } },
                { "type": "other.thing", "payload": {} },
                { "type": "tail.bye", "payload": { "n": 2 } },
            ]),
        )
        .await;
    let lines = r#"[data-testid="tail-line"]:not(.system)"#;
    let shown = browser
        .eval_until(
            "the tail shows the published events",
            &format!(
                "[...document.querySelectorAll('{lines}')].map(l => [l.dataset.type, l.dataset.id])"
            ),
            FOLLOW,
            |v| v.as_array().is_some_and(|a| a.len() >= 2),
        )
        .await;
    // Newest first; the filter held back the other type.
    assert_eq!(
        shown,
        json!([["tail.bye", ids[2]], ["tail.hello", ids[0]]]),
        "tail lines"
    );
    browser.click("#tail-stop").await;
    browser
        .wait_for(r#"#tail-state[data-state="closed"]"#, "visible")
        .await;

    // The firehose, filtered by source.
    browser.fill("#tail-map-input", "").await;
    browser.fill("#tail-events", "").await;
    browser.fill("#tail-sources", "billing").await;
    browser.click("#tail-clear").await;
    browser.click("#tail-start").await;
    browser
        .wait_for(r#"#tail-state[data-state="open"]"#, "visible")
        .await;
    relay
        .publish(&map.slug, json!({ "type": "a.b", "source": "other" }))
        .await;
    let billed = relay
        .publish(
            &other.slug,
            json!({ "type": "invoice.paid", "source": "billing" }),
        )
        .await;
    let shown = browser
        .eval_until(
            "the firehose tail shows the billing event",
            &format!("[...document.querySelectorAll('{lines}')].map(l => l.dataset.id)"),
            FOLLOW,
            |v| v.as_array().is_some_and(|a| !a.is_empty()),
        )
        .await;
    assert_eq!(shown, json!(billed), "firehose tail");
    let text = browser
        .text(r#"[data-testid="tail-line"]:not(.system)"#)
        .await
        .unwrap_or_default();
    assert!(
        text.contains("invoice.paid") && text.contains(&other.slug),
        "{text}"
    );
    browser.click("#tail-stop").await;

    // Signing out forgets the token.
    browser.click("#sign-out").await;
    browser.wait_for("#login", "visible").await;
    assert_eq!(browser.eval("sessionStorage.length").await, json!(0));
    assert!(!browser.visible("#dashboard").await);
    browser.assert_clean_console().await;
    browser.close().await;
}

/// The ids of the events (not `connected`) the test page's client got.
const RECEIVED: &str = "window.record.events.filter(e => e.type !== 'connected').map(e => e.id)";

/// How often the page's client reached `open`.
const OPENS: &str = "window.record.states.filter(s => s.state === 'open').length";

/// herald.js on a page of another origin (CORS), with SSE tokens from the
/// page's own backend: it receives events, and survives an admin
/// disconnect and a 3-second restart with nothing lost and nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_survives_disconnect_and_restart() {
    let _serial = SERIAL.lock().await;
    // The harness binds port 0 at every start: a fixed port lets the page
    // find herald again after the restart.
    let bind = format!("127.0.0.1:{}", free_port());
    let mut relay = Relay::start_with(Backend::Sqlite, &[("HERALD__SERVER__BIND", &bind)]).await;
    assert_eq!(relay.base, format!("http://{bind}"));
    let map = relay.create_map().await;
    let mut browser = Browser::launch().await;
    let app = browser
        .call(
            "serveApp",
            json!({ "herald": relay.base, "map": map.slug, "key": map.key }),
        )
        .await;
    let app = app.as_str().expect("page url").to_owned();
    assert!(!app.starts_with(&relay.base), "{app} is herald's origin");
    browser.open(&app, 1024).await;
    browser
        .eval_until(
            "the page loads herald.js",
            "window.ready === true",
            FOLLOW,
            |v| *v == json!(true),
        )
        .await;
    browser.eval("window.startClient()").await;
    browser
        .eval_until("the client opens", "window.client.state", WAIT, |v| {
            *v == json!("open")
        })
        .await;
    let batch = |round: usize| {
        json!((0..5)
            .map(|i| json!({ "type": format!("round.{round}"), "payload": { "i": i } }))
            .collect::<Vec<_>>())
    };
    let mut published = relay.publish(&map.slug, batch(1)).await;
    browser
        .eval_until("5 events", RECEIVED, WAIT, |v| {
            v.as_array().is_some_and(|a| a.len() >= 5)
        })
        .await;

    // An admin disconnect; events published while the client is away.
    let conns = relay
        .admin_json(&format!("/api/admin/connections?map={}", map.slug))
        .await;
    assert_eq!(conns["total"], json!(1), "{conns}");
    let conn = conns["items"][0]["id"].as_str().expect("id");
    assert_eq!(
        admin_delete(&relay, &format!("/api/admin/connections/{conn}")).await,
        204
    );
    published.extend(relay.publish(&map.slug, batch(2)).await);
    browser
        .eval_until("reopened after the disconnect", OPENS, WAIT, |v| {
            v.as_u64() >= Some(2)
        })
        .await;
    published.extend(relay.publish(&map.slug, batch(3)).await);
    browser
        .eval_until("15 events", RECEIVED, WAIT, |v| {
            v.as_array().is_some_and(|a| a.len() >= 15)
        })
        .await;

    // Down for 3 seconds, back on the same port.
    relay.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    relay.restart();
    assert_eq!(
        relay.base,
        format!("http://{bind}"),
        "same port after restart"
    );
    published.extend(relay.publish(&map.slug, batch(4)).await);
    browser
        .eval_until("reopened after the restart", OPENS, WAIT, |v| {
            v.as_u64() >= Some(3)
        })
        .await;
    published.extend(relay.publish(&map.slug, batch(5)).await);
    browser
        .eval_until("25 events", RECEIVED, WAIT, |v| {
            v.as_array().is_some_and(|a| a.len() >= 25)
        })
        .await;
    // A late duplicate would show up now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = browser.eval(RECEIVED).await;
    assert_eq!(received, json!(published), "nothing lost, nothing twice");

    // It waited through the outage, resuming from the last id it saw.
    let states = browser.eval("window.record.states").await;
    let states = states.as_array().expect("states");
    assert!(
        states
            .iter()
            .any(|s| s["state"] == "backoff" && s["error"]["code"] == "STREAM_ENDED"),
        "disconnect seen as an ended stream: {states:?}"
    );
    assert!(
        states
            .iter()
            .any(|s| s["state"] == "backoff" && s["error"]["status"] == 0),
        "the outage seen as network errors: {states:?}"
    );
    assert!(
        !states.iter().any(|s| s["state"] == "closed"),
        "the client gave up: {states:?}"
    );
    let network = browser.call("log", json!({})).await["network"].clone();
    let streams: Vec<&str> = network
        .as_array()
        .expect("network")
        .iter()
        .filter(|e| e["kind"] == "request")
        .filter_map(|e| e["url"].as_str())
        .filter(|u| u.contains("/events/stream"))
        .collect();
    assert!(streams.len() >= 3, "{streams:?}");
    assert!(
        streams[1..].iter().all(|u| u.contains("last_event_id=")),
        "reconnects resume: {streams:?}"
    );
    assert!(
        streams.iter().all(|u| !u.contains(&map.key)),
        "the map key reached the page"
    );
    browser.assert_clean_console().await;
    browser.close().await;
}

/// herald.js waits out a 429: it backs off for at least the Retry-After
/// herald sent, then connects and receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_waits_out_a_429() {
    let _serial = SERIAL.lock().await;
    // A request every 5 s, bursts of 2.
    let relay = Relay::start_with(
        Backend::Sqlite,
        &[
            ("HERALD__LIMITS__RATE_PER_MINUTE", "12"),
            ("HERALD__LIMITS__RATE_BURST", "2"),
        ],
    )
    .await;
    let map = relay.create_map().await;
    let mut browser = Browser::launch().await;
    let app = browser
        .call(
            "serveApp",
            json!({ "herald": relay.base, "map": map.slug, "key": map.key }),
        )
        .await;
    browser.open(app.as_str().expect("page url"), 1024).await;
    browser
        .eval_until(
            "the page loads herald.js",
            "window.ready === true",
            FOLLOW,
            |v| *v == json!(true),
        )
        .await;

    // Use up 127.0.0.1's bucket (the browser's; the page's backend asks
    // for tokens from 127.0.0.2).
    let stream_path = format!("/api/maps/{}/events/stream", map.slug);
    let mut limited = false;
    for _ in 0..5 {
        let response = relay.stream_request(&stream_path, "", None).await;
        if response.status() == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "the rate limit never answered 429");
    browser.eval("window.startClient()").await;
    browser
        .eval_until("the client opens", "window.client.state", WAIT, |v| {
            *v == json!("open")
        })
        .await;
    let published = relay.publish_n(&map.slug, 3).await;
    browser
        .eval_until("3 events", RECEIVED, WAIT, |v| *v == json!(published))
        .await;

    // It saw the 429 and waited at least its Retry-After.
    let states = browser.eval("window.record.states").await;
    let backoff = states
        .as_array()
        .expect("states")
        .iter()
        .find(|s| s["state"] == "backoff")
        .unwrap_or_else(|| panic!("no backoff: {states}"))
        .clone();
    assert_eq!(backoff["error"]["status"], 429, "{backoff}");
    assert_eq!(backoff["error"]["code"], "RATE_LIMITED", "{backoff}");
    let network = browser.call("log", json!({})).await["network"].clone();
    let network = network.as_array().expect("network");
    let is_stream = |e: &&Value| {
        e["url"]
            .as_str()
            .is_some_and(|u| u.contains("/events/stream"))
    };
    let refused = network
        .iter()
        .filter(is_stream)
        .find(|e| e["kind"] == "response" && e["status"] == 429)
        .unwrap_or_else(|| panic!("no 429 seen: {network:?}"));
    let retry_after: f64 = refused["retryAfter"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("429 without Retry-After: {refused}"));
    assert!(retry_after >= 1.0, "{refused}");
    assert_eq!(
        backoff["error"]["retryAfter"].as_f64(),
        Some(retry_after),
        "the client read Retry-After"
    );
    assert!(
        backoff["delayMs"].as_f64().unwrap_or(0.0) >= retry_after * 1000.0,
        "backoff shorter than Retry-After: {backoff}"
    );
    let refused_at = refused["t"].as_f64().expect("t");
    let next = network
        .iter()
        .filter(is_stream)
        .find(|e| e["kind"] == "request" && e["t"].as_f64() > Some(refused_at))
        .unwrap_or_else(|| panic!("no retry: {network:?}"));
    let waited = next["t"].as_f64().expect("t") - refused_at;
    // The driver sees the answer a little after the page does.
    assert!(
        waited >= retry_after * 1000.0 - 300.0,
        "retried after {waited} ms, Retry-After {retry_after} s"
    );
    browser.assert_clean_console().await;
    browser.close().await;
}

/// `/docs` renders every operation of `/openapi.json`, under its CSP, with
/// nothing thrown or logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_page_lists_every_operation() {
    let _serial = SERIAL.lock().await;
    let relay = Relay::start(Backend::Sqlite).await;
    let doc: Value = relay
        .http
        .get(relay.url("/openapi.json"))
        .send()
        .await
        .expect("openapi.json")
        .json()
        .await
        .expect("JSON");
    let operations: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|methods| methods.as_object().map_or(0, serde_json::Map::len))
        .sum();
    let mut browser = Browser::launch().await;
    browser.open(&relay.url("/docs"), 360).await;
    let shown = browser
        .eval_until(
            "operations rendered",
            "document.querySelectorAll('#operations section').length",
            Duration::from_secs(10),
            |v| v.as_u64().is_some_and(|n| n > 0),
        )
        .await;
    assert_eq!(shown, json!(operations), "one section per operation");
    let publish = browser
        .text("#publish h2")
        .await
        .expect("the publish operation");
    assert!(publish.contains("POST") && publish.contains("/api/maps/{map}/events"));
    assert_eq!(
        browser
            .eval("document.documentElement.scrollWidth <= 360")
            .await,
        json!(true),
        "readable at 360 px"
    );
    browser.assert_clean_console().await;
    browser.close().await;
}
