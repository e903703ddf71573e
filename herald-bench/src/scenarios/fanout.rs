//! `fanout`: S subscribers on one channel; events of P bytes published at
//! rate R (or as fast as acknowledged) for T seconds. Reports deliveries/s,
//! publish→parse latency percentiles and lost events (by per-publisher
//! sequence numbers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::crowd::{Crowd, CrowdConfig, Mode};
use super::publish::{self, PublishPlan};
use super::{check_stream_count, secs, Ctx};
use crate::cli::FanoutArgs;
use crate::report::{Better, Metrics, Percentiles, Report};
use crate::target::{check_batch, Channel, Target, TargetKind};

/// Quiet time after which the drain stops waiting.
const DRAIN_STALL: Duration = Duration::from_secs(5);

/// Told when publishing starts (`"publish"`) and when the drain is over
/// (`"drained"`), e.g. to read the servers' CPU time over just that span.
pub type Probe = Arc<dyn Fn(&str) + Send + Sync>;

/// Where a run's subscribers and publishers go: copies of one channel on
/// one or more servers (the nodes of a cluster), taken round robin.
#[derive(Clone)]
pub struct Spread {
    pub subscribe: Vec<Arc<Channel>>,
    pub publish: Vec<Arc<Channel>>,
    /// Streams being opened at once (default: the run's
    /// --connect-concurrency).
    pub connect_concurrency: Option<usize>,
    pub probe: Option<Probe>,
}

impl Spread {
    /// Everything on one server.
    pub fn one(channel: &Arc<Channel>) -> Self {
        Self::over(vec![Arc::clone(channel)], vec![Arc::clone(channel)])
    }

    /// Subscribers round robin over `subscribe`, publishers over `publish`.
    pub fn over(subscribe: Vec<Arc<Channel>>, publish: Vec<Arc<Channel>>) -> Self {
        Self {
            subscribe,
            publish,
            connect_concurrency: None,
            probe: None,
        }
    }

    fn probe(&self, at: &str) {
        if let Some(probe) = &self.probe {
            probe(at);
        }
    }
}

pub async fn run(ctx: &Ctx, target: &Target, args: &FanoutArgs) -> Result<Report, String> {
    validate(target.kind, args)?;
    let channel = Arc::new(target.create_channel(args.subscribers).await?);
    run_on(ctx, target, args, &Spread::one(&channel)).await
}

/// Refuses arguments a run cannot use.
pub fn validate(kind: TargetKind, args: &FanoutArgs) -> Result<(), String> {
    check_stream_count(args.subscribers)?;
    secs(args.duration, "--duration")?;
    secs(args.drain, "--drain")?;
    secs(args.open_timeout, "--open-timeout")?;
    check_batch(kind, args.batch, args.payload_bytes)?;
    if args.publishers == 0 || args.publishers > 1000 {
        return Err("--publishers must be 1..=1000".to_owned());
    }
    Ok(())
}

