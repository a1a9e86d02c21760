//! Small helpers shared by the verbs.
#![allow(clippy::print_stdout, clippy::print_stderr, reason = "xtask reports to the terminal")]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is one level below the root").to_path_buf()
}

/// Prints to stdout.
pub fn out(s: &str) {
    println!("{s}");
}

/// Prints to stderr.
pub fn err(s: &str) {
    eprintln!("{s}");
}

/// The cargo that runs us.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

/// Runs a command, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout.
pub fn output(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// The binaries a leash installation consists of.
pub const BINARIES: [&str; 7] =
    ["leash", "leashctl", "leashd", "leash-policy", "leash-sensor", "leash-proxy", "leash-entry"];

/// The packages that build [`BINARIES`].
pub const BIN_PACKAGES: [&str; 6] =
    ["leash-cli", "leashd", "leash-policy", "leash-sensor", "leash-proxy", "leash-entry"];

/// Builds every binary; returns the directory holding them.
pub fn build_binaries(release: bool) -> anyhow::Result<PathBuf> {
    let mut c = cargo();
    c.arg("build").arg("--bins");
    for p in BIN_PACKAGES {
        c.args(["--package", p]);
    }
    if release {
        c.arg("--release");
    }
    run(&mut c)?;
    Ok(target_dir()?.join(if release { "release" } else { "debug" }))
}

/// Builds leash-entry statically linked (glibc `crt-static`), so it runs in
/// any image. A separate target dir keeps the flag away from the rest of the
/// workspace (proc macros cannot be static) and from its build lock.
pub fn build_static_entry(release: bool) -> anyhow::Result<PathBuf> {
    build_static("leash-entry", "leash-entry", release)
}

/// Builds one binary of a package statically (glibc `crt-static`, in
/// `<target>/static`), to run inside containers; returns its path.
pub fn build_static(package: &str, bin: &str, release: bool) -> anyhow::Result<PathBuf> {
    let target = target_dir()?.join("static");
    let triple = host_triple()?;
    let mut c = cargo();
    c.args(["build", "--package", package, "--bin", bin, "--target", &triple])
        .arg("--target-dir")
        .arg(&target)
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    if release {
        c.arg("--release");
    }
    run(&mut c)?;
    Ok(target.join(&triple).join(if release { "release" } else { "debug" }).join(bin))
}

/// The host's target triple, from `rustc -vV`.
pub fn host_triple() -> anyhow::Result<String> {
    let out = output(Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into())).arg("-vV"))?;
    String::from_utf8_lossy(&out)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV printed no host line")
}

/// Cargo's target directory.
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let meta: serde_json::Value =
        serde_json::from_slice(&output(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?)?;
    Ok(PathBuf::from(meta["target_directory"].as_str().context("no target_directory in cargo metadata")?))
}

/// The host as a session's container sees it: the default route's gateway
/// in a throwaway container of `image`, read by the parser leashd uses
/// (never the engine's report of its networks, which may lack a gateway).
pub fn host_address(image: &str) -> anyhow::Result<String> {
    let args = leash_core::hostside::probe_args(image);
    let route = output(Command::new("docker").args(args))
        .with_context(|| format!("no host address: `docker {}` failed", args.join(" ")))?;
    leash_core::hostside::default_gateway(
        &String::from_utf8_lossy(&route),
        &format!("/proc/net/route of `docker {}`", args.join(" ")),
    )
    .map(|a| a.to_string())
    .map_err(|e| anyhow::anyhow!("no host address: {e}"))
}

/// User and system CPU seconds a process has used (`/proc/PID/stat`).
pub fn cpu_seconds(pid: u64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    // USER_HZ: 100 on every Linux this runs on.
    (field(11) + field(12)) as f64 / 100.0
}
