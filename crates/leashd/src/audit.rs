//! The audit store: every event the hub publishes, on disk in SQLite
//! (`<state>/audit/events.db`, WAL), written in batches by a thread of its
//! own, kept by age and count, read back by `leashctl events`.
//!
//! Ingest never blocks a producer: the store follows the hub like any
//! subscriber, through a bounded queue whose overflow is counted.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use leash_proto::v1 as pb;
use rusqlite::{Connection, params};

use crate::hub::{Hub, Stamped};

/// Events queued for the writer before they are dropped (and counted).
const QUEUE: usize = 262_144;
/// Events per transaction at most.
const BATCH: usize = 16_384;
/// How long the writer gathers a trickle of events into one transaction:
/// each commit writes the table's and both indexes' pages to the log, so
/// one event per commit costs the store ten times what one in a batch does.
const GATHER: Duration = Duration::from_millis(10);
/// A batch at least this large is written at once, without gathering.
const GATHER_BELOW: usize = 1_024;
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(30);

/// How long and how much to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Events older than this are deleted.
    pub max_age: Duration,
    /// Beyond this many events, the oldest are deleted.
    pub max_events: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention { max_age: Duration::from_secs(30 * 24 * 3600), max_events: 10_000_000 }
    }
}

/// Which stored events to read.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// A session id or prefix.
    pub session: Option<String>,
    /// Not before this time (Unix nanoseconds).
    pub since_ns: Option<i64>,
    /// The action, exactly.
    pub action: Option<String>,
    /// "allow" or "deny".
    pub decision: Option<String>,
    /// A substring of the resource (a path, a host).
    pub contains: Option<String>,
    /// The last N matching (0: all).
    pub tail: u32,
}

/// The store's handle.
#[derive(Debug)]
pub struct Audit {
    /// The connection queries read through (WAL: beside the writer's).
    reader: std::sync::Mutex<Connection>,
    /// Events written.
    pub written: Arc<AtomicU64>,
    /// Events not stored: the writer's queue had no room, or a write failed.
    pub dropped: Arc<AtomicU64>,
    /// The hub sequence number of the last event written (this run).
    last_seq: Arc<AtomicU64>,
}

/// The one session whose id starts with `prefix`, if exactly one does.
fn unique_session(db: &Connection, prefix: &str) -> Option<String> {
    let end = format!("{prefix}\u{10FFFF}");
    let first: Option<String> = db
        .query_row("SELECT MIN(session) FROM events WHERE session >= ?1 AND session < ?2", params![prefix, end], |r| {
            r.get(0)
        })
        .ok()?;
    let last: Option<String> = db
        .query_row("SELECT MAX(session) FROM events WHERE session >= ?1 AND session < ?2", params![prefix, end], |r| {
            r.get(0)
        })
        .ok()?;
    match (first, last) {
        (Some(a), Some(b)) if a == b => Some(a),
        _ => None,
    }
}

/// A session id's length: 16 hex digits.
const SESSION_ID_LEN: usize = 16;

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = NORMAL;
    CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY,
        seq INTEGER NOT NULL,
        time_ns INTEGER NOT NULL,
        session TEXT NOT NULL,
        pid INTEGER NOT NULL,
        executable TEXT NOT NULL,
        kind INTEGER NOT NULL,
        action TEXT NOT NULL,
        resource TEXT NOT NULL,
        mode INTEGER NOT NULL,
        decision INTEGER NOT NULL,
        would_deny INTEGER NOT NULL,
        policy_ids TEXT NOT NULL,
        details TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS events_time ON events(time_ns);
    DROP INDEX IF EXISTS events_session;
    CREATE INDEX IF NOT EXISTS events_session_id ON events(session);
";

