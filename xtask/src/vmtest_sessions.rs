//! `cargo xtask vmtest --sessions`: the session tests
//! (`crates/leashd/tests/sensor.rs` and `hostile.rs`) run unchanged against
//! the workspace's binaries and a real Docker, in a VM that boots the
//! Debian kernel `cargo xtask vmtest` boots (QEMU, TCG): there BPF LSM is an
//! active LSM, where these machines refuse it.
//!
//! The VM has three disks:
//! - the root file system (`rootfs.ext4`): Debian bookworm (debootstrap
//!   minbase) with systemd, docker.io (cgroupfs driver), busybox-static, git
//!   and the kernel's modules,
//!   made without mounting anything (`mkfs.ext4 -d`), kept until its package
//!   list or the kernel changes (`rootfs.key`), with the initramfs that loads
//!   the disk modules and mounts it;
//! - Docker's data (`docker.ext4`): the test images, made here without a
//!   boot: a private dockerd (this machine's, with its own data root, exec
//!   root, socket and containerd and no networking, in
//!   `sessions/docker.tree`) `docker load`s them from this machine's
//!   dockerd, and once it has stopped, its data root becomes the disk
//!   (`mkfs.ext4 -d`, which keeps overlay2's whiteouts, attributes, owners
//!   and modes; checked with debugfs), kept until an image or the root file
//!   system changes (`docker.key`);
//! - the run's own disk: the binaries, test executables and static helpers
//!   just built (release: under TCG a debug build starts too slowly for
//!   leashd's supervisor), at the paths they have here (the test kit finds
//!   the daemons next to the test executable), and the guest's script.
//!
//! All three are attached as snapshots (a run keeps nothing). systemd boots
//! as PID 1 and starts Docker, then the guest's script as a service: it
//! prints the active LSMs, checks the Debian package (`cargo xtask dist`)
//! under systemd (`vmtest_service.sh`: install, `systemctl enable --now
//! leashd`, a member of the `leash` group, the hardening, a restart under a
//! running session, the journal, stop, purge; `leashctl doctor` through it),
//! then runs each test on its own (`--exact`, with `CI=true` and this side's
//! `LEASH_*` variables) and prints its time; every line meant for this side
//! starts with `VMSESSIONS`. The console goes to
//! `<target>/vmtest/sessions-console.log`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{util, vmtest};

/// The root file system's Debian release and packages (besides minbase).
const SUITE: &str = "bookworm";
const PACKAGES: [&str; 9] = [
    "systemd",        // PID 1, as on the machines leash is installed on
    "docker.io",      // the engine the sessions run on (with containerd, runc, iptables, tini)
    "busybox-static", // /bin/busybox, which the tests copy into projects
    "git",            // the hostile suite commits on the "host"
    "kmod",           // modprobe, for dockerd and the kernel's module requests
    "libelf1",        // leash-sensor (libbpf)
    "iproute2",       // ip
    "procps",         // ps, for reading a failure
    "jq",             // the service check reads `--json` and the journal's entries
];
/// Changes whenever the root file system is made differently (its key
/// also holds the initramfs's /init and the files below).
const LAYOUT: &str = "2";

/// Files written into the root file system: Docker's configuration (the
/// cgroupfs driver, which leash-sensor governs; Docker picks the systemd
/// driver under systemd otherwise) and the units that run the guest's
/// script once the system is up (`systemd.unit=leash-vmtest.target` on the
/// kernel's command line), its output on the serial console.
const ROOTFS_FILES: [(&str, &str); 3] = [
    ("etc/docker/daemon.json", "{ \"exec-opts\": [\"native.cgroupdriver=cgroupfs\"] }\n"),
    (
        "etc/systemd/system/leash-vmtest.target",
        "[Unit]\nDescription=leash's VM test run\nRequires=basic.target leash-vmtest.service\nAfter=basic.target\n\
         AllowIsolate=yes\n",
    ),
    (
        "etc/systemd/system/leash-vmtest.service",
        "[Unit]\nDescription=leash's session tests\nWants=docker.service\nAfter=docker.service basic.target\n\n\
         [Service]\nType=exec\nExecStart=/bin/bash /mnt/run/guest.sh\nStandardInput=null\nStandardOutput=tty\n\
         StandardError=inherit\nTTYPath=/dev/ttyS0\nTimeoutStartSec=infinity\nTasksMax=infinity\n\
         LimitNOFILE=1048576\nLimitMEMLOCK=infinity\nDelegate=yes\n",
    ),
];

/// The images the tests run (the hostile suite builds leash-test-volume on
/// leash-test itself).
const IMAGES: [&str; 2] = ["leash-test:latest", "leash-test-debian:latest"];
/// The test targets of leashd run in the VM.
const TESTS: [&str; 2] = ["sensor", "hostile"];
/// What the initramfs loads to mount the disks and to feed the kernel's
/// entropy pool, with their dependencies (from `modules.dep`).
const BOOT_MODULES: [&str; 5] = ["crc32c_generic", "virtio_pci", "virtio_blk", "virtio_rng", "ext4"];

/// The tests' waits are scaled by this (`LEASH_TEST_PATIENCE`, unless it is
/// set here): a test takes 15 to 25 times as long in the guest as here.
const PATIENCE: &str = "6";
/// One test's limit in the guest, in seconds.
const PER_TEST: u32 = 300;
/// The limit of the test run.
const RUN_LIMIT: Duration = Duration::from_secs(30 * 60);

const MIB: u64 = 1 << 20;

/// The initramfs's /init: loads the modules, mounts the root disk (vda),
/// Docker's (vdb) and the run's (vdc), and hands over to systemd.
const INITRD_INIT: &str = r#"#!/bin/busybox sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "VMSESSIONS RESULT: FAIL in the initramfs: $*"; poweroff -f; }
echo "VMSESSIONS initramfs"
for m in $(cat /modules/order); do insmod "/modules/$m" || fail "insmod $m"; done
for i in $(seq 1 100); do [ -b /dev/vdc ] && break; sleep 0.1; done
mkdir -p /newroot
mount -t ext4 /dev/vda /newroot || fail "cannot mount the root disk /dev/vda"
mkdir -p /newroot/mnt/run
mount -t ext4 /dev/vdc /newroot/mnt/run || fail "cannot mount the run's disk /dev/vdc"
mkdir -p /newroot/var/lib/docker
mount -t ext4 /dev/vdb /newroot/var/lib/docker || fail "cannot mount Docker's disk /dev/vdb"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /lib/systemd/systemd
"#;

/// The guest's script (leash-vmtest.service, under systemd), from the
/// run's disk with its settings (`vm.env`), test executables (`tests`),
/// the package and its check (`service.sh`, [`SERVICE`]).
/// The check of the package's leashd under systemd (`service.sh` on the
/// run's disk), which the guest runs before the tests.
const SERVICE: &str = include_str!("vmtest_service.sh");

