//! Streams leashd follows from its components, reconnecting when they
//! restart: leash-policy's changes (what it does on its own — a policy file
//! reloaded, refused, no longer watched — becomes an event; changes made
//! through leashd are published where they are made), leash-sensor's
//! governed decisions and leash-proxy's requests.

use std::future::Future;
use std::time::Duration;

use leash_core::{Component, Event, EventKind};
use leash_proto::v1 as pb;
use tonic::transport::Channel;

use crate::hub::Hub;
use crate::supervisor::Supervisor;

/// Runs `follow` on a channel to `component` until shutdown, again whenever
/// it returns (the component restarted, or was not up yet).
async fn follow_forever<F, Fut>(
    supervisor: Supervisor,
    component: Component,
    shutdown: tokio_util::sync::CancellationToken,
    follow: F,
) where
    F: Fn(Channel) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let once = async {
            if let Some(channel) = supervisor.channel(component).await {
                follow(channel).await;
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = once => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            // Soon: what happens while nobody follows is not reported.
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// Follows leash-policy's change stream.
pub async fn policy(supervisor: Supervisor, hub: Hub, shutdown: tokio_util::sync::CancellationToken) {
    follow_forever(supervisor, Component::Policy, shutdown, |channel| {
        let hub = hub.clone();
        async move {
            let request = pb::WatchRequest { session: String::new() };
            let Ok(stream) = pb::policy_client::PolicyClient::new(channel).watch(request).await else { return };
            let mut stream = stream.into_inner();
            while let Ok(Some(change)) = stream.message().await {
                if let Some(e) = policy_event(&change) {
                    hub.publish(e);
                }
            }
        }
    })
    .await;
}

/// Publishes a component's event batches until its stream ends.
async fn relay(hub: &Hub, stream: Result<tonic::Response<tonic::Streaming<pb::EventBatch>>, tonic::Status>) {
    let Ok(stream) = stream else { return };
    let mut stream = stream.into_inner();
    while let Ok(Some(batch)) = stream.message().await {
        hub.publish_all(batch.events.into_iter().map(leash_proto::event::from_proto));
    }
}

/// Follows leash-sensor's decisions.
pub async fn sensor(supervisor: Supervisor, hub: Hub, shutdown: tokio_util::sync::CancellationToken) {
    follow_forever(supervisor, Component::Sensor, shutdown, |channel| {
        let hub = hub.clone();
        async move {
            let mut client = pb::sensor_client::SensorClient::new(channel)
                .max_decoding_message_size(leash_daemon::serve::MAX_MESSAGE_BYTES);
            relay(&hub, client.events(pb::SensorEventsRequest {}).await).await;
        }
    })
    .await;
}

/// Follows leash-proxy's requests.
pub async fn proxy(supervisor: Supervisor, hub: Hub, shutdown: tokio_util::sync::CancellationToken) {
    follow_forever(supervisor, Component::Proxy, shutdown, |channel| {
        let hub = hub.clone();
        async move {
            let mut client = pb::proxy_client::ProxyClient::new(channel)
                .max_decoding_message_size(leash_daemon::serve::MAX_MESSAGE_BYTES);
            relay(&hub, client.events(pb::ProxyEventsRequest {}).await).await;
        }
    })
    .await;
}

/// The event for a change leash-policy made on its own, if it is one.
fn policy_event(c: &pb::PolicyChange) -> Option<Event> {
    let name = match c.kind.as_str() {
        "reload" => "policy.reload",
        "invalid" => "policy.invalid",
        "unwatched" => "policy.unwatched",
        _ => return None,
    };
    let mut e = Event::daemon(name, "leash-policy", 0)
        .with("generation", c.generation.to_string())
        .with("policies", c.policies.to_string())
        .with("path", c.path.clone());
    if !c.errors.is_empty() {
        e = e.with("error", c.errors.join("; "));
    }
    e.kind = EventKind::Policy;
    e.session = (!c.session.is_empty()).then(|| c.session.clone());
    Some(e)
}
