//! Events on the wire: `leash_core::Event` to and from `pb::Event`, for
//! leashd's stream and the components that send it events.

use std::time::{Duration, SystemTime};

use leash_core::{Decision, Event, EventKind, Mode};

use crate::v1 as pb;

/// The wire form of a mode.
pub fn mode(m: Option<Mode>) -> pb::Mode {
    match m {
        None => pb::Mode::Unspecified,
        Some(Mode::Record) => pb::Mode::Record,
        Some(Mode::Shadow) => pb::Mode::Shadow,
        Some(Mode::Enforce) => pb::Mode::Enforce,
    }
}

/// An event kind's name: file, exec, connect, http, mcp, policy, session,
/// daemon, process.
pub fn kind_name(kind: i32) -> &'static str {
    match pb::EventKind::try_from(kind).unwrap_or(pb::EventKind::Unspecified) {
        pb::EventKind::File => "file",
        pb::EventKind::Exec => "exec",
        pb::EventKind::Connect => "connect",
        pb::EventKind::Http => "http",
        pb::EventKind::Mcp => "mcp",
        pb::EventKind::Policy => "policy",
        pb::EventKind::Session => "session",
        pb::EventKind::Daemon => "daemon",
        pb::EventKind::Process => "process",
        pb::EventKind::Unspecified => "unknown",
    }
}

/// A wire mode's name, when one is set.
pub fn mode_name(mode: i32) -> Option<&'static str> {
    match pb::Mode::try_from(mode).unwrap_or(pb::Mode::Unspecified) {
        pb::Mode::Record => Some("record"),
        pb::Mode::Shadow => Some("shadow"),
        pb::Mode::Enforce => Some("enforce"),
        pb::Mode::Unspecified => None,
    }
}

/// A wire decision's name ("allow" or "deny"), when one is set.
pub fn decision_name(decision: i32) -> Option<&'static str> {
    match pb::Decision::try_from(decision).unwrap_or(pb::Decision::Unspecified) {
        pb::Decision::Allow => Some("allow"),
        pb::Decision::Deny => Some("deny"),
        pb::Decision::Unspecified => None,
    }
}

/// The wire form of an event, with leashd's sequence number.
pub fn to_proto(e: &Event, seq: u64) -> pb::Event {
    pb::Event {
        seq,
        time_unix_nanos: e.time.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0),
        session: e.session.clone().unwrap_or_default(),
        pid: e.pid,
        executable: e.executable.clone(),
        kind: match e.kind {
            EventKind::File => pb::EventKind::File,
            EventKind::Exec => pb::EventKind::Exec,
            EventKind::Connect => pb::EventKind::Connect,
            EventKind::Http => pb::EventKind::Http,
            EventKind::Mcp => pb::EventKind::Mcp,
            EventKind::Policy => pb::EventKind::Policy,
            EventKind::Session => pb::EventKind::Session,
            EventKind::Daemon => pb::EventKind::Daemon,
            EventKind::Process => pb::EventKind::Process,
        } as i32,
        action: e.action.clone(),
        resource: e.resource.clone(),
        mode: mode(e.mode) as i32,
        decision: match e.decision {
            None => pb::Decision::Unspecified,
            Some(Decision::Allow) => pb::Decision::Allow,
            Some(Decision::Deny) => pb::Decision::Deny,
        } as i32,
        would_deny: e.would_deny,
        policy_ids: e.policy_ids.clone(),
        details: e.details.clone(),
    }
}

/// An event read off the wire (a component's; leashd stamps its own sequence).
pub fn from_proto(p: pb::Event) -> Event {
    Event {
        time: SystemTime::UNIX_EPOCH + Duration::from_nanos(p.time_unix_nanos.max(0) as u64),
        session: (!p.session.is_empty()).then_some(p.session),
        pid: p.pid,
        executable: p.executable,
        kind: match pb::EventKind::try_from(p.kind).unwrap_or(pb::EventKind::Unspecified) {
            pb::EventKind::File => EventKind::File,
            pb::EventKind::Exec => EventKind::Exec,
            pb::EventKind::Connect => EventKind::Connect,
            pb::EventKind::Http => EventKind::Http,
            pb::EventKind::Mcp => EventKind::Mcp,
            pb::EventKind::Policy => EventKind::Policy,
            pb::EventKind::Session => EventKind::Session,
            pb::EventKind::Process => EventKind::Process,
            pb::EventKind::Daemon | pb::EventKind::Unspecified => EventKind::Daemon,
        },
        action: p.action,
        resource: p.resource,
        mode: match pb::Mode::try_from(p.mode).unwrap_or(pb::Mode::Unspecified) {
            pb::Mode::Record => Some(Mode::Record),
            pb::Mode::Shadow => Some(Mode::Shadow),
            pb::Mode::Enforce => Some(Mode::Enforce),
            pb::Mode::Unspecified => None,
        },
        decision: match pb::Decision::try_from(p.decision).unwrap_or(pb::Decision::Unspecified) {
            pb::Decision::Allow => Some(Decision::Allow),
            pb::Decision::Deny => Some(Decision::Deny),
            pb::Decision::Unspecified => None,
        },
        would_deny: p.would_deny,
        policy_ids: p.policy_ids,
        details: p.details,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut e = Event::daemon("x", "y", 3).with("k", "v");
        e.kind = EventKind::File;
        e.mode = Some(Mode::Shadow);
        e.decision = Some(Decision::Deny);
        e.would_deny = true;
        e.session = Some("s".into());
        e.policy_ids = vec!["p".into()];
        e.time = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        assert_eq!(from_proto(to_proto(&e, 9)), e);
    }
}
