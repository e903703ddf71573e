//! Hardening: no client can make herald hold much memory for it, every
//! error of the HTTP layer is JSON and logged below ERROR, idle keep-alive
//! connections stay open, map names are checked, and a database that cannot
//! be reached at start is named (without its password).
//!
//! Most of these speak raw TCP, so that they can send what no HTTP client
//! library would send, stall on purpose, or never read an answer.

mod common;

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use common::{unique, Backend, Relay, ADMIN, PUBLISHER, WAIT};

/// `publish.max_body_bytes` and the most JSON one history page holds.
const MIB: usize = 1 << 20;
/// The padding of a "big" event: with its envelope, an event of ~63 KB,
/// under `publish.max_event_bytes` (64 KiB) once serialized.
const PAD: usize = 63_000;
/// Big events per publish request: ~15 × 63 KB stays under 1 MiB.
const PER_REQUEST: usize = 15;

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 over TCP
// ---------------------------------------------------------------------------

/// A raw connection to the relay.
struct Raw {
    tcp: TcpStream,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
}

/// One response read off a raw connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn body_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        if text.len() > 300 {
            format!("{}... ({} bytes)", &text[..300], text.len())
        } else {
            text.into_owned()
        }
    }
}

/// What one read brought.
enum Fill {
    Data,
    Closed,
    TimedOut,
}

fn addr_of(relay: &Relay) -> std::net::SocketAddr {
    relay
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("relay address")
}

impl Raw {
    async fn connect(relay: &Relay) -> Self {
        let tcp = TcpStream::connect(addr_of(relay)).await.expect("connect");
        Self {
            tcp,
            buf: Vec::new(),
        }
    }

    /// A connection whose receive buffer is tiny (`SO_RCVBUF`, set before
    /// connecting so the advertised window stays small): a client that
    /// reads nothing takes almost nothing off the server.
    async fn connect_small_window(relay: &Relay) -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let tcp = socket.connect(addr_of(relay)).await.expect("connect");
        Self {
            tcp,
            buf: Vec::new(),
        }
    }

    /// Sends bytes; a failure (the server closed under us) is returned, not
    /// fatal: the answer the server sent first is still to be read.
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tcp.write_all(bytes).await
    }

    /// Reads more bytes until `deadline`. A reset counts as the end.
    async fn fill(&mut self, deadline: Instant) -> Fill {
        let mut chunk = vec![0u8; 64 << 10];
        match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
            Err(_) => Fill::TimedOut,
            Ok(Ok(0) | Err(_)) => Fill::Closed,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Fill::Data
            }
        }
    }

    /// Reads one whole response (head, then a body framed by
    /// Content-Length, chunks, or the end of the connection) within `wait`.
    async fn answer(&mut self, wait: Duration) -> Result<Answer, String> {
        let deadline = Instant::now() + wait;
        let (status, headers) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut slots);
            match response.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = response.code.unwrap_or(0);
                    let headers: Vec<(String, String)> = response
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    self.buf.drain(..len);
                    break (status, headers);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    return Err(format!(
                        "unparsable response head ({e}): {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ))
                }
            }
            match self.fill(deadline).await {
                Fill::Data => {}
                Fill::Closed => {
                    return Err(format!(
                        "connection closed before a complete response head (got {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ))
                }
                Fill::TimedOut => {
                    return Err(format!("no response head within {wait:?}"));
                }
            }
        };
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let body = if let Some(length) = find("content-length") {
            let length: usize = length
                .trim()
                .parse()
                .map_err(|_| format!("bad content-length {length:?}"))?;
            while self.buf.len() < length {
                match self.fill(deadline).await {
                    Fill::Data => {}
                    Fill::Closed => return Err("connection closed inside the body".into()),
                    Fill::TimedOut => return Err(format!("body incomplete after {wait:?}")),
                }
            }
            self.buf.drain(..length).collect()
        } else if find("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
            self.dechunk(deadline).await?
        } else if status == 204 || status == 304 {
            Vec::new()
        } else {
            loop {
                match self.fill(deadline).await {
                    Fill::Data => {}
                    Fill::Closed => break,
                    Fill::TimedOut => {
                        return Err("unframed body did not end with the connection".into())
                    }
                }
            }
            std::mem::take(&mut self.buf)
        };
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// Decodes a chunked body to its last chunk.
    async fn dechunk(&mut self, deadline: Instant) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            if let Some(line_end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size_text = size_text.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size_text, 16)
                    .map_err(|_| format!("bad chunk size {size_text:?}"))?;
                let end = line_end + 2 + size + 2;
                if self.buf.len() >= end {
                    body.extend_from_slice(&self.buf[line_end + 2..end - 2]);
                    self.buf.drain(..end);
                    if size == 0 {
                        return Ok(body);
                    }
                    continue;
                }
            }
            match self.fill(deadline).await {
                Fill::Data => {}
                Fill::Closed => return Err("connection closed inside a chunked body".into()),
                Fill::TimedOut => return Err("chunked body incomplete".into()),
            }
        }
    }

    /// Reads (and keeps) bytes until the server closes the connection;
    /// false when it is still open after `wait`.
    async fn closes_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            match self.fill(deadline).await {
                Fill::Data => {}
                Fill::Closed => return true,
                Fill::TimedOut => return false,
            }
        }
    }
}

