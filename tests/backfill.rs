//! Backfill: every reconnect gets exactly the events it missed, in order —
//! from memory or from the store, across restarts, through the backfill →
//! live hand-over while events keep coming, with truncation reported.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{envelope, ids, Backend, Relay};
use serde_json::json;

backend_tests!(
    reconnect_with_any_seen_id_gets_exactly_the_rest,
    reconnect_from_the_store_when_memory_is_short,
    seeing_only_connected_then_reconnecting_gets_everything_since,
    last_event_id_forms,
    events_survive_a_restart,
    too_many_missed_events_are_truncated_to_the_newest,
    pruned_gap_is_reported,
    a_map_emptied_by_retention_keeps_its_position,
    handover_under_concurrent_publishing_loses_and_repeats_nothing,
    long_backfill_spans_several_store_pages,
);

async fn drain_quiet(client: &mut common::SseClient) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(event) = client.next_within(Duration::from_millis(400)).await {
        got.push(event.id);
    }
    got
}

async fn reconnect_with_any_seen_id_gets_exactly_the_rest(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let published = relay.publish_n(&map.slug, 12).await;
    for k in [0, 5, 10, 11] {
        let mut client = relay
            .subscribe(&map.slug, &map.key, "", Some(&published[k]))
            .await;
        assert_eq!(
            client.connected().await.id,
            published[k],
            "connected carries the resume position"
        );
        assert_eq!(
            drain_quiet(&mut client).await,
            published[k + 1..],
            "resume after #{k}"
        );
    }
}

async fn reconnect_from_the_store_when_memory_is_short(backend: Backend) {
    // Two hot events per hub: older positions must come from the store.
    let relay = Relay::start_with(backend, &[("HERALD__HISTORY__HOT_EVENTS", "2")]).await;
    let map = relay.create_map().await;
    let mut live = relay.subscribe(&map.slug, &map.key, "", None).await;
    live.connected().await;
    let published = relay.publish_n(&map.slug, 30).await;
    assert_eq!(ids(&live.take(30).await), published);
    for k in [0, 20, 27, 28] {
        let mut client = relay
            .subscribe(&map.slug, &map.key, "?events=t.*", Some(&published[k]))
            .await;
        client.connected().await;
        assert_eq!(
            drain_quiet(&mut client).await,
            published[k + 1..],
            "resume after #{k}"
        );
    }
    let mut filtered = relay
        .subscribe(&map.slug, &map.key, "?events=t.3,t.29", Some(&published[0]))
        .await;
    filtered.connected().await;
    assert_eq!(
        drain_quiet(&mut filtered).await,
        [published[3].clone(), published[29].clone()]
    );
}

async fn seeing_only_connected_then_reconnecting_gets_everything_since(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    relay.publish_n(&map.slug, 3).await;
    let start = {
        let mut client = relay.subscribe(&map.slug, &map.key, "", None).await;
        client.connected().await.id
    };
    let missed = relay.publish_n(&map.slug, 4).await;
    let mut client = relay.subscribe(&map.slug, &map.key, "", Some(&start)).await;
    client.connected().await;
    assert_eq!(drain_quiet(&mut client).await, missed);

    let empty = relay.create_map().await;
    let zero = {
        let mut client = relay.subscribe(&empty.slug, &empty.key, "", None).await;
        client.connected().await.id
    };
    assert_eq!(
        zero, "00000000000000000000000000",
        "an empty map starts at the zero id"
    );
    let first = relay.publish_n(&empty.slug, 2).await;
    let mut client = relay
        .subscribe(&empty.slug, &empty.key, "", Some(&zero))
        .await;
    client.connected().await;
    assert_eq!(drain_quiet(&mut client).await, first);
}

