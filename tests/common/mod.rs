//! Test harness: starts the real `herald` binary on port 0 against a fresh
//! SQLite file or a fresh PostgreSQL schema, talks to it over real HTTP and
//! parses the SSE bytes it writes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};

pub const ADMIN: &str = "test-admin-token";
pub const PUBLISHER: &str = "test-publisher-token";
/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// Which store the relay under test uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates one test per backend for each named `async fn(Backend)`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}

/// The PostgreSQL server tests use.
pub fn postgres_url() -> String {
    std::env::var("HERALD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

/// A database for one test: a SQLite file in a temp dir, or its own schema.
struct Database {
    url: String,
    schema: Option<String>,
}

impl Database {
    async fn create(backend: Backend, dir: &std::path::Path) -> Self {
        match backend {
            Backend::Sqlite => Self {
                url: format!("sqlite://{}", dir.join("herald.db").display()),
                schema: None,
            },
            Backend::Postgres => {
                let base = postgres_url();
                let schema = unique("t_");
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("PostgreSQL at {base} is required for the tests: {e}")
                    });
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&mut conn)
                    .await
                    .expect("create schema");
                let sep = if base.contains('?') { '&' } else { '?' };
                Self {
                    url: format!("{base}{sep}options[search_path]={schema}"),
                    schema: Some(schema),
                }
            }
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(schema) = &self.schema {
            let _ = Command::new("psql")
                .arg(postgres_url())
                .args([
                    "-q",
                    "-c",
                    &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A map created through the admin API.
#[derive(Debug, Clone)]
pub struct TestMap {
    pub id: String,
    pub slug: String,
    pub key_id: String,
    pub key: String,
}

/// One running relay process.
pub struct Relay {
    pub base: String,
    pub backend: Backend,
    pub http: reqwest::Client,
    child: Option<Child>,
    env: Vec<(String, String)>,
    config: PathBuf,
    log: PathBuf,
    db: Database,
    dir: tempfile::TempDir,
}

impl Relay {
    /// Starts a relay with the test defaults (rate limit off).
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, &[]).await
    }

    /// Starts a relay; `env` adds `HERALD__...` overrides.
    pub async fn start_with(backend: Backend, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Database::create(backend, dir.path()).await;
        Self::launch(backend, db, dir, env)
    }

    /// Starts a relay on a PostgreSQL database the test owns (whole database,
    /// no schema of its own).
    pub fn start_on_postgres(url: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Database {
            url: url.to_owned(),
            schema: None,
        };
        Self::launch(Backend::Postgres, db, dir, env)
    }

    fn launch(
        backend: Backend,
        db: Database,
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
    ) -> Self {
        let config = dir.path().join("settings.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nbind = \"127.0.0.1:0\"\nworkers = 2\n[database]\nurl = \"{}\"\n\
                 [auth]\nadmin_token = \"{ADMIN}\"\npublisher_tokens = [\"{PUBLISHER}\"]\n\
                 [limits]\nrate_per_minute = 0\n",
                db.url
            ),
        )
        .expect("write settings");
        let mut relay = Self {
            base: String::new(),
            backend,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client"),
            child: None,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            log: dir.path().join("server.log"),
            config,
            db,
            dir,
        };
        relay.spawn();
        relay
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start herald");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("herald listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(WAIT) {
            Ok(addr) => self.base = addr,
            Err(_) => panic!("herald did not start:\n{}", self.log_text()),
        }
    }

    /// The command that runs this relay (`herald --config ... serve`).
    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .current_dir(self.dir.path())
            .envs(self.env.iter().cloned())
            .env("RUST_LOG", "info");
        command
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running relay");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().expect("wait for exit")
    }

    /// Sends SIGTERM without waiting.
    pub fn send_sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    /// Waits up to `timeout` for the process to exit; returns its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a new process on the same database (after `kill`/`terminate`).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(token)
    }

    pub fn post(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http.post(self.url(path)).bearer_auth(token)
    }

    /// Creates a map with a unique slug through the admin API.
    pub async fn create_map(&self) -> TestMap {
        let slug = unique("m-");
        let response = self
            .post("/api/admin/maps", ADMIN)
            .json(&json!({ "slug": slug }))
            .send()
            .await
            .expect("create map");
        assert_eq!(response.status(), 201, "create map");
        let body: Value = response.json().await.expect("json");
        TestMap {
            id: body["id"].as_str().expect("id").to_owned(),
            slug,
            key_id: body["key_id"].as_str().expect("key_id").to_owned(),
            key: body["api_key"].as_str().expect("api_key").to_owned(),
        }
    }

    /// Publishes and asserts 201; returns the ids.
    pub async fn publish(&self, map: &str, body: Value) -> Vec<String> {
        let response = self
            .post(&format!("/api/maps/{map}/events"), PUBLISHER)
            .json(&body)
            .send()
            .await
            .expect("publish");
        expect_ids(response, "publish").await
    }

    /// Publishes `n` events of type `t.<i>` one request each; returns ids.
    pub async fn publish_n(&self, map: &str, n: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            ids.extend(
                self.publish(
                    map,
                    json!({ "type": format!("t.{i}"), "payload": { "i": i } }),
                )
                .await,
            );
        }
        ids
    }

    /// Opens a stream; panics unless it answers 200.
    pub async fn subscribe(
        &self,
        map: &str,
        key: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> SseClient {
        let response = self
            .stream_request(
                &format!("/api/maps/{map}/events/stream{query}"),
                key,
                last_event_id,
            )
            .await;
        assert_eq!(
            response.status(),
            200,
            "stream answered {}",
            response.status()
        );
        SseClient::new(response)
    }

    /// Sends a stream request and returns the raw response.
    pub async fn stream_request(
        &self,
        path: &str,
        key: &str,
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.http.get(self.url(path));
        if !key.is_empty() {
            request = request.bearer_auth(key);
        }
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        request.send().await.expect("stream request")
    }

    /// Admin GET returning JSON.
    pub async fn admin_json(&self, path: &str) -> Value {
        let response = self.get(path, ADMIN).send().await.expect("admin request");
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("json")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- server log ---\n{}", self.log_text());
        }
        self.kill();
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

/// An SSE client reading real bytes through a maintained SSE parser.
pub struct SseClient {
    events: EventStream,
}

impl SseClient {
    pub fn new(response: reqwest::Response) -> Self {
        let events = response
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()));
        Self {
            events: Box::pin(events),
        }
    }

    /// The next event, or `None` when the stream ended; panics on timeout.
    pub async fn next(&mut self) -> Option<Event> {
        match tokio::time::timeout(WAIT, self.events.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(_)) | None) => None,
            Err(_) => panic!("no event within {WAIT:?}"),
        }
    }

    /// The next event if one comes within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Event> {
        tokio::time::timeout(wait, self.events.next())
            .await
            .ok()
            .flatten()
            .and_then(Result::ok)
    }

    /// The next event, which must exist.
    pub async fn expect(&mut self) -> Event {
        self.next().await.expect("stream ended early")
    }

    /// The `connected` event (must come first).
    pub async fn connected(&mut self) -> Event {
        let event = self.expect().await;
        assert_eq!(event.event, "connected", "first event");
        event
    }

    /// The next `n` events.
    pub async fn take(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.expect().await);
        }
        out
    }

    /// Whether the stream ends within `wait`.
    pub async fn ends_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(None | Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => {}
                Err(_) => return false,
            }
        }
    }
}

