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
    // The large, rare answers of the client protocol are boxed, so that `Response` (and
    // the `ServerMessage` around it) is the size of the small, frequent ones: every
    // answer and delivery is moved several times between the decoder and its waiter,
    // and a 288-byte enum made those moves a fifth of a client's instructions
    // (callgrind; 136 bytes now, a delivery's size).
    for variant in ["hello", "task", "queue", "payload", "schedule"] {
        config.boxed(format!(".squall.v1.Response.result.{variant}"));
    }
    // Likewise the two large requests, so that `Request` is the size of a publish or
    // an ack on its way to the client's writer task.
    for variant in ["set_queue_config", "add_schedule"] {
        config.boxed(format!(".squall.v1.Request.op.{variant}"));
    }
    config.compile_fds(fds)?;
    Ok(())
}
