//! `leashctl policy validate FILE…` and `leashctl policy check ACTION RESOURCE`.

use std::process::ExitCode;

use anyhow::Context as _;
use leash_proto::v1 as pb;
use leash_proto::v1::manager_client::ManagerClient;

use super::Ctx;
use crate::output;

/// Validates files (read with the caller's rights); exits 1 when invalid.
pub async fn validate(ctx: &Ctx, files: &[String]) -> anyhow::Result<ExitCode> {
    let sources = read_sources(files)?;
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let r = ManagerClient::new(conn.channel)
        .max_decoding_message_size(leash_daemon::serve::MAX_MESSAGE_BYTES)
        .policy_validate(pb::ValidateRequest { sources })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    if ctx.json {
        output::json(&serde_json::json!({
            "valid": r.valid,
            "policies": r.policies,
            "errors": r.errors.iter().map(|e| serde_json::json!({
                "file": e.file, "line": e.line, "column": e.column, "snippet": e.snippet,
                "message": e.message, "suggestion": e.suggestion,
            })).collect::<Vec<_>>(),
            "lints": r.lints.iter().map(|l| serde_json::json!({
                "code": l.code, "severity": l.severity, "policy": l.policy, "location": l.location, "message": l.message,
            })).collect::<Vec<_>>(),
        }));
    } else {
        for e in &r.errors {
            output::text(&render_error(e));
        }
        for l in &r.lints {
            output::line(&format!("{}: {} [{}] {}: {}", l.location, l.severity, l.code, l.policy, l.message));
        }
        if r.valid {
            output::line(&format!("valid: {} polic{}", r.policies, if r.policies == 1 { "y" } else { "ies" }));
        }
    }
    Ok(if r.valid { ExitCode::SUCCESS } else { ExitCode::from(crate::EXIT_FAILURE) })
}

/// The Go leash's error rendering: file, line, snippet with a caret, hint.
pub fn render_error(e: &pb::PolicyError) -> String {
    let mut s = format!("error: invalid Cedar policy\nfile: {}:{}:{}\n", e.file, e.line, e.column);
    if !e.snippet.is_empty() {
        let n = e.line.to_string();
        s.push_str(&format!(
            "{n} | {}\n{} | {}^ {}\n",
            e.snippet,
            " ".repeat(n.len()),
            " ".repeat(e.column.saturating_sub(1) as usize),
            e.message
        ));
    } else {
        s.push_str(&format!("{}\n", e.message));
    }
    if !e.suggestion.is_empty() {
        s.push_str(&format!("hint: {}\n", e.suggestion));
    }
    s
}

