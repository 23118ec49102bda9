//! Shared end-to-end helpers: run the real `tessera` binary on a data dir,
//! capture its logs, and talk to it over gRPC.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera::cli::client::{Bearer, Client};
use tessera::proto::v1::tokenizer_client::TokenizerClient;

/// A `tessera serve --dev` child process.
pub struct Server {
    child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl Server {
    /// Starts the binary on `data_dir`, appending its stderr to `log`, and
    /// waits for the readiness line.
    pub fn start(data_dir: &Path, log: &Path) -> Self {
        let dir = data_dir.to_str().unwrap();
        Self::start_with(
            &[
                "serve",
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                dir,
            ],
            data_dir,
            log,
        )
    }

    /// `serve --dev` on `data_dir` with an extra config file.
    pub fn start_dev_with_config(config: &Path, data_dir: &Path, log: &Path) -> Self {
        let args = [
            "serve",
            "--dev",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ];
        Self::start_with(&args, data_dir, log)
    }

    /// Starts the binary with `args` (a `serve` command line).
    pub fn start_with(args: &[&str], data_dir: &Path, log: &Path) -> Self {
        Self::start_with_env(args, &[], data_dir, log)
    }

    /// Starts the binary with `args` and extra environment variables.
    pub fn start_with_env(
        args: &[&str],
        env: &[(&str, String)],
        data_dir: &Path,
        log: &Path,
    ) -> Self {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .env("RUST_LOG", "info,tessera=trace")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server did not become ready");
        let addr = line
            .strip_prefix("tessera listening on ")
            .expect("readiness line")
            .to_owned();
        Self {
            child,
            addr: format!("http://{addr}"),
            data_dir: data_dir.to_owned(),
            log: log.to_owned(),
        }
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The API key of a dev principal (pos, processor, admin, admin2, other).
    pub fn api_key(&self, who: &str) -> String {
        let creds: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.data_dir.join("dev-credentials.json")).unwrap(),
        )
        .unwrap();
        creds[who]["api_key"].as_str().unwrap().to_owned()
    }

    /// A client authenticated as `who`.
    pub async fn client(&self, who: &str) -> Client {
        client(&self.addr, Some(&self.api_key(who))).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client with the given key (`None` sends no credentials).
pub async fn client(addr: &str, api_key: Option<&str>) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer = match api_key {
        Some(key) => Bearer::new(key).unwrap(),
        None => Bearer::none(),
    };
    TokenizerClient::with_interceptor(channel, bearer)
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path)
            } else {
                out.push(path)
            }
        }
    }
    out
}

/// Asserts that none of `pans` occurs in the log or in any data-dir file,
/// and that the log holds no PAN-shaped number at all.
pub fn assert_no_pan_leaked(log: &Path, data_dir: &Path, pans: &[&str]) {
    let log_bytes = std::fs::read(log).unwrap();
    let mut files = files_under(data_dir);
    files.push(log.to_owned());
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for pan in pans {
            assert!(
                !bytes.windows(pan.len()).any(|w| w == pan.as_bytes()),
                "a PAN appears in {}",
                file.display()
            );
        }
    }
    let text = String::from_utf8_lossy(&log_bytes);
    assert!(
        !tessera::leak::contains_pan(&text),
        "a PAN-shaped number appears in the server log"
    );
}
