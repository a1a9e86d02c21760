//! Serving gRPC on a bound socket with handshake, health, access control,
//! readiness and a drain deadline.

use std::io;

use leash_proto::v1::handshake_server::HandshakeServer;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::{InterceptorLayer, RoutesBuilder};
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::access::{self, Rule};
use crate::{BoundSocket, DRAIN_DEADLINE, DaemonInfo, notify};

/// Largest message a daemon accepts; larger ones are refused with
/// RESOURCE_EXHAUSTED and the connection keeps serving.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Serves `routes` (plus Handshake and gRPC health) on `bound` until
/// `shutdown` is cancelled, then drains for at most [`DRAIN_DEADLINE`] and
/// removes the socket. Every call passes the access `rule` first.
pub async fn serve(
    mut bound: BoundSocket,
    info: DaemonInfo,
    rule: Rule,
    mut routes: RoutesBuilder,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    routes.add_service(HandshakeServer::new(info.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES));
    routes.add_service(health);
    let incoming = UnixListenerStream::new(bound.take_listener()?);
    // The server starts draining only once this resolves, so STOPPING=1 and
    // NOT_SERVING always precede the drain.
    let stop_signal = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            notify::stopping();
            reporter.set_service_status("", ServingStatus::NotServing).await;
        }
    };
    let server = Server::builder()
        .layer(
            tower::ServiceBuilder::new()
                .layer(crate::log_failures::LogFailuresLayer)
                .layer(InterceptorLayer::new(access::interceptor(rule))),
        )
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, stop_signal);
    tokio::pin!(server);
    tracing::info!(daemon = info.name, version = leash_core::VERSION, socket = %bound.path().display(), "serving");
    notify::ready();

    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_DEADLINE).await;
    };
    tokio::select! {
        r = &mut server => r.map_err(io::Error::other)?,
        () = deadline => tracing::warn!(deadline = ?DRAIN_DEADLINE, "drain deadline exceeded; closing open calls"),
    }
    tracing::info!(daemon = info.name, "stopped");
    drop(bound);
    Ok(())
}
