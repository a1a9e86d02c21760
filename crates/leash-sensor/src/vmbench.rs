//! `leash-sensor --vm-bench`: the tiers' cost where both can run, in the
//! VM that `cargo xtask bench lsm` boots (these machines' kernel refuses
//! BPF LSM). A child process in a cgroup of its own runs each workload
//! ungoverned, governed by the LSM tier, and governed by the fallback tier
//! (fanotify, with its cache in the kernel), the three interleaved, several
//! rounds; it prints `VMBENCH <workload> <tier> <round> <nanoseconds>`
//! lines, which xtask turns into medians and ratios.
//!
//! The tables are a thousand-rule policy (the rules name paths the
//! workloads never touch, so every decision is a lookup that allows). The
//! fallback tier here is fanotify alone: a session's creating opens also
//! pass its supervised calls, which this process does not install, so the
//! fallback tier's new-file numbers here are a lower bound.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use leash_core::Mode;
use leash_core::tables::{FileAction, NetTable, PathTable, Tables, Verdict};

use crate::{LsmFiles, Shared, fan, probe};

/// The hidden flag for the benchmark (the VM's init runs it).
pub const VM_BENCH_FLAG: &str = "--vm-bench";
/// The hidden flag of the benchmark's child: `--bench-child WORKLOAD DIR`.
pub const CHILD_FLAG: &str = "--bench-child";

/// Each workload: its name and what it does (sized for TCG).
const WORKLOADS: [&str; 4] = ["same-file", "distinct-files", "new-files", "fork-exec"];
const ROUNDS: usize = 5;
const SAME_FILE_OPENS: usize = 20_000;
const DISTINCT_FILES: usize = 1_000;
const DISTINCT_PASSES: usize = 20;
const NEW_FILES: usize = 10_000;
const EXECS: usize = 300;

/// The child: after "go" on stdin, runs `workload` in `dir` and prints the
/// nanoseconds it took.
pub fn child(workload: &str, dir: &Path) -> ExitCode {
    let mut go = String::new();
    let _ = std::io::stdin().lock().read_line(&mut go);
    let start = Instant::now();
    let done = match workload {
        "same-file" => (0..SAME_FILE_OPENS).try_for_each(|_| std::fs::File::open(dir.join("same")).map(drop)),
        "distinct-files" => (0..DISTINCT_PASSES).try_for_each(|_| {
            (0..DISTINCT_FILES).try_for_each(|i| std::fs::File::open(dir.join(format!("d/{i}"))).map(drop))
        }),
        "new-files" => (|| {
            let new = dir.join("new");
            std::fs::create_dir_all(&new)?;
            for i in 0..NEW_FILES {
                std::fs::write(new.join(i.to_string()), b"x")?;
            }
            for i in 0..NEW_FILES {
                std::fs::read(new.join(i.to_string()))?;
            }
            std::fs::remove_dir_all(&new)
        })(),
        "fork-exec" => (0..EXECS).try_for_each(|_| {
            std::process::Command::new("/bin/true")
                .status()
                .and_then(|s| if s.success() { Ok(()) } else { Err(std::io::Error::other(format!("/bin/true: {s}"))) })
        }),
        other => Err(std::io::Error::other(format!("no workload {other}"))),
    };
    let took = start.elapsed().as_nanos();
    match done {
        Ok(()) => {
            #[allow(clippy::print_stdout, reason = "the child's answer")]
            {
                println!("{took}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            #[allow(clippy::print_stdout, reason = "the child's answer")]
            {
                println!("failed: {e}");
            }
            ExitCode::from(1)
        }
    }
}

/// A thousand rules over paths the workloads never touch, and a default
/// that allows.
fn tables(dir: &Path) -> Tables {
    let allow = Verdict::new(true, 0);
    let mut files = BTreeMap::new();
    for action in FileAction::ALL {
        let mut t = PathTable { default: Some(allow), ..Default::default() };
        for i in 0..900 {
            t.exact.insert(format!("{}/nowhere/file-{i}", dir.display()), Verdict::new(false, 1));
        }
        for i in 0..100 {
            t.prefixes.insert(format!("{}/nowhere/dir-{i}/", dir.display()), Verdict::new(false, 1));
        }
        files.insert(action, t);
    }
    Tables {
        generation: 1,
        files,
        net: NetTable { default_v4: Some(allow), default_v6: Some(allow), ..Default::default() },
        reasons: vec![vec!["bench-allow".into()], vec!["bench-forbid".into()]],
        ..Default::default()
    }
}

/// How a run is governed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    Ungoverned,
    Lsm,
    Fallback,
}

impl Tier {
    fn name(self) -> &'static str {
        match self {
            Tier::Ungoverned => "ungoverned",
            Tier::Lsm => "bpf-lsm",
            Tier::Fallback => "fallback",
        }
    }
}

