//! Streams and credentials over real HTTP: map keys, the admin token and
//! the firehose, SSE tokens, resume ids, filters, rate limiting, the SSE
//! switch, CORS, unknown routes and the operations endpoints.

mod common;

use std::time::Duration;

use common::{envelope, expect_error, ids, Backend, Relay, SseClient, ADMIN, PUBLISHER};
use serde_json::{json, Value};

backend_tests!(
    stream_credentials_are_checked_before_the_map,
    credentials_are_checked_before_the_query,
    malformed_last_event_id_is_400,
    last_event_id_header_wins_and_empty_is_absent,
    bad_filters_are_400,
    admin_token_opens_map_streams_and_the_firehose,
    map_keys_cannot_open_the_firehose,
    sse_tokens_are_single_use_and_bound_to_their_map,
    sse_token_minting_needs_a_reader_of_the_map,
    sse_tokens_expire,
    stream_requests_are_rate_limited_per_ip,
    forwarded_for_is_trusted_only_when_configured,
    sse_disabled_answers_503_but_publish_and_history_work,
    cors_preflight_allows_authorization_and_last_event_id,
    cors_refuses_unlisted_origins,
    unknown_routes_and_methods_answer_json,
    health_ready_and_metrics,
);

const ZERO: &str = "00000000000000000000000000";

fn stream_path(map: &str, query: &str) -> String {
    format!("/api/maps/{map}/events/stream{query}")
}

