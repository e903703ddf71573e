//! Reference models written from `SPEC.md`, independently of herald's own
//! code, for the property tests (`tests/properties.rs`) and the fuzz targets
//! (`fuzz/`, which include this file by path). Each function here answers
//! "what does the contract say" so that herald's answer can be compared.

use std::task::{Context, Poll, Waker};

use eventsource_stream::{Event, Eventsource};
use futures_util::stream::{self, StreamExt};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Longest `type`, `source` or event pattern (SPEC: 1–128 characters).
pub const NAME_MAX: usize = 128;
/// Most `events=` patterns or `sources=` entries (SPEC: at most 64).
pub const ENTRIES_MAX: usize = 64;

/// `[A-Za-z0-9_.:-]`
fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
}

/// SPEC: `type` is 1–128 chars of `[A-Za-z0-9_.:-]`.
pub fn valid_type(s: &str) -> bool {
    (1..=NAME_MAX).contains(&s.len()) && s.bytes().all(name_byte)
}

/// SPEC: `source` is 0–128 chars of the same set.
pub fn valid_source(s: &str) -> bool {
    s.len() <= NAME_MAX && s.bytes().all(name_byte)
}

// ---------------------------------------------------------------- filters

/// A filter as the SPEC's grammar describes it: patterns as lists of
/// segments (`None` for `*`), sources as exact strings.
#[derive(Debug, Clone)]
pub struct RefFilter {
    pub patterns: Vec<Vec<Option<String>>>,
    pub sources: Vec<String>,
}

/// Comma list: spaces around commas and empty entries are ignored.
fn ref_entries(list: Option<&str>) -> Option<Vec<&str>> {
    let entries: Vec<&str> = list
        .unwrap_or("")
        .split(',')
        .map(|e| e.trim_matches(char::is_whitespace))
        .filter(|e| !e.is_empty())
        .collect();
    (entries.len() <= ENTRIES_MAX).then_some(entries)
}

/// One pattern: dot-separated segments, each `[A-Za-z0-9_:-]+` or `*`.
/// A pattern longer than a type can be never matches anything, so herald
/// refuses it (documented bound); the reference does the same.
fn ref_pattern(text: &str) -> Option<Vec<Option<String>>> {
    if text.len() > NAME_MAX {
        return None;
    }
    text.split('.')
        .map(|seg| {
            if seg == "*" {
                Some(None)
            } else if !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'))
            {
                Some(Some(seg.to_owned()))
            } else {
                None
            }
        })
        .collect()
}

impl RefFilter {
    /// `None` where the SPEC says 400 `INVALID_FILTER`.
    pub fn parse(events: Option<&str>, sources: Option<&str>) -> Option<Self> {
        let patterns = ref_entries(events)?
            .into_iter()
            .map(ref_pattern)
            .collect::<Option<Vec<_>>>()?;
        let sources = ref_entries(sources)?
            .into_iter()
            .map(|s| valid_type(s).then(|| s.to_owned()))
            .collect::<Option<Vec<_>>>()?;
        Some(Self { patterns, sources })
    }

    /// Whether an event of this type and source is delivered.
    pub fn matches(&self, event_type: &str, source: &str) -> bool {
        let parts: Vec<&str> = event_type.split('.').collect();
        (self.patterns.is_empty() || self.patterns.iter().any(|p| segments_match(p, &parts)))
            && (self.sources.is_empty() || self.sources.iter().any(|s| s == source))
    }
}

/// `*` matches exactly one segment, except as the last segment, where it
/// matches one or more.
fn segments_match(pattern: &[Option<String>], parts: &[&str]) -> bool {
    match (pattern.split_first(), parts.split_first()) {
        (None, None) => true,
        (None, Some(_)) | (Some(_), None) => false,
        (Some((None, [])), Some(_)) => true,
        (Some((None, rest)), Some((_, tail))) => segments_match(rest, tail),
        (Some((Some(lit), rest)), Some((part, tail))) => lit == part && segments_match(rest, tail),
    }
}

// ----------------------------------------------------------- event ids

/// Crockford base32, the ULID alphabet (no I, L, O, U).
pub const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// SPEC: a Last-Event-ID is a ULID: exactly 26 Crockford characters, any
/// case; the first is 0–7 (128 bits). Returns its value.
pub fn ref_ulid(text: &str) -> Option<u128> {
    let bytes = text.as_bytes();
    if bytes.len() != 26 || !(b'0'..=b'7').contains(&bytes[0]) {
        return None;
    }
    bytes.iter().try_fold(0u128, |acc, &c| {
        let digit = CROCKFORD
            .iter()
            .position(|&a| a == c.to_ascii_uppercase())?;
        Some(acc << 5 | digit as u128)
    })
}

// ------------------------------------------------------------------ SSE

/// One event as an EventSource dispatches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: String,
    pub event: String,
    pub data: String,
}

/// A minimal parser following the HTML standard's "interpreting an event
/// stream": lines end in CRLF, LF or CR; a blank line dispatches; `:` starts
/// a comment; one space after the colon is dropped; `data` lines join with
/// LF; an event with empty data is not dispatched; a trailing incomplete
/// event is dropped. `None` if the bytes are not UTF-8.
pub fn parse_sse(bytes: &[u8]) -> Option<Vec<SseEvent>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut events = Vec::new();
    let (mut last_id, mut event, mut data) = (String::new(), String::new(), String::new());
    let mut rest = text;
    while let Some(end) = rest.find(['\r', '\n']) {
        let line = &rest[..end];
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
        if line.is_empty() {
            if !data.is_empty() {
                data.pop(); // the trailing LF
                events.push(SseEvent {
                    id: last_id.clone(),
                    event: if event.is_empty() {
                        "message".to_owned()
                    } else {
                        event.clone()
                    },
                    data: std::mem::take(&mut data),
                });
            }
            data.clear();
            event.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => value.clone_into(&mut event),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => value.clone_into(&mut last_id),
            _ => {}
        }
    }
    Some(events)
}

