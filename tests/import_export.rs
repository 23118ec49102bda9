//! `tessera import` and `tessera export` against a running server, as an
//! operator migrating a card file would run them.
//! - Import: a CSV of 6,000 cards (some not cards at all, one card twice)
//!   tokenized in batches, killed with SIGKILL half way through and
//!   resumed with the same command; and a JSON Lines file. The outputs
//!   hold every good row once, its card replaced by a token that
//!   detokenizes back to it, and nothing else changed; rejected rows are
//!   reported by line number, never by content; and the vault holds
//!   exactly one token per distinct card (a resumed row never mints a
//!   second).
//! - Export: only under a second operator's approval, only for the
//!   operator who asked, audited under the tenant, to a 0600 file equal
//!   to the file that was imported.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Server, test_pan};
use tessera::proto::v1;

fn import(server: &Server, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    command
        .arg("import")
        .args(args)
        .args(["--addr", &server.addr])
        .env("TESSERA_API_KEY", server.api_key("pos"))
        .env_remove("TESSERA_CONFIG");
    command
}

/// The input rows: (line, id, pan, note); every 500th card fails Luhn,
/// row 777 has no card, and row 1000 repeats row 10's card.
fn rows(count: u64) -> Vec<(u64, String, String, String)> {
    (0..count)
        .map(|i| {
            let mut pan = test_pan(4, i);
            if i % 500 == 499 {
                let last = pan.pop().unwrap();
                pan.push(if last == '9' {
                    '0'
                } else {
                    char::from(u8::try_from(last).unwrap() + 1)
                });
            }
            if i == 777 {
                pan.clear();
            }
            if i == 1000 {
                pan = test_pan(4, 10);
            }
            (i + 2, format!("c{i}"), pan, format!("note, with comma {i}"))
        })
        .collect()
}

fn read_csv(path: &Path) -> Vec<Vec<String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

