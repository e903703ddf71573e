//! Test harness: starts the real `herald` binary on port 0 against a fresh
//! SQLite file or a fresh PostgreSQL schema, talks to it over real HTTP and
//! parses the SSE bytes it writes.
//!
//! Several processes can share one database as a cluster ([`Relay::join`],
//! [`Cluster`]); [`pg`] runs a disposable PostgreSQL server and [`proxy`]
//! puts a TCP proxy in front of one that can hold back its answers.
#![allow(dead_code)]

pub mod pg;
pub mod proxy;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
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

/// A name no other test uses: `prefix` and a fresh lowercase ULID.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

/// A database for one test: a SQLite file in a temp dir of its own, or a
/// PostgreSQL schema of its own. Shared (`Arc`) by every relay of a
/// cluster: the schema is dropped once, when the last of them is gone.
struct Database {
    url: String,
    schema: Option<String>,
    /// Holds the SQLite file.
    dir: Option<tempfile::TempDir>,
}

impl Database {
    async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                Self {
                    url: format!("sqlite://{}", dir.path().join("herald.db").display()),
                    schema: None,
                    dir: Some(dir),
                }
            }
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
                    dir: None,
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
    /// The database this relay's config names (through a proxy, maybe).
    url: String,
    db: Arc<Database>,
    dir: tempfile::TempDir,
}

/// How to start one more node on a relay's database ([`Relay::join_with`]).
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// `HERALD__...` overrides of this node (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Another URL for the same database (e.g. through a [`proxy::PgProxy`]).
    pub database_url: Option<String>,
    /// Runs the node under libfaketime with this `FAKETIME` (e.g. `-10m`):
    /// its wall clock is off, its monotonic clock is not.
    pub faketime: Option<String>,
}

impl NodeOptions {
    /// Options with these environment overrides.
    pub fn with_env(env: &[(&str, &str)]) -> Self {
        Self {
            env: owned(env),
            ..Self::default()
        }
    }
}

fn owned(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The libfaketime library that [`NodeOptions::faketime`] preloads. Panics
/// when it is missing: a test that needs it must fail, not skip.
pub fn libfaketime() -> PathBuf {
    let mut candidates = vec![PathBuf::from("/usr/lib/faketime/libfaketime.so.1")];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        candidates.extend(
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("faketime/libfaketime.so.1")),
        );
    }
    candidates
        .into_iter()
        .find(|p| p.exists())
        .expect("libfaketime is required: apt-get install faketime (see .ci/run)")
}

