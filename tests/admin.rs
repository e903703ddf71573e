//! The admin API over real HTTP: maps, keys, limits and their enforcement
//! (exact under concurrency), connections, counters, and persistence of
//! limits across a restart.

mod common;

use std::time::Duration;

use common::{envelope, expect_error, Backend, Relay, SseClient, TestMap, ADMIN, PUBLISHER, WAIT};
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(
    create_map_validates_slugs,
    list_maps_pages_with_limit_and_offset,
    get_map_by_id_and_slug,
    added_keys_work_and_revoked_keys_stop_at_once,
    a_revoked_seeded_key_stays_revoked_across_restarts,
    set_limits_validates_and_resets,
    map_connection_limit_is_enforced,
    key_connection_limit_is_enforced,
    global_connection_limit_is_enforced,
    concurrent_connects_admit_exactly_the_limit,
    connections_are_listed_and_closed,
    limits_and_stats_report_usage,
    admin_endpoints_require_the_admin_token,
    limits_persist_across_restart,
    limits_beyond_the_store_range_are_refused_or_kept,
);

/// Any request with an optional Bearer token and JSON body.
async fn send(
    relay: &Relay,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = relay.http.request(method, relay.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("request")
}

/// An admin request that must answer `status`; returns the JSON body
/// (`Null` when empty).
async fn admin_ok(
    relay: &Relay,
    method: Method,
    path: &str,
    body: Option<Value>,
    status: u16,
) -> Value {
    let response = send(relay, method.clone(), path, Some(ADMIN), body).await;
    let got = response.status();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(got.as_u16(), status, "{method} {path}: {text}");
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).expect("JSON answer")
    }
}

fn unique_slug() -> String {
    format!("s-{}", ulid::Ulid::generate().to_string().to_lowercase())
}

fn stream_path(map: &str) -> String {
    format!("/api/maps/{map}/events/stream")
}

/// Opens a stream that must answer 200; waits for `connected` and returns
/// the client and its connection id.
async fn open_ok(relay: &Relay, map: &str, token: &str) -> (SseClient, String) {
    let response = relay.stream_request(&stream_path(map), token, None).await;
    let status = response.status();
    if status != 200 {
        let text = response.text().await.unwrap_or_default();
        panic!("stream of {map} answered {status}: {text}");
    }
    let mut client = SseClient::new(response);
    let connected = envelope(&client.connected().await);
    let id = connected["connection_id"]
        .as_str()
        .expect("connection_id")
        .to_owned();
    (client, id)
}

async fn set_limits(relay: &Relay, map: &str, body: Value) -> Value {
    admin_ok(
        relay,
        Method::PUT,
        &format!("/api/admin/maps/{map}/limits"),
        Some(body),
        200,
    )
    .await
}

async fn map_detail(relay: &Relay, map: &str) -> Value {
    relay.admin_json(&format!("/api/admin/maps/{map}")).await
}

