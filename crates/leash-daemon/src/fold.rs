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
//!
//! Lineage is folded too. A process's fork is held back until the process
//! does something that is an event of its own (an exec, a decision, a
//! child that does), or until it has lived [`WINDOW`]; then it goes out,
//! with the held forks of its ancestors before it, and its exit goes out
//! whole. A process that forked and exited within the window with no
//! event of its own (a subshell, a `$(…)`) never made a decision: its
//! fork and exit become one count per parent and executable, sent as the
//! window closes (`details.processes`, and `details.failed` for those that
//! ended with a status other than 0 or by a signal).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use leash_proto::v1 as pb;

/// How long repeats of one allow are counted before their count goes out.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Allows tracked at once; past that, an allow goes out unfolded.
pub const MAX_OPEN: usize = 8192;

type Key = (String, String, String, i32);

/// A process's fork, held back until the process shows itself.
struct Held {
    fork: pb::Event,
    since: Instant,
}

/// The processes of one parent and executable that came and went quietly.
struct Quiet {
    first: pb::Event,
    since: Instant,
    processes: u64,
    failed: u64,
    last_time: i64,
}

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
    /// Forks held back, by (session, pid).
    held: HashMap<(String, u32), Held>,
    /// Quiet processes being counted, by (session, parent, executable).
    quiet: HashMap<(String, String, String), Quiet>,
    /// Events counted since start (what the summaries stand for).
    pub folded: u64,
}

/// Whether an event may stand for its repeats: an allow of a file open or
/// a connection. HTTP requests (each has its own path, method and
/// rewrites under one host), execs, MCP calls, refusals and what shadow
/// mode flags are kept one by one.
fn foldable(e: &pb::Event) -> bool {
    let kinds = [pb::EventKind::File as i32, pb::EventKind::Connect as i32];
    // An answer the user gave is kept whole.
    e.decision == pb::Decision::Allow as i32
        && !e.would_deny
        && kinds.contains(&e.kind)
        && !e.details.contains_key("ask")
}

/// The parent a lineage event names.
fn parent(e: &pb::Event) -> Option<u32> {
    e.details.get("ppid").and_then(|p| p.parse().ok())
}

fn is_lifecycle(e: &pb::Event, action: &str) -> bool {
    e.kind == pb::EventKind::Process as i32 && e.action == action && !e.details.contains_key("processes")
}

impl Fold {
    /// Takes one event: what is to be sent now goes into `out` (nothing
    /// when it is a repeat or a fork held back).
    pub fn offer(&mut self, e: pb::Event, now: Instant, out: &mut Vec<pb::Event>) {
        if is_lifecycle(&e, "process.exit") {
            if let Some(h) = self.held.remove(&(e.session.clone(), e.pid)) {
                self.count_quiet(h.fork, &e, now);
                return;
            }
        } else if is_lifecycle(&e, "process.fork") && self.held.len() < MAX_OPEN {
            self.held.insert((e.session.clone(), e.pid), Held { fork: e, since: now });
            return;
        }
        // The process shows itself: its fork (and its ancestors') first.
        self.release(&e, out);
        // A count folded earlier on its way (by a session's holder) goes on
        // as it is, and counts here.
        if let Some(n) = e.details.get("repeats").and_then(|r| r.parse::<u64>().ok()) {
            self.folded += n;
            out.push(e);
            return;
        }
        if !foldable(&e) {
            out.push(e);
            return;
        }
        let key = (e.session.clone(), e.action.clone(), e.resource.clone(), e.mode);
        if let Some(o) = self.open.get_mut(&key) {
            o.repeats += 1;
            o.last_time = e.time_unix_nanos;
            self.folded += 1;
            return;
        }
        if self.open.len() < MAX_OPEN {
            self.open.insert(key, Open { first: e.clone(), since: now, repeats: 0, last_time: e.time_unix_nanos });
        }
        out.push(e);
    }

    /// Sends the held forks of `e`'s process and of its ancestors (for a
    /// fork, of its parent and theirs), the eldest first.
    fn release(&mut self, e: &pb::Event, out: &mut Vec<pb::Event>) {
        let pid = if is_lifecycle(e, "process.fork") { parent(e) } else { Some(e.pid) };
        self.release_from(&e.session, pid, out);
    }

