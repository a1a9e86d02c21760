//! The policy service: Cedar policies, decisions and kernel tables.
//!
//! It holds the default policy (for sessions opened without one) and each
//! session's policy in a [`store::Store`], decides requests through a
//! decision cache, compiles kernel tables, reloads policy files on change,
//! and streams every change with its generation.

pub mod action;
pub mod cache;
pub mod compile;
pub mod engine;
pub mod humanize;
pub mod resource;
pub mod store;
pub mod watch;

use std::collections::BTreeMap;

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
        engine::Source { name: leash_core::PROTECT_HOST_LAYER.into(), text: PROTECT_HOST.into() },
    ]
}

struct Service {
    core: ComponentCore,
    store: std::sync::Arc<store::Store>,
}

/// The policy's lines for people, in source order.
pub fn lines(e: &engine::Engine) -> Vec<String> {
    policy_lines(e).into_iter().map(|l| format!("{} [{}]", l.humanized, l.id)).collect()
}

/// Each policy with its effect, statement and origin, in source order.
pub fn policy_lines(e: &engine::Engine) -> Vec<pb::PolicyLine> {
    let mut v: Vec<(String, pb::PolicyLine)> = e
        .policies()
        .policies()
        .map(|p| {
            let id = p.id().to_string();
            let origin = e.origin(&id).unwrap_or("").to_owned();
            let json = p.to_json().unwrap_or_default();
            let human = humanize::line(&id, &json);
            let line = pb::PolicyLine {
                effect: if p.effect() == cedar_policy::Effect::Forbid { "forbid" } else { "permit" }.to_owned(),
                humanized: human.strip_suffix(&format!(" [{id}]")).unwrap_or(&human).to_owned(),
                cedar: p.to_string(),
                origin: origin.rsplit_once(':').map(|(f, _)| f.to_owned()).unwrap_or_default(),
                id,
            };
            (origin, line)
        })
        .collect();
    v.sort_by_key(|(o, _)| {
        o.rsplit_once(':').map(|(f, l)| (f.to_owned(), l.parse::<usize>().unwrap_or(0))).unwrap_or_default()
    });
    v.into_iter().map(|(_, l)| l).collect()
}

/// A mode's name.
pub fn mode_name(m: leash_core::Mode) -> &'static str {
    m.name()
}

/// A mode by name.
pub fn parse_mode(s: &str) -> Option<leash_core::Mode> {
    leash_core::Mode::from_name(s)
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

/// A check's answer in the session's mode: [`apply_mode`], except for
/// `SecretUse`, which grants (a credential's value where its decoy is) and
/// is the policy's answer in every mode, so that record and shadow modes
/// never send a secret where the policy does not.
pub fn answer_in_mode(mode: leash_core::Mode, action: &str, r: pb::CheckResponse) -> pb::CheckResponse {
    if engine::Action::from_name(action) == Some(engine::Action::SecretUse) {
        return pb::CheckResponse { mode: mode_name(mode).to_owned(), ..r };
    }
    apply_mode(mode, r)
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
    check_with(engine, req, |p, a, r, c| engine.authorize(p, a, r, c))
}

/// [`check`], deciding through `decide` (a decision cache).
pub fn check_with(
    engine: &engine::Engine,
    req: &pb::CheckRequest,
    decide: impl FnOnce(&str, engine::Action, &resource::Resource, &BTreeMap<String, String>) -> engine::Decision,
) -> Result<pb::CheckResponse, String> {
    let action = engine::Action::from_name(&req.action).ok_or_else(|| {
        format!(
            "unknown action {:?}: use one of {}",
            req.action,
            engine::Action::ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
        )
    })?;
    let resource = resource::parse_for(action, &req.resource)?;
    let principal = if req.principal.is_empty() { store::DEFAULT_PRINCIPAL } else { req.principal.as_str() };
    let mut context: BTreeMap<String, String> = req.context.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if action == engine::Action::SecretUse {
        // The proxy always says where the decoy is and over what; a question
        // that does not is about a header over HTTPS (the answer shows it).
        context.entry("location".to_owned()).or_insert_with(|| "header".to_owned());
        context.entry("scheme".to_owned()).or_insert_with(|| "https".to_owned());
    }
    let d = decide(principal, action, &resource, &context);
    let file_action = match action {
        engine::Action::FileOpen => Some(leash_core::tables::FileAction::Open),
        engine::Action::FileOpenReadOnly => Some(leash_core::tables::FileAction::Read),
        engine::Action::FileOpenReadWrite => Some(leash_core::tables::FileAction::Write),
        engine::Action::ProcessExec => Some(leash_core::tables::FileAction::Exec),
        _ => None,
    };
    let tables = match (file_action, &resource) {
        (Some(fa), resource::Resource::File(path)) => match compile::tables(engine, principal).lookup(fa, path) {
            leash_core::tables::Lookup::Final(_) => "final".to_owned(),
            leash_core::tables::Lookup::Evaluate => "evaluate".to_owned(),
        },
        // The proxy's name table, or the address table (the kernel's for a
        // connection; an HTTP request's when the context has one).
        (None, resource::Resource::Host(h)) if action == engine::Action::NetworkConnect => {
            let t = compile::tables(engine, principal);
            let request = context.keys().any(|k| ["scheme", "method", "path", "query"].contains(&k.as_str()));
            let found = match h {
                resource::Host::Name(n, p) => t.hosts.lookup(n, *p),
                resource::Host::Ip(ip, p) if request => t.net.lookup_request(*ip, p.unwrap_or(0)),
                resource::Host::Ip(ip, p) => t.net.lookup(*ip, p.unwrap_or(0)),
            };
            match found {
                leash_core::tables::Lookup::Final(_) => "final".to_owned(),
                leash_core::tables::Lookup::Evaluate => "evaluate".to_owned(),
            }
        }
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
        action: action.name().to_owned(),
        context: context.into_iter().collect(),
        generation: 0,
        context_free: !engine.reads_context(),
    })
}

