//! A throwaway PostgreSQL for tests: installs Debian's `postgresql` when
//! `pg_ctl` is missing, copies a cluster made once by `initdb` (as the
//! postgres user; initdb refuses root), starts it on a free loopback port,
//! and stops it when dropped. A watchdog stops it too if the test process
//! dies without unwinding (a timeout kill), so no postmaster outlives its
//! test.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The directory of PostgreSQL's server programs, installing them first
/// when missing. Serialised with `flock` so parallel test processes do not
/// fight over the dpkg lock.
pub fn bin_dir() -> PathBuf {
    let find = || {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path().join("bin"))
            .filter(|bin| bin.join("pg_ctl").exists())
            .collect();
        dirs.sort();
        dirs.pop()
    };
    if let Some(dir) = find() {
        return dir;
    }
    let status = Command::new("flock")
        .args([
            "/tmp/tessera-postgres-install.lock",
            "sh",
            "-c",
            "ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)",
        ])
        .status()
        .expect("run apt-get");
    assert!(status.success(), "postgresql could not be installed");
    find().expect("pg_ctl after installing postgresql")
}

/// Runs `program` from `bin` as the postgres user.
fn as_postgres(bin: &Path, program: &str) -> Command {
    let mut command = Command::new("runuser");
    command
        .args(["-u", "postgres", "--"])
        .arg(bin.join(program))
        .env_remove("PGPASSWORD");
    command
}

/// Makes the template cluster once per machine and PostgreSQL major
/// version, under a lock: initdb writes a scratch directory that is
/// renamed into place only when complete, so a killed initdb leaves no
/// broken template behind.
fn template(bin: &Path) -> PathBuf {
    let major = bin
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("pg");
    let template = PathBuf::from(format!("/tmp/tessera-pg-template-{major}"));
    let script = format!(
        "test -e {t}/PG_VERSION || (rm -rf {t}.tmp && install -d -o postgres -m 700 {t}.tmp \
         && runuser -u postgres -- {initdb} -D {t}.tmp -A trust -U postgres --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null \
         && mv {t}.tmp {t})",
        t = template.display(),
        initdb = bin.join("initdb").display(),
    );
    let status = Command::new("flock")
        .args(["/tmp/tessera-pg-template.lock", "sh", "-c", &script])
        .status()
        .expect("run initdb");
    assert!(status.success(), "initdb failed");
    template
}

/// A running PostgreSQL, stopped on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// The server options it started with, to start it again the same way.
    options: String,
    watchdog: std::process::Child,
}

impl Postgres {
    /// Starts a fresh cluster (fsync off: these tests kill Tessera, not
    /// PostgreSQL).
    pub fn start() -> Self {
        Self::start_with(&["-c", "fsync=off"])
    }

    /// Starts a fresh cluster with extra server `options`.
    pub fn start_with(options: &[&str]) -> Self {
        let bin = bin_dir();
        let template = template(&bin);
        let dir = tempfile::Builder::new()
            .prefix("tessera-pg-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .status()
            .unwrap();
        assert!(status.success(), "copy the template cluster");
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let port = free_port();
        let mut server_options = format!(
            "-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections=100 -c shared_buffers=16MB",
            sock = dir.path().display()
        );
        for option in options {
            server_options.push(' ');
            server_options.push_str(option);
        }
        pg_ctl_start(&bin, &data, &dir.path().join("server.log"), &server_options);
        // Also for a cluster that is never dropped (a test binary's
        // shared one): stopped and removed once the process is gone.
        let watchdog = watchdog(&format!(
            "runuser -u postgres -- {pg_ctl} stop -D {data} -m immediate >/dev/null 2>&1; rm -rf {dir}",
            pg_ctl = bin.join("pg_ctl").display(),
            data = data.display(),
            dir = dir.path().display(),
        ));
        Self {
            dir,
            bin,
            port,
            options: server_options,
            watchdog,
        }
    }

    /// Stops the server at once, as a crash would (`-m immediate`).
    pub fn stop(&self) {
        let status = as_postgres(&self.bin, "pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl stop failed");
    }

    /// Starts the stopped server again, on the same port.
    pub fn restart(&self) {
        pg_ctl_start(
            &self.bin,
            &self.data_dir(),
            &self.dir.path().join("server.log"),
            &self.options,
        );
    }

    /// A key=value connection string to database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// Creates an empty database and returns its connection string.
    pub async fn database(&self, name: &str) -> String {
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        self.url(name)
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin, "pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// `pg_ctl start`, waiting until it accepts connections.
fn pg_ctl_start(bin: &Path, data: &Path, log: &Path, options: &str) {
    let status = as_postgres(bin, "pg_ctl")
        .arg("start")
        .arg("-w")
        .arg("-D")
        .arg(data)
        .arg("-l")
        .arg(log)
        .arg("-o")
        .arg(options)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctl start failed");
}

/// Runs `cleanup` (a shell command) once this test process is gone, in a
/// process group of its own: a timeout that kills the test's group must
/// leave the watchdog to clean up what outlives the test (PostgreSQL runs
/// in a session of its own).
pub fn watchdog(cleanup: &str) -> std::process::Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {cleanup}",
            pid = std::process::id(),
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
