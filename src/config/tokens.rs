//! `[tokens]` and `[limits]`: the token format contract's defaults and the
//! bounds on what one call may ask.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::problems::Problems;
use crate::tokens::{GeneratorKind, LuhnPolicy, TokenFormat};
use crate::vault::VaultPolicy;

/// `[tokens]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTokens {
    /// `random` or `ff1`.
    pub generator: String,
    /// Leading PAN digits a token keeps: 0, 6 or 8.
    pub keep_leading: u32,
    /// Trailing PAN digits a token keeps: 0 or 4.
    pub keep_trailing: u32,
    /// `invalid`, `valid` or `any`: whether tokens pass the Luhn check.
    pub luhn: String,
    /// Whether a PAN tokenized twice gives the same token by default.
    pub deterministic: bool,
    /// Seconds a dead token (deleted, consumed, expired) is kept before
    /// compaction may purge it, counted from its tombstone: 0 to 315360000.
    pub purge_grace_s: u64,
    /// Compaction throttle in records examined per second (0: no limit).
    pub compact_records_per_second: u32,
}

impl Default for RawTokens {
    fn default() -> Self {
        Self {
            generator: "random".to_owned(),
            keep_leading: 6,
            keep_trailing: 4,
            luhn: "invalid".to_owned(),
            deterministic: false,
            purge_grace_s: VaultPolicy::default().purge_grace.as_secs(),
            compact_records_per_second: 0,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLimits {
    /// Items per batch call: 1 to 10000.
    pub max_batch_items: usize,
    /// Metadata bytes per token: at most 65536.
    pub max_metadata_bytes: usize,
    /// Metadata entries per token: at most 256.
    pub max_metadata_entries: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        let policy = VaultPolicy::default();
        Self {
            max_batch_items: policy.max_batch_items,
            max_metadata_bytes: policy.max_metadata_bytes,
            max_metadata_entries: policy.max_metadata_entries,
        }
    }
}

/// The policy `[tokens]` and `[limits]` make; the key and audit parts are
/// the defaults until their sections fill them in.
pub fn check_policy(
    tokens: &RawTokens,
    limits: &RawLimits,
    problems: &mut Problems,
) -> Option<VaultPolicy> {
    let generator = match tokens.generator.as_str() {
        "random" => Some(GeneratorKind::Random),
        "ff1" => Some(GeneratorKind::Ff1),
        _ => {
            problems.add("tokens.generator", "expected random or ff1");
            None
        }
    };
    let luhn = match tokens.luhn.as_str() {
        "invalid" => Some(LuhnPolicy::Invalid),
        "valid" => Some(LuhnPolicy::Valid),
        "any" => Some(LuhnPolicy::Any),
        _ => {
            problems.add("tokens.luhn", "expected invalid, valid or any");
            None
        }
    };
    let default_format = match (generator, luhn) {
        (Some(generator), Some(luhn)) => problems.take(
            TokenFormat::new(generator, tokens.keep_leading, tokens.keep_trailing, luhn)
                .map_err(|e| super::problems::invalid("tokens", e.to_string())),
        ),
        _ => None,
    };
    let purge_grace_s = problems.in_range(
        "tokens.purge_grace_s",
        tokens.purge_grace_s,
        0..=315_360_000,
        "must be at most 315360000 (ten years)",
    );
    let max_batch_items = problems.in_range(
        "limits.max_batch_items",
        limits.max_batch_items,
        1..=10_000,
        "must be 1 to 10000",
    );
    let max_metadata_bytes = problems.in_range(
        "limits.max_metadata_bytes",
        limits.max_metadata_bytes,
        0..=65_536,
        "must be at most 65536",
    );
    let max_metadata_entries = problems.in_range(
        "limits.max_metadata_entries",
        limits.max_metadata_entries,
        0..=256,
        "must be at most 256",
    );
    Some(VaultPolicy {
        default_format: default_format?,
        purge_grace: Duration::from_secs(purge_grace_s?),
        compact_records_per_second: Some(tokens.compact_records_per_second).filter(|r| *r > 0),
        deterministic_by_default: tokens.deterministic,
        max_batch_items: max_batch_items?,
        max_metadata_bytes: max_metadata_bytes?,
        max_metadata_entries: max_metadata_entries?,
        ..VaultPolicy::default()
    })
}
