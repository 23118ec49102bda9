//! The store conformance suite against PostgreSQL (a throwaway cluster
//! started by the test), plus what only the database enforces: the schema's
//! append-only rule, migrations applied once, and a commit bounded by
//! Tessera's own deadline.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub,
    dead_code
)]

#[macro_use]
#[path = "store_conformance/mod.rs"]
mod suite;

#[path = "common/postgres.rs"]
mod postgres;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tessera::store::postgres::{PgOptions, PgStore, migrate};
use tessera::store::{AuditStore, Engine, JobStore, RecordStore, Store, StoreError};

/// One cluster per test process (one test under nextest), stopped by its
/// watchdog when the process exits.
fn cluster() -> &'static postgres::Postgres {
    static CLUSTER: OnceLock<postgres::Postgres> = OnceLock::new();
    CLUSTER.get_or_init(postgres::Postgres::start)
}

/// A new database on the test's cluster, migrated.
async fn fresh_store() -> (PgStore, String) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let url = cluster().database(&name).await;
    let store = PgStore::new(&PgOptions::new(url.clone())).unwrap();
    assert_eq!(store.migrate().await.unwrap(), every_migration());
    (store, url)
}

/// The versions of every migration, as a fresh database gets them.
fn every_migration() -> Vec<i32> {
    migrate::MIGRATIONS.iter().map(|m| m.version).collect()
}

struct Postgres;

#[async_trait::async_trait]
impl suite::Factory for Postgres {
    async fn make(&self) -> Arc<dyn Store> {
        let (store, url) = fresh_store().await;
        // The suite's purges run at once; the owner's floor has its own test.
        raw(&url)
            .await
            .batch_execute("UPDATE compaction_policy SET min_grace = '0'")
            .await
            .unwrap();
        Arc::new(store)
    }
}

conformance!(crate::Postgres);

