//! Names beyond ports 80 and 443: the addresses a name resolves to, in the
//! DNS answers the session receives, carry the policy's decision on that
//! name to the kernel (leash-sensor's tables) for the answer's lifetime —
//! so `git` over SSH to an allowed host works under an allow-list, and a
//! forbidden host is refused on every port.

use leash_proto::v1 as pb;

use crate::dns::Answer;
use crate::serve::{Session, Shared};

/// The longest time an answer's addresses are kept (a TTL above is cut).
const MAX_TTL: u32 = 3600;

/// Pushes the decided addresses of `a` to the sensor; returns them as
/// `ip[:port] allow|deny`.
pub async fn learn(a: &Answer, session: &Session, shared: &Shared) -> Vec<String> {
    let decided = shared.decider.name_entries(&session.id, &a.name);
    if decided.is_empty() {
        return Vec::new();
    }
    let mut addresses = Vec::new();
    for (ip, ttl) in &a.addresses {
        for (port, allow, reasons) in &decided {
            // An address the policy (or a guard) refuses stays refused.
            if *allow && shared.decider.address_denied(&session.id, *ip, *port) {
                continue;
            }
            addresses.push(pb::LearnedAddress {
                ip: ip.to_string(),
                port: u32::from(*port),
                allow: *allow,
                reasons: reasons.clone(),
                ttl: (*ttl).clamp(1, MAX_TTL),
            });
        }
    }
    let shown: Vec<String> = addresses
        .iter()
        .map(|l| {
            let at = if l.port == 0 { l.ip.clone() } else { format!("{}:{}", l.ip, l.port) };
            format!("{at} {}", if l.allow { "allow" } else { "deny" })
        })
        .collect();
    let request = pb::LearnRequest { session: session.id.clone(), name: a.name.clone(), addresses };
    let sent = async {
        let channel = shared
            .sensor
            .get_or_try_init(|| async {
                leash_daemon::client::connect(&shared.sensor_socket, "leash-proxy").await.map(|c| c.channel)
            })
            .await
            .map_err(|e| e.to_string())?;
        pb::sensor_client::SensorClient::new(channel.clone()).learn(request).await.map_err(|s| s.message().to_owned())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), sent).await {
        Ok(Ok(_)) => shown,
        Ok(Err(e)) => {
            tracing::warn!(session_id = %session.id, name = %a.name, error = %e, "cannot give the sensor a name's addresses");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}
