//! systemd readiness notification (`Type=notify`). A no-op when
//! `NOTIFY_SOCKET` is unset.

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Tells the service manager that we serve, and which pid is the main one.
pub fn ready() {
    send(&[NotifyState::MainPid(std::process::id()), NotifyState::Ready]);
}

/// Tells the service manager that we are draining.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}