/// Asserts that `response` is an error with this status and code, and that
/// its body is exactly `{"error": <non-empty string>, "code": <code>}`.
/// Returns the error sentence.
pub async fn expect_error(
    response: reqwest::Response,
    status: u16,
    code: &str,
    what: &str,
) -> String {
    let got = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(got, status, "{what}: status (body {text:?})");
    assert!(
        content_type.starts_with("application/json"),
        "{what}: content-type {content_type:?}, body {text:?}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e}): {text:?}"));
    let fields = body
        .as_object()
        .unwrap_or_else(|| panic!("{what}: error body is not an object: {text}"));
    assert_eq!(fields.len(), 2, "{what}: exactly error and code: {text}");
    assert_eq!(
        fields.get("code"),
        Some(&json!(code)),
        "{what}: code in {text}"
    );
    let sentence = fields
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: `error` is not a string: {text}"));
    assert!(!sentence.is_empty(), "{what}: empty error sentence");
    sentence.to_owned()
}

/// Asserts a publish answered 201 and returns its ids.
pub async fn expect_ids(response: reqwest::Response, what: &str) -> Vec<String> {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, 201, "{what} answered {status}: {text}");
    let body: Value = serde_json::from_str(&text).expect("publish answer is JSON");
    body["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect()
}

/// Ids of a list of events.
pub fn ids(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

/// The envelope of an event.
pub fn envelope(event: &Event) -> Value {
    serde_json::from_str(&event.data).expect("event data is JSON")
}
