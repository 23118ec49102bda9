//! Transport security: rustls (ring provider) for the listener and the CLI,
//! and the identities a verified client certificate names.
//!
//! Plaintext exists only for `serve --dev` on loopback; every other
//! listener serves TLS 1.2 or 1.3 (rustls offers nothing older). With a
//! client CA configured, a client certificate signed by it authenticates its
//! holder: its SAN URIs and DNS names are matched against the principals'
//! `cert_identity`.

pub mod pki;

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Installs ring as the process-wide rustls provider. Both ring and aws-lc
/// can be in the build (the AWS SDK brings the latter), and rustls refuses
/// to guess between them, so every entry point calls this first.
pub fn install_crypto_provider() {
    // Already installed (by an earlier call) is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Where the listener's certificate, key and client CA live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The server certificate chain (PEM).
    pub cert_file: PathBuf,
    /// The server private key (PEM).
    pub key_file: PathBuf,
    /// CA whose client certificates authenticate principals (PEM).
    pub client_ca_file: Option<PathBuf>,
    /// Refuse the handshake without a client certificate (needs the CA).
    pub require_client_cert: bool,
}

/// TLS material was unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Generating certificates failed.
    #[error("certificate generation: {0}")]
    Generate(String),
    /// A certificate, key or CA file did not parse or does not fit.
    #[error("{path}: {reason}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// Why, naming no key bytes.
        reason: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The listener's rustls configuration.
pub fn server_config(settings: &TlsSettings) -> Result<ServerTlsConfig, TlsError> {
    let identity = Identity::from_pem(read(&settings.cert_file)?, read(&settings.key_file)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &settings.client_ca_file {
        config = config
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(!settings.require_client_cert);
    }
    Ok(config)
}

fn unusable(path: &Path, reason: String) -> TlsError {
    TlsError::Unusable {
        path: path.to_owned(),
        reason,
    }
}

/// Maps a PEM reading error on `path`.
fn pem_error(path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |e| match e {
        rustls::pki_types::pem::Error::Io(source) => TlsError::Read {
            path: path.to_owned(),
            source,
        },
        // Some variants quote lines of the file: the reason names none.
        _ => unusable(path, "not a usable PEM file".to_owned()),
    }
}

/// The same settings as a plain rustls configuration, for listeners that
/// are not tonic's (the metrics endpoint): same certificate, same client
/// CA, same choice between optional and required client certificates.
/// `alpn` names the protocols offered (`http/1.1` for the metrics).
pub fn rustls_server_config(
    settings: &TlsSettings,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(&settings.cert_file)
        .map_err(pem_error(&settings.cert_file))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(&settings.cert_file))?;
    let key =
        PrivateKeyDer::from_pem_file(&settings.key_file).map_err(pem_error(&settings.key_file))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &settings.client_ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(pem_error(ca))? {
                roots
                    .add(cert.map_err(pem_error(ca))?)
                    .map_err(|e| unusable(ca, e.to_string()))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(roots));
            let verifier = if settings.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier.build().map_err(|e| unusable(ca, e.to_string()))?,
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| unusable(&settings.key_file, e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client's TLS options: the CA to trust, an optional client
/// certificate and key, and the name to expect in the server certificate.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// CA certificate (PEM) that signed the server certificate.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM) for mTLS.
    pub key_file: Option<PathBuf>,
    /// Server name to verify, when it differs from the address's host.
    pub server_name: Option<String>,
}

impl ClientTls {
    /// The tonic client configuration.
    pub fn config(&self) -> Result<ClientTlsConfig, TlsError> {
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &self.ca_file {
            config = config.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

/// The identities a (verified) leaf certificate names: its SAN URIs and
/// DNS names, in certificate order. Unparseable certificates name none.
pub fn certificate_identities(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_come_from_the_san() {
        let ca = pki::Authority::generate("test CA", pki::Validity::days(1)).unwrap();
        let client = ca
            .issue_client("spiffe://tessera/pos", pki::Validity::days(1))
            .unwrap();
        let der = pki::pem_to_der(&client.cert_pem).unwrap();
        assert_eq!(certificate_identities(&der), ["spiffe://tessera/pos"]);
        let server = ca
            .issue_server(
                &["localhost".into(), "127.0.0.1".into()],
                pki::Validity::days(1),
            )
            .unwrap();
        let der = pki::pem_to_der(&server.cert_pem).unwrap();
        assert_eq!(certificate_identities(&der), ["localhost"]);
        assert!(certificate_identities(b"not a certificate").is_empty());
    }
}
