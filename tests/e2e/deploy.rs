//! Deployment artefacts: the container image's static parts (CI has no Docker engine), the
//! Kubernetes manifests, configuration from the environment, and the health check command.

use std::process::Command;

use crate::support::*;

fn repo(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

#[test]
fn the_dockerfile_builds_a_non_root_image_without_a_shell() {
    let d = repo("Dockerfile");
    let lines: Vec<&str> = d
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("FROM rust:") && l.ends_with("AS build")),
        "{d}"
    );
    // A static binary (no libc in the image), built from the locked dependencies.
    assert!(
        d.contains("RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --locked"),
        "{d}"
    );
    let runtime = lines.iter().rev().find(|l| l.starts_with("FROM ")).unwrap();
    assert!(
        runtime.starts_with("FROM gcr.io/distroless/static"),
        "no shell and no libc in the runtime image: {runtime}"
    );
    assert!(lines.contains(&"COPY --from=build /castellan /castellan"));
    assert!(lines.contains(&"USER nonroot:nonroot"));
    assert!(
        lines.iter().any(|l| l.starts_with("HEALTHCHECK")
            && l.ends_with("CMD [\"/castellan\", \"healthcheck\"]"))
    );
    assert!(lines.contains(&"ENTRYPOINT [\"/castellan\"]"));
    let ignore = repo(".dockerignore");
    for must in [
        "target",
        "tests/support/node_modules",
        "tests/support/.venv",
    ] {
        assert!(
            ignore.lines().any(|l| l == must),
            ".dockerignore keeps {must} out of the build context"
        );
    }
}

#[test]
fn the_kubernetes_manifests_are_complete_and_their_config_is_valid() {
    check_manifest(
        "deploy/kubernetes/castellan.yaml",
        &[
            "ConfigMap",
            "Secret",
            "Deployment",
            "Service",
            "PersistentVolumeClaim",
        ],
        1,
    );
    check_manifest(
        "deploy/kubernetes/replicas-postgres.yaml",
        &[
            "ConfigMap",
            "Secret",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "StatefulSet",
        ],
        3,
    );
}

fn check_manifest(file: &str, want: &[&str], replicas: u64) {
    let text = repo(file);
    let docs: Vec<serde_json::Value> = text
        .split("\n---\n")
        .map(|d| serde_yaml_ng::from_str(d).unwrap_or_else(|e| panic!("not YAML: {e}\n{d}")))
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for k in want {
        assert!(kinds.contains(k), "{k} in {kinds:?} ({file})");
    }
    for d in &docs {
        assert!(
            d["apiVersion"].is_string() && d["metadata"]["name"].is_string(),
            "{d}"
        );
    }
    // The configuration the ConfigMap carries passes check-config.
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("castellan.toml");
    std::fs::write(&path, cm["data"]["castellan.toml"].as_str().unwrap()).unwrap();
    let out = Command::new(castellan_bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .env("GOOGLE_CLIENT_SECRET", "x")
        .envs(text.contains("${CASTELLAN_STORE}").then_some((
            "CASTELLAN_STORE",
            "postgres://castellan:x@postgres:5432/castellan",
        )))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(dep["spec"]["replicas"], replicas, "{file}");
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"],
        "/.castellan/healthz"
    );
    assert_eq!(
        dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_from_the_environment_with_a_working_health_check() {
    let echo = Echo::start().await;
    let port = free_port();
    let toml = format!(
        "[[apps]]\nid = \"demo\"\nhost = \"127.0.0.1\"\nupstream = \"http://{}\"\n",
        echo.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(castellan_bin());
    cmd.args(["serve", "--config", "/nonexistent/castellan.toml"])
        .current_dir(dir.path())
        .env("CASTELLAN_CONFIG_TOML", &toml)
        .env("PORT", port.to_string())
        .env("CASTELLAN_PUBLIC_URL", format!("http://localhost:{port}"));
    let mut proc = Proc::spawn("castellan (env)", &mut cmd, dir.path().join("log"));
    wait_for(
        &format!("http://127.0.0.1:{port}/.castellan/healthz"),
        "castellan",
        &mut proc,
    )
    .await;
    assert!(
        proc.log_text().contains("0.0.0.0:"),
        "PORT made it listen on every interface"
    );
    let health = |extra: &[(&str, String)]| {
        let mut c = Command::new(castellan_bin());
        c.arg("healthcheck")
            .env("CASTELLAN_CONFIG_TOML", &toml)
            .env("PORT", port.to_string());
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let ok = health(&[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let down = health(&[("PORT", free_port().to_string())]);
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("unhealthy"));
    // The store went to the working directory (the config's folder is the current one).
    assert!(dir.path().join("castellan.db").exists());
}
