//! Publish and history over real HTTP: validation and status codes, size
//! limits, all-or-nothing arrays, exact payload round-trips through SSE and
//! the store, publisher authentication, and history paging.

mod common;

use common::{envelope, expect_error, expect_ids, ids, Backend, Relay, ADMIN, PUBLISHER};
use serde_json::{json, Value};

backend_tests!(
    malformed_json_is_invalid_json,
    broken_event_rules_name_the_field_and_index,
    non_objects_and_empty_arrays_are_invalid_events,
    body_over_max_body_bytes_is_413,
    payload_over_max_event_bytes_is_413,
    array_over_max_batch_is_413,
    arrays_are_all_or_nothing,
    payload_text_round_trips_exactly,
    envelope_fields_from_publishers_are_not_trusted,
    publish_requires_a_publisher_token,
    history_pages_with_limit_after_and_next,
    history_filters_and_default_limit,
    history_refuses_bad_queries_and_credentials,
);

/// `POST /api/maps/{map}/events` with a raw body (sent as JSON).
async fn publish_raw(
    relay: &Relay,
    map: &str,
    token: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut request = relay
        .http
        .post(relay.url(&format!("/api/maps/{map}/events")))
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("publish request")
}

/// Publishes a raw body and asserts 201; returns the ids.
async fn publish_raw_ok(relay: &Relay, map: &str, body: &str) -> Vec<String> {
    let response = publish_raw(relay, map, Some(PUBLISHER), body.to_owned()).await;
    expect_ids(response, &format!("publish {body:?}")).await
}

/// `GET /api/maps/{map}/events{query}`: 200, parsed and raw.
async fn history(relay: &Relay, map: &str, key: &str, query: &str) -> (Value, String) {
    let response = relay
        .get(&format!("/api/maps/{map}/events{query}"), key)
        .send()
        .await
        .expect("history request");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, 200, "history {query:?} answered {status}: {text}");
    let body: Value = serde_json::from_str(&text).expect("history is JSON");
    assert!(body["items"].is_array(), "items: {text}");
    assert!(
        body["next"].is_null() || body["next"].is_string(),
        "next: {text}"
    );
    (body, text)
}

/// Ids of a history page.
fn item_ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["id"].as_str().expect("item id").to_owned())
        .collect()
}

async fn history_ids(relay: &Relay, map: &str, key: &str) -> Vec<String> {
    item_ids(&history(relay, map, key, "?limit=1000").await.0)
}

async fn malformed_json_is_invalid_json(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    for body in [
        "{",
        "",
        "not json",
        "{\"type\": \"a\",}",
        "{\"type\": \"a\"} trailing",
        "[{\"type\": \"a\"},]",
        "{'type': 'a'}",
    ] {
        let response = publish_raw(&relay, &map.slug, Some(PUBLISHER), body).await;
        expect_error(response, 400, "INVALID_JSON", &format!("body {body:?}")).await;
    }
    // Invalid UTF-8 inside a string is not JSON either.
    let response = publish_raw(
        &relay,
        &map.slug,
        Some(PUBLISHER),
        b"{\"type\":\"a\",\"payload\":\"\xff\"}".to_vec(),
    )
    .await;
    expect_error(response, 400, "INVALID_JSON", "invalid UTF-8").await;
    // A compressed body is refused for its coding, not as bad JSON.
    let response = relay
        .post(&format!("/api/maps/{}/events", map.slug), PUBLISHER)
        .header("Content-Encoding", "gzip")
        .body(vec![0x1f, 0x8b, 0x08, 0x00])
        .send()
        .await
        .expect("publish");
    let sentence = expect_error(response, 400, "BAD_REQUEST", "a gzip body").await;
    assert!(sentence.contains("gzip"), "{sentence}");
    assert!(
        history_ids(&relay, &map.slug, &map.key).await.is_empty(),
        "nothing stored"
    );
}

