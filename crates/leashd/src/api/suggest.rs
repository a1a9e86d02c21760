//! Cedar from what agents did: "allow this" / "deny this" for one event
//! (the Go leash's add-from-action), grouped suggestions over recorded
//! events (its `/suggest` and log2cedar), and editor completions.

use std::collections::{BTreeMap, BTreeSet};

use leash_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// An observed action, as the UI sends it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ActionRef {
    /// The Go leash's type (`file/open`, `proc/exec`, `net/connect`,
    /// `mcp/call`…) or one of our Cedar action names (`FileOpenReadOnly`…).
    #[serde(default, rename = "type")]
    pub kind: String,
    /// The path, host, command line or `tool@server`.
    #[serde(default)]
    pub name: String,
    /// MCP server.
    #[serde(default)]
    pub server: Option<String>,
    /// MCP tool.
    #[serde(default)]
    pub tool: Option<String>,
}

/// A Cedar string literal's inside: backslashes and quotes escaped, and
/// control characters (a bare carriage return does not parse; a file name
/// or a request's name can hold one).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

fn first_token(s: &str) -> &str {
    s.split_whitespace().next().unwrap_or("")
}

fn file_resource(path: &str) -> String {
    let p = if path.is_empty() { "/" } else { path };
    if p.ends_with('/') { format!("Dir::\"{}\"", esc(p)) } else { format!("File::\"{}\"", esc(p)) }
}

/// The host (with port) a connect action names.
fn host_of(name: &str) -> String {
    let n = name.trim();
    if let Some(rest) = n.strip_prefix("https://").or_else(|| n.strip_prefix("http://")) {
        return rest.split(['/', '?', '#']).next().unwrap_or("").to_owned();
    }
    let hostlike = n
        .split_whitespace()
        .find(|t| t.contains('.') || t.contains(':') && !t.ends_with(':') || t.parse::<std::net::IpAddr>().is_ok());
    match hostlike {
        Some(h) => h.to_owned(),
        None if n.is_empty() => "example.com".to_owned(),
        None => n.to_owned(),
    }
}

/// A `key=` token's value in an action name.
fn token_value<'a>(name: &'a str, key: &str) -> Option<&'a str> {
    name.split_whitespace().find_map(|t| t.strip_prefix(key)?.strip_prefix('=')).filter(|v| !v.is_empty())
}

fn mcp_server(raw: &str) -> String {
    let host = host_of(raw);
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && raw.contains("://") => h.to_owned(),
        _ => host,
    }
}

fn mcp_statement(effect: &str, server: &str, tool: Option<&str>) -> String {
    match tool {
        Some(t) => format!(
            "{effect} (principal, action == Action::\"McpCall\", resource == MCP::Tool::\"{}\") when {{ resource in [ MCP::Server::\"{}\" ] }};",
            esc(t),
            esc(server)
        ),
        None => format!(
            "{effect} (principal, action == Action::\"McpCall\", resource) when {{ resource in [ MCP::Server::\"{}\" ] }};",
            esc(server)
        ),
    }
}

