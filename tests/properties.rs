//! Property tests of the parsers and the frame encoder against the reference
//! models written from the SPEC (`tests/reference`), the same properties the
//! fuzz targets in `fuzz/` check for millions of inputs (see RELIABILITY.md):
//!
//! - publish bodies: herald decides as the SPEC's rules do (outcome and array
//!   index); accepted payloads are the compact text sent and parse to the
//!   same value within the limit;
//! - filters: accepted exactly per the grammar, matching as the reference;
//! - Last-Event-ID: exactly 26 Crockford characters, any case, first 0–7;
//! - SSE frames: two independent parsers read back the same id, event name
//!   and envelope, on one data line.

mod reference;

use herald::event::{
    compact_json, format_ulid_time, parse_publish_body, parse_ulid, Event, PublishError,
    PublishLimits,
};
use herald::filter::Filter;
use proptest::prelude::*;
use reference::{RefFilter, RefPublish};
use serde_json::Value;
use ulid::Ulid;

// ------------------------------------------------------------ generators

/// Insignificant JSON whitespace.
fn ws() -> impl Strategy<Value = String> {
    "[ \t\r\n]{0,2}"
}

/// A JSON string literal, with escapes of every kind.
fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        "[a-z \\u{e9}\\u{2028}\\u{1f600}]{0,8}".prop_map(|s| format!("\"{s}\"")),
        Just(r#""\u0000\n\"\\\/\b\f\r\t\u00e9\ud83d\ude00""#.to_owned()),
    ]
}

/// JSON text with random whitespace and number forms kept as written.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        "-?(0|[1-9][0-9]{0,30})(\\.[0-9]{1,5})?([eE][+-]?[0-9]{1,3})?",
        json_string(),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec((ws(), inner.clone(), ws()), 0..6).prop_map(|items| {
                let items: Vec<String> = items.into_iter().map(|(a, v, b)| a + &v + &b).collect();
                format!("[{}]", items.join(","))
            }),
            prop::collection::vec((ws(), json_string(), ws(), ws(), inner), 0..6).prop_map(
                |fields| {
                    let fields: Vec<String> = fields
                        .into_iter()
                        .map(|(a, k, b, c, v)| format!("{a}{k}{b}:{c}{v}"))
                        .collect();
                    format!("{{{}}}", fields.join(","))
                }
            ),
        ]
    })
}

/// Names for `type` and `source`: mostly valid, sometimes not.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        16 => "[A-Za-z0-9_.:-]{1,12}",
        1 => "[A-Za-z0-9_.:-]{127,129}",
        1 => Just(String::new()),
        1 => "[a-z]{1,3}[ \n/\"\\u{e9}][a-z]{0,3}",
    ]
}

/// One event object as text, fields in any order, some missing, repeated
/// or wrong.
fn event_object() -> BoxedStrategy<String> {
    let field = |key: &'static str, p: f64, value: BoxedStrategy<String>| {
        prop::option::weighted(p, value).prop_map(move |v| v.map(|v| format!("\"{key}\":{v}")))
    };
    let name_value = || {
        prop_oneof![
            16 => name().prop_map(|n| serde_json::to_string(&n).unwrap()),
            1 => Just("null".to_owned()),
            1 => Just("5".to_owned()),
        ]
        .boxed()
    };
    (
        field("type", 0.97, name_value()),
        field("source", 0.7, name_value()),
        field("payload", 0.85, json_text().boxed()),
        field("id", 0.2, json_string().boxed()),
        prop::bool::weighted(0.02),
        ws(),
    )
        .prop_flat_map(|(t, s, p, id, repeat, space)| {
            let mut fields: Vec<String> = [t, s, p, id].into_iter().flatten().collect();
            if repeat {
                if let Some(first) = fields.first().cloned() {
                    fields.push(first);
                }
            }
            Just(fields)
                .prop_shuffle()
                .prop_map(move |f| format!("{{{space}{}}}", f.join(",")))
        })
        .boxed()
}

/// Publish bodies: one event, an array of them, other JSON, or a cut body.
fn body() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => event_object(),
        4 => prop::collection::vec(event_object(), 0..5)
            .prop_map(|events| format!("[{}]", events.join(","))),
        1 => json_text(),
        1 => (event_object(), any::<prop::sample::Index>())
            .prop_map(|(body, cut)| {
                let mut end = cut.index(body.len());
                while !body.is_char_boundary(end) {
                    end -= 1;
                }
                body[..end].to_owned()
            }),
    ]
}

/// Whether two JSON texts hold the same value. Numbers beyond `f64` (such
/// as `1e400`) are valid JSON that herald keeps as text but `serde_json`
/// cannot hold: two texts both refused for that count as the same here, and
/// the callers compare the texts themselves as well.
fn same_json(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<Value>(a),
        serde_json::from_str::<Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        (Err(a), Err(b)) => {
            a.to_string().contains("number out of range")
                && b.to_string().contains("number out of range")
        }
        _ => false,
    }
}

