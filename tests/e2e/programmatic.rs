//! Programmatic access: service accounts with the client-credentials grant, bearer tokens in
//! Authorization or Proxy-Authorization, and ID tokens from the real IdP with allowed audiences.

use crate::support::*;

fn key_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("csk_"))
        .expect("a key is printed")
        .to_string()
}

async fn token(c: &Castellan, name: &str, key: &str, audience: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(c.url("/.castellan/token"))
        .basic_auth(name, Some(key))
        .form(&[("grant_type", "client_credentials"), ("audience", audience)])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn service_accounts_call_apps_with_client_credentials() {
    let echo = Echo::start().await;
    let extra = format!(
        "[[apps]]\nid = \"reports\"\nhost = \"127.0.0.1\"\nupstream = \"http://{}\"\npath_prefix = \"/reports\"\n",
        echo.addr
    );
    let mut setup = Setup::new(echo.addr);
    setup.extra = &extra;
    let c = Castellan::start(setup).await;
    let key = key_of(&c.cli(&["service-accounts", "create", "ci-bot"]));
    c.grant("demo", "serviceAccount:ci-bot");
    let http = reqwest::Client::new();

    let (s, t) = token(&c, "ci-bot", &key, "demo").await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["token_type"], "Bearer");
    assert!(t["expires_in"].as_i64().unwrap() <= 3600);
    let access = t["access_token"].as_str().unwrap().to_string();

    // Authorization: Bearer — reaches the app as the service account; the token does not.
    let seen: serde_json::Value = http
        .get(c.url("/data"))
        .bearer_auth(&access)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        seen["headers"]["x-castellan-user"][0], "serviceAccount:ci-bot",
        "{seen}"
    );
    assert!(
        seen["headers"].get("authorization").is_none(),
        "castellan's token stays with castellan"
    );
    assert!(seen["headers"].get("x-castellan-email").is_none());
    // Proxy-Authorization: Bearer — the app's own Authorization passes through.
    let seen: serde_json::Value = http
        .get(c.url("/data"))
        .header("proxy-authorization", format!("Bearer {access}"))
        .header("authorization", "Basic YXBwOnNlY3JldA==")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        seen["headers"]["authorization"][0],
        "Basic YXBwOnNlY3JldA=="
    );
    assert!(seen["headers"].get("proxy-authorization").is_none());

    // The token is for demo only; reports needs its own token and its own grant.
    let r = http
        .get(c.url("/reports/x"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
    let (_, t2) = token(&c, "ci-bot", &key, "reports").await;
    let r = http
        .get(c.url("/reports/x"))
        .bearer_auth(t2["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no binding on reports");
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );

    // Token endpoint errors follow RFC 6749 §5.2.
    let (s, e) = token(&c, "ci-bot", "csk_wrong", "demo").await;
    assert_eq!((s, e["error"].as_str()), (401, Some("invalid_client")));
    let (s, e) = token(&c, "someone-else", &key, "demo").await;
    assert_eq!(
        (s, e["error"].as_str()),
        (401, Some("invalid_client")),
        "the key belongs to ci-bot"
    );
    let (s, e) = token(&c, "ci-bot", &key, "nope").await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_target")));
    let r = http
        .post(c.url("/.castellan/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "x"),
            ("password", "y"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );

    // A bad token is a 401, never a redirect, even for a browser navigation and beside a good cookie.
    c.add_user("ann@example.com", "a long enough password");
    c.grant("demo", "user:ann@example.com");
    let mut b = Browser::new();
    b.sign_in_local(&c, "ann@example.com", "a long enough password", "/")
        .await;
    let bad = b
        .request(
            "GET",
            &c.url("/"),
            &[("proxy-authorization", "Bearer not.a.token")],
            None,
        )
        .await;
    assert_eq!(bad.status, 401, "{}", bad.body);
    assert!(bad.location().is_none());
    // An app's own bearer token in Authorization is not castellan's business: the cookie decides.
    let own = b
        .request(
            "GET",
            &c.url("/"),
            &[
                ("accept", "application/json"),
                ("authorization", "Bearer app-own-token"),
            ],
            None,
        )
        .await;
    assert_eq!(own.status, 200);
    assert_eq!(
        own.json()["headers"]["authorization"][0],
        "Bearer app-own-token"
    );

    // Revoking the key kills the tokens minted with it at once.
    let keys = c.cli(&["service-accounts", "keys", "list", "ci-bot"]);
    let id = String::from_utf8_lossy(&keys.stdout)
        .split('\t')
        .next()
        .unwrap()
        .to_string();
    assert!(
        c.cli(&["service-accounts", "keys", "revoke", "ci-bot", &id])
            .status
            .success()
    );
    let r = http
        .get(c.url("/data"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("revoked"));
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_id_tokens_with_an_allowed_audience_are_accepted() {
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    let clients = r#"[{"client_id":"script","client_secret":"script-secret","redirect_uris":["http://127.0.0.1:9/cb"],"response_types":["code"],"grant_types":["authorization_code"],"token_endpoint_auth_method":"client_secret_post"},
                      {"client_id":"other","client_secret":"other-secret","redirect_uris":["http://127.0.0.1:9/cb"],"response_types":["code"],"grant_types":["authorization_code"],"token_endpoint_auth_method":"client_secret_post"}]"#;
    let idp = Idp::start_with(&origin, &[("IDP_EXTRA_CLIENTS_JSON", clients)]).await;
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.provider_extra = "programmatic_audiences = [\"script\"]";
    let scim_token = "programmatic-scim-token-0123456789abcdefgh";
    let top = format!("scim_token = \"{scim_token}\"");
    setup.top = &top;
    let c = Castellan::start_on(port, setup).await;
    c.grant("demo", "user:alice@example.com");

    // A program's ID token, minted by the real IdP for client `script` (or `other`).
    let id_token = |client: &'static str, secret: &'static str| {
        let issuer = idp.issuer.clone();
        async move {
            let mut b = Browser::new();
            let auth = format!(
                "{issuer}/auth?client_id={client}&response_type=code&scope=openid%20email&redirect_uri={}&state=s&nonce=n",
                urlencode("http://127.0.0.1:9/cb")
            );
            let login = b
                .follow_until(&auth, &[], Some("http://127.0.0.1:9/cb"))
                .await;
            let cb = b
                .submit_idp_login(
                    &login,
                    "alice@example.com",
                    "alice-password",
                    Some("http://127.0.0.1:9/cb"),
                )
                .await;
            let code = url::Url::parse(&cb.url)
                .unwrap()
                .query_pairs()
                .find(|(k, _)| k == "code")
                .unwrap()
                .1
                .to_string();
            let t: serde_json::Value = reqwest::Client::new()
                .post(format!("{issuer}/token"))
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", "http://127.0.0.1:9/cb"),
                    ("client_id", client),
                    ("client_secret", secret),
                ])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            t["id_token"]
                .as_str()
                .unwrap_or_else(|| panic!("{t}"))
                .to_string()
        }
    };
    let allowed = id_token("script", "script-secret").await;
    let r = reqwest::Client::new()
        .get(c.url("/api"))
        .bearer_auth(&allowed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["headers"]["x-castellan-email"][0], "alice@example.com");
    assert!(seen["headers"].get("authorization").is_none());

    let other = id_token("other", "other-secret").await;
    let r = reqwest::Client::new()
        .get(c.url("/api"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "an audience not on programmatic_audiences is refused"
    );
    assert!(r.text().await.unwrap().contains("InvalidAudience"));

    // Deactivated over SCIM, alice's still-valid ID token no longer gets in.
    let scim = |method: &str, path: &str, body: serde_json::Value| {
        reqwest::Client::new()
            .request(
                method.parse().unwrap(),
                c.console(&format!("/.castellan/scim/v2{path}")),
            )
            .bearer_auth(scim_token)
            .json(&body)
            .send()
    };
    let user: serde_json::Value = scim(
        "POST",
        "/Users",
        serde_json::json!({"userName": "alice@example.com"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let bearer = |t: String| {
        reqwest::Client::new()
            .get(c.url("/api"))
            .bearer_auth(t)
            .send()
    };
    assert_eq!(
        bearer(allowed.clone()).await.unwrap().status(),
        200,
        "provisioned and active"
    );
    let r = scim(
        "PATCH",
        &format!("/Users/{}", user["id"].as_str().unwrap()),
        serde_json::json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "value": {"active": false}}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = bearer(allowed).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("deactivated"));
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_preflights_are_answered_for_allowed_origins_only() {
    let echo = Echo::start().await;
    let mut setup = Setup::new(echo.addr);
    setup.extra = "cors_origins = [\"https://dash.example.com\"]\n";
    let c = Castellan::start(setup).await;
    c.add_user("wes@example.com", "a long enough password");
    c.grant("demo", "user:wes@example.com");
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, c.url("/api/items"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type, x-app")
            .send()
    };
    let ok = preflight("https://dash.example.com").await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://dash.example.com"
    );
    assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
    assert_eq!(
        ok.headers()["access-control-allow-headers"],
        "content-type, x-app"
    );
    // Any other origin's OPTIONS is decided like any request: no free pass.
    let other = preflight("https://evil.example").await.unwrap();
    assert_eq!(other.status(), 401);
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let mut b = Browser::new();
    b.sign_in_local(&c, "wes@example.com", "a long enough password", "/")
        .await;
    let actual = b
        .request(
            "GET",
            &c.url("/api/items"),
            &[
                ("accept", "application/json"),
                ("origin", "https://dash.example.com"),
            ],
            None,
        )
        .await;
    assert_eq!(actual.status, 200);
    assert_eq!(
        actual.headers["access-control-allow-origin"],
        "https://dash.example.com"
    );
    let foreign = b
        .request(
            "GET",
            &c.url("/api/items"),
            &[
                ("accept", "application/json"),
                ("origin", "https://evil.example"),
            ],
            None,
        )
        .await;
    assert!(foreign.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_token_that_cannot_be_checked_is_a_503_not_a_401() {
    use base64::Engine;
    let echo = Echo::start().await;
    let dead = free_port();
    let issuer = format!("http://127.0.0.1:{dead}");
    let extra = format!(
        "[[providers]]\nid = \"gone\"\nissuer = \"{issuer}\"\nclient_id = \"castellan\"\nclient_secret = \"x\"\nprogrammatic_audiences = [\"script\"]\n"
    );
    let mut setup = Setup::new(echo.addr);
    setup.extra = &extra;
    setup.top = "trusted_proxies = [\"127.0.0.1\"]\nforward_auth = \"traefik\"";
    let c = Castellan::start(setup).await;
    c.grant("demo", "user:alice@example.com");

    // A token from that provider: castellan cannot fetch its keys, so it cannot tell whether the
    // token is good. That is the provider's outage, not the program's fault: 503, nothing let in.
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(serde_json::json!({"alg": "RS256", "kid": "k1", "typ": "JWT"})),
        b64(serde_json::json!({
            "iss": issuer, "aud": "script", "sub": "alice", "email": "alice@example.com",
            "email_verified": true, "iat": now, "exp": now + 3600,
        })),
    );
    let r = reqwest::Client::new()
        .get(c.url("/api"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "10");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    let why = body["error_description"].as_str().unwrap();
    assert!(
        why.contains("gone") && why.contains("nothing was let through"),
        "{why}"
    );
    assert!(body["reference"].as_str().is_some_and(|r| !r.is_empty()));

    // The same through forward auth (`/.castellan/auth`, as Traefik's forwardAuth calls it).
    let r = reqwest::Client::new()
        .get(c.url("/.castellan/auth"))
        .header("x-forwarded-uri", "/api")
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-host", format!("127.0.0.1:{}", c.port))
        .header("x-forwarded-proto", "http")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "forward auth");
}
