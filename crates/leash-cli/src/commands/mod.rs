//! One module per `leashctl` subcommand, each `run(&Ctx, …) -> anyhow::Result<ExitCode>`.

pub mod completions;
pub mod doctor;
pub mod events;
pub mod gc;
pub mod hello;
pub mod policy;
pub mod sessions;
pub mod status;
pub mod stop;
pub mod ui;

use leash_core::Layout;

/// What every subcommand gets.
#[derive(Debug)]
pub struct Ctx {
    /// Where leashd's socket is.
    pub layout: Layout,
    /// Machine-readable output.
    pub json: bool,
}
