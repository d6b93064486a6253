//! Compiles `proto/` into Rust with a pure-Rust protobuf compiler (protox), so
//! a fresh machine without `protoc` can build livepush. The encoded descriptor
//! set is kept too: the poller serves it through gRPC reflection.

use prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/livepush/v1/livepush.proto"];
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("livepush_descriptor.bin"), fds.encode_to_vec())?;
    // Small per-call buffers: see src/codec.rs.
    tonic_prost_build::configure().codec_path("crate::codec::LeanCodec").compile_fds(fds)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
