//! Reloading on SIGHUP: the configuration is read and checked again as at
//! start, and its principals and `[access]` limits are put in force without
//! a restart. Every reload is audited (`ConfigReloaded`, outcome `OK` or
//! `REFUSED`) and counted (`tessera_config_reloads_total{outcome}`).
//!
//! What changes: the configured principals (added, removed, new roles or
//! keys; run-time principals added through the API stay) and the rate
//! limits, lockout and anomaly thresholds. Everything else (listeners, TLS,
//! store, KMS, the refusal window and session lifetime) applies at the next
//! start; the event and a warning name the sections that changed and wait
//! for it. A configuration that fails its check changes nothing.
//!
//! The event names what changed: a fingerprint of the effective file
//! (SHA-256 of `config print`'s text) and the principals added, removed
//! and changed by name (review finding: a count could not tell a new role
//! from a no-op).

use std::collections::BTreeMap;

use crate::access::principals::ReloadChanges;
use crate::audit::AuditEvent;
use crate::cli::serve::{self, ServeArgs};
use crate::config::{Config, PrincipalEntry, Profile, RawConfig};
use crate::devcreds;
use crate::domain::TenantId;
use crate::server::App;
use crate::telemetry::{names, request_id};

/// Takes SIGHUP from the process's default action (which ends it). `serve`
/// calls this first thing: a reload sent while the store or KMS is still
/// opening must wait for the server, not kill it (review finding: a
/// SIGHUP 50 ms after start ended the process, and a Shamir vault came
/// back sealed). `None` when the handler cannot be installed.
pub fn listen() -> Option<tokio::signal::unix::Signal> {
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    if hangups.is_err() {
        tracing::warn!("cannot listen for SIGHUP; configuration reload is off");
    }
    hangups.ok()
}

/// Reloads on every SIGHUP received by `hangups` (signals that came before
/// the server was up included) until the process ends.
pub async fn on_hangup(
    hangups: Option<tokio::signal::unix::Signal>,
    args: ServeArgs,
    app: App,
    running: BTreeMap<String, String>,
) {
    let Some(mut hangups) = hangups else {
        return;
    };
    while hangups.recv().await.is_some() {
        reload(&args, &app, &running).await;
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

/// The sections of `raw` a reload does not apply (everything but
/// `[[principals]]` and `[access]`), each as TOML, to tell the operator
/// which changes wait for a restart.
pub fn restart_sections(raw: &RawConfig) -> BTreeMap<String, String> {
    let Ok(toml::Value::Table(table)) = toml::Value::try_from(raw.clone().redacted()) else {
        return BTreeMap::new();
    };
    table
        .into_iter()
        .filter(|(key, _)| key != "principals" && key != "access")
        .map(|(key, value)| (key, value.to_string()))
        .collect()
}

/// What one applied reload did, for its audit event.
fn describe(changes: &ReloadChanges, digest: &str, restart: &[String]) -> String {
    let names = |list: &[String]| format!("[{}]", list.join(","));
    let mut text = format!(
        "config sha256:{digest} principals added:{} removed:{} changed:{} unchanged:{}",
        names(&changes.added),
        names(&changes.removed),
        names(&changes.changed),
        changes.unchanged
    );
    if !restart.is_empty() {
        text.push_str(&format!(" restart-needed:{}", names(restart)));
    }
    text
}

/// One reload; `running` holds the restart-only sections in force, to
/// report which the new file changes.
pub async fn reload(args: &ServeArgs, app: &App, running: &BTreeMap<String, String>) {
    let outcome = async {
        let raw = serve::effective(args).map_err(|e| e.problems().join("; "))?;
        let digest = {
            use sha2::Digest;
            let text = raw.clone().redacted().to_toml().unwrap_or_default();
            hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
        };
        let restart: Vec<String> = restart_sections(&raw)
            .into_iter()
            .filter(|(key, value)| running.get(key) != Some(value))
            .map(|(key, _)| key)
            .collect();
        let config = raw
            .check(args.profile())
            .map_err(|e| e.problems().join("; "))?;
        let principals = principals_of(&config)?;
        let changes = app
            .auth
            .principals()
            .replace_configured(principals)
            .await
            .map_err(|e| e.to_string())?;
        app.auth.guard().set_config(config.limits);
        Ok::<_, String>((changes, digest, restart))
    }
    .await;
    let (resource, result) = match &outcome {
        Ok((changes, digest, restart)) => {
            let resource = describe(changes, digest, restart);
            // The log line leaves the fingerprint to the audit event: sixteen
            // hex digits can be a Luhn-valid run, which the leak scans of
            // logs rightly flag.
            tracing::warn!(
                added = %changes.added.join(","),
                removed = %changes.removed.join(","),
                changed = %changes.changed.join(","),
                "configuration reloaded: principals and access limits in force"
            );
            if !restart.is_empty() {
                tracing::warn!(
                    sections = %restart.join(","),
                    "these sections changed and take effect only at the next start"
                );
            }
            (resource, "OK")
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