async fn broken_event_rules_name_the_field_and_index(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let long = "x".repeat(129);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"type": "has space"}), "type"),
        (json!({"type": "a\nb"}), "type"),
        (json!({"type": "a\rb"}), "type"),
        (json!({"type": long}), "type"),
        (json!({"type": ""}), "type"),
        (json!({"type": "é"}), "type"),
        (json!({"source": "svc"}), "type"),
        (json!({"type": 5}), "type"),
        (json!({"type": ["a"]}), "type"),
        (json!({"type": {"a": 1}}), "type"),
        (json!({"type": "ok", "source": "b c"}), "source"),
        (json!({"type": "ok", "source": "x".repeat(129)}), "source"),
        (json!({"type": "ok", "source": 7}), "source"),
        (
            json!([{"type": "ok"}, {"type": "bad one"}]),
            "events[1].type",
        ),
        (
            json!([{"type": "ok"}, {"type": "ok"}, {"source": "x"}]),
            "events[2].type",
        ),
        (json!([{"type": "ok"}, {"type": 1}]), "events[1].type"),
        (
            json!([{"type": "bad\nline"}, {"type": "ok"}]),
            "events[0].type",
        ),
        (
            json!([{"type": "ok"}, {"type": "ok", "source": "a b"}]),
            "events[1].source",
        ),
    ];
    for (body, field) in cases {
        let response = publish_raw(&relay, &map.slug, Some(PUBLISHER), body.to_string()).await;
        let sentence = expect_error(response, 400, "INVALID_EVENT", &format!("body {body}")).await;
        assert!(
            sentence.contains(field),
            "error for {body} names {field:?}: {sentence:?}"
        );
    }
    assert!(
        history_ids(&relay, &map.slug, &map.key).await.is_empty(),
        "nothing stored"
    );
    // The boundaries themselves are fine.
    let ok = relay
        .publish(
            &map.slug,
            json!({"type": "x".repeat(128), "source": "s".repeat(128)}),
        )
        .await;
    let chars = relay
        .publish(&map.slug, json!({"type": "Az09_.:-", "source": ""}))
        .await;
    assert_eq!(
        history_ids(&relay, &map.slug, &map.key).await,
        [ok[0].clone(), chars[0].clone()]
    );
}

async fn non_objects_and_empty_arrays_are_invalid_events(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    for body in [
        "\"text\"", "5", "null", "true", "[]", "[1]", "[[]]", "[null]",
    ] {
        let response = publish_raw(&relay, &map.slug, Some(PUBLISHER), body).await;
        expect_error(response, 400, "INVALID_EVENT", &format!("body {body}")).await;
    }
    let response = publish_raw(&relay, &map.slug, Some(PUBLISHER), "[{\"type\":\"a\"},5]").await;
    let sentence = expect_error(response, 400, "INVALID_EVENT", "array with a number").await;
    assert!(
        sentence.contains("events[1]"),
        "names the index: {sentence}"
    );
    assert!(history_ids(&relay, &map.slug, &map.key).await.is_empty());
}

async fn body_over_max_body_bytes_is_413(backend: Backend) {
    let relay = Relay::start_with(backend, &[("HERALD__PUBLISH__MAX_BODY_BYTES", "256")]).await;
    let map = relay.create_map().await;
    let body = |len: usize| {
        let prefix = "{\"type\":\"a\",\"payload\":\"";
        let text = format!("{prefix}{}\"}}", "x".repeat(len - prefix.len() - 2));
        assert_eq!(text.len(), len);
        text
    };
    let at_limit = publish_raw_ok(&relay, &map.slug, &body(256)).await;
    let response = publish_raw(&relay, &map.slug, Some(PUBLISHER), body(257)).await;
    expect_error(response, 413, "PAYLOAD_TOO_LARGE", "257-byte body").await;
    let response = publish_raw(&relay, &map.slug, Some(PUBLISHER), body(4096)).await;
    expect_error(response, 413, "PAYLOAD_TOO_LARGE", "4 KiB body").await;

    // Without a Content-Length (chunked), the limit still holds.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body(400)
        .into_bytes()
        .chunks(100)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let response = publish_raw(
        &relay,
        &map.slug,
        Some(PUBLISHER),
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
    )
    .await;
    expect_error(response, 413, "PAYLOAD_TOO_LARGE", "chunked 400-byte body").await;

    // Credentials are checked before the body.
    let response = publish_raw(&relay, &map.slug, None, body(4096)).await;
    expect_error(response, 401, "UNAUTHORIZED", "oversized body, no token").await;

    assert_eq!(history_ids(&relay, &map.slug, &map.key).await, at_limit);
}

