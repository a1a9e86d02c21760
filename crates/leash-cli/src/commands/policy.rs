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
            "mode": r.mode, "would_deny": r.would_deny,
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

/// Replaces a running session's policy with files (read with the caller's
/// rights); an invalid policy is refused and the previous one stays.
pub async fn set(ctx: &Ctx, session: &str, files: &[String]) -> anyhow::Result<ExitCode> {
    let sources = read_sources(files)?;
    let conn = crate::daemon::connect_manager(&ctx.layout, "leashctl").await?;
    let r = ManagerClient::new(conn.channel)
        .policy_set(pb::OpenSessionRequest {
            session: session.to_owned(),
            principal: String::new(),
            sources,
            admin: Vec::new(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    for e in &r.errors {
        output::text(&render_error(e));
    }
    if r.valid {
        output::line(&format!(
            "session {session}: {} polic{} in force",
            r.policies,
            if r.policies == 1 { "y" } else { "ies" }
        ));
        Ok(ExitCode::SUCCESS)
    } else {
        output::line("refused: the previous policy stays in force");
        Ok(ExitCode::from(crate::EXIT_FAILURE))
    }
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
