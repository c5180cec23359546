//! Audit streaming (`[[audit_sinks]]`): a webhook that is down for 10 s under a steady load, Debian's
//! rsyslog over TCP and over TLS, and a JSON-lines file, all end with every record of the audit
//! trail, in order, exactly as the store has it; each webhook batch carries a valid HMAC-SHA256
//! signature.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::support::*;

const SECRET: &str = "a webhook secret shared with the SIEM";

/// What the receiver got: each batch's records, and whether its signature held.
#[derive(Default)]
struct Received {
    batches: Vec<(Vec<serde_json::Value>, bool)>,
    refused: usize,
}

/// A webhook receiver that answers 503 while `up` is false.
async fn receiver(
    up: Arc<AtomicBool>,
    got: Arc<Mutex<Received>>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (up, got) = (up.clone(), got.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (up, got) = (up.clone(), got.clone());
                        async move {
                            let signature = req
                                .headers()
                                .get("x-castellan-signature")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let mut resp = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::new(),
                            ));
                            if !up.load(Ordering::SeqCst) {
                                got.lock().unwrap().refused += 1;
                                *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                                return Ok::<_, std::convert::Infallible>(resp);
                            }
                            // The signature, checked with aws-lc-rs directly (not castellan's code).
                            let key = aws_lc_rs::hmac::Key::new(
                                aws_lc_rs::hmac::HMAC_SHA256,
                                SECRET.as_bytes(),
                            );
                            let hex: String = aws_lc_rs::hmac::sign(&key, &body)
                                .as_ref()
                                .iter()
                                .map(|b| format!("{b:02x}"))
                                .collect();
                            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                            let records = v["records"].as_array().cloned().unwrap_or_default();
                            got.lock()
                                .unwrap()
                                .batches
                                .push((records, signature == format!("sha256={hex}")));
                            Ok(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// Debian's rsyslogd on loopback: plain TCP on `ports[0]`, TLS (with `cert`/`key`) on
/// `ports[1]`, each written as RFC 5424 lines to `plain.log` and `tls.log` in `dir`.
fn rsyslog(dir: &std::path::Path, ports: [u16; 2]) -> Proc {
    let d = dir.display();
    let conf = format!(
        "global(workDirectory=\"{d}\" DefaultNetstreamDriverCAFile=\"{d}/ca.pem\" \
         DefaultNetstreamDriverCertFile=\"{d}/server.pem\" DefaultNetstreamDriverKeyFile=\"{d}/server-key.pem\")\n\
         module(load=\"imtcp\")\n\
         input(type=\"imtcp\" port=\"{}\" address=\"127.0.0.1\" ruleset=\"plain\")\n\
         input(type=\"imtcp\" port=\"{}\" address=\"127.0.0.1\" ruleset=\"tls\" streamDriver.name=\"ossl\" streamDriver.mode=\"1\" streamDriver.authMode=\"anon\")\n\
         ruleset(name=\"plain\") {{ action(type=\"omfile\" file=\"{d}/plain.log\" template=\"RSYSLOG_SyslogProtocol23Format\") }}\n\
         ruleset(name=\"tls\") {{ action(type=\"omfile\" file=\"{d}/tls.log\" template=\"RSYSLOG_SyslogProtocol23Format\") }}\n",
        ports[0], ports[1]
    );
    std::fs::write(dir.join("rsyslog.conf"), conf).unwrap();
    let mut cmd = std::process::Command::new("/usr/sbin/rsyslogd");
    cmd.args(["-n", "-f"])
        .arg(dir.join("rsyslog.conf"))
        .arg("-i")
        .arg(dir.join("rsyslog.pid"));
    Proc::spawn("rsyslogd", &mut cmd, dir.join("rsyslogd.log"))
}

/// A CA and a server certificate for `localhost` it signed, as PEM files in `dir`.
fn server_pki(dir: &std::path::Path) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "SIEM CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(
        dir.join("server.pem"),
        leaf.signed_by(&key, &issuer).unwrap().pem(),
    )
    .unwrap();
    std::fs::write(dir.join("server-key.pem"), key.serialize_pem()).unwrap();
}

