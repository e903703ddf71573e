//! A small HTTP/1.1 client over tokio `TcpStream`, for loopback only:
//! keep-alive request/response for publishing and the admin API, and the
//! response head of SSE streams (whose bodies `sse.rs` decodes).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sse::ChunkDecoder;

/// A server on this machine: `http://127.0.0.1:PORT` (or `localhost`,
/// `[::1]`, any 127.0.0.0/8 address). Anything else is refused.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `Host:` header value.
    pub host: String,
}

impl Endpoint {
    /// Parses `http://HOST:PORT[/]`, refusing every non-loopback host.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{url}`: only http:// URLs are supported"))?;
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') || authority.contains('@') {
            return Err(format!("`{url}`: give the server's root URL (no path)"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("`{url}`: bad port `{p}`"))?,
            ),
            _ => (authority, 80),
        };
        let ip = loopback_ip(host).ok_or_else(|| {
            format!("`{url}`: herald-bench only sends traffic to this machine (127.0.0.1, localhost, [::1])")
        })?;
        Ok(Self {
            addr: SocketAddr::new(ip, port),
            host: authority.to_owned(),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host)
    }
}

/// The loopback address a host names, or `None` when it is not loopback.
pub fn loopback_ip(host: &str) -> Option<IpAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let ip: IpAddr = host.parse().ok()?;
    ip.is_loopback().then_some(ip)
}

/// Opens a TCP connection (no Nagle delay) within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// What matters in a response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    /// Length of the head in the buffer it was parsed from.
    pub len: usize,
    pub chunked: bool,
    pub content_length: Option<u64>,
    /// The server will close the connection after this response.
    pub close: bool,
    /// `Content-Type`, lowercased.
    pub content_type: String,
}

/// Parses a response head from the start of `buf`; `None` while incomplete.
pub fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad response head: {e}"),
            ))
        }
    };
    let mut head = Head {
        status: response.code.unwrap_or(0),
        len,
        chunked: false,
        content_length: None,
        close: response.version == Some(0),
        content_type: String::new(),
    };
    for header in response.headers.iter() {
        let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.contains("chunked");
        } else if header.name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.trim().parse().ok();
        } else if header.name.eq_ignore_ascii_case("connection") {
            if value.contains("close") {
                head.close = true;
            } else if value.contains("keep-alive") {
                head.close = false;
            }
        } else if header.name.eq_ignore_ascii_case("content-type") {
            head.content_type = value;
        }
    }
    Ok(Some(head))
}

/// Reads from `stream` into `buf` until a whole response head is there.
pub async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Head> {
    loop {
        if let Some(head) = parse_head(buf)? {
            return Ok(head);
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head over 64 KiB",
            ));
        }
        if read_more(stream, buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.reserve(16 * 1024);
    stream.read_buf(buf).await
}

/// A whole response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> io::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// One keep-alive connection for sequential requests; reconnects when the
/// server closed it.
pub struct HttpConn {
    endpoint: Endpoint,
    stream: Option<TcpStream>,
    out: Vec<u8>,
    buf: Vec<u8>,
    timeout: Duration,
    /// New connections opened after the first.
    pub reconnects: u64,
    opened: u64,
}

impl HttpConn {
    pub fn new(endpoint: &Endpoint, timeout: Duration) -> Self {
        Self {
            endpoint: endpoint.clone(),
            stream: None,
            out: Vec::with_capacity(4096),
            buf: Vec::with_capacity(4096),
            timeout,
            reconnects: 0,
            opened: 0,
        }
    }

