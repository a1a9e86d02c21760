//! The agents' MCP configuration as their container sees it: each stdio
//! server's command wrapped in leash-entry's relay (`leash_core::stdio_mcp`),
//! so that every message between the agent and the server is decided by
//! the session's policy. The user's files are never changed: the session
//! gets a rewritten copy of each, bound read-only over the original.
//!
//! Read (each sent by the client, which reads it as the caller): the
//! project's [`PROJECT_FILES`]. A server with a `command` (and no `type`,
//! or `stdio`) is wrapped; one with a URL is reached over HTTP, which the
//! proxy governs already.

use serde_json::Value;

use super::plan::ENTRY_PATH;
use leash_core::stdio_mcp::RELAY_COMMAND;

pub use leash_core::stdio_mcp::PROJECT_FILES;

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
    if let Some(servers) = v.get_mut("mcpServers").and_then(Value::as_object_mut) {
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
            wrapped.push(name.clone());
        }
    }
    let mut out = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
    out.push('\n');
    Ok((out, wrapped))
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
}
