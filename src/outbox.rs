//! The outbox: the bounded queue between a map's hub and one stream. The hub
//! pushes with [`OutboxSender::try_send`], which never waits (a full outbox
//! is a slow consumer); the stream's body takes several events per write.
//!
//! Hand-rolled rather than a tokio mpsc channel for its size: there is one
//! per stream and most streams are idle, and a tokio channel costs ~800
//! bytes before its first message (cache-padded halves, a 32-slot block),
//! where this is one allocation of under 100 bytes.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};

use crate::event::SharedEvent;

/// Slots kept allocated when an outbox drains after a burst.
const KEEP_SLOTS: usize = 8;

/// Why an event was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The outbox holds its capacity: the stream is not keeping up.
    Full,
    /// The stream is gone.
    Closed,
}

struct State {
    queue: VecDeque<SharedEvent>,
    capacity: usize,
    /// Live senders; none left means no more events will come.
    senders: usize,
    receiver_gone: bool,
    waker: Option<Waker>,
}

struct Shared(Mutex<State>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every unlock: a panic elsewhere
        // while holding it cannot leave it half-changed.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A new outbox holding at most `capacity` events.
pub fn channel(capacity: usize) -> (OutboxSender, Outbox) {
    let shared = Arc::new(Shared(Mutex::new(State {
        queue: VecDeque::new(),
        capacity: capacity.max(1),
        senders: 1,
        receiver_gone: false,
        waker: None,
    })));
    (OutboxSender(Arc::clone(&shared)), Outbox(shared))
}

/// The hub's end.
pub struct OutboxSender(Arc<Shared>);

impl OutboxSender {
    /// Queues `event` unless the outbox is full or its stream is gone.
    ///
    /// # Errors
    /// [`Refused::Full`] or [`Refused::Closed`]; the event is dropped.
    pub fn try_send(&self, event: SharedEvent) -> Result<(), Refused> {
        let waker = {
            let mut state = self.0.lock();
            if state.receiver_gone {
                return Err(Refused::Closed);
            }
            if state.queue.len() >= state.capacity {
                return Err(Refused::Full);
            }
            state.queue.push_back(event);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl Clone for OutboxSender {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Self(Arc::clone(&self.0))
    }
}

impl Drop for OutboxSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.0.lock();
            state.senders -= 1;
            if state.senders > 0 {
                return;
            }
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The stream's end.
pub struct Outbox(Arc<Shared>);

impl Outbox {
    /// Waits for events and moves up to `limit` of them into `batch`;
    /// returns how many, or 0 once every sender is gone and the queue is
    /// empty. Cancel-safe: events leave the queue only when returned.
    pub async fn recv_many(&mut self, batch: &mut Vec<SharedEvent>, limit: usize) -> usize {
        poll_fn(|cx| {
            let mut state = self.0.lock();
            if !state.queue.is_empty() {
                let n = limit.min(state.queue.len());
                batch.extend(state.queue.drain(..n));
                if state.queue.is_empty() && state.queue.capacity() > KEEP_SLOTS {
                    state.queue.shrink_to(KEEP_SLOTS);
                }
                return Poll::Ready(n);
            }
            if state.senders == 0 {
                return Poll::Ready(0);
            }
            match &mut state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// Whether every sender is gone (the hub dropped this registration).
    pub fn is_closed(&self) -> bool {
        self.0.lock().senders == 0
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.receiver_gone = true;
        state.queue.clear();
        state.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use ulid::Ulid;

    fn event(n: u64) -> SharedEvent {
        Arc::new(Event::new(
            Ulid::from_parts(n, 0),
            Ulid::nil(),
            "t".into(),
            String::new(),
            "{}",
        ))
    }

    #[tokio::test]
    async fn delivers_in_order_up_to_capacity_then_refuses() {
        let (tx, mut rx) = channel(2);
        assert_eq!(tx.try_send(event(1)), Ok(()));
        assert_eq!(tx.try_send(event(2)), Ok(()));
        assert_eq!(tx.try_send(event(3)), Err(Refused::Full));
        let mut batch = Vec::new();
        assert_eq!(rx.recv_many(&mut batch, 64).await, 2);
        let ids: Vec<u64> = batch.iter().map(|e| e.id.timestamp_ms()).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(tx.try_send(event(4)), Ok(()));
    }

    #[tokio::test]
    async fn takes_at_most_the_limit() {
        let (tx, mut rx) = channel(10);
        for n in 1..=5 {
            tx.try_send(event(n)).unwrap();
        }
        let mut batch = Vec::new();
        assert_eq!(rx.recv_many(&mut batch, 3).await, 3);
        assert_eq!(rx.recv_many(&mut batch, 3).await, 2);
        assert_eq!(batch.len(), 5);
    }

    #[tokio::test]
    async fn closes_when_the_last_sender_goes_after_draining() {
        let (tx, mut rx) = channel(4);
        let second = tx.clone();
        tx.try_send(event(1)).unwrap();
        drop(tx);
        assert!(!rx.is_closed());
        drop(second);
        assert!(rx.is_closed());
        let mut batch = Vec::new();
        assert_eq!(rx.recv_many(&mut batch, 8).await, 1);
        assert_eq!(rx.recv_many(&mut batch, 8).await, 0);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_on_send_and_on_close() {
        let (tx, mut rx) = channel(4);
        let waiter = tokio::spawn(async move {
            let mut batch = Vec::new();
            let first = rx.recv_many(&mut batch, 8).await;
            let second = rx.recv_many(&mut batch, 8).await;
            (first, second)
        });
        tokio::task::yield_now().await;
        tx.try_send(event(1)).unwrap();
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(waiter.await.unwrap(), (1, 0));
    }

    #[test]
    fn a_gone_receiver_refuses() {
        let (tx, rx) = channel(4);
        drop(rx);
        assert_eq!(tx.try_send(event(1)), Err(Refused::Closed));
    }
}
