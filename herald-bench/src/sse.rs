//! Incremental decoding of an SSE response body: HTTP/1.1 chunked transfer
//! coding, then SSE frames (blocks of `field: value` lines ended by a blank
//! line), then the bench's own fields inside the `data:` payload.
//!
//! Everything here works on borrowed slices of the bytes just read: a frame
//! that arrives whole in one read is parsed without copying; only a frame
//! split across reads is buffered.

use memchr::memchr;

/// Decodes `Transfer-Encoding: chunked` incrementally.
#[derive(Debug, Default)]
pub struct ChunkDecoder {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex size line (`value` so far; `ext` once past a `;`).
    #[default]
    Size,
    SizeValue {
        value: u64,
        ext: bool,
    },
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data, expecting CRLF.
    DataEnd,
    /// After the last (zero) chunk: trailer lines until an empty one.
    Trailer {
        line_empty: bool,
    },
    /// The body is complete.
    Done,
}

/// A malformed chunked body.
#[derive(Debug)]
pub struct ChunkError;

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed chunked transfer coding")
    }
}

impl ChunkDecoder {
    /// Whether the terminating zero-size chunk (and trailer) was read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Feeds raw bytes; calls `out` with each run of decoded body bytes.
    pub fn feed<'a>(
        &mut self,
        mut input: &'a [u8],
        mut out: impl FnMut(&'a [u8]),
    ) -> Result<(), ChunkError> {
        while !input.is_empty() {
            match self.state {
                ChunkState::Size => {
                    self.state = ChunkState::SizeValue {
                        value: 0,
                        ext: false,
                    };
                }
                ChunkState::SizeValue { value, ext } => {
                    let b = input[0];
                    input = &input[1..];
                    match b {
                        b'\n' => {
                            self.state = if value == 0 {
                                ChunkState::Trailer { line_empty: true }
                            } else {
                                ChunkState::Data(value)
                            };
                        }
                        b'\r' => {}
                        _ if ext => {}
                        b';' | b' ' | b'\t' => {
                            self.state = ChunkState::SizeValue { value, ext: true };
                        }
                        _ => {
                            let digit = (b as char).to_digit(16).ok_or(ChunkError)?;
                            let value = value
                                .checked_mul(16)
                                .and_then(|v| v.checked_add(u64::from(digit)))
                                .ok_or(ChunkError)?;
                            self.state = ChunkState::SizeValue { value, ext };
                        }
                    }
                }
                ChunkState::Data(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    out(&input[..take]);
                    input = &input[take..];
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    let b = input[0];
                    input = &input[1..];
                    match b {
                        b'\r' => {}
                        b'\n' => self.state = ChunkState::Size,
                        _ => return Err(ChunkError),
                    }
                }
                ChunkState::Trailer { line_empty } => {
                    let b = input[0];
                    input = &input[1..];
                    self.state = match b {
                        b'\r' => ChunkState::Trailer { line_empty },
                        b'\n' if line_empty => ChunkState::Done,
                        b'\n' => ChunkState::Trailer { line_empty: true },
                        _ => ChunkState::Trailer { line_empty: false },
                    };
                }
                ChunkState::Done => return Ok(()),
            }
        }
        Ok(())
    }
}

/// One dispatched SSE event.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// The `id:` field of this frame, when it had one.
    pub id: Option<&'a [u8]>,
    /// The `event:` field, `message` when absent.
    pub event: &'a [u8],
    /// The `data:` lines joined with `\n`.
    pub data: &'a [u8],
}

/// Incremental SSE parser.
#[derive(Debug, Default)]
pub struct SseParser {
    /// An incomplete frame carried over from the previous feed.
    pending: Vec<u8>,
    /// Joined data of multi-line `data:` fields.
    scratch: Vec<u8>,
    /// Comment lines seen (keep-alives).
    pub comments: u64,
    /// The last `retry:` value seen.
    pub retry_ms: Option<u64>,
}

