//! Step-up per app (`require_acr`, `require_second_factor`, `require_passkey`): against the real
//! OpenID Provider, which asks for a one-time code when a sign-in's `acr_values` ask for its
//! stronger level, and with local accounts (a code set up at the sign-in; a passkey in headless
//! Chromium, in `browser.rs`).

use crate::support::*;

const ALICE: (&str, &str) = ("alice@example.com", "alice-password");
const BOB: (&str, &str) = ("bob@example.com", "bob-password");
const API: [(&str, &str); 1] = [("accept", "application/json")];
const STRONG: &str = "urn:example:strong";

#[tokio::test(flavor = "multi_thread")]
async fn require_acr_takes_a_provider_sign_in_through_the_stronger_level() {
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    let idp = Idp::start_with(
        &origin,
        &[
            (
                "IDP_ACR",
                "alice@example.com=urn:example:basic;bob@example.com=urn:example:basic",
            ),
            ("IDP_STEP_UP", &format!("{STRONG}=246810")),
        ],
    )
    .await;
    let extra = format!(
        "[[apps]]\nid = \"vault\"\nhost = \"127.0.0.1\"\npath_prefix = \"/vault\"\nupstream = \"http://{}\"\n\
         require_acr = [\"{STRONG}\"]\n\
         [[apps]]\nid = \"phr\"\nhost = \"127.0.0.1\"\npath_prefix = \"/phr\"\nupstream = \"http://{}\"\n\
         require_acr = [\"urn:example:phishing-resistant\"]\n",
        echo.addr, echo.addr
    );
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.local_accounts = false;
    setup.extra = &extra;
    let c = Castellan::start_on(port, setup).await;
    for app in ["demo", "vault", "phr"] {
        c.grant(app, "domain:example.com");
    }

    let mut alice = Browser::new();
    let first = alice.sign_in_oidc(&c.url("/"), ALICE.0, ALICE.1).await;
    assert_eq!(first.status, 200, "{}", first.body);

    // A script riding the basic sign-in: RFC 9470's challenge, naming the level to ask for.
    let r = alice.request("GET", &c.url("/vault/x"), &API, None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"], "insufficient_user_authentication");
    let challenge = r.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("error=\"insufficient_user_authentication\"")
            && challenge.contains(&format!("acr_values=\"{STRONG}\"")),
        "{challenge}"
    );
    // The command line gets no token for the app on that sign-in either.
    let refresh = cli_refresh_token(&mut alice, &c).await;
    let t = alice
        .request(
            "POST",
            &c.url("/.castellan/token"),
            &[],
            Some(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("audience", "vault"),
            ]),
        )
        .await;
    assert_eq!(t.status, 400, "{}", t.body);
    assert_eq!(t.json()["insufficient_user_authentication"], true);
    assert_eq!(t.json()["app"], "vault");

    // The browser: castellan asks the provider for the level. The provider's session is at the
    // basic level and acr_values are only a wish, so its first answer is basic again; castellan
    // asks once more for a fresh sign-in, and this time the provider asks for the code.
    let login = alice.follow(&c.url("/vault/x")).await;
    assert!(
        login.url.starts_with(&idp.issuer) && login.body.contains("name=\"code\""),
        "the provider asks for its stronger sign-in: {} {}",
        login.url,
        login.body
    );
    let wrong = alice
        .submit_idp_form(
            &login,
            &[
                ("login", ALICE.0),
                ("password", ALICE.1),
                ("code", "000000"),
            ],
            None,
        )
        .await;
    assert!(wrong.body.contains("Wrong one-time code"), "{}", wrong.body);
    let done = alice
        .submit_idp_form(
            &wrong,
            &[
                ("login", ALICE.0),
                ("password", ALICE.1),
                ("code", "246810"),
            ],
            None,
        )
        .await;
    assert_eq!(done.status, 200, "{} {}", done.url, done.body);
    assert_eq!(done.url, c.url("/vault/x"));
    let r = alice.request("GET", &c.url("/vault/x"), &API, None).await;
    assert_eq!(
        r.status, 200,
        "the stronger sign-in opens the app: {}",
        r.body
    );
    assert_eq!(
        alice.request("GET", &c.url("/"), &API, None).await.status,
        200
    );

    // A level the provider never gives: asked twice, then a page that says what was missing.
    let mut bob = Browser::new();
    let first = bob.sign_in_oidc(&c.url("/"), BOB.0, BOB.1).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let login = bob.follow(&c.url("/phr/")).await;
    assert!(
        login.url.starts_with(&idp.issuer),
        "a fresh sign-in at the provider: {}",
        login.url
    );
    let refused = bob.submit_idp_login(&login, BOB.0, BOB.1, None).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    for said in [
        "not strong enough",
        "urn:example:phishing-resistant",
        "acr urn:example:basic",
    ] {
        assert!(refused.body.contains(said), "{said}: {}", refused.body);
    }
    assert_eq!(
        bob.request("GET", &c.url("/phr/"), &API, None).await.status,
        401,
        "bob's session is what it was"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn require_second_factor_sets_up_a_code_for_a_local_account_that_has_none() {
    let echo = Echo::start().await;
    let extra = format!(
        "[[apps]]\nid = \"vault\"\nhost = \"127.0.0.1\"\npath_prefix = \"/vault\"\nupstream = \"http://{}\"\nrequire_second_factor = true\n",
        echo.addr
    );
    let mut setup = Setup::new(echo.addr);
    setup.extra = &extra;
    let c = Castellan::start(setup).await;
    c.add_user("pat@example.com", "a long enough password");
    for app in ["demo", "vault"] {
        c.grant(app, "user:pat@example.com");
    }
    // The troubleshooter says what a password-only sign-in lacks.
    let no = c.cli(&["check", "vault", "pat@example.com", "--amr", "pwd"]);
    assert_eq!(no.status.code(), Some(1));
    let said = String::from_utf8_lossy(&no.stdout);
    assert!(
        said.contains("ALLOWED")
            && said.contains(
                "STEP-UP: vault needs a sign-in with a second factor (its require_second_factor)"
            ),
        "{said}"
    );
    ok(&c.cli(&[
        "check",
        "vault",
        "pat@example.com",
        "--amr",
        "pwd",
        "--amr",
        "otp",
        "--amr",
        "mfa",
    ]));

    let mut b = Browser::new();
    let done = b
        .sign_in_local(&c, "pat@example.com", "a long enough password", "/")
        .await;
    assert_eq!(done.status, 302, "{}", done.body);
    assert_eq!(b.request("GET", &c.url("/"), &API, None).await.status, 200);
    let r = b.request("GET", &c.url("/vault/"), &API, None).await;
    assert_eq!(r.json()["requirement"], "second_factor", "{}", r.body);

    // The browser is taken to the sign-in, which says why; the password leads to setting up a
    // code, whose first code finishes the sign-in.
    let form = b.follow(&c.url("/vault/")).await;
    assert!(
        form.body
            .contains("vault needs a sign-in with a second factor"),
        "{}",
        form.body
    );
    assert_eq!(form.input("app").as_deref(), Some("vault"));
    let posted = b
        .request(
            "POST",
            &c.console("/.castellan/sign_in"),
            &[],
            Some(&[
                ("csrf", &form.input("csrf").unwrap()),
                ("rd", &form.input("rd").unwrap()),
                ("app", "vault"),
                ("email", "pat@example.com"),
                ("password", "a long enough password"),
            ]),
        )
        .await;
    assert_eq!(posted.status, 303, "{}", posted.body);
    let enrol = b.follow(&c.console("/.castellan/sign_in/code")).await;
    let at = enrol
        .body
        .find("data-secret=\"")
        .unwrap_or_else(|| panic!("the set-up page shows the key: {}", enrol.body))
        + 13;
    let secret = enrol.body[at..].split('"').next().unwrap().to_string();
    let step = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        / castellan::identity::totp::STEP;
    let code = format!(
        "{:06}",
        castellan::identity::totp::code(&secret, step).unwrap()
    );
    let codes = b
        .request(
            "POST",
            &c.console("/.castellan/sign_in/code"),
            &[],
            Some(&[("csrf", &enrol.input("csrf").unwrap()), ("code", &code)]),
        )
        .await;
    assert!(codes.body.contains("recovery codes"), "{}", codes.body);
    // The recovery codes page's "Continue" goes on through the hand-off to the app.
    let at = codes.body.find("class=\"button\" href=\"").unwrap() + 21;
    let next = codes.body[at..]
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    let back = b.follow(&next).await;
    assert_eq!(back.url, c.url("/vault/"), "{}", back.body);
    let r = b.request("GET", &c.url("/vault/"), &API, None).await;
    assert_eq!(r.status, 200, "the code opened the app: {}", r.body);
}
