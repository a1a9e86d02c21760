//! The policy service: Cedar policies, decisions and kernel tables.
//!
//! At this stage it loads the embedded default policy and serves its status;
//! loading, authorizing and compiling arrive with their own methods.

pub mod cache;
pub mod compile;
pub mod engine;
pub mod humanize;
pub mod resource;

use leash_core::Component;
use leash_daemon::access::Rule;
use leash_daemon::component::ComponentCore;
use leash_daemon::process::Ctx;
use leash_proto::v1 as pb;
use leash_proto::v1::policy_server::{Policy, PolicyServer};
use leash_proto::v1::{ComponentReport, PolicyStatusRequest, ShutdownRequest, ShutdownResponse};
use tonic::service::RoutesBuilder;
use tonic::{Request, Response, Status};

/// The default policy: everything allowed and recorded.
pub const DEFAULT_POLICY: &str = include_str!("../../../policies/default.cedar");
/// The fragment the default includes: no writes to what runs code later.
pub const PROTECT_HOST: &str = include_str!("../../../policies/protect-host.cedar");

/// The default policy's sources.
pub fn default_sources() -> Vec<engine::Source> {
    vec![
        engine::Source { name: "default".into(), text: DEFAULT_POLICY.into() },
        engine::Source { name: "protect-host".into(), text: PROTECT_HOST.into() },
    ]
}

struct Service {
    core: ComponentCore,
    policies: usize,
    default: std::sync::Arc<engine::Engine>,
    sessions: Sessions,
}

/// The sessions' policies, kept on disk so a restart restores them.
#[derive(Clone, Debug)]
struct Sessions {
    dir: std::path::PathBuf,
    loaded: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, SessionPolicy>>>,
}

#[derive(Debug)]
struct SessionPolicy {
    engine: std::sync::Arc<engine::Engine>,
    mode: leash_core::Mode,
    sources: Vec<engine::Source>,
}

/// The policy's lines for people, in source order.
pub fn lines(e: &engine::Engine) -> Vec<String> {
    let mut v: Vec<(String, String)> = e
        .policies()
        .policies()
        .map(|p| {
            let id = p.id().to_string();
            let origin = e.origin(&id).unwrap_or("").to_owned();
            (origin, humanize::line(&id, &p.to_json().unwrap_or_default()))
        })
        .collect();
    v.sort_by(|a, b| {
        let key = |o: &str| {
            o.rsplit_once(':').map(|(f, l)| (f.to_owned(), l.parse::<usize>().unwrap_or(0))).unwrap_or_default()
        };
        key(&a.0).cmp(&key(&b.0))
    });
    v.into_iter().map(|(_, l)| l).collect()
}

/// A mode's name.
pub fn mode_name(m: leash_core::Mode) -> &'static str {
    match m {
        leash_core::Mode::Record => "record",
        leash_core::Mode::Shadow => "shadow",
        leash_core::Mode::Enforce => "enforce",
    }
}

/// A mode by name.
pub fn parse_mode(s: &str) -> Option<leash_core::Mode> {
    match s {
        "record" => Some(leash_core::Mode::Record),
        "shadow" => Some(leash_core::Mode::Shadow),
        "enforce" => Some(leash_core::Mode::Enforce),
        _ => None,
    }
}

