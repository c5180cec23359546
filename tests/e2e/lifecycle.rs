//! People leave: a provider that ends someone's session tells castellan, which ends theirs.
//! OpenID Connect Back-Channel Logout against the real oidc-provider, and the logout tokens
//! castellan must refuse, signed with the provider's own key.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

const ALICE: (&str, &str) = ("alice@example.com", "alice-password");

struct World {
    _echo: Echo,
    idp: Idp,
    c: Castellan,
    keys: std::path::PathBuf,
    _keys_dir: tempfile::TempDir,
    metrics: String,
}

/// castellan with the IdP (back-channel logout on, its keys in a file the test can sign with)
/// and the metrics endpoint, `demo` shared with alice.
async fn world() -> World {
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keys_dir.path().join("idp-keys.json");
    let idp = Idp::start_with(&origin, &[("IDP_KEYS_FILE", keys.to_str().unwrap())]).await;
    let metrics_port = free_port();
    let top = format!("metrics_listen = \"127.0.0.1:{metrics_port}\"");
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.local_accounts = false;
    setup.top = &top;
    let c = Castellan::start_on(port, setup).await;
    c.grant("demo", "user:alice@example.com");
    World {
        _echo: echo,
        idp,
        c,
        keys,
        _keys_dir: keys_dir,
        metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
    }
}

/// A logout token with `claims`, signed as `mode` says (see tests/support/logout-token.mjs).
fn logout_token(w: &World, claims: &serde_json::Value, mode: &str) -> String {
    let out = Command::new("node")
        .arg(support_dir().join("logout-token.mjs"))
        .arg(&w.keys)
        .arg(claims.to_string())
        .arg(mode)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The claims of a good logout token for alice, with a fresh `jti`.
fn good_claims(w: &World) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::json!({
        "iss": w.idp.issuer,
        "aud": "castellan",
        "iat": now,
        "exp": now + 120,
        "jti": format!("test-{}", rand_suffix()),
        "sub": ALICE.0,
        "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
    })
}

async fn post_logout(w: &World, token: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(w.c.console("/.castellan/backchannel_logout"))
        .form(&[("logout_token", token)])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(
        r.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store"),
        "§2.8: the answer is not cached"
    );
    (status, r.json().await.unwrap_or_default())
}

