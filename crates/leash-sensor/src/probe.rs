//! The capability probe: what this kernel lets the sensor do, per action,
//! found by trying (loading programs, opening a fanotify group), never by
//! assuming. `leashctl doctor` prints it.

use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags};

/// How one action is governed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    /// "file-read", "file-write", "exec", "connect" or "sendmsg".
    pub action: &'static str,
    /// "bpf-lsm", "fanotify", "cgroup-sock", "observe-only" or "none".
    pub mechanism: &'static str,
    /// Why.
    pub reason: String,
}

/// The whole report.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Per action.
    pub capabilities: Vec<Capability>,
    /// "lsm" or "fallback".
    pub tier: String,
    /// What each probe found.
    pub probes: Vec<(String, String)>,
    /// What the agent can do that this tier does not refuse: (attempt, why).
    pub gaps: Vec<(String, String)>,
}

/// Whether a fanotify group with permission events can be created.
pub fn fanotify() -> Result<(), String> {
    Fanotify::init(InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC, EventFFlags::O_RDONLY)
        .map(drop)
        .map_err(|e| format!("fanotify permission events unavailable: {e}"))
}

/// The hidden flag that prints what this kernel allows, without running
/// the daemon (CI prints it before the tests).
pub const PROBE_FLAG: &str = "--probe";

/// Prints `bpf-lsm: …` and `fanotify: …` (`ok` or why not).
pub fn print() -> std::process::ExitCode {
    #[allow(clippy::print_stdout, reason = "the probe's whole output")]
    for (what, outcome) in [("bpf-lsm", crate::bpf::probe_lsm()), ("fanotify", fanotify())] {
        println!("{what}: {}", outcome.err().unwrap_or_else(|| "ok".to_owned()));
    }
    std::process::ExitCode::SUCCESS
}

/// Builds the report of a sensor that loaded the fallback tier alone
/// (`programs` is the outcome).
pub fn run(programs: Result<(), String>) -> Report {
    decide(programs, crate::bpf::probe_lsm(), false, fanotify())
}

/// The report for given probe outcomes; `attached`: the LSM tier's file
/// programs are attached (they decide sessions' files where their tables
/// allow).
pub fn decide(
    programs: Result<(), String>,
    lsm: Result<(), String>,
    attached: bool,
    fanotify: Result<(), String>,
) -> Report {
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let probes = vec![
        ("programs".to_owned(), show(&programs)),
        ("bpf-lsm".to_owned(), show(&lsm)),
        ("fanotify".to_owned(), show(&fanotify)),
    ];
    let lsm_note = match &lsm {
        Ok(()) if crate::lsm_allowed() => "BPF LSM programs load here".to_owned(),
        Ok(()) => "BPF LSM programs load here; sessions are kept off them (LEASH_SENSOR_LSM=0)".to_owned(),
        Err(e) => e.clone(),
    };
    let lsm_tier = attached && lsm.is_ok() && programs.is_ok();
    let file = |action: &'static str| match (&fanotify, &programs) {
        _ if lsm_tier => Capability {
            action,
            mechanism: "bpf-lsm",
            reason: format!(
                "LSM hooks ({}) decide from the session's tables in the kernel; a session whose rules for this action \
                 need user space (path patterns, name conditions) has it decided by {} instead",
                match action {
                    "exec" => "bprm_check_security, mmap_file, file_mprotect",
                    "file-write" =>
                        "file_open, path_mknod, path_symlink, path_link, path_rename, path_chmod, path_chown, path_truncate",
                    _ => "file_open",
                },
                if fanotify.is_ok() {
                    "fanotify"
                } else {
                    "nothing (fanotify is unavailable: such a session is refused)"
                },
            ),
        },
        (Ok(()), Ok(())) => Capability {
            action,
            mechanism: "fanotify",
            reason: format!(
                "permission events on every mount of the session's container, read vs write from the open call ({lsm_note})"
            ),
        },
        (Ok(()), Err(e)) => Capability {
            action,
            mechanism: "fanotify",
            reason: format!(
                "permission events; the open tracepoints did not load ({e}), so every open is decided as a write"
            ),
        },
        (Err(f), Ok(())) => {
            Capability { action, mechanism: "observe-only", reason: format!("{f}; the tracepoints only observe") }
        }
        (Err(f), Err(p)) => Capability { action, mechanism: "none", reason: format!("{f}; {p}") },
    };
    let net = |action: &'static str| match &programs {
        Ok(()) => Capability {
            action,
            mechanism: "cgroup-sock",
            reason: "cgroup connect/sendmsg programs on the session's cgroup decide by address and port".into(),
        },
        Err(e) => Capability { action, mechanism: "none", reason: e.clone() },
    };
    let gaps = if lsm_tier {
        LSM_GAPS.iter().map(|(a, w)| ((*a).to_owned(), (*w).to_owned())).collect()
    } else if fanotify.is_ok() {
        FALLBACK_GAPS.iter().map(|(a, w)| ((*a).to_owned(), (*w).to_owned())).collect()
    } else {
        Vec::new()
    };
    Report {
        capabilities: vec![file("file-read"), file("file-write"), file("exec"), net("connect"), net("sendmsg")],
        tier: if lsm_tier { "lsm" } else { "fallback" }.to_owned(),
        probes,
        gaps,
    }
}

