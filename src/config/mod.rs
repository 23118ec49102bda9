//! Configuration: profiles, the TOML file, and validation.

/// Which safety rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `serve --dev`: loopback only, dev KMS, generated credentials.
    Dev,
    /// Everything else: no dev shortcuts.
    Production,
}