/// The records in an rsyslog RFC 5424 file: each line's MSG, after its structured data.
fn syslog_records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            assert!(
                l.starts_with("<86>1 ") && l.contains(" castellan - "),
                "{l}"
            );
            serde_json::from_str(&l[l.find("] {").expect("structured data, then JSON") + 2..])
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_that_was_down_ends_with_every_record_in_order() {
    require(
        std::path::Path::new("/usr/sbin/rsyslogd"),
        "Debian's rsyslog",
    );
    let up = Arc::new(AtomicBool::new(false));
    let got = Arc::new(Mutex::new(Received::default()));
    let (addr, _receiver) = receiver(up.clone(), got.clone()).await;
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    server_pki(dir.path());
    let ports = [free_port(), free_port()];
    let _rsyslog = rsyslog(dir.path(), ports);
    let top = format!(
        "[[audit_sinks]]\nid = \"siem\"\nkind = \"webhook\"\nurl = \"http://{addr}/castellan\"\nsecret = \"{SECRET}\"\nbatch = 50\n\n\
         [[audit_sinks]]\nid = \"shipper\"\nkind = \"file\"\npath = \"{}\"\n\n\
         [[audit_sinks]]\nid = \"syslog\"\nkind = \"syslog\"\naddress = \"tcp://127.0.0.1:{}\"\n\n\
         [[audit_sinks]]\nid = \"syslog-tls\"\nkind = \"syslog\"\naddress = \"tls://localhost:{}\"\nca = \"{}\"\n",
        file.display(),
        ports[0],
        ports[1],
        dir.path().join("ca.pem").display()
    );
    let mut setup = Setup::new(echo.addr);
    setup.top = &top;
    let c = Castellan::start(setup).await;
    c.add_user("ada@example.com", "a long enough password");
    c.grant("demo", "user:ada@example.com");
    let mut ada = Browser::new();
    let cookie = ada
        .sign_in_local_via(&c.origin, "ada@example.com", "a long enough password")
        .await;

    // A steady load while the webhook is down; it comes back after 10 s.
    let url = c.url("/load");
    let load = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for _ in 0..400 {
            let r = client
                .get(&url)
                .header("cookie", &cookie)
                .header("accept", "application/json")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "requests never wait for a sink");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    up.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert!(
        got.lock().unwrap().refused > 0,
        "the sink tried while the webhook was down"
    );

    // The store's trail, all of it, once it has settled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = c.cli(&["audit", "--json", "--limit", "100000"]);
    assert!(out.status.success());
    let mut stored: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    stored.sort_by_key(|r| r["id"].as_i64().unwrap());
    assert!(stored.len() > 400, "{} records", stored.len());
    let last = stored.last().unwrap()["id"].as_i64().unwrap();

    // The webhook catches up: every record, in order, as stored (duplicates allowed: at least once).
    let t = Instant::now();
    loop {
        let delivered_last = got
            .lock()
            .unwrap()
            .batches
            .iter()
            .flat_map(|(b, _)| b.iter().map(|r| r["id"].as_i64().unwrap()))
            .max();
        if delivered_last >= Some(last) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the webhook did not catch up (delivered up to {delivered_last:?} of {last})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "caught up {:?} after the webhook came back ({:?} after it went down)",
        t.elapsed(),
        down.elapsed()
    );
    // A copy: the receiver keeps taking deliveries meanwhile.
    let batches = got.lock().unwrap().batches.clone();
    assert!(
        batches.iter().all(|(_, signed)| *signed),
        "every batch is signed"
    );
    let mut delivered: Vec<serde_json::Value> = Vec::new();
    for (batch, _) in &batches {
        for r in batch {
            let id = r["id"].as_i64().unwrap();
            match delivered.last().map(|l| l["id"].as_i64().unwrap()) {
                Some(prev) if id <= prev => {
                    assert!(
                        delivered.iter().any(|d| d == r),
                        "a repeat is a record delivered before"
                    );
                }
                _ => delivered.push(r.clone()),
            }
        }
    }
    let stored: Vec<&serde_json::Value> = stored
        .iter()
        .filter(|r| r["id"].as_i64().unwrap() <= last)
        .collect();
    assert_eq!(
        delivered.len(),
        stored.len(),
        "every record, once each in order"
    );
    for (d, s) in delivered.iter().zip(&stored) {
        assert_eq!(d, *s, "delivered exactly as stored");
    }

    // The file has them too, one JSON line each.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let in_file: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|r| r["id"].as_i64().unwrap() <= last)
        .collect();
    assert_eq!(in_file, stored, "the file holds the trail as stored");

    // rsyslog got them over TCP and over TLS, as RFC 5424 messages.
    for log in ["plain.log", "tls.log"] {
        let t = Instant::now();
        loop {
            let got = syslog_records(&dir.path().join(log));
            let upto: Vec<&serde_json::Value> = got
                .iter()
                .filter(|r| r["id"].as_i64().unwrap() <= last)
                .collect();
            if upto.len() >= stored.len() {
                assert_eq!(upto, stored, "{log} holds the trail as stored, in order");
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{log}: {} of {} records",
                upto.len(),
                stored.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
