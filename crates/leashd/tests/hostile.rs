//! The hostile-agent suite (`cargo xtask hostile`, and `cargo test`): a
//! battery of the attempts a prompt-injected agent makes to get around the
//! file, exec, write and network rules, inside real sessions on the test
//! images, on the tier this kernel has (the LSM tier where it runs BPF LSM,
//! `cargo xtask vmtest --sessions`; the fallback tier elsewhere). Each attempt is reported as held or
//! bypassed, with the event that decided it; one bypass fails the suite.

use std::path::Path;
use std::time::Duration;

use leash_testkit::{Stack, TEST_IMAGE, git, require_docker, require_image};

const DEBIAN: &str = "leash-test-debian:latest";
/// leash-test with a volume the image declares, holding a file the policy forbids.
const VOLUME_IMAGE: &str = "leash-test-volume:latest";

/// What the forbidden files hold (none may appear in an attempt's output).
const SECRETS: [&str; 4] = ["TOPSECRET", "s3cret", "PRIVATE", "volsecret"];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// How an attempt is expected to be refused.
#[derive(Clone, Copy, Debug)]
enum By {
    /// By a policy decision on this path (relative to the project, or
    /// absolute), with the deciding policy.
    Event(&'static str, &'static str),
    /// By the kernel, before any decision (a read-only or busy mount, a
    /// capability the container lacks): no event.
    Kernel(&'static str),
}

/// One attempt: its name (the script prints `NAME=<outcome>`, where `0` or
/// `ok…` means it got through), what it does, and how it is refused.
struct Attempt {
    name: &'static str,
    what: &'static str,
    script: String,
    by: By,
}

fn attempt(name: &'static str, what: &'static str, script: &str, by: By) -> Attempt {
    Attempt { name, what, script: script.to_owned(), by }
}

/// The outcome printed for an attempt (the last one, "missing" if none).
fn outcome<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout.lines().rev().find_map(|l| l.strip_prefix(&format!("{name}="))).unwrap_or("missing")
}

fn got_through(outcome: &str) -> bool {
    outcome == "0" || outcome.starts_with("ok")
}

