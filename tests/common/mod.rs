//! Shared end-to-end helpers: run the real `tessera` binary on a data dir,
//! capture its logs, and talk to it over gRPC.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::HashMap;
use std::sync::Mutex;

use tessera::access::totp::{self, OTP_HEADER, TotpSecret};
use tessera::cli::client::{Bearer, Client};
use tessera::proto::v1::tokenizer_client::TokenizerClient;
use tessera::tls::ClientTls;
use tonic::transport::Channel;

/// The TOTP step every test server runs with (`access.totp_step_seconds`),
/// so tests can make several admin calls per second.
pub const OTP_STEP: Duration = Duration::from_secs(1);

/// A TOTP code for `secret` (base32) that this process has not used yet:
/// the server accepts each code once, for the current step ± 1. Only the
/// current and the next step are handed out, never the one before: that
/// code may expire within milliseconds, and a CLI process started on a
/// loaded machine takes longer than that to send it; late in a step only
/// the next one is. Waits for the next step when they are spent.
pub fn otp(secret: &str) -> String {
    static USED: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);
    let parsed = TotpSecret::from_base32(secret).expect("base32 TOTP secret");
    loop {
        let clock = std::time::SystemTime::now();
        let now = totp::counter(clock, OTP_STEP);
        // Late in a step, start from the next one: the current step's code
        // then has little of its life left.
        let late = totp::counter(clock + OTP_STEP / 2, OTP_STEP) > now;
        let mut used = USED.lock().unwrap();
        let last = used
            .get_or_insert_with(HashMap::new)
            .entry(secret.to_owned())
            .or_insert(0);
        let next = (*last + 1).max(if late { now + 1 } else { now });
        if next <= now + 1 {
            *last = next;
            return format!("{:06}", parsed.code_at(next));
        }
        drop(used);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The TOTP secret in an `otpauth://` URI.
pub fn secret_of_uri(uri: &str) -> String {
    uri.split("secret=")
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .expect("otpauth URI with a secret")
        .to_owned()
}

/// Sends an API key and a fresh TOTP code with every call, as an admin
/// with an authenticator app would.
#[derive(Clone)]
pub struct OtpAuth {
    bearer: Bearer,
    secret: Option<String>,
}

impl OtpAuth {
    pub fn new(api_key: &str, secret: &str) -> Self {
        Self {
            bearer: Bearer::new(api_key).unwrap(),
            secret: Some(secret.to_owned()),
        }
    }

    /// A principal without a second factor: the API key only.
    pub fn key_only(api_key: &str) -> Self {
        Self {
            bearer: Bearer::new(api_key).unwrap(),
            secret: None,
        }
    }
}

impl tonic::service::Interceptor for OtpAuth {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = self.bearer.call(request)?;
        if let Some(secret) = &self.secret {
            request
                .metadata_mut()
                .insert(OTP_HEADER, otp(secret).parse().unwrap());
        }
        Ok(request)
    }
}

/// An admin-side client type: `KeyAdminClient<AdminChannel>` and so on.
pub type AdminChannel = tonic::service::interceptor::InterceptedService<Channel, OtpAuth>;

/// Opens a channel to `addr`, over TLS when `tls` is set.
pub async fn open_channel(addr: &str, tls: Option<&ClientTls>) -> Channel {
    let mut endpoint = tonic::transport::Endpoint::from_shared(addr.to_owned()).unwrap();
    if let Some(tls) = tls {
        tessera::tls::install_crypto_provider();
        endpoint = endpoint.tls_config(tls.config().unwrap()).unwrap();
    }
    endpoint.connect().await.unwrap()
}

/// The command line of `serve --dev` on `data_dir`, on a free loopback port.
pub fn dev_args(data_dir: &Path) -> [&str; 6] {
    [
        "serve",
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]
}

/// A `tessera serve --dev` child process.
pub struct Server {
    child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// TLS options when the server serves TLS.
    pub tls: Option<ClientTls>,
}

