//! Debian packages the tests install when they are missing (tests run as
//! root on Debian, as `.ci/run` does on a fresh machine).

#![allow(dead_code, unreachable_pub)]

use std::process::Command;

/// Installs `package` unless `tool` is on the PATH. Concurrent test
/// processes take turns through one lock; the package lists are fetched
/// first when the install finds none.
pub fn ensure_tool(tool: &str, package: &str) {
    let found = || {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap()
            .status
            .success()
    };
    if found() {
        return;
    }
    let script = format!(
        "command -v {tool} >/dev/null || apt-get install -y -q --no-install-recommends {package} \
         || (apt-get update -qq && apt-get install -y -q --no-install-recommends {package})"
    );
    let status = Command::new("flock")
        .args(["/tmp/tessera-apt.lock", "sh", "-c", &script])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .unwrap();
    assert!(status.success() && found(), "apt-get install {package}");
}

/// A command's standard output and error, as text.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A loopback port free a moment ago (for a listener configured by port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
