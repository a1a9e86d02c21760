//! `leashctl gc`: what a killed stack leaves behind is found and, when
//! asked, removed; a live stack's is never touched. A file of its own, so
//! that no other test's stack is between a kill and a restart while it runs.

use std::time::Duration;

use leash_testkit::{Stack, TEST_IMAGE, eventually, require_docker};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A stack with a detached session; its leashd's pid and the session id.
fn stack_with_a_session() -> (Stack, u32, String) {
    let mut stack = Stack::new();
    let leashd = stack.start_leashd_for_sessions();
    stack.wait_healthy(Duration::from_secs(10));
    let out = stack.leash(&["-d", "--image", TEST_IMAGE, "--", "sleep", "300"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let id = text(&out.stdout).trim().to_owned();
    stack.running_session(Duration::from_secs(10));
    (stack, leashd, id)
}

fn gc(stack: &Stack, args: &[&str]) -> Vec<serde_json::Value> {
    let out = stack.leashctl(&[&["gc", "--json"], args].concat());
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[test]
fn gc_removes_what_a_killed_stack_left_and_nothing_of_a_live_one() {
    if !require_docker("gc_removes_what_a_killed_stack_left_and_nothing_of_a_live_one") {
        return;
    }
    let (live, _, live_id) = stack_with_a_session();
    let (dead, leashd, dead_id) = stack_with_a_session();
    // Kill -9 every daemon of one stack: its session's container, cgroups,
    // session dir, BPF pins and sockets stay.
    let status = dead.status().unwrap();
    let mut pids: Vec<u32> =
        status["components"].as_array().unwrap().iter().filter_map(|c| c["pid"].as_u64().map(|p| p as u32)).collect();
    pids.push(leashd);
    for pid in &pids {
        leash_testkit::kill(*pid, rustix::process::Signal::KILL);
    }
    // Gone, or a zombie (leashd is this test's child until it is reaped).
    let running = |pid: &u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
    };
    eventually(Duration::from_secs(10), "the daemons gone", || (!pids.iter().any(running)).then_some(()));
    let pins = std::path::PathBuf::from("/sys/fs/bpf/leash").join(&dead.instance);
    let session_dir = dead.state_dir.join("sessions").join(&dead_id);
    assert!(pins.exists() && session_dir.exists(), "the dead stack left no pins or no session dir");
    let containers = dead.containers();
    assert_eq!(containers.len(), 1, "{containers:?}");

    // A dry run lists each, by kind, and removes nothing.
    let found = gc(&dead, &[]);
    let listed =
        |kind: &str, what: &str| found.iter().any(|l| l["kind"] == kind && l["what"].as_str().unwrap().contains(what));
    assert!(listed("pins", &pins.display().to_string()), "{found:?}");
    assert!(listed("container", &containers[0][..12]), "{found:?}");
    assert!(listed("cgroup", &format!("leash-{}", dead.instance)), "{found:?}");
    assert!(listed("session-dir", &session_dir.display().to_string()), "{found:?}");
    assert!(listed("socket", &dead.runtime_dir.display().to_string()), "{found:?}");
    assert!(found.iter().all(|l| l.get("outcome").is_none()), "{found:?}");
    assert!(pins.exists() && session_dir.exists() && dead.containers().len() == 1, "a dry run removed something");

    // Every instance's look: the live stack is in none of it.
    let everyone = gc(&dead, &["--all"]);
    let mentions_live = |l: &serde_json::Value| {
        l["what"].as_str().unwrap().contains(&live.instance) || l["what"].as_str().unwrap().contains(&live_id)
    };
    assert!(!everyone.iter().any(mentions_live), "{everyone:?}");

    // --yes removes it all.
    let removed = gc(&dead, &["--yes"]);
    assert!(!removed.is_empty() && removed.iter().all(|l| l["outcome"] == "removed"), "{removed:?}");
    assert!(!pins.exists() && !session_dir.exists(), "pins or session dir still there");
    assert!(dead.containers().is_empty(), "the container is still there");
    let cgroups: Vec<String> =
        removed.iter().filter(|l| l["kind"] == "cgroup").map(|l| l["what"].to_string()).collect();
    assert!(!cgroups.is_empty(), "{removed:?}");
    assert!(gc(&dead, &[]).is_empty(), "something left after --yes");

    // A live instance's session dir that its leashd does not know (and
    // that is over a minute old) is over; its running session's is not.
    let stray = live.state_dir.join("sessions").join("0123456789abcdef");
    std::fs::create_dir_all(&stray).unwrap();
    let touched = std::process::Command::new("touch").args(["-d", "2 minutes ago"]).arg(&stray).status().unwrap();
    assert!(touched.success());
    let found = gc(&live, &[]);
    let dirs: Vec<&str> =
        found.iter().filter(|l| l["kind"] == "session-dir").map(|l| l["what"].as_str().unwrap()).collect();
    assert_eq!(dirs, [stray.to_str().unwrap()], "{found:?}");
    assert!(found.iter().all(|l| l["kind"] == "session-dir"), "nothing else of a live stack: {found:?}");
    gc(&live, &["--yes"]);
    assert!(!stray.exists() && live.state_dir.join("sessions").join(&live_id).exists());

    // The live stack goes on: its session, its pins.
    let sessions: serde_json::Value = serde_json::from_slice(&live.leashctl(&["sessions", "--json"]).stdout).unwrap();
    assert_eq!(sessions[0]["id"], live_id.as_str(), "{sessions}");
    assert!(std::path::Path::new("/sys/fs/bpf/leash").join(&live.instance).exists());
    live.leashctl(&["sessions", "stop", &live_id]);
    eventually(Duration::from_secs(20), "the live session gone", || live.containers().is_empty().then_some(()));
}
