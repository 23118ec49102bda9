//! Regenerates the checked-in gRPC code from `proto/` and fails when it differs.
//!
//! The build never needs `protoc`: the generated code lives in `src/proto/gen/`
//! and this test, run by CI, proves it matches the protos. After editing a
//! `.proto` file, run `cargo test --test proto_bootstrap` once: it rewrites the
//! generated files and fails; the second run passes.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/tessera/v1/tokenizer.proto",
    "proto/tessera/v1/key_admin.proto",
    "proto/tessera/v1/audit.proto",
    "proto/tessera/v1/principals.proto",
];

/// Messages that carry a PAN: their `Debug` is written by hand, redacted, in
/// `src/proto/mod.rs`, so no `{:?}` can ever print a card number.
const REDACTED_DEBUG: &[&str] = &[
    ".tessera.v1.TokenizeRequest",
    ".tessera.v1.DetokenizeResponse",
    ".tessera.v1.AddPrincipalResponse",
    ".tessera.v1.CreateSessionResponse",
];

#[test]
fn generated_code_is_up_to_date() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let gen_dir = root.join("src/proto/gen");
    let scratch = tempfile::tempdir().unwrap();

    let fds = protox::compile(PROTOS.iter().map(|p| root.join(p)), [root.join("proto")]).unwrap();
    let descriptor = fds.encode_to_vec();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .skip_debug(REDACTED_DEBUG.iter().copied())
        .out_dir(scratch.path())
        .compile_fds(fds)
        .unwrap();
    fs::write(scratch.path().join("tessera_descriptor.bin"), descriptor).unwrap();

    let mut stale = Vec::new();
    for entry in fs::read_dir(scratch.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        let fresh = fs::read(&path).unwrap();
        let checked_in = gen_dir.join(&name);
        if fs::read(&checked_in).ok().as_deref() != Some(fresh.as_slice()) {
            fs::write(&checked_in, &fresh).unwrap();
            stale.push(checked_in);
        }
    }
    assert!(
        stale.is_empty(),
        "generated code was stale and has been rewritten; commit it: {stale:?}"
    );
    assert_descriptor_decodes(&gen_dir.join("tessera_descriptor.bin"));
}

fn assert_descriptor_decodes(path: &Path) {
    let bytes = fs::read(path).unwrap();
    let fds = prost_types::FileDescriptorSet::decode(bytes.as_slice()).unwrap();
    assert!(
        fds.file
            .iter()
            .any(|f| f.package.as_deref() == Some("tessera.v1")),
        "descriptor set lacks the tessera.v1 package"
    );
}
