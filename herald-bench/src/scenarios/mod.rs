//! The scenarios. Each sets up its own channel on the target, runs for a
//! bounded time and returns a [`Report`].

pub mod backfill;
pub mod cluster;
pub mod compare;
pub mod connections;
pub mod crowd;
pub mod fanout;
pub mod ingest;
pub mod publish;

use std::time::Duration;

use crate::cli::Single;
use crate::report::Report;
use crate::shards::Shards;
use crate::target::Target;

/// What every scenario gets.
pub struct Ctx {
    pub shards: Shards,
    /// One connect or request.
    pub timeout: Duration,
    /// Streams being opened at once.
    pub connect_concurrency: usize,
}

/// Runs one scenario against one target.
pub async fn run_single(ctx: &Ctx, target: &Target, scenario: &Single) -> Result<Report, String> {
    match scenario {
        Single::Connections(args) => connections::run(ctx, target, args).await,
        Single::Fanout(args) => fanout::run(ctx, target, args).await,
        Single::Ingest(args) => ingest::run(ctx, target, args).await,
        Single::Backfill(args) => backfill::run(ctx, target, args).await,
    }
}

/// Seconds from a command-line float, refusing nonsense.
pub fn secs(value: f64, what: &str) -> Result<Duration, String> {
    if (0.0..=86_400.0).contains(&value) {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(format!("{what} must be between 0 and 86400 seconds"))
    }
}

/// The soft open-file limit of this process.
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
}

/// Refuses more streams than this process can hold open.
pub fn check_stream_count(streams: usize) -> Result<(), String> {
    if streams == 0 {
        return Err("at least one stream is needed".to_owned());
    }
    if let Some(limit) = open_file_limit() {
        let room = limit.saturating_sub(64);
        if streams as u64 > room {
            return Err(format!(
                "{streams} streams do not fit: this process may open {limit} files \
                 (about {room} streams once its own files are counted)"
            ));
        }
    }
    Ok(())
}
