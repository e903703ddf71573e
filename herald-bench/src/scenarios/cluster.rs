//! `cluster`: herald as a cluster. N nodes are spawned on one fresh
//! PostgreSQL schema (the first applies the migrations, the others join),
//! subscribers and publishers are spread over them round robin, and each
//! phase runs on a single node and on the N nodes alternately, every run on
//! freshly started nodes and a fresh schema:
//!
//! - `idle`: idle streams held across the nodes and RSS per stream per
//!   node. One client process holds ~19,900 sockets at most (the open-file
//!   limit), so the streams are held by child processes of this binary
//!   (the hidden `stream-worker` command: a job as one JSON line on stdin,
//!   progress and results as JSON lines on stdout, a `stop` line or the end
//!   of stdin ends it);
//! - `fanout`: deliveries/s flat out, subscribers and publishers on every
//!   node ([`fanout::run_on`]);
//! - `latency`: one publisher on the first node at a fixed rate, the
//!   subscribers on the others: cross-node publish → parse latency;
//! - `ingest`: durable ingest with the publishers on every node
//!   ([`ingest::run_on`]), one run per batch size.
//!
//! The single-node run of a phase is the same load on a cluster of one
//! (herald on PostgreSQL is always a cluster; a single node simply has no
//! peers), so `--nodes 1` runs the baseline alone.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::crowd::{Crowd, CrowdConfig, Mode};
use super::fanout::{self, Probe, Spread};
use super::{check_stream_count, ingest, open_file_limit, secs, Ctx};
use crate::cli::{ClusterArgs, Common, FanoutArgs, IngestArgs, Phase};
use crate::http::{self, Endpoint};
use crate::plot;
use crate::report::{
    fmt_num, median, new_histogram, print_report, print_table, Better, Metrics, Percentiles, Report,
};
use crate::target::{
    vm_rss_kib, Channel, PgSchema, SpawnOptions, SpawnedHerald, Target, TargetKind,
};

/// How long one node may take to print its address.
const NODE_START: Duration = Duration::from_secs(60);
/// Linux's `USER_HZ`: the unit of CPU times in /proc/PID/stat.
const TICKS_PER_SEC: f64 = 100.0;

/// One measured run: a phase, or one batch size of `ingest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Idle,
    Fanout,
    Latency,
    Ingest(usize),
}

impl Case {
    fn name(self) -> String {
        match self {
            Self::Idle => "idle".to_owned(),
            Self::Fanout => "fanout".to_owned(),
            Self::Latency => "latency".to_owned(),
            Self::Ingest(batch) => format!("ingest-b{batch}"),
        }
    }
}

/// Medians of one metric on one node and on N nodes.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub key: String,
    pub label: String,
    pub unit: String,
    pub better: Better,
    pub one_node: Option<f64>,
    pub cluster: Option<f64>,
    /// cluster / one node.
    pub ratio: Option<f64>,
}

/// Every run of one case.
#[derive(Debug, Serialize)]
pub struct CaseResult {
    pub case: String,
    pub medians: Vec<Row>,
    pub one_node: Vec<Report>,
    pub cluster: Vec<Report>,
    pub plot: Option<String>,
}

/// A target of the cluster work, checked against the medians.
#[derive(Debug, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub result: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
}

/// What `cluster` writes.
#[derive(Debug, Serialize)]
pub struct ClusterReport {
    pub scenario: String,
    pub nodes: usize,
    pub rounds: usize,
    /// Runs in the order they ran (`<case>@<nodes>`).
    pub order: Vec<String>,
    pub params: Value,
    pub cases: Vec<CaseResult>,
    pub targets: Vec<TargetCheck>,
}

pub async fn run(
    ctx: &Ctx,
    common: &Common,
    options: &SpawnOptions,
    args: &ClusterArgs,
) -> Result<ClusterReport, String> {
    let url = options
        .database_url
        .clone()
        .filter(|u| u.starts_with("postgres"))
        .ok_or("cluster runs on PostgreSQL: give --database-url postgres://...")?;
    if args.nodes == 0 || args.nodes > 8 {
        return Err("--nodes must be 1..=8".to_owned());
    }
    if args.rounds == 0 || args.rounds > 20 {
        return Err("--rounds must be 1..=20".to_owned());
    }
    if args.phases.is_empty() {
        return Err("--phases: name at least one".to_owned());
    }
    let pause = secs(args.pause, "--pause")?;
    for value in [args.hold, args.settle, args.drain, args.open_timeout] {
        secs(value, "a duration")?;
    }
    let sides: Vec<usize> = if args.nodes == 1 || args.no_baseline {
        vec![args.nodes]
    } else {
        vec![1, args.nodes]
    };
    let cases = cases(args)?;
    let mut order = Vec::new();
    let mut results = Vec::new();
    for case in &cases {
        let mut one_node = Vec::new();
        let mut cluster = Vec::new();
        for round in 1..=args.rounds {
            for &nodes in &sides {
                println!(
                    "\n== cluster {}: round {round}/{}, {nodes} node{} ==",
                    case.name(),
                    args.rounds,
                    if nodes == 1 { "" } else { "s" }
                );
                let report = run_case(ctx, common, options, &url, args, *case, nodes).await?;
                print_report(&report);
                order.push(format!("{}@{nodes}", case.name()));
                if nodes == 1 {
                    one_node.push(report);
                } else {
                    cluster.push(report);
                }
                tokio::time::sleep(pause.max(Duration::from_millis(100))).await;
            }
        }
        let medians = medians(&one_node, &cluster);
        let plot = match (case, &common.out) {
            (Case::Fanout | Case::Latency, Some(out))
                if !one_node.is_empty() && !cluster.is_empty() =>
            {
                let path = plot_path(out, &case.name());
                plot::render_sides(
                    &path,
                    &format!(
                        "herald, 1 node vs {} nodes — cluster {}",
                        args.nodes,
                        case.name()
                    ),
                    ["1 node", &format!("{} nodes", args.nodes)],
                    &one_node,
                    &cluster,
                )?;
                Some(path.display().to_string())
            }
            _ => None,
        };
        results.push(CaseResult {
            case: case.name(),
            medians,
            one_node,
            cluster,
            plot,
        });
    }
    for result in &results {
        print_case(result, args.nodes, args.rounds);
    }
    let targets = check_targets(&results, args.nodes);
    print_targets(&targets);
    Ok(ClusterReport {
        scenario: "cluster".to_owned(),
        nodes: args.nodes,
        rounds: args.rounds,
        order,
        params: json!({
            "nodes": args.nodes,
            "baseline": sides.len() > 1 || args.nodes == 1,
            "phases": args.phases,
            "payload_bytes": args.payload_bytes,
            "idle_streams": args.idle_streams,
            "idle_maps": args.idle_maps,
            "subscribe_concurrency": args.subscribe_concurrency,
            "streams_per_worker": args.streams_per_worker,
            "fanout_subscribers": args.fanout_subscribers,
            "fanout_publishers": args.fanout_publishers,
            "fanout_duration_s": args.fanout_duration,
            "latency_subscribers": args.latency_subscribers,
            "latency_rate": args.latency_rate,
            "latency_duration_s": args.latency_duration,
            "ingest_publishers": args.ingest_publishers,
            "ingest_batches": args.ingest_batches,
            "ingest_duration_s": args.ingest_duration,
            "client_threads": ctx.shards.len(),
            "connect_concurrency": ctx.connect_concurrency,
            "cpus": std::thread::available_parallelism().map(usize::from).unwrap_or(0),
            "client_open_file_limit": open_file_limit(),
        }),
        cases: results,
        targets,
    })
}

