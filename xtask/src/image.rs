//! `cargo xtask image <name>`: build an image from `images/<name>/` locally,
//! with no registry.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::util;

/// The tag an image directory builds.
pub fn tag(name: &str) -> String {
    format!("leash-{name}:latest")
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if args.is_empty() {
        bail!("usage: cargo xtask image <name>... (available: test, test-debian, agents, deb-test, coder)");
    }
    args.iter().try_for_each(|name| build(name))
}

fn build(name: &str) -> anyhow::Result<()> {
    let dir = util::root().join("images").join(name);
    if !dir.join("Dockerfile").exists() {
        bail!("no image {name:?}: {} has no Dockerfile", dir.display());
    }
    // An image built on another of these images (`FROM leash-<name>:latest`)
    // builds that one first when it is missing.
    if let Some(parent) = local_parent(&dir)? {
        let present = Command::new("docker").args(["image", "inspect", &tag(&parent)]).output()?.status.success();
        if !present {
            build(&parent)?;
        }
    }
    let context = tempfile::Builder::new().prefix("leash-image-").tempdir()?;
    copy_dir(&dir, context.path())?;
    if uses_debian_base(&dir)? {
        ensure_debian_base()?;
        let ca = context.path().join("extra-ca");
        std::fs::create_dir_all(&ca)?;
        for entry in std::fs::read_dir("/usr/local/share/ca-certificates").into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "crt") {
                std::fs::copy(entry.path(), ca.join(entry.file_name()))?;
            }
        }
    }
    if name == "test" {
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            bail!("/bin/busybox is missing: install busybox-static (scripts/setup.sh does)");
        }
        std::fs::copy(busybox, context.path().join("busybox")).context("cannot copy /bin/busybox")?;
    }
    let tag = tag(name);
    util::out(&format!("building {tag} from {}", dir.display()));
    let what = format!("building {tag}");
    crate::progress::run(
        &what,
        Command::new("docker").args(["build", "--progress=plain", "-t", &tag]).arg(context.path()),
    )
    .or_else(|_| crate::progress::run(&what, Command::new("docker").args(["build", "-t", &tag]).arg(context.path())))?;
    util::out(&format!("built {tag}"));
    Ok(())
}

/// The local Debian base image that the Debian-based images build on.
pub const DEBIAN_BASE: &str = "leash-debian-base:bookworm";

/// The image of this repository a Dockerfile builds on, if any.
fn local_parent(dir: &Path) -> anyhow::Result<Option<String>> {
    let dockerfile = std::fs::read_to_string(dir.join("Dockerfile"))?;
    Ok(dockerfile.lines().find_map(|l| {
        let name = l.trim().strip_prefix("FROM leash-")?.strip_suffix(":latest")?;
        util::root().join("images").join(name).join("Dockerfile").exists().then(|| name.to_owned())
    }))
}

fn uses_debian_base(dir: &Path) -> anyhow::Result<bool> {
    let dockerfile = std::fs::read_to_string(dir.join("Dockerfile"))?;
    Ok(dockerfile.lines().any(|l| l.trim() == format!("FROM {DEBIAN_BASE}")))
}

/// Makes the Debian base with debootstrap and `docker import` when it is
/// missing: no registry is needed, only a Debian mirror.
fn ensure_debian_base() -> anyhow::Result<()> {
    let present = Command::new("docker").args(["image", "inspect", DEBIAN_BASE]).output()?.status.success();
    if present {
        return Ok(());
    }
    if Command::new("debootstrap").arg("--version").output().is_err() {
        bail!("debootstrap is missing: apt-get install debootstrap (scripts/setup.sh does)");
    }
    let mirror = host_mirror().unwrap_or_else(|| "http://deb.debian.org/debian".to_owned());
    let root = tempfile::Builder::new().prefix("leash-debian-").tempdir()?;
    util::out(&format!("making {DEBIAN_BASE} with debootstrap from {mirror} (about a minute)"));
    crate::progress::run(
        "debootstrap",
        Command::new("debootstrap").args(["--variant=minbase", "bookworm"]).arg(root.path()).arg(&mirror),
    )?;
    let tar = Command::new("tar")
        .arg("-C")
        .arg(root.path())
        .args(["-c", "."])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let status =
        Command::new("docker").args(["import", "-", DEBIAN_BASE]).stdin(tar.stdout.context("tar stdout")?).status()?;
    if !status.success() {
        bail!("docker import of the Debian base failed");
    }
    Ok(())
}

/// The host's Debian mirror, from its apt sources.
pub(crate) fn host_mirror() -> Option<String> {
    let mut texts = Vec::new();
    for entry in std::fs::read_dir("/etc/apt/sources.list.d").into_iter().flatten().flatten() {
        texts.push(std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    texts.push(std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    texts.iter().flat_map(|t| t.lines()).find_map(|l| {
        let l = l.trim();
        let url = l
            .strip_prefix("URIs:")
            .map(str::trim)
            .or_else(|| l.strip_prefix("deb ").and_then(|r| r.split_whitespace().find(|w| w.starts_with("http"))))?;
        (url.ends_with("/debian") || url.ends_with("/debian/")).then(|| url.to_owned())
    })
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
