//! `cargo xtask dist [--debug] [--out DIR]`: the release artifacts, in
//! `<target>/dist` unless `--out` says: a tarball that unpacks into
//! `/usr/local` (`tar -xzf leash-VERSION-ARCH-linux.tar.gz -C /`) and a
//! Debian package (`leash_VERSION_ARCH.deb`, built with `dpkg-deb` from
//! the maintainer scripts in packaging/debian). Both hold the binaries
//! (leash-entry, which runs inside containers, fully static), the systemd
//! unit, the manual pages, the shell completions and the policies.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::{install, util};

/// The package's maintainer scripts, in packaging/debian.
const SCRIPTS: [&str; 3] = ["postinst", "prerm", "postrm"];

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let (mut release, mut out) = (true, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--debug" => release = false,
            "--out" => out = Some(PathBuf::from(it.next().context("--out needs a directory")?)),
            other => bail!("dist: unknown option {other:?} (--debug, --out DIR)"),
        }
    }
    let out = match out {
        Some(o) => o,
        None => util::target_dir()?.join("dist"),
    };
    for artifact in build(release, !release, &out)? {
        util::out(&format!("built {}", artifact.display()));
    }
    Ok(())
}

/// Builds the binaries and both artifacts into `out`, compressed fast when
/// `fast` (for tests); their paths.
pub fn build(release: bool, fast: bool, out: &Path) -> anyhow::Result<[PathBuf; 2]> {
    let built = util::build_binaries(release)?;
    let entry = util::build_static_entry(release)?;
    if has_interpreter(&fs::read(&entry)?)? {
        bail!("{} is not static: it names a dynamic loader", entry.display());
    }
    let version = env!("CARGO_PKG_VERSION");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let stage = tempfile::Builder::new().prefix("leash-dist-").tempdir()?;

    // The tarball: everything under /usr/local, the unit where systemd
    // looks for local units.
    let tree = stage.path().join("tar");
    install::lay_out(&tree, Path::new("/usr/local"), Path::new("/usr/local/lib/systemd/system"), &built, &entry)?;
    let tarball = out.join(format!("leash-{version}-{}-linux.tar.gz", std::env::consts::ARCH));
    let gzip = if fast { "gzip -1n" } else { "gzip -9n" };
    util::run(
        Command::new("tar")
            .args(["-I", gzip, "--owner=0", "--group=0", "-cf"])
            .arg(&tarball)
            .arg("-C")
            .arg(&tree)
            .arg("usr"),
    )?;

    // The Debian package: under /usr, manual pages compressed as Debian's
    // policy asks, the copyright, and the maintainer scripts.
    let root = stage.path().join("deb");
    install::lay_out(&root, Path::new("/usr"), Path::new("/usr/lib/systemd/system"), &built, &entry)?;
    let man = root.join("usr/share/man/man1");
    for page in fs::read_dir(&man)?.flatten() {
        util::run(Command::new("gzip").arg("-9n").arg(page.path()))?;
    }
    let doc = root.join("usr/share/doc/leash");
    fs::create_dir_all(&doc)?;
    fs::write(doc.join("copyright"), copyright())?;
    let debian = root.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let packaging = util::root().join("packaging/debian");
    for script in SCRIPTS {
        fs::copy(packaging.join(script), debian.join(script))?;
        fs::set_permissions(debian.join(script), fs::Permissions::from_mode(0o755))?;
    }
    let control = fs::read_to_string(packaging.join("control"))?
        .replace("@VERSION@", version)
        .replace("@ARCH@", arch)
        .replace("@SIZE@", &(size_of(&root.join("usr"))? / 1024).to_string());
    fs::write(debian.join("control"), control)?;
    let deb = out.join(format!("leash_{version}_{arch}.deb"));
    let compression: &[&str] = if fast { &["-Zgzip", "-z1"] } else { &[] };
    util::run(Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).args(compression).arg(&root).arg(&deb))?;
    Ok([tarball, deb])
}

/// Debian's machine-readable copyright file.
fn copyright() -> String {
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: leash\n\n\
         Files: *\n\
         Copyright: the leash authors\n\
         License: {}\n \
         On Debian systems, the full text of the Apache License 2.0 is in\n \
         /usr/share/common-licenses/Apache-2.0.\n",
        env!("CARGO_PKG_LICENSE")
    )
}

/// The bytes of the files below `dir`.
fn size_of(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir)?.flatten() {
        let meta = fs::symlink_metadata(e.path())?;
        total += if meta.is_dir() { size_of(&e.path())? } else { meta.len() };
    }
    Ok(total)
}

