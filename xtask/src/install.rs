//! `cargo xtask install`: build and install the binaries and the systemd unit.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::util;

/// The unit as shipped names this prefix; installing elsewhere rewrites it.
const UNIT_PREFIX: &str = "/usr/local/bin/";

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut prefix = PathBuf::from("/usr/local");
    let mut unit_dir = PathBuf::from("/etc/systemd/system");
    let mut release = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--prefix" => prefix = it.next().context("--prefix needs a directory")?.into(),
            "--unit-dir" => unit_dir = it.next().context("--unit-dir needs a directory")?.into(),
            "--debug" => release = false,
            other => bail!("install: unknown option {other:?} (--prefix DIR, --unit-dir DIR, --debug)"),
        }
    }
    if !prefix.is_absolute() {
        bail!("--prefix must be an absolute path, not {}", prefix.display());
    }
    let built = util::build_binaries(release)?;
    // leash-entry runs inside arbitrary images, so it is the static build.
    let entry = util::build_static_entry(release)?;
    let bin = prefix.join("bin");
    fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    for name in util::BINARIES {
        let from = if name == "leash-entry" { entry.clone() } else { built.join(name) };
        install_file(&from, &bin.join(name), 0o755)?;
    }
    let unit = fs::read_to_string(util::root().join("packaging/systemd/leashd.service"))?;
    let unit = unit.replace(UNIT_PREFIX, &format!("{}/", bin.display()));
    fs::create_dir_all(&unit_dir).with_context(|| format!("cannot create {}", unit_dir.display()))?;
    let unit_path = unit_dir.join("leashd.service");
    install_bytes(unit.as_bytes(), &unit_path, 0o644)?;
    util::out(&format!("installed {} binaries into {}", util::BINARIES.len(), bin.display()));
    let man = prefix.join("share/man/man1");
    util::run(std::process::Command::new(bin.join("leashctl")).arg("man").arg(&man))?;
    util::run(std::process::Command::new(bin.join("leashd")).arg("--man").arg(&man))?;
    util::out(&format!("installed the manual pages into {} (man leash, man leashctl-policy-check, …)", man.display()));
    // Where each shell looks for a command's completions, a file per command.
    let completions = [
        ("bash", "share/bash-completion/completions", ""),
        ("zsh", "share/zsh/site-functions", "_"),
        ("fish", "share/fish/vendor_completions.d", ""),
    ];
    for (shell, dir, lead) in completions {
        let dir = prefix.join(dir);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for command in ["leash", "leashctl"] {
            let text = util::output(std::process::Command::new(bin.join("leashctl")).args([
                "completions",
                shell,
                "--command",
                command,
            ]))?;
            let name = format!("{lead}{command}{}", if shell == "fish" { ".fish" } else { "" });
            install_bytes(&text, &dir.join(name), 0o644)?;
        }
    }
    util::out(&format!("installed the shell completions (bash, zsh, fish) below {}", prefix.join("share").display()));
    util::out(&format!("installed {}", unit_path.display()));
    util::out("next: systemctl daemon-reload && systemctl enable --now leashd");
    util::out("      (optional) groupadd --system leash, then add the users who may run sessions");
    Ok(())
}

/// Copies atomically (temp file + rename), so a running binary is never
/// overwritten in place.
fn install_file(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    let bytes = fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    install_bytes(&bytes, to, mode)
}

/// Writes `bytes` as `to` atomically (temp file + rename), with `mode`.
fn install_bytes(bytes: &[u8], to: &Path, mode: u32) -> anyhow::Result<()> {
    let tmp = to.with_extension("new");
    fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, to).with_context(|| format!("cannot install {}", to.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unit passes `systemd-analyze verify` (packaging/systemd/verify.sh).
    #[test]
    fn the_systemd_unit_verifies() {
        let script = util::root().join("packaging/systemd/verify.sh");
        let out = std::process::Command::new("bash").arg(&script).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.code() == Some(77) && std::env::var_os("CI").is_none() {
            util::err(&format!("skipping the_systemd_unit_verifies: {}", text.trim()));
            return;
        }
        assert!(out.status.success(), "{text}");
    }

    /// Installing under another prefix rewrites every binary path in the unit.
    #[test]
    fn the_unit_names_binaries_only_under_the_rewritable_prefix() {
        let unit = fs::read_to_string(util::root().join("packaging/systemd/leashd.service")).unwrap();
        let exec: Vec<&str> = unit.lines().filter(|l| l.starts_with("Exec")).collect();
        assert!(!exec.is_empty());
        for line in exec {
            let path = line.split_once('=').unwrap().1.split_whitespace().next().unwrap();
            assert!(path.starts_with(UNIT_PREFIX), "{line}");
        }
    }
}
