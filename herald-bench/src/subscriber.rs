//! The SSE client: one raw `TcpStream` per subscriber, its response head
//! parsed by `httparse`, its body decoded incrementally (`sse.rs`) out of a
//! read buffer shared by every stream of the client thread.

use std::cell::RefCell;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::http::{self, Head};
use crate::sse::{ChunkDecoder, Frame, SseParser};
use crate::target::Channel;

/// Size of the read buffer each client thread shares between its streams.
pub const SCRATCH_BYTES: usize = 256 * 1024;

/// Why a stream could not be opened.
#[derive(Debug)]
pub enum OpenError {
    Io(io::Error),
    /// The server answered something else than 200 `text/event-stream`.
    Status(u16, String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Status(status, body) => write!(f, "answered {status}: {body}"),
        }
    }
}

enum Body {
    Chunked(ChunkDecoder),
    /// No transfer coding: the body runs to the end of the connection.
    Identity,
}

/// One open SSE stream.
pub struct Stream {
    tcp: TcpStream,
    body: Body,
    parser: SseParser,
    /// Body bytes that came with the response head.
    initial: Vec<u8>,
}

/// Opens a stream: connect, send the request, read a 200 head.
pub async fn open(
    channel: &Channel,
    last_event_id: Option<&[u8]>,
    timeout: Duration,
) -> Result<Stream, OpenError> {
    let work = async {
        let mut tcp = http::connect(channel.endpoint.addr, timeout)
            .await
            .map_err(OpenError::Io)?;
        let request = channel.subscribe_request(last_event_id);
        tcp.write_all(&request).await.map_err(OpenError::Io)?;
        let mut buf = Vec::with_capacity(1024);
        let head: Head = http::read_head(&mut tcp, &mut buf)
            .await
            .map_err(OpenError::Io)?;
        if head.status != 200 || !head.content_type.starts_with("text/event-stream") {
            // Read a little of the error body for the report.
            let body = String::from_utf8_lossy(&buf[head.len..])
                .chars()
                .take(200)
                .collect();
            return Err(OpenError::Status(head.status, body));
        }
        let initial = buf[head.len..].to_vec();
        Ok(Stream {
            tcp,
            body: if head.chunked {
                Body::Chunked(ChunkDecoder::default())
            } else {
                Body::Identity
            },
            parser: SseParser::default(),
            initial,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(OpenError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "stream open timed out",
            )))
        })
}

impl Stream {
    /// Waits for bytes and parses all that are there, calling `on_frame`
    /// for each event. `Ok(false)` when the stream ended.
    pub async fn read_frames(
        &mut self,
        scratch: &RefCell<Vec<u8>>,
        mut on_frame: impl FnMut(Frame<'_>),
    ) -> io::Result<bool> {
        if !self.initial.is_empty() {
            let initial = std::mem::take(&mut self.initial);
            return process(&mut self.body, &mut self.parser, &initial, &mut on_frame);
        }
        loop {
            self.tcp.readable().await?;
            let (tcp, body, parser) = (&self.tcp, &mut self.body, &mut self.parser);
            let mut outcome = None;
            // A read that did not fill the buffer drained the socket: say
            // so (WouldBlock) to clear the readiness, which saves the extra
            // read that would only return EAGAIN. Data arriving after the
            // read raises a new readiness event, which this does not clear.
            let attempt = tcp.try_io(Interest::READABLE, || {
                let mut buf = scratch.borrow_mut();
                if buf.len() < SCRATCH_BYTES {
                    buf.resize(SCRATCH_BYTES, 0);
                }
                let n = tcp.try_read(&mut buf[..])?;
                if n == 0 {
                    outcome = Some(Ok(false));
                    return Ok(());
                }
                outcome = Some(process(body, parser, &buf[..n], &mut on_frame));
                if n < buf.len() {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            if let Some(outcome) = outcome {
                return outcome;
            }
            match attempt {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
    }

    /// Comment lines (keep-alives) seen so far.
    pub fn comments(&self) -> u64 {
        self.parser.comments
    }
}

/// Decodes body bytes and parses the frames in them; `Ok(false)` once a
/// chunked body has ended.
fn process(
    body: &mut Body,
    parser: &mut SseParser,
    bytes: &[u8],
    on_frame: &mut impl FnMut(Frame<'_>),
) -> io::Result<bool> {
    match body {
        Body::Identity => {
            parser.feed(bytes, &mut *on_frame);
            Ok(true)
        }
        Body::Chunked(decoder) => {
            decoder
                .feed(bytes, |body| parser.feed(body, &mut *on_frame))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            Ok(!decoder.is_done())
        }
    }
}