/// Decides one request against a session's policy, or the default.
pub async fn check(
    ctx: &Ctx,
    session: Option<&str>,
    principal: &str,
    action: &str,
    resource: &str,
    context: &[String],
) -> anyhow::Result<ExitCode> {
    let mut ctx_map = std::collections::HashMap::new();
    for kv in context {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("--context {kv:?}: expected KEY=VALUE"))?;
        ctx_map.insert(k.to_owned(), v.to_owned());
    }
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let req = pb::CheckRequest {
        principal: principal.to_owned(),
        action: action.to_owned(),
        resource: resource.to_owned(),
        context: ctx_map,
        session: session.unwrap_or_default().to_owned(),
    };
    let r = ManagerClient::new(conn.channel)
        .policy_check(req)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    if ctx.json {
        output::json(&serde_json::json!({
            "decision": if r.allow { "allow" } else { "deny" },
            "policies": r.reasons, "errors": r.errors, "resource": r.resource, "tables": r.tables,
            "mode": r.mode, "would_deny": r.would_deny, "action": r.action, "context": r.context,
            "generation": r.generation,
        }));
    } else {
        let why = match (r.mode.as_str(), r.would_deny) {
            ("record", _) => " (record mode: not evaluated)".to_owned(),
            ("shadow", true) => format!(
                " (shadow mode: would deny by {})",
                if r.reasons.is_empty() { "default".to_owned() } else { r.reasons.join(", ") }
            ),
            _ if r.reasons.is_empty() => {
                if r.allow {
                    String::new()
                } else {
                    " (no policy permits it)".to_owned()
                }
            }
            _ => format!(" by {}", r.reasons.join(", ")),
        };
        output::line(&format!("{} {action} {}{why}", if r.allow { "allow" } else { "deny" }, r.resource));
        if r.action == "NetworkConnect" && r.tables == "evaluate" {
            output::line(
                "  decided per request: a policy reads the request (method, path, query, scheme) or the name, so leash-proxy asks leash-policy for each HTTP request to it",
            );
        }
        for e in &r.errors {
            output::line(&format!("  error: {e}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Switches a session's mode.
pub async fn mode(ctx: &Ctx, session: &str, mode: &str) -> anyhow::Result<ExitCode> {
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let r = ManagerClient::new(conn.channel)
        .policy_set_mode(pb::SetModeRequest { session: session.to_owned(), mode: mode.to_owned() })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    if ctx.json {
        output::json(&serde_json::json!({ "session": r.session, "mode": r.mode, "previous": r.previous }));
    } else {
        output::line(&format!("session {}: {} -> {}", r.session, r.previous, r.mode));
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows a session's policy (or the default): mode, one line per policy,
/// lints; with `sources`, the Cedar text too.
pub async fn show(ctx: &Ctx, session: Option<&str>, sources: bool, lines_only: bool) -> anyhow::Result<ExitCode> {
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let r = ManagerClient::new(conn.channel)
        .max_decoding_message_size(leash_daemon::serve::MAX_MESSAGE_BYTES)
        .policy_show(pb::ShowRequest { session: session.unwrap_or_default().to_owned() })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    if ctx.json {
        output::json(&serde_json::json!({
            "mode": r.mode,
            "lines": r.lines,
            "sources": r.sources.iter().map(|s| serde_json::json!({"name": s.name, "text": s.text})).collect::<Vec<_>>(),
            "lints": r.lints.iter().map(|l| serde_json::json!({"code": l.code, "severity": l.severity, "policy": l.policy, "location": l.location, "message": l.message})).collect::<Vec<_>>(),
        }));
        return Ok(ExitCode::SUCCESS);
    }
    if !lines_only {
        output::line(&format!("mode: {}", r.mode));
    }
    for l in &r.lines {
        output::line(l);
    }
    if lines_only {
        return Ok(ExitCode::SUCCESS);
    }
    for l in &r.lints {
        output::line(&format!("{}: {} [{}] {}: {}", l.location, l.severity, l.code, l.policy, l.message));
    }
    if sources {
        for s in &r.sources {
            output::line(&format!("\n// {}\n{}", s.name, s.text.trim_end()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Replaces a layer of a running session's policy (or the default's) with
/// files read with the caller's rights; an invalid policy is refused and the
/// previous one stays.
pub async fn set(ctx: &Ctx, session: Option<&str>, files: &[String], runtime: bool) -> anyhow::Result<ExitCode> {
    let sources = read_sources(files)?;
    // One file is the policy file: leash-policy watches it (unless it lies
    // under a session's writable mount).
    let watch_path = match (runtime, files) {
        (false, [one]) => std::path::absolute(one).map(|p| p.display().to_string()).unwrap_or_default(),
        _ => String::new(),
    };
    let layer = if runtime { pb::Layer::Runtime } else { pb::Layer::File };
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let r = ManagerClient::new(conn.channel)
        .policy_set(pb::SetLayerRequest {
            session: session.unwrap_or_default().to_owned(),
            layer: layer as i32,
            sources,
            watch_path,
            owner: 0,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    report_edit(ctx, &r)
}

/// Adds or removes statements of the runtime layer.
pub async fn edit(ctx: &Ctx, session: Option<&str>, add: &[String], remove: &[String]) -> anyhow::Result<ExitCode> {
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let r = ManagerClient::new(conn.channel)
        .policy_edit(pb::EditRequest {
            session: session.unwrap_or_default().to_owned(),
            add: add.to_vec(),
            remove: remove.to_vec(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    report_edit(ctx, &r)
}

fn whose(session: &str) -> String {
    if session.is_empty() { "default policy (new sessions)".to_owned() } else { format!("session {session}") }
}

fn edit_json(r: &pb::EditResponse) -> serde_json::Value {
    serde_json::json!({
        "valid": r.valid,
        "session": r.session,
        "generation": r.generation,
        "policies": r.policies,
        "added": r.added,
        "removed": r.removed,
        "errors": r.errors.iter().map(|e| serde_json::json!({
            "file": e.file, "line": e.line, "column": e.column, "snippet": e.snippet,
            "message": e.message, "suggestion": e.suggestion,
        })).collect::<Vec<_>>(),
    })
}

/// Prints a change's outcome; exits 1 when it was refused.
fn report_edit(ctx: &Ctx, r: &pb::EditResponse) -> anyhow::Result<ExitCode> {
    if ctx.json {
        output::json(&edit_json(r));
    } else {
        for e in &r.errors {
            output::text(&render_error(e));
        }
        if r.valid {
            let mut line = format!(
                "{}: {} polic{} in force, generation {}",
                whose(&r.session),
                r.policies,
                if r.policies == 1 { "y" } else { "ies" },
                r.generation
            );
            if r.added + r.removed > 0 {
                line.push_str(&format!(" ({} added, {} removed)", r.added, r.removed));
            }
            output::line(&line);
        } else {
            output::line("refused: the previous policy stays in force");
        }
    }
    Ok(if r.valid { ExitCode::SUCCESS } else { ExitCode::from(crate::EXIT_FAILURE) })
}

/// Folds the runtime layer into the file layer; with `write_back`, writes
/// the policy file (as the caller, atomically).
pub async fn persist(ctx: &Ctx, session: Option<&str>, write_back: bool) -> anyhow::Result<ExitCode> {
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let r = ManagerClient::new(conn.channel)
        .max_decoding_message_size(leash_daemon::serve::MAX_MESSAGE_BYTES)
        .policy_persist(pb::PersistRequest { session: session.unwrap_or_default().to_owned(), text: String::new() })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let result = r.result.clone().unwrap_or_default();
    if !result.valid {
        return report_edit(ctx, &result);
    }
    let mut written = None;
    if write_back {
        if r.path.is_empty() {
            anyhow::bail!(
                "persisted to {}, but the policy has no file to write back to (it did not come from one)",
                r.saved
            );
        }
        let path = std::path::Path::new(&r.path);
        let tmp = path.with_extension("cedar.leash-tmp");
        std::fs::write(&tmp, &r.text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("persisted to {}, but cannot write {}", r.saved, r.path))?;
        written = Some(r.path.clone());
    }
    if ctx.json {
        let mut v = edit_json(&result);
        v["saved"] = r.saved.clone().into();
        v["path"] = r.path.clone().into();
        v["written_back"] = written.is_some().into();
        output::json(&v);
    } else {
        output::line(&format!(
            "{}: persisted to {}, generation {}",
            whose(&result.session),
            r.saved,
            result.generation
        ));
        if let Some(p) = written {
            output::line(&format!("written back to {p}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the compiled decision tables.
pub async fn tables(ctx: &Ctx, session: Option<&str>) -> anyhow::Result<ExitCode> {
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let t = ManagerClient::new(conn.channel)
        .max_decoding_message_size(leash_daemon::serve::MAX_MESSAGE_BYTES)
        .policy_tables(pb::TablesRequest { session: session.unwrap_or_default().to_owned(), principal: String::new() })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let tables = leash_proto::tables::from_proto(&t).map_err(|e| anyhow::anyhow!("malformed tables: {e}"))?;
    let verdict = |v: &leash_core::tables::Verdict| {
        format!("{} [{}]", if v.allow { "allow" } else { "deny" }, tables.reasons(*v).join(", "))
    };
    // What a policy that reads the request limits itself to: decided per request.
    let evaluated: Vec<String> = tables
        .hosts
        .evaluate
        .iter()
        .map(|(n, p)| match p {
            None => n.clone(),
            Some(0) => format!("{n} (no port)"),
            Some(p) => format!("{n}:{p}"),
        })
        .chain(tables.hosts.evaluate_below.iter().map(|s| format!("*.{s}")))
        .collect();
    if ctx.json {
        let entries = |m: &std::collections::BTreeMap<String, leash_core::tables::Verdict>| {
            m.iter()
                .map(|(k, v)| serde_json::json!({"key": k, "allow": v.allow, "reasons": tables.reasons(*v)}))
                .collect::<Vec<_>>()
        };
        output::json(&serde_json::json!({
            "generation": tables.generation,
            "mode": t.mode,
            "files": tables.files.iter().map(|(a, p)| serde_json::json!({
                "action": leash_proto::tables::action_name(*a),
                "exact": entries(&p.exact),
                "prefixes": entries(&p.prefixes),
                "evaluate": p.path_patterns.iter().chain(p.names.iter()).collect::<Vec<_>>(),
                "evaluate_all": p.evaluate_all,
            })).collect::<Vec<_>>(),
            "hosts": {
                "exact": entries(&tables.hosts.exact),
                "wildcards": entries(&tables.hosts.wildcards),
                "evaluate": evaluated,
                "evaluate_all": tables.hosts.evaluate_all,
            },
            "net": {
                "evaluate_all": tables.net.evaluate_all,
                "evaluate_requests": tables.net.evaluate_requests,
            },
            "rewrites": tables.rewrites.iter().map(|r| serde_json::json!({
                "host": r.host, "header": r.header, "reasons": tables.reasons.get(r.reason as usize),
            })).collect::<Vec<_>>(),
            "reasons": tables.reasons,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    output::line(&format!("generation {}, mode {}", tables.generation, t.mode));
    for (a, p) in &tables.files {
        output::line(&format!("{}:", leash_proto::tables::action_name(*a)));
        for (k, v) in p.prefixes.iter().chain(p.exact.iter()) {
            output::line(&format!("  {k:<40} {}", verdict(v)));
        }
        for k in p.path_patterns.iter().chain(p.names.iter()) {
            output::line(&format!("  {k:<40} evaluate"));
        }
        if p.evaluate_all {
            output::line("  (every lookup evaluates: a condition the tables cannot carve)");
        }
    }
    output::line("connect by name:");
    for (k, v) in &tables.hosts.exact {
        output::line(&format!("  {k:<40} {}", verdict(v)));
    }
    for (k, v) in &tables.hosts.wildcards {
        output::line(&format!("  {:<40} {}", format!("*.{k}"), verdict(v)));
    }
    if let Some(v) = &tables.hosts.default {
        output::line(&format!("  {:<40} {}", "(default)", verdict(v)));
    }
    for k in &evaluated {
        output::line(&format!("  {k:<40} evaluate per request"));
    }
    if tables.hosts.evaluate_all {
        output::line("  (every request evaluates: a policy on any host reads the request or the name)");
    }
    if tables.net.evaluate_requests {
        output::line("connect by address: HTTP requests evaluate (a policy on addresses reads the request)");
    }
    if !tables.rewrites.is_empty() {
        output::line("headers set on HTTPS requests (values never shown):");
        for r in &tables.rewrites {
            let by = tables.reasons.get(r.reason as usize).map(|r| r.join(", ")).unwrap_or_default();
            output::line(&format!("  {:<40} {} [{by}]", r.host, r.header));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads policy files as UTF-8 text.
fn read_sources(files: &[String]) -> anyhow::Result<Vec<pb::PolicySource>> {
    files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).with_context(|| format!("cannot read {f}"))?;
            let text = String::from_utf8(bytes)
                .map_err(|e| anyhow::anyhow!("{f}: not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))?;
            Ok(pb::PolicySource { name: f.clone(), text })
        })
        .collect()
}

/// Replays a recorded session against candidate policy files: what they
/// would have denied (and allowed) differently, and what cannot be
/// replayed exactly. Exits 1 when the candidate denies something the
/// session did.
pub async fn replay(ctx: &Ctx, files: &[String], session: &str) -> anyhow::Result<ExitCode> {
    let sources = read_sources(files)?;
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let r = ManagerClient::new(conn.channel)
        .policy_replay(pb::PolicyReplayRequest { sources, session: session.to_owned(), limit: 0 })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    if !r.valid {
        for e in &r.errors {
            output::text(&render_error(e));
        }
        return Ok(ExitCode::from(crate::EXIT_USAGE));
    }
    let finding = |f: &pb::ReplayFinding| {
        let e = f.event.clone().unwrap_or_default();
        crate::output::EventJson::from_proto(&e)
    };
    if ctx.json {
        let list = |v: &[pb::ReplayFinding]| -> Vec<serde_json::Value> {
            v.iter()
                .map(|f| {
                    serde_json::json!({
                        "event": finding(f), "decision": f.decision, "policies": f.policies, "inexact": f.inexact,
                    })
                })
                .collect()
        };
        output::json(&serde_json::json!({
            "session": r.session, "replayed": r.replayed,
            "denied": list(&r.denied), "allowed": list(&r.allowed), "inexact": list(&r.inexact),
        }));
    } else {
        let mut out = format!(
            "session {}: {} decided requests replayed; the candidate would deny {} that were allowed, allow {} that were denied; {} cannot be replayed exactly\n",
            r.session,
            r.replayed,
            r.denied.len(),
            r.allowed.len(),
            r.inexact.len()
        );
        for (title, v) in [("would deny", &r.denied), ("would allow", &r.allowed), ("inexact", &r.inexact)] {
            for f in v {
                let e = finding(f);
                let why = if f.inexact.is_empty() { f.policies.join(",") } else { f.inexact.clone() };
                out.push_str(&format!("{title:<11} {:<18} {}  ({why})\n", e.action, e.resource));
            }
        }
        output::text(&out);
    }
    Ok(if r.denied.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(crate::EXIT_FAILURE) })
}
