//! The bodies of the `/api/policies…` requests, read and checked before
//! anything is asked of the policy service. Pure (no state, no I/O), so
//! every shape a client can send can be tried on its own; an error is the
//! message of a 400.

use serde::Deserialize;
use serde_json::Value;

use super::suggest::{self, ActionRef};

/// The Go leash's `extractCedar`: `{"cedar": "…"}` (with a JSON content
/// type, or a body that starts like an object) or the raw body.
pub fn cedar(content_type: &str, body: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(body).trim().to_owned();
    if text.is_empty() {
        return Err("empty body".into());
    }
    if (content_type.contains("application/json") || text.starts_with('{'))
        && let Ok(v) = serde_json::from_str::<Value>(&text)
    {
        return match v.get("cedar").and_then(Value::as_str) {
            Some(c) if !c.trim().is_empty() => Ok(c.to_owned()),
            _ => Err("missing cedar field".into()),
        };
    }
    Ok(text)
}

/// A body that may be left empty: `None` for whitespace only, else
/// [`cedar`].
pub fn optional_cedar(content_type: &str, body: &[u8]) -> Result<Option<String>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    cedar(content_type, body).map(Some)
}

#[derive(Debug, Deserialize)]
struct Patch {
    #[serde(default)]
    add: Vec<AddEntry>,
    #[serde(default)]
    remove: Vec<RemoveEntry>,
    #[serde(default, rename = "applyMode")]
    apply_mode: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AddEntry {
    cedar: Option<String>,
    effect: Option<String>,
    action: Option<ActionRef>,
}

#[derive(Debug, Deserialize)]
struct RemoveEntry {
    id: Option<String>,
    cedar: Option<String>,
}

/// What a `PATCH /api/policies` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changes {
    /// Statements to add.
    pub add: Vec<String>,
    /// Ids or statements to remove.
    pub remove: Vec<String>,
    /// The session is enforced after the change (`"applyMode": "enforce"`).
    pub enforce: bool,
}

/// `PATCH /api/policies`: `{"add": [{"cedar"} | {"effect", "action"}],
/// "remove": [{"id"} | {"cedar"}], "applyMode": "enforce"?}`.
pub fn patch(body: &[u8]) -> Result<Changes, String> {
    let Ok(p) = serde_json::from_slice::<Patch>(body) else {
        return Err("invalid JSON payload".into());
    };
    if p.add.is_empty() && p.remove.is_empty() {
        return Err("no changes provided".into());
    }
    if p.apply_mode.as_deref().is_some_and(|m| m != "enforce") {
        return Err("applyMode must be \"enforce\" or omitted".into());
    }
    let mut add = Vec::new();
    for a in p.add {
        match (a.cedar, a.action) {
            (Some(c), _) if !c.trim().is_empty() => add.push(c),
            (_, Some(action)) => match suggest::from_action(a.effect.as_deref().unwrap_or(""), &action) {
                Ok(c) => add.push(c),
                Err(_)
                    if !matches!(a.effect.as_deref().map(str::to_lowercase).as_deref(), Some("permit" | "forbid")) =>
                {
                    return Err("add entries with action require effect of permit or forbid".into());
                }
                Err(e) => return Err(e),
            },
            _ => return Err("add entries require cedar or action".into()),
        }
    }
    let mut remove = Vec::new();
    for r in p.remove {
        match (r.id, r.cedar) {
            (Some(id), _) if !id.is_empty() => remove.push(id),
            (_, Some(c)) if !c.trim().is_empty() => remove.push(c),
            _ => return Err("remove entries require id or cedar".into()),
        }
    }
    Ok(Changes { add, remove, enforce: p.apply_mode.is_some() })
}

/// `POST /api/policies/complete`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Complete {
    /// The text being edited.
    pub cedar: String,
    /// Where the cursor is.
    pub cursor: Cursor,
    /// At most this many items (75 when not given).
    #[serde(default, rename = "maxItems")]
    pub max_items: Option<usize>,
    /// Tools and servers to offer beside those of recent events.
    #[serde(default, rename = "idHints")]
    pub id_hints: Option<IdHints>,
}

/// A 1-based position in the text.
#[derive(Debug, Deserialize)]
pub struct Cursor {
    /// Line.
    pub line: i64,
    /// Column.
    pub column: i64,
}

/// Names the editor knows of.
#[derive(Debug, Default, Deserialize)]
pub struct IdHints {
    /// MCP tools.
    #[serde(default)]
    pub tools: Vec<String>,
    /// MCP servers.
    #[serde(default)]
    pub servers: Vec<String>,
}

/// `POST /api/policies/complete` `{"cedar", "cursor": {"line", "column"},
/// "maxItems"?, "idHints"?}`: the cursor's line and column are positive.
pub fn complete(body: &[u8]) -> Result<Complete, String> {
    let req = serde_json::from_slice::<Complete>(body).map_err(|e| format!("invalid request: {e}"))?;
    if req.cursor.line < 1 || req.cursor.column < 1 {
        return Err("cursor line and column must be positive".into());
    }
    Ok(req)
}

#[derive(Debug, Deserialize)]
struct FromAction {
    #[serde(default)]
    effect: String,
    action: ActionRef,
}

/// `POST /api/policies/add-from-action` `{"effect", "action": {"type",
/// "name", "server"?, "tool"?}}`: the statement to add.
pub fn from_action(body: &[u8]) -> Result<String, String> {
    let Ok(req) = serde_json::from_slice::<FromAction>(body) else {
        return Err("invalid JSON payload".into());
    };
    suggest::from_action(&req.effect, &req.action)
}