/// Polls the map's `connections` until it is `want`.
async fn wait_for_connections(relay: &Relay, map: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let detail = map_detail(relay, map).await;
        if detail["connections"] == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections of {map} never reached {want}: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn add_key(relay: &Relay, map: &str) -> (String, String) {
    let body = admin_ok(
        relay,
        Method::POST,
        &format!("/api/admin/maps/{map}/keys"),
        None,
        201,
    )
    .await;
    (
        body["key_id"].as_str().expect("key_id").to_owned(),
        body["api_key"].as_str().expect("api_key").to_owned(),
    )
}

async fn create_map_validates_slugs(backend: Backend) {
    let relay = Relay::start(backend).await;
    let slug = unique_slug();
    let created = admin_ok(
        &relay,
        Method::POST,
        "/api/admin/maps",
        Some(json!({"slug": slug, "name": "Tenant Forty-Two"})),
        201,
    )
    .await;
    let fields: Vec<&str> = created
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    for wanted in ["id", "slug", "key_id", "api_key"] {
        assert!(fields.contains(&wanted), "{wanted} in {created}");
    }
    assert_eq!(created["slug"], slug);
    let id = created["id"].as_str().expect("id");
    assert!(
        ulid::Ulid::from_string(id).is_ok(),
        "map id is a ULID: {id}"
    );
    let key_id = created["key_id"].as_str().expect("key_id");
    assert!(ulid::Ulid::from_string(key_id).is_ok(), "key id is a ULID");
    let key = created["api_key"].as_str().expect("api_key");
    assert!(key.len() >= 16, "a real secret: {key}");
    // The key opens the map's stream; the name is kept.
    let (_client, _) = open_ok(&relay, &slug, key).await;
    assert_eq!(map_detail(&relay, id).await["name"], "Tenant Forty-Two");

    // Valid edge slugs.
    let sixty_four = format!("a{}", "b".repeat(63));
    for ok in [sixty_four.as_str(), "0", "9-lives"] {
        let body = admin_ok(
            &relay,
            Method::POST,
            "/api/admin/maps",
            Some(json!({"slug": ok})),
            201,
        )
        .await;
        assert_eq!(body["slug"], ok);
    }

    let ulid_lower = ulid::Ulid::generate().to_string().to_lowercase();
    let ulid_upper = ulid::Ulid::generate().to_string();
    let sixty_five = "a".repeat(65);
    let bad_slugs = [
        json!({"slug": "Bad"}),
        json!({"slug": "-x"}),
        json!({"slug": ulid_lower}),
        json!({"slug": ulid_upper}),
        json!({"slug": sixty_five}),
        json!({"slug": ""}),
        json!({"slug": "a_b"}),
        json!({"slug": "a.b"}),
        json!({"slug": "a b"}),
        json!({"slug": "é"}),
        json!({"slug": 5}),
        json!({"slug": null}),
        json!({"name": "no slug"}),
    ];
    for body in bad_slugs {
        let response = send(
            &relay,
            Method::POST,
            "/api/admin/maps",
            Some(ADMIN),
            Some(body.clone()),
        )
        .await;
        expect_error(response, 400, "INVALID_SLUG", &format!("create {body}")).await;
    }
    let response = send(
        &relay,
        Method::POST,
        "/api/admin/maps",
        Some(ADMIN),
        Some(json!({"slug": slug})),
    )
    .await;
    expect_error(response, 409, "MAP_EXISTS", "duplicate slug").await;
    // serde would read an array as the fields in order: only an object is a body.
    let response = send(
        &relay,
        Method::POST,
        "/api/admin/maps",
        Some(ADMIN),
        Some(json!(["array-map", "Array"])),
    )
    .await;
    expect_error(response, 400, "INVALID_JSON", "an array body").await;
    let listed = relay.admin_json("/api/admin/maps").await;
    assert_eq!(listed["total"], 4, "only the valid maps exist: {listed}");
}

async fn list_maps_pages_with_limit_and_offset(backend: Backend) {
    let relay = Relay::start(backend).await;
    let mut maps: Vec<TestMap> = Vec::new();
    for _ in 0..3 {
        maps.push(relay.create_map().await);
    }
    let all = relay.admin_json("/api/admin/maps").await;
    assert_eq!(all["total"], 3);
    let items = all["items"].as_array().expect("items");
    let mut listed: Vec<&str> = items
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    listed.sort_unstable();
    let mut created: Vec<&str> = maps.iter().map(|m| m.id.as_str()).collect();
    created.sort_unstable();
    assert_eq!(listed, created);
    for item in items {
        assert!(
            item["slug"].is_string() && item["created_at"].is_string(),
            "{item}"
        );
    }

    let page_ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let order = page_ids(&all);
    let first = relay.admin_json("/api/admin/maps?limit=2").await;
    assert_eq!(first["total"], 3);
    assert_eq!(page_ids(&first), order[..2]);
    let second = relay.admin_json("/api/admin/maps?limit=2&offset=2").await;
    assert_eq!(second["total"], 3);
    assert_eq!(page_ids(&second), order[2..]);
    let past = relay.admin_json("/api/admin/maps?offset=3").await;
    assert_eq!(past["total"], 3);
    assert_eq!(page_ids(&past), Vec::<String>::new());
    let one = relay.admin_json("/api/admin/maps?limit=1&offset=1").await;
    assert_eq!(page_ids(&one), order[1..2]);

    for query in ["limit=0", "limit=abc", "offset=-1"] {
        let response = send(
            &relay,
            Method::GET,
            &format!("/api/admin/maps?{query}"),
            Some(ADMIN),
            None,
        )
        .await;
        expect_error(response, 400, "INVALID_QUERY", query).await;
    }
}

async fn get_map_by_id_and_slug(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let by_slug = map_detail(&relay, &map.slug).await;
    let by_id = map_detail(&relay, &map.id).await;
    assert_eq!(by_slug, by_id);
    assert_eq!(by_id["id"], map.id);
    assert_eq!(by_id["slug"], map.slug);
    assert!(by_id["name"].is_string());
    assert!(by_id["created_at"]
        .as_str()
        .is_some_and(|t| t.len() == 24 && t.ends_with('Z')));
    assert_eq!(
        by_id["limits"],
        json!({"max_connections": 1000, "max_connections_per_key": 100}),
        "configured defaults"
    );
    assert_eq!(by_id["connections"], 0);
    let keys = by_id["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["key_id"], map.key_id);
    assert!(keys[0]["created_at"].is_string());
    assert_eq!(keys[0]["connections"], 0);

    let (_a, _) = open_ok(&relay, &map.slug, &map.key).await;
    let (_b, _) = open_ok(&relay, &map.slug, &map.key).await;
    let (_admin, _) = open_ok(&relay, &map.slug, ADMIN).await;
    let detail = map_detail(&relay, &map.slug).await;
    assert_eq!(detail["connections"], 3, "admin streams count for the map");
    assert_eq!(detail["keys"][0]["connections"], 2, "but not for a key");

    let response = send(
        &relay,
        Method::GET,
        "/api/admin/maps/no-such-map",
        Some(ADMIN),
        None,
    )
    .await;
    expect_error(response, 404, "MAP_NOT_FOUND", "unknown slug").await;
    let unknown = format!("/api/admin/maps/{}", ulid::Ulid::generate());
    let response = send(&relay, Method::GET, &unknown, Some(ADMIN), None).await;
    expect_error(response, 404, "MAP_NOT_FOUND", "unknown id").await;
}

async fn added_keys_work_and_revoked_keys_stop_at_once(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let other = relay.create_map().await;
    let (key_id, key) = add_key(&relay, &map.slug).await;
    assert!(ulid::Ulid::from_string(&key_id).is_ok());
    assert_ne!(key, map.key);
    let detail = map_detail(&relay, &map.id).await;
    let key_ids: Vec<&str> = detail["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["key_id"].as_str().expect("key_id"))
        .collect();
    assert_eq!(key_ids.len(), 2);
    assert!(key_ids.contains(&key_id.as_str()) && key_ids.contains(&map.key_id.as_str()));

    // The new key streams and reads history; an SSE token is minted with it.
    let (mut revoked_stream, _) = open_ok(&relay, &map.slug, &key).await;
    let (mut kept_stream, _) = open_ok(&relay, &map.slug, &map.key).await;
    let minted: Value = relay
        .post(&format!("/api/maps/{}/sse-tokens", map.slug), &key)
        .send()
        .await
        .expect("mint")
        .json()
        .await
        .expect("json");
    let token = minted["token"].as_str().expect("token").to_owned();
    let minted: Value = relay
        .post(&format!("/api/maps/{}/sse-tokens", map.slug), &key)
        .send()
        .await
        .expect("mint")
        .json()
        .await
        .expect("json");
    let response = relay
        .stream_request(
            &format!(
                "/api/maps/{}/events/stream?token={}",
                map.slug,
                minted["token"].as_str().expect("token")
            ),
            "",
            None,
        )
        .await;
    assert_eq!(response.status(), 200, "SSE token of the new key");
    let mut token_stream = SseClient::new(response);
    token_stream.connected().await;
    let first = relay
        .publish(&map.slug, json!({"type": "before.revoke"}))
        .await;
    assert_eq!(revoked_stream.expect().await.id, first[0]);
    assert_eq!(token_stream.expect().await.id, first[0]);
    assert_eq!(kept_stream.expect().await.id, first[0]);

    // A key of another map, or an unknown key id: 404, nothing revoked.
    let path = format!("/api/admin/maps/{}/keys/{}", other.slug, key_id);
    let response = send(&relay, Method::DELETE, &path, Some(ADMIN), None).await;
    expect_error(response, 404, "KEY_NOT_FOUND", "key of another map").await;
    let path = format!(
        "/api/admin/maps/{}/keys/{}",
        map.slug,
        ulid::Ulid::generate()
    );
    let response = send(&relay, Method::DELETE, &path, Some(ADMIN), None).await;
    expect_error(response, 404, "KEY_NOT_FOUND", "unknown key id").await;
    let path = format!("/api/admin/maps/{}/keys/not-an-id", map.slug);
    let response = send(&relay, Method::DELETE, &path, Some(ADMIN), None).await;
    expect_error(response, 404, "KEY_NOT_FOUND", "malformed key id").await;
    let path = format!("/api/admin/maps/no-such-map/keys/{key_id}");
    let response = send(&relay, Method::DELETE, &path, Some(ADMIN), None).await;
    expect_error(response, 404, "MAP_NOT_FOUND", "unknown map").await;

    // Revoke: 204, its stream ends at once, the other key's stays.
    let path = format!("/api/admin/maps/{}/keys/{}", map.slug, key_id);
    let response = send(&relay, Method::DELETE, &path, Some(ADMIN), None).await;
    assert_eq!(response.status(), 204);
    assert!(
        revoked_stream.ends_within(Duration::from_secs(3)).await,
        "the revoked key's stream ends promptly"
    );
    assert!(
        token_stream.ends_within(Duration::from_secs(3)).await,
        "a stream opened with the revoked key's SSE token ends too"
    );
    let second = relay
        .publish(&map.slug, json!({"type": "after.revoke"}))
        .await;
    assert_eq!(kept_stream.expect().await.id, second[0]);

    // Later requests with the revoked key: 401 everywhere.
    let response = relay
        .stream_request(&stream_path(&map.slug), &key, None)
        .await;
    expect_error(response, 401, "UNAUTHORIZED", "stream with a revoked key").await;
    let response = relay
        .get(&format!("/api/maps/{}/events", map.slug), &key)
        .send()
        .await
        .expect("history");
    expect_error(response, 401, "UNAUTHORIZED", "history with a revoked key").await;
    let response = relay
        .post(&format!("/api/maps/{}/sse-tokens", map.slug), &key)
        .send()
        .await
        .expect("mint");
    expect_error(response, 401, "UNAUTHORIZED", "minting with a revoked key").await;
    let response = relay
        .stream_request(
            &format!("/api/maps/{}/events/stream?token={token}", map.slug),
            "",
            None,
        )
        .await;
    expect_error(response, 401, "UNAUTHORIZED", "SSE token of a revoked key").await;

    // Revoking twice: 404. The first key still works; the map lists one key.
    let response = send(&relay, Method::DELETE, &path, Some(ADMIN), None).await;
    expect_error(response, 404, "KEY_NOT_FOUND", "revoked twice").await;
    let (_still, _) = open_ok(&relay, &map.slug, &map.key).await;
    let detail = map_detail(&relay, &map.slug).await;
    assert_eq!(detail["keys"].as_array().map(Vec::len), Some(1));
    assert_eq!(detail["keys"][0]["key_id"], map.key_id);
    let response = send(
        &relay,
        Method::POST,
        "/api/admin/maps/no-such-map/keys",
        Some(ADMIN),
        None,
    )
    .await;
    expect_error(response, 404, "MAP_NOT_FOUND", "add key to unknown map").await;
}

async fn a_revoked_seeded_key_stays_revoked_across_restarts(backend: Backend) {
    let mut relay = Relay::start(backend).await;
    relay.add_settings("[[maps]]\nslug = \"seeded\"\napi_key = \"seeded-map-key\"\n");
    relay.restart();
    let (stream, _) = open_ok(&relay, "seeded", "seeded-map-key").await;
    drop(stream);
    let detail = map_detail(&relay, "seeded").await;
    let key_id = detail["keys"][0]["key_id"].as_str().expect("key_id");
    let revoked = send(
        &relay,
        Method::DELETE,
        &format!("/api/admin/maps/seeded/keys/{key_id}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(revoked.status(), 204);
    relay.restart();
    let refused = relay
        .stream_request("/api/maps/seeded/events/stream", "seeded-map-key", None)
        .await;
    expect_error(
        refused,
        401,
        "UNAUTHORIZED",
        "a revoked seeded key after a restart",
    )
    .await;
    assert_eq!(map_detail(&relay, "seeded").await["keys"], json!([]));
}

async fn set_limits_validates_and_resets(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let set = set_limits(
        &relay,
        &map.slug,
        json!({"max_connections": 5, "max_connections_per_key": 2}),
    )
    .await;
    assert_eq!(
        set,
        json!({"max_connections": 5, "max_connections_per_key": 2})
    );
    assert_eq!(map_detail(&relay, &map.id).await["limits"], set);

    // Absent fields stay; null resets to the configured default.
    let set = set_limits(&relay, &map.id, json!({"max_connections": 7})).await;
    assert_eq!(
        set,
        json!({"max_connections": 7, "max_connections_per_key": 2})
    );
    let set = set_limits(&relay, &map.slug, json!({})).await;
    assert_eq!(
        set,
        json!({"max_connections": 7, "max_connections_per_key": 2})
    );
    let set = set_limits(&relay, &map.slug, json!({"max_connections": null})).await;
    assert_eq!(
        set,
        json!({"max_connections": 1000, "max_connections_per_key": 2})
    );
    let set = set_limits(&relay, &map.slug, json!({"max_connections_per_key": null})).await;
    assert_eq!(
        set,
        json!({"max_connections": 1000, "max_connections_per_key": 100})
    );
    let set = set_limits(
        &relay,
        &map.slug,
        json!({"max_connections": 3, "max_connections_per_key": 0}),
    )
    .await;
    assert_eq!(
        set,
        json!({"max_connections": 3, "max_connections_per_key": 0})
    );

    let invalid = [
        json!({"max_connection": 1}),
        json!({"max_connections": 1, "extra": true}),
        json!({"max_connections": -1}),
        json!({"max_connections_per_key": -5}),
        json!({"max_connections": 1.5}),
        json!({"max_connections": "5"}),
        json!({"max_connections": true}),
        json!({"max_connections": [1]}),
        json!([]),
        json!(5),
    ];
    for body in invalid {
        let response = send(
            &relay,
            Method::PUT,
            &format!("/api/admin/maps/{}/limits", map.slug),
            Some(ADMIN),
            Some(body.clone()),
        )
        .await;
        expect_error(response, 400, "INVALID_LIMITS", &format!("limits {body}")).await;
    }
    assert_eq!(
        map_detail(&relay, &map.slug).await["limits"],
        json!({"max_connections": 3, "max_connections_per_key": 0}),
        "refused changes change nothing"
    );
    let response = send(
        &relay,
        Method::PUT,
        "/api/admin/maps/no-such-map/limits",
        Some(ADMIN),
        Some(json!({"max_connections": 1})),
    )
    .await;
    expect_error(response, 404, "MAP_NOT_FOUND", "limits of an unknown map").await;
}

async fn map_connection_limit_is_enforced(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let other = relay.create_map().await;
    let (_, second_key) = add_key(&relay, &map.slug).await;
    set_limits(&relay, &map.slug, json!({"max_connections": 2})).await;
    let (mut a, _) = open_ok(&relay, &map.slug, &map.key).await;
    let (mut b, _) = open_ok(&relay, &map.slug, &second_key).await;
    for (token, what) in [
        (map.key.as_str(), "first key"),
        (second_key.as_str(), "second key"),
        (ADMIN, "admin token"),
    ] {
        let response = relay
            .stream_request(&stream_path(&map.slug), token, None)
            .await;
        expect_error(response, 429, "MAP_CONNECTION_LIMIT", what).await;
    }
    // Another map is unaffected.
    let (_c, _) = open_ok(&relay, &other.slug, &other.key).await;

    // Lowering the limit keeps open streams open; new ones are refused.
    set_limits(&relay, &map.slug, json!({"max_connections": 1})).await;
    let published = relay
        .publish(&map.slug, json!({"type": "still.here"}))
        .await;
    assert_eq!(a.expect().await.id, published[0]);
    assert_eq!(b.expect().await.id, published[0]);
    assert_eq!(map_detail(&relay, &map.slug).await["connections"], 2);
    drop(a);
    wait_for_connections(&relay, &map.slug, 1).await;
    let response = relay
        .stream_request(&stream_path(&map.slug), &map.key, None)
        .await;
    expect_error(
        response,
        429,
        "MAP_CONNECTION_LIMIT",
        "at the lowered limit",
    )
    .await;

    // Raising it admits again.
    set_limits(&relay, &map.slug, json!({"max_connections": 3})).await;
    let (_d, _) = open_ok(&relay, &map.slug, ADMIN).await;
    let (_e, _) = open_ok(&relay, &map.slug, &map.key).await;
    let response = relay
        .stream_request(&stream_path(&map.slug), &map.key, None)
        .await;
    expect_error(response, 429, "MAP_CONNECTION_LIMIT", "at the raised limit").await;
}

async fn key_connection_limit_is_enforced(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let (_, second_key) = add_key(&relay, &map.slug).await;
    let (_first, _) = open_ok(&relay, &map.slug, &map.key).await;
    let (_second, _) = open_ok(&relay, &map.slug, &map.key).await;
    // Binds existing keys, open streams over it stay.
    set_limits(&relay, &map.slug, json!({"max_connections_per_key": 1})).await;
    let response = relay
        .stream_request(&stream_path(&map.slug), &map.key, None)
        .await;
    expect_error(
        response,
        429,
        "API_KEY_CONNECTION_LIMIT",
        "first key over its limit",
    )
    .await;
    // Another key of the map has its own count.
    let (_other, _) = open_ok(&relay, &map.slug, &second_key).await;
    let response = relay
        .stream_request(&stream_path(&map.slug), &second_key, None)
        .await;
    expect_error(
        response,
        429,
        "API_KEY_CONNECTION_LIMIT",
        "second key over its limit",
    )
    .await;
    // The admin token counts against the map, not a key.
    let (_admin1, _) = open_ok(&relay, &map.slug, ADMIN).await;
    let (_admin2, _) = open_ok(&relay, &map.slug, ADMIN).await;
    // A stream opened with an SSE token counts against the issuing key.
    let minted: Value = relay
        .post(&format!("/api/maps/{}/sse-tokens", map.slug), &second_key)
        .send()
        .await
        .expect("mint")
        .json()
        .await
        .expect("json");
    let token = minted["token"].as_str().expect("token");
    let response = relay
        .stream_request(
            &format!("/api/maps/{}/events/stream?token={token}", map.slug),
            "",
            None,
        )
        .await;
    expect_error(
        response,
        429,
        "API_KEY_CONNECTION_LIMIT",
        "SSE token of a full key",
    )
    .await;
    let detail = map_detail(&relay, &map.slug).await;
    assert_eq!(detail["connections"], 5);
}

async fn global_connection_limit_is_enforced(backend: Backend) {
    let relay = Relay::start_with(backend, &[("HERALD__LIMITS__MAX_CONNECTIONS", "2")]).await;
    let a = relay.create_map().await;
    let b = relay.create_map().await;
    let (first, _) = open_ok(&relay, &a.slug, &a.key).await;
    // The firehose counts against the global limit.
    let response = relay
        .stream_request("/api/events/stream", ADMIN, None)
        .await;
    assert_eq!(response.status(), 200);
    let mut firehose = SseClient::new(response);
    firehose.connected().await;
    let response = relay
        .stream_request(&stream_path(&b.slug), &b.key, None)
        .await;
    expect_error(
        response,
        429,
        "GLOBAL_CONNECTION_LIMIT",
        "third stream, another map",
    )
    .await;
    let response = relay
        .stream_request("/api/events/stream", ADMIN, None)
        .await;
    expect_error(response, 429, "GLOBAL_CONNECTION_LIMIT", "second firehose").await;
    let listed = relay.admin_json("/api/admin/connections").await;
    assert_eq!(listed["total"], 2);
    assert!(
        listed["items"].as_array().is_some_and(|items| items
            .iter()
            .any(|c| c["map_id"].is_null() && c["key_id"].is_null())),
        "the firehose is listed with map_id null: {listed}"
    );
    let limits = relay.admin_json("/api/admin/limits").await;
    assert_eq!(limits["global"]["max_connections"], 2);
    assert_eq!(limits["global"]["connections"], 2);
    drop(first);
    wait_for_connections(&relay, &a.slug, 0).await;
    let (_b, _) = open_ok(&relay, &b.slug, &b.key).await;
}

async fn concurrent_connects_admit_exactly_the_limit(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    set_limits(&relay, &map.slug, json!({"max_connections": 5})).await;
    let path = stream_path(&map.slug);
    let responses = join_all((0..20).map(|_| relay.stream_request(&path, &map.key, None))).await;
    let mut admitted = Vec::new();
    let mut refused = 0;
    for response in responses {
        match response.status().as_u16() {
            200 => admitted.push(SseClient::new(response)),
            429 => {
                expect_error(response, 429, "MAP_CONNECTION_LIMIT", "concurrent connect").await;
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(admitted.len(), 5, "exactly the limit is admitted");
    assert_eq!(refused, 15);
    for client in &mut admitted {
        client.connected().await;
    }
    let detail = map_detail(&relay, &map.slug).await;
    assert_eq!(detail["connections"], 5);
    assert_eq!(detail["keys"][0]["connections"], 5);

    // A closed stream frees its slot.
    drop(admitted.pop());
    wait_for_connections(&relay, &map.slug, 4).await;
    let (again, _) = open_ok(&relay, &map.slug, &map.key).await;
    let response = relay.stream_request(&path, &map.key, None).await;
    expect_error(response, 429, "MAP_CONNECTION_LIMIT", "full again").await;

    // All closed: all slots free.
    admitted.clear();
    drop(again);
    wait_for_connections(&relay, &map.slug, 0).await;
    let responses = join_all((0..8).map(|_| relay.stream_request(&path, &map.key, None))).await;
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    assert_eq!(ok, 5, "a second wave is admitted up to the limit again");
}

async fn connections_are_listed_and_closed(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let other = relay.create_map().await;
    let response = relay
        .stream_request(
            &format!(
                "/api/maps/{}/events/stream?events=a.*&sources=svc",
                map.slug
            ),
            &map.key,
            None,
        )
        .await;
    assert_eq!(response.status(), 200);
    let mut keyed = SseClient::new(response);
    let keyed_id = envelope(&keyed.connected().await)["connection_id"]
        .as_str()
        .expect("connection_id")
        .to_owned();
    let (mut by_admin, admin_id) = open_ok(&relay, &map.slug, ADMIN).await;
    let (_elsewhere, elsewhere_id) = open_ok(&relay, &other.slug, &other.key).await;

    let listed = relay
        .admin_json(&format!("/api/admin/connections?map={}", map.slug))
        .await;
    assert_eq!(listed["total"], 2, "{listed}");
    let items = listed["items"].as_array().expect("items");
    let find = |id: &str| {
        items
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("connection {id} listed in {listed}"))
            .clone()
    };
    let keyed_info = find(&keyed_id);
    assert_eq!(keyed_info["map_id"], map.id);
    assert_eq!(keyed_info["key_id"], map.key_id);
    assert!(
        keyed_info["remote_addr"]
            .as_str()
            .is_some_and(|a| a.contains("127.0.0.1")),
        "{keyed_info}"
    );
    assert!(keyed_info["connected_at"]
        .as_str()
        .is_some_and(|t| t.len() == 24 && t.ends_with('Z')));
    assert_eq!(keyed_info["events_sent"], 0);
    let filter = keyed_info["filter"].as_str().expect("filter");
    assert!(filter.contains("a.*") && filter.contains("svc"), "{filter}");
    let admin_info = find(&admin_id);
    assert_eq!(admin_info["map_id"], map.id);
    assert!(admin_info["key_id"].is_null(), "{admin_info}");
    assert!(items.iter().all(|c| c["id"] != elsewhere_id));
    let by_id = relay
        .admin_json(&format!("/api/admin/connections?map={}", map.id))
        .await;
    assert_eq!(by_id["total"], 2);
    let everything = relay.admin_json("/api/admin/connections").await;
    assert_eq!(everything["total"], 3);
    let page = relay
        .admin_json("/api/admin/connections?limit=1&offset=1")
        .await;
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));

    // events_sent moves as events are written.
    relay
        .publish(
            &map.slug,
            json!([{"type": "a.x", "source": "svc"}, {"type": "b.x", "source": "svc"}]),
        )
        .await;
    assert_eq!(keyed.expect().await.event, "a.x");
    assert_eq!(by_admin.take(2).await.len(), 2);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let listed = relay
            .admin_json(&format!("/api/admin/connections?map={}", map.slug))
            .await;
        let sent = |id: &str| {
            listed["items"]
                .as_array()
                .and_then(|items| items.iter().find(|c| c["id"] == id))
                .map(|c| c["events_sent"].clone())
        };
        if sent(&keyed_id) == Some(json!(1)) && sent(&admin_id) == Some(json!(2)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events_sent never reached 1 and 2: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Close one: 204, that stream ends, the other stays.
    let path = format!("/api/admin/connections/{keyed_id}");
    let response = send(&relay, Method::DELETE, &path, Some(ADMIN), None).await;
    assert_eq!(response.status(), 204);
    assert!(
        keyed.ends_within(Duration::from_secs(3)).await,
        "the closed stream ends"
    );
    wait_for_connections(&relay, &map.slug, 1).await;
    let listed = relay
        .admin_json(&format!("/api/admin/connections?map={}", map.slug))
        .await;
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["items"][0]["id"], admin_id);
    let published = relay.publish(&map.slug, json!({"type": "a.y"})).await;
    assert_eq!(by_admin.expect().await.id, published[0]);

    let response = send(&relay, Method::DELETE, &path, Some(ADMIN), None).await;
    expect_error(response, 404, "CONNECTION_NOT_FOUND", "closed twice").await;
    let unknown = format!("/api/admin/connections/{}", ulid::Ulid::generate());
    let response = send(&relay, Method::DELETE, &unknown, Some(ADMIN), None).await;
    expect_error(response, 404, "CONNECTION_NOT_FOUND", "unknown id").await;
    let response = send(
        &relay,
        Method::DELETE,
        "/api/admin/connections/garbage",
        Some(ADMIN),
        None,
    )
    .await;
    expect_error(response, 404, "CONNECTION_NOT_FOUND", "malformed id").await;
    let response = send(
        &relay,
        Method::GET,
        "/api/admin/connections?map=no-such-map",
        Some(ADMIN),
        None,
    )
    .await;
    expect_error(
        response,
        404,
        "MAP_NOT_FOUND",
        "connections of an unknown map",
    )
    .await;
}

async fn limits_and_stats_report_usage(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    set_limits(
        &relay,
        &map.slug,
        json!({"max_connections": 9, "max_connections_per_key": 4}),
    )
    .await;

    let before = relay.admin_json("/api/admin/stats").await;
    for field in [
        "connections",
        "maps",
        "published",
        "delivered",
        "store_batches",
    ] {
        assert!(before[field].is_u64(), "stats.{field}: {before}");
    }
    assert!(
        before
            .as_object()
            .is_some_and(|o| o.keys().any(|k| k.contains("slow"))),
        "slow-consumer disconnects in {before}"
    );
    assert_eq!(before["connections"], 0);
    assert_eq!(before["maps"], 1);
    assert_eq!(before["published"], 0);

    let (mut client, _) = open_ok(&relay, &map.slug, &map.key).await;
    relay
        .publish(
            &map.slug,
            json!([{"type": "s.1"}, {"type": "s.2"}, {"type": "s.3"}]),
        )
        .await;
    assert_eq!(client.take(3).await.len(), 3);

    let limits = relay.admin_json("/api/admin/limits").await;
    assert_eq!(limits["global"]["max_connections"], 10_000);
    assert_eq!(limits["global"]["connections"], 1);
    let text = limits.to_string();
    assert!(text.contains(&map.id), "the map appears in {text}");
    assert!(text.contains(&map.key_id), "its key appears in {text}");
    let entry = limits["maps"]
        .as_array()
        .and_then(|maps| maps.iter().find(|m| m["map_id"] == map.id))
        .unwrap_or_else(|| panic!("per-map usage in {limits}"));
    assert_eq!(entry["max_connections"], 9);
    assert_eq!(entry["max_connections_per_key"], 4);
    assert_eq!(entry["connections"], 1);
    assert_eq!(entry["keys"][0]["key_id"], map.key_id);
    assert_eq!(entry["keys"][0]["connections"], 1);

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let after = relay.admin_json("/api/admin/stats").await;
        assert_eq!(after["published"], 3, "{after}");
        assert_eq!(after["connections"], 1);
        assert!(after["store_batches"].as_u64() >= Some(1), "{after}");
        if after["delivered"].as_u64() >= before["delivered"].as_u64().map(|d| d + 3) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered never moved by 3: {before} -> {after}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn admin_endpoints_require_the_admin_token(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let (mut client, conn_id) = open_ok(&relay, &map.slug, &map.key).await;
    let endpoints: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/api/admin/maps".into(), None),
        (
            Method::POST,
            "/api/admin/maps".into(),
            Some(json!({"slug": unique_slug()})),
        ),
        (Method::GET, format!("/api/admin/maps/{}", map.slug), None),
        (
            Method::POST,
            format!("/api/admin/maps/{}/keys", map.slug),
            None,
        ),
        (
            Method::DELETE,
            format!("/api/admin/maps/{}/keys/{}", map.slug, map.key_id),
            None,
        ),
        (
            Method::PUT,
            format!("/api/admin/maps/{}/limits", map.slug),
            Some(json!({"max_connections": 0})),
        ),
        (Method::GET, "/api/admin/limits".into(), None),
        (Method::GET, "/api/admin/connections".into(), None),
        (
            Method::DELETE,
            format!("/api/admin/connections/{conn_id}"),
            None,
        ),
        (Method::GET, "/api/admin/stats".into(), None),
    ];
    let tokens: [(Option<&str>, &str); 5] = [
        (None, "no credential"),
        (Some("wrong"), "a wrong token"),
        (Some(PUBLISHER), "the publisher token"),
        (Some(&map.key), "a map key"),
        (Some(""), "an empty Bearer"),
    ];
    for (method, path, body) in &endpoints {
        for (token, what) in tokens {
            let response = send(&relay, method.clone(), path, token, body.clone()).await;
            expect_error(
                response,
                401,
                "UNAUTHORIZED",
                &format!("{method} {path} with {what}"),
            )
            .await;
        }
    }
    // Nothing happened: the key, the stream and the limits are intact.
    let published = relay
        .publish(&map.slug, json!({"type": "still.open"}))
        .await;
    assert_eq!(client.expect().await.id, published[0]);
    let detail = map_detail(&relay, &map.slug).await;
    assert_eq!(detail["keys"].as_array().map(Vec::len), Some(1));
    assert_eq!(detail["limits"]["max_connections"], 1000);
    assert_eq!(relay.admin_json("/api/admin/maps").await["total"], 1);
}

async fn limits_persist_across_restart(backend: Backend) {
    let mut relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let (key_id, key) = add_key(&relay, &map.slug).await;
    let other = relay.create_map().await;
    set_limits(
        &relay,
        &map.slug,
        json!({"max_connections": 2, "max_connections_per_key": 1}),
    )
    .await;
    set_limits(&relay, &other.slug, json!({"max_connections": 3})).await;
    set_limits(&relay, &other.slug, json!({"max_connections": null})).await;

    relay.restart();

    let detail = map_detail(&relay, &map.slug).await;
    assert_eq!(
        detail["limits"],
        json!({"max_connections": 2, "max_connections_per_key": 1})
    );
    let key_ids: Vec<&str> = detail["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["key_id"].as_str().expect("key_id"))
        .collect();
    assert!(key_ids.contains(&key_id.as_str()) && key_ids.contains(&map.key_id.as_str()));
    assert_eq!(
        map_detail(&relay, &other.slug).await["limits"],
        json!({"max_connections": 1000, "max_connections_per_key": 100}),
        "a reset survives too"
    );
    // And they are enforced after the restart.
    let (_a, _) = open_ok(&relay, &map.slug, &map.key).await;
    let response = relay
        .stream_request(&stream_path(&map.slug), &map.key, None)
        .await;
    expect_error(
        response,
        429,
        "API_KEY_CONNECTION_LIMIT",
        "per key after restart",
    )
    .await;
    let (_b, _) = open_ok(&relay, &map.slug, &key).await;
    let response = relay
        .stream_request(&stream_path(&map.slug), ADMIN, None)
        .await;
    expect_error(
        response,
        429,
        "MAP_CONNECTION_LIMIT",
        "per map after restart",
    )
    .await;
}

async fn limits_beyond_the_store_range_are_refused_or_kept(backend: Backend) {
    let mut relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let huge = json!({"max_connections": u64::MAX, "max_connections_per_key": 1u64 << 63});
    let response = send(
        &relay,
        Method::PUT,
        &format!("/api/admin/maps/{}/limits", map.slug),
        Some(ADMIN),
        Some(huge.clone()),
    )
    .await;
    if response.status() == 200 {
        // Accepted: then that is the value, now and after a restart.
        let answer: Value = response.json().await.expect("json");
        assert_eq!(answer, huge);
        relay.restart();
        assert_eq!(
            map_detail(&relay, &map.slug).await["limits"],
            huge,
            "an accepted limit is persisted as answered"
        );
    } else {
        expect_error(response, 400, "INVALID_LIMITS", "limits beyond i64").await;
    }
}
