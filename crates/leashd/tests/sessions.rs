//! Sessions, end to end: real Docker, the test image, the static
//! leash-entry, driven through `leash` as a user would.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Output, Stdio};
use std::time::Duration;

use leash_testkit::pty::Pty;
use leash_testkit::{Stack, TEST_IMAGE, eventually, require_docker, set_mode};

fn stack() -> Stack {
    let mut s = Stack::new();
    s.start_leashd_for_sessions();
    s.wait_healthy(Duration::from_secs(10));
    s
}

fn run(stack: &Stack, args: &[&str]) -> Output {
    let mut full = vec!["--image", TEST_IMAGE];
    full.extend_from_slice(args);
    stack.leash(&full).output().expect("run leash")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits until the stack's first session runs (released); its id.
fn running_session(stack: &Stack) -> String {
    stack.running_session(Duration::from_secs(10)).0
}

fn nothing_left(stack: &Stack) {
    eventually(Duration::from_secs(10), "containers removed", || stack.containers().is_empty().then_some(()));
    // A session leaves the list last, once everything of it is torn down.
    eventually(Duration::from_secs(10), "no session listed", || {
        stack.leashctl(&["sessions", "--json"]).stdout.starts_with(b"[]").then_some(())
    });
    let sessions = stack.state_dir.join("sessions");
    let left: Vec<_> =
        std::fs::read_dir(&sessions).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "session dirs left: {left:?}");
}

#[test]
fn exit_codes_pass_through() {
    if !require_docker("exit_codes_pass_through") {
        return;
    }
    let stack = stack();
    for (script, code) in [("exit 0", 0), ("exit 7", 7), ("kill -9 $$", 137), ("kill -TERM $$", 143)] {
        let out = run(&stack, &["--", "sh", "-c", script]);
        assert_eq!(out.status.code(), Some(code), "{script}: {out:?}");
    }
    let out = run(&stack, &["--", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(text(&out.stderr).contains("leash-entry: cannot run no-such-command"), "{out:?}");
    // A file that is not executable.
    std::fs::write(stack.project().join("data.txt"), "x").unwrap();
    let out = run(&stack, &["--", "./data.txt"]);
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    nothing_left(&stack);
}

#[test]
fn stdout_stderr_and_stdin_are_relayed() {
    if !require_docker("stdout_stderr_and_stdin_are_relayed") {
        return;
    }
    let stack = stack();
    let out = run(&stack, &["--", "sh", "-c", "echo to-out; echo to-err >&2; echo more-out"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "to-out\nmore-out\n");
    assert_eq!(text(&out.stderr), "to-err\n");

    let mut child = stack
        .command("leash")
        .args(["--image", TEST_IMAGE, "--", "sh", "-c", "cat; echo done"])
        .current_dir(stack.project())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello\nworld\n").unwrap();
    drop(stdin); // EOF reaches cat, so it ends.
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "hello\nworld\ndone\n");
    nothing_left(&stack);
}

#[test]
fn files_written_in_the_project_belong_to_the_caller() {
    if !require_docker("files_written_in_the_project_belong_to_the_caller") {
        return;
    }
    let stack = stack();
    // Let uid 4321 reach leashd (as a member of the leash group would).
    set_mode(&stack.runtime_dir, 0o755);
    set_mode(&stack.runtime_dir.join("leashd.sock"), 0o666);
    let project = stack.project();
    std::os::unix::fs::chown(&project, Some(4321), Some(4321)).unwrap();
    // A mount below HOME makes the engine create HOME as root: leash-entry
    // hands it to the user. Supplementary groups come along.
    let data = stack.root().join("home-data");
    std::fs::create_dir_all(&data).unwrap();
    let vol = format!("{}:/home/user4321/data", data.display());
    let leash_bin = stack.bin_dir.join("leash");
    let script = "id -u; id -G; echo $HOME; echo hi > made-here.txt; touch $HOME/ok && echo home-writable";
    let out = stack
        .command("setpriv")
        .args(["--reuid=4321", "--regid=4321", "--groups=4321,777", "--"])
        .arg(&leash_bin)
        .args(["--image", TEST_IMAGE, "-v", &vol, "--", "sh", "-c", script])
        .current_dir(&project)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), "4321\n4321 777\n/home/user4321\nhome-writable\n");
    let meta = std::fs::metadata(project.join("made-here.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4321, 4321));
    // --root is for root only.
    let out = stack.leash(&["--image", TEST_IMAGE, "--root", "--", "true"]).uid(4321).gid(4321).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("--root is only for callers who are root"), "{out:?}");
    nothing_left(&stack);
}

#[test]
fn env_volumes_and_image_flags() {
    if !require_docker("env_volumes_and_image_flags") {
        return;
    }
    let stack = stack();
    let data = stack.root().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f.txt"), "from-host\n").unwrap();
    let vol = format!("{}:/data:ro", data.display());
    let out = stack
        .leash(&[
            "--image",
            TEST_IMAGE,
            "-e",
            "FOO=bar",
            "-e",
            "FROM_HOST",
            "-v",
            &vol,
            "--",
            "sh",
            "-c",
            "echo $FOO $FROM_HOST; cat /data/f.txt; touch /data/x",
        ])
        .env("FROM_HOST", "passed")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "the read-only mount refuses writes: {out:?}");
    assert_eq!(text(&out.stdout), "bar passed\nfrom-host\n");
    assert!(text(&out.stderr).contains("Read-only file system"), "{out:?}");

    // LEASH_TARGET_IMAGE names the image; --image wins over it.
    let out = stack.leash(&["--", "true"]).env("LEASH_TARGET_IMAGE", TEST_IMAGE).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = stack
        .leash(&["--image", "leash-no-such-image:latest", "--", "true"])
        .env("LEASH_TARGET_IMAGE", TEST_IMAGE)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("image leash-no-such-image:latest not found locally")
            && err.contains("cargo xtask image no-such-image"),
        "{err}"
    );
    nothing_left(&stack);
}

#[test]
fn api_keys_are_forwarded_per_agent_and_env_overrides() {
    if !require_docker("api_keys_are_forwarded_per_agent_and_env_overrides") {
        return;
    }
    let stack = stack();
    let project = stack.project();
    let keys = ["ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "DASHSCOPE_API_KEY"];
    for agent in ["claude", "codex", "gemini", "qwen", "opencode", "other"] {
        let script = project.join(agent);
        std::fs::write(&script, format!("#!/bin/sh\necho {}\n", keys.map(|k| format!("{k}=${k}")).join(" "))).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let real = |k: &str| format!("{}-{}", k.to_lowercase().replace('_', ""), "0123456789abcdefghijklmnopqrstuvwxyz");
    // What the agent saw of each key: "" (nothing), "decoy" (the value's
    // shape, never the value), or the value itself.
    let run_agent = |agent: &str, extra: &[&str]| -> Vec<String> {
        let cmd = format!("./{agent}");
        let mut args = vec!["--image", TEST_IMAGE];
        args.extend_from_slice(extra);
        args.extend(["--", cmd.as_str()]);
        let out = stack.leash(&args).envs(keys.iter().map(|k| (*k, real(k)))).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let said = text(&out.stdout);
        said.trim()
            .split(' ')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                let r = real(k);
                if v.is_empty() {
                    String::new()
                } else if v == r {
                    "REAL".to_owned()
                } else if v.len() == r.len() && v.find('-') == r.find('-') {
                    "decoy".to_owned()
                } else {
                    v.to_owned()
                }
            })
            .collect()
    };
    let d = || "decoy".to_owned();
    let n = String::new;
    assert_eq!(run_agent("claude", &[]), [d(), n(), n(), n()]);
    assert_eq!(run_agent("codex", &[]), [n(), d(), n(), n()]);
    assert_eq!(run_agent("gemini", &[]), [n(), n(), d(), n()]);
    assert_eq!(run_agent("qwen", &[]), [n(), n(), n(), d()]);
    assert_eq!(run_agent("opencode", &[]), [d(), d(), d(), d()]);
    assert_eq!(run_agent("other", &[]), [n(), n(), n(), n()]);
    // `-e` gives a secret its value: still a decoy in the container, of
    // the new value's shape.
    let over = "override-zyxwvutsrqponmlkjihgfedcba9876543210";
    let seen = run_agent("claude", &["-e", &format!("ANTHROPIC_API_KEY={over}")]);
    assert!(seen[0].starts_with("override-") && seen[0].len() == over.len() && seen[0] != over, "{seen:?}");
    // Any other command gets the variable as it is from -e.
    assert_eq!(run_agent("other", &["-e", "OPENAI_API_KEY=x"])[1], "x");
    nothing_left(&stack);
}