/// The runs the phases ask for, checked before anything starts.
fn cases(args: &ClusterArgs) -> Result<Vec<Case>, String> {
    let mut cases = Vec::new();
    for phase in &args.phases {
        match phase {
            Phase::Idle => {
                if args.idle_streams == 0 {
                    return Err("--idle-streams must be at least 1".to_owned());
                }
                if args.streams_per_worker == 0 {
                    return Err("--streams-per-worker must be at least 1".to_owned());
                }
                cases.push(Case::Idle);
            }
            Phase::Fanout => {
                fanout::validate(TargetKind::Herald, &fanout_args(args))?;
                cases.push(Case::Fanout);
            }
            Phase::Latency => {
                fanout::validate(TargetKind::Herald, &latency_args(args))?;
                cases.push(Case::Latency);
            }
            Phase::Ingest => {
                for &batch in &args.ingest_batches {
                    ingest::validate(TargetKind::Herald, &ingest_args(args, batch))?;
                    cases.push(Case::Ingest(batch));
                }
            }
        }
    }
    Ok(cases)
}

fn fanout_args(args: &ClusterArgs) -> FanoutArgs {
    FanoutArgs {
        subscribers: args.fanout_subscribers,
        payload_bytes: args.payload_bytes,
        rate: 0.0,
        duration: args.fanout_duration,
        publishers: args.fanout_publishers,
        batch: 1,
        drain: args.drain,
        open_timeout: args.open_timeout,
    }
}

fn latency_args(args: &ClusterArgs) -> FanoutArgs {
    FanoutArgs {
        subscribers: args.latency_subscribers,
        payload_bytes: args.payload_bytes,
        rate: args.latency_rate,
        duration: args.latency_duration,
        publishers: 1,
        batch: 1,
        drain: args.drain,
        open_timeout: args.open_timeout,
    }
}

fn ingest_args(args: &ClusterArgs, batch: usize) -> IngestArgs {
    IngestArgs {
        publishers: args.ingest_publishers,
        batch,
        payload_bytes: args.payload_bytes,
        duration: args.ingest_duration,
        idempotency_keys: false,
    }
}

/// Starts `nodes` nodes, runs one case on them, stops them and drops the
/// schema.
async fn run_case(
    ctx: &Ctx,
    common: &Common,
    options: &SpawnOptions,
    url: &str,
    args: &ClusterArgs,
    case: Case,
    nodes: usize,
) -> Result<Report, String> {
    let mut relay = Relay::start(ctx, options, url, nodes).await?;
    let pids = relay.pids();
    let cpu_before = Cpu::now(&pids);
    // CPU over publishing and draining alone (fanout, latency).
    let marks: Arc<Mutex<Vec<Cpu>>> = Arc::default();
    let probe: Probe = {
        let (marks, pids) = (Arc::clone(&marks), pids.clone());
        Arc::new(move |_at: &str| {
            let cpu = Cpu::now(&pids);
            marks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(cpu);
        })
    };
    let subscribe_concurrency = args.subscribe_concurrency.max(1);
    let outcome = match case {
        Case::Idle => {
            // The single node holds its share of the N nodes' streams.
            let streams = (args.idle_streams * nodes).div_ceil(args.nodes).max(1);
            idle(ctx, common, &relay, streams, args).await
        }
        Case::Fanout => {
            let channels = relay.channels(args.fanout_subscribers).await?;
            let mut spread = Spread::over(channels.clone(), channels);
            spread.connect_concurrency = Some(subscribe_concurrency);
            spread.probe = Some(probe);
            fanout::run_on(ctx, &relay.targets[0], &fanout_args(args), &spread).await
        }
        Case::Latency => {
            let channels = relay.channels(args.latency_subscribers).await?;
            // Publish on the first node, subscribe on the others.
            let mut spread = match channels.split_first() {
                Some((first, rest)) if !rest.is_empty() => {
                    Spread::over(rest.to_vec(), vec![Arc::clone(first)])
                }
                _ => Spread::one(&channels[0]),
            };
            spread.connect_concurrency = Some(subscribe_concurrency);
            spread.probe = Some(probe);
            fanout::run_on(ctx, &relay.targets[0], &latency_args(args), &spread).await
        }
        Case::Ingest(batch) => {
            let channels = relay.channels(0).await?;
            ingest::run_on(ctx, &relay.targets[0], &ingest_args(args, batch), &channels).await
        }
    };
    let cpu_after = Cpu::now(&pids);
    let mut report = match outcome {
        Ok(report) => report,
        Err(e) => return Err(relay.explain(e)),
    };
    if let Some(gone) = relay.dead_node() {
        let gone = gone.endpoint.url();
        report
            .warnings
            .push(format!("node {gone} exited during the run"));
    }
    // The nodes' backends report their table counters as they end.
    relay.stop_nodes();
    match relay.table_stats().await {
        Ok(stats) => add_store_stats(&mut report, &stats),
        Err(e) => report.warnings.push(format!("table statistics: {e}")),
    }
    relay.stop();
    annotate(&mut report, case, nodes, args.nodes);
    if matches!(case, Case::Fanout | Case::Latency) {
        if let Some(params) = report.params.as_object_mut() {
            params.insert(
                "subscribe_concurrency".to_owned(),
                subscribe_concurrency.into(),
            );
        }
        // Every connect takes a slot in PostgreSQL: show what opening costs.
        if let Some(open) = report.details["open_secs"].as_f64() {
            report.metrics.push(crate::report::Metric {
                key: "open_secs".to_owned(),
                label: "time to open all subscribers".to_owned(),
                unit: "s".to_owned(),
                value: open,
                better: Better::Lower,
            });
        }
    }
    let marks = std::mem::take(&mut *marks.lock().unwrap_or_else(PoisonError::into_inner));
    if let [publish, drained] = marks.as_slice() {
        add_cpu(
            &mut report,
            "cpu_publishing",
            "pub_",
            "publish to drained",
            publish,
            drained,
        );
    }
    add_cpu(&mut report, "cpu", "", "whole run", &cpu_before, &cpu_after);
    Ok(report)
}

