//! Target profiles: how to set up a channel, publish and subscribe on
//! herald, Nchan and Pushpin; starting a herald process for a run; reading a
//! server's memory from /proc.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

use crate::http::{self, Endpoint, HttpConn};
use crate::sse::{write_payload, BenchFields};

/// Which kind of server a run talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// A map created through the admin API, Bearer map key, JSON publish.
    Herald,
    /// `POST /pub/{channel}` with the raw payload, `GET /sub/{channel}`.
    Nchan,
    /// `GET /sub/{channel}` through Pushpin (held by a small GRIP origin),
    /// `POST /publish/` on Pushpin's publish port with GRIP `http-stream`
    /// items whose content is the SSE frame. That port answers every
    /// request with `Connection: close`: each publish opens a connection.
    Pushpin,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Herald => "herald",
            Self::Nchan => "nchan",
            Self::Pushpin => "pushpin",
        }
    }

    /// Events one publish request may carry: herald takes an array of up
    /// to 1000, Pushpin a GRIP `items` array (one item per event), Nchan
    /// one message.
    pub fn max_batch(self) -> usize {
        match self {
            Self::Herald | Self::Pushpin => 1000,
            Self::Nchan => 1,
        }
    }
}

/// Pushpin's publish endpoint refuses bodies over this many bytes
/// (`push_in_http_max_body_size` of the peer's config).
pub const PUSHPIN_MAX_BODY: usize = 1_000_000;

/// Refuses a batch of `batch` events of `payload_bytes` each that `kind`
/// cannot take in one request.
pub fn check_batch(kind: TargetKind, batch: usize, payload_bytes: usize) -> Result<(), String> {
    let max = kind.max_batch();
    if batch == 0 || batch > max {
        return Err(format!("--batch must be 1..={max} for {}", kind.name()));
    }
    // A GRIP item is the payload, JSON-escaped (its quotes doubled at
    // most), inside about 120 bytes of envelope.
    if kind == TargetKind::Pushpin && batch * (2 * payload_bytes + 120) > PUSHPIN_MAX_BODY {
        return Err(format!(
            "{batch} events of {payload_bytes} bytes may exceed Pushpin's publish body \
             limit ({PUSHPIN_MAX_BODY} bytes): use a smaller --batch"
        ));
    }
    Ok(())
}

/// A server to measure.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: TargetKind,
    /// Where streams are opened (and, unless `publish_endpoint`, where
    /// events are published).
    pub endpoint: Endpoint,
    /// Where events are published when that is another server (Pushpin's
    /// publish port).
    pub publish_endpoint: Option<Endpoint>,
    pub admin_token: String,
    pub publisher_token: String,
    /// Processes whose RSS is the server's memory.
    pub server_pids: Vec<u32>,
    pub timeout: Duration,
}

/// One channel (herald map, Nchan or Pushpin channel) set up for a run.
#[derive(Debug, Clone)]
pub struct Channel {
    pub kind: TargetKind,
    pub name: String,
    /// Where streams are opened.
    pub endpoint: Endpoint,
    /// Where events are published.
    pub publish_endpoint: Endpoint,
    pub publish_path: String,
    /// `Authorization` value for publishing.
    pub publish_auth: Option<String>,
    pub subscribe_path: String,
    /// `Authorization` value for subscribing.
    pub subscribe_auth: Option<String>,
}

/// A unique lowercase name for a map or channel.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

