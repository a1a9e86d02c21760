//! The sensor on this kernel (the fallback tier), end to end: real Docker,
//! the test image, the real BPF programs and fanotify, driven through
//! `leash` and `leashctl` as a user would.

use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leash_testkit::{Stack, TEST_IMAGE, eventually, require_docker};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn stack() -> Stack {
    let mut s = Stack::new();
    s.start_leashd_for_sessions();
    s.wait_healthy(Duration::from_secs(10));
    s
}

/// A policy that allows everything but what each test forbids.
fn policy(stack: &Stack, forbids: &[&str]) -> std::path::PathBuf {
    let mut text = "@id(\"all\") permit (principal, action, resource);\n".to_owned();
    for f in forbids {
        text.push_str(f);
        text.push('\n');
    }
    let path = stack.root().join("policy.cedar");
    std::fs::write(&path, text).unwrap();
    path
}

fn project_files(stack: &Stack) -> String {
    let p = stack.project();
    for (f, body) in [("secret/key", "s3cret\n"), ("open/sibling", "fine\n"), ("ro/file", "read me\n")] {
        std::fs::create_dir_all(p.join(f).parent().unwrap()).unwrap();
        std::fs::write(p.join(f), body).unwrap();
    }
    std::fs::copy("/bin/busybox", p.join("tool")).expect("the host's busybox (busybox-static)");
    std::fs::copy(leash_testkit::static_storm(), p.join("leash-storm")).unwrap();
    p.display().to_string()
}

/// Waits until the stack's only session runs; its id and container.
fn running(stack: &Stack) -> (String, String) {
    stack.running_session(Duration::from_secs(10))
}

/// Forbids opening anything in the project's `secret/`.
fn no_secret(project: &str) -> String {
    format!(
        "@id(\"no-secret\") forbid (principal, action == Action::\"FileOpen\", resource in Dir::\"{project}/secret/\");"
    )
}

/// Forbids reading anything in the project's `secret/` (writing, and so
/// linking and renaming, stays allowed: what is left to hold the files is
/// their identity).
fn no_read_secret(project: &str) -> String {
    no_secret(project).replace("\"FileOpen\"", "\"FileOpenReadOnly\"")
}

/// Forbids executing one file, as policy `id`.
fn no_exec(id: &str, file: &str) -> String {
    format!("@id(\"{id}\") forbid (principal, action == Action::\"ProcessExec\", resource == File::\"{file}\");")
}

/// Forbids connecting to 10.99.0.0/16.
const NO_LAN: &str = "@id(\"no-lan\") forbid (principal, action == Action::\"NetworkConnect\", resource in Net::IpRange::\"10.99.0.0/16\");";

fn docker_exec(container: &str, script: &str) -> Output {
    leash_testkit::docker().args(["exec", container, "sh", "-c", script]).output().unwrap()
}