async fn payload_over_max_event_bytes_is_413(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    // A string of n characters serializes to n + 2 bytes.
    let event = |n: usize| json!({"type": "big", "payload": "x".repeat(n)});
    let fits = relay.publish(&map.slug, event(65_534)).await;
    let response = publish_raw(
        &relay,
        &map.slug,
        Some(PUBLISHER),
        event(65_535).to_string(),
    )
    .await;
    expect_error(response, 413, "PAYLOAD_TOO_LARGE", "65,537-byte payload").await;
    let body = json!([{"type": "small"}, event(70_000)]);
    let response = publish_raw(&relay, &map.slug, Some(PUBLISHER), body.to_string()).await;
    expect_error(
        response,
        413,
        "PAYLOAD_TOO_LARGE",
        "array with a big payload",
    )
    .await;
    assert_eq!(history_ids(&relay, &map.slug, &map.key).await, fits);
}

async fn array_over_max_batch_is_413(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let batch =
        |n: usize| Value::Array((0..n).map(|i| json!({"type": format!("b.{i}")})).collect());
    let response = publish_raw(&relay, &map.slug, Some(PUBLISHER), batch(1001).to_string()).await;
    expect_error(response, 413, "PAYLOAD_TOO_LARGE", "1001 events").await;
    assert!(history_ids(&relay, &map.slug, &map.key).await.is_empty());
    let published = relay.publish(&map.slug, batch(1000)).await;
    assert_eq!(published.len(), 1000);
    assert!(published.windows(2).all(|w| w[0] < w[1]), "ids increase");
    assert_eq!(history_ids(&relay, &map.slug, &map.key).await, published);
}

async fn arrays_are_all_or_nothing(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let mut client = relay.subscribe(&map.slug, &map.key, "", None).await;
    client.connected().await;
    let bad_type = json!([{"type": "a.1"}, {"type": "a.2"}, {"type": "no good"}]);
    let response = publish_raw(&relay, &map.slug, Some(PUBLISHER), bad_type.to_string()).await;
    expect_error(response, 400, "INVALID_EVENT", "one bad type").await;
    let too_big = json!([{"type": "a.1"}, {"type": "a.2", "payload": "x".repeat(70_000)}]);
    let response = publish_raw(&relay, &map.slug, Some(PUBLISHER), too_big.to_string()).await;
    expect_error(response, 413, "PAYLOAD_TOO_LARGE", "one big payload").await;
    let not_object = json!([{"type": "a.1"}, "a.2"]);
    let response = publish_raw(&relay, &map.slug, Some(PUBLISHER), not_object.to_string()).await;
    expect_error(response, 400, "INVALID_EVENT", "one non-object").await;
    assert!(
        history_ids(&relay, &map.slug, &map.key).await.is_empty(),
        "a refused array stores nothing"
    );
    let good = relay
        .publish(&map.slug, json!([{"type": "ok.1"}, {"type": "ok.2"}]))
        .await;
    assert_eq!(
        ids(&client.take(2).await),
        good,
        "a refused array delivers nothing"
    );
    assert_eq!(history_ids(&relay, &map.slug, &map.key).await, good);
}

