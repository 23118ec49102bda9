//! A local AWS KMS emulator for tests: the PyPI package `moto` in server
//! mode, installed into a virtualenv under the target dir when missing,
//! started on a free loopback port, and stopped when dropped.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Region the tests use.
pub const REGION: &str = "us-east-1";

/// Installs moto into its virtualenv once and returns its server binary.
pub fn ensure_installed() -> PathBuf {
    crate::python::venv("moto-venv", &["moto[server]"]).join("bin/moto_server")
}

/// A running moto server.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    /// Starts moto on a free loopback port and waits until it accepts.
    pub fn start() -> Self {
        let server = ensure_installed();
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Stops the emulator without closing its port (SIGSTOP): connections
    /// are still accepted, nothing answers, as with a KMS behind a dead
    /// network path.
    pub fn pause(&self) {
        assert!(self.signal("-STOP"), "kill -STOP moto");
    }

    /// Lets a paused emulator answer again (SIGCONT), its keys intact.
    pub fn resume(&self) {
        assert!(self.signal("-CONT"), "kill -CONT moto");
    }

    fn signal(&self, signal: &str) -> bool {
        Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Environment for a child process that should reach this emulator.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
