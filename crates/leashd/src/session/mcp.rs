//! The agents' MCP configuration as their container sees it: each stdio
//! server's command wrapped in leash-entry's relay (`leash_core::stdio_mcp`),
//! so that every message between the agent and the server is decided by
//! the session's policy. The user's files are never changed: the session
//! gets a rewritten copy of each, bound read-only over the original.
//!
//! Read (each sent by the client, which reads it as the caller): the
//! project's [`PROJECT_FILES`], the home's [`HOME_FILES`] and claude's
//! global configuration ([`CLAUDE_GLOBAL`]). A server with a `command` (and
//! no `type`, or `stdio`) is wrapped; one with a URL is reached over HTTP,
//! which the proxy governs already.
//!
//! claude's global configuration is also claude's state, which it rewrites
//! as it runs: the container gets a writable copy ([`claude_global`]), and
//! the user's file is never mounted. What a session leaves in its copy is
//! kept (by leashd, for that user's next session) except its MCP settings,
//! which always come from the user's own file: whatever an agent writes
//! there stays in the container.

use serde_json::{Map, Value};

use super::plan::ENTRY_PATH;
use leash_core::stdio_mcp::RELAY_COMMAND;

pub use leash_core::stdio_mcp::{CLAUDE_GLOBAL, HOME_FILES, PROJECT_FILES};

/// A project's settings in claude's global configuration that start or
/// enable MCP servers: taken from the user's file only.
const PROJECT_MCP_KEYS: [&str; 4] =
    ["mcpServers", "enabledMcpjsonServers", "disabledMcpjsonServers", "enableAllProjectMcpServers"];

/// The relay's arguments for server `name` started as `command args…`.
fn relayed(name: &str, command: &str) -> Vec<String> {
    [RELAY_COMMAND, "--server", name, "--", command].map(str::to_owned).to_vec()
}

/// A configuration file (`path` says which kind) with its stdio servers
/// wrapped, and their names.
pub fn rewrite(path: &str, text: &str) -> Result<(String, Vec<String>), String> {
    if path.ends_with(".toml") { rewrite_toml(text) } else { rewrite_json(text) }
}

fn rewrite_json(text: &str) -> Result<(String, Vec<String>), String> {
    let mut v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let mut wrapped = Vec::new();
    wrap_json_servers(&mut v, "", &mut wrapped);
    pretty(&v, wrapped)
}

fn pretty(v: &Value, wrapped: Vec<String>) -> Result<(String, Vec<String>), String> {
    let mut out = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    out.push('\n');
    Ok((out, wrapped))
}

/// Wraps the stdio servers of `v.mcpServers`, naming each with `suffix`.
fn wrap_json_servers(v: &mut Value, suffix: &str, wrapped: &mut Vec<String>) {
    let Some(servers) = v.get_mut("mcpServers").and_then(Value::as_object_mut) else { return };
    for (name, s) in servers.iter_mut() {
        let remote = ["url", "httpUrl"].iter().any(|k| s.get(*k).is_some());
        let stdio = s.get("type").and_then(Value::as_str).is_none_or(|t| t == "stdio") && !remote;
        let Some(command) = s.get("command").and_then(Value::as_str).filter(|_| stdio).map(str::to_owned) else {
            continue;
        };
        let mut args: Vec<Value> = relayed(name, &command).into_iter().map(Value::from).collect();
        args.extend(s.get("args").and_then(Value::as_array).cloned().unwrap_or_default());
        s["command"] = Value::from(ENTRY_PATH);
        s["args"] = Value::Array(args);
        wrapped.push(format!("{name}{suffix}"));
    }
}

/// claude's global configuration as a session's container sees it: the
/// state the user's last session left (`saved`), or else the user's file
/// (`host`), with every MCP setting — the user-scope servers and each
/// project's [`PROJECT_MCP_KEYS`] — taken from the user's file, and every
/// stdio server wrapped; the servers wrapped (`NAME`, or `NAME (PROJECT)`).
/// A `saved` that is not a JSON object is ignored; a `host` that is not
/// JSON is an error.
pub fn claude_global(host: Option<&str>, saved: Option<&str>) -> Result<(String, Vec<String>), String> {
    let host: Value = match host {
        Some(t) => serde_json::from_str(t).map_err(|e| format!("not JSON: {e}"))?,
        None => Value::Object(Map::new()),
    };
    let saved = saved.and_then(|t| serde_json::from_str::<Value>(t).ok());
    let mut v = match (saved, host) {
        (Some(Value::Object(saved)), Value::Object(host)) => Value::Object(keep_users_mcp(saved, host)),
        (_, host) => host,
    };
    let mut wrapped = Vec::new();
    wrap_json_servers(&mut v, "", &mut wrapped);
    if let Some(projects) = v.get_mut("projects").and_then(Value::as_object_mut) {
        for (path, p) in projects.iter_mut() {
            wrap_json_servers(p, &format!(" ({path})"), &mut wrapped);
        }
    }
    pretty(&v, wrapped)
}

