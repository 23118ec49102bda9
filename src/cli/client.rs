//! Client commands: `tokenize`, `detokenize`, `info`, `delete`.
//!
//! Human output by default, `--json` for scripts. The PAN is read from
//! stdin when not given as an argument, so it need not appear in shell
//! history or the process list.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::proto::v1;
use crate::proto::v1::tokenizer_client::TokenizerClient;

/// Connection options shared by every client command.
#[derive(Debug, Args)]
pub struct Connection {
    /// Server address.
    #[arg(
        long,
        env = "TESSERA_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub addr: String,
    /// API key (prefer the environment variable over the flag).
    #[arg(long, env = "TESSERA_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// TOTP code for KeyAdmin, Audit and Principals calls; asked for on
    /// the terminal when omitted (and no session is given).
    #[arg(long, env = "TESSERA_OTP", hide_env_values = true, global = true)]
    pub otp: Option<String>,
    /// Admin session from `tessera login`: stands in for the TOTP code
    /// until it expires.
    #[arg(long, env = "TESSERA_SESSION", hide_env_values = true, global = true)]
    pub session: Option<String>,
    /// CA certificate (PEM) to verify the server with (`https://` addresses).
    #[arg(long, env = "TESSERA_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(
        long,
        env = "TESSERA_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mTLS.
    #[arg(
        long,
        env = "TESSERA_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// Name to verify in the server certificate, when not the address's host.
    #[arg(long, global = true)]
    pub tls_server_name: Option<String>,
}

impl Connection {
    /// The bearer header for the API key, or why there is none. Without an
    /// API key a client certificate may still authenticate the call.
    pub fn bearer(&self) -> Result<Bearer, String> {
        match self.api_key.as_deref() {
            Some(key) => Bearer::new(key).ok_or_else(|| {
                "the API key contains characters not allowed in a header".to_owned()
            }),
            None if self.client_cert.is_some() => Ok(Bearer::none()),
            None => Err(
                "no credentials: set TESSERA_API_KEY, pass --api-key or a client certificate"
                    .to_owned(),
            ),
        }
    }

    /// Credentials plus the TOTP code administrative RPCs need: `--otp`,
    /// else one line read from the terminal.
    pub fn admin_bearer(&self) -> Result<Bearer, String> {
        if let Some(session) = &self.session {
            return self
                .bearer()?
                .with_session(session.trim())
                .ok_or_else(|| "the session is not a valid header value".to_owned());
        }
        self.otp_bearer()
    }

    /// The API key with a TOTP code (asked for when not given), never a
    /// session: what opening a session takes.
    pub fn otp_bearer(&self) -> Result<Bearer, String> {
        let code = match &self.otp {
            Some(code) => code.trim().to_owned(),
            None => {
                eprint!("TOTP code: ");
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|e| format!("could not read the TOTP code: {e}"))?;
                line.trim().to_owned()
            }
        };
        self.bearer()?
            .with_otp(&code)
            .ok_or_else(|| "the TOTP code must be six digits".to_owned())
    }

    fn tls(&self) -> crate::tls::ClientTls {
        crate::tls::ClientTls {
            ca_file: self.ca_cert.clone(),
            cert_file: self.client_cert.clone(),
            key_file: self.client_key.clone(),
            server_name: self.tls_server_name.clone(),
        }
    }
}

/// Generators as CLI values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GeneratorArg {
    /// Random digits (default).
    Random,
    /// NIST FF1.
    Ff1,
}

/// Luhn policies as CLI values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LuhnArg {
    /// Token fails Luhn.
    Invalid,
    /// Token passes Luhn.
    Valid,
    /// No constraint.
    Any,
}

/// `tessera tokenize`.
#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// The PAN; read from stdin when omitted.
    pub pan: Option<String>,
    /// Token generator.
    #[arg(long, value_enum)]
    pub generator: Option<GeneratorArg>,
    /// Leading digits kept: 0, 6 or 8.
    #[arg(long)]
    pub keep_leading: Option<u32>,
    /// Trailing digits kept: 0 or 4.
    #[arg(long)]
    pub keep_trailing: Option<u32>,
    /// Luhn policy of the token.
    #[arg(long, value_enum)]
    pub luhn: Option<LuhnArg>,
    /// Same PAN, same token.
    #[arg(long)]
    pub deterministic: bool,
    /// Lifetime in seconds.
    #[arg(long)]
    pub ttl: Option<u64>,
    /// Consumed by the first detokenize.
    #[arg(long)]
    pub single_use: bool,
    /// Metadata as KEY=VALUE (repeatable).
    #[arg(long = "meta", value_parser = parse_meta)]
    pub metadata: Vec<(String, String)>,
    /// Connection.
    #[command(flatten)]
    pub conn: Connection,
}