impl Target {
    /// Sets up a fresh channel that `subscribers` streams may join.
    pub async fn create_channel(&self, subscribers: usize) -> Result<Channel, String> {
        let name = unique_name("bench");
        match self.kind {
            TargetKind::Nchan => Ok(Channel {
                kind: self.kind,
                publish_path: format!("/pub/{name}"),
                publish_auth: None,
                subscribe_path: format!("/sub/{name}"),
                subscribe_auth: None,
                endpoint: self.endpoint.clone(),
                publish_endpoint: self.publish_endpoint(),
                name,
            }),
            // A channel exists once a stream is held on it (the origin
            // names it in `Grip-Channel`); publishing to it before that
            // reaches nobody.
            TargetKind::Pushpin => Ok(Channel {
                kind: self.kind,
                publish_path: "/publish/".to_owned(),
                publish_auth: None,
                subscribe_path: format!("/sub/{name}"),
                subscribe_auth: None,
                endpoint: self.endpoint.clone(),
                publish_endpoint: self.publish_endpoint(),
                name,
            }),
            TargetKind::Herald => {
                let admin = format!("Bearer {}", self.admin_token);
                let body = serde_json::json!({ "slug": name }).to_string();
                let response = http::once(
                    &self.endpoint,
                    "POST",
                    "/api/admin/maps",
                    &[
                        ("Authorization", &admin),
                        ("Content-Type", "application/json"),
                    ],
                    body.as_bytes(),
                    self.timeout,
                )
                .await
                .map_err(|e| format!("create map on {}: {e}", self.endpoint.url()))?;
                if response.status != 201 {
                    return Err(format!(
                        "create map answered {}: {} (is --admin-token right?)",
                        response.status,
                        response.text()
                    ));
                }
                let created = response.json().map_err(|e| e.to_string())?;
                let key = created["api_key"]
                    .as_str()
                    .ok_or("create map: no api_key in the answer")?
                    .to_owned();
                // Let every bench stream in: raise the map's limits.
                let limit = subscribers.max(1) + 16;
                let limits = serde_json::json!({
                    "max_connections": limit,
                    "max_connections_per_key": limit,
                })
                .to_string();
                let response = http::once(
                    &self.endpoint,
                    "PUT",
                    &format!("/api/admin/maps/{name}/limits"),
                    &[
                        ("Authorization", &admin),
                        ("Content-Type", "application/json"),
                    ],
                    limits.as_bytes(),
                    self.timeout,
                )
                .await
                .map_err(|e| format!("set map limits: {e}"))?;
                if response.status != 200 {
                    return Err(format!(
                        "set map limits answered {}: {}",
                        response.status,
                        response.text()
                    ));
                }
                Ok(Channel {
                    kind: self.kind,
                    publish_path: format!("/api/maps/{name}/events"),
                    publish_auth: Some(format!("Bearer {}", self.publisher_token)),
                    subscribe_path: format!("/api/maps/{name}/events/stream"),
                    subscribe_auth: Some(format!("Bearer {key}")),
                    endpoint: self.endpoint.clone(),
                    publish_endpoint: self.publish_endpoint(),
                    name,
                })
            }
        }
    }

    /// Where this target's events are published.
    pub fn publish_endpoint(&self) -> Endpoint {
        self.publish_endpoint
            .clone()
            .unwrap_or_else(|| self.endpoint.clone())
    }

    /// The sum of the server processes' VmRSS, in KiB.
    pub fn server_rss_kib(&self) -> Option<u64> {
        if self.server_pids.is_empty() {
            return None;
        }
        let mut total = 0;
        for pid in &self.server_pids {
            total += vm_rss_kib(*pid)?;
        }
        Some(total)
    }
}

impl Channel {
    /// The same channel reached through another server (a cluster node),
    /// for streams and publishing alike.
    pub fn on(&self, endpoint: &Endpoint) -> Self {
        let mut channel = self.clone();
        channel.endpoint = endpoint.clone();
        channel.publish_endpoint = endpoint.clone();
        channel
    }

    /// Events one publish request may carry.
    pub fn max_batch(&self) -> usize {
        self.kind.max_batch()
    }

