//! The live set of principals: those in the configuration plus those added
//! at run time, minus the revoked ones.
//!
//! Authentication reads an immutable snapshot; `add` and `revoke` persist
//! the change and then swap the snapshot, so a revoked key stops working on
//! the very next call, and stays revoked across restarts. A serving vault
//! persists to the store's shared state ([`PrincipalBook::open_shared`]):
//! every replica reads the same book and takes another replica's change
//! when the change feed shows it ([`PrincipalBook::refresh`]). `tessera
//! init`, which runs before a store exists, writes `principals.json`,
//! which the first `serve` moves into the store.

mod persist;
mod stored;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::access::api_key::{self, ApiKeyRegistry, KeyHash, RegistryError};
use crate::access::totp::TotpSecret;
use crate::domain::{Principal, Role, TenantId};
use crate::secret::SecretString;
use crate::shared::Shared;
use stored::BookFile;
pub(crate) use stored::StoredPrincipal;

/// The lineage entry of a principal whose creator was never recorded (added
/// before creators were); no principal name can contain `<`.
pub const UNKNOWN_CREATOR: &str = "<unknown>";

/// File name of the run-time principals inside the data dir.
pub const FILE_NAME: &str = "principals.json";

/// A principal with its credentials.
#[derive(Clone)]
pub struct PrincipalEntry {
    /// Who.
    pub principal: Principal,
    /// The API key hash, if it authenticates by key.
    pub key_hash: Option<KeyHash>,
    /// The client-certificate identity (SAN URI or DNS), if it
    /// authenticates by mTLS.
    pub cert_identity: Option<String>,
    /// The TOTP secret, needed by admin and audit principals.
    pub totp: Option<Arc<TotpSecret>>,
    /// When it became live, by the vault clock (0 for configured ones):
    /// an approver must predate the request it approves.
    pub created_at_ms: u64,
    /// The admin whose request created it (none for configured ones): it
    /// can never approve that admin's requests.
    pub created_by: Option<String>,
}

impl std::fmt::Debug for PrincipalEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrincipalEntry")
            .field("principal", &self.principal)
            .field("cert_identity", &self.cert_identity)
            .field("totp", &self.totp.as_ref().map(|_| "…"))
            .field("created_at_ms", &self.created_at_ms)
            .field("created_by", &self.created_by)
            .finish_non_exhaustive()
    }
}

/// Where a principal is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file (or dev credentials).
    Config,
    /// `tessera principal add`.
    Added,
}

/// One row of `tessera principal list`.
#[derive(Debug, Clone)]
pub struct PrincipalSummary {
    /// Who.
    pub principal: Principal,
    /// Where it is defined.
    pub origin: Origin,
    /// Revoked: no credential of it works.
    pub revoked: bool,
    /// Authenticates by API key.
    pub has_api_key: bool,
    /// Its certificate identity.
    pub cert_identity: Option<String>,
    /// Has a second factor enrolled.
    pub has_totp: bool,
    /// When it became live (0 for configured ones).
    pub created_at_ms: u64,
    /// Who asked for it (none for configured ones).
    pub created_by: Option<String>,
}

/// A principal to create.
#[derive(Debug, Clone)]
pub struct NewPrincipal {
    /// Unique name.
    pub name: String,
    /// Tenant.
    pub tenant: TenantId,
    /// Roles (at least one).
    pub roles: BTreeSet<Role>,
    /// Optional certificate identity.
    pub cert_identity: Option<String>,
    /// The admin whose request creates it (none when bootstrapping).
    pub created_by: Option<String>,
    /// When it becomes live (0 when bootstrapping).
    pub created_at_ms: u64,
}

/// What a new principal receives, once.
pub struct IssuedCredentials {
    /// The API key.
    pub api_key: SecretString,
    /// The TOTP secret (admin and audit roles).
    pub totp: Option<Arc<TotpSecret>>,
}

