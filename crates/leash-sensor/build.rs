//! Builds the BPF programs in `bpf/` into a libbpf-rs skeleton.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bpf");
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86",
        Ok(other) => panic!("no vmlinux.h for {other}: add bpf/include/vmlinux/<arch>/vmlinux.h"),
        Err(e) => panic!("{e}"),
    };
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("sensor.skel.rs");
    let include = root.join("include");
    let vmlinux = include.join("vmlinux").join(arch);
    libbpf_cargo::SkeletonBuilder::new()
        .source(root.join("sensor.bpf.c"))
        .clang_args([
            "-I".into(),
            include.into_os_string(),
            "-I".into(),
            vmlinux.into_os_string(),
            "-O2".into(),
            "-g".into(),
            "-Wall".into(),
            format!("-D__TARGET_ARCH_{arch}").into(),
        ])
        .build_and_generate(&out)
        .expect("the BPF programs build (needs clang)");
    println!("cargo:rerun-if-changed={}", root.display());
}
