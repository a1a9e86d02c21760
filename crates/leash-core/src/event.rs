//! The one event type: every producer (daemons, sessions, sensor, proxy,
//! policy service) emits this shape, so consumers never special-case a source.

use std::collections::BTreeMap;
use std::time::SystemTime;

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A file open.
    File,
    /// A process exec.
    Exec,
    /// A network connection.
    Connect,
    /// An HTTP request.
    Http,
    /// An MCP tool call.
    Mcp,
    /// A policy change.
    Policy,
    /// A session's lifecycle.
    Session,
    /// A leash daemon's lifecycle.
    Daemon,
    /// A process's lifecycle in a session (fork, exit).
    Process,
}

/// Enforcement mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Observe only: allow and record, no per-event evaluation.
    Record,
    /// Evaluate, allow, flag would-deny.
    Shadow,
    /// Deny what the policy denies.
    Enforce,
}

impl Mode {
    /// The mode's name, as configuration, the CLI and the wire spell it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Record => "record",
            Mode::Shadow => "shadow",
            Mode::Enforce => "enforce",
        }
    }

    /// A mode by name.
    pub fn from_name(s: &str) -> Option<Mode> {
        [Mode::Record, Mode::Shadow, Mode::Enforce].into_iter().find(|m| m.name() == s)
    }
}

/// What happened to an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Let through.
    Allow,
    /// Refused.
    Deny,
}

/// One event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// When it happened.
    pub time: SystemTime,
    /// The session it belongs to, if any.
    pub session: Option<String>,
    /// Process id of the actor (host pid namespace); 0 when unknown.
    pub pid: u32,
    /// Executable of the actor; empty when unknown.
    pub executable: String,
    /// What kind of thing this is.
    pub kind: EventKind,
    /// The action, e.g. `FileOpen` or `daemon.restart`.
    pub action: String,
    /// The resource acted on.
    pub resource: String,
    /// Mode in force, for decided events.
    pub mode: Option<Mode>,
    /// The decision, for decided events.
    pub decision: Option<Decision>,
    /// The policy would deny but the mode let it through.
    pub would_deny: bool,
    /// Ids of the policies that determined the decision.
    pub policy_ids: Vec<String>,
    /// Kind-specific details.
    pub details: BTreeMap<String, String>,
}

impl Event {
    /// A lifecycle event of a leash daemon: `action` like `daemon.start`,
    /// `resource` the daemon's name.
    pub fn daemon(action: &str, daemon: &str, pid: u32) -> Event {
        Event {
            time: SystemTime::now(),
            session: None,
            pid,
            executable: String::new(),
            kind: EventKind::Daemon,
            action: action.to_owned(),
            resource: daemon.to_owned(),
            mode: None,
            decision: None,
            would_deny: false,
            policy_ids: Vec::new(),
            details: BTreeMap::new(),
        }
    }

    /// Adds one detail.
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Event {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}