const GUEST: &str = r#"#!/bin/bash
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
. /mnt/run/vm.env
mark() { echo "VMSESSIONS $*"; }
up() { cut -d' ' -f1 /proc/uptime; }
end() { sync; busybox poweroff -f; }
fail() { mark "RESULT: FAIL $*"; end; }

# What systemd has not mounted already.
for m in securityfs:/sys/kernel/security bpf:/sys/fs/bpf tracefs:/sys/kernel/tracing debugfs:/sys/kernel/debug; do
  mountpoint -q "${m#*:}" || mount -t "${m%%:*}" "${m%%:*}" "${m#*:}" || fail "cannot mount ${m#*:}"
done
mark "systemd up: $(systemctl is-system-running 2>&1), $(systemctl --failed --no-legend | wc -l) failed units"
mark "kernel $(uname -r), $(nproc) CPUs, $(free -m | awk '/Mem:/{print $2}') MiB"
mark "active LSMs: $(cat /sys/kernel/security/lsm)"

# Docker starts before this unit (After=docker.service).
for i in $(seq 1 300); do docker info >/dev/null 2>&1 && break; sleep 1; done
if ! docker info >/dev/null 2>&1; then
  journalctl -u docker -u containerd -n 40 --no-pager
  fail "dockerd did not answer within 300 s (its journal above)"
fi
[ "$(docker info -f '{{.CgroupDriver}}')" = cgroupfs ] || fail "Docker's cgroup driver is not cgroupfs"
mark "dockerd ready ($(docker version --format '{{.Server.Version}}'))"

