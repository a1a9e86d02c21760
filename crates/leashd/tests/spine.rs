//! The spine, end to end: the built daemons in a private runtime dir, driven
//! through `leashctl` and real sockets.

use std::os::unix::process::CommandExt;
use std::time::Duration;

use leash_testkit::{Stack, alive, eventually, kill, mode, require_root, set_mode};
use rustix::process::Signal;
use serde_json::Value;

const COMPONENTS: [&str; 3] = ["leash-policy", "leash-sensor", "leash-proxy"];

fn pid_of(status: &Value, name: &str) -> u32 {
    Stack::component(status, name)["pid"].as_u64().expect("pid") as u32
}

#[test]
fn leashctl_status_lists_all_four_daemons_healthy() {
    if !require_root("leashctl_status_lists_all_four_daemons_healthy") {
        return;
    }
    let mut stack = Stack::new();
    let leashd = stack.start_leashd();
    let status = stack.wait_healthy(Duration::from_secs(10));
    assert_eq!(status["leashd"]["pid"], leashd);
    assert_eq!(status["leashd"]["version"], leash_core::VERSION);
    assert_eq!(status["leashd"]["instance"].as_str(), Some(stack.instance.as_str()));
    assert_eq!(status["sessions"], 0);
    for name in COMPONENTS {
        let c = Stack::component(&status, name);
        assert_eq!(c["version"], leash_core::VERSION, "{c}");
        assert_eq!(c["restarts"], 0, "{c}");
        assert_eq!(c["spawned"], true, "{c}");
        assert!(alive(c["pid"].as_u64().unwrap() as u32), "{c}");
        assert!(c["socket"].as_str().unwrap().starts_with(stack.runtime_dir.to_str().unwrap()), "{c}");
        // Each daemon's resident memory, as the kernel counts it.
        let rss = c["rss_bytes"].as_u64().unwrap_or(0);
        assert!((1 << 20..1 << 30).contains(&rss), "{c}");
        // Its share, shared pages divided: never more than what is resident.
        let pss = c["pss_bytes"].as_u64().unwrap_or(0);
        assert!((1 << 20..=rss).contains(&pss), "{c}");
    }
    assert!((1u64 << 20..1 << 30).contains(&status["leashd"]["rss_bytes"].as_u64().unwrap_or(0)), "{status}");
    assert_eq!(Stack::component(&status, "leash-policy")["facts"]["policies"], "9");
    // leashd reaches the container engine (CI starts dockerd).
    let engine = status["host"]["engine"].as_str().unwrap_or_default();
    if leash_testkit::must_run() {
        assert!(engine.contains("(API "), "engine: {engine}");
    }

    let human = stack.leashctl(&["status"]);
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    for needle in ["leashd", "leash-policy", "leash-sensor", "leash-proxy", "running", "sessions 0", "events"] {
        assert!(text.contains(needle), "status output lacks {needle:?}:\n{text}");
    }
    // Lifecycle events are in the hub.
    let evs = stack.events();
    assert_eq!(evs[0]["action"], "daemon.start", "{evs:?}");
    for name in COMPONENTS {
        assert!(evs.iter().any(|e| e["action"] == "component.ready" && e["resource"] == name), "{evs:?}");
    }
}

#[test]
fn killed_components_restart_alone_and_are_counted() {
    if !require_root("killed_components_restart_alone_and_are_counted") {
        return;
    }
    let mut stack = Stack::new();
    stack.start_leashd();
    let mut status = stack.wait_healthy(Duration::from_secs(10));
    for (i, victim) in COMPONENTS.iter().enumerate() {
        let before: Vec<u32> = COMPONENTS.iter().map(|n| pid_of(&status, n)).collect();
        kill(before[i], Signal::KILL);
        // Healthy again within 2 s, with a new pid and the restart counted.
        status = eventually(Duration::from_secs(2), "the killed component to be back", || {
            stack.status().filter(|s| {
                let c = Stack::component(s, victim);
                c["state"] == "running" && c["pid"] != before[i] && c["restarts"] == 1
            })
        });
        for (j, other) in COMPONENTS.iter().enumerate() {
            if j != i {
                assert_eq!(pid_of(&status, other), before[j], "{other} was disturbed by killing {victim}");
            }
        }
        assert_eq!(stack.processes(victim).len(), 1, "exactly one {victim}");
        // The supervisor went through exit → restart, and said so.
        let evs = stack.events();
        let exit = evs.iter().position(|e| e["action"] == "component.exit" && e["resource"] == *victim);
        let exit = exit.unwrap_or_else(|| panic!("no exit event for {victim}: {evs:?}"));
        assert_eq!(evs[exit]["pid"], before[i]);
        assert!(evs[exit]["details"]["exit"].as_str().unwrap().contains("signal 9"), "{:?}", evs[exit]);
        assert!(evs[exit..].iter().any(|e| e["action"] == "component.ready" && e["resource"] == *victim));
    }
    let text = String::from_utf8_lossy(&stack.leashctl(&["status"]).stdout).to_string();
    assert!(text.contains("RESTARTS"), "{text}");
}

