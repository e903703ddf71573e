//! The HTTP layer's own errors, in JSON. actix-http answers a request it
//! cannot parse (a control byte in a header, too many headers, a
//! `Content-Length` beside `Transfer-Encoding`, two `Content-Length`s, a
//! head too slow) itself, before any of herald's code runs, with an empty
//! body, then closes the connection. [`JsonErrors`] wraps the connection
//! under actix-http and replaces exactly those answers — a 400, 408, 413,
//! 414 or 431 with `content-length: 0`, which herald's own handlers never
//! send (their errors always carry a JSON body) — with the same status and
//! herald's `{"error", "code"}` body. The answer is the last thing on its
//! connection (actix-http closes it), so nothing after it is affected; the
//! answers of pipelined requests before it go out unchanged.
//!
//! The same layer ends a stream whose client closed its side. actix-http
//! answers a request whose client half-closed the connection after sending
//! it (a publish must get its 201: its events are committed), but an event
//! stream never ends on its own, so on a connection marked as carrying one
//! ([`CarriesStream`]) the end of the client's bytes is the end of the
//! stream, noticed at once.
//!
//! actix-http has no limit of its own on the request target: a target of
//! more than [`MAX_URI_BYTES`] answers 414, from the app (`http::app`) when
//! actix-http parsed it, or here when actix-http refused the head (this
//! layer watches the lengths of request lines as they are read).
//!
//! Why a layer and not herald's own parser for every connection (as
//! [`super::stream_conn`] is for streams): keep-alive, pipelining, chunked
//! and `Expect: 100-continue` request bodies would all have to be written
//! again; here actix-http keeps doing all of it and only the bytes of its
//! error answers change.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use actix_web::http::StatusCode;
use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::ApiError;

/// Longest request target (path and query) accepted, like common servers
/// and proxies (8 KiB).
pub const MAX_URI_BYTES: usize = 8 << 10;
/// Longest bare error answer of actix-http looked for (status line, date,
/// `content-length: 0`, `connection: close`: under 200 bytes).
const BARE_ANSWER_MAX: usize = 512;

/// A connection whose bare HTTP-layer error answers become JSON.
pub struct JsonErrors<T> {
    inner: T,
    peer: Option<SocketAddr>,
    /// A replacement answer still to be written.
    pending: Bytes,
    lines: LineWatch,
    carries_stream: CarriesStream,
}

/// Whether a connection carries an event stream: set by the stream's
/// handler (through the connection data), read by [`JsonErrors`].
#[derive(Debug, Clone, Default)]
pub struct CarriesStream(Arc<AtomicBool>);

impl CarriesStream {
    /// The connection now carries a stream.
    pub fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_marked(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Follows the lines a client sends, to tell a request line that is too
/// long (414) from a head that is too large (431).
#[derive(Debug, Default)]
struct LineWatch {
    /// Bytes of the current line so far.
    line: usize,
    /// Whether the current line follows an empty one (or starts the
    /// connection): the request line of the next request.
    first: bool,
    /// A request line longer than [`MAX_URI_BYTES`] was seen.
    uri_too_long: bool,
}

impl LineWatch {
    fn new() -> Self {
        Self {
            first: true,
            ..Self::default()
        }
    }

    fn read(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                // An empty line (`\r\n`) ends a head.
                self.first = self.line <= 1;
                self.line = 0;
            } else {
                self.line += 1;
                if self.first && self.line > MAX_URI_BYTES {
                    self.uri_too_long = true;
                }
            }
        }
    }
}