/// Managing principals failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BookError {
    /// The name is taken (possibly by a revoked principal, possibly in
    /// another tenant: names are unique across the vault). The message does
    /// not echo the name or say whose it is.
    #[error(
        "this principal name is not available (names are unique across the vault, revoked ones included)"
    )]
    NameTaken(String),
    /// The certificate identity is taken. The message names neither the
    /// identity's holder nor its tenant.
    #[error("this certificate identity is already bound to a principal")]
    IdentityTaken(String),
    /// A role the principal's scope cannot hold (`operator` outside the
    /// system scope, a tenant role inside it).
    #[error("the {} role cannot be held in this scope", .0.name())]
    RoleOutOfScope(Role),
    /// No such principal.
    #[error("no such principal")]
    NotFound(String),
    /// Two principals share a key.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The file could not be read or written.
    #[error("principals file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No randomness for keys.
    #[error(transparent)]
    Rng(#[from] crate::csprng::RngError),
    /// The shared book is unusable: it did not open, or is older than the
    /// one held, or is missing. Retrying does not help.
    #[error("principals in shared state: {0}")]
    Shared(String),
    /// The store did not answer; a retry may.
    #[error("principals in shared state are unavailable: {0}")]
    SharedUnavailable(String),
}

/// What a reload changed among the configured principals, by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadChanges {
    /// Names new to the configuration.
    pub added: Vec<String>,
    /// Names no longer in it.
    pub removed: Vec<String>,
    /// Names in both with other roles, tenant or credentials.
    pub changed: Vec<String>,
    /// Names in both, unchanged.
    pub unchanged: usize,
}

/// Whether two entries of one name differ in what decides access.
fn differs(a: &PrincipalEntry, b: &PrincipalEntry) -> bool {
    let totp_differs = match (&a.totp, &b.totp) {
        (Some(x), Some(y)) => !x.same_as(y),
        (None, None) => false,
        _ => true,
    };
    a.principal != b.principal
        || a.key_hash != b.key_hash
        || a.cert_identity != b.cert_identity
        || totp_differs
}

/// What authentication reads: rebuilt on every change.
#[derive(Default)]
struct Snapshot {
    keys: ApiKeyRegistry,
    certs: HashMap<String, Principal>,
    totp: HashMap<String, Arc<TotpSecret>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("keys", &self.keys.len())
            .field("certs", &self.certs.len())
            .field("totp", &self.totp.len())
            .finish()
    }
}

#[derive(Debug)]
struct BookState {
    added: Vec<PrincipalEntry>,
    revoked: BTreeSet<String>,
    snapshot: Arc<Snapshot>,
    /// The shared entry's version this state came from (0: none).
    version: u64,
    /// The book's generation (see `BookFile::generation`).
    generation: u64,
}

/// Where the run-time part of the book is kept.
#[derive(Debug)]
enum Persistence {
    /// Nowhere (tests, embedders).
    Memory,
    /// `principals.json` (written by `tessera init`, before a store exists).
    File(PathBuf),
    /// The store's shared state: every replica's book (see `persist`).
    Shared(Shared),
}