/// The statement that allows (`permit`) or denies (`forbid`) one observed
/// action: the Go leash's add-from-action mappings, and our own event
/// actions taken exactly as authorized.
pub fn from_action(effect: &str, a: &ActionRef) -> Result<String, String> {
    let effect = effect.trim().to_lowercase();
    if effect != "permit" && effect != "forbid" {
        return Err("effect must be permit or forbid".into());
    }
    let kind = a.kind.trim();
    if kind.is_empty() {
        return Err("action.type is required".into());
    }
    let name = a.name.trim();
    let simple = |action: &str, resource: String| {
        format!("{effect} (principal, action == Action::\"{action}\", resource == {resource});")
    };
    Ok(match kind {
        "file/open" | "fs/list" => simple("FileOpen", file_resource(first_token(name))),
        "file/write" => simple("FileOpenReadWrite", file_resource(first_token(name))),
        "FileOpen" | "FileOpenReadOnly" | "FileOpenReadWrite" => simple(kind, file_resource(name)),
        "proc/exec" | "ProcessExec" => {
            let cmd = first_token(name);
            if cmd.is_empty() {
                return Err("unable to derive command path from action name".into());
            }
            simple("ProcessExec", format!("File::\"{}\"", esc(cmd)))
        }
        // The DNS relay's refusals and flags name a host.
        "net/connect" | "dns/resolve" | "NetworkConnect" | "dns.refused" | "dns.suspicious" => {
            simple("NetworkConnect", format!("Host::\"{}\"", esc(&host_of(name))))
        }
        "McpCall" => {
            let (tool, server) = name.split_once('@').unwrap_or(("", name));
            let tool = a.tool.as_deref().or((!tool.is_empty()).then_some(tool));
            let server = a.server.clone().unwrap_or_else(|| server.to_owned());
            mcp_statement(&effect, if server.is_empty() { "example.com" } else { &server }, tool)
        }
        k if k.starts_with("mcp/")
            && matches!(&k[4..], "deny" | "allow" | "list" | "call" | "resources" | "prompts" | "init" | "notify") =>
        {
            let server = a
                .server
                .clone()
                .filter(|s| !s.is_empty())
                .or_else(|| token_value(name, "server").map(mcp_server))
                .unwrap_or_else(|| "example.com".into());
            let tool =
                a.tool.clone().filter(|t| !t.is_empty()).or_else(|| token_value(name, "tool").map(str::to_owned));
            mcp_statement(&effect, &server, tool.as_deref())
        }
        other => return Err(format!("unsupported action type {other:?}")),
    })
}

/// One grouped suggestion (the Go leash's PascalCase keys, plus examples).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Suggestion {
    /// directory-group, file, binaries, domain-group, host, mcp-server.
    pub kind: String,
    /// For people.
    pub summary: String,
    /// The statement.
    pub proposed_cedar: String,
    /// Events it covers.
    pub event_count: usize,
    /// Of those, denied (or would-deny in shadow mode) as recorded.
    pub denied_count: usize,
    /// Distinct resources it covers.
    pub policy_count: usize,
    /// Distinct resources over events covered, in [0.1, 1].
    pub confidence: f64,
    /// Up to five resources.
    pub examples: Vec<String>,
}

#[derive(Default)]
struct Group {
    actions: BTreeSet<String>,
    resources: BTreeMap<String, usize>,
    events: usize,
    denied: usize,
}

impl Group {
    fn add(&mut self, action: &str, resource: &str, denied: bool) {
        self.actions.insert(action.to_owned());
        *self.resources.entry(resource.to_owned()).or_default() += 1;
        self.events += 1;
        self.denied += usize::from(denied);
    }

    fn action_clause(&self) -> String {
        if self.actions.len() == 1 {
            format!("action == Action::\"{}\"", self.actions.iter().next().map_or("", String::as_str))
        } else {
            let list: Vec<String> = self.actions.iter().map(|a| format!("Action::\"{a}\"")).collect();
            format!("action in [{}]", list.join(", "))
        }
    }

    fn finish(self, kind: &str, summary: String, cedar: String) -> Suggestion {
        let distinct = self.resources.len();
        Suggestion {
            kind: kind.to_owned(),
            summary,
            proposed_cedar: cedar,
            event_count: self.events,
            denied_count: self.denied,
            policy_count: distinct,
            confidence: (distinct as f64 / self.events.max(1) as f64).clamp(0.1, 1.0),
            examples: self.resources.keys().take(5).cloned().collect(),
        }
    }
}

/// The host name of a `name:port` resource, when it is a name.
fn host_name(resource: &str) -> Option<&str> {
    let host = resource
        .rsplit_once(':')
        .map_or(resource, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { resource });
    (host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('[') && host.contains('.')).then_some(host)
}

fn base_domain(host: &str) -> String {
    let labels: Vec<&str> = host.split('.').collect();
    labels[labels.len().saturating_sub(2)..].join(".")
}

