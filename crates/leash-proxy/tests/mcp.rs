//! MCP governance end to end: the real `@modelcontextprotocol/server-everything`
//! (streamable HTTP and SSE transports, each in a container of its own) and
//! the official SDK's client in a session container, through the proxy.

use std::time::Duration;

use leash_testkit::{Stack, eventually, require_docker};

const IMAGE: &str = "leash-test-debian:latest";
/// The agents' real command-line tools.
const AGENTS_IMAGE: &str = "leash-agents:latest";

const CLIENT: &str = r#"
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");
const { SSEClientTransport } = require("@modelcontextprotocol/sdk/client/sse.js");
const { StdioClientTransport } = require("@modelcontextprotocol/sdk/client/stdio.js");
// "stdio NAME": the server NAME of the project's .mcp.json (or of $MCP_CONFIG), started as it says (as claude does).
function stdio(name) {
  const s = JSON.parse(require("fs").readFileSync(process.env.MCP_CONFIG || ".mcp.json", "utf8")).mcpServers[name];
  return new StdioClientTransport({ command: s.command, args: s.args || [], env: { ...process.env, ...(s.env || {}) }, stderr: "inherit" });
}
async function main() {
  const [mode, url] = process.argv.slice(2);
  const client = new Client({ name: "leash-test", version: "1.0.0" });
  const transport = mode === "stdio" ? stdio(url) : mode === "sse" ? new SSEClientTransport(new URL(url)) : new StreamableHTTPClientTransport(new URL(url));
  await client.connect(transport);
  const tools = (await client.listTools()).tools.map((t) => t.name);
  console.log("tools " + tools.sort().join(","));
  for (const [name, args] of [["echo", { message: "hi leash" }], ["get-env", {}], ["echo", { message: "a forbidden word" }]]) {
    try {
      const r = await client.callTool({ name, arguments: args });
      console.log("call " + name + " " + JSON.stringify(r.content).slice(0, 60));
    } catch (e) {
      console.log("refused " + name + " " + e.code + " " + e.message);
    }
  }
  await client.close();
}
main().then(() => process.exit(0), (e) => { console.log("fatal " + e.message); process.exit(1); });
"#;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A session of the test image under `policy` that sleeps (the tests act
/// in its container); its `leash`.
fn sleeping_session(stack: &Stack, policy: &std::path::Path) -> std::process::Child {
    stack
        .leash(&["--image", IMAGE, "--policy", policy.to_str().unwrap(), "--", "sleep", "300"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// `sh -c SCRIPT` in `dir` of a session's container (outside the session's
/// own command); its stdout and stderr.
fn exec_in(container: &str, dir: &std::path::Path, script: &str) -> (String, String) {
    let out = std::process::Command::new("docker")
        .args(["exec", "-w", dir.to_str().unwrap(), container, "sh", "-c", script])
        .output()
        .unwrap();
    (text(&out.stdout), text(&out.stderr))
}

/// A server-everything container on the bridge, port 80; removed on drop.
struct Server {
    name: String,
    ip: String,
}

impl Server {
    fn start(transport: &str) -> Server {
        // Tests run at once in one process: each server its own name.
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("leash-mcp-{transport}-{}-{n}", std::process::id());
        let _ = std::process::Command::new("docker").args(["rm", "-f", &name]).output();
        let out = std::process::Command::new("docker")
            .args(["run", "-d", "--name", &name, "-e", "PORT=80", IMAGE, "mcp-server-everything", transport])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        // The server's address as its own interfaces have it (the engine's
        // report of its networks may leave fields empty).
        let ip = text(
            &std::process::Command::new("docker").args(["exec", &name, "hostname", "-I"]).output().unwrap().stdout,
        )
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("the MCP server container {name} has no address (`hostname -I` inside it)"))
        .to_owned();
        eventually(Duration::from_secs(20), "the MCP server listening", || {
            let logs = std::process::Command::new("docker").args(["logs", &name]).output().ok()?;
            let all = format!("{}{}", text(&logs.stdout), text(&logs.stderr));
            (all.contains("port 80")).then_some(())
        });
        Server { name, ip }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker").args(["rm", "-f", &self.name]).output();
    }
}

/// A stack ready for sessions, the SDK client's script in its project, and
/// a policy that allows everything but MCP's `get-env` and an `echo` of a
/// forbidden word.
fn stack_and_client() -> (Stack, std::path::PathBuf, std::path::PathBuf) {
    let mut stack = Stack::new();
    stack.start_leashd_for_sessions();
    stack.wait_healthy(Duration::from_secs(10));
    let client = stack.project().join("mcp-client.cjs");
    std::fs::write(&client, CLIENT).unwrap();
    let policy = stack.root().join("policy.cedar");
    std::fs::write(
        &policy,
        "@id(\"all\") permit (principal, action in [Action::\"FileOpen\", Action::\"FileOpenReadOnly\", Action::\"FileOpenReadWrite\", Action::\"ProcessExec\", Action::\"NetworkConnect\"], resource);\n\
         @id(\"mcp\") permit (principal, action == Action::\"McpCall\", resource);\n\
         @id(\"no-env\") forbid (principal, action == Action::\"McpCall\", resource == MCP::Tool::\"get-env\");\n\
         @id(\"no-forbidden-words\") forbid (principal, action == Action::\"McpCall\", resource == MCP::Tool::\"echo\") \
         when { context has arguments && context.arguments like \"*forbidden*\" };\n",
    )
    .unwrap();
    (stack, client, policy)
}

#[test]
fn mcp_tools_are_governed_over_streamable_http_and_sse() {
    if !require_docker("mcp_tools_are_governed_over_streamable_http_and_sse")
        || !leash_testkit::require_image("mcp_tools_are_governed_over_streamable_http_and_sse", IMAGE)
    {
        return;
    }
    let (http, sse) = (Server::start("streamableHttp"), Server::start("sse"));
    let (stack, client, policy) = stack_and_client();
    let mut session = sleeping_session(&stack, &policy);
    let (_, container) = stack.running_session(Duration::from_secs(20));
    let script = format!(
        "echo '{} mcp.test' >> /etc/hosts; echo '{} sse.test' >> /etc/hosts; \
         node {c} http http://mcp.test/mcp; node {c} sse http://sse.test/sse",
        http.ip,
        sse.ip,
        c = client.display()
    );
    let out = std::process::Command::new("docker").args(["exec", &container, "sh", "-c", &script]).output().unwrap();
    let said = text(&out.stdout);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 8, "{said}{}", text(&out.stderr));
    for (server, part) in [("mcp.test", &lines[..4]), ("sse.test", &lines[4..])] {
        // The listing hides the forbidden tool; the permitted one runs; the
        // forbidden one gets the JSON-RPC error naming server, tool and policy.
        assert!(part[0].starts_with("tools echo,") && !part[0].contains("get-env"), "{said}");
        assert_eq!(part[1], "call echo [{\"type\":\"text\",\"text\":\"Echo: hi leash\"}]", "{said}");
        assert_eq!(
            part[2],
            format!(
                "refused get-env -32000 MCP error -32000: leash: tool get-env on MCP server {server} denied by policy no-env"
            ),
            "{said}"
        );
        // A condition on the call's arguments (Cedar context).
        assert!(part[3].starts_with("refused echo -32000") && part[3].contains("no-forbidden-words"), "{said}");
    }

    let events = stack.events();
    let mcp: Vec<&serde_json::Value> = events.iter().filter(|e| e["kind"] == "mcp").collect();
    for (server, transport) in [("mcp.test", "streamable-http"), ("sse.test", "sse")] {
        let call = |tool: &str| {
            mcp.iter().find(|e| e["action"] == "McpCall" && e["resource"] == format!("{tool}@{server}")).copied()
        };
        let echo = call("echo").unwrap_or_else(|| panic!("{server}: {mcp:?}"));
        assert_eq!((echo["decision"].as_str(), echo["policy_ids"][0].as_str()), (Some("allow"), Some("mcp")), "{echo}");
        assert_eq!(
            (echo["details"]["transport"].as_str(), echo["details"]["arguments"].as_str()),
            (Some(transport), Some("message")),
            "{echo}"
        );
        let env = call("get-env").unwrap();
        assert_eq!((env["decision"].as_str(), env["policy_ids"][0].as_str()), (Some("deny"), Some("no-env")), "{env}");
        assert!(
            mcp.iter().any(|e| e["resource"] == server && e["details"]["hidden"] == "get-env"),
            "{server}: the listing's filtering is an event"
        );
        assert!(mcp.iter().any(|e| e["resource"] == server && e["action"] == "mcp.initialize"), "{server}");
    }

    let _ = session.kill();
    let _ = session.wait();
    let _ = std::process::Command::new("docker").args(["rm", "-f", &container]).output();
}

#[test]
fn a_refused_tool_call_waits_for_the_users_answer_when_the_session_asks() {
    if !require_docker("a_refused_tool_call_waits_for_the_users_answer")
        || !leash_testkit::require_image("a_refused_tool_call_waits_for_the_users_answer", IMAGE)
    {
        return;
    }
    let http = Server::start("streamableHttp");
    let (stack, client, policy) = stack_and_client();
    let (mut session, id, container) = stack.asking_session(IMAGE, &policy, 20);
    let script =
        format!("echo '{} mcp.test' >> /etc/hosts; node {} http http://mcp.test/mcp", http.ip, client.display());
    let agent = std::thread::spawn(move || {
        std::process::Command::new("docker").args(["exec", &container, "sh", "-c", &script]).output().unwrap()
    });
    // Answer as the user would, through the authenticated API: get-env once,
    // the forbidden echo no. A forbid of the user's own policy is offered
    // "once" and "deny" only (a permit would not overrule it).
    let mut answered = Vec::new();
    while answered.len() < 2 {
        for a in stack.open_asks() {
            let resource = a["resource"].as_str().unwrap_or_default().to_owned();
            assert_eq!(a["choices"], serde_json::json!(["once", "deny"]), "{a}");
            let choice = if resource.starts_with("get-env@") { "once" } else { "deny" };
            assert_eq!(stack.answer_ask(&id, a["id"].as_str().unwrap(), choice), 200);
            answered.push(resource);
        }
        assert!(
            !agent.is_finished() || answered.len() == 2,
            "the client ended before it was asked twice: {answered:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = agent.join().unwrap();
    let said = text(&out.stdout);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 4, "{said}{}", text(&out.stderr));
    assert_eq!(lines[1], "call echo [{\"type\":\"text\",\"text\":\"Echo: hi leash\"}]", "{said}");
    assert!(lines[2].starts_with("call get-env "), "allowed once, it reached the server: {said}");
    assert!(lines[3].starts_with("refused echo -32000") && lines[3].contains("no-forbidden-words"), "{said}");
    let events = stack.events();
    let call = |tool: &str, answer: &str| {
        events.iter().any(|e| {
            e["action"] == "McpCall"
                && e["resource"] == format!("{tool}@mcp.test")
                && e["details"]["ask"] == answer
                && e["decision"] == if answer == "once" { "allow" } else { "deny" }
        })
    };
    assert!(call("get-env", "once") && call("echo", "deny"), "{events:?}");
    let _ = session.kill();
    let _ = session.wait();
    stack.leashctl(&["sessions", "stop", &id]);
}

#[test]
fn stdio_servers_of_the_projects_mcp_json_are_relayed_and_governed() {
    let name = "stdio_servers_of_the_projects_mcp_json_are_relayed_and_governed";
    if !require_docker(name)
        || !leash_testkit::require_image(name, IMAGE)
        || !leash_testkit::require_image(name, AGENTS_IMAGE)
    {
        return;
    }
    let (stack, client, policy) = stack_and_client();
    let project = stack.project();
    // The configuration as the agents' own tools write it (claude's project
    // servers; codex's, with CODEX_HOME in the project), in the agents
    // image, as a user would on the host. The server records what reaches it.
    let script = "claude mcp add --scope project everything -- sh -c 'tee -a /tmp/server-in.log | mcp-server-everything stdio' \
                  && claude mcp add --scope project --transport http remote http://mcp.test/mcp \
                  && mkdir -p .codex && CODEX_HOME=$PWD/.codex codex mcp add everything -- mcp-server-everything stdio";
    let out = std::process::Command::new("docker")
        .args(["run", "--rm", "-e", "HOME=/tmp", "-v", &format!("{0}:{0}", project.display()), "-w"])
        .arg(&project)
        .args([AGENTS_IMAGE, "sh", "-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let mcp_json = std::fs::read_to_string(project.join(".mcp.json")).unwrap();
    let codex_toml = std::fs::read_to_string(project.join(".codex/config.toml")).unwrap();
    let mut session = sleeping_session(&stack, &policy);
    let (id, container) = stack.running_session(Duration::from_secs(20));
    let exec = |script: &str| exec_in(&container, &project, script);

    // The container sees the stdio server wrapped in the relay; the host's file is as it was.
    let (seen, _) = exec("cat .mcp.json");
    let v: serde_json::Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(v["mcpServers"]["everything"]["command"], "/leash/leash-entry", "{seen}");
    assert_eq!(v["mcpServers"]["everything"]["args"][0], "mcp-relay", "{seen}");
    assert_eq!(v["mcpServers"]["remote"]["url"], "http://mcp.test/mcp", "HTTP servers are left alone: {seen}");
    assert_eq!(std::fs::read_to_string(project.join(".mcp.json")).unwrap(), mcp_json);
    let (seen, _) = exec("cat .codex/config.toml");
    assert!(seen.contains("command = \"/leash/leash-entry\""), "{seen}");
    assert!(
        seen.contains("\"mcp-relay\", \"--server\", \"everything\", \"--\", \"mcp-server-everything\", \"stdio\""),
        "{seen}"
    );
    assert_eq!(std::fs::read_to_string(project.join(".codex/config.toml")).unwrap(), codex_toml);
    let (_, err) = exec("echo x > .mcp.json");
    assert!(err.contains("Read-only"), "the agent cannot write another: {err}");
    let listed: serde_json::Value = serde_json::from_slice(&stack.leashctl(&["sessions", "--json"]).stdout).unwrap();
    assert_eq!(
        listed[0]["mcp_servers"],
        serde_json::json!([".mcp.json: everything", ".codex/config.toml: everything"])
    );

    // The real SDK client starts the server as the file says: the listing
    // hides the forbidden tool, the permitted call runs, the forbidden ones
    // get JSON-RPC errors and never reach the server.
    let (said, err) = exec(&format!("node {} stdio everything", client.display()));
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 4, "{said}{err}");
    assert!(lines[0].starts_with("tools echo,") && !lines[0].contains("get-env"), "{said}");
    assert_eq!(lines[1], "call echo [{\"type\":\"text\",\"text\":\"Echo: hi leash\"}]", "{said}");
    assert_eq!(
        lines[2],
        "refused get-env -32000 MCP error -32000: leash: tool get-env on MCP server everything denied by policy no-env",
        "{said}"
    );
    assert!(lines[3].starts_with("refused echo -32000") && lines[3].contains("no-forbidden-words"), "{said}");
    let (reached, _) = exec("cat /tmp/server-in.log");
    assert!(reached.contains("\"tools/list\"") && reached.contains("hi leash"), "{reached}");
    assert!(
        !reached.contains("get-env") && !reached.contains("forbidden"),
        "refused calls reached the server: {reached}"
    );

    // Bad input: a call before initialize is decided all the same, what is
    // not JSON-RPC is dropped (enforce mode), and the relay exits with the
    // server's code.
    let (said, err) = exec(
        "printf '%s\\n' '{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"get-env\",\"arguments\":{}}}' \
         'not json' '{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}' \
         | /leash/leash-entry mcp-relay --server raw -- sh -c 'cat > /tmp/raw-in.log; exit 7'; echo \"rc=$?\"; cat /tmp/raw-in.log",
    );
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 3, "{said}{err}");
    let refusal: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!((refusal["id"].as_i64(), refusal["error"]["code"].as_i64()), (Some(1), Some(-32000)), "{said}");
    assert_eq!(lines[1], "rc=7", "{said}");
    assert_eq!(
        lines[2], "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}",
        "only the ping reached the server: {said}"
    );

    let events = stack.events();
    let stdio: Vec<&serde_json::Value> = events.iter().filter(|e| e["details"]["transport"] == "stdio").collect();
    let find = |action: &str, resource: &str| stdio.iter().find(|e| e["action"] == action && e["resource"] == resource);
    let refused = find("McpCall", "get-env@everything").unwrap_or_else(|| panic!("{stdio:?}"));
    assert_eq!((refused["decision"].as_str(), refused["policy_ids"][0].as_str()), (Some("deny"), Some("no-env")));
    assert_eq!(find("McpCall", "echo@everything").map(|e| e["decision"].clone()), Some("allow".into()));
    assert!(stdio.iter().any(|e| e["resource"] == "everything" && e["details"]["hidden"] == "get-env"), "{stdio:?}");
    let unparsed = find("mcp.unparsed", "raw").unwrap_or_else(|| panic!("{stdio:?}"));
    assert_eq!(unparsed["decision"], "deny", "{unparsed}");
    let _ = session.kill();
    let _ = session.wait();
    stack.leashctl(&["sessions", "stop", &id]);
}

#[test]
fn claudes_global_configuration_is_a_relayed_copy_the_agent_cannot_plant_servers_through() {
    let name = "claudes_global_configuration_is_a_relayed_copy_the_agent_cannot_plant_servers_through";
    if !require_docker(name) || !leash_testkit::require_image(name, IMAGE) {
        return;
    }
    let (stack, client, policy) = stack_and_client();
    let project = stack.project();
    // claude's settings as `claude mcp add -s user` leaves them, in a
    // CLAUDE_CONFIG_DIR (whose `.claude.json` is the global one), with a
    // plugin installed; the settings are mounted (`[volumes] claude`).
    let config_dir = stack.root().join("claude-config");
    std::fs::create_dir_all(config_dir.join("plugins")).unwrap();
    std::fs::write(config_dir.join("plugins/installed_plugins.json"), "{}\n").unwrap();
    let global = config_dir.join(".claude.json");
    let users = serde_json::json!({
        "numStartups": 1,
        "mcpServers": {"everything": {"type": "stdio", "command": "sh",
            "args": ["-c", "tee -a /tmp/server-in.log | mcp-server-everything stdio"], "env": {}}},
        "projects": {project.to_str().unwrap(): {"allowedTools": []}}
    });
    std::fs::write(&global, serde_json::to_string_pretty(&users).unwrap()).unwrap();
    let home = stack.user_config("[volumes]\nclaude = true\n");
    // The agent is claude by its name.
    let agent = project.join("claude");
    std::fs::write(&agent, "#!/bin/sh\nexec \"$@\"\n").unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let leash = |args: &[&str]| {
        let mut c =
            stack.leash(&[&["--image", IMAGE, "--policy", policy.to_str().unwrap(), "--", "./claude"], args].concat());
        c.env("LEASH_HOME", &home).env("CLAUDE_CONFIG_DIR", &config_dir);
        c
    };
    let mut session = leash(&["sleep", "300"]).stdout(std::process::Stdio::null()).spawn().unwrap();
    let (id, container) = stack.running_session(Duration::from_secs(20));
    let exec = |script: &str| exec_in(&container, &project, script);

    // The container's claude reads a copy whose stdio servers are relayed.
    let (seen, err) = exec("cat $HOME/.claude.json");
    let v: serde_json::Value = serde_json::from_str(&seen).unwrap_or_else(|e| panic!("{e}: {seen}{err}"));
    assert_eq!(v["mcpServers"]["everything"]["command"], "/leash/leash-entry", "{seen}");
    assert_eq!(v["mcpServers"]["everything"]["args"][0], "mcp-relay", "{seen}");
    let listed: serde_json::Value = serde_json::from_slice(&stack.leashctl(&["sessions", "--json"]).stdout).unwrap();
    assert_eq!(listed[0]["mcp_servers"], serde_json::json!(["~/.claude.json: everything"]));
    // The user sees what the container sees.
    let shown = stack.leashctl(&["sessions", "show", "--mcp", &id[..8]]);
    let shown = text(&shown.stdout);
    assert!(shown.contains("MCP servers:  ~/.claude.json: everything\n"), "{shown}");
    assert!(shown.contains("\n# ~/.claude.json, as the container sees it at /root/.claude.json\n{"), "{shown}");
    assert!(shown.contains("\"mcp-relay\""), "{shown}");
    let (said, err) = exec(&format!("MCP_CONFIG=$HOME/.claude.json node {} stdio everything", client.display()));
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 4, "{said}{err}");
    assert_eq!(lines[1], "call echo [{\"type\":\"text\",\"text\":\"Echo: hi leash\"}]", "{said}");
    assert!(lines[2].starts_with("refused get-env -32000") && lines[2].contains("no-env"), "{said}");
    let (reached, _) = exec("cat /tmp/server-in.log");
    assert!(reached.contains("hi leash") && !reached.contains("get-env"), "{reached}");

    // The attacks: a server written into claude's global configuration
    // (which host claude would start), into the config dir's own copy of
    // it, and a plugin's hooks. The first lands in the session's copy
    // only; the others are refused.
    // What the agent wrote in its copy reaches the user's terminal escaped.
    exec("printf '\\033]0;pwned\\007' >> $HOME/.claude.json");
    let shown = text(&stack.leashctl(&["sessions", "show", "--mcp", &id]).stdout);
    assert!(shown.contains("\\u{1b}]0;pwned\\u{7}") && !shown.contains('\x1b'), "{shown:?}");
    let planted = serde_json::json!({
        "numStartups": 42,
        "mcpServers": {"evil": {"type": "stdio", "command": "sh", "args": ["-c", "touch /tmp/pwned"]}},
        "projects": {project.to_str().unwrap(): {"mcpServers": {"evil2": {"command": "sh"}}, "hasTrustDialogAccepted": true}}
    });
    let (said, err) = exec(&format!(
        "echo '{planted}' > $HOME/.claude.json; echo global=$?; \
         echo '{planted}' > $HOME/.claude/.claude.json; echo nested=$?; \
         mkdir -p $HOME/.claude/plugins/evil; echo plugin=$?; \
         echo '{{}}' > $HOME/.claude/plugins/installed_plugins.json; echo installed=$?"
    ));
    let status = |what: &str| said.lines().find_map(|l| l.strip_prefix(&format!("{what}="))).unwrap_or("missing");
    assert_eq!(status("global"), "0", "{said}{err}");
    for refused in ["nested", "plugin", "installed"] {
        assert!(!["0", "missing"].contains(&status(refused)), "{refused}: {said}{err}");
    }
    assert_eq!(std::fs::read_to_string(&global).unwrap(), serde_json::to_string_pretty(&users).unwrap());
    assert_eq!(std::fs::read_to_string(config_dir.join("plugins/installed_plugins.json")).unwrap(), "{}\n");
    let _ = session.kill();
    let _ = session.wait();
    stack.leashctl(&["sessions", "stop", &id]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline
        && serde_json::from_slice::<serde_json::Value>(&stack.leashctl(&["sessions", "--json"]).stdout)
            .is_ok_and(|l| l.as_array().is_some_and(|a| !a.is_empty()))
    {
        std::thread::sleep(Duration::from_millis(200));
    }

    // The next session keeps what the last one left, but its servers are
    // the user's only: the planted ones stayed in the container.
    let out = leash(&["cat", "/root/.claude.json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(v["numStartups"], 42, "{v}");
    assert_eq!(v["projects"][project.to_str().unwrap()]["hasTrustDialogAccepted"], true, "{v}");
    let servers: Vec<&String> = v["mcpServers"].as_object().unwrap().keys().collect();
    assert_eq!(servers, ["everything"], "{v}");
    assert!(v["projects"][project.to_str().unwrap()].get("mcpServers").is_none(), "{v}");
    assert_eq!(v["mcpServers"]["everything"]["args"][0], "mcp-relay", "wrapped once: {v}");
    assert_eq!(v["mcpServers"]["everything"]["args"][4], "sh", "wrapped once: {v}");
    assert_eq!(std::fs::read_to_string(&global).unwrap(), serde_json::to_string_pretty(&users).unwrap());

    // The real claude reads its copy, starts the server through the relay
    // and reaches it.
    if leash_testkit::require_image(name, AGENTS_IMAGE) {
        let mut c = stack.leash(&[
            "--image",
            AGENTS_IMAGE,
            "--policy",
            policy.to_str().unwrap(),
            "--",
            "claude",
            "mcp",
            "list",
        ]);
        let out = c.env("LEASH_HOME", &home).env("CLAUDE_CONFIG_DIR", &config_dir).output().unwrap();
        let said = text(&out.stdout);
        assert!(
            said.lines().any(|l| l.starts_with("everything: /leash/leash-entry mcp-relay") && l.contains("Connected")),
            "{said}{}",
            text(&out.stderr)
        );
        let events = stack.events();
        assert!(
            events.iter().any(|e| e["details"]["transport"] == "stdio"
                && e["resource"] == "everything"
                && e["details"]["method"] == "initialize"),
            "{events:?}"
        );
    }
}

#[test]
fn a_kept_tool_decision_gives_way_to_the_next_policy() {
    let name = "a_kept_tool_decision_gives_way_to_the_next_policy";
    if !require_docker(name) || !leash_testkit::require_image(name, IMAGE) {
        return;
    }
    let mut stack = Stack::new();
    stack.start_leashd_for_sessions();
    stack.wait_healthy(Duration::from_secs(10));
    let project = stack.project();
    // A policy that reads no context: a tool's decision is kept.
    let policy = stack.root().join("tools.cedar");
    let allow_all = "@id(\"all\") permit (principal, action, resource);\n";
    std::fs::write(&policy, allow_all).unwrap();
    let mut session = sleeping_session(&stack, &policy);
    let (id, container) = stack.running_session(Duration::from_secs(20));
    let call = |n: u32| {
        let line = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{n},\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"message\":\"m{n}\"}}}}}}"
        );
        let (said, _) = exec_in(
            &container,
            &project,
            &format!("printf '%s\\n' '{line}' | /leash/leash-entry mcp-relay --server s -- cat"),
        );
        said
    };
    // Allowed, again and again (the later ones from the kept answer): the
    // server (cat) gets each and says it back.
    for n in 1..=3 {
        assert!(call(n).contains(&format!("\"m{n}\"")), "call {n} did not reach the server");
    }
    // The policy changes: the next call is decided by it, not by what was kept.
    std::fs::write(&policy, format!("{allow_all}@id(\"no-echo\") forbid (principal, action == Action::\"McpCall\", resource == MCP::Tool::\"echo\");\n")).unwrap();
    let refused = eventually(Duration::from_secs(15), "the call refused by the new policy", || {
        let said = call(9);
        said.contains("\"error\"").then_some(said)
    });
    assert!(refused.contains("no-echo") && !refused.contains("\"m9\""), "{refused}");
    let _ = session.kill();
    let _ = session.wait();
    stack.leashctl(&["sessions", "stop", &id]);
}