/// A raw connection to `url`, as an operator or an attacker with the
/// database's credentials would have.
async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Runs each statement on `client` and checks the database refused it
/// for want of privilege.
async fn assert_refused(client: &tokio_postgres::Client, statements: &[&str]) {
    for statement in statements {
        let err = client.batch_execute(statement).await.unwrap_err();
        let db = err.as_db_error().expect(statement);
        assert_eq!(
            db.code(),
            &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE,
            "{statement}: {db:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_to_change_records_tombstones_versions_and_audit() {
    let (store, url) = fresh_store().await;
    let record = suite::record(1, "a", Some(2));
    store.append(record.clone()).await.unwrap();
    store
        .append_tombstone(
            &record.token_id,
            suite::tombstone(tessera::store::TombstoneReason::Deleted),
        )
        .await
        .unwrap();
    store.append_audit(0, vec![1, 2, 3], None).await.unwrap();
    // Row triggers fire only on rows: every table needs one.
    let resealed = store
        .append_sealed_versions(vec![tessera::store::SealedVersion {
            id: record.token_id,
            version: 1,
            sealed_pan: vec![9; 40],
        }])
        .await
        .unwrap();
    assert!(resealed[0].is_ok());
    let client = raw(&url).await;
    assert_refused(
        &client,
        &[
            "UPDATE records SET body = '\\x00'",
            "DELETE FROM records",
            "TRUNCATE records CASCADE",
            "UPDATE tombstones SET body = '\\x00'",
            "DELETE FROM tombstones",
            "UPDATE sealed_versions SET version = 2",
            "DELETE FROM sealed_versions",
            "TRUNCATE sealed_versions",
            "UPDATE audit_events SET body = '\\x00'",
            "DELETE FROM audit_events",
            "TRUNCATE audit_events",
            // The compaction functions' setting opens the record tables to
            // their deletes only, never the audit log.
            "SET tessera.compacting = 'on'; DELETE FROM audit_events",
        ],
    )
    .await;
    // Still all there.
    let got = store.get(&record.token_id).await.unwrap().unwrap();
    let resealed = tessera::store::SealedRecord {
        sealed_pan: vec![9; 40],
        ..record
    };
    assert_eq!(got.record, resealed);
    assert!(got.tombstone.is_some());
    assert_eq!(got.seal_version, 1);
    assert_eq!(store.audit_records(0, 10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_even_when_replicas_start_together() {
    let url = cluster().database("racing").await;
    let stores: Vec<PgStore> = (0..4)
        .map(|_| PgStore::new(&PgOptions::new(url.clone())).unwrap())
        .collect();
    stores[0].check_schema().await.expect_err("no schema yet");
    let handles: Vec<_> = stores
        .iter()
        .cloned()
        .map(|store| tokio::spawn(async move { store.migrate().await }))
        .collect();
    let mut applied = Vec::new();
    for handle in handles {
        applied.push(handle.await.unwrap());
    }
    let total: usize = applied.iter().map(|r| r.as_ref().unwrap().len()).sum();
    assert_eq!(total, migrate::MIGRATIONS.len(), "{applied:?}");
    for store in &stores {
        store.check_schema().await.unwrap();
        assert!(store.migrate().await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_cannot_finish_fails_at_the_deadline_and_frees_nothing_stale() {
    let (_, url) = fresh_store().await;
    let mut options = PgOptions::new(url.clone());
    options.commit_deadline = Duration::from_millis(500);
    let store = PgStore::new(&options).unwrap();
    // Another session holds the commit lock, as a primary cut off from its
    // standby holds COMMIT: the commit must give up, not hang.
    let blocker = raw(&url).await;
    blocker
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(8387236820507844865)")
        .await
        .unwrap();
    let started = Instant::now();
    let err = store
        .append(suite::record(1, "a", None))
        .await
        .expect_err("the commit cannot take the lock");
    let waited = started.elapsed();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    blocker.batch_execute("ROLLBACK").await.unwrap();
    // The pool serves again, on a fresh connection.
    store.append(suite::record(2, "a", None)).await.unwrap();
    assert!(
        store
            .get(&suite::record(1, "a", None).token_id)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_is_down_is_unavailable_not_a_crash() {
    let mut options = PgOptions::new("host=127.0.0.1 port=1 user=postgres dbname=none");
    options.connect_timeout = Duration::from_millis(300);
    let store = PgStore::new(&options).unwrap();
    let err = store.ping().await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let err = store
        .get(&suite::record(1, "a", None).token_id)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[test]
fn a_url_with_a_password_is_refused() {
    for url in [
        "postgres://tessera:secret@127.0.0.1/vault",
        "host=127.0.0.1 user=tessera password=secret",
    ] {
        let err = tessera::store::postgres::parse_url(url).unwrap_err();
        assert!(!err.to_string().contains("secret"));
        assert!(PgStore::new(&PgOptions::new(url)).is_err());
    }
    tessera::store::postgres::parse_url(
        "host=10.0.0.1,10.0.0.2 port=5432,5432 target_session_attrs=read-write",
    )
    .unwrap();
}

/// A write the synchronous standby never confirms is never acknowledged:
/// here no standby answers (a synchronous standby name nothing has), with
/// a statement timeout far below the deadline. The write must fail at the
/// deadline, UNAVAILABLE, and stay invisible. (A review suspected the
/// statement timeout would cancel the wait into a success; PostgreSQL 15
/// did not, with or without the COMMIT's own `statement_timeout = 0`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_the_synchronous_standby_never_confirms_is_never_acknowledged() {
    let (_, url) = fresh_store().await;
    let admin = raw(&url).await;
    for statement in [
        "ALTER SYSTEM SET synchronous_standby_names = 'ghost'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(statement).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut options = PgOptions::new(url.clone());
    options.statement_timeout = Duration::from_millis(500);
    options.commit_deadline = Duration::from_secs(3);
    let store = PgStore::new(&options).unwrap();
    let record = suite::record(1, "a", None);
    let started = Instant::now();
    let err = store
        .append(record.clone())
        .await
        .expect_err("acknowledged without the standby");
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
    assert!(store.get(&record.token_id).await.unwrap().is_none());
    for statement in [
        "ALTER SYSTEM RESET synchronous_standby_names",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(statement).await.unwrap();
    }
}

/// A review finding: serving as the tables' owner, the service could
/// disable the append-only triggers. A role given `--grant-to` can serve
/// and cannot change, delete or unprotect what is append-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_granted_by_migrate_serves_but_cannot_change_or_unprotect_the_tables() {
    let (owner, url) = fresh_store().await;
    raw(&url)
        .await
        .batch_execute("CREATE ROLE svc LOGIN")
        .await
        .unwrap();
    owner.grant("svc").await.unwrap();
    assert!(owner.grant("svc; DROP TABLE records").await.is_err());
    let svc_url = url.replace("user=postgres", "user=svc");
    let svc = PgStore::new(&PgOptions::new(svc_url.clone())).unwrap();
    svc.check_schema().await.unwrap();

    let record = suite::record(1, "a", Some(2));
    svc.append(record.clone()).await.unwrap();
    svc.append_tombstone(
        &record.token_id,
        suite::tombstone(tessera::store::TombstoneReason::Deleted),
    )
    .await
    .unwrap();
    svc.append(suite::record(2, "a", Some(2))).await.unwrap();
    svc.append_audit(0, vec![1], Some(vec![2])).await.unwrap();
    svc.append_audit(1, vec![3], Some(vec![4])).await.unwrap();
    svc.append_sealed_versions(vec![tessera::store::SealedVersion {
        id: record.token_id,
        version: 1,
        sealed_pan: vec![7; 40],
    }])
    .await
    .unwrap();
    svc.put_checkpoint("job", vec![1]).await.unwrap();
    svc.delete_checkpoint("job").await.unwrap();

    let client = raw(&svc_url).await;
    assert_refused(
        &client,
        &[
            "UPDATE records SET tenant = 'b'",
            "DELETE FROM audit_events",
            "ALTER TABLE records DISABLE TRIGGER USER",
            "DROP TRIGGER records_append_only ON records",
            "DROP TABLE audit_events",
            "CREATE OR REPLACE FUNCTION tessera_refuse_change() RETURNS trigger \
         LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
            "TRUNCATE tombstones",
        ],
    )
    .await;
}

/// Compaction's narrow path: the service role removes rows only through
/// the two compaction functions, which remove only what qualifies, by the
/// database's own clock and the owner's floor, whatever the caller forges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_role_purges_only_through_the_functions_and_only_what_qualifies() {
    use tessera::store::{CommitError, Compaction, WriteBatch, WriteUnit};
    let (owner, url) = fresh_store().await;
    let admin = raw(&url).await;
    admin
        .batch_execute("CREATE ROLE svc LOGIN; CREATE ROLE bystander LOGIN")
        .await
        .unwrap();
    owner.grant("svc").await.unwrap();
    let svc_url = url.replace("user=postgres", "user=svc");
    let svc = PgStore::new(&PgOptions::new(svc_url.clone())).unwrap();
    let live = suite::record(1, "a", Some(1));
    let dead = suite::record(2, "a", Some(2));
    let forged = suite::record(3, "a", Some(3));
    svc.append(live.clone()).await.unwrap();
    svc.append(forged.clone()).await.unwrap();
    svc.append(dead.clone()).await.unwrap();
    svc.append_tombstone(
        &dead.token_id,
        suite::tombstone(tessera::store::TombstoneReason::Deleted),
    )
    .await
    .unwrap();
    let purge = |id, dead_by_ms| {
        Arc::new(WriteBatch::of_unit(WriteUnit {
            compactions: vec![Compaction::Purge { id, dead_by_ms }],
            ..WriteUnit::default()
        }))
    };
    // The owner's floor (a day by default): a tombstone the database
    // recorded a moment ago is not purged, whatever the cutoff says.
    match svc.commit(purge(dead.token_id, u64::MAX)).await {
        Err(CommitError::Refused { error, .. }) => {
            assert!(matches!(error, StoreError::Conflict), "{error:?}");
        }
        other => panic!("purged inside the floor: {other:?}"),
    }
    let hex = |n: u8| format!("decode(repeat('{n:02x}', 32), 'hex')");
    let client = raw(&svc_url).await;
    // A tombstone forged for record 3, dated 1970 in its bytes and 2000 in
    // its column, and a temporary `tombstones` table standing in for the
    // real one to name the live record 1: neither makes them purgeable.
    client
        .batch_execute(&format!(
            "INSERT INTO tombstones (token_id, body, recorded_at)
             VALUES ({}, '\\x01010000000000000000', '2000-01-01');
             CREATE TEMP TABLE tombstones (token_id bytea, body bytea, recorded_at timestamptz);
             INSERT INTO pg_temp.tombstones VALUES ({}, '\\x01010000000000000000', '2000-01-01');",
            hex(3),
            hex(1)
        ))
        .await
        .unwrap();
    let recent: bool = client
        .query_one(
            &format!(
                "SELECT recorded_at > now() - interval '1 hour' FROM public.tombstones
                 WHERE token_id = {}",
                hex(3)
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(recent, "the database stamps a tombstone's time itself");
    let purged = client
        .query(
            &format!(
                "SELECT tessera_purge(ARRAY[{}, {}, {}], 9000000000000000000)",
                hex(1),
                hex(2),
                hex(3)
            ),
            &[],
        )
        .await
        .unwrap();
    assert!(purged.is_empty(), "purged {} rows", purged.len());
    // Nothing else removes rows for it.
    assert_refused(
        &client,
        &[
            "DELETE FROM public.records",
            "SET tessera.compacting = 'on'; DELETE FROM public.tombstones",
            "DELETE FROM purged_tokens",
            "UPDATE compaction_policy SET min_grace = '0'",
        ],
    )
    .await;
    assert_refused(
        &raw(&url.replace("user=postgres", "user=bystander")).await,
        &["SELECT tessera_purge('{}', 0)"],
    )
    .await;
    for record in [&live, &dead, &forged] {
        assert!(svc.get(&record.token_id).await.unwrap().is_some());
    }

    // A forged newest seal version (numbered past any real one) cannot
    // make the real versions go while the floor holds it back, and the
    // store names the record as held back.
    for version in 1..=2 {
        svc.append_sealed_versions(vec![tessera::store::SealedVersion {
            id: live.token_id,
            version,
            sealed_pan: vec![7; 40],
        }])
        .await
        .unwrap()[0]
            .as_ref()
            .unwrap();
    }
    client
        .batch_execute(&format!(
            "INSERT INTO sealed_versions (token_id, version, sealed_pan, recorded_at)
             VALUES ({}, 2147483647, '\\x00', '2000-01-01')",
            hex(1)
        ))
        .await
        .unwrap();
    let dropped: i64 = client
        .query_one(
            &format!(
                "SELECT tessera_drop_seal_versions(ARRAY[{}, {}], ARRAY[1, 2])",
                hex(1),
                hex(1)
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dropped, 0);
    assert!(
        svc.held_back(&[live.token_id])
            .await
            .unwrap()
            .contains(&live.token_id)
    );
    assert_eq!(
        svc.seal_versions(&[live.token_id]).await.unwrap()[0].1,
        vec![1, 2, 2_147_483_647]
    );

    // Serving refuses a role that may create objects beside the owner's
    // functions, or that lacks this schema's grants.
    admin
        .batch_execute("GRANT CREATE ON SCHEMA public TO svc")
        .await
        .unwrap();
    let err = svc.check_schema().await.unwrap_err();
    assert!(err.to_string().contains("create objects"), "{err}");
    admin
        .batch_execute(
            "REVOKE CREATE ON SCHEMA public FROM svc; REVOKE SELECT ON purged_tokens FROM svc",
        )
        .await
        .unwrap();
    let err = svc.check_schema().await.unwrap_err();
    assert!(err.to_string().contains("--grant-to"), "{err}");
    owner.grant("svc").await.unwrap();
    svc.check_schema().await.unwrap();

    // The owner lowers the floor: the dead record goes, its id stays taken,
    // by the store and by the database itself.
    admin
        .batch_execute("UPDATE compaction_policy SET min_grace = '0'")
        .await
        .unwrap();
    svc.commit(purge(dead.token_id, 7)).await.unwrap();
    assert!(svc.get(&dead.token_id).await.unwrap().is_none());
    assert!(svc.is_taken(&dead.token_id).await.unwrap());
    assert!(matches!(
        svc.append(dead).await,
        Err(StoreError::AlreadyExists)
    ));
    // Also with a temporary `purged_tokens` standing in for the real one.
    let reused = client
        .batch_execute(&format!(
            "CREATE TEMP TABLE purged_tokens (token_id bytea);
             INSERT INTO records (token_id, tenant, body) VALUES ({}, 'a', '\\x01')",
            hex(2)
        ))
        .await
        .unwrap_err();
    assert_eq!(
        reused.as_db_error().unwrap().code(),
        &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
    );
    // The forged tombstone did kill record 3 (a service credential can
    // always write a tombstone), but it stays until a purge names it.
    assert!(svc.get(&forged.token_id).await.unwrap().is_some());
    assert!(svc.get(&live.token_id).await.unwrap().is_some());
}

/// Writes a CA and a server certificate for 127.0.0.1 into `dir`, the key
/// readable by the postgres user only; returns (CA file, cert, key).
fn server_pki(dir: &std::path::Path) -> (std::path::PathBuf, String, String) {
    use tessera::tls::pki::{Authority, Validity};
    let authority = Authority::generate("db CA", Validity::days(2)).unwrap();
    let server = authority
        .issue_server(&["127.0.0.1".into(), "localhost".into()], Validity::days(2))
        .unwrap();
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&ca, authority.cert_pem()).unwrap();
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, server.key_pem.expose_secret()).unwrap();
    for file in [&cert, &key] {
        let status = std::process::Command::new("chown")
            .arg("postgres:postgres")
            .arg(file)
            .status()
            .unwrap();
        assert!(status.success());
    }
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (ca, cert.display().to_string(), key.display().to_string())
}

/// TLS to the database: with a CA file the store connects over TLS only,
/// verifies the server against that CA, and never falls back to plaintext
/// (a server without TLS, or a man in the middle that declines it, gets
/// no session and no password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_ca_file_the_store_talks_verified_tls_only() {
    let pki = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        pki.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (ca, cert, key) = server_pki(pki.path());
    let tls_pg = postgres::Postgres::start_with(&[
        "-c",
        "fsync=off",
        "-c",
        "ssl=on",
        "-c",
        &format!("ssl_cert_file={cert}"),
        "-c",
        &format!("ssl_key_file={key}"),
        "-c",
        "listen_addresses=127.0.0.1,127.0.0.2",
    ]);
    let url = tls_pg.database("vault").await;
    let mut options = PgOptions::new(url.clone());
    options.ca_file = Some(ca.clone());
    let store = PgStore::new(&options).unwrap();
    assert_eq!(store.migrate().await.unwrap(), every_migration());
    let record = suite::record(1, "a", Some(1));
    store.append(record.clone()).await.unwrap();
    assert_eq!(
        store.get(&record.token_id).await.unwrap().unwrap().record,
        record
    );
    // The server saw only TLS sessions from Tessera.
    let (encrypted, sessions): (bool, i64) = {
        let row = raw(&url)
            .await
            .query_one(
                "SELECT coalesce(bool_and(s.ssl), false), count(*) FROM pg_stat_ssl s
                 JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'tessera'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(encrypted && sessions > 0, "{encrypted} {sessions}");

    // Another CA: refused, UNAVAILABLE.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = server_pki(other.path());
    let mut options = PgOptions::new(url.clone());
    options.ca_file = Some(other_ca);
    options.connect_timeout = Duration::from_millis(500);
    let err = PgStore::new(&options).unwrap().ping().await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");

    // The right CA, but reached by a name the certificate does not hold.
    let mut options = PgOptions::new(url.replace("host=127.0.0.1", "host=127.0.0.2"));
    options.ca_file = Some(ca.clone());
    options.connect_timeout = Duration::from_millis(500);
    let err = PgStore::new(&options).unwrap().ping().await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");

    // A server without TLS: no plaintext fallback.
    let (_, plain_url) = fresh_store().await;
    let mut options = PgOptions::new(plain_url);
    options.ca_file = Some(ca);
    options.connect_timeout = Duration::from_millis(500);
    let err = PgStore::new(&options).unwrap().ping().await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");

    // sslmode=require without a CA to verify with is refused up front.
    let mut options = PgOptions::new(format!("{url} sslmode=require"));
    options.ca_file = None;
    assert!(PgStore::new(&options).is_err());
}