impl Server {
    /// Starts the binary on `data_dir`, appending its stderr to `log`, and
    /// waits for the readiness line.
    pub fn start(data_dir: &Path, log: &Path) -> Self {
        Self::start_dev_with_env(data_dir, &[], log)
    }

    /// `serve --dev` on `data_dir` with extra environment variables.
    pub fn start_dev_with_env(data_dir: &Path, env: &[(&str, String)], log: &Path) -> Self {
        Self::start_with_env(&dev_args(data_dir), env, data_dir, log)
    }

    /// `serve --dev` on `data_dir` with an extra config file.
    pub fn start_dev_with_config(config: &Path, data_dir: &Path, log: &Path) -> Self {
        let args = [
            "serve",
            "--dev",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ];
        Self::start_with(&args, data_dir, log)
    }

    /// Starts the binary with `args` (a `serve` command line).
    pub fn start_with(args: &[&str], data_dir: &Path, log: &Path) -> Self {
        Self::start_with_env(args, &[], data_dir, log)
    }

    /// Starts the binary with `args` and extra environment variables.
    pub fn start_with_env(
        args: &[&str],
        env: &[(&str, String)],
        data_dir: &Path,
        log: &Path,
    ) -> Self {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .env("RUST_LOG", "info,tessera=trace")
            .env(
                "TESSERA__ACCESS__TOTP_STEP_SECONDS",
                OTP_STEP.as_secs().to_string(),
            )
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server did not become ready");
        let addr = line
            .strip_prefix("tessera listening on ")
            .expect("readiness line")
            .to_owned();
        Self {
            child,
            addr: format!("http://{addr}"),
            data_dir: data_dir.to_owned(),
            log: log.to_owned(),
            tls: None,
        }
    }

    /// Talks TLS to this server, trusting `ca` (PEM file).
    pub fn with_tls(mut self, ca: &Path) -> Self {
        self.addr = self.addr.replacen("http://", "https://", 1);
        self.tls = Some(ClientTls {
            ca_file: Some(ca.to_owned()),
            ..ClientTls::default()
        });
        self
    }

    /// A channel to the server (TLS when configured).
    pub async fn channel(&self) -> Channel {
        open_channel(&self.addr, self.tls.as_ref()).await
    }

