//! The lean HTTP/1.1 path of connections opened for a stream
//! (`src/http/stream_conn.rs`), spoken to over raw TCP: exact framing,
//! HTTP/1.0, hostile heads, and the fallback to actix-http when the request
//! line arrives in pieces; and, on the other connections, what a client
//! that half-closes or pipelines a malformed request gets.

mod common;

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{Backend, Relay, WAIT};

/// A raw connection to the relay.
struct Raw {
    tcp: TcpStream,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
}

/// A parsed response head.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Raw {
    async fn connect(relay: &Relay) -> Self {
        let addr = relay.base.trim_start_matches("http://");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Self {
            tcp,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("send");
    }

    /// Reads more bytes; false at the end of the connection.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("read timed out")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn head(&mut self) -> Head {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(len) = response.parse(&self.buf).expect("valid head")
            {
                let head = Head {
                    status: response.code.expect("status"),
                    headers: response
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                };
                self.buf.drain(..len);
                return head;
            }
            assert!(self.fill().await, "connection closed before the head");
        }
    }

    /// Reads a body of `Content-Length` bytes.
    async fn body(&mut self, head: &Head) -> Vec<u8> {
        let len: usize = head
            .header("content-length")
            .expect("content-length")
            .parse()
            .expect("a length");
        while self.buf.len() < len {
            assert!(self.fill().await, "connection closed inside a body");
        }
        self.buf.drain(..len).collect()
    }

    /// Reads to the end of the connection; returns the rest of the body.
    async fn read_to_close(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// Decodes chunks until the decoded body contains `needle`.
    async fn chunked_until(&mut self, needle: &str) -> String {
        let mut body = Vec::new();
        loop {
            // Take every complete chunk off the front of the buffer.
            while let Some(line_end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let size_text = std::str::from_utf8(&self.buf[..line_end]).expect("size line");
                let size = usize::from_str_radix(size_text, 16).expect("hex chunk size");
                assert!(size > 0, "the stream ended while waiting for {needle}");
                let end = line_end + 2 + size + 2;
                if self.buf.len() < end {
                    break;
                }
                assert_eq!(&self.buf[end - 2..end], b"\r\n", "chunk ends with CRLF");
                body.extend_from_slice(&self.buf[line_end + 2..end - 2]);
                self.buf.drain(..end);
            }
            let text = String::from_utf8_lossy(&body).into_owned();
            if text.contains(needle) {
                return text;
            }
            assert!(self.fill().await, "closed while waiting for {needle}");
        }
    }
}

fn publish_request(map: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /api/maps/{map}/events HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        common::PUBLISHER,
        body.len()
    )
    .into_bytes()
}

