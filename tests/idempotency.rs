//! `Idempotency-Key` on `POST /api/maps/{map}/events` (SPEC `### Publish`):
//! within `publish.idempotency_ttl_secs` of the first success, a request to
//! the same map with the same key and body creates nothing and answers the
//! first request's ids — on retry, when requests arrive at once, on another
//! node, after a restart, and after a 503 whose commit did happen. A refused
//! request binds nothing; another body → 409 `IDEMPOTENCY_KEY_REUSED`; a
//! malformed key → 400 `INVALID_IDEMPOTENCY_KEY`; keys are scoped to their
//! map and forgotten after the TTL.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::proxy::PgProxy;
use common::{
    envelope, expect_error, expect_ids, ids, postgres_url, unique, Backend, Cluster, Next,
    NodeOptions, Relay, SseClient, TestMap, PUBLISHER, WAIT,
};
use eventsource_stream::Event;
use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio::time::Instant;

backend_tests!(
    a_retry_answers_the_same_ids_and_creates_nothing,
    concurrent_requests_with_one_key_create_once,
    concurrent_requests_with_one_key_and_two_bodies_create_one,
    a_retry_after_a_restart_answers_the_same_ids,
    another_body_is_409_and_malformed_keys_are_400,
    refused_requests_bind_nothing_and_keys_are_scoped_to_their_map,
    a_key_may_be_used_afresh_after_the_ttl,
    unauthorized_requests_bind_nothing,
);

const HEADER: &str = "Idempotency-Key";
/// How long a stream must stay silent to show nothing more was delivered.
const QUIET: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn events_path(map: &str) -> String {
    format!("/api/maps/{map}/events")
}

/// `POST /api/maps/{map}/events` with a raw JSON body, an optional
/// `Idempotency-Key` and an optional Bearer token.
async fn send(
    relay: &Relay,
    map: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut request = relay
        .http
        .post(relay.url(&events_path(map)))
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(30))
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(key) = key {
        request = request.header(HEADER, key);
    }
    request.send().await.expect("publish request")
}

/// Publishes `body` with `key` as the publisher; asserts 201, returns ids.
async fn publish_keyed(relay: &Relay, map: &str, key: &str, body: &str) -> Vec<String> {
    let response = send(relay, map, Some(PUBLISHER), Some(key), body).await;
    let ids = expect_ids(
        response,
        &format!("publish {body:?} with key {key:?} on {}", relay.base),
    )
    .await;
    assert!(!ids.is_empty(), "201 with no ids for {body:?}");
    ids
}

/// Every stored event id of a map, oldest first (pages through history).
async fn history_ids(relay: &Relay, map: &TestMap) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = "00000000000000000000000000".to_owned();
    loop {
        let response = relay
            .get(
                &format!("{}?after={after}&limit=1000", events_path(&map.slug)),
                &map.key,
            )
            .send()
            .await
            .expect("history request");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert_eq!(status, 200, "history of {}: {text}", map.slug);
        let page: Value = serde_json::from_str(&text).expect("history is JSON");
        for item in page["items"].as_array().expect("items") {
            out.push(item["id"].as_str().expect("item id").to_owned());
        }
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => return out,
        }
    }
}

/// Opens a map stream (200) and reads its `connected` event.
async fn open(relay: &Relay, map: &TestMap) -> SseClient {
    let mut client = relay.subscribe(&map.slug, &map.key, "", None).await;
    client.connected().await;
    client
}

/// Up to `n` events within `wait` in all (fewer when the stream ends or the
/// time is up).
async fn collect(client: &mut SseClient, n: usize, wait: Duration) -> Vec<Event> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    while out.len() < n {
        match client
            .next_timed(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Next::Event(event) => out.push(event),
            Next::Ended | Next::Silent => break,
        }
    }
    out
}

/// Reads exactly `expected` (by id) from the stream, then asserts that
/// nothing else arrives for [`QUIET`] and the stream stays open.
async fn expect_stream(client: &mut SseClient, expected: &[String], what: &str) {
    let got = collect(client, expected.len(), WAIT).await;
    assert_eq!(ids(&got), expected, "{what}: the live stream delivers");
    expect_quiet(client, what).await;
}

