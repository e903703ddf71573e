//! Cluster mode (SPEC `## Cluster`): several herald processes on one
//! PostgreSQL database are one relay — one total order of event ids, fan-out
//! to every node exactly once, one directory, limits counted on all nodes,
//! admin views of every node — and they keep those promises when a node is
//! killed or restarted, loses its listening connection, runs with a wrong
//! clock, when the database restarts or a commit's answer comes late.
//! Plus the single-node rules of the same section: SQLite stays single-node,
//! a `Last-Event-ID` later than the newest event, `herald map create` in
//! force at once beside a running server.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pg::DisposablePostgres;
use common::proxy::PgProxy;
use common::{
    envelope, expect_error, ids, postgres_url, terminate_backends, unique, Backend, Cluster, Next,
    NodeOptions, Relay, SseClient, TestMap, ADMIN, PUBLISHER, WAIT,
};
use eventsource_stream::Event;
use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio::time::Instant;

backend_tests!(
    last_event_id_later_than_the_newest_starts_at_the_newest,
    map_made_by_the_cli_is_in_force_at_once,
);

/// Room for a loaded machine on top of the spec's deadlines (2 cores, the
/// whole suite running at once).
const SLACK: Duration = Duration::from_secs(3);
/// The spec's bound for catching up and for closing streams on other nodes.
const TWO_SECS: Duration = Duration::from_secs(2);
/// `cluster.node_timeout_secs` as [`Cluster::start`] sets it.
const NODE_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest a follower in these tests waits for its `done`.
const FOLLOW_LIMIT: Duration = Duration::from_secs(50);
const ZERO: &str = "00000000000000000000000000";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn stream_path(map: &str) -> String {
    format!("/api/maps/{map}/events/stream")
}

/// One event as a client saw it, and when.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    kind: String,
    map_id: Value,
    at: Instant,
}

impl Seen {
    fn of(event: &Event) -> Self {
        let map_id = serde_json::from_str::<Value>(&event.data)
            .map(|v| v["map_id"].clone())
            .unwrap_or(Value::Null);
        Self {
            id: event.id.clone(),
            kind: event.event.clone(),
            map_id,
            at: Instant::now(),
        }
    }
}

fn seen_ids(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(|s| s.id.clone()).collect()
}

fn sorted(ids: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut all: Vec<String> = ids.into_iter().collect();
    all.sort();
    all
}

#[track_caller]
fn assert_increasing(ids: &[String], what: &str) {
    for pair in ids.windows(2) {
        assert!(
            pair[0] < pair[1],
            "{what}: {} then {}: ids must strictly increase",
            pair[0],
            pair[1]
        );
    }
}

/// Up to `n` events within `wait` in all (fewer when the stream ends or
/// the time is up).
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

/// Reads until the `dones`-th event of type `done` (inclusive); stops early
/// when the stream ends or stays silent for `quiet`, and says so.
async fn read_until_done(
    client: &mut SseClient,
    dones: usize,
    quiet: Duration,
) -> (Vec<Seen>, Result<(), String>) {
    let mut seen = Vec::new();
    let mut found = 0;
    while found < dones {
        match client.next_timed(quiet).await {
            Next::Event(event) => {
                if event.event == "done" {
                    found += 1;
                }
                seen.push(Seen::of(&event));
            }
            Next::Ended => return (seen, Err("the stream ended".into())),
            Next::Silent => return (seen, Err(format!("nothing for {quiet:?}"))),
        }
    }
    (seen, Ok(()))
}

/// Every stored event id of a map after `after`, oldest first (the store
/// is the truth for delivery).
async fn history(relay: &Relay, map: &str, key: &str, after: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = after.to_owned();
    loop {
        let response = relay
            .get(
                &format!("/api/maps/{map}/events?after={after}&limit=1000"),
                key,
            )
            .send()
            .await
            .expect("history");
        assert_eq!(response.status(), 200, "history of {map}");
        let page: Value = response.json().await.expect("history JSON");
        for item in page["items"].as_array().expect("items") {
            out.push(item["id"].as_str().expect("id").to_owned());
        }
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => return out,
        }
    }
}