impl SseParser {
    /// Feeds decoded body bytes; calls `on_frame` for each complete event.
    pub fn feed(&mut self, input: &[u8], mut on_frame: impl FnMut(Frame<'_>)) {
        if self.pending.is_empty() {
            let used = parse_frames(
                input,
                &mut self.scratch,
                &mut self.comments,
                &mut self.retry_ms,
                &mut on_frame,
            );
            if used < input.len() {
                self.pending.extend_from_slice(&input[used..]);
            }
        } else {
            self.pending.extend_from_slice(input);
            let pending = std::mem::take(&mut self.pending);
            let used = parse_frames(
                &pending,
                &mut self.scratch,
                &mut self.comments,
                &mut self.retry_ms,
                &mut on_frame,
            );
            self.pending = pending;
            self.pending.drain(..used);
        }
    }

    /// Bytes held for an incomplete frame.
    #[cfg(test)]
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// Parses every complete frame in `buf`; returns the bytes consumed (the
/// start of the first incomplete frame).
fn parse_frames(
    buf: &[u8],
    scratch: &mut Vec<u8>,
    comments: &mut u64,
    retry_ms: &mut Option<u64>,
    on_frame: &mut impl FnMut(Frame<'_>),
) -> usize {
    let mut frame_start = 0;
    let mut pos = 0;
    // Fields of the frame being read: ranges into `buf`.
    let mut id: Option<(usize, usize)> = None;
    let mut event: Option<(usize, usize)> = None;
    let mut data: Option<(usize, usize)> = None;
    let mut multi_data = false;
    // Comments count once their frame is complete (a partial frame is
    // scanned again on the next feed).
    let mut frame_comments = 0;
    while let Some(nl) = memchr(b'\n', &buf[pos..]) {
        let line_end = pos + nl;
        let next = line_end + 1;
        let mut end = line_end;
        if end > pos && buf[end - 1] == b'\r' {
            end -= 1;
        }
        let line = &buf[pos..end];
        if line.is_empty() {
            if let Some((ds, de)) = data {
                let data_slice: &[u8] = if multi_data { scratch } else { &buf[ds..de] };
                on_frame(Frame {
                    id: id.map(|(s, e)| &buf[s..e]),
                    event: event.map_or(b"message".as_slice(), |(s, e)| &buf[s..e]),
                    data: data_slice,
                });
            }
            id = None;
            event = None;
            data = None;
            multi_data = false;
            *comments += frame_comments;
            frame_comments = 0;
            frame_start = next;
        } else if line[0] == b':' {
            frame_comments += 1;
        } else {
            let (name, value_start) = match memchr(b':', line) {
                Some(colon) => {
                    let mut vs = pos + colon + 1;
                    if vs < end && buf[vs] == b' ' {
                        vs += 1;
                    }
                    (&line[..colon], vs)
                }
                None => (line, end),
            };
            let value = (value_start, end);
            match name {
                b"data" => match data {
                    None => data = Some(value),
                    Some((ds, de)) => {
                        if !multi_data {
                            scratch.clear();
                            scratch.extend_from_slice(&buf[ds..de]);
                            multi_data = true;
                        }
                        scratch.push(b'\n');
                        scratch.extend_from_slice(&buf[value.0..value.1]);
                    }
                },
                b"id" => id = Some(value),
                b"event" => event = Some(value),
                b"retry" => {
                    *retry_ms = std::str::from_utf8(&buf[value.0..value.1])
                        .ok()
                        .and_then(|v| v.parse().ok());
                }
                _ => {}
            }
        }
        pos = next;
    }
    frame_start
}

/// The bench's fields in an event payload:
/// `{"bpub":P,"bseq":N,"bts":MICROS,"pad":"x..."}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchFields {
    /// Which publisher sent it.
    pub publisher: u32,
    /// That publisher's sequence number.
    pub seq: u64,
    /// Send time, microseconds since the bench's clock epoch.
    pub sent_us: u64,
}

/// Finds the bench fields in a frame's data (the raw payload for Nchan and
/// Pushpin, the envelope holding it for herald).
pub fn bench_fields(data: &[u8]) -> Option<BenchFields> {
    let finder = finders();
    let start = finder.bpub.find(data)? + b"\"bpub\":".len();
    let (publisher, rest) = parse_uint(&data[start..])?;
    // Fast path: the fields in the order the bench writes them.
    if let Some(rest) = strip_sep(rest, b"\"bseq\":") {
        if let Some((seq, rest)) = parse_uint(rest) {
            if let Some(rest) = strip_sep(rest, b"\"bts\":") {
                if let Some((sent_us, _)) = parse_uint(rest) {
                    return Some(BenchFields {
                        publisher: u32::try_from(publisher).ok()?,
                        seq,
                        sent_us,
                    });
                }
            }
        }
    }
    // Any order (a relay may re-serialize the payload).
    let seq_at = finder.bseq.find(data)? + b"\"bseq\":".len();
    let ts_at = finder.bts.find(data)? + b"\"bts\":".len();
    Some(BenchFields {
        publisher: u32::try_from(publisher).ok()?,
        seq: parse_uint(&data[seq_at..])?.0,
        sent_us: parse_uint(&data[ts_at..])?.0,
    })
}

struct Finders {
    bpub: memchr::memmem::Finder<'static>,
    bseq: memchr::memmem::Finder<'static>,
    bts: memchr::memmem::Finder<'static>,
}

fn finders() -> &'static Finders {
    static FINDERS: std::sync::OnceLock<Finders> = std::sync::OnceLock::new();
    FINDERS.get_or_init(|| Finders {
        bpub: memchr::memmem::Finder::new(b"\"bpub\":"),
        bseq: memchr::memmem::Finder::new(b"\"bseq\":"),
        bts: memchr::memmem::Finder::new(b"\"bts\":"),
    })
}

/// `,` + optional spaces + `key`.
fn strip_sep<'a>(rest: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let rest = skip_ws(rest).strip_prefix(b",")?;
    skip_ws(rest).strip_prefix(key)
}