async fn payload_text_round_trips_exactly(backend: Backend) {
    let mut relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let payloads = [
        r#"{"s":"a\u0000b\n","big":123456789012345678901234567890,"f":1.50}"#,
        r#"{"u":"é😀","e":"\ud83d\ude00\u00e9","q":"\"\\/\t"}"#,
        r#"[1.0,-0,1E+2,2e-7,0.30000000000000004,null,true,false,{}]"#,
        r#""\u0000""#,
        r#"-12345678901234567890.123456789012345678901234567890"#,
        r#"{"a":1,"a":2,"":{"":[]}}"#,
        "null",
    ];
    let mut client = relay.subscribe(&map.slug, &map.key, "", None).await;
    client.connected().await;
    let mut published = Vec::new();
    for (i, payload) in payloads.iter().enumerate() {
        let body = format!(r#"{{"type":"exact.{i}","source":"svc","payload":{payload}}}"#);
        published.extend(publish_raw_ok(&relay, &map.slug, &body).await);
    }
    let expected_tail = |payload: &str| format!(",\"payload\":{payload}}}");

    // Live SSE: the data line carries the payload text as sent.
    let live = client.take(payloads.len()).await;
    assert_eq!(ids(&live), published);
    for (event, payload) in live.iter().zip(payloads) {
        assert!(
            event.data.ends_with(&expected_tail(payload)),
            "live data {:?} carries {payload}",
            event.data
        );
        assert!(
            event.data.starts_with(&format!(
                "{{\"id\":\"{}\",\"map_id\":\"{}\",\"type\":\"{}\",\"source\":\"svc\",",
                event.id, map.id, event.event
            )),
            "envelope {:?}",
            event.data
        );
    }
    assert_eq!(
        envelope(&live[0])["payload"]["s"],
        "a\u{0}b\n",
        "the parsed value too"
    );

    // History reads the store: same text.
    let (page, raw) = history(&relay, &map.slug, &map.key, "").await;
    assert_eq!(item_ids(&page), published);
    for payload in payloads {
        assert!(
            raw.contains(&expected_tail(payload)),
            "history {raw} carries {payload}"
        );
    }

    // After a restart, the backfill comes from the store: same text.
    relay.restart();
    let mut again = relay
        .subscribe(&map.slug, &map.key, "", Some("00000000000000000000000000"))
        .await;
    again.connected().await;
    let replayed = again.take(payloads.len()).await;
    assert_eq!(ids(&replayed), published);
    for (event, payload) in replayed.iter().zip(payloads) {
        assert!(
            event.data.ends_with(&expected_tail(payload)),
            "replayed data {:?} carries {payload}",
            event.data
        );
    }
    for (live, replayed) in live.iter().zip(&replayed) {
        assert_eq!(live.data, replayed.data, "the same envelope bytes");
    }

    // Valid JSON that no f64 holds still round-trips (checked as text only).
    let huge = publish_raw_ok(&relay, &map.slug, r#"{"type":"huge","payload":1e400}"#).await;
    let event = again.expect().await;
    assert_eq!(event.id, huge[0]);
    assert!(
        event.data.ends_with(",\"payload\":1e400}"),
        "{:?}",
        event.data
    );
    let raw = relay
        .get(
            &format!("/api/maps/{}/events?after={}", map.slug, published[6]),
            &map.key,
        )
        .send()
        .await
        .expect("history")
        .text()
        .await
        .expect("text");
    assert!(raw.contains(",\"payload\":1e400}"), "{raw}");
}

async fn envelope_fields_from_publishers_are_not_trusted(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let other = relay.create_map().await;
    let forged_id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let body = json!({
        "type": "forged",
        "id": forged_id,
        "map_id": other.id,
        "created_at": "1999-01-01T00:00:00.000Z",
    });
    let response = publish_raw(&relay, &map.slug, Some(PUBLISHER), body.to_string()).await;
    if response.status() == 201 {
        let answer: Value = response.json().await.expect("json");
        let id = answer["ids"][0].as_str().expect("id").to_owned();
        assert_ne!(id, forged_id, "the id is the server's");
        let (page, _) = history(&relay, &map.slug, &map.key, "").await;
        let stored = &page["items"][0];
        assert_eq!(stored["id"], id);
        assert_eq!(stored["map_id"], map.id, "map_id is the server's");
        assert_ne!(stored["created_at"], "1999-01-01T00:00:00.000Z");
        assert!(stored["created_at"]
            .as_str()
            .is_some_and(|t| t.starts_with("20") && t.ends_with('Z')));
    } else {
        // Refusing them is the other allowed answer.
        expect_error(response, 400, "INVALID_EVENT", "envelope fields").await;
    }
    assert!(
        history_ids(&relay, &other.slug, &other.key)
            .await
            .is_empty(),
        "nothing lands in the map named by a forged map_id"
    );
}

async fn publish_requires_a_publisher_token(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let other = relay.create_map().await;
    let event = json!({"type": "auth.test"}).to_string();
    let unauthorized: [(Option<&str>, &str); 6] = [
        (None, "no token"),
        (Some("wrong-token"), "wrong token"),
        (Some(""), "empty token"),
        (Some(&map.key), "the map's own key"),
        (Some(&other.key), "another map's key"),
        (Some(ADMIN), "the admin token"),
    ];
    for (token, what) in unauthorized {
        let response = publish_raw(&relay, &map.slug, token, event.clone()).await;
        expect_error(response, 401, "UNAUTHORIZED", what).await;
    }
    // A publisher token under another scheme is no Bearer credential.
    let response = relay
        .http
        .post(relay.url(&format!("/api/maps/{}/events", map.slug)))
        .header("authorization", format!("Basic {PUBLISHER}"))
        .header("content-type", "application/json")
        .body(event.clone())
        .send()
        .await
        .expect("request");
    expect_error(response, 401, "UNAUTHORIZED", "Basic scheme").await;

    // Unknown map: 404 only for a valid credential.
    let response = publish_raw(&relay, "no-such-map", Some(PUBLISHER), event.clone()).await;
    expect_error(response, 404, "MAP_NOT_FOUND", "unknown map").await;
    let response = publish_raw(&relay, "no-such-map", Some("wrong"), event.clone()).await;
    expect_error(response, 401, "UNAUTHORIZED", "unknown map, wrong token").await;
    let response = publish_raw(&relay, "no-such-map", None, event.clone()).await;
    expect_error(response, 401, "UNAUTHORIZED", "unknown map, no token").await;
    let unknown_id = ulid::Ulid::generate().to_string();
    let response = publish_raw(&relay, &unknown_id, Some(PUBLISHER), event.clone()).await;
    expect_error(response, 404, "MAP_NOT_FOUND", "unknown map id").await;

    // Credentials and the map come before the body.
    let response = publish_raw(&relay, &map.slug, Some("wrong"), "{").await;
    expect_error(response, 401, "UNAUTHORIZED", "wrong token, bad JSON").await;
    let response = publish_raw(&relay, &map.slug, Some(&map.key), "{").await;
    expect_error(response, 401, "UNAUTHORIZED", "map key, bad JSON").await;
    let response = publish_raw(&relay, "no-such-map", Some(PUBLISHER), "{").await;
    expect_error(response, 404, "MAP_NOT_FOUND", "unknown map, bad JSON").await;

    assert!(
        history_ids(&relay, &map.slug, &map.key).await.is_empty(),
        "nothing refused was stored"
    );
    let by_slug = relay.publish(&map.slug, json!({"type": "ok"})).await;
    let by_id = relay.publish(&map.id, json!({"type": "ok"})).await;
    assert_eq!(
        history_ids(&relay, &map.slug, &map.key).await,
        [by_slug[0].clone(), by_id[0].clone()]
    );
}

async fn history_pages_with_limit_after_and_next(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let published = relay.publish_n(&map.slug, 5).await;

    let (all, _) = history(&relay, &map.slug, &map.key, "").await;
    assert_eq!(
        item_ids(&all),
        published,
        "default: everything, oldest first"
    );
    assert!(all["next"].is_null(), "a page that is not full has no next");
    let first = &all["items"][0];
    assert_eq!(first["map_id"], map.id);
    assert_eq!(first["type"], "t.0");
    assert_eq!(first["source"], "");
    assert_eq!(first["payload"], json!({"i": 0}));
    assert!(first["created_at"]
        .as_str()
        .is_some_and(|t| t.len() == 24 && t.ends_with('Z')));

    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    let mut nexts = Vec::new();
    loop {
        let (page, _) = history(&relay, &map.slug, &map.key, &query).await;
        let page_ids = item_ids(&page);
        assert!(page_ids.len() <= 2);
        seen.extend(page_ids.clone());
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(page_ids.len(), 2, "next only on a full page");
                assert_eq!(Some(next), page_ids.last().map(String::as_str));
                nexts.push(next.to_owned());
                query = format!("?limit=2&after={next}");
            }
            None => {
                assert!(page_ids.len() < 2, "a full page has a next");
                break;
            }
        }
        assert!(nexts.len() < 10, "paging terminates");
    }
    assert_eq!(seen, published, "pages cover everything once, in order");
    assert_eq!(nexts, [published[1].clone(), published[3].clone()]);

    // A page that is exactly full still has next; the page after is empty.
    let (page, _) = history(&relay, &map.slug, &map.key, "?limit=5").await;
    assert_eq!(page["next"], published[4]);
    let (page, _) = history(
        &relay,
        &map.slug,
        &map.key,
        &format!("?limit=5&after={}", published[4]),
    )
    .await;
    assert_eq!(page, json!({"items": [], "next": null}));

    // `after` ignores case; an empty `after` is the beginning.
    let lower = published[2].to_lowercase();
    let (page, _) = history(&relay, &map.slug, &map.key, &format!("?after={lower}")).await;
    assert_eq!(item_ids(&page), published[3..]);
    let (page, _) = history(&relay, &map.slug, &map.key, "?after=").await;
    assert_eq!(item_ids(&page), published);
    let (page, _) = history(
        &relay,
        &map.slug,
        &map.key,
        "?after=00000000000000000000000000&limit=1000",
    )
    .await;
    assert_eq!(item_ids(&page), published);
    // By map id too, and with the admin token.
    let (page, _) = history(&relay, &map.id, ADMIN, "?limit=1").await;
    assert_eq!(item_ids(&page), published[..1]);
    assert_eq!(page["next"], published[0]);
}

