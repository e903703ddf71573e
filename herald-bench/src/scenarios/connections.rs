//! `connections`: open N idle streams on one channel; report the time to
//! open each (connect → 200 head), the time to open all, and the server's
//! RSS per stream from /proc/PID/status VmRSS before and after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::crowd::{Crowd, CrowdConfig, Mode};
use super::{check_stream_count, open_file_limit, secs, Ctx};
use crate::cli::ConnectionsArgs;
use crate::report::{Better, Metrics, Percentiles, Report};
use crate::target::Target;

pub async fn run(ctx: &Ctx, target: &Target, args: &ConnectionsArgs) -> Result<Report, String> {
    check_stream_count(args.connections)?;
    let hold = secs(args.hold, "--hold")?;
    let settle = secs(args.settle, "--settle")?;
    let open_timeout = secs(args.open_timeout, "--open-timeout")?;
    let channel = Arc::new(target.create_channel(args.connections).await?);
    let mut warnings = Vec::new();
    if target.server_pids.is_empty() {
        warnings.push(
            "no server pid (--server-pid, --spawn-herald, or a peer's pid files): RSS not measured"
                .to_owned(),
        );
    }
    tokio::time::sleep(settle).await;
    let rss_before = target.server_rss_kib();

    let crowd = Crowd::start(
        &ctx.shards,
        &CrowdConfig {
            channels: vec![Arc::clone(&channel)],
            subscribers: args.connections,
            publishers: 0,
            mode: Mode::Idle,
            timeout: ctx.timeout,
            connect_concurrency: ctx.connect_concurrency,
        },
    );
    let started = Instant::now();
    let all_open = crowd.wait_open(open_timeout).await;
    let open_secs = started.elapsed().as_secs_f64();
    let opened = crowd.progress.ready();
    let failed = crowd.progress.failed();
    if !all_open || opened < args.connections {
        warnings.push(format!(
            "only {opened} of {} streams opened ({failed} failed)",
            args.connections
        ));
    }
    eprintln!(
        "connections: {opened}/{} open in {open_secs:.2} s ({failed} failed); holding {:.1} s",
        args.connections,
        hold.as_secs_f64()
    );
    tokio::time::sleep(settle).await;
    let rss_after = target.server_rss_kib();
    tokio::time::sleep(hold).await;
    let closed = crowd.progress.closed();
    let rss_held = target.server_rss_kib();
    let report = crowd.stop().await;
    if closed > 0 {
        warnings.push(format!(
            "{closed} streams were closed by the server while held"
        ));
    }
    if report.error_count > 0 {
        warnings.push(format!(
            "{} errors, first: {}",
            report.error_count,
            report.errors.first().cloned().unwrap_or_default()
        ));
    }

    let connect = Percentiles::of(&report.connect);
    let per_stream_kib = match (rss_before, rss_after) {
        (Some(before), Some(after)) if opened > 0 => {
            Some(after.saturating_sub(before) as f64 / opened as f64)
        }
        _ => None,
    };
    let mut m = Metrics::default();
    m.add("streams", "streams open", "", opened as f64, Better::Higher);
    m.add("failed", "streams failed", "", failed as f64, Better::Lower);
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
            opened as f64 / open_secs
        } else {
            0.0
        },
        Better::Higher,
    );
    m.add(
        "connect_p50_ms",
        "connect p50",
        "ms",
        connect.p50_ms,
        Better::Lower,
    );
    m.add(
        "connect_p99_ms",
        "connect p99",
        "ms",
        connect.p99_ms,
        Better::Lower,
    );
    m.add(
        "connect_max_ms",
        "connect max",
        "ms",
        connect.max_ms,
        Better::Lower,
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        m.add(
            "rss_before_mib",
            "server RSS before",
            "MiB",
            before as f64 / 1024.0,
            Better::Neither,
        );
        m.add(
            "rss_after_mib",
            "server RSS with streams",
            "MiB",
            after as f64 / 1024.0,
            Better::Neither,
        );
    }
    if let Some(kib) = per_stream_kib {
        m.add(
            "rss_per_stream_kib",
            "server RSS per stream",
            "KiB",
            kib,
            Better::Lower,
        );
    }
    m.add(
        "closed",
        "closed by server while held",
        "",
        closed as f64,
        Better::Lower,
    );

    Ok(Report {
        scenario: "connections".to_owned(),
        target: target.kind.name().to_owned(),
        url: target.endpoint.url(),
        params: json!({
            "connections": args.connections,
            "hold_s": args.hold,
            "connect_concurrency": ctx.connect_concurrency,
            "client_threads": ctx.shards.len(),
        }),
        metrics: m.0,
        percentiles_title: "time to open a stream".to_owned(),
        percentiles: Some(connect.clone()),
        throughput_key: if per_stream_kib.is_some() {
            "rss_per_stream_kib".to_owned()
        } else {
            "open_rate".to_owned()
        },
        warnings,
        details: json!({
            "channel": channel.name,
            "server_pids": target.server_pids,
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "rss_after_hold_kib": rss_held,
            "connect_time": connect,
            "comments": report.comments,
            "client_open_file_limit": open_file_limit(),
            "hold_secs": Duration::as_secs_f64(&hold),
            "errors": report.errors,
        }),
    })
}
