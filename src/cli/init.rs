//! `tessera init`: a new deployment's master key, split into custodian
//! shares; one admin principal per custodian (API key, TOTP secret, client
//! certificate); a test PKI (CA, server and client certificates); and a
//! config file that serves TLS.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use crate::access::principals::{self, NewPrincipal, PrincipalBook};
use crate::access::totp::TotpSecret;
use crate::cli::EXIT_CONFIG;
use crate::domain::{Role, TenantId};
use crate::kms::shamir::{self, SETUP_FILE};
use crate::private_file::create_new;
use crate::service::authenticator::DEFAULT_OTP_STEP;
use crate::tls::pki::{Authority, Validity};

/// `tessera init` options.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Data directory of the new vault (gets shamir.json, principals.json,
    /// tls/ and tessera.toml).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Where to write each custodian's share, API key, TOTP URI and client
    /// certificate, and the extra client certificates.
    #[arg(long)]
    pub share_dir: PathBuf,
    /// Number of shares (custodians), N.
    #[arg(long, default_value_t = 5)]
    pub shares: u8,
    /// Shares needed to unseal, M (at least 2).
    #[arg(long, default_value_t = 3)]
    pub threshold: u8,
    /// Listen address written into tessera.toml.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// DNS names and IP addresses of the server certificate (repeatable).
    #[arg(long = "tls-name", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
    pub tls_names: Vec<String>,
    /// An extra client certificate with identity spiffe://tessera/NAME
    /// (repeatable), for `tessera principal add NAME --cert-identity …`.
    #[arg(long = "client")]
    pub clients: Vec<String>,
    /// Validity of the generated certificates, in days.
    #[arg(long, default_value_t = 365)]
    pub cert_days: i64,
}

/// The certificate identity `tessera init` gives principal `name`.
pub fn cert_identity(name: &str) -> String {
    format!("spiffe://tessera/{name}")
}

/// Runs `tessera init`.
#[allow(clippy::print_stdout)]
pub async fn run(args: &InitArgs) -> ExitCode {
    match init(args).await {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tessera init: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

async fn init(args: &InitArgs) -> Result<String, String> {
    let setup_path = args.data_dir.join(SETUP_FILE);
    if setup_path.exists() {
        return Err(format!(
            "{} exists: this data dir already has a master key",
            setup_path.display()
        ));
    }
    let (setup, shares) =
        shamir::split_new_master_key(args.threshold, args.shares).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&args.data_dir).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&args.share_dir).map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| e.to_string();
    let tls_dir = args.data_dir.join("tls");
    std::fs::create_dir_all(&tls_dir).map_err(io)?;
    let validity = Validity::days(args.cert_days);
    let ca = Authority::generate("Tessera test CA", validity).map_err(|e| e.to_string())?;
    let server = ca
        .issue_server(&args.tls_names, validity)
        .map_err(|e| e.to_string())?;
    create_new(&tls_dir.join("ca.pem"), ca.cert_pem().as_bytes()).map_err(io)?;
    create_new(&tls_dir.join("server.pem"), server.cert_pem.as_bytes()).map_err(io)?;
    create_new(
        &tls_dir.join("server.key"),
        server.key_pem.expose_secret().as_bytes(),
    )
    .map_err(io)?;
    let issue_client = |name: &str| -> Result<(), String> {
        let cert = ca
            .issue_client(&cert_identity(name), validity)
            .map_err(|e| e.to_string())?;
        create_new(
            &args.share_dir.join(format!("{name}.crt")),
            cert.cert_pem.as_bytes(),
        )
        .map_err(io)?;
        create_new(
            &args.share_dir.join(format!("{name}.key.pem")),
            cert.key_pem.expose_secret().as_bytes(),
        )
        .map_err(io)
    };
    let book = PrincipalBook::open(Vec::new(), Some(args.data_dir.join(principals::FILE_NAME)))
        .map_err(|e| e.to_string())?;
    // The file `serve` moves into the store's shared state.
    // Custodians hold shares of the master key: they are the operators of
    // the system scope (vault-wide actions), not admins of a tenant.
    let tenant = TenantId::system();
    for share in &shares {
        let n = share.number;
        let name = format!("custodian-{n}");
        let bytes = serde_json::to_vec_pretty(share).map_err(|e| e.to_string())?;
        create_new(&args.share_dir.join(format!("share-{n}.json")), &bytes).map_err(io)?;
        let issued = book
            .add(NewPrincipal {
                name: name.clone(),
                tenant: tenant.clone(),
                roles: [Role::Operator, Role::Audit].into_iter().collect(),
                cert_identity: Some(cert_identity(&name)),
                created_by: None,
                created_at_ms: 0,
            })
            .await
            .map_err(|e| e.to_string())?;
        create_new(
            &args.share_dir.join(format!("{name}.key")),
            issued.api_key.expose_secret().as_bytes(),
        )
        .map_err(io)?;
        let totp: Arc<TotpSecret> = issued.totp.ok_or("admin principals get a TOTP secret")?;
        create_new(
            &args.share_dir.join(format!("{name}.otpauth")),
            totp.otpauth_uri(&name, DEFAULT_OTP_STEP)
                .expose_secret()
                .as_bytes(),
        )
        .map_err(io)?;
        issue_client(&name)?;
    }
    for client in &args.clients {
        issue_client(client)?;
    }
    let setup_json = serde_json::to_vec_pretty(&setup).map_err(|e| e.to_string())?;
    create_new(&setup_path, &setup_json).map_err(io)?;
    let config = format!(
        "# Written by `tessera init`. Principals added with `tessera principal add` live in principals.json.\n\
         listen = \"{}\"\ndata_dir = \"{}\"\n\n[store]\nbackend = \"sled\"\n\n[kms]\nbackend = \"shamir\"\n\n\
         [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nrequire_client_cert = false\n",
        args.listen,
        args.data_dir.display(),
        tls_dir.join("server.pem").display(),
        tls_dir.join("server.key").display(),
        tls_dir.join("ca.pem").display(),
    );
    let config_path = args.data_dir.join("tessera.toml");
    create_new(&config_path, config.as_bytes()).map_err(io)?;
    Ok(format!(
        "Master key {} split into {} shares; any {} unseal the vault.\n\
         Wrote {} (public setup), {} (custodian principals), {} (TLS: ca.pem, server.pem, server.key) and {}.\n\
         In {}: for K = 1..{}, share-K.json plus custodian-K.key (API key), custodian-K.otpauth (TOTP for an\n\
         authenticator app) and custodian-K.crt/.key.pem (client certificate).\n\
         Give each custodian exactly one share and its own credentials, over separate channels, then delete them here.\n\
         No custodian may hold two shares. To start: tessera serve --config {}\n\
         then each of {} custodians runs:\n  \
         TESSERA_API_KEY=$(cat custodian-K.key) tessera unseal --share-file share-K.json \\\n    \
         --addr https://localhost:{} --ca-cert {}",
        setup.key_id,
        setup.shares,
        setup.threshold,
        setup_path.display(),
        args.data_dir.join(principals::FILE_NAME).display(),
        tls_dir.display(),
        config_path.display(),
        args.share_dir.display(),
        setup.shares,
        config_path.display(),
        setup.threshold,
        args.listen.rsplit(':').next().unwrap_or("50051"),
        tls_dir.join("ca.pem").display(),
    ))
}