#[derive(Debug, Deserialize)]
struct Delete {
    id: Option<String>,
    cedar: Option<String>,
}

/// `POST|DELETE /api/policies/delete` `{"id"} | {"cedar"}`: what to remove.
pub fn delete(body: &[u8]) -> Result<String, String> {
    let Ok(req) = serde_json::from_slice::<Delete>(body) else {
        return Err("invalid JSON payload".into());
    };
    match (req.id, req.cedar) {
        // A blank id names no statement (and is not a Cedar text either).
        (Some(id), _) if !id.trim().is_empty() => Ok(id),
        (_, Some(c)) if !c.trim().is_empty() => Ok(c),
        _ => Err("id or cedar must be provided".into()),
    }
}

#[derive(Debug, Deserialize)]
struct ModeRequest {
    mode: String,
}

/// `POST /api/policies/mode` `{"mode"}`: the mode asked for (the policy
/// service knows which there are).
pub fn mode(body: &[u8]) -> Result<String, String> {
    match serde_json::from_slice::<ModeRequest>(body) {
        Ok(req) => Ok(req.mode),
        Err(_) => Err("invalid JSON payload: {\"mode\": \"record|shadow|enforce\"}".into()),
    }
}

/// `POST /api/policies/replay`.
#[derive(Debug, Deserialize)]
pub struct Replay {
    /// The candidate policy.
    pub cedar: String,
    /// The session whose requests are replayed (else the query's).
    #[serde(default)]
    pub session: Option<String>,
    /// Replays the latest this many events only (0: all of them).
    #[serde(default)]
    pub limit: u32,
}

/// `POST /api/policies/replay` `{"cedar", "session"?, "limit"?}`.
pub fn replay(body: &[u8]) -> Result<Replay, String> {
    serde_json::from_slice::<Replay>(body)
        .map_err(|_| "invalid JSON payload: {\"cedar\": \"…\", \"session\": \"ID\"}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blank_id_is_no_id() {
        assert_eq!(delete(br#"{"id":" ","a":":"}"#).unwrap_err(), "id or cedar must be provided");
        assert_eq!(
            delete(br#"{"id":" ","cedar":"permit (principal, action, resource);"}"#).unwrap(),
            "permit (principal, action, resource);"
        );
        assert_eq!(delete(br#"{"id":"p1"}"#).unwrap(), "p1");
    }

    #[test]
    fn cedar_is_the_raw_body_or_its_cedar_field() {
        let stmt = "permit (principal, action, resource);";
        assert_eq!(cedar("text/plain", format!("\n {stmt} \n").as_bytes()).unwrap(), stmt);
        let json = format!("{{\"cedar\": {stmt:?}}}");
        assert_eq!(cedar("text/plain", json.as_bytes()).unwrap(), stmt, "a body that starts like an object");
        assert_eq!(cedar("application/json", b"{\"cedar\": \" \"}").unwrap_err(), "missing cedar field");
        assert_eq!(cedar("application/json", b" \n").unwrap_err(), "empty body");
        assert_eq!(optional_cedar("application/json", b" \n").unwrap(), None);
        assert_eq!(optional_cedar("", stmt.as_bytes()).unwrap().as_deref(), Some(stmt));
    }

    #[test]
    fn patch_bodies_are_checked_before_anything_is_changed() {
        let c = patch(
            br#"{"add": [{"effect": "Permit", "action": {"type": "net/connect", "name": "a.test"}}],
                          "remove": [{"id": "runtime#0"}], "applyMode": "enforce"}"#,
        )
        .unwrap();
        assert_eq!(c.add, ["permit (principal, action == Action::\"NetworkConnect\", resource == Host::\"a.test\");"]);
        assert_eq!((c.remove, c.enforce), (vec!["runtime#0".to_owned()], true));
        assert_eq!(patch(b"{}").unwrap_err(), "no changes provided");
        assert_eq!(patch(b"[").unwrap_err(), "invalid JSON payload");
        assert_eq!(
            patch(br#"{"remove": [{"id": "x"}], "applyMode": "shadow"}"#).unwrap_err(),
            "applyMode must be \"enforce\" or omitted"
        );
        assert_eq!(
            patch(br#"{"add": [{"action": {"type": "file/open", "name": "/x"}}]}"#).unwrap_err(),
            "add entries with action require effect of permit or forbid"
        );
        assert_eq!(patch(br#"{"remove": [{"cedar": " "}]}"#).unwrap_err(), "remove entries require id or cedar");
    }

    #[test]
    fn the_other_bodies() {
        let c = complete(br#"{"cedar": "per", "cursor": {"line": 1, "column": 4}, "maxItems": 5}"#).unwrap();
        assert_eq!((c.cursor.line, c.cursor.column, c.max_items), (1, 4, Some(5)));
        let zero = br#"{"cedar": "", "cursor": {"line": 0, "column": 1}}"#;
        assert_eq!(complete(zero).unwrap_err(), "cursor line and column must be positive");
        assert!(complete(br#"{"cedar": "", "cursor": {"line": 1, "column": 1}, "x": 1}"#).is_err());
        let all = "forbid (principal, action, resource);";
        assert_eq!(delete(format!("{{\"cedar\": {all:?}}}").as_bytes()).unwrap(), all);
        assert_eq!(delete(br#"{"id": ""}"#).unwrap_err(), "id or cedar must be provided");
        assert_eq!(mode(br#"{"mode": "shadow"}"#).unwrap(), "shadow");
        let r = replay(br#"{"cedar": "x", "limit": 3}"#).unwrap();
        assert_eq!((r.cedar.as_str(), r.session, r.limit), ("x", None, 3));
    }
}