/// Applies a mode to a decision: record allows without evaluating, shadow
/// allows and flags what the policy would deny, enforce is the decision.
pub fn apply_mode(mode: leash_core::Mode, mut r: pb::CheckResponse) -> pb::CheckResponse {
    r.mode = mode_name(mode).to_owned();
    match mode {
        leash_core::Mode::Enforce => {}
        leash_core::Mode::Shadow => {
            r.would_deny = !r.allow;
            r.allow = true;
        }
        leash_core::Mode::Record => {
            r.allow = true;
            r.reasons.clear();
            r.errors.clear();
        }
    }
    r
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, SessionPolicy>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn file(&self, session: &str) -> std::path::PathBuf {
        self.dir.join(format!("{session}.json"))
    }

    /// Restores every session saved by an earlier run.
    fn restore(&self) {
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let Some(session) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
            let saved: Option<serde_json::Value> =
                std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let mode = saved
                .as_ref()
                .and_then(|v| v["mode"].as_str())
                .and_then(parse_mode)
                .unwrap_or(leash_core::Mode::Enforce);
            let sources = saved.as_ref().and_then(|v| v["sources"].as_array()).map(|list| {
                list.iter()
                    .map(|s| engine::Source {
                        name: s["name"].as_str().unwrap_or_default().to_owned(),
                        text: s["text"].as_str().unwrap_or_default().to_owned(),
                    })
                    .collect::<Vec<_>>()
            });
            let s_sources = sources.clone().unwrap_or_default();
            match sources.map(|s| engine::Engine::load(&s)) {
                Some(Ok(e)) => {
                    tracing::info!(session_id = %session, "restored the session's policy");
                    self.lock()
                        .insert(session, SessionPolicy { engine: std::sync::Arc::new(e), mode, sources: s_sources });
                }
                _ => tracing::warn!(path = %path.display(), "cannot restore a session's policy"),
            }
        }
    }

    /// Loads and saves a session's policy; a session starts in enforce.
    fn open(
        &self,
        session: &str,
        sources: Vec<engine::Source>,
    ) -> Result<std::sync::Arc<engine::Engine>, Vec<engine::LoadError>> {
        let engine = std::sync::Arc::new(engine::Engine::load(&sources)?);
        self.save(session, &sources, leash_core::Mode::Enforce);
        let policy = SessionPolicy { engine: engine.clone(), mode: leash_core::Mode::Enforce, sources };
        self.lock().insert(session.to_owned(), policy);
        Ok(engine)
    }

    fn save(&self, session: &str, sources: &[engine::Source], mode: leash_core::Mode) {
        let saved = serde_json::json!({
            "sources": sources.iter().map(|s| serde_json::json!({"name": s.name, "text": s.text})).collect::<Vec<_>>(),
            "mode": mode_name(mode),
        });
        self.write(session, &saved);
    }

    fn write(&self, session: &str, saved: &serde_json::Value) {
        let write = std::fs::create_dir_all(&self.dir).and_then(|()| {
            let tmp = self.file(session).with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(saved).unwrap_or_default())?;
            std::fs::rename(&tmp, self.file(session))
        });
        if let Err(e) = write {
            tracing::warn!(session_id = %session, error = %e, "cannot save the session's policy");
        }
    }

    /// Switches a session's mode and saves it; returns the previous mode.
    fn set_mode(&self, session: &str, mode: leash_core::Mode) -> Option<leash_core::Mode> {
        let previous = {
            let mut loaded = self.lock();
            let s = loaded.get_mut(session)?;
            std::mem::replace(&mut s.mode, mode)
        };
        if let Some(mut saved) =
            std::fs::read(self.file(session)).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        {
            saved["mode"] = serde_json::Value::String(mode_name(mode).to_owned());
            self.write(session, &saved);
        }
        Some(previous)
    }
    fn close(&self, session: &str) {
        self.lock().remove(session);
        let _ = std::fs::remove_file(self.file(session));
    }

    fn sources(&self, session: &str) -> Option<Vec<engine::Source>> {
        self.lock().get(session).map(|s| s.sources.clone())
    }

    fn get(&self, session: &str) -> Option<(std::sync::Arc<engine::Engine>, leash_core::Mode)> {
        self.lock().get(session).map(|s| (s.engine.clone(), s.mode))
    }
}

/// A session id safe as a file name.
fn valid_session_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The wire form of a load error.
fn error_to_proto(e: &engine::LoadError) -> pb::PolicyError {
    pb::PolicyError {
        file: e.file.clone(),
        line: e.line as u32,
        column: e.column as u32,
        snippet: e.snippet.clone(),
        message: e.message.clone(),
        suggestion: e.suggestion.clone(),
    }
}

/// The wire form of a lint.
fn lint_to_proto(l: &engine::Lint) -> pb::PolicyLint {
    pb::PolicyLint {
        code: l.code.to_owned(),
        severity: match l.severity {
            engine::Severity::Warning => "warning".into(),
            engine::Severity::Error => "error".into(),
        },
        policy: l.policy.clone(),
        location: l.location.clone(),
        message: l.message.clone(),
    }
}

/// Validates sources on a blocking thread (loading parses; parsing is CPU work).
pub async fn validate(sources: Vec<engine::Source>) -> pb::ValidateResponse {
    let loaded = tokio::task::spawn_blocking(move || engine::Engine::load(&sources)).await;
    match loaded {
        Ok(Ok(e)) => pb::ValidateResponse {
            valid: true,
            errors: Vec::new(),
            lints: e.lints().iter().map(lint_to_proto).collect(),
            policies: e.policies().policies().count() as u32,
        },
        Ok(Err(errors)) => pb::ValidateResponse {
            valid: false,
            errors: errors.iter().map(error_to_proto).collect(),
            lints: Vec::new(),
            policies: 0,
        },
        Err(e) => pb::ValidateResponse {
            valid: false,
            errors: vec![pb::PolicyError { message: format!("validation failed: {e}"), ..Default::default() }],
            lints: Vec::new(),
            policies: 0,
        },
    }
}

