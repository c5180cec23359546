//! The built-in "whoami" app: shows the identity castellan sends upstream. Used by `castellan demo`.

use std::convert::Infallible;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use castellan::gate::identity::{ASSERTION_HEADER, EMAIL_HEADER, USER_HEADER};
use castellan::web::pages::{esc, page};
use castellan::web::{self, Body};

/// Serves the whoami app on `listener` until the process ends.
pub async fn serve_whoami(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                Ok::<_, Infallible>(whoami(&req))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The claims of a JWT, decoded but NOT verified (the page says so; apps must verify against JWKS).
fn claims(jwt: &str) -> Option<serde_json::Value> {
    let payload = jwt.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

fn whoami(req: &Request<Incoming>) -> Response<Body> {
    let get = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let email = get(EMAIL_HEADER);
    let user = get(USER_HEADER);
    let assertion = get(ASSERTION_HEADER);
    let decoded = claims(assertion).unwrap_or(serde_json::Value::Null);
    let wants_json = get("accept").contains("application/json");
    let mut resp = if wants_json {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
                )
            })
            .collect();
        Response::new(web::full(
            serde_json::json!({ "email": email, "user": user, "assertion_claims": decoded, "path": req.uri().to_string(), "headers": headers })
                .to_string(),
        ))
    } else {
        let rows: String = req
            .headers()
            .iter()
            .filter(|(k, _)| k.as_str() != ASSERTION_HEADER)
            .map(|(k, v)| {
                format!(
                    "<tr><td><code>{}</code></td><td><code>{}</code></td></tr>",
                    esc(k.as_str()),
                    esc(&String::from_utf8_lossy(v.as_bytes()))
                )
            })
            .collect();
        let body = format!(
            "<h1>Hello, {}</h1><p>This is castellan's built-in <b>whoami</b> app. castellan let you in and told it who you are:</p>\
             <p><b>X-Castellan-Email</b>: <code>{}</code><br><b>X-Castellan-User</b>: <code>{}</code></p>\
             <p><b>X-Castellan-Jwt-Assertion</b> claims (shown decoded; apps verify the signature against <a href=\"/.castellan/jwks.json\">/.castellan/jwks.json</a>):</p>\
             <pre style=\"white-space:pre-wrap;background:#eef0f5;padding:.6rem;border-radius:6px\">{}</pre>\
             <details><summary>All request headers</summary><table>{rows}</table></details>\
             <p><a href=\"/.castellan/whoami\">/.castellan/whoami</a> · <a href=\"/.castellan/account\">Your account and sessions</a> · <a href=\"/.castellan/sign_out\">Sign out</a></p>",
            esc(email),
            esc(email),
            esc(user),
            esc(&serde_json::to_string_pretty(&decoded).unwrap_or_default()),
        );
        let mut r = Response::new(web::full(page("whoami", &body)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r
    };
    if wants_json {
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    resp
}
