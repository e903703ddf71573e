//! Churn: many clients drop and reconnect at random with their
//! Last-Event-ID while several publishers publish concurrently. Every client
//! must receive exactly the published sequence after its first start
//! position (filtered), with no gap and no duplicate.
//!
//! The short version runs in the normal suite; the long one (1,000 clients,
//! 100,000 events, PostgreSQL) with `cargo test --test churn -- --ignored`.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Relay};
use rand::Rng;
use serde_json::json;

struct Churn {
    clients: usize,
    /// A client drops and resumes after one read in this many, on average.
    reconnect_one_in: u32,
    publishers: usize,
    requests_per_publisher: usize,
    events_per_request: usize,
}

backend_tests!(churn_short);

async fn churn_short(backend: Backend) {
    run(
        backend,
        Churn {
            clients: 16,
            reconnect_one_in: 40,
            publishers: 3,
            requests_per_publisher: 60,
            events_per_request: 5,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 1,000 clients and 100,000 events (run with --ignored)"]
async fn churn_long_postgres() {
    // Each client still drops ~50 times; dropping more often would mostly
    // measure how fast 1,000 lagging clients re-read what they threw away.
    run(
        Backend::Postgres,
        Churn {
            clients: 1000,
            reconnect_one_in: 2000,
            publishers: 16,
            requests_per_publisher: 625,
            events_per_request: 10,
        },
    )
    .await;
}

async fn run(backend: Backend, churn: Churn) {
    // Room for streams whose close the server has not seen yet.
    let clients = (2 * churn.clients + 10).to_string();
    let relay = Arc::new(
        Relay::start_with(
            backend,
            &[
                ("HERALD__LIMITS__MAX_CONNECTIONS_PER_MAP", &clients),
                ("HERALD__LIMITS__MAX_CONNECTIONS_PER_KEY", &clients),
                ("HERALD__HISTORY__HOT_EVENTS", "64"),
                // A client that lags far behind must still get everything back
                // on reconnect: no truncation, no pruning within the run.
                ("HERALD__HISTORY__MAX_BACKFILL", "200000"),
                ("HERALD__HISTORY__RETENTION_COUNT", "200000"),
            ],
        )
        .await,
    );
    let map = relay.create_map().await;
    // id -> type, for every acknowledged event.
    let published = Arc::new(Mutex::new(HashMap::<String, String>::new()));

    let mut readers = Vec::new();
    for c in 0..churn.clients {
        let (relay, map) = (Arc::clone(&relay), map.clone());
        // A third of the clients filter: they must see exactly the matching events.
        let query = if c % 3 == 0 { "?events=t.odd,done" } else { "" };
        let reconnect_one_in = churn.reconnect_one_in;
        readers.push(tokio::spawn(async move {
            let delay = rand::rng().random_range(0..300);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let mut stream = relay.subscribe(&map.slug, &map.key, query, None).await;
            let start = stream.connected().await.id;
            let mut last = start.clone();
            let mut seen = Vec::new();
            loop {
                let Some(event) = stream.next().await else {
                    // Cut (for instance as a slow consumer): resume like a browser would.
                    stream = relay
                        .subscribe(&map.slug, &map.key, query, Some(&last))
                        .await;
                    stream.connected().await;
                    continue;
                };
                assert_ne!(event.event, "backfill_truncated", "client {c}");
                seen.push(event.id.clone());
                last = event.id;
                if event.event == "done" {
                    return (query, start, seen);
                }
                let (reconnect, pause) = {
                    let mut rng = rand::rng();
                    (
                        rng.random_ratio(1, reconnect_one_in),
                        rng.random_range(0..50) * u64::from(rng.random_bool(0.5)),
                    )
                };
                if reconnect {
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    stream = relay
                        .subscribe(&map.slug, &map.key, query, Some(&last))
                        .await;
                    stream.connected().await;
                }
            }
        }));
    }

    let mut publishers = Vec::new();
    for p in 0..churn.publishers {
        let (relay, map, published) = (Arc::clone(&relay), map.clone(), Arc::clone(&published));
        let (requests, per_request) = (churn.requests_per_publisher, churn.events_per_request);
        publishers.push(tokio::spawn(async move {
            for r in 0..requests {
                let events: Vec<_> = (0..per_request)
                    .map(|i| {
                        let kind = if (r + i) % 2 == 1 { "t.odd" } else { "t.even" };
                        json!({"type": kind, "payload": [p, r, i]})
                    })
                    .collect();
                let kinds: Vec<String> = events
                    .iter()
                    .map(|e| e["type"].as_str().unwrap().to_owned())
                    .collect();
                let ids = relay.publish(&map.slug, json!(events)).await;
                published.lock().unwrap().extend(ids.into_iter().zip(kinds));
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let done = relay
        .publish(&map.slug, json!({"type": "done"}))
        .await
        .remove(0);
    published.lock().unwrap().insert(done, "done".to_owned());

    let published = published.lock().unwrap().clone();
    let mut all: Vec<(&String, &String)> = published.iter().collect();
    all.sort();
    for reader in readers {
        let (query, start, seen) = reader.await.unwrap();
        let expected: Vec<String> = all
            .iter()
            .filter(|(id, kind)| **id > start && (query.is_empty() || *kind != "t.even"))
            .map(|(id, _)| (*id).clone())
            .collect();
        assert_eq!(
            seen.len(),
            expected.len(),
            "count for a client starting after {start} ({query})"
        );
        assert!(
            seen == expected,
            "sequence differs for a client starting after {start} ({query})"
        );
    }
}