async fn expect_quiet(client: &mut SseClient, what: &str) {
    match client.next_timed(QUIET).await {
        Next::Silent => {}
        Next::Event(event) => panic!(
            "{what}: an extra frame on the live stream: id {:?} event {:?} data {}",
            event.id, event.event, event.data
        ),
        Next::Ended => panic!("{what}: the live stream ended"),
    }
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

// ---------------------------------------------------------------------------
// 1. Retry
// ---------------------------------------------------------------------------

/// A retry with the same key and body answers 201 with the first ids; the
/// events exist once in history and once on a live stream — for one event
/// and for an array.
async fn a_retry_answers_the_same_ids_and_creates_nothing(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let mut live = open(&relay, &map).await;

    let single = r#"{"type":"order.created","source":"shop","payload":{"n":1}}"#;
    let first = publish_keyed(&relay, &map.slug, "single-1", single).await;
    assert_eq!(first.len(), 1, "one event, one id");
    expect_stream(&mut live, &first, "single event, first request").await;
    for attempt in 1..=2 {
        let again = publish_keyed(&relay, &map.slug, "single-1", single).await;
        assert_eq!(again, first, "retry {attempt} of a single event: same ids");
    }
    expect_quiet(&mut live, "single event, after two retries").await;
    assert_eq!(
        history_ids(&relay, &map).await,
        first,
        "the single event is stored once"
    );

    let array = r#"[{"type":"a.1"},{"type":"a.2","payload":[1,2]},{"type":"a.3","source":"s"}]"#;
    let batch = publish_keyed(&relay, &map.slug, "array:1", array).await;
    assert_eq!(batch.len(), 3, "three events, three ids");
    assert!(
        batch[0] > first[0],
        "the array comes after the single event"
    );
    expect_stream(&mut live, &batch, "array, first request").await;
    let again = publish_keyed(&relay, &map.slug, "array:1", array).await;
    assert_eq!(again, batch, "retry of an array: same ids, same order");
    expect_quiet(&mut live, "array, after the retry").await;

    let mut all = first.clone();
    all.extend(batch.iter().cloned());
    assert_eq!(
        history_ids(&relay, &map).await,
        all,
        "every event is stored once"
    );

    // A publish without a key after all that is new and comes next.
    let plain = relay.publish(&map.slug, json!({"type": "plain"})).await;
    assert!(plain[0] > batch[2]);
    expect_stream(&mut live, &plain, "a plain publish after the retries").await;
}

// ---------------------------------------------------------------------------
// 2. Concurrent requests
// ---------------------------------------------------------------------------

/// Sends `key` from `n` tasks released at once, request `i` with
/// `bodies[i % bodies.len()]` to `bases[i % bases.len()]`; returns (base,
/// status, body text) of each.
async fn send_at_once(
    http: &reqwest::Client,
    bases: &[String],
    map: &str,
    key: &str,
    bodies: &[&str],
    n: usize,
) -> Vec<(String, u16, String)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let http = http.clone();
            let base = bases[i % bases.len()].clone();
            let url = format!("{base}{}", events_path(map));
            let body = bodies[i % bodies.len()].to_owned();
            let (key, barrier) = (key.to_owned(), Arc::clone(&barrier));
            tokio::spawn(async move {
                let request = http
                    .post(url)
                    .bearer_auth(PUBLISHER)
                    .header("content-type", "application/json")
                    .header(HEADER, key)
                    .timeout(Duration::from_secs(30))
                    .body(body);
                barrier.wait().await;
                let response = request.send().await.expect("concurrent publish");
                let status = response.status().as_u16();
                (base, status, response.text().await.unwrap_or_default())
            })
        })
        .collect();
    join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("publish task"))
        .collect()
}

