//! The L7 layer: transparent HTTPS interception, host policy, secret
//! injection and MCP.
//!
//! At this stage it serves its status; per-session listeners arrive with
//! their own methods.

use leash_core::Component;
use leash_daemon::access::Rule;
use leash_daemon::component::ComponentCore;
use leash_daemon::process::Ctx;
use leash_proto::v1::proxy_server::{Proxy, ProxyServer};
use leash_proto::v1::{ComponentReport, ProxyStatusRequest, ShutdownRequest, ShutdownResponse};
use tonic::service::RoutesBuilder;
use tonic::{Request, Response, Status};

struct Service {
    core: ComponentCore,
}

#[tonic::async_trait]
impl Proxy for Service {
    async fn status(&self, _: Request<ProxyStatusRequest>) -> Result<Response<ComponentReport>, Status> {
        Ok(self.core.report(vec![("listeners", "0".to_owned())]))
    }

    async fn shutdown(&self, req: Request<ShutdownRequest>) -> Result<Response<ShutdownResponse>, Status> {
        self.core.shutdown(req)
    }
}

/// Runs the proxy until shutdown.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let bound = ctx.bind_component(Component::Proxy)?;
    let core = ComponentCore { info: ctx.info.clone(), shutdown: ctx.shutdown.clone() };
    let mut routes = RoutesBuilder::default();
    routes.add_service(ProxyServer::new(Service { core }));
    leash_daemon::serve(bound, ctx.info, Rule::Privileged, routes, ctx.shutdown).await?;
    Ok(())
}
