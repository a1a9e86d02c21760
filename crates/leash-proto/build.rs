//! Compiles `proto/leash/v1/*.proto` with protox, so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files =
        ["common", "manager", "policy", "sensor", "proxy"].map(|name| root.join(format!("leash/v1/{name}.proto")));
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // An event's details move into leash_core's event as they are (no rehash, no copy).
        .btree_map(".leash.v1.Event.details")
        .compile_fds(fds)?;
    // compile_fds knows no paths, so it emits no rerun-if-changed of its own.
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
