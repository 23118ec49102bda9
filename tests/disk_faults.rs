//! The disk under the embedded store full, under load.
//!
//! Calls fail with UNAVAILABLE (never a crash, a hang or INTERNAL), nothing
//! acknowledged is lost or corrupted, and the vault serves again once the
//! disk does. After a failed flush sled's store refuses every call until
//! the process restarts (as PostgreSQL does after a failed fsync: what the
//! failed flush left on disk is recovered from the disk, not from memory),
//! so "again" means after a restart; the process keeps answering health
//! and UNAVAILABLE meanwhile, for its supervisor to restart it.
//!
//! The data directory is a small tmpfs the test mounts (we run as root);
//! a watchdog unmounts it if the test dies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
#[path = "common/load.rs"]
mod load;
#[path = "common/postgres.rs"]
mod postgres;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Server;
use tessera::proto::v1;
use tonic::Code;

/// A tmpfs mounted for one test.
struct Tmpfs {
    dir: tempfile::TempDir,
    watchdog: std::process::Child,
}

impl Tmpfs {
    fn mount(megabytes: u32) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tessera-disk-")
            .tempdir()
            .unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs (the test needs root)");
        let watchdog = postgres::watchdog(&format!("umount -l {}", dir.path().display()));
        Self { dir, watchdog }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what is left with one file; returns it.
    fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        // dd stops at ENOSPC: the file takes every free block.
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", filler.display()))
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// Tokenizes until a call fails; returns the failure's code.
async fn until_a_call_fails(server: &Server) -> Code {
    let mut client = server.client("pos").await;
    for n in 0..10_000 {
        let outcome = tokio::time::timeout(
            load::HANG,
            client.tokenize(v1::TokenizeRequest {
                pan: common::test_pan(3, n),
                ..Default::default()
            }),
        )
        .await
        .expect("a tokenize hung");
        if let Err(status) = outcome {
            return status.code();
        }
    }
    panic!("the full disk never failed a call");
}

async fn fault_then_recover(fault: &str) {
    // One fault for now: a read-only remount leaves files open for writing
    // writable on Linux, so it cannot be staged this way.
    let disk = Tmpfs::mount(96);
    let data = disk.path().join("data");
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("server.log");
    let env = [("TESSERA__ACCESS__LOCK_ON_ANOMALY", "false".to_owned())];
    let server = Server::start_dev_with_env(&data, &env, &log);
    let load = load::Load::start(&server, 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let filler = disk.fill();
    assert_eq!(until_a_call_fails(&server).await, Code::Unavailable);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = load.stop().await;
    assert!(!seen.failures.is_empty(), "{fault}: no call failed");
    for (_, code, _) in &seen.failures {
        assert_eq!(
            *code,
            Code::Unavailable,
            "{fault}: a call failed with {code:?}"
        );
    }
    // Still answering, and saying it cannot serve.
    let mut client = server.client("pos").await;
    let status = client
        .tokenize(v1::TokenizeRequest {
            pan: common::test_pan(3, 99_999),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{fault}");
    // The disk is back; the supervisor restarts the process.
    std::fs::remove_file(filler).unwrap();
    server.kill9();
    let server = Server::start_dev_with_env(&data, &env, &log);
    load::check(&server, &seen, fault, Duration::from_secs(5)).await;
    let mut client = server.client("pos").await;
    client
        .tokenize(v1::TokenizeRequest {
            pan: common::test_pan(3, 99_998),
            ..Default::default()
        })
        .await
        .unwrap();
    eprintln!(
        "disk {fault}: {} tokens acknowledged, {} calls failed UNAVAILABLE, all acknowledged \\
         tokens detokenize after the restart",
        seen.acked.len(),
        seen.failures.len()
    );
    server.kill9();
    let pans: Vec<&str> = seen
        .acked
        .iter()
        .take(20)
        .map(|(pan, _)| pan.as_str())
        .collect();
    common::assert_no_pan_leaked(&log, &data, &pans);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_calls_unavailable_and_loses_nothing() {
    fault_then_recover("full").await;
}
