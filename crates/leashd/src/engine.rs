//! The container engine (Docker, or Podman's Docker-compatible API).

use std::time::Duration;

/// One line describing the engine: its version, or why it cannot be reached.
pub async fn describe() -> String {
    let docker = match bollard::Docker::connect_with_local_defaults() {
        Ok(d) => d,
        Err(e) => return format!("unavailable: {e}"),
    };
    match tokio::time::timeout(Duration::from_secs(1), docker.version()).await {
        Ok(Ok(v)) => format!(
            "{} {} (API {})",
            v.platform.map(|p| p.name).filter(|n| !n.is_empty()).unwrap_or_else(|| "Docker Engine".to_owned()),
            v.version.unwrap_or_default(),
            v.api_version.unwrap_or_default()
        ),
        Ok(Err(e)) => format!("unreachable: {e}"),
        Err(_) => "unreachable: no answer within 1s".to_owned(),
    }
}
