//! Command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::target::TargetKind;

/// Default of --connect-concurrency (see there).
pub const DEFAULT_CONNECT_CONCURRENCY: usize = 64;

/// herald-bench — measures herald (and Nchan and Pushpin, side by side) over
/// real SSE connections on this machine. Every run is bounded in time and in
/// connections, and talks to 127.0.0.1 only.
#[derive(Debug, Parser)]
#[command(name = "herald-bench", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Options of every scenario (accepted before or after its name).
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Server profile to measure (`compare` measures several).
    #[arg(long, value_enum, default_value_t = TargetKind::Herald, global = true)]
    pub target: TargetKind,

    /// Server root URL (loopback only). Default: http://127.0.0.1:8080 for
    /// herald, the --nchan-url for nchan, the --pushpin-url for pushpin.
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,

    /// Start this herald binary for the run (ephemeral port, rate limit off,
    /// connection limits raised, a fresh temp SQLite db unless
    /// --database-url), and stop it at the end.
    #[arg(long, global = true, value_name = "PATH")]
    pub spawn_herald: Option<PathBuf>,

    /// Database of the spawned herald (sqlite://... or postgres://... on
    /// this machine; PostgreSQL gets a fresh schema, dropped afterwards).
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// `server.workers` of the spawned herald (default: herald's own).
    #[arg(long, global = true, value_name = "N")]
    pub herald_workers: Option<usize>,

    /// Extra environment for the spawned herald (repeatable), e.g.
    /// `--herald-env HERALD__SSE__CLIENT_BUFFER=4096`.
    #[arg(long, global = true, value_name = "KEY=VALUE")]
    pub herald_env: Vec<String>,

    /// RUST_LOG of the spawned herald (`info` logs every connect).
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    pub herald_log: String,

    /// herald admin token (creates the bench's maps).
    #[arg(long, global = true, default_value = "demo-admin-token")]
    pub admin_token: String,

    /// herald publisher token.
    #[arg(long, global = true, default_value = "demo-publisher-token")]
    pub publisher_token: String,

    /// Nchan peer's root URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8090")]
    pub nchan_url: String,

    /// Nchan's master pid file (its workers are found as its children) for
    /// RSS when no --server-pid is given.
    #[arg(long, global = true, default_value = "/tmp/nchan-peer/nginx.pid")]
    pub nchan_pid_file: PathBuf,

    /// Pushpin peer's root URL, where streams are opened.
    #[arg(long, global = true, default_value = "http://127.0.0.1:7999")]
    pub pushpin_url: String,

    /// Pushpin peer's publish endpoint (`POST /publish/` with GRIP items).
    #[arg(long, global = true, default_value = "http://127.0.0.1:5561")]
    pub pushpin_publish_url: String,

    /// The Pushpin peer's run directory: its pid files (runner, condure,
    /// zurl, pushpin-proxy, pushpin-handler, origin) name the processes
    /// whose RSS is measured when no --server-pid is given.
    #[arg(long, global = true, default_value = "/tmp/pushpin-peer")]
    pub pushpin_run_dir: PathBuf,

    /// Server process(es) whose VmRSS is measured (comma list; for herald a
    /// spawned process is known already).
    #[arg(long, global = true, value_delimiter = ',', value_name = "PID")]
    pub server_pid: Vec<u32>,

    /// Client threads (each a single-threaded runtime). Default: CPU count.
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,

    /// Write the results as JSON to this file.
    #[arg(long, global = true, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Hard cap on the whole run, in seconds.
    #[arg(long, global = true, default_value_t = 900, value_name = "SECS")]
    pub max_time: u64,

    /// Timeout of one connect or request, in seconds.
    #[arg(long, global = true, default_value_t = 10, value_name = "SECS")]
    pub request_timeout: u64,

    /// Streams being opened at once, over all client threads; the same for
    /// every target. Pushpin refuses part of a burst of a few hundred
    /// connects at once (condure → proxy → origin for each), so the default
    /// is a rate every target takes without refusals.
    #[arg(long, global = true, default_value_t = DEFAULT_CONNECT_CONCURRENCY, value_name = "N")]
    pub connect_concurrency: usize,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    #[command(flatten)]
    Single(Single),
    /// Run a scenario against herald, Nchan and Pushpin alternately (A B C
    /// A B C ...), print medians and ratios, and plot them as SVG.
    Compare(CompareArgs),
    /// herald as a cluster: N nodes spawned on one PostgreSQL schema, each
    /// phase run on a single node and on the N nodes alternately (idle
    /// streams, flat-out fan-out, cross-node latency, ingest); needs
    /// --spawn-herald and --database-url postgres://...
    Cluster(ClusterArgs),
    /// (internal) A client process of `cluster`: holds idle streams as told
    /// on stdin, reports on stdout.
    #[command(hide = true)]
    StreamWorker,
}

