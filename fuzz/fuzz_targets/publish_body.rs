//! Arbitrary bytes as a publish body: `parse_publish_body` never panics and
//! decides exactly as the SPEC's rules (`reference::ref_publish`) do: same
//! outcome, same array index; every accepted event has a valid type and
//! source, and its payload is the compact form of the payload sent, parses
//! to the same JSON value and fits the limit.

#![no_main]

use herald::event::{compact_json, is_valid_name, parse_publish_body, PublishError, PublishLimits};
use herald_fuzz::reference::{self, RefPublish};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;

/// JSON text to a value, with no recursion limit (herald accepts any
/// depth). `Err` only for numbers beyond `f64` (valid JSON, e.g. `1e400`,
/// which herald keeps as text and `serde_json` cannot hold).
fn value(text: &str) -> Result<Value, ()> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let parsed = Value::deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(v) => Ok(v),
        Err(e) if e.to_string().starts_with("number out of range") => Err(()),
        Err(e) => panic!("{text:?} is not JSON: {e}"),
    }
}

/// Whether an error message names the place the reference blames.
fn names(msg: &str, at: Option<usize>, array: bool) -> bool {
    match (at, array) {
        (None, _) => !msg.starts_with("event"),
        (Some(i), true) => msg.starts_with(&format!("events[{i}]")),
        (Some(_), false) => msg.starts_with("event") && !msg.starts_with("events"),
    }
}

/// Puts the fuzzed bytes where a mode says: the whole body, or one field's
/// value inside an otherwise valid body (so that mutations of any JSON value
/// reach the payload, type and source checks).
fn assemble(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let (before, after): (&[u8], &[u8]) = match mode {
        0 => return bytes.to_vec(),
        1 => (br#"{"type":"a.b","payload":"#, b"}"),
        2 => (
            br#"[{"type":"a"},{"source":"s","type":"b","payload":"#,
            b"}]",
        ),
        _ => (br#"[{"payload":[1, {}],"type":"#, br#","source":"src"}]"#),
    };
    [before, bytes, after].concat()
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose the limits, so that both sides of each
    // limit are reached with small inputs, and where the rest goes.
    let [a, b, rest @ ..] = data else { return };
    let max_event_bytes = usize::from(*a) * 4;
    let max_batch = usize::from(*b % 8) + 1;
    let body = &assemble(*b >> 3 & 3, rest)[..];
    let limits = PublishLimits {
        max_event_bytes,
        max_batch,
    };
    let got = parse_publish_body(body, limits);
    let want = reference::ref_publish(body, max_event_bytes, max_batch);
    let array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    match (&got, &want) {
        (Ok(events), RefPublish::Accepted(expected)) => {
            assert_eq!(events.len(), expected.len());
            for (event, sent) in events.iter().zip(expected) {
                assert!(is_valid_name(&event.event_type, false));
                assert!(reference::valid_type(&event.event_type));
                assert!(reference::valid_source(&event.source));
                assert_eq!(event.event_type, sent.event_type);
                assert_eq!(event.source, sent.source);
                assert!(event.payload.len() <= max_event_bytes);
                // Exactly the text sent, less insignificant whitespace.
                assert_eq!(event.payload, reference::ref_compact(&sent.payload_raw));
                assert!(!event.payload.contains(['\n', '\r']));
                assert_eq!(compact_json(&event.payload), event.payload);
                assert_eq!(value(&event.payload), value(&sent.payload_raw));
            }
        }
        (Err(PublishError::InvalidJson(_)), RefPublish::InvalidJson) => {}
        (Err(PublishError::InvalidEvent(msg)), RefPublish::InvalidEvent(at))
        | (Err(PublishError::TooLarge(msg)), RefPublish::TooLarge(at)) => {
            assert!(names(msg, *at, array), "{msg:?} does not name {at:?}");
        }
        _ => panic!(
            "herald: {got:?}; the spec: {want:?}; body {:?}",
            String::from_utf8_lossy(body)
        ),
    }
});
