//! One commit of the write pipeline as one transaction.
//!
//! Under the commit lock, the audit log's tail and signed head are read and
//! the batch's events checked against them and chained after them
//! ([`crate::store::ChainStep`]), and three
//! reads fetch what the batch's checks need
//! (which of its token ids exist, which are tombstoned, who holds its
//! fingerprints); the checks then run in memory in queue order, exactly as
//! the embedded stores run them, and the writes go out as one multi-row
//! insert per table. A refused unit rolls the transaction back and is named
//! in [`CommitError::Refused`]; the committer commits the rest again.

use std::collections::{HashMap, HashSet};

use tokio_postgres::Transaction;

use super::{COMMIT_LOCK, unavailable};
use crate::domain::{Fingerprint, TokenId};
use crate::store::compact::{self, Held};
use crate::store::{
    AuditAppend, CommitError, Compaction, StoreError, Tombstone, WrappedKeyRecord, WriteBatch,
};

/// A fingerprint index key: tenant and fingerprint.
type FingerprintKey<'a> = (&'a str, Fingerprint);

/// What the database holds for a batch's ids and fingerprints.
#[derive(Default)]
struct Known {
    records: HashSet<TokenId>,
    /// Ids of purged records: taken for good.
    purged: HashSet<TokenId>,
    tombstoned: HashSet<TokenId>,
    /// For the batch's compactions: each tombstoned record's tombstone,
    /// and whether the database's own grace (`compaction_policy`) passed.
    dead: HashMap<TokenId, (Tombstone, bool)>,
    /// For the batch's compactions: each record's stored seal versions,
    /// and whether the newest is older than the database's floor.
    versions: HashMap<TokenId, (Vec<u32>, bool)>,
    /// Each fingerprint's holder, and whether it is tombstoned.
    holders: HashMap<(String, Fingerprint), (TokenId, bool)>,
    /// Store keys of the batch's wrapped keys already in the key table.
    keys: HashSet<Vec<u8>>,
}

/// The rows a batch appends, gathered by the checks.
#[derive(Default)]
struct Rows<'a> {
    record_ids: Vec<&'a [u8]>,
    record_tenants: Vec<&'a str>,
    record_bodies: Vec<Vec<u8>>,
    /// The final holder of each fingerprint the batch sets.
    fingerprints: HashMap<FingerprintKey<'a>, TokenId>,
    tombstone_ids: Vec<&'a [u8]>,
    tombstone_bodies: Vec<Vec<u8>>,
    key_ids: Vec<Vec<u8>>,
    key_tenants: Vec<&'a str>,
    key_bodies: Vec<Vec<u8>>,
    /// Purges: the unit, its cutoff and its records.
    purges: Vec<(usize, i64, Vec<&'a [u8]>)>,
    /// Seal versions to drop: the unit, and its records and versions,
    /// pairwise.
    drops: Vec<(usize, SealVersions<'a>)>,
}

/// Records and seal versions, pairwise.
type SealVersions<'a> = (Vec<&'a [u8]>, Vec<i32>);

/// Checks and writes `batch` in one transaction on `client`.
pub(super) async fn write(
    client: &mut tokio_postgres::Client,
    batch: &WriteBatch,
) -> Result<(), CommitError> {
    let tx = client.transaction().await.map_err(unavailable)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&COMMIT_LOCK])
        .await
        .map_err(unavailable)?;
    let audit = match batch.audit.tail_from() {
        Some(from) => {
            let (tail, head) = tail(&tx, from).await?;
            batch.audit.place(&tail, head.as_deref())?.into_owned()
        }
        None => AuditAppend::default(),
    };
    let mut known = known(&tx, batch).await?;
    known.keys = known_keys(&tx, batch).await?;
    let rows = check(batch, &known)?;
    append(&tx, &rows).await?;
    compact(&tx, &rows).await?;
    if !audit.events.is_empty() {
        let first = i64::try_from(audit.from)
            .map_err(|_| StoreError::Damaged("audit position out of range"))?;
        let seqs: Vec<i64> = (first..).take(audit.events.len()).collect();
        tx.execute(
            "INSERT INTO audit_events (seq, body)
             SELECT * FROM unnest($1::int8[], $2::bytea[])",
            &[&seqs, &audit.events],
        )
        .await
        .map_err(unavailable)?;
    }
    if let Some(head) = &audit.head {
        tx.execute(
            "INSERT INTO audit_head (only_row, body) VALUES (true, $1)
             ON CONFLICT (only_row) DO UPDATE SET body = excluded.body",
            &[head],
        )
        .await
        .map_err(unavailable)?;
    }
    super::commit_durably(tx).await?;
    Ok(())
}

