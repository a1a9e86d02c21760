//! A component's event stream to its followers (leashd): events published
//! in batches, repeats of an allow folded into a count, queued per follower
//! up to a bound (beyond it they are dropped and counted, never blocking
//! the producer), and sent as `EventBatch` messages.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::fold::{Fold, WINDOW};

use leash_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

/// Events per message on the stream.
pub const MAX_BATCH: usize = 1024;
/// Events queued per follower before they are dropped (and counted).
pub const QUEUE: u64 = 65_536;

/// The stream a follower reads.
pub type EventStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::EventBatch, tonic::Status>> + Send>>;

struct Follower {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<pb::Event>>,
    queued: Arc<AtomicU64>,
}

impl Follower {
    fn send(&self, batch: Vec<pb::Event>, dropped: &AtomicU64) {
        let n = batch.len() as u64;
        if self.queued.load(Ordering::Relaxed) + n > QUEUE || self.tx.send(batch).is_err() {
            dropped.fetch_add(n, Ordering::Relaxed);
            return;
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
    }
}

/// The followers of one component's events, and the allows whose repeats
/// are being folded (see [`crate::fold`]).
#[derive(Default)]
pub struct Fanout {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    followers: Mutex<Vec<Follower>>,
    dropped: AtomicU64,
    fold: Mutex<Fold>,
    /// The task that sends the folded counts runs.
    ticking: AtomicBool,
}

impl Inner {
    /// Hands events to every follower as one queue operation each. No
    /// follower (leashd reconnecting) is not a drop: nobody is listening.
    fn send_all(&self, batch: Vec<pb::Event>) {
        if batch.is_empty() {
            return;
        }
        let mut followers = self.followers.lock().unwrap_or_else(|p| p.into_inner());
        followers.retain(|f| !f.tx.is_closed());
        let Some((last, others)) = followers.split_last() else { return };
        for f in others {
            f.send(batch.clone(), &self.dropped);
        }
        // The last (usually the only) follower takes the batch itself.
        last.send(batch, &self.dropped);
    }
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout").field("dropped", &self.dropped()).finish_non_exhaustive()
    }
}

impl Fanout {
    /// Events no follower had room for.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Repeated allows that went out as a count rather than one by one.
    pub fn folded(&self) -> u64 {
        self.inner.fold.lock().unwrap_or_else(|p| p.into_inner()).folded
    }

    /// Publishes one event.
    pub fn publish(&self, e: pb::Event) {
        self.publish_batch(vec![e]);
    }

    /// Hands events to every follower, repeats of an allow folded.
    pub fn publish_batch(&self, batch: Vec<pb::Event>) {
        if batch.is_empty() {
            return;
        }
        let now = Instant::now();
        let out: Vec<pb::Event> = {
            let mut fold = self.inner.fold.lock().unwrap_or_else(|p| p.into_inner());
            let mut out = Vec::with_capacity(batch.len());
            for e in batch {
                fold.offer(e, now, &mut out);
            }
            out
        };
        self.inner.send_all(out);
    }

    /// A new follower's stream: what is ready at once goes in one message.
    pub fn follow(&self, shutdown: CancellationToken) -> EventStream {
        if !self.inner.ticking.swap(true, Ordering::Relaxed) {
            // The folded counts go out as their windows close.
            let inner = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(WINDOW / 4);
                loop {
                    tick.tick().await;
                    let Some(inner) = inner.upgrade() else { return };
                    let due = inner.fold.lock().unwrap_or_else(|p| p.into_inner()).due(Instant::now());
                    inner.send_all(due);
                }
            });
        }
        let (events_tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<pb::Event>>();
        let queued = Arc::new(AtomicU64::new(0));
        self.inner
            .followers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Follower { tx: events_tx, queued: queued.clone() });
        let (tx, out) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    n = rx.recv() => n,
                };
                let Some(mut events) = first else { return };
                while events.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(more) => events.extend(more),
                        Err(_) => break,
                    }
                }
                queued.fetch_sub(events.len() as u64, Ordering::Relaxed);
                while !events.is_empty() {
                    let rest = events.split_off(events.len().min(MAX_BATCH));
                    if tx.send(Ok(pb::EventBatch { events })).await.is_err() {
                        return;
                    }
                    events = rest;
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
    }
}