async fn history_filters_and_default_limit(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let published = relay
        .publish(
            &map.slug,
            json!([
                {"type": "blog.post", "source": "cms"},
                {"type": "user.created", "source": "auth"},
                {"type": "blog.post.created", "source": "cms"},
                {"type": "blog", "source": "auth"},
                {"type": "a.b.created"},
            ]),
        )
        .await;
    let (page, _) = history(&relay, &map.slug, &map.key, "?events=blog.*").await;
    assert_eq!(
        item_ids(&page),
        [published[0].clone(), published[2].clone()]
    );
    let (page, _) = history(&relay, &map.slug, &map.key, "?events=*.created").await;
    assert_eq!(item_ids(&page), [published[1].clone()]);
    let (page, _) = history(&relay, &map.slug, &map.key, "?sources=auth").await;
    assert_eq!(
        item_ids(&page),
        [published[1].clone(), published[3].clone()]
    );
    let (page, _) = history(
        &relay,
        &map.slug,
        &map.key,
        "?events=blog.*,%20*.created&sources=cms",
    )
    .await;
    assert_eq!(
        item_ids(&page),
        [published[0].clone(), published[2].clone()]
    );
    // Paging through a filter: next is the last matching item.
    let (page, _) = history(&relay, &map.slug, &map.key, "?sources=auth&limit=1").await;
    assert_eq!(item_ids(&page), [published[1].clone()]);
    assert_eq!(page["next"], published[1]);
    let (page, _) = history(
        &relay,
        &map.slug,
        &map.key,
        &format!("?sources=auth&limit=1&after={}", published[1]),
    )
    .await;
    assert_eq!(item_ids(&page), [published[3].clone()]);
    // Empty filters mean no filter.
    let (page, _) = history(&relay, &map.slug, &map.key, "?events=&sources=").await;
    assert_eq!(item_ids(&page), published);

    // The default limit is 100.
    let more = relay
        .publish(
            &map.slug,
            Value::Array(
                (0..100)
                    .map(|i| json!({"type": format!("n.{i}")}))
                    .collect(),
            ),
        )
        .await;
    let (page, _) = history(&relay, &map.slug, &map.key, "").await;
    let got = item_ids(&page);
    assert_eq!(got.len(), 100);
    assert_eq!(got[..5], published[..]);
    assert_eq!(page["next"], more[94]);
    let (page, _) = history(&relay, &map.slug, &map.key, "?limit=1000").await;
    assert_eq!(item_ids(&page).len(), 105);
    assert!(page["next"].is_null());
}

