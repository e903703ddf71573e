//! `backfill`: mark a position (a marker event seen on a stream), publish K
//! events after it, then reconnect with `Last-Event-ID` = the marker's id
//! and time until all K are parsed; repeated R times on the same position.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{secs, Ctx};
use crate::cli::BackfillArgs;
use crate::report::{median, new_histogram, Better, Metrics, Percentiles, Report};
use crate::sse::{bench_fields, BenchFields};
use crate::subscriber::{self, Stream};
use crate::target::{Channel, Publisher, Target, TargetKind};

/// Publisher number of the marker event (the K events use 0).
const MARKER: u32 = 1;

/// One measured catch-up.
#[derive(Debug, Clone, serde::Serialize)]
struct CatchUp {
    head_ms: f64,
    first_event_ms: f64,
    all_ms: f64,
    received: u64,
    in_order: bool,
    truncated: bool,
}

/// Refuses a target that keeps no events to replay.
pub fn supported(kind: TargetKind) -> Result<(), String> {
    match kind {
        TargetKind::Herald | TargetKind::Nchan => Ok(()),
        TargetKind::Pushpin => Err(
            "Pushpin keeps no history to replay from a Last-Event-ID: backfill runs on \
             herald and Nchan"
                .to_owned(),
        ),
    }
}

pub async fn run(ctx: &Ctx, target: &Target, args: &BackfillArgs) -> Result<Report, String> {
    supported(target.kind)?;
    let limit = secs(args.timeout, "--timeout")?;
    if args.events == 0 || args.events > 1_000_000 {
        return Err("--events must be 1..=1000000".to_owned());
    }
    if args.repeat == 0 || args.repeat > 1000 {
        return Err("--repeat must be 1..=1000".to_owned());
    }
    let mut warnings = Vec::new();
    if target.kind == TargetKind::Nchan && args.events > 1000 {
        warnings.push(
            "the Nchan peer keeps 1000 messages per channel (nchan_message_buffer_length): \
             older ones cannot be replayed"
                .to_owned(),
        );
    }
    let channel = Arc::new(target.create_channel(2).await?);
    let scratch = RefCell::new(Vec::new());

    // 1. The position: a marker event as a subscriber sees it.
    let mut watcher = subscriber::open(&channel, None, ctx.timeout)
        .await
        .map_err(|e| format!("open the marker stream: {e}"))?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut publisher = Publisher::new(Arc::clone(&channel), args.payload_bytes, ctx.timeout);
    publisher
        .publish(&[BenchFields {
            publisher: MARKER,
            seq: 0,
            sent_us: crate::now_us(),
        }])
        .await?;
    let marker_id = tokio::time::timeout(ctx.timeout, marker_id(&mut watcher, &scratch))
        .await
        .map_err(|_| "the marker event did not arrive".to_owned())??;
    drop(watcher);

    // 2. K events after it, in order.
    let publish_started = Instant::now();
    let batch = channel.max_batch().min(args.events);
    let mut seq = 0u64;
    let mut events = Vec::with_capacity(batch);
    while seq < args.events as u64 {
        let n = (args.events as u64 - seq).min(batch as u64);
        let sent_us = crate::now_us();
        events.clear();
        events.extend((0..n).map(|i| BenchFields {
            publisher: 0,
            seq: seq + i,
            sent_us,
        }));
        publisher.publish(&events).await?;
        seq += n;
    }
    let publish_secs = publish_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 3. Catch up from the marker, R times.
    let mut runs = Vec::with_capacity(args.repeat);
    let mut hist = new_histogram();
    for _ in 0..args.repeat {
        let run = catch_up(
            &channel,
            &marker_id,
            args.events as u64,
            ctx.timeout,
            limit,
            &scratch,
        )
        .await?;
        hist.saturating_record((run.all_ms * 1000.0).max(1.0) as u64);
        runs.push(run);
    }
    let all: Vec<f64> = runs.iter().map(|r| r.all_ms).collect();
    let median_ms = median(all.clone());
    let incomplete = runs
        .iter()
        .filter(|r| r.received < args.events as u64)
        .count();
    let disordered = runs.iter().filter(|r| !r.in_order).count();
    let truncated = runs.iter().filter(|r| r.truncated).count();
    let lost: u64 = runs
        .iter()
        .map(|r| (args.events as u64).saturating_sub(r.received))
        .max()
        .unwrap_or(0);
    if incomplete > 0 {
        warnings.push(format!(
            "{incomplete} of {} catch-ups did not receive all {} events (worst: {lost} missing)",
            runs.len(),
            args.events
        ));
    }
    if disordered > 0 {
        warnings.push(format!(
            "{disordered} catch-ups saw events out of order or repeated"
        ));
    }
    if truncated > 0 {
        warnings.push(format!(
            "{truncated} catch-ups announced backfill_truncated"
        ));
    }
    let mut m = Metrics::default();
    m.add(
        "events",
        "events behind",
        "",
        args.events as f64,
        Better::Neither,
    );
    m.add(
        "catch_up_ms",
        "catch-up time (median)",
        "ms",
        median_ms,
        Better::Lower,
    );
    m.add(
        "catch_up_min_ms",
        "catch-up time (min)",
        "ms",
        all.iter().copied().fold(f64::INFINITY, f64::min),
        Better::Lower,
    );
    m.add(
        "catch_up_max_ms",
        "catch-up time (max)",
        "ms",
        all.iter().copied().fold(0.0, f64::max),
        Better::Lower,
    );
    m.add(
        "first_event_ms",
        "first event (median)",
        "ms",
        median(runs.iter().map(|r| r.first_event_ms).collect()),
        Better::Lower,
    );
    m.add(
        "backfill_events_per_s",
        "backfill rate",
        "ev/s",
        if median_ms > 0.0 {
            args.events as f64 / (median_ms / 1000.0)
        } else {
            0.0
        },
        Better::Higher,
    );
    m.add(
        "lost",
        "missing events (worst run)",
        "",
        lost as f64,
        Better::Lower,
    );
    Ok(Report {
        scenario: "backfill".to_owned(),
        target: target.kind.name().to_owned(),
        url: target.endpoint.url(),
        params: json!({
            "events": args.events,
            "payload_bytes": args.payload_bytes,
            "repeat": args.repeat,
        }),
        metrics: m.0,
        percentiles_title: "catch-up time over repeats".to_owned(),
        percentiles: Some(Percentiles::of(&hist)),
        throughput_key: "backfill_events_per_s".to_owned(),
        warnings,
        details: json!({
            "channel": channel.name,
            "marker_id": marker_id,
            "publish_secs": publish_secs,
            "runs": runs,
        }),
    })
}

