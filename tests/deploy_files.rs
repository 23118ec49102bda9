//! The files in `deploy/` checked by the tools their platforms use, and
//! against the code's defaults: a unit that `systemd-analyze` accepts with
//! no warning and scores as hardened.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/tools.rs"]
mod tools;

use std::path::Path;
use std::process::Command;

use tools::ensure_tool;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

/// The unit with `ExecStart` pointing at this build's binary:
/// `systemd-analyze verify` checks that the command exists.
fn unit_for_this_build(dir: &Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(format!("{DEPLOY}/systemd/tessera.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/tessera serve --config /etc/tessera/tessera.toml")
    );
    let path = dir.join("tessera.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/tessera", env!("CARGO_BIN_EXE_tessera")),
    )
    .unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_without_a_warning_and_is_hardened() {
    ensure_tool("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(dir.path());
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    // A misspelled directive only warns and still exits 0.
    assert!(
        verify.status.success() && verify.stderr.is_empty() && verify.stdout.is_empty(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    // systemd's exposure score: 0 is fully locked down, 10 is unprotected,
    // and "OK" is below 2. The threshold counts in tenths: 20 is 2.0.
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        security.status.success(),
        "{}",
        String::from_utf8_lossy(&security.stdout)
    );
}
