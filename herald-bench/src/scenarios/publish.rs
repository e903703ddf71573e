//! Publishers: each on its own keep-alive connection, numbering its events,
//! stamping each request with the send time, at a rate or as fast as acked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::now_us;
use crate::report::{merge, new_histogram};
use crate::sse::BenchFields;
use crate::target::{Channel, Publisher};

/// How to publish.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    pub publishers: usize,
    /// Events per request.
    pub batch: usize,
    /// Events per second in all; 0 = flat out.
    pub rate: f64,
    pub duration: Duration,
    pub payload_bytes: usize,
    pub timeout: Duration,
    /// Send a unique `Idempotency-Key` with every request (herald).
    pub idempotency_keys: bool,
}

/// What all publishers did.
#[derive(Debug)]
pub struct PublishOutcome {
    /// Acknowledged events per publisher (= its next sequence number).
    pub published: Vec<u64>,
    pub requests: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    /// Request → acknowledgement, µs.
    pub ack: Histogram<u64>,
    pub reconnects: u64,
    pub started: Instant,
    /// When the last acknowledgement came.
    pub finished: Instant,
}

impl PublishOutcome {
    pub fn total(&self) -> u64 {
        self.published.iter().sum()
    }

    pub fn elapsed(&self) -> Duration {
        self.finished.saturating_duration_since(self.started)
    }
}

/// Consecutive failures after which a publisher stops.
const MAX_CONSECUTIVE_ERRORS: u32 = 20;

/// Runs the publishers to the end of the plan (on the calling runtime).
/// `channels` are copies of one channel on one or more servers (cluster
/// nodes): publisher `p` publishes on `channels[p % channels.len()]`.
pub async fn run(channels: &[Arc<Channel>], plan: &PublishPlan) -> PublishOutcome {
    let started = Instant::now();
    let end = started + plan.duration;
    let publishers = if channels.is_empty() {
        0
    } else {
        plan.publishers.max(1)
    };
    let batch = plan
        .batch
        .clamp(1, channels.first().map_or(1, |c| c.max_batch()));
    let interval = (plan.rate > 0.0)
        .then(|| Duration::from_secs_f64(batch as f64 * publishers as f64 / plan.rate));
    let runs = (0..publishers).map(|p| {
        let channel = Arc::clone(&channels[p % channels.len()]);
        let plan = plan.clone();
        async move {
            let mut publisher = Publisher::new(channel, plan.payload_bytes, plan.timeout);
            let mut out = One {
                seq: 0,
                requests: 0,
                errors: 0,
                first_error: None,
                ack: new_histogram(),
                last_ack: started,
                reconnects: 0,
            };
            // Spread the publishers over one interval.
            let mut due = interval.map(|i| started + i.mul_f64(p as f64 / publishers as f64));
            let mut events = Vec::with_capacity(batch);
            let mut consecutive = 0;
            loop {
                if let (Some(at), Some(step)) = (due.as_mut(), interval) {
                    if *at >= end {
                        break;
                    }
                    tokio::time::sleep_until((*at).into()).await;
                    *at += step;
                } else if Instant::now() >= end {
                    break;
                }
                let sent_us = now_us();
                events.clear();
                events.extend((0..batch as u64).map(|i| BenchFields {
                    publisher: p as u32,
                    seq: out.seq + i,
                    sent_us,
                }));
                let sent = Instant::now();
                let key = plan
                    .idempotency_keys
                    .then(|| format!("bench-{p}-{}", out.seq));
                match publisher.publish_keyed(&events, key.as_deref()).await {
                    Ok(()) => {
                        let now = Instant::now();
                        out.ack
                            .saturating_record((now - sent).as_micros().max(1) as u64);
                        out.seq += batch as u64;
                        out.requests += 1;
                        out.last_ack = now;
                        consecutive = 0;
                    }
                    Err(e) => {
                        // The same numbers are sent again: a failed publish
                        // delivers nothing (a repeat would be counted).
                        out.errors += 1;
                        out.first_error.get_or_insert(e);
                        consecutive += 1;
                        if consecutive >= MAX_CONSECUTIVE_ERRORS {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            out.reconnects = publisher.reconnects();
            out
        }
    });
    let results = futures_util::future::join_all(runs).await;
    let mut outcome = PublishOutcome {
        published: Vec::with_capacity(publishers),
        requests: 0,
        errors: 0,
        first_errors: Vec::new(),
        ack: new_histogram(),
        reconnects: 0,
        started,
        finished: started,
    };
    for one in results {
        outcome.published.push(one.seq);
        outcome.requests += one.requests;
        outcome.errors += one.errors;
        outcome.first_errors.extend(one.first_error);
        merge(&mut outcome.ack, &one.ack);
        outcome.reconnects += one.reconnects;
        outcome.finished = outcome.finished.max(one.last_ack);
    }
    outcome
}

struct One {
    seq: u64,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    ack: Histogram<u64>,
    last_ack: Instant,
    reconnects: u64,
}