/// Reads the watcher stream until the marker event; returns its id.
async fn marker_id(watcher: &mut Stream, scratch: &RefCell<Vec<u8>>) -> Result<String, String> {
    loop {
        let mut found = None;
        let open = watcher
            .read_frames(scratch, |frame| {
                if let (Some(id), Some(fields)) = (frame.id, bench_fields(frame.data)) {
                    if fields.publisher == MARKER {
                        found = Some(String::from_utf8_lossy(id).into_owned());
                    }
                }
            })
            .await
            .map_err(|e| format!("marker stream: {e}"))?;
        if let Some(id) = found {
            return Ok(id);
        }
        if !open {
            return Err("the marker stream ended before the marker".to_owned());
        }
    }
}

/// Opens a stream K events behind and reads until all K are there.
async fn catch_up(
    channel: &Channel,
    marker_id: &str,
    events: u64,
    timeout: Duration,
    limit: Duration,
    scratch: &RefCell<Vec<u8>>,
) -> Result<CatchUp, String> {
    let started = Instant::now();
    let mut stream = subscriber::open(channel, Some(marker_id.as_bytes()), timeout)
        .await
        .map_err(|e| format!("open the catch-up stream: {e}"))?;
    let head_ms = ms(started);
    let mut run = CatchUp {
        head_ms,
        first_event_ms: 0.0,
        all_ms: 0.0,
        received: 0,
        in_order: true,
        truncated: false,
    };
    let mut next = 0u64;
    let deadline = started + limit;
    while run.received < events {
        let left = deadline.saturating_duration_since(Instant::now());
        let read = tokio::time::timeout(
            left,
            stream.read_frames(scratch, |frame| {
                if frame.event == b"backfill_truncated" {
                    run.truncated = true;
                }
                let Some(fields) = bench_fields(frame.data) else {
                    return;
                };
                if fields.publisher != 0 {
                    return;
                }
                if run.received == 0 {
                    run.first_event_ms = ms(started);
                }
                if fields.seq != next {
                    run.in_order = false;
                }
                next = fields.seq + 1;
                run.received += 1;
            }),
        )
        .await;
        match read {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) | Ok(Err(_)) | Err(_) => break,
        }
    }
    run.all_ms = ms(started);
    Ok(run)
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