/// Records the case and the layout in a report's parameters.
fn annotate(report: &mut Report, case: Case, nodes: usize, cluster_nodes: usize) {
    let (subscribe, publish) = match case {
        Case::Idle | Case::Fanout => (nodes, nodes),
        Case::Latency if nodes > 1 => (nodes - 1, 1),
        Case::Latency => (1, 1),
        Case::Ingest(_) => (0, nodes),
    };
    if let Some(params) = report.params.as_object_mut() {
        params.insert("case".to_owned(), case.name().into());
        params.insert("nodes".to_owned(), nodes.into());
        params.insert("cluster_nodes".to_owned(), cluster_nodes.into());
        params.insert("subscribe_nodes".to_owned(), subscribe.into());
        params.insert("publish_nodes".to_owned(), publish.into());
        params.insert("herald_database".to_owned(), "postgresql".into());
    }
    report.scenario = format!("cluster {}", case.name());
}

/// CPU time so far: the nodes, PostgreSQL (every `postgres` process),
/// this process (the client threads); read at both ends of a span.
#[derive(Debug, Clone)]
struct Cpu {
    at: Instant,
    nodes: Vec<Option<u64>>,
    /// Ticks per `postgres` process (backends come and go).
    postgres: HashMap<u32, u64>,
    bench: Option<u64>,
    /// Busy ticks of the whole machine (all CPUs, every process).
    machine: Option<u64>,
}

impl Cpu {
    fn now(node_pids: &[u32]) -> Self {
        Self {
            at: Instant::now(),
            nodes: node_pids.iter().map(|pid| cpu_ticks(*pid)).collect(),
            postgres: postgres_ticks(),
            bench: cpu_ticks(std::process::id()),
            machine: machine_busy_ticks(),
        }
    }
}

/// Busy ticks of all CPUs from /proc/stat (everything but idle and iowait).
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // counted in user already).
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    Some(busy)
}

/// Adds the CPU seconds used between `before` and `after` to a report:
/// metrics `<prefix>herald_cpu_s`, `<prefix>postgres_cpu_s`,
/// `<prefix>bench_cpu_s` and `<prefix>wall_s`, details under `name`.
fn add_cpu(report: &mut Report, name: &str, prefix: &str, span: &str, before: &Cpu, after: &Cpu) {
    let secs = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / TICKS_PER_SEC),
        _ => None,
    };
    let wall = after.at.saturating_duration_since(before.at).as_secs_f64();
    let nodes: Vec<Option<f64>> = before
        .nodes
        .iter()
        .zip(&after.nodes)
        .map(|(a, b)| secs(*a, *b))
        .collect();
    let herald: f64 = nodes.iter().flatten().sum();
    // Processes that ended within the span are not counted; those that
    // started within it count whole.
    let postgres = after
        .postgres
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.postgres.get(pid).copied().unwrap_or(0)))
        .sum::<u64>() as f64
        / TICKS_PER_SEC;
    let bench = secs(before.bench, after.bench);
    let mut m = Metrics::default();
    let key = |k: &str| format!("{prefix}{k}");
    m.add(
        &key("herald_cpu_s"),
        &format!("herald CPU, all nodes ({span})"),
        "s",
        herald,
        Better::Neither,
    );
    m.add(
        &key("postgres_cpu_s"),
        &format!("PostgreSQL CPU ({span})"),
        "s",
        postgres,
        Better::Neither,
    );
    if let Some(bench) = bench {
        m.add(
            &key("bench_cpu_s"),
            &format!("bench CPU, this process ({span})"),
            "s",
            bench,
            Better::Neither,
        );
    }
    // Everything else on the machine: this bench's client processes, and
    // whatever else runs (a figure well above 0 flags a disturbed run).
    let other = secs(before.machine, after.machine)
        .map(|machine| (machine - herald - postgres - bench.unwrap_or(0.0)).max(0.0));
    if let Some(other) = other {
        m.add(
            &key("other_cpu_s"),
            &format!("other CPU on the machine ({span})"),
            "s",
            other,
            Better::Neither,
        );
    }
    m.add(
        &key("wall_s"),
        &format!("wall time ({span})"),
        "s",
        wall,
        Better::Neither,
    );
    report.metrics.extend(m.0);
    if let Some(details) = report.details.as_object_mut() {
        details.insert(
            name.to_owned(),
            json!({
                "node_cpu_s": nodes,
                "herald_cpu_s": herald,
                "postgres_cpu_s": postgres,
                "bench_cpu_s": bench,
                "other_cpu_s": other,
                "wall_s": wall,
            }),
        );
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `(comm)`: state is field 3, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks of every `postgres` process now running, by pid.
fn postgres_ticks() -> HashMap<u32, u64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(|pid| cpu_ticks(pid).map(|t| (pid, t)))
        .collect()
}

/// The nodes of one run on their own schema.
struct Relay {
    nodes: Vec<SpawnedHerald>,
    targets: Vec<Target>,
    schema: Option<PgSchema>,
}

