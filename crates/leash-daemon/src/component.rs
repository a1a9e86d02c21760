//! What every supervised component serves besides its own methods: a status
//! report and a Shutdown call.

use leash_proto::v1::{ComponentReport, Fact, ShutdownRequest, ShutdownResponse};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::DaemonInfo;

/// The parts of a component's gRPC service that all components share.
#[derive(Clone, Debug)]
pub struct ComponentCore {
    /// Who the component is.
    pub info: DaemonInfo,
    /// Cancelled by [`ComponentCore::shutdown`].
    pub shutdown: CancellationToken,
}

impl ComponentCore {
    /// A status report carrying `facts`.
    pub fn report(&self, facts: Vec<(&str, String)>) -> Response<ComponentReport> {
        let facts = facts.into_iter().map(|(name, value)| Fact { name: name.to_owned(), value }).collect();
        Response::new(ComponentReport { hello: Some(self.info.hello()), facts })
    }

    /// Handles a Shutdown call: replies, then the daemon drains and exits.
    /// The socket's access rule already limited callers to root.
    pub fn shutdown(&self, req: Request<ShutdownRequest>) -> Result<Response<ShutdownResponse>, Status> {
        let peer = crate::access::peer(&req);
        tracing::info!(reason = %req.get_ref().reason, caller = ?peer, "shutdown requested");
        self.shutdown.cancel();
        Ok(Response::new(ShutdownResponse {}))
    }
}