/// Checks an answer is `status` with a JSON body of exactly
/// `{"error": <non-empty string>, "code": <code>}`.
fn check_json_error(answer: &Answer, status: u16, code: &str) -> Result<(), String> {
    let body = answer.body_text();
    if answer.status != status {
        return Err(format!(
            "status {} (wanted {status}), content-type {:?}, body {body:?}",
            answer.status,
            answer.header("content-type")
        ));
    }
    let content_type = answer.header("content-type").unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return Err(format!(
            "content-type {content_type:?} (wanted application/json), body {body:?}"
        ));
    }
    let json: Value = serde_json::from_slice(&answer.body)
        .map_err(|e| format!("body not JSON ({e}): {body:?}"))?;
    let fields = json
        .as_object()
        .ok_or_else(|| format!("body not an object: {body}"))?;
    if fields.len() != 2 {
        return Err(format!("body is not exactly {{error, code}}: {body}"));
    }
    if fields.get("code") != Some(&json!(code)) {
        return Err(format!("code is not {code:?}: {body}"));
    }
    match fields.get("error").and_then(Value::as_str) {
        Some(sentence) if !sentence.is_empty() => Ok(()),
        _ => Err(format!("`error` is not a non-empty string: {body}")),
    }
}

/// herald's resident memory in bytes (`VmRSS` of `/proc/<pid>/status`).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// Lines of the server's log at ERROR level (env_logger's
/// `[<time> ERROR <target>] ...`).
fn error_lines(relay: &Relay) -> Vec<String> {
    relay
        .log_text()
        .lines()
        .filter(|l| l.contains(" ERROR "))
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------
// 1. History pages are bounded
// ---------------------------------------------------------------------------

/// Publishes `n` big (~63 KB) events in requests of [`PER_REQUEST`];
/// returns their ids in order.
async fn publish_big(relay: &Relay, map: &str, n: usize) -> Vec<String> {
    let pad = "x".repeat(PAD);
    let mut ids = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let batch: Vec<Value> = (i..n.min(i + PER_REQUEST))
            .map(|j| json!({"type": "big.event", "payload": {"i": j, "pad": pad}}))
            .collect();
        i += batch.len();
        ids.extend(relay.publish(map, Value::Array(batch)).await);
    }
    assert_eq!(ids.len(), n);
    ids
}