/// A phase of `cluster`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Idle streams spread over the nodes: how many, RSS per stream per node.
    Idle,
    /// Flat-out fan-out, subscribers and publishers on every node.
    Fanout,
    /// Publish on the first node, subscribe on the others, at a fixed rate.
    Latency,
    /// Durable ingest, publishers on every node.
    Ingest,
}

#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// herald nodes on the one database (1: the single-node run alone).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Skip the single-node run of each phase (the baseline).
    #[arg(long)]
    pub no_baseline: bool,
    /// Phases to run, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = [Phase::Idle, Phase::Fanout, Phase::Latency, Phase::Ingest]
    )]
    pub phases: Vec<Phase>,
    /// Alternations per phase (one node, N nodes, one node, ...); medians
    /// are reported. Every run gets freshly started nodes and schema.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Seconds of pause between runs.
    #[arg(long, default_value_t = 2.0)]
    pub pause: f64,
    /// Payload bytes per event.
    #[arg(short = 'p', long, default_value_t = 100)]
    pub payload_bytes: usize,

    /// idle: streams in all over the N nodes (the single node holds its
    /// share, streams / N).
    #[arg(long, default_value_t = 3000)]
    pub idle_streams: usize,
    /// idle: maps the streams are spread over (stream i: node i % N, map
    /// (i / N) % maps). Slots are counted per map and key in PostgreSQL.
    #[arg(long, default_value_t = 1)]
    pub idle_maps: usize,
    /// idle: streams one client process holds at most (it may open
    /// about 64 fewer files than its limit); more streams start more
    /// client processes.
    #[arg(long, default_value_t = 19_000)]
    pub streams_per_worker: usize,
    /// idle: seconds to hold the streams once all are open.
    #[arg(long, default_value_t = 3.0)]
    pub hold: f64,
    /// idle: seconds to wait before reading the nodes' RSS.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,

    /// fanout: subscribers in all.
    #[arg(long, default_value_t = 1000)]
    pub fanout_subscribers: usize,
    /// fanout: publishers in all (round robin over the nodes), each as
    /// fast as acknowledged.
    #[arg(long, default_value_t = 6)]
    pub fanout_publishers: usize,
    /// fanout: seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub fanout_duration: f64,

    /// latency: subscribers in all (on every node but the publisher's).
    #[arg(long, default_value_t = 1000)]
    pub latency_subscribers: usize,
    /// latency: events per second (one publisher, on the first node).
    #[arg(long, default_value_t = 100.0)]
    pub latency_rate: f64,
    /// latency: seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub latency_duration: f64,

    /// ingest: publishers in all (round robin over the nodes).
    #[arg(long, default_value_t = 16)]
    pub ingest_publishers: usize,
    /// ingest: events per request, one run each (comma list).
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1])]
    pub ingest_batches: Vec<usize>,
    /// ingest: seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub ingest_duration: f64,

    /// fanout and latency: subscribers being opened at once. Every stream
    /// connect takes its map's slot in PostgreSQL under the map's row lock,
    /// and a node gives up on a pooled connection after 3 s (503), so a
    /// burst of many connects to one map is refused in part.
    #[arg(long, default_value_t = 32)]
    pub subscribe_concurrency: usize,
    /// Seconds allowed after publishing for the last deliveries.
    #[arg(long, default_value_t = 15.0)]
    pub drain: f64,
    /// Seconds allowed for opening all streams of a run.
    #[arg(long, default_value_t = 300.0)]
    pub open_timeout: f64,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Single {
    /// Open N idle streams: connect time, server RSS per stream.
    Connections(ConnectionsArgs),
    /// S subscribers on one channel, events published at a rate or flat
    /// out: deliveries/s, publish→parse latency, lost events.
    Fanout(FanoutArgs),
    /// C concurrent publishers, batches of B: acked events/s, ack latency.
    Ingest(IngestArgs),
    /// Publish K events, reconnect with a Last-Event-ID K behind: time
    /// until all K are received (herald and Nchan; Pushpin keeps no
    /// history).
    Backfill(BackfillArgs),
}