/// Any admin request; returns status and JSON body (`Null` when empty).
async fn admin(
    relay: &Relay,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = relay
        .http
        .request(method, relay.url(path))
        .bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("admin request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

async fn set_limits(relay: &Relay, map: &str, body: Value) -> Value {
    let (status, answer) = admin(
        relay,
        reqwest::Method::PUT,
        &format!("/api/admin/maps/{map}/limits"),
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "PUT limits: {answer}");
    answer
}

async fn add_key(relay: &Relay, map: &str) -> (String, String) {
    let (status, body) = admin(
        relay,
        reqwest::Method::POST,
        &format!("/api/admin/maps/{map}/keys"),
        None,
    )
    .await;
    assert_eq!(status, 201, "add key: {body}");
    (
        body["key_id"].as_str().expect("key_id").to_owned(),
        body["api_key"].as_str().expect("api_key").to_owned(),
    )
}

/// The map's `connections` as `GET /api/admin/maps/{map}` on `relay` says.
async fn map_connections(relay: &Relay, map: &str) -> Value {
    relay.admin_json(&format!("/api/admin/maps/{map}")).await["connections"].clone()
}

/// Polls `check` on the JSON of an admin GET until it holds; panics with
/// the last answer after `wait`.
async fn poll_admin(
    relay: &Relay,
    path: &str,
    wait: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let (status, body) = admin(relay, reqwest::Method::GET, path, None).await;
        if status == 200 && check(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: GET {path} on {} never matched within {wait:?}; last answer {status} {body}",
            relay.base
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens a stream that must answer 200 and returns it with its `connected`
/// data.
async fn open(relay: &Relay, path: &str, token: &str, last: Option<&str>) -> (SseClient, Event) {
    let response = relay.stream_request(path, token, last).await;
    let status = response.status();
    if status != 200 {
        let text = response.text().await.unwrap_or_default();
        panic!("GET {path} on {} answered {status}: {text}", relay.base);
    }
    let mut client = SseClient::new(response);
    let connected = client.connected().await;
    (client, connected)
}

fn connection_id(connected: &Event) -> String {
    envelope(connected)["connection_id"]
        .as_str()
        .expect("connection_id")
        .to_owned()
}

/// Runs `herald --config <relay's settings> <args>` (bounded in time).
async fn run_cli(relay: &Relay, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::from(relay.cli(args));
    command.kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .unwrap_or_else(|_| panic!("herald {args:?} did not finish within 30 s"))
        .expect("run herald")
}

/// The key `herald map create` printed.
fn printed_key(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "herald map create failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == "api_key").then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no api_key line in {stdout:?}"))
}

/// The base URLs of the nodes a client or publisher may use now.
type Live = Arc<Mutex<Vec<String>>>;

fn live_of(cluster: &Cluster) -> Live {
    Arc::new(Mutex::new(
        cluster.nodes.iter().map(|n| n.base.clone()).collect(),
    ))
}

/// The `turn`-th live node, round robin (none while every node is down).
fn pick(live: &Live, turn: usize) -> Option<String> {
    let live = live.lock().unwrap();
    (!live.is_empty()).then(|| live[turn % live.len()].clone())
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// A publish that did not answer 201.
#[derive(Debug, Clone)]
struct Refusal {
    base: String,
    status: Option<u16>,
    body: String,
    took: Duration,
}

/// Publishes through the node at `base`.
async fn publish_at(
    http: &reqwest::Client,
    base: &str,
    map: &str,
    body: &Value,
    idempotency_key: Option<&str>,
) -> Result<Vec<String>, Refusal> {
    let started = Instant::now();
    let mut request = http
        .post(format!("{base}/api/maps/{map}/events"))
        .bearer_auth(PUBLISHER)
        .timeout(Duration::from_secs(20))
        .json(body);
    if let Some(key) = idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let refusal = |status, body| Refusal {
        base: base.to_owned(),
        status,
        body,
        took: started.elapsed(),
    };
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            if status != 201 {
                return Err(refusal(Some(status), text));
            }
            let answer: Value = serde_json::from_str(&text).expect("publish answer is JSON");
            Ok(answer["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|id| id.as_str().expect("id").to_owned())
                .collect())
        }
        Err(e) => Err(refusal(None, e.to_string())),
    }
}

/// A task publishing one event at a time through the live nodes in turn.
struct Publisher {
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
    refused: Arc<Mutex<Vec<Refusal>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Publishes `{"type": "tick"}` events to `map` every `gap` until
    /// stopped. With `retry`, a publish that fails is sent again with its
    /// `Idempotency-Key` to the next live node until it is answered 201 (so
    /// it exists once); without, the refusal is recorded and it moves on.
    fn start(live: Live, map: &str, gap: Duration, retry: bool) -> Self {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (acked, refused, stop, map) = (
                Arc::clone(&acked),
                Arc::clone(&refused),
                Arc::clone(&stop),
                map.to_owned(),
            );
            tokio::spawn(async move {
                let http = http_client();
                let run = unique("p-");
                let mut turn = 0usize;
                let mut i = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("{run}-{i}");
                    let body = json!({"type": "tick", "source": "publisher", "payload": {"i": i}});
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        let Some(base) = pick(&live, turn) else {
                            assert!(Instant::now() < deadline, "no live node for 30 s");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        turn += 1;
                        match publish_at(&http, &base, &map, &body, Some(&key)).await {
                            Ok(ids) => {
                                let now = Instant::now();
                                acked
                                    .lock()
                                    .unwrap()
                                    .extend(ids.into_iter().map(|id| (id, now)));
                                break;
                            }
                            Err(refusal) => {
                                refused.lock().unwrap().push(refusal.clone());
                                assert!(
                                    !retry || Instant::now() < deadline,
                                    "publish #{i} never succeeded: {refusal:?}"
                                );
                                if !retry {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                    i += 1;
                    tokio::time::sleep(gap).await;
                }
            })
        };
        Self {
            acked,
            refused,
            stop,
            task,
        }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops; returns the acknowledged ids (with when) and the refusals.
    async fn stop(self) -> (Vec<(String, Instant)>, Vec<Refusal>) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("publisher task");
        let acked = self.acked.lock().unwrap().clone();
        let refused = self.refused.lock().unwrap().clone();
        (acked, refused)
    }
}

/// Publishes `{"type": "done"}` through the first live node that answers
/// 201 (with an Idempotency-Key, so retries are safe).
async fn publish_done(live: &Live, map: &str) -> String {
    let http = http_client();
    let key = unique("done-");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut turn = 0usize;
    loop {
        let Some(base) = pick(live, turn) else {
            assert!(Instant::now() < deadline, "no live node for 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        turn += 1;
        match publish_at(&http, &base, map, &json!({"type": "done"}), Some(&key)).await {
            Ok(ids) => return ids[0].clone(),
            Err(refusal) => {
                assert!(
                    Instant::now() < deadline,
                    "done never published: {refusal:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// How a [`Follower::read`] stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// Read as many as asked.
    Read,
    /// Saw `done`.
    Done,
    /// The server ended the stream.
    Ended,
    /// Silent for the whole wait.
    Silent,
}

/// An SSE client that follows a map across nodes the way EventSource
/// does: on every reconnect it sends the last `id:` it saw (the `connected`
/// event's included) as `Last-Event-ID`.
struct Follower {
    name: String,
    http: reqwest::Client,
    path: String,
    key: String,
    /// `connected`'s id on the first connection.
    start: Option<String>,
    last: Option<String>,
    seen: Vec<Seen>,
    connects: usize,
}

impl Follower {
    fn new(name: &str, map: &TestMap) -> Self {
        Self {
            name: name.to_owned(),
            http: http_client(),
            path: stream_path(&map.slug),
            key: map.key.clone(),
            start: None,
            last: None,
            seen: Vec::new(),
            connects: 0,
        }
    }

    /// Opens a stream on `base` from the last id seen. `Err` when the node
    /// cannot be reached or answers 503 (down, shutting down); panics on
    /// any other answer and when `connected` is not where it resumed.
    async fn connect(&mut self, base: &str) -> Result<SseClient, String> {
        let mut request = self
            .http
            .get(format!("{base}{}", self.path))
            .bearer_auth(&self.key);
        if let Some(last) = &self.last {
            request = request.header("Last-Event-ID", last);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        if status == 503 {
            return Err(format!("{base} answered 503"));
        }
        if status != 200 {
            let text = response.text().await.unwrap_or_default();
            panic!("{}: stream on {base} answered {status}: {text}", self.name);
        }
        let mut client = SseClient::new(response);
        let connected = match client.next_timed(WAIT).await {
            Next::Event(event) if event.event == "connected" => event,
            Next::Event(event) => panic!("{}: first event {event:?}", self.name),
            Next::Ended => return Err(format!("{base} ended the stream before `connected`")),
            Next::Silent => panic!("{}: no `connected` from {base} within {WAIT:?}", self.name),
        };
        match &self.last {
            Some(last) => assert_eq!(
                &connected.id, last,
                "{}: `connected` on {base} must carry the id it resumed from",
                self.name
            ),
            None => self.start = Some(connected.id.clone()),
        }
        self.last = Some(connected.id);
        self.connects += 1;
        Ok(client)
    }

    /// Reads up to `n` events; stops at `done`, at the end of the stream or
    /// after `quiet` without an event.
    async fn read(&mut self, client: &mut SseClient, n: usize, quiet: Duration) -> Stop {
        let mut read = 0;
        while read < n {
            match client.next_timed(quiet).await {
                Next::Event(event) => {
                    assert_ne!(
                        event.event, "backfill_truncated",
                        "{}: nothing may be truncated here",
                        self.name
                    );
                    self.last = Some(event.id.clone());
                    self.seen.push(Seen::of(&event));
                    read += 1;
                    if event.event == "done" {
                        return Stop::Done;
                    }
                }
                Next::Ended => return Stop::Ended,
                Next::Silent => return Stop::Silent,
            }
        }
        Stop::Read
    }

    fn done(&self) -> bool {
        self.seen.last().is_some_and(|s| s.kind == "done")
    }

    fn ids(&self) -> Vec<String> {
        seen_ids(&self.seen)
    }

    /// Follows the map until `done`. Each round `plan(round, live nodes,
    /// current node)` says where to connect and how many events to read
    /// there before dropping the stream; a stream that ends or goes silent
    /// for `quiet` is resumed at once on the node `plan` picks next.
    async fn follow(
        mut self,
        live: Live,
        quiet: Duration,
        mut plan: impl FnMut(usize, &[String], Option<&str>) -> (String, usize),
    ) -> Self {
        let deadline = Instant::now() + FOLLOW_LIMIT;
        let mut current: Option<String> = None;
        let mut round = 0;
        while !self.done() {
            assert!(
                Instant::now() < deadline,
                "{}: no `done` within {FOLLOW_LIMIT:?}; saw {} events after {:?}, last {:?}",
                self.name,
                self.seen.len(),
                self.start,
                self.last
            );
            let bases = live.lock().unwrap().clone();
            if bases.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let (base, reads) = plan(round, &bases, current.as_deref());
            round += 1;
            current = Some(base.clone());
            let mut client = match self.connect(&base).await {
                Ok(client) => client,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            self.read(&mut client, reads, quiet).await;
        }
        self
    }
}

/// The live node after `current` (another one when there is one).
fn next_node(bases: &[String], current: Option<&str>) -> String {
    let at = current
        .and_then(|c| bases.iter().position(|b| b == c))
        .map_or(0, |i| i + 1);
    bases[at % bases.len()].clone()
}

/// What a follower that first connected at `start` must have seen: every
/// id in `all` after `start`, in order.
fn expected_after(all: &[String], start: &str) -> Vec<String> {
    all.iter()
        .filter(|id| id.as_str() > start)
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------
// Fan-out and order
// ---------------------------------------------------------------------------

/// Events published on node A reach subscribers on B and C (and A), in
/// order, exactly once, byte for byte the same envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_on_one_node_reach_every_node_once_in_order() {
    let cluster = Cluster::start(3, &[]).await;
    let map = cluster[0].create_map().await;
    let mut clients = Vec::new();
    for node in [1, 2, 0] {
        let mut client = cluster[node].subscribe(&map.slug, &map.key, "", None).await;
        assert_eq!(client.connected().await.id, ZERO, "an empty map");
        clients.push((node, client));
    }
    let a = &cluster[0];
    let mut published = a.publish_n(&map.slug, 8).await;
    published.extend(
        a.publish(
            &map.slug,
            json!([{"type": "b.1"}, {"type": "b.2", "payload": [1, 2]}, {"type": "b.3"}]),
        )
        .await,
    );
    published.extend(a.publish_n(&map.slug, 4).await);
    assert_increasing(&published, "ids answered by node A");

    let mut reference: Option<Vec<String>> = None;
    for (node, client) in &mut clients {
        let got = collect(client, published.len(), WAIT).await;
        assert_eq!(
            ids(&got),
            published,
            "subscriber on node {}: every event, in order",
            cluster.name(*node)
        );
        let data: Vec<String> = got.iter().map(|e| e.data.clone()).collect();
        match &reference {
            None => reference = Some(data),
            Some(first) => assert_eq!(&data, first, "the same envelopes on every node"),
        }
        assert!(
            client
                .next_within(Duration::from_millis(1500))
                .await
                .is_none(),
            "nothing twice on node {}",
            cluster.name(*node)
        );
    }
}

/// Concurrent publishers on all three nodes, to three maps: every
/// subscriber of a map (one per node) gets the identical sequence, every
/// firehose (one per node) gets the identical sequence, ids strictly
/// increase, and every id answered 201 is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_every_node_make_one_total_order() {
    const TASKS_PER_NODE: usize = 2;
    const REQUESTS: usize = 12;
    let cluster = Cluster::start(3, &[]).await;
    let mut maps = Vec::new();
    for node in 0..3 {
        maps.push(cluster[node].create_map().await);
    }
    // Subscribers first (every map is empty: they start at the zero id).
    let mut readers = Vec::new();
    for (m, map) in maps.iter().enumerate() {
        for node in 0..3 {
            let (mut client, connected) =
                open(&cluster[node], &stream_path(&map.slug), &map.key, None).await;
            assert_eq!(connected.id, ZERO);
            let label = format!("map {m} on node {node}");
            readers.push(tokio::spawn(async move {
                let (seen, end) = read_until_done(&mut client, 1, WAIT).await;
                (label, Some(m), seen, end)
            }));
        }
    }
    for node in 0..3 {
        let (mut client, connected) = open(&cluster[node], "/api/events/stream", ADMIN, None).await;
        assert_eq!(envelope(&connected)["map_id"], Value::Null, "firehose");
        let label = format!("firehose on node {node}");
        readers.push(tokio::spawn(async move {
            let (seen, end) = read_until_done(&mut client, 3, WAIT).await;
            (label, None, seen, end)
        }));
    }

    let bases: Vec<String> = cluster.nodes.iter().map(|n| n.base.clone()).collect();
    let slugs: Vec<String> = maps.iter().map(|m| m.slug.clone()).collect();
    let mut publishers = Vec::new();
    for (node, base) in bases.iter().enumerate() {
        for task in 0..TASKS_PER_NODE {
            let (base, slugs) = (base.clone(), slugs.clone());
            publishers.push(tokio::spawn(async move {
                let http = http_client();
                let mut acked = Vec::new();
                for i in 0..REQUESTS {
                    let m = (node + task + i) % 3;
                    let body = if i % 4 == 3 {
                        json!([
                            {"type": "batch", "payload": [node, task, i, 0]},
                            {"type": "batch", "payload": [node, task, i, 1]},
                            {"type": "batch", "payload": [node, task, i, 2]},
                        ])
                    } else {
                        json!({"type": "one", "payload": [node, task, i]})
                    };
                    let ids = publish_at(&http, &base, &slugs[m], &body, None)
                        .await
                        .unwrap_or_else(|r| panic!("publish on node {node}: {r:?}"));
                    assert_increasing(&ids, "ids of one batch");
                    acked.push((m, ids));
                }
                acked
            }));
        }
    }
    let mut acked_by_map: Vec<Vec<String>> = vec![Vec::new(); 3];
    for publisher in join_all(publishers).await {
        for (m, ids) in publisher.expect("publisher") {
            acked_by_map[m].extend(ids);
        }
    }
    // One `done` per map, one after another: the firehose ends at the third.
    let mut dones = Vec::new();
    for (m, map) in maps.iter().enumerate() {
        dones.push(cluster[m].publish(&map.slug, json!({"type": "done"})).await[0].clone());
    }
    assert_increasing(&dones, "dones published one after another");

    let expected_by_map: Vec<Vec<String>> = (0..3)
        .map(|m| {
            let mut ids = sorted(acked_by_map[m].clone());
            ids.push(dones[m].clone());
            ids
        })
        .collect();
    let expected_all = sorted(expected_by_map.iter().flatten().cloned());
    let map_of: HashMap<String, usize> = expected_by_map
        .iter()
        .enumerate()
        .flat_map(|(m, ids)| ids.iter().map(move |id| (id.clone(), m)))
        .collect();
    assert_eq!(
        map_of.len(),
        expected_all.len(),
        "every id answered is unique across nodes and maps"
    );

    for reader in join_all(readers).await {
        let (label, map, seen, end) = reader.expect("reader");
        let got = seen_ids(&seen);
        assert_increasing(&got, &label);
        match map {
            Some(m) => {
                assert_eq!(
                    got, expected_by_map[m],
                    "{label}: exactly the map's acknowledged events, in id order ({end:?})"
                );
            }
            None => {
                assert_eq!(
                    got, expected_all,
                    "{label}: every acknowledged event of every map, in id order ({end:?})"
                );
                for s in &seen {
                    assert_eq!(
                        s.map_id, maps[map_of[&s.id]].id,
                        "{label}: envelope of {}",
                        s.id
                    );
                }
            }
        }
    }
}

/// A client resumes on another node with `Last-Event-ID`: first with
/// nothing being published, then hopping between the nodes while three
/// nodes publish: it sees every event after its start exactly once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_on_another_node_loses_and_repeats_nothing() {
    let cluster = Cluster::start(3, &[]).await;
    let map = cluster[0].create_map().await;
    let first = cluster[0].publish_n(&map.slug, 10).await;
    let mut resumed = Vec::new();
    for node in [1, 2] {
        let (mut client, connected) = open(
            &cluster[node],
            &stream_path(&map.slug),
            &map.key,
            Some(&first[3]),
        )
        .await;
        assert_eq!(connected.id, first[3], "connected carries the resume id");
        let got = collect(&mut client, 6, WAIT).await;
        assert_eq!(
            ids(&got),
            first[4..],
            "resumed on node {node} after #3 (published on node 0)"
        );
        resumed.push((node, client));
    }
    let live_event = cluster[0].publish(&map.slug, json!({"type": "live"})).await;
    for (node, client) in &mut resumed {
        let got = collect(client, 1, WAIT).await;
        assert_eq!(
            ids(&got),
            live_event,
            "node {node} delivers what node 0 published after the resume"
        );
        assert!(
            client
                .next_within(Duration::from_millis(800))
                .await
                .is_none(),
            "nothing twice on node {node}"
        );
    }
    drop(resumed);

    // Now while publishing continues through every node.
    let live = live_of(&cluster);
    let publisher = Publisher::start(
        Arc::clone(&live),
        &map.slug,
        Duration::from_millis(15),
        true,
    );
    let mut followers = Vec::new();
    for c in 0..3usize {
        let follower = Follower::new(&format!("follower {c}"), &map);
        let live = Arc::clone(&live);
        followers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150 * c as u64)).await;
            follower
                .follow(live, WAIT, move |round, bases, _| {
                    (
                        bases[(c + round) % bases.len()].clone(),
                        3 + (round * (c + 2)) % 7,
                    )
                })
                .await
        }));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (acked, _) = publisher.stop().await;
    let done = publish_done(&live, &map.slug).await;
    let mut all = sorted(acked.into_iter().map(|(id, _)| id));
    all.push(done);
    assert_eq!(
        history(&cluster[1], &map.slug, &map.key, &live_event[0]).await,
        all,
        "the store holds exactly the acknowledged events"
    );
    for follower in join_all(followers).await {
        let f = follower.expect("follower");
        let start = f.start.clone().expect("connected once");
        assert!(
            f.connects >= 3,
            "{} hopped: {} connects",
            f.name,
            f.connects
        );
        assert_eq!(
            f.ids(),
            expected_after(&all, &start),
            "{}: everything after {start}, once, in order, over {} connects",
            f.name,
            f.connects
        );
    }
}

/// Many short-lived subscribers hop between nodes (some drop right after
/// `connected`) while every node publishes; each ends with exactly the
/// published sequence after its start, and every slot is free afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_across_nodes_ends_with_exactly_the_published_sequence() {
    const CLIENTS: usize = 10;
    let cluster = Cluster::start(3, &[("HERALD__HISTORY__HOT_EVENTS", "32")]).await;
    let map = cluster[0].create_map().await;
    cluster[1].publish_n(&map.slug, 5).await;
    let live = live_of(&cluster);
    let publisher = Publisher::start(Arc::clone(&live), &map.slug, Duration::from_millis(8), true);
    let mut followers = Vec::new();
    for c in 0..CLIENTS {
        let follower = Follower::new(&format!("churner {c}"), &map);
        let live = Arc::clone(&live);
        followers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(80 * c as u64)).await;
            // A small deterministic generator per client.
            let mut state = 0x9e37_79b9_u64.wrapping_mul(c as u64 + 1);
            follower
                .follow(live, WAIT, move |_, bases, current| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let pick = (state >> 33) as usize;
                    let mut base = bases[pick % bases.len()].clone();
                    if Some(base.as_str()) == current {
                        base = next_node(bases, current);
                    }
                    (base, (pick >> 4) % 7) // 0..=6 events, 0 = drop after `connected`
                })
                .await
        }));
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (acked, _) = publisher.stop().await;
    let done = publish_done(&live, &map.slug).await;
    let mut all = sorted(acked.into_iter().map(|(id, _)| id));
    all.push(done);
    for follower in join_all(followers).await {
        let f = follower.expect("follower");
        let start = f.start.clone().expect("connected once");
        assert_eq!(
            f.ids(),
            expected_after(&all, &start),
            "{}: everything after {start}, once, in order, over {} connects",
            f.name,
            f.connects
        );
    }
    for node in 0..3 {
        let slug = map.slug.clone();
        poll_admin(
            &cluster[node],
            &format!("/api/admin/maps/{slug}"),
            WAIT,
            "every slot is free after the churn",
            |detail| detail["connections"] == 0,
        )
        .await;
    }
}

/// A node with its wall clock 10 minutes behind (libfaketime) publishes
/// interleaved with normal nodes: ids keep one strictly increasing order in
/// commit order, and every subscriber sees the same sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_slow_clock_keeps_one_order() {
    let mut cluster = Cluster::start(2, &[]).await;
    let options = NodeOptions {
        env: cluster.node_env(2, &[]),
        faketime: Some("-10m".into()),
        ..NodeOptions::default()
    };
    let slow = tokio::task::block_in_place(|| cluster.add(options));
    let map = cluster[0].create_map().await;

    let mut clients = Vec::new();
    let mut server_times = Vec::new();
    for node in 0..3 {
        let (client, connected) =
            open(&cluster[node], &stream_path(&map.slug), &map.key, None).await;
        let time = envelope(&connected)["server_time"]
            .as_str()
            .expect("server_time")
            .to_owned();
        server_times.push(chrono::DateTime::parse_from_rfc3339(&time).expect("RFC 3339"));
        clients.push(client);
    }
    // The harness works: the slow node's clock really is 10 minutes behind.
    let behind = server_times[0] - server_times[slow];
    assert!(
        (540..=660).contains(&behind.num_seconds()),
        "faketime: the slow node is {behind} behind"
    );

    // One after another: each publish commits after the previous one.
    let mut in_commit_order = Vec::new();
    for round in 0..8 {
        for node in [0, slow, 1] {
            let id = cluster[node]
                .publish(&map.slug, json!({"type": "seq", "payload": [round, node]}))
                .await
                .remove(0);
            if let Some(previous) = in_commit_order.last() {
                assert!(
                    &id > previous,
                    "round {round}: node {} answered {id}, not after {previous} committed before it",
                    cluster.name(node)
                );
            }
            in_commit_order.push(id);
        }
    }
    // Then all at once.
    let bases: Vec<String> = cluster.nodes.iter().map(|n| n.base.clone()).collect();
    let concurrent = join_all(bases.into_iter().map(|base| {
        let slug = map.slug.clone();
        async move {
            let http = http_client();
            let mut ids = Vec::new();
            for i in 0..10 {
                ids.extend(
                    publish_at(
                        &http,
                        &base,
                        &slug,
                        &json!({"type": "any", "payload": i}),
                        None,
                    )
                    .await
                    .unwrap_or_else(|r| panic!("publish: {r:?}")),
                );
            }
            ids
        }
    }))
    .await;
    // A keyed batch from the slow node, whose ids the store moves after the
    // clock: a retry on another node answers the ids as committed.
    let http = http_client();
    let batch = json!([{"type": "keyed", "payload": 1}, {"type": "keyed", "payload": 2}]);
    let keyed = publish_at(
        &http,
        &cluster[slow].base,
        &map.slug,
        &batch,
        Some("slow-1"),
    )
    .await
    .unwrap_or_else(|r| panic!("keyed publish: {r:?}"));
    let retried = publish_at(&http, &cluster[0].base, &map.slug, &batch, Some("slow-1"))
        .await
        .unwrap_or_else(|r| panic!("keyed retry: {r:?}"));
    assert_eq!(retried, keyed, "a retry answers the ids committed");
    let done = cluster[slow]
        .publish(&map.slug, json!({"type": "done"}))
        .await
        .remove(0);
    let mut all = sorted(
        in_commit_order
            .iter()
            .cloned()
            .chain(concurrent.into_iter().flatten()),
    );
    assert!(
        all[..in_commit_order.len()] == in_commit_order[..],
        "the sequential publishes come first, in commit order"
    );
    assert!(
        keyed[0] > all[all.len() - 1],
        "the keyed batch follows the clock"
    );
    all.extend(keyed);
    all.push(done);
    for (node, client) in clients.iter_mut().enumerate() {
        let (seen, end) = read_until_done(client, 1, WAIT).await;
        assert_eq!(
            seen_ids(&seen),
            all,
            "subscriber on node {}: one order ({end:?})",
            cluster.name(node)
        );
    }
}

