//! The event hub: every producer publishes here; every follower reads from
//! its own bounded queue. A full queue drops the event for that follower
//! only, and the drop is counted; producers never wait.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use leash_core::Event;
use tokio::sync::mpsc;

/// An event with its sequence number in this leashd run.
#[derive(Clone, Debug)]
pub struct Stamped {
    /// Increasing from 1.
    pub seq: u64,
    /// The event.
    pub event: Event,
}

/// Counters shown by `leashctl status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Events published.
    pub published: u64,
    /// Events dropped at full subscriber queues, over all subscribers ever.
    pub dropped: u64,
    /// Live subscribers.
    pub subscribers: u32,
    /// Each subscriber's queue capacity.
    pub queue_capacity: u32,
}

/// A handle to the hub; clones share it.
#[derive(Clone, Debug)]
pub struct Hub {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    seq: u64,
    history: VecDeque<Arc<Stamped>>,
    history_cap: usize,
    queue_cap: usize,
    subscribers: Vec<mpsc::Sender<Arc<Stamped>>>,
    dropped: u64,
}

impl Hub {
    /// A hub keeping `history` recent events and giving each subscriber a
    /// queue of `queue` events.
    pub fn new(history: usize, queue: usize) -> Hub {
        Hub {
            inner: Arc::new(Mutex::new(Inner {
                seq: 0,
                history: VecDeque::with_capacity(history.min(4096)),
                history_cap: history,
                queue_cap: queue.max(1),
                subscribers: Vec::new(),
                dropped: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent counters; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes an event to the history and every subscriber.
    pub fn publish(&self, event: Event) {
        self.publish_all(std::iter::once(event));
    }

    /// Publishes events in order, taking the lock once.
    pub fn publish_all(&self, events: impl IntoIterator<Item = Event>) {
        let mut gone = Vec::new();
        let mut inner = self.lock();
        let mut dropped = 0;
        for event in events {
            inner.seq += 1;
            let stamped = Arc::new(Stamped { seq: inner.seq, event });
            if inner.history_cap > 0 {
                if inner.history.len() == inner.history_cap {
                    gone.extend(inner.history.pop_front());
                }
                inner.history.push_back(stamped.clone());
            }
            inner.subscribers.retain(|tx| match tx.try_send(stamped.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropped += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
        if dropped > 0 {
            inner.dropped += dropped;
            tracing::debug!(dropped, "event queue full: events dropped for slow followers");
        }
        drop(inner);
        // Old events are freed outside the lock.
        drop(gone);
    }

    /// The last `tail` events (all kept when `tail` is 0) and, when
    /// `follow`, a queue of the events published after them.
    pub fn subscribe(&self, tail: usize, follow: bool) -> (Vec<Arc<Stamped>>, Option<mpsc::Receiver<Arc<Stamped>>>) {
        let mut inner = self.lock();
        let skip = if tail == 0 { 0 } else { inner.history.len().saturating_sub(tail) };
        let backlog = inner.history.iter().skip(skip).cloned().collect();
        let rx = follow.then(|| {
            let (tx, rx) = mpsc::channel(inner.queue_cap);
            inner.subscribers.push(tx);
            rx
        });
        (backlog, rx)
    }

    /// Current counters.
    pub fn stats(&self) -> HubStats {
        let mut inner = self.lock();
        inner.subscribers.retain(|tx| !tx.is_closed());
        HubStats {
            published: inner.seq,
            dropped: inner.dropped,
            subscribers: inner.subscribers.len() as u32,
            queue_capacity: inner.queue_cap as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u32) -> Event {
        Event::daemon("test", "t", n)
    }

    #[test]
    fn history_is_bounded_and_tail_works() {
        let hub = Hub::new(3, 8);
        for n in 0..5 {
            hub.publish(ev(n));
        }
        let (all, rx) = hub.subscribe(0, false);
        assert!(rx.is_none());
        assert_eq!(all.iter().map(|s| s.seq).collect::<Vec<_>>(), [3, 4, 5]);
        let (last, _) = hub.subscribe(2, false);
        assert_eq!(last.iter().map(|s| s.event.pid).collect::<Vec<_>>(), [3, 4]);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let hub = Hub::new(0, 2);
        let (_, rx) = hub.subscribe(0, true);
        let mut rx = rx.unwrap();
        let (_, fast) = hub.subscribe(0, true);
        let mut fast = fast.unwrap();
        for n in 0..5 {
            hub.publish(ev(n));
            // The fast follower keeps up.
            assert_eq!(fast.try_recv().unwrap().event.pid, n);
        }
        let stats = hub.stats();
        assert_eq!(stats.published, 5);
        assert_eq!(stats.dropped, 3);
        assert_eq!(stats.subscribers, 2);
        assert_eq!(rx.try_recv().unwrap().seq, 1);
        assert_eq!(rx.try_recv().unwrap().seq, 2);
        assert!(rx.try_recv().is_err());
        drop(rx);
        drop(fast);
        assert_eq!(hub.stats().subscribers, 0);
    }
}