/// A page of 64 KB events stops at about 1 MiB of JSON, `next` is its last
/// item's id, and following `next` returns every event once, in order.
async fn history_page_stops_at_one_mib(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let published = publish_big(&relay, &map.slug, 40).await;

    let mut seen: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 45, "too many pages");
        let path = match &after {
            None => format!("/api/maps/{}/events?limit=1000", map.slug),
            Some(a) => format!("/api/maps/{}/events?limit=1000&after={a}", map.slug),
        };
        let response = relay.get(&path, &map.key).send().await.expect("history");
        assert_eq!(response.status(), 200, "GET {path}");
        let body = response.bytes().await.expect("body");
        let page: Value = serde_json::from_slice(&body).expect("history page is JSON");
        let items = page["items"].as_array().expect("items");
        let largest = items
            .iter()
            .map(|item| serde_json::to_vec(item).expect("item").len())
            .max()
            .unwrap_or(0);
        assert!(
            body.len() <= MIB + largest + 1024,
            "page {pages} ({} items) is {} bytes of JSON: more than 1 MiB and one event \
             ({largest} bytes)",
            items.len(),
            body.len()
        );
        let ids: Vec<String> = items
            .iter()
            .map(|item| item["id"].as_str().expect("id").to_owned())
            .collect();
        match page["next"].as_str() {
            Some(next) => {
                assert!(!ids.is_empty(), "page {pages}: `next` on an empty page");
                assert_eq!(
                    Some(next),
                    ids.last().map(String::as_str),
                    "page {pages}: `next` is the last item's id"
                );
                seen.extend(ids);
                after = Some(next.to_owned());
            }
            None => {
                assert!(page["next"].is_null(), "next is a string or null");
                seen.extend(ids);
                break;
            }
        }
    }
    assert!(
        pages >= 3,
        "40 events of ~63 KB must take several pages of at most ~1 MiB, took {pages}"
    );
    assert_eq!(seen, published, "every event exactly once, in order");

    // `limit` still cuts a page of small counts.
    let response = relay
        .get(&format!("/api/maps/{}/events?limit=3", map.slug), &map.key)
        .send()
        .await
        .expect("history");
    let page: Value = response.json().await.expect("json");
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 3);
    assert_eq!(page["next"], json!(published[2]));
    assert_eq!(items[0]["id"], json!(published[0]));
}

/// 20 clients ask for a page of 1,000 events of 64 KB each and never read
/// it: herald's memory grows by about 1 MiB per client, not by the page.
async fn unread_history_pages_pin_little_memory(backend: Backend) {
    const CLIENTS: usize = 20;
    const BOUND: u64 = 100 << 20;
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    publish_big(&relay, &map.slug, 1000).await;
    let path = format!("/api/maps/{}/events?limit=1000", map.slug);

    // Warm up: one page read in full, so caches and allocator arenas that
    // any page needs are in place before the baseline.
    let warm = relay.get(&path, &map.key).send().await.expect("history");
    assert_eq!(warm.status(), 200);
    let _ = warm.bytes().await.expect("warm-up page");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let pid = relay.pid();
    let before = rss_bytes(pid);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
        map.key
    );
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut raw = Raw::connect_small_window(&relay).await;
        raw.send(request.as_bytes()).await.expect("send request");
        clients.push(raw);
    }
    // Watch the memory while they hang; fail as soon as it is over.
    let mut peak = before;
    let watch_until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < watch_until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rss_bytes(pid);
        peak = peak.max(now);
        assert!(
            peak.saturating_sub(before) < BOUND,
            "{CLIENTS} unread history pages grew herald's RSS by {:.0} MiB \
             ({:.0} -> {:.0} MiB); at most about 1 MiB each is allowed",
            mib(peak - before),
            mib(before),
            mib(peak)
        );
    }
    eprintln!(
        "RSS before {:.1} MiB, peak {:.1} MiB, growth {:.1} MiB",
        mib(before),
        mib(peak),
        mib(peak.saturating_sub(before))
    );
    // They were served (not refused): each has its 200 head waiting.
    for (i, raw) in clients.iter_mut().enumerate() {
        let deadline = Instant::now() + WAIT;
        while !raw.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match raw.fill(deadline).await {
                Fill::Data => {}
                Fill::Closed | Fill::TimedOut => panic!("client {i} got no response head"),
            }
        }
        assert!(
            raw.buf.starts_with(b"HTTP/1.1 200"),
            "client {i}: {:?}",
            String::from_utf8_lossy(&raw.buf[..raw.buf.len().min(200)])
        );
    }
}