/// Detokenizes `tokens` as the processor.
async fn detokenize_all(server: &Server, tokens: &[String]) -> Vec<String> {
    let mut processor = server.client("processor").await;
    let mut pans = Vec::new();
    for chunk in tokens.chunks(1000) {
        let results = processor
            .detokenize_batch(v1::DetokenizeBatchRequest {
                items: chunk
                    .iter()
                    .map(|t| v1::DetokenizeRequest { token: t.clone() })
                    .collect(),
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        for result in results {
            let outcome = result.result.unwrap();
            let v1::detokenize_result::Result::Pan(p) = outcome else {
                unreachable!("a token did not detokenize: {outcome:?}")
            };
            pans.push(p.pan);
        }
    }
    pans
}

/// Records in the vault, over every data key version of the default tenant.
async fn records_in_vault(server: &Server) -> u64 {
    let mut admin = v1::key_admin_client::KeyAdminClient::with_interceptor(
        server.channel().await,
        server.admin_auth("admin"),
    );
    admin
        .get_status(v1::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner()
        .data_keys
        .iter()
        .map(|k| k.record_count)
        .sum()
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_csv_import_killed_half_way_resumes_without_a_second_token() {
    let dir = tempfile::tempdir().unwrap();
    // Every commit waits 20 ms (a slow disk, dev only), so that the run is
    // still going when it is killed.
    let config = dir.path().join("tessera.toml");
    std::fs::write(
        &config,
        // The check reads back all 6,000 cards at once, which the volume
        // rule rightly takes for a bulk reader: raise its floor here.
        "[store]\nsimulated_flush_delay_us = 20000\n[access]\nrate_per_second = 1000000\ndetokenize_learning_limit = 100000\ndetokenize_spike_floor = 100000\n",
    )
    .unwrap();
    let log = dir.path().join("server.log");
    let server = Server::start_dev_with_config(&config, &dir.path().join("data"), &log);
    let input = rows(6_000);
    let input_path = dir.path().join("cards.csv");
    let mut writer = csv::Writer::from_path(&input_path).unwrap();
    writer.write_record(["id", "pan", "note"]).unwrap();
    for (_, id, pan, note) in &input {
        writer.write_record([id, pan, note]).unwrap();
    }
    writer.flush().unwrap();
    let output = dir.path().join("tokens.csv");
    let args = [
        input_path.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--batch",
        "50",
    ];

    // First run: SIGKILL once a few batches are checkpointed.
    let mut first = import(&server, &args)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let progress = dir.path().join("tokens.csv.progress");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows_done = std::fs::read(&progress)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|c| c["rows"].as_u64())
            .unwrap_or(0);
        if rows_done >= 500 {
            break;
        }
        assert!(Instant::now() < deadline, "the import made no progress");
        assert!(
            first.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(read_csv(&output).len() < input.len());

    // An input of the same length with other rows is not resumed: its
    // first row's id changes, one digit for another.
    let original = std::fs::read_to_string(&input_path).unwrap();
    std::fs::write(&input_path, original.replacen("c0,", "c9,", 1)).unwrap();
    let changed = import(&server, &args).output().unwrap();
    assert_eq!(changed.status.code(), Some(64), "{}", stderr_of(&changed));
    std::fs::write(&input_path, &original).unwrap();

    // An existing output without a checkpoint is never overwritten.
    let other = import(
        &server,
        &[
            input_path.to_str().unwrap(),
            "--output",
            input_path.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(other.status.code(), Some(64), "{}", stderr_of(&other));

    // The same command resumes and finishes; rows were rejected: exit 2.
    let second = import(&server, &args).output().unwrap();
    let stderr = stderr_of(&second);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("resuming after"), "{stderr}");
    assert!(
        !progress.exists(),
        "the checkpoint of a finished run is removed"
    );
    assert_eq!(
        std::fs::metadata(&output).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Rejected: every 500th row and the empty one, by line number only.
    let expected_rejected: BTreeSet<u64> = input
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 500 == 499 || *i == 777)
        .map(|(_, (line, ..))| *line)
        .collect();
    let report = std::fs::read_to_string(tessera::cli::import::rejected_path(&output)).unwrap();
    let reported: BTreeSet<u64> = report
        .lines()
        .map(|l| {
            l.strip_prefix("line ")
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(reported, expected_rejected, "{report}");
    for text in [&report, &stderr] {
        assert!(!tessera::leak::contains_card_number(text), "{text}");
    }

    // Every good row once, in order, its card replaced and nothing else.
    let good: Vec<_> = input
        .iter()
        .filter(|(line, ..)| !expected_rejected.contains(line))
        .collect();
    let out = read_csv(&output);
    assert_eq!(out.len(), good.len());
    let mut token_of: BTreeMap<&str, &str> = BTreeMap::new();
    for ((_, id, pan, note), row) in good.iter().zip(&out) {
        assert_eq!((&row[0], &row[2]), (id, note));
        let token = row[1].as_str();
        assert_eq!(token.len(), pan.len());
        assert_ne!(token, pan);
        assert_eq!(
            (&token[..6], &token[token.len() - 4..]),
            (&pan[..6], &pan[pan.len() - 4..])
        );
        // One card, one token, however often it appears or is re-sent.
        assert_eq!(*token_of.entry(pan.as_str()).or_insert(token), token);
    }
    let tokens: Vec<String> = out.iter().map(|r| r[1].clone()).collect();
    let pans: Vec<&String> = good.iter().map(|(_, _, pan, _)| pan).collect();
    assert_eq!(
        detokenize_all(&server, &tokens)
            .await
            .iter()
            .collect::<Vec<_>>(),
        pans
    );
    assert_eq!(
        records_in_vault(&server).await,
        u64::try_from(token_of.len()).unwrap(),
        "a resumed row minted a second token"
    );
    drop(server);
    common::assert_no_pan_leaked(
        &log,
        &dir.path().join("data"),
        &[&input[0].2, &input[4000].2],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_lines_import_keeps_every_other_key() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = Server::start(&dir.path().join("data"), &log);
    let input = dir.path().join("cards.jsonl");
    let (a, b) = (test_pan(5, 1), test_pan(3, 2));
    std::fs::write(
        &input,
        format!(
            "{{\"customer\":\"x\",\"card\":\"{a}\",\"exp\":\"12/29\"}}\n\n{{\"card\":{b},\"tags\":[1,2]}}\n{{\"card\":\"nope\"}}\nnot json\n"
        ),
    )
    .unwrap();
    let output = dir.path().join("out.jsonl");
    let out = import(
        &server,
        &[
            input.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
            "--column",
            "card",
        ],
    )
    .output()
    .unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 4 rejected: InvalidArgument"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 5 rejected: not valid JSON"),
        "{stderr}"
    );
    assert!(stderr.contains("2 rows tokenized"), "{stderr}");
    // Not a terminal: plain progress lines, counts only.
    assert!(
        stderr.contains("rows tokenized") && stderr.contains("rows/s"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&output).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let keys: Vec<&String> = lines[0].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["customer", "card", "exp"]);
    assert_eq!(lines[1]["tags"], serde_json::json!([1, 2]));
    let tokens: Vec<String> = lines
        .iter()
        .map(|l| l["card"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        detokenize_all(&server, &tokens).await,
        [a.clone(), b.clone()]
    );
    assert!(!text.contains(&a) && !text.contains(&b));
    drop(server);
    common::assert_no_pan_leaked(&log, &dir.path().join("data"), &[&a, &b]);
}

/// The approval id in `tessera export-request`'s answer.
fn approval_in(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find(|w| w.len() == 16 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| unreachable!("no approval id in {text}"))
        .to_owned()
}

/// Export is the inverse of import, for one operator at a time, under a
/// second operator's approval, audited under the tenant, to a file only
/// its owner reads.
#[tokio::test(flavor = "multi_thread")]
async fn an_approved_export_gives_back_the_imported_file_and_nothing_less_guarded() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = Server::start(&dir.path().join("data"), &log);
    let cards = dir.path().join("cards.csv");
    let mut writer = csv::Writer::from_path(&cards).unwrap();
    writer.write_record(["id", "pan", "note"]).unwrap();
    let pans: Vec<String> = (0..300).map(|i| test_pan(5, i)).collect();
    for (i, pan) in pans.iter().enumerate() {
        writer
            .write_record([&format!("c{i}"), pan, "a, b"])
            .unwrap();
    }
    writer.flush().unwrap();
    let tokens = dir.path().join("tokens.csv");
    let imported = import(
        &server,
        &[cards.to_str().unwrap(), "-o", tokens.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(imported.status.success(), "{}", stderr_of(&imported));
    let export_args = |approval: &str, output: &Path| {
        vec![
            "export".to_owned(),
            tokens.to_str().unwrap().to_owned(),
            "-o".to_owned(),
            output.to_str().unwrap().to_owned(),
            "--column".to_owned(),
            "pan".to_owned(),
            "--approval".to_owned(),
            approval.to_owned(),
            "--batch".to_owned(),
            "64".to_owned(),
        ]
    };
    let run_export = |who: &str, approval: &str, output: &Path| {
        let args = export_args(approval, output);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        server.admin_cli(who, &args)
    };

    // Without an approved export nothing comes out.
    let pans_out = dir.path().join("pans.csv");
    let unapproved = run_export("operator", "0123456789abcdef", &pans_out);
    assert_eq!(
        unapproved.status.code(),
        Some(1),
        "{}",
        stderr_of(&unapproved)
    );
    assert!(stderr_of(&unapproved).contains("PermissionDenied"));
    // Only operators may ask.
    let mut admin = v1::key_admin_client::KeyAdminClient::with_interceptor(
        server.channel().await,
        server.admin_auth("admin"),
    );
    let refused = admin
        .request_export(v1::RequestExportRequest {
            tenant: "default".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // Asked by one operator; the same operator cannot approve it.
    let asked = server.admin_cli("operator", &["export-request", "--tenant", "default"]);
    assert!(asked.status.success(), "{}", stderr_of(&asked));
    let id = approval_in(&asked);
    let self_approved = server.admin_cli("operator", &["keys", "approve", &id]);
    assert!(!self_approved.status.success());
    let approved = server.admin_cli("operator2", &["keys", "approve", &id]);
    assert!(approved.status.success(), "{}", stderr_of(&approved));
    // The approval serves the operator who asked, and no one else.
    let other = run_export("operator2", &id, &dir.path().join("other.csv"));
    assert_eq!(other.status.code(), Some(1), "{}", stderr_of(&other));
    assert!(stderr_of(&other).contains("PermissionDenied"));

    let exported = run_export("operator", &id, &pans_out);
    assert!(exported.status.success(), "{}", stderr_of(&exported));
    assert_eq!(
        std::fs::read_to_string(&pans_out).unwrap(),
        std::fs::read_to_string(&cards).unwrap(),
        "export is the inverse of import"
    );
    assert_eq!(
        std::fs::metadata(&pans_out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!tessera::leak::contains_card_number(&stderr_of(&exported)));

    // Review finding: a resume wrote PANs into whatever file sat at the
    // output path beside a checkpoint. A file open to others, or a link,
    // is refused and left as it was.
    for planted in ["planted.csv", "linked.csv"] {
        let output = dir.path().join(planted);
        let elsewhere = dir.path().join(format!("{planted}.target"));
        std::fs::write(&elsewhere, "theirs\n").unwrap();
        if planted == "linked.csv" {
            std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::symlink(&elsewhere, &output).unwrap();
        } else {
            std::fs::copy(&elsewhere, &output).unwrap();
            std::fs::set_permissions(&output, std::fs::Permissions::from_mode(0o666)).unwrap();
        }
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let forged = format!(
            "{{\"input_len\":{},\"input_prefix_sha256\":\"{empty}\",\"input_pos\":0,\"rows\":0,\"written\":0,\"rejected\":0,\"output_len\":0}}",
            std::fs::metadata(&tokens).unwrap().len()
        );
        let progress = dir.path().join(format!("{planted}.progress"));
        std::fs::write(&progress, forged).unwrap();
        std::fs::set_permissions(&progress, std::fs::Permissions::from_mode(0o600)).unwrap();
        let refused = run_export("operator", &id, &output);
        assert!(!refused.status.success(), "{}", stderr_of(&refused));
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "theirs\n");
        let on_disk = std::fs::read_to_string(&output).unwrap();
        assert!(!pans.iter().any(|p| on_disk.contains(p.as_str())));
    }

    // Every batch is in the tenant's audit log, for its auditors.
    let events = common::audit_events(&server, "admin", "ExportBatch").await;
    let exported_count: u64 = events
        .iter()
        .filter(|e| e.outcome == "OK")
        .map(|e| {
            e.resource
                .rsplit("exported:")
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(exported_count, 300, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.principal == "operator" || e.outcome != "OK")
    );
    // Review finding: guessing tokens through a grant went unnoticed.
    // NOT_FOUND answers count as enumeration: the operator is locked.
    let mut exporter = v1::key_admin_client::KeyAdminClient::with_interceptor(
        server.channel().await,
        server.admin_auth("operator"),
    );
    let guesses: Vec<String> = (0..150).map(|i| format!("5{:014}9", i * 7 + 1)).collect();
    let _ = exporter
        .export_batch(v1::ExportBatchRequest {
            approval_id: id.clone(),
            tokens: guesses,
        })
        .await;
    let after = exporter
        .export_batch(v1::ExportBatchRequest {
            approval_id: id.clone(),
            tokens: vec![format!("5{:015}", 3)],
        })
        .await
        .unwrap_err();
    assert_eq!(after.code(), tonic::Code::Unauthenticated, "{after:?}");
    let anomalies = common::audit_events(&server, "admin", "Anomaly").await;
    assert!(
        anomalies
            .iter()
            .any(|e| e.principal == "operator" && e.resource.contains("token_enumeration")),
        "{anomalies:?}"
    );
    drop(server);
    let refs: Vec<&str> = pans.iter().map(String::as_str).collect();
    common::assert_no_pan_leaked(&log, &dir.path().join("data"), &refs);
}
