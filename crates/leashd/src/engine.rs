//! The container engine (Docker, or Podman's Docker-compatible API).

use std::time::{Duration, Instant};

/// How long a described version is kept: Podman takes about a second to
/// answer `/version` (it asks its runtime and monitor for theirs), and
/// `leashctl status` asks on every call. A ping still says, every time,
/// whether the engine answers.
const KEEP: Duration = Duration::from_secs(60);

/// The last description, and when it was made.
static DESCRIBED: tokio::sync::Mutex<Option<(Instant, String)>> = tokio::sync::Mutex::const_new(None);

/// One line describing the engine: its version, or why it cannot be reached.
pub async fn describe() -> String {
    let docker = match bollard::Docker::connect_with_local_defaults() {
        Ok(d) => d,
        Err(e) => return format!("unavailable: {e}"),
    };
    match tokio::time::timeout(Duration::from_secs(1), docker.ping()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return format!("unreachable: {e}"),
        Err(_) => return "unreachable: no answer within 1s".to_owned(),
    }
    let mut described = DESCRIBED.lock().await;
    if let Some((at, line)) = described.as_ref()
        && at.elapsed() < KEEP
    {
        return line.clone();
    }
    match tokio::time::timeout(Duration::from_secs(5), docker.version()).await {
        Ok(Ok(v)) => {
            // Podman names itself among the components; its platform is the OS.
            let podman = v.components.iter().flatten().map(|c| c.name.as_str()).find(|n| n.contains("Podman"));
            let name = podman.map(str::to_owned).unwrap_or_else(|| {
                v.platform.map(|p| p.name).filter(|n| !n.is_empty()).unwrap_or_else(|| "Docker Engine".to_owned())
            });
            let line = format!("{name} {} (API {})", v.version.unwrap_or_default(), v.api_version.unwrap_or_default());
            *described = Some((Instant::now(), line.clone()));
            line
        }
        Ok(Err(e)) => format!("unreachable: {e}"),
        Err(_) => "unreachable: no answer within 5s".to_owned(),
    }
}
