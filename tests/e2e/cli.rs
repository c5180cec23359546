//! The command line as a user meets it: check-config, bad input, a store that cannot open, the demo.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn write_config(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("castellan.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn check_config_reports_every_error_with_its_key_and_exits_2() {
    let (_d, path) = write_config(
        r#"
listen = "127.0.0.1:8080"
public_urll = "http://127.0.0.1:8080"
session_lifetime = "a while"

[[providers]]
id = "corp"
issuer = "http://127.0.0.1:9000"
client_id = "castellan"
client_secret = "${CASTELLAN_TEST_UNSET_VARIABLE}"

[[apps]]
id = "demo"
host = "127.0.0.1"
upstream = "127.0.0.1:8501"
"#,
    );
    let out = run_cli(&path, &["check-config"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "has 4 errors",
        "public_urll: unknown key (did you mean `public_url`?)",
        "session_lifetime: `a while` is not a duration",
        "providers[0].client_secret: environment variable CASTELLAN_TEST_UNSET_VARIABLE is not set",
        "apps[0].upstream: `127.0.0.1:8501` is not an upstream URL",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_callback() {
    let (_d, path) = write_config(
        "public_url = \"https://apps.example.com\"\n[[providers]]\nid = \"google\"\nissuer = \"https://accounts.google.com\"\nclient_id = \"x\"\nclient_secret = \"y\"\n[[apps]]\nid = \"demo\"\nhost = \"dashboard.example.com\"\nupstream = \"http://127.0.0.1:8501\"\n",
    );
    let out = run_cli(&path, &["check-config"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("https://apps.example.com/.castellan/callback"),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_asks_the_provider_whether_it_accepts_the_client_secret() {
    let (_, origin) = Castellan::reserve();
    let idp = Idp::start(&origin, None).await;
    let config = |secret: &str| {
        write_config(&format!(
            "public_url = \"{origin}\"\nlocal_accounts = false\n[[providers]]\nid = \"corp\"\nissuer = \"{}\"\nclient_id = \"castellan\"\nclient_secret = \"{secret}\"\n[[apps]]\nid = \"demo\"\nhost = \"127.0.0.1\"\nupstream = \"http://127.0.0.1:1\"\n",
            idp.issuer
        ))
    };
    let (_d, good) = config("castellan-secret");
    let out = run_cli(&good, &["check-config"], None);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("accepts castellan's client_id and client_secret"),
        "{out:?}"
    );
    // A wrong secret fails here, not at the first person's sign-in, and says what to check.
    let (_d, wrong) = config("not-the-secret");
    let out = run_cli(&wrong, &["check-config"], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused castellan's client credentials") && err.contains("invalid_client"),
        "{err}"
    );
}

#[test]
fn store_commands_run_beside_the_server_without_its_secrets() {
    // As the README's guide has it: Google's secret exported only in the terminal running serve.
    let (_d, path) = write_config(
        "local_accounts = false\n[[providers]]\nid = \"google\"\nissuer = \"https://accounts.google.com\"\nclient_id = \"x\"\nclient_secret = \"${GOOGLE_CLIENT_SECRET}\"\n[[apps]]\nid = \"demo\"\nhost = \"127.0.0.1\"\nupstream = \"http://127.0.0.1:8501\"\n",
    );
    let out = run_cli(
        &path,
        &["access", "add", "demo", "user:alice@example.com"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = ok(&run_cli(&path, &["access", "list", "demo"], None));
    assert!(listed.contains("user:alice@example.com"), "{listed}");
    // check-config (and serve) still need it, and say only that.
    let out = run_cli(&path, &["check-config"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("GOOGLE_CLIENT_SECRET is not set"), "{err}");
    assert!(
        !err.contains("no [[providers]] are configured"),
        "a wrong second error: {err}"
    );
}

#[test]
fn a_group_nobody_can_be_in_is_pointed_out() {
    let (_d, path) = write_config(
        "[[apps]]\nid = \"demo\"\nhost = \"127.0.0.1\"\nupstream = \"http://127.0.0.1:1\"\n",
    );
    let out = run_cli(&path, &["access", "add", "demo", "group:enginering"], None);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no group named enginering") && err.contains("nobody is in it yet"),
        "{err}"
    );
    ok(&run_cli(&path, &["groups", "create", "engineering"], None));
    let out = run_cli(&path, &["access", "add", "demo", "group:engineering"], None);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_missing_config_file_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(&dir.path().join("nope.toml"), &["serve"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn a_store_that_cannot_open_is_a_clear_error() {
    let (_d, path) = write_config(
        "store = \"sqlite:///nonexistent-dir/for/sure/castellan.db\"\n[[apps]]\nid = \"demo\"\nhost = \"127.0.0.1\"\nupstream = \"http://127.0.0.1:1\"\n",
    );
    let out = run_cli(&path, &["serve"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open the store sqlite:///nonexistent-dir/for/sure/castellan.db"),
        "{err}"
    );
    assert!(err.contains("Check that the folder exists"), "{err}");
}

#[test]
fn access_and_users_reject_bad_input_with_the_expected_form() {
    let (_d, path) = write_config(
        "[[apps]]\nid = \"demo\"\nhost = \"127.0.0.1\"\nupstream = \"http://127.0.0.1:1\"\n",
    );
    let cases: &[(&[&str], Option<&str>, &str)] = &[
        (
            &["access", "add", "demo", "alice@example.com"],
            None,
            "did you mean user:alice@example.com?",
        ),
        (
            &["access", "add", "demo", "domain:example"],
            None,
            "a whole domain name with its dot",
        ),
        (
            &["access", "add", "demo", "user:alice"],
            None,
            "after user: comes an email address",
        ),
        (
            &["access", "add", "nope", "user:a@example.com"],
            None,
            "there is no app `nope` in the configuration; apps: demo",
        ),
        (
            &["access", "remove", "demo", "user:a@example.com"],
            None,
            "has no roles/accessor binding on app demo",
        ),
        (
            &["users", "add", "not-an-email", "--password-stdin"],
            Some("x\n"),
            "is not an email address",
        ),
        (
            &["users", "add", "a@example.com", "--password-stdin"],
            Some("short\n"),
            "too short",
        ),
        (&["users", "add", "a@example.com"], None, "--password-stdin"),
    ];
    for (args, stdin, needle) in cases {
        let out = run_cli(&path, args, *stdin);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err}"
        );
    }
    // Good input works, and a duplicate account is refused without changing it.
    let ok = run_cli(
        &path,
        &["users", "add", "A@Example.com", "--password-stdin"],
        Some("a long enough password\n"),
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let dup = run_cli(
        &path,
        &["users", "add", "a@example.com", "--password-stdin"],
        Some("another long password\n"),
    );
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let list = run_cli(&path, &["users", "list"], None);
    assert!(String::from_utf8_lossy(&list.stdout).starts_with("a@example.com\t"));
    let add = run_cli(
        &path,
        &["access", "add", "demo", "user:A@Example.com"],
        None,
    );
    assert!(
        String::from_utf8_lossy(&add.stdout)
            .contains("user:a@example.com now has roles/accessor on app demo"),
        "{}",
        String::from_utf8_lossy(&add.stdout)
    );
    let admin = run_cli(
        &path,
        &[
            "users",
            "add",
            "boss@example.com",
            "--admin",
            "--password-stdin",
        ],
        Some("a long enough password\n"),
    );
    assert!(String::from_utf8_lossy(&admin.stdout).contains("an administrator of everything"));
    let global = run_cli(&path, &["access", "list", "--global"], None);
    assert!(String::from_utf8_lossy(&global.stdout).contains("user:boss@example.com\troles/admin"));
    let json = run_cli(&path, &["access", "list", "demo", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["members"][0]["member"], "user:a@example.com");
    assert_eq!(v["members"][0]["role"], "roles/accessor");
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    for args in [
        vec!["serve", "--help"],
        vec!["demo", "--help"],
        vec!["check-config", "--help"],
        vec!["users", "add", "--help"],
        vec!["access", "add", "--help"],
        vec!["access", "list", "--help"],
    ] {
        let out = Command::new(castellan_bin()).args(&args).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Example"), "{args:?}: {text}");
        assert!(
            text.contains("--config"),
            "{args:?} documents --config: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_its_sign_in_page_and_the_printed_password_works() {
    let port = free_port();
    let mut child = Command::new(castellan_bin())
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut guard = KillOnDrop(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut url, mut password, mut config) = (None, None, None);
    while password.is_none() || config.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("demo printed its banner");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Open", u, ..] => url = Some(u.to_string()),
            ["Password", p, ..] => password = Some(p.to_string()),
            [.., "--config", c] => config = Some(std::path::PathBuf::from(c)),
            _ => {}
        }
    }
    let origin = url.unwrap().trim_end_matches('/').to_string();
    assert_eq!(origin, format!("http://127.0.0.1:{port}"));
    let own = format!("http://localhost:{port}");
    let mut b = Browser::new();
    let page = b.follow(&format!("{origin}/")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<h1>Sign in</h1>"), "{}", page.body);
    assert!(
        page.url.starts_with(&own),
        "castellan's own pages: {}",
        page.url
    );
    let csrf = page.input("csrf").unwrap();
    let rd = page.input("rd").unwrap();
    let signed = b
        .request(
            "POST",
            &format!("{own}/.castellan/sign_in"),
            &[],
            Some(&[
                ("csrf", &csrf),
                ("rd", &rd),
                ("email", "admin@example.com"),
                ("password", password.as_deref().unwrap()),
            ]),
        )
        .await;
    assert_eq!(signed.status, 302, "{}", signed.body);
    let signed = b.finish_handoff(signed).await;
    assert_eq!(signed.location(), Some("/"), "{}", signed.body);
    let whoami = b.get(&format!("{origin}/")).await;
    assert_eq!(whoami.status, 200);
    assert!(
        whoami.body.contains("Hello, admin@example.com"),
        "the built-in whoami app: {}",
        whoami.body
    );
    let console = b.get(&format!("{own}/.castellan/admin/")).await;
    assert_eq!(console.status, 200, "the demo admin is an administrator");
    assert!(
        console.body.contains("<h1>Apps</h1>") && console.body.contains(">demo<"),
        "{}",
        console.body
    );

    // "Ctrl-C stops the demo and deletes its temporary store" (SIGTERM too).
    let dir = config.unwrap().parent().unwrap().to_path_buf();
    assert!(dir.join("castellan.db").exists(), "{}", dir.display());
    Command::new("kill")
        .args(["-TERM", &guard.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(!dir.exists(), "the demo left {} behind", dir.display());
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