#[test]
fn files_execs_and_connections_are_enforced_in_a_real_container() {
    if !require_docker("files_execs_and_connections_are_enforced_in_a_real_container") {
        return;
    }
    let stack = stack();
    let p = project_files(&stack);
    let policy = policy(
        &stack,
        &[
            &no_secret(&p),
            &format!(
                "@id(\"ro\") forbid (principal, action == Action::\"FileOpenReadWrite\", resource in Dir::\"{p}/ro/\");"
            ),
            &no_exec("no-tool", &format!("{p}/tool")),
            NO_LAN,
            "@id(\"no-v6\") forbid (principal, action == Action::\"NetworkConnect\", resource in Host::\"[2001:db8::7]:80\");",
        ],
    );
    let gateway = leash_testkit::host_address();
    let script = format!(
        "\
        cat secret/key; echo read-secret=$?; \
        cat open/sibling; echo read-sibling=$?; \
        echo x >> ro/file; echo write-ro=$?; \
        cat ro/file; echo read-ro=$?; \
        ./tool true; echo exec-tool=$?; \
        /bin/true; echo exec-true=$?; \
        nc -w 1 10.99.1.1 80; echo connect-lan=$?; \
        nc -w 1 127.0.0.1 9; echo connect-local=$?; \
        nc -w 1 2001:db8::7 80; echo connect-v6=$?; \
        nc -w 1 2001:db8::8 80; echo connect-v6-other=$?; \
        nc -w 1 ::ffff:10.99.1.1 80; echo connect-mapped=$?; \
        nc -w 1 169.254.169.254 80; echo connect-metadata=$?; \
        nc -w 1 {gateway} 18080; echo connect-host=$?; \
        sed -n 's/^nameserver //p' /etc/resolv.conf | head -n 1 > resolver; \
        ./leash-storm connect 1 $(cat resolver):53 > dns; echo dns=$(cut -d' ' -f3 dns); \
        sh -c 'exit 3'; echo child=$?; \
        sh -c '( exit 4 ); ( exit 0 ); exit 5'; echo quiet=$?"
    );
    let out = stack
        .leash(&["--image", TEST_IMAGE, "--policy", policy.to_str().unwrap(), "--", "sh", "-c", &script])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let result = |name: &str| -> String {
        stdout.lines().find_map(|l| l.strip_prefix(&format!("{name}="))).unwrap_or("missing").to_owned()
    };
    assert_ne!(result("read-secret"), "0", "{stdout}\n{stderr}");
    assert!(!stdout.contains("s3cret"), "{stdout}");
    assert_eq!(result("read-sibling"), "0", "{stdout}\n{stderr}");
    assert_ne!(result("write-ro"), "0", "{stdout}\n{stderr}");
    assert_eq!(result("read-ro"), "0", "{stdout}\n{stderr}");
    assert_eq!(result("exec-tool"), "126", "{stdout}\n{stderr}");
    assert_eq!(result("exec-true"), "0", "{stdout}\n{stderr}");
    assert_ne!(result("connect-lan"), "0", "{stdout}\n{stderr}");
    // Refused by the policy (EPERM) — not by the network, which refuses the others.
    // Files and execs: EPERM from fanotify, EACCES from the LSM tier (as
    // the Go leash's LSM answers).
    let eperm: Vec<&str> = stderr.lines().filter(|l| l.contains("Operation not permitted")).collect();
    let refused: Vec<&str> =
        stderr.lines().filter(|l| l.contains("Operation not permitted") || l.contains("Permission denied")).collect();
    assert!(refused.iter().any(|l| l.contains("cat: can't open 'secret/key'")), "{stderr}");
    assert!(refused.iter().any(|l| l.contains("ro/file")), "{stderr}");
    assert!(refused.iter().any(|l| l.contains("./tool")), "{stderr}");
    assert!(eperm.iter().any(|l| l.contains("10.99.1.1")), "{stderr}");
    // The IPv6 one, and IPv4-mapped IPv6 decided as the IPv4 address it is;
    // the other IPv6 destination fails for lack of a route, not by policy.
    assert_eq!(
        eperm.iter().filter(|l| l.starts_with("nc: can't connect to remote host: ")).count(),
        2,
        "v6 and mapped v4 refused: {stderr}"
    );
    assert!(stderr.contains("Cannot assign requested address") || stderr.contains("unreachable"), "{stderr}");
    // The kernel's guards: a permit on every resource does not open the
    // container's loopback, link-local (the cloud metadata address) or the
    // host's own addresses; the container's resolver answers on port 53.
    for (what, ip) in
        [("connect-local", "127.0.0.1"), ("connect-metadata", "169.254.169.254"), ("connect-host", &gateway)]
    {
        assert_ne!(result(what), "0", "{stdout}\n{stderr}");
        assert!(stderr.contains(&format!("{ip}): Operation not permitted")), "{what}: {stderr}");
    }
    assert_eq!(result("dns"), "0", "{stdout}\n{stderr}");
    assert_eq!(result("child"), "3", "{stdout}\n{stderr}");
    assert!(out.status.success(), "{out:?}");

    // Every refusal is an event naming the session, the process and the resource.
    let events = stack.events();
    let denied = |action: &str, resource: &str| {
        events.iter().find(|e| e["action"] == action && e["resource"] == resource && e["decision"] == "deny").cloned()
    };
    let e = denied("FileOpenReadOnly", &format!("{p}/secret/key")).expect("the secret read's event");
    assert_eq!(e["policy_ids"], serde_json::json!(["no-secret"]), "{e}");
    assert!(e["pid"].as_u64().unwrap() > 1 && !e["session"].as_str().unwrap().is_empty(), "{e}");
    assert!(denied("FileOpenReadWrite", &format!("{p}/ro/file")).is_some());
    let x = denied("ProcessExec", &format!("{p}/tool")).expect("the exec's event");
    // Decided by the tier this kernel has (bpf-lsm where it runs BPF LSM).
    for e in [&e, &x] {
        let mechanism = e["details"]["mechanism"].as_str().unwrap_or_default();
        assert!(mechanism.starts_with(leash_testkit::file_mechanism()), "{e}");
    }
    let c = denied("NetworkConnect", "10.99.1.1:80").expect("the connect's event");
    assert_eq!((c["policy_ids"][0].as_str(), c["details"]["comm"].as_str()), (Some("no-lan"), Some("nc")), "{c}");
    assert!(denied("NetworkConnect", "[2001:db8::7]:80").is_some());
    assert!(
        events.iter().any(|e| e["resource"] == format!("{p}/open/sibling") && e["decision"] == "allow"),
        "allowed opens are events too"
    );
    // Filtered as a user asks.
    let out = stack.leashctl(&["events", "--json", "--action", "NetworkConnect", "--decision", "deny"]);
    let filtered: Vec<serde_json::Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(filtered.len(), 6, "{filtered:?}");
    assert!(filtered.iter().all(|e| e["action"] == "NetworkConnect" && e["decision"] == "deny"));
    for resource in ["127.0.0.1:9", "169.254.169.254:80", &format!("{gateway}:18080")] {
        let e = denied("NetworkConnect", resource).unwrap_or_else(|| panic!("{resource}: {filtered:?}"));
        assert_eq!(e["policy_ids"], serde_json::json!(["leash:local-address"]), "{e}");
    }
    let resolver = std::fs::read_to_string(stack.project().join("resolver")).unwrap();
    let dns = events
        .iter()
        .find(|e| e["resource"] == format!("{}:53", resolver.trim()) && e["decision"] == "allow")
        .unwrap_or_else(|| panic!("the DNS datagram's event (resolver {resolver})"));
    assert_eq!(dns["policy_ids"], serde_json::json!(["leash:dns-resolver"]), "{dns}");

    // Lineage: every process of the session is a fork event naming its
    // parent, and an exit event with its status.
    let exit = events
        .iter()
        .find(|e| e["action"] == "process.exit" && e["details"]["exit_code"] == "3")
        .expect("the child's exit");
    let child = exit["pid"].as_u64().unwrap();
    let fork = events
        .iter()
        .find(|e| e["action"] == "process.fork" && e["pid"].as_u64() == Some(child))
        .expect("the child's fork");
    let parent: u64 = fork["details"]["ppid"].as_str().unwrap().parse().unwrap();
    assert!(
        events.iter().any(|e| e["action"] == "process.fork" && e["pid"].as_u64() == Some(parent)),
        "the parent's own fork: {fork}"
    );
    assert_eq!(fork["kind"], "process", "{fork}");
    assert!(exit["details"]["signal"].is_null() && exit["decision"].is_null(), "{exit}");
    // The subshells came and went without an event of their own: one
    // count for both, naming their parent (whose fork and exit went out),
    // and no fork or exit of their own.
    assert_eq!(result("quiet"), "5", "{stdout}\n{stderr}");
    let shell = events
        .iter()
        .find(|e| e["action"] == "process.exit" && e["details"]["exit_code"] == "5")
        .and_then(|e| e["pid"].as_u64())
        .expect("the subshells' parent's exit");
    let quiet = eventually(Duration::from_secs(5), "the quiet processes' count", || {
        stack.events().into_iter().find(|e| {
            e["action"] == "process.fork"
                && e["details"]["ppid"].as_str().and_then(|p| p.parse::<u64>().ok()) == Some(shell)
                && !e["details"]["processes"].is_null()
        })
    });
    assert_eq!(
        (quiet["details"]["processes"].as_str(), quiet["details"]["failed"].as_str()),
        (Some("2"), Some("1")),
        "{quiet}"
    );
    assert!(events.iter().any(|e| e["action"] == "process.fork" && e["pid"].as_u64() == Some(shell)));
    assert!(!events.iter().any(|e| e["action"] == "process.exit" && e["details"]["exit_code"] == "4"), "{quiet}");
    let file = denied("FileOpenReadOnly", &format!("{p}/secret/key")).unwrap();
    assert!(file["details"]["ppid"].as_str().is_some_and(|p| p.parse::<u32>().unwrap() > 0), "{file}");
}

#[test]
fn modes_and_edits_apply_live_and_outsiders_are_never_affected() {
    if !require_docker("modes_and_edits_apply_live_and_outsiders_are_never_affected") {
        return;
    }
    let stack = stack();
    let p = project_files(&stack);
    let policy = policy(&stack, &[&no_secret(&p)]);
    let mut leash = stack
        .leash(&["--image", TEST_IMAGE, "--policy", policy.to_str().unwrap(), "--", "sleep", "30"])
        .spawn()
        .unwrap();
    let (id, container) = running(&stack);
    let read = |path: &str| docker_exec(&container, &format!("cat {p}/{path}")).status.success();
    assert!(!read("secret/key"), "enforce denies");
    assert!(read("open/sibling"));

    // The session's status names how each action is governed.
    let v: serde_json::Value = serde_json::from_slice(&stack.leashctl(&["sessions", "--json"]).stdout).unwrap();
    let enforcement = v[0]["enforcement"].as_str().unwrap().to_owned();
    let files = format!("file-read={}", leash_testkit::file_mechanism());
    assert!(enforcement.contains(&files) && enforcement.contains("connect=cgroup-sock"), "{v}");
    let status = stack.status().unwrap();
    assert_eq!(status["governed"][0]["enforcement"].as_str(), Some(enforcement.as_str()), "{status}");
    assert!(text(&stack.leashctl(&["status"]).stdout).contains(&files));

    // Shadow allows and flags; enforce denies again — live.
    stack.leashctl(&["policy", "mode", "shadow", "--session", &id]);
    eventually(Duration::from_secs(2), "shadow in force", || read("secret/key").then_some(()));
    let flagged = eventually(Duration::from_secs(5), "a would-deny event", || {
        stack
            .events()
            .into_iter()
            .find(|e| e["resource"] == format!("{p}/secret/key") && e["would_deny"] == true && e["decision"] == "allow")
    });
    assert_eq!(flagged["mode"], "shadow", "{flagged}");
    stack.leashctl(&["policy", "mode", "enforce", "--session", &id]);
    eventually(Duration::from_secs(2), "enforce in force", || (!read("secret/key")).then_some(()));

    // A policy edit applies to the running session.
    let forbid_sibling =
        format!("@id(\"no-sibling\") forbid (principal, action, resource == File::\"{p}/open/sibling\");");
    let out = stack.leashctl(&["policy", "add", "--session", &id, &forbid_sibling]);
    assert!(out.status.success(), "{out:?}");
    eventually(Duration::from_secs(2), "the edit in force", || (!read("open/sibling")).then_some(()));
    stack.leashctl(&["policy", "remove", "--session", &id, "no-sibling"]);
    eventually(Duration::from_secs(2), "the removal in force", || read("open/sibling").then_some(()));

    // Processes outside the session are never affected, even looking into
    // the container's mounts.
    assert_eq!(std::fs::read_to_string(format!("{p}/secret/key")).unwrap(), "s3cret\n");
    let pid = leash_testkit::docker().args(["inspect", "-f", "{{.State.Pid}}", &container]).output().unwrap();
    let pid = text(&pid.stdout).trim().to_owned();
    let through = std::fs::read_to_string(format!("/proc/{pid}/root{p}/secret/key")).unwrap();
    assert_eq!(through, "s3cret\n");

    leash.kill().unwrap();
    let _ = leash.wait();
}

