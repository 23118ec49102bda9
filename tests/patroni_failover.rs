//! High availability on Patroni: Tessera on a two-node PostgreSQL 15
//! cluster with synchronous replication, under continuous tokenize and
//! detokenize load, through a node crash (SIGKILL to the primary's Patroni
//! and postmaster) and then a clean switchover (SIGTERM to the primary's
//! Patroni). Nothing acknowledged may be lost, no call may hang, calls fail
//! fast with UNAVAILABLE while there is no primary, and Tessera reconnects
//! by itself. The unavailability window is printed.
//!
//! A cluster test with a time bound of its own: the default nextest run
//! leaves it out (`default-filter` in `.config/nextest.toml`), and `.ci/run`
//! runs it in a separate step (`cargo nextest run --ignore-default-filter
//! --test patroni_failover`), and so can you.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
#[path = "common/load.rs"]
mod load;
#[path = "common/patroni.rs"]
mod patroni;
#[path = "common/postgres.rs"]
mod postgres;

use std::time::{Duration, Instant};

use common::Server;
use load::{Load, check, gap_after};

/// Tessera's own bound on a commit in this test.
const COMMIT_DEADLINE: Duration = Duration::from_secs(3);

/// Waits (on a blocking thread) until `ready`, within `limit`.
async fn wait_for(
    what: &'static str,
    limit: Duration,
    ready: impl FnMut() -> bool + Send + 'static,
) -> Duration {
    tokio::task::spawn_blocking(move || patroni::wait_for(what, limit, ready))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_through_a_primary_crash_and_a_switchover() {
    let cluster = tokio::task::spawn_blocking(patroni::Cluster::start)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let env = vec![
        ("TESSERA__STORE__BACKEND", "postgres".to_owned()),
        (
            "TESSERA__STORE__URL",
            format!("{} connect_timeout=1", cluster.url()),
        ),
        (
            "TESSERA__STORE__PASSWORD_FILE",
            cluster.password_file().display().to_string(),
        ),
        ("TESSERA__STORE__MIGRATE", "true".to_owned()),
        (
            "TESSERA__STORE__COMMIT_DEADLINE_MS",
            COMMIT_DEADLINE.as_millis().to_string(),
        ),
        ("TESSERA__STORE__STATEMENT_TIMEOUT_MS", "2000".to_owned()),
        ("TESSERA__STORE__CONNECT_TIMEOUT_MS", "1000".to_owned()),
        // The load redeems thousands of tokens as fast as it can: not an
        // anomaly here, and not rate limited.
        ("TESSERA__ACCESS__LOCK_ON_ANOMALY", "false".to_owned()),
        (
            "TESSERA__ACCESS__DETOKENIZE_LEARNING_LIMIT",
            "1000000000".to_owned(),
        ),
        ("TESSERA__ACCESS__RATE_PER_SECOND", "10000000".to_owned()),
    ];
    let server = Server::start_dev_with_env(&data, &env, &log);

    // A node crash under load.
    let load = Load::start(&server, 4).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let old = cluster.primary().expect("a primary");
    let crashed_at = Instant::now();
    let mut cluster = cluster;
    cluster.nodes[old].crash();
    let other = 1 - old;
    let (rest_port, name) = (
        cluster.nodes[other].rest_port,
        cluster.nodes[other].name.clone(),
    );
    wait_for(
        "the standby's promotion",
        Duration::from_secs(60),
        move || patroni::rest_ok(rest_port, "/primary"),
    )
    .await;
    let promoted = crashed_at.elapsed();
    // Let the load run on the new primary for a while.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seen = load.stop().await;
    let window = gap_after(&seen.successes, crashed_at);
    eprintln!(
        "crash of the primary: {name} promoted {promoted:?} after the crash; no call succeeded for {window:?}; \
         {} tokens acknowledged, {} calls failed (UNAVAILABLE)",
        seen.acked.len(),
        seen.failures.len()
    );
    assert!(
        window < Duration::from_secs(45),
        "unavailable for {window:?}"
    );
    check(&server, &seen, "crash", COMMIT_DEADLINE).await;

    // The crashed node rejoins as the synchronous standby; then a clean
    // switchover under load.
    cluster.nodes[old].restart();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_for_sync_standby(Duration::from_secs(90));
        cluster
    })
    .await
    .unwrap();
    let load = Load::start(&server, 4).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let primary = cluster.primary().expect("a primary");
    let switched_at = Instant::now();
    let mut cluster = cluster;
    cluster.nodes[primary].stop();
    let rest_port = cluster.nodes[1 - primary].rest_port;
    wait_for("the switchover", Duration::from_secs(60), move || {
        patroni::rest_ok(rest_port, "/primary")
    })
    .await;
    let promoted = switched_at.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seen = load.stop().await;
    let window = gap_after(&seen.successes, switched_at);
    eprintln!(
        "switchover: new primary {promoted:?} after the SIGTERM; no call succeeded for {window:?}; \
         {} tokens acknowledged, {} calls failed (UNAVAILABLE)",
        seen.acked.len(),
        seen.failures.len()
    );
    assert!(
        window < Duration::from_secs(30),
        "unavailable for {window:?}"
    );
    check(&server, &seen, "switchover", COMMIT_DEADLINE).await;
    // One audit chain through both primaries, and it verifies.
    common::assert_audit_intact(&server).await;
    server.kill9();
    drop(cluster);
}
