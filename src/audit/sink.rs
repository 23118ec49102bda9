//! Second audit sinks for a SIEM: JSON lines appended to a file, or RFC 5424
//! syslog messages on a local datagram socket (`/dev/log`).
//!
//! The hash chain in the store stays the record of truth: an event reaches
//! these sinks only after it was appended durably there, and a sink that
//! fails raises a metric and a log line but never fails the call (the
//! primary log already holds the event).

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::audit::AuditEvent;

/// Where a sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    /// Append one JSON object per line to this file.
    JsonLines(PathBuf),
    /// Send RFC 5424 messages to this Unix datagram socket.
    Syslog(PathBuf),
}

#[derive(Debug)]
enum Writer {
    File(Mutex<std::fs::File>),
    Syslog { socket: UnixDatagram, path: PathBuf },
}

/// An open second sink.
#[derive(Debug)]
pub struct AuditSink {
    writer: Writer,
}

/// The JSON form of an event, with its chain position.
#[derive(Serialize)]
struct Line<'a> {
    position: u64,
    time_ms: u64,
    request_id: &'a str,
    principal: &'a str,
    tenant: &'a str,
    action: &'a str,
    resource: &'a str,
    outcome: &'a str,
    origin: &'a str,
}

/// The JSON line of `event` at chain `position` (no trailing newline).
pub fn json_line(position: u64, event: &AuditEvent) -> String {
    let line = Line {
        position,
        time_ms: event.time_ms,
        request_id: &event.request_id,
        principal: &event.principal,
        tenant: &event.tenant,
        action: &event.action,
        resource: &event.resource,
        outcome: &event.outcome,
        origin: &event.origin,
    };
    // Serializing plain strings and integers cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

/// Facility `authpriv` (10): security messages (RFC 5424 §6.2.1).
const FACILITY_AUTHPRIV: u8 = 10;

/// Severity: warning for refusals and alerts, info for the rest.
fn severity(event: &AuditEvent) -> u8 {
    if event.outcome == "OK" { 6 } else { 4 }
}

/// An RFC 5424 message carrying the JSON line.
pub fn syslog_message(position: u64, event: &AuditEvent) -> String {
    let pri = u16::from(FACILITY_AUTHPRIV) * 8 + u16::from(severity(event));
    format!(
        "<{pri}>1 - - tessera {} audit - {}",
        std::process::id(),
        json_line(position, event)
    )
}

impl AuditSink {
    /// Opens `target` (creating a JSON-lines file with mode 0600).
    pub fn open(target: &SinkTarget) -> std::io::Result<Self> {
        let writer = match target {
            SinkTarget::JsonLines(path) => {
                use std::os::unix::fs::OpenOptionsExt;
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)?;
                Writer::File(Mutex::new(file))
            }
            SinkTarget::Syslog(path) => Writer::Syslog {
                socket: UnixDatagram::unbound()?,
                path: path.clone(),
            },
        };
        Ok(Self { writer })
    }

    /// Sends one event.
    pub fn send(&self, position: u64, event: &AuditEvent) -> std::io::Result<()> {
        match &self.writer {
            Writer::File(file) => {
                let mut line = json_line(position, event);
                line.push('\n');
                let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
                file.write_all(line.as_bytes())
            }
            Writer::Syslog { socket, path } => {
                let message = syslog_message(position, event);
                socket
                    .send_to(message.as_bytes(), Path::new(path))
                    .map(|_| ())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(outcome: &str) -> AuditEvent {
        AuditEvent {
            time_ms: 1_700_000_000_000,
            request_id: "r-1".into(),
            principal: "pos \"1\"".into(),
            tenant: "default".into(),
            action: "Tokenize".into(),
            resource: "token:abcd".into(),
            outcome: outcome.into(),
            origin: "127.0.0.1:5000".into(),
        }
    }

    #[test]
    fn json_lines_are_appended_and_parse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = AuditSink::open(&SinkTarget::JsonLines(path.clone())).unwrap();
        sink.send(0, &event("OK")).unwrap();
        sink.send(1, &event("NotFound")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["principal"], "pos \"1\"");
        assert_eq!(lines[1]["position"], 1);
        assert_eq!(lines[1]["outcome"], "NotFound");
    }

    #[test]
    fn syslog_messages_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let sink = AuditSink::open(&SinkTarget::Syslog(path)).unwrap();
        sink.send(7, &event("PermissionDenied")).unwrap();
        let mut buf = [0u8; 2048];
        let n = listener.recv(&mut buf).unwrap();
        let message = std::str::from_utf8(&buf[..n]).unwrap();
        // authpriv.warning = 10 × 8 + 4.
        assert!(message.starts_with("<84>1 - - tessera "), "{message}");
        let json = &message[message.find('{').unwrap()..];
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(value["position"], 7);
    }
}