fn sources_of(list: Vec<pb::PolicySource>) -> Vec<engine::Source> {
    list.into_iter().map(|s| engine::Source { name: s.name, text: s.text }).collect()
}

/// The wire form of an applied change, or of why it was refused.
fn edit_response(session: &str, r: Result<store::Applied, Vec<engine::LoadError>>) -> pb::EditResponse {
    match r {
        Ok(a) => pb::EditResponse {
            valid: true,
            errors: Vec::new(),
            lints: a.engine.lints().iter().map(lint_to_proto).collect(),
            policies: a.engine.policies().policies().count() as u32,
            generation: a.generation,
            session: session.to_owned(),
            added: a.added,
            removed: a.removed,
            conflict: false,
        },
        Err(errors) => pb::EditResponse {
            valid: false,
            conflict: errors.iter().any(|e| e.message.contains(store::CONFLICTS)),
            errors: errors.iter().map(error_to_proto).collect(),
            session: session.to_owned(),
            ..Default::default()
        },
    }
}

/// The wire form of a change.
pub fn change_to_proto(c: &store::Change) -> pb::PolicyChange {
    pb::PolicyChange {
        session: c.session.clone(),
        generation: c.generation,
        kind: c.kind.to_owned(),
        mode: mode_name(c.mode).to_owned(),
        policies: c.policies,
        errors: c.errors.clone(),
        path: c.path.clone(),
        missed: 0,
    }
}

impl Service {
    fn current(&self, session: &str) -> Result<store::Current, Status> {
        self.store.get(session).ok_or_else(|| Status::not_found(format!("no policy for session {session:?}")))
    }

    fn key(session: &str) -> Result<&str, Status> {
        if session.is_empty() || valid_session_id(session) {
            Ok(session)
        } else {
            Err(Status::invalid_argument(format!("invalid session id {session:?}")))
        }
    }

    /// Runs a store change on a blocking thread (loading is CPU work).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&store::Store) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store)).await.map_err(|e| Status::internal(e.to_string()))
    }
}

type WatchStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::PolicyChange, Status>> + Send>>;

#[tonic::async_trait]
impl Policy for Service {
    type WatchStream = WatchStream;

    async fn status(&self, _: Request<PolicyStatusRequest>) -> Result<Response<ComponentReport>, Status> {
        let default = self.current(store::DEFAULT)?;
        Ok(self.core.report(vec![
            ("policy", format!("default, generation {}", default.generation)),
            ("policies", default.engine.policies().policies().count().to_string()),
            ("sessions", self.store.sessions().to_string()),
        ]))
    }

    async fn shutdown(&self, req: Request<ShutdownRequest>) -> Result<Response<ShutdownResponse>, Status> {
        self.core.shutdown(req)
    }

    async fn validate(&self, req: Request<pb::ValidateRequest>) -> Result<Response<pb::ValidateResponse>, Status> {
        Ok(Response::new(validate(sources_of(req.into_inner().sources)).await))
    }

