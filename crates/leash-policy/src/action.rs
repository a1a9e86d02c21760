//! The vocabulary's actions, and which of them a policy's scope names:
//! what the engine, the compiler and the resource parser all speak of.

use serde_json::Value;

/// The actions of the vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Open a file (any mode).
    FileOpen,
    /// Open a file for reading.
    FileOpenReadOnly,
    /// Open a file for writing.
    FileOpenReadWrite,
    /// Execute a program.
    ProcessExec,
    /// Connect to a host.
    NetworkConnect,
    /// Inject a header.
    HttpRewrite,
    /// Call an MCP tool.
    McpCall,
    /// Send a secret's real value in place of its decoy.
    SecretUse,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 8] = [
        Action::FileOpen,
        Action::FileOpenReadOnly,
        Action::FileOpenReadWrite,
        Action::ProcessExec,
        Action::NetworkConnect,
        Action::HttpRewrite,
        Action::McpCall,
        Action::SecretUse,
    ];

    /// The Cedar action id.
    pub fn name(self) -> &'static str {
        match self {
            Action::FileOpen => "FileOpen",
            Action::FileOpenReadOnly => "FileOpenReadOnly",
            Action::FileOpenReadWrite => "FileOpenReadWrite",
            Action::ProcessExec => "ProcessExec",
            Action::NetworkConnect => "NetworkConnect",
            Action::HttpRewrite => "HttpRewrite",
            Action::McpCall => "McpCall",
            Action::SecretUse => "SecretUse",
        }
    }

    /// Looks an action up by name, ignoring case (the Go leash did).
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(name))
    }
}

/// The entity a scope or a literal names, as (type, id).
pub(crate) fn entity_of(v: &Value) -> Option<(&str, &str)> {
    let e = v.get("entity").or_else(|| v.get("__entity")).unwrap_or(v);
    Some((e.get("type")?.as_str()?, e.get("id")?.as_str()?))
}

/// Whether a policy (as EST JSON) can decide `action`.
pub fn applies_to(json: &Value, action: Action) -> bool {
    let Some(a) = json.get("action") else { return true };
    let named = |e: &Value| entity_of(e).is_some_and(|(t, id)| t == "Action" && id == action.name());
    match a.get("op").and_then(Value::as_str) {
        Some("All") | None => true,
        Some("==") => named(a),
        Some("in") => match a.get("entities").and_then(Value::as_array) {
            Some(list) => list.iter().any(named),
            None => named(a),
        },
        _ => true,
    }
}