/// The audit log's events from `from` on and its signed head, read under
/// the commit lock: every replica's batch is chained after (and checked
/// against) what this returns, so none races another for a position.
async fn tail(
    tx: &Transaction<'_>,
    from: u64,
) -> Result<(Vec<(u64, Vec<u8>)>, Option<Vec<u8>>), StoreError> {
    let from =
        i64::try_from(from).map_err(|_| StoreError::Damaged("audit position out of range"))?;
    let limit = i64::try_from(crate::store::MAX_TAIL_EVENTS).unwrap_or(i64::MAX);
    let tail = tx
        .query(
            "SELECT seq, body FROM audit_events WHERE seq >= $1 ORDER BY seq LIMIT $2",
            &[&from, &limit],
        )
        .await
        .map_err(unavailable)?
        .iter()
        .map(super::audit::event)
        .collect::<Result<Vec<_>, _>>()?;
    let head = tx
        .query_opt("SELECT body FROM audit_head", &[])
        .await
        .map_err(unavailable)?
        .map(|row| row.try_get(0).map_err(super::damaged))
        .transpose()?;
    Ok((tail, head))
}

/// Reads what the checks of `batch` need, in three queries.
async fn known(tx: &Transaction<'_>, batch: &WriteBatch) -> Result<Known, StoreError> {
    let mut ids: Vec<&[u8]> = Vec::new();
    let mut fp_tenants: Vec<&str> = Vec::new();
    let mut fp_values: Vec<&[u8]> = Vec::new();
    for unit in &batch.units {
        for record in &unit.records {
            ids.push(record.token_id.as_bytes());
            if let Some(fp) = &record.fingerprint {
                fp_tenants.push(record.tenant.as_str());
                fp_values.push(fp.as_bytes());
            }
        }
        for (id, _) in &unit.tombstones {
            ids.push(id.as_bytes());
        }
        for compaction in &unit.compactions {
            ids.push(compaction.id().as_bytes());
        }
    }
    let mut known = Known::default();
    if ids.is_empty() {
        return Ok(known);
    }
    (known.records, known.purged) = present_or_purged(tx, &ids).await?;
    if batch.units.iter().any(|unit| !unit.compactions.is_empty()) {
        compaction_facts(tx, batch, &mut known).await?;
    }
    if !fp_values.is_empty() {
        for row in tx
            .query(
                "SELECT f.tenant, f.fingerprint, f.token_id, t.token_id IS NOT NULL
                 FROM fingerprints f LEFT JOIN tombstones t ON t.token_id = f.token_id
                 WHERE (f.tenant, f.fingerprint) IN
                     (SELECT * FROM unnest($1::text[], $2::bytea[]))",
                &[&fp_tenants, &fp_values],
            )
            .await
            .map_err(unavailable)?
        {
            let tenant: String = row.try_get(0).map_err(super::damaged)?;
            let fingerprint = Fingerprint::from_slice(row.try_get(1).map_err(super::damaged)?)
                .ok_or(StoreError::Damaged("corrupt fingerprint index"))?;
            let holder = token_id(row.try_get(2))?;
            let dead: bool = row.try_get(3).map_err(super::damaged)?;
            known.holders.insert((tenant, fingerprint), (holder, dead));
        }
    }
    known.tombstoned = present(tx, "tombstones", &ids).await?;
    Ok(known)
}

