//! Every problem of a configuration, not just the first: an operator fixes
//! a file in one round, and `tessera config check` lists them all.
//!
//! Each section's check notes its problems here and goes on with the next
//! key; a section with a problem yields no checked value, and the whole
//! check fails with everything found.

use std::fmt;

/// One problem: the dotted key and what is wrong with it. Never quotes a
/// secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key, dotted (`store.url`, `principals[2].roles`).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config key {}: {}", self.key, self.reason)
    }
}

/// A problem with `key`.
pub fn invalid(key: &str, reason: impl Into<String>) -> Problem {
    Problem {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// The problems found so far.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// Notes a problem with `key`.
    pub fn add(&mut self, key: &str, reason: impl Into<String>) {
        self.0.push(invalid(key, reason));
    }

    /// The value of `checked`, or `None` with its problem noted.
    pub fn take<T>(&mut self, checked: Result<T, Problem>) -> Option<T> {
        checked.map_err(|p| self.0.push(p)).ok()
    }

    /// `value` when it lies in `range`, else `None` with `reason` noted
    /// against `key`.
    pub fn in_range<T: PartialOrd>(
        &mut self,
        key: &str,
        value: T,
        range: std::ops::RangeInclusive<T>,
        reason: &str,
    ) -> Option<T> {
        if range.contains(&value) {
            Some(value)
        } else {
            self.add(key, reason);
            None
        }
    }

    /// How many so far: a section compares before and after its checks.
    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// Every problem, in the order found.
    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}