async fn last_event_id_forms(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let published = relay.publish_n(&map.slug, 4).await;
    let path = format!("/api/maps/{}/events/stream", map.slug);
    // Query parameter.
    let mut q = common::SseClient::new(
        relay
            .stream_request(
                &format!("{path}?last_event_id={}", published[1]),
                &map.key,
                None,
            )
            .await,
    );
    assert_eq!(q.connected().await.id, published[1]);
    assert_eq!(drain_quiet(&mut q).await, published[2..]);
    // Header wins over the query parameter; case is ignored.
    let lower = published[2].to_lowercase();
    let mut h = common::SseClient::new(
        relay
            .stream_request(
                &format!("{path}?last_event_id={}", published[0]),
                &map.key,
                Some(&lower),
            )
            .await,
    );
    h.connected().await;
    assert_eq!(drain_quiet(&mut h).await, published[3..]);
    // An empty header counts as absent.
    let mut e = common::SseClient::new(
        relay
            .stream_request(
                &format!("{path}?last_event_id={}", published[2]),
                &map.key,
                Some(""),
            )
            .await,
    );
    e.connected().await;
    assert_eq!(drain_quiet(&mut e).await, published[3..]);
    // An id later than every committed event backfills nothing: the
    // stream starts at the newest event, and every later one arrives.
    let future = "7ZZZZZZZZZZZZZZZZZZZZZZZZZ";
    let mut f = relay.subscribe(&map.slug, &map.key, "", Some(future)).await;
    assert_eq!(f.connected().await.id, published[3]);
    assert!(drain_quiet(&mut f).await.is_empty());
    let later = relay.publish_n(&map.slug, 2).await;
    assert_eq!(drain_quiet(&mut f).await, later);
    // On an empty map it starts at the zero id.
    let empty = relay.create_map().await;
    let mut e = relay
        .subscribe(&empty.slug, &empty.key, "", Some(future))
        .await;
    assert_eq!(e.connected().await.id, "00000000000000000000000000");
    let first = relay.publish_n(&empty.slug, 1).await;
    assert_eq!(drain_quiet(&mut e).await, first);
    // An id of another map, later than this map's newest event but not
    // than every committed one, is a position in the one order: kept.
    let other = relay.create_map().await;
    let theirs = relay.publish_n(&other.slug, 1).await;
    relay.publish_n(&empty.slug, 1).await;
    let mut g = relay
        .subscribe(&map.slug, &map.key, "", Some(&theirs[0]))
        .await;
    assert_eq!(g.connected().await.id, theirs[0]);
    assert!(drain_quiet(&mut g).await.is_empty());
    let next = relay.publish_n(&map.slug, 1).await;
    assert_eq!(drain_quiet(&mut g).await, next);
}

async fn events_survive_a_restart(backend: Backend) {
    let mut relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let published = relay.publish_n(&map.slug, 6).await;
    relay.restart();
    let mut client = relay
        .subscribe(&map.slug, &map.key, "", Some(&published[1]))
        .await;
    client.connected().await;
    assert_eq!(drain_quiet(&mut client).await, published[2..]);
    let mut fresh = relay.subscribe(&map.slug, &map.key, "", None).await;
    assert_eq!(
        fresh.connected().await.id,
        published[5],
        "the newest id survives too"
    );
    let next = relay.publish_n(&map.slug, 1).await;
    assert!(
        next[0] > published[5],
        "ids keep increasing after a restart"
    );
    assert_eq!(fresh.expect().await.id, next[0]);
}

async fn too_many_missed_events_are_truncated_to_the_newest(backend: Backend) {
    let mut relay = Relay::start_with(backend, &[("HERALD__HISTORY__MAX_BACKFILL", "5")]).await;
    let map = relay.create_map().await;
    // A live subscriber keeps the hub (and its hot history) up: the first
    // pass is served from memory; after a restart, from the store.
    let mut live = relay.subscribe(&map.slug, &map.key, "", None).await;
    live.connected().await;
    let published = relay.publish_n(&map.slug, 12).await;
    assert_eq!(ids(&live.take(12).await), published);
    for source in ["memory", "store"] {
        if source == "store" {
            relay.restart();
        }
        let mut client = relay
            .subscribe(&map.slug, &map.key, "", Some(&published[0]))
            .await;
        client.connected().await;
        let truncated = client.expect().await;
        assert_eq!(truncated.event, "backfill_truncated", "from {source}");
        assert_eq!(
            envelope(&truncated),
            json!({"requested": published[0], "oldest_available": published[7]})
        );
        assert_eq!(
            drain_quiet(&mut client).await,
            published[7..],
            "the newest 5 from {source}"
        );
    }
}