/// Whether an ELF file names a program interpreter (a `PT_INTERP` program
/// header): a dynamically linked executable does, a static one does not.
fn has_interpreter(elf: &[u8]) -> anyhow::Result<bool> {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    // A 64-bit little-endian ELF: the program headers' offset, size and count.
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        bail!("not a 64-bit little-endian ELF file");
    }
    let (offset, size, count) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let (Some(offset), Some(size), Some(count)) = (offset, size, count) else { bail!("a truncated ELF header") };
    for i in 0..usize::from(count) {
        let at = usize::try_from(offset)? + i * usize::from(size);
        if u32_at(at).context("a truncated program header")? == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The image the package test runs in: a fresh Debian with man-db.
    const IMAGE: &str = "leash-deb-test:latest";

    /// What the package test does in a fresh Debian: lists the file system,
    /// installs the package, uses it, purges it, lists again. Each step that
    /// holds prints a word.
    const SCRIPT: &str = r#"
set -e
list() {
    find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /tmp -o -path /run -o -path /dist \
        -o -path /var/lib/dpkg -o -path /var/log -o -path /var/cache -o -path /var/lib/apt \) -prune -o -print |
        grep -v -e '^/etc/group-$' -e '^/etc/gshadow-$' | sort
}
list > /tmp/before
dpkg -i /dist/leash_*.deb > /tmp/install.log 2>&1 || { cat /tmp/install.log; exit 1; }
echo "version $(leashd --version)"
getent group leash > /dev/null && echo group
leashctl completions bash | grep -q 'complete -F' && echo completions
MANPAGER=cat MANWIDTH=80 man leashctl 2> /dev/null | grep -q 'leashctl-sessions' && echo man
test -x /usr/bin/leash-entry && grep -q '^ExecStart=/usr/bin/leashd$' /usr/lib/systemd/system/leashd.service && echo unit
test -f /usr/share/leash/policies/protect-host.cedar && echo policies
apt-get purge -y leash > /tmp/purge.log 2>&1 || { cat /tmp/purge.log; exit 1; }
getent group leash > /dev/null || echo group-gone
list > /tmp/after
diff /tmp/before /tmp/after && echo nothing-left
"#;

    /// `cargo xtask dist` builds a package that a fresh Debian installs,
    /// uses (`leashd --version`, `leashctl completions bash`, `man
    /// leashctl`) and purges, leaving nothing behind; and a tarball with the
    /// same files under /usr/local.
    #[test]
    fn the_debian_package_installs_works_and_purges_to_nothing() {
        let present = Command::new("docker").args(["image", "inspect", IMAGE]).output();
        if !present.is_ok_and(|o| o.status.success()) {
            let why = format!("{IMAGE} is missing (`cargo xtask image deb-test` builds it)");
            assert!(std::env::var_os("CI").is_none(), "{why}");
            util::err(&format!("skipping the_debian_package_installs_works_and_purges_to_nothing: {why}"));
            return;
        }
        let out = tempfile::tempdir().unwrap();
        let [tarball, deb] = build(false, true, out.path()).unwrap();
        let listed = util::output(Command::new("tar").arg("-tzf").arg(&tarball)).unwrap();
        let listed = String::from_utf8_lossy(&listed);
        for f in [
            "usr/local/bin/leashd",
            "usr/local/bin/leash-entry",
            "usr/local/lib/systemd/system/leashd.service",
            "usr/local/share/man/man1/leashctl.1",
            "usr/local/share/bash-completion/completions/leash",
            "usr/local/share/leash/policies/default.cedar",
        ] {
            assert!(listed.lines().any(|l| l == f), "{f} is not in the tarball:\n{listed}");
        }
        let mount = format!("{}:/dist:ro", deb.parent().unwrap().display());
        let run =
            Command::new("docker").args(["run", "--rm", "-v", &mount, IMAGE, "sh", "-c", SCRIPT]).output().unwrap();
        let said = String::from_utf8_lossy(&run.stdout);
        let err = String::from_utf8_lossy(&run.stderr);
        let version = format!("version leashd {}", env!("CARGO_PKG_VERSION"));
        for word in [&version, "group", "completions", "man", "unit", "policies", "group-gone", "nothing-left"] {
            assert!(said.lines().any(|l| l == word), "{word:?} missing:\n{said}{err}");
        }
    }

    #[test]
    fn a_static_executable_names_no_interpreter() {
        assert!(has_interpreter(&fs::read("/bin/sh").unwrap()).unwrap(), "/bin/sh is dynamic");
        let busybox = Path::new("/bin/busybox");
        if busybox.exists() {
            assert!(!has_interpreter(&fs::read(busybox).unwrap()).unwrap(), "busybox-static is static");
        }
        assert!(has_interpreter(b"#!/bin/sh\n").is_err());
    }
}
