//! One line per policy for people, in the Go leash's words:
//! `Allow open files, read files directory /etc/ [read-etc]`.

use serde_json::Value;

fn action_phrase(id: &str) -> &str {
    match id {
        "FileOpen" => "open files",
        "FileOpenReadOnly" => "read files",
        "FileOpenReadWrite" => "write files",
        "ProcessExec" => "run processes",
        "NetworkConnect" => "network connect",
        "HttpRewrite" => "rewrite headers",
        "McpCall" => "call MCP tools",
        "SecretUse" => "send secrets",
        other => other,
    }
}

fn entity(v: &Value) -> Option<(String, String)> {
    let e = v.get("entity").or_else(|| v.get("__entity")).unwrap_or(v);
    Some((e.get("type")?.as_str()?.to_owned(), e.get("id")?.as_str()?.to_owned()))
}

fn resource_phrase((ty, id): &(String, String)) -> String {
    match ty.as_str() {
        "Dir" => format!("directory {id}"),
        "File" => format!("file {id}"),
        "Host" if id == "*" => "any host".to_owned(),
        "Host" => format!("host {id}"),
        "Net::IpRange" => format!("range {id}"),
        "Net::DnsZone" => format!("zone {id}"),
        "MCP::Server" => format!("MCP server {id}"),
        "MCP::Tool" => format!("MCP tool {id}"),
        "Secret" => format!("secret {id}"),
        other => format!("{other} {id}"),
    }
}

fn entities_in(v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            if let Some(e) = map.get("__entity").and_then(|e| entity(&serde_json::json!({ "entity": e }))) {
                out.push(e);
                return;
            }
            map.values().for_each(|c| entities_in(c, out));
        }
        Value::Array(items) => items.iter().for_each(|c| entities_in(c, out)),
        _ => {}
    }
}

/// The line for one policy's JSON form.
pub fn line(id: &str, json: &Value) -> String {
    let effect = if json.get("effect").and_then(Value::as_str) == Some("forbid") { "Deny" } else { "Allow" };
    let action = json.get("action");
    let actions: Vec<String> = match action.and_then(|a| a.get("op")).and_then(Value::as_str) {
        Some("==") => action.and_then(entity).map(|(_, id)| vec![action_phrase(&id).to_owned()]).unwrap_or_default(),
        Some("in") => action
            .and_then(|a| {
                a.get("entities")
                    .and_then(Value::as_array)
                    .cloned()
                    .or_else(|| a.get("entity").map(|e| vec![e.clone()]))
            })
            .unwrap_or_default()
            .iter()
            .filter_map(|e| entity(&serde_json::json!({ "entity": e })))
            .map(|(_, id)| action_phrase(&id).to_owned())
            .collect(),
        _ => vec!["do anything".to_owned()],
    };
    let mut resources = Vec::new();
    let scope = json.get("resource");
    let scoped = matches!(scope.and_then(|r| r.get("op")).and_then(Value::as_str), Some("==" | "in"));
    if scoped && let Some(e) = scope.and_then(entity) {
        resources.push(e);
    }
    let conditions = json.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut unless = false;
    for c in &conditions {
        let before = resources.len();
        entities_in(c.get("body").unwrap_or(c), &mut resources);
        if c.get("kind").and_then(Value::as_str) == Some("unless") && resources.len() > before {
            unless = true;
        }
    }
    let is_type = (scope.and_then(|r| r.get("op")).and_then(Value::as_str) == Some("is"))
        .then(|| {
            scope
                .and_then(|r| r.get("entity_type"))
                .and_then(Value::as_str)
                .map(|t| format!("any {}", t.to_lowercase()))
        })
        .flatten();
    let what = if resources.is_empty() {
        is_type.unwrap_or_else(|| "anything".to_owned())
    } else {
        resources.iter().map(resource_phrase).collect::<Vec<_>>().join(", ")
    };
    let mut out = format!("{effect} {} {}{what}", actions.join(", "), if unless { "except " } else { "" });
    // A condition that only places the resource (`resource in [...]`) is
    // said by the resources; anything else, or a test of the context, is a condition.
    let conditional = conditions.iter().any(|c| {
        let t = c.to_string();
        !t.contains("\"in\"") || t.contains("\"Var\":\"context\"")
    });
    if conditional {
        out.push_str(" (with conditions)");
    }
    out.push_str(&format!(" [{id}]"));
    out
}

#[cfg(test)]
mod tests {
    use crate::engine::{Engine, Source};

    fn lines(text: &str) -> Vec<String> {
        let e = Engine::load(&[Source { name: "t".into(), text: text.into() }]).unwrap();
        e.policies().policies().map(|p| super::line(p.id().as_ref(), &p.to_json().unwrap())).collect()
    }

    #[test]
    fn the_go_leash_words() {
        let mut got = lines(crate::DEFAULT_POLICY);
        got.sort();
        assert_eq!(
            got,
            [
                "Allow network connect any host [default-network]",
                "Allow network connect range 127.0.0.0/8, range ::1/128 [default-loopback]",
                "Allow open files, read files, write files directory / [default-files]",
                "Allow run processes directory / [default-exec]",
                "Allow send secrets secret ANTHROPIC_API_KEY, secret CLAUDE_CODE_OAUTH_TOKEN (with conditions) [default-secret-anthropic]",
                "Allow send secrets secret DASHSCOPE_API_KEY (with conditions) [default-secret-dashscope]",
                "Allow send secrets secret GEMINI_API_KEY (with conditions) [default-secret-gemini]",
                "Allow send secrets secret OPENAI_API_KEY, secret CODEX_API_KEY (with conditions) [default-secret-openai]",
            ]
        );
        assert_eq!(
            lines(
                "@id(\"x\") forbid (principal, action == Action::\"ProcessExec\", resource == File::\"/usr/bin/nmap\");"
            ),
            ["Deny run processes file /usr/bin/nmap [x]"]
        );
        assert_eq!(
            lines(
                "@id(\"u\") permit (principal, action == Action::\"FileOpen\", resource) unless { resource in Dir::\"/tmp/\" };"
            ),
            ["Allow open files except directory /tmp/ [u]"]
        );
        assert_eq!(lines("@id(\"a\") permit (principal, action, resource);"), ["Allow do anything anything [a]"]);
    }
}