#[test]
fn doctor_reports_what_is_enforced_and_proves_it() {
    if !leash_testkit::require_root("doctor_reports_what_is_enforced_and_proves_it") {
        return;
    }
    let mut stack = Stack::new();
    stack.start_leashd();
    stack.wait_healthy(Duration::from_secs(10));
    let doctor = |args: &[&str]| {
        let out = stack.leashctl(&[&["doctor", "--json"], args].concat());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"));
        (out.status.code(), v)
    };
    let (code, v) = doctor(&[]);
    let mechanism = |v: &serde_json::Value, action: &str| {
        v["capabilities"].as_array().unwrap().iter().find(|c| c["action"] == action).unwrap()["mechanism"].clone()
    };
    assert_eq!(code, Some(0), "{v}");
    // Sessions run on the LSM tier wherever the kernel allows BPF LSM, on
    // the fallback tier elsewhere; the probe says which, in words that
    // match the kernel.
    let lsm_tier = leash_testkit::file_mechanism() == "bpf-lsm";
    assert_eq!(v["tier"], if lsm_tier { "lsm" } else { "fallback" }, "{v}");
    let lsm = v["probes"]["bpf-lsm"].as_str().unwrap();
    let active = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    assert!(
        lsm.contains("refuses")
            || lsm.starts_with("programs load but")
            || (lsm == "ok" && active.split(',').any(|l| l == "bpf")),
        "the bpf-lsm probe ({lsm:?}) contradicts the active LSMs ({active:?}): {v}"
    );
    assert_eq!(
        (mechanism(&v, "file-read"), mechanism(&v, "connect")),
        (leash_testkit::file_mechanism().into(), "cgroup-sock".into())
    );
    assert!(v["self_test"]["checks"].as_array().unwrap().iter().all(|c| c["outcome"] == "denied"), "{v}");
    // What this tier does not refuse is said, never silent.
    let gaps = v["not_refused"].as_array().unwrap();
    let said = |what: &str| gaps.iter().any(|g| g["attempt"].as_str().unwrap().contains(what));
    if lsm_tier {
        assert!(said("utimes"), "{v}");
    } else {
        assert!(said("rename") && said("O_CREAT"), "{v}");
    }
    // The negative control: with the mechanisms off, the report says so and
    // the self-test fails — it can fail.
    let (code, v) = doctor(&["--without", "fanotify", "--without", "bpf-lsm", "--without", "cgroup-sock"]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(mechanism(&v, "file-read"), "observe-only");
    assert!(v["self_test"]["checks"].as_array().unwrap().iter().all(|c| c["passed"] == false), "{v}");
}

/// The pid of the session's file decider (its holder process).
fn holder_pid(session: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        (args.get(1) == Some(&b"--hold".as_slice()) && args.get(2) == Some(&session.as_bytes())).then_some(pid)
    })
}

