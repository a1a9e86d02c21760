//! The thin clients `leash` and `leashctl`.
//!
//! Architecture invariant: the CLI talks to leashd, over `leashd.sock`,
//! with the user's own rights (the diagnostic `leashctl hello --socket`
//! only exchanges versions with any daemon). It never links Docker, BPF or
//! Cedar code (a test in xtask reads `cargo metadata` to keep it so) and
//! starts leashd by executing its binary, never by linking it.

pub mod args;
pub mod ask;
pub mod commands;
pub mod daemon;
pub mod keys;
pub mod output;
pub mod session;

/// `leash`'s exit code for its own failures (as `docker run`).
pub const EXIT_LEASH_FAILURE: u8 = 125;
/// `leashctl`'s exit code for usage errors.
pub const EXIT_USAGE: u8 = 64;
/// `leashctl`'s exit code for runtime failures.
pub const EXIT_FAILURE: u8 = 1;
