//! Compiles `squall.proto` (clients) and `cluster.proto` (node to node) with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=squall.proto");
    println!("cargo:rerun-if-changed=cluster.proto");
    let fds = protox::compile(["squall.proto", "cluster.proto"], ["."])?;
    let mut config = prost_build::Config::new();
    config.bytes(["."]).btree_map(["."]);
    // The large variants of a replicated mutation are boxed: an entry holds thousands
    // of mutations, decoded into one Vec whose growth (element size times count, with
    // fresh pages each time) cost a follower more than the decoding itself.
    for variant in ["insert", "patch", "put_queue", "put_schedule"] {
        config.boxed(format!(".squall.cluster.v1.Mutation.kind.{variant}"));
    }
    config.compile_fds(fds)?;
    Ok(())
}
