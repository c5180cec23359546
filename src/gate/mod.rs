//! The gate: the one decision chain every front door goes through, whatever the credential.
//!
//! ```text
//! credential (cookie or bearer token)  →  checks (expiry, re-authentication, step-up)  →  decision
//!   →  live registration (what ends the connection if it outlives its request)  →  identity headers
//!   (and the person's provider tokens, for an app that asks for them)
//! ```
//!
//! [`admit`] is that chain, written once. The proxy ([`app`]) and the tunnels ([`tunnel`]) call it
//! through [`admit_request`], which reads the [`Ask`] off the request; forward-auth
//! (`endpoints::forward_auth`) builds its own from the ingress's headers. None of them decides
//! anything itself, so a new credential kind or front door cannot skip a step. The rest of
//! this folder is the proxied path: forwarding ([`proxy`]), tunnels to TCP apps ([`tunnel`]) and path
//! normalisation ([`path`]).
//!
//! The gate never sees castellan's own endpoints or the admin pages: only `server` routes between
//! them.
//!
//! May use: runtime, web, identity, store, policy, config and the leaves.

pub mod app;
pub mod credential;
pub mod identity;
pub mod path;
pub mod proxy;
pub mod splice;
pub mod tunnel;

use http::HeaderMap;
use http::header;

use crate::config::App;
use crate::policy::access_level;
use crate::policy::condition::Context;
use crate::policy::{Decision, Principal, Reason, Who};
use crate::runtime::State;
use crate::runtime::live::{Grounds, Pending};
use crate::runtime::provider_tokens::Served;
use crate::trace::{Kind, Open};
use crate::web::ctx::{Ctx, Outcome, Why};
use crate::web::failure::Failure;
use crate::web::{HeaderList, pages};
use credential::Credential;

/// What a front door asks the gate about: one request to one app.
pub struct Ask<'a> {
    pub app: &'a App,
    /// The method, upper case.
    pub method: &'a str,
    /// The request's origin as the browser sees it, `scheme://host[:port]`: where to come back to
    /// after signing in, and what a WebSocket's `Origin` must be.
    pub origin: &'a str,
    /// The host, lower case, without port.
    pub host: &'a str,
    /// The normalised path the decision is made on.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The request's headers: its credentials, `Origin` and `Upgrade`.
    pub headers: &'a HeaderMap,
}

impl Ask<'_> {
    /// The path and query to come back to.
    fn return_path(&self) -> String {
        match self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.to_string(),
        }
    }
}

/// A request the gate let through.
pub struct Admitted {
    pub credential: Credential,
    pub principal: Option<Principal>,
    /// The identity headers for the app.
    pub headers: HeaderList,
    /// What to register if the answer outlives the request (None for anonymous callers of a
    /// public app: nothing to revoke).
    pub live: Option<Pending>,
}

