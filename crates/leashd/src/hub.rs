//! The event hub: every producer publishes here; every follower reads from
//! its own bounded queue. A full queue drops the event for that follower
//! only, and the drop is counted; producers never wait.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Its JSON for the Control UI's WebSocket, made once for every follower.
    pub json: std::sync::OnceLock<Arc<str>>,
}

impl Stamped {
    /// Its wire form (the gRPC stream's, the store's, the OTLP exporter's
    /// and the Control UI's source).
    pub fn to_proto(&self) -> leash_proto::v1::Event {
        leash_proto::event::to_proto(&self.event, self.seq)
    }
}

/// Counters shown by `leashctl status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Events published.
    pub published: u64,
    /// Events dropped at full follower queues, over all followers ever.
    pub dropped: u64,
    /// Live subscribers.
    pub subscribers: u32,
    /// Each subscriber's queue capacity.
    pub queue_capacity: u32,
}

/// A follower's queue, and for leashd's own the counter of what it missed.
type Subscriber = (mpsc::Sender<Arc<Stamped>>, Option<Arc<AtomicU64>>);

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
    /// Followers, and leashd's own (the audit store, the OTLP exporter),
    /// each of which counts what its queue had no room for.
    subscribers: Vec<Subscriber>,
    dropped: u64,
    /// Per session, the secret values no event may carry.
    redactions: std::collections::HashMap<String, Vec<String>>,
    /// Per session counted, the refusals published (what `leash` reports
    /// when the session ends).
    denials: std::collections::HashMap<String, u64>,
}

/// Events kept in memory at most while the audit store holds them all:
/// what the Control UI replays to a new viewer (2,000 at most) with room
/// for a session's among others'. At about 1.6 KiB an event, 6.5 MiB.
pub const HISTORY_WITH_STORE: usize = 4_096;

/// What a redacted secret becomes.
pub const REDACTED: &str = "[REDACTED]";

/// Replaces every secret in `s`.
fn scrub(s: &mut String, secrets: &[String]) {
    for secret in secrets {
        if s.contains(secret.as_str()) {
            *s = s.replace(secret.as_str(), REDACTED);
        }
    }
}