/// A session's `saved` state with the MCP settings of the user's file
/// (`host`) in place of its own, and whatever else only `host` has.
fn keep_users_mcp(mut saved: Map<String, Value>, host: Map<String, Value>) -> Map<String, Value> {
    saved.remove("mcpServers");
    if let Some(projects) = saved.get_mut("projects").and_then(Value::as_object_mut) {
        for p in projects.values_mut().filter_map(Value::as_object_mut) {
            p.retain(|k, _| !PROJECT_MCP_KEYS.contains(&k.as_str()));
        }
    }
    for (key, theirs) in host {
        match (key.as_str(), saved.get_mut(&key), theirs) {
            ("projects", Some(Value::Object(mine)), Value::Object(theirs)) => {
                for (path, their) in theirs {
                    match (mine.get_mut(&path), their) {
                        (Some(Value::Object(my)), Value::Object(their)) => {
                            my.extend(their.into_iter().filter(|(k, _)| PROJECT_MCP_KEYS.contains(&k.as_str())));
                        }
                        (_, their) => {
                            mine.insert(path, their);
                        }
                    }
                }
            }
            ("mcpServers" | "projects", _, theirs) | (_, None, theirs) => {
                saved.insert(key, theirs);
            }
            // The session's own state wins.
            _ => {}
        }
    }
    saved
}

