//! The audit store under load, for `cargo xtask bench ui`: sustained
//! ingest without loss, batched ingest rate, and query latency over ten
//! million stored events against a full-scan baseline measured in the same
//! run. Prints one JSON object.

#![allow(clippy::print_stdout, reason = "a benchmark helper reports on stdout")]

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use leash_core::{Decision, Event, EventKind, Mode};
use leashd::audit::{Audit, Query, Retention};
use leashd::hub::Hub;

const SESSIONS: usize = 100;

fn event(i: u64) -> Event {
    let mut details = BTreeMap::new();
    details.insert("ppid".to_owned(), (1000 + i % 50).to_string());
    details.insert("mechanism".to_owned(), "fanotify".to_owned());
    let action = ["FileOpenReadOnly", "FileOpenReadWrite", "ProcessExec", "NetworkConnect"][(i % 4) as usize];
    Event {
        time: SystemTime::now(),
        session: Some(session_id(i % SESSIONS as u64)),
        pid: 1000 + (i % 500) as u32,
        executable: "/usr/bin/node".to_owned(),
        kind: EventKind::File,
        action: action.to_owned(),
        resource: format!("/work/project/src/module{}/file{}.ts", i % 97, i % 5003),
        mode: Some(Mode::Enforce),
        decision: Some(if i.is_multiple_of(100) { Decision::Deny } else { Decision::Allow }),
        would_deny: false,
        policy_ids: vec!["default-files".to_owned()],
        details,
    }
}

fn session_id(n: u64) -> String {
    format!("{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn stored(a: &Audit) -> u64 {
    a.written.load(Ordering::Relaxed)
}

/// Waits until the store has `n` events or stops moving for 3 s.
fn settle(a: &Audit, n: u64) -> Instant {
    let (mut last, mut since) = (stored(a), Instant::now());
    loop {
        let now = stored(a);
        if now >= n {
            return Instant::now();
        }
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() > Duration::from_secs(3) {
            return since;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let total: u64 = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(10_000_000);
    let dir = tempfile::tempdir()?;
    let hub = Hub::new(25_000, 4096);
    let retention = Retention { max_age: Duration::from_secs(30 * 86_400), max_events: total * 2 };
    let audit = Audit::start(dir.path(), &hub, retention)?;
    let mut i = 0u64;

    // 1. Sustained 50,000 events/s for 10 s, paced in 10 ms slices.
    let rate = 50_000u64;
    let start = Instant::now();
    for slice in 0..1000u64 {
        let due = start + Duration::from_millis(slice * 10);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        hub.publish_all((0..rate / 100).map(|k| event(i + k)));
        i += rate / 100;
    }
    settle(&audit, i);
    let sustained = serde_json::json!({
        "paced_per_s": rate, "seconds": 10, "published": i, "stored": stored(&audit),
        "lost": i - stored(&audit).min(i),
        "store_failed": audit.dropped.load(Ordering::Relaxed),
    });

    // 2. Batched ingest: 1,000,000 events as fast as the hub takes them;
    // the rate is what the store wrote per second.
    let n = 1_000_000u64;
    let (before, t) = (stored(&audit), Instant::now());
    let mut published = 0;
    while published < n {
        // Stay within the store's queue: a burst above it is counted, not waited for.
        while hub.seq() - stored(&audit) > 200_000 {
            std::thread::sleep(Duration::from_micros(200));
        }
        hub.publish_all((0..1000).map(|k| event(i + k)));
        i += 1000;
        published += 1000;
    }
    let done = settle(&audit, before + n);
    let ingest_per_s = (stored(&audit) - before) as f64 / done.duration_since(t).as_secs_f64();

    // 3. Fill to `total`.
    while i < total {
        while hub.seq() - stored(&audit) > 200_000 {
            std::thread::sleep(Duration::from_micros(200));
        }
        hub.publish_all((0..1000).map(|k| event(i + k)));
        i += 1000;
    }
    settle(&audit, i);
    let in_store = stored(&audit);

    // 4. Queries, medians of 5, beside a full scan of the table.
    let db = rusqlite::Connection::open(dir.path().join("audit/events.db"))?;
    let time = |f: &dyn Fn() -> usize| -> (f64, usize) {
        let mut ms = Vec::new();
        let mut rows = 0;
        for _ in 0..5 {
            let t = Instant::now();
            rows = f();
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        (median(ms), rows)
    };
    let scan = time(&|| {
        db.query_row("SELECT count(*) FROM events WHERE pid >= 0", [], |r| r.get::<_, i64>(0)).unwrap_or(0) as usize
    });
    let session = session_id(42);
    let q = |q: Query| audit.query(&q).map(|v| v.len()).unwrap_or(0);
    let queries = [
        (
            "session, newest 1,000 (the UI's view)",
            Query { session: Some(session.clone()), tail: 1000, ..Query::default() },
        ),
        (
            "session prefix, newest 1,000",
            Query { session: Some(session[..8].to_owned()), tail: 1000, ..Query::default() },
        ),
        (
            "session + action + decision, all",
            Query {
                session: Some(session_id(0)),
                action: Some("FileOpenReadOnly".into()),
                decision: Some("deny".into()),
                ..Query::default()
            },
        ),
        ("last second, all sessions", Query { since_ns: Some(leash_core_now() - 1_000_000_000), ..Query::default() }),
        (
            "path substring, newest 100",
            Query { contains: Some("module13/file4".into()), tail: 100, ..Query::default() },
        ),
        ("denied, newest 100", Query { decision: Some("deny".into()), tail: 100, ..Query::default() }),
    ];
    let mut results = Vec::new();
    for (name, query) in queries {
        let (ms, rows) = time(&|| q(query.clone()));
        results.push(serde_json::json!({ "query": name, "median_ms": ms, "rows": rows, "ratio_to_scan": ms / scan.0 }));
    }
    let size = std::fs::metadata(dir.path().join("audit/events.db")).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({
            "sustained": sustained,
            "ingest_batched_per_s": ingest_per_s,
            "stored_events": in_store,
            "db_bytes": size,
            "scan_ms": scan.0,
            "queries": results,
        })
    );
    Ok(())
}

fn leash_core_now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}