/// Runs the whole chain for `ask`, recording what it decided in `ctx`.
pub async fn admit(state: &State, ctx: &mut Ctx, ask: &Ask<'_>) -> Result<Admitted, Failure> {
    ctx.app = ask.app.id.clone();
    ctx.audited = true;
    if !state.store_usable() {
        return Err(Failure::store_unavailable());
    }
    let authenticate = ctx.span("authenticate", Kind::Internal);
    let credential = credential::read(state, ask.headers, ask.app).await?;
    ctx.span_set(authenticate, "castellan.credential", credential.kind());
    if credential.carrier().is_some() {
        // A script with a token: answered with JSON, never redirected.
        ctx.navigation = false;
    }
    let principal = credential.principal();
    if let Some(p) = &principal {
        ctx.set_principal(p);
    }
    let now = crate::clock::now();
    // The app wants a recent sign-in: an older one (of any credential a person holds) is repeated
    // first.
    if let Some(max) = ask.app.reauth_max_age
        && credential.is_person()
        && credential
            .auth_time()
            .is_none_or(|t| now - t > max.as_secs() as i64)
    {
        return Err(sign_in(ask, Some(max.as_secs())));
    }
    // The app wants a stronger sign-in (its step-up): one that lacks it is taken through it first.
    if let Some(Principal::Person(who)) = &principal
        && let Some(short) = ask.app.step_up.shortfall(who)
    {
        return Err(Failure::step_up(
            sign_in_url(ask, None),
            &ask.app.id,
            &ask.app.step_up,
            short,
        ));
    }
    ctx.span_end(authenticate, None);
    let authorize = ctx.span("authorize", Kind::Internal);
    let snapshot = state.snapshot();
    // The configured access levels this request meets (none configured: nothing to do).
    let levels = access_level::met(
        &state.config.access_levels,
        &access_level::Seen {
            ip: Some(ctx.client_ip),
            client_certificate: ctx.client_cert.is_some(),
            time: now,
        },
    );
    let cx = Context {
        path: ask.path,
        host: ask.host,
        method: ask.method,
        time: now,
        ip: Some(ctx.client_ip),
        destination: ask.app.destination(),
        auth: principal
            .as_ref()
            .map(|p| p.auth(p.castellan_groups(&snapshot))),
        access_levels: &levels,
    };
    let who = principal.as_ref().map_or(Who::Anonymous, Principal::who);
    let decision = snapshot.decide(&ask.app.id, ask.app.role(), who, &cx);
    if ctx.trace.is_some() {
        trace_decision(ctx, authorize, &decision);
    }
    let grant = match decision {
        Decision::Allow(grant) => grant,
        Decision::SignIn => return Err(sign_in(ask, None)),
        Decision::Deny(reason) => {
            let name = principal.as_ref().map(Principal::name).unwrap_or_default();
            let hint = certificate_hint(state, ctx, ask.app, who, &cx);
            let failure = match credential {
                Credential::Token { .. } => Failure::insufficient_scope(&name, &ask.app.id, reason),
                // Boxed, as every path off the allowed request's way (see `routes::route`).
                _ => Box::pin(denied(state, ctx, ask, &name, reason, hint.as_deref())).await,
            };
            return Err(match hint {
                Some(h) => failure.with("hint", serde_json::json!(h)),
                None => failure,
            });
        }
    };
    if !same_origin_upgrade(ask) {
        return Err(Failure::forbidden(
            "cross_origin_websocket",
            Why::CrossOriginWebsocket,
            "a WebSocket from another origin is refused (cross-site WebSocket hijacking)",
        ));
    }
    ctx.mark(Outcome::Allow, Why::Policy(grant.reason()));
    ctx.binding = Some(grant.label().clone());
    let mut headers = match &principal {
        Some(p) => identity::headers(state, ask.app, p)?,
        None => Vec::new(),
    };
    // The person's own provider tokens, for an app that asks for them.
    if ask.app.provider_tokens.wanted()
        && let Credential::Session(session) = &credential
    {
        match Box::pin(state.provider_tokens_for(ask.app, session)).await? {
            Served::Tokens {
                access_token,
                id_token,
            } => headers.extend(provider_token_headers(ask.app, access_token, id_token)),
            Served::Nothing => {}
            Served::SignIn => {
                return Err(Failure::provider_tokens_required(
                    sign_in_url(ask, None),
                    &ask.app.id,
                ));
            }
        }
    }
    let live = principal.as_ref().map(|p| Pending {
        registry: state.live.clone(),
        grounds: Grounds {
            app: ask.app.id.clone(),
            role: ask.app.role(),
            principal: p.clone(),
            revocation: credential.revocation(),
            host: ask.host.to_string(),
            path: ask.path.to_string(),
            method: ask.method.to_string(),
            ip: Some(ctx.client_ip),
            client_certificate: ctx.client_cert.is_some(),
        },
    });
    Ok(Admitted {
        credential,
        principal,
        headers,
        live,
    })
}

/// The authorize span: what was decided, and by which binding or for what reason.
fn trace_decision(ctx: &mut Ctx, span: Option<Open>, decision: &Decision) {
    match decision {
        Decision::Allow(grant) => {
            ctx.span_set(span, "castellan.decision", "allow");
            ctx.span_set(span, "castellan.binding", &**grant.label());
        }
        Decision::SignIn => ctx.span_set(span, "castellan.decision", "sign-in"),
        Decision::Deny(reason) => {
            ctx.span_set(span, "castellan.decision", "deny");
            ctx.span_set(span, "castellan.reason", reason.as_str());
        }
    }
    ctx.span_end(span, None);
}

/// The headers that carry the person's provider tokens to `app`: the token as it is, or
/// `Bearer TOKEN` in `Authorization`. A token that cannot be a header value is left out.
fn provider_token_headers(
    app: &App,
    access_token: Option<String>,
    id_token: Option<String>,
) -> HeaderList {
    let wanted = &app.provider_tokens;
    [
        (wanted.access_token_header.as_ref(), access_token),
        (wanted.id_token_header.as_ref(), id_token),
    ]
    .into_iter()
    .filter_map(|(name, token)| {
        let (name, token) = (name?, token?);
        let value = if name == header::AUTHORIZATION {
            format!("Bearer {token}")
        } else {
            token
        };
        let mut value = http::HeaderValue::from_str(&value).ok()?;
        // A credential: never shown in debug output, never indexed by HPACK.
        value.set_sensitive(true);
        Some((name.clone(), value))
    })
    .collect()
}

/// [`admit`] for a request that came straight to castellan (the proxy's and the tunnel's front
/// doors): the [`Ask`] is the request's own method, origin, query and headers. Returns the
/// request's origin with the answer.
pub async fn admit_request<B>(
    state: &State,
    ctx: &mut Ctx,
    req: &http::Request<B>,
    app: &App,
    host: &str,
    path: &str,
) -> Result<(Admitted, String), Failure> {
    let origin = request_origin(state.config.public_url.scheme(), req.uri(), req.headers());
    let ask = Ask {
        app,
        method: req.method().as_str(),
        origin: &origin,
        host,
        path,
        query: req.uri().query(),
        headers: req.headers(),
    };
    let admitted = admit(state, ctx, &ask).await?;
    Ok((admitted, origin))
}