async fn history_refuses_bad_queries_and_credentials(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let other = relay.create_map().await;
    relay.publish_n(&map.slug, 2).await;
    let get = |path: String, token: Option<&str>| {
        let mut request = relay.http.get(relay.url(&path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let events = format!("/api/maps/{}/events", map.slug);
    for limit in ["0", "1001", "abc", "-1", "1.5", "%2B5", "1e2"] {
        let response = get(format!("{events}?limit={limit}"), Some(&map.key))
            .await
            .expect("request");
        expect_error(response, 400, "INVALID_QUERY", &format!("limit={limit}")).await;
    }
    for after in [
        "abc",
        "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
        "0000000000000000000000000U",
    ] {
        let response = get(format!("{events}?after={after}"), Some(&map.key))
            .await
            .expect("request");
        expect_error(
            response,
            400,
            "INVALID_LAST_EVENT_ID",
            &format!("after={after}"),
        )
        .await;
    }
    for filter in ["events=a..b", "events=a%20b", "sources=a%20b"] {
        let response = get(format!("{events}?{filter}"), Some(&map.key))
            .await
            .expect("request");
        expect_error(response, 400, "INVALID_FILTER", filter).await;
    }
    let (page, _) = history(&relay, &map.slug, &map.key, "?limit=1000").await;
    assert_eq!(item_ids(&page).len(), 2, "limit=1000 is allowed");
    let (page, _) = history(&relay, &map.slug, &map.key, "?limit=&after=").await;
    assert_eq!(item_ids(&page).len(), 2, "empty parameters count as absent");

    let unauthorized: [(Option<&str>, &str); 4] = [
        (None, "no key"),
        (Some("hk_nothing"), "unknown key"),
        (Some(&other.key), "another map's key"),
        (Some(PUBLISHER), "a publisher token"),
    ];
    for (token, what) in unauthorized {
        let response = get(events.clone(), token).await.expect("request");
        expect_error(response, 401, "UNAUTHORIZED", what).await;
    }
    // Credentials come before input errors.
    let response = get(format!("{events}?limit=0"), Some("hk_nothing"))
        .await
        .expect("request");
    expect_error(response, 401, "UNAUTHORIZED", "unknown key, bad limit").await;
    // Unknown map: 404 with a valid credential, 401 without.
    let response = get("/api/maps/no-such-map/events".into(), Some(&map.key))
        .await
        .expect("request");
    expect_error(response, 404, "MAP_NOT_FOUND", "unknown map, valid key").await;
    let response = get("/api/maps/no-such-map/events".into(), Some("hk_nothing"))
        .await
        .expect("request");
    expect_error(response, 401, "UNAUTHORIZED", "unknown map, unknown key").await;
}
