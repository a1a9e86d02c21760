//! `cargo xtask vmtest`: boots Debian's stock kernel under QEMU (TCG: these
//! machines' /dev/kvm cannot boot it) with an initramfs holding busybox and
//! the static sensor, and runs the sensor's VM check there: BPF LSM must
//! load and be active (it cannot on these hosts), and the fallback tier's
//! self-test must deny a forbidden open, exec and connect on that kernel too
//! (with its negative control failing).
//!
//! The kernel and QEMU are Debian packages downloaded and unpacked under
//! `<target>/vmtest` (never installed: the host's /boot and packages stay as
//! they are); later runs reuse them. QEMU's libraries are the ones apt
//! resolves for this machine (what a `qemu-system-x86` install would add),
//! so a machine with none of them installed works as well as one with all.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::util;

/// The guest's /init: mounts what the sensor needs, runs `command`, powers off.
pub(crate) fn init(command: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t securityfs securityfs /sys/kernel/security
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tracefs tracefs /sys/kernel/tracing
mount -t tmpfs tmpfs /tmp
ip link set lo up
echo "VMCHECK kernel $(uname -r)"
{command}
sync
poweroff -f
"#
    )
}

pub(crate) fn dir() -> anyhow::Result<PathBuf> {
    Ok(util::target_dir()?.join("vmtest"))
}

/// `apt-get download`s packages into `debs` (skipping ones already there).
fn download(debs: &Path, packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !std::fs::read_dir(debs)
                .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(&format!("{p}_"))))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    util::out(&format!("vmtest: downloading {}", missing.join(" ")));
    with_package_lists(|| {
        crate::progress::run(
            "apt-get download",
            Command::new("apt-get").arg("download").args(&missing).current_dir(debs),
        )
    })
}

/// Runs an apt query, and once more after `apt-get update` when it fails
/// (a machine that never refreshed its package lists).
fn with_package_lists<T>(apt: impl Fn() -> anyhow::Result<T>) -> anyhow::Result<T> {
    apt().or_else(|_| {
        util::run(Command::new("apt-get").arg("update").arg("-qq"))?;
        apt()
    })
}

fn unpack(deb: &Path, into: &Path) -> anyhow::Result<()> {
    util::run(Command::new("dpkg").arg("-x").arg(deb).arg(into))
}

fn debs_named(debs: &Path, prefix: &str) -> anyhow::Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(debs)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
        .collect())
}

/// The guest kernel (bzImage) from Debian's `linux-image-amd64`.
pub(crate) fn kernel(work: &Path) -> anyhow::Result<PathBuf> {
    let kpkg = work.join("kpkg");
    if let Some(k) = find_vmlinuz(&kpkg) {
        return Ok(k);
    }
    let depends = util::output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    let name = String::from_utf8_lossy(&depends)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: ").filter(|d| d.starts_with("linux-image-")).map(str::to_owned))
        .context("apt-cache names no kernel package for linux-image-amd64")?;
    let debs = work.join("debs");
    download(&debs, &[&name])?;
    for d in debs_named(&debs, &format!("{name}_"))? {
        unpack(&d, &kpkg)?;
    }
    find_vmlinuz(&kpkg).context("the kernel package holds no /boot/vmlinuz-*")
}