    async fn check(&self, req: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        let req = req.into_inner();
        let current = self.current(Self::key(&req.session)?)?;
        let (mode, generation) = (current.mode, current.generation);
        let action = req.action.clone();
        let r = tokio::task::spawn_blocking(move || {
            let engine = current.engine.clone();
            check_with(&engine, &req, |principal, action, resource, context| {
                if principal == current.principal {
                    let mut cache = current.cache.lock().unwrap_or_else(|p| p.into_inner());
                    cache.decide(action, resource, context)
                } else {
                    engine.authorize(principal, action, resource, context)
                }
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        r.map(|r| Response::new(answer_in_mode(mode, &action, pb::CheckResponse { generation, ..r })))
            .map_err(Status::invalid_argument)
    }

    async fn show(&self, req: Request<pb::ShowRequest>) -> Result<Response<pb::ShowResponse>, Status> {
        let session = req.into_inner().session;
        let c = self.current(Self::key(&session)?)?;
        Ok(Response::new(pb::ShowResponse {
            sources: c.sources.into_iter().map(|s| pb::PolicySource { name: s.name, text: s.text }).collect(),
            lines: lines(&c.engine),
            mode: mode_name(c.mode).to_owned(),
            lints: c.engine.lints().iter().map(lint_to_proto).collect(),
            policies: policy_lines(&c.engine),
        }))
    }

    async fn replay(&self, req: Request<pb::ReplayRequest>) -> Result<Response<pb::ReplayResponse>, Status> {
        let req = req.into_inner();
        let sources = sources_of(req.sources);
        let r = tokio::task::spawn_blocking(move || match engine::Engine::load(&sources) {
            Ok(engine) => pb::ReplayResponse {
                valid: true,
                errors: Vec::new(),
                results: req
                    .requests
                    .iter()
                    .map(|r| {
                        check_with(&engine, r, |p, a, res, ctx| engine.authorize(p, a, res, ctx)).unwrap_or_else(|e| {
                            pb::CheckResponse { errors: vec![e], action: r.action.clone(), ..Default::default() }
                        })
                    })
                    .collect(),
            },
            Err(errors) => pb::ReplayResponse {
                valid: false,
                errors: errors.iter().map(error_to_proto).collect(),
                results: Vec::new(),
            },
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(r))
    }

    async fn set_mode(&self, req: Request<pb::SetModeRequest>) -> Result<Response<pb::SetModeResponse>, Status> {
        let req = req.into_inner();
        let mode = parse_mode(&req.mode).ok_or_else(|| {
            Status::invalid_argument(format!("unknown mode {:?}: use record, shadow or enforce", req.mode))
        })?;
        let previous = self
            .store
            .set_mode(Self::key(&req.session)?, mode)
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
        let opening = store::Opening {
            principal: req.principal.clone(),
            sources: sources_of(req.sources),
            admin: sources_of(req.admin),
            unprotected: req.no_protect_host,
            file: (!req.watch_path.is_empty()).then(|| std::path::PathBuf::from(&req.watch_path)),
            owner: req.owner,
            writable: req.writable_mounts.iter().map(std::path::PathBuf::from).collect(),
        };
        let session = req.session.clone();
        let opened = self.blocking(move |s| s.open_session(&session, opening)).await?;
        Ok(Response::new(match opened {
            Ok(a) => {
                let policies = a.engine.policies().policies().count();
                tracing::info!(session_id = %req.session, principal = %req.principal, policies, watched = a.watched, "opened the session's policy");
                pb::OpenSessionResponse {
                    valid: true,
                    errors: Vec::new(),
                    lints: a.engine.lints().iter().map(lint_to_proto).collect(),
                    policies: policies as u32,
                    generation: a.generation,
                    watched: a.watched,
                    watch_note: a.watch_note,
                }
            }
            Err(errors) => pb::OpenSessionResponse {
                valid: false,
                errors: errors.iter().map(error_to_proto).collect(),
                ..Default::default()
            },
        }))
    }

    async fn close_session(
        &self,
        req: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let session = req.into_inner().session;
        if valid_session_id(&session) {
            self.store.close(&session);
        }
        Ok(Response::new(pb::CloseSessionResponse {}))
    }

    async fn set_layer(&self, req: Request<pb::SetLayerRequest>) -> Result<Response<pb::EditResponse>, Status> {
        let req = req.into_inner();
        let key = Self::key(&req.session)?.to_owned();
        let layer = match pb::Layer::try_from(req.layer) {
            Ok(pb::Layer::File) => store::Layer::File,
            Ok(pb::Layer::Runtime) => store::Layer::Runtime,
            _ => return Err(Status::invalid_argument("name the layer: file or runtime")),
        };
        let file = (!req.watch_path.is_empty()).then(|| std::path::PathBuf::from(&req.watch_path));
        let sources = sources_of(req.sources);
        let k = key.clone();
        let r = self.blocking(move |s| s.set_layer(&k, layer, sources, file)).await?;
        Ok(Response::new(edit_response(&key, r)))
    }

    async fn edit(&self, req: Request<pb::EditRequest>) -> Result<Response<pb::EditResponse>, Status> {
        let req = req.into_inner();
        let key = Self::key(&req.session)?.to_owned();
        let k = key.clone();
        let r = self.blocking(move |s| s.edit(&k, &req.add, &req.remove)).await?;
        Ok(Response::new(edit_response(&key, r)))
    }

    async fn persist(&self, req: Request<pb::PersistRequest>) -> Result<Response<pb::PersistResponse>, Status> {
        let key = Self::key(&req.get_ref().session)?.to_owned();
        let k = key.clone();
        let text = req.into_inner().text;
        let replace = (!text.trim().is_empty()).then_some(text);
        let r = self.blocking(move |s| s.persist(&k, replace)).await?;
        Ok(Response::new(match r {
            Ok((applied, text, file, saved)) => pb::PersistResponse {
                result: Some(edit_response(&key, Ok(applied))),
                text,
                path: file.map(|f| f.display().to_string()).unwrap_or_default(),
                saved: saved.display().to_string(),
            },
            Err(e) => pb::PersistResponse { result: Some(edit_response(&key, Err(e))), ..Default::default() },
        }))
    }

    async fn tables(&self, req: Request<pb::TablesRequest>) -> Result<Response<pb::DecisionTables>, Status> {
        let req = req.into_inner();
        let c = self.current(Self::key(&req.session)?)?;
        let principal = if req.principal.is_empty() { c.principal.clone() } else { req.principal };
        let t = tokio::task::spawn_blocking(move || {
            let mut t = (*compile::tables(&c.engine, &principal)).clone();
            t.generation = c.generation;
            leash_proto::tables::to_proto(&t, mode_name(c.mode))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(t))
    }

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let session = req.into_inner().session;
        let filter = (!session.is_empty()).then(|| session.clone());
        if let Some(s) = &filter {
            self.current(Self::key(s)?)?;
        }
        let mut rx = self.store.subscribe();
        let store = self.store.clone();
        let shutdown = self.core.shutdown.clone();
        let (tx, out) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let snapshot = |missed: u64| {
                store
                    .snapshot(filter.as_deref())
                    .iter()
                    .map(|c| pb::PolicyChange { missed, ..change_to_proto(c) })
                    .collect::<Vec<_>>()
            };
            for c in snapshot(0) {
                if tx.send(Ok(c)).await.is_err() {
                    return;
                }
            }
            loop {
                let next = tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    n = rx.recv() => n,
                };
                let batch: Vec<pb::PolicyChange> = match next {
                    Ok(c) if filter.as_ref().is_none_or(|s| *s == c.session) => vec![change_to_proto(&c)],
                    Ok(_) => continue,
                    // Fell behind: say how much was missed and send the state now.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => snapshot(n),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                for c in batch {
                    if tx.send(Ok(c)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))))
    }
}

/// Runs the policy service until shutdown.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let store = store::Store::open(ctx.layout.state_dir.join("policy"), default_sources())?;
    let bound = ctx.bind_component(Component::Policy)?;
    if let Err(e) = store.start_watching() {
        tracing::warn!(error = %e, "cannot watch policy files (inotify); policy files will not reload");
    }
    let core = ComponentCore { info: ctx.info.clone(), shutdown: ctx.shutdown.clone() };
    let mut routes = RoutesBuilder::default();
    let service = Service { core, store };
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
    fn record_and_shadow_modes_never_release_a_secret() {
        let denied = || super::pb::CheckResponse { allow: false, reasons: vec!["x".into()], ..Default::default() };
        for mode in [leash_core::Mode::Record, leash_core::Mode::Shadow, leash_core::Mode::Enforce] {
            let r = super::answer_in_mode(mode, "SecretUse", denied());
            assert!(!r.allow, "{mode:?}");
            assert_eq!(r.mode, super::mode_name(mode));
        }
        // Other actions follow the mode.
        assert!(super::answer_in_mode(leash_core::Mode::Record, "NetworkConnect", denied()).allow);
        assert!(super::answer_in_mode(leash_core::Mode::Shadow, "networkconnect", denied()).allow);
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