impl Relay {
    /// Starts a relay with the test defaults (rate limit off).
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, &[]).await
    }

    /// Starts a relay; `env` adds `HERALD__...` overrides.
    pub async fn start_with(backend: Backend, env: &[(&str, &str)]) -> Self {
        let db = Database::create(backend).await;
        Self::launch(backend, Arc::new(db), NodeOptions::with_env(env))
    }

    /// Starts a relay on a PostgreSQL database the test owns (whole database,
    /// no schema of its own).
    pub fn start_on_postgres(url: &str, env: &[(&str, &str)]) -> Self {
        let db = Database {
            url: url.to_owned(),
            schema: None,
            dir: None,
        };
        Self::launch(Backend::Postgres, Arc::new(db), NodeOptions::with_env(env))
    }

    /// Starts another process on this relay's database: one more node of a
    /// cluster on PostgreSQL. `env` is the new node's own; nothing is
    /// inherited. The database outlives every node that shares it.
    pub fn join(&self, env: &[(&str, &str)]) -> Self {
        self.join_with(NodeOptions::with_env(env))
    }

    /// [`Relay::join`] with a database URL of its own or a faked clock.
    pub fn join_with(&self, options: NodeOptions) -> Self {
        Self::launch(self.backend, Arc::clone(&self.db), options)
    }

    fn launch(backend: Backend, db: Arc<Database>, options: NodeOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = options.database_url.unwrap_or_else(|| db.url.clone());
        let config = dir.path().join("settings.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nbind = \"127.0.0.1:0\"\nworkers = 2\n[database]\nurl = \"{url}\"\n\
                 [auth]\nadmin_token = \"{ADMIN}\"\npublisher_tokens = [\"{PUBLISHER}\"]\n\
                 [limits]\nrate_per_minute = 0\n"
            ),
        )
        .expect("write settings");
        let mut env = options.env;
        if let Some(offset) = options.faketime {
            env.push(("LD_PRELOAD".into(), libfaketime().display().to_string()));
            env.push(("FAKETIME".into(), offset));
            env.push(("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()));
        }
        let mut relay = Self {
            base: String::new(),
            backend,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client"),
            child: None,
            env,
            log: dir.path().join("server.log"),
            config,
            url,
            db,
            dir,
        };
        relay.spawn();
        relay
    }

    /// The database URL in this relay's settings.
    pub fn database_url(&self) -> &str {
        &self.url
    }

    /// This node's `cluster.node_name`, when the test set one.
    pub fn name(&self) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == "HERALD__CLUSTER__NODE_NAME")
            .map(|(_, v)| v.as_str())
    }

    /// `herald --config <this relay's settings> <args>`, with this relay's
    /// environment, e.g. `["map", "create", "x"]` beside the running server.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(self.dir.path())
            .envs(self.env.iter().cloned())
            .env("RUST_LOG", "info");
        command
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
        self.cli(&["serve"])
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
    /// Appends `toml` to this relay's settings file: in force from its
    /// next start (see [`Relay::restart`]).
    pub fn add_settings(&self, toml: &str) {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.config)
            .expect("settings file");
        file.write_all(toml.as_bytes()).expect("append settings");
    }

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
            let node = self
                .name()
                .map(|n| format!(" of node {n}"))
                .unwrap_or_default();
            eprintln!("--- server log{node} ---\n{}", self.log_text());
        }
        self.kill();
    }
}

/// Several relays on one PostgreSQL database: one relay, per the spec's
/// `## Cluster`. Node `i` is named `<prefix>-<letter>` (unique to the test,
/// short enough for an `application_name`), says it is alive every second
/// and counts as dead after 3 s of silence unless `env` says otherwise.
pub struct Cluster {
    pub nodes: Vec<Relay>,
    prefix: String,
}

impl Cluster {
    /// Starts `n` nodes, one after another, on a fresh schema of the test
    /// PostgreSQL server; `env` applies to every node.
    pub async fn start(n: usize, env: &[(&str, &str)]) -> Self {
        let prefix = Self::fresh_prefix();
        let first = Relay::start_with(
            Backend::Postgres,
            &borrowed(&Self::node_env_of(&prefix, 0, env)),
        )
        .await;
        Self::grow(first, prefix, n, env)
    }

    /// Starts `n` nodes on a PostgreSQL database the test owns (e.g. a
    /// [`pg::DisposablePostgres`]).
    pub fn start_on_postgres(url: &str, n: usize, env: &[(&str, &str)]) -> Self {
        let prefix = Self::fresh_prefix();
        let first = Relay::start_on_postgres(url, &borrowed(&Self::node_env_of(&prefix, 0, env)));
        Self::grow(first, prefix, n, env)
    }

    fn grow(first: Relay, prefix: String, n: usize, env: &[(&str, &str)]) -> Self {
        let mut cluster = Self {
            nodes: vec![first],
            prefix,
        };
        while cluster.nodes.len() < n {
            let options = NodeOptions {
                env: cluster.node_env(cluster.nodes.len(), env),
                ..NodeOptions::default()
            };
            cluster.add(options);
        }
        cluster
    }

    fn fresh_prefix() -> String {
        // The random tail of a ULID: unique among concurrent tests, short.
        let id = ulid::Ulid::generate().to_string().to_lowercase();
        format!("n{}", &id[18..])
    }

