//! Identity context in conditions, against the real OpenID Provider: the claims a provider's
//! `claims` key keeps, how people signed in (`amr`, `acr`), the provider, and a local account's
//! sign-in methods; `castellan check` explains such a condition from the command line.

use std::time::Duration;

use crate::support::*;

const ALICE: (&str, &str) = ("alice@example.com", "alice-password");
const BOB: (&str, &str) = ("bob@example.com", "bob-password");
const API: [(&str, &str); 1] = [("accept", "application/json")];

/// Replaces the demo app's bindings with one for `member` under `condition`, and waits for it.
fn only(c: &Castellan, member: &str, condition: &str) {
    let doc = serde_json::json!({"bindings": [{"role": "roles/accessor", "members": [member],
        "condition": {"title": "context", "expression": condition}}]});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    ok(&c.cli(&["policy", "set", "demo", file.to_str().unwrap(), "--force"]));
    std::thread::sleep(Duration::from_millis(500));
}

async fn status(c: &Castellan, b: &mut Browser) -> u16 {
    b.request("GET", &c.url("/"), &API, None).await.status
}

#[tokio::test(flavor = "multi_thread")]
async fn conditions_see_claims_sign_in_methods_and_the_provider() {
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    let idp = Idp::start_with(
        &origin,
        &[
            (
                "IDP_CLAIMS",
                "alice@example.com=department:eng|level:3|teams:[\"data\",\"infra\"];bob@example.com=department:sales|level:1",
            ),
            ("IDP_AMR", "alice@example.com=pwd|otp;bob@example.com=pwd"),
            ("IDP_ACR", "alice@example.com=urn:example:mfa"),
        ],
    )
    .await;
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.provider_extra = "claims = [\"department\", \"level\", \"teams\"]";
    setup.local_accounts = false;
    let c = Castellan::start_on(port, setup).await;

    only(
        &c,
        "allAuthenticatedUsers",
        r#"request.auth.claims.department == "eng""#,
    );
    let (mut alice, mut bob) = (Browser::new(), Browser::new());
    let first = alice.sign_in_oidc(&c.url("/"), ALICE.0, ALICE.1).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let page = bob.sign_in_oidc(&c.url("/"), BOB.0, BOB.1).await;
    assert_eq!(page.status, 403, "{}", page.body);

    for (condition, alice_in, bob_in) in [
        // Typed claims: numbers compare as numbers, lists hold members.
        (r#"request.auth.claims.level >= 3"#, 200, 403),
        (r#""infra" in request.auth.claims.teams"#, 200, 403),
        // A claim castellan was not told to keep is absent: false, never an error page.
        (r#"request.auth.claims.name == "Alice Example""#, 403, 403),
        (r#"has(request.auth.claims.teams)"#, 200, 403),
        // How they signed in, as the provider says.
        (r#""otp" in request.auth.amr"#, 200, 403),
        (r#"request.auth.acr == "urn:example:mfa""#, 200, 403),
        (
            r#"request.auth.provider == "corp" && "pwd" in request.auth.amr"#,
            200,
            200,
        ),
    ] {
        only(&c, "allAuthenticatedUsers", condition);
        assert_eq!(
            (status(&c, &mut alice).await, status(&c, &mut bob).await),
            (alice_in, bob_in),
            "{condition}"
        );
    }

    // The explainer, with the facts given on the command line.
    only(
        &c,
        "domain:example.com",
        r#"request.auth.claims.department == "eng" && "otp" in request.auth.amr"#,
    );
    let yes = c.cli(&[
        "check",
        "demo",
        "dan@example.com",
        "--provider",
        "corp",
        "--claim",
        "department=eng",
        "--amr",
        "pwd",
        "--amr",
        "otp",
    ]);
    assert!(
        yes.status.success(),
        "{}",
        String::from_utf8_lossy(&yes.stdout)
    );
    let no = c.cli(&[
        "check",
        "demo",
        "dan@example.com",
        "--provider",
        "corp",
        "--claim",
        "department=sales",
        "--amr",
        "otp",
    ]);
    assert_eq!(no.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&no.stdout).contains("DENIED"),
        "{}",
        String::from_utf8_lossy(&no.stdout)
    );
    // A local account that signed in with a password only: no second factor in its amr.
    let l = Castellan::start(Setup::new(echo.addr)).await;
    l.add_user("carol@example.com", "a long enough password");
    only(
        &l,
        "user:carol@example.com",
        r#"request.auth.provider == "local" && "mfa" in request.auth.amr"#,
    );
    let mut carol = Browser::new();
    let signed_in = carol
        .sign_in_local(&l, "carol@example.com", "a long enough password", "/")
        .await;
    assert_eq!(signed_in.status, 302, "{}", signed_in.body);
    assert_eq!(status(&l, &mut carol).await, 403);
    only(
        &l,
        "user:carol@example.com",
        r#"request.auth.provider == "local" && "pwd" in request.auth.amr"#,
    );
    assert_eq!(status(&l, &mut carol).await, 200);
}

/// Verifies castellan's assertion with PyJWT against castellan's published keys, as a Python app
/// behind it would, and returns its claims.
fn verified_by_pyjwt(token: &str, audience: &str, jwks: &str) -> serde_json::Value {
    let python = support_dir().join(".venv/bin/python");
    let script = "import json, sys, jwt\n\
                  token, audience, jwks = sys.argv[1:4]\n\
                  key = jwt.PyJWKClient(jwks).get_signing_key_from_jwt(token)\n\
                  print(json.dumps(jwt.decode(token, key.key, algorithms=['ES256'], audience=audience)))\n";
    let out = std::process::Command::new(python)
        .args(["-c", script, token, audience, jwks])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "PyJWT refused the assertion: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_app_receives_the_claims_it_asks_for_and_only_from_castellan() {
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    let idp = Idp::start_with(
        &origin,
        &[
            (
                "IDP_CLAIMS",
                "alice@example.com=department:eng|teams:[\"data\",\"infra\"]",
            ),
            ("IDP_AMR", "alice@example.com=pwd|otp"),
            ("IDP_GROUPS", "alice@example.com=staff"),
        ],
    )
    .await;
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.local_accounts = false;
    setup.provider_extra = "claims = [\"department\", \"teams\"]\ngroups_claim = \"groups\"";
    let iap = format!(
        "assertion_claims = [\"groups\", \"department\", \"amr\"]\n\
         claim_headers = {{ \"X-Department\" = \"department\", \"X-Teams\" = \"teams\" }}\n\
         [[apps]]\nid = \"legacy\"\nhost = \"127.0.0.1\"\npath_prefix = \"/legacy\"\nupstream = \"http://{}\"\n\
         identity_headers = \"google-iap\"\naudience = \"/projects/1/apps/legacy\"\n\
         assertion_claims = [\"department\"]\n",
        echo.addr
    );
    setup.extra = &iap;
    let c = Castellan::start_on(port, setup).await;
    ok(&c.cli(&["groups", "create", "oncall"]));
    ok(&c.cli(&["groups", "add-member", "oncall", "alice@example.com"]));
    c.grant("demo", "domain:example.com");
    c.grant("legacy", "domain:example.com");

    let mut alice = Browser::new();
    assert_eq!(
        alice
            .sign_in_oidc(&c.url("/"), ALICE.0, ALICE.1)
            .await
            .status,
        200
    );
    let seen = alice
        .request(
            "GET",
            &c.url("/"),
            &[("x-department", "ceo"), ("x-teams", "board")],
            None,
        )
        .await
        .json();
    let h = &seen["headers"];
    assert_eq!(h["x-department"], serde_json::json!(["eng"]), "{seen}");
    assert_eq!(h["x-teams"], serde_json::json!(["data, infra"]));
    let token = h["x-castellan-jwt-assertion"][0].as_str().unwrap();
    let claims = verified_by_pyjwt(token, "castellan:demo", &c.console("/.castellan/jwks.json"));
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["groups"], serde_json::json!(["oncall", "staff"]));
    assert_eq!(claims["department"], "eng");
    assert_eq!(claims["amr"], serde_json::json!(["pwd", "otp"]));
    assert!(
        claims.get("teams").is_none(),
        "only the claims asked for: {claims}"
    );

    // Google-IAP mode carries them too, and an app that asked for nothing gets none of them.
    let seen = alice
        .request("GET", &c.url("/legacy/x"), &[], None)
        .await
        .json();
    let h = &seen["headers"];
    assert!(h.get("x-department").is_none(), "{seen}");
    let python = support_dir().join(".venv/bin/python");
    let out = std::process::Command::new(python)
        .arg(support_dir().join("verify_iap.py"))
        .args([
            h["x-goog-iap-jwt-assertion"][0].as_str().unwrap(),
            "/projects/1/apps/legacy",
            &c.url("/.castellan/iap/public_key"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["department"], "eng");
    assert!(claims.get("groups").is_none());

    // Bob has no department: a client's X-Department never reaches the app in its place.
    let mut bob = Browser::new();
    assert_eq!(
        bob.sign_in_oidc(&c.url("/"), BOB.0, BOB.1).await.status,
        200
    );
    let seen = bob
        .request("GET", &c.url("/"), &[("x-department", "ceo")], None)
        .await
        .json();
    assert!(seen["headers"].get("x-department").is_none(), "{seen}");
}
