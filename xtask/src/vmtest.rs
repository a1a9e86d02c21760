//! `cargo xtask vmtest`: boots Debian's stock kernel under QEMU (TCG: these
//! machines' /dev/kvm cannot boot it) with an initramfs holding busybox and
//! the static sensor, and runs the sensor's VM check there: BPF LSM must
//! load and be active (it cannot on these hosts), and the fallback tier's
//! self-test must deny a forbidden open, exec and connect on that kernel too
//! (with its negative control failing).
//!
//! The kernel and QEMU are Debian packages downloaded and unpacked under
//! `<target>/vmtest` (never installed: the host's /boot and packages stay as
//! they are); later runs reuse them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::util;

/// Libraries QEMU 7.2 needs that a minimal Debian lacks.
const QEMU_LIBS: [&str; 10] = [
    "libcapstone4",
    "libfdt1",
    "libpmem1",
    "librdmacm1",
    "libibverbs1",
    "libslirp0",
    "libvdeplug2",
    "libndctl6",
    "libdaxctl1",
    "libnl-route-3-200",
];

const INIT: &str = r#"#!/bin/busybox sh
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
/bin/leash-sensor --vm-check
sync
poweroff -f
"#;

fn dir() -> anyhow::Result<PathBuf> {
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
    let fetch = || util::run(Command::new("apt-get").arg("download").args(&missing).current_dir(debs));
    if fetch().is_err() {
        // A machine that never refreshed its package lists.
        util::run(Command::new("apt-get").arg("update").arg("-qq"))?;
        fetch()?;
    }
    Ok(())
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
fn kernel(work: &Path) -> anyhow::Result<PathBuf> {
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

/// QEMU, unpacked with the libraries it lacks; (binary, library dir, data dirs).
fn qemu(work: &Path) -> anyhow::Result<(PathBuf, PathBuf, Vec<PathBuf>)> {
    let root = work.join("qemu-root");
    let bin = root.join("usr/bin/qemu-system-x86_64");
    let libs = root.join("usr/lib/x86_64-linux-gnu");
    let debs = work.join("debs");
    if !bin.exists() {
        download(&debs, &["qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios"])?;
        for prefix in ["qemu-system-x86_", "qemu-system-common_", "qemu-system-data_", "seabios_"] {
            for d in debs_named(&debs, prefix)? {
                unpack(&d, &root)?;
            }
        }
    }
    let missing = |bin: &Path| -> anyhow::Result<bool> {
        let out = util::output(Command::new("ldd").arg(bin).env("LD_LIBRARY_PATH", &libs))?;
        Ok(String::from_utf8_lossy(&out).contains("not found"))
    };
    if missing(&bin)? {
        download(&debs, &QEMU_LIBS)?;
        for l in QEMU_LIBS {
            for d in debs_named(&debs, &format!("{l}_"))? {
                unpack(&d, &root)?;
            }
        }
        if missing(&bin)? {
            bail!("the unpacked qemu still misses libraries (see `ldd {}`)", bin.display());
        }
    }
    Ok((bin, libs, vec![root.join("usr/share/qemu"), root.join("usr/share/seabios")]))
}

/// The initramfs: busybox and its applets, the static sensor, /init.
fn initramfs(work: &Path, sensor: &Path) -> anyhow::Result<PathBuf> {
    let tree = work.join("initramfs");
    let _ = std::fs::remove_dir_all(&tree);
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
    std::fs::copy(sensor, tree.join("bin/leash-sensor"))?;
    std::fs::write(tree.join("init"), INIT)?;
    util::run(Command::new("chmod").arg("755").arg(tree.join("init")))?;
    util::run(Command::new("mknod").args(["-m", "600"]).arg(tree.join("dev/console")).args(["c", "5", "1"]))?;
    util::run(Command::new("mknod").args(["-m", "666"]).arg(tree.join("dev/null")).args(["c", "1", "3"]))?;
    let image = work.join("initramfs.cpio.gz");
    util::run(
        Command::new("sh").current_dir(&tree).arg("-c").arg(format!(
            "find . -print0 | cpio --null -o -H newc --owner=0:0 --quiet | gzip -1 > {}",
            image.display()
        )),
    )?;
    Ok(image)
}

pub fn run(_args: &[String]) -> anyhow::Result<()> {
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
    cmd.args(["-accel", "tcg,tb-size=32", "-smp", "1", "-m", "256M", "-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&image)
        .args(["-append", "console=ttyS0 lsm=lockdown,capability,landlock,yama,bpf panic=-1"])
        .env("LD_LIBRARY_PATH", &libs)
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
    bail!("vmtest: FAIL after {boot_s:.1} s; the console is in {}", work.join("console.log").display())
}