    /// Writes a publish body for `events` (all stamped by the caller).
    pub fn write_publish_body(
        &self,
        out: &mut Vec<u8>,
        events: &[BenchFields],
        payload_bytes: usize,
    ) {
        out.clear();
        match self.kind {
            TargetKind::Nchan => {
                if let Some(fields) = events.first() {
                    write_payload(out, *fields, payload_bytes);
                }
            }
            TargetKind::Pushpin => {
                // {"items":[{"channel":C,"formats":{"http-stream":
                //   {"content":"event: message\ndata: PAYLOAD\n\n"}}}, ...]}
                // Pushpin writes each item's content to the streams as is:
                // one SSE frame per event, the payload its only data line.
                let mut payload = Vec::with_capacity(payload_bytes + 64);
                out.extend_from_slice(b"{\"items\":[");
                for (i, fields) in events.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(b"{\"channel\":\"");
                    write_json_escaped(out, self.name.as_bytes());
                    out.extend_from_slice(
                        b"\",\"formats\":{\"http-stream\":{\"content\":\"event: message\\ndata: ",
                    );
                    payload.clear();
                    write_payload(&mut payload, *fields, payload_bytes);
                    write_json_escaped(out, &payload);
                    out.extend_from_slice(b"\\n\\n\"}}}");
                }
                out.extend_from_slice(b"]}");
            }
            TargetKind::Herald => {
                let many = events.len() > 1;
                if many {
                    out.push(b'[');
                }
                for (i, fields) in events.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(b"{\"type\":\"bench\",\"payload\":");
                    write_payload(out, *fields, payload_bytes);
                    out.push(b'}');
                }
                if many {
                    out.push(b']');
                }
            }
        }
    }

    /// The request that opens a stream.
    pub fn subscribe_request(&self, last_event_id: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"GET ");
        out.extend_from_slice(self.subscribe_path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(self.endpoint.host.as_bytes());
        out.extend_from_slice(b"\r\nAccept: text/event-stream\r\n");
        if let Some(auth) = &self.subscribe_auth {
            out.extend_from_slice(b"Authorization: ");
            out.extend_from_slice(auth.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(id) = last_event_id {
            out.extend_from_slice(b"Last-Event-ID: ");
            out.extend_from_slice(id);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// A keep-alive publishing connection to one channel.
pub struct Publisher {
    channel: Arc<Channel>,
    conn: HttpConn,
    body: Vec<u8>,
    payload_bytes: usize,
}

impl Publisher {
    pub fn new(channel: Arc<Channel>, payload_bytes: usize, timeout: Duration) -> Self {
        let conn = HttpConn::new(&channel.publish_endpoint, timeout);
        Self {
            channel,
            conn,
            body: Vec::with_capacity(payload_bytes + 256),
            payload_bytes,
        }
    }

    /// Publishes `events` in one request; `Ok` once the server acknowledged.
    pub async fn publish(&mut self, events: &[BenchFields]) -> Result<(), String> {
        self.publish_keyed(events, None).await
    }

    /// [`Publisher::publish`] with an `Idempotency-Key`.
    pub async fn publish_keyed(
        &mut self,
        events: &[BenchFields],
        key: Option<&str>,
    ) -> Result<(), String> {
        self.channel
            .write_publish_body(&mut self.body, events, self.payload_bytes);
        let auth = self.channel.publish_auth.clone();
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(3);
        if let Some(auth) = auth.as_deref() {
            headers.push(("Authorization", auth));
        }
        if let Some(key) = key {
            headers.push(("Idempotency-Key", key));
        }
        headers.push((
            "Content-Type",
            match self.channel.kind {
                TargetKind::Herald | TargetKind::Pushpin => "application/json",
                TargetKind::Nchan => "text/plain",
            },
        ));
        let response = self
            .conn
            .request("POST", &self.channel.publish_path, &headers, &self.body)
            .await
            .map_err(|e| format!("publish: {e}"))?;
        let ok = match self.channel.kind {
            TargetKind::Herald => response.status == 201,
            TargetKind::Nchan | TargetKind::Pushpin => (200..300).contains(&response.status),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "publish answered {}: {}",
                response.status,
                response.text().chars().take(200).collect::<String>()
            ))
        }
    }

    /// Connections re-opened after the first.
    pub fn reconnects(&self) -> u64 {
        self.conn.reconnects
    }
}

/// Appends `raw` as the inside of a JSON string (quotes, backslashes and
/// control characters escaped; other bytes as they are).
fn write_json_escaped(out: &mut Vec<u8>, raw: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in raw {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
            _ => out.push(b),
        }
    }
}

/// VmRSS of one process, in KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The pid in a pid file.
fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

/// The processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return children;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the `(comm)`: state, ppid, ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    children
}