fn rewrite_toml(text: &str) -> Result<(String, Vec<String>), String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("not TOML: {e}"))?;
    let mut wrapped = Vec::new();
    if let Some(servers) = doc.get_mut("mcp_servers").and_then(toml_edit::Item::as_table_like_mut) {
        for (name, s) in servers.iter_mut() {
            let Some(s) = s.as_table_like_mut() else { continue };
            if s.get("url").is_some() {
                continue;
            }
            let Some(command) = s.get("command").and_then(toml_edit::Item::as_str).map(str::to_owned) else { continue };
            let mut args = toml_edit::Array::new();
            for a in relayed(&name, &command) {
                args.push(a);
            }
            if let Some(old) = s.get("args").and_then(toml_edit::Item::as_array) {
                for a in old.iter() {
                    args.push(a.clone());
                }
            }
            s.insert("command", toml_edit::value(ENTRY_PATH));
            s.insert("args", toml_edit::value(args));
            wrapped.push(name.to_string());
        }
    }
    Ok((doc.to_string(), wrapped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_servers_are_wrapped_and_others_left_alone() {
        let text = r#"{"mcpServers": {
            "everything": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-everything"], "env": {"A": "1"}},
            "plain": {"type": "stdio", "command": "my-server"},
            "remote": {"type": "http", "url": "https://mcp.example.com/mcp"},
            "sse": {"url": "https://x/sse", "command": "ignored"},
            "gemini-remote": {"httpUrl": "https://x/mcp"}
        }, "other": 1}"#;
        let (out, names) = rewrite(".mcp.json", text).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(names, ["everything", "plain"]);
        let e = &v["mcpServers"]["everything"];
        assert_eq!(e["command"], ENTRY_PATH);
        assert_eq!(
            e["args"],
            serde_json::json!([
                "mcp-relay",
                "--server",
                "everything",
                "--",
                "npx",
                "-y",
                "@modelcontextprotocol/server-everything"
            ])
        );
        assert_eq!(e["env"]["A"], "1", "the rest of an entry stays");
        assert_eq!(
            v["mcpServers"]["plain"]["args"],
            serde_json::json!(["mcp-relay", "--server", "plain", "--", "my-server"])
        );
        assert_eq!(v["mcpServers"]["remote"]["url"], "https://mcp.example.com/mcp");
        assert!(v["mcpServers"]["remote"].get("command").is_none());
        assert_eq!(v["other"], 1);
        assert!(rewrite(".mcp.json", "{oops").unwrap_err().starts_with("not JSON"));
        assert_eq!(rewrite(".gemini/settings.json", "{}").unwrap().1, Vec::<String>::new());
    }

    #[test]
    fn codex_servers_are_wrapped_in_its_toml() {
        let text = "model = \"o3\"\n\n[mcp_servers.everything]\ncommand = \"npx\"\nargs = [\"-y\", \"server-everything\"]\nenv = { A = \"1\" }\n\n[mcp_servers.remote]\nurl = \"https://x/mcp\"\n";
        let (out, names) = rewrite(".codex/config.toml", text).unwrap();
        assert_eq!(names, ["everything"]);
        let doc: toml_edit::DocumentMut = out.parse().unwrap();
        let e = &doc["mcp_servers"]["everything"];
        assert_eq!(e["command"].as_str(), Some(ENTRY_PATH));
        let args: Vec<&str> = e["args"].as_array().unwrap().iter().filter_map(|a| a.as_str()).collect();
        assert_eq!(args, ["mcp-relay", "--server", "everything", "--", "npx", "-y", "server-everything"]);
        assert_eq!(doc["model"].as_str(), Some("o3"), "the rest stays");
        assert!(doc["mcp_servers"]["remote"].get("command").is_none());
        assert!(rewrite(".codex/config.toml", "[oops").unwrap_err().starts_with("not TOML"));
    }

    #[test]
    fn claudes_global_configuration_keeps_the_sessions_state_but_only_the_users_servers() {
        let host = r#"{"mcpServers": {"mine": {"command": "my-server"}},
            "theme": "light", "numStartups": 3,
            "projects": {"/w": {"mcpServers": {"local": {"type": "stdio", "command": "local-server"}},
                                "enabledMcpjsonServers": ["a"], "allowedTools": []},
                         "/v": {"hasTrustDialogAccepted": false}}}"#;
        // The user's file alone: every stdio server wrapped, user scope and
        // each project's.
        let (out, names) = claude_global(Some(host), None).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(names, ["mine", "local (/w)"]);
        assert_eq!(v["mcpServers"]["mine"]["command"], ENTRY_PATH);
        assert_eq!(v["projects"]["/w"]["mcpServers"]["local"]["args"][2], "local");
        assert_eq!(v["theme"], "light");

        // What a session left: its state stays; the servers it added, the
        // servers it enabled and its rewritten commands do not.
        let saved = r#"{"mcpServers": {"evil": {"command": "sh", "args": ["-c", "touch pwned"]}},
            "theme": "dark", "numStartups": 9, "userID": "u1",
            "projects": {"/w": {"mcpServers": {"evil2": {"command": "sh"}}, "enableAllProjectMcpServers": true,
                                "hasTrustDialogAccepted": true, "allowedTools": ["Bash"]},
                         "/x": {"mcpServers": {"evil3": {"command": "sh"}}, "disabledMcpjsonServers": []}}}"#;
        let (out, names) = claude_global(Some(host), Some(saved)).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(names, ["mine", "local (/w)"], "{out}");
        assert_eq!(
            (v["theme"].as_str(), v["numStartups"].as_i64(), v["userID"].as_str()),
            (Some("dark"), Some(9), Some("u1"))
        );
        let w = &v["projects"]["/w"];
        assert_eq!(w["hasTrustDialogAccepted"], true);
        assert_eq!(w["allowedTools"], serde_json::json!(["Bash"]));
        assert_eq!(w["enabledMcpjsonServers"], serde_json::json!(["a"]));
        assert!(w.get("enableAllProjectMcpServers").is_none() && w["mcpServers"].get("evil2").is_none(), "{out}");
        assert_eq!(v["projects"]["/x"], serde_json::json!({}), "{out}");
        assert_eq!(v["projects"]["/v"]["hasTrustDialogAccepted"], false, "a project only the user's file has");
        // Without a file of the user's, no server at all.
        let (out, names) = claude_global(None, Some(saved)).unwrap();
        assert!(names.is_empty() && !out.contains("evil"), "{out}");
        // A saved state that is not an object is ignored; a user's file
        // that is not JSON is said.
        assert_eq!(claude_global(Some(host), Some("[1]")).unwrap().1, ["mine", "local (/w)"]);
        assert!(claude_global(Some("{"), None).unwrap_err().starts_with("not JSON"));
    }
}
