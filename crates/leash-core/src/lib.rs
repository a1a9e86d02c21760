//! leash's domain types, shared by every process.
//!
//! Architecture invariant: this crate does no IO and knows nothing of gRPC,
//! Docker, Cedar or BPF. It names things (components, paths, events) so that
//! every other crate agrees on them.

pub mod component;
pub mod event;
pub mod hostside;
pub mod layout;
pub mod listen;
pub mod stdio_mcp;
pub mod tables;
pub mod terminal;
pub mod time;

pub use component::Component;
pub use event::{Decision, Event, EventKind, Mode};
pub use layout::Layout;

/// The name of the protect-host layer's source: leash-policy adds it to
/// every policy unless a session's user turned it off, and leashd's API
/// shows it apart from the policy a user edits.
pub const PROTECT_HOST_LAYER: &str = "protect-host";

/// The build version of every leash binary (one workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The wire protocol spoken over the Unix sockets. Bumped on any change that
/// an older peer would misread; peers with different protocols refuse each
/// other at the handshake with a message naming both versions.
pub const PROTOCOL_VERSION: u32 = 1;