// ---------------------------------------------------------------------------
// Directory, limits, admin
// ---------------------------------------------------------------------------

/// A map, key or limit change made through one node is in force on the
/// others when the call returns; a revoke refuses the key everywhere and
/// ends its streams on every node within 2 s; a map made with `herald map
/// create` works at once on running nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_changes_are_in_force_on_every_node_at_once() {
    let cluster = Cluster::start(3, &[]).await;
    let (a, b, c) = (&cluster[0], &cluster[1], &cluster[2]);

    // A map created on A: streamed and published on B at once.
    let map = a.create_map().await;
    let (mut key1_on_b, _) = open(b, &stream_path(&map.slug), &map.key, None).await;
    let published = b.publish(&map.slug, json!({"type": "dir.1"})).await;
    assert_eq!(ids(&collect(&mut key1_on_b, 1, WAIT).await), published);
    let detail = c.admin_json(&format!("/api/admin/maps/{}", map.slug)).await;
    assert_eq!(detail["id"], map.id, "node C knows the map at once");

    // A key created on B: works on C (and B) at once.
    let (key2_id, key2) = add_key(b, &map.slug).await;
    let (mut key2_on_c, _) = open(c, &stream_path(&map.slug), &key2, None).await;
    let (mut key2_on_b, _) = open(b, &stream_path(&map.slug), &key2, None).await;

    // Limits set on A: in force on B and C at once (3 streams are open).
    set_limits(a, &map.slug, json!({"max_connections": 3})).await;
    let response = b
        .stream_request(&stream_path(&map.slug), &map.key, None)
        .await;
    expect_error(
        response,
        429,
        "MAP_CONNECTION_LIMIT",
        "limit set on A, connect on B",
    )
    .await;
    let response = c.stream_request(&stream_path(&map.slug), ADMIN, None).await;
    expect_error(
        response,
        429,
        "MAP_CONNECTION_LIMIT",
        "limit set on A, admin on C",
    )
    .await;
    let detail = b.admin_json(&format!("/api/admin/maps/{}", map.slug)).await;
    assert_eq!(
        detail["limits"]["max_connections"], 3,
        "B reports A's change"
    );
    set_limits(
        a,
        &map.slug,
        json!({"max_connections": null, "max_connections_per_key": 2}),
    )
    .await;
    let response = c.stream_request(&stream_path(&map.slug), &key2, None).await;
    expect_error(
        response,
        429,
        "API_KEY_CONNECTION_LIMIT",
        "key 2 has a stream on B and one on C",
    )
    .await;
    let (mut key1_again, _) = open(c, &stream_path(&map.slug), &map.key, None).await;

    // Revoke key 2 on A: refused on B and C at once, its streams end.
    let (status, body) = admin(
        a,
        reqwest::Method::DELETE,
        &format!("/api/admin/maps/{}/keys/{key2_id}", map.slug),
        None,
    )
    .await;
    assert_eq!(status, 204, "revoke: {body}");
    let revoked = Instant::now();
    for (node, relay) in [("B", b), ("C", c)] {
        let response = relay
            .stream_request(&stream_path(&map.slug), &key2, None)
            .await;
        expect_error(
            response,
            401,
            "UNAUTHORIZED",
            &format!("revoked key on {node}"),
        )
        .await;
        let response = relay
            .get(&format!("/api/maps/{}/events", map.slug), &key2)
            .send()
            .await
            .expect("history");
        expect_error(
            response,
            401,
            "UNAUTHORIZED",
            &format!("history, revoked key on {node}"),
        )
        .await;
    }
    let bound = TWO_SECS + SLACK;
    for (node, stream) in [("B", &mut key2_on_b), ("C", &mut key2_on_c)] {
        let left = (revoked + bound).saturating_duration_since(Instant::now());
        assert!(
            stream.ends_within(left).await,
            "the revoked key's stream on {node} ended within {bound:?} of the revoke"
        );
    }
    // Key 1's streams are untouched.
    let next = a.publish(&map.slug, json!({"type": "dir.2"})).await;
    assert_eq!(ids(&collect(&mut key1_on_b, 1, WAIT).await), next);
    assert_eq!(ids(&collect(&mut key1_again, 1, WAIT).await), next);

    // `herald map create` beside the running nodes: in force at once.
    let slug = unique("cli-");
    let key = printed_key(&run_cli(c, &["map", "create", &slug]).await);
    let (mut cli_on_a, connected) = open(a, &stream_path(&slug), &key, None).await;
    assert_eq!(connected.id, ZERO);
    let published = b.publish(&slug, json!({"type": "cli.1"})).await;
    assert_eq!(
        ids(&collect(&mut cli_on_a, 1, WAIT).await),
        published,
        "the CLI's map streams on A and publishes on B"
    );
}

