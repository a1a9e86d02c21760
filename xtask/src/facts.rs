//! `cargo xtask facts`: what the tests rely on, read off this machine the
//! way the product reads it, so that a failure elsewhere can be read from a
//! CI log alone: the engines, the kernel, the cgroup layout, the host side of
//! a session's network, the resolvers a container gets, and what the kernel
//! lets the sensor enforce.

use std::process::Command;

use crate::util;

/// One fact, or why it could not be read.
fn fact(name: &str, value: anyhow::Result<String>) {
    match value {
        Ok(v) => util::out(&format!("{name:<16} {}", v.trim())),
        Err(e) => util::out(&format!("{name:<16} unknown: {e:#}")),
    }
}

fn text(cmd: &mut Command) -> anyhow::Result<String> {
    Ok(String::from_utf8_lossy(&util::output(cmd)?).trim().to_owned())
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
    text(Command::new("docker").args(args))
}

pub fn run() -> anyhow::Result<()> {
    let image = crate::image::tag("test");
    fact("kernel", std::fs::read_to_string("/proc/sys/kernel/osrelease").map_err(Into::into));
    fact(
        "engine",
        docker(&[
            "version",
            "--format",
            "Docker {{.Server.Version}} (API {{.Server.APIVersion}}), CLI {{.Client.Version}}",
        ]),
    );
    fact("engine cgroups", docker(&["info", "--format", "driver {{.CgroupDriver}}, cgroup v{{.CgroupVersion}}"]));
    fact(
        "podman",
        text(Command::new("docker").env("DOCKER_HOST", "unix:///run/podman/podman.sock").args([
            "version",
            "--format",
            "{{.Server.Version}} (API {{.Server.APIVersion}})",
        ])),
    );
    let layout = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "unified (cgroup v2 at /sys/fs/cgroup)"
    } else if std::path::Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        "hybrid (v1 controllers, v2 at /sys/fs/cgroup/unified)"
    } else {
        "legacy (no cgroup v2 mounted)"
    };
    fact("cgroup layout", Ok(layout.to_owned()));
    fact("host address", util::host_address(&image).map(|a| format!("{a} (default route of a {image} container)")));
    fact(
        "resolvers",
        docker(&["run", "--rm", "--pull", "never", "--entrypoint", "cat", &image, "/etc/resolv.conf"]).map(|r| {
            let servers: Vec<&str> =
                r.lines().filter_map(|l| l.trim().strip_prefix("nameserver")).map(str::trim).collect();
            format!("{} (a container's /etc/resolv.conf)", servers.join(" "))
        }),
    );
    fact(
        "memfd_noexec",
        std::fs::read_to_string("/proc/sys/vm/memfd_noexec")
            .map(|v| format!("vm.memfd_noexec = {}", v.trim()))
            .or_else(|_| Ok("absent (kernel before 6.3)".to_owned())),
    );
    let sensor = util::target_dir()?.join("debug").join("leash-sensor");
    fact(
        "sensor probe",
        if sensor.exists() {
            text(Command::new(&sensor).arg("--probe")).map(|p| p.replace('\n', "; "))
        } else {
            Err(anyhow::anyhow!("{} is not built", sensor.display()))
        },
    );
    fact(
        "active LSMs",
        std::fs::read_to_string("/sys/kernel/security/lsm")
            .map_err(|e| anyhow::anyhow!("/sys/kernel/security/lsm: {e} (securityfs is not mounted)")),
    );
    fact(
        "qemu",
        Ok(if std::path::Path::new("/usr/bin/qemu-system-x86_64").exists() {
            "the machine's /usr/bin/qemu-system-x86_64".to_owned()
        } else {
            "none installed (vmtest unpacks Debian's)".to_owned()
        }),
    );
    Ok(())
}
