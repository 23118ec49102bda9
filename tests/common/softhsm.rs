//! SoftHSM2 for tests: installs it when missing, makes a token with a label
//! unique to the test, and deletes the token afterwards.
//!
//! Tokens live in SoftHSM's default token directory and are told apart by
//! label (PKCS#11 slot ids change as tokens come and go, so Tessera finds
//! tokens by label too). Using the default configuration means no
//! `SOFTHSM2_CONF` has to be set inside the test process.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use tessera::kms::pkcs11::Pkcs11Config;

/// Where Debian's softhsm2 package puts the module.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Installs softhsm2 with apt when the module is missing. Serialised with
/// `flock` so parallel test processes do not fight over the dpkg lock.
pub fn ensure_installed() {
    if Path::new(MODULE).exists() {
        return;
    }
    let status = Command::new("flock")
        .args([
            "/tmp/tessera-softhsm-install.lock",
            "sh",
            "-c",
            &format!(
                "test -e {MODULE} || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2)"
            ),
        ])
        .status()
        .expect("run apt-get");
    assert!(
        status.success() && Path::new(MODULE).exists(),
        "softhsm2 could not be installed"
    );
}

/// A token made for one test.
pub struct Token {
    pub label: String,
    dir: tempfile::TempDir,
    pub pin_file: PathBuf,
}

impl Token {
    /// Initialises a fresh token with a unique label.
    pub fn new() -> Self {
        ensure_installed();
        let dir = tempfile::tempdir().unwrap();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let label = format!("tessera-test-{}-{n}", std::process::id());
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                &label,
                "--so-pin",
                "0000",
                "--pin",
                "1234",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "softhsm2-util: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pin_file = dir.path().join("hsm.pin");
        std::fs::write(&pin_file, "1234\n").unwrap();
        Self {
            label,
            dir,
            pin_file,
        }
    }

    /// A config for a KEK labelled `key_label` on this token.
    pub fn config(&self, key_label: &str) -> Pkcs11Config {
        Pkcs11Config {
            module: PathBuf::from(MODULE),
            token_label: self.label.clone(),
            key_label: key_label.to_owned(),
            pin_file: self.pin_file.clone(),
        }
    }
}

/// Runs a PKCS#11 step, again after a moment when SoftHSM fails it: every
/// test process shares the default token directory, and a token another
/// process deletes while this one lists the slots fails the listing with
/// CKR_GENERAL_ERROR. A real HSM has no such neighbours.
pub fn retrying<T, E: std::fmt::Debug>(mut step: impl FnMut() -> Result<T, E>) -> T {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match step() {
            Ok(value) => return value,
            Err(e) if attempt < 5 => {
                eprintln!("softhsm step failed (attempt {attempt}), retrying: {e:?}");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => panic!("softhsm step failed {attempt} times: {e:?}"),
        }
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        let _ = Command::new("softhsm2-util")
            .args(["--delete-token", "--token", &self.label])
            .output();
    }
}
