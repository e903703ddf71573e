//! Streams: frame order and headers, live delivery, filters, keep-alive,
//! map isolation.

mod common;

use std::time::Duration;

use common::{envelope, ids, Backend, Relay};
use futures_util::StreamExt;
use serde_json::json;

backend_tests!(
    preamble_and_headers_are_exact,
    live_events_arrive_in_order_with_envelope,
    connected_id_is_the_newest_event,
    filters_select_types_and_sources,
    maps_are_isolated,
    keepalive_fills_silence,
    slug_and_id_both_name_a_map,
);

async fn preamble_and_headers_are_exact(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let response = relay
        .stream_request(
            &format!("/api/maps/{}/events/stream", map.slug),
            &map.key,
            None,
        )
        .await;
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    let mut bytes = response.bytes_stream();
    let mut text = String::new();
    while !text.contains("event: connected\ndata: ") || !text.ends_with("\n\n") {
        let chunk = tokio::time::timeout(common::WAIT, bytes.next())
            .await
            .expect("preamble")
            .expect("open")
            .expect("bytes");
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    let expected_start = "retry: 3000\n\nid: 00000000000000000000000000\nevent: connected\ndata: {";
    assert!(text.starts_with(expected_start), "preamble was {text:?}");
    let data_line = text
        .lines()
        .find(|l| l.starts_with("data: "))
        .expect("data line");
    let data: serde_json::Value = serde_json::from_str(&data_line["data: ".len()..]).expect("json");
    assert_eq!(data["map_id"], map.id);
    assert_eq!(data["connection_id"].as_str().map(str::len), Some(26));
    assert!(data["server_time"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
}

async fn live_events_arrive_in_order_with_envelope(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let mut client = relay.subscribe(&map.slug, &map.key, "", None).await;
    client.connected().await;
    let mut published = relay
        .publish(
            &map.slug,
            json!({"type": "order.created", "source": "shop", "payload": {"n": 1}}),
        )
        .await;
    published.extend(
        relay
            .publish(&map.slug, json!([{"type": "order.paid", "payload": [1, 2.5, "x"]}, {"type": "order.shipped"}]))
            .await,
    );
    let events = client.take(3).await;
    assert_eq!(ids(&events), published);
    assert_eq!(events[0].event, "order.created");
    let first = envelope(&events[0]);
    assert_eq!(first["id"], published[0]);
    assert_eq!(first["map_id"], map.id);
    assert_eq!(first["type"], "order.created");
    assert_eq!(first["source"], "shop");
    assert_eq!(first["payload"], json!({"n": 1}));
    assert!(first["created_at"]
        .as_str()
        .is_some_and(|t| t.len() == 24 && t.ends_with('Z')));
    assert_eq!(envelope(&events[1])["payload"], json!([1, 2.5, "x"]));
    assert_eq!(envelope(&events[2])["payload"], json!(null));
    assert_eq!(envelope(&events[2])["source"], "");
    assert!(
        published.windows(2).all(|w| w[0] < w[1]),
        "ids increase: {published:?}"
    );
}

async fn connected_id_is_the_newest_event(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let before = relay.publish_n(&map.slug, 3).await;
    let mut client = relay.subscribe(&map.slug, &map.key, "", None).await;
    assert_eq!(client.connected().await.id, before[2]);
    let after = relay.publish_n(&map.slug, 2).await;
    assert_eq!(
        ids(&client.take(2).await),
        after,
        "only events after the start position"
    );
}

async fn filters_select_types_and_sources(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let mut blog = relay
        .subscribe(&map.slug, &map.key, "?events=blog.*,%20*.created", None)
        .await;
    let mut source = relay
        .subscribe(&map.slug, &map.key, "?sources=svc-a", None)
        .await;
    blog.connected().await;
    source.connected().await;
    let published = relay
        .publish(
            &map.slug,
            json!([
                {"type": "blog", "source": "svc-a"},
                {"type": "blog.post", "source": "svc-b"},
                {"type": "blog.post.created"},
                {"type": "user.created", "source": "svc-a"},
                {"type": "a.b.created"},
                {"type": "end", "source": "svc-a"},
            ]),
        )
        .await;
    let got: Vec<String> = blog.take(3).await.iter().map(|e| e.event.clone()).collect();
    assert_eq!(got, ["blog.post", "blog.post.created", "user.created"]);
    assert!(
        blog.next_within(Duration::from_millis(300)).await.is_none(),
        "nothing else matches"
    );
    assert_eq!(
        ids(&source.take(3).await),
        [
            published[0].clone(),
            published[3].clone(),
            published[5].clone()
        ]
    );
}

async fn maps_are_isolated(backend: Backend) {
    let relay = Relay::start(backend).await;
    let a = relay.create_map().await;
    let b = relay.create_map().await;
    let mut sub_b = relay.subscribe(&b.slug, &b.key, "", None).await;
    sub_b.connected().await;
    relay.publish_n(&a.slug, 5).await;
    let only_b = relay.publish(&b.slug, json!({"type": "b.only"})).await;
    let event = sub_b.expect().await;
    assert_eq!(event.id, only_b[0], "map B's subscriber sees only map B");
    assert_eq!(envelope(&event)["map_id"], b.id);
    let cross = relay
        .stream_request(&format!("/api/maps/{}/events/stream", b.slug), &a.key, None)
        .await;
    assert_eq!(cross.status(), 401, "a key of map A does not open map B");
    let history = relay
        .get(&format!("/api/maps/{}/events", b.slug), &a.key)
        .send()
        .await
        .unwrap();
    assert_eq!(history.status(), 401);
}

async fn keepalive_fills_silence(backend: Backend) {
    let relay = Relay::start_with(backend, &[("HERALD__SSE__KEEPALIVE_SECS", "1")]).await;
    let map = relay.create_map().await;
    let response = relay
        .stream_request(
            &format!("/api/maps/{}/events/stream", map.slug),
            &map.key,
            None,
        )
        .await;
    let mut bytes = response.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    while !text.contains(": keepalive\n\n") {
        match tokio::time::timeout_at(deadline, bytes.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(std::str::from_utf8(&chunk).unwrap()),
            _ => panic!("no keep-alive within 2.5 s of silence; got {text:?}"),
        }
    }
}

async fn slug_and_id_both_name_a_map(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let mut by_id = relay.subscribe(&map.id, &map.key, "", None).await;
    let mut by_lower_id = relay
        .subscribe(&map.id.to_lowercase(), &map.key, "", None)
        .await;
    by_id.connected().await;
    by_lower_id.connected().await;
    let published = relay.publish(&map.id, json!({"type": "x"})).await;
    assert_eq!(by_id.expect().await.id, published[0]);
    assert_eq!(by_lower_id.expect().await.id, published[0]);
}
