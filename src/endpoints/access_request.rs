//! Access requests, on castellan's own host: the access-denied page (on the app's host) links
//! here; the person adds a reason and sends it. Each person has at most one pending request per
//! app (asking again updates it); admins see it in the console and, with
//! `access_request_webhook`, get a Slack-compatible JSON POST.

use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::{browser_id, safe_return, with_cookie};
use crate::runtime::State;
use crate::web::ctx::{Ctx, Outcome, Why};
use crate::web::failure::{Answer, Failure};
use crate::web::guard::{self, Proof};
use crate::web::{self, pages};

/// `GET /.castellan/request_access?app=ID&rd=URL`: the form.
pub async fn page(state: &State, ctx: &mut Ctx, req: &Request<Incoming>) -> Answer {
    let params = web::query_pairs(req.uri());
    let who = signed_in(state, ctx, req.headers(), req.uri()).await?;
    let app = web::param(&params, "app")
        .and_then(|a| state.config.app(a))
        .ok_or_else(|| Failure::not_found("There is no such app."))?;
    ctx.app = app.id.clone();
    let _ = who;
    let return_to = safe_return(state, web::param(&params, "rd"));
    let (browser, set_browser) = browser_id(state, req.headers());
    Ok(with_cookie(
        web::html(
            StatusCode::OK,
            pages::request_access(&app.id, &state.csrf_token(&browser), &return_to),
        ),
        set_browser,
    ))
}

/// `POST /.castellan/request_access`.
pub async fn post(state: &State, ctx: &mut Ctx, req: Request<Incoming>) -> Answer {
    let (parts, body) = req.into_parts();
    let form = web::read_form(body).await.unwrap_or_default();
    guard::check(
        &parts.headers,
        &state.config.public_origin(),
        web::cookies::cookie(&parts.headers, state.cookies.browser),
        &state.csrf_keys(),
        Proof::Token(web::param(&form, "csrf").unwrap_or("")),
    )
    .map_err(|f| f.titled("Request not sent"))?;
    let who = signed_in(state, ctx, &parts.headers, &parts.uri).await?;
    let app = web::param(&form, "app")
        .and_then(|a| state.config.app(a))
        .ok_or_else(|| Failure::not_found("There is no such app."))?;
    let reason: String = web::param(&form, "reason")
        .unwrap_or("")
        .trim()
        .chars()
        .take(500)
        .collect();
    let return_to = safe_return(state, web::param(&form, "rd"));
    let (request, new) = state
        .store
        .request_access(&app.id, &who, &reason, &crate::net::ip_text(ctx.client_ip))
        .await
        .map_err(|e| Failure::internal("saving the access request", &e))?;
    ctx.app = app.id.clone();
    ctx.mark(Outcome::AccessRequested, Why::None);
    if new && let Some(hook) = state.config.access_request_webhook.clone() {
        let http = state.http.clone();
        let console = format!("{}/.castellan/admin/requests", state.config.public_origin());
        tokio::spawn(notify(http, hook, request, console));
    }
    Ok(web::html(
        StatusCode::OK,
        pages::request_sent(&app.id, new, &return_to),
    ))
}

/// The signed-in person's email, or a sign-in first.
async fn signed_in(
    state: &State,
    ctx: &mut Ctx,
    headers: &http::HeaderMap,
    uri: &http::Uri,
) -> Result<String, Failure> {
    let session = state
        .session(headers)
        .await
        .map_err(|e| Failure::internal("reading the session", &e))?;
    match session {
        Some(s) => {
            ctx.set_user(&s.identity.email);
            Ok(s.identity.email.clone())
        }
        None => {
            let here = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            Err(Failure::sign_in(
                format!("/.castellan/sign_in?rd={}", pages::q(here)),
                None,
            ))
        }
    }
}

/// Tells admins about a new request: a JSON POST whose `text` field Slack (and compatible chat
/// webhooks) show as the message, with the details as fields beside it.
async fn notify(
    http: reqwest::Client,
    url: url::Url,
    r: crate::store::AccessRequest,
    console: String,
) {
    let body = serde_json::json!({
        "text": message(&r, &console),
        "app": r.app,
        "email": r.email,
        "reason": r.reason,
        "request_id": r.id,
        "console_url": console,
    });
    match http.post(url.as_str()).json(&body).send().await {
        Ok(resp) if resp.status().is_success() => {
            tracing::info!(request = r.id, "access request webhook delivered")
        }
        Ok(resp) => {
            tracing::warn!(request = r.id, status = %resp.status(), "the access request webhook refused the notification")
        }
        Err(e) => tracing::warn!(request = r.id, "the access request webhook failed: {e}"),
    }
}

/// The chat message. Slack reads `<…>` as links and mentions (`<!channel>`) and `&` as the start
/// of an entity, so the requester's words are escaped as its documentation says (`&`, `<`, `>`).
fn message(r: &crate::store::AccessRequest, console: &str) -> String {
    let slack = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    format!(
        "{} asks for access to {}{}. Review: {console}",
        slack(&r.email),
        slack(&r.app),
        if r.reason.is_empty() {
            String::new()
        } else {
            format!(" (\"{}\")", slack(&r.reason))
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requester_text_cannot_ping_a_channel_or_make_links() {
        let r = crate::store::AccessRequest {
            id: 1,
            app: "reports".into(),
            email: "eve@example.com".into(),
            reason: "<!channel> see <https://evil.example|the board> & more".into(),
            status: "pending".into(),
            created_at: 0,
            updated_at: 0,
            decided_by: String::new(),
            expires_at: None,
        };
        let text = message(&r, "https://auth.example.com/.castellan/admin/requests");
        assert!(
            !text.contains("<!channel>") && !text.contains("<https://evil"),
            "{text}"
        );
        assert!(
            text.contains("&lt;!channel&gt; see &lt;https://evil.example|the board&gt; &amp; more")
        );
    }
}