    /// Sends one request and reads the whole response, within the timeout.
    /// A request on a reused connection that the server had closed (no
    /// byte of answer) is sent once more on a new one.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        self.out.clear();
        self.out.extend_from_slice(method.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(path.as_bytes());
        self.out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.out.extend_from_slice(self.endpoint.host.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            self.out.extend_from_slice(name.as_bytes());
            self.out.extend_from_slice(b": ");
            self.out.extend_from_slice(value.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            self.out.extend_from_slice(b"Content-Length: ");
            self.out
                .extend_from_slice(body.len().to_string().as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(body);
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange()).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(Retry::Again)) => match tokio::time::timeout(timeout, self.exchange()).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(Retry::Again)) => Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "connection closed before a response",
                )),
                Ok(Err(Retry::Fail(e))) => Err(e),
                Err(_) => Err(self.timed_out()),
            },
            Ok(Err(Retry::Fail(e))) => Err(e),
            Err(_) => Err(self.timed_out()),
        }
    }

    fn timed_out(&mut self) -> io::Error {
        self.stream = None;
        io::Error::new(io::ErrorKind::TimedOut, "request timed out")
    }

    async fn exchange(&mut self) -> Result<Response, Retry> {
        let reused = self.stream.is_some();
        if self.stream.is_none() {
            let stream = connect(self.endpoint.addr, self.timeout)
                .await
                .map_err(Retry::Fail)?;
            if self.opened > 0 {
                self.reconnects += 1;
            }
            self.opened += 1;
            self.stream = Some(stream);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(Retry::Fail(io::Error::other("no connection")));
        };
        self.buf.clear();
        let sent = stream.write_all(&self.out).await;
        let head = match sent {
            Ok(()) => read_head(stream, &mut self.buf).await,
            Err(e) => Err(e),
        };
        let head = match head {
            Ok(head) => head,
            Err(e) => {
                self.stream = None;
                return Err(if reused && self.buf.is_empty() {
                    Retry::Again
                } else {
                    Retry::Fail(e)
                });
            }
        };
        match read_body(stream, &mut self.buf, &head).await {
            Ok(body) => {
                if head.close {
                    self.stream = None;
                }
                Ok(Response {
                    status: head.status,
                    body,
                })
            }
            Err(e) => {
                self.stream = None;
                Err(Retry::Fail(e))
            }
        }
    }
}

enum Retry {
    Again,
    Fail(io::Error),
}

/// Reads the body that follows `head` (whose bytes start `buf`).
async fn read_body(stream: &mut TcpStream, buf: &mut Vec<u8>, head: &Head) -> io::Result<Vec<u8>> {
    if head.status == 204 || head.status == 304 || (100..200).contains(&head.status) {
        return Ok(Vec::new());
    }
    if head.chunked {
        let mut decoder = ChunkDecoder::default();
        let mut body = Vec::new();
        let mut from = head.len;
        loop {
            decoder
                .feed(&buf[from..], |b| body.extend_from_slice(b))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            if decoder.is_done() {
                return Ok(body);
            }
            from = buf.len();
            if read_more(stream, buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a chunked body",
                ));
            }
        }
    }
    if let Some(length) = head.content_length {
        let length = usize::try_from(length).map_err(io::Error::other)?;
        while buf.len() < head.len + length {
            if read_more(stream, buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a body",
                ));
            }
        }
        return Ok(buf[head.len..head.len + length].to_vec());
    }
    // No length: the body runs to the end of the connection.
    while read_more(stream, buf).await? > 0 {}
    Ok(buf[head.len..].to_vec())
}

/// One request on a fresh connection (admin calls, setup).
pub async fn once(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    HttpConn::new(endpoint, timeout)
        .request(method, path, headers, body)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_are_accepted() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:8080").unwrap().addr,
            "127.0.0.1:8080".parse().unwrap()
        );
        assert!(Endpoint::parse("http://localhost:8090/").is_ok());
        assert!(Endpoint::parse("http://[::1]:8090").is_ok());
        assert!(Endpoint::parse("http://127.0.0.2:80").is_ok());
        assert!(Endpoint::parse("http://10.0.0.1:8080").is_err());
        assert!(Endpoint::parse("http://example.com:8080").is_err());
        assert!(Endpoint::parse("https://127.0.0.1:8080").is_err());
        assert!(Endpoint::parse("http://127.0.0.1:8080/api").is_err());
    }

    #[test]
    fn heads_parse() {
        let head = parse_head(
            b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\nContent-Type: application/json\r\n\r\nhello",
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.status, 201);
        assert_eq!(head.content_length, Some(5));
        assert!(!head.close);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
    }
}