#[test]
fn three_sessions_at_once() {
    if !require_docker("three_sessions_at_once") {
        return;
    }
    let stack = stack();
    let children: Vec<_> = (0..3)
        .map(|i| {
            stack
                .leash(&["--image", TEST_IMAGE, "--", "sh", "-c", &format!("sleep 1; echo session-{i}; exit {i}")])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let listed = eventually(Duration::from_secs(10), "three sessions listed", || {
        let out = stack.leashctl(&["sessions", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v.as_array()?.len() == 3).then_some(v)
    });
    let names: std::collections::BTreeSet<&str> =
        listed.as_array().unwrap().iter().map(|s| s["container"].as_str().unwrap()).collect();
    let base = format!("proj-{}", stack.instance.to_lowercase());
    assert_eq!(
        names,
        [base.clone(), format!("{base}1"), format!("{base}2")].iter().map(String::as_str).collect(),
        "{listed}"
    );
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(i as i32));
        assert_eq!(text(&out.stdout), format!("session-{i}\n"));
    }
    nothing_left(&stack);
}

#[test]
fn a_session_survives_a_leashd_restart_and_its_client_reattaches_with_nothing_lost() {
    if !require_docker("a_session_survives_a_leashd_restart_and_its_client_reattaches_with_nothing_lost") {
        return;
    }
    let mut stack = stack();
    let project = stack.project();
    // It prints before, while no leashd runs, and after.
    let script = "echo before; touch started; while [ ! -e go ]; do sleep 0.1; done; echo during-the-gap; \
                  touch printed; while [ ! -e end ]; do sleep 0.1; done; echo after; exit 7";
    for (n, signal) in [rustix::process::Signal::KILL, rustix::process::Signal::TERM].into_iter().enumerate() {
        for f in ["started", "go", "printed", "end"] {
            let _ = std::fs::remove_file(project.join(f));
        }
        let leash = stack
            .leash(&["--image", TEST_IMAGE, "--", "sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let id = running_session(&stack);
        eventually(Duration::from_secs(10), "the command started", || project.join("started").exists().then_some(()));
        std::thread::sleep(Duration::from_millis(300));
        let leashd = stack.processes("leashd")[0];
        leash_testkit::kill(leashd, signal);
        stack.wait_leashd(Duration::from_secs(8));
        std::fs::write(project.join("go"), "").unwrap();
        eventually(Duration::from_secs(10), "printed while no leashd ran", || {
            project.join("printed").exists().then_some(())
        });
        stack.start_leashd_for_sessions();
        stack.wait_healthy(Duration::from_secs(10));
        let out = stack.leashctl(&["sessions"]);
        assert!(text(&out.stdout).contains("running"), "{out:?}");

        // The recovered session takes commands and viewers.
        let out = stack.leash(&["exec", &id, "--", "sh", "-c", "echo exec-after-restart"]).output().unwrap();
        assert_eq!((out.status.code(), text(&out.stdout).as_str()), (Some(0), "exec-after-restart\n"), "{out:?}");
        let viewer = stack.leash(&["attach", &id]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();

        std::fs::write(project.join("end"), "").unwrap();
        let out = leash.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(7), "the command's code, through the new leashd ({n}): {out:?}");
        assert_eq!(text(&out.stdout), "before\nduring-the-gap\nafter\n", "nothing lost, nothing twice: {err}");
        assert!(err.contains(&format!("reattaching to session {id}")) && err.contains("reattached"), "{err}");
        let viewed = viewer.wait_with_output().unwrap();
        assert_eq!(viewed.status.code(), Some(7), "{viewed:?}");
        assert_eq!(text(&viewed.stdout), "before\nduring-the-gap\nafter\n", "{viewed:?}");
        nothing_left(&stack);
    }
}

#[test]
fn a_terminal_session_reattaches_after_leashd_is_killed_and_takes_input_again() {
    if !require_docker("a_terminal_session_reattaches_after_leashd_is_killed_and_takes_input_again") {
        return;
    }
    let mut stack = stack();
    let script = "echo ready; while read line; do echo got-$line; [ \"$line\" = bye ] && exit 9; done";
    let mut cmd = stack.command("leash");
    cmd.args(["--image", TEST_IMAGE, "--", "sh", "-c", script]).current_dir(stack.project());
    let mut term = Pty::spawn(cmd, 24, 80);
    term.wait_for("ready", Duration::from_secs(15));
    term.write(b"one\r");
    term.wait_for("got-one", Duration::from_secs(10));
    let leashd = stack.processes("leashd")[0];
    leash_testkit::kill(leashd, rustix::process::Signal::KILL);
    stack.wait_leashd(Duration::from_secs(2));
    term.wait_for("reattaching to session", Duration::from_secs(10));
    stack.start_leashd_for_sessions();
    term.wait_for("reattached", Duration::from_secs(20));
    // What the user types reaches the command again; its code returns.
    term.write(b"two\r");
    term.wait_for("got-two", Duration::from_secs(10));
    term.write(b"bye\r");
    assert_eq!(term.wait(Duration::from_secs(15)), Some(9), "{:?}", term.seen());
    assert_eq!(term.seen().matches("got-one").count(), 1, "replayed once: {:?}", term.seen());
    nothing_left(&stack);
}

#[test]
fn bad_input_is_one_line_and_exit_125_with_nothing_left() {
    if !require_docker("bad_input_is_one_line_and_exit_125_with_nothing_left") {
        return;
    }
    let stack = stack();
    let one_line = |out: &Output, needle: &str| {
        assert_eq!(out.status.code(), Some(125), "{out:?}");
        let err = text(&out.stderr);
        assert!(err.contains(needle), "expected {needle:?} in {err:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    };
    one_line(&run(&stack, &["--bogus", "true"]), "--bogus");
    one_line(&run(&stack, &[]), "a command is required");
    one_line(&run(&stack, &["-e", "=x", "--", "true"]), "environment variable name is required");
    one_line(&run(&stack, &["--volume", "nocolon", "--", "true"]), "expected src:dst");
    one_line(&run(&stack, &["-v", "/nonexistent-dir:/x", "--", "true"]), "/nonexistent-dir");
    one_line(&run(&stack, &["-v", "/:/host", "--", "true"]), "root directory");
    let rt = format!("{}:/x", stack.runtime_dir.display());
    one_line(&run(&stack, &["-v", &rt, "--", "true"]), "leash does not mount it");
    one_line(
        &run(&stack, &["--policy", "/nonexistent.cedar", "--", "true"]),
        "Cedar policy file not found: /nonexistent.cedar",
    );
    one_line(&run(&stack, &["--listen", ":18080", "--", "true"]), "leashd serves the Control UI on 127.0.0.1:");
    one_line(&run(&stack, &["--listen", "x:y", "--", "true"]), "invalid listen port");

    // A working directory that no longer exists.
    let leash_bin = stack.bin_dir.join("leash");
    let out = stack
        .command("sh")
        .args([
            "-c",
            &format!(
                "mkdir gone && cd gone && rmdir ../gone && exec {} --image {TEST_IMAGE} -- true",
                leash_bin.display()
            ),
        ])
        .current_dir(stack.project())
        .output()
        .unwrap();
    one_line(&out, "cannot read the current directory");

    // Docker not reachable: leashd says so.
    let mut other = Stack::new();
    other.start_leashd_with(|c| {
        c.env("LEASH_ENTRY_BIN", leash_testkit::static_entry()).env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    });
    other.wait_healthy(Duration::from_secs(10));
    let out = other.leash(&["--image", TEST_IMAGE, "--", "true"]).output().unwrap();
    one_line(&out, "container engine is not reachable");
    nothing_left(&stack);
}

#[test]
fn a_terminal_session_gets_size_resize_and_ctrl_c() {
    if !require_docker("a_terminal_session_gets_size_resize_and_ctrl_c") {
        return;
    }
    let stack = stack();
    let script = "stty size; trap 'echo got-winch; stty size' WINCH; trap 'echo got-int; exit 42' INT; \
                  echo ready; while true; do sleep 0.1; done";
    let mut cmd = stack.command("leash");
    cmd.args(["--image", TEST_IMAGE, "--", "sh", "-c", script]).current_dir(stack.project());
    let mut term = Pty::spawn(cmd, 24, 80);
    let before = rustix::termios::tcgetattr(&term.slave).unwrap();
    term.wait_for("ready", Duration::from_secs(15));
    assert!(term.seen().contains("24 80"), "initial size: {:?}", term.seen());

    term.resize(30, 100);
    leash_testkit::kill(term.child.id(), rustix::process::Signal::WINCH);
    term.wait_for("30 100", Duration::from_secs(15));

    term.write(&[0x03]);
    assert_eq!(term.wait(Duration::from_secs(15)), Some(42), "{:?}", term.seen());
    term.wait_for("got-int", Duration::from_secs(5));
    // The terminal is as it was.
    let after = rustix::termios::tcgetattr(&term.slave).unwrap();
    assert_eq!(after.local_modes, before.local_modes);
    assert_eq!(after.input_modes, before.input_modes);
    nothing_left(&stack);
}

/// Types the detach keys as a user does: one key per read.
fn detach_keys(term: &Pty) {
    term.write(&[0x10]);
    std::thread::sleep(Duration::from_millis(150));
    term.write(&[0x11]);
}

#[test]
fn a_session_is_left_with_the_detach_keys_and_joined_again_with_what_it_printed_meanwhile() {
    if !require_docker("a_session_is_left_with_the_detach_keys_and_joined_again_with_what_it_printed_meanwhile") {
        return;
    }
    let stack = stack();
    let script = "trap 'echo got-int; exit 42' INT; echo ready; i=0; \
                  while true; do i=$((i+1)); echo tick-$i-; sleep 0.2; done";
    let mut cmd = stack.command("leash");
    cmd.args(["--image", TEST_IMAGE, "--", "sh", "-c", script]).current_dir(stack.project());
    let mut term = Pty::spawn(cmd, 24, 80);
    let before = rustix::termios::tcgetattr(&term.slave).unwrap();
    term.wait_for("tick-2-", Duration::from_secs(15));
    // A paste that holds the keys is typed, not a detach.
    term.write(&[0x10, 0x11]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(term.child.try_wait().unwrap().is_none(), "{:?}", term.seen());
    detach_keys(&term);
    term.wait_for("detached from session", Duration::from_secs(15));
    assert_eq!(term.wait(Duration::from_secs(15)), Some(0), "{:?}", term.seen());
    let seen = term.seen();
    let (id, _) = stack.running_session(Duration::from_secs(5));
    assert!(seen.contains(&format!("detached from session {id}")), "{seen:?}");
    let after = rustix::termios::tcgetattr(&term.slave).unwrap();
    assert_eq!((after.local_modes, after.input_modes), (before.local_modes, before.input_modes));
    let last_seen: u32 = seen.rsplit("tick-").find_map(|t| t.split('-').next()?.parse().ok()).unwrap();
    let clients = || -> u64 {
        let v: serde_json::Value = serde_json::from_slice(&stack.leashctl(&["sessions", "--json"]).stdout).unwrap();
        v[0]["clients"].as_u64().unwrap()
    };
    assert_eq!(clients(), 0, "detached");

    // It runs on; what it printed meanwhile is there when a client attaches.
    std::thread::sleep(Duration::from_millis(1500));
    let mut cmd = stack.command("leash");
    cmd.args(["attach", &id[..6]]).current_dir(stack.project());
    let mut viewer = Pty::spawn(cmd, 24, 80);
    viewer.wait_for(&format!("tick-{}-", last_seen + 5), Duration::from_secs(15));
    assert!(viewer.seen().contains("ready"), "replayed from the start: {:?}", viewer.seen());
    assert_eq!(clients(), 1);
    // The viewer writes now: Ctrl-C reaches the command, whose code it returns.
    viewer.write(&[0x03]);
    assert_eq!(viewer.wait(Duration::from_secs(15)), Some(42), "{:?}", viewer.seen());
    viewer.wait_for("got-int", Duration::from_secs(5));
    let events = stack.events();
    for action in ["session.detach", "session.attach"] {
        assert!(events.iter().any(|e| e["action"] == action && e["session"] == id.as_str()), "{action}");
    }
    nothing_left(&stack);
}

#[test]
fn a_detached_start_prints_the_id_and_attach_shows_stdout_and_stderr_apart() {
    if !require_docker("a_detached_start_prints_the_id_and_attach_shows_stdout_and_stderr_apart") {
        return;
    }
    let stack = stack();
    let script = "echo to-out; echo to-err >&2; while [ ! -e go ]; do sleep 0.1; done; echo later; exit 7";
    let out = stack.leash(&["-d", "--image", TEST_IMAGE, "--", "sh", "-c", script]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let id = text(&out.stdout).trim().to_owned();
    assert_eq!(id.len(), 16, "the id alone: {out:?}");
    let (running, _) = stack.running_session(Duration::from_secs(5));
    assert_eq!(running, id);
    // bash completes the id where `leash attach`, `leash exec`, `leashctl
    // sessions stop`, `sessions show` and `--session` take one, from leashd's list.
    let script = stack.root().join("completions.bash");
    std::fs::write(&script, stack.leashctl(&["completions", "bash"]).stdout).unwrap();
    let check = format!(
        "source {}; \
         COMP_WORDS=(leash attach ''); COMP_CWORD=2; _leash_with_ids; echo \"attach:${{COMPREPLY[*]}}\"; \
         COMP_WORDS=(leash exec -it -w /tmp ''); COMP_CWORD=5; _leash_with_ids; echo \"exec:${{COMPREPLY[*]}}\"; \
         COMP_WORDS=(leash exec {id} ''); COMP_CWORD=3; _leash_with_ids; echo \"command:${{COMPREPLY[*]}}\"; \
         COMP_WORDS=(leashctl sessions stop ''); COMP_CWORD=3; _leashctl_with_ids; echo \"stop:${{COMPREPLY[*]}}\"; \
         COMP_WORDS=(leashctl sessions show --mcp ''); COMP_CWORD=4; _leashctl_with_ids; echo \"show:${{COMPREPLY[*]}}\"; \
         COMP_WORDS=(leashctl events --session ''); COMP_CWORD=3; _leashctl_with_ids; echo \"events:${{COMPREPLY[*]}}\"",
        script.display()
    );
    let path = format!("{}:{}", stack.bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = stack.command("bash").env("PATH", &path).args(["-c", &check]).output().unwrap();
    let said = text(&out.stdout);
    for line in ["attach", "exec", "stop", "show", "events"] {
        assert!(said.lines().any(|l| l == format!("{line}:{id}")), "{line}: {said} {out:?}");
    }
    assert!(!said.lines().any(|l| l == format!("command:{id}")), "the command is no id: {said}");
    // So do fish (its own completion engine, asked as a user's tab would)
    // and zsh (the id list every id spec completes from).
    for (shell, ext) in [("fish", "fish"), ("zsh", "zsh")] {
        let file = stack.root().join(format!("completions.{ext}"));
        std::fs::write(&file, stack.leashctl(&["completions", shell]).stdout).unwrap();
    }
    let fish = format!(
        "source {}; \
         for line in 'leash attach ' 'leash exec -it -w /tmp ' 'leashctl sessions stop ' 'leashctl sessions show --mcp ' \
                     'leashctl events --session ' 'leash exec {id} '; \
             echo \"$line:\"(complete -C \"$line\" | string match -r '^[0-9a-f]{{16}}')\"\"; \
         end",
        stack.root().join("completions.fish").display()
    );
    let out = stack.command("fish").env("PATH", &path).args(["-c", &fish]).output().unwrap();
    let said = text(&out.stdout);
    for line in [
        "leash attach ",
        "leash exec -it -w /tmp ",
        "leashctl sessions stop ",
        "leashctl sessions show --mcp ",
        "leashctl events --session ",
    ] {
        assert!(said.lines().any(|l| l == format!("{line}:{id}")), "fish, {line:?}: {said} {out:?}");
    }
    // (fish joins a line with no candidate into nothing.)
    assert!(!said.contains(&format!("leash exec {id} :{id}")), "fish: the command is no id: {said}");
    let zsh = format!(
        "autoload -U compinit && compinit -u && source {} && _leash_session_id_list",
        stack.root().join("completions.zsh").display()
    );
    let out = stack.command("zsh").env("PATH", &path).args(["-c", &zsh]).output().unwrap();
    assert_eq!(text(&out.stdout).trim(), id, "zsh: {out:?}");
    let attach = stack.leash(&["attach", &id]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    eventually(Duration::from_secs(10), "the client attached", || {
        stack.events().iter().any(|e| e["action"] == "session.attach" && e["session"] == id.as_str()).then_some(())
    });
    std::fs::write(stack.project().join("go"), "").unwrap();
    let out = attach.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7), "the command's code: {out:?}");
    assert_eq!(text(&out.stdout), "to-out\nlater\n", "{out:?}");
    assert_eq!(text(&out.stderr), "to-err\n", "{out:?}");
    // Nothing to attach to any more, said in one line.
    nothing_left(&stack);
    let out = stack.leash(&["attach", &id]).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(text(&out.stderr).contains(&format!("no session \"{id}\"")), "{out:?}");
    let out = stack.leash(&["attach", "--detach-keys", "ctrl-", &id]).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(text(&out.stderr).contains("--detach-keys"), "{out:?}");
}

#[test]
fn exec_runs_a_command_as_one_of_the_sessions_processes_governed_by_its_policy() {
    if !require_docker("exec_runs_a_command_as_one_of_the_sessions_processes_governed_by_its_policy") {
        return;
    }
    let stack = stack();
    let project = stack.project();
    std::fs::write(project.join("secret.txt"), "TOPSECRET\n").unwrap();
    let policy = stack.root().join("exec.cedar");
    std::fs::write(
        &policy,
        format!(
            "@id(\"all\") permit (principal, action, resource);\n\
             @id(\"no-secret\") forbid (principal, action == Action::\"FileOpen\", resource == File::\"{}/secret.txt\");\n",
            project.display()
        ),
    )
    .unwrap();
    let script =
        "id -u > main-uid; cat /proc/self/cgroup > main-cgroup; while [ ! -e stop ]; do sleep 0.1; done; exit 3";
    let out = stack
        .leash(&["-d", "--image", TEST_IMAGE, "--policy", policy.to_str().unwrap(), "--", "sh", "-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let id = text(&out.stdout).trim().to_owned();
    eventually(Duration::from_secs(10), "the session's command running", || {
        project.join("main-cgroup").exists().then_some(())
    });

    // Without a terminal: stdout and stderr apart, the code, the session's
    // user, cgroup, working directory and supervised-calls filter.
    let probe = "echo out; echo err >&2; id -u; cat /proc/self/cgroup; pwd; grep Seccomp: /proc/self/status; \
                 echo $FROM_EXEC; exit 5";
    let out = stack.leash(&["exec", "-e", "FROM_EXEC=yes", &id[..8], "sh", "-c", probe]).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let expect = format!(
        "out\n{}{}{}\nSeccomp:\t2\nyes\n",
        std::fs::read_to_string(project.join("main-uid")).unwrap(),
        std::fs::read_to_string(project.join("main-cgroup")).unwrap(),
        project.display()
    );
    assert_eq!(text(&out.stdout), expect, "{out:?}");
    assert_eq!(text(&out.stderr), "err\n", "{out:?}");

    // The policy decides for it as for the session's command: the read of
    // the forbidden file is refused, with an event of this session.
    let out = stack.leash(&["exec", &id, "--", "cat", "secret.txt"]).output().unwrap();
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(!text(&out.stdout).contains("TOPSECRET"), "{out:?}");
    eventually(Duration::from_secs(10), "the exec'd read denied as the session's", || {
        stack
            .events()
            .iter()
            .any(|e| {
                e["session"] == id.as_str()
                    && e["decision"] == "deny"
                    && e["resource"].as_str().is_some_and(|r| r.ends_with("/secret.txt"))
            })
            .then_some(())
    });

    // -i: stdin reaches it, and its end; -w; a command that is not there.
    let mut child = stack
        .leash(&["exec", "-i", "-w", "/tmp", &id, "--", "sh", "-c", "pwd; cat; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"piped-in\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!((out.status.code(), text(&out.stdout).as_str()), (Some(0), "/tmp\npiped-in\ndone\n"), "{out:?}");
    // Much output and much input: nothing lost (leash-entry holds a command
    // back rather than drop what it writes or what it is sent).
    let out = stack.leash(&["exec", &id, "--", "head", "-c", "50000000", "/dev/zero"]).output().unwrap();
    assert_eq!((out.status.code(), out.stdout.len()), (Some(0), 50_000_000), "{:?}", text(&out.stderr));
    let mut child = stack
        .leash(&["exec", "-i", &id, "--", "wc", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(&vec![b'x'; 20_000_000]).unwrap());
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert_eq!(text(&out.stdout).trim(), "20000000", "{out:?}");
    let out = stack.leash(&["exec", &id, "--", "no-such-command"]).output().unwrap();
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(text(&out.stderr).contains("cannot run no-such-command"), "{out:?}");

    // -it through a terminal: its own terminal, Ctrl-C reaches it, its code returns.
    let mut cmd = stack.command("leash");
    let tty_script = "tty; stty size; trap 'echo got-int; exit 42' INT; echo ready; while true; do sleep 0.1; done";
    cmd.args(["exec", "-it", &id, "--", "sh", "-c", tty_script]).current_dir(&project);
    let mut term = Pty::spawn(cmd, 33, 99);
    term.wait_for("ready", Duration::from_secs(15));
    assert!(term.seen().contains("/dev/pts/") && term.seen().contains("33 99"), "{:?}", term.seen());
    term.write(&[0x03]);
    term.wait_for("got-int", Duration::from_secs(10));
    assert_eq!(term.wait(Duration::from_secs(15)), Some(42), "{:?}", term.seen());

    // A client that goes hangs its command up (which then writes no more
    // to it: sh's report of the sleep the hangup killed goes elsewhere).
    let hup = "exec 2>/dev/null; trap 'echo hup > hung-up; exit 1' HUP; echo started; while true; do sleep 0.1; done";
    let mut gone = stack.leash(&["exec", &id, "--", "sh", "-c", hup]).stdout(Stdio::piped()).spawn().unwrap();
    let mut first = [0u8; 8];
    std::io::Read::read_exact(gone.stdout.as_mut().unwrap(), &mut first).unwrap();
    gone.kill().unwrap();
    let _ = gone.wait();
    eventually(Duration::from_secs(10), "the command hung up", || project.join("hung-up").exists().then_some(()));

    let events = stack.events();
    let execs: Vec<_> =
        events.iter().filter(|e| e["action"] == "session.exec" && e["session"] == id.as_str()).collect();
    assert_eq!(execs.len(), 7, "one per command started: {execs:?}");
    assert!(execs.iter().any(|e| e["details"]["command"] == "cat secret.txt"), "{execs:?}");
    assert!(
        events.iter().any(|e| e["action"] == "session.exec.exit" && e["details"]["code"] == "5"),
        "the exit and its code"
    );

    // A session's end says how many operations were refused in it.
    let out = stack
        .leash(&[
            "--verbose",
            "--image",
            TEST_IMAGE,
            "--policy",
            policy.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "cat secret.txt; cat secret.txt; true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stderr).contains("leash: 2 operations denied"), "{out:?}");

    // The session's own command is untouched by all this, and ends it.
    std::fs::write(project.join("stop"), "").unwrap();
    eventually(Duration::from_secs(15), "the session ended", || stack.containers().is_empty().then_some(()));
    let out = stack.leash(&["exec", &id, "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    nothing_left(&stack);
}

/// Writes `text` as `<dir>/config.toml` and returns the dir (for LEASH_HOME).
#[test]
fn configuration_files_layer_as_documented() {
    if !require_docker("configuration_files_layer_as_documented") {
        return;
    }
    let mut stack = Stack::new();
    let system = stack.root().join("system.toml");
    std::fs::write(
        &system,
        "[leash]\ntarget_image = \"leash-nonexistent:1\"\n[leash.envvars]\nS = \"system\"\nA = \"system\"\n",
    )
    .unwrap();
    let entry = leash_testkit::static_entry();
    stack.start_leashd_with(|c| {
        c.env("LEASH_ENTRY_BIN", &entry).arg("--config").arg(&system);
    });
    stack.wait_healthy(Duration::from_secs(10));
    let data = stack.root().join("cfgdata");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), "mounted-by-config\n").unwrap();
    let project = stack.project();
    let home = stack.user_config(&format!(
        "[leash]\ntarget_image = \"{TEST_IMAGE}\"\n[leash.envvars]\nA = \"user\"\nB = \"user\"\n\
             [volumes]\n\"{}\" = \"/cfg:ro\"\n\
             [projects.\"{}\".envvars]\nB = \"project\"\n",
        data.display(),
        project.display()
    ));
    let out = stack
        .leash(&["-e", "C=flag", "--", "sh", "-c", "echo $S $A $B $C; cat /cfg/f"])
        .env("LEASH_HOME", &home)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), "system user project flag\nmounted-by-config\n");

    // A malformed file: one line naming file, line and key; nothing created.
    std::fs::write(home.join("config.toml"), "[volumes]\ncodex = \"yes\"\n").unwrap();
    let out = stack.leash(&["--", "true"]).env("LEASH_HOME", &home).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{}:2: volumes.codex: expected true or false", home.join("config.toml").display())),
        "{err}"
    );
    std::fs::write(home.join("config.toml"), "[leash\n").unwrap();
    let out = stack.leash(&["--", "true"]).env("LEASH_HOME", &home).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(text(&out.stderr).contains("config.toml") && text(&out.stderr).contains("line 1"), "{out:?}");
    nothing_left(&stack);
}

#[test]
fn the_agent_mount_prompt_is_asked_remembered_and_honoured() {
    if !require_docker("the_agent_mount_prompt_is_asked_remembered_and_honoured") {
        return;
    }
    let stack = stack();
    let project = stack.project();
    let agent = project.join("claude");
    std::fs::write(&agent, "#!/bin/sh\ncat \"$HOME/.claude/marker\" 2>/dev/null || echo not-mounted\n").unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let claude_dir = stack.root().join("claude-config");
    std::fs::create_dir_all(&claude_dir).unwrap();
    std::fs::write(claude_dir.join("marker"), "mounted\n").unwrap();
    let home = stack.user_config("");
    let leash = |tty: bool| {
        let mut c = stack.command("leash");
        c.args(["--image", TEST_IMAGE, "--", "./claude"])
            .current_dir(&project)
            .env("LEASH_HOME", &home)
            .env("CLAUDE_CONFIG_DIR", &claude_dir);
        if !tty {
            c.stdin(Stdio::null());
        }
        c
    };
    // Without a terminal: no prompt, and no mount (the documented default).
    let out = leash(false).output().unwrap();
    assert_eq!(text(&out.stdout), "not-mounted\n", "{out:?}");

    // With a terminal: asked; "Just this once" mounts without remembering.
    let mut term = Pty::spawn(leash(true), 24, 80);
    term.wait_for("Choose 1-4 [3]:", Duration::from_secs(15));
    assert!(term.seen().contains(&format!("Mount {} (claude's settings)", claude_dir.display())), "{}", term.seen());
    term.write(b"\r");
    assert_eq!(term.wait(Duration::from_secs(15)), Some(0));
    assert!(term.seen().contains("mounted\r\n") && !term.seen().contains("not-mounted"), "{:?}", term.seen());
    assert_eq!(std::fs::read_to_string(home.join("config.toml")).unwrap(), "");

    // "Always" is remembered in the user's config file, then asked no more.
    let mut term = Pty::spawn(leash(true), 24, 80);
    term.wait_for("Choose 1-4 [3]:", Duration::from_secs(15));
    term.write(b"1\r");
    assert_eq!(term.wait(Duration::from_secs(15)), Some(0));
    let cfg = std::fs::read_to_string(home.join("config.toml")).unwrap();
    assert!(cfg.contains("claude = true"), "{cfg}");
    let mut term = Pty::spawn(leash(true), 24, 80);
    assert_eq!(term.wait(Duration::from_secs(15)), Some(0));
    assert!(!term.seen().contains("Choose"), "{:?}", term.seen());
    assert!(term.seen().contains("mounted"), "{:?}", term.seen());

    // A remembered false is honoured: no prompt, no mount.
    std::fs::write(
        home.join("config.toml"),
        format!("[projects.\"{}\"]\nclaude = false\n[volumes]\nclaude = true\n", project.display()),
    )
    .unwrap();
    let mut term = Pty::spawn(leash(true), 24, 80);
    assert_eq!(term.wait(Duration::from_secs(15)), Some(0));
    assert!(!term.seen().contains("Choose") && term.seen().contains("not-mounted"), "{:?}", term.seen());
    nothing_left(&stack);
}

#[test]
fn ctrl_c_without_a_terminal_and_sessions_stop_reach_the_command() {
    if !require_docker("ctrl_c_without_a_terminal_and_sessions_stop_reach_the_command") {
        return;
    }
    use std::io::{BufRead, BufReader};
    let stack = stack();
    let spawn = |script: &str| {
        let mut child =
            stack.leash(&["--image", TEST_IMAGE, "--", "sh", "-c", script]).stdout(Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        child
    };
    // SIGINT to leash (Ctrl-C in a pipeline) is delivered to the command.
    let child = spawn("trap 'exit 5' INT; echo ready; sleep 30 & wait");
    leash_testkit::kill(child.id(), rustix::process::Signal::INT);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");

    // `leashctl sessions stop` sends SIGTERM to the command.
    let child = spawn("trap 'exit 6' TERM; echo ready; sleep 30 & wait");
    let list: serde_json::Value = serde_json::from_slice(&stack.leashctl(&["sessions", "--json"]).stdout).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let out = stack.leashctl(&["sessions", "stop", &id[..6]]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout).trim(), format!("stopping session {id}"));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    // Another user's sessions are not theirs to see or stop.
    let out = stack.leashctl(&["sessions", "stop", "ffff"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no session"), "{out:?}");
    nothing_left(&stack);
}

#[test]
fn session_lifecycle_events_are_published_with_timings() {
    if !require_docker("session_lifecycle_events_are_published_with_timings") {
        return;
    }
    let stack = stack();
    let out = run(&stack, &["--", "true"]);
    assert_eq!(out.status.code(), Some(0));
    let events = stack.events();
    let sessions: Vec<&serde_json::Value> = events.iter().filter(|e| e["kind"] == "session").collect();
    let actions: Vec<&str> = sessions.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["session.create", "session.release", "session.exit", "session.remove"]);
    let id = sessions[0]["session"].as_str().unwrap();
    assert!(sessions.iter().all(|e| e["session"] == id));
    assert_eq!(
        sessions[1]["details"]["admission"],
        "leashd: mounts, leashd: seal memfds, leash-policy: open the session's policy, \
         leash-proxy: intercept the session's HTTP(S), leash-sensor: govern the session's cgroup and files"
    );
    assert_eq!(sessions[2]["details"]["code"], "0");
    for phase in ["prepare_ms", "create_ms", "start_ms", "release_ms", "run_ms", "wait_ms", "remove_ms"] {
        let ms: f64 = sessions[3]["details"][phase].as_str().unwrap().parse().unwrap();
        assert!(ms >= 0.0, "{phase}");
    }
}

#[test]
fn sessions_run_on_podman_through_its_docker_api() {
    if !leash_testkit::require_podman("sessions_run_on_podman_through_its_docker_api") {
        return;
    }
    let mut stack = Stack::new();
    let entry = leash_testkit::static_entry();
    stack.start_leashd_with(|c| {
        c.env("LEASH_ENTRY_BIN", &entry).env("DOCKER_HOST", format!("unix://{}", leash_testkit::PODMAN_SOCKET));
    });
    let status = stack.wait_healthy(Duration::from_secs(10));
    assert!(status["host"]["engine"].as_str().unwrap().contains("(API "), "{status}");
    let out = run(&stack, &["--", "sh", "-c", "echo via-podman; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(text(&out.stdout), "via-podman\n");
    assert_eq!(text(&out.stderr), "err\n");
    let mut child = stack
        .leash(&["--image", TEST_IMAGE, "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "piped\n".to_owned()));
    // A second session in the same project while the first runs takes the
    // next name (Podman spells a taken name differently from Docker).
    let mut first = stack.leash(&["--image", TEST_IMAGE, "--", "sleep", "30"]).spawn().unwrap();
    let (id, name) = stack.running_session(Duration::from_secs(10));
    // `leash exec` reaches a Podman session's leash-entry too.
    let out = stack.leash(&["exec", &id, "--", "sh", "-c", "grep Seccomp: /proc/self/status"]).output().unwrap();
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "Seccomp:\t2\n".to_owned()), "{out:?}");
    let out = run(&stack, &["--", "echo", "second"]);
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "second\n".to_owned()), "{out:?}");
    let second = stack.events().into_iter().filter(|e| e["action"] == "session.create").nth(3).expect("its create");
    assert_eq!(second["details"]["container"], format!("{name}1"), "{second}");
    first.kill().unwrap();
    let _ = first.wait();
    eventually(Duration::from_secs(30), "the first session removed", || {
        stack.leashctl(&["sessions", "--json"]).stdout.starts_with(b"[]").then_some(())
    });
    // Nothing left in Podman.
    let ps = std::process::Command::new("podman")
        .args(["ps", "-aq", "--filter", &format!("label=leash.instance={}", stack.instance)])
        .output()
        .unwrap();
    assert!(ps.stdout.is_empty(), "{ps:?}");
}

/// A Podman API service of a test's own (global `flags`), on the socket
/// `<dir>/<name>.sock`; stopped when dropped.
struct PodmanService {
    child: std::process::Child,
    host: String,
    log: std::path::PathBuf,
}

impl PodmanService {
    fn start(dir: &std::path::Path, name: &str, flags: &[&str]) -> PodmanService {
        let sock = dir.join(format!("{name}.sock"));
        let host = format!("unix://{}", sock.display());
        let log = sock.with_extension("log");
        let child = std::process::Command::new("podman")
            .args(flags)
            .args(["system", "service", "--time=0", &host])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("podman");
        let service = PodmanService { child, host, log };
        eventually(Duration::from_secs(20), "the Podman service answering", || {
            service.docker(&["version"]).status.success().then_some(())
        });
        service
    }

    /// `docker ARGS` against this service.
    fn docker(&self, args: &[&str]) -> Output {
        std::process::Command::new("docker").env("DOCKER_HOST", &self.host).args(args).output().unwrap()
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A session on an engine that would place the container where the sensor
/// does not govern it, run as `leash -- touch ran`: refused with exit 125
/// and the reason, the command never ran and no container is left.
fn refused(stack: &mut Stack, service: &PodmanService, why: &str) {
    let entry = leash_testkit::static_entry();
    stack.start_leashd_with(|c| {
        c.env("LEASH_ENTRY_BIN", &entry).env("DOCKER_HOST", &service.host);
    });
    stack.wait_healthy(Duration::from_secs(10));
    let out = run(stack, &["--", "touch", "ran"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains(why), "{err}");
    assert!(!stack.project().join("ran").exists(), "the command ran");
    let filter = format!("label=leash.instance={}", stack.instance);
    let left = service.docker(&["ps", "-a", "--filter", &filter]);
    assert!(
        text(&left.stdout).lines().count() <= 1,
        "left: {left:?}\n{}\n{}",
        stack.leashd_log(0),
        std::fs::read_to_string(&service.log).unwrap_or_default()
    );
}

#[test]
fn an_engine_that_would_place_containers_where_the_sensor_does_not_govern_is_refused() {
    let name = "an_engine_that_would_place_containers_where_the_sensor_does_not_govern_is_refused";
    if !leash_testkit::require_podman(name) {
        return;
    }
    // Podman with the systemd cgroup manager places containers below
    // systemd slices, never below the instance's cgroup parent: refused
    // before anything is created.
    let mut stack = Stack::new();
    let systemd = PodmanService::start(stack.root(), "podman-systemd", &["--cgroup-manager", "systemd"]);
    let driver = systemd.docker(&["info", "-f", "{{.CgroupDriver}}"]);
    assert_eq!(text(&driver.stdout).trim(), "systemd", "{driver:?}");
    let why = format!(
        "refused: the container engine places containers with the systemd cgroup driver, below systemd slices, \
         and leash-sensor governs only containers below the cgroup leash-{}",
        stack.instance
    );
    refused(&mut stack, &systemd, &why);
    drop((systemd, stack));

    // An engine that reports the cgroupfs driver but does not honour the
    // cgroup parent (its runtime creates every container in a cgroup of its
    // own choosing): the container starts, and admission refuses it before
    // leash-entry lets the command run.
    let mut stack = Stack::new();
    let elsewhere = format!("/leash-misplaced-{}/c", stack.instance);
    let runtime = stack.root().join("misplacing-runc");
    std::fs::write(
        &runtime,
        format!(
            "#!/bin/sh\n\
             prev=\n\
             for a in \"$@\"; do case \"$prev\" in --bundle|-b) bundle=$a ;; esac; prev=$a; done\n\
             for a in \"$@\"; do\n\
               if [ \"$a\" = create ] && [ -n \"$bundle\" ]; then\n\
                 sed -i 's#\"cgroupsPath\":\"[^\"]*\"#\"cgroupsPath\":\"{elsewhere}\"#' \"$bundle/config.json\"; break\n\
               fi\n\
             done\n\
             exec runc \"$@\"\n"
        ),
    )
    .unwrap();
    set_mode(&runtime, 0o755);
    let misplacing = PodmanService::start(stack.root(), "podman-misplacing", &["--runtime", runtime.to_str().unwrap()]);
    let why = format!(
        "admission failed at leash-sensor (govern the session's cgroup and files): the container engine placed \
         the container in the cgroup {elsewhere}, not below /leash-{}/",
        stack.instance
    );
    let _misplaced = RemoveCgroup(elsewhere.clone());
    refused(&mut stack, &misplacing, &why);
}

/// Removes a cgroup (`/a/b`, empty by then) and its parent from every
/// hierarchy when dropped.
struct RemoveCgroup(String);

impl Drop for RemoveCgroup {
    fn drop(&mut self) {
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let dir = hierarchy.path().join(self.0.trim_start_matches('/'));
            let _ = std::fs::remove_dir(&dir);
            let _ = std::fs::remove_dir(dir.parent().expect("a parent"));
        }
    }
}

#[test]
fn a_session_opens_its_policy_before_the_command_runs() {
    if !require_docker("a_session_opens_its_policy_before_the_command_runs") {
        return;
    }
    let stack = stack();
    let bad = stack.root().join("bad.cedar");
    std::fs::write(&bad, "permit (principal, action, resource);\nforbid (principal action, resource);\n").unwrap();
    let marker = stack.project().join("ran");
    let out = run(&stack, &["--policy", bad.to_str().unwrap(), "--", "touch", "ran"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("admission failed at leash-policy (open the session's policy): invalid policy:")
            && err.contains(&format!("{}:2:19", bad.display())),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!marker.exists(), "the command must not have run");
    nothing_left(&stack);

    // A valid policy is the session's while it runs, survives a restart of
    // leash-policy, and is forgotten when the session ends.
    let good = stack.root().join("good.cedar");
    std::fs::write(&good, "@id(\"all\") permit (principal, action, resource);\n@id(\"no-secret\") forbid (principal, action == Action::\"FileOpen\", resource in Dir::\"/secret/\");\n").unwrap();
    let leash =
        stack.leash(&["--image", TEST_IMAGE, "--policy", good.to_str().unwrap(), "--", "sleep", "8"]).spawn().unwrap();
    let id = running_session(&stack);
    let check = || {
        text(&stack.leashctl(&["policy", "check", "--session", &id, "FileOpen", "/secret/key"]).stdout)
            .trim()
            .to_owned()
    };
    assert_eq!(check(), "deny FileOpen File::\"/secret/key\" by no-secret");
    // Modes switch live and visibly.
    let out = stack.leashctl(&["policy", "mode", "shadow", "--session", &id[..8]]);
    assert_eq!(text(&out.stdout).trim(), format!("session {id}: enforce -> shadow"), "{out:?}");
    assert_eq!(check(), "allow FileOpen File::\"/secret/key\" (shadow mode: would deny by no-secret)");
    stack.leashctl(&["policy", "mode", "record", "--session", &id]);
    assert_eq!(check(), "allow FileOpen File::\"/secret/key\" (record mode: not evaluated)");
    let out = stack.leashctl(&["policy", "mode", "enforce", "--session", "ffffffff"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stack.events().iter().any(|e| e["action"] == "policy.mode" && e["session"] == id.as_str()));
    let policy_pid = Stack::component(&stack.status().unwrap(), "leash-policy")["pid"].as_u64().unwrap() as u32;
    leash_testkit::kill(policy_pid, rustix::process::Signal::KILL);
    // Policy and mode are restored after a restart of leash-policy.
    eventually(Duration::from_secs(5), "leash-policy back, mode restored", || {
        (check() == "allow FileOpen File::\"/secret/key\" (record mode: not evaluated)").then_some(())
    });
    stack.leashctl(&["policy", "mode", "enforce", "--session", &id]);
    assert_eq!(check(), "deny FileOpen File::\"/secret/key\" by no-secret", "policy restored");
    // A live replacement; an invalid one is refused and the previous stays.
    let replacement = stack.root().join("replacement.cedar");
    std::fs::write(&replacement, "@id(\"open\") permit (principal, action, resource);\n").unwrap();
    let out = stack.leashctl(&["policy", "set", replacement.to_str().unwrap(), "--session", &id]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(check(), "allow FileOpen File::\"/secret/key\" by open");
    let out = stack.leashctl(&["policy", "set", bad.to_str().unwrap(), "--session", &id]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stdout).contains("the previous policy stays in force"), "{out:?}");
    assert_eq!(check(), "allow FileOpen File::\"/secret/key\" by open");
    assert!(stack.events().iter().any(|e| e["action"] == "policy.set" && e["session"] == id.as_str()));
    let out = leash.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    nothing_left(&stack);
    let out = stack.leashctl(&["policy", "check", "--session", &id, "FileOpen", "/secret/key"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no session"), "{out:?}");
}

#[test]
fn the_administrators_policies_are_added_to_every_session() {
    if !require_docker("the_administrators_policies_are_added_to_every_session") {
        return;
    }
    let mut stack = Stack::new();
    let system = stack.root().join("etc/config.toml");
    std::fs::create_dir_all(stack.root().join("etc/policy.d")).unwrap();
    std::fs::write(&system, "").unwrap();
    std::fs::write(
        stack.root().join("etc/policy.d/10-admin.cedar"),
        "@id(\"admin-no-secret\") forbid (principal, action == Action::\"FileOpen\", resource in Dir::\"/admin-secret/\");\n",
    )
    .unwrap();
    let entry = leash_testkit::static_entry();
    stack.start_leashd_with(|c| {
        c.env("LEASH_ENTRY_BIN", &entry).arg("--config").arg(&system);
    });
    stack.wait_healthy(Duration::from_secs(10));
    let user = stack.root().join("user.cedar");
    std::fs::write(&user, "@id(\"everything\") permit (principal, action, resource);\n").unwrap();
    let leash =
        stack.leash(&["--image", TEST_IMAGE, "--policy", user.to_str().unwrap(), "--", "sleep", "3"]).spawn().unwrap();
    let id = running_session(&stack);
    let check = |path: &str| {
        text(&stack.leashctl(&["policy", "check", "--session", &id, "FileOpen", path]).stdout).trim().to_owned()
    };
    assert_eq!(check("/admin-secret/k"), "deny FileOpen File::\"/admin-secret/k\" by admin-no-secret");
    assert_eq!(check("/etc/hosts"), "allow FileOpen File::\"/etc/hosts\" by everything");
    assert_eq!(leash.wait_with_output().unwrap().status.code(), Some(0));

    // What the administrator forbids is never offered to the user: with
    // `--ask`, the exec is refused at once, no question asked.
    let probe = stack.project().join("probe.sh");
    std::fs::write(&probe, "#!/bin/sh\necho probe-ran\n").unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        stack.root().join("etc/policy.d/11-admin-exec.cedar"),
        format!(
            "@id(\"admin-no-probe\") forbid (principal, action == Action::\"ProcessExec\", resource == File::\"{}\");\n",
            probe.display()
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = run(&stack, &["--ask", "--policy", user.to_str().unwrap(), "--", "sh", "-c", "./probe.sh; echo rc=$?"]);
    assert!(started.elapsed() < Duration::from_secs(20), "not held for an answer: {:?}", started.elapsed());
    assert_eq!(text(&out.stdout), "rc=126\n", "{out:?}");
    assert!(!text(&out.stderr).contains("allow?"), "no question: {out:?}");
    let refused = stack.events().into_iter().find(|e| e["action"] == "ask.answer");
    let refused = refused.expect("an ask.answer event");
    assert_eq!(refused["details"]["answer"], "refused", "{refused}");
    assert!(refused["details"]["by"].as_str().unwrap().contains("administrator"), "{refused}");
    std::fs::remove_file(stack.root().join("etc/policy.d/11-admin-exec.cedar")).unwrap();

    // A broken administrator's policy fails every session closed.
    std::fs::write(stack.root().join("etc/policy.d/20-broken.cedar"), "forbid (principal action, resource);\n")
        .unwrap();
    let out = run(&stack, &["--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(text(&out.stderr).contains("20-broken.cedar:1:"), "{out:?}");
    nothing_left(&stack);
}

#[test]
fn a_policy_file_reloads_unless_the_agent_can_write_it() {
    if !require_docker("a_policy_file_reloads_unless_the_agent_can_write_it") {
        return;
    }
    let stack = stack();
    let no_secret = "@id(\"all\") permit (principal, action, resource);\n@id(\"no-secret\") forbid (principal, action == Action::\"FileOpen\", resource in Dir::\"/secret/\");\n";
    let check = |id: &str| {
        text(&stack.leashctl(&["policy", "check", "--session", id, "FileOpen", "/secret/key"]).stdout).trim().to_owned()
    };
    // Outside every writable mount: watched, and an edit is in force at once.
    let outside = stack.root().join("outside.cedar");
    std::fs::write(&outside, no_secret).unwrap();
    let first = stack
        .leash(&["--image", TEST_IMAGE, "--policy", outside.to_str().unwrap(), "--", "sleep", "6"])
        .spawn()
        .unwrap();
    let id = running_session(&stack);
    assert_eq!(check(&id), "deny FileOpen File::\"/secret/key\" by no-secret");
    std::fs::write(&outside, "@id(\"opened\") permit (principal, action, resource);\n").unwrap();
    eventually(Duration::from_secs(5), "the edit in force", || {
        (check(&id) == "allow FileOpen File::\"/secret/key\" by opened").then_some(())
    });
    assert!(stack.events().iter().any(|e| e["action"] == "policy.reload" && e["session"] == id.as_str()));
    assert!(first.wait_with_output().unwrap().status.success());
    nothing_left(&stack);

    // In the project, which the agent can write: read once, never watched,
    // so the agent cannot loosen its own policy.
    let inside = stack.project().join("leash.cedar");
    std::fs::write(&inside, no_secret).unwrap();
    let agent = stack
        .leash(&[
            "--image",
            TEST_IMAGE,
            "--policy",
            inside.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "sleep 1; echo '@id(\"agent\") permit (principal, action, resource);' > leash.cedar; sleep 4",
        ])
        .spawn()
        .unwrap();
    let id = running_session(&stack);
    eventually(Duration::from_secs(10), "the agent rewrote its policy file", || {
        std::fs::read_to_string(&inside).ok()?.contains("agent").then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(check(&id), "deny FileOpen File::\"/secret/key\" by no-secret", "the agent's edit is not read");
    assert!(!stack.events().iter().any(|e| e["action"] == "policy.reload" && e["session"] == id.as_str()));
    assert!(agent.wait_with_output().unwrap().status.success());
    nothing_left(&stack);
}

/// Files open, the system's programs run, a project's programs have no permit.
const SYSTEM_PROGRAMS_ONLY: &str = include_str!("../../../policies/examples/e17-system-programs-only.cedar");

/// Waits until an event of `session` matches; it.
fn event_where(stack: &Stack, what: &str, found: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    eventually(Duration::from_secs(15), what, || stack.events().into_iter().find(&found))
}

#[test]
fn a_denied_exec_waits_for_the_users_answer_on_the_terminal_and_the_agent_cannot_answer() {
    if !require_docker("a_denied_exec_waits_for_the_users_answer_on_the_terminal_and_the_agent_cannot_answer") {
        return;
    }
    let stack = stack();
    let project = stack.project();
    // Files and the system's programs are allowed; a script of the project
    // is not (no permit): executing it is asked about.
    let probe = project.join("probe.sh");
    std::fs::write(&probe, "#!/bin/sh\necho \"probe-ran-$1\"\n").unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = stack.root().join("ask.cedar");
    let text_before = SYSTEM_PROGRAMS_ONLY;
    std::fs::write(&policy, text_before).unwrap();
    let home = stack.user_config("[leash]\nask_timeout = 4\n");
    // Each step waits for a line from the user, then runs the script.
    let script = "echo ready; \
                  read x; ./probe.sh one; echo \"rc-one=$?\"; \
                  read x; (sleep 1; printf 'o\\n' > /dev/tty; printf 'a' > /dev/tty) & ./probe.sh two; echo \"rc-two=$?\"; \
                  read x; ./probe.sh three; echo \"rc-three=$?\"; \
                  read x; ./probe.sh four; echo \"rc-four=$?\"; \
                  read x; f=$(printf 'title\\033]0;pwned\\007.sh'); cp probe.sh \"$f\"; \"./$f\" five; echo \"rc-five=$?\"; \
                  read x; \"./$f\" six; echo \"rc-six=$?\"";
    let mut cmd = stack.command("leash");
    cmd.args(["--image", TEST_IMAGE, "--ask", "--policy", policy.to_str().unwrap(), "--", "sh", "-c", script])
        .env("LEASH_HOME", &home)
        .current_dir(&project);
    let mut term = Pty::spawn(cmd, 24, 100);
    term.wait_for("ready", Duration::from_secs(20));
    let id = running_session(&stack);

    // 1. Asked on the user's terminal, answered "once" with one key: it runs.
    term.write(b"\r");
    term.wait_for("denied ProcessExec", Duration::from_secs(10));
    assert!(term.seen().contains("[o]nce [s]ession [a]lways [d]eny"), "{:?}", term.seen());
    assert!(!term.seen().contains("probe-ran-one"), "the exec waits for the answer");
    term.write(b"o");
    term.wait_for("rc-one=0", Duration::from_secs(10));
    assert!(term.seen().contains("probe-ran-one"), "{:?}", term.seen());

    // 2. Asked again (once was once). The agent writes the answer's keys
    // to its own terminal: that is output, never the user's input, so
    // nobody answers and the time runs out: denied.
    let asked = term.seen().matches("denied ProcessExec").count();
    term.write(b"\r");
    eventually(Duration::from_secs(10), "asked again", || {
        (term.seen().matches("denied ProcessExec").count() > asked).then_some(())
    });
    term.wait_for("rc-two=", Duration::from_secs(15));
    let seen = term.seen();
    assert!(!seen.contains("probe-ran-two"), "{seen:?}");
    assert!(!seen.contains("rc-two=0"), "{seen:?}");

    // 3. "always": it runs, and the policy file gains the permit.
    let asked = term.seen().matches("denied ProcessExec").count();
    term.write(b"\r");
    eventually(Duration::from_secs(10), "asked a third time", || {
        (term.seen().matches("denied ProcessExec").count() > asked).then_some(())
    });
    term.write(b"a");
    term.wait_for("rc-three=0", Duration::from_secs(10));
    let text_after = std::fs::read_to_string(&policy).unwrap();
    assert!(text_after.starts_with(text_before), "{text_after}");
    let permit = format!("resource == File::\"{}\"", probe.display());
    assert!(text_after.contains(&permit) && text_after.contains("Action::\"ProcessExec\""), "{text_after}");

    // 4. Not asked again: the policy allows it now.
    let asked = term.seen().matches("denied ProcessExec").count();
    term.write(b"\r");
    term.wait_for("rc-four=0", Duration::from_secs(10));
    let seen = term.seen();
    assert!(seen.contains("probe-ran-four"), "{seen:?}");
    assert_eq!(seen.matches("denied ProcessExec").count(), asked, "not asked again: {seen:?}");

    // 5. A name the agent chose cannot drive the user's terminal (here, an
    // escape sequence that would retitle the window): it shows escaped.
    // "deny" refuses it at once.
    term.write(b"\r");
    term.wait_for("title\\u{1b}]0;pwned\\u{7}.sh", Duration::from_secs(10));
    assert!(!term.seen().contains("\x1b]0;pwned"), "{:?}", term.seen());
    term.write(b"d");
    term.wait_for("rc-five=", Duration::from_secs(10));
    let seen = term.seen();
    assert!(!seen.contains("rc-five=0") && !seen.contains("probe-ran-five"), "{seen:?}");

    // 6. The session ends while a question shows: the user's terminal is
    // given back as the program left it (the question's screen left).
    let asked = term.seen().matches("denied ProcessExec").count();
    term.write(b"\r");
    eventually(Duration::from_secs(10), "asked a sixth time", || {
        (term.seen().matches("denied ProcessExec").count() > asked).then_some(())
    });
    assert!(stack.leashctl(&["sessions", "stop", &id]).status.success());
    assert!(term.wait(Duration::from_secs(15)).is_some(), "{:?}", term.seen());
    let seen = term.seen();
    let (entered, left) = (seen.rfind("\x1b[?1049h").unwrap(), seen.rfind("\x1b[?1049l").unwrap_or(0));
    assert!(left > entered, "the question's screen is left: {seen:?}");

    // Every answer is an event, and so is each asked exec's outcome.
    let probe_path = probe.display().to_string();
    for answer in ["once", "timeout", "always", "deny"] {
        let e = event_where(&stack, &format!("ask.answer {answer}"), |e| {
            e["action"] == "ask.answer" && e["session"] == id.as_str() && e["details"]["answer"] == answer
        });
        if answer != "deny" {
            assert_eq!(e["resource"], probe_path.as_str(), "{e}");
        }
        let by = e["details"]["by"].as_str().unwrap_or_default();
        assert!(if answer == "timeout" { by == "nobody" } else { by.starts_with("terminal (uid ") }, "{e}");
        event_where(&stack, &format!("the exec's outcome: {answer}"), |e| {
            e["action"] == "ProcessExec"
                && e["session"] == id.as_str()
                && (e["resource"] == probe_path.as_str() || answer == "deny")
                && e["details"]["ask"] == answer
                && e["decision"] == if matches!(answer, "timeout" | "deny") { "deny" } else { "allow" }
        });
    }
    // The agent's escape sequence reaches no terminal through the event
    // list either (it would retitle the window, or rewrite the lines above).
    let listed = text(&stack.leashctl(&["events", "--session", &id, "--decision", "deny"]).stdout);
    assert!(listed.contains("title\\u{1b}]0;pwned\\u{7}.sh") && !listed.contains('\x1b'), "{listed:?}");
    nothing_left(&stack);
}