/// All answers are 201 with one and the same list of ids; returns it.
fn same_ids(answers: &[(String, u16, String)], what: &str) -> Vec<String> {
    let mut seen: Option<Vec<String>> = None;
    for (i, (base, status, text)) in answers.iter().enumerate() {
        assert_eq!(
            *status, 201,
            "{what}: request {i} (to {base}) answered {status}: {text}"
        );
        let body: Value = serde_json::from_str(text).expect("publish answer is JSON");
        let got: Vec<String> = body["ids"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: request {i}: no ids in {text}"))
            .iter()
            .map(|v| v.as_str().expect("id").to_owned())
            .collect();
        match &seen {
            None => seen = Some(got),
            Some(first) => assert_eq!(
                &got, first,
                "{what}: request {i} (to {base}) answered other ids"
            ),
        }
    }
    seen.expect("at least one answer")
}

/// Ten requests with one key and one body at once: all 201 with the same
/// ids, and the events exist once (history and live stream).
async fn concurrent_requests_with_one_key_create_once(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let mut live = open(&relay, &map).await;
    let bases = [relay.base.clone()];

    let body = r#"{"type":"race.single","payload":{"k":"v"}}"#;
    let answers = send_at_once(&relay.http, &bases, &map.slug, "race-1", &[body], 10).await;
    let single = same_ids(&answers, "10 concurrent single-event requests");
    assert_eq!(single.len(), 1);
    expect_stream(&mut live, &single, "10 concurrent single-event requests").await;

    let body = r#"[{"type":"race.a"},{"type":"race.b"}]"#;
    let answers = send_at_once(&relay.http, &bases, &map.slug, "race-2", &[body], 10).await;
    let pair = same_ids(&answers, "10 concurrent array requests");
    assert_eq!(pair.len(), 2);
    expect_stream(&mut live, &pair, "10 concurrent array requests").await;

    let mut all = single.clone();
    all.extend(pair.iter().cloned());
    assert_eq!(
        history_ids(&relay, &map).await,
        all,
        "the events exist once"
    );
}

/// Ten requests with one key at once, half with another body: one body
/// wins, its requests all answer its ids, the others 409, and its events
/// exist once. Publishes to another map keep the committer busy, so that
/// requests of both bodies wait together for one group commit.
async fn concurrent_requests_with_one_key_and_two_bodies_create_one(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let other = relay.create_map().await;
    let bases = [relay.base.clone()];
    let noise: Vec<_> = (0..4)
        .map(|_| {
            let (http, url) = (
                relay.http.clone(),
                format!("{}{}", relay.base, events_path(&other.slug)),
            );
            tokio::spawn(async move {
                for _ in 0..25 {
                    let sent = http
                        .post(&url)
                        .bearer_auth(PUBLISHER)
                        .json(&json!({"type": "noise"}));
                    assert_eq!(sent.send().await.expect("noise").status(), 201);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let bodies = [
        r#"{"type":"race.first"}"#,
        r#"[{"type":"race.second"},{"type":"race.second"}]"#,
    ];
    let answers = send_at_once(&relay.http, &bases, &map.slug, "race-3", &bodies, 10).await;
    for task in join_all(noise).await {
        task.expect("noise publisher");
    }
    let (won, lost): (Vec<_>, Vec<_>) = answers
        .into_iter()
        .enumerate()
        .partition(|(_, (_, status, _))| *status == 201);
    let won: Vec<(String, u16, String)> = won.into_iter().map(|(_, answer)| answer).collect();
    let winner = same_ids(&won, "the winning body's requests");
    for (i, (_, status, text)) in &lost {
        assert_eq!(*status, 409, "request {i} answered {status}: {text}");
        assert!(
            text.contains("IDEMPOTENCY_KEY_REUSED"),
            "request {i}: {text}"
        );
    }
    assert_eq!(won.len(), 5, "one body's five requests win: {lost:?}");
    assert_eq!(
        history_ids(&relay, &map).await,
        winner,
        "the winner's events, once"
    );
}

/// The same spread over two nodes of a cluster: every request answers the
/// same ids, whichever node it reached; each node's stream gets the events
/// once; a retry on the other node than the first request's answers the
/// first ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_over_two_nodes_create_once() {
    let cluster = Cluster::start(2, &[]).await;
    let map = cluster[0].create_map().await;
    let mut live = [open(&cluster[0], &map).await, open(&cluster[1], &map).await];
    let bases = [cluster[0].base.clone(), cluster[1].base.clone()];

    let body = r#"[{"type":"spread.1"},{"type":"spread.2","payload":{"x":[true,null]}}]"#;
    let answers = send_at_once(&cluster[0].http, &bases, &map.slug, "spread", &[body], 10).await;
    let spread = same_ids(&answers, "10 concurrent requests over two nodes");
    assert_eq!(spread.len(), 2);
    for (node, stream) in live.iter_mut().enumerate() {
        expect_stream(stream, &spread, &format!("spread, stream on node {node}")).await;
    }
    for node in 0..2 {
        let again = publish_keyed(&cluster[node], &map.slug, "spread", body).await;
        assert_eq!(again, spread, "a later retry on node {node}");
    }

    // First on node 0, retry on node 1 (and the other way round).
    for (first_node, retry_node) in [(0, 1), (1, 0)] {
        let key = format!("hop-{first_node}-{retry_node}");
        let body = format!(r#"{{"type":"hop","payload":{{"from":{first_node}}}}}"#);
        let first = publish_keyed(&cluster[first_node], &map.slug, &key, &body).await;
        let retry = publish_keyed(&cluster[retry_node], &map.slug, &key, &body).await;
        assert_eq!(
            retry, first,
            "published on node {first_node}, retried on node {retry_node}"
        );
        for (node, stream) in live.iter_mut().enumerate() {
            expect_stream(
                stream,
                &first,
                &format!("{key}: stream on node {node} after the retry"),
            )
            .await;
        }
    }

    let stored = history_ids(&cluster[1], &map).await;
    assert_eq!(stored.len(), 4, "2 + 1 + 1 events stored: {stored:?}");
    assert_eq!(&stored[..2], spread.as_slice(), "the spread pair once");
    assert_eq!(history_ids(&cluster[0], &map).await, stored);
}

// ---------------------------------------------------------------------------
// 3. Restart
// ---------------------------------------------------------------------------

/// A key is remembered in the store: after a restart, a retry answers the
/// first ids and creates nothing.
async fn a_retry_after_a_restart_answers_the_same_ids(backend: Backend) {
    let mut relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let single = r#"{"type":"before.restart"}"#;
    let array = r#"[{"type":"b.1"},{"type":"b.2"}]"#;
    let first = publish_keyed(&relay, &map.slug, "restart-1", single).await;
    let batch = publish_keyed(&relay, &map.slug, "restart-2", array).await;

    tokio::task::block_in_place(|| relay.restart());

    let mut live = open(&relay, &map).await;
    assert_eq!(
        publish_keyed(&relay, &map.slug, "restart-1", single).await,
        first,
        "single event retried after a restart"
    );
    assert_eq!(
        publish_keyed(&relay, &map.slug, "restart-2", array).await,
        batch,
        "array retried after a restart"
    );
    expect_quiet(&mut live, "retries after a restart deliver nothing").await;
    let response = send(
        &relay,
        &map.slug,
        Some(PUBLISHER),
        Some("restart-1"),
        r#"{"type":"other.body"}"#,
    )
    .await;
    expect_error(
        response,
        409,
        "IDEMPOTENCY_KEY_REUSED",
        "another body after a restart",
    )
    .await;
    let mut all = first.clone();
    all.extend(batch.iter().cloned());
    assert_eq!(history_ids(&relay, &map).await, all, "nothing new stored");
}

// ---------------------------------------------------------------------------
// 4. A 503 whose commit happened
// ---------------------------------------------------------------------------

/// A node whose database answer to a keyed publish's commit is held back
/// (a proxy) answers 503 (or nothing); the commit happened, so the live
/// streams deliver the event; a retry with the key then answers 201 with
/// that event's id, on the same node and on another, and the event exists
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_503_whose_commit_happened_answers_its_id() {
    let upstream = reqwest::Url::parse(&postgres_url()).expect("database URL");
    let proxy = PgProxy::start(&format!(
        "{}:{}",
        upstream.host_str().unwrap_or("127.0.0.1"),
        upstream.port().unwrap_or(5432)
    ))
    .await;
    // Holding a node's answers for several seconds must not make it dead.
    let env = [("HERALD__CLUSTER__NODE_TIMEOUT_SECS", "30")];
    let mut cluster = Cluster::start(1, &env).await;
    let options = NodeOptions {
        env: cluster.node_env(1, &env),
        database_url: Some(proxy.url_for(cluster[0].database_url())),
        ..NodeOptions::default()
    };
    let behind = tokio::task::block_in_place(|| cluster.add(options));
    assert!(proxy.connections() > 0, "the node talks through the proxy");
    let (direct, proxied) = (&cluster[0], &cluster[behind]);
    let map = direct.create_map().await;
    let mut on_proxied = open(proxied, &map).await;
    let mut on_direct = open(direct, &map).await;
    let warm = proxied.publish(&map.slug, json!({"type": "warm"})).await;
    expect_stream(&mut on_proxied, &warm, "warm-up, behind the proxy").await;
    expect_stream(&mut on_direct, &warm, "warm-up, direct").await;

    let marker = unique("held-");
    let key = format!("retry-{marker}");
    let body = json!({"type": "held", "payload": {"marker": marker}}).to_string();
    proxy.hold_after_commit_of(&marker);
    let started = Instant::now();
    let answer = proxied
        .post(&events_path(&map.slug), PUBLISHER)
        .header("content-type", "application/json")
        .header(HEADER, key.as_str())
        .timeout(Duration::from_secs(12))
        .body(body.clone())
        .send()
        .await;
    let took = started.elapsed();
    assert!(
        proxy.triggered(),
        "the proxy saw the keyed publish's commit (and held its answer)"
    );
    match answer {
        Ok(response) => {
            assert_ne!(
                response.status(),
                201,
                "answered 201 though the commit's answer was held"
            );
            expect_error(
                response,
                503,
                "STORE_UNAVAILABLE",
                "keyed publish with its commit answer held",
            )
            .await;
        }
        Err(e) => assert!(e.is_timeout(), "no answer, only a timeout: {e}"),
    }
    eprintln!("the held publish ended after {took:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.release();

    // The commit happened: both streams deliver the event.
    let mut held_id = None;
    for (node, stream) in [
        ("behind the proxy", &mut on_proxied),
        ("direct", &mut on_direct),
    ] {
        let got = collect(stream, 1, Duration::from_secs(15)).await;
        assert_eq!(got.len(), 1, "the committed event reached the node {node}");
        assert_eq!(got[0].event, "held", "node {node}: the held event");
        assert_eq!(envelope(&got[0])["payload"]["marker"], marker.as_str());
        match &held_id {
            None => held_id = Some(got[0].id.clone()),
            Some(id) => assert_eq!(&got[0].id, id, "the same id on both nodes"),
        }
    }
    let held_id = held_id.expect("held id");

    // The retry, on the node that answered 503: the client keeps retrying
    // while the store is unavailable (503), as a client would.
    let deadline = Instant::now() + Duration::from_secs(20);
    let retried = loop {
        let response = send(proxied, &map.slug, Some(PUBLISHER), Some(&key), &body).await;
        if response.status() == 503 && Instant::now() < deadline {
            let text = response.text().await.unwrap_or_default();
            eprintln!("retry answered 503 ({text}); retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        break expect_ids(response, "retry after the 503, behind the proxy").await;
    };
    assert_eq!(
        retried,
        std::slice::from_ref(&held_id),
        "the retry answers the id the stream delivered"
    );
    assert_eq!(
        publish_keyed(direct, &map.slug, &key, &body).await,
        std::slice::from_ref(&held_id),
        "a retry on the other node answers the same id"
    );
    for (node, stream) in [
        ("behind the proxy", &mut on_proxied),
        ("direct", &mut on_direct),
    ] {
        expect_quiet(stream, &format!("node {node}: retries deliver nothing")).await;
    }
    let expected = vec![warm[0].clone(), held_id.clone()];
    assert_eq!(
        history_ids(direct, &map).await,
        expected,
        "the held event is stored exactly once"
    );
    assert_eq!(history_ids(proxied, &map).await, expected);

    // The node behind the proxy works normally afterwards.
    let later = proxied.publish(&map.slug, json!({"type": "later"})).await;
    assert!(later[0] > held_id);
    expect_stream(&mut on_proxied, &later, "a later publish, behind the proxy").await;
    expect_stream(&mut on_direct, &later, "a later publish, direct").await;
}

// ---------------------------------------------------------------------------
// 5. Mismatch, malformed keys, refused requests, scope
// ---------------------------------------------------------------------------

/// Another body (even one byte of whitespace) → 409 with the exact error
/// shape, and the first binding still answers its ids; malformed keys →
/// 400 `INVALID_IDEMPOTENCY_KEY` and create nothing; keys of 1 and 128
/// characters of the whole alphabet are fine.
async fn another_body_is_409_and_malformed_keys_are_400(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let mut live = open(&relay, &map).await;
    let body = r#"{"type":"x.created","payload":{"a":1}}"#;
    let first = publish_keyed(&relay, &map.slug, "mismatch", body).await;
    expect_stream(&mut live, &first, "the first request").await;

    for (other, what) in [
        (
            r#"{"type":"x.created","payload":{"a":2}}"#,
            "another payload",
        ),
        (r#"{"type":"x.updated","payload":{"a":1}}"#, "another type"),
        (
            r#"{"type": "x.created","payload":{"a":1}}"#,
            "the same JSON with one more space",
        ),
        (
            r#"{"payload":{"a":1},"type":"x.created"}"#,
            "the same JSON, fields reordered",
        ),
        (
            r#"[{"type":"x.created","payload":{"a":1}}]"#,
            "the same event in an array",
        ),
    ] {
        let response = send(&relay, &map.slug, Some(PUBLISHER), Some("mismatch"), other).await;
        expect_error(response, 409, "IDEMPOTENCY_KEY_REUSED", what).await;
    }
    assert_eq!(
        publish_keyed(&relay, &map.slug, "mismatch", body).await,
        first,
        "after the 409s the key still answers the first ids"
    );
    expect_quiet(&mut live, "409s and a retry deliver nothing").await;

    let too_long = "k".repeat(129);
    let malformed: [(&[u8], &str); 9] = [
        (b"", "empty"),
        (too_long.as_bytes(), "129 characters"),
        (b"has space", "a space"),
        (b"a/b", "a slash"),
        (b"a,b", "a comma"),
        (b"key+1", "a plus"),
        (b"k\"ey", "a quote"),
        (b"cl\xc3\xa9", "non-ASCII (UTF-8)"),
        (b"k\xff", "a non-UTF-8 byte"),
    ];
    for (value, what) in malformed {
        let value = reqwest::header::HeaderValue::from_bytes(value)
            .unwrap_or_else(|e| panic!("header value {what}: {e}"));
        let response = relay
            .post(&events_path(&map.slug), PUBLISHER)
            .header("content-type", "application/json")
            .header(HEADER, value)
            .body(r#"{"type":"bad.key"}"#)
            .send()
            .await
            .expect("publish");
        expect_error(
            response,
            400,
            "INVALID_IDEMPOTENCY_KEY",
            &format!("key: {what}"),
        )
        .await;
    }
    // Two header values, valid or not, each of them.
    for (a, b) in [("dup", "dup"), ("one", "two"), ("fresh", "mismatch")] {
        let response = relay
            .post(&events_path(&map.slug), PUBLISHER)
            .header("content-type", "application/json")
            .header(HEADER, a)
            .header(HEADER, b)
            .body(r#"{"type":"bad.key"}"#)
            .send()
            .await
            .expect("publish");
        expect_error(
            response,
            400,
            "INVALID_IDEMPOTENCY_KEY",
            &format!("two values {a:?} and {b:?}"),
        )
        .await;
    }
    // A malformed key wins over a broken body (the key is checked, then
    // the body), and a malformed key with another body is not a 409.
    let response = send(&relay, &map.slug, Some(PUBLISHER), Some("bad key"), "{").await;
    expect_error(
        response,
        400,
        "INVALID_IDEMPOTENCY_KEY",
        "malformed key and body",
    )
    .await;
    expect_quiet(&mut live, "malformed keys deliver nothing").await;
    assert_eq!(
        history_ids(&relay, &map).await,
        first,
        "malformed keys create nothing"
    );

    // The bounds of the grammar are fine.
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-";
    let longest: String = alphabet.chars().cycle().take(128).collect();
    let mut created = Vec::new();
    for key in ["k", alphabet, longest.as_str()] {
        let body = format!(r#"{{"type":"good.key","payload":{}}}"#, key.len());
        let got = publish_keyed(&relay, &map.slug, key, &body).await;
        assert_eq!(
            publish_keyed(&relay, &map.slug, key, &body).await,
            got,
            "key of {} characters is remembered",
            key.len()
        );
        created.extend(got);
    }
    expect_stream(&mut live, &created, "events of valid keys, once").await;
    let mut all = first.clone();
    all.extend(created);
    assert_eq!(history_ids(&relay, &map).await, all);
}

/// Requests refused with 400 or 413 bind nothing: the same key with a
/// valid body afterwards creates new events. A key is scoped to its map:
/// the same key and body on another map creates events there.
async fn refused_requests_bind_nothing_and_keys_are_scoped_to_their_map(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let mut live = open(&relay, &map).await;

    let big = json!({"type": "big", "payload": "x".repeat(70_000)}).to_string();
    let refused: [(&str, &str, u16, &str); 5] = [
        ("bad-type", r#"{"type":"has space"}"#, 400, "INVALID_EVENT"),
        (
            "bad-in-array",
            r#"[{"type":"ok"},{"type":""}]"#,
            400,
            "INVALID_EVENT",
        ),
        ("empty-array", "[]", 400, "INVALID_EVENT"),
        ("bad-json", r#"{"type":"a""#, 400, "INVALID_JSON"),
        ("too-big", &big, 413, "PAYLOAD_TOO_LARGE"),
    ];
    let mut created = Vec::new();
    for (key, body, status, code) in refused {
        for attempt in 1..=2 {
            let response = send(&relay, &map.slug, Some(PUBLISHER), Some(key), body).await;
            expect_error(
                response,
                status,
                code,
                &format!("{key}: refused body, attempt {attempt}"),
            )
            .await;
        }
        // Not 409, not a replay: new events.
        let valid = format!(r#"[{{"type":"after.{key}"}},{{"type":"second"}}]"#);
        let got = publish_keyed(&relay, &map.slug, key, &valid).await;
        assert_eq!(got.len(), 2, "{key}: the valid body creates its events");
        assert!(
            created.last().is_none_or(|last: &String| got[0] > *last),
            "{key}: new ids after the earlier ones"
        );
        assert_eq!(
            publish_keyed(&relay, &map.slug, key, &valid).await,
            got,
            "{key}: and is now bound to them"
        );
        expect_stream(&mut live, &got, &format!("{key}: the valid body's events")).await;
        created.extend(got);
    }
    assert_eq!(
        history_ids(&relay, &map).await,
        created,
        "only the valid bodies' events are stored, once each"
    );

    // Scope: the same key and body on another map (by slug and by id).
    let other = relay.create_map().await;
    let mut other_live = open(&relay, &other).await;
    let body = r#"{"type":"scoped","payload":{"same":"body"}}"#;
    let on_first = publish_keyed(&relay, &map.slug, "scoped", body).await;
    expect_stream(&mut live, &on_first, "scoped: first map").await;
    let on_other = publish_keyed(&relay, &other.slug, "scoped", body).await;
    assert_ne!(on_other, on_first, "the other map's events are its own");
    assert!(on_other[0] > on_first[0]);
    expect_stream(&mut other_live, &on_other, "scoped: other map").await;
    expect_quiet(&mut live, "scoped: nothing more on the first map").await;
    assert_eq!(
        publish_keyed(&relay, &other.id, "scoped", body).await,
        on_other,
        "the other map addressed by id: same binding as by slug"
    );
    assert_eq!(
        publish_keyed(&relay, &map.slug, "scoped", body).await,
        on_first,
        "the first map keeps its binding"
    );
    // Another body on the other map is a 409 there, not on the first map.
    let response = send(
        &relay,
        &other.slug,
        Some(PUBLISHER),
        Some("scoped"),
        r#"{"type":"scoped.other"}"#,
    )
    .await;
    expect_error(
        response,
        409,
        "IDEMPOTENCY_KEY_REUSED",
        "scoped: other body",
    )
    .await;
    expect_quiet(&mut other_live, "scoped: retries on the other map").await;
    expect_quiet(&mut live, "scoped: retries on the first map").await;
    assert_eq!(history_ids(&relay, &other).await, on_other);
    created.extend(on_first);
    assert_eq!(history_ids(&relay, &map).await, created);
}

// ---------------------------------------------------------------------------
// 6. TTL
// ---------------------------------------------------------------------------

/// With `publish.idempotency_ttl_secs = 1`, a retry more than a second
/// after the first success creates new events; both sets are stored. A body
/// that would have been a 409 is accepted too.
async fn a_key_may_be_used_afresh_after_the_ttl(backend: Backend) {
    let relay = Relay::start_with(backend, &[("HERALD__PUBLISH__IDEMPOTENCY_TTL_SECS", "1")]).await;
    let map = relay.create_map().await;
    let mut live = open(&relay, &map).await;
    let body = r#"[{"type":"ttl.1"},{"type":"ttl.2"}]"#;
    let first = publish_keyed(&relay, &map.slug, "ttl", body).await;
    let other_first = publish_keyed(&relay, &map.slug, "ttl-other", body).await;
    expect_stream(
        &mut live,
        &[first.clone(), other_first.clone()].concat(),
        "ttl: the first requests",
    )
    .await;

    tokio::time::sleep(Duration::from_millis(2_500)).await;

    let second = publish_keyed(&relay, &map.slug, "ttl", body).await;
    assert_eq!(second.len(), 2);
    assert_ne!(second, first, "after the TTL the same key creates new ids");
    assert!(second[0] > other_first[1], "new ids come later");
    expect_stream(&mut live, &second, "ttl: after the TTL").await;
    // Another body after the TTL is no 409 either.
    let changed = publish_keyed(&relay, &map.slug, "ttl-other", r#"{"type":"ttl.changed"}"#).await;
    assert_eq!(changed.len(), 1);
    expect_stream(&mut live, &changed, "ttl: another body after the TTL").await;

    let mut all = first.clone();
    all.extend(other_first);
    all.extend(second);
    all.extend(changed);
    assert_eq!(
        history_ids(&relay, &map).await,
        sorted(all),
        "both sets are stored"
    );
}

// ---------------------------------------------------------------------------
// 7. Unauthorized
// ---------------------------------------------------------------------------

/// A keyed request without a valid publisher token answers 401 (before
/// any check of the key) and binds nothing; an unknown map answers 404.
async fn unauthorized_requests_bind_nothing(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let mut live = open(&relay, &map).await;
    let body = r#"{"type":"auth.test"}"#;
    let cases: [(Option<&str>, &str); 4] = [
        (None, "no token"),
        (Some("not-a-token"), "an unknown token"),
        (Some(&map.key), "a map key (wrong role)"),
        (Some(common::ADMIN), "the admin token"),
    ];
    for (token, what) in cases {
        // The admin token counts as a map key, not as a publisher token.
        let response = send(&relay, &map.slug, token, Some("auth-key"), body).await;
        expect_error(response, 401, "UNAUTHORIZED", &format!("{what}, valid key")).await;
        let response = send(&relay, &map.slug, token, Some("bad key!"), body).await;
        expect_error(
            response,
            401,
            "UNAUTHORIZED",
            &format!("{what}, malformed key: 401 comes first"),
        )
        .await;
    }
    let response = send(
        &relay,
        &unique("no-such-map-"),
        Some(PUBLISHER),
        Some("bad key!"),
        body,
    )
    .await;
    expect_error(
        response,
        404,
        "MAP_NOT_FOUND",
        "unknown map, malformed key: 404 comes first",
    )
    .await;
    expect_quiet(&mut live, "refused requests deliver nothing").await;
    assert!(
        history_ids(&relay, &map).await.is_empty(),
        "refused requests store nothing"
    );

    // Nothing was bound: another body with the key is no 409, and the same
    // body creates an event (then answers it on retry).
    let other = publish_keyed(&relay, &map.slug, "auth-key", r#"{"type":"auth.other"}"#).await;
    assert_eq!(other.len(), 1);
    let same = publish_keyed(&relay, &map.slug, "auth-key-2", body).await;
    let response = send(&relay, &map.slug, None, Some("auth-key-2"), body).await;
    expect_error(response, 401, "UNAUTHORIZED", "no token, bound key").await;
    assert_eq!(
        publish_keyed(&relay, &map.slug, "auth-key-2", body).await,
        same
    );
    let mut all = other.clone();
    all.extend(same);
    expect_stream(&mut live, &all, "the authorized events, once").await;
    assert_eq!(history_ids(&relay, &map).await, all);
}