impl Relay {
    /// A fresh schema and `n` nodes on it: the first applies the
    /// migrations, then the others start together. Checks that every node
    /// sees all `n` in `GET /api/admin/nodes`.
    async fn start(ctx: &Ctx, options: &SpawnOptions, url: &str, n: usize) -> Result<Self, String> {
        let schema = PgSchema::create(url).await?;
        let database = schema.herald_url();
        let mut relay = Self {
            nodes: Vec::with_capacity(n),
            targets: Vec::with_capacity(n),
            schema: Some(schema),
        };
        let node_options = |i: usize| SpawnOptions {
            node_name: Some(format!("node-{}", i + 1)),
            ..options.clone()
        };
        let first = SpawnedHerald::start_on(&node_options(0), &database, NODE_START).await?;
        relay.nodes.push(first);
        let others = futures_util::future::join_all((1..n).map(|i| {
            let options = node_options(i);
            let database = database.clone();
            async move { SpawnedHerald::start_on(&options, &database, NODE_START).await }
        }))
        .await;
        for node in others {
            relay.nodes.push(node?);
        }
        relay.targets = relay
            .nodes
            .iter()
            .map(|node| Target {
                kind: TargetKind::Herald,
                endpoint: node.endpoint.clone(),
                publish_endpoint: None,
                admin_token: options.admin_token.clone(),
                publisher_token: options.publisher_token.clone(),
                server_pids: vec![node.pid],
                timeout: ctx.timeout,
            })
            .collect();
        let names: Vec<String> = relay
            .nodes
            .iter()
            .map(|node| format!("{} pid {}", node.endpoint.url(), node.pid))
            .collect();
        println!(
            "started {n} herald node(s) on one schema: {}",
            names.join(", ")
        );
        for target in &relay.targets {
            let live = admin_nodes(target).await?.len();
            if live != n {
                return Err(format!(
                    "{} lists {live} live nodes, expected {n}",
                    target.endpoint.url()
                ));
            }
        }
        Ok(relay)
    }

    /// One map, created through the first node, as a channel on every node
    /// (its limits let `subscribers` streams in).
    async fn channels(&self, subscribers: usize) -> Result<Vec<Arc<Channel>>, String> {
        let channel = self.targets[0].create_channel(subscribers).await?;
        Ok(self
            .targets
            .iter()
            .map(|t| Arc::new(channel.on(&t.endpoint)))
            .collect())
    }

    fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.pid).collect()
    }

    fn dead_node(&mut self) -> Option<&SpawnedHerald> {
        let dead = self.nodes.iter_mut().position(|node| !node.alive())?;
        self.nodes.get(dead)
    }

    /// An error, with the log of a node that exited.
    fn explain(&mut self, error: String) -> String {
        match self.dead_node() {
            Some(node) => format!(
                "{error}\nherald at {} exited; its log ends with:\n{}",
                node.endpoint.url(),
                node.log_tail(20)
            ),
            None => error,
        }
    }

    /// Stops every node (SIGTERM to all, then waits).
    fn stop_nodes(&mut self) {
        for node in &self.nodes {
            node.terminate();
        }
        for node in &mut self.nodes {
            node.stop();
        }
        self.nodes.clear();
    }

    /// Stops every node, then drops the schema.
    fn stop(&mut self) {
        self.stop_nodes();
        if let Some(mut schema) = self.schema.take() {
            schema.drop_now();
        }
    }

    /// PostgreSQL's counters of the schema's tables (`pg_stat_user_tables`).
    async fn table_stats(&self) -> Result<HashMap<String, TableStats>, String> {
        use sqlx::Connection;
        let schema = self.schema.as_ref().ok_or("no schema")?;
        // Counters reach the statistics system within a second or so.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut conn = sqlx::PgConnection::connect(schema.url())
            .await
            .map_err(|e| e.to_string())?;
        let rows: Vec<(String, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT relname::text, COALESCE(seq_scan, 0) + COALESCE(idx_scan, 0), n_tup_ins, \
             n_tup_upd, n_tup_del, n_live_tup, n_dead_tup \
             FROM pg_stat_user_tables WHERE schemaname = $1",
        )
        .bind(schema.name())
        .fetch_all(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
        let _ = conn.close().await;
        Ok(rows
            .into_iter()
            .map(|(name, scans, ins, upd, del, live, dead)| {
                (
                    name,
                    TableStats {
                        scans,
                        inserted: ins,
                        updated: upd,
                        deleted: del,
                        live,
                        dead,
                    },
                )
            })
            .collect())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One table's counters over a run (its schema is fresh).
#[derive(Debug, Clone, Copy, Serialize)]
struct TableStats {
    /// Sequential and index scans.
    scans: i64,
    inserted: i64,
    updated: i64,
    deleted: i64,
    live: i64,
    dead: i64,
}

/// What the tables say about the run: commits (each moves the id clock
/// once, in one statement) and the writes to the cluster-wide connection
/// slots.
fn add_store_stats(report: &mut Report, stats: &HashMap<String, TableStats>) {
    let mut m = Metrics::default();
    if let Some(clock) = stats.get("id_clock") {
        let commits = clock.updated;
        m.add(
            "commits",
            "commits (id clock moves)",
            "",
            commits as f64,
            Better::Neither,
        );
        if let Some(events) = stats.get("events") {
            if commits > 0 {
                m.add(
                    "events_per_commit",
                    "events per commit",
                    "",
                    events.inserted as f64 / commits as f64,
                    Better::Neither,
                );
            }
        }
    }
    if let Some(slots) = stats.get("connections") {
        m.add(
            "slot_row_updates",
            "updates of connection slot rows",
            "",
            slots.updated as f64,
            Better::Neither,
        );
    }
    report.metrics.extend(m.0);
    if let Some(details) = report.details.as_object_mut() {
        details.insert("tables".to_owned(), json!(stats));
    }
}

/// `GET /api/admin/nodes`: the live nodes as one node sees them.
async fn admin_nodes(target: &Target) -> Result<Vec<Value>, String> {
    let admin = format!("Bearer {}", target.admin_token);
    let response = http::once(
        &target.endpoint,
        "GET",
        "/api/admin/nodes",
        &[("Authorization", &admin)],
        b"",
        target.timeout,
    )
    .await
    .map_err(|e| format!("GET /api/admin/nodes on {}: {e}", target.endpoint.url()))?;
    if response.status != 200 {
        return Err(format!(
            "GET /api/admin/nodes answered {}: {}",
            response.status,
            response.text()
        ));
    }
    let body = response.json().map_err(|e| e.to_string())?;
    body["items"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("GET /api/admin/nodes: no items in {body}"))
}

// ---------------------------------------------------------------- idle --

/// What a stream worker is asked to do (one JSON line on its stdin).
#[derive(Debug, Serialize, Deserialize)]
struct WorkerJob {
    /// Stream `i` of this worker opens `to[i % to.len()]`.
    to: Vec<StreamTo>,
    streams: usize,
    open_timeout_s: f64,
}

/// A stream's server (root URL), path and `Authorization`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StreamTo {
    server: String,
    path: String,
    auth: Option<String>,
}

/// What a stream worker reports (JSON lines on its stdout).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum WorkerMsg {
    Progress {
        ready: usize,
        failed: usize,
    },
    Open {
        ready: usize,
        failed: usize,
        open_secs: f64,
    },
    Done {
        ready: usize,
        failed: usize,
        closed: usize,
        /// The connect-time histogram: (µs, count) pairs.
        connect: Vec<(u64, u64)>,
        errors: Vec<String>,
        error_count: u64,
        comments: u64,
    },
}