/// The Nchan peer's processes: the master from its pid file and its
/// children (the workers).
pub fn nchan_pids(pid_file: &Path) -> Vec<u32> {
    let Some(master) = read_pid(pid_file) else {
        return Vec::new();
    };
    let mut pids = vec![master];
    pids.extend(children_of(master));
    pids
}

/// The services Pushpin's runner starts, each with a pid file in the run
/// directory.
const PUSHPIN_SERVICES: [&str; 4] = ["condure", "zurl", "pushpin-proxy", "pushpin-handler"];

/// The Pushpin peer's processes (`../shared/peers/pushpin/start.sh`): the
/// runner (`pushpin.pid` in `run_dir`), its children — condure, zurl,
/// pushpin-proxy and pushpin-handler, also found by their own pid files —
/// and the GRIP origin (`origin.pid`), which holds nothing per stream but
/// answers every subscribe. Empty when the runner's pid file is missing.
pub fn pushpin_pids(run_dir: &Path) -> Vec<u32> {
    let Some(runner) = read_pid(&run_dir.join("pushpin.pid")) else {
        return Vec::new();
    };
    let mut pids = vec![runner];
    pids.extend(children_of(runner));
    for service in PUSHPIN_SERVICES {
        pids.extend(read_pid(&run_dir.join(format!("{service}.pid"))));
    }
    pids.extend(read_pid(&run_dir.join("origin.pid")));
    pids.sort_unstable();
    pids.dedup();
    // Only live processes (a stale pid file names none).
    pids.retain(|pid| Path::new(&format!("/proc/{pid}")).exists());
    pids
}

/// How to start a herald for the run.
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    pub binary: PathBuf,
    /// `None`: a fresh SQLite file in the run's temp dir.
    pub database_url: Option<String>,
    pub workers: Option<usize>,
    pub env: Vec<(String, String)>,
    pub log_level: String,
    pub admin_token: String,
    pub publisher_token: String,
    /// `cluster.node_name` (default: herald's own, host name and port).
    pub node_name: Option<String>,
}

/// A herald process started by the bench; stopped (SIGTERM) on drop.
pub struct SpawnedHerald {
    child: Option<Child>,
    pub endpoint: Endpoint,
    pub pid: u32,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub database: String,
    /// The schema made for this process alone (dropped when it stops).
    pg_schema: Option<PgSchema>,
}

/// A fresh PostgreSQL schema for a run; dropped by [`PgSchema::drop_now`]
/// or when this is dropped.
pub struct PgSchema {
    url: String,
    schema: String,
}

impl PgSchema {
    /// Creates a uniquely named schema in the database of `url` (refusing
    /// a database on another machine).
    pub async fn create(url: &str) -> Result<Self, String> {
        check_database_url(url)?;
        let schema = unique_name("bench").replace('-', "_");
        create_pg_schema(url, &schema).await?;
        Ok(Self {
            url: url.to_owned(),
            schema,
        })
    }

    /// The database's URL (without the schema).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.schema
    }

    /// The URL herald connects with: the schema is its search path.
    pub fn herald_url(&self) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}options[search_path]={}", self.url, self.schema)
    }

    /// Drops the schema and everything in it (once).
    pub fn drop_now(&mut self) {
        if self.schema.is_empty() {
            return;
        }
        let _ = Command::new("psql")
            .arg(&self.url)
            .args([
                "-q",
                "-c",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.schema.clear();
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        self.drop_now();
    }
}

/// Refuses a database URL whose host is not this machine.
pub fn check_database_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("database URL `{url}` has no scheme"));
    };
    if scheme.starts_with("sqlite") {
        return Ok(());
    }
    if !scheme.starts_with("postgres") {
        return Err(format!(
            "database URL `{url}`: use sqlite:// or postgres://"
        ));
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        host_port.split(']').next().map(|h| format!("{h}]"))
    } else {
        host_port.split(':').next().map(str::to_owned)
    }
    .unwrap_or_default();
    if host.is_empty() || http::loopback_ip(&host).is_some() {
        Ok(())
    } else {
        Err(format!(
            "database URL `{url}`: herald-bench only uses a database on this machine"
        ))
    }
}