for i in $IMAGES; do docker image inspect "$i" >/dev/null 2>&1 || fail "the image $i is missing in the VM"; done
# The binaries at the path they have on the host, next to the test executables.
mkdir -p "$TARGET"
mount --bind /mnt/run/target "$TARGET" || fail "cannot bind the run's binaries at $TARGET"
BIN=$TARGET/release
for f in $BINARIES $(cut -d' ' -f2 /mnt/run/tests); do
  case $f in /*) ;; *) f=$BIN/$f ;; esac
  missing=$(ldd "$f" 2>&1 | grep 'not found')
  [ -z "$missing" ] || fail "$f misses libraries in the VM: $missing"
done

failed=
selected() {
  [ -z "$FILTERS" ] && return 0
  for f in $FILTERS; do case $1 in *"$f"*) return 0 ;; esac; done
  return 1
}

# The package's leashd under systemd (its own check, before the tests).
if selected "service::leashd"; then
  mark "BEGIN service::leashd"
  start=$(up)
  timeout -k 10 $((PER_TEST * 3)) bash /mnt/run/service.sh 2>&1 </dev/null
  rc=$?
  secs=$(echo "$(up) $start" | awk '{printf "%.1f", $1 - $2}')
  if [ "$rc" = 0 ]; then
    mark "TEST service::leashd ok $secs"
  else
    mark "TEST service::leashd FAILED $secs (exit $rc)"
    failed="$failed service::leashd"
  fi
fi

while read -r bin exe; do
  for t in $("$exe" --list 2>/dev/null | sed -n 's/: test$//p'); do
    selected "$bin::$t" || continue
    mark "BEGIN $bin::$t"
    # (stdin is the list being read: a test's processes must not eat it)
    start=$(up)
    CI=true LEASH_TEST_PATIENCE=$PATIENCE LEASH_TEST_STATIC_DIR=$STATIC RUST_BACKTRACE=1 \
      timeout -k 10 "$PER_TEST" "$exe" --exact "$t" --test-threads=1 --nocapture 2>&1 </dev/null
    rc=$?
    secs=$(echo "$(up) $start" | awk '{printf "%.1f", $1 - $2}')
    if [ "$rc" = 0 ]; then
      mark "TEST $bin::$t ok $secs"
    else
      [ "$rc" = 124 ] && why="timed out after $PER_TEST s" || why="exit $rc"
      mark "TEST $bin::$t FAILED $secs ($why)"
      failed="$failed $bin::$t"
    fi
  done
done < /mnt/run/tests

if [ -z "$failed" ]; then
  mark "RESULT: PASS"
else
  dmesg | tail -n 30
  mark "RESULT: FAIL:$failed"
fi
end
"#;

/// The LSMs the guest kernel runs: BPF LSM active, as on the machines the
/// LSM tier is for; `--without-bpf-lsm` leaves it out (the sensor then runs
/// the fallback tier there too).
const LSMS: &str = "lockdown,capability,landlock,yama,bpf";
const LSMS_WITHOUT_BPF: &str = "lockdown,capability,landlock,yama";

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let without_bpf_lsm = args.iter().any(|a| a == "--without-bpf-lsm");
    let filters: Vec<String> = args.iter().filter(|a| *a != "--without-bpf-lsm").cloned().collect();
    if let Some(a) = filters.iter().find(|a| a.starts_with('-')) {
        bail!("unknown option {a:?} of vmtest --sessions (it takes --without-bpf-lsm and test-name filters)");
    }
    let lsms = if without_bpf_lsm { LSMS_WITHOUT_BPF } else { LSMS };
    if !rustix::process::geteuid().is_root() {
        bail!("vmtest --sessions makes a root file system (debootstrap, device nodes) and needs root");
    }
    let started = Instant::now();
    let mut times = Timings::default();
    let work = vmtest::dir()?;
    let dir = work.join("sessions");
    std::fs::create_dir_all(work.join("debs"))?;
    std::fs::create_dir_all(&dir)?;
    let _lock = lock(&dir)?;
    let vmlinuz = vmtest::kernel(&work)?;
    let (qemu, libs, data) = vmtest::qemu(&work)?;

    let t = Instant::now();
    let target = util::target_dir()?;
    // Release builds: under TCG a debug leash-policy takes longer to answer
    // than leashd waits for a starting component.
    util::build_binaries(true)?;
    let entry = util::build_static("leash-entry", "leash-entry", true)?;
    let storm = util::build_static("leash-testkit", "leash-storm", true)?;
    let tests = test_executables()?;
    times.add("build (cargo)", t, "");
    let t = Instant::now();
    let [_, deb] = crate::dist::build(true, true, &target.join("vmtest-dist"))?;
    times.add("the Debian package (cargo xtask dist)", t, "");

    let t = Instant::now();
    let (rootfs, initrd, rootfs_key, built) = root_file_system(&dir, &work.join("kpkg"), &vmlinuz)?;
    times.add("root file system", t, if built { "made" } else { "cached" });
    let vm = Vm { qemu, libs, data, vmlinuz, initrd };

    let (t, at) = (Instant::now(), times.parts.len());
    let (docker, made) = docker_disk(&dir, &rootfs_key, &mut times)?;
    let part = (
        "Docker disk with the test images".to_owned(),
        t.elapsed().as_secs_f64(),
        (if made { "made" } else { "cached" }).to_owned(),
    );
    times.parts.insert(at, part);

    let t = Instant::now();
    let run_disk = run_disk(&dir, &target, &tests, &[&entry, &storm], &deb, &filters)?;
    times.add("run disk (binaries, test executables)", t, "");

    util::out(&format!(
        "vmtest: booting {} (lsm={lsms}) with Docker under QEMU (TCG, 2 vCPUs) to run the session tests{}",
        vm.vmlinuz.display(),
        if filters.is_empty() { String::new() } else { format!(" matching {}", filters.join(" ")) }
    ));
    let log = work.join("sessions-console.log");
    let console = boot(&vm, lsms, &[&rootfs, &docker, &run_disk], RUN_LIMIT, &log)?;
    let _ = std::fs::remove_file(&run_disk);
    console.times(&mut times);
    times.total = started.elapsed().as_secs_f64();
    times.print();
    console.verdict("the session tests", "RESULT: PASS", RUN_LIMIT, &log)
}

/// Holds `<dir>/lock` while it lives: runs share the cached disks and the
/// run's disk, so a second run waits for the first.
fn lock(dir: &Path) -> anyhow::Result<std::fs::File> {
    use rustix::fs::{FlockOperation, flock};
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        util::out(&format!("vmtest: another vmtest --sessions holds {}; waiting for it to end", path.display()));
        flock(&file, FlockOperation::LockExclusive).with_context(|| format!("locking {}", path.display()))?;
    }
    Ok(file)
}

/// The test executables of leashd's [`TESTS`], built as `cargo test` builds
/// them: (target name, path).
fn test_executables() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut c = util::cargo();
    c.args(["test", "--release", "--package", "leashd", "--no-run", "--message-format=json"]);
    for t in TESTS {
        c.args(["--test", t]);
    }
    let out = util::output(&mut c)?;
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out).lines() {
        let Ok(m) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let name = m["target"]["name"].as_str().unwrap_or_default();
        if m["reason"] == "compiler-artifact"
            && TESTS.contains(&name)
            && let Some(exe) = m["executable"].as_str()
        {
            found.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    for t in TESTS {
        if !found.iter().any(|(n, _)| n == t) {
            bail!("cargo test --no-run named no executable for leashd's test {t}");
        }
    }
    Ok(found)
}

/// The root file system and its initramfs, made when missing or when the
/// packages or the kernel changed: (image, initramfs, key, made now).
fn root_file_system(dir: &Path, kpkg: &Path, vmlinuz: &Path) -> anyhow::Result<(PathBuf, PathBuf, String, bool)> {
    let kver = vmlinuz
        .file_name()
        .and_then(|n| n.to_str()?.strip_prefix("vmlinuz-"))
        .context("the kernel's file is not named vmlinuz-<version>")?
        .to_owned();
    let init = {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        INITRD_INIT.hash(&mut h);
        ROOTFS_FILES.hash(&mut h);
        h.finish()
    };
    let key =
        format!("layout {LAYOUT}\nsuite {SUITE}\npackages {}\nkernel {kver}\ninit {init:016x}\n", PACKAGES.join(" "));
    let (image, initrd, key_file) = (dir.join("rootfs.ext4"), dir.join("initrd.cpio.gz"), dir.join("rootfs.key"));
    if image.exists() && initrd.exists() && std::fs::read_to_string(&key_file).is_ok_and(|k| k == key) {
        return Ok((image, initrd, key, false));
    }
    let _ = std::fs::remove_file(&key_file);
    let tree = dir.join("rootfs.tree");
    remove_dir(&tree)?;
    std::fs::create_dir_all(&tree)?;
    let mirror = crate::image::host_mirror().unwrap_or_else(|| "http://deb.debian.org/debian".to_owned());
    util::out(&format!(
        "vmtest: making the VM's root file system: debootstrap {SUITE} from {mirror} with {} (a few minutes, once)",
        PACKAGES.join(" ")
    ));
    crate::progress::run(
        "debootstrap (the VM's root file system)",
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(SUITE)
            .arg(&tree)
            .arg(&mirror),
    )
    .context("debootstrap (scripts/setup.sh installs it)")?;
    // The downloaded packages are not needed in the VM.
    for e in std::fs::read_dir(tree.join("var/cache/apt/archives"))?.flatten() {
        if e.path().extension().is_some_and(|x| x == "deb") {
            std::fs::remove_file(e.path())?;
        }
    }
    let modules = tree.join("usr/lib/modules");
    std::fs::create_dir_all(&modules)?;
    util::run(Command::new("cp").arg("-a").arg(kpkg.join("lib/modules").join(&kver)).arg(&modules))
        .context("copying the kernel's modules into the root file system")?;
    util::run(Command::new("chroot").arg(&tree).args(["depmod", "-a", &kver]))
        .context("depmod in the root file system")?;
    std::fs::write(tree.join("etc/hostname"), "leash-vm\n")?;
    std::fs::write(tree.join("etc/hosts"), "127.0.0.1 localhost leash-vm\n::1 localhost ip6-localhost\n")?;
    for (path, text) in ROOTFS_FILES {
        let path = tree.join(path);
        std::fs::create_dir_all(path.parent().context("a root file system file without a directory")?)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }

    let tmp_initrd = dir.join("initrd.cpio.gz.tmp");
    initramfs(dir, &modules.join(&kver), &tmp_initrd)?;
    let tmp_image = dir.join("rootfs.ext4.tmp");
    // Room for what the tests write outside Docker's disk.
    mkfs("leash-root", Some(&tree), &tmp_image, du(&tree)? + 3 * 1024 * MIB)?;
    std::fs::rename(&tmp_initrd, &initrd)?;
    std::fs::rename(&tmp_image, &image)?;
    std::fs::write(&key_file, &key)?;
    remove_dir(&tree)?;
    Ok((image, initrd, key, true))
}

/// The initramfs: busybox, the [`BOOT_MODULES`] in load order, /init.
fn initramfs(dir: &Path, modules: &Path, image: &Path) -> anyhow::Result<()> {
    let read = |f: &str| std::fs::read_to_string(modules.join(f)).with_context(|| format!("reading {f} of the kernel"));
    let order = module_order(&read("modules.dep")?, &read("modules.builtin")?, &BOOT_MODULES)?;
    let tree = dir.join("initramfs.tree");
    vmtest::busybox_tree(&tree)?;
    std::fs::create_dir_all(tree.join("modules"))?;
    let mut names = Vec::new();
    for m in &order {
        let name = Path::new(m).file_name().context("a module path without a name")?;
        std::fs::copy(modules.join(m), tree.join("modules").join(name)).with_context(|| format!("copying {m}"))?;
        names.push(name.to_string_lossy().into_owned());
    }
    std::fs::write(tree.join("modules/order"), names.join("\n") + "\n")?;
    std::fs::write(tree.join("init"), INITRD_INIT)?;
    util::run(Command::new("chmod").arg("755").arg(tree.join("init")))?;
    vmtest::pack(&tree, image)?;
    remove_dir(&tree)
}

/// The `modules.dep` paths to load, dependencies first, for `wanted`
/// (module names; those built into the kernel are skipped).
fn module_order(modules_dep: &str, builtin: &str, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
    fn name(path: &str) -> String {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    }
    fn visit<'a>(
        path: &'a str,
        deps: &HashMap<&'a str, Vec<&'a str>>,
        order: &mut Vec<String>,
        depth: usize,
    ) -> anyhow::Result<()> {
        if depth > 32 {
            bail!("modules.dep has a dependency cycle through {path}");
        }
        if order.iter().any(|o| o == path) {
            return Ok(());
        }
        for d in deps.get(path).into_iter().flatten() {
            visit(d, deps, order, depth + 1)?;
        }
        order.push(path.to_owned());
        Ok(())
    }
    let deps: HashMap<&str, Vec<&str>> = modules_dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m.trim(), d.split_whitespace().collect()))
        .collect();
    let by_name: HashMap<String, &str> = deps.keys().map(|p| (name(p), *p)).collect();
    let builtin: HashSet<String> = builtin.lines().map(name).collect();
    let mut order = Vec::new();
    for w in wanted {
        match by_name.get(*w) {
            Some(path) => visit(path, &deps, &mut order, 0)?,
            None if builtin.contains(*w) => {}
            None => bail!("the kernel has no module {w} (neither in modules.dep nor built in)"),
        }
    }
    Ok(order)
}

/// Docker's disk with the test images, made here when missing or when an
/// image or the root file system changed: (disk, made now).
///
/// A private dockerd on this machine (see [`StagingDockerd`]) loads the
/// images from this machine's dockerd (`docker save | docker load`); once
/// it has stopped, its data root, less what the guest's dockerd must make
/// itself, becomes the disk (`mkfs.ext4 -d`), which is checked to hold
/// overlay2's whiteouts and `trusted.overlay.*` attributes as the tree does.
fn docker_disk(dir: &Path, rootfs_key: &str, times: &mut Timings) -> anyhow::Result<(PathBuf, bool)> {
    let mut key = format!("{rootfs_key}docker disk made here\n");
    let mut ids = Vec::new();
    for image in IMAGES {
        let id = util::output(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", image])).with_context(
            || {
                let name = image.trim_start_matches("leash-").trim_end_matches(":latest");
                format!("the image {image} is missing here (`cargo xtask image {name}` builds it)")
            },
        )?;
        let id = String::from_utf8_lossy(&id).trim().to_owned();
        key.push_str(&format!("image {image} {id}\n"));
        ids.push(id);
    }
    let (disk, key_file) = (dir.join("docker.ext4"), dir.join("docker.key"));
    if disk.exists() && std::fs::read_to_string(&key_file).is_ok_and(|k| k == key) {
        return Ok((disk, false));
    }
    let _ = std::fs::remove_file(&key_file);

    let t = Instant::now();
    let stage = std::fs::canonicalize(dir)?.join("docker.tree");
    let mut daemon = StagingDockerd::start(&stage)?;
    util::out(&format!(
        "vmtest: making the VM's Docker disk here: {} into a private dockerd {} (data root {}; once per image change)",
        IMAGES.join(" "),
        daemon.version,
        daemon.data().display()
    ));
    times.add("  private dockerd ready", t, "");

    let t = Instant::now();
    daemon.load(&IMAGES, &ids)?;
    times.add("  docker save | docker load here", t, "");

    let t = Instant::now();
    daemon.stop()?;
    let data = daemon.data();
    // What the guest's dockerd makes itself: its networks (the default
    // bridge), the state of the containerd it starts, and the local volume
    // driver's device node for this machine's disk.
    for state in ["network", "containerd", "volumes/backingFsBlockDev"] {
        let path = data.join(state);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => remove_dir(&path)?,
            Ok(_) => std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?,
            Err(_) => {}
        }
    }
    let samples = Samples::of(&data)?;
    let tmp = dir.join("docker.ext4.tmp");
    // Sparse: it takes what the images take, with room for the tests'
    // containers and the images the hostile suite builds.
    mkfs("leash-docker", Some(&data), &tmp, (du(&data)? + 16 * 1024 * MIB).max(20 * 1024 * MIB))?;
    if let Err(e) = samples.check(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    util::out(&format!(
        "vmtest: Docker's disk holds the data root's {} whiteouts and {} entries with trusted.overlay.* attributes \
         (samples checked with debugfs)",
        samples.whiteouts, samples.overlay_xattrs
    ));
    std::fs::rename(&tmp, &disk)?;
    daemon.remove()?;
    std::fs::write(&key_file, &key)?;
    times.add("  mkfs.ext4 -d and its check", t, "");
    Ok((disk, true))
}

/// The private dockerd that makes Docker's disk: this machine's dockerd
/// binary with everything of its own in `stage` (data root, exec root with
/// its containerd's state and socket, socket, pid file, config, trust key,
/// log) and no networking (no bridge, no iptables rules, no IP forwarding),
/// so that it shares nothing with the dockerd this machine runs. Dropping
/// it stops the daemon if it still runs, unmounts whatever is mounted below
/// `stage` and removes `stage`.
struct StagingDockerd {
    stage: PathBuf,
    child: Option<std::process::Child>,
    version: String,
}

/// How long the private dockerd may take to answer and to stop.
const STAGING_READY: Duration = Duration::from_secs(120);
const STAGING_STOP: Duration = Duration::from_secs(60);

impl StagingDockerd {
    fn start(stage: &Path) -> anyhow::Result<Self> {
        clear_stage(stage)?;
        // From here on, dropping it cleans up.
        let mut daemon = StagingDockerd { stage: stage.to_owned(), child: None, version: String::new() };
        std::fs::create_dir_all(stage.join("data"))?;
        std::fs::create_dir_all(stage.join("exec"))?;
        // overlay2 cannot keep its layers on overlayfs.
        let fs = util::output(Command::new("stat").args(["--file-system", "--format=%t"]).arg(stage))?;
        if String::from_utf8_lossy(&fs).trim() == "794c7630" {
            bail!(
                "{} is on overlayfs, where Docker's overlay2 storage driver cannot keep its layers; \
                 put the target dir on another file system (ext4, xfs) to make the VM's Docker disk",
                stage.display()
            );
        }
        // A socket's path has at most 107 bytes; the longest is the
        // containerd's that dockerd starts.
        let longest = stage.join("exec/containerd/containerd.sock.ttrpc");
        if longest.as_os_str().len() > 107 {
            bail!(
                "the private dockerd's sockets would be longer than a socket's path may be ({}); \
                 use a shorter target dir",
                longest.display()
            );
        }
        // Its own config (not /etc/docker/daemon.json) and trust key (not
        // /etc/docker/key.json).
        let config = serde_json::json!({ "deprecated-key-path": stage.join("key.json") });
        std::fs::write(stage.join("daemon.json"), config.to_string())?;
        let log = std::fs::File::create(stage.join("dockerd.log"))?;
        // In a network namespace of its own: a dockerd without a bridge
        // deletes the `docker0` interface of the namespace it runs in,
        // which here would be this machine's dockerd's.
        let mut c = Command::new("unshare");
        c.args(["--net", "--", "dockerd"])
            .arg("--data-root")
            .arg(stage.join("data"))
            .arg("--exec-root")
            .arg(stage.join("exec"))
            .arg("--pidfile")
            .arg(stage.join("docker.pid"))
            .arg("--config-file")
            .arg(stage.join("daemon.json"))
            .arg("--host")
            .arg(format!("unix://{}", stage.join("docker.sock").display()))
            // A containerd of its own is started with its state and socket
            // in the exec root; should a system containerd serve instead,
            // these namespaces keep them apart from this machine's dockerd.
            .args(["--containerd-namespace", "leash-vmtest", "--containerd-plugins-namespace", "leash-vmtest-plugins"])
            .args(["--storage-driver", "overlay2"])
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--ip-forward=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        daemon.child = Some(c.spawn().context("cannot run dockerd (the docker.io package) for the VM's Docker disk")?);
        let started = Instant::now();
        loop {
            if let Some(status) = daemon.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                daemon.child = None;
                bail!("the private dockerd exited ({status}); the end of its log:\n{}", daemon.log_tail());
            }
            let out = daemon.docker().args(["version", "--format", "{{.Server.Version}}"]).output()?;
            if out.status.success() {
                daemon.version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                return Ok(daemon);
            }
            if started.elapsed() > STAGING_READY {
                bail!(
                    "the private dockerd did not answer within {} s; the end of its log:\n{}",
                    STAGING_READY.as_secs(),
                    daemon.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn data(&self) -> PathBuf {
        self.stage.join("data")
    }

    /// `docker` talking to this daemon.
    fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.arg("--host").arg(format!("unix://{}", self.stage.join("docker.sock").display()));
        c
    }

    fn log_tail(&self) -> String {
        tail(&self.stage.join("dockerd.log"), 30)
    }

    /// Loads `images` from this machine's dockerd and checks that they are
    /// there with the ids they have here.
    fn load(&self, images: &[&str], ids: &[String]) -> anyhow::Result<()> {
        let mut save = Command::new("docker")
            .arg("save")
            .args(images)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run docker save")?;
        let stream = save.stdout.take().context("docker save's stdout")?;
        let loaded =
            self.docker().args(["load", "--quiet"]).stdin(stream).output().context("cannot run docker load")?;
        let saved = save.wait_with_output().context("waiting for docker save")?;
        if !saved.status.success() {
            bail!(
                "docker save {} failed ({}): {}",
                images.join(" "),
                saved.status,
                String::from_utf8_lossy(&saved.stderr)
            );
        }
        if !loaded.status.success() {
            bail!(
                "docker load into the private dockerd failed ({}): {}\nthe end of its log:\n{}",
                loaded.status,
                String::from_utf8_lossy(&loaded.stderr),
                self.log_tail()
            );
        }
        for (image, id) in images.iter().zip(ids) {
            let out = self.docker().args(["image", "inspect", "-f", "{{.Id}}", image]).output()?;
            let there = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !out.status.success() || there != *id {
                bail!("the private dockerd has not {image} as {id} after docker load (it has {there:?})");
            }
        }
        Ok(())
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after [`STAGING_STOP`]) and
    /// unmounts what is left mounted below the stage.
    fn stop(&mut self) -> anyhow::Result<()> {
        let mut failure = None;
        if let Some(mut child) = self.child.take() {
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let started = Instant::now();
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if started.elapsed() < STAGING_STOP => std::thread::sleep(Duration::from_millis(100)),
                    _ => break None,
                }
            };
            match status {
                Some(s) if s.success() => {}
                Some(s) => failure = Some(format!("the private dockerd exited with {s} when stopped")),
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    failure = Some(format!("the private dockerd did not stop within {} s", STAGING_STOP.as_secs()));
                }
            }
        }
        // A containerd left behind by a dockerd that did not stop.
        stop_leftovers(&self.stage);
        unmount_below(&self.stage)?;
        match failure {
            Some(f) => bail!("{f}; the end of its log:\n{}", self.log_tail()),
            None => Ok(()),
        }
    }

    /// Stops the daemon and removes the stage.
    fn remove(mut self) -> anyhow::Result<()> {
        self.stop()?;
        clear_stage(&self.stage)
    }
}

impl Drop for StagingDockerd {
    fn drop(&mut self) {
        if let Err(e) = self.stop().and_then(|()| clear_stage(&self.stage)) {
            util::err(&format!("vmtest: cleaning up the private dockerd in {}: {e:#}", self.stage.display()));
        }
    }
}

/// Stops a private dockerd (or its containerd) that a run which did not end
/// cleanly left running in `stage`, unmounts what is mounted below it and
/// removes it.
fn clear_stage(stage: &Path) -> anyhow::Result<()> {
    stop_leftovers(stage);
    unmount_below(stage)?;
    remove_dir(stage)
}

/// Stops the processes named by the stage's pid files that are still
/// running from the stage (SIGTERM, then SIGKILL).
fn stop_leftovers(stage: &Path) {
    use rustix::process::{Pid, Signal, kill_process};
    for file in ["docker.pid", "exec/containerd/containerd.pid"] {
        let Some(pid) = std::fs::read_to_string(stage.join(file)).ok().and_then(|p| p.trim().parse::<i32>().ok())
        else {
            continue;
        };
        let ours = |pid: i32| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(stage.as_os_str().len()).any(|w| w == stage.as_os_str().as_encoded_bytes()))
        };
        let Some(p) = Pid::from_raw(pid).filter(|_| ours(pid)) else { continue };
        util::out(&format!("vmtest: stopping process {pid} left running in {}", stage.display()));
        let _ = kill_process(p, Signal::TERM);
        let started = Instant::now();
        while ours(pid) && started.elapsed() < STAGING_STOP {
            std::thread::sleep(Duration::from_millis(100));
        }
        if ours(pid) {
            let _ = kill_process(p, Signal::KILL);
        }
    }
}

/// Unmounts everything mounted at or below `dir` (overlay layers, the data
/// root's bind mount, network namespaces), the latest first.
fn unmount_below(dir: &Path) -> anyhow::Result<()> {
    for point in mounts_below(dir)? {
        // Detached even when busy: nothing may use it by now.
        let out = Command::new("umount").arg("--lazy").arg(&point).output().context("cannot run umount")?;
        if !out.status.success() {
            util::err(&format!("vmtest: umount {}: {}", point.display(), String::from_utf8_lossy(&out.stderr).trim()));
        }
    }
    let left = mounts_below(dir)?;
    if !left.is_empty() {
        let left: Vec<String> = left.iter().map(|p| p.display().to_string()).collect();
        bail!("cannot unmount {} (so {} is kept)", left.join(", "), dir.display());
    }
    Ok(())
}

/// The mount points at or below `dir`, from the latest mount to the first.
fn mounts_below(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStringExt;
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut found = Vec::new();
    for line in info.lines() {
        let Some(field) = line.split(' ').nth(4) else { continue };
        // Spaces, tabs, newlines and backslashes come as \ooo.
        let (mut bytes, mut rest) = (Vec::new(), field.as_bytes());
        while let Some((&b, tail)) = rest.split_first() {
            let octal = tail.get(..3).and_then(|o| u8::from_str_radix(std::str::from_utf8(o).ok()?, 8).ok());
            match octal {
                Some(o) if b == b'\\' => {
                    bytes.push(o);
                    rest = &tail[3..];
                }
                _ => {
                    bytes.push(b);
                    rest = tail;
                }
            }
        }
        let point = PathBuf::from(OsString::from_vec(bytes));
        if point.starts_with(dir) {
            found.push(point);
        }
    }
    found.reverse();
    Ok(found)
}

/// What `mkfs.ext4 -d` must carry from Docker's data root into the disk
/// besides the files' contents: overlay2's whiteouts (character devices
/// 0/0), its opaque directories (`trusted.overlay.*` attributes), owners
/// and modes. Counts them in the tree and keeps a sample of each to look
/// up in the image.
struct Samples {
    whiteouts: usize,
    overlay_xattrs: usize,
    picked: Vec<Sample>,
}

/// An entry of the tree as the image must have it.
struct Sample {
    /// Its path in the image.
    path: String,
    /// Its permission bits.
    mode: u32,
    uid: u32,
    gid: u32,
    whiteout: bool,
    /// Its `trusted.overlay.*` attributes.
    attrs: Vec<(String, Vec<u8>)>,
}

impl Samples {
    fn of(tree: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let mut samples = Samples { whiteouts: 0, overlay_xattrs: 0, picked: Vec::new() };
        let (mut whiteout, mut xattr, mut owner) = (false, false, false);
        let mut dirs = vec![tree.to_owned()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
                let path = e?.path();
                let m = std::fs::symlink_metadata(&path)?;
                if m.is_dir() {
                    dirs.push(path.clone());
                }
                let is_whiteout = m.file_type().is_char_device() && m.rdev() == 0;
                let attrs = overlay_xattrs(&path)?;
                samples.whiteouts += usize::from(is_whiteout);
                samples.overlay_xattrs += usize::from(!attrs.is_empty());
                let rel = format!("/{}", path.strip_prefix(tree)?.display());
                // debugfs takes a quoted path; one without spaces or
                // quotes is simplest to give it.
                let plain = !rel.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\');
                let pick = plain
                    && ((is_whiteout && !whiteout)
                        || (!attrs.is_empty() && !xattr)
                        || ((m.uid() != 0 || m.gid() != 0) && !owner));
                if pick {
                    whiteout |= is_whiteout;
                    xattr |= !attrs.is_empty();
                    owner |= m.uid() != 0 || m.gid() != 0;
                    samples.picked.push(Sample {
                        path: rel,
                        mode: m.mode() & 0o7777,
                        uid: m.uid(),
                        gid: m.gid(),
                        whiteout: is_whiteout,
                        attrs,
                    });
                }
            }
        }
        Ok(samples)
    }

    /// Looks the samples up in `image` with debugfs.
    fn check(&self, image: &Path) -> anyhow::Result<()> {
        let debugfs = |request: String| -> anyhow::Result<String> {
            let out = util::output(Command::new("debugfs").arg("-R").arg(&request).arg(image))?;
            Ok(String::from_utf8_lossy(&out).into_owned())
        };
        for Sample { path, mode, uid, gid, whiteout, attrs } in &self.picked {
            let stat = debugfs(format!("stat \"{path}\""))?;
            let field = |name: &str| {
                let mut words = stat.split_whitespace().skip_while(|w| *w != name);
                words.nth(1).map(str::to_owned)
            };
            let found = (
                field("Mode:").and_then(|m| u32::from_str_radix(&m, 8).ok()),
                field("User:").and_then(|u| u.parse::<u32>().ok()),
                field("Group:").and_then(|g| g.parse::<u32>().ok()),
            );
            if found != (Some(*mode), Some(*uid), Some(*gid)) {
                bail!(
                    "{path} in {} has (mode, uid, gid) {found:?} where the tree has {mode:o}, {uid}, {gid}",
                    image.display()
                );
            }
            if *whiteout
                && !(stat.contains("Type: character special") && stat.contains("Device major/minor number: 00:00"))
            {
                bail!("{path} in {} is not a whiteout (character device 0/0):\n{stat}", image.display());
            }
            if !attrs.is_empty() {
                let list = debugfs(format!("ea_list \"{path}\""))?;
                for (name, value) in attrs {
                    let shown = match std::str::from_utf8(value) {
                        Ok(v) if v.chars().all(|c| c.is_ascii_graphic()) => {
                            format!("{name} ({}) = \"{v}\"", value.len())
                        }
                        _ => format!("{name} ({})", value.len()),
                    };
                    if !list.contains(&shown) {
                        bail!("{path} in {} lacks the attribute {shown}; it has:\n{list}", image.display());
                    }
                }
            }
        }
        Ok(())
    }
}

/// The `trusted.overlay.*` extended attributes of `path` (not followed).
fn overlay_xattrs(path: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    use rustix::fs::{lgetxattr, llistxattr};
    let mut names = vec![0u8; 4096];
    let n =
        llistxattr(path, &mut names[..]).with_context(|| format!("listing the attributes of {}", path.display()))?;
    let mut found = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| n.starts_with(b"trusted.overlay.")) {
        let name = String::from_utf8_lossy(name).into_owned();
        let mut value = vec![0u8; 4096];
        let len = lgetxattr(path, name.as_str(), &mut value[..])
            .with_context(|| format!("reading {name} of {}", path.display()))?;
        value.truncate(len);
        found.push((name, value));
    }
    Ok(found)
}

/// The run's disk: the binaries, test executables and static helpers at
/// their paths below the target dir (`target/…`), the guest's script and
/// settings, and the list of test executables.
fn run_disk(
    dir: &Path,
    target: &Path,
    tests: &[(String, PathBuf)],
    statics: &[&Path],
    deb: &Path,
    filters: &[String],
) -> anyhow::Result<PathBuf> {
    let stage = dir.join("run.tree");
    remove_dir(&stage)?;
    let place = |file: &Path| -> anyhow::Result<PathBuf> {
        let rel = file
            .strip_prefix(target)
            .with_context(|| format!("{} is not below the target dir {}", file.display(), target.display()))?;
        let to = stage.join("target").join(rel);
        std::fs::create_dir_all(to.parent().context("a path without a parent")?)?;
        // A hard link where it can be (same file system), else a copy.
        if std::fs::hard_link(file, &to).is_err() {
            std::fs::copy(file, &to).with_context(|| format!("copying {}", file.display()))?;
        }
        Ok(to)
    };
    for b in util::BINARIES {
        place(&target.join("release").join(b))?;
    }
    for s in statics {
        place(s)?;
    }
    let mut list = String::new();
    for (name, exe) in tests {
        place(exe)?;
        list.push_str(&format!("{name} {}\n", exe.display()));
    }
    let static_dir = statics.first().and_then(|s| s.parent()).context("no static binaries")?;
    let settings = [
        ("TARGET", target.display().to_string()),
        ("STATIC", static_dir.display().to_string()),
        ("PATIENCE", std::env::var("LEASH_TEST_PATIENCE").unwrap_or_else(|_| PATIENCE.to_owned())),
        ("PER_TEST", PER_TEST.to_string()),
        ("FILTERS", filters.join(" ")),
        ("IMAGES", IMAGES.join(" ")),
        ("BINARIES", util::BINARIES.join(" ")),
    ];
    // The tests and daemons read their switches (`LEASH_*`) from the
    // environment: the guest gets this one's.
    let forwarded: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("LEASH_")).collect();
    if !forwarded.is_empty() {
        let names: Vec<&str> = forwarded.iter().map(|(k, _)| k.as_str()).collect();
        util::out(&format!("vmtest: passing {} to the guest", names.join(" ")));
    }
    let mut settings: Vec<(&str, String)> = settings.to_vec();
    settings.extend(forwarded.iter().map(|(k, v)| (k.as_str(), v.clone())));
    write_guest(&stage, &settings, list.as_bytes())?;
    std::fs::copy(deb, stage.join("leash.deb")).with_context(|| format!("copying {}", deb.display()))?;
    let disk = dir.join("run.ext4");
    mkfs("leash-run", Some(&stage), &disk, du(&stage)? + 256 * MIB)?;
    remove_dir(&stage)?;
    Ok(disk)
}

/// Writes the guest's script, its settings (the `LEASH_*` ones exported)
/// and the list of test executables.
fn write_guest(stage: &Path, settings: &[(&str, String)], tests: &[u8]) -> anyhow::Result<()> {
    let env: String = settings
        .iter()
        .map(|(k, v)| {
            let export = if k.starts_with("LEASH_") { "export " } else { "" };
            format!("{export}{k}='{}'\n", v.replace('\'', r"'\''"))
        })
        .collect();
    std::fs::write(stage.join("vm.env"), env)?;
    std::fs::write(stage.join("tests"), tests)?;
    std::fs::write(stage.join("guest.sh"), GUEST)?;
    std::fs::write(stage.join("service.sh"), SERVICE)?;
    util::run(Command::new("chmod").arg("755").arg(stage.join("guest.sh")))
}

/// An ext4 image of `bytes` (sparse) labelled `label`, holding `from`'s tree.
fn mkfs(label: &str, from: Option<&Path>, image: &Path, bytes: u64) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(image);
    std::fs::File::create(image)?.set_len(bytes.div_ceil(MIB) * MIB)?;
    let mut c = Command::new("mkfs.ext4");
    c.args(["-q", "-F", "-m", "0", "-L", label, "-E", "lazy_itable_init=0,lazy_journal_init=0"]);
    if let Some(tree) = from {
        c.arg("-d").arg(tree);
    }
    util::run(c.arg(image)).with_context(|| format!("making {} (mkfs.ext4, from e2fsprogs)", image.display()))
}

/// The bytes below a directory (`du -sb`).
fn du(tree: &Path) -> anyhow::Result<u64> {
    let out = util::output(Command::new("du").arg("-sb").arg(tree))?;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("du printed no size for {}", tree.display()))
}

fn remove_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// The last `n` lines of a file.
fn tail(file: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What boots: QEMU (with its libraries and data), the kernel, the initramfs.
struct Vm {
    qemu: PathBuf,
    libs: OsString,
    data: Vec<PathBuf>,
    vmlinuz: PathBuf,
    initrd: PathBuf,
}

/// Boots the VM with `disks` (vda, vdb, vdc; snapshots: the run keeps
/// nothing of what the guest writes),
/// printing the guest's `VMSESSIONS` lines as they come and every line to
/// `log`; stops it after `limit`.
fn boot(vm: &Vm, lsms: &str, disks: &[&Path], limit: Duration, log: &Path) -> anyhow::Result<Console> {
    let mut cmd = Command::new(&vm.qemu);
    for d in &vm.data {
        cmd.arg("-L").arg(d);
    }
    if !vm.libs.is_empty() {
        cmd.env("LD_LIBRARY_PATH", &vm.libs);
    }
    cmd.args(["-accel", "tcg,thread=multi,tb-size=512", "-smp", "2", "-m", "3G"])
        .args(["-nographic", "-no-reboot", "-nic", "none", "-device", "virtio-rng-pci"])
        .arg("-kernel")
        .arg(&vm.vmlinuz)
        .arg("-initrd")
        .arg(&vm.initrd)
        // No speculation mitigations: page-table isolation makes every
        // system call flush TCG's TLB.
        .arg("-append")
        .arg(format!(
            "console=ttyS0 loglevel=4 lsm={lsms} mitigations=off panic=-1 systemd.unit=leash-vmtest.target \
             systemd.show_status=false"
        ));
    for disk in disks {
        // The guest's flushes are not passed on: nothing is kept.
        let mut spec = OsString::from("file=");
        spec.push(disk.as_os_str());
        spec.push(",format=raw,if=virtio,cache=unsafe,snapshot=on");
        cmd.arg("-drive").arg(spec);
    }
    let errors = log.with_extension("qemu-stderr");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(std::fs::File::create(&errors)?);
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot run {}", vm.qemu.display()))?;
    let stdout = child.stdout.take().context("qemu's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf).replace('\r', "").trim_end_matches('\n').to_owned();
            if tx.send(line).is_err() {
                break;
            }
            buf.clear();
        }
    });
    let mut file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut console = Console::default();
    loop {
        match rx.recv_timeout(limit.saturating_sub(started.elapsed())) {
            Ok(line) => {
                let t = started.elapsed().as_secs_f64();
                writeln!(file, "[{t:7.1}] {line}")?;
                console.line(t, &line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                console.timed_out = true;
                let _ = child.kill();
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().context("waiting for qemu")?;
    if !console.timed_out && !status.success() {
        console.failure = Some(format!("qemu exited with {status}: {}", std::fs::read_to_string(&errors)?.trim()));
    }
    Ok(console)
}

/// What the guest said: its `VMSESSIONS` lines with the seconds since QEMU
/// started, and each test's result.
#[derive(Default)]
struct Console {
    marks: Vec<(f64, String)>,
    /// Each test's name, whether it passed, its seconds in the guest.
    tests: Vec<(String, bool, f64)>,
    /// The lines since the last test began.
    current: Vec<String>,
    timed_out: bool,
    failure: Option<String>,
}

impl Console {
    fn line(&mut self, t: f64, line: &str) {
        let Some(mark) = line.find("VMSESSIONS ").map(|i| &line[i + "VMSESSIONS ".len()..]) else {
            self.current.push(line.to_owned());
            return;
        };
        self.marks.push((t, mark.to_owned()));
        if mark.starts_with("BEGIN ") {
            self.current.clear();
            return;
        }
        if let Some(result) = mark.strip_prefix("TEST ") {
            // NAME ok|FAILED SECONDS [(WHY)]
            let mut words = result.splitn(4, ' ');
            let mut word = || words.next().unwrap_or_default();
            let (name, verdict, secs, why) = (word(), word(), word(), word());
            let ok = verdict == "ok";
            util::out(&format!("  | {t:7.1} s  {name} {verdict} in {secs} s {why}"));
            if !ok {
                for l in &self.current {
                    util::out(&format!("  |   {l}"));
                }
            }
            self.tests.push((name.to_owned(), ok, secs.parse().unwrap_or(0.0)));
            self.current.clear();
            return;
        }
        util::out(&format!("  | {t:7.1} s  {mark}"));
    }

    /// When the first mark starting with `prefix` came.
    fn at(&self, prefix: &str) -> Option<f64> {
        self.marks.iter().find(|(_, m)| m.starts_with(prefix)).map(|(t, _)| *t)
    }

    /// The run's parts, into `times`.
    fn times(&self, times: &mut Timings) {
        if let Some(t) = self.at("initramfs") {
            times.add_secs("boot: QEMU start to the initramfs", t, "");
        }
        if let Some(t) = self.at("systemd up") {
            times.add_secs("boot: QEMU start to systemd up", t, "");
        }
        if let Some(t) = self.at("dockerd ready") {
            times.add_secs("boot: QEMU start to dockerd ready", t, "");
        }
        for (name, ok, secs) in &self.tests {
            times.add_secs(&format!("  {name}"), *secs, if *ok { "ok" } else { "FAILED" });
        }
        if let Some((t, _)) = self.marks.iter().find(|(_, m)| m.starts_with("RESULT:")) {
            times.add_secs("guest, QEMU start to the result", *t, "");
        }
    }

    /// Ok when the guest printed `expected`; else an error saying what
    /// failed or where it stopped.
    fn verdict(&self, what: &str, expected: &str, limit: Duration, log: &Path) -> anyhow::Result<()> {
        if self.marks.iter().any(|(_, m)| m == expected) {
            util::out(&format!("vmtest: {what}: PASS; the console is in {}", log.display()));
            return Ok(());
        }
        let last =
            self.marks.last().map_or("nothing (no VMSESSIONS line)".to_owned(), |(t, m)| format!("{m:?} at {t:.1} s"));
        let failed: Vec<&str> = self.tests.iter().filter(|(_, ok, _)| !ok).map(|(n, _, _)| n.as_str()).collect();
        let why = if self.timed_out {
            format!("the VM did not finish within {} s; the last line it printed for the host: {last}", limit.as_secs())
        } else if let Some(result) = self.marks.iter().find_map(|(_, m)| m.strip_prefix("RESULT: FAIL")) {
            if failed.is_empty() {
                format!("the guest failed: {}", result.trim())
            } else {
                format!("failed: {}", failed.join(", "))
            }
        } else if let Some(f) = &self.failure {
            format!("{f}; the last line it printed for the host: {last}")
        } else {
            format!("the VM stopped without a result after {last}")
        };
        bail!("vmtest: {what}: FAIL: {why}; the console is in {}", log.display())
    }
}

/// The parts of a run and how long each took.
#[derive(Default)]
struct Timings {
    parts: Vec<(String, f64, String)>,
    total: f64,
}

impl Timings {
    fn add(&mut self, part: &str, since: Instant, note: &str) {
        self.add_secs(part, since.elapsed().as_secs_f64(), note);
    }

    fn add_secs(&mut self, part: &str, secs: f64, note: &str) {
        self.parts.push((part.to_owned(), secs, note.to_owned()));
    }

    fn print(&self) {
        util::out("vmtest --sessions: where the time went");
        let width = self.parts.iter().map(|(p, _, _)| p.len()).max().unwrap_or(0).max(5);
        for (part, secs, note) in &self.parts {
            util::out(&format!("  {part:<width$}  {secs:7.1} s  {note}"));
        }
        util::out(&format!("  {:<width$}  {:7.1} s", "total", self.total));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn modules_load_after_their_dependencies_once_each() {
        let dep = [
            "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko",
            "kernel/lib/crc16.ko:",
            "kernel/fs/mbcache.ko:",
            "kernel/fs/jbd2/jbd2.ko:",
            "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko",
            "kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko",
            "kernel/drivers/virtio/virtio.ko:",
            "kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko",
        ]
        .join("\n");
        let dep = dep.as_str();
        let order = super::module_order(
            dep,
            "kernel/crypto/crc32c_generic.ko\n",
            &["crc32c_generic", "virtio_blk", "virtio_rng", "ext4"],
        )
        .unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/drivers/char/hw_random/virtio-rng.ko",
                "kernel/lib/crc16.ko",
                "kernel/fs/mbcache.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/ext4/ext4.ko",
            ]
        );
        assert!(super::module_order(dep, "", &["nope"]).is_err());
    }
}
