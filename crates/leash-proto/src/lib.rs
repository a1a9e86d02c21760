//! Generated gRPC code for the `leash.v1` package.
//!
//! Only service edges use these types (service implementations, the daemon
//! runtime's handshake, the CLI's client and output); domain code works with
//! `leash-core` types.

/// Package `leash.v1`.
pub mod v1 {
    #![allow(clippy::all, reason = "generated code")]
    #![allow(missing_docs, reason = "generated code")]
    #![allow(clippy::allow_attributes_without_reason, reason = "generated code")]
    tonic::include_proto!("leash.v1");
}

pub mod event;
pub mod tables;

/// The lower-case name of a component state.
pub fn state_name(state: i32) -> &'static str {
    match v1::ComponentState::try_from(state).unwrap_or(v1::ComponentState::Unspecified) {
        v1::ComponentState::Running => "running",
        v1::ComponentState::Starting => "starting",
        v1::ComponentState::Restarting => "restarting",
        v1::ComponentState::Down => "down",
        v1::ComponentState::Unhealthy => "unhealthy",
        v1::ComponentState::Unspecified => "unknown",
    }
}
