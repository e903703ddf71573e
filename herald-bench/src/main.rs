//! `herald-bench`: measures herald — and Nchan and Pushpin side by side —
//! over real SSE connections on this machine. A crate of its own in the
//! workspace: it speaks HTTP to every target and does not link herald.
//!
//! ```text
//! herald-bench [--target herald|nchan|pushpin] [--spawn-herald PATH | --url URL] \
//!     connections | fanout | ingest | backfill | compare <scenario> [--out FILE]
//! herald-bench --spawn-herald PATH --database-url postgres://... cluster --nodes N
//! ```
//!
//! Modules: [`cli`] the command line; [`target`] what differs between
//! herald, Nchan and Pushpin (channels, publish bodies, server processes)
//! and spawning herald; [`http`] the small HTTP/1.1 client; [`subscriber`]
//! and [`sse`] one stream and its frames; [`shards`] the client threads;
//! [`scenarios`] the runs; [`report`] and [`plot`] their results.
//!
//! Subscribers are raw tokio `TcpStream`s speaking HTTP/1.1 with an
//! incremental SSE parser (no per-frame allocation), spread over a few
//! single-threaded client runtimes. Latency is the time from the send
//! timestamp the bench writes into each payload to the moment a subscriber
//! parses the frame. Traffic goes to loopback addresses only.

mod cli;
mod http;
mod plot;
mod report;
mod scenarios;
mod shards;
mod sse;
mod subscriber;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::Parser;

use cli::{Cli, Common, Scenario};
use http::Endpoint;
use report::{print_report, write_json};
use scenarios::Ctx;
use shards::Shards;
use target::{nchan_pids, pushpin_pids, SpawnOptions, SpawnedHerald, Target, TargetKind};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds on the bench's monotonic clock (shared by every thread).
pub fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn main() -> ExitCode {
    let _ = now_us();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-bench: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let max_time = Duration::from_secs(cli.common.max_time);
    // A run cut short (time cap, Ctrl-C, SIGTERM) is dropped: the herald
    // processes, schemas and client processes it started go with it.
    let result = runtime.block_on(async {
        tokio::select! {
            outcome = tokio::time::timeout(max_time, run(cli)) => match outcome {
                Ok(result) => result,
                Err(_) => Err(format!("stopped: the run exceeded --max-time {max_time:?}")),
            },
            signal = interrupted() => Err(format!("stopped by {signal}")),
        }
    });
    // Dropping the runtime ends whatever is still pending.
    drop(runtime);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM (never, if they cannot be watched).
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let common = cli.common;
    let threads = common.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(2)
    });
    let ctx = Ctx {
        shards: Shards::new(threads).map_err(|e| format!("client threads: {e}"))?,
        timeout: Duration::from_secs(common.request_timeout.max(1)),
        connect_concurrency: common.connect_concurrency.max(1),
    };
    let mut spawned = None;
    let outcome = match &cli.scenario {
        Scenario::Single(single) => {
            if common.target != TargetKind::Herald && common.spawn_herald.is_some() {
                return Err("--spawn-herald goes with --target herald".to_owned());
            }
            let target = target_of(common.target, &common, &ctx, &mut spawned, true).await?;
            let result = scenarios::run_single(&ctx, &target, single).await;
            let mut report = match result {
                Ok(report) => report,
                Err(e) => return Err(with_server_log(e, spawned.as_mut())),
            };
            annotate(&mut report.params, spawned.as_ref());
            print_report(&report);
            if let Some(out) = &common.out {
                write_json(out, &report)?;
                println!("\nresults: {}", out.display());
            }
            Ok(())
        }
        Scenario::Cluster(args) => {
            let options = spawn_options(&common)?
                .ok_or("cluster spawns its nodes: give --spawn-herald PATH")?;
            let report = scenarios::cluster::run(&ctx, &common, &options, args).await?;
            if let Some(out) = &common.out {
                write_json(out, &report)?;
                println!("\nresults: {}", out.display());
            }
            Ok(())
        }
        Scenario::StreamWorker => scenarios::cluster::worker(&ctx).await,
        Scenario::Compare(args) => {
            let kinds = scenarios::compare::plan(args)?;
            let mut targets = Vec::with_capacity(kinds.len());
            for kind in kinds {
                targets.push(target_of(kind, &common, &ctx, &mut spawned, false).await?);
            }
            let plot = args.plot.clone().unwrap_or_else(|| match &common.out {
                Some(out) => out.with_extension("svg"),
                None => PathBuf::from(format!("compare-{}.svg", args.scenario.name())),
            });
            let mut comparison = scenarios::compare::run(&ctx, &targets, args, &plot)
                .await
                .map_err(|e| with_server_log(e, spawned.as_mut()))?;
            if let Some(runs) = comparison.runs.get_mut(TargetKind::Herald.name()) {
                for report in runs {
                    annotate(&mut report.params, spawned.as_ref());
                }
            }
            if let Some(out) = &common.out {
                write_json(out, &comparison)?;
                println!("results: {}", out.display());
            }
            Ok(())
        }
    };
    if let Some(mut herald) = spawned {
        herald.stop();
    }
    outcome
}

/// Records how a spawned herald was set up in a report's parameters.
fn annotate(params: &mut serde_json::Value, spawned: Option<&SpawnedHerald>) {
    if let (Some(obj), Some(herald)) = (params.as_object_mut(), spawned) {
        let database = if herald.database.starts_with("postgres") {
            "postgresql"
        } else {
            "sqlite"
        };
        obj.insert("herald_database".to_owned(), database.into());
    }
}