/// A stream request with an optional Bearer token, `Last-Event-ID` header
/// and `Origin`.
async fn open(
    relay: &Relay,
    path: &str,
    token: Option<&str>,
    header: Option<&str>,
) -> reqwest::Response {
    let mut request = relay.http.get(relay.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(id) = header {
        request = request.header("Last-Event-ID", id);
    }
    request.send().await.expect("stream request")
}

/// Opens a stream that must answer 200 and returns the client.
async fn open_ok(
    relay: &Relay,
    path: &str,
    token: Option<&str>,
    header: Option<&str>,
) -> SseClient {
    let response = open(relay, path, token, header).await;
    let status = response.status();
    if status != 200 {
        let text = response.text().await.unwrap_or_default();
        panic!("GET {path} answered {status}: {text}");
    }
    SseClient::new(response)
}

/// `POST /api/maps/{map}/sse-tokens`, raw.
async fn mint(relay: &Relay, map: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = relay
        .http
        .post(relay.url(&format!("/api/maps/{map}/sse-tokens")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("sse-token request")
}

/// Mints an SSE token (201) and returns `(token, expires_in)`.
async fn mint_ok(relay: &Relay, map: &str, token: &str) -> (String, u64) {
    let response = mint(relay, map, Some(token)).await;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, 201, "sse-tokens answered {status}: {text}");
    let body: Value = serde_json::from_str(&text).expect("json");
    let token = body["token"].as_str().expect("token").to_owned();
    assert!(!token.is_empty());
    (token, body["expires_in"].as_u64().expect("expires_in"))
}

async fn stream_credentials_are_checked_before_the_map(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let other = relay.create_map().await;
    let path = stream_path(&map.slug, "");
    let refused: [(Option<&str>, &str); 5] = [
        (None, "no credential"),
        (Some("hk_unknown"), "unknown key"),
        (Some(&other.key), "another map's key"),
        (Some(PUBLISHER), "the publisher token"),
        (Some(""), "an empty Bearer"),
    ];
    for (token, what) in refused {
        expect_error(
            open(&relay, &path, token, None).await,
            401,
            "UNAUTHORIZED",
            what,
        )
        .await;
    }
    let response = relay
        .http
        .get(relay.url(&path))
        .header("authorization", format!("Basic {}", map.key))
        .send()
        .await
        .expect("request");
    expect_error(response, 401, "UNAUTHORIZED", "the key under Basic").await;
    let response = open(
        &relay,
        &stream_path(&map.slug, "?token=st_forged"),
        None,
        None,
    )
    .await;
    expect_error(response, 401, "UNAUTHORIZED", "an unknown ?token=").await;

    // An unknown map is revealed only to a valid credential.
    let unknown = stream_path("no-such-map", "");
    expect_error(
        open(&relay, &unknown, Some(&map.key), None).await,
        404,
        "MAP_NOT_FOUND",
        "unknown map, valid key",
    )
    .await;
    expect_error(
        open(&relay, &unknown, Some("hk_unknown"), None).await,
        401,
        "UNAUTHORIZED",
        "unknown map, invalid key",
    )
    .await;
    expect_error(
        open(&relay, &unknown, None, None).await,
        401,
        "UNAUTHORIZED",
        "unknown map, no key",
    )
    .await;
    let unknown_id = stream_path(&ulid::Ulid::generate().to_string(), "");
    expect_error(
        open(&relay, &unknown_id, Some(&map.key), None).await,
        404,
        "MAP_NOT_FOUND",
        "unknown map id, valid key",
    )
    .await;
    // Credentials come before input errors.
    expect_error(
        open(
            &relay,
            &stream_path(&map.slug, "?events=a..b"),
            Some("hk_unknown"),
            Some("bad"),
        )
        .await,
        401,
        "UNAUTHORIZED",
        "invalid key with bad filter and id",
    )
    .await;
    expect_error(
        open(
            &relay,
            &stream_path(&map.slug, "?events=a..b"),
            Some(&other.key),
            None,
        )
        .await,
        401,
        "UNAUTHORIZED",
        "another map's key with a bad filter",
    )
    .await;

    // And the right key works, by slug and by id.
    let mut client = open_ok(&relay, &path, Some(&map.key), None).await;
    let connected = client.connected().await;
    assert_eq!(envelope(&connected)["map_id"], map.id);
    let mut by_id = open_ok(&relay, &stream_path(&map.id, ""), Some(&map.key), None).await;
    by_id.connected().await;
}

async fn credentials_are_checked_before_the_query(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    // Seventeen parameters: one more than the server parses.
    let many: String = (0..17).map(|i| format!("p{i}={i}&")).collect();
    let query = format!("?{}", many.trim_end_matches('&'));
    for path in [
        stream_path(&map.slug, &query),
        format!("/api/events/stream{query}"),
        format!("/api/maps/{}/events{query}", map.slug),
    ] {
        expect_error(
            open(&relay, &path, None, None).await,
            401,
            "UNAUTHORIZED",
            &format!("no credential, 17 query parameters: {path}"),
        )
        .await;
        expect_error(
            open(&relay, &path, Some("hk_unknown"), None).await,
            401,
            "UNAUTHORIZED",
            &format!("unknown key, 17 query parameters: {path}"),
        )
        .await;
    }
    expect_error(
        open(
            &relay,
            &stream_path("no-such-map", &query),
            Some(&map.key),
            None,
        )
        .await,
        404,
        "MAP_NOT_FOUND",
        "unknown map, valid key, 17 query parameters",
    )
    .await;
}

async fn malformed_last_event_id_is_400(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let path = stream_path(&map.slug, "");
    for bad in [
        "abc",
        "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
        "0000000000000000000000000U",
        "000000000000000000000000000",
        "0000000000000000000000000",
    ] {
        expect_error(
            open(&relay, &path, Some(&map.key), Some(bad)).await,
            400,
            "INVALID_LAST_EVENT_ID",
            &format!("header {bad:?}"),
        )
        .await;
        expect_error(
            open(
                &relay,
                &stream_path(&map.slug, &format!("?last_event_id={bad}")),
                Some(&map.key),
                None,
            )
            .await,
            400,
            "INVALID_LAST_EVENT_ID",
            &format!("query {bad:?}"),
        )
        .await;
    }
    // The same on the firehose.
    expect_error(
        open(&relay, "/api/events/stream", Some(ADMIN), Some("abc")).await,
        400,
        "INVALID_LAST_EVENT_ID",
        "firehose header",
    )
    .await;
    // Unknown key first: 401, not 400.
    expect_error(
        open(&relay, &path, Some("hk_unknown"), Some("abc")).await,
        401,
        "UNAUTHORIZED",
        "unknown key, bad id",
    )
    .await;
}

async fn last_event_id_header_wins_and_empty_is_absent(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let published = relay.publish_n(&map.slug, 3).await;

    // A valid header with an invalid query: the header wins.
    let mut client = open_ok(
        &relay,
        &stream_path(&map.slug, "?last_event_id=garbage"),
        Some(&map.key),
        Some(&published[0]),
    )
    .await;
    assert_eq!(client.connected().await.id, published[0]);
    assert_eq!(ids(&client.take(2).await), published[1..]);

    // Both valid: the header wins.
    let mut client = open_ok(
        &relay,
        &stream_path(&map.slug, &format!("?last_event_id={}", published[0])),
        Some(&map.key),
        Some(&published[1]),
    )
    .await;
    assert_eq!(client.connected().await.id, published[1]);
    assert_eq!(ids(&client.take(1).await), published[2..]);

    // An empty header counts as absent: the query applies.
    let mut client = open_ok(
        &relay,
        &stream_path(&map.slug, &format!("?last_event_id={}", published[1])),
        Some(&map.key),
        Some(""),
    )
    .await;
    assert_eq!(client.connected().await.id, published[1]);
    assert_eq!(ids(&client.take(1).await), published[2..]);
    expect_error(
        open(
            &relay,
            &stream_path(&map.slug, "?last_event_id=garbage"),
            Some(&map.key),
            Some(""),
        )
        .await,
        400,
        "INVALID_LAST_EVENT_ID",
        "empty header, bad query",
    )
    .await;

    // Both empty: no resume position, start from the newest.
    let mut client = open_ok(
        &relay,
        &stream_path(&map.slug, "?last_event_id="),
        Some(&map.key),
        Some(""),
    )
    .await;
    assert_eq!(client.connected().await.id, published[2]);

    // Case is ignored.
    let lower = published[0].to_lowercase();
    let mut client = open_ok(
        &relay,
        &stream_path(&map.slug, ""),
        Some(&map.key),
        Some(&lower),
    )
    .await;
    assert!(client
        .connected()
        .await
        .id
        .eq_ignore_ascii_case(&published[0]));
    assert_eq!(ids(&client.take(2).await), published[1..]);
    let mut client = open_ok(
        &relay,
        &stream_path(&map.slug, &format!("?last_event_id={lower}")),
        Some(&map.key),
        None,
    )
    .await;
    assert!(client
        .connected()
        .await
        .id
        .eq_ignore_ascii_case(&published[0]));
    assert_eq!(ids(&client.take(2).await), published[1..]);

    // The zero id replays everything.
    let mut client = open_ok(
        &relay,
        &stream_path(&map.slug, ""),
        Some(&map.key),
        Some(ZERO),
    )
    .await;
    assert_eq!(client.connected().await.id, ZERO);
    assert_eq!(ids(&client.take(3).await), published);
}

async fn bad_filters_are_400(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let too_many = vec!["a"; 65].join(",");
    let just_enough = vec!["a"; 64].join(",");
    for query in [
        "?events=a..b".to_owned(),
        format!("?events={too_many}"),
        "?events=a%20b".to_owned(),
        "?events=blog.**".to_owned(),
        "?events=.a".to_owned(),
        "?events=a.".to_owned(),
        "?events=a%0Ab".to_owned(),
        "?sources=a%20b".to_owned(),
    ] {
        expect_error(
            open(
                &relay,
                &stream_path(&map.slug, &query),
                Some(&map.key),
                None,
            )
            .await,
            400,
            "INVALID_FILTER",
            &query,
        )
        .await;
    }
    expect_error(
        open(&relay, "/api/events/stream?events=a..b", Some(ADMIN), None).await,
        400,
        "INVALID_FILTER",
        "firehose filter",
    )
    .await;
    for query in [
        format!("?events={just_enough}"),
        "?events=".to_owned(),
        "?sources=".to_owned(),
        "?events=,%20a.*%20,,b".to_owned(),
    ] {
        let mut client = open_ok(
            &relay,
            &stream_path(&map.slug, &query),
            Some(&map.key),
            None,
        )
        .await;
        client.connected().await;
    }
}

async fn admin_token_opens_map_streams_and_the_firehose(backend: Backend) {
    let relay = Relay::start(backend).await;
    let a = relay.create_map().await;
    let b = relay.create_map().await;

    let mut map_stream = open_ok(&relay, &stream_path(&a.slug, ""), Some(ADMIN), None).await;
    let connected = envelope(&map_stream.connected().await);
    assert_eq!(connected["map_id"], a.id);

    let mut firehose = open_ok(&relay, "/api/events/stream", Some(ADMIN), None).await;
    let connected = firehose.connected().await;
    let data = envelope(&connected);
    assert_eq!(
        data.get("map_id"),
        Some(&Value::Null),
        "the firehose's connected has map_id: null: {data}"
    );
    assert_eq!(data["connection_id"].as_str().map(str::len), Some(26));
    let mut filtered = open_ok(
        &relay,
        "/api/events/stream?events=keep.*",
        Some(ADMIN),
        None,
    )
    .await;
    filtered.connected().await;

    let in_a = relay.publish(&a.slug, json!({"type": "drop.a"})).await;
    let in_b = relay.publish(&b.slug, json!({"type": "keep.b"})).await;
    let in_a2 = relay.publish(&a.slug, json!({"type": "keep.a"})).await;

    let events = firehose.take(3).await;
    assert_eq!(
        ids(&events),
        [in_a[0].clone(), in_b[0].clone(), in_a2[0].clone()]
    );
    assert_eq!(envelope(&events[0])["map_id"], a.id);
    assert_eq!(envelope(&events[1])["map_id"], b.id);
    assert_eq!(envelope(&events[2])["map_id"], a.id);

    assert_eq!(
        ids(&filtered.take(2).await),
        [in_b[0].clone(), in_a2[0].clone()]
    );
    assert_eq!(
        ids(&map_stream.take(2).await),
        [in_a[0].clone(), in_a2[0].clone()],
        "the admin's map stream sees only that map"
    );

    // The firehose backfills across maps from a resume id.
    let mut resumed = open_ok(&relay, "/api/events/stream", Some(ADMIN), Some(&in_a[0])).await;
    assert_eq!(resumed.connected().await.id, in_a[0]);
    assert_eq!(
        ids(&resumed.take(2).await),
        [in_b[0].clone(), in_a2[0].clone()]
    );
}

async fn map_keys_cannot_open_the_firehose(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let refused: [(Option<&str>, &str); 4] = [
        (Some(&map.key), "a map key"),
        (Some(PUBLISHER), "the publisher token"),
        (Some("wrong"), "a wrong token"),
        (None, "no credential"),
    ];
    for (token, what) in refused {
        expect_error(
            open(&relay, "/api/events/stream", token, None).await,
            401,
            "UNAUTHORIZED",
            what,
        )
        .await;
    }
    let (token, _) = mint_ok(&relay, &map.slug, &map.key).await;
    expect_error(
        open(
            &relay,
            &format!("/api/events/stream?token={token}"),
            None,
            None,
        )
        .await,
        401,
        "UNAUTHORIZED",
        "an SSE token",
    )
    .await;
}

async fn sse_tokens_are_single_use_and_bound_to_their_map(backend: Backend) {
    let relay = Relay::start(backend).await;
    let a = relay.create_map().await;
    let b = relay.create_map().await;

    let (token, expires_in) = mint_ok(&relay, &a.slug, &a.key).await;
    assert_eq!(expires_in, 30, "auth.sse_token_ttl_secs default");
    let path = stream_path(&a.slug, &format!("?token={token}"));
    let mut client = open_ok(&relay, &path, None, None).await;
    let connected = envelope(&client.connected().await);
    assert_eq!(connected["map_id"], a.id);
    let published = relay.publish(&a.slug, json!({"type": "via.token"})).await;
    assert_eq!(client.expect().await.id, published[0]);

    // Second use: refused.
    expect_error(
        open(&relay, &path, None, None).await,
        401,
        "UNAUTHORIZED",
        "second use of an SSE token",
    )
    .await;

    // A token of map A does not open map B.
    let (token_a, _) = mint_ok(&relay, &a.slug, &a.key).await;
    expect_error(
        open(
            &relay,
            &stream_path(&b.slug, &format!("?token={token_a}")),
            None,
            None,
        )
        .await,
        401,
        "UNAUTHORIZED",
        "token of map A on map B",
    )
    .await;
    // Refusals do not use a token up: only the stream it opens does.
    expect_error(
        open(
            &relay,
            &stream_path(&a.slug, &format!("?token={token_a}&events=a..b")),
            None,
            None,
        )
        .await,
        400,
        "INVALID_FILTER",
        "a bad filter with a token",
    )
    .await;
    let mut kept = open_ok(
        &relay,
        &stream_path(&a.slug, &format!("?token={token_a}")),
        None,
        None,
    )
    .await;
    kept.connected().await;
    drop(kept);

    // The browser's reconnect: a new token with last_event_id resumes.
    let more = relay.publish_n(&a.slug, 2).await;
    let (token, _) = mint_ok(&relay, &a.slug, &a.key).await;
    let mut resumed = open_ok(
        &relay,
        &stream_path(
            &a.slug,
            &format!("?token={token}&last_event_id={}", published[0]),
        ),
        None,
        None,
    )
    .await;
    assert_eq!(resumed.connected().await.id, published[0]);
    assert_eq!(ids(&resumed.take(2).await), more);

    // A token minted by the admin works too, and by map id.
    let (token, _) = mint_ok(&relay, &a.id, ADMIN).await;
    let mut client = open_ok(
        &relay,
        &stream_path(&a.id, &format!("?token={token}")),
        None,
        None,
    )
    .await;
    client.connected().await;
}

async fn sse_token_minting_needs_a_reader_of_the_map(backend: Backend) {
    let relay = Relay::start(backend).await;
    let a = relay.create_map().await;
    let b = relay.create_map().await;
    let refused: [(Option<&str>, &str); 4] = [
        (None, "no credential"),
        (Some("hk_unknown"), "unknown key"),
        (Some(&b.key), "another map's key"),
        (Some(PUBLISHER), "the publisher token"),
    ];
    for (token, what) in refused {
        expect_error(
            mint(&relay, &a.slug, token).await,
            401,
            "UNAUTHORIZED",
            what,
        )
        .await;
    }
    expect_error(
        mint(&relay, "no-such-map", Some(&a.key)).await,
        404,
        "MAP_NOT_FOUND",
        "unknown map, valid key",
    )
    .await;
    expect_error(
        mint(&relay, "no-such-map", Some("hk_unknown")).await,
        401,
        "UNAUTHORIZED",
        "unknown map, invalid key",
    )
    .await;
    // An SSE token cannot mint another one.
    let (token, _) = mint_ok(&relay, &a.slug, &a.key).await;
    let response = relay
        .http
        .post(relay.url(&format!("/api/maps/{}/sse-tokens?token={token}", a.slug)))
        .send()
        .await
        .expect("request");
    expect_error(response, 401, "UNAUTHORIZED", "minting with an SSE token").await;
}

async fn sse_tokens_expire(backend: Backend) {
    let relay = Relay::start_with(backend, &[("HERALD__AUTH__SSE_TOKEN_TTL_SECS", "1")]).await;
    let map = relay.create_map().await;
    let (fresh, expires_in) = mint_ok(&relay, &map.slug, &map.key).await;
    assert_eq!(expires_in, 1);
    let (stale, _) = mint_ok(&relay, &map.slug, &map.key).await;
    let mut client = open_ok(
        &relay,
        &stream_path(&map.slug, &format!("?token={fresh}")),
        None,
        None,
    )
    .await;
    client.connected().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    expect_error(
        open(
            &relay,
            &stream_path(&map.slug, &format!("?token={stale}")),
            None,
            None,
        )
        .await,
        401,
        "UNAUTHORIZED",
        "expired SSE token",
    )
    .await;
}

async fn stream_requests_are_rate_limited_per_ip(backend: Backend) {
    let relay = Relay::start_with(
        backend,
        &[
            ("HERALD__LIMITS__RATE_PER_MINUTE", "60"),
            ("HERALD__LIMITS__RATE_BURST", "2"),
        ],
    )
    .await;
    let map = relay.create_map().await;
    let path = stream_path(&map.slug, "");
    // Every request counts, refused ones too.
    expect_error(
        open(&relay, &path, None, None).await,
        401,
        "UNAUTHORIZED",
        "first",
    )
    .await;
    let mut first = open_ok(&relay, &path, Some(&map.key), None).await;
    first.connected().await;
    let response = open(&relay, &path, Some(&map.key), None).await;
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    expect_error(response, 429, "RATE_LIMITED", "third quick request").await;
    let retry_after: u64 = retry_after
        .expect("Retry-After header")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    // The rate limit is checked first of all, and covers SSE tokens.
    expect_error(
        open(&relay, &path, None, None).await,
        429,
        "RATE_LIMITED",
        "no credential",
    )
    .await;
    expect_error(
        open(&relay, "/api/events/stream", Some(ADMIN), None).await,
        429,
        "RATE_LIMITED",
        "firehose",
    )
    .await;
    expect_error(
        mint(&relay, &map.slug, Some(&map.key)).await,
        429,
        "RATE_LIMITED",
        "sse-tokens",
    )
    .await;
    // Publishing, history and admin are not rate limited.
    for _ in 0..5 {
        relay.publish(&map.slug, json!({"type": "still.ok"})).await;
        let response = relay
            .get(&format!("/api/maps/{}/events", map.slug), &map.key)
            .send()
            .await
            .expect("history");
        assert_eq!(response.status(), 200);
        relay.admin_json("/api/admin/stats").await;
    }
    // The open stream is unaffected.
    assert_eq!(first.expect().await.event, "still.ok");
    // One token per second comes back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut again = open_ok(&relay, &path, Some(&map.key), None).await;
    again.connected().await;
}

async fn forwarded_for_is_trusted_only_when_configured(backend: Backend) {
    let rate = [
        ("HERALD__LIMITS__RATE_PER_MINUTE", "60"),
        ("HERALD__LIMITS__RATE_BURST", "1"),
    ];
    let request = |relay: &Relay, path: String, forwarded: &'static str| {
        relay
            .http
            .get(relay.url(&path))
            .header("X-Forwarded-For", forwarded)
            .send()
    };

    // Not trusted (the default): a client cannot dodge its bucket.
    let relay = Relay::start_with(backend, &rate).await;
    let map = relay.create_map().await;
    let path = stream_path(&map.slug, "");
    let first = request(&relay, path.clone(), "10.0.0.1")
        .await
        .expect("request");
    expect_error(first, 401, "UNAUTHORIZED", "first request").await;
    let second = request(&relay, path.clone(), "10.0.0.2")
        .await
        .expect("request");
    expect_error(second, 429, "RATE_LIMITED", "spoofed X-Forwarded-For").await;
    drop(relay);

    // Trusted: each forwarded address has its own bucket.
    let mut trusted = rate.to_vec();
    trusted.push(("HERALD__LIMITS__TRUST_FORWARDED_FOR", "true"));
    let relay = Relay::start_with(backend, &trusted).await;
    let map = relay.create_map().await;
    let path = stream_path(&map.slug, "");
    for forwarded in ["10.0.0.1", "10.0.0.2", "10.0.0.3, 127.0.0.1"] {
        let response = request(&relay, path.clone(), forwarded)
            .await
            .expect("request");
        expect_error(response, 401, "UNAUTHORIZED", forwarded).await;
    }
    // The proxy's entry is the last; what the client wrote before it is
    // not an address of its own.
    let again = request(&relay, path.clone(), "203.0.113.7, 10.0.0.1")
        .await
        .expect("request");
    expect_error(
        again,
        429,
        "RATE_LIMITED",
        "the same forwarded address again, behind a spoofed one",
    )
    .await;
}

async fn sse_disabled_answers_503_but_publish_and_history_work(backend: Backend) {
    let relay = Relay::start_with(backend, &[("HERALD__SSE__ENABLED", "false")]).await;
    let map = relay.create_map().await;
    expect_error(
        open(&relay, &stream_path(&map.slug, ""), Some(&map.key), None).await,
        503,
        "SSE_DISABLED",
        "map stream",
    )
    .await;
    expect_error(
        open(&relay, &stream_path(&map.slug, ""), Some(ADMIN), None).await,
        503,
        "SSE_DISABLED",
        "map stream with the admin token",
    )
    .await;
    expect_error(
        open(&relay, "/api/events/stream", Some(ADMIN), None).await,
        503,
        "SSE_DISABLED",
        "firehose",
    )
    .await;
    expect_error(
        mint(&relay, &map.slug, Some(&map.key)).await,
        503,
        "SSE_DISABLED",
        "sse-tokens",
    )
    .await;
    // Credentials and the map are still checked first.
    expect_error(
        open(&relay, &stream_path(&map.slug, ""), None, None).await,
        401,
        "UNAUTHORIZED",
        "no credential",
    )
    .await;
    expect_error(
        open(
            &relay,
            &stream_path("no-such-map", ""),
            Some(&map.key),
            None,
        )
        .await,
        404,
        "MAP_NOT_FOUND",
        "unknown map",
    )
    .await;
    // Publishing, history and admin keep working.
    let published = relay
        .publish(&map.slug, json!({"type": "offline.ok"}))
        .await;
    let page: Value = relay
        .get(&format!("/api/maps/{}/events", map.slug), &map.key)
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    assert_eq!(page["items"][0]["id"], published[0]);
    let detail = relay
        .admin_json(&format!("/api/admin/maps/{}", map.slug))
        .await;
    assert_eq!(detail["id"], map.id);
    let stats = relay.admin_json("/api/admin/stats").await;
    assert_eq!(stats["connections"], 0);
}

async fn cors_preflight_allows_authorization_and_last_event_id(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let origin = "https://app.example.com";
    let path = stream_path(&map.slug, "");
    let response = relay
        .http
        .request(reqwest::Method::OPTIONS, relay.url(&path))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "GET")
        .header(
            "Access-Control-Request-Headers",
            "authorization,last-event-id",
        )
        .send()
        .await
        .expect("preflight");
    assert!(
        response.status().is_success(),
        "preflight answered {}",
        response.status()
    );
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    let allow_origin = header("access-control-allow-origin");
    assert!(
        allow_origin == origin || allow_origin == "*",
        "allow-origin {allow_origin:?}"
    );
    let allow_headers = header("access-control-allow-headers");
    for wanted in ["authorization", "last-event-id"] {
        assert!(
            allow_headers.split(',').any(|h| h.trim() == wanted),
            "{wanted} not in allow-headers {allow_headers:?}"
        );
    }
    let allow_methods = header("access-control-allow-methods");
    assert!(
        allow_methods.contains("get"),
        "allow-methods {allow_methods:?}"
    );
    // A page may publish with an Idempotency-Key.
    let publish = relay
        .http
        .request(
            reqwest::Method::OPTIONS,
            relay.url(&format!("/api/maps/{}/events", map.slug)),
        )
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type,idempotency-key",
        )
        .send()
        .await
        .expect("publish preflight");
    assert!(
        publish.status().is_success(),
        "publish preflight answered {}",
        publish.status()
    );

    // The actual request carries the CORS header too.
    let response = relay
        .http
        .get(relay.url(&path))
        .bearer_auth(&map.key)
        .header("Origin", origin)
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    let allow_origin = response
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        allow_origin == origin || allow_origin == "*",
        "allow-origin on the stream {allow_origin:?}"
    );
    let mut client = SseClient::new(response);
    client.connected().await;
}

