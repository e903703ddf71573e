//! Nothing lost: slow consumers are cut without harming others and catch up
//! from the store; a crash loses no acknowledged event; a graceful shutdown
//! ends every stream and flushes; dropped connections leave nothing behind.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ids, Backend, Relay};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

backend_tests!(
    slow_consumer_is_cut_others_unaffected_and_it_catches_up,
    crash_loses_no_acknowledged_event,
    graceful_shutdown_ends_streams_and_keeps_events,
    a_client_that_stops_reading_frees_its_slot_without_events,
    dropped_connections_leave_no_slot_behind,
    a_hundred_stalled_clients_keep_memory_bounded,
    a_slow_reader_gets_a_large_backfill_and_what_follows_uncut,
    stalled_resumes_of_a_large_history_keep_memory_bounded,
);

/// Opens a stream over a raw socket with a tiny receive buffer, reads the
/// preamble, and returns the socket (which the caller then stops reading)
/// and the `connected` id.
async fn stalled_subscriber(
    relay: &Relay,
    map: &str,
    key: &str,
) -> (tokio::net::TcpStream, String) {
    stalled_resume(relay, map, key, None).await
}

/// [`stalled_subscriber`], resuming after `last_event_id` when given.
async fn stalled_resume(
    relay: &Relay,
    map: &str,
    key: &str,
    last_event_id: Option<&str>,
) -> (tokio::net::TcpStream, String) {
    let (stream, seen) = raw_subscriber(relay, map, key, last_event_id, 4096).await;
    let text = String::from_utf8_lossy(&seen).to_string();
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("connected id")
        .to_owned();
    (stream, id)
}