fn find_vmlinuz(kpkg: &Path) -> Option<PathBuf> {
    std::fs::read_dir(kpkg.join("boot"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
}

/// The packages `apt-get install --no-install-recommends qemu-system-x86`
/// would add to this machine: QEMU and every library it needs that is not
/// installed here, as apt resolves them (never a list kept by hand, which
/// is right only for the machine it was made on).
fn qemu_packages() -> anyhow::Result<Vec<String>> {
    let simulated = with_package_lists(|| {
        util::output(
            Command::new("apt-get")
                .args(["install", "--simulate", "--no-install-recommends", "qemu-system-x86"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    })
    .context("apt-get cannot resolve qemu-system-x86 on this machine")?;
    let packages = inst_lines(&String::from_utf8_lossy(&simulated));
    if packages.is_empty() {
        bail!(
            "apt-get names no packages for qemu-system-x86 (is it installed? then /usr/bin/qemu-system-x86_64 is used)"
        );
    }
    Ok(packages)
}

/// The package names of a simulated install's `Inst NAME (…)` lines.
fn inst_lines(simulated: &str) -> Vec<String> {
    simulated.lines().filter_map(|l| l.strip_prefix("Inst ")?.split_whitespace().next().map(str::to_owned)).collect()
}

/// The libraries `ldd` cannot find for `bin` with `libs` on the path.
fn missing_libraries(bin: &Path, libs: &std::ffi::OsStr) -> anyhow::Result<Vec<String>> {
    let out = util::output(Command::new("ldd").arg(bin).env("LD_LIBRARY_PATH", libs))?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| l.contains("not found"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// QEMU: the machine's own when `qemu-system-x86` is installed, else
/// unpacked under `work` with every package apt says it needs (installing
/// it would replace the machine's qemu-utils); (binary, library path, data
/// dirs).
pub(crate) fn qemu(work: &Path) -> anyhow::Result<(PathBuf, std::ffi::OsString, Vec<PathBuf>)> {
    let system = Path::new("/usr/bin/qemu-system-x86_64");
    if system.exists() && missing_libraries(system, "".as_ref())?.is_empty() {
        return Ok((system.to_path_buf(), Default::default(), vec![]));
    }
    let root = work.join("qemu-root");
    let bin = root.join("usr/bin/qemu-system-x86_64");
    // Packages unpack their libraries under /usr/lib or /lib.
    let libs = std::env::join_paths(["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"].map(|d| root.join(d)))?;
    if bin.exists() && missing_libraries(&bin, &libs)?.is_empty() {
        return Ok((bin, libs, vec![root.join("usr/share/qemu"), root.join("usr/share/seabios")]));
    }
    let debs = work.join("debs");
    let packages = qemu_packages()?;
    util::out(&format!("vmtest: unpacking QEMU from {} packages", packages.len()));
    let names: Vec<&str> = packages.iter().map(String::as_str).collect();
    download(&debs, &names)?;
    for p in &packages {
        for d in debs_named(&debs, &format!("{p}_"))? {
            unpack(&d, &root)?;
        }
    }
    let missing = missing_libraries(&bin, &libs)?;
    if !missing.is_empty() {
        bail!(
            "the unpacked qemu still misses {} (unpacked: {}; see `ldd {}`)",
            missing.join(", "),
            packages.join(" "),
            bin.display()
        );
    }
    Ok((bin, libs, vec![root.join("usr/share/qemu"), root.join("usr/share/seabios")]))
}

/// The initramfs: busybox and its applets, the static sensor, /init.
fn initramfs(work: &Path, sensor: &Path) -> anyhow::Result<PathBuf> {
    let tree = work.join("initramfs");
    busybox_tree(&tree)?;
    std::fs::copy(sensor, tree.join("bin/leash-sensor"))?;
    std::fs::write(tree.join("init"), init("/bin/leash-sensor --vm-check"))?;
    util::run(Command::new("chmod").arg("755").arg(tree.join("init")))?;
    let image = work.join("initramfs.cpio.gz");
    pack(&tree, &image)?;
    Ok(image)
}

/// A fresh initramfs tree at `tree`: busybox and its applets in /bin, the
/// console and null devices.
pub(crate) fn busybox_tree(tree: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(tree);
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).context("the host's /bin/busybox (busybox-static)")?;
    let applets = util::output(Command::new("/bin/busybox").arg("--list"))?;
    for a in String::from_utf8_lossy(&applets).split_whitespace() {
        let link = tree.join("bin").join(a);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    util::run(Command::new("mknod").args(["-m", "600"]).arg(tree.join("dev/console")).args(["c", "5", "1"]))?;
    util::run(Command::new("mknod").args(["-m", "666"]).arg(tree.join("dev/null")).args(["c", "1", "3"]))?;
    Ok(())
}

/// Packs an initramfs tree into a gzipped cpio archive.
pub(crate) fn pack(tree: &Path, image: &Path) -> anyhow::Result<()> {
    util::run(
        Command::new("sh").current_dir(tree).arg("-c").arg(format!(
            "find . -print0 | cpio --null -o -H newc --owner=0:0 --quiet | gzip -1 > {}",
            image.display()
        )),
    )
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("--sessions") => return crate::vmtest_sessions::run(&args[1..]),
        Some(other) => {
            bail!("unknown option {other:?} of vmtest (it takes --sessions [--without-bpf-lsm] [FILTER...])")
        }
        None => {}
    }
    if !rustix::process::geteuid().is_root() {
        bail!("vmtest builds an initramfs with device nodes and needs root");
    }
    let started = Instant::now();
    let work = dir()?;
    std::fs::create_dir_all(work.join("debs"))?;
    let vmlinuz = kernel(&work)?;
    let (qemu, libs, data) = qemu(&work)?;
    let sensor = util::build_static("leash-sensor", "leash-sensor", true)?;
    let image = initramfs(&work, &sensor)?;
    util::out(&format!("vmtest: booting {} under QEMU (TCG)", vmlinuz.display()));
    let boot = Instant::now();
    let mut cmd = Command::new("timeout");
    cmd.arg("300").arg(&qemu);
    for d in &data {
        cmd.arg("-L").arg(d);
    }
    if !libs.is_empty() {
        cmd.env("LD_LIBRARY_PATH", &libs);
    }
    cmd.args(["-accel", "tcg,tb-size=32", "-smp", "1", "-m", "256M", "-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&image)
        .args(["-append", "console=ttyS0 lsm=lockdown,capability,landlock,yama,bpf panic=-1"])
        .stdin(Stdio::null());
    let out = cmd.output().context("running qemu")?;
    let console = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    std::fs::write(work.join("console.log"), console.as_bytes())?;
    let lines: Vec<&str> = console.lines().filter(|l| l.contains("VMCHECK") || l.contains("Kernel panic")).collect();
    for l in &lines {
        util::out(&format!("  | {}", l.trim()));
    }
    let boot_s = boot.elapsed().as_secs_f64();
    if lines.iter().any(|l| l.contains("VMCHECK RESULT: PASS")) {
        util::out(&format!(
            "vmtest: PASS (guest {boot_s:.1} s, total {:.1} s); console in {}",
            started.elapsed().as_secs_f64(),
            work.join("console.log").display()
        ));
        return Ok(());
    }
    if out.status.code() == Some(124) {
        bail!(
            "vmtest: FAIL: the guest did not power off within 300 s; the console is in {}",
            work.join("console.log").display()
        )
    }
    bail!("vmtest: FAIL after {boot_s:.1} s; the console is in {}", work.join("console.log").display())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_simulated_install_names_its_packages() {
        let simulated = "NOTE: This is only a simulation!\n\
            The following packages will be REMOVED:\n  qemu-utils\n\
            Remv qemu-utils [1:10.0.2+ds-2]\n\
            Inst libnl-3-200 (3.7.0-0.2+b1 Debian:12.14/oldstable [amd64])\n\
            Inst qemu-system-x86 (1:7.2+dfsg-7+deb12u18+b2 Debian:12.14/oldstable [amd64])\n\
            Conf libnl-3-200 (3.7.0-0.2+b1 Debian:12.14/oldstable [amd64])\n";
        assert_eq!(super::inst_lines(simulated), ["libnl-3-200", "qemu-system-x86"]);
    }
}
