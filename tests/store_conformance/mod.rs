//! The store contract, one body per case, for every backend. A backend's
//! test file includes this module through `#[path]` and expands
//! [`conformance!`] with a factory of fresh, empty stores: one `#[test]` per
//! case and capability, so a failure names its case (the pattern of rustls'
//! `api.rs` and tikv's `engine_traits_tests`).

pub mod audit;
pub mod batch;
pub mod compact;
pub mod jobs;
pub mod keys;
pub mod records;
pub mod state;

use std::collections::BTreeMap;
use std::sync::Arc;

use tessera::domain::{CardBrand, Fingerprint, MaskedPan, TenantId, TokenId};
use tessera::store::{PublicFacts, SealedRecord, Store, Tombstone, TombstoneReason};

/// Makes a fresh, empty store.
#[async_trait::async_trait]
pub trait Factory: Sync {
    /// A new store.
    async fn make(&self) -> Arc<dyn Store>;
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

pub fn record(id: u8, tenant_name: &str, fp: Option<u8>) -> SealedRecord {
    SealedRecord {
        token_id: TokenId::from_bytes([id; 32]),
        tenant: tenant(tenant_name),
        fingerprint: fp.map(|b| Fingerprint::from_bytes([b; 32])),
        facts: PublicFacts {
            masked_pan: MaskedPan::from_stored("411111******1111".into()).unwrap(),
            brand: CardBrand::Visa,
            created_at_ms: 1000 + u64::from(id),
            expires_at_ms: None,
            single_use: false,
            metadata: BTreeMap::from([("k".to_owned(), format!("v{id}"))]),
        },
        sealed_pan: vec![id; 40],
    }
}

pub fn tombstone(reason: TombstoneReason) -> Tombstone {
    Tombstone { reason, at_ms: 7 }
}

/// One `#[tokio::test]` per conformance case, in a module per capability,
/// each against a fresh store from `$factory` (an expression, evaluated
/// per test).
macro_rules! conformance {
    ($factory:expr) => {
        conformance!(@cases $factory;
            records: [append_then_get, append_never_overwrites, fingerprint_is_unique_per_tenant_while_live, tombstone_once, concurrent_tombstones_exactly_one_wins, concurrent_appends_one_fingerprint_one_winner, scan_tenant_pages_in_order_and_stays_in_tenant, sealed_versions_append_in_order];
            keys: [wrapped_keys_append_only_and_listed_per_tenant, destroying_keys_is_per_tenant, wrapped_keys_replace_by_compare_and_swap];
            audit: [audit_log_appends_only_at_the_end];
            jobs: [checkpoints_overwrite_and_list];
            state: [state_puts_only_what_the_writer_expected, state_changes_come_in_order_with_deletions, racing_conditional_puts_lose_no_update];
            compact: [a_purged_record_is_gone_but_its_id_stays_taken, only_records_dead_by_the_cutoff_are_purged, seal_versions_drop_only_below_the_newest, scan_all_pages_every_tenant_in_id_order, a_batch_may_purge_a_holder_and_hand_its_fingerprint_on];
            batch: [commit_writes_every_unit_and_event_together, commit_refuses_the_unit_that_breaks_a_rule_and_writes_nothing, commit_units_see_the_units_before_them, commit_tombstone_of_a_missing_record_is_not_found, commit_events_only_at_the_end_of_the_log, concurrent_commits_keep_single_use_exactly_once, commit_chains_events_after_the_last_event_under_its_lock, commit_fails_whole_when_the_chain_step_refuses, commit_writes_a_units_wrapped_keys_with_it_once];
        );
    };
    (@cases $factory:expr; $($module:ident: [$($case:ident),* $(,)?];)*) => {
        $(
            mod $module {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $case() {
                        let factory = $factory;
                        crate::suite::$module::$case(&factory).await;
                    }
                )*
            }
        )*
    };
}