async fn cors_refuses_unlisted_origins(backend: Backend) {
    let relay = Relay::start_with(
        backend,
        &[("HERALD__CORS__ALLOWED_ORIGINS", "https://good.example")],
    )
    .await;
    let map = relay.create_map().await;
    let path = stream_path(&map.slug, "");
    let preflight = |origin: &'static str| {
        relay
            .http
            .request(reqwest::Method::OPTIONS, relay.url(&path))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header(
                "Access-Control-Request-Headers",
                "authorization,last-event-id",
            )
            .send()
    };
    let good = preflight("https://good.example").await.expect("preflight");
    assert!(
        good.status().is_success(),
        "listed origin: {}",
        good.status()
    );
    assert_eq!(
        good.headers()["access-control-allow-origin"],
        "https://good.example"
    );
    let evil = preflight("https://evil.example").await.expect("preflight");
    let allow_origin = evil
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        allow_origin != "https://evil.example" && allow_origin != "*",
        "unlisted origin allowed: {allow_origin:?}"
    );
    assert_json_if_error(evil, "preflight").await;

    // An actual request from an unlisted origin gets no CORS grant either.
    let response = relay
        .http
        .get(relay.url(&path))
        .bearer_auth(&map.key)
        .header("Origin", "https://evil.example")
        .send()
        .await
        .expect("stream");
    let allow_origin = response
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        allow_origin != "https://evil.example" && allow_origin != "*",
        "unlisted origin allowed on a stream: {allow_origin:?}"
    );
    assert_json_if_error(response, "stream request").await;
}