/// Which of `ids` have a record, and which were purged, in one query.
async fn present_or_purged(
    tx: &Transaction<'_>,
    ids: &[&[u8]],
) -> Result<(HashSet<TokenId>, HashSet<TokenId>), StoreError> {
    let mut records = HashSet::new();
    let mut purged = HashSet::new();
    for row in tx
        .query(
            "SELECT token_id, false FROM records WHERE token_id = ANY($1)
             UNION ALL SELECT token_id, true FROM purged_tokens WHERE token_id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(unavailable)?
    {
        let id = token_id(row.try_get(0))?;
        if row.try_get(1).map_err(super::damaged)? {
            purged.insert(id);
        } else {
            records.insert(id);
        }
    }
    Ok((records, purged))
}

/// What the checks of a batch's compactions need: the tombstones of the
/// records it purges (with the database's verdict on its minimum grace)
/// and the newest seal version of each record it names.
async fn compaction_facts(
    tx: &Transaction<'_>,
    batch: &WriteBatch,
    known: &mut Known,
) -> Result<(), StoreError> {
    let ids: Vec<&[u8]> = batch
        .units
        .iter()
        .flat_map(|unit| &unit.compactions)
        .map(|compaction| compaction.id().as_bytes().as_slice())
        .collect();
    for row in tx
        .query(
            "SELECT token_id, body, tessera_graced(recorded_at, xmin)
             FROM tombstones WHERE token_id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(unavailable)?
    {
        let id = token_id(row.try_get(0))?;
        // A tombstone that does not decode qualifies nothing: its unit is
        // refused, and the other callers' units commit.
        let Ok(tombstone) = Tombstone::decode(row.try_get(1).map_err(super::damaged)?) else {
            continue;
        };
        let graced: bool = row.try_get(2).map_err(super::damaged)?;
        known.dead.insert(id, (tombstone, graced));
    }
    for row in tx
        .query(
            "SELECT token_id, array_agg(version),
                    (array_agg(tessera_graced(recorded_at, xmin) ORDER BY version DESC))[1]
             FROM sealed_versions WHERE token_id = ANY($1) GROUP BY token_id",
            &[&ids],
        )
        .await
        .map_err(unavailable)?
    {
        let id = token_id(row.try_get(0))?;
        let versions: Vec<i32> = row.try_get(1).map_err(super::damaged)?;
        let versions = versions
            .into_iter()
            .map(|v| u32::try_from(v).map_err(|_| StoreError::Damaged("negative seal version")))
            .collect::<Result<_, _>>()?;
        let graced: bool = row.try_get(2).map_err(super::damaged)?;
        known.versions.insert(id, (versions, graced));
    }
    Ok(())
}

/// Which wrapped keys of `batch` the key table holds already.
async fn known_keys(
    tx: &Transaction<'_>,
    batch: &WriteBatch,
) -> Result<HashSet<Vec<u8>>, StoreError> {
    let wanted: Vec<Vec<u8>> = batch
        .units
        .iter()
        .flat_map(|u| &u.keys)
        .map(|k| WrappedKeyRecord::store_key(&k.context))
        .collect();
    if wanted.is_empty() {
        return Ok(HashSet::new());
    }
    tx.query(
        "SELECT store_key FROM wrapped_keys WHERE store_key = ANY($1)",
        &[&wanted],
    )
    .await
    .map_err(unavailable)?
    .iter()
    .map(|row| row.try_get(0).map_err(super::damaged))
    .collect()
}

/// Which of `ids` have a row in `table` (`records` or `tombstones`).
pub(super) async fn present(
    tx: &Transaction<'_>,
    table: &'static str,
    ids: &[&[u8]],
) -> Result<HashSet<TokenId>, StoreError> {
    let query = format!("SELECT token_id FROM {table} WHERE token_id = ANY($1)");
    tx.query(&query, &[&ids])
        .await
        .map_err(unavailable)?
        .iter()
        .map(|row| token_id(row.try_get(0)))
        .collect()
}

/// A token id column.
fn token_id(column: Result<&[u8], tokio_postgres::Error>) -> Result<TokenId, StoreError> {
    TokenId::from_slice(column.map_err(super::damaged)?)
        .ok_or(StoreError::Damaged("corrupt token id"))
}

/// Runs the store's rules over `batch` in queue order, each unit seeing the
/// units before it; returns the rows to append or the first refused unit.
fn check<'a>(batch: &'a WriteBatch, known: &Known) -> Result<Rows<'a>, CommitError> {
    let mut rows = Rows::default();
    let mut new_ids: HashSet<TokenId> = HashSet::new();
    let mut new_tombstones: HashSet<TokenId> = HashSet::new();
    let mut new_purged: HashSet<TokenId> = HashSet::new();
    let mut new_dropped: HashSet<(TokenId, u32)> = HashSet::new();
    for (index, unit) in batch.units.iter().enumerate() {
        let refuse = |error| CommitError::Refused { unit: index, error };
        for key in &unit.keys {
            let id = WrappedKeyRecord::store_key(&key.context);
            if known.keys.contains(&id) || rows.key_ids.contains(&id) {
                return Err(refuse(StoreError::AlreadyExists));
            }
            rows.key_ids.push(id);
            rows.key_tenants.push(key.context.tenant.as_str());
            rows.key_bodies.push(key.encode());
        }
        for record in &unit.records {
            let id = record.token_id;
            if new_ids.contains(&id) || known.records.contains(&id) || known.purged.contains(&id) {
                return Err(refuse(StoreError::AlreadyExists));
            }
            if let Some(fp) = record.fingerprint {
                let key = (record.tenant.as_str(), fp);
                let holder = match rows.fingerprints.get(&key) {
                    Some(holder) => Some((*holder, false)),
                    None => known
                        .holders
                        .get(&(record.tenant.as_str().to_owned(), fp))
                        .copied(),
                };
                if let Some((holder, dead)) = holder
                    && !dead
                    && !new_tombstones.contains(&holder)
                {
                    return Err(refuse(StoreError::FingerprintTaken(holder)));
                }
                rows.fingerprints.insert(key, id);
            }
            new_ids.insert(id);
            rows.record_ids.push(record.token_id.as_bytes());
            rows.record_tenants.push(record.tenant.as_str());
            rows.record_bodies.push(record.encode());
        }
        for (id, tombstone) in &unit.tombstones {
            if known.purged.contains(id) || new_purged.contains(id) {
                return Err(refuse(StoreError::AlreadyExists));
            }
            if !new_ids.contains(id) && !known.records.contains(id) {
                return Err(refuse(StoreError::NotFound));
            }
            if new_tombstones.contains(id) || known.tombstoned.contains(id) {
                return Err(refuse(StoreError::AlreadyExists));
            }
            new_tombstones.insert(*id);
            rows.tombstone_ids.push(id.as_bytes());
            rows.tombstone_bodies.push(tombstone.encode());
        }
        let mut purges = Vec::new();
        let mut cutoff = None;
        let mut drops: SealVersions<'a> = (Vec::new(), Vec::new());
        for compaction in &unit.compactions {
            let id = compaction.id();
            // Made or killed in this batch: nothing of it is old enough.
            if new_ids.contains(id) || new_tombstones.contains(id) {
                return Err(refuse(StoreError::Conflict));
            }
            let held = if known.purged.contains(id) || new_purged.contains(id) {
                Held::Purged
            } else if known.records.contains(id) {
                Held::Record(known.dead.get(id).map(|(tombstone, _)| *tombstone))
            } else {
                Held::Nothing
            };
            match compaction {
                Compaction::Purge { dead_by_ms, .. } => {
                    compact::check_purge(held, *dead_by_ms).map_err(refuse)?;
                    // The owner's floor, by the database's clock.
                    if !known.dead.get(id).is_some_and(|(_, graced)| *graced) {
                        return Err(refuse(StoreError::Conflict));
                    }
                    let dead_by = i64::try_from(*dead_by_ms).unwrap_or(i64::MAX);
                    if cutoff.is_some_and(|c| c != dead_by) {
                        // One cutoff per unit, as the job writes them.
                        return Err(refuse(StoreError::Conflict));
                    }
                    cutoff = Some(dead_by);
                    new_purged.insert(*id);
                    purges.push(id.as_bytes().as_slice());
                }
                Compaction::DropSealVersions { versions, .. } => {
                    let (stored, graced) = known
                        .versions
                        .get(id)
                        .map_or((&[][..], false), |(v, graced)| (v.as_slice(), *graced));
                    // The owner's floor, by the database's clock: a newest
                    // version stored a moment ago (forged, say) drops nothing.
                    if !graced {
                        return Err(refuse(StoreError::Conflict));
                    }
                    let newest = stored.iter().copied().max().unwrap_or(0);
                    compact::check_drop(held, versions, newest, |v| {
                        stored.contains(&v) && !new_dropped.contains(&(*id, v))
                    })
                    .map_err(refuse)?;
                    for version in versions {
                        let column =
                            i32::try_from(*version).map_err(|_| refuse(StoreError::Conflict))?;
                        new_dropped.insert((*id, *version));
                        drops.0.push(id.as_bytes().as_slice());
                        drops.1.push(column);
                    }
                }
            }
        }
        if let Some(cutoff) = cutoff {
            rows.purges.push((index, cutoff, purges));
        }
        if !drops.0.is_empty() {
            rows.drops.push((index, drops));
        }
    }
    Ok(rows)
}