// ---------------------------------------------------------------------------
// 2. Stalled requests time out
// ---------------------------------------------------------------------------

/// The head of a publish of 1 MiB and the first bytes of its body.
fn stalled_publish(map: &str) -> Vec<u8> {
    let mut bytes = format!(
        "POST /api/maps/{map}/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {PUBLISHER}\r\n\
         Content-Type: application/json\r\nContent-Length: {MIB}\r\n\r\n"
    )
    .into_bytes();
    bytes.extend_from_slice(b"[{\"type\": \"t.stalled\", \"payload\": \"");
    bytes.extend(std::iter::repeat_n(b'a', 4000));
    bytes
}

/// Sends a stalled publish; asserts a 408 `REQUEST_TIMEOUT` arrives within
/// `timeout` + slack and that the connection then closes.
async fn expect_stalled_body_refused(relay: &Relay, map: &str, timeout: Duration) {
    let mut raw = Raw::connect(relay).await;
    let started = Instant::now();
    raw.send(&stalled_publish(map)).await.expect("send");
    let answer = raw
        .answer(timeout + Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "a body stalled for {:?} (request_timeout {timeout:?}): {e}",
                started.elapsed()
            )
        });
    let took = started.elapsed();
    if let Err(e) = check_json_error(&answer, 408, "REQUEST_TIMEOUT") {
        panic!("stalled body answered after {took:?}: {e}");
    }
    assert!(
        took >= timeout.saturating_sub(Duration::from_millis(1500)),
        "408 after {took:?}, before the configured {timeout:?}"
    );
    assert!(
        raw.closes_within(Duration::from_secs(5)).await,
        "the connection stays open after the 408"
    );
}

async fn stalled_body_times_out_with_408(backend: Backend) {
    let relay = Relay::start_with(backend, &[("HERALD__SERVER__REQUEST_TIMEOUT_SECS", "2")]).await;
    let map = relay.create_map().await;
    expect_stalled_body_refused(&relay, &map.slug, Duration::from_secs(2)).await;

    // Many at once: every one is answered and closed in time.
    const MANY: usize = 100;
    let mut stalled = Vec::with_capacity(MANY);
    for _ in 0..MANY {
        let mut raw = Raw::connect(&relay).await;
        raw.send(&stalled_publish(&map.slug)).await.expect("send");
        stalled.push(raw);
    }
    let started = Instant::now();
    let mut open = 0;
    for raw in &mut stalled {
        let left = (Duration::from_secs(10)).saturating_sub(started.elapsed());
        if !raw.closes_within(left).await {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "of {MANY} stalled publishes, {open} still open 10 s later (request_timeout 2 s)"
    );
    let answered = stalled
        .iter()
        .filter(|raw| raw.buf.starts_with(b"HTTP/1.1 408"))
        .count();
    assert_eq!(answered, MANY, "every stalled publish is answered 408");
    // Nothing was published.
    let page = relay
        .get(&format!("/api/maps/{}/events", map.slug), &map.key)
        .send()
        .await
        .expect("history");
    let page: Value = page.json().await.expect("json");
    assert_eq!(page["items"], json!([]));
}

/// With the default `server.request_timeout_secs` (10), a stalled body is
/// refused too (not held for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_times_out_with_the_default_timeout() {
    let relay = Relay::start(Backend::Sqlite).await;
    let map = relay.create_map().await;
    expect_stalled_body_refused(&relay, &map.slug, Duration::from_secs(10)).await;
}

