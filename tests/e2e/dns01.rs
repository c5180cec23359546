//! ACME DNS-01 with a wildcard: Debian's BIND 9 is the zone's authoritative server, taking
//! castellan's RFC 2136 updates signed with a TSIG key, and Debian's Pebble validates the TXT
//! records by asking that same BIND.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::support::*;
use crate::tls::{Pebble, eventually, served_cert, start_castellan};

/// BIND 9 serving the zone `apps.test` on loopback, updatable with the key `castellan`.
struct Bind {
    addr: SocketAddr,
    secret: String,
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl Bind {
    async fn start() -> Bind {
        require(Path::new("/usr/sbin/named"), "Debian's bind9");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let port = free_port();
        let secret = new_secret();
        std::fs::write(
            dir.path().join("named.conf"),
            format!(
                "options {{ directory \"{d}\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};\n\
                 pid-file \"{d}/named.pid\"; session-keyfile \"{d}/session.key\"; managed-keys-directory \"{d}\";\n\
                 recursion no; dnssec-validation no; allow-transfer {{ none; }}; }};\n\
                 controls {{ }};\n\
                 key \"castellan\" {{ algorithm hmac-sha256; secret \"{secret}\"; }};\n\
                 zone \"apps.test\" {{ type primary; file \"{d}/apps.test.zone\";\n\
                   update-policy {{ grant castellan name _acme-challenge.apps.test. TXT; }}; }};\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("apps.test.zone"),
            "$TTL 60\n@ IN SOA ns.apps.test. hostmaster.apps.test. 1 3600 600 86400 60\n\
             @ IN NS ns.apps.test.\nns IN A 127.0.0.1\n",
        )
        .unwrap();
        let mut cmd = Command::new("/usr/sbin/named");
        cmd.args(["-g", "-n", "1", "-c"])
            .arg(dir.path().join("named.conf"));
        let mut proc = Proc::spawn("named", &mut cmd, dir.path().join("named.log"));
        let t = Instant::now();
        while !proc.log_text().contains("running") {
            if let Ok(Some(s)) = proc.child.try_wait() {
                panic!("named exited ({s}):\n{}", proc.log_text());
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "named did not start:\n{}",
                proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Bind {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            secret,
            proc,
            _dir: dir,
        }
    }

    /// The TXT records BIND answers for `name`, as `dig +short` prints them.
    fn txt(&self, name: &str) -> String {
        let out = Command::new("dig")
            .args(["+short", "+tcp", "-p", &self.addr.port().to_string()])
            .args(["@127.0.0.1", "TXT", name])
            .output()
            .unwrap();
        ok(&out)
    }
}

/// A fresh TSIG secret, as `tsig-keygen` makes one (32 random bytes).
fn new_secret() -> String {
    use std::io::Read as _;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut key)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(key)
}

fn config(port: u16, pebble: &Pebble, bind: &Bind, secret: &str, echo: SocketAddr) -> String {
    format!(
        "listen = \"127.0.0.1:{port}\"\nstore = \"sqlite://castellan.db\"\n\
         [tls]\nacme = {{ domains = [\"*.apps.test\", \"apps.test\"], email = \"ops@example.com\", directory = \"{}\", ca_root = \"{}\", \
         dns = {{ provider = \"rfc2136\", server = \"{}\", key_name = \"castellan\", key_secret = \"{secret}\" }} }}\n\n\
         [[apps]]\nid = \"dash\"\nhost = \"dash.apps.test\"\nupstream = \"http://{echo}\"\n",
        pebble.directory,
        pebble.api_ca.display(),
        bind.addr,
    )
}

/// A wildcard certificate for `*.apps.test` (and `apps.test`, castellan's own pages) is
/// issued through TXT records castellan writes into BIND, served for any name under it, and the
/// records are gone afterwards; a wrong TSIG secret is refused by BIND and said plainly.
#[tokio::test(flavor = "multi_thread")]
async fn dns01_gets_a_wildcard_certificate_through_rfc2136_updates_to_bind() {
    let echo = Echo::start().await;
    let bind = Bind::start().await;
    let pebble = Pebble::start_with_dns(free_port(), free_port(), 3600, Some(bind.addr)).await;
    let record = "_acme-challenge.apps.test";

    // A wrong secret: check-config asks BIND with a signed query and says what to check; the
    // server refuses the update too (BADSIG).
    let wrong = base64::engine::general_purpose::STANDARD.encode(b"not the key BIND has at all");
    let dir = tempfile::tempdir().unwrap();
    let checked = dir.path().join("check.toml");
    std::fs::write(
        &checked,
        config(free_port(), &pebble, &bind, &wrong, echo.addr),
    )
    .unwrap();
    let out = run_cli(&checked, &["check-config"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ACME dns-01 for *.apps.test")
            && stderr.contains("(BADSIG): check tls.acme.dns.key_secret"),
        "{stderr}"
    );
    std::fs::write(
        &checked,
        config(free_port(), &pebble, &bind, &bind.secret, echo.addr),
    )
    .unwrap();
    let out = run_cli(&checked, &["check-config"], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ACME dns-01 for apps.test: the DNS server is authoritative for apps.test and takes the TSIG key"),
        "{stdout}"
    );
    // A server this machine cannot reach is a warning, as an unreachable provider is: nothing
    // was learned about the key.
    let text = config(free_port(), &pebble, &bind, &bind.secret, echo.addr);
    let closed = format!("127.0.0.1:{}", free_port());
    std::fs::write(&checked, text.replace(&bind.addr.to_string(), &closed)).unwrap();
    let out = run_cli(&checked, &["check-config"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: ACME dns-01 for apps.test: cannot reach {closed}"
        )),
        "{stderr}"
    );
    let mut c = start_castellan(
        dir.path(),
        &config(free_port(), &pebble, &bind, &wrong, echo.addr),
    )
    .await;
    eventually(
        "castellan reporting BIND's refusal",
        Duration::from_secs(30),
        &mut c,
        || async { c_log(&dir).contains("could not get a certificate") },
    )
    .await;
    let log = c_log(&dir);
    assert!(
        log.contains("BADSIG") && log.contains("check tls.acme.dns.key_secret"),
        "{log}"
    );
    assert_eq!(
        bind.txt(record),
        "",
        "nothing was written with the wrong key"
    );
    drop(c);

    // The right one: a certificate for every name under the wildcard.
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = start_castellan(
        dir.path(),
        &config(port, &pebble, &bind, &bind.secret, echo.addr),
    )
    .await;
    let health = |host: &str| format!("https://{host}:{port}/.castellan/healthz");
    let t = Instant::now();
    eventually(
        "a wildcard certificate from Pebble",
        Duration::from_secs(90),
        &mut c,
        || async {
            served_cert(
                "dash.apps.test",
                addr,
                &pebble.issued_root,
                &health("dash.apps.test"),
            )
            .await
            .is_some()
        },
    )
    .await;
    eprintln!(
        "dns-01: HTTPS with Pebble's wildcard certificate after {:?}",
        t.elapsed()
    );
    let dash = served_cert(
        "dash.apps.test",
        addr,
        &pebble.issued_root,
        &health("dash.apps.test"),
    )
    .await
    .unwrap();
    for host in ["apps.test", "anything.apps.test"] {
        let der = served_cert(host, addr, &pebble.issued_root, &health(host)).await;
        assert_eq!(
            der.as_deref(),
            Some(dash.as_slice()),
            "{host} is served the one certificate, verified for its name"
        );
    }
    let log = c_log(&dir);
    for step in [
        "ACME: TXT record published at _acme-challenge.apps.test",
        "dns-01 challenge ready",
        "ACME: challenges validated",
        "ACME: certificate issued",
    ] {
        assert!(log.contains(step), "no {step:?} in the log:\n{log}");
    }
    // Two authorizations (apps.test and *.apps.test) share the one TXT name: both records were
    // there at once, and both are withdrawn after the order.
    let named = bind.proc.log_text();
    let updates: Vec<&str> = named
        .lines()
        .filter(|l| l.contains("/key castellan: updating zone 'apps.test/IN'"))
        .collect();
    assert_eq!(
        updates
            .iter()
            .filter(|l| l.contains("adding an RR at '_acme-challenge.apps.test' TXT"))
            .count(),
        2,
        "two records added, signed with the key:\n{named}"
    );
    assert_eq!(
        updates
            .iter()
            .filter(|l| l.contains("deleting an RR at _acme-challenge.apps.test TXT"))
            .count(),
        2,
        "and both deleted:\n{named}"
    );
    assert!(
        named.contains("TSIG castellan: tsig verify failure (BADSIG)"),
        "{named}"
    );
    assert_eq!(bind.txt(record), "", "the TXT records are withdrawn");
    drop(c);
}

fn c_log(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(dir.path().join("castellan.log")).unwrap_or_default()
}
