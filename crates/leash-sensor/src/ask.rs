//! Ask on deny, on the fallback tier: an open or exec the policy denies
//! in enforce mode is not refused at once but parked — its fanotify
//! permission event is kept unanswered, so the opening thread waits in
//! its call — while the user is asked (leashd shows the question; the
//! answer comes back over the holder's control socket). The event is
//! answered when the answer comes or its deadline passes (then denied).
//!
//! Nothing here holds a lock while anyone waits: the decider goes on
//! reading and answering the group's other events, and a parked event is
//! only a descriptor number and a deadline. The number of parked events is
//! bounded; past it, denials are answered at once. A holder that dies with
//! events parked leaves them to its successor, which refuses every
//! unanswered event before it reads (fail closed).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::fan::{FileDecision, Group};

/// Events parked at once, per session; past it a denial is answered at once.
pub const MAX_PARKED: usize = 64;

/// What an answer says, as it comes over the control socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The ask's id.
    pub id: u64,
    /// Let the operation through.
    pub allow: bool,
    /// How it was answered ("once", "session", "always", "deny"), for the event.
    pub how: String,
}

impl Answer {
    /// The answer as a control frame's payload: id, allow, how.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(9 + self.how.len());
        b.extend_from_slice(&self.id.to_le_bytes());
        b.push(u8::from(self.allow));
        b.extend_from_slice(self.how.as_bytes());
        b
    }

    /// An answer from a control frame's payload.
    pub fn decode(b: &[u8]) -> Option<Answer> {
        let id = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let allow = *b.get(8)? == 1;
        let how = String::from_utf8_lossy(b.get(9..)?).into_owned();
        Some(Answer { id, allow, how })
    }
}

struct Waiting {
    fd: i32,
    deadline: Instant,
    decision: FileDecision,
}

#[derive(Default)]
struct Inner {
    next: u64,
    waiting: BTreeMap<u64, Waiting>,
    /// Decisions answered since the decider last looked, with how.
    done: Vec<(FileDecision, String)>,
}

/// A session's parked denials.
pub struct Asks {
    /// How long one waits for its answer.
    pub timeout: Duration,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Asks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asks").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Asks {
    /// Asks that wait `timeout` for their answer; ids start from `seed` (so
    /// a holder that replaces another does not reuse the ids it asked with).
    pub fn new(timeout: Duration, seed: u64) -> Asks {
        Asks { timeout, inner: Mutex::new(Inner { next: seed.max(1), ..Inner::default() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parks the permission event `fd` denied by `d`; its ask id, or None
    /// when too many wait (the caller answers it at once).
    pub fn park(&self, fd: i32, d: &FileDecision) -> Option<u64> {
        let mut inner = self.lock();
        if inner.waiting.len() >= MAX_PARKED {
            return None;
        }
        let id = inner.next;
        inner.next += 1;
        inner.waiting.insert(id, Waiting { fd, deadline: Instant::now() + self.timeout, decision: d.clone() });
        Some(id)
    }

    /// Answers a parked event; false when it is no longer parked (answered,
    /// or its deadline passed).
    pub fn answer(&self, group: &Group, a: &Answer) -> bool {
        let Some(w) = self.lock().waiting.remove(&a.id) else { return false };
        group.respond(w.fd, a.allow);
        let mut d = w.decision;
        d.allow = a.allow;
        self.lock().done.push((d, a.how.clone()));
        true
    }

    /// Denies what waited past its deadline.
    pub fn expire(&self, group: &Group, now: Instant) {
        let mut inner = self.lock();
        let due: Vec<u64> = inner.waiting.iter().filter(|(_, w)| w.deadline <= now).map(|(id, _)| *id).collect();
        for id in due {
            if let Some(w) = inner.waiting.remove(&id) {
                group.respond(w.fd, false);
                inner.done.push((w.decision, "timeout".to_owned()));
            }
        }
    }

    /// Refuses everything parked (the decider stops).
    pub fn refuse_all(&self, group: &Group) {
        let mut inner = self.lock();
        for (_, w) in std::mem::take(&mut inner.waiting) {
            group.respond(w.fd, false);
        }
    }

    /// The decisions answered since the last call, with how.
    pub fn answered(&self) -> Vec<(FileDecision, String)> {
        std::mem::take(&mut self.lock().done)
    }

    /// How many wait.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_through_a_frame() {
        let a = Answer { id: 7 << 40, allow: true, how: "session".into() };
        assert_eq!(Answer::decode(&a.encode()), Some(a));
        assert_eq!(Answer::decode(&[1, 2, 3]), None, "a short frame is no answer");
    }
}