/// `max_connections` of a map and `max_connections_per_key` count streams
/// on every node, exactly, under concurrent connects to three nodes; a
/// closed stream frees its slot for every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_hold_across_nodes_under_concurrent_connects() {
    const K: usize = 5;
    let cluster = Cluster::start(3, &[]).await;
    let map = cluster[0].create_map().await;
    set_limits(&cluster[1], &map.slug, json!({"max_connections": K})).await;
    let path = stream_path(&map.slug);

    let wave = |n: usize, path: String, token: String| {
        let cluster = &cluster;
        async move {
            let requests = (0..n).map(|i| {
                let (path, token) = (path.clone(), token.clone());
                async move {
                    let node = i % 3;
                    (
                        node,
                        cluster[node].stream_request(&path, &token, None).await,
                    )
                }
            });
            join_all(requests).await
        }
    };
    let mut admitted: Vec<(usize, SseClient)> = Vec::new();
    let mut refused = 0;
    for (node, response) in wave(30, path.clone(), map.key.clone()).await {
        match response.status().as_u16() {
            200 => admitted.push((node, SseClient::new(response))),
            _ => {
                expect_error(
                    response,
                    429,
                    "MAP_CONNECTION_LIMIT",
                    "over the map's limit",
                )
                .await;
                refused += 1;
            }
        }
    }
    let per_node: Vec<usize> = (0..3)
        .map(|n| admitted.iter().filter(|(node, _)| *node == n).count())
        .collect();
    assert_eq!(
        admitted.len(),
        K,
        "exactly the map's limit is admitted across the nodes (per node {per_node:?})"
    );
    assert_eq!(refused, 30 - K);
    for (_, client) in &mut admitted {
        client.connected().await;
    }
    for node in 0..3 {
        assert_eq!(
            map_connections(&cluster[node], &map.slug).await,
            K,
            "node {node} counts every node's streams"
        );
    }

    // Closing two (on different nodes where possible) frees two slots.
    admitted.sort_by_key(|(node, _)| *node);
    let last = admitted.pop();
    let first = admitted.remove(0);
    drop((first, last));
    poll_admin(
        &cluster[2],
        &format!("/api/admin/maps/{}", map.slug),
        WAIT,
        "two closed streams",
        |detail| detail["connections"] == K - 2,
    )
    .await;
    let mut again = 0;
    let mut kept = Vec::new();
    for (_, response) in wave(12, path.clone(), map.key.clone()).await {
        if response.status() == 200 {
            again += 1;
            kept.push(SseClient::new(response));
        } else {
            expect_error(response, 429, "MAP_CONNECTION_LIMIT", "second wave").await;
        }
    }
    assert_eq!(again, 2, "exactly the two freed slots are taken again");

    // Per key, on another map.
    let other = cluster[2].create_map().await;
    let (_, second_key) = add_key(&cluster[0], &other.slug).await;
    set_limits(
        &cluster[0],
        &other.slug,
        json!({"max_connections_per_key": 3}),
    )
    .await;
    let other_path = stream_path(&other.slug);
    let mut per_key = Vec::new();
    for (_, response) in wave(24, other_path.clone(), other.key.clone()).await {
        if response.status() == 200 {
            per_key.push(SseClient::new(response));
        } else {
            expect_error(
                response,
                429,
                "API_KEY_CONNECTION_LIMIT",
                "over the key's limit",
            )
            .await;
        }
    }
    assert_eq!(per_key.len(), 3, "exactly the key's limit across the nodes");
    // The other key and the admin token still get in.
    let (_second, _) = open(&cluster[1], &other_path, &second_key, None).await;
    let (_admin, _) = open(&cluster[2], &other_path, ADMIN, None).await;
    drop(per_key.pop());
    poll_admin(
        &cluster[1],
        &format!("/api/admin/maps/{}", other.slug),
        WAIT,
        "a closed keyed stream",
        |detail| {
            detail["keys"].as_array().is_some_and(|keys| {
                keys.iter()
                    .any(|k| k["key_id"] == other.key_id && k["connections"] == 2)
            })
        },
    )
    .await;
    let (_freed, _) = open(&cluster[2], &other_path, &other.key, None).await;
    let response = cluster[0]
        .stream_request(&other_path, &other.key, None)
        .await;
    expect_error(response, 429, "API_KEY_CONNECTION_LIMIT", "full again").await;
}

