//! A highly available PostgreSQL for tests: one etcd and two PostgreSQL
//! nodes managed by Patroni on loopback, with synchronous replication
//! (Debian's `etcd-server` and `patroni`, installed when missing; see
//! ../shared/DEPS.md §7). Nodes can be crashed (SIGKILL to Patroni and its
//! postmaster), restarted, or stopped cleanly (SIGTERM to Patroni: a
//! switchover). Everything is stopped on drop, and by a watchdog if the
//! test process dies without unwinding.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The superuser's password (Tessera reads it from a file).
pub const PASSWORD: &str = "tessera-test-superuser";

/// Installs etcd and Patroni when missing, under a lock.
fn ensure_installed() {
    if Path::new("/usr/bin/patroni").exists() && Path::new("/usr/bin/etcd").exists() {
        return;
    }
    let status = Command::new("flock")
        .args([
            "/tmp/tessera-patroni-install.lock",
            "sh",
            "-c",
            "test -e /usr/bin/patroni -a -e /usr/bin/etcd || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server patroni)",
        ])
        .status()
        .expect("run apt-get");
    assert!(
        status.success(),
        "etcd-server and patroni could not be installed"
    );
}

/// One Patroni-managed PostgreSQL node.
pub struct Node {
    pub name: String,
    pub pg_port: u16,
    pub rest_port: u16,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    patroni: Option<Child>,
}

impl Node {
    /// Whether Patroni's REST API says this node is the primary.
    pub fn is_primary(&self) -> bool {
        rest_ok(self.rest_port, "/primary")
    }

    /// The postmaster's PID, from its pid file.
    fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // A clean environment as the postgres user: a PGPASSWORD inherited
        // here breaks replication and pg_rewind (DEPS.md §7). setpriv
        // execs, so the child is Patroni itself.
        let child = Command::new("env")
            .args([
                "-i",
                "PATH=/usr/bin:/bin",
                "HOME=/var/lib/postgresql",
                "setpriv",
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "patroni",
            ])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.patroni = Some(child);
    }

    /// A node crash: SIGKILL to Patroni and to its postmaster.
    pub fn crash(&mut self) {
        if let Some(mut patroni) = self.patroni.take() {
            let _ = patroni.kill();
            let _ = patroni.wait();
        }
        if let Some(pid) = self.postmaster_pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }

    /// A clean stop: SIGTERM to Patroni, which hands over the primary role
    /// (when it has it) and stops PostgreSQL.
    pub fn stop(&mut self) {
        if let Some(mut patroni) = self.patroni.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &patroni.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if patroni.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = patroni.kill();
            let _ = patroni.wait();
        }
    }

    /// Starts the node's Patroni again (it rejoins as a standby).
    pub fn restart(&mut self) {
        assert!(self.patroni.is_none(), "{} still runs", self.name);
        self.start();
    }
}

/// An etcd and two Patroni nodes.
pub struct Cluster {
    dir: tempfile::TempDir,
    etcd: Child,
    pub nodes: Vec<Node>,
    watchdog: Child,
}

/// Whether Patroni's REST API on `port` answers `path` with 200 (`/primary`,
/// `/sync`, `/health`; etcd's `/health` too).
pub fn rest_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}

/// Waits until `ready` holds, or panics after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

