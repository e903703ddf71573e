//! Stream connections: a fresh TCP connection whose first request line is a
//! stream (`GET /api/.../events/stream`) is served here, not by actix-http's
//! HTTP/1 dispatcher.
//!
//! Why: the dispatcher keeps an 8 KiB read and an 8 KiB write buffer for
//! the whole life of a connection. An SSE stream lives for hours and is idle
//! most of that time, and those two buffers were two thirds of herald's
//! memory per stream. The request still goes through the same actix-web
//! `App` (routing, CORS, credentials, limits, JSON errors, caught panics):
//! only the HTTP/1.1 framing is ours. The head is read into a buffer that is
//! freed before the body starts, and frames are written straight from the
//! body's bytes (one vectored write: chunk-size line, frame bytes, CRLF), so
//! an idle stream holds no buffer at all.
//!
//! The connection ends with its response (`Connection: close`): a stream
//! ends only when herald closes it, and an error answer is rare. Every other
//! connection goes to actix-http unchanged, and so does a stream request
//! that arrives on a kept-alive connection or whose request line is not in
//! the first segment: both paths give the same answers.

use std::future::poll_fn;
use std::io::{self, IoSlice, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::error::DispatchError;
use actix_http::header::{self, HeaderName, HeaderValue};
use actix_http::{HttpMessage, Method, Request, Response, Uri, Version};
use actix_service::boxed::BoxService;
use actix_service::Service;
use actix_web::rt::net::TcpStream;
use actix_web::ResponseError;
use bytes::{Buf, Bytes};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::layer_errors::MAX_URI_BYTES;
use crate::error::ApiError;

/// Longest request head accepted here: actix-http's limit, so a request is
/// answered alike whether or not it opens its connection.
const MAX_HEAD_BYTES: usize = 128 << 10;
/// Most request headers accepted here (actix-http's limit too).
const MAX_HEADERS: usize = 96;
/// Bytes looked at to recognise a stream request line.
const PEEK_BYTES: usize = 128;
/// After the response, how long the client may take to close its side
/// before the socket is closed under it (a close with unread request bytes
/// would reset the connection and could destroy the response).
const LINGER: Duration = Duration::from_secs(1);
/// Reads of unexpected client bytes per poll (they are discarded).
const DISCARD_READS: usize = 8;

/// The app, answering one request with a boxed response.
pub type AppService = BoxService<Request, Response<BoxBody>, actix_web::Error>;
/// actix-http's HTTP/1 service over a TCP connection.
pub type HttpService = BoxService<TcpStream, (), DispatchError>;

/// The services of one worker thread.
pub struct Front {
    /// Answers stream requests served here.
    pub app: AppService,
    /// Serves every other connection.
    pub http: HttpService,
    /// How long a client may take to send its request head.
    pub request_timeout: Duration,
    /// `TCP_USER_TIMEOUT` of stream sockets (see [`crate::socket`]).
    pub user_timeout: Duration,
}

/// Serves one accepted connection.
///
/// # Errors
/// Never meaningfully: failures are the client's and end its connection.
pub async fn serve(io: TcpStream, front: Rc<Front>) -> Result<(), ()> {
    let _ = io.set_nodelay(true);
    // Boxed, like the branches below: this task lives as long as the
    // connection, so it keeps only the state of the branch it runs.
    let first = Box::pin(tokio::time::timeout(
        front.request_timeout,
        starts_with_stream_request(&io),
    ))
    .await;
    match first {
        Ok(true) => Box::pin(serve_stream(io, front)).await,
        Ok(false) => front.http.call(io).await.map_err(|err| {
            log::trace!("connection ended: {err}");
        }),
        // Nothing sent in time: close (actix-http would answer 408).
        Err(_) => Ok(()),
    }
}

/// Whether the connection's first bytes are a stream request line.
async fn starts_with_stream_request(io: &TcpStream) -> bool {
    let mut first = [0u8; PEEK_BYTES];
    match io.peek(&mut first).await {
        Ok(n) => is_stream_request_line(&first[..n]),
        Err(_) => false,
    }
}

/// `GET /api/.../events/stream` followed by a query or the version.
fn is_stream_request_line(first: &[u8]) -> bool {
    let Some(target) = first.strip_prefix(b"GET ") else {
        return false;
    };
    let Some(end) = target.iter().position(|&b| b == b' ' || b == b'?') else {
        return false;
    };
    let path = &target[..end];
    path.starts_with(b"/api/") && path.ends_with(b"/events/stream")
}

async fn serve_stream(mut io: TcpStream, front: Rc<Front>) -> Result<(), ()> {
    let peer = io.peer_addr().ok();
    // Boxed: the head buffer is freed before the body starts.
    let head = Box::pin(tokio::time::timeout(
        front.request_timeout,
        read_request(&mut io, peer),
    ))
    .await;
    let (response, version) = match head {
        // The client went away: nothing to answer.
        Ok(Err(HeadError::Closed)) => return Ok(()),
        // Its request line came, the rest of the head did not.
        Err(_) => (
            ApiError::RequestTimeout.error_response().into(),
            Version::HTTP_11,
        ),
        Ok(Err(HeadError::Refused(err))) => (err.error_response().into(), Version::HTTP_11),
        Ok(Ok(request)) => {
            let fd = crate::socket::configure(&io, front.user_timeout);
            request.extensions_mut().insert(fd);
            let version = request.version();
            let response = match front.app.call(request).await {
                Ok(response) => response,
                Err(err) => err.error_response().into(),
            };
            (response, version)
        }
    };
    if let Err(err) = write_response(&mut io, response, version).await {
        log::trace!("stream connection ended: {err}");
        return Ok(());
    }
    // Boxed: its timer is not carried by every stream while it runs.
    Box::pin(linger(&mut io)).await;
    Ok(())
}

/// Why no request could be read.
enum HeadError {
    /// The connection failed or closed.
    Closed,
    /// The head is malformed or too large: answered with this error.
    Refused(ApiError),
}

/// Reads and parses the request head (bytes after it are never read as
/// another request: the connection ends with this response).
async fn read_request(io: &mut TcpStream, peer: Option<SocketAddr>) -> Result<Request, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let room = MAX_HEAD_BYTES.saturating_sub(buf.len()).max(1);
        let n = (&mut *io)
            .take(room as u64)
            .read_buf(&mut buf)
            .await
            .map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        match parse_head(&buf, peer) {
            Head::Complete(request) => return Ok(request),
            Head::Partial => {}
            Head::Refused(err) => return Err(HeadError::Refused(err)),
        }
    }
}

