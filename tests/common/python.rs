//! Python tools for tests (the AWS KMS emulator, the Python client
//! example): each set of PyPI packages in its own virtualenv under the
//! target dir, installed once; `flock` keeps parallel test processes from
//! installing at the same time.

#![allow(dead_code, unreachable_pub, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

/// The virtualenv `name` with `packages` (pip arguments) installed, made
/// on first use; a marker file says the install completed. Returns the
/// virtualenv's directory.
pub fn venv(name: &str, packages: &[&str]) -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let installed = venv.join(".installed");
    if installed.exists() {
        return venv;
    }
    let quoted: Vec<String> = packages.iter().map(|p| format!("'{p}'")).collect();
    let install = format!(
        "python3 -m venv {venv} && {venv}/bin/pip install -q {packages}",
        venv = venv.display(),
        packages = quoted.join(" "),
    );
    let installed_path = installed.display();
    let script = format!("test -e {installed_path} || ({install} && touch {installed_path})");
    let lock = format!("{}.lock", venv.display());
    let status = Command::new("flock")
        .args([lock.as_str(), "sh", "-c", &script])
        .status()
        .expect("run pip");
    assert!(
        status.success() && installed.exists(),
        "{packages:?} could not be installed into {}",
        venv.display()
    );
    venv
}