/// The run on a channel set up already (its limits let every subscriber
/// in), subscribers and publishers spread as `spread` says.
pub async fn run_on(
    ctx: &Ctx,
    target: &Target,
    args: &FanoutArgs,
    spread: &Spread,
) -> Result<Report, String> {
    validate(target.kind, args)?;
    let duration = secs(args.duration, "--duration")?;
    let drain = secs(args.drain, "--drain")?;
    let open_timeout = secs(args.open_timeout, "--open-timeout")?;
    let channel = spread
        .subscribe
        .first()
        .or(spread.publish.first())
        .cloned()
        .ok_or("no channel to run on")?;
    let crowd = Crowd::start(
        &ctx.shards,
        &CrowdConfig {
            channels: spread.subscribe.clone(),
            subscribers: args.subscribers,
            publishers: args.publishers,
            mode: Mode::Reconnect,
            timeout: ctx.timeout,
            connect_concurrency: spread
                .connect_concurrency
                .unwrap_or(ctx.connect_concurrency)
                .max(1),
        },
    );
    let open_started = Instant::now();
    let all_open = crowd.wait_open(open_timeout).await;
    let open_secs = open_started.elapsed().as_secs_f64();
    let ready = crowd.progress.ready();
    eprintln!(
        "fanout: {ready}/{} subscribers on {} in {open_secs:.2} s; publishing for {:.1} s",
        args.subscribers,
        channel.name,
        duration.as_secs_f64()
    );
    let mut warnings = Vec::new();
    if !all_open || ready < args.subscribers {
        warnings.push(format!(
            "only {ready} of {} subscribers connected ({} failed)",
            args.subscribers,
            crowd.progress.failed()
        ));
    }
    if ready == 0 {
        let report = crowd.stop().await;
        return Err(format!(
            "no subscriber could connect: {}",
            report.errors.first().cloned().unwrap_or_default()
        ));
    }
    // Let the server finish registering the last streams.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let plan = PublishPlan {
        publishers: args.publishers,
        batch: args.batch,
        rate: args.rate.max(0.0),
        duration,
        payload_bytes: args.payload_bytes,
        timeout: ctx.timeout,
        idempotency_keys: false,
    };
    let unique_before = crowd.progress.unique();
    spread.probe("publish");
    let published = publish::run(&spread.publish, &plan).await;

    // Drain: wait until every open subscriber has every acked event.
    eprintln!(
        "fanout: {} events acked; draining (up to {:.0} s)",
        published.total(),
        drain.as_secs_f64()
    );
    let expected = published.total() * ready as u64;
    let drain_deadline = Instant::now() + drain;
    let mut last = u64::MAX;
    let mut last_change = Instant::now();
    let drained = loop {
        let now_unique = crowd.progress.unique() - unique_before;
        if now_unique >= expected {
            break true;
        }
        let now = Instant::now();
        if now >= drain_deadline || now - last_change >= DRAIN_STALL {
            break false;
        }
        if now_unique != last {
            last = now_unique;
            last_change = now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    spread.probe("drained");
    let closed = crowd.progress.closed();
    let report = crowd.stop().await;

    let lost = report.lost(&published.published);
    let repeats = report.repeats();
    let unique = report
        .subs
        .iter()
        .filter(|s| s.opened)
        .map(|s| s.next.iter().sum::<u64>() - s.gaps)
        .sum::<u64>();
    let span = report
        .last_delivery
        .map(|t| t.saturating_duration_since(published.started))
        .unwrap_or_default()
        .as_secs_f64();
    let deliveries_per_s = if span > 0.0 {
        unique as f64 / span
    } else {
        0.0
    };
    let publish_secs = published.elapsed().as_secs_f64();
    let publish_rate = if publish_secs > 0.0 {
        published.total() as f64 / publish_secs
    } else {
        0.0
    };
    let latency = Percentiles::of(&report.latency);
    let connect = Percentiles::of(&report.connect);
    let ack = Percentiles::of(&published.ack);

    if lost > 0 {
        warnings.push(format!("{lost} events lost (must be 0)"));
    }
    if repeats > 0 {
        warnings.push(format!("{repeats} events repeated or out of order"));
    }
    if !drained {
        warnings.push(format!(
            "drain incomplete: {} of {expected} deliveries after {:.1} s",
            unique,
            drain.as_secs_f64()
        ));
    }
    if published.errors > 0 {
        warnings.push(format!(
            "{} publish errors, first: {}",
            published.errors,
            published.first_errors.first().cloned().unwrap_or_default()
        ));
    }
    if report.error_count > 0 {
        warnings.push(format!(
            "{} subscriber errors, first: {}",
            report.error_count,
            report.errors.first().cloned().unwrap_or_default()
        ));
    }
    if published.total() == 0 {
        warnings.push("nothing was published".to_owned());
    }

    let mut m = Metrics::default();
    m.add(
        "subscribers",
        "subscribers connected",
        "",
        ready as f64,
        Better::Neither,
    );
    m.add(
        "published",
        "events published (acked)",
        "",
        published.total() as f64,
        Better::Neither,
    );
    m.add(
        "publish_rate",
        "publish rate",
        "ev/s",
        publish_rate,
        Better::Neither,
    );
    m.add(
        "deliveries",
        "deliveries",
        "",
        unique as f64,
        Better::Neither,
    );
    m.add(
        "deliveries_per_s",
        "deliveries/s",
        "ev/s",
        deliveries_per_s,
        Better::Higher,
    );
    m.add_percentiles("latency", "latency", &latency);
    m.add("lost", "lost events", "", lost as f64, Better::Lower);
    m.add(
        "repeats",
        "repeated/reordered events",
        "",
        repeats as f64,
        Better::Lower,
    );
    m.add(
        "reconnects",
        "subscriber reconnects",
        "",
        report.reconnects() as f64,
        Better::Lower,
    );
    m.add(
        "ack_p50_ms",
        "publish ack p50",
        "ms",
        ack.p50_ms,
        Better::Lower,
    );
    m.add(
        "ack_p99_ms",
        "publish ack p99",
        "ms",
        ack.p99_ms,
        Better::Lower,
    );
    m.add(
        "connect_p50_ms",
        "subscribe p50",
        "ms",
        connect.p50_ms,
        Better::Lower,
    );

    Ok(Report {
        scenario: "fanout".to_owned(),
        target: target.kind.name().to_owned(),
        url: target.endpoint.url(),
        params: json!({
            "subscribers": args.subscribers,
            "payload_bytes": args.payload_bytes,
            "rate": args.rate,
            "duration_s": args.duration,
            "publishers": args.publishers,
            "batch": args.batch,
            "connect_concurrency": spread
                .connect_concurrency
                .unwrap_or(ctx.connect_concurrency),
            "client_threads": ctx.shards.len(),
        }),
        metrics: m.0,
        percentiles_title: "publish → parse latency".to_owned(),
        percentiles: Some(latency.clone()),
        throughput_key: "deliveries_per_s".to_owned(),
        warnings,
        details: json!({
            "channel": channel.name,
            "open_secs": open_secs,
            "subscribers_failed": report.subs.iter().filter(|s| !s.opened).count(),
            "subscribers_closed": closed,
            "published_per_publisher": published.published,
            "publish_requests": published.requests,
            "publish_errors": published.errors,
            "publish_reconnects": published.reconnects,
            "publish_secs": publish_secs,
            "delivery_span_secs": span,
            "expected_deliveries": expected,
            "frames_received": report.delivered(),
            "drained": drained,
            "other_events": report.other_events,
            "comments": report.comments,
            "latency": latency,
            "ack_latency": ack,
            "subscribe_time": connect,
            "errors": report.errors,
        }),
    })
}
