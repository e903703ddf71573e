//! `ingest`: C concurrent publishers, batches of B, for T seconds, no
//! subscribers: acknowledged events/s and acknowledgement latency. On herald
//! an acknowledgement means the events are committed to its store; with
//! `--idempotency-keys`, every request carries a key of its own, checked
//! and bound in the same commit.

use std::sync::Arc;

use serde_json::json;

use super::publish::{self, PublishPlan};
use super::{secs, Ctx};
use crate::cli::IngestArgs;
use crate::report::{Better, Metrics, Percentiles, Report};
use crate::target::{check_batch, Channel, Target, TargetKind};

pub async fn run(ctx: &Ctx, target: &Target, args: &IngestArgs) -> Result<Report, String> {
    validate(target.kind, args)?;
    let channel = Arc::new(target.create_channel(0).await?);
    run_on(ctx, target, args, &[channel]).await
}

/// Refuses arguments a run cannot use.
pub fn validate(kind: TargetKind, args: &IngestArgs) -> Result<(), String> {
    secs(args.duration, "--duration")?;
    if args.publishers == 0 || args.publishers > 1000 {
        return Err("--publishers must be 1..=1000".to_owned());
    }
    if args.idempotency_keys && kind != TargetKind::Herald {
        return Err("--idempotency-keys is herald's".to_owned());
    }
    check_batch(kind, args.batch, args.payload_bytes)
}

/// The run on a channel set up already; publisher `p` publishes on
/// `channels[p % channels.len()]` (copies of one channel on the nodes of
/// a cluster).
pub async fn run_on(
    ctx: &Ctx,
    target: &Target,
    args: &IngestArgs,
    channels: &[Arc<Channel>],
) -> Result<Report, String> {
    validate(target.kind, args)?;
    let duration = secs(args.duration, "--duration")?;
    let channel = channels.first().ok_or("no channel to publish on")?;
    let plan = PublishPlan {
        publishers: args.publishers,
        batch: args.batch,
        rate: 0.0,
        duration,
        payload_bytes: args.payload_bytes,
        timeout: ctx.timeout,
        idempotency_keys: args.idempotency_keys,
    };
    let outcome = publish::run(channels, &plan).await;
    let secs = outcome.elapsed().as_secs_f64();
    let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let ack = Percentiles::of(&outcome.ack);
    let mut warnings = Vec::new();
    if outcome.errors > 0 {
        warnings.push(format!(
            "{} publish errors, first: {}",
            outcome.errors,
            outcome.first_errors.first().cloned().unwrap_or_default()
        ));
    }
    if outcome.total() == 0 {
        warnings.push("nothing was acknowledged".to_owned());
    }
    let mut m = Metrics::default();
    m.add(
        "acked",
        "events acked",
        "",
        outcome.total() as f64,
        Better::Neither,
    );
    m.add(
        "events_per_s",
        "acked events/s",
        "ev/s",
        per_s(outcome.total()),
        Better::Higher,
    );
    m.add(
        "requests_per_s",
        "requests/s",
        "req/s",
        per_s(outcome.requests),
        Better::Higher,
    );
    m.add_percentiles("ack", "ack latency", &ack);
    m.add(
        "errors",
        "publish errors",
        "",
        outcome.errors as f64,
        Better::Lower,
    );
    Ok(Report {
        scenario: "ingest".to_owned(),
        target: target.kind.name().to_owned(),
        url: target.endpoint.url(),
        params: json!({
            "publishers": args.publishers,
            "batch": args.batch,
            "payload_bytes": args.payload_bytes,
            "duration_s": args.duration,
        }),
        metrics: m.0,
        percentiles_title: "publish → ack latency".to_owned(),
        percentiles: Some(ack.clone()),
        throughput_key: "events_per_s".to_owned(),
        warnings,
        details: json!({
            "channel": channel.name,
            "published_per_publisher": outcome.published,
            "requests": outcome.requests,
            "errors": outcome.errors,
            "first_errors": outcome.first_errors,
            "reconnects": outcome.reconnects,
            "elapsed_secs": secs,
            "ack_latency": ack,
        }),
    })
}
