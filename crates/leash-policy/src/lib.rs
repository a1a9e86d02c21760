//! The policy service: Cedar policies, decisions and kernel tables.
//!
//! At this stage it loads the embedded default policy and serves its status;
//! loading, authorizing and compiling arrive with their own methods.

pub mod compile;
pub mod engine;
pub mod resource;

use leash_core::Component;
use leash_daemon::access::Rule;
use leash_daemon::component::ComponentCore;
use leash_daemon::process::Ctx;
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
}

#[tonic::async_trait]
impl Policy for Service {
    async fn status(&self, _: Request<PolicyStatusRequest>) -> Result<Response<ComponentReport>, Status> {
        Ok(self.core.report(vec![("policy", "default (embedded)".to_owned()), ("policies", self.policies.to_string())]))
    }

    async fn shutdown(&self, req: Request<ShutdownRequest>) -> Result<Response<ShutdownResponse>, Status> {
        self.core.shutdown(req)
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
    routes.add_service(PolicyServer::new(Service { core, policies: defaults.policies().policies().count() }));
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
