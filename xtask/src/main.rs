//! `cargo xtask`: leash's build tool.
//!
//! Verbs: `install`, `uninstall`, `dist`, `tidy`, `image <name>`, `entry`, `bench <what>`,
//! `vmtest`, `facts`, `fuzz`, `hostile`, `demo`.

mod bench;
mod bench_lsm;
mod bench_mcp;
mod bench_proxy;
mod bench_rows;
mod bench_support;
mod bench_ui;
mod demo;
mod dist;
mod facts;
mod fuzz;
mod hostile;
mod image;
mod install;
mod progress;
mod tidy;
mod util;
mod vmtest;
mod vmtest_sessions;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <verb> [options]

verbs:
  install [--prefix DIR] [--unit-dir DIR] [--debug]
                  build the binaries (release unless --debug) and install them
                  into DIR/bin (default /usr/local) with the systemd unit
                  (default /etc/systemd/system)
  uninstall [--prefix DIR] [--unit-dir DIR]
                  remove what install put there (binaries, unit, manual pages,
                  completions, policies)
  dist [--debug] [--out DIR]
                  build the release artifacts into DIR (default <target>/dist): a
                  tarball that unpacks into /usr/local and a Debian package
  tidy            check the dependency rules and file headers
  image <name>    build images/<name> as leash-<name>:latest (test, test-debian, agents, deb-test, coder)
  entry [--release]
                  build the static leash-entry and print its path
  bench startup   cold start to all-healthy, restart-to-healthy, idle RSS
  bench policy     the authorizer at 10/100/1000 statements; compiling 1000 to tables
  bench session-start
                  `leash -- true` against `docker run --rm`, with leashd's breakdown
  bench attach    `leash attach` to a detached session's first byte, against
                  `docker logs --follow` of its container
  bench exec      `leash exec ID -- true` against `docker exec CONTAINER true`
  bench sensor [--events-only|--new-files]
                  governed vs ungoverned open/exec loops, host loops, the event rate;
                  --new-files: 10,000 new files with and without identity tracing
  bench lsm       in the VM: open, new-file and exec loops on the LSM tier, the
                  fallback tier and ungoverned (ratios within the VM)
  bench ui        audit ingest and queries over 10M events; WebSocket fan-out to 5 followers
  vmtest          boot Debian's kernel under QEMU and check the sensor there
  vmtest --sessions [--without-bpf-lsm] [FILTER...]
                  boot a Debian VM with Docker under QEMU and run the session tests
                  (crates/leashd/tests/sensor.rs, hostile.rs) there, each test whose
                  name contains a FILTER (all without one); --without-bpf-lsm boots
                  the kernel with BPF LSM inactive
  fuzz [TARGET] [--time S]
                  run the fuzz targets in fuzz/ (nightly, cargo-fuzz), S seconds each (600)
  hostile         the hostile-agent suite in real sessions, each attempt reported
                  held or bypassed with the event that decided it
  facts           print what the tests rely on here (engines, kernel, cgroups,
                  host address, resolvers, BPF LSM), as CI does before the tests
  demo            build, start leashd if needed, run a scripted session, show its events
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("install") => install::run(&args[1..]),
        Some("dist") => dist::run(&args[1..]),
        Some("uninstall") => install::uninstall(&args[1..]),
        Some("tidy") => tidy::run(),
        Some("bench") => bench::run(&args[1..]),
        Some("demo") => demo::run(&args[1..]),
        Some("image") => image::run(&args[1..]),
        Some("vmtest") => vmtest::run(&args[1..]),
        Some("facts") => facts::run(),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("hostile") => hostile::run(&args[1..]),
        Some("entry") => util::build_static_entry(args.get(1).is_some_and(|a| a == "--release")).map(|p| {
            util::out(&p.display().to_string());
        }),
        Some("-h" | "--help" | "help") => {
            util::out(USAGE);
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(anyhow::anyhow!("unknown verb {other:?}\n{USAGE}")),
        None => Err(anyhow::anyhow!("a verb is required\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            util::err(&format!("xtask: {e:#}"));
            ExitCode::FAILURE
        }
    }
}