/// Decides a check request against an engine.
pub fn check(engine: &engine::Engine, req: &pb::CheckRequest) -> Result<pb::CheckResponse, String> {
    let action = engine::Action::from_name(&req.action).ok_or_else(|| {
        format!(
            "unknown action {:?}: use one of {}",
            req.action,
            engine::Action::ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
        )
    })?;
    let resource = resource::parse_for(action, &req.resource)?;
    let principal = if req.principal.is_empty() { "claude" } else { req.principal.as_str() };
    let context = req.context.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let d = engine.authorize(principal, action, &resource, &context);
    let file_action = match action {
        engine::Action::FileOpen => Some(leash_core::tables::FileAction::Open),
        engine::Action::FileOpenReadOnly => Some(leash_core::tables::FileAction::Read),
        engine::Action::FileOpenReadWrite => Some(leash_core::tables::FileAction::Write),
        engine::Action::ProcessExec => Some(leash_core::tables::FileAction::Exec),
        _ => None,
    };
    let tables = match (file_action, &resource) {
        (Some(fa), resource::Resource::File(path)) => match engine.tables(principal).lookup(fa, path) {
            leash_core::tables::Lookup::Final(_) => "final".to_owned(),
            leash_core::tables::Lookup::Evaluate => "evaluate".to_owned(),
        },
        _ => String::new(),
    };
    Ok(pb::CheckResponse {
        allow: d.allow,
        reasons: d.reasons,
        errors: d.errors,
        resource: resource::display(&resource),
        tables,
        mode: String::new(),
        would_deny: false,
    })
}

#[tonic::async_trait]
impl Policy for Service {
    async fn status(&self, _: Request<PolicyStatusRequest>) -> Result<Response<ComponentReport>, Status> {
        Ok(self.core.report(vec![
            ("policy", "default (embedded)".to_owned()),
            ("policies", self.policies.to_string()),
            ("sessions", self.sessions.lock().len().to_string()),
        ]))
    }

    async fn shutdown(&self, req: Request<ShutdownRequest>) -> Result<Response<ShutdownResponse>, Status> {
        self.core.shutdown(req)
    }

    async fn validate(&self, req: Request<pb::ValidateRequest>) -> Result<Response<pb::ValidateResponse>, Status> {
        let sources =
            req.into_inner().sources.into_iter().map(|s| engine::Source { name: s.name, text: s.text }).collect();
        Ok(Response::new(validate(sources).await))
    }

    async fn check(&self, req: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        let req = req.into_inner();
        let (engine, mode) = if req.session.is_empty() {
            (self.default.clone(), leash_core::Mode::Enforce)
        } else {
            self.sessions
                .get(&req.session)
                .ok_or_else(|| Status::not_found(format!("no policy for session {:?}", req.session)))?
        };
        let r = tokio::task::spawn_blocking(move || check(&engine, &req))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        r.map(|r| Response::new(apply_mode(mode, r))).map_err(Status::invalid_argument)
    }

    async fn show(&self, req: Request<pb::ShowRequest>) -> Result<Response<pb::ShowResponse>, Status> {
        let session = req.into_inner().session;
        let (engine, mode, sources) = if session.is_empty() {
            (self.default.clone(), leash_core::Mode::Enforce, default_sources())
        } else {
            let (e, m) = self
                .sessions
                .get(&session)
                .ok_or_else(|| Status::not_found(format!("no policy for session {session:?}")))?;
            (e, m, self.sessions.sources(&session).unwrap_or_default())
        };
        Ok(Response::new(pb::ShowResponse {
            sources: sources.into_iter().map(|s| pb::PolicySource { name: s.name, text: s.text }).collect(),
            lines: lines(&engine),
            mode: mode_name(mode).to_owned(),
            lints: engine.lints().iter().map(lint_to_proto).collect(),
        }))
    }

    async fn set_mode(&self, req: Request<pb::SetModeRequest>) -> Result<Response<pb::SetModeResponse>, Status> {
        let req = req.into_inner();
        let mode = parse_mode(&req.mode).ok_or_else(|| {
            Status::invalid_argument(format!("unknown mode {:?}: use record, shadow or enforce", req.mode))
        })?;
        let previous = self
            .sessions
            .set_mode(&req.session, mode)
            .ok_or_else(|| Status::not_found(format!("no policy for session {:?}", req.session)))?;
        tracing::info!(session_id = %req.session, mode = mode_name(mode), previous = mode_name(previous), "mode switched");
        Ok(Response::new(pb::SetModeResponse {
            mode: mode_name(mode).to_owned(),
            previous: mode_name(previous).to_owned(),
            session: req.session.clone(),
        }))
    }