/// Runs the batch's compactions through the schema's two functions (the
/// only path by which rows leave the record tables). A function that finds
/// less to remove than the checks did refuses its unit.
async fn compact(tx: &Transaction<'_>, rows: &Rows<'_>) -> Result<(), CommitError> {
    for (unit, cutoff, ids) in &rows.purges {
        let purged = tx
            .query("SELECT tessera_purge($1, $2)", &[ids, cutoff])
            .await
            .map_err(unavailable)?
            .len();
        if purged != ids.len() {
            return Err(CommitError::Refused {
                unit: *unit,
                error: StoreError::Conflict,
            });
        }
    }
    for (unit, (ids, versions)) in &rows.drops {
        let dropped: i64 = tx
            .query_one(
                "SELECT tessera_drop_seal_versions($1, $2)",
                &[ids, versions],
            )
            .await
            .map_err(unavailable)?
            .try_get(0)
            .map_err(super::damaged)?;
        if usize::try_from(dropped).ok() != Some(ids.len()) {
            return Err(CommitError::Refused {
                unit: *unit,
                error: StoreError::Conflict,
            });
        }
    }
    Ok(())
}

/// Appends the checked rows: one multi-row insert per table, records first
/// (the others reference them).
async fn append(tx: &Transaction<'_>, rows: &Rows<'_>) -> Result<(), StoreError> {
    if !rows.record_ids.is_empty() {
        tx.execute(
            "INSERT INTO records (token_id, tenant, body)
             SELECT * FROM unnest($1::bytea[], $2::text[], $3::bytea[])",
            &[&rows.record_ids, &rows.record_tenants, &rows.record_bodies],
        )
        .await
        .map_err(unavailable)?;
    }
    if !rows.fingerprints.is_empty() {
        let mut tenants = Vec::with_capacity(rows.fingerprints.len());
        let mut fingerprints = Vec::with_capacity(rows.fingerprints.len());
        let mut holders = Vec::with_capacity(rows.fingerprints.len());
        for ((tenant, fp), holder) in &rows.fingerprints {
            tenants.push(*tenant);
            fingerprints.push(fp.as_bytes().as_slice());
            holders.push(holder.as_bytes().as_slice());
        }
        tx.execute(
            "INSERT INTO fingerprints (tenant, fingerprint, token_id)
             SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[])
             ON CONFLICT (tenant, fingerprint) DO UPDATE SET token_id = excluded.token_id",
            &[&tenants, &fingerprints, &holders],
        )
        .await
        .map_err(unavailable)?;
    }
    if !rows.key_ids.is_empty() {
        tx.execute(
            "INSERT INTO wrapped_keys (store_key, tenant, body)
             SELECT * FROM unnest($1::bytea[], $2::text[], $3::bytea[])",
            &[&rows.key_ids, &rows.key_tenants, &rows.key_bodies],
        )
        .await
        .map_err(unavailable)?;
    }
    if !rows.tombstone_ids.is_empty() {
        tx.execute(
            "INSERT INTO tombstones (token_id, body)
             SELECT * FROM unnest($1::bytea[], $2::bytea[])",
            &[&rows.tombstone_ids, &rows.tombstone_bodies],
        )
        .await
        .map_err(unavailable)?;
    }
    Ok(())
}
