//! The sensor: kernel programs that observe and enforce per session.
//!
//! At this stage it serves its status; programs, capability probes and
//! session attachment arrive with their own methods. It reports no
//! enforcement it does not perform.

use leash_core::Component;
use leash_daemon::access::Rule;
use leash_daemon::component::ComponentCore;
use leash_daemon::process::Ctx;
use leash_proto::v1::sensor_server::{Sensor, SensorServer};
use leash_proto::v1::{ComponentReport, SensorStatusRequest, ShutdownRequest, ShutdownResponse};
use tonic::service::RoutesBuilder;
use tonic::{Request, Response, Status};

struct Service {
    core: ComponentCore,
    cpus: String,
}

#[tonic::async_trait]
impl Sensor for Service {
    async fn status(&self, _: Request<SensorStatusRequest>) -> Result<Response<ComponentReport>, Status> {
        Ok(self.core.report(vec![("programs", "none loaded".to_owned()), ("possible_cpus", self.cpus.clone())]))
    }

    async fn shutdown(&self, req: Request<ShutdownRequest>) -> Result<Response<ShutdownResponse>, Status> {
        self.core.shutdown(req)
    }
}

/// Runs the sensor until shutdown.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    // libbpf sizes per-CPU maps from this; reading it now fails early on a
    // host without sysfs.
    let cpus = libbpf_rs::num_possible_cpus().map(|n| n.to_string()).unwrap_or_else(|e| format!("unknown ({e})"));
    let bound = ctx.bind_component(Component::Sensor)?;
    let core = ComponentCore { info: ctx.info.clone(), shutdown: ctx.shutdown.clone() };
    let mut routes = RoutesBuilder::default();
    routes.add_service(SensorServer::new(Service { core, cpus }));
    leash_daemon::serve(bound, ctx.info, Rule::Privileged, routes, ctx.shutdown).await?;
    Ok(())
}