// ------------------------------------------------------- publish bodies

proptest! {
    #[test]
    fn publish_body_follows_the_spec(
        body in body(),
        max_event_bytes in 0usize..300,
        max_batch in 1usize..6,
    ) {
        let limits = PublishLimits { max_event_bytes, max_batch };
        let got = parse_publish_body(body.as_bytes(), limits);
        let want = reference::ref_publish(body.as_bytes(), max_event_bytes, max_batch);
        let array = body.trim_start().starts_with('[');
        match (&got, &want) {
            (Ok(events), RefPublish::Accepted(sent)) => {
                prop_assert_eq!(events.len(), sent.len());
                for (event, sent) in events.iter().zip(sent) {
                    prop_assert!(reference::valid_type(&event.event_type));
                    prop_assert!(reference::valid_source(&event.source));
                    prop_assert_eq!(&event.event_type, &sent.event_type);
                    prop_assert_eq!(&event.source, &sent.source);
                    prop_assert!(event.payload.len() <= max_event_bytes);
                    prop_assert_eq!(&event.payload, &reference::ref_compact(&sent.payload_raw));
                    prop_assert!(!event.payload.contains(['\n', '\r']));
                    prop_assert!(same_json(&event.payload, &sent.payload_raw));
                }
            }
            (Err(PublishError::InvalidJson(_)), RefPublish::InvalidJson) => {}
            (Err(PublishError::InvalidEvent(msg)), RefPublish::InvalidEvent(at))
            | (Err(PublishError::TooLarge(msg)), RefPublish::TooLarge(at)) => {
                let named = match (at, array) {
                    (None, _) => !msg.starts_with("event"),
                    (Some(i), true) => msg.starts_with(&format!("events[{i}]")),
                    (Some(_), false) => msg.starts_with("event") && !msg.starts_with("events"),
                };
                prop_assert!(named, "{:?} does not name {:?}", msg, at);
            }
            _ => prop_assert!(false, "herald {:?}, spec {:?}", got, want),
        }
    }

    #[test]
    fn payload_limit_is_exact(payload in json_text(), slack in -2i64..=2) {
        let compact = compact_json(&payload);
        let limit = usize::try_from(compact.len() as i64 + slack).unwrap_or(0);
        let body = format!(r#"{{"type":"t","payload":{payload}}}"#);
        let limits = PublishLimits { max_event_bytes: limit, max_batch: 1 };
        let got = parse_publish_body(body.as_bytes(), limits);
        if compact.len() <= limit {
            prop_assert_eq!(&got.unwrap()[0].payload, &compact);
        } else {
            prop_assert!(matches!(got, Err(PublishError::TooLarge(_))));
        }
    }

    #[test]
    fn compact_json_keeps_the_value(text in json_text()) {
        let compact = compact_json(&text);
        prop_assert_eq!(&compact, &reference::ref_compact(&text));
        prop_assert!(same_json(&compact, &text));
        prop_assert_eq!(compact_json(&compact), compact);
    }
}

// --------------------------------------------------------------- filters

fn entry_list(segments: &'static [&'static str]) -> impl Strategy<Value = String> {
    let entry =
        prop::collection::vec(prop::sample::select(segments), 1..4).prop_map(|segs| segs.join("."));
    prop::collection::vec((entry, "[ ]{0,1}", "[ ]{0,1}"), 0..5).prop_map(|entries| {
        entries
            .into_iter()
            .map(|(e, a, b)| a + &e + &b)
            .collect::<Vec<_>>()
            .join(",")
    })
}

fn filter_value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        8 => entry_list(&["*", "*", "a", "b", "ab", "x-y", "c:d", "_"]).prop_map(Some),
        1 => entry_list(&["", "a b", "**", "a*", "\u{e9}", "a"]).prop_map(Some),
        1 => Just(None),
        1 => any::<String>().prop_map(Some),
        1 => Just(Some(vec!["a"; 65].join(","))),
        1 => Just(Some(vec!["a"; 64].join(","))),
        1 => Just(Some(format!("a.{}", "b".repeat(127)))),
    ]
}

fn source_value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        4 => entry_list(&["s1", "s2", "svc.a", "x"]).prop_map(Some),
        1 => Just(None),
        1 => any::<String>().prop_map(Some),
    ]
}

fn event_type() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(&["a", "b", "ab", "x-y", "c:d", "_", "z"][..]),
        1..5,
    )
    .prop_map(|segs| segs.join("."))
}

