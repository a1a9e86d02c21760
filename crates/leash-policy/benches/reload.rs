//! A policy file edited on disk → its new tables published: the write, the
//! inotify event, loading, validating, compiling the kernel tables and the
//! change on the watch stream, through the real store and watcher. The
//! baseline, measured in the same run, is loading and compiling the same
//! text directly (no file, no watcher). Medians of several runs, for a
//! 10-, 100- and 1,000-statement file. Run with `cargo xtask bench policy`.
#![allow(clippy::print_stdout, reason = "a benchmark's report")]

use std::time::{Duration, Instant};

use leash_policy::engine::{Engine, Source};
use leash_policy::store::{Opening, Store};

const EDITS: usize = 25;

fn policy(statements: usize, variant: usize) -> String {
    (0..statements)
        .map(|i| {
            let effect = if (i + variant).is_multiple_of(5) { "forbid" } else { "permit" };
            format!("{effect} (principal, action == Action::\"FileOpen\", resource in Dir::\"/w{variant}/d{i}/\");\n")
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("leash-reload-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let store = Store::open(dir.join("state"), leash_policy::default_sources()).expect("store");
    store.start_watching().expect("inotify");
    let me = nix::unistd::getuid().as_raw();
    println!("policy file edit → new tables published (medians of {EDITS} edits)");
    for statements in [10, 100, 1000] {
        let file = dir.join(format!("p{statements}.cedar"));
        std::fs::write(&file, policy(statements, 0)).expect("write");
        let session = format!("bench{statements}");
        let opening = Opening {
            principal: "claude".into(),
            sources: vec![Source { name: file.display().to_string(), text: policy(statements, 0) }],
            file: Some(file.clone()),
            owner: me,
            ..Default::default()
        };
        assert!(store.open_session(&session, opening).expect("opens").watched);
        let mut rx = store.subscribe();
        let (mut edits, mut direct) = (Vec::new(), Vec::new());
        for n in 1..=EDITS {
            let text = policy(statements, n);
            let started = Instant::now();
            std::fs::write(&file, &text).expect("write");
            loop {
                let c = rx.blocking_recv().expect("a change");
                if c.session == session && c.kind == "reload" {
                    break;
                }
                assert_ne!(c.kind, "invalid", "{:?}", c.errors);
            }
            edits.push(started.elapsed());
            assert!(
                leash_policy::compile::tables(&store.get(&session).expect("session").engine, "claude").files.len() == 4
            );
            let started = Instant::now();
            let e = Engine::load(&[Source { name: "direct".into(), text }]).expect("loads");
            let _ = leash_policy::compile::tables(&e, "claude");
            direct.push(started.elapsed());
        }
        let (e, d) = (median(edits), median(direct));
        println!(
            "  {statements:>3} statements: {:.1} ms (baseline: load + compile directly {:.1} ms; {:.2}x)",
            e.as_secs_f64() * 1e3,
            d.as_secs_f64() * 1e3,
            e.as_secs_f64() / d.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