    fn release_from(&mut self, session: &str, mut pid: Option<u32>, out: &mut Vec<pb::Event>) {
        let at = out.len();
        while let Some(p) = pid
            && let Some(h) = self.held.remove(&(session.to_owned(), p))
        {
            pid = parent(&h.fork);
            out.push(h.fork);
        }
        out[at..].reverse();
    }

    /// A process that forked and exited with no event of its own.
    fn count_quiet(&mut self, fork: pb::Event, exit: &pb::Event, now: Instant) {
        let failed = u64::from(exit.details.get("exit_code").is_none_or(|c| c != "0"));
        let key = (fork.session.clone(), fork.details.get("ppid").cloned().unwrap_or_default(), fork.resource.clone());
        self.folded += 2;
        let q = self.quiet.entry(key).or_insert_with(|| Quiet {
            first: fork,
            since: now,
            processes: 0,
            failed: 0,
            last_time: 0,
        });
        q.processes += 1;
        q.failed += failed;
        q.last_time = exit.time_unix_nanos;
    }

    /// What the windows that closed by `now` release: the forks of
    /// processes that lived a window, one count per parent and executable
    /// of the quiet ones, and one count per allow that was repeated.
    pub fn due(&mut self, now: Instant) -> Vec<pb::Event> {
        // Forks of processes that lived a window: an ancestor forked
        // before its descendants, so by time is eldest first.
        let mut out: Vec<pb::Event> = Vec::new();
        self.held.retain(|_, h| {
            let keep = now.duration_since(h.since) < WINDOW;
            if !keep {
                out.push(h.fork.clone());
            }
            keep
        });
        out.sort_by_key(|e| e.time_unix_nanos);
        let mut quiet = Vec::new();
        self.quiet.retain(|_, q| {
            if now.duration_since(q.since) < WINDOW {
                return true;
            }
            let mut e = q.first.clone();
            e.time_unix_nanos = q.last_time;
            e.details.insert("processes".to_owned(), q.processes.to_string());
            e.details.insert("failed".to_owned(), q.failed.to_string());
            e.details.insert("first_unix_nanos".to_owned(), q.first.time_unix_nanos.to_string());
            quiet.push((q.first.time_unix_nanos, e));
            false
        });
        // A count names its parent: the parent's fork goes out before it.
        quiet.sort_by_key(|(first, _)| *first);
        for (_, e) in quiet {
            self.release_from(&e.session.clone(), parent(&e), &mut out);
            out.push(e);
        }
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

    /// What one event sends at once, when it is at most one.
    fn offer1(f: &mut Fold, e: pb::Event, now: Instant) -> Option<pb::Event> {
        let mut out = Vec::new();
        f.offer(e, now, &mut out);
        assert!(out.len() <= 1, "{out:?}");
        out.pop()
    }

    fn lineage(action: &str, pid: u32, ppid: u32, t: i64) -> pb::Event {
        let mut e = event(action, "/bin/sh", pb::Decision::Unspecified, t);
        e.kind = pb::EventKind::Process as i32;
        e.pid = pid;
        e.details.insert("ppid".into(), ppid.to_string());
        if action == "process.exit" {
            e.details.insert("exit_code".into(), (pid % 2).to_string());
        }
        e
    }

    #[test]
    fn quiet_processes_become_one_count_and_a_process_that_shows_itself_keeps_its_lineage() {
        let mut f = Fold::default();
        let t0 = Instant::now();
        let mut out = Vec::new();
        // 10 (the shell) forks 11, which forks 12, which opens a file.
        for (pid, ppid, t) in [(11, 10, 1), (12, 11, 2)] {
            f.offer(lineage("process.fork", pid, ppid, t), t0, &mut out);
        }
        assert!(out.is_empty(), "forks are held: {out:?}");
        let mut open = event("FileOpenReadOnly", "/w/a", pb::Decision::Allow, 3);
        open.pid = 12;
        f.offer(open, t0, &mut out);
        let order: Vec<(&str, u32)> = out.iter().map(|e| (e.action.as_str(), e.pid)).collect();
        assert_eq!(order, [("process.fork", 11), ("process.fork", 12), ("FileOpenReadOnly", 12)]);
        out.clear();
        // Its exit goes out whole.
        f.offer(lineage("process.exit", 12, 11, 4), t0, &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        // 20..=24, children of 10, come and go quietly; 21, 23 fail.
        for pid in 20..25 {
            f.offer(lineage("process.fork", pid, 10, 5), t0, &mut out);
            f.offer(lineage("process.exit", pid, 10, 6), t0, &mut out);
        }
        // 30 forks and lives on; 31, a quiet child of 30, names it.
        f.offer(lineage("process.fork", 30, 10, 7), t0, &mut out);
        f.offer(lineage("process.fork", 31, 30, 8), t0, &mut out);
        f.offer(lineage("process.exit", 31, 30, 9), t0, &mut out);
        // A denial is never held, and releases nothing of others.
        f.offer(event("FileOpenReadOnly", "/w/secret", pb::Decision::Deny, 10), t0, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(f.folded, 12, "six quiet processes, a fork and an exit each");
        assert!(f.due(t0).is_empty(), "nothing is due within the window");
        let due = f.due(t0 + WINDOW);
        let summary: Vec<(&str, u32, Option<&String>, Option<&String>)> = due
            .iter()
            .map(|e| (e.action.as_str(), e.pid, e.details.get("processes"), e.details.get("failed")))
            .collect();
        let (five, two, one) = ("5".to_owned(), "2".to_owned(), "1".to_owned());
        assert_eq!(
            summary,
            [
                ("process.fork", 30, None, None),
                ("process.fork", 20, Some(&five), Some(&two)),
                ("process.fork", 31, Some(&one), Some(&one)),
            ],
            "the fork of the process that lived a window, then one count per parent: {due:?}"
        );
        assert_eq!(due[1].details["ppid"], "10");
        assert!(f.held.is_empty() && f.quiet.is_empty());
    }

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
        assert!(offer1(&mut f, allow(1), t0).is_some(), "the first goes out at once");
        for t in 2..=5 {
            assert!(offer1(&mut f, allow(t), t0).is_none());
        }
        // Another resource, a denial and an exec are never folded.
        assert!(offer1(&mut f, event("FileOpenReadOnly", "/w/b", pb::Decision::Allow, 6), t0).is_some());
        for t in 7..=8 {
            assert!(offer1(&mut f, event("FileOpenReadOnly", "/w/a", pb::Decision::Deny, t), t0).is_some());
            let mut x = event("ProcessExec", "/bin/true", pb::Decision::Allow, t);
            x.kind = pb::EventKind::Exec as i32;
            assert!(offer1(&mut f, x.clone(), t0).is_some() && offer1(&mut f, x, t0).is_some());
        }
        let mut shadow = allow(9);
        shadow.would_deny = true;
        assert!(offer1(&mut f, shadow.clone(), t0).is_some() && offer1(&mut f, shadow, t0).is_some());
        assert!(f.due(t0).is_empty(), "nothing is due within the window");
        let due = f.due(t0 + WINDOW);
        assert_eq!(due.len(), 1, "/w/b was not repeated: no count");
        assert_eq!((due[0].resource.as_str(), due[0].time_unix_nanos), ("/w/a", 5));
        assert_eq!(due[0].details["repeats"], "4");
        assert_eq!(f.folded, 4);
        assert!(f.open.is_empty());
        // After the window, the allow goes out at once again.
        assert!(offer1(&mut f, allow(10), t0 + WINDOW).is_some());
    }

    #[test]
    fn a_count_folded_on_its_way_passes_and_adds() {
        let mut f = Fold::default();
        let t0 = Instant::now();
        let first = event("FileOpenReadWrite", "/w/a", pb::Decision::Allow, 1);
        assert!(offer1(&mut f, first.clone(), t0).is_some());
        let mut count = first;
        count.details.insert("repeats".into(), "3".into());
        let passed = offer1(&mut f, count, t0).expect("a count is never folded into another");
        assert_eq!(passed.details["repeats"], "3");
        assert_eq!(f.folded, 3);
    }

    #[test]
    fn the_open_set_is_bounded() {
        let mut f = Fold::default();
        let t0 = Instant::now();
        for i in 0..MAX_OPEN + 10 {
            offer1(&mut f, event("FileOpenReadOnly", &format!("/f{i}"), pb::Decision::Allow, 0), t0);
        }
        assert_eq!(f.open.len(), MAX_OPEN);
        // Untracked: its repeats go out one by one, nothing is lost.
        let extra = event("FileOpenReadOnly", &format!("/f{}", MAX_OPEN + 1), pb::Decision::Allow, 0);
        assert!(offer1(&mut f, extra, t0).is_some());
    }
}