    fn dev_credentials(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.data_dir.join("dev-credentials.json")).unwrap())
            .unwrap()
    }

    /// The TOTP secret (base32) of a dev admin (admin, admin2).
    pub fn totp_secret(&self, who: &str) -> String {
        self.dev_credentials()[who]["totp_secret"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Runs the `tessera` CLI against this server as dev admin `who`, with
    /// its API key and a fresh TOTP code.
    pub fn admin_cli(&self, who: &str, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .args(["--addr", &self.addr, "--otp", &otp(&self.totp_secret(who))])
            .env("TESSERA_API_KEY", self.api_key(who))
            .output()
            .unwrap()
    }

    /// API key plus fresh TOTP codes of a dev admin.
    pub fn admin_auth(&self, who: &str) -> OtpAuth {
        OtpAuth::new(&self.api_key(who), &self.totp_secret(who))
    }

    /// A line of the server process's `/proc/PID/status` (Linux), such as
    /// `THP_enabled`, without its name.
    pub fn proc_status(&self, field: &str) -> Option<String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .map(|value| value.trim().to_owned())
    }

    /// SIGHUP: the server reloads its configuration.
    pub fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The API key of a dev principal (pos, processor, admin, admin2, other).
    pub fn api_key(&self, who: &str) -> String {
        self.dev_credentials()[who]["api_key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A client authenticated as `who`.
    pub async fn client(&self, who: &str) -> Client {
        self.client_with_key(Some(&self.api_key(who))).await
    }

    /// A Tokenizer client sending `api_key` (`None`: no credentials).
    pub async fn client_with_key(&self, api_key: Option<&str>) -> Client {
        let bearer = match api_key {
            Some(key) => Bearer::new(key).unwrap(),
            None => Bearer::none(),
        };
        TokenizerClient::with_interceptor(self.channel().await, bearer)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client with the given key (`None` sends no credentials).
pub async fn client(addr: &str, api_key: Option<&str>) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer = match api_key {
        Some(key) => Bearer::new(key).unwrap(),
        None => Bearer::none(),
    };
    TokenizerClient::with_interceptor(channel, bearer)
}

/// The gRPC health status `server` reports for `service` (`""`: the
/// server as a whole).
pub async fn health_of(server: &Server, service: &str) -> i32 {
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// Waits (health is refreshed every 5 s) until `service`'s health is
/// `serving`, or fails after 15 s.
pub async fn wait_for_health(server: &Server, service: &str, serving: bool) {
    use tonic_health::pb::health_check_response::ServingStatus;
    let want = i32::from(if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while health_of(server, service).await != want {
        assert!(
            Instant::now() < deadline,
            "{service:?} health never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Tokenizes `pan` with default options; the token.
pub async fn tokenize(client: &mut Client, pan: &str) -> String {
    client
        .tokenize(tessera::proto::v1::TokenizeRequest {
            pan: pan.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path)
            } else {
                out.push(path)
            }
        }
    }
    out
}

/// Asserts that none of `pans` occurs in the log or in any data-dir file,
/// written with or without separators, and that the log holds no
/// PAN-shaped number at all (the one detector, `tessera::leak`).
pub fn assert_no_pan_leaked(log: &Path, data_dir: &Path, pans: &[&str]) {
    let log_bytes = std::fs::read(log).unwrap();
    let mut files = files_under(data_dir);
    files.push(log.to_owned());
    for file in files {
        let bytes = tessera::leak::strip_separators(&std::fs::read(&file).unwrap());
        for pan in pans {
            assert!(
                !bytes.windows(pan.len()).any(|w| w == pan.as_bytes()),
                "a PAN appears in {}",
                file.display()
            );
        }
    }
    let text = String::from_utf8_lossy(&log_bytes);
    assert!(
        !tessera::leak::contains_pan(&text),
        "a PAN-shaped number appears in the server log"
    );
}

/// A throw-away PKI for a test deployment: CA, server certificate for
/// localhost and 127.0.0.1, and client certificates on demand.
pub struct TestPki {
    pub dir: PathBuf,
    authority: tessera::tls::pki::Authority,
}

impl TestPki {
    /// Writes ca.pem, server.pem and server.key under `dir`.
    pub fn new(dir: &Path) -> Self {
        use tessera::tls::pki::{Authority, Validity};
        std::fs::create_dir_all(dir).unwrap();
        let authority = Authority::generate("test CA", Validity::days(2)).unwrap();
        let server = authority
            .issue_server(&["localhost".into(), "127.0.0.1".into()], Validity::days(2))
            .unwrap();
        std::fs::write(dir.join("ca.pem"), authority.cert_pem()).unwrap();
        std::fs::write(dir.join("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(dir.join("server.key"), server.key_pem.expose_secret()).unwrap();
        Self {
            dir: dir.to_owned(),
            authority,
        }
    }

    /// The CA certificate file.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A `[tls]` section serving this PKI's server certificate; with
    /// `client_ca`, client certificates authenticate, and with `require`
    /// they are mandatory.
    pub fn config(&self, client_ca: bool, require: bool) -> String {
        let mut text = format!(
            "\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            self.dir.join("server.pem").display(),
            self.dir.join("server.key").display()
        );
        if client_ca {
            text.push_str(&format!(
                "client_ca_file = \"{}\"\nrequire_client_cert = {require}\n",
                self.ca().display()
            ));
        }
        text
    }

    /// A client certificate for `identity`: (cert file, key file).
    pub fn client(
        &self,
        file_name: &str,
        identity: &str,
        validity: tessera::tls::pki::Validity,
    ) -> (PathBuf, PathBuf) {
        let issued = self.authority.issue_client(identity, validity).unwrap();
        let cert = self.dir.join(format!("{file_name}.crt"));
        let key = self.dir.join(format!("{file_name}.key.pem"));
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, issued.key_pem.expose_secret()).unwrap();
        (cert, key)
    }
}

/// Writes a fresh TOTP secret to `DIR/NAME.totp`: (file, base32 secret).
pub fn totp_file(dir: &Path, name: &str) -> (PathBuf, String) {
    let secret = TotpSecret::generate()
        .unwrap()
        .to_base32()
        .expose_secret()
        .to_owned();
    let path = dir.join(format!("{name}.totp"));
    std::fs::write(&path, &secret).unwrap();
    (path, secret)
}

/// A Tokenizer client whose connections leave from `local_ip` (any
/// 127.0.0.0/8 address works on Linux), to look like another network.
pub async fn client_from(addr: &str, local_ip: &str, api_key: &str) -> Client {
    let local: std::net::SocketAddr = format!("{local_ip}:0").parse().unwrap();
    let connector = tower::service_fn(move |uri: tonic::transport::Uri| async move {
        let host = uri.host().unwrap_or("127.0.0.1").to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let remote: std::net::SocketAddr = format!("{host}:{port}").parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(local)?;
        let stream = socket.connect(remote).await?;
        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
    });
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .unwrap()
        .connect_with_connector(connector)
        .await
        .unwrap();
    TokenizerClient::with_interceptor(channel, Bearer::new(api_key).unwrap())
}

/// The approval id a dual-control request answered with
/// (FAILED_PRECONDITION with `ErrorInfo` metadata `approval_id`).
pub fn approval_id(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    status.get_details_error_info().expect("ErrorInfo").metadata["approval_id"].clone()
}

/// Every audit event dev principal `who` may read with `action` (all when
/// empty), oldest first.
pub async fn audit_events(
    server: &Server,
    who: &str,
    action: &str,
) -> Vec<tessera::proto::v1::AuditEvent> {
    use tessera::proto::v1;
    let mut audit = v1::audit_client::AuditClient::with_interceptor(
        server.channel().await,
        server.admin_auth(who),
    );
    let mut stream = audit
        .list_events(v1::ListEventsRequest {
            action: action.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(page) = stream.message().await.unwrap() {
        events.extend(page.events);
    }
    events
}

/// Asks `server` (as dev admin `admin`) to verify the audit chain, and
/// checks it is intact with its head signature checked.
pub async fn assert_audit_intact(server: &Server) {
    use tessera::proto::v1;
    let mut audit = v1::audit_client::AuditClient::with_interceptor(
        server.channel().await,
        server.admin_auth("admin"),
    );
    let report = audit
        .verify(v1::VerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(report.intact && report.head_signature_checked, "{report:?}");
}

/// A Luhn-valid 16-digit test PAN: `first`, then 14 digits made from `n`,
/// then the check digit. Distinct `n` give distinct PANs.
pub fn test_pan(first: u8, n: u64) -> String {
    let mut digits: Vec<u8> = format!("{first}{:014}", n * 7_919 + 3)
        .bytes()
        .map(|b| b - b'0')
        .collect();
    digits.push(0);
    let last = digits.len() - 1;
    digits[last] = tessera::tokens::luhn::completing_digit(&digits, last);
    digits.into_iter().map(|d| char::from(d + b'0')).collect()
}

/// What the compaction pages in `events` (`Compacted` audit events) purged
/// together, from each event's `purged:N`.
pub fn purged_by(events: &[tessera::proto::v1::AuditEvent]) -> u64 {
    events
        .iter()
        .map(|e| {
            let field = e
                .resource
                .split(' ')
                .find_map(|f| f.strip_prefix("purged:"));
            field.unwrap().parse::<u64>().unwrap()
        })
        .sum()
}