/// Nobody (recent enough) is signed in: to the sign-in page of the app's own host, which binds
/// the sign-in to this browser and sends it on to castellan's pages.
fn sign_in(ask: &Ask<'_>, max_age: Option<u64>) -> Failure {
    Failure::sign_in(sign_in_url(ask, max_age), max_age)
}

/// Where that sign-in starts. An app with a step-up or provider scopes is named (`app=ID`), so
/// that the sign-in asks for what the app needs the first time.
fn sign_in_url(ask: &Ask<'_>, max_age: Option<u64>) -> String {
    let mut url = format!(
        "{}/.castellan/sign_in?rd={}",
        ask.origin,
        pages::q(&ask.return_path())
    );
    if let Some(m) = max_age {
        url.push_str(&format!("&max_age={m}"));
    }
    if ask.app.asks_at_sign_in() {
        url.push_str(&format!("&app={}", pages::q(&ask.app.id)));
    }
    url
}

/// The access-denied answer: for browsers a page with the way to ask for access (on castellan's
/// own pages) and the state of an earlier request.
async fn denied(
    state: &State,
    ctx: &mut Ctx,
    ask: &Ask<'_>,
    who: &str,
    reason: Reason,
    hint: Option<&str>,
) -> Failure {
    let failure = Failure::denied(who, &ask.app.id, reason);
    if !ctx.navigation {
        return failure;
    }
    let back = format!("{}{}", ask.origin, ask.return_path());
    let console = state.config.public_origin();
    // The page still says "denied" without the request's state if the store is down.
    let latest = Box::pin(state.store.latest_request(&ask.app.id, who))
        .await
        .unwrap_or_else(|e| {
            tracing::warn!("reading access requests for the denied page: {e}");
            None
        });
    let page = pages::denied(&pages::Denied {
        email: who,
        app: &ask.app.id,
        reference: &ctx.reference(),
        switch_href: format!(
            "{console}/.castellan/sign_in?switch=1&rd={}",
            pages::q(&back)
        ),
        request_href: format!(
            "{console}/.castellan/request_access?app={}&rd={}",
            pages::q(&ask.app.id),
            pages::q(&back)
        ),
        hint,
        request: latest.as_ref().map(|r| {
            (
                r.status.as_str(),
                pages::when(r.updated_at),
                r.decided_by.as_str(),
            )
        }),
    });
    failure.with_page(page)
}

/// For a request without a client certificate, refused by a binding that names the person and
/// whose condition names an access level that needs one: what the person can do about it.
fn certificate_hint(
    state: &State,
    ctx: &Ctx,
    app: &App,
    who: Who<'_>,
    cx: &Context<'_>,
) -> Option<String> {
    let levels = &state.config.access_levels;
    if ctx.client_cert.is_some() || !levels.iter().any(|l| l.client_certificate) {
        return None;
    }
    let explanation = state.snapshot().explain(&app.id, app.role(), who, cx);
    let level = explanation
        .bindings
        .iter()
        .filter(|b| !b.matched.is_empty())
        .filter_map(|b| b.condition.as_ref())
        .filter(|(_, _, held)| !held)
        .filter_map(|(_, expression, _)| crate::policy::Condition::compile(expression).ok())
        .find_map(|c| {
            c.access_levels_named()
                .into_iter()
                .find(|n| levels.iter().any(|l| l.client_certificate && l.name == *n))
                .map(str::to_string)
        })?;
    Some(format!(
        "{} asks for a device certificate (access level {level}), and this browser presented none. Install the certificate your organisation issued for this device, restart the browser, and open the app again.",
        app.id
    ))
}

/// False for a WebSocket (or other upgrade) whose `Origin` is not the origin it connects to: a
/// page on another site must not ride the person's session into the app (cross-site WebSocket
/// hijacking). A request without `Origin` is not from a browser page and passes.
fn same_origin_upgrade(ask: &Ask<'_>) -> bool {
    if !ask.headers.contains_key(header::UPGRADE) {
        return true;
    }
    let Some(origin) = ask.headers.get(header::ORIGIN) else {
        return true;
    };
    let normal = |o: &str| {
        url::Url::parse(o)
            .ok()
            .map(|u| u.origin().ascii_serialization())
    };
    match (origin.to_str().ok().and_then(normal), normal(ask.origin)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The request's origin as the browser sees it: `scheme://` + the `Host` it sent (with its port).
pub fn request_origin(scheme: &str, uri: &http::Uri, headers: &HeaderMap) -> String {
    let authority = uri
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or_default();
    let mut origin = String::with_capacity(scheme.len() + 3 + authority.len());
    origin.push_str(scheme);
    origin.push_str("://");
    origin.push_str(authority);
    origin[scheme.len() + 3..].make_ascii_lowercase();
    origin
}

#[cfg(test)]
mod tests;