#[test]
fn enforcement_never_pauses_when_the_sensor_or_the_decider_is_killed() {
    if !require_docker("enforcement_never_pauses_when_the_sensor_or_the_decider_is_killed") {
        return;
    }
    let stack = stack();
    let p = project_files(&stack);
    let policy = policy(&stack, &[&no_secret(&p), NO_LAN]);
    // The agent retries forbidden operations the whole time.
    let script = "for i in $(seq 1 150); do \
                    cat secret/key >/dev/null 2>&1 && echo LEAK-$i; \
                    nc -w 1 10.99.1.1 80 2>/dev/null && echo NETLEAK-$i; \
                    sleep 0.05; \
                  done; echo done";
    let leash = stack
        .leash(&["--image", TEST_IMAGE, "--policy", policy.to_str().unwrap(), "--", "sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (id, container) = running(&stack);
    let sensor_pid = || Stack::component(&stack.status().unwrap(), "leash-sensor")["pid"].as_u64().unwrap_or(0) as u32;
    for _ in 0..5 {
        let pid = sensor_pid();
        leash_testkit::kill(pid, rustix::process::Signal::KILL);
        eventually(Duration::from_secs(5), "the sensor back", || {
            let now = sensor_pid();
            (now != 0 && now != pid).then_some(())
        });
        std::thread::sleep(Duration::from_millis(300));
    }
    // leashd follows the restarted sensor again before the decider is
    // killed (what the sensor reports while nobody follows is not kept): an
    // event of the session's loop from after the last restart reaches it.
    let restarted = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    eventually(Duration::from_secs(10), "leashd following the restarted sensor", || {
        stack
            .events()
            .iter()
            .any(|e| {
                e["session"] == id.as_str()
                    && e["time"].as_str().and_then(leash_core::time::parse_rfc3339).is_some_and(|t| t > restarted)
            })
            .then_some(())
    });
    // The decider itself: the session is frozen until another takes over.
    let holder = holder_pid(&id).expect("the session's holder");
    leash_testkit::kill(holder, rustix::process::Signal::KILL);
    eventually(Duration::from_secs(5), "a new holder", || holder_pid(&id).filter(|h| *h != holder));
    // After all that, a live edit still reaches the session.
    let out = stack.leashctl(&[
        "policy",
        "add",
        "--session",
        &id,
        &format!("@id(\"no-sibling\") forbid (principal, action, resource == File::\"{p}/open/sibling\");"),
    ]);
    assert!(out.status.success(), "{out:?}");
    eventually(Duration::from_secs(3), "the edit in force", || {
        (!docker_exec(&container, &format!("cat {p}/open/sibling")).status.success()).then_some(())
    });
    let out = finished(leash, Duration::from_secs(60));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("done"), "{stdout}");
    assert!(!stdout.contains("LEAK"), "a forbidden operation got through: {stdout}");
    let events = stack.events();
    let restart = events.iter().find(|e| e["action"] == "sensor.decider.restart").expect("the decider's restart");
    assert_eq!((restart["session"].as_str(), restart["details"]["frozen"].as_str()), (Some(id.as_str()), Some("yes")));
}

/// What a child prints, collected as it prints it.
fn collect(stdout: Option<std::process::ChildStdout>) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
    let printed = Arc::new(Mutex::new(String::new()));
    let reader = {
        let printed = printed.clone();
        std::thread::spawn(move || {
            let (mut buf, Some(mut stdout)) = ([0u8; 4096], stdout) else { return };
            while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buf) {
                printed.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    (printed, reader)
}

/// The output of `child` once it exits (its stdout, unless taken
/// already); a failure when it still runs after `limit`.
fn finished(mut child: std::process::Child, limit: Duration) -> Output {
    let (printed, reader) = collect(child.stdout.take());
    let status = eventually(limit, "the session's end", || child.try_wait().unwrap());
    reader.join().unwrap();
    let stdout = std::mem::take(&mut *printed.lock().unwrap()).into_bytes();
    Output { status, stdout, stderr: Vec::new() }
}

/// Continues a stopped process when dropped.
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        leash_testkit::kill(pid, rustix::process::Signal::STOP);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        leash_testkit::kill(self.0, rustix::process::Signal::CONT);
    }
}

#[test]
fn a_decision_in_flight_when_its_decider_dies_is_answered_not_lost() {
    if !require_docker("a_decision_in_flight_when_its_decider_dies_is_answered_not_lost") {
        return;
    }
    let stack = stack();
    let p = project_files(&stack);
    std::fs::write(format!("{p}/slow.txt"), "slow\n").unwrap();
    std::fs::create_dir_all(format!("{p}/made")).unwrap();
    // Decisions about files named slow.txt go to the policy service (a
    // condition on the name), which the test stops to hold them in flight;
    // reading one is forbidden, writing one allowed.
    let policy = policy(
        &stack,
        &[
            "@id(\"slow-read\") forbid (principal, action == Action::\"FileOpenReadOnly\", resource is File) when { resource.name == \"slow.txt\" };",
            "@id(\"slow-write\") forbid (principal, action == Action::\"FileOpenReadWrite\", resource is File) when { resource.name == \"slow.txt\" && resource.path like \"/nowhere/*\" };",
        ],
    );
    let script = "while [ ! -e go1 ]; do sleep 0.1; done; cat slow.txt; echo read=$?; \
                  while [ ! -e go2 ]; do sleep 0.1; done; echo new > made/slow.txt; echo create=$?; echo done";
    let mut leash = stack
        .leash(&["--image", TEST_IMAGE, "--policy", policy.to_str().unwrap(), "--", "sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (id, _container) = running(&stack);
    let (printed, reader) = collect(leash.stdout.take());
    let policy_pid = Stack::component(&stack.status().unwrap(), "leash-policy")["pid"].as_u64().unwrap() as u32;
    // An open (fanotify) and then a creating open (a supervised call),
    // each in flight when its decider is killed.
    for (go, answer) in [("go1", "read=1"), ("go2", "create=0")] {
        let holder = holder_pid(&id).expect("the session's holder");
        let stopped = Stopped::stop(policy_pid);
        std::fs::write(format!("{p}/{go}"), "").unwrap();
        std::thread::sleep(Duration::from_millis(800));
        let before = printed.lock().unwrap().clone();
        assert!(!before.contains(answer.split('=').next().unwrap()), "the decision was not in flight: {before}");
        leash_testkit::kill(holder, rustix::process::Signal::KILL);
        drop(stopped);
        eventually(Duration::from_secs(10), &format!("{answer} once the decider was replaced"), || {
            let now = printed.lock().unwrap().clone();
            now.contains(answer).then_some(())
        });
    }
    let out = finished(leash, Duration::from_secs(20));
    reader.join().unwrap();
    let printed = printed.lock().unwrap().clone();
    assert!(out.status.success() && printed.contains("done"), "{printed}");
    // The successor decided the call again and the kernel performed it.
    assert_eq!(std::fs::read_to_string(format!("{p}/made/slow.txt")).unwrap(), "new\n");
    let restarts = stack.events().iter().filter(|e| e["action"] == "sensor.decider.restart").count();
    assert_eq!(restarts, 2);
}

#[test]
fn bypass_attempts_are_denied() {
    if !require_docker("bypass_attempts_are_denied") {
        return;
    }
    let stack = stack();
    let p = project_files(&stack);
    // A file deeper than 255 bytes of path, inside the forbidden directory.
    let mut deep = format!("{p}/secret");
    while deep.len() < 300 {
        deep.push_str("/dddddddddddddddddddd");
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(format!("{deep}/key"), "deep\n").unwrap();
    let deep_rel = deep.strip_prefix(&format!("{p}/")).unwrap().to_owned();
    let policy = policy(&stack, &[&no_secret(&p), NO_LAN]);
    let script = format!(
        "ln -s secret/key link; cat link; echo symlink=$?; \
         cat /proc/self/root{p}/secret/key; echo proc-root=$?; \
         cd open && cat ../secret/key; echo dotdot=$?; cd ..; \
         cat {deep_rel}/key; echo long-path=$?; \
         nslookup example.com 10.99.1.1 >/dev/null 2>&1; echo udp=$?; \
         ping -c 1 -W 1 10.99.1.1 >/dev/null 2>&1; echo raw-socket=$?; \
         ./leash-storm icmp; \
         echo memfd-noexec=$(cat /proc/sys/vm/memfd_noexec)"
    );
    let out = stack
        .leash(&["--image", TEST_IMAGE, "--policy", policy.to_str().unwrap(), "--", "sh", "-c", &script])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!stdout.contains("s3cret") && !stdout.contains("deep"), "{stdout}");
    // An unprivileged ICMP socket would send to any address unseen.
    assert!(stdout.contains("icmp=Operation not permitted"), "{stdout}");
    // Memfds cannot be executed in the session (fanotify never sees them);
    // a kernel before 6.3 has no such sysctl, and leashd says so.
    if std::path::Path::new("/proc/sys/vm/memfd_noexec").exists() {
        assert!(stdout.contains("memfd-noexec=2"), "{stdout}");
    } else {
        let log = stack.leashd_log(0);
        assert!(
            log.contains("no vm.memfd_noexec: memfd execs are not refused"),
            "this kernel lacks vm.memfd_noexec:\n{log}"
        );
    }
    for attempt in ["symlink", "proc-root", "dotdot", "long-path", "udp", "raw-socket"] {
        let code = stdout.lines().find_map(|l| l.strip_prefix(&format!("{attempt}="))).unwrap_or("missing");
        assert_ne!(code, "0", "{attempt} got through\n{stdout}\n{stderr}");
    }
    // Each file attempt was refused by the policy, with the file's real path.
    let events = stack.events();
    for path in [format!("{p}/secret/key"), format!("{deep}/key")] {
        assert!(
            events.iter().any(|e| e["resource"] == path.as_str() && e["decision"] == "deny"),
            "no denial of {path}"
        );
    }
}

#[test]
fn protect_host_holds_whatever_the_sessions_own_policy_says() {
    if !require_docker("protect_host_holds_whatever_the_sessions_own_policy_says") {
        return;
    }
    let stack = stack();
    let p = stack.project();
    let git = |args: &[&str]| leash_testkit::git(&p, args);
    git(&["init", "-q"]);
    let config_before = std::fs::read_to_string(p.join(".git/config")).unwrap();
    // The session's own policy permits everything: protect-host still holds.
    let permit_all = policy(&stack, &[]);
    let script = "echo x > .git/hooks/pre-commit; echo hook=$?; echo y > .envrc; echo envrc=$?; \
                  echo z > notes.txt; echo notes=$?; \
                  printf '#!/bin/sh\\ntouch hook-ran\\n' > evil; chmod +x evil; \
                  mv evil .git/hooks/pre-commit; echo rename-hook=$?; \
                  ln -s ../../evil .git/hooks/commit-msg; echo symlink-hook=$?; \
                  ln notes.txt .git/hooks/post-commit; echo link-hook=$?; \
                  chmod +x .git/hooks/pre-push.sample; echo chmod-hook=$?; \
                  printf '[core]\\n\\thooksPath = /tmp\\n' > cfg; mv cfg .git/config; echo rename-config=$?; \
                  mv .git .git-old; echo rename-git=$?; \
                  echo w > staged; mv staged .envrc; echo rename-envrc=$?; \
                  ln notes.txt .envrc; echo link-envrc=$?; \
                  ln -s notes.txt .envrc; echo symlink-envrc=$?; \
                  mkfifo .envrc; echo fifo-envrc=$?; \
                  ln -s .envrc dangling; echo w > dangling; echo through-dangling=$?; \
                  sleep 2";
    let leash = stack
        .leash(&["--image", TEST_IMAGE, "--policy", permit_all.to_str().unwrap(), "--", "sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (id, _) = running(&stack);
    let sessions: serde_json::Value =
        serde_json::from_slice(&stack.leashctl(&["sessions", "--json"]).stdout).expect("sessions --json");
    let listed = sessions.as_array().unwrap().iter().find(|s| s["id"] == id.as_str()).cloned().unwrap();
    assert_eq!(listed["protect_host"], true, "{listed}");
    let shown = text(&stack.leashctl(&["policy", "show", "--sources", "--session", &id]).stdout);
    assert!(shown.contains("// protect-host"), "protect-host is a layer of the session's policy:\n{shown}");
    let out = leash.wait_with_output().unwrap();
    let stdout = text(&out.stdout);
    for refused in [
        "hook",
        "envrc",
        "rename-hook",
        "symlink-hook",
        "link-hook",
        "chmod-hook",
        "rename-config",
        "rename-git",
        "rename-envrc",
        "link-envrc",
        "symlink-envrc",
        "fifo-envrc",
        "through-dangling",
    ] {
        let code = stdout.lines().find_map(|l| l.strip_prefix(&format!("{refused}="))).unwrap_or("missing");
        assert_ne!(code, "0", "{refused} was written\n{stdout}");
    }
    assert!(stdout.contains("notes=0"), "{stdout}");
    assert_ne!(std::fs::read_to_string(p.join(".git/hooks/pre-commit")).unwrap_or_default(), "x\n");
    for planted in ["pre-commit", "commit-msg", "post-commit"] {
        assert!(!p.join(".git/hooks").join(planted).exists(), "{planted} was planted\n{stdout}");
    }
    assert_eq!(std::fs::read_to_string(p.join(".git/config")).unwrap(), config_before);
    // Refused before it took effect: not even an empty file, link or fifo.
    assert!(std::fs::symlink_metadata(p.join(".envrc")).is_err(), ".envrc appeared\n{stdout}");
    // The user's next commit, on the host, runs no hook.
    git(&["add", "notes.txt"]);
    git(&["commit", "-q", "-m", "after the session"]);
    assert!(!p.join("hook-ran").exists(), "a hook the session planted ran on the host");
    // The hooks dir is a read-only mount (the kernel refuses before any
    // decision); `.envrc`, which did not exist, is the policy's to refuse.
    let denied = eventually(Duration::from_secs(5), "the refused .envrc write in the events", || {
        stack.events().into_iter().find(|e| {
            e["session"] == id.as_str()
                && e["decision"] == "deny"
                && e["resource"].as_str().is_some_and(|r| r.ends_with("/.envrc"))
        })
    });
    assert_eq!(denied["policy_ids"], serde_json::json!(["protect-host"]), "{denied}");

    // Turned off explicitly, it is off, and the session says so.
    std::fs::remove_file(p.join(".git/hooks/pre-commit")).ok();
    std::fs::remove_file(p.join("evil")).ok();
    let out = stack
        .leash(&[
            "--image",
            TEST_IMAGE,
            "--no-protect-host",
            "--policy",
            permit_all.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo x > .git/hooks/pre-commit; echo hook=$?",
        ])
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains("hook=0"), "{out:?}");
    assert_eq!(std::fs::read_to_string(p.join(".git/hooks/pre-commit")).unwrap(), "x\n");
    let created = eventually(Duration::from_secs(5), "the unprotected session's create event", || {
        stack.events().into_iter().rev().find(|e| e["action"] == "session.create" && e["session"] != id.as_str())
    });
    assert_eq!(created["details"]["protect_host"], "false", "{created}");
}

#[test]
fn an_allowed_read_through_a_hard_link_never_opens_the_forbidden_name() {
    if !require_docker("an_allowed_read_through_a_hard_link_never_opens_the_forbidden_name") {
        return;
    }
    let stack = stack();
    let p = project_files(&stack);
    let policy = policy(&stack, &[&no_secret(&p)]);
    // The read through the link is allowed by name (the link is a path the
    // policy does not forbid); it must not leave an allow behind that
    // answers for the forbidden name of the same file.
    let script = format!(
        "ln secret/key hard; echo link=$?; cat hard >/dev/null; cat hard >/dev/null; \
         cat secret/key; echo direct=$?; cat ./secret/key; echo dot=$?; \
         cat /proc/self/root{p}/secret/key; echo proc-root=$?; \
         exec 3<hard; cat <&3 >/dev/null; cat secret/key; echo after-fd=$?"
    );
    let out = stack
        .leash(&["--image", TEST_IMAGE, "--policy", policy.to_str().unwrap(), "--", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(stdout.contains("link=0"), "{stdout}\n{}", text(&out.stderr));
    assert!(!stdout.contains("s3cret"), "the forbidden name opened\n{stdout}");
    for attempt in ["direct", "dot", "proc-root", "after-fd"] {
        let code = stdout.lines().find_map(|l| l.strip_prefix(&format!("{attempt}="))).unwrap_or("missing");
        assert_ne!(code, "0", "{attempt} read the secret\n{stdout}");
    }
}

/// The exit codes a script printed as `name=code`.
fn code_of<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout.lines().find_map(|l| l.strip_prefix(&format!("{name}="))).unwrap_or("missing")
}

#[test]
fn a_forbidden_file_stays_forbidden_under_any_name_the_agent_gives_it() {
    if !require_docker("a_forbidden_file_stays_forbidden_under_any_name_the_agent_gives_it") {
        return;
    }
    let stack = stack();
    let p = project_files(&stack);
    std::fs::write(format!("{p}/top-secret.txt"), "TOPSECRET\n").unwrap();
    let policy = policy(
        &stack,
        &[
            &no_read_secret(&p),
            &format!(
                "@id(\"no-top\") forbid (principal, action == Action::\"FileOpenReadOnly\", resource == File::\"{p}/top-secret.txt\");"
            ),
            &no_exec("no-tool", &format!("{p}/tool")),
        ],
    );
    let script = "ln top-secret.txt hard; cat hard; echo link-file=$?; \
                  ln secret/key keylink; cat keylink; echo link-in-dir=$?; \
                  mv top-secret.txt moved.txt; cat moved.txt; echo rename-file=$?; \
                  mv secret stolen; cat stolen/key; echo rename-dir=$?; \
                  mkdir -p a; mv stolen a/b; cat a/b/key; echo rename-parent=$?; \
                  ln tool t2; ./t2 true; echo exec-link=$?; \
                  mv tool t3; ./t3 true; echo exec-rename=$?; \
                  cat open/sibling >/dev/null; echo control=$?";
    let out = stack
        .leash(&["--image", TEST_IMAGE, "--policy", policy.to_str().unwrap(), "--", "sh", "-c", script])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("s3cret") && !stdout.contains("TOPSECRET"), "{stdout}");
    for attempt in
        ["link-file", "link-in-dir", "rename-file", "rename-dir", "rename-parent", "exec-link", "exec-rename"]
    {
        assert_ne!(code_of(&stdout, attempt), "0", "{attempt} got through\n{stdout}\n{}", text(&out.stderr));
    }
    assert_eq!(code_of(&stdout, "control"), "0", "{stdout}");
    // Each refusal names the forbidding policy and how the name was traced.
    let events = stack.events();
    let traced = |resource: &str| {
        events.iter().find(|e| {
            e["decision"] == "deny"
                && e["resource"] == format!("{p}/{resource}").as_str()
                && !e["details"]["traced"].is_null()
        })
    };
    for (resource, policy, via) in [
        ("hard", "no-top", "top-secret.txt"),
        ("keylink", "no-secret", "secret/key"),
        ("moved.txt", "no-top", "top-secret.txt"),
        ("a/b/key", "no-secret", "secret/key"),
        ("t3", "no-tool", "tool"),
    ] {
        let e = traced(resource).unwrap_or_else(|| panic!("no traced refusal of {resource}"));
        assert_eq!(e["policy_ids"], serde_json::json!([policy]), "{e}");
        assert_eq!(e["details"]["traced"], format!("via inode of {p}/{via}").as_str(), "{e}");
    }
}

#[test]
fn a_program_forbidden_to_run_does_not_run_through_the_dynamic_loader() {
    const DEBIAN: &str = "leash-test-debian:latest";
    if !require_docker("a_program_forbidden_to_run_does_not_run_through_the_dynamic_loader")
        || !leash_testkit::require_image("a_program_forbidden_to_run_does_not_run_through_the_dynamic_loader", DEBIAN)
    {
        return;
    }
    let stack = stack();
    let p = stack.project().display().to_string();
    let policy =
        policy(&stack, &[&no_exec("no-tool", &format!("{p}/tool")), &no_exec("no-lib", &format!("{p}/libevil.so"))]);
    let script = "ldso=$(ls /lib64/ld-linux-x86-64.so.2 /lib/ld-linux*.so* 2>/dev/null | head -n 1); \
                  cp /usr/bin/id tool; cp \"$(ldd /usr/bin/id | sed -n 's/.*libc.so.6 => \\([^ ]*\\).*/\\1/p')\" libevil.so; \
                  ./tool >/dev/null; echo exec=$?; \
                  $ldso ./tool >/dev/null; echo ldso=$?; \
                  $ldso --preload ./libevil.so /bin/true; echo preload-ran=$?; \
                  $ldso /bin/true; echo control=$?";
    let out = stack
        .leash(&["--image", DEBIAN, "--policy", policy.to_str().unwrap(), "--", "sh", "-c", script])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_ne!(code_of(&stdout, "exec"), "0", "{stdout}\n{stderr}");
    assert_ne!(code_of(&stdout, "ldso"), "0", "the loader ran a forbidden program\n{stdout}\n{stderr}");
    assert!(stderr.contains("libevil.so") && stderr.contains("cannot be preloaded"), "{stdout}\n{stderr}");
    assert_eq!(code_of(&stdout, "control"), "0", "the loader runs what the policy allows\n{stdout}\n{stderr}");
    let events = stack.events();
    for (file, policy) in [("tool", "no-tool"), ("libevil.so", "no-lib")] {
        let e = events
            .iter()
            .find(|e| {
                e["decision"] == "deny"
                    && e["resource"] == format!("{p}/{file}").as_str()
                    && e["details"]["traced"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("loaded by the program interpreter"))
            })
            .unwrap_or_else(|| panic!("no refusal of {file} as loaded by the interpreter"));
        assert_eq!(e["policy_ids"], serde_json::json!([policy]), "{e}");
    }
}

#[test]
fn descriptor_and_exchange_tricks_do_not_open_or_run_what_is_forbidden() {
    if !require_docker("descriptor_and_exchange_tricks_do_not_open_or_run_what_is_forbidden") {
        return;
    }
    let stack = stack();
    let p = project_files(&stack);
    let policy = policy(&stack, &[&no_read_secret(&p), &no_exec("no-tool", &format!("{p}/tool"))]);
    // O_PATH then /proc/self/fd/N; an exec from a descriptor; the forbidden
    // file swapped with an allowed name (renameat2 RENAME_EXCHANGE).
    let script = "./leash-storm opath secret/key; \
                  ./leash-storm execveat ./tool true; \
                  ./leash-storm exchange secret/key open/sibling; cat open/sibling; echo exchanged-read=$?; \
                  ./leash-storm opath open/sibling";
    let out = stack
        .leash(&["--image", TEST_IMAGE, "--policy", policy.to_str().unwrap(), "--", "sh", "-c", script])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("s3cret"), "{stdout}");
    assert!(stdout.contains("exchange=ok"), "the exchange itself is not an open\n{stdout}");
    for attempt in ["opath", "execveat", "exchanged-read"] {
        let outcomes: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix(&format!("{attempt}="))).collect();
        assert!(!outcomes.is_empty(), "{attempt} did not run\n{stdout}\n{}", text(&out.stderr));
        for code in outcomes {
            assert!(!code.starts_with("ok") && code != "0", "{attempt} got through\n{stdout}\n{}", text(&out.stderr));
        }
    }
}

#[test]
fn supervised_calls_do_what_the_kernel_would_for_the_agents_user() {
    const DEBIAN: &str = "leash-test-debian:latest";
    let name = "supervised_calls_do_what_the_kernel_would_for_the_agents_user";
    if !require_docker(name) || !leash_testkit::require_image(name, DEBIAN) {
        return;
    }
    let stack = stack();
    // Let uid 4321 reach leashd (as a member of the leash group would).
    leash_testkit::set_mode(&stack.runtime_dir, 0o755);
    leash_testkit::set_mode(&stack.runtime_dir.join("leashd.sock"), 0o666);
    let project = stack.project();
    std::os::unix::fs::chown(&project, Some(4321), Some(4321)).unwrap();
    std::fs::write(project.join("root-owned.txt"), "root\n").unwrap();
    let policy = policy(&stack, &[]);
    // Each call the filter hands to the sensor, as an ordinary program
    // makes it; what it printed is what the kernel would have done (under
    // plain Docker too: a rename across mounts and a link of an O_TMPFILE
    // through /proc/self/fd are EXDEV there as well).
    let script = r#"
import os, errno
def t(name, f):
    try:
        f(); print(f"{name}=ok")
    except OSError as e:
        print(f"{name}={errno.errorcode[e.errno]}")
open("a.txt", "w").write("a")
t("rename", lambda: os.rename("a.txt", "b.txt"))
open("c.txt", "w").write("c")
t("replace", lambda: os.replace("c.txt", "b.txt"))
t("replace-result", lambda: None if open("b.txt").read() == "c" else (_ for _ in ()).throw(OSError(errno.EIO, "")))
t("link", lambda: os.link("b.txt", "b2.txt"))
t("link-exists", lambda: os.link("b.txt", "b2.txt"))
t("symlink", lambda: os.symlink("b.txt", "s.txt"))
t("mkfifo", lambda: os.mkfifo("fifo"))
t("mknod-char", lambda: os.mknod("dev", 0o600 | 0o020000, os.makedev(1, 3)))
t("chmod", lambda: os.chmod("b.txt", 0o640))
t("truncate", lambda: os.truncate("b.txt", 1))
t("utime", lambda: os.utime("b.txt", (1000000, 2000000)))
t("chown-own-group", lambda: os.chown("b.txt", -1, 777))
t("chown-to-root", lambda: os.chown("b.txt", 0, -1))
t("chmod-root-owned", lambda: os.chmod("root-owned.txt", 0o777))
t("create-in-etc", lambda: open("/etc/planted", "w"))
t("rename-into-etc", lambda: os.rename("b2.txt", "/etc/b2"))
os.umask(0o077)
t("umask", lambda: open("u.txt", "w"))
d = os.open(".", os.O_RDONLY)
open("d1", "w").write("d")
t("renameat", lambda: os.rename("d1", "d2", src_dir_fd=d, dst_dir_fd=d))
fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o644)
os.write(fd, b"tmp")
t("link-tmpfile", lambda: os.link(f"/proc/self/fd/{fd}", "tmp-linked", follow_symlinks=True))
os.symlink("/tmp", "tmplink")
t("symlink-through-absolute-link", lambda: os.symlink("target", "tmplink/leash-made-me"))
t("lands-in-container-tmp", lambda: os.lstat("/tmp/leash-made-me"))
t("missing", lambda: os.rename("nope", "nope2"))
"#;
    std::fs::write(project.join("calls.py"), script).unwrap();
    let out = stack
        .command("setpriv")
        .args(["--reuid=4321", "--regid=4321", "--groups=4321,777", "--"])
        .arg(stack.bin_dir.join("leash"))
        .args(["--image", DEBIAN, "--policy", policy.to_str().unwrap(), "--", "python3", "calls.py"])
        .current_dir(&project)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let expected = "rename=ok\nreplace=ok\nreplace-result=ok\nlink=ok\nlink-exists=EEXIST\nsymlink=ok\nmkfifo=ok\n\
                    mknod-char=EPERM\nchmod=ok\ntruncate=ok\nutime=ok\nchown-own-group=ok\nchown-to-root=EPERM\n\
                    chmod-root-owned=EPERM\ncreate-in-etc=EACCES\nrename-into-etc=EXDEV\numask=ok\nrenameat=ok\n\
                    link-tmpfile=EXDEV\nsymlink-through-absolute-link=ok\nlands-in-container-tmp=ok\nmissing=ENOENT\n";
    assert_eq!(stdout, expected, "{}", text(&out.stderr));
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let b = std::fs::metadata(project.join("b.txt")).unwrap();
    assert_eq!((b.uid(), b.gid(), b.mode() & 0o777, b.mtime(), b.len()), (4321, 777, 0o640, 2000000, 1));
    assert_eq!(std::fs::metadata(project.join("u.txt")).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::symlink_metadata("/tmp/leash-made-me").is_err(), "an absolute link was followed on the host");
}

/// The decider keeps what a caller's calls share (its root entered, the
/// groups and umask it wore): a caller that changes its root or drops its
/// credentials between two calls gets each call performed in its new root
/// with its new credentials, never the previous caller's.
#[test]
fn supervised_calls_follow_each_callers_root_and_credentials_as_they_change() {
    const DEBIAN: &str = "leash-test-debian:latest";
    let name = "supervised_calls_follow_each_callers_root_and_credentials_as_they_change";
    if !require_docker(name) || !leash_testkit::require_image(name, DEBIAN) {
        return;
    }
    let stack = stack();
    let project = stack.project();
    let policy = policy(&stack, &[]);
    let script = r#"
import os, sys, errno
sys.stdout.reconfigure(line_buffering=True)
def t(name, f):
    try:
        f(); print(f"{name}=ok")
    except OSError as e:
        print(f"{name}={errno.errorcode[e.errno]}")
open("root-owned.txt", "w").write("r")
os.makedirs("jail", exist_ok=True)
open("jail/inside.txt", "w").write("j")
open("/inside.txt", "w").write("container root")
t("root-chmod", lambda: os.chmod("root-owned.txt", 0o600))
pid = os.fork()
if pid == 0:
    os.chroot("jail")
    t("jailed-chmod", lambda: os.chmod("/inside.txt", 0o640))
    os._exit(0)
os.waitpid(pid, 0)
t("unjailed-chmod", lambda: os.chmod("/inside.txt", 0o604))
os.setgroups([]); os.setresgid(1000, 1000, 1000); os.setresuid(1000, 1000, 1000)
t("dropped-chmod", lambda: os.chmod("root-owned.txt", 0o666))
t("dropped-utime", lambda: os.utime("root-owned.txt", (1, 2)))
t("dropped-create-in-etc", lambda: open("/etc/planted", "w"))
print(f"container-root-file={oct(os.stat('/inside.txt').st_mode & 0o777)}")
"#;
    std::fs::write(project.join("change.py"), script).unwrap();
    let out = stack
        .command("leash")
        .args(["--image", DEBIAN, "--policy", policy.to_str().unwrap(), "--", "python3", "change.py"])
        .current_dir(&project)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let expected = "root-chmod=ok\njailed-chmod=ok\nunjailed-chmod=ok\ndropped-chmod=EPERM\ndropped-utime=EPERM\n\
                    dropped-create-in-etc=EACCES\ncontainer-root-file=0o604\n";
    assert_eq!(text(&out.stdout), expected, "{}", text(&out.stderr));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(project.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode("root-owned.txt"), mode("jail/inside.txt")), (0o600, 0o640));
}

