//! Operations kit, checked by the tools operators run: `promtool` checks and
//! unit-tests `deploy/prometheus`'s alert rules, and a real Prometheus
//! (Debian's) scrapes a running Tessera over TLS with a client certificate,
//! after which its HTTP API must show request counters, a latency histogram
//! and the other series the rules and the Grafana dashboard query, and no
//! PAN or token in any label.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;
#[path = "common/tools.rs"]
mod tools;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, TestPki};
use tessera::proto::v1;
use tessera::telemetry::names;
use tools::{ensure_tool, free_port};

const RULES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/tessera-dashboard.json"
);
const VISA: &str = "4111111111111111";

fn run_in(dir: &str, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = tools::output_text(&out);
    assert!(out.status.success(), "{program} {args:?}:\n{text}");
    text
}

/// The `tessera_*` metric names `text` uses, without histogram suffixes.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("tessera_") {
        let start = i + at;
        let end = start
            + text[start..]
                .bytes()
                .take_while(|b| b.is_ascii_lowercase() || *b == b'_')
                .count();
        // `tessera:…` recording rules and words such as `tessera_x.rs` in
        // prose are not metrics; a metric is followed by `{`, `[`, `)`, space.
        let next = bytes.get(end).copied().unwrap_or(b' ');
        if matches!(next, b'{' | b'[' | b')' | b' ' | b'\n' | b'"') {
            let name = &text[start..end];
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            found.insert(name.to_owned());
        }
        i = end.max(start + 1);
    }
    found
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    ensure_tool("promtool", "prometheus");
    let checked = run_in(
        RULES_DIR,
        "promtool",
        &["check", "rules", "tessera-rules.yml"],
    );
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run_in(
        RULES_DIR,
        "promtool",
        &["test", "rules", "tessera-rules.test.yml"],
    );
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert the issue names exists.
    let rules = std::fs::read_to_string(format!("{RULES_DIR}/tessera-rules.yml")).unwrap();
    for alert in [
        "TesseraSealed",
        "TesseraHighErrorRate",
        "TesseraLatencyP99High",
        "TesseraDataKeyOverdue",
        "TesseraAnomaly",
        "TesseraAuditFailure",
        "TesseraCommitFlushSlow",
    ] {
        assert!(rules.contains(&format!("alert: {alert}\n")), "{alert}");
    }
}

/// A rule or panel on a misspelled metric is silently empty forever.
#[test]
fn the_rules_and_the_dashboard_query_only_metrics_the_code_records() {
    let known: BTreeSet<String> = names::ALL.iter().map(|n| (*n).to_owned()).collect();
    for file in [
        format!("{RULES_DIR}/tessera-rules.yml"),
        DASHBOARD.to_owned(),
    ] {
        let used = metric_names_in(&std::fs::read_to_string(&file).unwrap());
        assert!(used.len() >= 8, "{file}: {used:?}");
        let unknown: Vec<_> = used.difference(&known).collect();
        assert!(
            unknown.is_empty(),
            "{file} queries unknown metrics {unknown:?}"
        );
    }
}