impl SpawnedHerald {
    /// Starts herald on an ephemeral loopback port with the rate limit off
    /// and connection limits raised; waits for its `listening` line.
    pub async fn start(options: &SpawnOptions, timeout: Duration) -> Result<Self, String> {
        // From here on, dropping `spawned` (on any error below) removes the
        // temp dir, the schema and the process again.
        let mut spawned = Self::unstarted()?;
        let database = match &options.database_url {
            None => format!("sqlite://{}", spawned.dir.join("herald.db").display()),
            Some(url) if url.starts_with("postgres") => {
                let schema = PgSchema::create(url).await?;
                let database = schema.herald_url();
                spawned.pg_schema = Some(schema);
                database
            }
            Some(url) => {
                check_database_url(url)?;
                url.clone()
            }
        };
        spawned.launch(options, database, timeout).await?;
        Ok(spawned)
    }

    /// Starts herald on `database` (a full URL, schema included), which
    /// other processes may share: it is left in place when this one stops.
    pub async fn start_on(
        options: &SpawnOptions,
        database: &str,
        timeout: Duration,
    ) -> Result<Self, String> {
        check_database_url(database)?;
        let mut spawned = Self::unstarted()?;
        spawned
            .launch(options, database.to_owned(), timeout)
            .await?;
        Ok(spawned)
    }

    /// A temp dir and no process yet.
    fn unstarted() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(unique_name("herald-bench"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("temp dir: {e}"))?;
        Ok(Self {
            child: None,
            endpoint: Endpoint::parse("http://127.0.0.1:1")?,
            pid: 0,
            log: dir.join("herald.log"),
            dir,
            database: String::new(),
            pg_schema: None,
        })
    }

