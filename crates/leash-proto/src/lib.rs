//! Generated gRPC code for the `leash.v1` package.
//!
//! Only service edges (the `grpc` modules of each daemon and the CLI's client)
//! use these types; domain code works with `leash-core` types.

/// Package `leash.v1`.
pub mod v1 {
    #![allow(clippy::all, reason = "generated code")]
    #![allow(missing_docs, reason = "generated code")]
    tonic::include_proto!("leash.v1");
}
