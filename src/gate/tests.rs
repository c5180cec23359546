//! The gate's decisions, credential kind by outcome, on a real [`State`] (a SQLite store in a
//! temporary folder, real keys) without a server: what [`admit`] lets through, what it refuses
//! and with which answer, and what it registers for connections that outlive their request.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;

use super::{Ask, admit};
use crate::policy::snapshot::Resource;
use crate::policy::{Identity, Member, Principal, Role};
use crate::runtime::State;
use crate::runtime::live::Revocation;
use crate::store::Actor;
use crate::web::ctx::{Ctx, Outcome};
use crate::web::failure::Failure;

const ORIGIN: &str = "http://127.0.0.1:8080";

struct World {
    state: Arc<State>,
    _dir: tempfile::TempDir,
}

/// castellan with apps `demo` (shared with ann and the service account `bot`), `vault` (ann,
/// with `reauth_max_age = "60s"`), `keys` (ann and `bot`, with `require_passkey`) and `open`
/// (public).
async fn world() -> World {
    let toml = r#"
        listen = "127.0.0.1:8080"
        [[apps]]
        id = "demo"
        host = "127.0.0.1"
        upstream = "http://127.0.0.1:9"
        [[apps]]
        id = "vault"
        host = "127.0.0.1"
        path_prefix = "/vault"
        upstream = "http://127.0.0.1:9"
        reauth_max_age = "60s"
        [[apps]]
        id = "keys"
        host = "127.0.0.1"
        path_prefix = "/keys"
        upstream = "http://127.0.0.1:9"
        require_passkey = true
        [[apps]]
        id = "open"
        host = "127.0.0.1"
        path_prefix = "/open"
        upstream = "http://127.0.0.1:9"
    "#;
    let (dir, state) = State::for_tests(toml).await;
    let grant = |app: &str, member: &str| {
        let state = state.clone();
        let (app, member) = (app.to_string(), member.to_string());
        async move {
            state
                .store
                .update_policy(
                    &Resource::App(app),
                    &Actor::cli(),
                    "policy.add-binding",
                    |p| {
                        let added = p.add(Role::Accessor, Member::parse(&member).unwrap(), None);
                        (added, ())
                    },
                )
                .await
                .unwrap();
        }
    };
    grant("demo", "user:ann@example.com").await;
    grant("demo", "serviceAccount:bot").await;
    grant("vault", "user:ann@example.com").await;
    grant("keys", "user:ann@example.com").await;
    grant("keys", "serviceAccount:bot").await;
    grant("open", "allUsers").await;
    state.apply_own_change().await;
    World { state, _dir: dir }
}

impl World {
    /// A browser session for `email` that signed in `age` seconds ago; returns its cookie header.
    async fn session(&self, email: &str, age: i64) -> (String, String) {
        self.session_with(&Identity::local(email), age).await
    }

    /// A browser session for `who` (with how they signed in) that began `age` seconds ago.
    async fn session_with(&self, who: &Identity, age: i64) -> (String, String) {
        let id = crate::crypto::random_token(32);
        let digest = crate::crypto::digest(&id);
        self.state
            .store
            .create_session(
                &digest,
                who,
                std::time::Duration::from_secs(3600),
                "127.0.0.1",
                "test",
                Some(crate::clock::now() - age),
            )
            .await
            .unwrap();
        (format!("{}={id}", self.state.cookies.session), digest)
    }

    /// A command-line access token for `app`, riding on the session `digest`.
    fn cli_token(&self, email: &str, digest: &str, app: &str) -> String {
        let audience = &self.state.config.app(app).unwrap().audience;
        self.state
            .signer()
            .sign_user_access_token(
                &Identity::local(email),
                digest,
                audience,
                crate::clock::now() + 3600,
                crate::clock::now(),
            )
            .unwrap()
            .0
    }

    /// A service account `name` with a key; returns a token for `app` and the key's id.
    async fn service_token(&self, name: &str, app: &str) -> (String, String) {
        let key = self
            .state
            .store
            .create_service_account(name, "", &Actor::cli())
            .await
            .unwrap();
        let id = key.split('_').nth(1).unwrap().to_string();
        let audience = &self.state.config.app(app).unwrap().audience;
        let token = self
            .state
            .signer()
            .sign_access_token(name, &id, audience)
            .unwrap();
        (token, id)
    }