/// Waits until retention has left `left` events of `map` in its history.
async fn wait_for_retention(relay: &Relay, map: &common::TestMap, left: usize) {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let page: serde_json::Value = relay
            .get(&format!("/api/maps/{}/events", map.slug), &map.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page["items"].as_array().map(Vec::len) == Some(left) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not run"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn pruned_gap_is_reported(backend: Backend) {
    let relay = Relay::start_with(
        backend,
        &[
            ("HERALD__HISTORY__RETENTION_COUNT", "3"),
            ("HERALD__HISTORY__PRUNE_INTERVAL_SECS", "1"),
        ],
    )
    .await;
    let map = relay.create_map().await;
    let published = relay.publish_n(&map.slug, 6).await;
    // Wait until retention has run: the history endpoint shows 3 events.
    wait_for_retention(&relay, &map, 3).await;
    // A fresh process has no hot history: the gap must come from the store.
    let mut relay = relay;
    relay.restart();
    let mut client = relay
        .subscribe(&map.slug, &map.key, "", Some(&published[0]))
        .await;
    client.connected().await;
    let truncated = client.expect().await;
    assert_eq!(truncated.event, "backfill_truncated");
    assert_eq!(
        envelope(&truncated),
        json!({"requested": published[0], "oldest_available": published[3]})
    );
    assert_eq!(drain_quiet(&mut client).await, published[3..]);
}

/// Retention may remove every event of a map: the map keeps its position
/// (its newest committed id), and a client from before still learns of
/// its gap, with nothing to replay (found by a black-box audit, eighth
/// session: every stream started at the zero id, no gap reported).
async fn a_map_emptied_by_retention_keeps_its_position(backend: Backend) {
    let relay = Relay::start_with(
        backend,
        &[
            ("HERALD__HISTORY__RETENTION_SECS", "1"),
            ("HERALD__HISTORY__PRUNE_INTERVAL_SECS", "1"),
        ],
    )
    .await;
    let map = relay.create_map().await;
    let published = relay.publish_n(&map.slug, 3).await;
    wait_for_retention(&relay, &map, 0).await;
    let mut relay = relay;
    relay.restart();
    let mut fresh = relay.subscribe(&map.slug, &map.key, "", None).await;
    assert_eq!(fresh.connected().await.id, published[2]);
    let mut caught_up = relay
        .subscribe(&map.slug, &map.key, "", Some(&published[2]))
        .await;
    assert_eq!(caught_up.connected().await.id, published[2]);
    let mut behind = relay
        .subscribe(&map.slug, &map.key, "", Some(&published[0]))
        .await;
    assert_eq!(behind.connected().await.id, published[0]);
    let truncated = behind.expect().await;
    assert_eq!(truncated.event, "backfill_truncated");
    assert_eq!(
        envelope(&truncated),
        json!({"requested": published[0], "oldest_available": null})
    );
    let next = relay.publish_n(&map.slug, 1).await;
    for client in [&mut fresh, &mut caught_up, &mut behind] {
        assert_eq!(client.expect().await.id, next[0]);
    }
}

/// Clients connect, read a little, drop and reconnect with their last id
/// while a publisher publishes: each must see every event after its first
/// start position exactly once, in order.
async fn handover_under_concurrent_publishing_loses_and_repeats_nothing(backend: Backend) {
    const EVENTS: usize = 300;
    const CLIENTS: usize = 8;
    let relay =
        Arc::new(Relay::start_with(backend, &[("HERALD__HISTORY__HOT_EVENTS", "16")]).await);
    let map = relay.create_map().await;
    let published = Arc::new(Mutex::new(Vec::<String>::new()));
    let publisher = {
        let (relay, map, published) = (Arc::clone(&relay), map.clone(), Arc::clone(&published));
        tokio::spawn(async move {
            for i in 0..EVENTS {
                let body = if i % 3 == 0 {
                    json!([{"type": "t.a", "payload": i}, {"type": "t.b", "payload": i}])
                } else {
                    json!({"type": "t.c", "payload": i})
                };
                let ids = relay.publish(&map.slug, body).await;
                published.lock().unwrap().extend(ids);
            }
            relay.publish(&map.slug, json!({"type": "done"})).await[0].clone()
        })
    };
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (relay, map) = (Arc::clone(&relay), map.clone());
        clients.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30 * c as u64)).await;
            let mut stream = relay.subscribe(&map.slug, &map.key, "", None).await;
            let start = stream.connected().await.id;
            let mut seen = Vec::new();
            let mut reads = 0usize;
            loop {
                let event = stream.expect().await;
                if event.event == "backfill_truncated" {
                    panic!("unexpected truncation");
                }
                if event.event == "connected" {
                    continue;
                }
                seen.push(event.id.clone());
                if event.event == "done" {
                    return (start, seen);
                }
                reads += 1;
                if reads % (7 + c) == 0 {
                    // Drop and resume from the last id seen.
                    stream = relay
                        .subscribe(&map.slug, &map.key, "", Some(&event.id))
                        .await;
                    stream.connected().await;
                }
            }
        }));
    }
    let done = publisher.await.unwrap();
    let mut all = published.lock().unwrap().clone();
    all.push(done);
    for client in clients {
        let (start, seen) = client.await.unwrap();
        let expected: Vec<String> = all.iter().filter(|id| **id > start).cloned().collect();
        assert_eq!(
            seen.len(),
            expected.len(),
            "client starting after {start}: count"
        );
        assert_eq!(seen, expected, "client starting after {start}: sequence");
    }
}

/// 3,500 events come back from the store over several pages (the next one
/// read while the previous one is written), in order, filters applied.
async fn long_backfill_spans_several_store_pages(backend: Backend) {
    let mut relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let mut published = Vec::new();
    for r in 0..5 {
        let batch: Vec<_> = (0..700)
            .map(|i| json!({"type": if i % 2 == 0 { "even" } else { "odd" }, "payload": [r, i]}))
            .collect();
        published.extend(relay.publish(&map.slug, json!(batch)).await);
    }
    relay.restart();
    let zero = "00000000000000000000000000";
    let mut all = relay.subscribe(&map.slug, &map.key, "", Some(zero)).await;
    all.connected().await;
    assert_eq!(ids(&all.take(published.len()).await), published);
    let mut odd = relay
        .subscribe(&map.slug, &map.key, "?events=odd", Some(zero))
        .await;
    odd.connected().await;
    let expected: Vec<String> = published.iter().skip(1).step_by(2).cloned().collect();
    assert_eq!(drain_quiet(&mut odd).await, expected);
}
