//! Reloading on SIGHUP: the configuration is read and checked again as at
//! start, and its principals and `[access]` limits are put in force without
//! a restart. Every reload is audited (`ConfigReloaded`, outcome `OK` or
//! `REFUSED`) and counted (`tessera_config_reloads_total{outcome}`).
//!
//! What changes: the configured principals (added, removed, new roles or
//! keys; run-time principals added through the API stay) and the rate
//! limits, lockout and anomaly thresholds. Everything else (listeners, TLS,
//! store, KMS, the refusal window and session lifetime) applies at the next
//! start. A configuration that fails its check changes nothing.

use crate::audit::AuditEvent;
use crate::cli::serve::{self, ServeArgs};
use crate::config::{Config, PrincipalEntry, Profile};
use crate::devcreds;
use crate::domain::TenantId;
use crate::server::App;
use crate::telemetry::{names, request_id};

/// Reloads on every SIGHUP until the process ends.
pub async fn on_hangup(args: ServeArgs, app: App) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        tracing::warn!("cannot listen for SIGHUP; configuration reload is off");
        return;
    };
    while hangups.recv().await.is_some() {
        reload(&args, &app).await;
    }
}

/// The principals a checked configuration puts in force: its own, and
/// under `--dev` the generated ones, as at start.
pub fn principals_of(config: &Config) -> Result<Vec<PrincipalEntry>, String> {
    let mut principals = config.principals.clone();
    if config.profile == Profile::Dev {
        let dev = devcreds::load_or_create(&config.data_dir)
            .and_then(|c| devcreds::principals(&c))
            .map_err(|e| e.to_string())?;
        principals.extend(dev);
    }
    Ok(principals)
}

/// One reload.
pub async fn reload(args: &ServeArgs, app: &App) {
    let outcome = async {
        let config = serve::effective(args)
            .and_then(|raw| raw.check(args.profile()))
            .map_err(|e| e.problems().join("; "))?;
        let principals = principals_of(&config)?;
        let counts = app
            .auth
            .principals()
            .replace_configured(principals)
            .await
            .map_err(|e| e.to_string())?;
        app.auth.guard().set_config(config.limits);
        Ok::<_, String>(counts)
    }
    .await;
    let (resource, result) = match &outcome {
        Ok(counts) => {
            tracing::warn!(
                added = counts.added,
                removed = counts.removed,
                kept = counts.kept,
                "configuration reloaded: principals and access limits in force"
            );
            (
                format!(
                    "config principals:+{} -{} ={}",
                    counts.added, counts.removed, counts.kept
                ),
                "OK",
            )
        }
        Err(reason) => {
            tracing::error!(%reason, "configuration reload refused; the running configuration stays");
            ("config".to_owned(), "REFUSED")
        }
    };
    metrics::counter!(
        names::CONFIG_RELOADS,
        "outcome" => if outcome.is_ok() { "applied" } else { "refused" },
    )
    .increment(1);
    let event = AuditEvent {
        time_ms: 0,
        request_id: request_id::generate(),
        principal: String::new(),
        tenant: TenantId::SYSTEM_NAME.to_owned(),
        action: "ConfigReloaded".to_owned(),
        resource,
        outcome: result.to_owned(),
        origin: "sighup".to_owned(),
    };
    if let Err(e) = app.vault.record_audit(event).await {
        tracing::error!(error = %e, alert = "audit_write_failed", "could not audit a configuration reload");
    }
}
