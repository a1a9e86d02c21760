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
/// the binary that owns it), or of the one named `only`.
pub fn render(shell: Shell, leashctl: clap::Command, only: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    for mut cmd in [leash_command(), leashctl] {
        let name = cmd.get_name().to_owned();
        if only.is_some_and(|o| o != name) {
            continue;
        }
        clap_complete::generate(generator, &mut cmd, name, &mut out);
    }
    out
}

/// Prints them (a closed pipe, as `| head` makes, is not an error).
pub fn print(shell: Shell, leashctl: clap::Command, only: Option<&str>) {
    let _ = std::io::stdout().lock().write_all(&render(shell, leashctl, only));
}

/// Writes the manual pages of `leash` (with `leash-attach` and
/// `leash-exec`) and of `leashctl` and each of its verbs into `dir`.
pub fn man_pages(dir: &std::path::Path, leashctl: clap::Command) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for cmd in [leash_command(), leashctl] {
        clap_mangen::generate_to(cmd, dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leash_completes_its_flags_attach_and_exec() {
        let out = render(Shell::Bash, clap::Command::new("leashctl").subcommand(clap::Command::new("status")), None);
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

    #[test]
    fn one_commands_completions_and_every_manual_page() {
        let leashctl =
            || clap::Command::new("leashctl").about("inspect").subcommand(clap::Command::new("status").about("status"));
        let only = String::from_utf8(render(Shell::Zsh, leashctl(), Some("leash"))).unwrap();
        assert!(only.starts_with("#compdef leash\n") && !only.contains("#compdef leashctl"), "{only}");
        let dir = tempfile::tempdir().unwrap();
        man_pages(dir.path(), leashctl()).unwrap();
        let mut pages: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        pages.sort();
        assert_eq!(pages, ["leash-attach.1", "leash-exec.1", "leash.1", "leashctl-status.1", "leashctl.1"]);
        let exec = std::fs::read_to_string(dir.path().join("leash-exec.1")).unwrap();
        assert!(exec.starts_with(".ie") || exec.contains(".TH leash-exec 1"), "{exec}");
        assert!(exec.contains("interactive") && exec.contains("workdir"), "{exec}");
    }
}