/// Admin views from any node cover the cluster: live nodes with their
/// connection counts, every node's streams with their `node`, a stream on
/// C closed from A, limits and stats counting every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_views_cover_every_node() {
    let cluster = Cluster::start(3, &[]).await;
    let names: Vec<String> = (0..3).map(|i| cluster.name(i)).collect();
    let map = cluster[0].create_map().await;
    let mut streams: Vec<(usize, String, SseClient)> = Vec::new();
    for node in 0..3 {
        for _ in 0..=node {
            let (client, connected) =
                open(&cluster[node], &stream_path(&map.slug), &map.key, None).await;
            streams.push((node, connection_id(&connected), client));
        }
    }

    for node in 0..3 {
        let listed = poll_admin(
            &cluster[node],
            "/api/admin/nodes",
            WAIT,
            "three live nodes with 1, 2 and 3 streams",
            |body| {
                let Some(items) = body["items"].as_array() else {
                    return false;
                };
                let mut got: Vec<(String, u64)> = items
                    .iter()
                    .map(|i| {
                        (
                            i["name"].as_str().unwrap_or_default().to_owned(),
                            i["connections"].as_u64().unwrap_or(u64::MAX),
                        )
                    })
                    .collect();
                got.sort();
                got == vec![
                    (names[0].clone(), 1),
                    (names[1].clone(), 2),
                    (names[2].clone(), 3),
                ]
            },
        )
        .await;
        let items = listed["items"].as_array().expect("items");
        let ids: BTreeSet<&str> = items.iter().filter_map(|i| i["id"].as_str()).collect();
        assert_eq!(ids.len(), 3, "three distinct node ids: {listed}");
        for item in items {
            let id = item["id"].as_str().unwrap_or_default();
            assert!(
                ulid::Ulid::from_string(id).is_ok(),
                "node id is a ULID: {item}"
            );
            for field in ["started_at", "last_seen"] {
                assert!(
                    item[field].as_str().is_some_and(|s| !s.is_empty()),
                    "{field} of {item}"
                );
            }
        }
    }

    let expected: HashMap<String, String> = streams
        .iter()
        .map(|(node, id, _)| (id.clone(), names[*node].clone()))
        .collect();
    for (node, path) in [
        (0, "/api/admin/connections".to_owned()),
        (1, format!("/api/admin/connections?map={}", map.slug)),
        (2, "/api/admin/connections?limit=100".to_owned()),
    ] {
        let listed = poll_admin(
            &cluster[node],
            &path,
            WAIT,
            "every node's streams",
            |body| body["total"] == 6,
        )
        .await;
        let items = listed["items"].as_array().expect("items");
        assert_eq!(items.len(), 6, "{listed}");
        for item in items {
            let id = item["id"].as_str().unwrap_or_default();
            assert_eq!(
                item["node"].as_str(),
                expected.get(id).map(String::as_str),
                "node of connection {id}, listed on node {node}: {item}"
            );
            assert_eq!(item["map_id"], map.id);
        }
    }

    // A stream held by C, closed from A.
    let at = streams
        .iter()
        .position(|(node, _, _)| *node == 2)
        .expect("a stream on C");
    let (_, victim, mut client) = streams.remove(at);
    let (status, body) = admin(
        &cluster[0],
        reqwest::Method::DELETE,
        &format!("/api/admin/connections/{victim}"),
        None,
    )
    .await;
    assert_eq!(status, 204, "DELETE on A of a stream on C: {body}");
    assert!(
        client.ends_within(TWO_SECS + SLACK).await,
        "the stream on C ended within 2 s (+ slack) of the DELETE on A"
    );

    let limits = poll_admin(
        &cluster[1],
        "/api/admin/limits",
        WAIT,
        "limits count every node's streams",
        |body| {
            body["maps"].as_array().is_some_and(|maps| {
                maps.iter()
                    .any(|m| m["map_id"] == map.id && m["connections"] == 5)
            })
        },
    )
    .await;
    let entry = limits["maps"]
        .as_array()
        .and_then(|maps| maps.iter().find(|m| m["map_id"] == map.id))
        .expect("the map's usage");
    assert_eq!(entry["keys"][0]["key_id"], map.key_id);
    assert_eq!(entry["keys"][0]["connections"], 5, "{limits}");

    let stats = poll_admin(
        &cluster[2],
        "/api/admin/stats",
        WAIT,
        "stats of the cluster",
        |body| body["nodes"] == 3 && body["connections"] == 5,
    )
    .await;
    assert_eq!(stats["maps"], 1, "{stats}");
    drop(streams);
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