/// A Prometheus server in a temporary directory; killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on 127.0.0.1:`port`: (status code, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    fn start(dir: &Path, scrape_config: &str) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrape_config}"),
        )
        .unwrap();
        let check = Command::new("promtool")
            .args(["check", "config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        let prometheus = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(port, "/-/ready").is_none_or(|(status, _)| status != 200) {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// The JSON answer of an instant query.
    fn query(&self, promql: &str) -> serde_json::Value {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (status, body) = http_get(self.port, &path).expect("prometheus answers");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status, 200, "{promql}: {body}");
        assert_eq!(json["status"], "success", "{promql}: {body}");
        json
    }

    /// The single value of a query that sums to one sample, if any yet.
    fn value(&self, promql: &str) -> Option<f64> {
        let json = self.query(promql);
        json["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    }

    /// Waits until `promql` has a value of at least `min`.
    fn wait_for(&self, promql: &str, min: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(v) = self.value(promql).filter(|v| *v >= min) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{promql} stayed below {min}: {:?}",
                self.query(promql)["data"]
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_request_metrics_over_tls_with_a_client_certificate() {
    ensure_tool("prometheus", "prometheus");
    ensure_tool("curl", "curl");
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let (scraper_cert, scraper_key) = pki.client(
        "scraper",
        "spiffe://tessera/prometheus",
        tessera::tls::pki::Validity::days(1),
    );
    let metrics_port = free_port();
    let config = dir.path().join("tessera.toml");
    std::fs::write(
        &config,
        format!(
            "[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n[metrics.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nrequire_client_cert = true\n",
            pki.dir.join("server.pem").display(),
            pki.dir.join("server.key").display(),
            pki.ca().display(),
        ),
    )
    .unwrap();
    let log = dir.path().join("server.log");
    let server = Server::start_dev_with_config(&config, &dir.path().join("data"), &log);

    // Calls of several outcomes: OK, INVALID_ARGUMENT, PERMISSION_DENIED.
    let mut pos = server.client("pos").await;
    let mut processor = server.client("processor").await;
    let mut tokens = Vec::new();
    for _ in 0..5 {
        tokens.push(common::tokenize(&mut pos, VISA).await);
    }
    let bad = pos
        .tokenize(v1::TokenizeRequest {
            pan: "4111111111111112".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let denied = pos
        .detokenize(v1::DetokenizeRequest {
            token: tokens[0].clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    processor
        .detokenize_batch(v1::DetokenizeBatchRequest {
            items: tokens
                .iter()
                .map(|t| v1::DetokenizeRequest { token: t.clone() })
                .collect(),
        })
        .await
        .unwrap();

    // The endpoint refuses plaintext and a scraper without a certificate.
    let url = format!("https://127.0.0.1:{metrics_port}/metrics");
    let curl = |extra: &[&str]| {
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(pki.ca())
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    assert!(!curl(&[]).status.success(), "served without a client cert");
    let plain = http_get(metrics_port, "/metrics");
    assert!(
        plain.is_none_or(|(status, _)| status != 200),
        "served plaintext"
    );
    let scraped = curl(&[
        "--cert",
        scraper_cert.to_str().unwrap(),
        "--key",
        scraper_key.to_str().unwrap(),
    ]);
    assert!(
        scraped.status.success(),
        "{}",
        String::from_utf8_lossy(&scraped.stderr)
    );
    let text = String::from_utf8(scraped.stdout).unwrap();
    assert!(text.contains("tessera_build_info{version=\""), "{text}");

    let prometheus = Prometheus::start(
        dir.path(),
        &format!(
            "  - job_name: tessera\n    scheme: https\n    tls_config:\n      ca_file: {}\n      cert_file: {}\n      key_file: {}\n      server_name: localhost\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n",
            pki.ca().display(),
            scraper_cert.display(),
            scraper_key.display(),
        ),
    );
    prometheus.wait_for(r#"up{job="tessera"}"#, 1.0);
    let ok = prometheus.wait_for(
        r#"sum(tessera_grpc_calls_total{job="tessera", service="tessera.v1.Tokenizer", rpc="Tokenize", code="OK"})"#,
        5.0,
    );
    assert_eq!(ok, 5.0);
    for code in ["INVALID_ARGUMENT", "PERMISSION_DENIED"] {
        prometheus.wait_for(
            &format!(r#"sum(tessera_grpc_calls_total{{job="tessera", code="{code}"}})"#),
            1.0,
        );
    }
    // The histogram: every call in a bucket, and a quantile computable.
    prometheus.wait_for(
        r#"sum(tessera_grpc_call_duration_seconds_count{job="tessera", rpc="Tokenize"})"#,
        6.0,
    );
    prometheus.wait_for(
        r#"sum(tessera_grpc_call_duration_seconds_bucket{job="tessera", rpc="Tokenize", le="+Inf"})"#,
        6.0,
    );
    let p99 = prometheus.wait_for(
        r#"histogram_quantile(0.99, sum by (le) (tessera_grpc_call_duration_seconds_bucket{job="tessera", rpc="Tokenize"}))"#,
        0.0,
    );
    assert!(p99 > 0.0 && p99 <= 10.0, "{p99}");
    // Batch sizes, group commits, the store, the KMS and the audit log.
    prometheus.wait_for(
        r#"sum(tessera_grpc_batch_items_sum{rpc="DetokenizeBatch"})"#,
        5.0,
    );
    prometheus.wait_for("sum(tessera_commit_batch_items_count)", 1.0);
    prometheus.wait_for("sum(tessera_commit_flush_seconds_count)", 1.0);
    prometheus.wait_for("sum(tessera_audit_append_seconds_count)", 1.0);
    prometheus.wait_for("min(tessera_store_up)", 1.0);
    prometheus.wait_for("sum(tessera_kms_call_duration_seconds_count)", 1.0);
    prometheus.wait_for("min(tessera_kms_up)", 1.0);
    prometheus.wait_for("count(tessera_data_key_age_seconds)", 1.0);
    prometheus.wait_for("max(tessera_data_key_active_version)", 1.0);
    assert_eq!(prometheus.value("max(tessera_sealed)"), Some(0.0));
    assert_eq!(
        prometheus.value("sum(tessera_audit_failures_total)"),
        Some(0.0)
    );

    // Every dashboard query is valid PromQL against real data.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$job", ".*")
                .replace("$instance", ".*");
            prometheus.query(&expr);
        }
    }

    // No label carries a PAN or a token.
    let (status, series) = http_get(
        prometheus.port,
        &format!(
            "/api/v1/series?match[]={}",
            url_encode(r#"{job="tessera"}"#)
        ),
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(series.contains("tessera_grpc_calls_total"));
    assert!(!tessera::leak::contains_card_number(&series));
    for token in &tokens {
        assert!(!series.contains(token.as_str()), "a token in a label");
    }
    drop(server);
    common::assert_no_pan_leaked(&log, &dir.path().join("data"), &[VISA]);
}