/// A raw stream socket with a receive buffer of `recv_buffer` bytes (set
/// before connecting, so the advertised window stays that small), read up
/// to its `connected` event; and the bytes read so far.
async fn raw_subscriber(
    relay: &Relay,
    map: &str,
    key: &str,
    last_event_id: Option<&str>,
    recv_buffer: u32,
) -> (tokio::net::TcpStream, Vec<u8>) {
    let addr: std::net::SocketAddr = relay.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(recv_buffer).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let resume = last_event_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET /api/maps/{map}/events/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n{resume}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("event: connected\ndata:") {
        let n = tokio::time::timeout(common::WAIT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "stream closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    (stream, seen)
}

async fn slow_consumer_is_cut_others_unaffected_and_it_catches_up(backend: Backend) {
    // A long keep-alive keeps the kernel's user timeout out of the way: the
    // overflow alone must cut the stalled stream.
    let relay = Relay::start_with(
        backend,
        &[
            ("HERALD__SSE__CLIENT_BUFFER", "64"),
            ("HERALD__SSE__KEEPALIVE_SECS", "60"),
        ],
    )
    .await;
    let map = relay.create_map().await;
    let mut reader = relay.subscribe(&map.slug, &map.key, "", None).await;
    reader.connected().await;
    let (mut stalled, start) = stalled_subscriber(&relay, &map.slug, &map.key).await;

    let payload = "x".repeat(16_000);
    let mut published = Vec::new();
    for _ in 0..30 {
        let batch: Vec<_> = (0..20)
            .map(|i| json!({"type": "big", "payload": {"i": i, "pad": payload}}))
            .collect();
        let ids_of_batch = relay.publish(&map.slug, json!(batch)).await;
        // The reading client keeps pace; only the stalled one falls behind.
        assert_eq!(
            ids(&reader.take(ids_of_batch.len()).await),
            ids_of_batch,
            "the reading client gets everything"
        );
        published.extend(ids_of_batch);
    }

    // The stalled stream is cut: counted, its slot freed, its socket closed.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let stats = relay.admin_json("/api/admin/stats").await;
        if stats["slow_consumer_disconnects"].as_u64() >= Some(1) && stats["connections"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow consumer not cut: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut sink = vec![0u8; 1 << 16];
    let closed = tokio::time::timeout(common::WAIT, async {
        loop {
            match stalled.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the stalled socket was closed by the server"
    );

    // Reconnecting with its position, it catches up on everything from the store.
    let mut again = relay.subscribe(&map.slug, &map.key, "", Some(&start)).await;
    again.connected().await;
    assert_eq!(ids(&again.take(published.len()).await), published);
}

async fn crash_loses_no_acknowledged_event(backend: Backend) {
    let mut relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let (url, acked) = (relay.url(&format!("/api/maps/{}/events", map.slug)), Arc::clone(&acked));
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for i in 0.. {
                    let body = json!([{"type": "c", "payload": [p, i]}, {"type": "c", "payload": [p, i, 1]}]);
                    let Ok(response) = http.post(&url).bearer_auth(common::PUBLISHER).json(&body).send().await else {
                        return;
                    };
                    if response.status() != 201 {
                        return;
                    }
                    let Ok(body) = response.json::<serde_json::Value>().await else { return };
                    let ids = body["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned());
                    acked.lock().unwrap().extend(ids);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(600)).await;
    relay.kill();
    for p in publishers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 10,
        "publishers got acknowledgements before the crash"
    );

    relay.restart();
    let mut client = relay
        .subscribe(&map.slug, &map.key, "", Some("00000000000000000000000000"))
        .await;
    client.connected().await;
    let mut delivered = Vec::new();
    while let Some(event) = client.next_within(Duration::from_millis(600)).await {
        delivered.push(event.id);
    }
    let mut sorted = delivered.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, delivered, "delivered once each, in id order");
    for id in &acked {
        assert!(
            delivered.binary_search(id).is_ok(),
            "acknowledged event {id} lost in the crash"
        );
    }
}

async fn graceful_shutdown_ends_streams_and_keeps_events(backend: Backend) {
    let mut relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut client = relay.subscribe(&map.slug, &map.key, "", None).await;
        client.connected().await;
        clients.push(client);
    }
    let published = relay.publish_n(&map.slug, 5).await;
    let started = tokio::time::Instant::now();
    relay.send_sigterm();
    for client in &mut clients {
        assert!(
            client.ends_within(Duration::from_secs(5)).await,
            "stream ended on shutdown"
        );
    }
    let status = relay
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits within 10 s");
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    relay.restart();
    let mut client = relay
        .subscribe(&map.slug, &map.key, "", Some("00000000000000000000000000"))
        .await;
    client.connected().await;
    assert_eq!(ids(&client.take(5).await), published);
}

/// 1,200 streams opened and dropped (half given up before the answer)
/// leave no slot or counter behind.
async fn dropped_connections_leave_no_slot_behind(backend: Backend) {
    let relay = Relay::start_with(
        backend,
        &[
            ("HERALD__LIMITS__MAX_CONNECTIONS_PER_MAP", "150"),
            ("HERALD__LIMITS__MAX_CONNECTIONS_PER_KEY", "1000"),
        ],
    )
    .await;
    let map = relay.create_map().await;
    let path = format!("/api/maps/{}/events/stream", map.slug);
    for round in 0..10 {
        let mut tasks = Vec::new();
        for i in 0..120 {
            let (url, key) = (relay.url(&path), map.key.clone());
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::new();
                let request = http.get(url).bearer_auth(key).send();
                if i % 2 == 0 {
                    // Give up before (or while) the answer arrives.
                    let _ = tokio::time::timeout(Duration::from_millis(1), request).await;
                } else if let Ok(response) = request.await {
                    let _ = response.bytes_stream();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let deadline = tokio::time::Instant::now() + common::WAIT;
        loop {
            let stats = relay.admin_json("/api/admin/stats").await;
            let map_info = relay
                .admin_json(&format!("/api/admin/maps/{}", map.slug))
                .await;
            if stats["connections"] == 0 && map_info["connections"] == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: slots leaked: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The map's limit of 150 is fully available again.
    let mut open = Vec::new();
    for _ in 0..150 {
        let mut client = relay.subscribe(&map.slug, &map.key, "", None).await;
        client.connected().await;
        open.push(client);
    }
    let refused = relay.stream_request(&path, &map.key, None).await;
    assert_eq!(refused.status(), 429);
}

/// No events flow, so nothing overflows: the keep-alives the client never
/// acknowledges (its window is shut) fail the connection within about two
/// keep-alive periods.
async fn a_client_that_stops_reading_frees_its_slot_without_events(backend: Backend) {
    let relay = Relay::start_with(backend, &[("HERALD__SSE__KEEPALIVE_SECS", "1")]).await;
    let map = relay.create_map().await;
    let (stalled, _) = stalled_subscriber(&relay, &map.slug, &map.key).await;
    // Fill the client's tiny receive window so keep-alives stay unacknowledged.
    relay
        .publish(
            &map.slug,
            json!({"type": "fill", "payload": "x".repeat(60_000)}),
        )
        .await;
    let started = tokio::time::Instant::now();
    loop {
        let stats = relay.admin_json("/api/admin/stats").await;
        if stats["connections"] == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "slot still held: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(stalled);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// 100 clients stop reading while 40 MB of events are published: their
/// outboxes overflow, they are cut, and the server's memory does not grow
/// with what they failed to read; a reading client keeps up throughout.
async fn a_hundred_stalled_clients_keep_memory_bounded(backend: Backend) {
    let relay = Relay::start_with(
        backend,
        &[
            ("HERALD__SSE__CLIENT_BUFFER", "32"),
            ("HERALD__SSE__KEEPALIVE_SECS", "60"),
            ("HERALD__HISTORY__HOT_EVENTS", "16"),
            ("HERALD__LIMITS__MAX_CONNECTIONS_PER_KEY", "200"),
        ],
    )
    .await;
    let map = relay.create_map().await;
    let mut reader = relay.subscribe(&map.slug, &map.key, "", None).await;
    reader.connected().await;
    let mut stalled = Vec::new();
    for _ in 0..100 {
        stalled.push(stalled_subscriber(&relay, &map.slug, &map.key).await.0);
    }
    let before = rss_kib(relay.pid());
    let payload = "y".repeat(40_000);
    for _ in 0..50 {
        let batch: Vec<_> = (0..20)
            .map(|i| json!({"type": "big", "payload": {"i": i, "pad": payload}}))
            .collect();
        let published = relay.publish(&map.slug, json!(batch)).await;
        assert_eq!(
            ids(&reader.take(published.len()).await),
            published,
            "the reading client keeps up"
        );
    }
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let stats = relay.admin_json("/api/admin/stats").await;
        if stats["connections"] == 1 {
            assert!(
                stats["slow_consumer_disconnects"].as_u64() >= Some(100),
                "{stats}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled clients still held: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = rss_kib(relay.pid());
    eprintln!("server RSS with 100 stalled clients: before {before} KiB, after {after} KiB");
    // 1,000 events of 40 KB went to 100 clients (4 GB unread): only a
    // bounded amount of it may stay in the server.
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    drop(stalled);
}

/// Publishes `batches` of 10 events of 60 KB (6 MB per 10 batches), then
/// restarts the relay so that a resume from zero reads them from the store.
async fn large_history(relay: &mut Relay, map: &str, batches: usize) -> Vec<String> {
    let payload = "z".repeat(60_000);
    let mut published = Vec::new();
    for _ in 0..batches {
        let batch: Vec<_> = (0..10)
            .map(|i| json!({"type": "old", "payload": {"i": i, "pad": payload}}))
            .collect();
        published.extend(relay.publish(map, json!(batch)).await);
    }
    relay.restart();
    published
}

/// A client that stops reading in the middle of a 9 MB backfill (beyond the
/// socket buffers) while more events than its outbox holds are published,
/// then reads on: it is not cut, and gets the backfill and everything after
/// it once, in order. The outbox's bound applies only once the last
/// backfill chunk is written.
async fn a_slow_reader_gets_a_large_backfill_and_what_follows_uncut(backend: Backend) {
    let mut relay = Relay::start_with(
        backend,
        &[
            ("HERALD__SSE__CLIENT_BUFFER", "16"),
            ("HERALD__SSE__KEEPALIVE_SECS", "60"),
        ],
    )
    .await;
    let map = relay.create_map().await;
    let mut expected = large_history(&mut relay, &map.slug, 15).await;
    let zero = "00000000000000000000000000";
    // A window of 256 KiB: far below the backfill, and not below loopback's
    // MSS (64 KiB), where the receiver withholds window updates and the
    // sender's zero-window probes back off to many seconds.
    let (mut slow, mut raw) =
        raw_subscriber(&relay, &map.slug, &map.key, Some(zero), 256 << 10).await;
    // The relay fills the socket buffers and waits for the client.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in 0..3 {
        let batch: Vec<_> = (0..40)
            .map(|i| json!({"type": "new", "payload": [round, i]}))
            .collect();
        expected.extend(relay.publish(&map.slug, json!(batch)).await);
    }
    let mut buf = vec![0u8; 64 << 10];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let last = format!("id: {}\n", expected.last().expect("events"));
    let mut searched = 0;
    while !raw[searched..]
        .windows(last.len())
        .any(|w| w == last.as_bytes())
    {
        // Only the new bytes (and a line's length before them) are searched.
        searched = raw.len().saturating_sub(last.len());
        let n = tokio::time::timeout_at(deadline, slow.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("not all events within 60 s ({} bytes)", raw.len()))
            .expect("read");
        assert!(n > 0, "the stream ended after {} bytes", raw.len());
        raw.extend_from_slice(&buf[..n]);
    }
    // The newest event's frame ends the response read so far.
    while !raw.ends_with(b"\n\n\r\n") {
        let n = tokio::time::timeout_at(deadline, slow.read(&mut buf))
            .await
            .expect("the rest of the last frame")
            .expect("read");
        assert!(n > 0, "the stream ended after {} bytes", raw.len());
        raw.extend_from_slice(&buf[..n]);
    }
    let events = common::events_of_raw_response(&raw).await;
    let received: Vec<String> = events
        .iter()
        .filter(|e| e.event != "connected")
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(received, expected);
    let stats = relay.admin_json("/api/admin/stats").await;
    assert_eq!(stats["slow_consumer_disconnects"], 0, "{stats}");
}

/// 20 clients resume from zero over a 6 MB history of 60 KB events and do
/// not read: each holds at most a chunk and a page read ahead, not the
/// history.
async fn stalled_resumes_of_a_large_history_keep_memory_bounded(backend: Backend) {
    let mut relay = Relay::start_with(
        backend,
        &[
            ("HERALD__SSE__KEEPALIVE_SECS", "60"),
            ("HERALD__LIMITS__MAX_CONNECTIONS_PER_KEY", "200"),
        ],
    )
    .await;
    let map = relay.create_map().await;
    large_history(&mut relay, &map.slug, 10).await;
    let zero = "00000000000000000000000000";
    // The first resume starts the map's hub, whose head read is not a
    // client's cost.
    let mut stalled = vec![
        stalled_resume(&relay, &map.slug, &map.key, Some(zero))
            .await
            .0,
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(relay.pid());
    for _ in 0..20 {
        stalled.push(
            stalled_resume(&relay, &map.slug, &map.key, Some(zero))
                .await
                .0,
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(relay.pid());
    eprintln!("server RSS with 20 stalled resumes: before {before} KiB, after {after} KiB");
    // The whole history for each would be 120 MB.
    assert!(
        after < before + 20 * 5 * 512,
        "RSS grew from {before} KiB to {after} KiB"
    );
    drop(stalled);
}