/// Commands that take one token.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The token.
    pub token: String,
    /// Connection.
    #[command(flatten)]
    pub conn: Connection,
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| "expected KEY=VALUE".to_owned())
}

/// A Tokenizer client that sends an API key.
pub type Client = TokenizerClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <key>` (and `x-tessera-otp` when set) to
/// every call.
#[derive(Clone)]
pub struct Bearer {
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// The second factor's header and value: a TOTP code or a session.
    second_factor: Option<(&'static str, MetadataValue<tonic::metadata::Ascii>)>,
}

impl Bearer {
    /// A bearer header for `api_key`; `None` if it cannot be a header value.
    pub fn new(api_key: &str) -> Option<Self> {
        MetadataValue::try_from(format!("Bearer {api_key}"))
            .ok()
            .map(|v| Self {
                authorization: Some(v),
                second_factor: None,
            })
    }

    /// Sends no API key (certificate-only calls, and tests of refusals).
    pub fn none() -> Self {
        Self {
            authorization: None,
            second_factor: None,
        }
    }

    /// Also sends the six-digit TOTP `code`; `None` if it is not six digits.
    pub fn with_otp(self, code: &str) -> Option<Self> {
        let well_formed = code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit());
        let value = MetadataValue::try_from(code).ok().filter(|_| well_formed)?;
        Some(Self {
            second_factor: Some((crate::access::totp::OTP_HEADER, value)),
            ..self
        })
    }

    /// Also sends an admin session (from `tessera login`) in place of a
    /// TOTP code; `None` if it cannot be a header value.
    pub fn with_session(self, session: &str) -> Option<Self> {
        let value = MetadataValue::try_from(session).ok()?;
        Some(Self {
            second_factor: Some((crate::access::sessions::SESSION_HEADER, value)),
            ..self
        })
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        if let Some((header, value)) = &self.second_factor {
            request.metadata_mut().insert(*header, value.clone());
        }
        Ok(request)
    }
}

/// Opens a channel to `--addr`: TLS for `https://` addresses.
pub async fn channel(conn: &Connection) -> Result<Channel, String> {
    let mut endpoint =
        Endpoint::from_shared(conn.addr.clone()).map_err(|e| format!("bad --addr: {e}"))?;
    if conn.addr.starts_with("https://") {
        crate::tls::install_crypto_provider();
        let tls = conn.tls().config().map_err(|e| e.to_string())?;
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", conn.addr))
}

/// A Tokenizer client for `conn`, sending its API key.
pub async fn connect(conn: &Connection) -> Result<Client, String> {
    let header = conn.bearer()?;
    Ok(TokenizerClient::with_interceptor(
        channel(conn).await?,
        header,
    ))
}

/// Connects and makes one call; failures are printed and become the exit code.
async fn call<T>(
    conn: &Connection,
    rpc: impl AsyncFnOnce(&mut Client) -> Result<tonic::Response<T>, Status>,
) -> Result<T, ExitCode> {
    let mut client = connect(conn).await.map_err(|e| fail(&e))?;
    rpc(&mut client)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| fail_status(&status))
}

/// Prints an error and returns the failure exit code.
pub fn fail(message: &str) -> ExitCode {
    eprintln!("tessera: {message}");
    ExitCode::FAILURE
}

/// Prints a gRPC status (code and message) and fails.
///
/// A dual-control request that is now waiting for its second admin is not a
/// failure: its message (with the approval id) goes to stdout, exit 0.
pub fn fail_status(status: &Status) -> ExitCode {
    use tonic_types::StatusExt;
    let pending = status
        .get_details_error_info()
        .is_some_and(|info| info.reason == "APPROVAL_PENDING");
    if pending {
        return emit(false, &serde_json::Value::Null, status.message());
    }
    fail(&format!("{:?}: {}", status.code(), status.message()))
}

