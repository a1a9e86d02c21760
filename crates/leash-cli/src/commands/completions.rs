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

/// bash: session ids where `leash attach` and `leash exec` take one, from
/// the sessions leashd lists for the user (`leashctl sessions --json`).
const LEASH_BASH_IDS: &str = r#"
# Session ids, from the sessions leashd lists for you.
_leash_session_ids() {
    leashctl sessions --json 2>/dev/null | tr ',{' '\n\n' | sed -n 's/^ *"id": *"\([0-9a-f]*\)".*/\1/p'
}
# Whether the word being completed is the id: no other word yet after the
# verb (from word 2 on), but flags and their values.
_leash_wants_id() {
    local i skip=0
    for ((i = $1; i < COMP_CWORD; i++)); do
        if ((skip)); then skip=0; continue; fi
        case "${COMP_WORDS[i]}" in
            -e|--env|-w|--workdir|--detach-keys) skip=1 ;;
            -*) ;;
            *) return 1 ;;
        esac
    done
    [[ "${COMP_WORDS[COMP_CWORD]}" != -* ]]
}
_leash_with_ids() {
    case "${COMP_WORDS[1]}" in
        attach|exec)
            if _leash_wants_id 2; then
                COMPREPLY=($(compgen -W "$(_leash_session_ids)" -- "${COMP_WORDS[COMP_CWORD]}"))
                return
            fi
            ;;
    esac
    _leash "$@"
}
complete -F _leash_with_ids -o bashdefault -o default leash
"#;

/// bash: session ids after `leashctl sessions stop`, `sessions show` and
/// `--session`.
const LEASHCTL_BASH_IDS: &str = r#"
_leashctl_with_ids() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"
    if [[ "$prev" == --session || ( "${COMP_WORDS[1]}" == sessions && ( "${COMP_WORDS[2]}" == stop || "${COMP_WORDS[2]}" == show ) && "$cur" != -* ) ]]; then
        COMPREPLY=($(compgen -W "$(leashctl sessions --json 2>/dev/null | tr ',{' '\n\n' | sed -n 's/^ *"id": *"\([0-9a-f]*\)".*/\1/p')" -- "$cur"))
        return
    fi
    _leashctl "$@"
}
complete -F _leashctl_with_ids -o bashdefault -o default leashctl
"#;

/// zsh: a session id's completions, from the sessions leashd lists for you
/// (`_leash_session_id_list` prints them); every spec of an id uses it.
const ZSH_IDS: &str = r#"
# Session ids, from the sessions leashd lists for you.
_leash_session_id_list() {
    leashctl sessions --json 2>/dev/null | grep -o '"id":"[0-9a-f]*"' | cut -d'"' -f4
}
_leash_session_ids() {
    local -a ids
    ids=(${(f)"$(_leash_session_id_list)"})
    compadd -a ids
}
"#;

/// fish: session ids where `leash attach` and `leash exec` take one (no
/// other word yet after the verb but flags and their values).
const LEASH_FISH_IDS: &str = r#"
# Session ids, from the sessions leashd lists for you.
function __leash_session_ids
    leashctl sessions --json 2>/dev/null | string match -r -a -g '"id":"([0-9a-f]+)"'
end
function __leash_wants_id
    set -l words (commandline -opc)
    set -e words[1]
    contains -- "$words[1]" attach exec; or return 1
    set -e words[1]
    set -l skip 0
    for w in $words
        if test $skip = 1
            set skip 0
            continue
        end
        switch $w
            case -e --env -w --workdir --detach-keys
                set skip 1
            case '-*'
            case '*'
                return 1
        end
    end
end
complete -c leash -n __leash_wants_id -f -a '(__leash_session_ids)'
"#;

/// fish: session ids after `leashctl sessions stop|show` and `--session`.
const LEASHCTL_FISH_IDS: &str = r#"
function __leash_session_ids
    leashctl sessions --json 2>/dev/null | string match -r -a -g '"id":"([0-9a-f]+)"'
end
complete -c leashctl -n '__fish_seen_subcommand_from sessions; and __fish_seen_subcommand_from stop show' -f -a '(__leash_session_ids)'
complete -c leashctl -l session -x -a '(__leash_session_ids)'
"#;

/// zsh: clap's specs of a session id (`':id -- …:_default'`, `--session=[…]:ID:_default'`)
/// completed with [`ZSH_IDS`]'s ids, the helper defined after `#compdef`.
fn zsh_with_ids(script: &str) -> String {
    let mut out = String::new();
    for line in script.lines() {
        let id = line.starts_with("':id -- ") || line.starts_with("'--session=[");
        if id && line.contains(":_default'") {
            out.push_str(&line.replace(":_default'", ":_leash_session_ids'"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
        if line.starts_with("#compdef ") {
            out.push_str(ZSH_IDS);
        }
    }
    out
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
        let mut script = Vec::new();
        clap_complete::generate(generator, &mut cmd, name.clone(), &mut script);
        let leash = name == "leash";
        match shell {
            Shell::Bash => {
                out.extend_from_slice(&script);
                out.extend_from_slice(if leash { LEASH_BASH_IDS } else { LEASHCTL_BASH_IDS }.as_bytes());
            }
            Shell::Zsh => out.extend_from_slice(zsh_with_ids(&String::from_utf8_lossy(&script)).as_bytes()),
            Shell::Fish => {
                out.extend_from_slice(&script);
                out.extend_from_slice(if leash { LEASH_FISH_IDS } else { LEASHCTL_FISH_IDS }.as_bytes());
            }
        }
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
        // attach's and exec's id complete from leashd's sessions.
        assert!(only.starts_with(&format!("#compdef leash\n{ZSH_IDS}")), "{only}");
        assert_eq!(only.matches(":_leash_session_ids' \\").count(), 2, "{only}");
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
