//! The agent's MCP configuration as its container sees it: each stdio
//! server's command wrapped in leash-entry's relay (`leash_core::stdio_mcp`),
//! so that every message between the agent and the server is decided by
//! the session's policy. The user's file is never changed: the session
//! gets a rewritten copy, bound read-only over it.
//!
//! Read: the project's `.mcp.json` (claude's project servers), sent by the
//! client as the caller. A server with a `command` (and no `type`, or
//! `stdio`) is wrapped; one with a `url` is reached over HTTP, which the
//! proxy governs already.

use serde_json::Value;

use super::plan::ENTRY_PATH;
use leash_core::stdio_mcp::RELAY_COMMAND;

/// Where the rewritten `.mcp.json` is kept in the session dir.
pub const PROJECT_FILE: &str = "mcp.json";

/// The configuration with its stdio servers wrapped, and their names.
pub fn rewrite(text: &str) -> Result<(String, Vec<String>), String> {
    let mut v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let mut wrapped = Vec::new();
    if let Some(servers) = v.get_mut("mcpServers").and_then(Value::as_object_mut) {
        for (name, s) in servers.iter_mut() {
            let stdio = s.get("type").and_then(Value::as_str).is_none_or(|t| t == "stdio") && s.get("url").is_none();
            let Some(command) = s.get("command").and_then(Value::as_str).filter(|_| stdio).map(str::to_owned) else {
                continue;
            };
            let args: Vec<Value> = s.get("args").and_then(Value::as_array).cloned().unwrap_or_default();
            let mut relayed: Vec<Value> =
                [RELAY_COMMAND, "--server", name.as_str(), "--", command.as_str()].map(Value::from).to_vec();
            relayed.extend(args);
            s["command"] = Value::from(ENTRY_PATH);
            s["args"] = Value::Array(relayed);
            wrapped.push(name.clone());
        }
    }
    let mut out = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
    out.push('\n');
    Ok((out, wrapped))
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
            "sse": {"url": "https://x/sse", "command": "ignored"}
        }, "other": 1}"#;
        let (out, names) = rewrite(text).unwrap();
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
        assert!(rewrite("{oops").unwrap_err().starts_with("not JSON"));
        assert_eq!(rewrite("{}").unwrap().1, Vec::<String>::new());
    }
}