fn skip_ws(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\n' | b'\r', rest @ ..] = s {
        s = rest;
    }
    s
}

fn parse_uint(s: &[u8]) -> Option<(u64, &[u8])> {
    let s = skip_ws(s);
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let mut value: u64 = 0;
    for &b in &s[..digits] {
        value = value * 10 + u64::from(b - b'0');
    }
    Some((value, &s[digits..]))
}

/// Writes the bench payload of `payload_bytes` bytes (at least the fields).
pub fn write_payload(out: &mut Vec<u8>, fields: BenchFields, payload_bytes: usize) {
    use std::io::Write;
    let start = out.len();
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "{{\"bpub\":{},\"bseq\":{},\"bts\":{},\"pad\":\"",
        fields.publisher, fields.seq, fields.sent_us
    );
    let used = out.len() - start + 2;
    let pad = payload_bytes.saturating_sub(used);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(parser: &mut SseParser, input: &[u8]) -> Vec<(Option<String>, String, String)> {
        let mut out = Vec::new();
        parser.feed(input, |f| {
            out.push((
                f.id.map(|i| String::from_utf8_lossy(i).into_owned()),
                String::from_utf8_lossy(f.event).into_owned(),
                String::from_utf8_lossy(f.data).into_owned(),
            ));
        });
        out
    }

    #[test]
    fn frames_split_anywhere_parse_the_same() {
        let text = b"retry: 3000\n\nid: 01A\nevent: connected\ndata: {\"a\":1}\n\n: keepalive\n\nid: 01B\r\nevent: t.x\r\ndata: one\r\ndata: two\r\n\r\ndata:bare\n\n";
        let mut whole = SseParser::default();
        let expected = collect(&mut whole, text);
        assert_eq!(expected.len(), 3);
        assert_eq!(expected[0].1, "connected");
        assert_eq!(expected[1].2, "one\ntwo");
        assert_eq!(expected[2], (None, "message".into(), "bare".into()));
        assert_eq!(whole.retry_ms, Some(3000));
        assert_eq!(whole.comments, 1);
        for split in 1..text.len() {
            let mut parser = SseParser::default();
            let mut got = collect(&mut parser, &text[..split]);
            got.extend(collect(&mut parser, &text[split..]));
            assert_eq!(got, expected, "split at {split}");
            assert_eq!(parser.pending_len(), 0);
        }
    }

    #[test]
    fn chunked_body_decodes_across_any_split() {
        let raw = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for split in 0..raw.len() {
            let mut decoder = ChunkDecoder::default();
            let mut out = Vec::new();
            decoder
                .feed(&raw[..split], |b| out.extend_from_slice(b))
                .unwrap();
            decoder
                .feed(&raw[split..], |b| out.extend_from_slice(b))
                .unwrap();
            assert_eq!(out, b"hello, world");
            assert!(decoder.is_done());
        }
    }

    #[test]
    fn payload_round_trips_and_has_the_requested_size() {
        let fields = BenchFields {
            publisher: 3,
            seq: 123_456,
            sent_us: 987_654_321,
        };
        let mut payload = Vec::new();
        write_payload(&mut payload, fields, 100);
        assert_eq!(payload.len(), 100);
        assert_eq!(bench_fields(&payload), Some(fields));
        let envelope = format!(
            "{{\"id\":\"01X\",\"type\":\"bench\",\"payload\":{}}}",
            String::from_utf8(payload).unwrap()
        );
        assert_eq!(bench_fields(envelope.as_bytes()), Some(fields));
        let reordered = br#"{"pad":"xx","bts": 5,"bseq":4, "bpub":1}"#;
        assert_eq!(
            bench_fields(reordered),
            Some(BenchFields {
                publisher: 1,
                seq: 4,
                sent_us: 5
            })
        );
    }
}