/// SIGKILL of a node: its slots are freed within the node timeout (a map
/// at its limit admits again elsewhere), it leaves the node list, its
/// clients resume elsewhere, and every acknowledged event is delivered
/// exactly once in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_frees_its_slots_and_its_clients_resume_elsewhere() {
    let mut cluster = Cluster::start(3, &[]).await;
    let names: Vec<String> = (0..3).map(|i| cluster.name(i)).collect();
    let limited = cluster[0].create_map().await;
    set_limits(&cluster[0], &limited.slug, json!({"max_connections": 3})).await;
    let limited_path = stream_path(&limited.slug);
    let (_on_a, _) = open(&cluster[0], &limited_path, &limited.key, None).await;
    let (_on_c1, _) = open(&cluster[2], &limited_path, &limited.key, None).await;
    let (_on_c2, _) = open(&cluster[2], &limited_path, &limited.key, None).await;
    let response = cluster[1]
        .stream_request(&limited_path, &limited.key, None)
        .await;
    expect_error(response, 429, "MAP_CONNECTION_LIMIT", "before the kill").await;
    poll_admin(
        &cluster[0],
        "/api/admin/nodes",
        WAIT,
        "three nodes",
        |body| body["items"].as_array().map(Vec::len) == Some(3),
    )
    .await;

    let data = cluster[0].create_map().await;
    let live = live_of(&cluster);
    let mut followers = Vec::new();
    for (label, first) in [("client of C", 2usize), ("client of A", 0)] {
        let mut follower = Follower::new(label, &data);
        let first_base = cluster[first].base.clone();
        let mut client = follower.connect(&first_base).await.expect("connect");
        let live = Arc::clone(&live);
        followers.push(tokio::spawn(async move {
            follower.read(&mut client, usize::MAX, WAIT).await;
            drop(client);
            follower
                .follow(live, WAIT, |_, bases, current| {
                    (next_node(bases, current), usize::MAX)
                })
                .await
        }));
    }
    let publisher = Publisher::start(
        Arc::clone(&live),
        &data.slug,
        Duration::from_millis(20),
        true,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let killed_base = cluster[2].base.clone();
    tokio::task::block_in_place(|| cluster[2].kill());
    let killed = Instant::now();
    live.lock().unwrap().retain(|b| *b != killed_base);

    // Its two slots come back within the node timeout: exactly two.
    let bound = NODE_TIMEOUT + SLACK;
    let mut kept = Vec::new();
    loop {
        let response = cluster[1]
            .stream_request(&limited_path, &limited.key, None)
            .await;
        if response.status() == 200 {
            kept.push(SseClient::new(response));
            break;
        }
        expect_error(
            response,
            429,
            "MAP_CONNECTION_LIMIT",
            "waiting for freed slots",
        )
        .await;
        assert!(
            killed.elapsed() < bound,
            "the dead node's slots were not freed within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (second, _) = open(&cluster[1], &limited_path, &limited.key, None).await;
    kept.push(second);
    let response = cluster[0]
        .stream_request(&limited_path, &limited.key, None)
        .await;
    expect_error(
        response,
        429,
        "MAP_CONNECTION_LIMIT",
        "exactly two slots freed",
    )
    .await;

    let left = bound.saturating_sub(killed.elapsed()) + Duration::from_millis(500);
    let listed = poll_admin(
        &cluster[0],
        "/api/admin/nodes",
        left,
        "the dead node left",
        |body| {
            body["items"].as_array().is_some_and(|items| {
                items.len() == 2 && items.iter().all(|i| i["name"] != names[2].as_str())
            })
        },
    )
    .await;
    let listed_names: BTreeSet<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(
        listed_names,
        BTreeSet::from([names[0].as_str(), names[1].as_str()])
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let (acked, _) = publisher.stop().await;
    let done = publish_done(&live, &data.slug).await;
    let stored = history(&cluster[0], &data.slug, &data.key, ZERO).await;
    assert_eq!(stored.last(), Some(&done));
    let acked: BTreeSet<String> = acked.into_iter().map(|(id, _)| id).collect();
    for id in &acked {
        assert!(stored.contains(id), "acknowledged {id} is stored");
    }
    for follower in join_all(followers).await {
        let f = follower.expect("follower");
        let got = f.ids();
        assert_eq!(
            got, stored,
            "{}: every stored event once, in order ({} connects)",
            f.name, f.connects
        );
        assert!(f.connects >= 1);
    }
}

/// The node's listening connection is terminated (twice) while the other
/// nodes publish: its subscribers still get everything, in order, within a
/// few seconds of each commit.
/// A node stopped with SIGTERM leaves the node list at once and for good:
/// a heartbeat in flight during its shutdown does not put it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stopped_with_sigterm_leaves_the_node_list_for_good() {
    let mut cluster = Cluster::start(2, &[]).await;
    let map = cluster[0].create_map().await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(
            open(&cluster[1], &stream_path(&map.slug), &map.key, None)
                .await
                .0,
        );
    }
    let stopped = tokio::task::block_in_place(|| cluster[1].terminate());
    assert!(stopped.success(), "exit status {stopped}");
    // Longer than two heartbeats of the stopped node, shorter than the
    // node timeout that would hide a node put back.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        let nodes = cluster[0].admin_json("/api/admin/nodes").await;
        assert_eq!(nodes["items"].as_array().map(Vec::len), Some(1), "{nodes}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(streams);
}

/// A node frozen for longer than the node timeout is taken for dead: its
/// slots go to others. On its return it ends the streams whose slots were
/// given away and the ones an admin closed meanwhile, so no limit stays
/// exceeded and no close request is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_back_from_the_dead_ends_what_it_lost_meanwhile() {
    let cluster = Cluster::start(2, &[]).await;
    let limited = cluster[0].create_map().await;
    set_limits(&cluster[0], &limited.slug, json!({"max_connections": 1})).await;
    let other = cluster[0].create_map().await;
    let (mut lost, _) = open(&cluster[1], &stream_path(&limited.slug), &limited.key, None).await;
    let (mut asked, connected) =
        open(&cluster[1], &stream_path(&other.slug), &other.key, None).await;
    let signal = |name: &str| {
        let sent = std::process::Command::new("kill")
            .args([name, &cluster[1].pid().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill {name}");
    };
    signal("-STOP");
    // Still counted live: the request is taken, the node cannot act on it.
    let (status, _) = admin(
        &cluster[0],
        reqwest::Method::DELETE,
        &format!("/api/admin/connections/{}", connection_id(&connected)),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let deadline = Instant::now() + NODE_TIMEOUT + SLACK;
    let mut kept = loop {
        let response = cluster[0]
            .stream_request(&stream_path(&limited.slug), &limited.key, None)
            .await;
        if response.status() == 200 {
            break SseClient::new(response);
        }
        assert!(
            Instant::now() < deadline,
            "the frozen node's slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    kept.connected().await;
    signal("-CONT");
    assert!(
        lost.ends_within(NODE_TIMEOUT + SLACK).await,
        "a stream whose slot went to another"
    );
    assert!(
        asked.ends_within(NODE_TIMEOUT + SLACK).await,
        "a stream closed by an admin while its node was away"
    );
    for relay in [&cluster[0], &cluster[1]] {
        poll_admin(
            relay,
            &format!("/api/admin/maps/{}", limited.slug),
            WAIT,
            "the limit holds again",
            |map| map["connections"] == 1,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_listener_is_killed_still_delivers_everything() {
    let cluster = Cluster::start(3, &[]).await;
    let victim = format!("herald-listen:{}", cluster.name(1));
    let map = cluster[0].create_map().await;
    let mut readers = Vec::new();
    for node in [1, 0] {
        let (mut client, _) = open(&cluster[node], &stream_path(&map.slug), &map.key, None).await;
        readers.push(tokio::spawn(async move {
            let (seen, end) = read_until_done(&mut client, 1, WAIT).await;
            (node, seen, end)
        }));
    }
    let live: Live = Arc::new(Mutex::new(vec![
        cluster[0].base.clone(),
        cluster[2].base.clone(),
    ]));
    let publisher = Publisher::start(
        Arc::clone(&live),
        &map.slug,
        Duration::from_millis(40),
        true,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first_kill = terminate_backends(&victim).await;
    // Once it listens again, once more.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut second_kill = 0;
    while Instant::now() < deadline && second_kill == 0 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        second_kill = terminate_backends(&victim).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (acked, _) = publisher.stop().await;
    let done = publish_done(&live, &map.slug).await;
    let acked_at: HashMap<String, Instant> = acked.iter().cloned().collect();
    let mut all = sorted(acked.into_iter().map(|(id, _)| id));
    all.push(done);
    for reader in join_all(readers).await {
        let (node, seen, end) = reader.expect("reader");
        assert_eq!(
            seen_ids(&seen),
            all,
            "subscriber on node {}: everything, in order ({end:?})",
            cluster.name(node)
        );
        for s in &seen {
            if let Some(acked) = acked_at.get(&s.id) {
                let late = s.at.saturating_duration_since(*acked);
                assert!(
                    late <= TWO_SECS + SLACK,
                    "node {}: {} arrived {late:?} after its commit",
                    cluster.name(node),
                    s.id
                );
            }
        }
    }
    assert!(
        first_kill >= 1,
        "the node's listening connection ({victim}) was found and terminated"
    );
    eprintln!("listener terminated {first_kill} + {second_kill} times");
}

/// PostgreSQL restarted under load (a disposable server): publishes during
/// the outage are refused with 503, streams stay open, every node catches
/// up within 2 s of the database being back, and everything answered 201
/// is delivered exactly once in order on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restart_under_load_every_node_catches_up() {
    let pg = DisposablePostgres::init();
    // Nodes must not count each other dead during the outage itself.
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start_on_postgres(
            &pg.url(),
            3,
            &[("HERALD__CLUSTER__NODE_TIMEOUT_SECS", "30")],
        )
    });
    let map = cluster[0].create_map().await;
    let mut readers = Vec::new();
    for node in 0..3 {
        let (mut client, _) = open(&cluster[node], &stream_path(&map.slug), &map.key, None).await;
        readers.push(tokio::spawn(async move {
            let (seen, end) = read_until_done(&mut client, 1, Duration::from_secs(30)).await;
            (node, seen, end)
        }));
    }
    let live = live_of(&cluster);
    let publisher = Publisher::start(
        Arc::clone(&live),
        &map.slug,
        Duration::from_millis(50),
        false,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;

    tokio::task::block_in_place(|| pg.stop());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let http = http_client();
    for node in 0..3 {
        let status = http
            .get(cluster[node].url("/ready"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        assert_eq!(
            status.ok(),
            Some(503),
            "/ready on node {node} during the outage"
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked_during = publisher.acked_count();
    tokio::task::block_in_place(|| pg.start());
    let back = Instant::now();

    let deadline = back + Duration::from_secs(20);
    while publisher.acked_count() < acked_during + 9 {
        assert!(Instant::now() < deadline, "publishing did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (acked, refused) = publisher.stop().await;
    let done = publish_done(&live, &map.slug).await;
    for node in 0..3 {
        let status = http
            .get(cluster[node].url("/ready"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        assert_eq!(
            status.ok(),
            Some(200),
            "/ready on node {node} after the outage"
        );
    }

    assert!(
        !refused.is_empty(),
        "publishes were refused during the outage"
    );
    for refusal in &refused {
        assert_eq!(
            refusal.status,
            Some(503),
            "from {}: {refusal:?}",
            refusal.base
        );
        let body: Value = serde_json::from_str(&refusal.body).unwrap_or_default();
        assert_eq!(body["code"], "STORE_UNAVAILABLE", "{refusal:?}");
        assert!(
            refusal.took < Duration::from_secs(10),
            "bounded: {refusal:?}"
        );
    }
    let stored = history(&cluster[1], &map.slug, &map.key, ZERO).await;
    assert_eq!(stored.last(), Some(&done));
    let acked_at: HashMap<String, Instant> = acked.iter().cloned().collect();
    for id in acked_at.keys() {
        assert!(stored.contains(id), "acknowledged {id} is stored");
    }
    for reader in join_all(readers).await {
        let (node, seen, end) = reader.expect("reader");
        assert!(end.is_ok(), "stream on node {node} stayed open: {end:?}");
        assert_eq!(
            seen_ids(&seen),
            stored,
            "node {node}: every stored event once, in order"
        );
        for s in &seen {
            if let Some(acked) = acked_at.get(&s.id) {
                let by = (*acked).max(back) + TWO_SECS + SLACK;
                assert!(
                    s.at <= by,
                    "node {node}: {} arrived {:?} after the later of its commit and the database's return",
                    s.id,
                    s.at.saturating_duration_since((*acked).max(back))
                );
            }
        }
    }
    drop(cluster);
    drop(pg);
}

/// All three nodes restarted one after another with SIGTERM while a
/// publisher publishes and clients reconnect elsewhere: every node exits 0,
/// nothing is lost, nothing comes twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_with_sigterm_loses_nothing() {
    let mut cluster = Cluster::start(3, &[]).await;
    let map = cluster[0].create_map().await;
    let live = live_of(&cluster);
    let mut followers = Vec::new();
    for first in 0..3 {
        let mut follower = Follower::new(&format!("client of node {first}"), &map);
        let mut client = follower
            .connect(&cluster[first].base)
            .await
            .expect("connect");
        let live = Arc::clone(&live);
        followers.push(tokio::spawn(async move {
            follower.read(&mut client, usize::MAX, WAIT).await;
            drop(client);
            follower
                .follow(live, WAIT, |_, bases, current| {
                    (next_node(bases, current), usize::MAX)
                })
                .await
        }));
    }
    let publisher = Publisher::start(
        Arc::clone(&live),
        &map.slug,
        Duration::from_millis(20),
        true,
    );
    for node in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let base = cluster[node].base.clone();
        live.lock().unwrap().retain(|b| *b != base);
        cluster[node].send_sigterm();
        let status = cluster[node].wait_exit(Duration::from_secs(10)).await;
        let status =
            status.unwrap_or_else(|| panic!("node {node} did not exit within 10 s of SIGTERM"));
        assert!(status.success(), "node {node} exits 0 on SIGTERM: {status}");
        tokio::task::block_in_place(|| cluster[node].restart());
        live.lock().unwrap().push(cluster[node].base.clone());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (acked, _) = publisher.stop().await;
    let done = publish_done(&live, &map.slug).await;
    let stored = history(&cluster[0], &map.slug, &map.key, ZERO).await;
    assert_eq!(stored.last(), Some(&done));
    let mut all = sorted(acked.into_iter().map(|(id, _)| id));
    all.push(done);
    assert_eq!(
        stored, all,
        "exactly the acknowledged events are stored, once"
    );
    for follower in join_all(followers).await {
        let f = follower.expect("follower");
        assert!(f.connects >= 2, "{} moved when its node stopped", f.name);
        assert_eq!(
            f.ids(),
            all,
            "{}: every event once, in order ({} connects)",
            f.name,
            f.connects
        );
    }
}

/// A node whose database answers are held back (a proxy) past the store
/// timeout: its publish is answered 503 (or not at all), yet the committed
/// event still reaches live subscribers on that node and on another, in
/// order; a later publish comes after it; resuming from before it gets it
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_answered_late_is_still_delivered_in_order() {
    let upstream = reqwest::Url::parse(&postgres_url()).expect("database URL");
    let proxy = PgProxy::start(&format!(
        "{}:{}",
        upstream.host_str().unwrap_or("127.0.0.1"),
        upstream.port().unwrap_or(5432)
    ))
    .await;
    // Holding a node's answers for ~7 s must not make it count as dead.
    let env = [("HERALD__CLUSTER__NODE_TIMEOUT_SECS", "30")];
    let mut cluster = Cluster::start(1, &env).await;
    let options = NodeOptions {
        env: cluster.node_env(1, &env),
        database_url: Some(proxy.url_for(cluster[0].database_url())),
        ..NodeOptions::default()
    };
    let behind = tokio::task::block_in_place(|| cluster.add(options));
    assert!(
        proxy.connections() > 0,
        "the node talks to the database through the proxy"
    );
    let (direct, proxied) = (&cluster[0], &cluster[behind]);
    let map = direct.create_map().await;
    let (mut on_proxied, _) = open(proxied, &stream_path(&map.slug), &map.key, None).await;
    let (mut on_direct, _) = open(direct, &stream_path(&map.slug), &map.key, None).await;
    let e1 = proxied.publish(&map.slug, json!({"type": "e1"})).await;
    assert_eq!(ids(&collect(&mut on_proxied, 1, WAIT).await), e1);
    assert_eq!(ids(&collect(&mut on_direct, 1, WAIT).await), e1);

    let marker = unique("held-");
    proxy.hold_after_commit_of(&marker);
    let started = Instant::now();
    let answer = proxied
        .post(&format!("/api/maps/{}/events", map.slug), PUBLISHER)
        .timeout(Duration::from_secs(12))
        .json(&json!({"type": "held", "payload": {"marker": marker}}))
        .send()
        .await;
    let took = started.elapsed();
    assert!(
        proxy.triggered(),
        "the proxy saw the held event's commit (and held its answer)"
    );
    match answer {
        Ok(response) => {
            let status = response.status().as_u16();
            assert_ne!(
                status, 201,
                "answered 201 though the commit's answer was held"
            );
            expect_error(
                response,
                503,
                "STORE_UNAVAILABLE",
                "publish with its commit answer held",
            )
            .await;
        }
        Err(e) => assert!(e.is_timeout(), "no answer, only a timeout: {e}"),
    }
    assert!(
        took >= Duration::from_secs(4),
        "the node waited for its commit's answer (answered after {took:?})"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.release();

    let mut held_id = None;
    for (node, stream) in [
        ("behind the proxy", &mut on_proxied),
        ("direct", &mut on_direct),
    ] {
        let got = collect(stream, 1, TWO_SECS + SLACK + Duration::from_secs(5)).await;
        assert_eq!(got.len(), 1, "the committed event reached the node {node}");
        assert_eq!(
            got[0].event, "held",
            "node {node}: the held event comes next"
        );
        assert_eq!(envelope(&got[0])["payload"]["marker"], marker.as_str());
        match &held_id {
            None => held_id = Some(got[0].id.clone()),
            Some(id) => assert_eq!(&got[0].id, id, "the same id on both nodes"),
        }
    }
    let held_id = held_id.expect("held id");
    assert!(held_id > e1[0], "the held event comes after e1");

    let e3 = proxied.publish(&map.slug, json!({"type": "e3"})).await;
    assert!(e3[0] > held_id, "a later publish gets a later id");
    for (node, stream) in [
        ("behind the proxy", &mut on_proxied),
        ("direct", &mut on_direct),
    ] {
        assert_eq!(ids(&collect(stream, 1, WAIT).await), e3, "node {node}");
        assert!(
            stream.next_within(Duration::from_secs(1)).await.is_none(),
            "nothing twice on the node {node}"
        );
    }
    for relay in [direct, proxied] {
        let (mut resumed, _) = open(relay, &stream_path(&map.slug), &map.key, Some(&e1[0])).await;
        let got = collect(&mut resumed, 3, Duration::from_secs(3)).await;
        assert_eq!(
            ids(&got),
            [held_id.clone(), e3[0].clone()],
            "resuming from e1 on {} gets the held event once",
            relay.base
        );
    }
}

// ---------------------------------------------------------------------------
// Single node
// ---------------------------------------------------------------------------

/// SQLite is single-node: a second `herald serve` on the same file exits 1
/// naming the file, while `herald migrate` and `herald map create` work
/// beside the running server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refuses_a_second_server_but_not_the_cli() {
    let relay = Relay::start(Backend::Sqlite).await;
    let map = relay.create_map().await;
    let file = relay
        .database_url()
        .trim_start_matches("sqlite://")
        .to_owned();
    let mut second = tokio::process::Command::from(relay.command());
    second.kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(20), second.output())
        .await
        .unwrap_or_else(|_| {
            panic!("a second `herald serve` on {file} was still running after 20 s")
        })
        .expect("run herald");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "second serve: {stderr}");
    assert!(stderr.contains(&file), "the message names {file}: {stderr}");

    let migrate = run_cli(&relay, &["migrate"]).await;
    assert!(
        migrate.status.success(),
        "migrate beside the server: {}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let slug = unique("cli-");
    printed_key(&run_cli(&relay, &["map", "create", &slug]).await);

    // The running server is unharmed.
    let (mut client, _) = open(&relay, &stream_path(&map.slug), &map.key, None).await;
    let published = relay.publish(&map.slug, json!({"type": "still"})).await;
    assert_eq!(ids(&collect(&mut client, 1, WAIT).await), published);
}

/// A `Last-Event-ID` later than the newest committed event backfills
/// nothing; `connected` carries the newest id (the zero id for an empty
/// map) and every later event is delivered.
async fn last_event_id_later_than_the_newest_starts_at_the_newest(backend: Backend) {
    let future = "7ZZZZZZZZZZZZZZZZZZZZZZZZZ";
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    let published = relay.publish_n(&map.slug, 3).await;
    let (mut client, connected) =
        open(&relay, &stream_path(&map.slug), &map.key, Some(future)).await;
    assert_eq!(
        connected.id, published[2],
        "connected carries the newest id"
    );
    let later = relay.publish_n(&map.slug, 2).await;
    assert_eq!(
        ids(&collect(&mut client, 2, WAIT).await),
        later,
        "later events are delivered, nothing is backfilled"
    );

    let empty = relay.create_map().await;
    let (mut client, connected) = open(
        &relay,
        &format!("{}?last_event_id={future}", stream_path(&empty.slug)),
        &empty.key,
        None,
    )
    .await;
    assert_eq!(connected.id, ZERO, "an empty map starts at the zero id");
    let first = relay.publish_n(&empty.slug, 2).await;
    assert_eq!(ids(&collect(&mut client, 2, WAIT).await), first);
    assert!(client
        .next_within(Duration::from_millis(500))
        .await
        .is_none());
}

/// The same on a node that never saw the map's events: the newest id is
/// the cluster's, not this node's memory's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_later_than_the_newest_uses_the_cluster_newest() {
    let cluster = Cluster::start(2, &[]).await;
    let map = cluster[0].create_map().await;
    let published = cluster[0].publish_n(&map.slug, 3).await;
    let (mut client, connected) = open(
        &cluster[1],
        &stream_path(&map.slug),
        &map.key,
        Some("7ZZZZZZZZZZZZZZZZZZZZZZZZZ"),
    )
    .await;
    assert_eq!(
        connected.id, published[2],
        "the newest id committed anywhere"
    );
    let later = cluster[0].publish_n(&map.slug, 2).await;
    assert_eq!(ids(&collect(&mut client, 2, WAIT).await), later);
}

/// `herald map create` while the server runs: the printed key works at
/// once (one node, either store).
async fn map_made_by_the_cli_is_in_force_at_once(backend: Backend) {
    let relay = Relay::start(backend).await;
    let slug = unique("cli-");
    let key = printed_key(&run_cli(&relay, &["map", "create", &slug]).await);
    let (mut client, connected) = open(&relay, &stream_path(&slug), &key, None).await;
    assert_eq!(connected.id, ZERO);
    let published = relay.publish(&slug, json!({"type": "cli.1"})).await;
    assert_eq!(ids(&collect(&mut client, 1, WAIT).await), published);
    let detail = relay.admin_json(&format!("/api/admin/maps/{slug}")).await;
    assert_eq!(detail["connections"], 1);
}
