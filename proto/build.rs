//! Compiles `squall.proto` (clients) and `cluster.proto` (node to node) with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=squall.proto");
    println!("cargo:rerun-if-changed=cluster.proto");
    let fds = protox::compile(["squall.proto", "cluster.proto"], ["."])?;
    prost_build::Config::new()
        .bytes(["."])
        .btree_map(["."])
        .compile_fds(fds)?;
    Ok(())
}
