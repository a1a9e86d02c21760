//! `leashctl completions SHELL`: the shell completions of `leash` and
//! `leashctl`, for `source <(leashctl completions bash)` or a completions
//! directory.

use std::io::Write;

use clap::CommandFactory;

/// The shells completions are written for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Shell {
    /// bash (`source <(leashctl completions bash)`).
    Bash,
    /// zsh (`source <(leashctl completions zsh)` after `compinit`).
    Zsh,
    /// fish (`leashctl completions fish | source`).
    Fish,
}

/// `leash`'s command line as completions see it: its flags, and `attach`
/// and `exec` (which `leash` reads before its flags).
pub fn leash_command() -> clap::Command {
    let attach = crate::args::AttachArgs::command().name("attach");
    let exec = crate::args::ExecArgs::command().name("exec");
    crate::args::Args::command().args_conflicts_with_subcommands(true).subcommand(attach).subcommand(exec)
}

/// The completions of `leash` and of `leashctl` (its command line given by
/// the binary that owns it).
pub fn render(shell: Shell, leashctl: clap::Command) -> Vec<u8> {
    let mut out = Vec::new();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    for mut cmd in [leash_command(), leashctl] {
        let name = cmd.get_name().to_owned();
        clap_complete::generate(generator, &mut cmd, name, &mut out);
    }
    out
}

/// Prints them (a closed pipe, as `| head` makes, is not an error).
pub fn print(shell: Shell, leashctl: clap::Command) {
    let _ = std::io::stdout().lock().write_all(&render(shell, leashctl));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leash_completes_its_flags_attach_and_exec() {
        let out = render(Shell::Bash, clap::Command::new("leashctl").subcommand(clap::Command::new("status")));
        let text = String::from_utf8(out).unwrap();
        for word in [
            "attach",
            "exec",
            "--interactive",
            "--workdir",
            "--detach",
            "--detach-keys",
            "--no-protect-host",
            "leashctl",
            "status",
        ] {
            assert!(text.contains(word), "{word} missing");
        }
    }
}
