//! Repeated allows folded at the source (file opens and connections): the first allow of a (session,
//! action, resource, mode) goes out at once; the same allow again within
//! [`WINDOW`] is counted, and when the window closes one more event says
//! how many there were (`details.repeats`, the time of the last one). A
//! denial, a would-deny, an exec, an MCP call and every lifecycle event go
//! out whole, every time.
//!
//! A session's holder folds its decisions before they cross to the
//! sensor, and the sensor folds again what it publishes: a count that was
//! folded on its way passes the second fold as it is, and adds to it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use leash_proto::v1 as pb;

/// How long repeats of one allow are counted before their count goes out.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Allows tracked at once; past that, an allow goes out unfolded.
pub const MAX_OPEN: usize = 8192;

type Key = (String, String, String, i32);

struct Open {
    /// The first allow, kept to describe the repeats.
    first: pb::Event,
    since: Instant,
    repeats: u64,
    last_time: i64,
}

/// The allows whose repeats are being counted.
#[derive(Default)]
pub struct Fold {
    open: HashMap<Key, Open>,
    /// Repeats counted since start (what the summaries stand for).
    pub folded: u64,
}

/// Whether an event may stand for its repeats: an allow of a file open or
/// a connection. HTTP requests (each has its own path, method and
/// rewrites under one host), execs, MCP calls, refusals and what shadow
/// mode flags are kept one by one.
fn foldable(e: &pb::Event) -> bool {
    let kinds = [pb::EventKind::File as i32, pb::EventKind::Connect as i32];
    e.decision == pb::Decision::Allow as i32 && !e.would_deny && kinds.contains(&e.kind)
}

impl Fold {
    /// The event to send now, or None when it is a repeat (counted).
    pub fn offer(&mut self, e: pb::Event, now: Instant) -> Option<pb::Event> {
        // A count folded earlier on its way (by a session's holder) goes on
        // as it is, and counts here.
        if let Some(n) = e.details.get("repeats").and_then(|r| r.parse::<u64>().ok()) {
            self.folded += n;
            return Some(e);
        }
        if !foldable(&e) {
            return Some(e);
        }
        let key = (e.session.clone(), e.action.clone(), e.resource.clone(), e.mode);
        if let Some(o) = self.open.get_mut(&key) {
            o.repeats += 1;
            o.last_time = e.time_unix_nanos;
            self.folded += 1;
            return None;
        }
        if self.open.len() < MAX_OPEN {
            self.open.insert(key, Open { first: e.clone(), since: now, repeats: 0, last_time: e.time_unix_nanos });
        }
        Some(e)
    }

    /// The counts of the windows that closed by `now`: one event each
    /// for an allow that was repeated.
    pub fn due(&mut self, now: Instant) -> Vec<pb::Event> {
        let mut out = Vec::new();
        self.open.retain(|_, o| {
            if now.duration_since(o.since) < WINDOW {
                return true;
            }
            if o.repeats > 0 {
                let mut e = o.first.clone();
                e.time_unix_nanos = o.last_time;
                e.details.insert("repeats".to_owned(), o.repeats.to_string());
                e.details.insert("first_unix_nanos".to_owned(), o.first.time_unix_nanos.to_string());
                out.push(e);
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: &str, resource: &str, decision: pb::Decision, t: i64) -> pb::Event {
        pb::Event {
            session: "s".into(),
            kind: pb::EventKind::File as i32,
            action: action.into(),
            resource: resource.into(),
            decision: decision as i32,
            time_unix_nanos: t,
            ..Default::default()
        }
    }

    #[test]
    fn repeats_of_an_allow_become_one_count_and_denials_stay_whole() {
        let mut f = Fold::default();
        let t0 = Instant::now();
        let allow = |t| event("FileOpenReadOnly", "/w/a", pb::Decision::Allow, t);
        assert!(f.offer(allow(1), t0).is_some(), "the first goes out at once");
        for t in 2..=5 {
            assert!(f.offer(allow(t), t0).is_none());
        }
        // Another resource, a denial and an exec are never folded.
        assert!(f.offer(event("FileOpenReadOnly", "/w/b", pb::Decision::Allow, 6), t0).is_some());
        for t in 7..=8 {
            assert!(f.offer(event("FileOpenReadOnly", "/w/a", pb::Decision::Deny, t), t0).is_some());
            let mut x = event("ProcessExec", "/bin/true", pb::Decision::Allow, t);
            x.kind = pb::EventKind::Exec as i32;
            assert!(f.offer(x.clone(), t0).is_some() && f.offer(x, t0).is_some());
        }
        let mut shadow = allow(9);
        shadow.would_deny = true;
        assert!(f.offer(shadow.clone(), t0).is_some() && f.offer(shadow, t0).is_some());
        assert!(f.due(t0).is_empty(), "nothing is due within the window");
        let due = f.due(t0 + WINDOW);
        assert_eq!(due.len(), 1, "/w/b was not repeated: no count");
        assert_eq!((due[0].resource.as_str(), due[0].time_unix_nanos), ("/w/a", 5));
        assert_eq!(due[0].details["repeats"], "4");
        assert_eq!(f.folded, 4);
        assert!(f.open.is_empty());
        // After the window, the allow goes out at once again.
        assert!(f.offer(allow(10), t0 + WINDOW).is_some());
    }

    #[test]
    fn a_count_folded_on_its_way_passes_and_adds() {
        let mut f = Fold::default();
        let t0 = Instant::now();
        let first = event("FileOpenReadWrite", "/w/a", pb::Decision::Allow, 1);
        assert!(f.offer(first.clone(), t0).is_some());
        let mut count = first;
        count.details.insert("repeats".into(), "3".into());
        let passed = f.offer(count, t0).expect("a count is never folded into another");
        assert_eq!(passed.details["repeats"], "3");
        assert_eq!(f.folded, 3);
    }

    #[test]
    fn the_open_set_is_bounded() {
        let mut f = Fold::default();
        let t0 = Instant::now();
        for i in 0..MAX_OPEN + 10 {
            f.offer(event("FileOpenReadOnly", &format!("/f{i}"), pb::Decision::Allow, 0), t0);
        }
        assert_eq!(f.open.len(), MAX_OPEN);
        // Untracked: its repeats go out one by one, nothing is lost.
        let extra = event("FileOpenReadOnly", &format!("/f{}", MAX_OPEN + 1), pb::Decision::Allow, 0);
        assert!(f.offer(extra, t0).is_some());
    }
}