    /// Asks the gate about `method path` (routed as the server would) with `headers`.
    async fn ask(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Seen, Seen> {
        self.ask_as(false, method, path, headers).await
    }

    /// [`World::ask`] as a browser's page navigation (`navigation`) or a script.
    async fn ask_as(
        &self,
        navigation: bool,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Seen, Seen> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let app = self.state.match_app("127.0.0.1", path).unwrap();
        let ask = Ask {
            app,
            method,
            origin: ORIGIN,
            host: "127.0.0.1",
            path,
            query: None,
            headers: &map,
        };
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut ctx = Ctx::new(SocketAddr::new(ip, 40000), ip, navigation);
        match admit(&self.state, &mut ctx, &ask).await {
            Ok(a) => Ok(Seen {
                status: StatusCode::OK,
                body: Value::Null,
                principal: a.principal.as_ref().map(Principal::name),
                revocation: a.live.map(|p| p.grounds.revocation),
                identity_headers: a.headers.len(),
                outcome: ctx.outcome,
                challenge: String::new(),
                location: String::new(),
            }),
            Err(f) => Err(Seen::refused(f, &mut ctx).await),
        }
    }
}

/// What the gate answered.
#[derive(Debug)]
struct Seen {
    status: StatusCode,
    body: Value,
    principal: Option<String>,
    revocation: Option<Revocation>,
    identity_headers: usize,
    outcome: Outcome,
    /// `WWW-Authenticate` and `Location` of a refusal.
    challenge: String,
    location: String,
}

impl Seen {
    async fn refused(f: Failure, ctx: &mut Ctx) -> Seen {
        let resp = f.respond(ctx);
        let status = resp.status();
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let (challenge, location) = (
            header(http::header::WWW_AUTHENTICATE),
            header(http::header::LOCATION),
        );
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Seen {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            principal: None,
            revocation: None,
            identity_headers: 0,
            outcome: ctx.outcome,
            challenge,
            location,
        }
    }

    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

#[tokio::test]
async fn nobody_is_asked_to_sign_in_except_on_a_public_app() {
    let w = world().await;
    let r = w.ask("GET", "/", &[]).await.unwrap_err();
    assert_eq!(
        (r.status, r.error()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    assert_eq!(r.outcome, Outcome::SignIn);
    assert_eq!(
        r.body["sign_in_url"],
        format!("{ORIGIN}/.castellan/sign_in?rd=%2F"),
        "signing in starts on the app's host"
    );
    let open = w.ask("GET", "/open/x", &[]).await.unwrap();
    assert_eq!(open.principal, None);
    assert_eq!(open.revocation, None, "nothing to revoke for nobody");
    assert_eq!(open.identity_headers, 0);
}

#[tokio::test]
async fn a_session_cookie_is_decided_and_registered_by_its_session() {
    let w = world().await;
    let (cookie, digest) = w.session("ann@example.com", 0).await;
    let ok = w.ask("GET", "/", &[("cookie", &cookie)]).await.unwrap();
    assert_eq!(ok.principal.as_deref(), Some("ann@example.com"));
    assert_eq!(ok.revocation, Some(Revocation::Session(digest.into())));
    assert!(ok.identity_headers >= 3, "{ok:?}");
    assert_eq!(ok.outcome, Outcome::Allow);

    let (bob, _) = w.session("bob@example.com", 0).await;
    let denied = w.ask("GET", "/", &[("cookie", &bob)]).await.unwrap_err();
    assert_eq!(
        (denied.status, denied.error()),
        (StatusCode::FORBIDDEN, "access_denied")
    );

    // A tampered cookie is nobody.
    let forged = format!("{}=not-a-session", w.state.cookies.session);
    let r = w.ask("GET", "/", &[("cookie", &forged)]).await.unwrap_err();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// The cache answers for a cookie's session from the cookie alone (it remembers each session id's
/// digest), never for longer than the session lives, and never for another session.
#[tokio::test]
async fn a_cached_session_cookie_ends_with_its_session() {
    let w = world().await;
    let (ann, ann_digest) = w.session("ann@example.com", 0).await;
    let (bob, _) = w.session("bob@example.com", 0).await;
    for _ in 0..2 {
        let ok = w.ask("GET", "/", &[("cookie", &ann)]).await.unwrap();
        assert_eq!(ok.principal.as_deref(), Some("ann@example.com"));
        let denied = w.ask("GET", "/", &[("cookie", &bob)]).await.unwrap_err();
        assert_eq!(denied.status, StatusCode::FORBIDDEN, "bob is never ann");
    }
    // Ann signs out elsewhere: the store ends the session and this process forgets it; the
    // cookie's digest is still remembered, and names a session that is no more.
    w.state
        .store
        .revoke_sessions(Some(&ann_digest[..16]), None, &Actor::cli())
        .await
        .unwrap();
    w.state.forget_session(&ann_digest);
    let r = w.ask("GET", "/", &[("cookie", &ann)]).await.unwrap_err();
    assert_eq!(
        (r.status, r.outcome),
        (StatusCode::UNAUTHORIZED, Outcome::SignIn)
    );
}

#[tokio::test]
async fn reauthentication_applies_to_cookies_and_tokens_alike() {
    let w = world().await;
    let (fresh, fresh_digest) = w.session("ann@example.com", 0).await;
    let (old, old_digest) = w.session("ann@example.com", 600).await;
    assert!(
        w.ask("GET", "/vault/x", &[("cookie", &fresh)])
            .await
            .is_ok()
    );
    let r = w
        .ask("GET", "/vault/x", &[("cookie", &old)])
        .await
        .unwrap_err();
    assert_eq!(
        (r.status, r.error()),
        (StatusCode::UNAUTHORIZED, "reauthentication_required")
    );
    assert_eq!(r.body["max_age"], 60);
    // The same for a command-line token from each sign-in: its session says when it was.
    let token = w.cli_token("ann@example.com", &fresh_digest, "vault");
    let auth = format!("Bearer {token}");
    assert!(
        w.ask("GET", "/vault/x", &[("authorization", &auth)])
            .await
            .is_ok()
    );
    let token = w.cli_token("ann@example.com", &old_digest, "vault");
    let auth = format!("Bearer {token}");
    let r = w
        .ask("GET", "/vault/x", &[("authorization", &auth)])
        .await
        .unwrap_err();
    assert_eq!(r.error(), "reauthentication_required");
    // An app without the rule takes the old sign-in.
    assert!(w.ask("GET", "/", &[("cookie", &old)]).await.is_ok());
}

#[tokio::test]
async fn step_up_applies_to_cookies_and_tokens_alike_and_not_to_service_accounts() {
    let w = world().await;
    let ann = |amr: &[&str]| Identity::local("ann@example.com").signed_in_with(amr);
    let (password, password_digest) = w.session_with(&ann(&["pwd"]), 0).await;
    let (passkey, passkey_digest) = w.session_with(&ann(&["hwk", "user", "mfa"]), 0).await;
    assert!(
        w.ask("GET", "/keys/x", &[("cookie", &passkey)])
            .await
            .is_ok()
    );
    // A script: RFC 9470's challenge, with what is missing.
    let r = w
        .ask("GET", "/keys/x", &[("cookie", &password)])
        .await
        .unwrap_err();
    assert_eq!(
        (r.status, r.error()),
        (StatusCode::UNAUTHORIZED, "insufficient_user_authentication")
    );
    assert_eq!(r.body["requirement"], "passkey");
    assert_eq!(r.body["app"], "keys");
    assert!(
        r.challenge
            .contains("error=\"insufficient_user_authentication\""),
        "{}",
        r.challenge
    );
    // A browser: to the sign-in, which is told which app it is for.
    let r = w
        .ask_as(true, "GET", "/keys/x", &[("cookie", &password)])
        .await
        .unwrap_err();
    assert_eq!(r.status, StatusCode::FOUND);
    assert!(
        r.location
            .ends_with("/.castellan/sign_in?rd=%2Fkeys%2Fx&app=keys"),
        "{}",
        r.location
    );
    // Nobody signed in: the first sign-in is already told.
    let r = w.ask_as(true, "GET", "/keys/x", &[]).await.unwrap_err();
    assert!(r.location.ends_with("&app=keys"), "{}", r.location);
    // Command-line tokens: their session says how the person signed in.
    for (digest, ok) in [(&password_digest, false), (&passkey_digest, true)] {
        let token = w.cli_token("ann@example.com", digest, "keys");
        let auth = format!("Bearer {token}");
        let r = w.ask("GET", "/keys/x", &[("authorization", &auth)]).await;
        assert_eq!(r.is_ok(), ok, "{r:?}");
    }
    // The same sign-in opens an app without a step-up; a service account has no sign-in to step up.
    assert!(w.ask("GET", "/", &[("cookie", &password)]).await.is_ok());
    let (token, _) = w.service_token("bot", "keys").await;
    let auth = format!("Bearer {token}");
    assert!(
        w.ask("GET", "/keys/x", &[("authorization", &auth)])
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_command_line_token_is_registered_by_its_session_and_ends_with_it() {
    let w = world().await;
    let (_, digest) = w.session("ann@example.com", 0).await;
    let token = w.cli_token("ann@example.com", &digest, "demo");
    for carrier in ["authorization", "proxy-authorization"] {
        let bearer = format!("Bearer {token}");
        let ok = w.ask("GET", "/", &[(carrier, &bearer)]).await.unwrap();
        assert_eq!(ok.principal.as_deref(), Some("ann@example.com"));
        assert_eq!(
            ok.revocation,
            Some(Revocation::Session(digest.clone().into()))
        );
    }
    // A token is decided on its own: a good cookie beside a bad token does not help.
    let (cookie, _) = w.session("ann@example.com", 0).await;
    let r = w
        .ask(
            "GET",
            "/",
            &[
                ("cookie", &cookie),
                ("proxy-authorization", "Bearer nonsense"),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(
        (r.status, r.error()),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );
    // For another app's audience: refused.
    let vault = w.cli_token("ann@example.com", &digest, "vault");
    let r = w
        .ask(
            "GET",
            "/",
            &[("proxy-authorization", &format!("Bearer {vault}"))],
        )
        .await
        .unwrap_err();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Its session ends: so does the token.
    w.state
        .store
        .revoke_sessions(Some(&digest[..16]), None, &Actor::cli())
        .await
        .unwrap();
    w.state.forget_session(&digest);
    let r = w
        .ask("GET", "/", &[("authorization", &format!("Bearer {token}"))])
        .await
        .unwrap_err();
    assert_eq!(
        (r.status, r.error()),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );
}

#[tokio::test]
async fn a_service_account_token_is_registered_by_its_key_and_ends_with_it() {
    let w = world().await;
    let (token, key) = w.service_token("bot", "demo").await;
    let bearer = format!("Bearer {token}");
    let ok = w
        .ask("GET", "/", &[("authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(ok.principal.as_deref(), Some("serviceAccount:bot"));
    assert_eq!(ok.revocation, Some(Revocation::Key(key.clone())));
    // No re-authentication for a service account: it never signed in.
    let (vault, _) = w.service_token("other-bot", "vault").await;
    let r = w
        .ask(
            "GET",
            "/vault/x",
            &[("authorization", &format!("Bearer {vault}"))],
        )
        .await
        .unwrap_err();
    assert_eq!(
        (r.status, r.error()),
        (StatusCode::FORBIDDEN, "insufficient_scope"),
        "not shared with it: a 403 for a script, never a sign-in"
    );
    w.state
        .store
        .revoke_key("bot", &key, &Actor::cli())
        .await
        .unwrap();
    let r = w
        .ask("GET", "/", &[("authorization", &bearer)])
        .await
        .unwrap_err();
    assert_eq!(
        (r.status, r.error()),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );
}

#[tokio::test]
async fn a_websocket_from_another_origin_is_refused_whatever_the_credential() {
    let w = world().await;
    let (cookie, digest) = w.session("ann@example.com", 0).await;
    let token = format!("Bearer {}", w.cli_token("ann@example.com", &digest, "demo"));
    let upgrade = [("upgrade", "websocket"), ("connection", "upgrade")];
    for credential in [
        ("cookie", cookie.as_str()),
        ("authorization", token.as_str()),
    ] {
        let theirs = [
            upgrade[0],
            upgrade[1],
            credential,
            ("origin", "https://evil.example"),
        ];
        let r = w.ask("GET", "/ws", &theirs).await.unwrap_err();
        assert_eq!(
            (r.status, r.error()),
            (StatusCode::FORBIDDEN, "cross_origin_websocket"),
            "{credential:?}"
        );
        let ours = [upgrade[0], upgrade[1], credential, ("origin", ORIGIN)];
        assert!(w.ask("GET", "/ws", &ours).await.is_ok(), "{credential:?}");
    }
}
