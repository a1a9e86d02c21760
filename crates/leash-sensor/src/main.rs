//! `leash-sensor`: the kernel sensor daemon.

use std::process::ExitCode;

// Events are many small allocations each (strings, maps); mimalloc halves
// their cost against glibc's allocator (`cargo xtask bench sensor`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    const NAME: &str = "leash-sensor";
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let [flag, dir, rest @ ..] = args.as_slice()
        && flag == leash_sensor::selftest::CHILD_FLAG
    {
        let hostile = rest.first().is_some_and(|a| a == leash_sensor::selftest::HOSTILE_FLAG);
        return leash_sensor::selftest::child(std::path::Path::new(dir), hostile);
    }
    if let [flag, workload, dir] = args.as_slice()
        && flag == leash_sensor::vmbench::CHILD_FLAG
    {
        return leash_sensor::vmbench::child(&workload.to_string_lossy(), std::path::Path::new(dir));
    }
    if args.first().is_some_and(|a| a == leash_sensor::vmbench::VM_BENCH_FLAG) {
        return leash_sensor::vmbench::vm_bench();
    }
    if args.first().is_some_and(|a| a == leash_sensor::selftest::CORPUS_FLAG) {
        return leash_sensor::selftest::corpus_child();
    }
    if args.first().is_some_and(|a| a == leash_sensor::probe::PROBE_FLAG) {
        return leash_sensor::probe::print();
    }
    if args.first().is_some_and(|a| a == leash_sensor::selftest::VM_CHECK_FLAG) {
        return leash_sensor::selftest::vm_check();
    }
    if let Some((flag, rest)) = args.split_first()
        && flag == leash_sensor::holder::HOLD_FLAG
    {
        return leash_sensor::holder::main(rest);
    }
    if let Some(code) = leash_daemon::process::simple_args(NAME, "the leash kernel sensor") {
        return code;
    }
    leash_daemon::process::give_back_mimalloc();
    leash_daemon::process::run_main(NAME, false, leash_sensor::run)
}