impl<T> JsonErrors<T> {
    /// Wraps the connection from `peer`.
    pub fn new(inner: T, peer: Option<SocketAddr>) -> Self {
        Self {
            inner,
            peer,
            pending: Bytes::new(),
            lines: LineWatch::new(),
            carries_stream: CarriesStream::default(),
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The mark a stream's handler sets on this connection.
    pub fn carries_stream(&self) -> CarriesStream {
        self.carries_stream.clone()
    }
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if read.is_empty() && room && self.carries_stream.is_marked() {
            // An error, not the end of input: actix-http then drops the
            // connection and the stream's body with it.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the client closed its stream",
            )));
        }
        self.lines.read(read);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if let Some((at, status, replacement)) = json_answer(buf, this.lines.uri_too_long) {
            log::debug!(
                "refused a request the HTTP layer could not accept from {}: {status}",
                this.peer
                    .map_or_else(|| "an unknown peer".to_owned(), |p| p.ip().to_string())
            );
            this.pending = Bytes::from([&buf[..at], &replacement[..]].concat());
            // Written now or on the flush actix-http does next.
            let _ = this.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where `bytes` end with one of actix-http's bare error answers: its
/// offset (answers to pipelined requests may come before it), its status,
/// and the JSON answer replacing it (a refused head is a 414 after a
/// request line that was too long). Only the last status line can start
/// it: a JSON body cannot hold the raw line breaks of a head.
fn json_answer(bytes: &[u8], uri_too_long: bool) -> Option<(usize, StatusCode, Bytes)> {
    // Cheap on every other write: a bare answer ends its (short) head with
    // an empty line and has no body.
    if !bytes.ends_with(b"\r\n\r\n") {
        return None;
    }
    let tail = bytes.len().saturating_sub(BARE_ANSWER_MAX);
    let at = tail
        + bytes[tail..]
            .windows(9)
            .rposition(|w| w == b"HTTP/1.1 " || w == b"HTTP/1.0 ")?;
    let bytes = &bytes[at..];
    let status_line = &bytes[9..];
    let error = match status_line.get(..4)? {
        b"400 " | b"431 " if uri_too_long => ApiError::UriTooLong,
        b"400 " => ApiError::BadRequest("the request is malformed".into()),
        b"408 " => ApiError::RequestTimeout,
        b"413 " => ApiError::PayloadTooLarge("the request is too large".into()),
        b"414 " => ApiError::UriTooLong,
        b"431 " => ApiError::HeadersTooLarge,
        _ => return None,
    };
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = bytes[..end].to_ascii_lowercase();
    let bare = head
        .split(|&b| b == b'\n')
        .any(|line| line.trim_ascii() == b"content-length: 0");
    if !bare || bytes.len() != end + 4 {
        return None;
    }
    let status = actix_web::ResponseError::status_code(&error);
    let body = serde_json::json!({ "error": error.to_string(), "code": error.code() }).to_string();
    let answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    Some((at, status, Bytes::from(answer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(answer: &Bytes) -> serde_json::Value {
        let text = std::str::from_utf8(answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn bare_layer_errors_become_json() {
        for (raw, status, code) in [
            ("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\ndate: x\r\n\r\n", 400, "BAD_REQUEST"),
            ("HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n", 431, "HEADERS_TOO_LARGE"),
            ("HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n", 408, "REQUEST_TIMEOUT"),
            ("HTTP/1.0 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n", 413, "PAYLOAD_TOO_LARGE"),
            ("HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n", 414, "URI_TOO_LONG"),
        ] {
            let (at, got, answer) = json_answer(raw.as_bytes(), false).expect(raw);
            assert_eq!((at, got.as_u16()), (0, status));
            assert!(answer.starts_with(format!("HTTP/1.1 {status} ").as_bytes()));
            let body = body_of(&answer);
            assert_eq!(body["code"], code);
            assert!(!body["error"].as_str().unwrap().is_empty());
        }
    }

    #[test]
    fn a_bare_error_after_a_pipelined_answer_is_replaced_alone() {
        let first = "HTTP/1.1 201 Created\r\ncontent-length: 36\r\n\r\n{\"ids\":[\"01J0000000000000000000000\"]}";
        let raw = format!("{first}HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        let (at, status, answer) = json_answer(raw.as_bytes(), false).expect("replaced");
        assert_eq!((at, status.as_u16()), (first.len(), 400));
        assert_eq!(body_of(&answer)["code"], "BAD_REQUEST");
        assert!(json_answer(first.as_bytes(), false).is_none());
    }

    #[test]
    fn answers_with_a_body_or_other_statuses_pass_through() {
        for raw in [
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 36\r\n\r\n{\"error\":\"x\",\"code\":\"BAD_REQUEST\"}",
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            "{\"partial\": \"body\"}",
        ] {
            assert!(json_answer(raw.as_bytes(), false).is_none(), "{raw}");
        }
    }

    #[test]
    fn a_refused_head_after_a_long_request_line_is_414() {
        let mut lines = LineWatch::new();
        lines.read(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(!lines.uri_too_long);
        lines.read(b"POST /x HTTP/1.1\r\nX-Long: ");
        lines.read(&vec![b'a'; MAX_URI_BYTES + 1]);
        assert!(!lines.uri_too_long, "a long header is not a long target");
        lines.read(b"\r\n\r\nGET /");
        lines.read(&vec![b'a'; MAX_URI_BYTES]);
        assert!(lines.uri_too_long, "the next request's line");
        let raw = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let (_, status, answer) = json_answer(raw, true).expect("replaced");
        assert_eq!(status.as_u16(), 414);
        assert_eq!(body_of(&answer)["code"], "URI_TOO_LONG");
    }
}
