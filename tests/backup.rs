//! Backup and restore of the embedded store: `tessera backup` of a stopped
//! server, `tessera restore` into a new data directory, and a server there
//! that redeems every token and verifies the audit log (signature checked).
//! The snapshot holds the store sealed: no PAN, no key that opens it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{Server, assert_no_pan_leaked, test_pan};
use tessera::proto::v1;

fn tessera(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn backup(data: &Path, out: &Path) -> std::process::Output {
    tessera(&["backup", "--data-dir", path(data), "--out", path(out)])
}

fn restore(from: &Path, data: &Path) -> std::process::Output {
    tessera(&["restore", "--from", path(from), "--data-dir", path(data)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_snapshot_restores_a_vault_that_redeems_every_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let server = Server::start(&data, &log);
    let mut pos = server.client("pos").await;
    let mut issued = Vec::new();
    for n in 0..50 {
        let pan = test_pan(4, n);
        let token = pos
            .tokenize(v1::TokenizeRequest {
                pan: pan.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        issued.push((pan, token));
    }
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let snapshot = backups.join("vault.snapshot");

    // sled holds its store while serving: a backup then is refused.
    let out = backup(&data, &snapshot);
    assert!(!out.status.success(), "a backup of a running store");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by a running server"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!snapshot.exists());
    let status = server.terminate();
    assert!(status.success(), "{status}");

    let out = backup(&data, &snapshot);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&snapshot).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Sealed: the snapshot holds no PAN (separators normalised).
    let pans: Vec<&str> = issued.iter().map(|(pan, _)| pan.as_str()).collect();
    assert_no_pan_leaked(&log, &backups, &pans);

    // A new machine: the KMS material, the state key and the credentials
    // come from their own backups, the store from the snapshot.
    let restored = dir.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    for file in ["dev-master.key", "state.key", "dev-credentials.json"] {
        std::fs::copy(data.join(file), restored.join(file)).unwrap();
    }
    let out = restore(&snapshot, &restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Never over an existing store.
    let again = restore(&snapshot, &restored);
    assert!(!again.status.success());

    let server = Server::start(&restored, &log);
    let mut processor = server.client("processor").await;
    for (pan, token) in &issued {
        let back = processor
            .detokenize(v1::DetokenizeRequest {
                token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .pan;
        assert_eq!(&back, pan);
    }
    let verify = server.admin_cli("operator", &["audit", "verify"]);
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{report}");
    assert!(report.contains("signature"), "{report}");
    server.kill9();
}