/// One run of `workload` on `tier`: its nanoseconds.
fn once(shared: &Arc<Shared>, dir: &Path, workload: &str, tier: Tier) -> Result<u128, String> {
    let kernel = shared.kernel.as_ref().ok_or("the kernel programs are not loaded")?;
    let n = shared.next_slot.fetch_add(1, Ordering::Relaxed);
    let cgroup = kernel.cgroup.join(format!("bench-{n}"));
    std::fs::create_dir_all(&cgroup).map_err(|e| format!("{}: {e}", cgroup.display()))?;
    let cgroup_id = std::fs::metadata(&cgroup).map_err(|e| e.to_string())?.ino();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(exe)
        .arg(CHILD_FLAG)
        .arg(workload)
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the benchmark's child: {e}"))?;
    let result = (|| -> Result<u128, String> {
        std::fs::write(cgroup.join("cgroup.procs"), child.id().to_string()).map_err(|e| e.to_string())?;
        let tables = Arc::new(tables(dir));
        let mut written = None;
        let mut decider = None;
        if tier != Tier::Ungoverned {
            let actions = if tier == Tier::Lsm { shared.lsm_actions(&tables) } else { 0 };
            let ids = std::sync::Mutex::default();
            let files = LsmFiles { actions, root: Path::new("/"), identities: Some(&ids) };
            written = Some(shared.apply(cgroup_id, &tables, Mode::Enforce, false, &Default::default(), &files)?);
            let events = fan::events_for(actions);
            if !events.is_empty() {
                let rel = format!(
                    "/{}",
                    cgroup
                        .strip_prefix(crate::bpf::cgroup2_root().map_err(|e| e.to_string())?)
                        .map_err(|e| e.to_string())?
                        .display()
                );
                let (group, _, _) = fan::create_group(&fan::Marks::Paths(vec!["/".into(), dir.to_path_buf()]), events)
                    .map_err(|e| format!("{e:#}"))?;
                let l = fan::Loop {
                    session: "bench".into(),
                    cgroup: rel,
                    governed: Arc::new(RwLock::new(fan::Governed { tables: tables.clone(), mode: Mode::Enforce })),
                    evaluate: Arc::new(|_, _| None),
                    stop: Default::default(),
                    cache: true,
                    ask: None,
                };
                decider = Some(fan::spawn(l, group).map_err(|e| format!("{e:#}"))?);
            }
        }
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        writeln!(stdin, "go").map_err(|e| e.to_string())?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        drop(decider);
        if let Some((_, w)) = written {
            kernel.maps.remove_session(cgroup_id);
            kernel.maps.clear(&w);
        }
        line.trim().parse::<u128>().map_err(|_| format!("{workload} on {}: {}", tier.name(), line.trim()))
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir(&cgroup);
    result
}

/// In the guest: runs every workload on every tier, interleaved, and
/// prints `VMBENCH` lines; the last one says `done` or why not.
pub fn vm_bench() -> ExitCode {
    #[allow(clippy::print_stdout, reason = "the guest reports on its console")]
    fn say(line: &str) {
        println!("VMBENCH {line}");
    }
    let fail = |why: String| {
        say(&format!("FAILED {why}"));
        ExitCode::from(1)
    };
    let lsm = crate::bpf::probe_lsm();
    let Ok(root) = crate::bpf::cgroup2_root() else { return fail("no cgroup2".into()) };
    let pins = Path::new("/sys/fs/bpf/leash/bench");
    let kernel = match crate::bpf::load(&root.join("leash-bench"), pins, lsm.is_ok()) {
        Ok(k) => k,
        Err(e) => return fail(format!("programs: {e:#}")),
    };
    let attached = kernel.links.iter().any(|(n, _)| n.starts_with("leash_lsm_"));
    let caps = probe::decide(Ok(()), lsm, attached, probe::fanotify());
    say(&format!("tier {}", caps.tier));
    if caps.tier != "lsm" {
        return fail("the LSM tier is not available in this guest".into());
    }
    let shared = crate::selftest::bare(kernel, caps, attached);
    let dir = PathBuf::from("/tmp/leash-bench");
    let made = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(dir.join("d"))?;
        std::fs::write(dir.join("same"), "same\n")?;
        for i in 0..DISTINCT_FILES {
            std::fs::write(dir.join(format!("d/{i}")), "x")?;
        }
        Ok(())
    })();
    if let Err(e) = made {
        return fail(format!("{}: {e}", dir.display()));
    }
    for round in 0..ROUNDS {
        for workload in WORKLOADS {
            // The order of the tiers turns each round, so none always goes first.
            let mut tiers = [Tier::Ungoverned, Tier::Lsm, Tier::Fallback];
            tiers.rotate_left(round % 3);
            for tier in tiers {
                match once(&shared, &dir, workload, tier) {
                    Ok(ns) => say(&format!("{workload} {} {round} {ns}", tier.name())),
                    Err(e) => return fail(e),
                }
            }
        }
    }
    drop(shared);
    crate::bpf::unpin_all(pins);
    say("done");
    ExitCode::SUCCESS
}
