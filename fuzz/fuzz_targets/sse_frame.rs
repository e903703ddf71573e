//! Arbitrary valid events: the SSE frame `Event::new(..).frame()` encodes
//! parses back, with two independent parsers (the `eventsource-stream`
//! crate, fed in arbitrary chunks, and the reference parser written from the
//! HTML standard), to exactly one event with the same id and event name and
//! `envelope()` as data; the data line has no raw newline; the envelope is
//! JSON whose fields and payload are the ones given.

#![no_main]

use arbitrary::Arbitrary;
use herald::event::{compact_json, format_ulid_time, Event};
use herald_fuzz::{eventsource_parse, reference};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Number, Value};
use ulid::Ulid;

#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Int(i) => Value::from(*i),
            Json::Uint(u) => Value::from(*u),
            Json::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Json::Str(s) => Value::String(s.clone()),
            Json::Array(items) => Value::Array(items.iter().map(Json::value).collect()),
            Json::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value()))
                    .collect::<Map<_, _>>(),
            ),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Payload {
    /// Any text that is JSON, compacted as publishing does.
    Text(String),
    /// A generated value, serialized.
    Value(Json),
}

#[derive(Arbitrary, Debug)]
struct Input {
    id: u128,
    map_id: u128,
    event_type: Vec<u8>,
    source: Vec<u8>,
    payload: Payload,
    cuts: Vec<usize>,
}

const NAME: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-";

fn name(bytes: &[u8], min: usize) -> String {
    let mut s: String = bytes
        .iter()
        .take(128)
        .map(|b| char::from(NAME[usize::from(*b) % NAME.len()]))
        .collect();
    while s.len() < min {
        s.push('e');
    }
    s
}

/// JSON to a value, no recursion limit; `None` for invalid JSON and for
/// numbers beyond `f64` (valid JSON that `serde_json` cannot hold).
fn value(text: &[u8]) -> Option<Value> {
    let mut de = serde_json::Deserializer::from_slice(text);
    de.disable_recursion_limit();
    let v = Value::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(v)
}

fuzz_target!(|input: Input| {
    let payload = match &input.payload {
        Payload::Text(text) if serde_json::from_str::<IgnoredAny>(text).is_ok() => {
            compact_json(text)
        }
        Payload::Text(_) => return,
        Payload::Value(json) => serde_json::to_string(&json.value()).unwrap(),
    };
    let event_type = name(&input.event_type, 1);
    let source = name(&input.source, 0);
    assert!(reference::valid_type(&event_type) && reference::valid_source(&source));
    let (id, map_id) = (Ulid(input.id), Ulid(input.map_id));
    let event = Event::new(id, map_id, event_type.clone(), source.clone(), &payload);
    let frame = event.frame();

    // The data line is one line.
    let data_at = frame
        .windows(7)
        .position(|w| w == b"\ndata: ")
        .expect("a data line")
        + 7;
    assert!(frame.ends_with(b"\n\n"));
    let data_line = &frame[data_at..frame.len() - 2];
    assert!(!data_line.contains(&b'\n') && !data_line.contains(&b'\r'));
    assert_eq!(data_line, event.envelope());

    // Two independent parsers read back one event, unchanged.
    let parsed = reference::parse_sse(frame).expect("UTF-8 frame");
    assert_eq!(parsed.len(), 1, "{parsed:?}");
    assert_eq!(parsed[0].id, id.to_string());
    assert_eq!(parsed[0].event, event_type);
    assert_eq!(parsed[0].data.as_bytes(), event.envelope());
    let crate_parsed = eventsource_parse(frame, &input.cuts).expect("eventsource-stream parses");
    assert_eq!(crate_parsed.len(), 1, "{crate_parsed:?}");
    assert_eq!(crate_parsed[0].id, id.to_string());
    assert_eq!(crate_parsed[0].event, event_type);
    assert_eq!(crate_parsed[0].data.as_bytes(), event.envelope());

    // The envelope is JSON with the given fields and payload.
    assert_eq!(event.payload(), payload);
    let Some(envelope) = value(event.envelope()) else {
        // Only when the payload holds a number beyond f64.
        serde_json::from_slice::<IgnoredAny>(event.envelope()).expect("envelope is JSON");
        assert!(value(payload.as_bytes()).is_none());
        return;
    };
    let fields = envelope.as_object().expect("an object");
    let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
    let mut expected_keys = ["id", "map_id", "type", "source", "created_at", "payload"];
    expected_keys.sort_unstable();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected_keys);
    assert_eq!(fields["id"], id.to_string().as_str());
    assert_eq!(fields["map_id"], map_id.to_string().as_str());
    assert_eq!(fields["type"], event_type.as_str());
    assert_eq!(fields["source"], source.as_str());
    assert_eq!(fields["created_at"], format_ulid_time(id).as_str());
    assert_eq!(fields["payload"], value(payload.as_bytes()).unwrap());
});