fn open_db(path: &Path) -> rusqlite::Result<Connection> {
    let db = Connection::open(path)?;
    db.busy_timeout(Duration::from_secs(5))?;
    db.execute_batch(SCHEMA)?;
    Ok(db)
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

impl Audit {
    /// Opens (or creates) the store under `state_dir` and starts writing
    /// what `hub` publishes.
    pub fn start(state_dir: &Path, hub: &Hub, retention: Retention) -> anyhow::Result<Arc<Audit>> {
        let dir = state_dir.join("audit");
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let path = dir.join("events.db");
        let db = open_db(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let reader = std::sync::Mutex::new(open_db(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?);
        let audit =
            Arc::new(Audit { reader, written: Arc::default(), dropped: Arc::default(), last_seq: Arc::default() });
        // Its queue's overflow and its failed writes count alike: not stored.
        let live = hub.subscribe_with(QUEUE, audit.dropped.clone());
        let (written, dropped, last_seq) = (audit.written.clone(), audit.dropped.clone(), audit.last_seq.clone());
        let mut live = live;
        std::thread::Builder::new().name("audit".into()).spawn(move || {
            // The store yields the CPU to the sensor and the event stream:
            // behind under a burst, it catches up from its queue.
            let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10);
            let mut last_retention = Instant::now() - RETENTION_EVERY;
            let mut db = db;
            while let Some(first) = live.blocking_recv() {
                let mut batch = vec![first];
                let drain = |batch: &mut Vec<_>, live: &mut tokio::sync::mpsc::Receiver<_>| {
                    while batch.len() < BATCH {
                        match live.try_recv() {
                            Ok(e) => batch.push(e),
                            Err(_) => break,
                        }
                    }
                };
                drain(&mut batch, &mut live);
                if batch.len() < GATHER_BELOW {
                    std::thread::sleep(GATHER);
                    drain(&mut batch, &mut live);
                }
                let newest = batch.iter().map(|s| s.seq).max().unwrap_or(0);
                match insert(&mut db, &batch) {
                    Ok(()) => {
                        written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        last_seq.fetch_max(newest, Ordering::Release);
                    }
                    Err(e) => {
                        dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        tracing::error!(error = %e, events = batch.len(), "cannot write events to the audit store");
                    }
                }
                if last_retention.elapsed() >= RETENTION_EVERY {
                    last_retention = Instant::now();
                    if let Err(e) = retain(&db, retention) {
                        tracing::warn!(error = %e, "audit retention failed");
                    }
                }
            }
        })?;
        Ok(audit)
    }

    /// Waits (up to `patience`) until every event up to hub sequence `seq`
    /// is written, so a query sees what was published before it.
    pub fn wait_for(&self, seq: u64, patience: Duration) {
        let start = Instant::now();
        while self.last_seq.load(Ordering::Acquire) < seq && start.elapsed() < patience {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs retention now.
    #[cfg(test)]
    fn retain_now(&self, retention: Retention) -> anyhow::Result<u64> {
        Ok(retain(&self.reader(), retention)?)
    }

    /// Events stored.
    #[cfg(test)]
    fn count(&self) -> u64 {
        self.reader().query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0)).unwrap_or(0) as u64
    }

    /// Stored events matching `q`, oldest first.
    pub fn query(&self, q: &Query) -> anyhow::Result<Vec<pb::Event>> {
        let db = self.reader();
        let mut sql = String::from(
            "SELECT time_ns, session, pid, executable, kind, action, resource, mode, decision, would_deny, policy_ids, details, seq, id FROM events WHERE 1=1",
        );
        let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
        if let Some(s) = &q.session {
            // A prefix of one session only is that session (two index probes).
            let s = &unique_session(&db, s).unwrap_or_else(|| s.clone());
            if s.len() == SESSION_ID_LEN {
                // A whole id: its index walks newest first without sorting.
                sql.push_str(" AND session = ?");
                args.push(Box::new(s.clone()));
            } else {
                // A prefix as a range the indexes answer.
                sql.push_str(" AND session >= ? AND session < ?");
                args.push(Box::new(s.clone()));
                args.push(Box::new(format!("{s}\u{10FFFF}")));
            }
        }
        if let Some(t) = q.since_ns {
            sql.push_str(" AND time_ns >= ?");
            args.push(Box::new(t));
        }
        if let Some(a) = &q.action {
            sql.push_str(" AND action = ?");
            args.push(Box::new(a.clone()));
        }
        if let Some(d) = &q.decision {
            sql.push_str(" AND decision = ?");
            args.push(Box::new(match d.as_str() {
                "allow" => pb::Decision::Allow as i32,
                "deny" => pb::Decision::Deny as i32,
                _ => -1,
            }));
        }
        if let Some(c) = &q.contains {
            sql.push_str(" AND resource LIKE ? ESCAPE '\\'");
            args.push(Box::new(format!("%{}%", like_escape(c))));
        }
        // With a time bound the time index leads (recent events are few);
        // otherwise insertion order.
        let (asc, desc) =
            if q.since_ns.is_some() { ("time_ns, id", "time_ns DESC, id DESC") } else { ("id", "id DESC") };
        if q.tail > 0 {
            sql = format!("SELECT * FROM ({sql} ORDER BY {desc} LIMIT {}) ORDER BY {asc}", q.tail);
        } else {
            sql.push_str(&format!(" ORDER BY {asc}"));
        }
        let mut stmt = db.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter().map(|b| b.as_ref())), |r| {
            Ok(pb::Event {
                seq: r.get::<_, i64>(12)? as u64,
                time_unix_nanos: r.get(0)?,
                session: r.get(1)?,
                pid: r.get::<_, i64>(2)? as u32,
                executable: r.get(3)?,
                kind: r.get(4)?,
                action: r.get(5)?,
                resource: r.get(6)?,
                mode: r.get(7)?,
                decision: r.get(8)?,
                would_deny: r.get::<_, i64>(9)? != 0,
                policy_ids: serde_json::from_str(&r.get::<_, String>(10)?).unwrap_or_default(),
                details: serde_json::from_str(&r.get::<_, String>(11)?).unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

fn insert(db: &mut Connection, batch: &[Arc<Stamped>]) -> rusqlite::Result<()> {
    let tx = db.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO events (seq, time_ns, session, pid, executable, kind, action, resource, mode, decision, would_deny, policy_ids, details)
             VALUES (?13, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        for s in batch {
            let e = leash_proto::event::to_proto(&s.event, s.seq);
            stmt.execute(params![
                e.time_unix_nanos,
                e.session,
                i64::from(e.pid),
                e.executable,
                e.kind,
                e.action,
                e.resource,
                e.mode,
                e.decision,
                i64::from(e.would_deny),
                serde_json::to_string(&e.policy_ids).unwrap_or_default(),
                serde_json::to_string(&e.details).unwrap_or_default(),
                s.seq as i64,
            ])?;
        }
    }
    tx.commit()
}

/// Deletes what retention no longer keeps; returns how many.
fn retain(db: &Connection, r: Retention) -> rusqlite::Result<u64> {
    let oldest = now_ns() - r.max_age.as_nanos() as i64;
    let mut removed = db.execute("DELETE FROM events WHERE time_ns < ?1", params![oldest])? as u64;
    let count: i64 = db.query_row("SELECT count(*) FROM events", [], |row| row.get(0))?;
    let excess = count - r.max_events as i64;
    if excess > 0 {
        removed += db
            .execute("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?1)", params![excess])?
            as u64;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use leash_core::Event;

    fn wait_written(a: &Audit, n: u64) {
        let start = Instant::now();
        while a.written.load(Ordering::Relaxed) < n {
            assert!(start.elapsed() < Duration::from_secs(5), "the writer did not write {n}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn events_are_stored_queried_kept_across_reopen_and_retained() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::new(10, 10);
        let audit = Audit::start(dir.path(), &hub, Retention::default()).unwrap();
        for i in 0..100 {
            let mut e = Event::daemon(if i % 2 == 0 { "NetworkConnect" } else { "FileOpen" }, "x", i);
            e.session = Some(format!("sess{}", i % 3));
            e.resource = format!("/work/file-{i}_x");
            e.decision = Some(if i % 5 == 0 { leash_core::Decision::Deny } else { leash_core::Decision::Allow });
            hub.publish(e);
        }
        wait_written(&audit, 100);
        let q = |q: Query| audit.query(&q).unwrap();
        assert_eq!(q(Query::default()).len(), 100);
        assert_eq!(q(Query { session: Some("sess1".into()), ..Default::default() }).len(), 33);
        assert_eq!(
            q(Query { action: Some("FileOpen".into()), decision: Some("deny".into()), ..Default::default() }).len(),
            10
        );
        let tail = q(Query { tail: 3, ..Default::default() });
        assert_eq!(
            tail.iter().map(|e| e.resource.as_str()).collect::<Vec<_>>(),
            ["/work/file-97_x", "/work/file-98_x", "/work/file-99_x"]
        );
        assert_eq!(q(Query { contains: Some("file-4".into()), ..Default::default() }).len(), 11);
        assert_eq!(
            q(Query { contains: Some("%".into()), ..Default::default() }).len(),
            0,
            "LIKE wildcards are literal"
        );
        assert_eq!(q(Query { since_ns: Some(now_ns() + 1_000_000_000), ..Default::default() }).len(), 0);
        // A new store on the same directory (a restarted leashd) has them.
        let again = Audit::start(dir.path(), &Hub::new(10, 10), Retention::default()).unwrap();
        assert_eq!(again.count(), 100);
        assert_eq!(again.retain_now(Retention { max_age: Duration::from_secs(3600), max_events: 40 }).unwrap(), 60);
        let kept = again.query(&Query::default()).unwrap();
        assert_eq!((kept.len(), kept[0].resource.as_str()), (40, "/work/file-60_x"), "the oldest go first");
        assert_eq!(again.retain_now(Retention { max_age: Duration::ZERO, max_events: 40 }).unwrap(), 40);
    }
}