/// Signs alice in and returns her browser and the app host's session cookie.
async fn signed_in(w: &World) -> (Browser, String) {
    let mut b = Browser::new();
    let page = b.sign_in_oidc(&w.c.url("/"), ALICE.0, ALICE.1).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let cookie = b
        .cookie(&w.c.origin, "castellan_session")
        .expect("the app host's session")
        .clone();
    (b, cookie)
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_out_at_the_provider_ends_castellans_session_and_its_websocket() {
    let w = world().await;
    let (mut b, cookie) = signed_in(&w).await;
    let mut ws = upgrade(&w.c, &format!("castellan_session={cookie}")).await;
    // `castellan login` on this computer, approved by this browser's sign-in.
    let refresh = cli_refresh_token(&mut b, &w.c).await;
    // alice is also signed in on another computer: another session at the provider.
    let (_other, other_cookie) = signed_in(&w).await;

    // alice signs out at the provider itself (not through castellan): its logout page, confirmed.
    let confirm = b.get(&format!("{}/session/end", w.idp.issuer)).await;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    let xsrf = form_input(&confirm.body, "xsrf").expect("the provider's logout form");
    let t = Instant::now();
    let r = b
        .request(
            "POST",
            &format!("{}/session/end/confirm", w.idp.issuer),
            &[],
            Some(&[("xsrf", &xsrf), ("logout", "yes")]),
        )
        .await;
    assert!(r.status < 400, "{} {}", r.status, r.body);
    // The provider posted its logout token to castellan before answering the browser.
    closed_within(&mut ws, Duration::from_secs(1)).await;
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the WebSocket closed {took:?} after the logout"
    );
    assert_eq!(
        status_with_session(&w.c, &cookie).await,
        401,
        "the session is gone"
    );
    // The command line's login made from it ended with it.
    let (status, body) = token_grant(
        &w.c,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(
        (status, &body["error"]),
        (400, &serde_json::json!("invalid_grant")),
        "{body}"
    );
    // The provider named that sign-in (`sid`): the other computer's stays.
    assert_eq!(
        status_with_session(&w.c, &other_cookie).await,
        200,
        "another sign-in was ended too"
    );

    // The audit trail says who ended it and how; the metric counts it.
    let records = ok(&w.c.cli(&["audit", "--json", "--limit", "100"]));
    let ended = records
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["action"] == "session.end" && r["actor"] == "provider:corp")
        .unwrap_or_else(|| panic!("no audit record of the back-channel logout:\n{records}"));
    let after = ended["after"].to_string();
    assert!(after.contains("back-channel logout"), "{ended}");
    // The browser's sign-in and the command line's, with the app host's session handed off.
    assert!(after.contains("\"sign_ins\":2,"), "{ended}");
    assert!(after.contains("\"ended\":3,"), "{ended}");
    let metrics = reqwest::get(&w.metrics)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("castellan_sign_ins_ended_total{by=\"back-channel-logout\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_genuine_unused_logout_token_ends_anything() {
    let w = world().await;
    let (_b, cookie) = signed_in(&w).await;
    let good = good_claims(&w);
    let with = |k: &str, v: serde_json::Value| {
        let mut c = good_claims(&w);
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = good_claims(&w);
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let refused = [
        (
            "signed by a key the provider does not publish",
            logout_token(&w, &good, "unknown_key"),
        ),
        ("unsigned (alg none)", logout_token(&w, &good, "alg_none")),
        (
            "another kind of JWT (typ at+jwt)",
            logout_token(&w, &good, "typ_at_jwt"),
        ),
        (
            "for another client",
            logout_token(&w, &with("aud", "other-client".into()), "own"),
        ),
        (
            "from another issuer",
            logout_token(&w, &with("iss", "http://127.0.0.1:1".into()), "own"),
        ),
        (
            "with a nonce (an ID token's claim)",
            logout_token(&w, &with("nonce", "n".into()), "own"),
        ),
        (
            "without the logout event",
            logout_token(&w, &without("events"), "own"),
        ),
        (
            "with another event",
            logout_token(
                &w,
                &with("events", serde_json::json!({"urn:other": {}})),
                "own",
            ),
        ),
        ("without jti", logout_token(&w, &without("jti"), "own")),
        ("without iat", logout_token(&w, &without("iat"), "own")),
        (
            "expired",
            logout_token(&w, &with("exp", 1_000_000.into()), "own"),
        ),
        (
            "issued long ago",
            logout_token(&w, &with("iat", 1_000_000.into()), "own"),
        ),
        (
            "naming neither sub nor sid",
            logout_token(&w, &without("sub"), "own"),
        ),
        ("not a JWT", "not-a-token".to_string()),
    ];
    for (what, token) in &refused {
        let (status, body) = post_logout(&w, token).await;
        assert_eq!(status, 400, "a logout token {what} was not refused: {body}");
        assert_eq!(body["error"], "invalid_request", "{what}: {body}");
        assert_eq!(
            status_with_session(&w.c, &cookie).await,
            200,
            "a token {what} ended the session"
        );
    }

    // A genuine one naming alice by `sub` ends her session; the same token again is a replay.
    let token = logout_token(&w, &good, "own");
    let (status, body) = post_logout(&w, &token).await;
    assert_eq!(
        (status, &body["ended"]),
        (200, &serde_json::json!(1)),
        "{body}"
    );
    assert_eq!(status_with_session(&w.c, &cookie).await, 401);
    let (status, body) = post_logout(&w, &token).await;
    assert_eq!(status, 400, "a replayed logout token was accepted: {body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("already used"),
        "{body}"
    );
    // A genuine token for someone with no session is still a success: nothing is left to end.
    let (status, body) = post_logout(&w, &logout_token(&w, &good_claims(&w), "own")).await;
    assert_eq!(
        (status, &body["ended"]),
        (200, &serde_json::json!(0)),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revalidation_follows_the_providers_groups_and_ends_a_disabled_account() {
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    let idp = Idp::start_with(
        &origin,
        &[
            ("IDP_TEST_CONTROL", "1"),
            ("IDP_GROUPS", "alice@example.com=staff"),
        ],
    )
    .await;
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.local_accounts = false;
    setup.provider_extra = "scopes = [\"openid\", \"email\", \"profile\", \"offline_access\"]\ngroups_claim = \"groups\"\nrevalidate = \"1s\"";
    let c = Castellan::start_on(port, setup).await;
    c.grant("demo", "group:eng");
    let control = |what: &str, query: &str| {
        reqwest::Client::new()
            .post(format!("{}/_test/{what}?{query}", idp.issuer))
            .send()
    };
    let mut b = Browser::new();
    let page = b.sign_in_oidc(&c.url("/"), ALICE.0, ALICE.1).await;
    assert_eq!(page.status, 403, "alice is not in eng yet");
    let cookie = b.cookie(&c.origin, "castellan_session").unwrap().clone();
    // The provider puts alice in eng: the next refresh (1 s) brings the new groups claim.
    control("groups", "email=alice%40example.com&groups=staff|eng")
        .await
        .unwrap();
    let t = Instant::now();
    while status_with_session(&c, &cookie).await != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the new groups never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ws = upgrade(&c, &format!("castellan_session={cookie}")).await;

    // Disabled at the provider: the next refresh is refused and the session ends everywhere.
    control("disable", "email=alice%40example.com")
        .await
        .unwrap();
    closed_within(&mut ws, Duration::from_secs(4)).await;
    assert_eq!(status_with_session(&c, &cookie).await, 401);
    let audit = ok(&c.cli(&["audit", "--json", "--limit", "200"]));
    assert!(
        audit
            .lines()
            .any(|l| l.contains("session.end") && l.contains("revalidation")),
        "{audit}"
    );
}
