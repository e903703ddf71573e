//! Shared helpers of herald's fuzz targets: the reference models of
//! `tests/reference` and a synchronous driver for `eventsource-stream`.

#[path = "../../tests/reference/mod.rs"]
pub mod reference;

use std::task::{Context, Poll, Waker};

use eventsource_stream::{Event, Eventsource};
use futures_util::stream::{self, StreamExt};

/// Parses `bytes`, delivered in chunks cut at `cuts` (byte offsets, any
/// order), with the `eventsource-stream` crate. `None` on a parse error.
pub fn eventsource_parse(bytes: &[u8], cuts: &[usize]) -> Option<Vec<Event>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.push(0);
    cuts.push(bytes.len());
    cuts.sort_unstable();
    cuts.dedup();
    let chunks: Vec<Result<Vec<u8>, std::convert::Infallible>> = cuts
        .windows(2)
        .map(|w| Ok(bytes[w[0]..w[1]].to_vec()))
        .collect();
    let mut events = stream::iter(chunks).eventsource();
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match events.poll_next_unpin(&mut cx) {
            Poll::Ready(Some(Ok(event))) => out.push(event),
            Poll::Ready(Some(Err(_))) => return None,
            Poll::Ready(None) => return Some(out),
            Poll::Pending => unreachable!("an in-memory stream is always ready"),
        }
    }
}