/// Prints JSON or text to stdout.
#[allow(clippy::print_stdout)]
pub fn emit(json: bool, value: &serde_json::Value, text: &str) -> ExitCode {
    let out = if json {
        value.to_string()
    } else {
        text.to_owned()
    };
    let mut stdout = std::io::stdout();
    match writeln!(stdout, "{out}") {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn brand_name(brand: i32) -> &'static str {
    v1::CardBrand::try_from(brand)
        .map(|b| b.as_str_name().trim_start_matches("CARD_BRAND_"))
        .unwrap_or("UNKNOWN")
}

/// `tessera tokenize`.
pub async fn tokenize(args: TokenizeArgs) -> ExitCode {
    let pan = match args.pan {
        Some(pan) => pan,
        None => {
            let mut buf = String::new();
            if std::io::stdin().read_to_string(&mut buf).is_err() {
                return fail("could not read the PAN from stdin");
            }
            buf.trim().to_owned()
        }
    };
    let format = v1::TokenFormat {
        generator: match args.generator {
            None => v1::Generator::Unspecified,
            Some(GeneratorArg::Random) => v1::Generator::Random,
            Some(GeneratorArg::Ff1) => v1::Generator::Ff1,
        }
        .into(),
        keep_leading: args.keep_leading,
        keep_trailing: args.keep_trailing,
        luhn: match args.luhn {
            None => v1::LuhnPolicy::Unspecified,
            Some(LuhnArg::Invalid) => v1::LuhnPolicy::Invalid,
            Some(LuhnArg::Valid) => v1::LuhnPolicy::Valid,
            Some(LuhnArg::Any) => v1::LuhnPolicy::Any,
        }
        .into(),
    };
    let request = v1::TokenizeRequest {
        pan,
        format: Some(format),
        deterministic: args.deterministic.then_some(true),
        ttl: args.ttl.map(|s| prost_types::Duration {
            seconds: i64::try_from(s).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        single_use: args.single_use,
        metadata: args.metadata.into_iter().collect::<HashMap<_, _>>(),
    };
    let r = match call(&args.conn, async |c| c.tokenize(request).await).await {
        Ok(r) => r,
        Err(code) => return code,
    };
    let brand = brand_name(r.brand);
    let value = serde_json::json!({
        "token": r.token, "masked_pan": r.masked_pan, "brand": brand, "reused": r.reused,
    });
    let text = format!(
        "token:  {}\nmasked: {}\nbrand:  {brand}\nreused: {}",
        r.token, r.masked_pan, r.reused
    );
    emit(args.conn.json, &value, &text)
}

/// `tessera detokenize`: prints the PAN (the one place the CLI shows one).
pub async fn detokenize(args: TokenArgs) -> ExitCode {
    let request = v1::DetokenizeRequest { token: args.token };
    match call(&args.conn, async |c| c.detokenize(request).await).await {
        Ok(r) => emit(args.conn.json, &serde_json::json!({ "pan": r.pan }), &r.pan),
        Err(code) => code,
    }
}

/// `tessera info`.
pub async fn info(args: TokenArgs) -> ExitCode {
    let request = v1::GetTokenInfoRequest { token: args.token };
    let i = match call(&args.conn, async |c| c.get_token_info(request).await).await {
        Ok(i) => i,
        Err(code) => return code,
    };
    let ts = |t: &Option<prost_types::Timestamp>| t.as_ref().map(ToString::to_string);
    let value = serde_json::json!({
        "masked_pan": i.masked_pan,
        "brand": brand_name(i.brand),
        "created_at": ts(&i.created_at),
        "expires_at": ts(&i.expires_at),
        "single_use": i.single_use,
        "metadata": i.metadata,
    });
    let mut meta: Vec<_> = i.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
    meta.sort();
    let text = format!(
        "masked:     {}\nbrand:      {}\ncreated_at: {}\nexpires_at: {}\nsingle_use: {}\nmetadata:   {}",
        i.masked_pan,
        brand_name(i.brand),
        ts(&i.created_at).unwrap_or_default(),
        ts(&i.expires_at).unwrap_or_else(|| "never".into()),
        i.single_use,
        meta.join(" ")
    );
    emit(args.conn.json, &value, &text)
}

/// `tessera delete`.
pub async fn delete(args: TokenArgs) -> ExitCode {
    let request = v1::DeleteTokenRequest { token: args.token };
    match call(&args.conn, async |c| c.delete_token(request).await).await {
        Ok(()) => emit(
            args.conn.json,
            &serde_json::json!({ "deleted": true }),
            "deleted",
        ),
        Err(code) => code,
    }
}
