//! The real binary on PostgreSQL: `serve --dev` with the store chosen by
//! environment variables (the one-command developer path), `tessera
//! migrate`, a start-up that refuses a database without the schema, and
//! the database stopped and started again under load.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
#[path = "common/load.rs"]
mod load;
#[path = "common/postgres.rs"]
mod postgres;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, assert_no_pan_leaked};
use tessera::proto::v1;

const VISA: &str = "4111111111111111";

/// The variables that put `serve --dev` on `url`.
fn on_postgres(url: &str, migrate: bool) -> Vec<(&'static str, String)> {
    vec![
        ("TESSERA__STORE__BACKEND", "postgres".to_owned()),
        ("TESSERA__STORE__URL", url.to_owned()),
        ("TESSERA__STORE__MIGRATE", migrate.to_string()),
    ]
}

async fn tokenize(server: &Server, pan: &str) -> String {
    let mut pos = server.client("pos").await;
    pos.tokenize(v1::TokenizeRequest {
        pan: pan.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .token
}

async fn detokenize(server: &Server, token: &str) -> String {
    let mut processor = server.client("processor").await;
    processor
        .detokenize(v1::DetokenizeRequest {
            token: token.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .pan
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_dev_on_postgres_round_trips_and_keeps_tokens_across_a_kill() {
    let pg = postgres::Postgres::start();
    let url = pg.database("vault").await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let server = Server::start_dev_with_env(&data, &on_postgres(&url, true), &log);
    let token = tokenize(&server, VISA).await;
    assert_eq!(detokenize(&server, &token).await, VISA);
    // Nothing of the store is on local disk: no embedded store directory.
    assert!(!data.join("store").exists() && !data.join("fjall").exists());
    server.kill9();

    let server = Server::start_dev_with_env(&data, &on_postgres(&url, false), &log);
    assert_eq!(detokenize(&server, &token).await, VISA);
    server.kill9();
    assert_no_pan_leaked(&log, &data, &[VISA]);
    // The database's own files (tables, WAL) hold it sealed only.
    assert_no_pan_leaked(&log, &pg.data_dir(), &[VISA]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_database_without_the_schema_until_tessera_migrate() {
    let pg = postgres::Postgres::start();
    let url = pg.database("vault").await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = on_postgres(&url, false);

    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(common::dev_args(&data))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tessera migrate"), "{stderr}");

    let latest = tessera::store::postgres::migrate::latest();
    let expected = format!("schema is at version {latest}");
    for expected in [&expected, &expected] {
        let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("migrate")
            .env("TESSERA__STORE__BACKEND", "postgres")
            .env("TESSERA__STORE__URL", &url)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(expected), "{stdout}");
    }

    let log = dir.path().join("server.log");
    let server = Server::start_dev_with_env(&data, &env, &log);
    let token = tokenize(&server, VISA).await;
    assert_eq!(detokenize(&server, &token).await, VISA);
    server.kill9();
}

#[test]
fn migrate_refuses_a_url_with_a_password_and_an_embedded_backend() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("migrate")
        .env("TESSERA__STORE__BACKEND", "postgres")
        .env(
            "TESSERA__STORE__URL",
            "postgres://tessera:hunter2@127.0.0.1/vault",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("password_file") && !stderr.contains("hunter2"),
        "{stderr}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("migrate")
        .env("TESSERA__STORE__BACKEND", "sled")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

/// PostgreSQL stopped (as by a crash) for several seconds under continuous
/// load, then started again: calls fail fast with UNAVAILABLE meanwhile
/// (none waits past two commit deadlines), Tessera reconnects by itself,
/// and every tokenize acknowledged before, during or after detokenizes to
/// its PAN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_started_under_load_loses_nothing_acknowledged() {
    const DEADLINE: Duration = Duration::from_secs(2);
    let pg = postgres::Postgres::start();
    let url = pg.database("vault").await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let mut env = on_postgres(&url, true);
    env.push((
        "TESSERA__STORE__COMMIT_DEADLINE_MS",
        DEADLINE.as_millis().to_string(),
    ));
    env.push(("TESSERA__STORE__STATEMENT_TIMEOUT_MS", "1000".to_owned()));
    env.push(("TESSERA__STORE__CONNECT_TIMEOUT_MS", "1000".to_owned()));
    // The load's detokenizes are the point, not an anomaly.
    env.push(("TESSERA__ACCESS__LOCK_ON_ANOMALY", "false".to_owned()));
    let server = Server::start_dev_with_env(&data, &env, &log);
    let load = load::Load::start(&server, 4).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.stop();
    let stopped_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    pg.restart();
    let restarted_at = Instant::now();
    // Until calls succeed again, then a while longer.
    let mut probe = server.client("processor").await;
    let recovered = loop {
        let ok = probe
            .tokenize(v1::TokenizeRequest {
                pan: VISA.into(),
                ..Default::default()
            })
            .await
            .is_ok();
        if ok {
            break restarted_at.elapsed();
        }
        assert!(
            restarted_at.elapsed() < Duration::from_secs(30),
            "Tessera did not reconnect within 30 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = load.stop().await;
    let window = load::gap_after(&seen.successes, stopped_at);
    eprintln!(
        "postgres stopped 4 s: no call succeeded for {window:?}; calls succeeded again {recovered:?} \
         after the restart; {} tokens acknowledged, {} calls failed",
        seen.acked.len(),
        seen.failures.len()
    );
    assert!(!seen.failures.is_empty(), "the outage was not seen");
    assert!(
        seen.successes.iter().any(|t| *t > restarted_at),
        "nothing succeeded after the restart"
    );
    load::check(&server, &seen, "postgres stopped", DEADLINE).await;
    server.kill9();
    assert_no_pan_leaked(&log, &data, &[VISA]);
}

/// Backup and restore on PostgreSQL with its own tools: `pg_dump -Fc` of
/// the vault's database, `pg_restore` into a new database, and a server on
/// the copy redeems the token and verifies the audit log (signature
/// checked). The dump holds the store sealed: no PAN in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dump_and_pg_restore_carry_a_vault_over() {
    let pg = postgres::Postgres::start();
    let url = pg.database("vault").await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let server = Server::start_dev_with_env(&data, &on_postgres(&url, true), &log);
    let token = tokenize(&server, VISA).await;
    server.kill9();

    let dumps = dir.path().join("dumps");
    std::fs::create_dir(&dumps).unwrap();
    let dump = dumps.join("vault.dump");
    let port = pg.port.to_string();
    let pg_tool = |tool: &str, args: &[&str]| {
        let out = Command::new(postgres::bin_dir().join(tool))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    pg_tool(
        "pg_dump",
        &["-Fc", "-d", "vault", "-f", dump.to_str().unwrap()],
    );
    assert_no_pan_leaked(&log, &dumps, &[VISA]);
    let copy = pg.database("restored").await;
    pg_tool("pg_restore", &["-d", "restored", dump.to_str().unwrap()]);

    // The same data directory: the dev KMS key and the state key are the
    // parts backed up apart.
    let server = Server::start_dev_with_env(&data, &on_postgres(&copy, false), &log);
    assert_eq!(detokenize(&server, &token).await, VISA);
    let verify = server.admin_cli("operator", &["audit", "verify"]);
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{report}");
    assert!(report.contains("signature"), "{report}");
    server.kill9();
}