    async fn launch(
        &mut self,
        options: &SpawnOptions,
        database: String,
        timeout: Duration,
    ) -> Result<(), String> {
        let (dir, log) = (self.dir.clone(), self.log.clone());
        self.database.clone_from(&database);
        let config = dir.join("settings.toml");
        let workers = options
            .workers
            .map(|w| format!("workers = {w}\n"))
            .unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "[server]\nbind = \"127.0.0.1:0\"\n{workers}\
                 [database]\nurl = \"{database}\"\n\
                 [auth]\nadmin_token = \"{}\"\npublisher_tokens = [\"{}\"]\n\
                 [limits]\nrate_per_minute = 0\nmax_connections = 100000\n\
                 max_connections_per_map = 100000\nmax_connections_per_key = 100000\n",
                options.admin_token, options.publisher_token
            ),
        )
        .map_err(|e| format!("write settings: {e}"))?;
        let log_file = std::fs::File::create(&log).map_err(|e| format!("log file: {e}"))?;
        // The child runs in its temp dir: resolve a relative binary path first.
        let binary = std::fs::canonicalize(&options.binary)
            .map_err(|e| format!("herald binary {}: {e}", options.binary.display()))?;
        let mut command = Command::new(&binary);
        command
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .current_dir(&dir)
            .envs(options.env.iter().cloned())
            .env("RUST_LOG", &options.log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        if let Some(name) = &options.node_name {
            command.env("HERALD__CLUSTER__NODE_NAME", name);
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("start {}: {e}", options.binary.display()))?;
        let stdout = child.stdout.take();
        self.pid = child.id();
        self.child = Some(child);
        let stdout = stdout.ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("herald listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(timeout))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| {
                format!(
                    "herald did not print its address within {timeout:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })?;
        self.endpoint = Endpoint::parse(&addr)?;
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 10 s; drops the temporary PostgreSQL
    /// schema and removes the temp dir.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if std::time::Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        if let Some(mut schema) = self.pg_schema.take() {
            schema.drop_now();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Sends SIGTERM without waiting (several processes then stop at once;
    /// [`Self::stop`] waits).
    pub fn terminate(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for SpawnedHerald {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn create_pg_schema(url: &str, schema: &str) -> Result<(), String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| format!("PostgreSQL at {url}: {e}"))?;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .map_err(|e| format!("create schema {schema}: {e}"))?;
    let _ = conn.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(kind: TargetKind) -> Channel {
        let endpoint = Endpoint::parse("http://127.0.0.1:7999").unwrap();
        Channel {
            kind,
            name: "bench-01abc".to_owned(),
            publish_endpoint: Endpoint::parse("http://127.0.0.1:5561").unwrap(),
            endpoint,
            publish_path: "/publish/".to_owned(),
            publish_auth: None,
            subscribe_path: "/sub/bench-01abc".to_owned(),
            subscribe_auth: None,
        }
    }

    #[test]
    fn pushpin_items_carry_one_sse_frame_per_event() {
        use crate::sse::{bench_fields, SseParser};
        let events: Vec<BenchFields> = (0..3)
            .map(|seq| BenchFields {
                publisher: 2,
                seq,
                sent_us: 1_000 + seq,
            })
            .collect();
        let mut body = Vec::new();
        channel(TargetKind::Pushpin).write_publish_body(&mut body, &events, 100);
        let json: serde_json::Value = serde_json::from_slice(&body).expect("GRIP JSON");
        let items = json["items"].as_array().expect("items");
        assert_eq!(items.len(), 3);
        // What Pushpin writes to a stream: the items' contents, in order.
        let mut stream = String::new();
        for item in items {
            assert_eq!(item["channel"], "bench-01abc");
            let content = item["formats"]["http-stream"]["content"]
                .as_str()
                .expect("http-stream content");
            assert!(content.starts_with("event: message\ndata: {"), "{content}");
            assert!(content.ends_with("}\n\n"), "{content}");
            stream.push_str(content);
        }
        let mut parser = SseParser::default();
        let mut seen = Vec::new();
        parser.feed(stream.as_bytes(), |frame| {
            assert_eq!(frame.event, b"message");
            assert_eq!(frame.data.len(), 100);
            seen.push(bench_fields(frame.data).expect("bench fields"));
        });
        assert_eq!(seen, events);
    }

    #[test]
    fn json_escaping_keeps_every_byte() {
        let raw = "a\"b\\c\nd\re\tf\u{1}g\u{7f}é";
        let mut out = b"\"".to_vec();
        write_json_escaped(&mut out, raw.as_bytes());
        out.push(b'"');
        let back: String = serde_json::from_slice(&out).expect("valid JSON string");
        assert_eq!(back, raw);
    }

    #[test]
    fn pushpin_batches_must_fit_its_body_limit() {
        assert!(check_batch(TargetKind::Pushpin, 1000, 100).is_ok());
        assert!(check_batch(TargetKind::Pushpin, 1000, 1000).is_err());
        assert!(check_batch(TargetKind::Nchan, 2, 100).is_err());
        assert!(check_batch(TargetKind::Herald, 1000, 100_000).is_ok());
        assert!(check_batch(TargetKind::Herald, 0, 100).is_err());
    }

    #[test]
    fn database_urls_must_be_local() {
        assert!(check_database_url("sqlite://herald.db").is_ok());
        assert!(check_database_url("postgres://postgres@127.0.0.1:5432/test").is_ok());
        assert!(check_database_url("postgres://localhost/test").is_ok());
        assert!(check_database_url("postgres:///test").is_ok());
        assert!(check_database_url("postgres://u:p@db.example.com:5432/x").is_err());
        assert!(check_database_url("postgres://10.1.2.3/x").is_err());
    }
}
