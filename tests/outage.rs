//! Database outages: the test runs its own disposable PostgreSQL (initdb and
//! pg_ctl in a temp dir, on a free port) and stops it under load.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pg::DisposablePostgres;
use common::{ids, Relay, PUBLISHER};
use serde_json::{json, Value};

async fn status_of(http: &reqwest::Client, url: &str) -> Option<u16> {
    http.get(url).send().await.ok().map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_under_load_refuses_publishes_keeps_streams_and_recovers() {
    let pg = DisposablePostgres::init();
    let relay = Arc::new(Relay::start_on_postgres(&pg.url(), &[]));
    let map = relay.create_map().await;
    let mut stream = relay.subscribe(&map.slug, &map.key, "", None).await;
    stream.connected().await;

    // Publish every 50 ms throughout; record what was acknowledged.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let refusals = Arc::new(Mutex::new(Vec::<(u16, Value, Duration)>::new()));
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let publisher = {
        let (url, acked, refusals, running) = (
            relay.url(&format!("/api/maps/{}/events", map.slug)),
            Arc::clone(&acked),
            Arc::clone(&refusals),
            Arc::clone(&running),
        );
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut i = 0;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                let started = tokio::time::Instant::now();
                let response = http
                    .post(&url)
                    .bearer_auth(PUBLISHER)
                    .json(&json!({"type": "tick", "payload": i}))
                    .timeout(Duration::from_secs(20))
                    .send()
                    .await
                    .expect("the relay answers");
                let status = response.status().as_u16();
                let body: Value = response.json().await.expect("JSON answer");
                if status == 201 {
                    acked
                        .lock()
                        .unwrap()
                        .push(body["ids"][0].as_str().unwrap().to_owned());
                } else {
                    refusals
                        .lock()
                        .unwrap()
                        .push((status, body, started.elapsed()));
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let http = reqwest::Client::new();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(status_of(&http, &relay.url("/ready")).await, Some(200));

    pg.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        status_of(&http, &relay.url("/ready")).await,
        Some(503),
        "/ready reports the outage"
    );
    assert_eq!(
        status_of(&http, &relay.url("/health")).await,
        Some(200),
        "the process itself is fine"
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let acked_during_outage = acked.lock().unwrap().len();

    pg.start();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < acked_during_outage + 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status_of(&http, &relay.url("/ready")).await,
        Some(200),
        "/ready recovers"
    );
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    publisher.await.unwrap();

    let refusals = refusals.lock().unwrap().clone();
    assert!(
        !refusals.is_empty(),
        "publishes were refused during the outage"
    );
    for (status, body, took) in &refusals {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(body["code"], "STORE_UNAVAILABLE");
        assert!(
            *took < Duration::from_secs(10),
            "refused in bounded time, took {took:?}"
        );
    }
    // The stream stayed open throughout and got exactly the acknowledged events.
    let acked = acked.lock().unwrap().clone();
    assert_eq!(ids(&stream.take(acked.len()).await), acked);
    assert!(
        stream
            .next_within(Duration::from_millis(500))
            .await
            .is_none(),
        "nothing unacknowledged delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_at_start_exits_with_a_clear_message() {
    let pg = DisposablePostgres::init();
    let url = pg.url();
    pg.stop();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("settings.toml");
    std::fs::write(
        &config,
        format!("[server]\nbind = \"127.0.0.1:0\"\n[database]\nurl = \"{url}\"\n"),
    )
    .unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("--config")
            .arg(&config)
            .output(),
    )
    .await
    .expect("exits in bounded time")
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("herald: cannot open the store"),
        "stderr: {stderr}"
    );
}