impl Cluster {
    /// Brings up etcd and two nodes, and waits for a primary and a
    /// synchronous standby.
    pub fn start() -> Self {
        ensure_installed();
        let bin = crate::postgres::bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("tessera-patroni-")
            .tempdir()
            .unwrap();
        let (client, peer) = (crate::postgres::free_port(), crate::postgres::free_port());
        let etcd_log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let etcd = Command::new("etcd")
            .args(["--name", "e1", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("e1=http://127.0.0.1:{peer}"),
                "--initial-cluster-state",
                "new",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(etcd_log.try_clone().unwrap()))
            .stderr(Stdio::from(etcd_log))
            .spawn()
            .unwrap();
        wait_for("etcd", Duration::from_secs(20), || {
            rest_ok(client, "/health")
        });
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let watchdog = crate::postgres::watchdog(&format!(
            "pkill -KILL -f 'patroni {dir}/'; pkill -KILL -f 'postgres -D {dir}/'; kill -KILL {etcd}; rm -rf {dir}",
            dir = dir.path().display(),
            etcd = etcd.id(),
        ));
        let mut nodes = Vec::new();
        for name in ["pg1", "pg2"] {
            let (pg_port, rest_port) = (crate::postgres::free_port(), crate::postgres::free_port());
            let config = dir.path().join(format!("{name}.yml"));
            let data = dir.path().join(name);
            std::fs::write(
                &config,
                node_config(name, pg_port, rest_port, client, &data, dir.path(), &bin),
            )
            .unwrap();
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&config)
                .status()
                .unwrap();
            assert!(status.success());
            let mut node = Node {
                name: name.to_owned(),
                pg_port,
                rest_port,
                config,
                data,
                log: dir.path().join(format!("{name}.log")),
                patroni: None,
            };
            node.start();
            nodes.push(node);
            if nodes.len() == 1 {
                // The first node bootstraps the cluster alone.
                wait_for("a primary", Duration::from_secs(60), || {
                    nodes[0].is_primary()
                });
            }
        }
        let cluster = Self {
            dir,
            etcd,
            nodes,
            watchdog,
        };
        cluster.wait_for_sync_standby(Duration::from_secs(90));
        cluster
    }

    /// Waits until some node is the primary and another a synchronous
    /// standby.
    pub fn wait_for_sync_standby(&self, limit: Duration) -> Duration {
        wait_for("a synchronous standby", limit, || {
            self.nodes.iter().any(Node::is_primary)
                && self.nodes.iter().any(|n| rest_ok(n.rest_port, "/sync"))
        })
    }

    /// The index of the primary node, if one answers as primary.
    pub fn primary(&self) -> Option<usize> {
        self.nodes.iter().position(Node::is_primary)
    }

    /// A multi-host connection string as the superuser, with the
    /// read-write session attribute: it finds the primary, whichever it is.
    pub fn url(&self) -> String {
        let ports: Vec<String> = self.nodes.iter().map(|n| n.pg_port.to_string()).collect();
        format!(
            "host={hosts} port={ports} user=postgres dbname=postgres target_session_attrs=read-write",
            hosts = vec!["127.0.0.1"; self.nodes.len()].join(","),
            ports = ports.join(","),
        )
    }

    /// A file holding the superuser's password.
    pub fn password_file(&self) -> PathBuf {
        let path = self.dir.path().join("password");
        std::fs::write(&path, PASSWORD).unwrap();
        path
    }

    /// The directory holding the logs (etcd.log, pg1.log, pg2.log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.crash();
        }
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// Patroni's configuration of one node: tight timings (ttl 10, loop_wait
/// 2, retry_timeout 4), synchronous mode, pg_rewind and slots.
fn node_config(
    name: &str,
    pg_port: u16,
    rest_port: u16,
    etcd_port: u16,
    data: &Path,
    dir: &Path,
    bin: &Path,
) -> String {
    format!(
        r#"scope: tessera-test
name: {name}
restapi:
  listen: 127.0.0.1:{rest_port}
  connect_address: 127.0.0.1:{rest_port}
etcd3:
  hosts: 127.0.0.1:{etcd_port}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 2
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_log_hints: "on"
        max_connections: 100
  initdb:
    - encoding: UTF8
    - data-checksums
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {data}
  bin_dir: {bin}
  pgpass: {dir}/pgpass-{name}
  authentication:
    superuser:
      username: postgres
      password: {PASSWORD}
    replication:
      username: replicator
      password: replicator-test
    rewind:
      username: rewinder
      password: rewinder-test
  parameters:
    unix_socket_directories: '{dir}'
"#,
        data = data.display(),
        dir = dir.display(),
        bin = bin.display(),
    )
}