/// Replaces every secret in `e`'s text fields.
fn redact(e: &mut Event, secrets: &[String]) {
    let scrub = |s: &mut String| scrub(s, secrets);
    scrub(&mut e.resource);
    scrub(&mut e.executable);
    scrub(&mut e.action);
    e.details.values_mut().for_each(scrub);
    e.policy_ids.iter_mut().for_each(scrub);
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
                redactions: std::collections::HashMap::new(),
                denials: std::collections::HashMap::new(),
            })),
        }
    }

    /// Keeps at most `cap` recent events in memory from now on (the oldest
    /// beyond it are freed at once).
    pub fn limit_history(&self, cap: usize) {
        let gone: Vec<_> = {
            let mut inner = self.lock();
            inner.history_cap = inner.history_cap.min(cap);
            let excess = inner.history.len().saturating_sub(inner.history_cap);
            inner.history.drain(..excess).collect()
        };
        drop(gone);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent counters; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds secret values that no event of `session` may carry from now
    /// on (values shorter than 4 characters are not secrets worth the
    /// damage their redaction would do).
    pub fn redact_for(&self, session: &str, secrets: impl IntoIterator<Item = String>) {
        let mut inner = self.lock();
        let set = inner.redactions.entry(session.to_owned()).or_default();
        for s in secrets {
            if s.len() >= 4 && !set.contains(&s) {
                set.push(s);
            }
        }
        // Longest first, so a secret containing another is replaced whole.
        set.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// `text` with `session`'s secrets redacted (for API payloads).
    pub fn redact_text(&self, session: &str, text: &str) -> String {
        let mut t = text.to_owned();
        if let Some(set) = self.lock().redactions.get(session) {
            scrub(&mut t, set);
        }
        t
    }

    /// Forgets a session's secrets (it ended).
    pub fn forget_session(&self, session: &str) {
        let mut inner = self.lock();
        inner.redactions.remove(session);
        inner.denials.remove(session);
    }

    /// Counts `session`'s refusals from now on.
    pub fn count_denials(&self, session: &str) {
        self.lock().denials.entry(session.to_owned()).or_insert(0);
    }

    /// The refusals of `session` published since it was counted.
    pub fn denials(&self, session: &str) -> u64 {
        self.lock().denials.get(session).copied().unwrap_or(0)
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
        for mut event in events {
            if let Some(secrets) = event.session.as_ref().and_then(|s| inner.redactions.get(s)) {
                redact(&mut event, secrets);
            }
            if event.decision == Some(leash_core::Decision::Deny)
                && let Some(n) = event.session.as_ref().and_then(|s| inner.denials.get_mut(s))
            {
                // Refusals are never folded: one event each.
                *n += 1;
            }
            inner.seq += 1;
            let stamped = Arc::new(Stamped { seq: inner.seq, event, json: std::sync::OnceLock::new() });
            if inner.history_cap > 0 {
                if inner.history.len() == inner.history_cap {
                    gone.extend(inner.history.pop_front());
                }
                inner.history.push_back(stamped.clone());
            }
            inner.subscribers.retain(|(tx, own)| match tx.try_send(stamped.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    match own {
                        Some(counter) => {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        None => dropped += 1,
                    }
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
            inner.subscribers.push((tx, None));
            rx
        });
        (backlog, rx)
    }

    /// The sequence number of the last event published.
    pub fn seq(&self) -> u64 {
        self.lock().seq
    }

    /// leashd's own follower (the audit store, the OTLP exporter), with its
    /// own queue capacity, from now on; not counted among the followers.
    /// What its queue has no room for is added to `dropped`.
    pub fn subscribe_with(&self, capacity: usize, dropped: Arc<AtomicU64>) -> mpsc::Receiver<Arc<Stamped>> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.lock().subscribers.push((tx, Some(dropped)));
        rx
    }

    /// Current counters.
    pub fn stats(&self) -> HubStats {
        let mut inner = self.lock();
        inner.subscribers.retain(|(tx, _)| !tx.is_closed());
        HubStats {
            published: inner.seq,
            dropped: inner.dropped,
            subscribers: inner.subscribers.iter().filter(|(_, own)| own.is_none()).count() as u32,
            queue_capacity: inner.queue_cap as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sessions_secrets_never_reach_its_events() {
        let hub = Hub::new(10, 10);
        hub.redact_for("s", ["sk-live-123456".to_owned(), "abc".to_owned()]);
        let mut e = Event::daemon("NetworkConnect", "x", 1);
        e.session = Some("s".into());
        e.resource = "https://api.test/?key=sk-live-123456".into();
        e.details.insert("header".into(), "Bearer sk-live-123456".into());
        e.details.insert("short".into(), "abc".into());
        let mut other = e.clone();
        other.session = Some("t".into());
        hub.publish_all([e, other]);
        let (got, _) = hub.subscribe(0, false);
        assert_eq!(got[0].event.resource, "https://api.test/?key=[REDACTED]");
        assert_eq!(got[0].event.details["header"], "Bearer [REDACTED]");
        assert_eq!(got[0].event.details["short"], "abc", "too short to be a secret");
        assert!(got[1].event.resource.contains("sk-live-123456"), "another session's own events");
        hub.forget_session("s");
        assert!(hub.lock().redactions.is_empty());
    }

    fn ev(n: u32) -> Event {
        Event::daemon("test", "t", n)
    }

    #[test]
    fn a_limited_history_frees_its_oldest_at_once() {
        let hub = Hub::new(10, 10);
        for i in 0..8 {
            hub.publish(Event::daemon("x", "t", i));
        }
        hub.limit_history(3);
        let (kept, _) = hub.subscribe(0, false);
        assert_eq!(kept.iter().map(|s| s.seq).collect::<Vec<_>>(), [6, 7, 8]);
        for i in 0..5 {
            hub.publish(Event::daemon("x", "t", i));
        }
        assert_eq!(hub.subscribe(0, false).0.len(), 3);
        // A limit never raises the configured size.
        hub.limit_history(100);
        hub.publish(Event::daemon("x", "t", 0));
        assert_eq!(hub.subscribe(0, false).0.len(), 3);
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
