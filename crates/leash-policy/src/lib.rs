//! The policy service: Cedar policies, decisions and kernel tables.
//!
//! At this stage it loads the embedded default policy and serves its status;
//! loading, authorizing and compiling arrive with their own methods.

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

/// Parses a policy set, keying each policy by its `@id` annotation.
pub fn parse_policies(src: &str) -> anyhow::Result<cedar_policy::PolicySet> {
    let parsed: cedar_policy::PolicySet = src.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let policies = parsed.policies().map(|p| match p.annotation("id") {
        Some(id) => p.new_id(cedar_policy::PolicyId::new(id)),
        None => p.clone(),
    });
    cedar_policy::PolicySet::from_policies(policies).map_err(|e| anyhow::anyhow!("{e}"))
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
    let defaults = parse_policies(DEFAULT_POLICY)?;
    let bound = ctx.bind_component(Component::Policy)?;
    let core = ComponentCore { info: ctx.info.clone(), shutdown: ctx.shutdown.clone() };
    let mut routes = RoutesBuilder::default();
    routes.add_service(PolicyServer::new(Service { core, policies: defaults.policies().count() }));
    leash_daemon::serve(bound, ctx.info, Rule::Privileged, routes, ctx.shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_policy_parses_with_its_ids() {
        let set = super::parse_policies(super::DEFAULT_POLICY).unwrap();
        let mut ids: Vec<String> = set.policies().map(|p| p.id().to_string()).collect();
        ids.sort();
        assert_eq!(ids, ["default-exec", "default-files", "default-network"]);
    }
}
