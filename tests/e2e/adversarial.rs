//! Table-driven probes of the kind an attacker sends: forged identity headers, open redirects,
//! path and host confusion, request smuggling, tampered sessions and tokens, WebSocket hijacking
//! and oversized requests. Each case states what must hold; none may reach the app as someone else
//! or reach a path it was not decided for.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const PW: &str = "a long enough password";

/// castellan with two apps: `demo` at `/` (Ada may open it) and `admin` at `/admin` (she may not).
async fn setup() -> (Echo, Castellan, String) {
    let echo = Echo::start().await;
    let mut s = Setup::new(echo.addr);
    let extra = format!(
        "\n[[apps]]\nid = \"admin\"\nhost = \"127.0.0.1\"\nupstream = \"http://{}\"\npath_prefix = \"/admin\"\n",
        echo.addr
    );
    s.extra = Box::leak(extra.into_boxed_str());
    let c = Castellan::start(s).await;
    c.add_user("ada@example.com", PW);
    c.grant("demo", "user:ada@example.com");
    let mut b = Browser::new();
    assert_eq!(
        b.sign_in_local(&c, "ada@example.com", PW, "/").await.status,
        302
    );
    let cookie = format!(
        "castellan_session={}",
        b.cookie(&c.origin, "castellan_session").unwrap()
    );
    (echo, c, cookie)
}

