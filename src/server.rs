//! Wiring and serving: builds the vault from a [`Config`] and serves the
//! Tokenizer, gRPC health and server reflection on a listener until a
//! shutdown signal (as `mini-redis`'s `server::run(listener, shutdown)`).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;

use crate::access::approvals::Approvals;
use crate::access::exports::{DEFAULT_EXPORT_LIFETIME, Exports};
use crate::access::principals::{self, BookError, PrincipalBook};
use crate::access::shared_locks::{LockSync, LockTaker};
use crate::audit::sink::AuditSink;
use crate::clock::SystemClock;
use crate::config::{Config, KmsBackend, PostgresSettings, PrincipalEntry, StoreBackend};
use crate::kms::dev::DevKms;
use crate::kms::metered::MeteredKms;
use crate::kms::pkcs11::Pkcs11Kms;
use crate::kms::shamir::ShamirKms;
use crate::kms::{Kms, KmsError};
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::v1::audit_server::AuditServer;
use crate::proto::v1::key_admin_server::KeyAdminServer;
use crate::proto::v1::principals_server::PrincipalsServer;
use crate::proto::v1::tokenizer_server::TokenizerServer;
use crate::service::audit_log::AuditService;
use crate::service::key_admin::KeyAdminService;
use crate::service::principals::PrincipalsService;
use crate::service::{Authenticator, TokenizerService};
use crate::shared::Shared;
use crate::shared::feed::{self, Follower};
use crate::shared::seal::StateSeal;
use crate::store::fjall::FjallStore;
use crate::store::postgres::{PgOptions, PgStore};
use crate::store::sled::SledStore;
use crate::store::{Store, StoreError};
use crate::telemetry::names;
use crate::telemetry::rpc::RpcLayer;
use crate::vault::Vault;

/// Start-up failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The store did not open.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The KMS did not open.
    #[error("kms: {0}")]
    Kms(#[from] KmsError),
    /// The key sealing shared state is unreadable.
    #[error(transparent)]
    StateKey(#[from] crate::shared::seal::SealKeyError),
    /// Principals clash or their file is unreadable.
    #[error("principals: {0}")]
    Principals(#[from] BookError),
    /// A second audit sink did not open.
    #[error("audit sink {target}: {source}")]
    AuditSink {
        /// Which.
        target: String,
        /// Why.
        source: std::io::Error,
    },
    /// TLS material is unusable.
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// Reflection descriptors did not load.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// `DATA_DIR` holds another embedded backend's store and none of the
    /// configured one's, or both, or cannot be checked.
    #[error("store: {0}")]
    OtherStore(String),
}

/// The accepted connections of `listener`, with `TCP_NODELAY` set. Without
/// it a response larger than one segment waits for the client's delayed ACK
/// (about 40 ms on Linux) before its last segment leaves: a batch of 1,000
/// PANs took 48 ms where its work takes a few.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Refuses to open `backend` in `data_dir` when another embedded backend's
/// store is there: a changed default or a typo in the configuration would
/// otherwise serve an empty vault, and every token issued before would
/// answer "not found". Both stores present is refused too (which one holds
/// the vault is for an operator to say), and so is a directory that cannot
/// be checked (an unreadable or dangling mount is not an empty one).
fn check_no_other_store(data_dir: &Path, backend: &StoreBackend) -> Result<(), StartError> {
    let present = |dir: &str| {
        data_dir.join(dir).try_exists().map_err(|e| {
            StartError::OtherStore(format!("cannot check {}/{dir}: {e}", data_dir.display()))
        })
    };
    let Some(our_dir) = backend.dir() else {
        return Ok(());
    };
    let ours = present(our_dir)?;
    for (other, other_dir) in StoreBackend::EMBEDDED {
        if other == backend.name() || !present(other_dir)? {
            continue;
        }
        let chosen = backend.name();
        let data_dir = data_dir.display();
        return Err(StartError::OtherStore(if ours {
            format!(
                "{data_dir} holds both a {chosen} store ({}) and a {other} store ({other_dir}); \
                 move the one not in use out of the data directory",
                our_dir
            )
        } else {
            format!(
                "{data_dir}/{other_dir} holds a {other} store but [store] backend is {chosen}; \
                 set backend = \"{other}\" to serve it (if that directory is empty, left by a \
                 start that failed, remove it)"
            )
        }));
    }
    Ok(())
}

/// Connects to PostgreSQL as `settings` say, applies missing migrations
/// when told to, and checks the schema is this build's.
pub async fn open_postgres(settings: &PostgresSettings) -> Result<PgStore, StartError> {
    let password = match &settings.password_file {
        Some(path) => {
            let mut bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| {
                StoreError::Unavailable(format!(
                    "store.password_file {}: {}",
                    path.display(),
                    e.kind()
                ))
            })?);
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            Some(bytes)
        }
        None => None,
    };
    let store = PgStore::new(&PgOptions {
        url: settings.url.clone(),
        password,
        pool_size: settings.pool_size,
        statement_timeout: settings.statement_timeout,
        commit_deadline: settings.commit_deadline,
        connect_timeout: settings.connect_timeout,
        ca_file: settings.ca_file.clone(),
    })?;
    if settings.migrate {
        let applied = store.migrate().await?;
        if !applied.is_empty() {
            tracing::info!(?applied, "postgres migrations applied");
        }
    }
    store.check_schema().await?;
    Ok(store)
}