/// A message of worker `index`, or the end of its output.
enum FromWorker {
    Msg(usize, WorkerMsg),
    Gone(usize),
}

/// A stream worker process; killed if still running when dropped.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Worker {
    fn start(
        index: usize,
        common: &Common,
        ctx: &Ctx,
        concurrency: usize,
        job: &WorkerJob,
        messages: mpsc::UnboundedSender<FromWorker>,
    ) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own binary: {e}"))?;
        let mut child = Command::new(exe)
            .args([
                "--threads",
                &ctx.shards.len().to_string(),
                "--connect-concurrency",
                &concurrency.to_string(),
                "--request-timeout",
                &common.request_timeout.to_string(),
                "--max-time",
                &common.max_time.to_string(),
                "stream-worker",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("start a stream worker: {e}"))?;
        let stdout = child.stdout.take();
        let mut worker = Self {
            stdin: child.stdin.take(),
            child,
        };
        let line = serde_json::to_string(job).map_err(|e| e.to_string())?;
        worker.send(&line)?;
        let stdout = stdout.ok_or("stream worker: no stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<WorkerMsg>(&line) {
                    Ok(msg) => {
                        if messages.send(FromWorker::Msg(index, msg)).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("stream worker {index}: {line}"),
                }
            }
            let _ = messages.send(FromWorker::Gone(index));
        });
        Ok(worker)
    }

    fn send(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("stream worker: stdin closed")?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("stream worker: {e}"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // The end of stdin stops a worker; give it a moment, then kill it.
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Per node of an idle run.
#[derive(Debug, Serialize)]
struct IdleNode {
    name: String,
    url: String,
    pid: u32,
    /// Streams the bench sent to this node (round robin).
    streams: usize,
    /// Streams of this node in `GET /api/admin/nodes`.
    listed: Option<u64>,
    rss_before_kib: Option<u64>,
    rss_after_kib: Option<u64>,
    rss_held_kib: Option<u64>,
    rss_per_stream_kib: Option<f64>,
}

/// `streams` idle streams on one map, round robin over the relay's nodes,
/// held by as many worker processes as the open-file limit asks for.
async fn idle(
    ctx: &Ctx,
    common: &Common,
    relay: &Relay,
    streams: usize,
    args: &ClusterArgs,
) -> Result<Report, String> {
    let hold = secs(args.hold, "--hold")?;
    let settle = secs(args.settle, "--settle")?;
    let open_timeout = secs(args.open_timeout, "--open-timeout")?;
    let maps = args.idle_maps.clamp(1, streams);
    let n = relay.nodes.len();
    // Stream i goes to node i % n and map (i / n) % maps: `to[j]` for
    // j = i % (n × maps) is node j % n, map j / n.
    let mut to = Vec::with_capacity(n * maps);
    let mut map_names = Vec::with_capacity(maps);
    for _ in 0..maps {
        let channels = relay.channels(streams.div_ceil(maps)).await?;
        map_names.push(channels[0].name.clone());
        to.extend(channels.iter().map(|c| StreamTo {
            server: c.endpoint.url(),
            path: c.subscribe_path.clone(),
            auth: c.subscribe_auth.clone(),
        }));
    }
    let mut warnings = Vec::new();
    tokio::time::sleep(settle).await;
    let rss_before: Vec<Option<u64>> = relay.nodes.iter().map(|h| vm_rss_kib(h.pid)).collect();

    let worker_count = streams.div_ceil(args.streams_per_worker).max(1);
    let concurrency = ctx.connect_concurrency.div_ceil(worker_count).max(1);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut workers = Vec::with_capacity(worker_count);
    let mut first = 0;
    for w in 0..worker_count {
        let count = streams / worker_count + usize::from(w < streams % worker_count);
        // Rotated so that stream `first + i` of the run goes where stream
        // `first + i` should: the round robin holds over all workers.
        let mut to = to.clone();
        let shift = first % to.len();
        to.rotate_left(shift);
        let job = WorkerJob {
            to,
            streams: count,
            open_timeout_s: args.open_timeout,
        };
        workers.push(Worker::start(
            w,
            common,
            ctx,
            concurrency,
            &job,
            tx.clone(),
        )?);
        first += count;
    }
    drop(tx);
    eprintln!(
        "idle: {streams} streams on {n} node(s) and {maps} map(s), held by {worker_count} \
         client process(es)"
    );

    // Until every worker has opened its streams (or given up).
    let started = Instant::now();
    let mut progress = vec![(0usize, 0usize); worker_count];
    let mut opened: Vec<Option<f64>> = vec![None; worker_count];
    let mut done: Vec<Option<WorkerMsg>> = (0..worker_count).map(|_| None).collect();
    let mut gone = vec![false; worker_count];
    let mut last_print = Instant::now();
    let limit = open_timeout + Duration::from_secs(30);
    while opened.iter().zip(&gone).any(|(o, g)| o.is_none() && !g) {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err("idle: the stream workers did not report in time".to_owned());
        }
        match tokio::time::timeout(left.min(Duration::from_secs(1)), rx.recv()).await {
            Ok(Some(FromWorker::Msg(w, WorkerMsg::Progress { ready, failed }))) => {
                progress[w] = (ready, failed);
            }
            Ok(Some(FromWorker::Msg(
                w,
                WorkerMsg::Open {
                    ready,
                    failed,
                    open_secs,
                },
            ))) => {
                progress[w] = (ready, failed);
                opened[w] = Some(open_secs);
            }
            Ok(Some(FromWorker::Msg(w, msg @ WorkerMsg::Done { .. }))) => done[w] = Some(msg),
            Ok(Some(FromWorker::Gone(w))) => gone[w] = true,
            Ok(None) => break,
            Err(_) => {}
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            let ready: usize = progress.iter().map(|p| p.0).sum();
            let failed: usize = progress.iter().map(|p| p.1).sum();
            eprintln!(
                "idle: {ready}/{streams} open, {failed} failed after {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    let ready: usize = progress.iter().map(|p| p.0).sum();
    let failed: usize = progress.iter().map(|p| p.1).sum();
    if gone.iter().any(|g| *g) {
        warnings.push(format!(
            "{} stream worker(s) exited early",
            gone.iter().filter(|g| **g).count()
        ));
    }
    if ready < streams {
        warnings.push(format!(
            "only {ready} of {streams} streams opened ({failed} failed)"
        ));
    }
    eprintln!(
        "idle: {ready}/{streams} open in {open_secs:.2} s ({failed} failed); holding {:.1} s",
        hold.as_secs_f64()
    );
    tokio::time::sleep(settle).await;
    let rss_after: Vec<Option<u64>> = relay.nodes.iter().map(|h| vm_rss_kib(h.pid)).collect();
    let listed = match admin_nodes(&relay.targets[0]).await {
        Ok(items) => Some(items),
        Err(e) => {
            warnings.push(format!("node list: {e}"));
            None
        }
    };
    tokio::time::sleep(hold).await;
    let rss_held: Vec<Option<u64>> = relay.nodes.iter().map(|h| vm_rss_kib(h.pid)).collect();

    let client_cpu_s = workers
        .iter()
        .filter_map(|w| cpu_ticks(w.child.id()))
        .sum::<u64>() as f64
        / TICKS_PER_SEC;

    // Stop the workers and gather what they saw.
    for worker in &mut workers {
        let _ = worker.send("stop");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.iter().zip(&gone).any(|(d, g)| d.is_none() && !g) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(FromWorker::Msg(w, msg @ WorkerMsg::Done { .. }))) => done[w] = Some(msg),
            Ok(Some(FromWorker::Msg(..))) => {}
            Ok(Some(FromWorker::Gone(w))) => gone[w] = true,
            Ok(None) | Err(_) => break,
        }
    }
    drop(workers);
    let mut connect = new_histogram();
    let mut closed = 0;
    let mut errors = Vec::new();
    let mut error_count = 0;
    let mut comments = 0;
    let mut reported = 0;
    for msg in done.into_iter().flatten() {
        if let WorkerMsg::Done {
            closed: c,
            connect: pairs,
            errors: e,
            error_count: ec,
            comments: cm,
            ..
        } = msg
        {
            reported += 1;
            closed += c;
            for (us, count) in pairs {
                let _ = connect.record_n(us.max(1), count);
            }
            errors.extend(e.into_iter().take(10usize.saturating_sub(errors.len())));
            error_count += ec;
            comments += cm;
        }
    }
    if reported < worker_count {
        warnings.push(format!(
            "{} of {worker_count} stream workers sent no results",
            worker_count - reported
        ));
    }
    if closed > 0 {
        warnings.push(format!("{closed} streams were closed by a node while held"));
    }
    if error_count > 0 {
        warnings.push(format!(
            "{error_count} errors, first: {}",
            errors.first().cloned().unwrap_or_default()
        ));
    }

    let per_node: Vec<IdleNode> = relay
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let sent = streams / n + usize::from(i < streams % n);
            let name = format!("node-{}", i + 1);
            let listed_here = listed.as_ref().and_then(|items| {
                items
                    .iter()
                    .find(|item| item["name"] == name.as_str())
                    .and_then(|item| item["connections"].as_u64())
            });
            // Streams that failed are not known per node: divide by what
            // the node lists when it can say.
            let held = listed_here.map_or(sent, |l| l as usize);
            IdleNode {
                url: node.endpoint.url(),
                pid: node.pid,
                streams: sent,
                listed: listed_here,
                rss_before_kib: rss_before[i],
                rss_after_kib: rss_after[i],
                rss_held_kib: rss_held[i],
                rss_per_stream_kib: match (rss_before[i], rss_after[i]) {
                    (Some(b), Some(a)) if held > 0 => {
                        Some(a.saturating_sub(b) as f64 / held as f64)
                    }
                    _ => None,
                },
                name,
            }
        })
        .collect();
    let listed_total: Option<u64> = per_node.iter().map(|n| n.listed).sum();
    if let Some(total) = listed_total {
        if total != ready as u64 {
            warnings.push(format!(
                "the nodes list {total} streams, the clients hold {ready}"
            ));
        }
    }
    let sum = |v: &[Option<u64>]| v.iter().copied().sum::<Option<u64>>();
    let (before_total, after_total) = (sum(&rss_before), sum(&rss_after));

    let connect_p = Percentiles::of(&connect);
    let mut m = Metrics::default();
    m.add("streams", "streams open", "", ready as f64, Better::Higher);
    m.add("failed", "streams failed", "", failed as f64, Better::Lower);
    if let Some(total) = listed_total {
        m.add(
            "listed",
            "streams listed by the nodes",
            "",
            total as f64,
            Better::Neither,
        );
    }
    m.add(
        "client_processes",
        "client processes",
        "",
        worker_count as f64,
        Better::Neither,
    );
    m.add(
        "open_secs",
        "time to open all",
        "s",
        open_secs,
        Better::Lower,
    );
    m.add(
        "open_rate",
        "streams opened/s",
        "/s",
        if open_secs > 0.0 {
            ready as f64 / open_secs
        } else {
            0.0
        },
        Better::Higher,
    );
    m.add(
        "connect_p50_ms",
        "connect p50",
        "ms",
        connect_p.p50_ms,
        Better::Lower,
    );
    m.add(
        "connect_p99_ms",
        "connect p99",
        "ms",
        connect_p.p99_ms,
        Better::Lower,
    );
    m.add(
        "connect_max_ms",
        "connect max",
        "ms",
        connect_p.max_ms,
        Better::Lower,
    );
    if let (Some(before), Some(after)) = (before_total, after_total) {
        m.add(
            "rss_after_mib",
            "RSS of all nodes with streams",
            "MiB",
            after as f64 / 1024.0,
            Better::Neither,
        );
        if ready > 0 {
            m.add(
                "rss_per_stream_kib",
                "RSS per stream (all nodes)",
                "KiB",
                after.saturating_sub(before) as f64 / ready as f64,
                Better::Lower,
            );
        }
    }
    let per_stream: Vec<f64> = per_node
        .iter()
        .filter_map(|n| n.rss_per_stream_kib)
        .collect();
    if !per_stream.is_empty() {
        m.add(
            "rss_per_stream_max_kib",
            "RSS per stream (worst node)",
            "KiB",
            per_stream.iter().copied().fold(0.0, f64::max),
            Better::Lower,
        );
    }
    let per_node_streams = per_node.iter().map(|n| n.streams).max().unwrap_or(0);
    m.add(
        "streams_per_node",
        "streams on the busiest node",
        "",
        per_node_streams as f64,
        Better::Neither,
    );
    m.add(
        "closed",
        "closed by a node while held",
        "",
        closed as f64,
        Better::Lower,
    );
    m.add(
        "client_cpu_s",
        "client processes' CPU (to the hold)",
        "s",
        client_cpu_s,
        Better::Neither,
    );
    Ok(Report {
        scenario: "idle".to_owned(),
        target: "herald".to_owned(),
        url: relay.targets[0].endpoint.url(),
        params: json!({
            "streams": streams,
            "maps": maps,
            "hold_s": args.hold,
            "client_processes": worker_count,
            "connect_concurrency": ctx.connect_concurrency,
            "client_threads_per_process": ctx.shards.len(),
        }),
        metrics: m.0,
        percentiles_title: "time to open a stream".to_owned(),
        percentiles: Some(connect_p.clone()),
        throughput_key: "rss_per_stream_kib".to_owned(),
        warnings,
        details: json!({
            "maps": map_names,
            "nodes": per_node,
            "connect_time": connect_p,
            "comments": comments,
            "client_open_file_limit": open_file_limit(),
            "errors": errors,
        }),
    })
}

