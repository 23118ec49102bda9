//! Generated gRPC types (checked in under `gen/`, regenerated and verified by
//! `tests/proto_bootstrap.rs`) and the hand-written redacted `Debug` of the
//! messages that carry a PAN.

#![allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::as_conversions,
    clippy::use_self,
    clippy::redundant_clone,
    clippy::manual_let_else
)]

use std::fmt;

/// `google.rpc` types used in batch results.
pub mod google {
    /// `google.rpc`.
    pub mod rpc {
        #[rustfmt::skip]
        include!("gen/google.rpc.rs");
    }
}

/// `tessera.v1`: the public API.
pub mod tessera {
    /// Version 1.
    pub mod v1 {
        #[rustfmt::skip]
        include!("gen/tessera.v1.rs");
    }
}

pub use tessera::v1;

/// The encoded `FileDescriptorSet` of every proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/tessera_descriptor.bin");

impl fmt::Debug for v1::TokenizeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenizeRequest")
            .field("pan", &"<redacted>")
            .field("format", &self.format)
            .field("deterministic", &self.deterministic)
            .field("ttl", &self.ttl)
            .field("single_use", &self.single_use)
            .field("metadata", &self.metadata.len())
            .finish()
    }
}

impl fmt::Debug for v1::DetokenizeResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DetokenizeResponse")
            .field("pan", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for v1::AddPrincipalResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddPrincipalResponse")
            .field("name", &self.name)
            .field("api_key", &"<redacted>")
            .field("otpauth_uri", &"<redacted>")
            .field("approval_id", &self.approval_id)
            .finish()
    }
}

impl fmt::Debug for v1::CreateSessionResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateSessionResponse")
            .field("session", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn descriptor_decodes() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        assert!(fds.file.iter().any(|f| f.package() == "tessera.v1"));
    }

    #[test]
    fn debug_of_pan_carriers_is_redacted() {
        let req = v1::TokenizeRequest {
            pan: "4111111111111111".into(),
            ..Default::default()
        };
        let resp = v1::DetokenizeResponse {
            pan: "4111111111111111".into(),
        };
        assert!(!format!("{req:?}").contains("4111"));
        assert!(!format!("{resp:?}").contains("4111"));
        let added = v1::AddPrincipalResponse {
            name: "ops".into(),
            api_key: "tsk_secret".into(),
            otpauth_uri: "otpauth://totp/x?secret=ABC".into(),
            approval_id: String::new(),
        };
        let shown = format!("{added:?}");
        assert!(!shown.contains("tsk_secret") && !shown.contains("ABC"));
    }
}