#[test]
fn events_follow_streams_lifecycle_events_as_they_happen() {
    if !require_root("events_follow_streams_lifecycle_events_as_they_happen") {
        return;
    }
    use std::io::{BufRead, BufReader};
    let mut stack = Stack::new();
    stack.start_leashd();
    let status = stack.wait_healthy(Duration::from_secs(10));
    let mut follower = stack
        .command("leashctl")
        .args(["events", "--follow", "--json", "--tail", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    // The tail first: exactly one recent event.
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    eventually(Duration::from_secs(2), "the follower to be counted", || {
        stack.status().filter(|s| s["events"]["subscribers"] == 1)
    });
    let proxy = pid_of(&status, "leash-proxy");
    kill(proxy, Signal::KILL);
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let e: Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert!(e["seq"].as_u64() > first["seq"].as_u64(), "{e}");
        assert_eq!(e["kind"], "daemon");
        let done = e["action"] == "component.ready" && e["resource"] == "leash-proxy";
        seen.push(e);
        if done {
            break;
        }
    }
    assert_eq!(seen[0]["action"], "component.exit", "{seen:?}");
    assert_eq!(seen[0]["pid"], proxy, "{seen:?}");
    // leashd ends the stream when it stops.
    let out = stack.leashctl(&["stop", "--all"]);
    assert!(out.status.success(), "{out:?}");
    let exit = eventually(Duration::from_secs(5), "the follower to end", || follower.try_wait().unwrap());
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn a_restarted_leashd_adopts_running_components() {
    if !require_root("a_restarted_leashd_adopts_running_components") {
        return;
    }
    let mut stack = Stack::new();
    let first = stack.start_leashd();
    let status = stack.wait_healthy(Duration::from_secs(10));
    let pids: Vec<u32> = COMPONENTS.iter().map(|n| pid_of(&status, n)).collect();
    // Count a restart before leashd dies: the counter must survive it.
    kill(pids[0], Signal::KILL);
    let status = eventually(Duration::from_secs(2), "policy restarted", || {
        stack.status().filter(|s| {
            Stack::component(s, "leash-policy")["restarts"] == 1
                && Stack::component(s, "leash-policy")["state"] == "running"
        })
    });
    let pids: Vec<u32> = COMPONENTS.iter().map(|n| pid_of(&status, n)).collect();

    kill(first, Signal::KILL);
    stack.wait_leashd(Duration::from_secs(2));
    let second = stack.start_leashd();
    let status = stack.wait_healthy(Duration::from_secs(10));
    assert_eq!(status["leashd"]["pid"], second);
    for (name, pid) in COMPONENTS.iter().zip(&pids) {
        let c = Stack::component(&status, name);
        assert_eq!(c["pid"], *pid, "{name} was not adopted: {c}");
        assert_eq!(c["spawned"], false, "{c}");
        assert_eq!(stack.processes(name), vec![*pid], "duplicate {name}");
    }
    assert_eq!(Stack::component(&status, "leash-policy")["restarts"], 1);
    assert_eq!(stack.processes("leashd"), vec![second]);

    // An adopted component that dies is noticed (pidfd) and restarted.
    kill(pids[1], Signal::KILL);
    eventually(Duration::from_secs(2), "adopted sensor restarted", || {
        stack.status().filter(|s| {
            let c = Stack::component(s, "leash-sensor");
            c["state"] == "running" && c["pid"] != pids[1] && c["restarts"] == 1
        })
    });
}

#[test]
fn events_are_stored_across_leashd_restarts_and_queried() {
    if !require_root("events_are_stored_across_leashd_restarts_and_queried") {
        return;
    }
    let mut stack = Stack::new();
    let first = stack.start_leashd();
    stack.wait_healthy(Duration::from_secs(10));
    kill(first, Signal::KILL);
    stack.wait_leashd(Duration::from_secs(2));
    let second = stack.start_leashd();
    stack.wait_healthy(Duration::from_secs(10));
    let starts = |args: &[&str]| -> Vec<Value> {
        let mut all = vec!["events", "--json", "--action", "daemon.start"];
        all.extend_from_slice(args);
        let out = stack.leashctl(&all);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    // Both runs' starts, from the audit store (the first leashd's memory is gone).
    let both = eventually(Duration::from_secs(5), "both starts stored", || {
        let e = starts(&[]);
        (e.iter().filter(|e| e["resource"] == "leashd").count() == 2).then_some(e)
    });
    let leashd: Vec<&Value> = both.iter().filter(|e| e["resource"] == "leashd").collect();
    assert_eq!(
        (leashd[0]["pid"].as_u64(), leashd[1]["pid"].as_u64()),
        (Some(u64::from(first)), Some(u64::from(second)))
    );
    // Filters: --contains, --since, --tail; --export jsonl.
    assert_eq!(
        starts(&["--contains", "leash-policy"]).len(),
        starts(&[]).iter().filter(|e| e["resource"] == "leash-policy").count()
    );
    assert!(starts(&["--since", "1h"]).len() >= 2);
    assert!(starts(&["--since", "2999-01-01T00:00:00Z"]).is_empty());
    assert_eq!(starts(&["--tail", "1"]).len(), 1);
    let bad = stack.leashctl(&["events", "--since", "yesterday"]);
    assert_eq!(bad.status.code(), Some(64), "{bad:?}");
    let export = stack.leashctl(&["events", "--export", "jsonl", "--action", "daemon.start"]);
    let lines: Vec<Value> =
        String::from_utf8_lossy(&export.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), starts(&[]).len());
    assert!(stack.state_dir.join("audit/events.db").exists());
}

/// Starts leashd, waits until all are healthy, stops leashd with SIGTERM
/// (as `systemctl stop` does) and checks that the components outlive it;
/// their pids.
fn healthy_then_sigterm(stack: &mut Stack) -> Vec<u32> {
    let first = stack.start_leashd();
    let status = stack.wait_healthy(Duration::from_secs(10));
    let pids: Vec<u32> = COMPONENTS.iter().map(|n| pid_of(&status, n)).collect();
    kill(first, Signal::TERM);
    assert_eq!(stack.wait_leashd(Duration::from_secs(6)), Some(0), "leashd exits 0 on SIGTERM");
    assert!(!stack.runtime_dir.join("leashd.sock").exists(), "leashd removed its socket");
    for pid in &pids {
        assert!(alive(*pid), "component {pid} died with leashd");
    }
    pids
}

#[test]
fn sigterm_stops_leashd_alone_and_stop_all_stops_everything() {
    if !require_root("sigterm_stops_leashd_alone_and_stop_all_stops_everything") {
        return;
    }
    let mut stack = Stack::new();
    let pids = healthy_then_sigterm(&mut stack);
    let out = stack.leashctl(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("leashd is not running"), "{out:?}");

    let second = stack.start_leashd();
    let status = stack.wait_healthy(Duration::from_secs(10));
    let adopted: Vec<u32> = COMPONENTS.iter().map(|n| pid_of(&status, n)).collect();
    assert_eq!(adopted, pids);

    // A second leashd on the same runtime dir refuses, naming the owner.
    let out = stack.command("leashd").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("pid {second}")) && err.contains("already serving"), "{err}");
    // ... and so does a second component.
    let out = stack.command("leash-policy").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already serving"));

    let out = stack.leashctl(&["stop", "--all"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for name in COMPONENTS {
        assert!(text.contains(&format!("stopped {name}")), "{text}");
    }
    assert_eq!(stack.wait_leashd(Duration::from_secs(6)), Some(0));
    eventually(Duration::from_secs(5), "every process gone", || stack.all_processes().is_empty().then_some(()));
    let sockets: Vec<_> = std::fs::read_dir(&stack.runtime_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "sock"))
        .collect();
    assert!(sockets.is_empty(), "sockets left behind: {sockets:?}");
}

/// `systemctl stop leashd` stops leashd alone; `leashctl stop --all` then
/// stops the components it left, without a leashd to ask.
#[test]
fn stop_all_stops_the_components_a_stopped_leashd_left() {
    if !require_root("stop_all_stops_the_components_a_stopped_leashd_left") {
        return;
    }
    let mut stack = Stack::new();
    let pids = healthy_then_sigterm(&mut stack);

    let out = stack.leashctl(&["stop", "--all"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for (name, pid) in COMPONENTS.iter().zip(&pids) {
        assert!(text.contains(&format!("stopped {name} (pid {pid})")), "{text}");
    }
    assert!(text.contains("leashd was not running"), "{text}");
    eventually(Duration::from_secs(5), "every process gone", || stack.all_processes().is_empty().then_some(()));
    // Stopped, not killed: each removed its own socket.
    for name in COMPONENTS {
        let sock = stack.runtime_dir.join(format!("{}.sock", name.trim_start_matches("leash-")));
        assert!(!sock.exists(), "{} left behind", sock.display());
    }
    // Nothing left to stop: said, and still a success.
    let out = stack.leashctl(&["stop", "--all"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "leashd was not running");

    // A lock file that names another process (held, with that process's
    // pid in it) does not get that process signalled.
    let lock = stack.runtime_dir.join("proxy.lock");
    let _ = std::fs::remove_file(&lock);
    let mut holder = std::process::Command::new("flock")
        .arg(&lock)
        .args(["sh", "-c", "echo $$ > \"$0\" && exec sleep 60"])
        .arg(&lock)
        .spawn()
        .expect("flock (util-linux)");
    let pid = eventually(Duration::from_secs(5), "the lock file names the sleeper", || {
        std::fs::read_to_string(&lock).ok()?.trim().parse::<u32>().ok()
    });
    let out = stack.leashctl(&["stop", "--all"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("not stopping pid {pid}, which holds leash-proxy's lock: it is sleep")), "{text}");
    assert!(alive(pid), "the process the lock file named was signalled");
    kill(pid, Signal::KILL);
    let _ = holder.wait();
}

#[test]
fn sockets_have_the_specified_permissions_and_other_uids_are_refused() {
    if !require_root("sockets_have_the_specified_permissions_and_other_uids_are_refused") {
        return;
    }
    let mut stack = Stack::new();
    stack.start_leashd();
    stack.wait_healthy(Duration::from_secs(10));
    let dir_mode = mode(&stack.runtime_dir);
    let has_group = std::fs::read_to_string("/etc/group").unwrap().lines().any(|l| l.starts_with("leash:"));
    assert_eq!(dir_mode, if has_group { 0o750 } else { 0o700 });
    assert_eq!(mode(&stack.runtime_dir.join("leashd.sock")), 0o660);
    for c in ["policy", "sensor", "proxy"] {
        assert_eq!(mode(&stack.runtime_dir.join(format!("{c}.sock"))), 0o600, "{c}");
    }

    let as_nobody = |args: &[&str]| stack.command("leashctl").args(args).uid(65534).gid(65534).output().unwrap();
    // The directory keeps other users out entirely.
    let out = as_nobody(&["status"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"), "{out:?}");

    // With the file permissions opened up, the daemons still check the
    // caller's credentials: components serve root only...
    set_mode(&stack.runtime_dir, 0o755);
    let policy = stack.runtime_dir.join("policy.sock");
    set_mode(&policy, 0o666);
    let out = as_nobody(&["hello", "--socket", policy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("root only"), "{out:?}");
    // ... and leashd lets anyone who can connect read, but not stop.
    set_mode(&stack.runtime_dir.join("leashd.sock"), 0o666);
    let out = as_nobody(&["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let out = as_nobody(&["stop", "--all"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs root"), "{out:?}");
    assert!(stack.status().is_some(), "leashd still serves");
    assert_eq!(stack.all_processes().len(), 4);
}

#[test]
fn malformed_input_is_refused_and_the_daemons_keep_serving() {
    if !require_root("malformed_input_is_refused_and_the_daemons_keep_serving") {
        return;
    }
    use leash_proto::v1::handshake_client::HandshakeClient;
    use leash_proto::v1::policy_client::PolicyClient;
    use leash_proto::v1::{HelloRequest, PolicyStatusRequest};

    let mut stack = Stack::new();
    stack.start_leashd();
    let before = stack.wait_healthy(Duration::from_secs(10));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for sock in ["leashd.sock", "policy.sock"] {
        let path = stack.runtime_dir.join(sock);
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            // A garbage byte stream: the connection is dropped, nothing else.
            let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
            s.write_all(b"GET / HTTP/1.0\r\n\r\n\x00\x01\x02garbage\xff\xfe").await.unwrap();
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;

            let conn = leash_daemon::connect(&path, "test").await.unwrap();
            // An unknown method: leashd serves no Policy service.
            if sock == "leashd.sock" {
                let err = PolicyClient::new(conn.channel.clone()).status(PolicyStatusRequest {}).await.unwrap_err();
                assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");
            }
            // An oversized message.
            let big = HelloRequest { client: "x".repeat(5 << 20), version: String::new(), protocol: 1 };
            let err = HandshakeClient::new(conn.channel.clone()).hello(big).await.unwrap_err();
            assert!(matches!(err.code(), tonic::Code::ResourceExhausted | tonic::Code::OutOfRange), "{err}");
            // A client of another protocol gets a message naming both versions.
            let old = HelloRequest { client: "leashctl".into(), version: "0.0.1".into(), protocol: 999 };
            let err = HandshakeClient::new(conn.channel.clone()).hello(old).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::FailedPrecondition);
            assert!(err.message().contains("protocol 999") && err.message().contains("protocol 1"), "{err}");
            // Still serving on a fresh connection.
            leash_daemon::connect(&path, "test").await.unwrap();
        });
    }
    let after = stack.wait_healthy(Duration::from_secs(5));
    // Each refusal left a trace in the log (components log to leashd's stderr).
    let log = stack.leashd_log(0);
    assert_eq!(log.matches("invalid preface").count(), 2, "{log}");
    assert!(log.contains("call failed path=\"/leash.v1.Policy/Status\" code=Unimplemented"), "{log}");
    assert!(
        log.matches("call failed path=\"/leash.v1.Handshake/Hello\" code=FailedPrecondition").count() == 2,
        "{log}"
    );
    for name in COMPONENTS {
        assert_eq!(pid_of(&after, name), pid_of(&before, name));
        assert_eq!(Stack::component(&after, name)["restarts"], 0);
    }
}

#[test]
fn leashd_notifies_systemd_ready_mainpid_and_stopping() {
    if !require_root("leashd_notifies_systemd_ready_mainpid_and_stopping") {
        return;
    }
    let mut stack = Stack::new();
    let notify_path = stack.root().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let pid = stack.start_leashd_with(|c| {
        c.env("NOTIFY_SOCKET", &notify_path);
    });
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("READY notification");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    let lines: Vec<&str> = msg.lines().collect();
    assert!(lines.contains(&"READY=1"), "{msg}");
    assert!(lines.contains(&format!("MAINPID={pid}").as_str()), "{msg}");
    // READY means the socket answers.
    assert!(stack.status().is_some());
    stack.wait_healthy(Duration::from_secs(10));
    kill(pid, Signal::TERM);
    let n = notify.recv(&mut buf).expect("STOPPING notification");
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "STOPPING=1");
    assert_eq!(stack.wait_leashd(Duration::from_secs(6)), Some(0));
}

#[test]
fn bad_configuration_exits_64_before_touching_anything() {
    let stack = Stack::new();
    let out = stack.command("leashd").env("LEASH_LOG", "/log/events.log").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("looks like a file path"), "{out:?}");
    let out = stack.command("leashd").env("LEASH_RUNTIME_DIR", "relative/dir").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be an absolute path"), "{out:?}");
    let out = stack.command("leashd").args(["--config", "/nonexistent/config.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/config.toml does not exist"), "{out:?}");
    let out = stack.command("leashd").arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let out = stack.leashctl(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(!stack.runtime_dir.exists(), "nothing was created");
}