/// The hidden `stream-worker` command: reads a [`WorkerJob`] line from
/// stdin, opens its idle streams, reports `progress` and `open`, holds them
/// until a line (or the end) of stdin, then reports `done`.
pub async fn worker(ctx: &Ctx) -> Result<(), String> {
    let mut stdin = stdin_lines();
    let line = stdin.recv().await.ok_or("stream-worker: no job on stdin")?;
    let job: WorkerJob =
        serde_json::from_str(&line).map_err(|e| format!("stream-worker: bad job: {e}"))?;
    check_stream_count(job.streams)?;
    let open_timeout = secs(job.open_timeout_s, "open timeout")?;
    let channels = job
        .to
        .iter()
        .map(|to| {
            Endpoint::parse(&to.server).map(|endpoint| {
                Arc::new(Channel {
                    kind: TargetKind::Herald,
                    name: String::new(),
                    publish_endpoint: endpoint.clone(),
                    endpoint,
                    publish_path: String::new(),
                    publish_auth: None,
                    subscribe_path: to.path.clone(),
                    subscribe_auth: to.auth.clone(),
                })
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if channels.is_empty() {
        return Err("stream-worker: nowhere to connect".to_owned());
    }
    let crowd = Crowd::start(
        &ctx.shards,
        &CrowdConfig {
            channels,
            subscribers: job.streams,
            publishers: 0,
            mode: Mode::Idle,
            timeout: ctx.timeout,
            connect_concurrency: ctx.connect_concurrency,
        },
    );
    let started = Instant::now();
    let mut stop = false;
    loop {
        let all = tokio::select! {
            all = crowd.wait_open(Duration::from_secs(2)) => all,
            // A stop (or the end of stdin: the bench is gone) while opening.
            _ = stdin.recv() => {
                stop = true;
                false
            }
        };
        let (ready, failed) = (crowd.progress.ready(), crowd.progress.failed());
        if all || stop || started.elapsed() >= open_timeout {
            emit(&WorkerMsg::Open {
                ready,
                failed,
                open_secs: started.elapsed().as_secs_f64(),
            });
            break;
        }
        emit(&WorkerMsg::Progress { ready, failed });
    }
    // Hold until told to stop (a line, or the end of stdin).
    if !stop {
        let _ = stdin.recv().await;
    }
    let (ready, failed) = (crowd.progress.ready(), crowd.progress.failed());
    let closed = crowd.progress.closed();
    let report = crowd.stop().await;
    emit(&WorkerMsg::Done {
        ready,
        failed,
        closed,
        connect: report
            .connect
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect(),
        errors: report.errors,
        error_count: report.error_count,
        comments: report.comments,
    });
    Ok(())
}

fn emit(msg: &WorkerMsg) {
    if let Ok(line) = serde_json::to_string(msg) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// The lines of stdin, read by a thread of their own; the channel closes
/// at the end of stdin.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

// ------------------------------------------------------------- results --

fn medians(one: &[Report], cluster: &[Report]) -> Vec<Row> {
    let Some(first) = cluster.first().or(one.first()) else {
        return Vec::new();
    };
    let of = |runs: &[Report], key: &str| -> Option<f64> {
        let values: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.metric(key).map(|m| m.value))
            .collect();
        (!values.is_empty()).then(|| median(values))
    };
    first
        .metrics
        .iter()
        .map(|metric| {
            let (a, b) = (of(one, &metric.key), of(cluster, &metric.key));
            Row {
                key: metric.key.clone(),
                label: metric.label.clone(),
                unit: metric.unit.clone(),
                better: metric.better,
                one_node: a,
                cluster: b,
                ratio: match (a, b) {
                    (Some(a), Some(b)) if a != 0.0 => Some(b / a),
                    _ => None,
                },
            }
        })
        .collect()
}

fn print_case(result: &CaseResult, nodes: usize, rounds: usize) {
    let cluster_label = format!("{nodes} nodes");
    let mut rows = vec![vec![
        format!("metric (median of {rounds})"),
        "1 node".to_owned(),
        cluster_label,
        "ratio".to_owned(),
    ]];
    let cell = |v: Option<f64>, unit: &str| {
        v.map_or_else(
            || "-".to_owned(),
            |v| {
                if unit.is_empty() {
                    fmt_num(v)
                } else {
                    format!("{} {unit}", fmt_num(v))
                }
            },
        )
    };
    for row in &result.medians {
        rows.push(vec![
            row.label.clone(),
            cell(row.one_node, &row.unit),
            cell(row.cluster, &row.unit),
            row.ratio
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x")),
        ]);
    }
    print_table(&format!("cluster {}", result.case), &rows);
    if result.case == "idle" {
        for report in result.one_node.iter().chain(&result.cluster) {
            if let Some(nodes) = report.details["nodes"].as_array() {
                let mut rows = vec![vec![
                    "node".to_owned(),
                    "streams".to_owned(),
                    "listed".to_owned(),
                    "RSS before".to_owned(),
                    "RSS with streams".to_owned(),
                    "per stream".to_owned(),
                ]];
                let kib = |v: &Value| {
                    v.as_f64().map_or_else(
                        || "-".to_owned(),
                        |k| format!("{} MiB", fmt_num(k / 1024.0)),
                    )
                };
                for node in nodes {
                    rows.push(vec![
                        node["name"].as_str().unwrap_or("").to_owned(),
                        node["streams"]
                            .as_u64()
                            .map_or_else(String::new, |s| fmt_num(s as f64)),
                        node["listed"]
                            .as_u64()
                            .map_or_else(|| "-".to_owned(), |s| fmt_num(s as f64)),
                        kib(&node["rss_before_kib"]),
                        kib(&node["rss_after_kib"]),
                        node["rss_per_stream_kib"]
                            .as_f64()
                            .map_or_else(|| "-".to_owned(), |k| format!("{k:.2} KiB")),
                    ]);
                }
                print_table(&format!("idle, per node ({} node run)", nodes.len()), &rows);
            }
        }
    }
    for report in result.one_node.iter().chain(&result.cluster) {
        for warning in &report.warnings {
            println!("  WARNING ({} node(s)): {warning}", report.params["nodes"]);
        }
    }
}

/// The targets of the cluster work, from the medians.
fn check_targets(results: &[CaseResult], nodes: usize) -> Vec<TargetCheck> {
    let find = |case: &str| results.iter().find(|r| r.case == case);
    let value = |result: &CaseResult, key: &str| -> (Option<f64>, Option<f64>) {
        result
            .medians
            .iter()
            .find(|r| r.key == key)
            .map_or((None, None), |r| (r.one_node, r.cluster))
    };
    let mut checks = Vec::new();
    if nodes < 2 {
        return checks;
    }
    if let Some(idle) = find("idle") {
        let (_, streams) = value(idle, "streams");
        let (_, failed) = value(idle, "failed");
        let (one_kib, kib) = value(idle, "rss_per_stream_kib");
        let (_, worst) = value(idle, "rss_per_stream_max_kib");
        checks.push(TargetCheck {
            target: format!("≥ 55,000 idle streams across {nodes} nodes"),
            result: format!(
                "{} open, {} failed; RSS per stream {} KiB (worst node {} KiB; one node {} KiB)",
                streams.map_or_else(|| "-".to_owned(), fmt_num),
                failed.map_or_else(|| "-".to_owned(), fmt_num),
                kib.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
                worst.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
                one_kib.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
            ),
            met: streams.map(|s| s >= 55_000.0 && failed == Some(0.0)),
        });
    }
    if let Some(fan) = find("fanout") {
        let (one, many) = value(fan, "deliveries_per_s");
        let (lost_one, lost_many) = value(fan, "lost");
        let ratio = match (one, many) {
            (Some(a), Some(b)) if a > 0.0 => Some(b / a),
            _ => None,
        };
        let no_loss = lost_one == Some(0.0) && lost_many == Some(0.0);
        checks.push(TargetCheck {
            target: format!("flat-out fan-out on {nodes} nodes ≥ 0.8 × one node, 0 lost"),
            result: format!(
                "{} vs {} deliveries/s = {} ×; lost {} / {}",
                many.map_or_else(|| "-".to_owned(), |v| fmt_num(v.round())),
                one.map_or_else(|| "-".to_owned(), |v| fmt_num(v.round())),
                ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
                lost_many.map_or_else(|| "-".to_owned(), fmt_num),
                lost_one.map_or_else(|| "-".to_owned(), fmt_num),
            ),
            met: ratio.map(|r| r >= 0.8 && no_loss),
        });
    }
    if let Some(lat) = find("latency") {
        let (one, many) = value(lat, "latency_p50_ms");
        let (one99, many99) = value(lat, "latency_p99_ms");
        let (lost_one, lost_many) = value(lat, "lost");
        let no_loss = lost_one == Some(0.0) && lost_many == Some(0.0);
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
        checks.push(TargetCheck {
            target: "cross-node p50 within 2 ms of single-node p50 (1,000 subs × 100 ev/s)"
                .to_owned(),
            result: format!(
                "p50 {} ms cross-node vs {} ms one node (p99 {} vs {}); lost {} / {}",
                ms(many),
                ms(one),
                ms(many99),
                ms(one99),
                lost_many.map_or_else(|| "-".to_owned(), fmt_num),
                lost_one.map_or_else(|| "-".to_owned(), fmt_num),
            ),
            met: match (one, many) {
                (Some(a), Some(b)) => Some(b - a <= 2.0 && no_loss),
                _ => None,
            },
        });
    }
    for result in results.iter().filter(|r| r.case.starts_with("ingest")) {
        let (one, many) = value(result, "events_per_s");
        let (err_one, err_many) = value(result, "errors");
        checks.push(TargetCheck {
            target: format!("{}: ingest on {nodes} nodes ≥ one node's", result.case),
            result: format!(
                "{} vs {} ev/s = {} ×; errors {} / {}",
                many.map_or_else(|| "-".to_owned(), |v| fmt_num(v.round())),
                one.map_or_else(|| "-".to_owned(), |v| fmt_num(v.round())),
                match (one, many) {
                    (Some(a), Some(b)) if a > 0.0 => format!("{:.2}", b / a),
                    _ => "-".to_owned(),
                },
                err_many.map_or_else(|| "-".to_owned(), fmt_num),
                err_one.map_or_else(|| "-".to_owned(), fmt_num),
            ),
            met: match (one, many) {
                (Some(a), Some(b)) => Some(b >= a && err_many == Some(0.0)),
                _ => None,
            },
        });
    }
    checks
}

fn print_targets(checks: &[TargetCheck]) {
    if checks.is_empty() {
        return;
    }
    let mut rows = vec![vec![
        "target".to_owned(),
        "result".to_owned(),
        "met".to_owned(),
    ]];
    for check in checks {
        rows.push(vec![
            check.target.clone(),
            check.result.clone(),
            match check.met {
                Some(true) => "met".to_owned(),
                Some(false) => "NOT MET".to_owned(),
                None => "-".to_owned(),
            },
        ]);
    }
    print_table("cluster targets", &rows);
}

/// `<out stem>-<case>.svg` next to the JSON.
fn plot_path(out: &Path, case: &str) -> PathBuf {
    let stem = out.file_stem().map_or_else(
        || "cluster".to_owned(),
        |s| s.to_string_lossy().into_owned(),
    );
    out.with_file_name(format!("{stem}-{case}.svg"))
}
