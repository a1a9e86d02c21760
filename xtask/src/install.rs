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
    let unit_path = lay_out(Path::new("/"), &prefix, &unit_dir, &built, &entry)?;
    util::out(&format!("installed {} binaries into {}", util::BINARIES.len(), prefix.join("bin").display()));
    util::out(&format!(
        "installed the manual pages into {} (man leash, man leashctl-policy-check, …)",
        prefix.join("share/man/man1").display()
    ));
    util::out(&format!("installed the shell completions (bash, zsh, fish) below {}", prefix.join("share").display()));
    util::out(&format!("installed {}", unit_path.display()));
    util::out("next: systemctl daemon-reload && systemctl enable --now leashd");
    util::out("      (optional) groupadd --system leash, then add the users who may run sessions");
    Ok(())
}

/// `cargo xtask uninstall [--prefix DIR] [--unit-dir DIR]`: removes what
/// `install` with the same options installed (binaries, unit, manual pages,
/// completions, policies). Stops nothing: `leashctl stop --all` first.
pub fn uninstall(args: &[String]) -> anyhow::Result<()> {
    let mut prefix = PathBuf::from("/usr/local");
    let mut unit_dir = PathBuf::from("/etc/systemd/system");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--prefix" => prefix = it.next().context("--prefix needs a directory")?.into(),
            "--unit-dir" => unit_dir = it.next().context("--unit-dir needs a directory")?.into(),
            other => bail!("uninstall: unknown option {other:?} (--prefix DIR, --unit-dir DIR)"),
        }
    }
    let sock = Path::new(leash_core::layout::DEFAULT_RUNTIME_DIR).join("leashd.sock");
    if sock.exists() {
        util::out(&format!("note: {} exists; if leashd runs, `leashctl stop --all` stops it", sock.display()));
    }
    let mut files: Vec<PathBuf> = util::BINARIES.iter().map(|b| prefix.join("bin").join(b)).collect();
    files.push(unit_dir.join("leashd.service"));
    let man = prefix.join("share/man/man1");
    for page in fs::read_dir(&man).into_iter().flatten().flatten() {
        let name = page.file_name().to_string_lossy().into_owned();
        if name.starts_with("leash") && name.contains(".1") {
            files.push(page.path());
        }
    }
    for command in ["leash", "leashctl"] {
        files.push(prefix.join("share/bash-completion/completions").join(command));
        files.push(prefix.join("share/zsh/site-functions").join(format!("_{command}")));
        files.push(prefix.join("share/fish/vendor_completions.d").join(format!("{command}.fish")));
    }
    let mut removed = 0;
    for f in files.iter().filter(|f| f.exists()) {
        fs::remove_file(f).with_context(|| format!("cannot remove {}", f.display()))?;
        removed += 1;
    }
    let policies = prefix.join("share/leash");
    if policies.exists() {
        fs::remove_dir_all(&policies).with_context(|| format!("cannot remove {}", policies.display()))?;
        removed += 1;
    }
    util::out(&format!(
        "removed {removed} files and directories below {} and {}",
        prefix.display(),
        unit_dir.display()
    ));
    util::out("next: systemctl daemon-reload; `leashctl gc --yes` before this removes what a crashed leash left");
    Ok(())
}

/// Lays out an installation below `dest` (`/` to install here; a staging
/// directory for a package): the binaries from `built` (leash-entry from
/// `entry`) in `PREFIX/bin`, the systemd unit naming them in `unit_dir`,
/// the manual pages, the shell completions and the policies where each is
/// looked for under `prefix`. The unit's path as installed.
pub fn lay_out(dest: &Path, prefix: &Path, unit_dir: &Path, built: &Path, entry: &Path) -> anyhow::Result<PathBuf> {
    let under = |p: &Path| dest.join(p.strip_prefix("/").unwrap_or(p));
    let bin = under(&prefix.join("bin"));
    fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    for name in util::BINARIES {
        let from = if name == "leash-entry" { entry.to_owned() } else { built.join(name) };
        install_file(&from, &bin.join(name), 0o755)?;
    }
    let unit = fs::read_to_string(util::root().join("packaging/systemd/leashd.service"))?;
    let unit = unit.replace(UNIT_PREFIX, &format!("{}/", prefix.join("bin").display()));
    let units = under(unit_dir);
    fs::create_dir_all(&units).with_context(|| format!("cannot create {}", units.display()))?;
    let unit_path = units.join("leashd.service");
    install_bytes(unit.as_bytes(), &unit_path, 0o644)?;
    let man = under(&prefix.join("share/man/man1"));
    util::run(std::process::Command::new(bin.join("leashctl")).arg("man").arg(&man))?;
    util::run(std::process::Command::new(bin.join("leashd")).arg("--man").arg(&man))?;
    // Where each shell looks for a command's completions, a file per command.
    let completions = [
        ("bash", "share/bash-completion/completions", ""),
        ("zsh", "share/zsh/site-functions", "_"),
        ("fish", "share/fish/vendor_completions.d", ""),
    ];
    for (shell, dir, lead) in completions {
        let dir = under(&prefix.join(dir));
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
    // The shipped policies and examples, to read and start from.
    let policies = under(&prefix.join("share/leash/policies"));
    for dir in ["", "examples", "profiles"] {
        let from = util::root().join("policies").join(dir);
        fs::create_dir_all(policies.join(dir))?;
        for f in fs::read_dir(&from)?
            .flatten()
            .filter(|f| f.path().extension().is_some_and(|e| e == "cedar" || e == "cedarschema"))
        {
            install_file(&f.path(), &policies.join(dir).join(f.file_name()), 0o644)?;
        }
    }
    Ok(unit_path.strip_prefix(dest).map_or(unit_path.clone(), |p| Path::new("/").join(p)))
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

    /// `uninstall` removes every file `install` put under a prefix.
    #[test]
    fn uninstall_removes_every_file_install_put_there() {
        let tmp = tempfile::tempdir().unwrap();
        let prefix = tmp.path().join("usr");
        let units = tmp.path().join("units");
        let args = |extra: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = ["--prefix", prefix.to_str().unwrap(), "--unit-dir", units.to_str().unwrap()]
                .map(str::to_owned)
                .to_vec();
            v.extend(extra.iter().map(|s| (*s).to_owned()));
            v
        };
        run(&args(&["--debug"])).unwrap();
        let files = |dir: &Path| -> Vec<PathBuf> {
            let mut out = Vec::new();
            let mut stack = vec![dir.to_owned()];
            while let Some(d) = stack.pop() {
                for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                    if e.path().is_dir() { stack.push(e.path()) } else { out.push(e.path()) }
                }
            }
            out
        };
        let installed = files(tmp.path());
        assert!(installed.iter().any(|f| f.ends_with("bin/leashd")) && installed.len() > 40, "{installed:?}");
        uninstall(&args(&[])).unwrap();
        assert_eq!(files(tmp.path()), Vec::<PathBuf>::new());
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