/// A head that stops half-way is closed (or answered 408 JSON) within the
/// request timeout, on either path.
async fn stalled_head_is_closed(backend: Backend) {
    let relay = Relay::start_with(backend, &[("HERALD__SERVER__REQUEST_TIMEOUT_SECS", "2")]).await;
    let partial: [&[u8]; 4] = [
        b"POST /api/ma",
        b"GET /api/maps/x/ev",
        b"GET /api/maps/x/events/stream HTTP/1.1\r\nHost: t\r\n",
        b"POST /api/maps/x/events HTTP/1.1\r\nHost: t\r\nContent-Le",
    ];
    let mut failures = Vec::new();
    for bytes in partial {
        let what = String::from_utf8_lossy(bytes).escape_debug().to_string();
        let mut raw = Raw::connect(&relay).await;
        let started = Instant::now();
        raw.send(bytes).await.expect("send");
        if !raw.closes_within(Duration::from_secs(6)).await {
            failures.push(format!("{what}: still open after {:?}", started.elapsed()));
            continue;
        }
        // Closed: silently, or after a 408 (already read, parsed from the
        // buffer).
        if !raw.buf.is_empty() {
            match raw.answer(Duration::from_secs(1)).await {
                Ok(answer) => {
                    if let Err(e) = check_json_error(&answer, 408, "REQUEST_TIMEOUT") {
                        failures.push(format!("{what}: {e}"));
                    }
                }
                Err(e) => failures.push(format!("{what}: {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "stalled heads:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 3. Map names
// ---------------------------------------------------------------------------

/// Checks a response like [`check_json_error`], without panicking.
async fn json_error_of(response: reqwest::Response, status: u16, code: &str) -> Result<(), String> {
    let answer = Answer {
        status: response.status().as_u16(),
        headers: response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: response.bytes().await.map_err(|e| e.to_string())?.to_vec(),
    };
    check_json_error(&answer, status, code)
}

async fn map_names_are_checked(backend: Backend) {
    let relay = Relay::start(backend).await;
    let create = |name: Option<String>| {
        let slug = unique("n-");
        let body = match name {
            Some(name) => json!({"slug": slug, "name": name}),
            None => json!({"slug": slug}),
        };
        let request = relay.post("/api/admin/maps", ADMIN).json(&body);
        async move { (slug, request.send().await.expect("create map")) }
    };
    let mut failures = Vec::new();

    let refused = [
        ("NUL", "a\u{0}b".to_owned()),
        ("newline", "a\nb".to_owned()),
        ("carriage return", "a\rb".to_owned()),
        ("tab", "a\tb".to_owned()),
        ("escape", "a\u{1b}[31mred".to_owned()),
        ("DEL", "a\u{7f}b".to_owned()),
        ("C1 control U+0085", "a\u{85}b".to_owned()),
        ("129 characters", "a".repeat(129)),
        ("129 non-ASCII characters", "é".repeat(129)),
    ];
    for (what, name) in refused {
        let (slug, response) = create(Some(name)).await;
        if let Err(e) = json_error_of(response, 400, "INVALID_NAME").await {
            failures.push(format!("name with {what}: {e}"));
        }
        let after = relay
            .get(&format!("/api/admin/maps/{slug}"), ADMIN)
            .send()
            .await
            .expect("get map");
        if after.status() != 404 {
            failures.push(format!(
                "name with {what}: the map exists after all ({})",
                after.status()
            ));
        }
    }

    let accepted = [
        ("of 128 characters", Some("a".repeat(128))),
        (
            "of 128 non-ASCII characters (256 bytes)",
            Some("é".repeat(128)),
        ),
        ("of 128 characters of 4 bytes", Some("🗺".repeat(128))),
        ("empty", Some(String::new())),
        ("ordinary", Some("Map of Eve: système Jita".to_owned())),
        ("absent", None),
    ];
    for (what, name) in accepted {
        let (slug, response) = create(name.clone()).await;
        let status = response.status();
        if status != 201 {
            let text = response.text().await.unwrap_or_default();
            failures.push(format!("name {what}: {status} {text}"));
            continue;
        }
        if let Some(name) = name {
            let map = relay.admin_json(&format!("/api/admin/maps/{slug}")).await;
            if map["name"] != json!(name) {
                failures.push(format!("name {what} does not round-trip: {}", map["name"]));
            }
        }
    }
    let errors = error_lines(&relay);
    assert!(
        failures.is_empty() && errors.is_empty(),
        "map names:\n{}\nERROR lines in the log:\n{}",
        failures.join("\n"),
        errors.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 4. HTTP-layer errors are JSON and not logged at ERROR
// ---------------------------------------------------------------------------

/// One malformed request and the answer it must get.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn malformed(method: &str, path: &str) -> Vec<Case> {
    let head = |extra: &str, body: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n{body}").into_bytes()
    };
    let mut control = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nX-Bad: a").into_bytes();
    control.push(0x01);
    control.extend_from_slice(b"b\r\n\r\n");
    let many: String = (0..200).map(|i| format!("X-Filler-{i}: {i}\r\n")).collect();
    vec![
        Case {
            name: "no Host",
            bytes: format!("{method} {path} HTTP/1.1\r\nContent-Length: 0\r\n\r\n").into_bytes(),
            status: 400,
            code: "BAD_REQUEST",
        },
        Case {
            name: "two Hosts",
            bytes: head("Host: u\r\n", ""),
            status: 400,
            code: "BAD_REQUEST",
        },
        Case {
            name: "control byte in a header value",
            bytes: control,
            status: 400,
            code: "BAD_REQUEST",
        },
        Case {
            name: "70 KB URI",
            bytes: format!(
                "{method} {path}?pad={} HTTP/1.1\r\nHost: t\r\n\r\n",
                "a".repeat(70 << 10)
            )
            .into_bytes(),
            status: 414,
            code: "URI_TOO_LONG",
        },
        Case {
            name: "200 headers",
            bytes: head(&many, ""),
            status: 431,
            code: "HEADERS_TOO_LARGE",
        },
        Case {
            name: "Content-Length with Transfer-Encoding: chunked",
            bytes: head(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            status: 400,
            code: "BAD_REQUEST",
        },
        Case {
            name: "two different Content-Lengths",
            bytes: head("Content-Length: 2\r\nContent-Length: 3\r\n", "{}"),
            status: 400,
            code: "BAD_REQUEST",
        },
    ]
}

/// Sends `case` on a fresh connection, or as the second request of a
/// kept-alive one; checks the answer.
async fn run_case(relay: &Relay, case: &Case, kept_alive: bool) -> Result<(), String> {
    let mut raw = Raw::connect(relay).await;
    if kept_alive {
        raw.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .map_err(|e| format!("first request: {e}"))?;
        let first = raw.answer(WAIT).await.map_err(|e| format!("first: {e}"))?;
        if first.status != 200 {
            return Err(format!("first request answered {}", first.status));
        }
        if first
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            return Err("the first answer closes the connection".into());
        }
    }
    // A write error means the server closed early: its answer may still be
    // waiting to be read.
    let _ = raw.send(&case.bytes).await;
    let answer = raw.answer(WAIT).await?;
    check_json_error(&answer, case.status, case.code)
}

async fn http_layer_errors_are_json_and_not_logged(backend: Backend) {
    let relay = Relay::start(backend).await;
    let mut failures = Vec::new();
    let mut checked = 0;
    for (method, path) in [
        ("POST", "/api/maps/x/events"),
        ("GET", "/api/maps/x/events/stream"),
    ] {
        for case in malformed(method, path) {
            for kept_alive in [false, true] {
                checked += 1;
                if let Err(e) = run_case(&relay, &case, kept_alive).await {
                    let connection = if kept_alive {
                        "second request on a kept-alive connection"
                    } else {
                        "fresh connection"
                    };
                    failures.push(format!("{method} {path}, {}, {connection}: {e}", case.name));
                }
            }
        }
    }
    // The relay still serves.
    let health = relay
        .http
        .get(relay.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    // Give the server a moment to write what it logs about the last ones.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let errors = error_lines(&relay);
    assert!(
        failures.is_empty() && errors.is_empty(),
        "{} of {checked} malformed requests not answered as specified:\n{}\n\
         ERROR lines in the log ({}):\n{}",
        failures.len(),
        failures.join("\n"),
        errors.len(),
        errors.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 5. Keep-alive
// ---------------------------------------------------------------------------

/// An idle kept-alive connection is still open 20 s later (the default
/// `server.keep_alive_secs` is 75).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_stays_open_20s() {
    let relay = Relay::start(Backend::Sqlite).await;
    let mut raw = Raw::connect(&relay).await;
    raw.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("send");
    let first = raw.answer(WAIT).await.expect("first answer");
    assert_eq!(first.status, 200);
    assert_ne!(
        first.header("connection").map(str::to_ascii_lowercase),
        Some("close".to_owned()),
        "the first answer keeps the connection"
    );
    // Idle; the server must not close in the meantime.
    let idle_until = Instant::now() + Duration::from_secs(20);
    match raw.fill(idle_until).await {
        Fill::TimedOut => {}
        Fill::Closed => panic!(
            "herald closed an idle keep-alive connection after {:?} (less than 20 s)",
            Duration::from_secs(20) - idle_until.saturating_duration_since(Instant::now())
        ),
        Fill::Data => panic!(
            "unexpected bytes on an idle connection: {:?}",
            String::from_utf8_lossy(&raw.buf)
        ),
    }
    raw.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("second request sent");
    let second = raw
        .answer(WAIT)
        .await
        .expect("second request on the same connection answered");
    assert_eq!(second.status, 200);
}

// ---------------------------------------------------------------------------
// 6. Database unreachable at start
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_at_start_is_named_without_password() {
    // A port nobody listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("settings.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\n[database]\n\
             url = \"postgres://herald_user:s3cretpw@127.0.0.1:{port}/herald_db\"\n"
        ),
    )
    .expect("write settings");
    let started = Instant::now();
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("`herald serve` still running after 30 s"))
    .expect("run herald");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "exit status; stderr: {stderr}"
    );
    assert!(
        took < Duration::from_secs(12),
        "exited after {took:?} (within ~10 s wanted); stderr: {stderr}"
    );
    for needle in ["127.0.0.1", &port.to_string(), "herald_db"] {
        assert!(
            stderr.contains(needle),
            "stderr does not name {needle:?}: {stderr}"
        );
    }
    assert!(
        !stderr.contains("s3cretpw") && !stdout.contains("s3cretpw"),
        "the password is printed: stderr {stderr}, stdout {stdout}"
    );
}

backend_tests!(
    history_page_stops_at_one_mib,
    unread_history_pages_pin_little_memory,
    stalled_body_times_out_with_408,
    stalled_head_is_closed,
    map_names_are_checked,
    http_layer_errors_are_json_and_not_logged,
    a_publish_body_that_breaks_its_framing_is_a_bad_request,
);

/// A publish whose body ends before its declared length, or whose chunked
/// framing is broken, is answered 400 `BAD_REQUEST` (the request's framing,
/// not its JSON), with a message that shows nothing of herald's insides.
async fn a_publish_body_that_breaks_its_framing_is_a_bad_request(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let head = |framing: &str| {
        format!(
            "POST /api/maps/{}/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\n{framing}\r\n",
            map.slug,
            common::PUBLISHER
        )
    };
    let cut_short = format!(
        "{}{{\"type\": \"a\", \"payload\": 1}}",
        head("Content-Length: 100\r\n")
    );
    let bad_chunk = format!(
        "{}zz\r\n{{}}\r\n0\r\n\r\n",
        head("Transfer-Encoding: chunked\r\n")
    );
    for (name, bytes, close_write) in [
        ("cut short", cut_short, true),
        ("bad chunk", bad_chunk, false),
    ] {
        let mut raw = Raw::connect(&relay).await;
        raw.send(bytes.as_bytes()).await.expect("send");
        if close_write {
            raw.tcp.shutdown().await.expect("shutdown");
        }
        let answer = raw.answer(WAIT).await.expect(name);
        check_json_error(&answer, 400, "BAD_REQUEST").unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            !answer.body_text().contains("None"),
            "{name}: {}",
            answer.body_text()
        );
    }
    assert_eq!(
        relay.admin_json("/api/admin/stats").await["published"],
        0,
        "nothing was published"
    );
}