// ------------------------------------------------------- publish bodies

/// What the SPEC says about a publish body.
#[derive(Debug)]
pub enum RefPublish {
    /// 201 with these events, in order.
    Accepted(Vec<RefEvent>),
    /// 400 `INVALID_JSON`.
    InvalidJson,
    /// 400 `INVALID_EVENT` at this array index (`None`: the body as a whole,
    /// an empty array).
    InvalidEvent(Option<usize>),
    /// 413 at this array index (`None`: the batch is over the limit).
    TooLarge(Option<usize>),
}

/// An accepted event with its payload exactly as sent.
#[derive(Debug)]
pub struct RefEvent {
    pub event_type: String,
    pub source: String,
    /// The payload's JSON text as sent (whitespace included); `null` when
    /// absent.
    pub payload_raw: String,
}

/// A JSON value seen one level deep: arrays and objects keep their members
/// as raw text; no recursion limit applies.
enum Node {
    Array(Vec<Box<RawValue>>),
    Object(Vec<(String, Box<RawValue>)>),
    Scalar,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Node::Object(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// A valid JSON text seen one level deep. Scalars are not decoded (a
/// number beyond `f64` is still a scalar).
fn node(json: &[u8]) -> Node {
    match json.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[' | b'{') => serde_json::from_slice(json).expect("valid JSON"),
        _ => Node::Scalar,
    }
}

/// Removes JSON whitespace outside strings, byte by byte.
pub fn ref_compact(json: &str) -> String {
    let bytes = json.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            out.push(b);
            if b == b'\\' {
                // An escape is two bytes (`\uXXXX` continues as plain bytes).
                out.push(bytes[i + 1]);
                i += 1;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push(b);
        }
        i += 1;
    }
    String::from_utf8(out).expect("compaction keeps UTF-8")
}

/// The SPEC's rules for a publish body, in herald's documented order of
/// checks: JSON, then the shape, then the batch size, then each event in
/// order (type, source, payload size); the first problem decides.
pub fn ref_publish(body: &[u8], max_event_bytes: usize, max_batch: usize) -> RefPublish {
    // JSON text is UTF-8 (RFC 8259 §8.1) and its grammar puts no bound on
    // numbers (`1e400` is valid JSON): `IgnoredAny` checks the grammar alone.
    let Ok(text) = std::str::from_utf8(body) else {
        return RefPublish::InvalidJson;
    };
    if serde_json::from_str::<de::IgnoredAny>(text).is_err() {
        return RefPublish::InvalidJson;
    }
    let items: Vec<(Option<usize>, Node)> = match node(body) {
        Node::Array(items) => {
            if items.is_empty() {
                return RefPublish::InvalidEvent(None);
            }
            if items.len() > max_batch {
                return RefPublish::TooLarge(None);
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| (Some(i), node(item.get().as_bytes())))
                .collect()
        }
        node => vec![(None, node)],
    };
    let mut events = Vec::with_capacity(items.len());
    for (index, node) in items {
        let at = index.unwrap_or(0);
        let Node::Object(fields) = node else {
            return RefPublish::InvalidEvent(Some(at));
        };
        // Each known field at most once; `null` counts as absent.
        let mut known: [Option<&str>; 3] = [None; 3];
        let mut seen = [0; 3];
        for (key, value) in &fields {
            let slot = match key.as_str() {
                "type" => 0,
                "source" => 1,
                "payload" => 2,
                _ => continue,
            };
            seen[slot] += 1;
            if value.get() != "null" {
                known[slot] = Some(value.get());
            }
        }
        if seen.iter().any(|&n| n > 1) {
            return RefPublish::InvalidEvent(Some(at));
        }
        let event_type = match known[0].map(serde_json::from_str::<String>) {
            Some(Ok(t)) if valid_type(&t) => t,
            _ => return RefPublish::InvalidEvent(Some(at)),
        };
        let source = match known[1].map(serde_json::from_str::<String>) {
            None => String::new(),
            Some(Ok(s)) if valid_source(&s) => s,
            Some(_) => return RefPublish::InvalidEvent(Some(at)),
        };
        let payload_raw = known[2].unwrap_or("null").to_owned();
        if ref_compact(&payload_raw).len() > max_event_bytes {
            return RefPublish::TooLarge(Some(at));
        }
        events.push(RefEvent {
            event_type,
            source,
            payload_raw,
        });
    }
    RefPublish::Accepted(events)
}

/// Parses `bytes`, delivered in chunks cut at `cuts` (byte offsets, any
/// order), with the `eventsource-stream` crate. `None` on a parse error.
pub fn eventsource_parse(bytes: &[u8], cuts: &[usize]) -> Option<Vec<Event>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.push(0);
    cuts.push(bytes.len());
    cuts.sort_unstable();
    cuts.dedup();
    let chunks: Vec<Result<Vec<u8>, std::convert::Infallible>> = cuts
        .windows(2)
        .map(|w| Ok(bytes[w[0]..w[1]].to_vec()))
        .collect();
    let mut events = stream::iter(chunks).eventsource();
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match events.poll_next_unpin(&mut cx) {
            Poll::Ready(Some(Ok(event))) => out.push(event),
            Poll::Ready(Some(Err(_))) => return None,
            Poll::Ready(None) => return Some(out),
            Poll::Pending => unreachable!("an in-memory stream is always ready"),
        }
    }
}