/// What the bytes received so far make of a request head.
#[derive(Debug)]
pub enum Head {
    /// A whole, acceptable head.
    Complete(Request),
    /// More bytes are needed.
    Partial,
    /// Malformed or too large: answer this error and close.
    Refused(ApiError),
}

/// Parses the start of a connection as an HTTP/1.1 request head. A pure
/// function of its input (fuzzed: `fuzz/fuzz_targets/request_head.rs`).
pub fn parse_head(buf: &[u8], peer: Option<SocketAddr>) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let within = &buf[..buf.len().min(MAX_HEAD_BYTES)];
    match parsed.parse(within) {
        Ok(httparse::Status::Complete(_)) => match build_request(&parsed, peer) {
            Ok(request) => Head::Complete(request),
            Err(err) => Head::Refused(err),
        },
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            Head::Refused(too_large(buf))
        }
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(httparse::Error::TooManyHeaders) => Head::Refused(too_large(buf)),
        Err(err) => Head::Refused(ApiError::BadRequest(format!(
            "malformed request head: {err}"
        ))),
    }
}

/// A head over the limits: 414 when its request line alone is too long.
fn too_large(head: &[u8]) -> ApiError {
    let line = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    if line > MAX_URI_BYTES {
        ApiError::UriTooLong
    } else {
        ApiError::HeadersTooLarge
    }
}

fn build_request(
    parsed: &httparse::Request<'_, '_>,
    peer: Option<SocketAddr>,
) -> Result<Request, ApiError> {
    let bad = |what: &str| ApiError::BadRequest(format!("malformed request head: {what}"));
    let count = |name: &str| {
        parsed
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    // The framing must be unambiguous, as actix-http (and RFC 9112) want.
    if count("content-length") > 1 {
        return Err(bad("more than one Content-Length"));
    }
    if count("content-length") > 0 && count("transfer-encoding") > 0 {
        return Err(bad("Content-Length with Transfer-Encoding"));
    }
    // A length is decimal digits that fit a u64 (19 always do), as
    // actix-http reads it.
    let length = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"));
    if length.is_some_and(|h| {
        h.value.is_empty() || h.value.len() > 19 || !h.value.iter().all(u8::is_ascii_digit)
    }) {
        return Err(bad("Content-Length"));
    }
    // One Host in HTTP/1.1 (RFC 9112, section 3.2); at most one before.
    let hosts = count("host");
    if hosts > 1 || (hosts == 0 && parsed.version != Some(0)) {
        return Err(bad("Host"));
    }
    if parsed.path.unwrap_or_default().len() > MAX_URI_BYTES {
        return Err(ApiError::UriTooLong);
    }
    let mut request = Request::new();
    let head = request.head_mut();
    head.method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| bad("method"))?;
    head.uri = Uri::try_from(parsed.path.unwrap_or_default()).map_err(|_| bad("target"))?;
    head.version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    head.peer_addr = peer;
    head.headers = actix_http::header::HeaderMap::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| bad("header name"))?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| bad("header value"))?;
        head.headers.append(name, value);
    }
    Ok(request)
}