/// The running service's parts.
#[derive(Debug, Clone)]
pub struct App {
    /// Use cases.
    pub vault: Arc<Vault>,
    /// Authentication.
    pub auth: Arc<Authenticator>,
    /// Pending dual-control approvals.
    pub approvals: Arc<Approvals>,
    /// Approved exports.
    pub exports: Arc<Exports>,
    /// What replicas share through the store.
    pub shared: Shared,
    /// TLS for the listener (`None`: plaintext, dev on loopback only).
    pub tls: Option<crate::tls::TlsSettings>,
    /// The change-feed poller (replicas on PostgreSQL), stopped with the
    /// last copy of the app.
    pub feed: Option<Arc<FeedTask>>,
}

/// The running change-feed poller; aborted when dropped.
#[derive(Debug)]
pub struct FeedTask(tokio::task::JoinHandle<()>);

impl Drop for FeedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl App {
    /// Opens the store and KMS named by `config` and registers `principals`.
    pub async fn build(
        config: &Config,
        principals: Vec<PrincipalEntry>,
    ) -> Result<Self, StartError> {
        check_no_other_store(&config.data_dir, &config.store)?;
        let store_dir = config.data_dir.join(config.store.dir().unwrap_or_default());
        let (store, simulated_flush_delay): (Arc<dyn Store>, _) = match &config.store {
            StoreBackend::Sled {
                simulated_flush_delay,
                cache_bytes,
            } => (
                Arc::new(
                    SledStore::open_with_cache(&store_dir, *cache_bytes)?
                        .with_simulated_flush_delay(*simulated_flush_delay),
                ),
                *simulated_flush_delay,
            ),
            StoreBackend::Fjall {
                simulated_flush_delay,
                cache_bytes,
            } => (
                Arc::new(
                    FjallStore::open(&store_dir, *cache_bytes)?
                        .with_simulated_flush_delay(*simulated_flush_delay),
                ),
                *simulated_flush_delay,
            ),
            StoreBackend::Postgres(settings) => (Arc::new(open_postgres(settings).await?), None),
        };
        if let Some(delay) = simulated_flush_delay {
            tracing::warn!(
                delay_us = delay.as_micros(),
                "every store commit waits a simulated slow flush (benchmark aid, --dev only)"
            );
        }
        let kms: Arc<dyn Kms> = match &config.kms {
            KmsBackend::Dev { key_file } => {
                Arc::new(DevKms::open_or_create(key_file, config.profile)?)
            }
            KmsBackend::Shamir => Arc::new(ShamirKms::open(&config.data_dir)?),
            KmsBackend::Pkcs11(p11) => Arc::new(Pkcs11Kms::open(p11)?),
            #[cfg(feature = "aws-kms")]
            KmsBackend::AwsKms(aws) => Arc::new(crate::kms::aws::AwsKms::connect(aws).await?),
            #[cfg(not(feature = "aws-kms"))]
            KmsBackend::AwsKms(_) => {
                return Err(StartError::Kms(KmsError::Refused(
                    "this build lacks the aws-kms cargo feature".into(),
                )));
            }
        };
        let kms: Arc<dyn Kms> = Arc::new(MeteredKms::new(kms));
        if config.state_key.create && matches!(config.store, StoreBackend::Postgres(_)) {
            tracing::warn!(
                file = %config.state_key.path.display(),
                "shared state is sealed with a key made in this data directory; other replicas \
                 need the same file (access.state_key_file), or they cannot read this one's state"
            );
        }
        let seal = if config.state_key.create {
            StateSeal::load_or_create(&config.state_key.path)?
        } else {
            StateSeal::load(&config.state_key.path)?
        };
        let shared = Shared::new(Arc::clone(&store), Arc::new(seal));
        let book = Arc::new(
            PrincipalBook::open_shared(
                principals,
                shared.clone(),
                Some(&config.data_dir.join(principals::FILE_NAME)),
            )
            .await?,
        );
        let mut vault = Vault::new(kms, store, Arc::new(SystemClock), config.policy.clone());
        for target in &config.audit_sinks {
            let sink = AuditSink::open(target).map_err(|source| StartError::AuditSink {
                target: format!("{target:?}"),
                source,
            })?;
            vault = vault.with_audit_sink(sink);
        }
        let vault = Arc::new(vault);
        // A seal not superseded by an opening holds across this restart.
        vault.adopt_seal_state().await?;
        // Replicas on one database pick up each other's changes; an
        // embedded store has one replica, whose changes are already live.
        let auth = Arc::new(
            Authenticator::with_limits(book.clone(), config.limits.clone(), config.otp_step)
                .with_shared_sessions(shared.clone()),
        );
        let feed = match &config.store {
            StoreBackend::Postgres(_) => {
                let guard: Arc<dyn LockTaker> = auth.clone();
                let locks = LockSync::new(Arc::clone(auth.guard().outbox()), guard, shared.clone());
                let followers: Vec<Arc<dyn Follower>> = vec![book, vault.clone(), Arc::new(locks)];
                Some(Arc::new(FeedTask(feed::spawn(
                    Arc::clone(vault.store()),
                    followers,
                    config.shared_poll,
                ))))
            }
            _ => None,
        };
        Ok(Self {
            vault,
            feed,
            auth,
            approvals: Arc::new(Approvals::new(config.approval_window, shared.clone())),
            exports: Arc::new(Exports::new(shared.clone(), config.export_lifetime)),
            shared,
            tls: config.tls.clone(),
        })
    }