/// Suggestions that would allow what the recorded events show the agent
/// did: files grouped by directory (three or more in one), executables in
/// one statement, hosts grouped by domain (three or more), MCP tools per
/// server. Denied ones first, then by events covered.
pub fn suggest(events: &[pb::Event]) -> Vec<Suggestion> {
    let mut dirs: BTreeMap<String, Group> = BTreeMap::new();
    let mut execs = Group::default();
    let mut domains: BTreeMap<String, Group> = BTreeMap::new();
    let mut addrs: BTreeMap<String, Group> = BTreeMap::new();
    let mut mcp: BTreeMap<String, Group> = BTreeMap::new();
    for e in events {
        if leash_proto::event::decision_name(e.decision).is_none() || e.resource.is_empty() {
            continue;
        }
        let denied = leash_proto::event::decision_name(e.decision) == Some("deny") || e.would_deny;
        match e.action.as_str() {
            "FileOpen" | "FileOpenReadOnly" | "FileOpenReadWrite" if e.resource.starts_with('/') => {
                let dir = e.resource.rsplit_once('/').map_or("/".to_owned(), |(d, _)| format!("{d}/"));
                dirs.entry(dir).or_default().add(&e.action, &e.resource, denied);
            }
            "ProcessExec" if e.resource.starts_with('/') => execs.add(&e.action, &e.resource, denied),
            // A name the DNS relay refused was never connected to: its
            // refusal is the only trace of it.
            "NetworkConnect" | "dns.refused" => match host_name(&e.resource) {
                Some(h) => domains.entry(base_domain(h)).or_default().add("NetworkConnect", h, denied),
                None => addrs.entry(e.resource.clone()).or_default().add("NetworkConnect", &e.resource, denied),
            },
            "McpCall" => {
                let (tool, server) = e.resource.split_once('@').unwrap_or(("", &e.resource));
                mcp.entry(server.to_owned()).or_default().add(&e.action, tool, denied);
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (dir, g) in dirs {
        if g.resources.len() >= 3 {
            let cedar = format!("permit (principal, {}, resource in Dir::\"{}\");", g.action_clause(), esc(&dir));
            out.push(g.finish("directory-group", format!("Allow opening files in directory {dir}"), cedar));
        } else {
            let list: Vec<String> = g.resources.keys().map(|f| format!("File::\"{}\"", esc(f))).collect();
            let cedar = in_list(&g.action_clause(), &list);
            out.push(g.finish("file", format!("Allow files in {dir}"), cedar));
        }
    }
    if execs.events > 0 {
        let list: Vec<String> = execs.resources.keys().map(|f| format!("File::\"{}\"", esc(f))).collect();
        let cedar = in_list("action == Action::\"ProcessExec\"", &list);
        let n = list.len();
        out.push(execs.finish("binaries", format!("Allow running {n} program(s)"), cedar));
    }
    for (base, g) in domains {
        if g.resources.len() >= 3 {
            let cedar = format!(
                "permit (principal, action == Action::\"NetworkConnect\", resource in Host::\"*.{}\");",
                esc(&base)
            );
            out.push(g.finish("domain-group", format!("Permit network connect to *.{base}"), cedar));
        } else {
            let list: Vec<String> = g.resources.keys().map(|h| format!("Host::\"{}\"", esc(h))).collect();
            let cedar = in_list("action == Action::\"NetworkConnect\"", &list);
            out.push(g.finish("host", format!("Permit network connect to hosts of {base}"), cedar));
        }
    }
    for (addr, g) in addrs {
        let cedar =
            format!("permit (principal, action == Action::\"NetworkConnect\", resource == Host::\"{}\");", esc(&addr));
        out.push(g.finish("host", format!("Permit network connect to {addr}"), cedar));
    }
    for (server, g) in mcp {
        let list: Vec<String> =
            g.resources.keys().filter(|t| !t.is_empty()).map(|t| format!("MCP::Tool::\"{}\"", esc(t))).collect();
        let cedar = format!(
            "permit (principal, action == Action::\"McpCall\", resource) when {{ resource in [{}] && resource in MCP::Server::\"{}\" }};",
            list.join(", "),
            esc(&server)
        );
        out.push(g.finish("mcp-server", format!("Allow {} MCP tool(s) of {server}", list.len()), cedar));
    }
    out.sort_by(|a, b| (b.denied_count > 0).cmp(&(a.denied_count > 0)).then(b.event_count.cmp(&a.event_count)));
    out
}

/// `permit (principal, <action>, resource == X);` for one resource, else
/// `… resource) when { resource in [X, Y] };`.
fn in_list(action: &str, list: &[String]) -> String {
    match list {
        [one] => format!("permit (principal, {action}, resource == {one});"),
        many => format!("permit (principal, {action}, resource) when {{ resource in [{}] }};", many.join(", ")),
    }
}

/// What completions may offer beyond the vocabulary: what agents touched.
#[derive(Clone, Debug, Default)]
pub struct Hints {
    /// Files.
    pub files: BTreeSet<String>,
    /// Directories (with a trailing slash).
    pub dirs: BTreeSet<String>,
    /// Hosts.
    pub hosts: BTreeSet<String>,
    /// MCP tools.
    pub tools: Vec<String>,
    /// MCP servers.
    pub servers: Vec<String>,
}

impl Hints {
    /// Learns from one event.
    pub fn observe(&mut self, action: &str, resource: &str) {
        match action {
            "FileOpen" | "FileOpenReadOnly" | "FileOpenReadWrite" | "ProcessExec" if resource.starts_with('/') => {
                if self.files.len() < 32 {
                    self.files.insert(resource.to_owned());
                }
                if let Some((d, _)) = resource.rsplit_once('/')
                    && self.dirs.len() < 32
                {
                    self.dirs.insert(format!("{d}/"));
                }
            }
            "NetworkConnect" if self.hosts.len() < 32 => {
                self.hosts.insert(host_name(resource).unwrap_or(resource).to_owned());
            }
            "McpCall" => {
                if let Some((t, s)) = resource.split_once('@') {
                    self.tools.push(t.to_owned());
                    self.servers.push(s.to_owned());
                }
            }
            _ => {}
        }
    }
}

/// A completion item (Monaco-shaped, as the Go leash returns them).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Item {
    /// What the list shows.
    pub label: String,
    /// keyword, action, entityType, resource, conditionKey, snippet, tool, server.
    pub kind: &'static str,
    /// What replaces the range.
    #[serde(rename = "insertText")]
    pub insert_text: String,
    /// A short note.
    pub detail: String,
    /// The token under the cursor (1-based, end exclusive).
    pub range: Range,
}

/// A range in the text.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Range {
    /// Start.
    pub start: Pos,
    /// End.
    pub end: Pos,
}

/// A 1-based position.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Pos {
    /// Line.
    pub line: usize,
    /// Column.
    pub column: usize,
}