/// How the body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body at all (e.g. 204).
    Empty,
    Length(u64),
    Chunked,
    /// HTTP/1.0 stream: the body runs to the end of the connection.
    UntilClose,
}

/// Writes the head, then the body as it comes, until the body ends or the
/// client goes away.
async fn write_response(
    io: &mut TcpStream,
    response: Response<BoxBody>,
    version: Version,
) -> io::Result<()> {
    let (head, mut body) = response.into_parts();
    let framing = match body.size() {
        BodySize::None => Framing::Empty,
        BodySize::Sized(n) => Framing::Length(n),
        BodySize::Stream if version >= Version::HTTP_11 => Framing::Chunked,
        BodySize::Stream => Framing::UntilClose,
    };
    let mut out = Outgoing {
        head: encode_head(&head, framing).into(),
        ..Outgoing::default()
    };
    drop(head);
    let mut body_done = framing == Framing::Empty;
    poll_fn(|cx| drive(io, &mut out, &mut body, &mut body_done, framing, cx)).await?;
    io.shutdown().await
}

/// Writes what is pending, pulls the next chunk only once that is written
/// (a client that does not read stops the body, as under actix-http), and
/// notices a client that closed its side.
fn drive(
    io: &mut TcpStream,
    out: &mut Outgoing,
    body: &mut BoxBody,
    body_done: &mut bool,
    framing: Framing,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    loop {
        if client_gone(io, cx) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        if !out.head.is_empty() && out.data.is_empty() && !*body_done {
            // The first chunk (a stream's preamble) is usually ready: it
            // goes out with the head, one segment and one wakeup of the
            // client instead of two.
            if let Poll::Ready(Err(err)) = pull(body, out, body_done, framing, cx) {
                return Poll::Ready(Err(err));
            }
        }
        if !out.is_empty() {
            let slices = out.slices();
            match Pin::new(&mut *io).poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    out.advance(n);
                    continue;
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if *body_done {
            return Poll::Ready(Ok(()));
        }
        ready!(pull(body, out, body_done, framing, cx))?;
    }
}

/// Takes the body's next chunk into `out`, or marks the body done.
fn pull(
    body: &mut BoxBody,
    out: &mut Outgoing,
    body_done: &mut bool,
    framing: Framing,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    match ready!(Pin::new(&mut *body).poll_next(cx)) {
        Some(Ok(chunk)) => out.set_chunk(chunk, framing),
        Some(Err(err)) => return Poll::Ready(Err(io::Error::other(err.to_string()))),
        None => {
            *body_done = true;
            if framing == Framing::Chunked {
                out.tail = b"0\r\n\r\n";
            }
        }
    }
    Poll::Ready(Ok(()))
}

/// Whether the client closed or reset its side. Bytes it sends after its
/// request are read and dropped: this connection carries one request.
fn client_gone(io: &TcpStream, cx: &mut Context<'_>) -> bool {
    let mut scratch = [0u8; 512];
    for _ in 0..DISCARD_READS {
        match io.poll_read_ready(cx) {
            Poll::Pending => return false,
            Poll::Ready(Err(_)) => return true,
            Poll::Ready(Ok(())) => {}
        }
        match io.try_read(&mut scratch) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
    false
}

/// Waits (bounded) for the client to close after our FIN, dropping what it
/// still sends.
async fn linger(io: &mut TcpStream) {
    let drained = poll_fn(|cx| {
        let mut scratch = [0u8; 512];
        loop {
            match io.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
            }
            match io.try_read(&mut scratch) {
                Ok(0) => return Poll::Ready(()),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(()),
            }
        }
    });
    let _ = tokio::time::timeout(LINGER, drained).await;
}

/// The response head, with the framing headers of `framing`.
fn encode_head(head: &Response<()>, framing: Framing) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let status = head.status();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("Unknown")
    );
    for (name, value) in head.headers() {
        // Framing and connection headers are ours to set.
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || name == header::DATE
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT");
    let _ = write!(out, "date: {date}\r\n");
    match framing {
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::UntilClose => {}
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out
}

/// What is left to write: the head (first time only), then one body chunk
/// with its framing. Nothing here outlives the write.
#[derive(Default)]
struct Outgoing {
    head: Bytes,
    /// Chunk-size line (`{len:x}\r\n`), `size_line[size_at..size_end]` left.
    size_line: [u8; 18],
    size_at: u8,
    size_end: u8,
    data: Bytes,
    tail: &'static [u8],
}

impl Outgoing {
    fn is_empty(&self) -> bool {
        self.head.is_empty()
            && self.size_at == self.size_end
            && self.data.is_empty()
            && self.tail.is_empty()
    }

    fn set_chunk(&mut self, data: Bytes, framing: Framing) {
        if data.is_empty() {
            return;
        }
        if framing == Framing::Chunked {
            let mut line = &mut self.size_line[..];
            let _ = write!(line, "{:x}\r\n", data.len());
            let left = line.len();
            self.size_at = 0;
            self.size_end = u8::try_from(self.size_line.len() - left).unwrap_or(0);
            self.tail = b"\r\n";
        }
        self.data = data;
    }

    fn slices(&self) -> [IoSlice<'_>; 4] {
        [
            IoSlice::new(&self.head),
            IoSlice::new(&self.size_line[usize::from(self.size_at)..usize::from(self.size_end)]),
            IoSlice::new(&self.data),
            IoSlice::new(self.tail),
        ]
    }

    /// Marks `n` bytes written. A segment written out is released at once:
    /// an idle stream keeps no reference to bytes it has sent.
    fn advance(&mut self, mut n: usize) {
        n = consume(&mut self.head, n);
        let size = n.min(usize::from(self.size_end - self.size_at));
        self.size_at += u8::try_from(size).unwrap_or(0);
        n -= size;
        n = consume(&mut self.data, n);
        self.tail = &self.tail[n.min(self.tail.len())..];
    }
}

/// Takes up to `n` bytes off the front of `bytes`; returns the rest of `n`.
fn consume(bytes: &mut Bytes, n: usize) -> usize {
    if n >= bytes.len() {
        let rest = n - bytes.len();
        *bytes = Bytes::new();
        rest
    } else {
        bytes.advance(n);
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_stream_request_lines_only() {
        assert!(is_stream_request_line(
            b"GET /api/maps/demo/events/stream HTTP/1.1\r\n"
        ));
        assert!(is_stream_request_line(
            b"GET /api/maps/demo/events/stream?events=a.* HTTP/1.1\r\n"
        ));
        assert!(is_stream_request_line(
            b"GET /api/events/stream HTTP/1.1\r\n"
        ));
        assert!(!is_stream_request_line(
            b"GET /api/maps/demo/events HTTP/1.1\r\n"
        ));
        assert!(!is_stream_request_line(
            b"POST /api/maps/demo/events/stream HTTP/1.1\r\n"
        ));
        assert!(!is_stream_request_line(
            b"GET /api/maps/demo/events/streams HTTP/1.1\r\n"
        ));
        // The path must be complete to decide.
        assert!(!is_stream_request_line(b"GET /api/maps/demo/events/stream"));
        assert!(!is_stream_request_line(b""));
    }

    #[test]
    fn outgoing_frames_chunks_and_resumes_partial_writes() {
        let mut out = Outgoing {
            head: Bytes::from_static(b"HEAD"),
            ..Outgoing::default()
        };
        out.set_chunk(Bytes::from_static(b"data: x\n\n"), Framing::Chunked);
        let mut written = Vec::new();
        // Write one byte at a time: every boundary is crossed.
        while !out.is_empty() {
            let first = out.slices().iter().find(|s| !s.is_empty()).map(|s| s[0]);
            written.push(first.unwrap_or_default());
            out.advance(1);
        }
        assert_eq!(written, b"HEAD9\r\ndata: x\n\n\r\n");
    }

    #[test]
    fn identity_framing_writes_the_bytes_alone() {
        let mut out = Outgoing::default();
        out.set_chunk(Bytes::from_static(b"abc"), Framing::UntilClose);
        let total: usize = out.slices().iter().map(|s| s.len()).sum();
        assert_eq!(total, 3);
        out.advance(3);
        assert!(out.is_empty());
    }
}