/// Every error is JSON `{"error", "code"}`, the framework's own too.
async fn assert_json_if_error(response: reqwest::Response, what: &str) {
    if response.status().is_client_error() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("CORS refusal of a {what}: {status} is not JSON ({e}): {text:?}")
        });
        assert!(
            body["error"].is_string() && body["code"].is_string(),
            "CORS refusal of a {what}: {status}: {text}"
        );
    }
}

async fn unknown_routes_and_methods_answer_json(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    // `/` leads to the dashboard.
    let root = relay
        .http
        .get(relay.url("/"))
        .send()
        .await
        .expect("request");
    assert_eq!(root.status(), 200);
    assert_eq!(
        root.url().path(),
        "/admin",
        "`/` redirects to the dashboard"
    );
    for path in [
        "/nope",
        "/api/maps",
        "/api/maps/x/y/z",
        "/api/admin",
        "/admin/nope",
    ] {
        let response = relay
            .http
            .get(relay.url(path))
            .send()
            .await
            .expect("request");
        expect_error(response, 404, "NOT_FOUND", &format!("GET {path}")).await;
        let response = relay.get(path, ADMIN).send().await.expect("request");
        expect_error(response, 404, "NOT_FOUND", &format!("GET {path} as admin")).await;
    }
    let wrong_methods = [
        (
            reqwest::Method::DELETE,
            format!("/api/maps/{}/events", map.slug),
        ),
        (
            reqwest::Method::PUT,
            format!("/api/maps/{}/events", map.slug),
        ),
        (
            reqwest::Method::POST,
            format!("/api/maps/{}/events/stream", map.slug),
        ),
        (
            reqwest::Method::GET,
            format!("/api/maps/{}/sse-tokens", map.slug),
        ),
        (reqwest::Method::POST, "/health".to_owned()),
        (reqwest::Method::DELETE, "/metrics".to_owned()),
        (reqwest::Method::POST, "/api/events/stream".to_owned()),
        (reqwest::Method::PATCH, "/api/admin/maps".to_owned()),
        (
            reqwest::Method::DELETE,
            format!("/api/admin/maps/{}", map.slug),
        ),
        (
            reqwest::Method::GET,
            format!("/api/admin/maps/{}/keys", map.slug),
        ),
        (
            reqwest::Method::GET,
            format!("/api/admin/maps/{}/limits", map.slug),
        ),
        (reqwest::Method::POST, "/api/admin/stats".to_owned()),
    ];
    for (method, path) in wrong_methods {
        let response = relay
            .http
            .request(method.clone(), relay.url(&path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("request");
        // RFC 9110: a 405 names the methods the resource has.
        let allow = response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            !allow.is_empty() && !allow.split(", ").any(|m| m == method.as_str()),
            "{method} {path}: Allow {allow:?}"
        );
        expect_error(
            response,
            405,
            "METHOD_NOT_ALLOWED",
            &format!("{method} {path}"),
        )
        .await;
    }
}

async fn health_ready_and_metrics(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    for path in ["/health", "/ready"] {
        let response = relay
            .http
            .get(relay.url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "GET {path}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        // Probes may use HEAD: the same answer, without its body.
        let response = relay
            .http
            .head(relay.url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "HEAD {path}");
        assert!(response.bytes().await.expect("body").is_empty());
    }
    // An answer carrying a secret is not to be cached.
    let minted = relay
        .post(&format!("/api/maps/{}/sse-tokens", map.slug), &map.key)
        .send()
        .await
        .expect("mint");
    assert_eq!(minted.status(), 201);
    assert_eq!(minted.headers()["cache-control"], "no-store");
    let metric = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    let response = relay
        .http
        .get(relay.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let before = response.text().await.expect("text");
    assert!(
        before.contains("herald_events_published_total"),
        "metrics: {before}"
    );
    let published_before = metric(&before, "herald_events_published_total").expect("a value");
    relay
        .publish(
            &map.slug,
            json!([{"type": "m.1"}, {"type": "m.2"}, {"type": "m.3"}]),
        )
        .await;
    // One batch gets consecutive ids: the hand-off histogram samples one
    // id in 8, so 16 delivered live record at least one.
    let mut stream = relay.subscribe(&map.slug, &map.key, "", None).await;
    stream.connected().await;
    let batch: Vec<_> = (0..16).map(|i| json!({"type": format!("h.{i}")})).collect();
    relay.publish(&map.slug, json!(batch)).await;
    assert_eq!(stream.take(16).await.len(), 16);
    let after = relay
        .http
        .get(relay.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert_eq!(
        metric(&after, "herald_events_published_total"),
        Some(published_before + 19.0),
        "metrics after publishing 19: {after}"
    );
    // Streams per map are labelled by map id: `/metrics` takes no
    // credential, and must not tell which slugs exist.
    assert!(
        after.contains(&format!("herald_map_connections{{map=\"{}\"}} 1", map.id)),
        "streams per map: {after}"
    );
    assert!(!after.contains(&map.slug), "a slug in metrics: {after}");
    let handoffs = metric(&after, "herald_delivery_handoff_seconds_count").unwrap_or(0.0);
    assert!(handoffs >= 1.0, "hand-off recorded: {after}");
}