    /// Assembles a plaintext app from a ready vault and principals (tests
    /// and embedders).
    /// Shared state is sealed under a key made for this app alone.
    pub fn from_parts(vault: Vault, principals: PrincipalBook) -> Self {
        let key = crate::secret::DataKey::generate().unwrap_or_else(|_| {
            // No randomness: a key no one else has is still this app's own.
            crate::secret::DataKey::from_bytes([0; crate::secret::KEY_LEN])
        });
        let shared = Shared::new(Arc::clone(vault.store()), Arc::new(StateSeal::new(key)));
        Self {
            vault: Arc::new(vault),
            auth: Arc::new(
                Authenticator::new(Arc::new(principals)).with_shared_sessions(shared.clone()),
            ),
            approvals: Arc::new(Approvals::new(DEFAULT_APPROVAL_WINDOW, shared.clone())),
            exports: Arc::new(Exports::new(shared.clone(), DEFAULT_EXPORT_LIFETIME)),
            shared,
            tls: None,
            feed: None,
        }
    }

    /// The same app verifying TOTP codes of `step` (tests make several
    /// admin calls a second; `access.totp_step_seconds` in a config).
    pub fn with_otp_step(self, step: Duration) -> Self {
        let principals = Arc::clone(self.auth.principals());
        Self {
            auth: Arc::new(
                Authenticator::with_limits(
                    principals,
                    crate::access::limits::LimitsConfig::default(),
                    step,
                )
                .with_shared_sessions(self.shared.clone()),
            ),
            ..self
        }
    }
}

/// How long a dual-control request waits when no config says otherwise.
pub const DEFAULT_APPROVAL_WINDOW: Duration = Duration::from_secs(15 * 60);

/// How often the store is pinged, health updated, and seal state and
/// key ages published as metrics.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps gRPC health and the store and key metrics current, every
/// [`WATCH_INTERVAL`]:
/// - the server as a whole (`""`) serves while its store answers: what a
///   startup probe asks (a sealed replica has started);
/// - `tessera.v1.Tokenizer` serves while the store answers and the vault
///   is unsealed: what a readiness probe and a load balancer routing card
///   traffic ask (`deploy/kubernetes`: a rollout then waits for each new
///   replica to be unsealed before it retires an old one).
async fn watch(vault: Arc<Vault>, health: HealthReporter) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    // The first tick is immediate, and `run` has just checked.
    tick.tick().await;
    loop {
        tick.tick().await;
        check(&vault, &health).await;
    }
}

