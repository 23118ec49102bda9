//! Additional authenticated data: what a sealed record is bound to.
//!
//! `AAD = format version ‖ u16 len(tenant) ‖ tenant ‖ token id ‖ DEK version`
//! (DESIGN.md §3). A row copied to another token id or tenant, or a header
//! edited to name another DEK version, fails authentication (PCI DSS 3.7.7).

use crate::domain::{TenantId, TokenId};

/// Builds the AAD for one record.
pub fn record_aad(version: u8, tenant: &TenantId, token_id: &TokenId, dek_version: u32) -> Vec<u8> {
    let tenant = tenant.as_str().as_bytes();
    let mut aad = Vec::with_capacity(1 + 2 + tenant.len() + token_id.as_bytes().len() + 4);
    aad.push(version);
    // Tenant ids are at most 64 bytes (domain::tenant), so the length fits.
    aad.extend_from_slice(
        &u16::try_from(tenant.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    aad.extend_from_slice(tenant);
    aad.extend_from_slice(token_id.as_bytes());
    aad.extend_from_slice(&dek_version.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefix_keeps_fields_apart() {
        let id = TokenId::from_bytes([1; 32]);
        let a = record_aad(1, &TenantId::new("ab").unwrap(), &id, 1);
        let b = record_aad(1, &TenantId::new("a").unwrap(), &id, 1);
        assert_ne!(a, b);
        assert_eq!(a.len(), 1 + 2 + 2 + 32 + 4);
    }
}