/// The live principals.
#[derive(Debug)]
pub struct PrincipalBook {
    /// From the configuration; replaced as a whole on a reload.
    configured: RwLock<Arc<Vec<PrincipalEntry>>>,
    persistence: Persistence,
    state: RwLock<BookState>,
    /// Serializes changes, so the write happens outside `state`'s write
    /// lock and authentication never waits on an fsync or the database.
    writer: tokio::sync::Mutex<()>,
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> BookError {
    BookError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Why a stored book older than the one held is refused.
const ROLLED_BACK: &str = "the stored principal book is older than the one this replica holds \
                           (copied back in the database?); keeping this one";

/// How often a change is tried again after another replica changed the
/// book first.
const CHANGE_ATTEMPTS: usize = 8;

impl PrincipalBook {
    /// The configured principals plus those in `file` (when given and
    /// present); changes are persisted to `file`.
    pub fn open(configured: Vec<PrincipalEntry>, file: Option<PathBuf>) -> Result<Self, BookError> {
        let stored = match &file {
            Some(path) => persist::read_file(path)?,
            None => BookFile::default(),
        };
        let persistence = match file {
            Some(path) => Persistence::File(path),
            None => Persistence::Memory,
        };
        Self::assemble(configured, persistence, stored, 0)
    }

    /// The configured principals plus the run-time ones in the store's
    /// shared state, which every replica reads; changes are written there.
    /// When the store has none yet and `import` (a principals file from
    /// `tessera init` or an older version) exists, its principals are
    /// moved into the store first.
    pub async fn open_shared(
        configured: Vec<PrincipalEntry>,
        shared: Shared,
        import: Option<&Path>,
    ) -> Result<Self, BookError> {
        let (version, stored) = persist::load_or_import(&shared, import).await?;
        Self::assemble(configured, Persistence::Shared(shared), stored, version)
    }

    fn assemble(
        configured: Vec<PrincipalEntry>,
        persistence: Persistence,
        stored: BookFile,
        version: u64,
    ) -> Result<Self, BookError> {
        let generation = stored.generation;
        let (added, revoked) = persist::entries(stored)?;
        let mut names = BTreeSet::new();
        for entry in configured.iter().chain(&added) {
            if !names.insert(entry.principal.name.clone()) {
                return Err(BookError::NameTaken(entry.principal.name.clone()));
            }
        }
        let snapshot = Arc::new(build_snapshot(&configured, &added, &revoked)?);
        Ok(Self {
            configured: RwLock::new(Arc::new(configured)),
            persistence,
            state: RwLock::new(BookState {
                added,
                revoked,
                snapshot,
                version,
                generation,
            }),
            writer: tokio::sync::Mutex::new(()),
        })
    }

    /// The version and generation of the book held.
    fn held(&self) -> (u64, u64) {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        (state.version, state.generation)
    }

    /// Takes the store's book when it is newer than the one held (another
    /// replica changed it). A no-op unless the book is shared.
    pub async fn refresh(&self) -> Result<(), BookError> {
        let Persistence::Shared(shared) = &self.persistence else {
            return Ok(());
        };
        let _writer = self.writer.lock().await;
        let Some((version, stored)) = persist::load(shared).await? else {
            return Ok(());
        };
        let held = self.held();
        if version <= held.0 {
            return Ok(());
        }
        if stored.generation < held.1 {
            return Err(BookError::Shared(ROLLED_BACK.into()));
        }
        let generation = stored.generation;
        let (added, revoked) = persist::entries(stored)?;
        let snapshot = Arc::new(build_snapshot(&self.configured(), &added, &revoked)?);
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = BookState {
            added,
            revoked,
            snapshot,
            version,
            generation,
        };
        Ok(())
    }

    fn configured(&self) -> Arc<Vec<PrincipalEntry>> {
        Arc::clone(&self.configured.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the configured principals (a configuration reload). Run-time
    /// principals stay; a configured name or certificate identity that
    /// clashes with one of them refuses the whole reload, keeping the old
    /// configured set. Returns which configured principals were added,
    /// removed and changed.
    pub async fn replace_configured(
        &self,
        configured: Vec<PrincipalEntry>,
    ) -> Result<ReloadChanges, BookError> {
        let _writer = self.writer.lock().await;
        let (added, revoked) = {
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            (state.added.clone(), state.revoked.clone())
        };
        let mut names = BTreeSet::new();
        for entry in configured.iter().chain(&added) {
            if !names.insert(entry.principal.name.clone()) {
                return Err(BookError::NameTaken(entry.principal.name.clone()));
            }
        }
        let snapshot = Arc::new(build_snapshot(&configured, &added, &revoked)?);
        let old = self.configured();
        let by_name = |entries: &[PrincipalEntry]| -> BTreeMap<String, PrincipalEntry> {
            entries
                .iter()
                .map(|e| (e.principal.name.clone(), e.clone()))
                .collect()
        };
        let (before, after) = (by_name(&old), by_name(&configured));
        let mut counts = ReloadChanges::default();
        for (name, entry) in &after {
            match before.get(name) {
                None => counts.added.push(name.clone()),
                Some(was) if differs(was, entry) => counts.changed.push(name.clone()),
                Some(_) => counts.unchanged += 1,
            }
        }
        counts.removed = before
            .keys()
            .filter(|name| !after.contains_key(*name))
            .cloned()
            .collect();
        *self.configured.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(configured);
        self.state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot = snapshot;
        Ok(counts)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&state.snapshot)
    }

    /// The principal holding API key `key` (constant-time comparison).
    pub fn authenticate_key(&self, key: &str) -> Option<Principal> {
        self.snapshot().keys.authenticate(key).cloned()
    }

    /// The principal a verified client certificate's identities name. A
    /// certificate whose identities name two different principals names
    /// none: no one can claim another's SAN to ride on its certificate.
    pub fn authenticate_cert(&self, identities: &[String]) -> Option<Principal> {
        // Most calls carry no certificate: skip the snapshot lock for them.
        if identities.is_empty() {
            return None;
        }
        let snapshot = self.snapshot();
        let mut named = identities.iter().filter_map(|id| snapshot.certs.get(id));
        let first = named.next()?;
        if named.any(|other| other.name != first.name) {
            return None;
        }
        Some(first.clone())
    }

    /// Whether a live principal holds an API key with this public id.
    pub fn knows_key_id(&self, key_id: &str) -> bool {
        self.snapshot().keys.has_id(key_id)
    }

    /// The TOTP secret of a live principal.
    pub fn totp(&self, name: &str) -> Option<Arc<TotpSecret>> {
        self.snapshot().totp.get(name).cloned()
    }

    /// Whether `name` exists (revoked or not).
    fn exists(&self, added: &[PrincipalEntry], name: &str) -> bool {
        self.configured()
            .iter()
            .chain(added)
            .any(|e| e.principal.name == name)
    }

    /// Applies `change` to copies of the run-time principals (the store's
    /// newest, when shared), persists the result and only then makes it
    /// live. When another replica changed the shared book meanwhile, the
    /// change is applied again to theirs.
    async fn mutate(
        &self,
        mut change: impl FnMut(&mut Vec<PrincipalEntry>, &mut BTreeSet<String>) -> Result<(), BookError>,
    ) -> Result<(), BookError> {
        let _writer = self.writer.lock().await;
        for _ in 0..CHANGE_ATTEMPTS {
            let (mut added, mut revoked, version, generation) = match &self.persistence {
                Persistence::Shared(shared) => {
                    let held = self.held();
                    match persist::load(shared).await? {
                        // Never build on a book older than the one held
                        // (an old sealed book copied back in the database).
                        Some((_, stored)) if stored.generation < held.1 => {
                            return Err(BookError::Shared(ROLLED_BACK.into()));
                        }
                        Some((version, stored)) => {
                            let generation = stored.generation;
                            let (added, revoked) = persist::entries(stored)?;
                            (added, revoked, version, generation)
                        }
                        // Gone although this replica read one: deleted in
                        // the database. Writing an empty book would drop
                        // every principal and revocation.
                        None if held.0 > 0 => {
                            return Err(BookError::Shared(
                                "the principal book is missing from the store; not replacing it"
                                    .into(),
                            ));
                        }
                        None => (Vec::new(), BTreeSet::new(), 0, 0),
                    }
                }
                _ => {
                    let state = self.state.read().unwrap_or_else(|p| p.into_inner());
                    (
                        state.added.clone(),
                        state.revoked.clone(),
                        state.version,
                        state.generation,
                    )
                }
            };
            change(&mut added, &mut revoked)?;
            let snapshot = Arc::new(build_snapshot(&self.configured(), &added, &revoked)?);
            let generation = generation.saturating_add(1);
            let file = persist::book_file(&added, &revoked, generation);
            let version = match &self.persistence {
                Persistence::Memory => version,
                Persistence::File(path) => {
                    persist::write_file(path, &file)?;
                    version
                }
                Persistence::Shared(shared) => {
                    match persist::store(shared, &file, version).await? {
                        Some(version) => version,
                        // Another replica changed it first: again, on theirs.
                        None => continue,
                    }
                }
            };
            *self.state.write().unwrap_or_else(|p| p.into_inner()) = BookState {
                added,
                revoked,
                snapshot,
                version,
                generation,
            };
            return Ok(());
        }
        Err(BookError::Shared(
            "other replicas kept changing the principal book; retry".into(),
        ))
    }

    /// Creates a principal with a fresh API key (and a TOTP secret for the
    /// admin, audit and operator roles), persists it and makes it live.
    pub async fn add(&self, new: NewPrincipal) -> Result<IssuedCredentials, BookError> {
        let (entry, issued) = self.issue(new)?;
        self.insert(entry).await?;
        Ok(issued)
    }

    /// Issues credentials for a principal without making it live: a grant
    /// that waits for approval holds the entry until [`Self::insert`].
    /// Refuses a taken name or identity and roles outside the scope now, so
    /// the requester learns at once.
    pub fn issue(
        &self,
        new: NewPrincipal,
    ) -> Result<(PrincipalEntry, IssuedCredentials), BookError> {
        if let Some(role) = new.roles.iter().find(|r| !r.allowed_in(&new.tenant)) {
            return Err(BookError::RoleOutOfScope(*role));
        }
        {
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            self.check_free(
                &state.added,
                &state.revoked,
                &new.name,
                new.cert_identity.as_deref(),
            )?;
        }
        let key = api_key::generate()?;
        let needs_otp = new
            .roles
            .iter()
            .any(|r| matches!(r, Role::Admin | Role::Audit | Role::Operator));
        let totp = if needs_otp {
            Some(Arc::new(TotpSecret::generate()?))
        } else {
            None
        };
        let entry = PrincipalEntry {
            principal: Principal {
                name: new.name,
                tenant: new.tenant,
                roles: new.roles,
            },
            key_hash: Some(key.hash),
            cert_identity: new.cert_identity,
            totp: totp.clone(),
            created_at_ms: new.created_at_ms,
            created_by: new.created_by,
        };
        Ok((
            entry,
            IssuedCredentials {
                api_key: key.key,
                totp,
            },
        ))
    }

    /// Makes an issued principal live (persisted first).
    pub async fn insert(&self, entry: PrincipalEntry) -> Result<(), BookError> {
        self.mutate(|added, revoked| {
            self.check_free(
                added,
                revoked,
                &entry.principal.name,
                entry.cert_identity.as_deref(),
            )?;
            added.push(entry.clone());
            Ok(())
        })
        .await
    }

    /// Refuses a name that exists or existed, and a bound identity.
    fn check_free(
        &self,
        added: &[PrincipalEntry],
        revoked: &BTreeSet<String>,
        name: &str,
        cert_identity: Option<&str>,
    ) -> Result<(), BookError> {
        if self.exists(added, name) || revoked.contains(name) {
            return Err(BookError::NameTaken(name.to_owned()));
        }
        if let Some(id) = cert_identity
            && self
                .configured()
                .iter()
                .chain(added.iter())
                .any(|e| e.cert_identity.as_deref() == Some(id))
        {
            return Err(BookError::IdentityTaken(id.to_owned()));
        }
        Ok(())
    }

    /// Revokes `name`: every credential of it stops working now.
    pub async fn revoke(&self, name: &str) -> Result<(), BookError> {
        self.mutate(|added, revoked| {
            if !self.exists(added, name) {
                return Err(BookError::NotFound(name.to_owned()));
            }
            revoked.insert(name.to_owned());
            Ok(())
        })
        .await
    }

    /// The principal named `name`, revoked or not.
    pub fn get(&self, name: &str) -> Option<PrincipalSummary> {
        self.list().into_iter().find(|s| s.principal.name == name)
    }

    /// `name`'s lineage: its creator, its creator's creator, and so on
    /// (empty for configured principals). A principal added before creators
    /// were recorded ends the chain with [`UNKNOWN_CREATOR`], which makes
    /// every approval it takes part in ineligible. Bounded, so a cycle in a
    /// hand-edited file cannot loop.
    pub fn lineage(&self, name: &str) -> Vec<String> {
        const DEPTH: usize = 64;
        let all = self.list();
        let mut chain = Vec::new();
        let mut current = name.to_owned();
        while chain.len() < DEPTH {
            let Some(summary) = all.iter().find(|s| s.principal.name == current) else {
                break;
            };
            if summary.created_at_ms == u64::MAX {
                chain.push(UNKNOWN_CREATOR.to_owned());
                break;
            }
            let Some(creator) = summary.created_by.clone() else {
                break;
            };
            if chain.contains(&creator) {
                break;
            }
            chain.push(creator.clone());
            current = creator;
        }
        chain
    }

    /// Every principal, configured first.
    pub fn list(&self) -> Vec<PrincipalSummary> {
        let held = self.configured();
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let configured = held.iter().map(|e| (e, Origin::Config));
        let added = state.added.iter().map(|e| (e, Origin::Added));
        configured
            .chain(added)
            .map(|(e, origin)| PrincipalSummary {
                principal: e.principal.clone(),
                origin,
                revoked: state.revoked.contains(&e.principal.name),
                has_api_key: e.key_hash.is_some(),
                cert_identity: e.cert_identity.clone(),
                has_totp: e.totp.is_some(),
                created_at_ms: e.created_at_ms,
                created_by: e.created_by.clone(),
            })
            .collect()
    }
}

/// A replica's book follows the changes other replicas make to theirs.
#[async_trait::async_trait]
impl crate::shared::feed::Follower for PrincipalBook {
    fn kinds(&self) -> &'static [crate::store::StateKind] {
        &[crate::store::StateKind::Principal]
    }

    async fn changed(&self, _: &[crate::store::StateChange]) -> Result<(), String> {
        match self.refresh().await {
            Ok(()) => Ok(()),
            // Read again at the next poll.
            Err(e @ BookError::SharedUnavailable(_)) => Err(e.to_string()),
            // Unusable (edited, rolled back): this replica keeps its book.
            Err(e) => {
                tracing::error!(
                    alert = "shared_state_unreadable",
                    error = %e,
                    "principals changed in the store could not be taken; keeping the book held"
                );
                Ok(())
            }
        }
    }
}

fn build_snapshot(
    configured: &[PrincipalEntry],
    added: &[PrincipalEntry],
    revoked: &BTreeSet<String>,
) -> Result<Snapshot, BookError> {
    let mut snapshot = Snapshot {
        keys: ApiKeyRegistry::new(),
        ..Snapshot::default()
    };
    for entry in configured.iter().chain(added) {
        let name = &entry.principal.name;
        if revoked.contains(name) {
            continue;
        }
        if let Some(hash) = &entry.key_hash {
            snapshot
                .keys
                .insert(hash.clone(), entry.principal.clone())?;
        }
        if let Some(id) = &entry.cert_identity
            && snapshot
                .certs
                .insert(id.clone(), entry.principal.clone())
                .is_some()
        {
            return Err(BookError::IdentityTaken(id.clone()));
        }
        if let Some(totp) = &entry.totp {
            snapshot.totp.insert(name.clone(), Arc::clone(totp));
        }
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str, roles: &[Role]) -> NewPrincipal {
        NewPrincipal {
            name: name.into(),
            tenant: TenantId::new("default").unwrap(),
            roles: roles.iter().copied().collect(),
            cert_identity: Some(format!("spiffe://tessera/{name}")),
            created_by: None,
            created_at_ms: 0,
        }
    }

    #[tokio::test]
    async fn added_principals_authenticate_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        let book = PrincipalBook::open(Vec::new(), Some(file.clone())).unwrap();
        let pos = book.add(new("pos", &[Role::Tokenize])).await.unwrap();
        assert!(pos.totp.is_none());
        let admin = book.add(new("ops", &[Role::Admin])).await.unwrap();
        assert!(admin.totp.is_some());
        let key = pos.api_key.expose_secret().to_owned();
        assert_eq!(book.authenticate_key(&key).unwrap().name, "pos");
        assert_eq!(
            book.authenticate_cert(&["spiffe://tessera/ops".into()])
                .unwrap()
                .name,
            "ops"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&key), "the API key itself is never stored");

        let reopened = PrincipalBook::open(Vec::new(), Some(file)).unwrap();
        assert_eq!(reopened.authenticate_key(&key).unwrap().name, "pos");
        let code_before = admin.totp.as_ref().unwrap().code_at(42);
        assert_eq!(reopened.totp("ops").unwrap().code_at(42), code_before);
    }

