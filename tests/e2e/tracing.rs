//! OpenTelemetry tracing (`[tracing]`): an OTLP/HTTP receiver built on OpenTelemetry's own
//! protobuf classes (tests/support/otlp_receiver.py, opentelemetry-proto) gets a span for each
//! step of a request (the request, authentication, the decision with its binding, the call to
//! the app, a sign-in's password check), in the trace a trusted proxy's `traceparent` started,
//! and the app gets a `traceparent` naming the span of its call; a failed call is an error span
//! whose warning carries the trace id. An untrusted client's `traceparent` starts nothing; a
//! collector that refuses at first gets the spans on a retry; check-config asks the collector.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// The receiver, and the file it writes spans to.
struct Receiver {
    port: u16,
    out: PathBuf,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Receiver {
    async fn start(refuse_first: u32) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let out = dir.path().join("spans.jsonl");
        let python = support_dir().join(".venv/bin/python");
        require(&python, "the test virtual environment");
        let mut cmd = Command::new(python);
        cmd.arg(support_dir().join("otlp_receiver.py"))
            .arg(port.to_string())
            .arg(&out)
            .arg(refuse_first.to_string());
        let proc = Proc::spawn("otlp_receiver", &mut cmd, dir.path().join("receiver.log"));
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the OTLP receiver did not start:\n{}",
                proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Receiver {
            port,
            out,
            _proc: proc,
            _dir: dir,
        }
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The spans that `pick` chooses, once it has chosen `count` (castellan exports every second).
    async fn wait(&self, count: usize, pick: impl Fn(&Value) -> bool) -> Vec<Value> {
        let t = Instant::now();
        loop {
            let spans: Vec<Value> = self.spans().into_iter().filter(|s| pick(s)).collect();
            if spans.len() >= count {
                return spans;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{} of {count} spans after 20 s: {:#?}",
                spans.len(),
                self.spans()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The spans of `trace_id`, once there are `count` of them.
    async fn trace(&self, trace_id: &str, count: usize) -> Vec<Value> {
        self.wait(count, |s| s["trace_id"] == trace_id).await
    }
}

/// A GET of `url` carrying a proxy's `traceparent` for `trace` (`flags` "01": sampled, "00": not)
/// and, when given, a session cookie.
fn in_trace(
    client: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
    trace: &str,
    flags: &str,
) -> reqwest::RequestBuilder {
    let get = client
        .get(url)
        .header("traceparent", format!("00-{trace}-{PARENT}-{flags}"));
    match cookie {
        Some(c) => get.header("cookie", c),
        None => get,
    }
}

fn named<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no {name} span in {spans:#?}"))
}

/// The `traceparent` the app saw (the echo app answers with the headers it got).
fn seen_traceparent(body: &Value) -> Vec<String> {
    let tp = body["headers"]["traceparent"][0]
        .as_str()
        .unwrap_or_default();
    tp.split('-').map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_traced_request_has_a_span_per_step_and_its_traceparent_reaches_the_app() {
    let receiver = Receiver::start(1).await;
    let echo = Echo::start().await;
    let top = format!(
        "trusted_proxies = [\"127.0.0.1/32\"]\n\
         [tracing]\notlp_endpoint = \"http://127.0.0.1:{}\"\nsample_ratio = 0.5\n\
         headers = {{ authorization = \"Bearer ${{OTLP_TOKEN}}\" }}\n",
        receiver.port
    );
    let dead = free_port();
    let extra = format!(
        "[[apps]]\nid = \"gone\"\nhost = \"127.0.0.1\"\npath_prefix = \"/gone\"\nupstream = \"http://127.0.0.1:{dead}\"\n"
    );
    let mut setup = Setup::new(echo.addr);
    setup.top = &top;
    setup.extra = &extra;
    setup.env = &[("OTLP_TOKEN", "collector-token")];
    let c = Castellan::start(setup).await;
    c.add_user("ada@example.com", "a long enough password");
    c.add_user("bob@example.com", "a long enough password");
    c.grant("demo", "user:ada@example.com");
    c.grant("gone", "user:ada@example.com");
    let mut ada = Browser::new();
    let cookie = ada
        .sign_in_local_via(&c.origin, "ada@example.com", "a long enough password")
        .await;
    let client = reqwest::Client::new();

    // A trusted proxy's sampled traceparent: castellan continues that trace, whatever its ratio.
    let resp = in_trace(&client, &c.url("/hello"), Some(&cookie), TRACE, "01")
        .header("tracestate", "vendor=opaque")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let seen = seen_traceparent(&body);
    assert_eq!(seen.len(), 4, "{body}");
    assert_eq!(
        (seen[0].as_str(), seen[1].as_str(), seen[3].as_str()),
        ("00", TRACE, "01")
    );
    assert_ne!(
        seen[2], PARENT,
        "the app's parent is castellan's span, not the proxy's"
    );
    assert_eq!(body["headers"]["tracestate"][0], "vendor=opaque");

    let spans = receiver.trace(TRACE, 4).await;
    let root = named(&spans, "GET");
    let (auth, authz, upstream) = (
        named(&spans, "authenticate"),
        named(&spans, "authorize"),
        named(&spans, "upstream"),
    );
    assert_eq!(root["parent_span_id"], PARENT);
    assert_eq!(root["kind"], 2, "SPAN_KIND_SERVER");
    assert_eq!(root["trace_state"], "vendor=opaque");
    assert_eq!(
        root["flags"].as_u64().unwrap() & 0x301,
        0x301,
        "sampled, parent remote"
    );
    for child in [auth, authz, upstream] {
        assert_eq!(child["parent_span_id"], root["span_id"], "{child}");
        assert!(child["start"].as_u64() >= root["start"].as_u64());
        assert!(
            child["end"].as_u64() <= root["end"].as_u64(),
            "{child}\n{root}"
        );
    }
    let a = &root["attributes"];
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["url.path"], "/hello");
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["castellan.app"], "demo");
    assert_eq!(a["castellan.decision"], "allow");
    assert_eq!(a["enduser.id"], "ada@example.com");
    assert_eq!(auth["attributes"]["castellan.credential"], "session-cookie");
    assert_eq!(authz["attributes"]["castellan.decision"], "allow");
    let binding = authz["attributes"]["castellan.binding"].as_str().unwrap();
    assert!(binding.contains("user:ada@example.com"), "{binding}");
    assert_eq!(upstream["kind"], 3, "SPAN_KIND_CLIENT");
    assert_eq!(
        upstream["span_id"],
        seen[2].as_str(),
        "the app's parent is the upstream span"
    );
    assert_eq!(upstream["attributes"]["http.response.status_code"], 200);
    assert_eq!(
        upstream["attributes"]["url.full"],
        format!("http://{}/hello", echo.addr)
    );
    assert_eq!(root["resource"]["service.name"], "castellan");
    assert_eq!(root["scope"], "castellan");
    assert_eq!(root["authorization"], "Bearer collector-token");
    // The collector refused the first export (503): the spans came on a retry.
    let refused = std::fs::read_to_string(receiver.out.with_extension("jsonl.refused")).unwrap();
    assert_eq!(refused.lines().count(), 1);
    // The request's log line carries the trace id.
    let log = c.proc.log_text();
    assert!(
        log.lines().any(|l| l.contains("\"path\":\"/hello\"")
            && l.contains(&format!("\"trace_id\":\"{TRACE}\""))),
        "{log}"
    );

    // An app that is down: the upstream span failed, and the warning carries the trace id.
    let failed_trace = "33333333333333333333333333333333";
    let resp = in_trace(
        &client,
        &c.url("/gone/x"),
        Some(&cookie),
        failed_trace,
        "01",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 502);
    let spans = receiver.trace(failed_trace, 4).await;
    let upstream = named(&spans, "upstream");
    assert_eq!(
        upstream["status"]["code"], 2,
        "STATUS_CODE_ERROR: {upstream}"
    );
    assert!(
        upstream["status"]["message"]
            .as_str()
            .unwrap()
            .contains("connect"),
        "{upstream}"
    );
    assert_eq!(named(&spans, "GET")["status"]["code"], 2);
    let log = c.proc.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("upstream error") && l.contains(failed_trace)),
        "{log}"
    );

    // A denial: the decision span says why, the app is never called.
    let mut bob = Browser::new();
    let bob_cookie = bob
        .sign_in_local_via(&c.origin, "bob@example.com", "a long enough password")
        .await;
    let denied_trace = "11111111111111111111111111111111";
    let resp = in_trace(
        &client,
        &c.url("/hello"),
        Some(&bob_cookie),
        denied_trace,
        "01",
    )
    .header("accept", "application/json")
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 403);
    let spans = receiver.trace(denied_trace, 3).await;
    let authz = named(&spans, "authorize");
    assert_eq!(authz["attributes"]["castellan.decision"], "deny");
    assert!(
        authz["attributes"]["castellan.reason"].is_string(),
        "{authz}"
    );
    assert!(spans.iter().all(|s| s["name"] != "upstream"));
    assert_eq!(
        named(&spans, "GET")["attributes"]["enduser.id"],
        "bob@example.com"
    );

    // A sign-in is traced too: its password check is a span of the POST's trace. Traces
    // castellan starts itself are sampled at 0.5, so either sign-in may be missing, but a
    // recorded sign-in POST has its password check under it.
    let all = receiver.spans();
    let posts: Vec<&Value> = all
        .iter()
        .filter(|s| s["name"] == "POST" && s["attributes"]["castellan.decision"] == "signed-in")
        .collect();
    let checks: Vec<&Value> = all
        .iter()
        .filter(|s| s["name"] == "password.verify")
        .collect();
    assert_eq!(posts.len(), checks.len(), "{all:#?}");
    for post in posts {
        assert!(
            checks.iter().any(
                |c| c["parent_span_id"] == post["span_id"] && c["trace_id"] == post["trace_id"]
            ),
            "{post}"
        );
    }

    // Not sampled by the proxy: nothing recorded, the trace id still passed on, unsampled.
    let unsampled = "22222222222222222222222222222222";
    let body: Value = in_trace(&client, &c.url("/hello"), Some(&cookie), unsampled, "00")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen = seen_traceparent(&body);
    assert_eq!((seen[1].as_str(), seen[3].as_str()), (unsampled, "00"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(receiver.spans().iter().all(|s| s["trace_id"] != unsampled));
}

/// Also: a provider sign-in's code exchange is a span of the callback's trace.
#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_traceparent_starts_a_new_trace() {
    let receiver = Receiver::start(0).await;
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    let idp = Idp::start(&origin, None).await;
    let top = format!(
        "[tracing]\notlp_endpoint = \"http://127.0.0.1:{}/v1/traces\"\nservice_name = \"edge-proxy\"\n",
        receiver.port
    );
    let mut setup = Setup::new(echo.addr);
    setup.top = &top;
    setup.idp = Some(&idp);
    setup.local_accounts = false;
    let c = Castellan::start_on(port, setup).await;
    // check-config asks the collector with an empty export; a wrong path is said plainly.
    let out = c.cli(&["check-config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "tracing: the collector at http://127.0.0.1:{}/v1/traces takes OTLP/HTTP exports",
            receiver.port
        )),
        "{stdout}"
    );
    let wrong = c.config_path.with_file_name("wrong.toml");
    let text = std::fs::read_to_string(&c.config_path).unwrap();
    std::fs::write(&wrong, text.replace("/v1/traces", "/v1/nothing")).unwrap();
    let out = run_cli(&wrong, &["check-config"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: tracing:")
            && stderr.contains("/v1/nothing answered 404")
            && stderr.contains("check otlp_endpoint"),
        "{stderr}"
    );
    ok(&c.cli(&[
        "access",
        "add",
        "demo",
        "allUsers",
        "--yes",
        "--condition",
        "request.path.startsWith(\"/public\")",
    ]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body: Value = in_trace(
        &reqwest::Client::new(),
        &c.url("/public"),
        None,
        TRACE,
        "01",
    )
    .header("tracestate", "forged=1")
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let seen = seen_traceparent(&body);
    assert_eq!(seen.len(), 4, "{body}");
    assert_ne!(
        seen[1], TRACE,
        "a client that is not a trusted proxy cannot choose the trace"
    );
    assert_eq!(seen[3], "01");
    assert!(body["headers"]["tracestate"].is_null(), "{body}");
    let spans = receiver.trace(&seen[1], 2).await;
    let root = named(&spans, "GET");
    assert_eq!(root["parent_span_id"], "", "a new trace has a root span");
    assert_eq!(root["resource"]["service.name"], "edge-proxy");
    assert_eq!(named(&spans, "upstream")["span_id"], seen[2].as_str());

    // A sign-in at the provider: the callback's trace holds the code exchange, a client span.
    let mut alice = Browser::new();
    alice
        .sign_in_oidc(&c.url("/"), "alice@example.com", "alice-password")
        .await;
    let exchange = receiver
        .wait(1, |s| s["name"] == "oidc.code_exchange")
        .await
        .remove(0);
    assert_eq!(exchange["kind"], 3);
    assert_eq!(exchange["attributes"]["castellan.provider"], "corp");
    assert_eq!(exchange["status"]["code"], 0, "{exchange}");
    let callback = receiver
        .trace(exchange["trace_id"].as_str().unwrap(), 2)
        .await;
    let root = named(&callback, "GET");
    assert_eq!(root["attributes"]["url.path"], "/.castellan/callback");
    assert_eq!(root["attributes"]["castellan.decision"], "signed-in");
    assert_eq!(exchange["parent_span_id"], root["span_id"]);
}
