//! Compiles `vitrine/v1/*.proto` with `protox` (pure Rust), so building the
//! workspace never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["vitrine/v1/vitrine.proto", "vitrine/v1/shard.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // compile_fds does not write the descriptor set itself; reflection needs it.
    std::fs::write(out.join("vitrine_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // The method names of each service, so that request metrics can label
    // every RPC (and only real ones) without a hand-kept list.
    let mut methods = String::new();
    for service in fds.file.iter().flat_map(|f| &f.service) {
        let name = service.name();
        let list: Vec<String> = service.method.iter().map(|m| format!("{:?}", m.name())).collect();
        methods.push_str(&format!(
            "/// The methods of the `{name}` service, in .proto order.\npub const {}: &[&str] = &[{}];\n",
            name.to_uppercase(),
            list.join(", ")
        ));
    }
    std::fs::write(out.join("vitrine_methods.rs"), methods)?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