/// One round of [`watch`].
async fn check(vault: &Vault, health: &HealthReporter) {
    use tonic_health::ServingStatus::{NotServing, Serving};
    let started = std::time::Instant::now();
    let store_up = match vault.ping().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "store health check failed");
            false
        }
    };
    metrics::histogram!(names::STORE_PING_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::gauge!(names::STORE_UP).set(if store_up { 1.0 } else { 0.0 });
    let status = |serving| if serving { Serving } else { NotServing };
    health.set_service_status("", status(store_up)).await;
    health
        .set_service_status(
            <TokenizerServer<TokenizerService> as tonic::server::NamedService>::NAME,
            status(store_up && !vault.is_sealed()),
        )
        .await;
    if let Err(e) = vault.publish_key_metrics().await {
        tracing::warn!(error = %e, "could not publish key metrics");
    }
}

/// How long in-flight calls may take to finish after a shutdown signal.
/// Idle keep-alive connections would otherwise hold the server open.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until `shutdown` completes, then drains in-flight calls for at
/// most [`DRAIN_TIMEOUT`].
pub async fn run(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    run_with_health(listener, None, app, shutdown).await
}

/// [`run`], with `grpc.health.v1` alone also served in plaintext on
/// `health_listener` (`[health] listen`): kubelet's gRPC probes speak no
/// TLS. It shares the main listener's health statuses, and nothing else is
/// reachable through it.
pub async fn run_with_health(
    listener: TcpListener,
    health_listener: Option<TcpListener>,
    app: App,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let probes = health_listener.map(|probe_listener| {
        let service = health_service.clone();
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming(probe_listener))
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the health listener failed");
            }
        })
    });
    // Both reflection versions: grpcurl before 1.9 and grpcio's Python
    // reflection client speak only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    // Re-encryptions cut short by a crash or restart continue once unsealed.
    let resumer = Arc::clone(&app.vault);
    tokio::spawn(async move { resumer.resume_reencryptions().await });
    check(&app.vault, &health).await;
    let watcher = tokio::spawn(watch(Arc::clone(&app.vault), health));
    // Counted refusals are recorded when their window closes, also after
    // the flood that caused them stopped.
    let (flush_vault, flush_auth) = (Arc::clone(&app.vault), Arc::clone(&app.auth));
    let flusher = tokio::spawn(async move {
        let period = (flush_auth.refusals().window() / 2).max(Duration::from_millis(500));
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            crate::service::audited::flush_refusals(&flush_vault, &flush_auth).await;
        }
    });
    let tokenizer = TokenizerServer::new(TokenizerService::new(
        Arc::clone(&app.vault),
        Arc::clone(&app.auth),
    ));
    let audit = AuditServer::new(AuditService::new(
        Arc::clone(&app.vault),
        Arc::clone(&app.auth),
    ));
    let principals = PrincipalsServer::new(PrincipalsService::new(
        Arc::clone(&app.vault),
        Arc::clone(&app.auth),
        Arc::clone(&app.approvals),
    ));
    let key_admin = KeyAdminServer::new(KeyAdminService::new(
        app.vault,
        app.auth,
        app.approvals,
        app.exports,
    ));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &app.tls {
        builder = builder.tls_config(crate::tls::server_config(tls)?)?;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut serve_rx = stop_rx.clone();
    let mut drain_rx = stop_rx;
    let serve = builder
        .layer(RpcLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tokenizer)
        .add_service(key_admin)
        .add_service(audit)
        .add_service(principals)
        .serve_with_incoming_shutdown(incoming(listener), async move {
            let _ = serve_rx.wait_for(|stop| *stop).await;
        });
    let drain_deadline = async move {
        let _ = drain_rx.wait_for(|stop| *stop).await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    let trigger = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
        std::future::pending::<()>().await;
    };
    tokio::select! {
        result = serve => result?,
        () = drain_deadline => tracing::warn!("drain timeout reached; closing remaining connections"),
        () = trigger => {}
    }
    flusher.abort();
    watcher.abort();
    if let Some(probes) = probes {
        probes.abort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    /// Every accepted connection sends at once: without `TCP_NODELAY` a
    /// batch response waited about 40 ms for the client's delayed ACK.
    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let server_side = accepted.next().await.unwrap().unwrap();
        assert!(server_side.nodelay().unwrap());
    }
}
