//! Google Cloud: ID tokens from the metadata server for private upstreams (against a stand-in that
//! follows Google's documented wire format), and Google IAP-compatible identity headers verified by
//! the real `google-auth` Python library.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::support::*;

/// A stand-in for the metadata server's identity endpoint. It answers only with
/// `Metadata-Flavor: Google`, as the real one does, and counts the tokens it hands out.
struct MetadataStandIn {
    addr: std::net::SocketAddr,
    issued: Arc<AtomicUsize>,
    audiences: Arc<Mutex<Vec<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

async fn metadata_stand_in() -> MetadataStandIn {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let issued = Arc::new(AtomicUsize::new(0));
    let audiences = Arc::new(Mutex::new(Vec::new()));
    let (i, a) = (issued.clone(), audiences.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (i, a) = (i.clone(), a.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (i, a) = (i.clone(), a.clone());
                        async move {
                            let reply = |status: u16, body: String| {
                                let mut r = hyper::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from(body),
                                ));
                                *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                                Ok::<_, std::convert::Infallible>(r)
                            };
                            if req.headers().get("metadata-flavor").map(|v| v.as_bytes())
                                != Some(b"Google")
                            {
                                return reply(403, "Missing Metadata-Flavor:Google header.".into());
                            }
                            if req.uri().path()
                                != "/computeMetadata/v1/instance/service-accounts/default/identity"
                            {
                                return reply(404, "not found".into());
                            }
                            let q: std::collections::HashMap<String, String> =
                                url::form_urlencoded::parse(
                                    req.uri().query().unwrap_or("").as_bytes(),
                                )
                                .into_owned()
                                .collect();
                            let Some(aud) = q.get("audience") else {
                                return reply(400, "non-empty audience parameter required".into());
                            };
                            a.lock().unwrap().push(aud.clone());
                            let n = i.fetch_add(1, Ordering::SeqCst);
                            let now = castellan::clock::now();
                            let claims = serde_json::json!({"aud": aud, "iss": "https://accounts.google.com", "sub": "1234",
                            "email": "castellan@project.iam.gserviceaccount.com", "iat": now, "exp": now + 3600, "n": n});
                            let token = format!(
                                "{}.{}.c2ln",
                                URL_SAFE_NO_PAD
                                    .encode(br#"{"alg":"RS256","kid":"stand-in","typ":"JWT"}"#),
                                URL_SAFE_NO_PAD.encode(claims.to_string())
                            );
                            reply(200, token)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    MetadataStandIn {
        addr,
        issued,
        audiences,
        _task: task,
    }
}

fn claims_of(jwt: &str) -> serde_json::Value {
    serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn private_upstreams_get_a_cached_google_id_token() {
    let echo = Echo::start().await;
    let md = metadata_stand_in().await;
    let dead_md = free_port();
    let extra = format!(
        "upstream_auth = \"google-id-token\"\n\n\
         [[apps]]\nid = \"keeps-auth\"\nhost = \"127.0.0.1\"\nupstream = \"http://{echo}\"\npath_prefix = \"/keeps\"\nupstream_auth = \"google-id-token\"\n\
         upstream_auth_audience = \"https://keeps-abc-uc.a.run.app\"\nupstream_auth_header = \"x-serverless-authorization\"\n",
        echo = echo.addr
    );
    let top = format!("google_metadata_url = \"http://{}\"", md.addr);
    let mut setup = Setup::new(echo.addr);
    setup.extra = &extra;
    setup.top = &top;
    let c = Castellan::start(setup).await;
    c.add_user("max@example.com", "a long enough password");
    c.grant("demo", "user:max@example.com");
    c.grant("keeps-auth", "user:max@example.com");
    let mut b = Browser::new();
    b.sign_in_local(&c, "max@example.com", "a long enough password", "/")
        .await;
    let api = [
        ("accept", "application/json"),
        ("authorization", "Basic YXBwOnNlY3JldA=="),
    ];

    let first = b.request("GET", &c.url("/one"), &api, None).await.json();
    let token = first["headers"]["authorization"][0]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string();
    assert_eq!(
        claims_of(&token)["aud"],
        format!("http://{}", echo.addr),
        "the audience defaults to the upstream's origin"
    );
    let second = b.request("GET", &c.url("/two"), &api, None).await.json();
    assert_eq!(
        second["headers"]["authorization"][0],
        first["headers"]["authorization"][0]
    );
    // The other app: its own audience, sent in X-Serverless-Authorization, the app's header untouched.
    let keeps = b
        .request("GET", &c.url("/keeps/x"), &api, None)
        .await
        .json();
    assert_eq!(
        keeps["headers"]["authorization"][0],
        "Basic YXBwOnNlY3JldA=="
    );
    let serverless = keeps["headers"]["x-serverless-authorization"][0]
        .as_str()
        .unwrap();
    assert_eq!(
        claims_of(serverless.strip_prefix("Bearer ").unwrap())["aud"],
        "https://keeps-abc-uc.a.run.app"
    );
    b.request("GET", &c.url("/keeps/y"), &api, None).await;
    assert_eq!(
        md.issued.load(Ordering::SeqCst),
        2,
        "one token per audience, cached: {:?}",
        md.audiences.lock().unwrap()
    );

    // Without a metadata server: 502, and a log line that says what to fix.
    let top = format!("google_metadata_url = \"http://127.0.0.1:{dead_md}\"");
    let mut setup = Setup::new(echo.addr);
    setup.extra = "upstream_auth = \"google-id-token\"\n";
    setup.top = &top;
    let c2 = Castellan::start(setup).await;
    c2.add_user("max@example.com", "a long enough password");
    c2.grant("demo", "user:max@example.com");
    let mut b = Browser::new();
    b.sign_in_local(&c2, "max@example.com", "a long enough password", "/")
        .await;
    let page = b.get(&c2.url("/")).await;
    assert_eq!(page.status, 502, "{}", page.body);
    assert!(
        !page.body.contains("\"method\""),
        "nothing reached the upstream"
    );
    let log = c2.proc.log_text();
    assert!(
        log.contains("cannot get an ID token") && log.contains("roles/run.invoker"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn google_iap_headers_verify_with_google_auth_and_forgeries_never_pass() {
    let python = support_dir().join(".venv/bin/python");
    require(&python, "the Python virtual environment with google-auth");
    let echo = Echo::start().await;
    let audience = "/projects/123456789/global/backendServices/987654321";
    let extra = format!("identity_headers = \"google-iap\"\naudience = \"{audience}\"\n");
    let mut setup = Setup::new(echo.addr);
    setup.extra = &extra;
    let c = Castellan::start(setup).await;
    c.add_user("nia@example.com", "a long enough password");
    c.grant("demo", "user:nia@example.com");
    let mut b = Browser::new();
    b.sign_in_local(&c, "nia@example.com", "a long enough password", "/")
        .await;
    let seen = b
        .request(
            "GET",
            &c.url("/"),
            &[
                ("accept", "application/json"),
                (
                    "x-goog-authenticated-user-email",
                    "accounts.google.com:mallory@evil.com",
                ),
                ("X-Goog-Iap-Jwt-Assertion", "forged"),
                ("x_goog_authenticated_user_id", "accounts.google.com:666"),
            ],
            None,
        )
        .await
        .json();
    let h = &seen["headers"];
    assert_eq!(
        h["x-goog-authenticated-user-email"],
        serde_json::json!(["accounts.google.com:nia@example.com"]),
        "{h}"
    );
    assert_eq!(
        h["x-goog-authenticated-user-id"],
        serde_json::json!(["accounts.google.com:nia@example.com"])
    );
    assert!(h.get("x_goog_authenticated_user_id").is_none());
    assert!(
        h.get("x-castellan-email").is_none(),
        "IAP mode sends IAP's headers"
    );
    let token = h["x-goog-iap-jwt-assertion"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        h["x-goog-iap-jwt-assertion"].as_array().unwrap().len(),
        1,
        "the forged one is gone"
    );

    let verify = |aud: &str| {
        Command::new(&python)
            .arg(support_dir().join("verify_iap.py"))
            .args([&token, aud, &c.url("/.castellan/iap/public_key")])
            .output()
            .unwrap()
    };
    let out = verify(audience);
    assert!(
        out.status.success(),
        "google-auth refused castellan's assertion: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["iss"], "https://cloud.google.com/iap");
    assert_eq!(claims["email"], "nia@example.com");
    assert_eq!(claims["sub"], "accounts.google.com:nia@example.com");
    assert!(
        !verify("/projects/1/global/backendServices/2")
            .status
            .success(),
        "another audience is refused"
    );

    // gcp-iap-mode: IDENTITY answers who; CLEAR_LOGIN_COOKIE signs out.
    let who = b
        .request(
            "GET",
            &c.url("/?gcp-iap-mode=IDENTITY"),
            &[("accept", "application/json")],
            None,
        )
        .await;
    assert_eq!(who.json()["email"], "accounts.google.com:nia@example.com");
    let cleared = b.get(&c.url("/page?gcp-iap-mode=CLEAR_LOGIN_COOKIE")).await;
    assert_eq!(cleared.status, 302);
    assert_eq!(cleared.location(), Some("/page"));
    assert_eq!(
        b.request("GET", &c.url("/"), &[("accept", "application/json")], None)
            .await
            .status,
        401
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn iap_assertions_carry_the_providers_hosted_domain() {
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    let idp = Idp::start_with(&origin, &[("IDP_HD", "alice@example.com=example.com")]).await;
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.local_accounts = false;
    setup.extra =
        "identity_headers = \"google-iap\"\naudience = \"/projects/1/global/backendServices/9\"\n";
    let c = Castellan::start_on(port, setup).await;
    c.grant("demo", "domain:example.com");
    for (email, password, hd) in [
        ("alice@example.com", "alice-password", Some("example.com")),
        ("bob@example.com", "bob-password", None),
    ] {
        let mut b = Browser::new();
        let page = b.sign_in_oidc(&c.url("/who"), email, password).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let token = page.json()["headers"]["x-goog-iap-jwt-assertion"][0]
            .as_str()
            .unwrap()
            .to_string();
        let claims = claims_of(&token);
        assert_eq!(claims["email"], email);
        assert_eq!(claims["hd"].as_str(), hd, "{claims}");
    }
}
