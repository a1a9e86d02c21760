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
    let [name] = args else { bail!("usage: cargo xtask image <name> (available: test)") };
    let dir = util::root().join("images").join(name);
    if !dir.join("Dockerfile").exists() {
        bail!("no image {name:?}: {} has no Dockerfile", dir.display());
    }
    let context = tempfile::Builder::new().prefix("leash-image-").tempdir()?;
    copy_dir(&dir, context.path())?;
    if name == "test" {
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            bail!("/bin/busybox is missing: install busybox-static (scripts/setup.sh does)");
        }
        std::fs::copy(busybox, context.path().join("busybox")).context("cannot copy /bin/busybox")?;
    }
    let tag = tag(name);
    util::out(&format!("building {tag} from {}", dir.display()));
    util::run(Command::new("docker").args(["build", "--progress=plain", "-t", &tag]).arg(context.path()))
        .or_else(|_| util::run(Command::new("docker").args(["build", "-t", &tag]).arg(context.path())))?;
    util::out(&format!("built {tag}"));
    Ok(())
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
