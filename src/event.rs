//! Events: validation of published bodies, the stored envelope and its SSE
//! frame, encoded once per event and shared by every subscriber.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use ulid::Ulid;

/// Longest `type` or `source`.
pub const MAX_NAME_LEN: usize = 128;

/// An event as published, validated, before it has an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_type: String,
    pub source: String,
    /// Compact JSON text of the payload, exactly the values sent.
    pub payload: String,
}

/// A committed event with its SSE frame, encoded once.
#[derive(Debug)]
pub struct Event {
    pub id: Ulid,
    pub map_id: Ulid,
    pub event_type: String,
    pub source: String,
    /// `id: ..\nevent: ..\ndata: <envelope>\n\n`.
    frame: Bytes,
    /// Where the envelope JSON and its payload start inside `frame`.
    envelope_start: usize,
    payload_start: usize,
    /// When its commit returned, for an event delivered live (not read
    /// back from the store): the start of its hand-off to the streams.
    committed_at: OnceLock<Instant>,
}

/// Shared handle: hubs, history and sessions pass events by reference count.
pub type SharedEvent = Arc<Event>;

impl Event {
    /// Builds the envelope and frame. `payload` must be compact JSON.
    pub fn new(id: Ulid, map_id: Ulid, event_type: String, source: String, payload: &str) -> Self {
        let id_text = id.to_string();
        let created_at = format_ulid_time(id);
        let mut frame =
            BytesMut::with_capacity(160 + 2 * event_type.len() + source.len() + payload.len());
        frame.put_slice(b"id: ");
        frame.put_slice(id_text.as_bytes());
        frame.put_slice(b"\nevent: ");
        frame.put_slice(event_type.as_bytes());
        frame.put_slice(b"\ndata: ");
        let envelope_start = frame.len();
        // `type` and `source` are validated to need no JSON escaping, and the
        // payload is compact JSON: the envelope is one line by construction.
        frame.put_slice(b"{\"id\":\"");
        frame.put_slice(id_text.as_bytes());
        frame.put_slice(b"\",\"map_id\":\"");
        frame.put_slice(map_id.to_string().as_bytes());
        frame.put_slice(b"\",\"type\":\"");
        frame.put_slice(event_type.as_bytes());
        frame.put_slice(b"\",\"source\":\"");
        frame.put_slice(source.as_bytes());
        frame.put_slice(b"\",\"created_at\":\"");
        frame.put_slice(created_at.as_bytes());
        frame.put_slice(b"\",\"payload\":");
        let payload_start = frame.len();
        frame.put_slice(payload.as_bytes());
        frame.put_slice(b"}\n\n");
        Self {
            id,
            map_id,
            event_type,
            source,
            frame: frame.freeze(),
            envelope_start,
            payload_start,
            committed_at: OnceLock::new(),
        }
    }

    /// Records when its commit returned (once; later calls keep the first).
    pub fn mark_committed(&self, at: Instant) {
        let _ = self.committed_at.set(at);
    }

    /// When its commit returned, if it was marked.
    pub fn committed_at(&self) -> Option<Instant> {
        self.committed_at.get().copied()
    }

    /// The whole SSE frame, ready to write.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The envelope JSON object (for the history endpoint).
    pub fn envelope(&self) -> &[u8] {
        &self.frame[self.envelope_start..self.frame.len() - 2]
    }

    /// The payload's JSON text, as stored.
    pub fn payload(&self) -> &str {
        // Ends before the envelope's closing `}` and the frame's `\n\n`.
        let payload = &self.frame[self.payload_start..self.frame.len() - 3];
        // The payload was put in from a `&str`.
        std::str::from_utf8(payload).unwrap_or("null")
    }
}

