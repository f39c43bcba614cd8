//! Compiles `inference/grpc_service.proto` with protox (pure Rust, no `protoc`) and generates the
//! prost messages plus the tonic client and/or server selected by the crate features.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "inference/grpc_service.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["."])?;
    tonic_prost_build::configure()
        .build_client(std::env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        // Raw tensor contents as `bytes::Bytes`: decoding slices the request buffer, no copy.
        .bytes(".inference")
        .compile_fds(fds)?;
    Ok(())
}
