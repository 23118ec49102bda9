//! A small certificate authority for test deployments (`tessera init`):
//! a CA, server certificates and client certificates, made with rcgen.
//!
//! Leaf certificates are `CA:FALSE` with a SAN, which rustls requires (a
//! self-signed CA used as the server certificate is refused). Production
//! deployments bring certificates from their own PKI.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::secret::SecretString;
use crate::tls::TlsError;

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew) until `days` from now.
    pub fn days(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }

    /// Expired yesterday (for tests of refusal).
    pub fn expired() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::days(2),
            not_after: now - Duration::days(1),
        }
    }
}

/// A certificate in PEM with its private key.
pub struct IssuedPem {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM).
    pub key_pem: SecretString,
}

/// A CA that signs server and client certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

fn generate_error(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn named(common_name: &str, validity: Validity) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::new()).map_err(generate_error)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tessera");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    Ok(params)
}

impl Authority {
    /// A new CA with a fresh P-256 key.
    pub fn generate(common_name: &str, validity: Validity) -> Result<Self, TlsError> {
        let mut params = named(common_name, validity)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(generate_error)?;
        let cert = params.self_signed(&key).map_err(generate_error)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// The CA certificate, for clients and the server's client CA.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        purpose: ExtendedKeyUsagePurpose,
    ) -> Result<IssuedPem, TlsError> {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![purpose];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(generate_error)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate_error)?;
        Ok(IssuedPem {
            cert_pem: cert.pem(),
            key_pem: SecretString::new(key.serialize_pem()),
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn issue_server(
        &self,
        names: &[String],
        validity: Validity,
    ) -> Result<IssuedPem, TlsError> {
        let mut params = named(names.first().map_or("tessera", String::as_str), validity)?;
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => name
                    .as_str()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(generate_error),
            })
            .collect::<Result<_, _>>()?;
        self.issue(params, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate whose SAN URI is `identity` (what a principal's
    /// `cert_identity` names).
    pub fn issue_client(&self, identity: &str, validity: Validity) -> Result<IssuedPem, TlsError> {
        let mut params = named(identity, validity)?;
        params.subject_alt_names = vec![SanType::URI(identity.try_into().map_err(generate_error)?)];
        self.issue(params, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// The DER bytes of the first certificate in `pem`.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    Some(parsed.contents)
}
