//! The person's own provider tokens upstream (`access_token_header`, `id_token_header`,
//! `provider_scopes`), against the real OpenID Provider: the app that asks gets them, with the
//! scope it needs asked for only when a sign-in is for it, renewed before they expire; no other
//! app, no forged copy and no command-line token ever carries one.

use std::time::Duration;

use crate::support::*;

const ALICE: (&str, &str) = ("alice@example.com", "alice-password");
const API: [(&str, &str); 1] = [("accept", "application/json")];

/// The scope the authorization request at `url` asks for.
fn scope_of(url: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// What the provider's introspection endpoint (RFC 7662) says of `token`.
async fn introspect(idp: &Idp, token: &str) -> serde_json::Value {
    reqwest::Client::new()
        .post(format!("{}/token/introspection", idp.issuer))
        .basic_auth("castellan", Some("castellan-secret"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The header `name` the echo upstream received, from its JSON answer.
fn received(page: &Page, name: &str) -> Option<String> {
    page.json()["headers"][name][0].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_app_that_asks_gets_the_persons_provider_tokens_and_nothing_else_does() {
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    // Access tokens last 65 s: castellan renews one that expires within a minute, so the wait
    // below makes the next request renew it.
    let idp = Idp::start_with(
        &origin,
        &[
            ("IDP_EXTRA_SCOPES", "api:read"),
            ("IDP_ACCESS_TOKEN_TTL", "65"),
        ],
    )
    .await;
    let extra = format!(
        "[[apps]]\nid = \"bq\"\nhost = \"127.0.0.1\"\npath_prefix = \"/bq\"\nupstream = \"http://{}\"\n\
         access_token_header = \"X-Forwarded-Access-Token\"\nid_token_header = \"X-Forwarded-Id-Token\"\n\
         provider_scopes = [\"api:read\"]\n",
        echo.addr
    );
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.local_accounts = false;
    setup.provider_extra = "scopes = [\"openid\", \"email\", \"profile\", \"offline_access\"]";
    setup.extra = &extra;
    let c = Castellan::start_on(port, setup).await;
    for app in ["demo", "bq"] {
        c.grant(app, "domain:example.com");
    }

    // Signing in for another app asks for the provider's own scopes only.
    let mut alice = Browser::new();
    let to_idp = alice
        .follow_until(&c.url("/"), &[], Some(&idp.issuer))
        .await;
    assert!(
        !scope_of(&to_idp.url).contains("api:read"),
        "{}",
        to_idp.url
    );
    let login = alice.follow(&to_idp.url).await;
    let first = alice.submit_idp_login(&login, ALICE.0, ALICE.1, None).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let demo = alice.request("GET", &c.url("/"), &API, None).await;
    assert!(
        received(&demo, "x-forwarded-access-token").is_none()
            && received(&demo, "x-forwarded-id-token").is_none(),
        "an app that did not ask gets no token: {}",
        demo.body
    );

    // The app that asks: that sign-in lacks its scope, so a script is told to sign in again …
    let r = alice.request("GET", &c.url("/bq/x"), &API, None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"], "provider_tokens_required");
    // … and the browser signs in for the app, whose scope is asked for now (incremental).
    let to_idp = alice
        .follow_until(&c.url("/bq/x"), &[], Some(&idp.issuer))
        .await;
    assert!(scope_of(&to_idp.url).contains("api:read"), "{}", to_idp.url);
    let back = alice.follow(&to_idp.url).await;
    assert_eq!(back.status, 200, "{} {}", back.url, back.body);
    assert_eq!(back.url, c.url("/bq/x"));

    let page = alice.request("GET", &c.url("/bq/x"), &API, None).await;
    let access = received(&page, "x-forwarded-access-token").expect("the access token");
    let id_token = received(&page, "x-forwarded-id-token").expect("the ID token");
    let seen = introspect(&idp, &access).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["sub"], ALICE.0, "{seen}");
    assert!(
        seen["scope"].as_str().unwrap().contains("api:read"),
        "{seen}"
    );
    let claims: serde_json::Value = {
        use base64::Engine;
        let payload = id_token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        (
            claims["iss"].as_str(),
            claims["sub"].as_str(),
            claims["aud"].as_str()
        ),
        (Some(idp.issuer.as_str()), Some(ALICE.0), Some("castellan")),
        "the provider's own ID token: {claims}"
    );

    // A client's copy of the headers never reaches the app: castellan's replaces it.
    let forged = alice
        .request(
            "GET",
            &c.url("/bq/x"),
            &[
                ("accept", "application/json"),
                ("x-forwarded-access-token", "forged"),
                ("x-forwarded-id-token", "forged"),
            ],
            None,
        )
        .await;
    assert_eq!(
        received(&forged, "x-forwarded-access-token"),
        Some(access.clone())
    );
    assert_eq!(
        received(&forged, "x-forwarded-id-token"),
        Some(id_token.clone())
    );
    // Still nothing for the other app, in any header.
    let demo = alice.request("GET", &c.url("/"), &API, None).await;
    assert!(!demo.body.contains(&access), "{}", demo.body);

    // The command line's token is castellan's, not the provider's: the app gets none with it.
    let refresh = cli_refresh_token(&mut alice, &c).await;
    let (status, v) = token_grant(
        &c,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("audience", "bq"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let bearer = format!("Bearer {}", v["access_token"].as_str().unwrap());
    let mut script = Browser::new();
    let by_cli = script
        .request(
            "GET",
            &c.url("/bq/x"),
            &[("accept", "application/json"), ("authorization", &bearer)],
            None,
        )
        .await;
    assert_eq!(by_cli.status, 200, "{}", by_cli.body);
    assert!(received(&by_cli, "x-forwarded-access-token").is_none());

    // Within a minute of expiring, the access token is renewed with the refresh token.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let page = alice.request("GET", &c.url("/bq/x"), &API, None).await;
    let renewed = received(&page, "x-forwarded-access-token").expect("the access token");
    assert_ne!(renewed, access, "a new access token");
    let seen = introspect(&idp, &renewed).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert!(
        seen["scope"].as_str().unwrap().contains("api:read"),
        "{seen}"
    );
    let again = alice.request("GET", &c.url("/bq/x"), &API, None).await;
    assert_eq!(
        received(&again, "x-forwarded-access-token"),
        Some(renewed),
        "renewed once, then reused"
    );
}
