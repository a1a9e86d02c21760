//! Follows leash-policy's change stream and publishes what happens there on
//! its own — a policy file reloaded, refused, or no longer watched — as
//! events. Changes made through leashd are published where they are made.

use std::time::Duration;

use leash_core::{Component, Event, EventKind};
use leash_proto::v1 as pb;

use crate::hub::Hub;
use crate::supervisor::Supervisor;

/// Follows the stream until shutdown, reconnecting when leash-policy restarts.
pub async fn run(supervisor: Supervisor, hub: Hub, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        let followed = async {
            let Some(channel) = supervisor.channel(Component::Policy).await else { return };
            let stream =
                pb::policy_client::PolicyClient::new(channel).watch(pb::WatchRequest { session: String::new() }).await;
            let mut stream = match stream {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    tracing::debug!(error = %e.message(), "cannot follow leash-policy's changes");
                    return;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(change)) => {
                        if let Some(e) = event(&change) {
                            hub.publish(e);
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(error = %e.message(), "leash-policy's change stream ended");
                        return;
                    }
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = followed => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            // Soon: changes made while nobody follows are not reported.
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// The event for a change leash-policy made on its own, if it is one.
fn event(c: &pb::PolicyChange) -> Option<Event> {
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