const ACTIONS: [&str; 7] =
    ["FileOpen", "FileOpenReadOnly", "FileOpenReadWrite", "ProcessExec", "NetworkConnect", "HttpRewrite", "McpCall"];

/// Completions at a 1-based cursor: keywords and skeletons at the start of
/// a statement, actions after `action ==`/`in [`, entities (what agents
/// touched first) after `resource ==`/`in`, context keys after `context.`;
/// nothing inside a `//` comment.
pub fn complete(text: &str, line: usize, column: usize, max: usize, hints: &Hints) -> Vec<Item> {
    let Some(line_text) = text.lines().nth(line - 1).or((line == 1).then_some("")) else { return Vec::new() };
    let col = (column - 1).min(line_text.chars().count());
    let before: String = line_text.chars().take(col).collect();
    if before.contains("//") {
        return Vec::new();
    }
    let is_token = |c: char| c.is_alphanumeric() || "_:\".-/*@[]".contains(c);
    let token: String =
        before.chars().rev().take_while(|c| is_token(*c)).collect::<Vec<_>>().into_iter().rev().collect();
    let token = token.trim_start_matches('[').to_owned();
    let start_col = col - token.chars().count() + 1;
    // What precedes the token, over earlier lines too.
    let mut prior: String = text.lines().take(line - 1).collect::<Vec<_>>().join("\n");
    prior.push('\n');
    prior.push_str(&before[..before.len() - token.len()]);
    let prior = prior.trim_end().trim_end_matches('[').trim_end().to_owned();
    let range = Range { start: Pos { line, column: start_col }, end: Pos { line, column: col + 1 } };
    let item = |label: String, kind: &'static str, insert: String, detail: &str| Item {
        label,
        kind,
        insert_text: insert,
        detail: detail.to_owned(),
        range,
    };
    let mut items: Vec<Item> = Vec::new();
    let lower = prior.to_lowercase();
    let after = |w: &str| lower.ends_with(w);
    if token.starts_with("context.") || after("context.") {
        for k in ["context.hostname", "context.header", "context.value", "context.arguments"] {
            items.push(item(k.into(), "conditionKey", k.into(), "a request attribute"));
        }
    } else if after("action ==")
        || after("action !=")
        || after("action in")
        || (after(",") && lower.contains("action in")) && !lower.contains("resource")
    {
        for a in ACTIONS {
            items.push(item(format!("Action::\"{a}\""), "action", format!("Action::\"{a}\""), "action"));
        }
    } else if after("resource ==") || after("resource !=") || after("resource in") || after(" in") || after(",") {
        for f in &hints.files {
            items.push(item(format!("File::\"{f}\""), "resource", format!("File::\"{f}\""), "seen"));
        }
        for d in &hints.dirs {
            items.push(item(format!("Dir::\"{d}\""), "resource", format!("Dir::\"{d}\""), "seen"));
        }
        for h in &hints.hosts {
            items.push(item(format!("Host::\"{h}\""), "resource", format!("Host::\"{h}\""), "seen"));
        }
        for s in hints.servers.iter().collect::<BTreeSet<_>>().into_iter().take(24) {
            items.push(item(format!("MCP::Server::\"{s}\""), "server", format!("MCP::Server::\"{s}\""), "seen"));
        }
        for t in hints.tools.iter().collect::<BTreeSet<_>>().into_iter().take(24) {
            items.push(item(format!("MCP::Tool::\"{t}\""), "tool", format!("MCP::Tool::\"{t}\""), "seen"));
        }
        for (l, d) in [
            ("File::\"/path\"", "a file"),
            ("Dir::\"/path/\"", "a directory and everything under it"),
            ("Host::\"example.com\"", "a host, any port"),
            ("Host::\"*.example.com\"", "every subdomain"),
            ("Net::IpRange::\"10.0.0.0/8\"", "an address range"),
        ] {
            items.push(item(l.into(), "entityType", l.into(), d));
        }
    } else if lower.rfind('(').is_some_and(|o| lower.rfind(')').is_none_or(|c| c < o)) {
        for (l, ins) in [
            ("principal", "principal"),
            ("action == Action::\"NetworkConnect\"", "action == Action::\"NetworkConnect\""),
            ("action", "action"),
            ("resource == Host::\"api.example.com\"", "resource == Host::\"api.example.com\""),
            ("resource", "resource"),
        ] {
            items.push(item(l.into(), "keyword", ins.into(), "scope"));
        }
    } else {
        for k in ["permit", "forbid", "when", "unless", "in", "like", "has"] {
            items.push(item(k.into(), "keyword", k.into(), "keyword"));
        }
        items.push(item(
            "permit statement".into(),
            "snippet",
            "permit (principal, action == Action::\"FileOpenReadOnly\", resource in Dir::\"/workspace/\");".into(),
            "skeleton",
        ));
        items.push(item(
            "forbid statement".into(),
            "snippet",
            "forbid (principal, action == Action::\"NetworkConnect\", resource == Host::\"example.com\");".into(),
            "skeleton",
        ));
    }
    let t = token.to_lowercase();
    let mut ranked: Vec<(usize, Item)> = items
        .into_iter()
        .filter_map(|i| {
            let l = i.label.to_lowercase();
            if t.is_empty() || l.starts_with(&t) {
                Some((0, i))
            } else if l.contains(t.trim_matches('"')) {
                Some((1, i))
            } else {
                None
            }
        })
        .collect();
    ranked.sort_by_key(|(r, _)| *r);
    ranked.into_iter().map(|(_, i)| i).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(kind: &str, name: &str) -> ActionRef {
        ActionRef { kind: kind.into(), name: name.into(), ..ActionRef::default() }
    }

    #[test]
    fn add_from_action_maps_like_the_go_leash() {
        assert_eq!(
            from_action("permit", &a("file/open", "/etc/hosts extra")).unwrap(),
            "permit (principal, action == Action::\"FileOpen\", resource == File::\"/etc/hosts\");"
        );
        assert_eq!(
            from_action("Forbid", &a("file/write", "/tmp/")).unwrap(),
            "forbid (principal, action == Action::\"FileOpenReadWrite\", resource == Dir::\"/tmp/\");"
        );
        assert_eq!(
            from_action("permit", &a("fs/list", "")).unwrap(),
            "permit (principal, action == Action::\"FileOpen\", resource == Dir::\"/\");"
        );
        assert_eq!(
            from_action("permit", &a("proc/exec", "/usr/bin/git status")).unwrap(),
            "permit (principal, action == Action::\"ProcessExec\", resource == File::\"/usr/bin/git\");"
        );
        assert_eq!(
            from_action("permit", &a("proc/exec", " ")).unwrap_err(),
            "unable to derive command path from action name"
        );
        assert_eq!(
            from_action("forbid", &a("net/connect", "https://api.example.com:8443/v1?x=1")).unwrap(),
            "forbid (principal, action == Action::\"NetworkConnect\", resource == Host::\"api.example.com:8443\");"
        );
        assert_eq!(
            from_action("permit", &a("dns/resolve", "TCP pypi.org")).unwrap(),
            "permit (principal, action == Action::\"NetworkConnect\", resource == Host::\"pypi.org\");"
        );
        assert_eq!(
            from_action("forbid", &a("dns.suspicious", "x.tunnel.example")).unwrap(),
            "forbid (principal, action == Action::\"NetworkConnect\", resource == Host::\"x.tunnel.example\");"
        );
        assert!(from_action("permit", &a("dns.refused", "pypi.org")).unwrap().contains("Host::\"pypi.org\""));
        assert!(from_action("permit", &a("net/connect", "")).unwrap().contains("Host::\"example.com\""));
        assert_eq!(
            from_action("forbid", &a("mcp/call", "tools/call tool=get-env server=http://mcp.test:3001/mcp")).unwrap(),
            "forbid (principal, action == Action::\"McpCall\", resource == MCP::Tool::\"get-env\") when { resource in [ MCP::Server::\"mcp.test\" ] };"
        );
        let mut r = a("mcp/list", "");
        r.server = Some("s.test".into());
        assert_eq!(
            from_action("permit", &r).unwrap(),
            "permit (principal, action == Action::\"McpCall\", resource) when { resource in [ MCP::Server::\"s.test\" ] };"
        );
        assert_eq!(
            from_action("permit", &a("FileOpenReadOnly", "/a \"b\"")).unwrap(),
            "permit (principal, action == Action::\"FileOpenReadOnly\", resource == File::\"/a \\\"b\\\"\");"
        );
        assert!(from_action("permit", &a("McpCall", "echo@mcp.test")).unwrap().contains("MCP::Tool::\"echo\""));
        // A bare carriage return in a Cedar string does not parse.
        assert_eq!(
            from_action("forbid", &a("FileOpenReadWrite", "/tmp/a\rb\n\u{1b}\\")).unwrap(),
            "forbid (principal, action == Action::\"FileOpenReadWrite\", resource == File::\"/tmp/a\\u{d}b\\u{a}\\u{1b}\\\\\");"
        );
        assert_eq!(from_action("allow", &a("file/open", "/x")).unwrap_err(), "effect must be permit or forbid");
        assert_eq!(from_action("permit", &a("", "/x")).unwrap_err(), "action.type is required");
        assert_eq!(from_action("permit", &a("x/y", "/x")).unwrap_err(), "unsupported action type \"x/y\"");
    }

    fn ev(action: &str, resource: &str, deny: bool) -> pb::Event {
        pb::Event {
            action: action.into(),
            resource: resource.into(),
            decision: if deny { pb::Decision::Deny } else { pb::Decision::Allow } as i32,
            ..pb::Event::default()
        }
    }

    #[test]
    fn suggestions_group_directories_domains_and_binaries() {
        let events = vec![
            ev("FileOpenReadOnly", "/src/a.rs", true),
            ev("FileOpenReadOnly", "/src/b.rs", false),
            ev("FileOpenReadWrite", "/src/c.rs", false),
            ev("FileOpenReadOnly", "/etc/hosts", false),
            ev("ProcessExec", "/usr/bin/git", false),
            ev("ProcessExec", "/usr/bin/cargo", false),
            ev("NetworkConnect", "a.github.com:443", false),
            ev("NetworkConnect", "b.github.com:443", false),
            ev("NetworkConnect", "c.github.com:443", false),
            ev("NetworkConnect", "10.0.0.1:22", false),
            ev("dns.refused", "pypi.org", true),
            ev("McpCall", "echo@mcp.test", false),
            ev("daemon.start", "leashd", false),
        ];
        let s = suggest(&events);
        let by = |k: &str| s.iter().filter(|x| x.kind == k).cloned().collect::<Vec<_>>();
        assert_eq!(s[0].kind, "directory-group", "denied first: {s:#?}");
        assert_eq!(
            s[0].proposed_cedar,
            "permit (principal, action in [Action::\"FileOpenReadOnly\", Action::\"FileOpenReadWrite\"], resource in Dir::\"/src/\");"
        );
        assert_eq!((s[0].event_count, s[0].denied_count, s[0].policy_count), (3, 1, 3));
        assert_eq!(
            by("file")[0].proposed_cedar,
            "permit (principal, action == Action::\"FileOpenReadOnly\", resource == File::\"/etc/hosts\");"
        );
        assert!(
            by("binaries")[0].proposed_cedar.contains("resource in [File::\"/usr/bin/cargo\", File::\"/usr/bin/git\"]")
        );
        assert!(by("domain-group")[0].proposed_cedar.contains("Host::\"*.github.com\""));
        assert!(by("host").iter().any(|h| h.proposed_cedar.contains("Host::\"10.0.0.1:22\"")));
        let refused = by("host").into_iter().find(|h| h.examples == ["pypi.org"]).expect("the refused name");
        assert_eq!(
            (refused.proposed_cedar.as_str(), refused.denied_count),
            ("permit (principal, action == Action::\"NetworkConnect\", resource == Host::\"pypi.org\");", 1)
        );
        assert!(by("mcp-server")[0].proposed_cedar.contains("MCP::Tool::\"echo\""));
    }

    #[test]
    fn completions_follow_the_cursor() {
        let mut h = Hints::default();
        h.observe("FileOpenReadOnly", "/work/src/main.rs");
        h.observe("NetworkConnect", "api.example.com:443");
        let labels =
            |t: &str, line, col| complete(t, line, col, 75, &h).into_iter().map(|i| i.label).collect::<Vec<_>>();
        assert!(labels("per", 1, 4).contains(&"permit".to_owned()));
        let acts = labels("permit (principal, action == Act", 1, 33);
        assert!(acts.contains(&"Action::\"FileOpenReadOnly\"".to_owned()), "{acts:?}");
        let res = labels("permit (principal, action == Action::\"NetworkConnect\", resource == ", 1, 68);
        assert_eq!(res[0], "File::\"/work/src/main.rs\"", "{res:?}");
        assert!(res.contains(&"Host::\"api.example.com\"".to_owned()));
        let hosts = labels("permit (principal, action, resource == Host::\"api", 1, 50);
        assert_eq!(hosts, vec!["Host::\"api.example.com\"".to_owned()]);
        assert!(labels("// permit", 1, 9).is_empty());
        assert!(
            labels("permit (principal, action, resource) when { context.", 1, 53)
                .contains(&"context.hostname".to_owned())
        );
        let item = &complete("permit (principal, action == Act", 1, 33, 75, &h)[0];
        assert_eq!((item.range.start.column, item.range.end.column), (30, 33));
    }
}
