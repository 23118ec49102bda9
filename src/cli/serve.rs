//! `tessera serve`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tokio::net::TcpListener;

use crate::cli::EXIT_CONFIG;
use crate::cli::reload;
use crate::config::source::EnvSource;
use crate::config::{ConfigError, Profile, RawConfig};
use crate::devcreds;
use crate::server::{self, App, StartError};
use crate::telemetry::{exporter, logging};

/// Where `--dev` keeps its data when `--data-dir` is not given.
pub const DEV_DATA_DIR: &str = "tessera-data";

/// `tessera serve` options. Command-line flags override the config file and
/// the environment.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Development mode: loopback only, sled store, dev KMS key file and
    /// generated credentials in DATA_DIR/dev-credentials.json.
    #[arg(long)]
    pub dev: bool,
    /// TOML configuration file.
    #[arg(long, env = "TESSERA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (store, dev key and credentials).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Listen address, HOST:PORT (port 0 picks a free one).
    #[arg(long)]
    pub listen: Option<String>,
}

/// The configuration `serve` with `args` would check: the file, then the
/// environment, then the flags, then `--dev`'s data directory.
pub fn effective(args: &ServeArgs) -> Result<RawConfig, ConfigError> {
    let mut raw = RawConfig::load(args.config.as_deref(), &EnvSource)?;
    if let Some(dir) = &args.data_dir {
        raw.data_dir = Some(dir.clone());
    }
    if let Some(listen) = &args.listen {
        raw.listen = listen.clone();
    }
    if args.dev && raw.data_dir.is_none() {
        raw.data_dir = Some(PathBuf::from(DEV_DATA_DIR));
    }
    Ok(raw)
}

impl ServeArgs {
    /// The safety rules these flags choose.
    pub fn profile(&self) -> Profile {
        if self.dev {
            Profile::Dev
        } else {
            Profile::Production
        }
    }
}

fn config_error(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("tessera: configuration error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// Runs the server until SIGTERM or ctrl-c.
pub async fn run(args: ServeArgs) -> ExitCode {
    let hangups = reload::listen();
    crate::huge_pages::disable();
    let profile = args.profile();
    let raw = match effective(&args) {
        Ok(raw) => raw,
        Err(e) => return config_error(&e),
    };
    let running = reload::restart_sections(&raw);
    let config = match raw.check(profile) {
        Ok(config) => config,
        Err(e) => return config_error(&e),
    };
    // After the check: the format and filter are configuration. Problems
    // found before this point are printed on stderr by `config_error`.
    let _log_guard = match logging::init(&config.log) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("tessera: {e}");
            return ExitCode::FAILURE;
        }
    };
    if profile == Profile::Dev {
        tracing::warn!(
            "DEVELOPMENT MODE: loopback only, master key in a plain file, API keys in {}/{} — never use with real card data",
            config.data_dir.display(),
            devcreds::FILE_NAME
        );
        if let Err(e) = std::fs::create_dir_all(&config.data_dir) {
            return config_error(&ConfigError::Invalid {
                key: "data_dir".into(),
                reason: e.to_string(),
            });
        }
    }
    let principals = match reload::principals_of(&config) {
        Ok(principals) => principals,
        Err(e) => return config_error(&e),
    };
    let app = match App::build(&config, principals).await {
        Ok(app) => app,
        Err(e @ (StartError::Kms(_) | StartError::Principals(_) | StartError::OtherStore(_))) => {
            return config_error(&e);
        }
        Err(e) => {
            eprintln!("tessera: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(endpoint) = &config.metrics {
        let served = match exporter::install() {
            Ok(handle) => exporter::serve(endpoint, handle).await,
            Err(e) => Err(e),
        };
        match served {
            Ok(addr) => {
                tracing::info!(%addr, tls = endpoint.tls.is_some(), "serving Prometheus metrics");
            }
            Err(e) => {
                eprintln!("tessera: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let listener = match TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tessera: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tessera: {e}");
            return ExitCode::FAILURE;
        }
    };
    let health_listener = match config.health_listen {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, "serving gRPC health in plaintext for probes");
                Some(l)
            }
            Err(e) => {
                eprintln!("tessera: cannot listen on {addr} (health.listen): {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let mut stdout = std::io::stdout();
    // The readiness line scripts and tests wait for (DESIGN.md §8).
    if writeln!(stdout, "tessera listening on {addr}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        tracing::warn!("could not write the readiness line to stdout");
    }
    tracing::info!(%addr, "serving");
    let reloader = tokio::spawn(reload::on_hangup(hangups, args, app.clone(), running));
    let served = server::run_with_health(listener, health_listener, app, shutdown_signal()).await;
    reloader.abort();
    match served {
        Ok(()) => {
            tracing::info!("shut down cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tessera: server failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; draining");
}