fn stream_request(map: &str, key: &str, version: &str) -> Vec<u8> {
    format!(
        "GET /api/maps/{map}/events/stream {version}\r\nHost: test\r\nAuthorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_stream_connection_is_chunked_and_exact() {
    let relay = Relay::start(Backend::Sqlite).await;
    let map = relay.create_map().await;
    let mut raw = Raw::connect(&relay).await;
    raw.send(&stream_request(&map.slug, &map.key, "HTTP/1.1"))
        .await;
    let head = raw.head().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(head.header("cache-control"), Some("no-cache"));
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(head.header("content-length"), None);
    // Served by the lean path: the connection ends with the stream.
    assert_eq!(head.header("connection"), Some("close"));
    let preamble = raw.chunked_until("event: connected").await;
    assert!(preamble.starts_with("retry: "), "{preamble}");

    let ids = relay
        .publish(&map.slug, json!({"type": "t.one", "payload": {"n": 1}}))
        .await;
    let body = raw.chunked_until(&format!("id: {}\n", ids[0])).await;
    let frame_start = body.find(&format!("id: {}\n", ids[0])).expect("frame");
    let frame = &body[frame_start..];
    assert!(frame.starts_with(&format!("id: {}\nevent: t.one\ndata: {{", ids[0])));
    assert!(frame.ends_with("}\n\n"), "{frame:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_stream_runs_to_the_end_of_the_connection() {
    let relay = Relay::start(Backend::Sqlite).await;
    let map = relay.create_map().await;
    let mut raw = Raw::connect(&relay).await;
    raw.send(&stream_request(&map.slug, &map.key, "HTTP/1.0"))
        .await;
    let head = raw.head().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("transfer-encoding"), None);
    assert_eq!(head.header("connection"), Some("close"));
    let ids = relay
        .publish(&map.slug, json!({"type": "t.one", "payload": 1}))
        .await;
    let wanted = format!("id: {}\nevent: t.one\n", ids[0]);
    while !String::from_utf8_lossy(&raw.buf).contains(&wanted) {
        assert!(raw.fill().await, "closed before the event");
    }
    // Unframed: the body holds SSE text only.
    let body = String::from_utf8_lossy(&raw.buf).into_owned();
    assert!(body.starts_with("retry: "), "{body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_stream_answers_json_and_closes() {
    let relay = Relay::start(Backend::Sqlite).await;
    let map = relay.create_map().await;
    let mut raw = Raw::connect(&relay).await;
    raw.send(&stream_request(&map.slug, "wrong-key", "HTTP/1.1"))
        .await;
    let head = raw.head().await;
    assert_eq!(head.status, 401);
    assert_eq!(head.header("content-type"), Some("application/json"));
    assert_eq!(head.header("www-authenticate"), Some("Bearer"));
    let length: usize = head
        .header("content-length")
        .expect("content-length")
        .parse()
        .expect("number");
    let body = raw.read_to_close().await;
    assert_eq!(body.len(), length, "the connection ends after the answer");
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json body");
    assert_eq!(json["code"], "UNAUTHORIZED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_heads_answer_json() {
    let relay = Relay::start(Backend::Sqlite).await;

    let mut raw = Raw::connect(&relay).await;
    raw.send(b"GET /api/maps/x/events/stream HTTP/1.1\r\nBad Header\r\n\r\n")
        .await;
    let head = raw.head().await;
    assert_eq!(head.status, 400);
    let json: serde_json::Value = serde_json::from_slice(&raw.read_to_close().await).expect("json");
    assert_eq!(json["code"], "BAD_REQUEST");

    // What actix-http refuses on other connections is refused here too.
    for head in [
        "GET /api/maps/x/events/stream HTTP/1.1\r\n\r\n",
        "GET /api/maps/x/events/stream HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /api/maps/x/events/stream HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    ] {
        let mut raw = Raw::connect(&relay).await;
        raw.send(head.as_bytes()).await;
        assert_eq!(raw.head().await.status, 400, "{head:?}");
        let json: serde_json::Value =
            serde_json::from_slice(&raw.read_to_close().await).expect("json");
        assert_eq!(json["code"], "BAD_REQUEST", "{head:?}");
    }

    // The same head limit as actix-http's (128 KiB).
    let mut raw = Raw::connect(&relay).await;
    let huge = "a".repeat(140 << 10);
    raw.send(
        format!("GET /api/maps/x/events/stream HTTP/1.1\r\nHost: t\r\nX-Big: {huge}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let head = raw.head().await;
    assert_eq!(head.status, 431);
    let json: serde_json::Value = serde_json::from_slice(&raw.read_to_close().await).expect("json");
    assert_eq!(json["code"], "HEADERS_TOO_LARGE");

    // The relay still serves after both.
    let health = relay
        .http
        .get(relay.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
}

/// A stream request whose head stops after its request line is answered
/// 408 once `server.request_timeout_secs` has passed, like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_head_that_stalls_is_answered_408() {
    let relay = Relay::start_with(
        Backend::Sqlite,
        &[("HERALD__SERVER__REQUEST_TIMEOUT_SECS", "1")],
    )
    .await;
    let mut raw = Raw::connect(&relay).await;
    raw.send(b"GET /api/maps/x/events/stream HTTP/1.1\r\nHost: t\r\n")
        .await;
    let head = raw.head().await;
    assert_eq!(head.status, 408);
    let json: serde_json::Value = serde_json::from_slice(&raw.read_to_close().await).expect("json");
    assert_eq!(json["code"], "REQUEST_TIMEOUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_line_in_pieces_is_still_served() {
    let relay = Relay::start(Backend::Sqlite).await;
    let map = relay.create_map().await;
    let mut raw = Raw::connect(&relay).await;
    let request = stream_request(&map.slug, &map.key, "HTTP/1.1");
    raw.send(&request[..6]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    raw.send(&request[6..]).await;
    let head = raw.head().await;
    assert_eq!(head.status, 200);
    let ids = relay
        .publish(&map.slug, json!({"type": "t.one", "payload": 1}))
        .await;
    raw.chunked_until(&format!("id: {}\n", ids[0])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_closes_frees_its_slot() {
    let relay = Relay::start(Backend::Sqlite).await;
    let map = relay.create_map().await;
    let mut raw = Raw::connect(&relay).await;
    raw.send(&stream_request(&map.slug, &map.key, "HTTP/1.1"))
        .await;
    assert_eq!(raw.head().await.status, 200);
    raw.chunked_until("event: connected").await;
    let path = format!("/api/admin/connections?map={}", map.slug);
    assert_eq!(relay.admin_json(&path).await["total"], 1);
    drop(raw);
    let deadline = tokio::time::Instant::now() + WAIT;
    while relay.admin_json(&path).await["total"] != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ids of a publish's 201 answer.
fn ids_of(body: &[u8]) -> Vec<String> {
    let body: serde_json::Value = serde_json::from_slice(body).expect("json");
    body["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| id.as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_client_half_closed_is_answered() {
    let relay = Relay::start(Backend::Sqlite).await;
    let map = relay.create_map().await;
    let mut raw = Raw::connect(&relay).await;
    raw.send(&publish_request(&map.slug, r#"{"type":"half.closed"}"#))
        .await;
    raw.tcp.shutdown().await.expect("half-close");
    let head = raw.head().await;
    assert_eq!(head.status, 201);
    let ids = ids_of(&raw.body(&head).await);
    assert_eq!(ids.len(), 1);
    let history = relay
        .admin_json(&format!("/api/maps/{}/events", map.slug))
        .await;
    assert_eq!(history["items"][0]["id"], ids[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_pipelined_after_a_publish_comes_after_its_answer() {
    let relay = Relay::start(Backend::Sqlite).await;
    let map = relay.create_map().await;
    let mut raw = Raw::connect(&relay).await;
    let mut bytes = publish_request(&map.slug, r#"{"type":"pipelined"}"#);
    bytes.extend_from_slice(b"garbage\r\n\r\n");
    raw.send(&bytes).await;
    let head = raw.head().await;
    assert_eq!(head.status, 201, "the publish is answered first");
    assert_eq!(ids_of(&raw.body(&head).await).len(), 1);
    let head = raw.head().await;
    assert_eq!(head.status, 400);
    assert_eq!(head.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&raw.body(&head).await).expect("json");
    assert_eq!(body["code"], "BAD_REQUEST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_a_kept_alive_connection_ends_when_its_client_closes() {
    let relay = Relay::start(Backend::Sqlite).await;
    let map = relay.create_map().await;
    let mut raw = Raw::connect(&relay).await;
    // A first request keeps the connection alive: the stream after it is
    // actix-http's, not the lean path's.
    raw.send(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        .await;
    let head = raw.head().await;
    assert_eq!(head.status, 200);
    raw.body(&head).await;
    raw.send(&stream_request(&map.slug, &map.key, "HTTP/1.1"))
        .await;
    assert_eq!(raw.head().await.status, 200);
    raw.chunked_until("event: connected").await;
    let path = format!("/api/admin/connections?map={}", map.slug);
    assert_eq!(relay.admin_json(&path).await["total"], 1);
    raw.tcp.shutdown().await.expect("half-close");
    // Well before a keep-alive comment could fail (15 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while relay.admin_json(&path).await["total"] != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    raw.read_to_close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_refused_for_a_body_over_the_limit() {
    let relay = Relay::start(Backend::Sqlite).await;
    let map = relay.create_map().await;
    let head = |length: usize| {
        format!(
            "POST /api/maps/{}/events HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\
             Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n",
            map.slug,
            common::PUBLISHER
        )
    };
    // Refused before the upload: the final answer instead of 100.
    let mut raw = Raw::connect(&relay).await;
    raw.send(head(2_000_000).as_bytes()).await;
    let answer = raw.head().await;
    assert_eq!(answer.status, 413);
    let body: serde_json::Value = serde_json::from_slice(&raw.body(&answer).await).expect("json");
    assert_eq!(body["code"], "PAYLOAD_TOO_LARGE");
    // Within the limit: 100, then the body, then 201.
    let event = r#"{"type":"expected"}"#;
    let mut raw = Raw::connect(&relay).await;
    raw.send(head(event.len()).as_bytes()).await;
    assert_eq!(raw.head().await.status, 100);
    raw.send(event.as_bytes()).await;
    let answer = raw.head().await;
    assert_eq!(answer.status, 201);
    assert_eq!(ids_of(&raw.body(&answer).await).len(), 1);
}