proptest! {
    #[test]
    fn filters_follow_the_grammar(
        events in filter_value(),
        sources in source_value(),
        probes in prop::collection::vec(
            (event_type(), prop::sample::select(&["", "s1", "s2", "svc.a", "y"][..])),
            1..16,
        ),
    ) {
        let got = Filter::parse(events.as_deref(), sources.as_deref());
        let want = RefFilter::parse(events.as_deref(), sources.as_deref());
        prop_assert_eq!(got.is_ok(), want.is_some(), "{:?} {:?}", events, sources);
        if let (Ok(filter), Some(reference)) = (got, want) {
            for (t, s) in &probes {
                prop_assert_eq!(
                    filter.matches(t, s),
                    reference.matches(t, s),
                    "{:?} {:?} on {} {}", events, sources, t, s
                );
            }
            let shown = filter.to_string();
            let (e, s) = shown
                .strip_prefix("events=")
                .and_then(|rest| rest.split_once("&sources="))
                .unwrap();
            prop_assert_eq!(Filter::parse(Some(e), Some(s)), Ok(filter));
        }
    }
}

// ------------------------------------------------------- Last-Event-ID

fn check_id(text: &str) -> Result<(), TestCaseError> {
    let got = parse_ulid(text);
    prop_assert_eq!(got.map(|u| u.0), reference::ref_ulid(text), "{:?}", text);
    if let Some(id) = got {
        prop_assert_eq!(id.to_string(), text.to_ascii_uppercase());
    }
    Ok(())
}

proptest! {
    #[test]
    fn any_text_as_last_event_id(text in prop_oneof![
        any::<String>(),
        "[0-9A-Za-z ]{24,28}",
        "[0-9a-zA-Z]{26}",
    ]) {
        check_id(&text)?;
    }

    #[test]
    fn real_ids_in_any_case_parse_and_changed_ones_follow_the_spec(
        value in any::<u128>(),
        lower in any::<u32>(),
        at in 0usize..26,
        to in any::<char>(),
        pad in "[ \t\u{a0}\u{3000}]",
    ) {
        let text: String = Ulid(value)
            .to_string()
            .chars()
            .enumerate()
            .map(|(i, c)| if lower >> i & 1 == 1 { c.to_ascii_lowercase() } else { c })
            .collect();
        prop_assert_eq!(parse_ulid(&text), Some(Ulid(value)));
        check_id(&text)?;
        let mut changed: Vec<char> = text.chars().collect();
        changed[at] = to;
        check_id(&changed.into_iter().collect::<String>())?;
        check_id(&format!("{pad}{text}"))?;
        check_id(&format!("{text}{pad}"))?;
    }
}

// ------------------------------------------------------------ SSE frames

proptest! {
    #[test]
    fn frames_parse_back_to_the_event(
        id in any::<u128>(),
        map_id in any::<u128>(),
        event_type in "[A-Za-z0-9_.:-]{1,128}",
        source in "[A-Za-z0-9_.:-]{0,128}",
        payload in json_text(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let payload = compact_json(&payload);
        let (id, map_id) = (Ulid(id), Ulid(map_id));
        let event = Event::new(id, map_id, event_type.clone(), source.clone(), &payload);
        let frame = event.frame();
        prop_assert!(frame.ends_with(b"\n\n"));
        let data = frame.windows(7).position(|w| w == b"\ndata: ").unwrap() + 7;
        let data_line = &frame[data..frame.len() - 2];
        prop_assert!(!data_line.contains(&b'\n') && !data_line.contains(&b'\r'));

        let parsed = reference::parse_sse(frame).expect("UTF-8");
        prop_assert_eq!(parsed.len(), 1);
        prop_assert_eq!(&parsed[0].id, &id.to_string());
        prop_assert_eq!(&parsed[0].event, &event_type);
        prop_assert_eq!(parsed[0].data.as_bytes(), event.envelope());
        let parsed = reference::eventsource_parse(frame, &cuts).expect("eventsource-stream parses");
        prop_assert_eq!(parsed.len(), 1);
        prop_assert_eq!(&parsed[0].id, &id.to_string());
        prop_assert_eq!(&parsed[0].event, &event_type);
        prop_assert_eq!(parsed[0].data.as_bytes(), event.envelope());

        prop_assert_eq!(event.payload(), payload.as_str());
        let Ok(envelope) = serde_json::from_slice::<Value>(event.envelope()) else {
            // Only a payload serde_json cannot hold (a number beyond f64).
            prop_assert!(serde_json::from_str::<Value>(&payload).is_err());
            return Ok(());
        };
        prop_assert_eq!(envelope.as_object().unwrap().len(), 6);
        prop_assert_eq!(&envelope["id"], &Value::from(id.to_string()));
        prop_assert_eq!(&envelope["map_id"], &Value::from(map_id.to_string()));
        prop_assert_eq!(&envelope["type"], &Value::from(event_type));
        prop_assert_eq!(&envelope["source"], &Value::from(source));
        prop_assert_eq!(&envelope["created_at"], &Value::from(format_ulid_time(id)));
        prop_assert_eq!(&envelope["payload"], &serde_json::from_str::<Value>(&payload).unwrap());
    }
}