    fn node_env_of(prefix: &str, index: usize, env: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut all = vec![
            (
                "HERALD__CLUSTER__NODE_NAME".to_owned(),
                Self::name_of(prefix, index),
            ),
            ("HERALD__CLUSTER__HEARTBEAT_SECS".to_owned(), "1".to_owned()),
            (
                "HERALD__CLUSTER__NODE_TIMEOUT_SECS".to_owned(),
                "3".to_owned(),
            ),
        ];
        all.extend(owned(env));
        all
    }

    fn name_of(prefix: &str, index: usize) -> String {
        let letter = char::from(b'a' + u8::try_from(index % 26).expect("small"));
        if index < 26 {
            format!("{prefix}-{letter}")
        } else {
            format!("{prefix}-{letter}{}", index / 26)
        }
    }

    /// The environment of node `index` (its name, the cluster timings, then
    /// `env`): for [`Cluster::add`] with options of its own.
    pub fn node_env(&self, index: usize, env: &[(&str, &str)]) -> Vec<(String, String)> {
        Self::node_env_of(&self.prefix, index, env)
    }

    /// The name node `index` has (or will have).
    pub fn name(&self, index: usize) -> String {
        Self::name_of(&self.prefix, index)
    }

    /// Starts one more node on the cluster's database; returns its index.
    /// `options.env` should come from [`Cluster::node_env`].
    pub fn add(&mut self, options: NodeOptions) -> usize {
        let node = self.nodes[0].join_with(options);
        self.nodes.push(node);
        self.nodes.len() - 1
    }
}

impl std::ops::Index<usize> for Cluster {
    type Output = Relay;
    fn index(&self, index: usize) -> &Relay {
        &self.nodes[index]
    }
}

impl std::ops::IndexMut<usize> for Cluster {
    fn index_mut(&mut self, index: usize) -> &mut Relay {
        &mut self.nodes[index]
    }
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Asks the test PostgreSQL server to end the backends with this
/// `application_name` (e.g. `herald-listen:<node>`); returns how many ended.
pub async fn terminate_backends(application_name: &str) -> u64 {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&postgres_url())
        .await
        .expect("connect to the test PostgreSQL");
    let ended: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(application_name)
    .fetch_all(&mut conn)
    .await
    .expect("pg_terminate_backend");
    ended.iter().filter(|(ok,)| *ok).count() as u64
}

/// How an SSE read ended ([`SseClient::next_timed`]).
#[derive(Debug)]
pub enum Next {
    Event(Event),
    /// The server closed the stream (or it broke).
    Ended,
    /// Nothing within the wait; the stream is still open.
    Silent,
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

    /// The next event, the end of the stream, or silence for `wait`.
    pub async fn next_timed(&mut self, wait: Duration) -> Next {
        match tokio::time::timeout(wait, self.events.next()).await {
            Ok(Some(Ok(event))) => Next::Event(event),
            Ok(Some(Err(_)) | None) => Next::Ended,
            Err(_) => Next::Silent,
        }
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

/// The events of a whole chunked stream response read off a raw socket
/// (head and chunk framing removed), through the same SSE parser as
/// [`SseClient`].
pub async fn events_of_raw_response(raw: &[u8]) -> Vec<Event> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let mut chunks = &raw[head_end..];
    let mut body = Vec::with_capacity(chunks.len());
    while let Some(line_end) = chunks.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&chunks[..line_end])
            .ok()
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
            .expect("a chunk size line");
        let data = line_end + 2;
        if size == 0 || chunks.len() < data + size {
            break;
        }
        body.extend_from_slice(&chunks[data..data + size]);
        chunks = &chunks[(data + size + 2).min(chunks.len())..];
    }
    futures_util::stream::iter([Ok::<_, std::convert::Infallible>(body)])
        .eventsource()
        .filter_map(|event| async move { event.ok() })
        .collect()
        .await
}

/// The envelope of an event.
pub fn envelope(event: &Event) -> Value {
    serde_json::from_str(&event.data).expect("event data is JSON")
}