impl Single {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connections(_) => "connections",
            Self::Fanout(_) => "fanout",
            Self::Ingest(_) => "ingest",
            Self::Backfill(_) => "backfill",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ConnectionsArgs {
    /// Streams to open (bounded by this process's open-file limit).
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: usize,
    /// Seconds to hold them open once all are up.
    #[arg(long, default_value_t = 3.0)]
    pub hold: f64,
    /// Seconds to wait before reading the server's RSS (before and after).
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// Seconds allowed for opening all streams.
    #[arg(long, default_value_t = 120.0)]
    pub open_timeout: f64,
}

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Subscribers on the channel.
    #[arg(short = 's', long, default_value_t = 100)]
    pub subscribers: usize,
    /// Payload bytes per event.
    #[arg(short = 'p', long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Events per second in all (0: each publisher publishes as fast as
    /// it is acknowledged).
    #[arg(short = 'r', long, default_value_t = 0.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(short = 'd', long, default_value_t = 5.0)]
    pub duration: f64,
    /// Concurrent publishers (each numbers its own events).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Events per publish request (herald and Pushpin; Nchan takes one).
    #[arg(short = 'b', long, default_value_t = 1)]
    pub batch: usize,
    /// Seconds allowed after publishing for the last deliveries.
    #[arg(long, default_value_t = 15.0)]
    pub drain: f64,
    /// Seconds allowed for opening all subscribers.
    #[arg(long, default_value_t = 120.0)]
    pub open_timeout: f64,
}

#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// Concurrent publishers.
    #[arg(short = 'c', long, default_value_t = 16)]
    pub publishers: usize,
    /// Events per request (herald and Pushpin up to 1000; Nchan 1).
    #[arg(short = 'b', long, default_value_t = 100)]
    pub batch: usize,
    /// Payload bytes per event.
    #[arg(short = 'p', long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Seconds of publishing.
    #[arg(short = 'd', long, default_value_t = 5.0)]
    pub duration: f64,
    /// Send a unique `Idempotency-Key` with every request (herald only).
    #[arg(long)]
    pub idempotency_keys: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BackfillArgs {
    /// Events to catch up on (Nchan keeps 1000 per channel in the peer's
    /// config).
    #[arg(short = 'k', long, default_value_t = 10_000)]
    pub events: usize,
    /// Payload bytes per event.
    #[arg(short = 'p', long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Reconnects measured (same Last-Event-ID each time).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Seconds allowed for one catch-up.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Alternations (each runs every target once, in the order of
    /// --targets); at least 3 for reportable medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Targets of each round, in order; ratios are the first one's over
    /// each other's. A target that cannot run the scenario (Pushpin has no
    /// backfill) is left out with a note.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = [TargetKind::Herald, TargetKind::Nchan, TargetKind::Pushpin]
    )]
    pub targets: Vec<TargetKind>,
    /// SVG plot file (default: the --out file with an .svg extension, else
    /// `compare-<scenario>.svg`).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Seconds of pause between runs (lets sockets and the server settle).
    #[arg(long, default_value_t = 2.0)]
    pub pause: f64,
    #[command(subcommand)]
    pub scenario: Single,
}