/// The model of the cache property: which names exist, which file each
/// names, and which files the policy forbids reading by identity.
#[derive(Clone, Debug, Default)]
struct Model {
    /// Name (relative to the project) → file.
    names: std::collections::BTreeMap<String, usize>,
    /// Files forbidden by identity (they had a forbidden name when the
    /// session's first decision read the set).
    forbidden: std::collections::BTreeSet<usize>,
    /// Files that got a forbidden name during the run: forbidden under
    /// their other names from the next read of the set on, which may or
    /// may not fall within the run.
    later: std::collections::BTreeSet<usize>,
    /// The forbidden directory's current name (`d`, or `e` once renamed).
    dir: &'static str,
}

impl Model {
    const FORBIDDEN_NAMES: [&'static str; 2] = ["s0", "s1"];

    fn start() -> Model {
        let mut m = Model { dir: "d", ..Default::default() };
        for (i, n) in ["s0", "s1", "a0", "a1", "a2", "d/k"].iter().enumerate() {
            m.names.insert((*n).to_owned(), i);
        }
        m.forbidden = [0, 1, 5].into_iter().collect();
        m
    }

    /// Whether reading `name` succeeds (None: either may happen).
    fn read(&self, name: &str) -> Option<bool> {
        let Some(f) = self.names.get(name) else { return Some(false) };
        // By name, or below the forbidden directory under any of its names.
        if Self::FORBIDDEN_NAMES.contains(&name) || name.starts_with(&format!("{}/", self.dir)) {
            return Some(false);
        }
        if self.forbidden.contains(f) {
            return Some(false);
        }
        if self.later.contains(f) { None } else { Some(true) }
    }

    fn named(&mut self, to: &str, f: usize) {
        self.names.insert(to.to_owned(), f);
        if Self::FORBIDDEN_NAMES.contains(&to) {
            self.later.insert(f);
        }
    }

    /// `ln from to`; whether it succeeds.
    fn link(&mut self, from: &str, to: &str) -> bool {
        match (self.names.get(from).copied(), self.names.contains_key(to)) {
            (Some(f), false) => {
                self.named(to, f);
                true
            }
            _ => false,
        }
    }

    /// `mv -f from to` of a file; whether it succeeds (onto another name
    /// of the same file, rename(2) succeeds and changes nothing).
    fn rename(&mut self, from: &str, to: &str) -> bool {
        let Some(f) = self.names.get(from).copied() else { return false };
        if self.names.get(to) == Some(&f) {
            return true;
        }
        self.names.remove(from);
        self.named(to, f);
        true
    }

    /// `mv d e` (or back): every name below moves.
    fn rename_dir(&mut self) -> (String, bool) {
        let (from, to) = if self.dir == "d" { ("d", "e") } else { ("e", "d") };
        let below: Vec<String> = self.names.keys().filter(|n| n.starts_with(&format!("{from}/"))).cloned().collect();
        for n in below {
            let f = self.names.remove(&n).unwrap();
            self.names.insert(format!("{to}{}", &n[from.len()..]), f);
        }
        self.dir = to;
        (format!("mv {from} {to}"), true)
    }
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The cache's invariant (an allow cached for a file never answers for a
/// name it was not decided for) and file identity, under random links,
/// renames (onto forbidden names too) and directory renames, each read
/// done twice so that a cached allow would answer the second; against a
/// model of what the policy means. `LEASH_PROPERTY_SEED` replays a seed.
#[test]
fn the_cache_never_answers_for_another_name_whatever_links_and_renames_do() {
    let name = "the_cache_never_answers_for_another_name_whatever_links_and_renames_do";
    if !require_docker(name) {
        return;
    }
    let seed = std::env::var("LEASH_PROPERTY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    let stack = stack();
    let p = stack.project();
    let pd = p.display().to_string();
    let forbid = |id: &str, r: String| {
        format!("@id(\"{id}\") forbid (principal, action == Action::\"FileOpenReadOnly\", resource {r});")
    };
    let rules = [
        forbid("no-s0", format!("== File::\"{pd}/s0\"")),
        forbid("no-s1", format!("== File::\"{pd}/s1\"")),
        forbid("no-d", format!("in Dir::\"{pd}/d/\"")),
    ];
    let policy = policy(&stack, &rules.iter().map(String::as_str).collect::<Vec<_>>());
    // Sources are any name; targets stay out of the forbidden directory
    // (what enters it would be traced from the next read of the set on).
    let sources = ["s0", "s1", "a0", "a1", "a2", "n0", "n1", "n2", "d/k", "e/k"];
    let targets = ["s0", "s1", "a0", "a1", "a2", "n0", "n1", "n2"];
    for run in 0..3u64 {
        let mut rng = Rng(seed.wrapping_add(run.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
        for d in ["d", "e"] {
            let _ = std::fs::remove_dir_all(p.join(d));
        }
        for entry in std::fs::read_dir(&p).unwrap().flatten() {
            if entry.file_type().unwrap().is_file() {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
        std::fs::create_dir_all(p.join("d")).unwrap();
        let mut model = Model::start();
        for (n, f) in &model.names {
            std::fs::write(p.join(n), format!("content-of-{f}\n")).unwrap();
        }
        // The first read takes the identities.
        let mut script = vec!["cat a0 >/dev/null; echo op0=$?".to_owned()];
        let mut expected = vec![("op0".to_owned(), Some(true), "cat a0".to_owned())];
        for i in 1..=60 {
            let op = format!("op{i}");
            let (a, b) = (sources[rng.below(sources.len())], targets[rng.below(targets.len())]);
            let (cmd, ok) = match rng.below(10) {
                0..=4 => (format!("cat {a} >/dev/null && cat {a} >/dev/null"), model.read(a)),
                5..=6 => (format!("ln {a} {b}"), Some(model.link(a, b))),
                7..=8 => (format!("mv -f {a} {b}"), Some(model.rename(a, b))),
                _ => {
                    let (cmd, ok) = model.rename_dir();
                    (cmd, Some(ok))
                }
            };
            script.push(format!("{cmd} 2>/dev/null; echo {op}=$?"));
            expected.push((op, ok, cmd));
        }
        // The last run without protect-host: on the LSM tier, the kernel's
        // programs then decide reads alone (fanotify sees none).
        let script = script.join("\n");
        let mut args = vec!["--image", TEST_IMAGE, "--policy", policy.to_str().unwrap()];
        if run == 2 {
            args.push("--no-protect-host");
        }
        args.extend_from_slice(&["--", "sh", "-c", &script]);
        let out = stack.leash(&args).output().unwrap();
        let stdout = text(&out.stdout);
        for (op, ok, cmd) in &expected {
            let got = code_of(&stdout, op);
            if let Some(ok) = ok {
                assert_eq!(
                    got == "0",
                    *ok,
                    "seed {seed} run {run}: `{cmd}` ({op}) answered {got}; the model says it {}\n{}\n{stdout}",
                    if *ok { "succeeds" } else { "fails" },
                    script
                );
            }
        }
    }
}

/// An allow kept for a name (the LSM tier keeps one from a file's second
/// allowed open on, by its dentry; the fallback tier by its inode) ends
/// when a directory above is renamed, which gives the file another path
/// without touching the file: read three times under `e/`, the file is
/// refused once `e` has become the forbidden `d`, and read again once it
/// is `e` again.
#[test]
fn a_kept_allow_ends_when_a_directory_above_it_is_renamed_to_a_forbidden_name() {
    let name = "a_kept_allow_ends_when_a_directory_above_it_is_renamed_to_a_forbidden_name";
    if !require_docker(name) {
        return;
    }
    let stack = stack();
    let p = stack.project();
    let pd = p.display().to_string();
    std::fs::create_dir_all(p.join("e/f")).unwrap();
    std::fs::write(p.join("e/f/k"), "key\n").unwrap();
    let rule = format!(
        "@id(\"no-d\") forbid (principal, action == Action::\"FileOpenReadOnly\", resource in Dir::\"{pd}/d/\");"
    );
    let policy = policy(&stack, &[&rule]);
    let script = "for i in 1 2 3; do cat e/f/k >/dev/null; echo before$i=$?; done\n\
                  mv e d; echo moved=$?\n\
                  for i in 1 2 3; do cat d/f/k >/dev/null; echo after$i=$?; done\n\
                  mv d e; echo back=$?\n\
                  cat e/f/k >/dev/null; echo again=$?";
    // With protect-host, fanotify sees every open (its write patterns are
    // user space's) and decides reads too; without it, on the LSM tier the
    // kernel's programs decide reads alone.
    for extra in [&[][..], &["--no-protect-host"][..]] {
        let mut args = vec!["--image", TEST_IMAGE, "--policy", policy.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        let out = stack.leash(&args).output().unwrap();
        let stdout = text(&out.stdout);
        for step in ["before1", "before2", "before3", "moved", "back", "again"] {
            assert_eq!(code_of(&stdout, step), "0", "{extra:?} {step}\n{stdout}\n{}", text(&out.stderr));
        }
        for step in ["after1", "after2", "after3"] {
            let code = code_of(&stdout, step);
            assert_ne!(code, "0", "{extra:?} {step}: the file was read under the forbidden name\n{stdout}");
            assert_ne!(code, "missing", "{extra:?} {step}\n{stdout}\n{}", text(&out.stderr));
        }
    }
}

#[test]
fn repeated_allows_are_stored_once_with_their_count_and_refusals_one_by_one() {
    if !require_docker("repeated_allows_are_stored_once_with_their_count_and_refusals_one_by_one") {
        return;
    }
    let stack = stack();
    project_files(&stack);
    let policy = policy(&stack, &[NO_LAN]);
    // 40 connects to an allowed address and 40 to a forbidden one (UDP:
    // a connect decides, nothing is sent).
    let script = "./leash-storm connect 40 192.0.2.7:9; ./leash-storm connect 40 10.99.1.1:9";
    let out = stack
        .leash(&["--image", TEST_IMAGE, "--policy", policy.to_str().unwrap(), "--", "sh", "-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    // The allow: its first event at once, then one with the count of the
    // rest when its window closes; every refusal whole.
    let events = eventually(Duration::from_secs(10), "the count of the repeated allow", || {
        let e = stack.events();
        e.iter().any(|e| e["resource"] == "192.0.2.7:9" && !e["details"]["repeats"].is_null()).then_some(e)
    });
    let allows: Vec<&serde_json::Value> = events.iter().filter(|e| e["resource"] == "192.0.2.7:9").collect();
    let stood_for: u64 =
        allows.iter().map(|e| e["details"]["repeats"].as_str().map_or(1, |r| r.parse::<u64>().unwrap())).sum();
    assert_eq!(stood_for, 40, "{allows:#?}");
    assert!(allows.len() <= 4, "the repeats were not folded: {} events", allows.len());
    let denials = events.iter().filter(|e| e["resource"] == "10.99.1.1:9" && e["decision"] == "deny").count();
    assert_eq!(denials, 40);
    let status = stack.status().unwrap();
    let folded = Stack::component(&status, "leash-sensor")["facts"]["folded_events"].as_str().unwrap_or("0").to_owned();
    assert!(folded.parse::<u64>().unwrap() >= 36, "{status}");
}
