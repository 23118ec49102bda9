//! TLS to PostgreSQL, with rustls: the server's certificate is always
//! verified, against the configured CA file and the host name it was
//! reached by. Configuring a CA makes TLS required (`sslmode=require`), so
//! a server or a man in the middle that declines TLS gets no plaintext
//! session, and no password.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use crate::store::StoreError;

/// A client configuration trusting only the CA certificates in `ca_file`
/// (PEM).
pub(super) fn client_config(ca_file: &Path) -> Result<ClientConfig, StoreError> {
    let unusable =
        |why: &str| StoreError::Unavailable(format!("store.ca_file {}: {why}", ca_file.display()));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|_| unusable("unreadable"))? {
        let cert = cert.map_err(|_| unusable("not PEM certificates"))?;
        roots
            .add(cert)
            .map_err(|_| unusable("holds a certificate that does not parse"))?;
    }
    if roots.is_empty() {
        return Err(unusable("holds no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| unusable("no protocol version in common"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