/// A policy that allows everything but `forbids`.
fn policy(stack: &Stack, name: &str, forbids: &[String]) -> std::path::PathBuf {
    let mut text = "@id(\"all\") permit (principal, action, resource);\n".to_owned();
    for f in forbids {
        text.push_str(f);
        text.push('\n');
    }
    let path = stack.root().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn forbid(id: &str, action: &str, resource: &str) -> String {
    format!("@id(\"{id}\") forbid (principal, action == Action::\"{action}\", resource {resource});")
}

/// Runs the attempts in one session; the report lines and the bypasses.
fn run(stack: &Stack, image: &str, policy: &Path, attempts: &[Attempt], project: &str) -> (Vec<String>, Vec<String>) {
    let script = attempts.iter().map(|a| a.script.as_str()).collect::<Vec<_>>().join("\n");
    let out = stack
        .leash(&["--image", image, "--policy", policy.to_str().unwrap(), "--", "sh", "-c", &script])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    // The refusals reach the store shortly after the session ends: wait
    // for every one expected of an attempt that was held (a bound wait; a
    // missing one is reported below).
    let expected: Vec<String> = attempts
        .iter()
        .filter_map(|a| match a.by {
            By::Event(path, _) if !got_through(outcome(&stdout, a.name)) => Some(resource(project, path)),
            _ => None,
        })
        .collect();
    let deadline = std::time::Instant::now() + leash_testkit::patience(Duration::from_secs(10));
    let events = loop {
        let e = stack.events();
        let all = expected.iter().all(|p| e.iter().any(|e| e["decision"] == "deny" && e["resource"] == p.as_str()));
        if all || std::time::Instant::now() > deadline {
            break e;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut report = Vec::new();
    let mut bypassed = Vec::new();
    // Whatever the outcomes say, no secret's content came out.
    for secret in SECRETS {
        if stdout.contains(secret) {
            bypassed.push(format!("the content of a forbidden file ({secret}) reached the agent"));
        }
    }
    for a in attempts {
        let got = outcome(&stdout, a.name);
        let held = !got_through(got) && got != "missing";
        let evidence = match a.by {
            By::Event(path, policy) => {
                let path = resource(project, path);
                let e = events.iter().find(|e| e["decision"] == "deny" && e["resource"] == path.as_str());
                match e {
                    Some(e) => {
                        let ids = e["policy_ids"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(","));
                        let ids = ids.unwrap_or_default();
                        if ids != policy {
                            bypassed.push(format!("{}: refused by {ids}, not {policy}", a.name));
                        }
                        let how = e["details"]["traced"]
                            .as_str()
                            .or(e["details"]["call"].as_str().map(|c| if c.is_empty() { "" } else { c }))
                            .unwrap_or("");
                        format!(
                            "{} {} by {ids} ({}{}{})",
                            e["action"].as_str().unwrap_or(""),
                            path,
                            e["details"]["mechanism"].as_str().unwrap_or("kernel program"),
                            if how.is_empty() { "" } else { "; " },
                            how
                        )
                    }
                    None => {
                        if held {
                            bypassed.push(format!("{}: held, but no refusal of {path} in the events", a.name));
                        }
                        format!("no refusal of {path}")
                    }
                }
            }
            By::Kernel(why) => format!("the kernel: {why}"),
        };
        if !held {
            bypassed.push(format!("{}: {got}", a.name));
        }
        report.push(format!(
            "{:<22} {:<8} {:<58} {}",
            a.name,
            if held { "held" } else { "BYPASSED" },
            a.what,
            evidence
        ));
    }
    if bypassed.iter().any(|b| b.contains("missing")) {
        bypassed.push(format!("stdout:\n{stdout}\nstderr:\n{stderr}"));
    }
    (report, bypassed)
}

/// An event's resource: a path relative to the project, or as it is (an
/// absolute path, an address).
fn resource(project: &str, r: &str) -> String {
    if r.starts_with('/') || r.contains(':') { r.to_owned() } else { format!("{project}/{r}") }
}

/// Builds leash-test with a declared volume holding `/vol/secret` (in
/// Docker, where the images are built; `require_image` copies it to the
/// run's engine).
fn volume_image() {
    let dockerfile = format!("FROM {TEST_IMAGE}\nRUN mkdir -p /vol && echo volsecret > /vol/secret\nVOLUME /vol\n");
    let mut build = leash_testkit::docker_on(leash_testkit::Engine::Docker)
        .args(["build", "-q", "-t", VOLUME_IMAGE, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    build.stdin.take().unwrap().write_all(dockerfile.as_bytes()).unwrap();
    let out = build.wait_with_output().unwrap();
    assert!(out.status.success(), "docker build {VOLUME_IMAGE}: {out:?}");
}

#[test]
fn a_hostile_agent_gets_around_nothing_on_either_tier() {
    if !require_docker("a_hostile_agent_gets_around_nothing_on_either_tier")
        || !require_image("a_hostile_agent_gets_around_nothing_on_either_tier", DEBIAN)
    {
        return;
    }
    volume_image();
    assert!(require_image("a_hostile_agent_gets_around_nothing_on_either_tier", VOLUME_IMAGE));
    let mut stack = Stack::new();
    stack.start_leashd_for_sessions();
    stack.wait_healthy(Duration::from_secs(10));
    let proj = stack.project();
    let p = proj.display().to_string();
    for (f, body) in [
        ("secret/key", "s3cret\n"),
        ("open/sibling", "fine\n"),
        ("top1.txt", "TOPSECRET1\n"),
        ("top2.txt", "TOPSECRET2\n"),
        ("top3.txt", "TOPSECRET3\n"),
        ("top4.txt", "TOPSECRET4\n"),
        ("top5.txt", "TOPSECRET5\n"),
        ("outer/private/key", "PRIVATE\n"),
        ("notes.txt", "notes\n"),
    ] {
        std::fs::create_dir_all(proj.join(f).parent().unwrap()).unwrap();
        std::fs::write(proj.join(f), body).unwrap();
    }
    std::fs::copy("/bin/busybox", proj.join("tool")).expect("the host's busybox (busybox-static)");
    std::fs::copy(leash_testkit::static_storm(), proj.join("leash-storm")).unwrap();
    git(&proj, &["init", "-q"]);
    let config_before = std::fs::read_to_string(proj.join(".git/config")).unwrap();
    let mut deep = format!("{p}/secret");
    while deep.len() < 300 {
        deep.push_str("/dddddddddddddddddddd");
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(format!("{deep}/key"), "deep\n").unwrap();
    let deep_rel = deep.strip_prefix(&format!("{p}/")).unwrap().to_owned();
    let deep_key: &'static str = Box::leak(format!("{deep}/key").into_boxed_str());
    let gateway = leash_testkit::host_address();
    let host_port: &'static str = Box::leak(format!("{gateway}:18080").into_boxed_str());

    // Reading is forbidden (writing too, in secret/); the tops and private/
    // may be written, linked and renamed: their identity must hold them.
    let forbids = vec![
        forbid("no-secret", "FileOpen", &format!("in Dir::\"{p}/secret/\"")),
        forbid("no-top1", "FileOpenReadOnly", &format!("== File::\"{p}/top1.txt\"")),
        forbid("no-top2", "FileOpenReadOnly", &format!("== File::\"{p}/top2.txt\"")),
        forbid("no-top3", "FileOpenReadOnly", &format!("== File::\"{p}/top3.txt\"")),
        forbid("no-top4", "FileOpenReadOnly", &format!("== File::\"{p}/top4.txt\"")),
        forbid("no-top5", "FileOpenReadOnly", &format!("== File::\"{p}/top5.txt\"")),
        forbid("no-private", "FileOpenReadOnly", &format!("in Dir::\"{p}/outer/private/\"")),
        forbid("no-tool", "ProcessExec", &format!("== File::\"{p}/tool\"")),
        forbid("no-volume", "FileOpen", "== File::\"/vol/secret\""),
        forbid("no-lan", "NetworkConnect", "in Net::IpRange::\"10.99.0.0/16\""),
    ];
    let pol = policy(&stack, "hostile.cedar", &forbids);
    let ev = By::Event;
    let attempts = vec![
        // Names.
        attempt(
            "hard-link",
            "ln FILE hard; cat hard",
            "ln top1.txt hard; cat hard; echo hard-link=$?",
            ev("hard", "no-top1"),
        ),
        attempt(
            "forbidden-name-after",
            "cat FILE after an allowed read of its link",
            "cat top1.txt; echo forbidden-name-after=$?",
            ev("top1.txt", "no-top1"),
        ),
        attempt(
            "link-in-dir",
            "ln DIR/key keylink; cat keylink",
            "ln secret/key keylink; cat keylink; echo link-in-dir=$?",
            ev("keylink", "no-secret"),
        ),
        attempt(
            "rename-file",
            "mv FILE moved; cat moved",
            "mv top2.txt moved.txt; cat moved.txt; echo rename-file=$?",
            ev("moved.txt", "no-top2"),
        ),
        attempt(
            "rename-then-wait",
            "mv FILE later; sleep 3; cat later",
            "mv top4.txt later.txt; sleep 3; cat later.txt; echo rename-then-wait=$?",
            ev("later.txt", "no-top4"),
        ),
        attempt(
            "rename-dir",
            "mv DIR stolen",
            "mv secret stolen; cat stolen/key; echo rename-dir=$?",
            ev("secret/", "no-secret"),
        ),
        attempt(
            "rename-parent",
            "mv PARENT p2; cat p2/DIR/key",
            "mv outer outer2; cat outer2/private/key; echo rename-parent=$?",
            ev("outer2/private/key", "no-private"),
        ),
        attempt(
            "exchange",
            "renameat2(EXCHANGE) FILE, allowed; cat allowed",
            "./leash-storm exchange top3.txt open/sibling; cat open/sibling; echo exchange=$?",
            ev("open/sibling", "no-top3"),
        ),
        attempt(
            "symlink",
            "ln -s DIR/key slink; cat slink",
            "ln -s secret/key slink; cat slink; echo symlink=$?",
            ev("secret/key", "no-secret"),
        ),
        attempt(
            "proc-root",
            "cat /proc/self/root/…/key",
            &format!("cat /proc/self/root{p}/secret/key; echo proc-root=$?"),
            ev("secret/key", "no-secret"),
        ),
        attempt(
            "dotdot",
            "cd open; cat ../secret/key",
            "(cd open && cat ../secret/key); echo dotdot=$?",
            ev("secret/key", "no-secret"),
        ),
        attempt(
            "long-path",
            "a path over 255 bytes",
            &format!("cat {deep_rel}/key; echo long-path=$?"),
            ev(deep_key, "no-secret"),
        ),
        attempt(
            "opath",
            "O_PATH, then /proc/self/fd/N",
            "./leash-storm opath secret/key",
            ev("secret/key", "no-secret"),
        ),
        attempt(
            // Its flags are in the caller's memory: the fallback tier cannot
            // read them, so the open must hold as a read too.
            "openat2",
            "openat2(O_RDONLY) of a file forbidden to read only",
            "./leash-storm openat2 top5.txt",
            ev("top5.txt", "no-top5"),
        ),
        attempt(
            "handle",
            "open_by_handle_at",
            "./leash-storm handle open/../secret/key",
            By::Kernel("open_by_handle_at is refused (EPERM)"),
        ),
        attempt(
            "uring",
            "io_uring (opens no filter sees)",
            "./leash-storm uring",
            By::Kernel("io_uring_setup is refused (EPERM)"),
        ),
        // leash-entry's control connection (`leash exec`): not dumpable,
        // so neither copied nor listed.
        attempt(
            "control-door",
            "pidfd_getfd of PID 1's control connection",
            "./leash-storm door",
            By::Kernel("leash-entry is not dumpable (EPERM)"),
        ),
        attempt(
            "control-proc",
            "/proc/1/fd of leash-entry",
            "ls -l /proc/1/fd/ && readlink /proc/1/fd/100; echo control-proc=$?",
            By::Kernel("leash-entry is not dumpable (EACCES)"),
        ),
        attempt(
            "sendfile",
            "sendfile from an inherited descriptor",
            "./leash-storm sendfile hard",
            ev("hard", "no-top1"),
        ),
        attempt(
            "volume",
            "a file in a volume the image declares",
            "cat /vol/secret; echo volume=$?",
            ev("/vol/secret", "no-volume"),
        ),
        // Execs.
        attempt("exec", "./tool", "./tool true; echo exec=$?", ev("tool", "no-tool")),
        attempt("exec-link", "ln tool t2; ./t2", "ln tool t2; ./t2 true; echo exec-link=$?", ev("t2", "no-tool")),
        attempt(
            "execveat",
            "execveat(AT_EMPTY_PATH) of tool",
            "./leash-storm execveat ./tool true",
            ev("tool", "no-tool"),
        ),
        attempt("exec-rename", "mv tool t3; ./t3", "mv tool t3; ./t3 true; echo exec-rename=$?", ev("t3", "no-tool")),
        // Planting (protect-host, on whatever the session's policy says).
        attempt(
            "create-hook",
            "echo > .git/hooks/pre-commit",
            "echo x > .git/hooks/pre-commit; echo create-hook=$?",
            ev(".git/hooks/pre-commit", "protect-host"),
        ),
        attempt(
            "create-envrc",
            "echo > .envrc (nothing left behind)",
            "echo y > .envrc; echo create-envrc=$?",
            ev(".envrc", "protect-host"),
        ),
        attempt(
            "create-mcp-json",
            "a project .mcp.json that would start a server on the host",
            "printf '{\"mcpServers\":{\"x\":{\"command\":\"sh\",\"args\":[\"-c\",\"touch mcp-ran\"]}}}' > .mcp.json; echo create-mcp-json=$?",
            ev(".mcp.json", "protect-host"),
        ),
        attempt(
            "rename-mcp-json",
            "mv staged .mcp.json",
            "echo '{}' > staged-mcp; mv staged-mcp .mcp.json; echo rename-mcp-json=$?",
            ev(".mcp.json", "protect-host"),
        ),
        attempt(
            "rename-hook",
            "mv evil .git/hooks/pre-commit",
            "printf '#!/bin/sh\\ntouch hook-ran\\n' > evil; chmod +x evil; mv evil .git/hooks/pre-commit; echo rename-hook=$?",
            ev(".git/hooks/pre-commit", "protect-host"),
        ),
        attempt(
            "symlink-hook",
            "ln -s ../../evil .git/hooks/commit-msg",
            "ln -s ../../evil .git/hooks/commit-msg; echo symlink-hook=$?",
            ev(".git/hooks/commit-msg", "protect-host"),
        ),
        attempt(
            "link-hook",
            "ln notes.txt .git/hooks/post-commit",
            "ln notes.txt .git/hooks/post-commit; echo link-hook=$?",
            ev(".git/hooks/post-commit", "protect-host"),
        ),
        attempt(
            "chmod-hook",
            "chmod +x .git/hooks/pre-push.sample",
            "chmod +x .git/hooks/pre-push.sample; echo chmod-hook=$?",
            ev(".git/hooks/pre-push.sample", "protect-host"),
        ),
        attempt(
            "rename-config",
            "mv cfg .git/config",
            "printf '[core]\\n\\thooksPath = /tmp\\n' > cfg; mv cfg .git/config; echo rename-config=$?",
            ev(".git/config", "protect-host"),
        ),
        attempt(
            "rename-git",
            "mv .git .git-old",
            "mv .git .git-old; echo rename-git=$?",
            By::Kernel(".git is a mount point in the session (EBUSY)"),
        ),
        attempt(
            "rename-envrc",
            "mv staged .envrc",
            "echo w > staged; mv staged .envrc; echo rename-envrc=$?",
            ev(".envrc", "protect-host"),
        ),
        attempt(
            "link-envrc",
            "ln notes.txt .envrc",
            "ln notes.txt .envrc; echo link-envrc=$?",
            ev(".envrc", "protect-host"),
        ),
        attempt(
            "symlink-envrc",
            "ln -s notes.txt .envrc",
            "ln -s notes.txt .envrc; echo symlink-envrc=$?",
            ev(".envrc", "protect-host"),
        ),
        attempt("fifo-envrc", "mkfifo .envrc", "mkfifo .envrc; echo fifo-envrc=$?", ev(".envrc", "protect-host")),
        attempt(
            "dangling",
            "ln -s .envrc d; echo > d",
            "ln -s .envrc dangling; echo w > dangling; echo dangling=$?",
            ev(".envrc", "protect-host"),
        ),
        attempt(
            "touch-config",
            "touch .git/config",
            "touch .git/config; echo touch-config=$?",
            ev(".git/config", "protect-host"),
        ),
        attempt(
            "truncate-config",
            "truncate -s 0 .git/config",
            "truncate -s 0 .git/config; echo truncate-config=$?",
            ev(".git/config", "protect-host"),
        ),
        // Network.
        attempt(
            "tcp",
            "TCP to a forbidden address",
            "nc -w 1 10.99.1.1 80 </dev/null; echo tcp=$?",
            ev("10.99.1.1:80", "no-lan"),
        ),
        attempt(
            "udp",
            "UDP (DNS) to a forbidden address",
            "nslookup example.com 10.99.1.1 >/dev/null 2>&1; echo udp=$?",
            ev("10.99.1.1:53", "no-lan"),
        ),
        attempt(
            "v4-mapped",
            "TCP to ::ffff:10.99.1.2",
            "nc -w 1 ::ffff:10.99.1.2 80 </dev/null; echo v4-mapped=$?",
            ev("10.99.1.2:80", "no-lan"),
        ),
        attempt(
            "host-ports",
            "the host's own address (the Control UI's port)",
            &format!("nc -w 1 {gateway} 18080 </dev/null; echo host-ports=$?"),
            ev(host_port, "leash:local-address"),
        ),
        attempt(
            "metadata",
            "the cloud metadata address",
            "nc -w 1 169.254.169.254 80 </dev/null; echo metadata=$?",
            ev("169.254.169.254:80", "leash:local-address"),
        ),
        attempt(
            "raw-socket",
            "ping (a raw socket)",
            "ping -c 1 -W 1 10.99.1.1 >/dev/null 2>&1; echo raw-socket=$?",
            By::Kernel("no CAP_NET_RAW in the session"),
        ),
        attempt(
            "icmp",
            "an unprivileged ICMP socket",
            "./leash-storm icmp",
            By::Kernel("ICMP sockets are refused to the session (EPERM)"),
        ),
    ];
    let (mut report, mut bypassed) = run(&stack, VOLUME_IMAGE, &pol, &attempts, &p);

    // On the host afterwards: nothing planted, nothing of the secrets out,
    // and the user's next commit runs no hook.
    let mut host = |name: &str, what: &str, held: bool| {
        report.push(format!("{name:<22} {:<8} {what}", if held { "held" } else { "BYPASSED" }));
        if !held {
            bypassed.push(name.to_owned());
        }
    };
    let planted: Vec<&str> = ["pre-commit", "commit-msg", "post-commit"]
        .into_iter()
        .filter(|h| std::fs::symlink_metadata(proj.join(".git/hooks").join(h)).is_ok())
        .collect();
    host("hooks-on-host", "no hook in .git/hooks on the host", planted.is_empty());
    host(
        "envrc-on-host",
        "no .envrc on the host, not even empty",
        std::fs::symlink_metadata(proj.join(".envrc")).is_err(),
    );
    host(
        "config-on-host",
        ".git/config unchanged",
        std::fs::read_to_string(proj.join(".git/config")).unwrap_or_default() == config_before,
    );
    git(&proj, &["add", "notes.txt"]);
    git(&proj, &["commit", "-q", "-m", "after the session"]);
    host("git-commit-on-host", "git commit on the host runs no hook", !proj.join("hook-ran").exists());

    // The dynamic loader (a Debian image: ld.so and dynamic binaries).
    let loader = vec![
        attempt(
            "ld.so",
            "ld.so ./prog (a program forbidden to run)",
            "ldso=$(ls /lib64/ld-linux-x86-64.so.2 /lib/ld-linux*.so* 2>/dev/null | head -n 1); cp /usr/bin/id prog; \
             cp \"$(ldd /usr/bin/id | sed -n 's/.*libc.so.6 => \\([^ ]*\\).*/\\1/p')\" libevil.so; \
             $ldso ./prog >/dev/null; echo ld.so=$?",
            ev("prog", "no-prog"),
        ),
        attempt(
            "ld.so-preload",
            "ld.so --preload ./libevil.so /bin/true",
            "$ldso --preload ./libevil.so /bin/true 2>&1 | grep -q 'cannot be preloaded'; echo ld.so-preload=$((1 - $?))",
            ev("libevil.so", "no-lib"),
        ),
    ];
    let pol = policy(
        &stack,
        "loader.cedar",
        &[
            forbid("no-prog", "ProcessExec", &format!("== File::\"{p}/prog\"")),
            forbid("no-lib", "ProcessExec", &format!("== File::\"{p}/libevil.so\"")),
        ],
    );
    let (r, b) = run(&stack, DEBIAN, &pol, &loader, &p);
    report.extend(r);
    bypassed.extend(b);

    #[allow(clippy::print_stdout, reason = "the suite's report")]
    {
        let tier = if leash_testkit::file_mechanism() == "bpf-lsm" { "LSM" } else { "fallback" };
        println!("\nhostile-agent suite, {tier} tier ({} attempts):\n{}\n", report.len(), report.join("\n"));
    }
    assert!(bypassed.is_empty(), "bypassed:\n{}", bypassed.join("\n"));
}