    #[tokio::test]
    async fn revocation_is_immediate_and_persistent() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        let book = PrincipalBook::open(Vec::new(), Some(file.clone())).unwrap();
        let pos = book.add(new("pos", &[Role::Tokenize])).await.unwrap();
        let key = pos.api_key.expose_secret().to_owned();
        book.revoke("pos").await.unwrap();
        assert!(book.authenticate_key(&key).is_none());
        assert!(
            book.authenticate_cert(&["spiffe://tessera/pos".into()])
                .is_none()
        );
        assert!(book.get("pos").unwrap().revoked);
        assert!(matches!(
            book.add(new("pos", &[Role::Tokenize])).await,
            Err(BookError::NameTaken(_))
        ));
        assert!(matches!(
            book.revoke("ghost").await,
            Err(BookError::NotFound(_))
        ));
        let reopened = PrincipalBook::open(Vec::new(), Some(file)).unwrap();
        assert!(reopened.authenticate_key(&key).is_none());
    }

    /// Review finding: principals added before creation was recorded loaded
    /// as "created at 0 by nobody", i.e. as eligible as configured ones,
    /// although one admin may have minted them alone.
    #[tokio::test]
    async fn principals_from_before_creation_records_are_never_eligible() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        let key = api_key::generate().unwrap();
        let legacy = serde_json::json!({
            "added": [{
                "name": "old-admin", "tenant": "default", "roles": ["admin"],
                "api_key_hash": key.hash.to_config_string(), "cert_identity": null,
                "totp_secret": null
            }],
            "revoked": []
        });
        std::fs::write(&file, legacy.to_string()).unwrap();
        let book = PrincipalBook::open(Vec::new(), Some(file)).unwrap();
        let old = book.get("old-admin").unwrap();
        assert_eq!(old.created_at_ms, u64::MAX);
        assert!(old.created_by.is_none());
        assert_eq!(book.lineage("old-admin"), vec![UNKNOWN_CREATOR.to_owned()]);
    }

    #[tokio::test]
    async fn lineage_follows_creators() {
        let book = PrincipalBook::open(Vec::new(), None).unwrap();
        let mut m1 = new("m1", &[Role::Admin]);
        m1.created_by = Some("alice".into());
        book.add(m1).await.unwrap();
        let mut m2 = new("m2", &[Role::Admin]);
        m2.created_by = Some("m1".into());
        book.add(m2).await.unwrap();
        assert_eq!(
            book.lineage("m2"),
            vec!["m1".to_owned(), "alice".to_owned()]
        );
        assert!(book.lineage("alice").is_empty());
    }

    /// Finding 14: a multi-SAN certificate whose SANs two principals
    /// claim authenticates as neither.
    #[tokio::test]
    async fn a_certificate_naming_two_principals_names_none() {
        let book = PrincipalBook::open(Vec::new(), None).unwrap();
        book.add(new("a", &[Role::Tokenize])).await.unwrap();
        book.add(new("b", &[Role::Tokenize])).await.unwrap();
        let both = [
            "spiffe://tessera/a".to_owned(),
            "spiffe://tessera/b".to_owned(),
        ];
        assert!(book.authenticate_cert(&both).is_none());
        let one = ["spiffe://tessera/a".to_owned(), "dns-nobody".to_owned()];
        assert_eq!(book.authenticate_cert(&one).unwrap().name, "a");
    }

    #[tokio::test]
    async fn roles_stay_in_their_scope() {
        let book = PrincipalBook::open(Vec::new(), None).unwrap();
        assert!(matches!(
            book.add(new("op", &[Role::Operator])).await,
            Err(BookError::RoleOutOfScope(Role::Operator))
        ));
        let mut op = new("op", &[Role::Operator, Role::Audit]);
        op.tenant = TenantId::system();
        assert!(book.add(op).await.is_ok());
        let mut admin = new("sysadmin", &[Role::Admin]);
        admin.tenant = TenantId::system();
        assert!(matches!(
            book.add(admin).await,
            Err(BookError::RoleOutOfScope(Role::Admin))
        ));
    }

    #[tokio::test]
    async fn duplicate_identities_are_refused() {
        let book = PrincipalBook::open(Vec::new(), None).unwrap();
        book.add(new("a", &[Role::Tokenize])).await.unwrap();
        let mut b = new("b", &[Role::Tokenize]);
        b.cert_identity = Some("spiffe://tessera/a".into());
        assert!(matches!(
            book.add(b).await,
            Err(BookError::IdentityTaken(_))
        ));
    }

    fn shared_over(store: &Arc<crate::store::memory::MemoryStore>) -> Shared {
        let store: Arc<dyn crate::store::Store> = store.clone();
        Shared::new(
            store,
            Arc::new(crate::shared::seal::StateSeal::new(
                crate::secret::DataKey::from_bytes([9; 32]),
            )),
        )
    }

    /// Two replicas' books over one store: what one adds or revokes, the
    /// other takes on its next refresh (the change feed calls it); changes
    /// made on both at once both land.
    #[tokio::test]
    async fn replicas_share_one_book() {
        let store = Arc::new(crate::store::memory::MemoryStore::new());
        let a = PrincipalBook::open_shared(Vec::new(), shared_over(&store), None)
            .await
            .unwrap();
        let b = PrincipalBook::open_shared(Vec::new(), shared_over(&store), None)
            .await
            .unwrap();
        let pos = a.add(new("pos", &[Role::Tokenize])).await.unwrap();
        let key = pos.api_key.expose_secret().to_owned();
        assert!(b.authenticate_key(&key).is_none(), "not refreshed yet");
        b.refresh().await.unwrap();
        assert_eq!(b.authenticate_key(&key).unwrap().name, "pos");
        // b adds without having seen a's next change: applied to a's book.
        a.add(new("till", &[Role::Tokenize])).await.unwrap();
        b.add(new("ops", &[Role::Admin])).await.unwrap();
        a.refresh().await.unwrap();
        let names: Vec<String> = a.list().into_iter().map(|s| s.principal.name).collect();
        assert_eq!(names, ["pos", "till", "ops"]);
        // A name taken on one replica is taken on the other.
        assert!(matches!(
            b.add(new("till", &[Role::Tokenize])).await,
            Err(BookError::NameTaken(_))
        ));
        b.revoke("pos").await.unwrap();
        assert!(a.authenticate_key(&key).is_some(), "until a refreshes");
        a.refresh().await.unwrap();
        assert!(a.authenticate_key(&key).is_none());
        // A restarted replica reads the same book.
        let c = PrincipalBook::open_shared(Vec::new(), shared_over(&store), None)
            .await
            .unwrap();
        assert!(c.get("pos").unwrap().revoked);
    }

    /// Someone with write access to the database copies an older sealed
    /// book back (from before a revocation). It opens (it was sealed with
    /// the right key) but is older than what the replica holds: refused.
    #[tokio::test]
    async fn an_older_book_copied_back_is_refused() {
        use crate::store::{Expect, StateKind, StateStore};
        let store = Arc::new(crate::store::memory::MemoryStore::new());
        let a = PrincipalBook::open_shared(Vec::new(), shared_over(&store), None)
            .await
            .unwrap();
        let pos = a.add(new("pos", &[Role::Tokenize])).await.unwrap();
        let key = pos.api_key.expose_secret().to_owned();
        let before = store
            .state(StateKind::Principal, "book")
            .await
            .unwrap()
            .unwrap();
        a.revoke("pos").await.unwrap();
        store
            .put_state(
                StateKind::Principal,
                "book",
                Some(before.value),
                Expect::Any,
            )
            .await
            .unwrap();
        assert!(matches!(a.refresh().await, Err(BookError::Shared(_))));
        assert!(a.authenticate_key(&key).is_none(), "still revoked");
        // Nor is a change built on it, which would make it current.
        assert!(matches!(
            a.add(new("till", &[Role::Tokenize])).await,
            Err(BookError::Shared(_))
        ));
        // A book deleted from the database is not replaced by an empty one.
        let store2 = Arc::new(crate::store::memory::MemoryStore::new());
        let c = PrincipalBook::open_shared(Vec::new(), shared_over(&store2), None)
            .await
            .unwrap();
        c.add(new("pos", &[Role::Tokenize])).await.unwrap();
        let v = store2
            .state(StateKind::Principal, "book")
            .await
            .unwrap()
            .unwrap()
            .version;
        store2
            .put_state(StateKind::Principal, "book", None, Expect::Version(v))
            .await
            .unwrap();
        assert!(matches!(c.revoke("pos").await, Err(BookError::Shared(_))));
    }

    /// `tessera init` writes the principals file before any store exists;
    /// the first replica moves it into the store, and it is read from there.
    #[tokio::test]
    async fn a_principals_file_is_moved_into_the_store_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        let offline = PrincipalBook::open(Vec::new(), Some(file.clone())).unwrap();
        let pos = offline.add(new("pos", &[Role::Tokenize])).await.unwrap();
        let key = pos.api_key.expose_secret().to_owned();
        let store = Arc::new(crate::store::memory::MemoryStore::new());
        let a = PrincipalBook::open_shared(Vec::new(), shared_over(&store), Some(&file))
            .await
            .unwrap();
        assert_eq!(a.authenticate_key(&key).unwrap().name, "pos");
        a.revoke("pos").await.unwrap();
        // The file still lists pos live; the store wins.
        let b = PrincipalBook::open_shared(Vec::new(), shared_over(&store), Some(&file))
            .await
            .unwrap();
        assert!(b.authenticate_key(&key).is_none());
    }
}