/// What the fallback tier's file decider does not refuse, and why (it
/// decides opens and execs, and the calls leash-entry's filter hands it:
/// renames, links, symbolic links, mknod, chmod, chown, utimes, truncate
/// and creating opens). docs/SENSOR.md has the whole table, with what it
/// does refuse.
const FALLBACK_GAPS: [(&str, &str); 6] = [
    (
        "an O_CREAT open of a write-forbidden path whose name another thread rewrites between the decision and the kernel's own lookup",
        "a creating open is let through to the kernel once decided; the open itself is refused (fanotify), but the empty file it created stays",
    ),
    (
        "a rename, link, chmod or creating open by a process that entered the session from outside (docker exec)",
        "the supervised-calls filter is inherited from leash-entry; such a process has none (its opens and execs are decided)",
    ),
    (
        "a copy of a program the policy forbids to execute, run",
        "exec rules name paths and identities; a copy is another file",
    ),
    (
        "a file created in a forbidden directory and linked or moved out within 2 s",
        "forbidden directories are read for identities when the tables change and every 2 s",
    ),
    ("mkdir or unlink under a forbidden directory", "not opens, and not among the supervised calls"),
    ("a script run by an interpreter (sh script)", "the interpreter reads it: a read, not an exec"),
];

/// What the LSM tier does not refuse, and why (docs/SENSOR.md has the
/// whole table). A session's actions that fanotify decides (their rules
/// need user space) have the fallback tier's gaps too.
const LSM_GAPS: [(&str, &str); 4] = [
    (
        "utimes/utimensat on a write-forbidden file",
        "the hook's signature changed across kernels; not decided on this tier (the supervised calls decide it)",
    ),
    (
        "a file created in a forbidden directory after the tables were written, then linked or moved out",
        "identities are read when the tables are written; names are decided at every open",
    ),
    (
        "a copy of a program the policy forbids to execute, run",
        "exec rules name paths and identities; a copy is another file",
    ),
    ("a script run by an interpreter (sh script)", "the interpreter reads it: a read, not an exec"),
];

/// The capabilities with mechanisms switched off (the self-test's negative
/// control): file actions fall back to what the tracepoints observe, and
/// connections to nothing.
pub fn without(report: &Report, off: &[String]) -> Vec<Capability> {
    report
        .capabilities
        .iter()
        .map(|c| {
            if off.iter().any(|o| o == c.mechanism) {
                let mechanism = if matches!(c.mechanism, "fanotify" | "bpf-lsm") { "observe-only" } else { "none" };
                Capability { action: c.action, mechanism, reason: format!("{} switched off", c.mechanism) }
            } else {
                c.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_reports_enforcement_that_is_not_there() {
        let r = decide(Err("EPERM".into()), Err("refused".into()), false, Err("ENOSYS".into()));
        assert!(r.capabilities.iter().all(|c| c.mechanism == "none"), "{r:?}");
        let r = decide(Ok(()), Err("refused".into()), false, Err("ENOSYS".into()));
        let m = |a| r.capabilities.iter().find(|c| c.action == a).unwrap().mechanism;
        assert_eq!((m("file-read"), m("exec"), m("connect")), ("observe-only", "observe-only", "cgroup-sock"));
        let r = decide(Ok(()), Ok(()), false, Ok(()));
        assert_eq!(r.tier, "fallback", "the LSM tier is claimed only with its programs attached");
        // Attached where the probe failed cannot happen; claimed only with both.
        let r = decide(Ok(()), Err("refused".into()), true, Ok(()));
        assert_eq!(r.tier, "fallback");
        let r = decide(Ok(()), Ok(()), true, Ok(()));
        let m = |a| r.capabilities.iter().find(|c| c.action == a).unwrap().mechanism;
        assert_eq!(
            (r.tier.as_str(), m("file-read"), m("exec"), m("connect")),
            ("lsm", "bpf-lsm", "bpf-lsm", "cgroup-sock")
        );
    }
}