    async fn open_session(
        &self,
        req: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let req = req.into_inner();
        if !valid_session_id(&req.session) {
            return Err(Status::invalid_argument(format!("invalid session id {:?}", req.session)));
        }
        let mut sources: Vec<engine::Source> = if req.sources.is_empty() {
            default_sources()
        } else {
            req.sources.into_iter().map(|s| engine::Source { name: s.name, text: s.text }).collect()
        };
        sources.extend(req.admin.into_iter().map(|s| engine::Source { name: s.name, text: s.text }));
        let sessions = self.sessions.clone();
        let session = req.session.clone();
        let opened = tokio::task::spawn_blocking(move || sessions.open(&session, sources))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(match opened {
            Ok(e) => {
                tracing::info!(session_id = %req.session, principal = %req.principal, policies = e.policies().policies().count(), "opened the session's policy");
                pb::OpenSessionResponse {
                    valid: true,
                    errors: Vec::new(),
                    lints: e.lints().iter().map(lint_to_proto).collect(),
                    policies: e.policies().policies().count() as u32,
                    generation: 1,
                }
            }
            Err(errors) => pb::OpenSessionResponse {
                valid: false,
                errors: errors.iter().map(error_to_proto).collect(),
                lints: Vec::new(),
                policies: 0,
                generation: 0,
            },
        }))
    }

    async fn close_session(
        &self,
        req: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let session = req.into_inner().session;
        if valid_session_id(&session) {
            self.sessions.close(&session);
        }
        Ok(Response::new(pb::CloseSessionResponse {}))
    }
}

/// Runs the policy service until shutdown.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let defaults = engine::Engine::load(&default_sources()).map_err(|e| {
        anyhow::anyhow!(
            "the built-in default policy does not load: {}",
            e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        )
    })?;
    let bound = ctx.bind_component(Component::Policy)?;
    let core = ComponentCore { info: ctx.info.clone(), shutdown: ctx.shutdown.clone() };
    let mut routes = RoutesBuilder::default();
    let policies = defaults.policies().policies().count();
    let sessions = Sessions { dir: ctx.layout.state_dir.join("policy/sessions"), loaded: Default::default() };
    sessions.restore();
    let service = Service { core, policies, default: std::sync::Arc::new(defaults), sessions };
    routes.add_service(PolicyServer::new(service).max_decoding_message_size(leash_daemon::serve::MAX_MESSAGE_BYTES));
    leash_daemon::serve(bound, ctx.info, Rule::Privileged, routes, ctx.shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::engine::{Action, Engine, Source};
    use super::resource::{Host, Resource};

    fn root() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
    }

    #[test]
    fn every_policy_file_loads_and_validates() {
        let mut files = Vec::new();
        let mut dirs = vec![root()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "cedar") {
                    files.push(p);
                }
            }
        }
        assert!(files.len() >= 2, "{files:?}");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            if let Err(e) = Engine::load(&[Source { name: f.display().to_string(), text }]) {
                panic!("{}", e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"));
            }
        }
    }

    #[test]
    fn the_default_allows_everything_but_planting_code() {
        let e = Engine::load(&super::default_sources()).unwrap();
        let ctx = BTreeMap::new();
        let ok = |a, r: &Resource| e.authorize("claude", a, r, &ctx).allow;
        assert!(ok(Action::FileOpenReadOnly, &Resource::File("/etc/shadow".into())));
        assert!(ok(Action::FileOpenReadWrite, &Resource::File("/work/p/src/main.rs".into())));
        assert!(ok(Action::ProcessExec, &Resource::File("/usr/bin/nmap".into())));
        assert!(ok(Action::NetworkConnect, &Resource::Host(Host::parse("x.com:443").unwrap())));
        for planted in [
            "/work/p/.git/hooks/pre-commit",
            "/work/p/.git/config",
            "/work/p/.envrc",
            "/home/a/.claude/settings.json",
            "/work/p/.vscode/tasks.json",
        ] {
            let d = e.authorize("claude", Action::FileOpenReadWrite, &Resource::File(planted.into()), &ctx);
            assert_eq!((d.allow, d.reasons.as_slice()), (false, ["protect-host".to_owned()].as_slice()), "{planted}");
            assert!(ok(Action::FileOpenReadOnly, &Resource::File(planted.into())), "{planted} stays readable");
        }
    }
}