/// `created_at` text of an event: the millisecond of its id, RFC 3339 UTC.
pub fn format_ulid_time(id: Ulid) -> String {
    format_millis(id.timestamp_ms())
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-22T10:00:00.123Z`.
pub fn format_millis(ms: u64) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The current time as [`format_millis`] prints it.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an event id as clients send it: 26 Crockford base32 characters,
/// any case. Returns `None` for anything else, surrounding whitespace
/// included (callers that read a header or a query value trim it first).
pub fn parse_ulid(text: &str) -> Option<Ulid> {
    // The first character carries 3 bits: above `7` the value overflows 128 bits.
    if text.len() != ulid::ULID_LEN || !matches!(text.as_bytes()[0], b'0'..=b'7') {
        return None;
    }
    Ulid::from_string(text).ok()
}

/// Whether `name` is a valid `type` (non-empty) or `source` (may be empty).
pub fn is_valid_name(name: &str, allow_empty: bool) -> bool {
    (allow_empty || !name.is_empty())
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Limits a publish body is checked against.
#[derive(Debug, Clone, Copy)]
pub struct PublishLimits {
    pub max_event_bytes: usize,
    pub max_batch: usize,
}

/// Why a publish body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidEvent(String),
    #[error("{0}")]
    TooLarge(String),
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    event_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    source: Option<&'a RawValue>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// Parses a publish body: one event object or an array of them,
/// all-or-nothing. Envelope fields (`id`, `map_id`, `created_at`) are ignored.
///
/// # Errors
/// The first problem found, naming the field and the array index.
pub fn parse_publish_body(
    body: &[u8],
    limits: PublishLimits,
) -> Result<Vec<NewEvent>, PublishError> {
    let root: &RawValue =
        serde_json::from_slice(body).map_err(|e| PublishError::InvalidJson(e.to_string()))?;
    let text = root.get();
    if text.starts_with('[') {
        let items: Vec<&RawValue> =
            serde_json::from_str(text).map_err(|e| PublishError::InvalidJson(e.to_string()))?;
        if items.is_empty() {
            return Err(PublishError::InvalidEvent(
                "the event array is empty".into(),
            ));
        }
        if items.len() > limits.max_batch {
            return Err(PublishError::TooLarge(format!(
                "{} events in one request, over the limit of {}",
                items.len(),
                limits.max_batch
            )));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| parse_one(item, &format!("events[{i}]"), limits))
            .collect()
    } else {
        Ok(vec![parse_one(root, "event", limits)?])
    }
}

fn parse_one(raw: &RawValue, at: &str, limits: PublishLimits) -> Result<NewEvent, PublishError> {
    let invalid = |msg: String| PublishError::InvalidEvent(msg);
    if !raw.get().starts_with('{') {
        return Err(invalid(format!("{at}: must be a JSON object")));
    }
    let fields: RawEvent<'_> =
        serde_json::from_str(raw.get()).map_err(|e| invalid(format!("{at}: {e}")))?;
    let event_type = match fields.event_type {
        None => return Err(invalid(format!("{at}.type: required"))),
        Some(v) => serde_json::from_str::<String>(v.get())
            .map_err(|_| invalid(format!("{at}.type: must be a string")))?,
    };
    if !is_valid_name(&event_type, false) {
        return Err(invalid(format!(
            "{at}.type: must be 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 _ . : -"
        )));
    }
    let source = match fields.source {
        None => String::new(),
        Some(v) => serde_json::from_str::<String>(v.get())
            .map_err(|_| invalid(format!("{at}.source: must be a string")))?,
    };
    if !is_valid_name(&source, true) {
        return Err(invalid(format!(
            "{at}.source: must be 0-{MAX_NAME_LEN} characters of A-Z a-z 0-9 _ . : -"
        )));
    }
    let payload = fields
        .payload
        .map_or_else(|| "null".to_owned(), |p| compact_json(p.get()));
    if payload.len() > limits.max_event_bytes {
        return Err(PublishError::TooLarge(format!(
            "{at}.payload: {} bytes serialized, over the limit of {}",
            payload.len(),
            limits.max_event_bytes
        )));
    }
    Ok(NewEvent {
        event_type,
        source,
        payload,
    })
}

/// Removes the insignificant whitespace of valid JSON text, keeping every
/// value byte for byte (numbers and escapes are not re-encoded).
pub fn compact_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PublishLimits = PublishLimits {
        max_event_bytes: 64,
        max_batch: 3,
    };

    fn parse(body: &str) -> Result<Vec<NewEvent>, PublishError> {
        parse_publish_body(body.as_bytes(), LIMITS)
    }

    #[test]
    fn frame_is_byte_exact() {
        let id = Ulid::from_parts(1_700_000_000_123, 7);
        let map = Ulid::from_parts(1, 1);
        let ev = Event::new(id, map, "a.b".into(), "src".into(), "{\"k\":[1,2]}");
        let expected = format!(
            "id: {id}\nevent: a.b\ndata: {{\"id\":\"{id}\",\"map_id\":\"{map}\",\"type\":\"a.b\",\
             \"source\":\"src\",\"created_at\":\"2023-11-14T22:13:20.123Z\",\"payload\":{{\"k\":[1,2]}}}}\n\n"
        );
        assert_eq!(std::str::from_utf8(ev.frame()).unwrap(), expected);
        let envelope: serde_json::Value = serde_json::from_slice(ev.envelope()).unwrap();
        assert_eq!(envelope["payload"]["k"][1], 2);
        assert_eq!(ev.payload(), "{\"k\":[1,2]}");
    }

    #[test]
    fn single_and_array_bodies() {
        let one = parse(r#"{"type":"a.b","payload":{"x": 1}}"#).unwrap();
        assert_eq!(one[0].payload, r#"{"x":1}"#);
        assert_eq!(one[0].source, "");
        let many = parse(r#"[{"type":"a","source":"s"},{"type":"b","payload":null}]"#).unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!(many[0].payload, "null");
    }

    #[test]
    fn payload_text_round_trips_exactly() {
        let body = "{\"type\":\"t\",\"payload\":{\"n\": 1.50e3, \"big\": 123456789012345678901234567890, \"s\": \"a b\\u0000\\n\\\"\"}}";
        let limits = PublishLimits {
            max_event_bytes: 1000,
            max_batch: 1,
        };
        let ev = &parse_publish_body(body.as_bytes(), limits).unwrap()[0];
        assert_eq!(
            ev.payload,
            "{\"n\":1.50e3,\"big\":123456789012345678901234567890,\"s\":\"a b\\u0000\\n\\\"\"}"
        );
    }

    #[test]
    fn refuses_bad_events_naming_field_and_index() {
        let err = |b: &str| parse(b).unwrap_err().to_string();
        assert!(err(r#"[{"type":"ok"},{"type":"has space"}]"#).contains("events[1].type"));
        assert!(err(r#"{"type":"a\nb"}"#).contains("event.type"));
        assert!(err(r#"{"source":"x"}"#).contains("type: required"));
        assert!(err(r#"{"type":5}"#).contains("must be a string"));
        assert!(err(r#"{"type":"a","source":"b c"}"#).contains("source"));
        assert!(err("[1]").contains("events[0]: must be a JSON object"));
        assert!(err("\"text\"").contains("must be a JSON object"));
        assert_eq!(
            parse("[]").unwrap_err(),
            PublishError::InvalidEvent("the event array is empty".into())
        );
        assert!(matches!(parse("{"), Err(PublishError::InvalidJson(_))));
        assert!(matches!(parse(""), Err(PublishError::InvalidJson(_))));
        let long = "x".repeat(129);
        assert!(err(&format!(r#"{{"type":"{long}"}}"#)).contains("type"));
    }

    #[test]
    fn size_limits_are_413() {
        let big = format!(r#"{{"type":"a","payload":"{}"}}"#, "x".repeat(80));
        assert!(matches!(parse(&big), Err(PublishError::TooLarge(_))));
        let many = r#"[{"type":"a"},{"type":"a"},{"type":"a"},{"type":"a"}]"#;
        assert!(matches!(parse(many), Err(PublishError::TooLarge(_))));
    }

    #[test]
    fn envelope_fields_from_publishers_are_ignored() {
        let ev = parse(r#"{"type":"a","id":"X","map_id":"Y","created_at":"Z"}"#).unwrap();
        assert_eq!(ev[0].event_type, "a");
    }

    #[test]
    fn ulid_parsing_ignores_case_and_refuses_garbage() {
        let id = Ulid::from_parts(123, 456);
        assert_eq!(parse_ulid(&id.to_string().to_lowercase()), Some(id));
        assert_eq!(parse_ulid("00000000000000000000000000"), Some(Ulid::nil()));
        assert_eq!(parse_ulid("8ZZZZZZZZZZZZZZZZZZZZZZZZZ"), None);
        assert_eq!(parse_ulid("short"), None);
        assert_eq!(parse_ulid("0000000000000000000000000U"), None);
        assert_eq!(parse_ulid("ééééééééééééé"), None);
    }

    /// Found by the Last-Event-ID property test (tests/properties.rs): ids
    /// padded with any Unicode whitespace were accepted, so a path such as
    /// `/api/admin/connections/%2001J...` named the same connection.
    #[test]
    fn ulid_parsing_refuses_surrounding_whitespace() {
        let id = Ulid::from_parts(123, 456).to_string();
        for padded in [
            format!(" {id}"),
            format!("{id}\t"),
            format!("\u{3000}{id}"),
            format!("{id}\u{a0}"),
        ] {
            assert_eq!(parse_ulid(&padded), None, "{padded:?}");
        }
        assert!(parse_ulid(&id).is_some());
    }
}
