//! The clients as users run them: help, exit codes, and `leash` starting
//! leashd when nothing answers.

use std::os::unix::process::CommandExt;
use std::time::Duration;

use leash_testkit::{Stack, TEST_IMAGE, eventually, require_docker, require_root, static_entry};

#[test]
fn help_is_complete_and_usage_errors_have_the_right_codes() {
    let stack = Stack::new();
    let out = stack.leashctl(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["status", "events", "stop", "hello", "--json", "Exit codes"] {
        assert!(help.contains(needle), "leashctl --help lacks {needle:?}:\n{help}");
    }
    let out = stack.leashctl(&["events", "--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("--follow"));
    let out = stack.leashctl(&["stop"]);
    assert_eq!(out.status.code(), Some(64), "a bare `stop` is a usage error: {out:?}");

    let out = stack.command("leash").arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["COMMAND", "leashd", "125"] {
        assert!(help.contains(needle), "leash --help lacks {needle:?}:\n{help}");
    }
    let out = stack.command("leash").arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("leash {}", leash_core::VERSION));
    let out = stack.command("leash").arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    for needle in ["--detach", "--detach-keys", "leash attach ID", "Ctrl-P Ctrl-Q"] {
        assert!(help.contains(needle), "leash --help lacks {needle:?}:\n{help}");
    }
    let out = stack.command("leash").args(["attach", "--help"]).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("<ID>"), "{out:?}");
    let out = stack.command("leash").arg("attach").output().unwrap();
    assert_eq!(out.status.code(), Some(125), "attach needs an id: {out:?}");
    let out = stack.command("leash").args(["attach", "--detach-keys", "ctrl-", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--detach-keys"), "{out:?}");
}

#[test]
fn completions_cover_both_commands_and_parse_in_their_shells() {
    let stack = Stack::new();
    let help = String::from_utf8_lossy(&stack.leashctl(&["--help"]).stdout).into_owned();
    assert!(help.contains("completions"), "{help}");
    let bash = stack.leashctl(&["completions", "bash"]);
    assert!(bash.status.success(), "{bash:?}");
    let script = stack.root().join("leash.bash");
    std::fs::write(&script, &bash.stdout).unwrap();
    // Parsed and loaded by a real bash: both commands complete, and
    // `leash attach` and the detach flags are offered.
    let check = format!(
        "set -e; source {}; complete -p leash leashctl; \
         COMP_WORDS=(leash --det); COMP_CWORD=1; COMP_LINE='leash --det'; COMP_POINT=${{#COMP_LINE}}; \
         _leash leash --det leash; echo \"${{COMPREPLY[*]}}\"; \
         COMP_WORDS=(leashctl comp); COMP_CWORD=1; COMP_LINE='leashctl comp'; COMP_POINT=${{#COMP_LINE}}; \
         _leashctl leashctl comp leashctl; echo \"${{COMPREPLY[*]}}\"",
        script.display()
    );
    let out = std::process::Command::new("bash").args(["-c", &check]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(said.contains("-F _leash_with_ids leash") && said.contains("-F _leashctl_with_ids leashctl"), "{said}");
    assert!(said.contains("--detach --detach-keys"), "{said}");
    assert!(said.contains("completions"), "{said}");
    let zsh = String::from_utf8_lossy(&stack.leashctl(&["completions", "zsh"]).stdout).into_owned();
    assert!(zsh.contains("#compdef leash") && zsh.contains("#compdef leashctl") && zsh.contains("attach"), "{zsh}");
    let fish = String::from_utf8_lossy(&stack.leashctl(&["completions", "fish"]).stdout).into_owned();
    assert!(fish.contains("complete -c leash ") && fish.contains("complete -c leashctl "), "{fish}");
    let out = stack.leashctl(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

#[test]
fn leash_as_root_starts_leashd_detached() {
    if !require_docker("leash_as_root_starts_leashd_detached") {
        return;
    }
    let stack = Stack::new();
    // The leashd that leash starts inherits its environment.
    let entry = static_entry();
    let leash = || {
        let mut c = stack.leash(&["--image", TEST_IMAGE, "--", "sh", "-c", "echo in-session"]);
        c.env("LEASH_ENTRY_BIN", &entry);
        c.output().unwrap()
    };
    let out = leash();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in-session\n");
    let pid = eventually(Duration::from_secs(2), "exactly one leashd of this stack", || {
        let pids = stack.processes("leashd");
        (pids.len() == 1).then(|| pids[0])
    });
    // Fully detached: its own session, not our child, logging to the state dir.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    assert_eq!(fields[3], pid.to_string(), "session id is its own pid: {stat}");
    assert_ne!(fields[1], std::process::id().to_string(), "reparented away from leash");
    let log = stack.state_dir.join("leashd.log");
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/fd/2")).unwrap(), log);
    stack.wait_healthy(Duration::from_secs(10));
    // A second `leash` finds it and starts nothing new.
    let out = leash();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stack.processes("leashd"), vec![pid]);
    let out = stack.leashctl(&["stop", "--all"]);
    assert!(out.status.success(), "{out:?}");
    eventually(Duration::from_secs(5), "everything stopped", || stack.all_processes().is_empty().then_some(()));
}

#[test]
fn leash_as_a_user_says_how_to_start_the_service() {
    if !require_root("leash_as_a_user_says_how_to_start_the_service") {
        return;
    }
    let stack = Stack::new();
    let out = stack.command("leash").args(["--", "true"]).uid(65534).gid(65534).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("leashd is not running") && err.contains("systemctl start leashd"), "{err}");
    assert!(stack.all_processes().is_empty(), "nothing was started");
}
