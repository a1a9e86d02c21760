//! The runtime every leash daemon shares.
//!
//! One lifecycle for every daemon (see docs/ARCHITECTURE.md, "Daemon
//! lifecycle"): read the environment → init tracing → prepare the runtime
//! dir → bind the socket (refusing when another live daemon owns it) → serve
//! gRPC with handshake and health → notify readiness → on SIGTERM/SIGINT or a
//! Shutdown call drain under a deadline → remove the socket.

pub mod access;
pub mod cgroup;
pub mod client;
pub mod component;
pub mod env;
pub mod fanout;
pub mod fold;
pub mod handshake;
pub mod journal;
pub mod log_failures;
pub mod net;
pub mod notify;
pub mod policy;
pub mod process;
pub mod runtime_dir;
pub mod secrets;
pub mod serve;
pub mod signals;
pub mod socket;
pub mod trace;

pub use client::{ConnectError, Connected, connect, connect_with_retry};
pub use env::{ConfigError, Env, ProcessEnv};
pub use handshake::DaemonInfo;
pub use serve::serve;
pub use socket::{BindError, BoundSocket, SocketMode, bind};

/// How long a daemon waits for in-flight calls after it was asked to stop.
pub const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