fn with_server_log(error: String, spawned: Option<&mut SpawnedHerald>) -> String {
    match spawned {
        Some(herald) => {
            if herald.alive() {
                error
            } else {
                format!(
                    "{error}\nthe spawned herald exited; its log ends with:\n{}",
                    herald.log_tail(20)
                )
            }
        }
        None => error,
    }
}

/// The target of `kind`: herald (spawned, or at --url), Nchan or Pushpin.
/// `single`: a run against this target alone, where --url and --server-pid
/// are its.
async fn target_of(
    kind: TargetKind,
    common: &Common,
    ctx: &Ctx,
    spawned: &mut Option<SpawnedHerald>,
    single: bool,
) -> Result<Target, String> {
    match kind {
        TargetKind::Herald => herald_target(common, ctx, spawned).await,
        TargetKind::Nchan => nchan_target(common, ctx, single).await,
        TargetKind::Pushpin => pushpin_target(common, ctx, single).await,
    }
}

/// herald: spawned for the run, or the one at --url.
async fn herald_target(
    common: &Common,
    ctx: &Ctx,
    spawned: &mut Option<SpawnedHerald>,
) -> Result<Target, String> {
    let mut pids = common.server_pid.clone();
    let endpoint = if let Some(options) = spawn_options(common)? {
        let herald = SpawnedHerald::start(&options, Duration::from_secs(30)).await?;
        println!(
            "started herald pid {} at {} ({})",
            herald.pid,
            herald.endpoint.url(),
            if herald.database.starts_with("postgres") {
                "PostgreSQL"
            } else {
                "SQLite"
            }
        );
        pids.insert(0, herald.pid);
        let endpoint = herald.endpoint.clone();
        *spawned = Some(herald);
        endpoint
    } else {
        if common.database_url.is_some() {
            return Err("--database-url goes with --spawn-herald".to_owned());
        }
        let url = match (&common.url, common.target) {
            (Some(url), TargetKind::Herald) => url.clone(),
            _ => "http://127.0.0.1:8080".to_owned(),
        };
        Endpoint::parse(&url)?
    };
    reachable(
        &endpoint,
        ctx,
        "herald (start it, or use --spawn-herald PATH)",
    )
    .await?;
    Ok(Target {
        kind: TargetKind::Herald,
        endpoint,
        publish_endpoint: None,
        admin_token: common.admin_token.clone(),
        publisher_token: common.publisher_token.clone(),
        server_pids: pids,
        timeout: ctx.timeout,
    })
}

/// How to start herald, from --spawn-herald and its companions (`None`
/// without --spawn-herald).
fn spawn_options(common: &Common) -> Result<Option<SpawnOptions>, String> {
    let Some(binary) = &common.spawn_herald else {
        return Ok(None);
    };
    if common.url.is_some() {
        return Err("give --spawn-herald or --url, not both".to_owned());
    }
    let env = common
        .herald_env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("--herald-env `{kv}`: expected KEY=VALUE"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(SpawnOptions {
        binary: binary.clone(),
        database_url: common.database_url.clone(),
        workers: common.herald_workers,
        env,
        log_level: common.herald_log.clone(),
        admin_token: common.admin_token.clone(),
        publisher_token: common.publisher_token.clone(),
        node_name: None,
    }))
}

/// Nchan at --url (single runs) or --nchan-url.
async fn nchan_target(common: &Common, ctx: &Ctx, single: bool) -> Result<Target, String> {
    let url = match (&common.url, single) {
        (Some(url), true) => url.clone(),
        _ => common.nchan_url.clone(),
    };
    let endpoint = Endpoint::parse(&url)?;
    reachable(
        &endpoint,
        ctx,
        "Nchan (start it with ../shared/peers/nchan/start.sh)",
    )
    .await?;
    let pids = if single && !common.server_pid.is_empty() {
        common.server_pid.clone()
    } else {
        nchan_pids(&common.nchan_pid_file)
    };
    Ok(Target {
        kind: TargetKind::Nchan,
        endpoint,
        publish_endpoint: None,
        admin_token: String::new(),
        publisher_token: String::new(),
        server_pids: pids,
        timeout: ctx.timeout,
    })
}

/// Pushpin: streams at --url (single runs) or --pushpin-url, publishing at
/// --pushpin-publish-url.
async fn pushpin_target(common: &Common, ctx: &Ctx, single: bool) -> Result<Target, String> {
    let url = match (&common.url, single) {
        (Some(url), true) => url.clone(),
        _ => common.pushpin_url.clone(),
    };
    let endpoint = Endpoint::parse(&url)?;
    let publish = Endpoint::parse(&common.pushpin_publish_url)?;
    const START: &str = "Pushpin (start it with ../shared/peers/pushpin/start.sh)";
    reachable(&endpoint, ctx, START).await?;
    reachable(&publish, ctx, &format!("{START}: its publish endpoint")).await?;
    let pids = if single && !common.server_pid.is_empty() {
        common.server_pid.clone()
    } else {
        pushpin_pids(&common.pushpin_run_dir)
    };
    Ok(Target {
        kind: TargetKind::Pushpin,
        endpoint,
        publish_endpoint: Some(publish),
        admin_token: String::new(),
        publisher_token: String::new(),
        server_pids: pids,
        timeout: ctx.timeout,
    })
}

async fn reachable(endpoint: &Endpoint, ctx: &Ctx, what: &str) -> Result<(), String> {
    http::connect(endpoint.addr, ctx.timeout)
        .await
        .map(drop)
        .map_err(|e| format!("{what} is not reachable at {}: {e}", endpoint.url()))
}