/// Sends `request` as raw bytes on a new connection and returns everything answered until the
/// server closes or goes quiet.
async fn raw(c: &Castellan, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", c.port))
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match tokio::time::timeout(Duration::from_millis(700), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| answer.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// The paths the echo app was asked for, from its JSON answers in `answer`.
fn upstream_paths(answer: &str) -> Vec<String> {
    answer
        .match_indices("\"uri\":\"")
        .filter_map(|(i, m)| {
            let rest = &answer[i + m.len()..];
            Some(rest[..rest.find('"')?].to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_identity_headers_never_reach_the_app() {
    let (_echo, c, cookie) = setup().await;
    let forged = [
        "X-Castellan-Email",
        "x-castellan-email",
        "X-CASTELLAN-EMAIL",
        "X-Castellan-User",
        "x-castellan-user",
        "X-Castellan-Assertion",
        "X-Castellan-Groups",
        "X-Castellan-Provider",
        "X_Castellan_Email",
        "x_castellan_user",
        "X-Castellan_Email",
        "x-goog-iap-jwt-assertion",
        "X-Goog-Authenticated-User-Email",
        "x-goog-authenticated-user-id",
        "X_Goog_Authenticated_User_Email",
        "x-goog-iap-jwt-assertion ",
    ];
    let mut cases = 0;
    for name in forged {
        for (who, cookie) in [("ada", cookie.as_str()), ("anonymous", "")] {
            let req = format!(
                "GET /probe HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: application/json\r\nCookie: {cookie}\r\n{name}: evil@example.com\r\n{name}: second@example.com\r\nConnection: close\r\n\r\n",
                c.port
            );
            let answer = raw(&c, req.as_bytes()).await;
            cases += 1;
            assert!(
                !answer.contains("evil@example.com") && !answer.contains("second@example.com"),
                "{who} {name:?}: {answer}"
            );
            // Ada's request goes through (without the forgery), unless it is malformed (a space
            // before the colon is a 400, RFC 9112).
            if who == "ada" && !name.ends_with(' ') {
                assert_eq!(
                    upstream_paths(&answer),
                    vec!["/probe"],
                    "{name:?}: {answer}"
                );
            }
            if who == "anonymous" {
                assert!(
                    upstream_paths(&answer).is_empty(),
                    "{name:?} without a session reached the app: {answer}"
                );
            }
        }
    }
    eprintln!("{cases} forged-header cases");
}

#[tokio::test(flavor = "multi_thread")]
async fn open_redirects_after_sign_in_are_refused() {
    let (_echo, c, _) = setup().await;
    let payloads = [
        "//evil.com",
        "///evil.com",
        "////evil.com",
        "/\\evil.com",
        "\\\\evil.com",
        "/\\/evil.com",
        "https:evil.com",
        "https:/evil.com",
        "http://evil.com",
        "https://evil.com/",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "data:text/html,x",
        "/%2f%2fevil.com",
        "%2f%2fevil.com",
        "/%5cevil.com",
        "%5c%5cevil.com",
        "/%252f%252fevil.com",
        "/\tevil.com",
        "/\t/evil.com",
        "/\n/evil.com",
        "/\r/evil.com",
        " //evil.com",
        "//evil%2ecom",
        "https://127.0.0.1@evil.com",
        "https://evil.com@127.0.0.1",
        "//evil。com",
        "//evil．com",
        "http://127.0.0.1.evil.com/",
        "/%09/evil.com",
        "/%0d%0a/evil.com",
        "//%09evil.com",
        "ftp://evil.com",
        "\\/evil.com",
        "/.//evil.com",
        "https://evil.com\\@127.0.0.1",
    ];
    for p in payloads {
        let mut b = Browser::new();
        let r = b.sign_in_local(&c, "ada@example.com", PW, p).await;
        assert_eq!(r.status, 302, "{p:?}");
        let loc = r.location().unwrap_or("");
        let bad = !loc.starts_with('/')
            || loc.starts_with("//")
            || loc.starts_with("/\\")
            || loc.contains("evil");
        assert!(!bad, "rd={p:?} sent the browser to {loc:?}");
    }
    eprintln!("{} open-redirect cases", payloads.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn path_and_host_confusion_cannot_reach_a_path_without_its_decision() {
    let (_echo, c, cookie) = setup().await;
    let targets = [
        "/x/../admin/users",
        "/x/%2e%2e/admin/users",
        "/x/%2E%2E/admin/users",
        "/x/.%2e/admin/users",
        "//admin/users",
        "///admin/users",
        "/./admin/users",
        "/x/..;/admin/users",
        "/admin;/users",
        "/ADMIN/users",
        "/Admin/users",
        "/x%2f..%2fadmin/users",
        "/%61dmin/users",
        "/admin%2fusers",
        "/admin%5cusers",
        "/x/..%2fadmin/users",
        "/x/..%5cadmin/users",
        "/admin%00/users",
        "/admin/",
        "/admin",
        "/admin?x=1",
        "/admin#frag",
        "/x/../../admin",
        "/.././admin",
        "/x/./../admin",
        "/admin/./users",
        "/admin/../admin/users",
        "/%2e%2e/admin",
        "/%252e%252e/admin",
        "http://127.0.0.1/admin/users",
        "http://evil.example/admin/users",
        "/admin/%2e%2e/x",
    ];
    let mut cases = 0;
    for t in targets {
        let req = format!(
            "GET {t} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: application/json\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n",
            c.port
        );
        let answer = raw(&c, req.as_bytes()).await;
        cases += 1;
        for seen in upstream_paths(&answer) {
            // What the app would make of the path it got. Paths are case-sensitive (RFC 3986, as
            // in Google IAP): `/ADMIN` is not `/admin`, and reaches the app as `/ADMIN`.
            let decoded =
                url::form_urlencoded::parse(format!("p={}", seen.replace('+', "%2B")).as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
            assert!(
                !decoded.starts_with("/admin")
                    && !decoded.contains("/admin/")
                    && !decoded.contains(".."),
                "{t:?} reached the app as {seen:?}: {answer}"
            );
        }
        // The admin app answered 403 (or the request was refused as ambiguous): never a 200 for Ada.
        if upstream_paths(&answer).is_empty() {
            assert!(
                statuses(&answer).iter().all(|s| *s != 200),
                "{t:?}: {answer}"
            );
        }
    }
    // Control: an ordinary path does reach the app, so the checks above can see a bypass.
    let req = format!(
        "GET /x/y HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: application/json\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n",
        c.port
    );
    assert_eq!(upstream_paths(&raw(&c, req.as_bytes()).await), vec!["/x/y"]);
    // Host confusion: a trailing dot, a port, upper case, a conflicting absolute-form authority.
    for host in [
        "127.0.0.1.",
        "127.0.0.1:1",
        "LOCALHOST",
        "evil.example",
        "127.0.0.1:99999",
        "",
    ] {
        let req = format!(
            "GET /admin/users HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        );
        let answer = raw(&c, req.as_bytes()).await;
        cases += 1;
        assert!(
            upstream_paths(&answer).is_empty(),
            "Host {host:?}: {answer}"
        );
    }
    eprintln!("{cases} path and host cases");
}

#[tokio::test(flavor = "multi_thread")]
async fn smuggling_attempts_are_refused_or_decided_one_by_one() {
    let (_echo, c, cookie) = setup().await;
    let h = format!(
        "Host: 127.0.0.1:{}\r\nAccept: application/json\r\nCookie: {cookie}",
        c.port
    );
    let cases = [
        // CL.TE and TE.CL: whatever the framing, a smuggled /admin request is decided on its own.
        format!(
            "POST /x HTTP/1.1\r\n{h}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/users HTTP/1.1\r\n{h}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "POST /x HTTP/1.1\r\n{h}\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\nGET /admin/users HTTP/1.1\r\n{h}\r\nConnection: close\r\n\r\n"
        ),
        format!("POST /x HTTP/1.1\r\n{h}\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello"),
        format!("POST /x HTTP/1.1\r\n{h}\r\nContent-Length: 5, 40\r\n\r\nhello"),
        format!(
            "POST /x HTTP/1.1\r\n{h}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
        ),
        format!(
            "POST /x HTTP/1.1\r\n{h}\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n"
        ),
        format!(
            "POST /x HTTP/1.1\r\n{h}\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n"
        ),
        format!(
            "POST /x HTTP/1.1\r\n{h}\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ),
        format!(
            "POST /x HTTP/1.1\r\n{h}\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ),
        format!("GET /x HTTP/1.1\r\n{h}\r\nX-Folded: a\r\n b\r\n\r\n"),
        format!("GET /x HTTP/1.1\r\n{h}\r\n X-Leading-Space: a\r\n\r\n"),
        format!("GET /x HTTP/1.1\r\n{h}\r\nX-Bad\x00Name: a\r\n\r\n"),
        format!("GET /x HTTP/1.1\n{h}\nConnection: close\n\n"),
        format!("GET /x HTTP/1.0\r\n{h}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        format!("GET /x HTTP/2.0\r\n{h}\r\n\r\n"),
        format!("G\x00ET /x HTTP/1.1\r\n{h}\r\n\r\n"),
    ];
    for (i, req) in cases.iter().enumerate() {
        let answer = raw(&c, req.as_bytes()).await;
        for seen in upstream_paths(&answer) {
            assert!(
                !seen.to_ascii_lowercase().contains("admin"),
                "case {i} reached {seen}: {answer}"
            );
        }
        // Whatever came back for /admin was castellan's own refusal.
        if answer.contains("/admin") {
            assert!(!statuses(&answer).is_empty());
        }
    }
    eprintln!("{} smuggling cases", cases.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_sessions_and_forged_tokens_get_nothing() {
    let (_echo, c, cookie) = setup().await;
    let id = cookie.trim_start_matches("castellan_session=").to_string();
    let header = |alg: &str, kid: &str| {
        URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"{kid}"}}"#))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"iss":"{}","aud":"castellan:demo","sub":"serviceAccount:root","client_id":"root","ckid":"x","iat":{now},"exp":{}}}"#,
        c.origin,
        now + 600
    ));
    let jwks: serde_json::Value = reqwest::get(c.url("/.castellan/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
    let hs256 = {
        use aws_lc_rs::hmac;
        let key = hmac::Key::new(hmac::HMAC_SHA256, jwks["keys"][0].to_string().as_bytes());
        let signing = format!("{}.{claims}", header("HS256", &kid));
        format!(
            "{signing}.{}",
            URL_SAFE_NO_PAD.encode(hmac::sign(&key, signing.as_bytes()))
        )
    };
    let mut flipped = id.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let cookies = [
        format!("castellan_session={}", String::from_utf8(flipped).unwrap()),
        format!("castellan_session={id}x"),
        format!("castellan_session={}", &id[..42]),
        "castellan_session=".to_string(),
        "castellan_session=../../etc/passwd".to_string(),
        format!("castellan_session={id}; castellan_session=garbage"),
        format!("castellan_session=garbage; castellan_session={id}"),
        format!("castellan_session=\"{id}\""),
        format!("Castellan_Session={id}"),
        format!("castellan_session={}", "A".repeat(4000)),
    ];
    for ck in &cookies {
        let mut b = Browser::new();
        let r = b
            .request(
                "GET",
                &c.url("/probe"),
                &[("accept", "application/json"), ("cookie", ck)],
                None,
            )
            .await;
        assert_eq!(r.status, 401, "cookie {ck:.60}: {}", r.body);
    }
    let tokens = [
        format!("{}.{claims}.", header("none", &kid)),
        format!("{}.{claims}.", header("None", &kid)),
        hs256,
        format!("{}.{claims}.AAAA", header("ES256", &kid)),
        format!(
            "{}.{claims}.AAAA",
            header("ES256", "../../../../etc/passwd")
        ),
        format!("{}.{claims}.AAAA", header("ES256", "' OR '1'='1")),
        format!("{}.{claims}.AAAA", header("RS256", &kid)),
        "not.a.jwt".to_string(),
        "....".to_string(),
        "x".repeat(20_000),
    ];
    for t in &tokens {
        for carrier in ["authorization", "proxy-authorization"] {
            let mut b = Browser::new();
            let r = b
                .request(
                    "GET",
                    &c.url("/probe"),
                    &[
                        ("accept", "application/json"),
                        (carrier, &format!("Bearer {t}")),
                    ],
                    None,
                )
                .await;
            assert_eq!(r.status, 401, "{carrier} {t:.60}: {}", r.body);
            assert!(
                !r.body.contains("\"method\""),
                "reached the app: {}",
                r.body
            );
        }
    }
    // A session replayed after sign-out, and a session fixed by an attacker before sign-in.
    let mut b = Browser::new();
    b.set_cookie(
        &c.origin,
        "castellan_session",
        "fixedfixedfixedfixedfixedfixedfixedfixedfix",
    );
    assert_eq!(
        b.sign_in_local(&c, "ada@example.com", PW, "/").await.status,
        302
    );
    let fresh = b.cookie(&c.origin, "castellan_session").unwrap().clone();
    assert_ne!(
        fresh, "fixedfixedfixedfixedfixedfixedfixedfixedfix",
        "sign-in must not keep a planted id"
    );
    let form = b.get(&c.console("/.castellan/sign_out")).await;
    let csrf = form.input("csrf").unwrap();
    // Sign-out without the CSRF token (a cross-site form) does nothing.
    let forged = b
        .request(
            "POST",
            &c.console("/.castellan/sign_out"),
            &[("origin", "https://evil.example")],
            Some(&[("csrf", &csrf)]),
        )
        .await;
    assert_ne!(forged.status, 200, "{}", forged.body);
    assert_eq!(
        b.request(
            "GET",
            &c.url("/probe"),
            &[("accept", "application/json")],
            None
        )
        .await
        .status,
        200
    );
    b.request(
        "POST",
        &c.console("/.castellan/sign_out"),
        &[],
        Some(&[("csrf", &csrf)]),
    )
    .await;
    let mut replay = Browser::new();
    replay.set_cookie(&c.origin, "castellan_session", &fresh);
    assert_eq!(
        replay
            .request(
                "GET",
                &c.url("/probe"),
                &[("accept", "application/json")],
                None
            )
            .await
            .status,
        401
    );
    eprintln!(
        "{} session and token cases",
        cookies.len() + 2 * tokens.len() + 3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn websockets_need_a_session_and_our_origin_and_huge_requests_are_refused() {
    let (_echo, c, cookie) = setup().await;
    let ws = |cookie: &str, origin: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: {cookie}\r\n{origin}\r\n",
            c.port
        )
    };
    for (cookie, origin, want) in [
        ("", "", 401),
        ("castellan_session=garbage", "", 401),
        (cookie.as_str(), "Origin: https://evil.example\r\n", 403),
        (cookie.as_str(), "Origin: null\r\n", 403),
        (
            cookie.as_str(),
            "Origin: http://127.0.0.1.evil.example\r\n",
            403,
        ),
    ] {
        let answer = raw(&c, ws(cookie, origin).as_bytes()).await;
        assert_eq!(
            statuses(&answer).first(),
            Some(&want),
            "{origin:?}: {answer}"
        );
        assert!(!answer.contains("101 Switching"), "{answer}");
    }
    // Oversized headers and cookies: refused before anything is decided or proxied. The limit is
    // 64 KiB for the request line and headers together, exactly: just over it is refused too.
    for (name, size) in [
        ("X-Big", 70_000),
        ("X-Just-Over", 65_536),
        ("Cookie", 70_000),
        ("X-Many", 0),
    ] {
        let headers = if size > 0 {
            format!("{name}: {}\r\n", "a".repeat(size))
        } else {
            (0..2000).map(|i| format!("X-H{i}: v\r\n")).collect()
        };
        let req = format!(
            "GET /probe HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{headers}Connection: close\r\n\r\n",
            c.port
        );
        let answer = raw(&c, req.as_bytes()).await;
        assert!(upstream_paths(&answer).is_empty(), "{name}: proxied");
        let s = statuses(&answer);
        assert!(
            s.is_empty() || s.iter().all(|s| *s == 431 || *s == 400),
            "{name}: {s:?}"
        );
    }
    // The control: just under the limit, the request is decided as any other (no session: 401).
    let req = format!(
        "GET /probe HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nX-Just-Under: {}\r\nConnection: close\r\n\r\n",
        c.port,
        "a".repeat(60_000)
    );
    let answer = raw(&c, req.as_bytes()).await;
    assert_eq!(statuses(&answer), vec![401], "just under the limit");
}
