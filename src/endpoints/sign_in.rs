//! Signing in, on castellan's own host: the chooser, OpenID Connect (the redirect and the
//! callback), and making the session; a local account's password is [`super::password`], its
//! second step [`super::second_factor`]. A sign-in for an app with a step-up asks for what that
//! app needs ([`super::step_up`]). A sign-in that began on an app's host comes back there through
//! a hand-off bound to that browser ([`bounce`], [`continue_to`], [`super::handoff`]).

use http::header::{self, HeaderValue};
use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::{FLOW_LIFETIME, browser_id, safe_return, step_up, with_cookie};
use crate::config::App;
use crate::crypto;
use crate::identity::oidc;
use crate::policy::Identity;
use crate::runtime::State;
use crate::store::{Actor, Flow};
use crate::web::ctx::{Ctx, Outcome, Why};
use crate::web::failure::{Answer, Failure};
use crate::web::pages::{self, ProviderChoice};
use crate::web::{self};

/// How long the hand-off cookie waits on an app's host for its sign-in to come back.
const HANDOFF_COOKIE_SECS: u64 = 600;

/// `GET /.castellan/sign_in` on castellan's own host: the chooser, or straight to the only
/// provider; with `provider=ID`, off to that provider.
pub async fn page(state: &State, ctx: &mut Ctx, req: &Request<Incoming>) -> Answer {
    let params = web::query_pairs(req.uri());
    let return_to = safe_return(state, web::param(&params, "rd"));
    let switching = web::param(&params, "switch") == Some("1");
    // An app asks for a fresh sign-in (its reauth_max_age): OIDC max_age, checked on return.
    let max_age = web::param(&params, "max_age")
        .and_then(|m| m.parse::<i64>().ok())
        .filter(|m| *m >= 0);
    // An app with a step-up (its require_* keys) this sign-in is for.
    let step_up = step_up::wanted(state, web::param(&params, "app"));
    let (browser, set_browser) = browser_id(state, req.headers());
    if !switching {
        let session = state
            .session(req.headers())
            .await
            .map_err(|e| Failure::internal("reading the session", &e))?;
        if let Some(s) = session {
            let lacking = match step_up {
                Some(app) if step_up::session_lacks(state, app, &s).await? => Some(app),
                _ => None,
            };
            match lacking {
                // Already signed in (as the app needs) and on the way to another host castellan
                // serves: hand over at once.
                None if !return_to.starts_with('/') && max_age.is_none() => {
                    return continue_to(state, ctx, &s.digest, &return_to).await;
                }
                // A local account without what the app needs: set it up first.
                Some(app) if s.identity.provider == "local" => {
                    if let Some(url) =
                        step_up::enrolment(state, &s.identity.email, app, &return_to).await?
                    {
                        return Ok(web::redirect(&url));
                    }
                }
                _ => {}
            }
        }
    }
    let start = Start {
        return_to: &return_to,
        switching,
        max_age,
        step_up,
        fresh: false,
    };
    if let Some(id) = web::param(&params, "provider") {
        let client = state.provider(id).ok_or_else(|| {
            Failure::not_found(format!(
                "castellan has no sign-in provider called \"{id}\"."
            ))
        })?;
        let resp = start_flow(state, client, &browser, &start).await?;
        return Ok(with_cookie(resp, set_browser));
    }
    // Exactly one way to sign in, and the person is not asking to switch accounts: go straight there.
    let local = state.config.local_accounts && step_up.is_none_or(step_up::local_accounts_can);
    if !local && state.providers.len() == 1 && !switching {
        let resp = start_flow(state, &state.providers[0], &browser, &start).await?;
        return Ok(with_cookie(resp, set_browser));
    }
    let html = render(state, &browser, &start, None);
    Ok(with_cookie(
        allow_passkeys(state, web::html(StatusCode::OK, html)),
        set_browser,
    ))
}

/// `GET /.castellan/sign_in` on an app's host: remembers this browser in a hand-off cookie on
/// this host and sends it to castellan's own sign-in page, which hands the session back to this
/// browser only (a hand-off code minted for another browser is refused: no login CSRF).
pub async fn bounce(state: &State, ctx: &mut Ctx, req: &Request<Incoming>, host: &str) -> Answer {
    if !state.config.serves_host(host) {
        return Err(Failure::not_found(format!(
            "castellan serves no app on {host}, so it does not sign people in for it. Open {} instead, or give the app host = \"{host}\".",
            state.config.public_origin()
        )));
    }
    let params = web::query_pairs(req.uri());
    let origin =
        crate::gate::request_origin(state.config.public_url.scheme(), req.uri(), req.headers());
    let here = url::Url::parse(&origin).map_err(|_| {
        Failure::bad_request("bad_host", Why::None, "the request's Host is not valid")
    })?;
    let rd = web::param(&params, "rd")
        .and_then(|r| crate::web::return_to::validate(r, &here))
        .unwrap_or_else(|| "/".into());
    let nonce = crypto::random_token(32);
    let mut back = format!(
        "{origin}/.castellan/handoff?hb={}&rd={}",
        crypto::digest(&nonce),
        pages::q(&rd)
    );
    let mut sign_in = String::new();
    for key in ["max_age", "switch"] {
        if let Some(v) = web::param(&params, key).filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
        {
            sign_in.push_str(&format!("&{key}={v}"));
        }
    }
    if let Some(app) = step_up::wanted(state, web::param(&params, "app")) {
        sign_in.push_str(&format!("&app={}", pages::q(&app.id)));
    }
    back = format!(
        "{}/.castellan/sign_in?rd={}{sign_in}",
        state.config.public_origin(),
        pages::q(&back)
    );
    ctx.mark(Outcome::SignIn, Why::None);
    let mut resp = web::redirect(&back);
    resp.headers_mut().append(
        header::SET_COOKIE,
        state
            .cookies
            .set(state.cookies.handoff, &nonce, Some(HANDOFF_COOKIE_SECS)),
    );
    Ok(resp)
}

/// Lets a sign-in or account page run castellan's passkey script (that file only) and call
/// castellan's JSON endpoints; everything else stays as strict as every castellan page.
pub fn allow_passkeys(
    state: &State,
    mut resp: http::Response<web::Body>,
) -> http::Response<web::Body> {
    if let Some(v) = passkey_csp(state) {
        resp.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}

/// The `Content-Security-Policy` of a page that runs the passkey script (None without local
/// accounts: such a page has no passkeys to offer).
pub fn passkey_csp(state: &State) -> Option<HeaderValue> {
    if !state.config.local_accounts {
        return None;
    }
    let csp = format!(
        "default-src 'none'; script-src {}{}; connect-src 'self'; style-src 'unsafe-inline'; \
         form-action 'self' https: http:; frame-ancestors 'none'; base-uri 'none'",
        state.config.public_origin(),
        pages::PASSKEY_SCRIPT_PATH
    );
    HeaderValue::from_str(&csp).ok()
}

/// The chooser (providers, then the local-account form), with an optional error.
pub fn render(state: &State, browser: &str, start: &Start<'_>, message: Option<&str>) -> String {
    let app = start.step_up.map(|a| &*a.id);
    let providers = state
        .providers
        .iter()
        .map(|p| ProviderChoice {
            display_name: &p.config.display_name,
            href: format!(
                "/.castellan/sign_in?provider={}&rd={}{}{}{}",
                pages::q(&p.config.id),
                pages::q(start.return_to),
                if start.switching { "&switch=1" } else { "" },
                start
                    .max_age
                    .map(|m| format!("&max_age={m}"))
                    .unwrap_or_default(),
                app.map(|a| format!("&app={}", pages::q(a)))
                    .unwrap_or_default()
            ),
        })
        .collect();
    let local =
        state.config.local_accounts && start.step_up.is_none_or(step_up::local_accounts_can);
    pages::sign_in(&pages::SignIn {
        providers,
        local: local.then(|| (state.csrf_token(browser), "")),
        return_to: start.return_to,
        app,
        notice: start.step_up.and_then(step_up::notice),
        error: message,
    })
}

/// The sign-in page again with `message`, as the answer of a failed attempt.
pub fn again(
    state: &State,
    headers: &http::HeaderMap,
    start: &Start<'_>,
    failure: Failure,
    message: &str,
) -> Failure {
    let (browser, set_browser) = browser_id(state, headers);
    // The form again, with its passkey button working.
    let failure = failure
        .with_page(render(state, &browser, start, Some(message)))
        .with_csp(passkey_csp(state));
    match set_browser {
        Some(c) => failure.with_cookie(c),
        None => failure,
    }
}

/// Where a sign-in goes and what it asks for.
pub struct Start<'a> {
    pub return_to: &'a str,
    /// The person asks to sign in as someone else.
    pub switching: bool,
    /// An app's `reauth_max_age`: the sign-in must be this recent.
    pub max_age: Option<i64>,
    /// The app whose step-up the sign-in must meet.
    pub step_up: Option<&'a App>,
    /// Ask the provider for a fresh authentication (`prompt=login`).
    pub fresh: bool,
}

async fn start_flow(
    state: &State,
    client: &oidc::Client,
    browser: &str,
    start: &Start<'_>,
) -> Answer {
    let st = crypto::random_token(32);
    let flow = Flow {
        browser_digest: crypto::digest(browser),
        provider: client.config.id.clone(),
        nonce: crypto::random_token(32),
        pkce_verifier: crypto::random_token(48),
        return_to: start.return_to.to_string(),
        created_at: crate::clock::now(),
        max_age: start.max_age.unwrap_or(0),
        step_up_app: start.step_up.map(|a| a.id.to_string()).unwrap_or_default(),
        step_up_forced: start.fresh,
    };
    let acr_values = start.step_up.and_then(|a| a.step_up.acr_values());
    let asking = oidc::Asking {
        select_account: start.switching,
        fresh: start.fresh,
        max_age: start.max_age,
        acr_values: acr_values.as_deref(),
        extra_scopes: start
            .step_up
            .map(|a| a.provider_tokens.scopes.as_slice())
            .unwrap_or_default(),
    };
    let url = client
        .authorization_url(&st, &flow.nonce, &flow.pkce_verifier, &asking)
        .await
        .map_err(|e| provider_unavailable(state, &client.config.display_name, &e))?;
    state
        .store
        .put_flow(&crypto::digest(&st), &flow)
        .await
        .map_err(|e| Failure::internal("saving the sign-in state", &e))?;
    Ok(web::redirect(url.as_str()))
}

fn provider_unavailable(state: &State, name: &str, err: &oidc::Error) -> Failure {
    tracing::error!("{err}");
    state.metrics.sign_in(name, "provider-unavailable");
    Failure::sign_in_unavailable(format!(
        "castellan could not reach {name} to sign you in. Try again in a moment."
    ))
}

/// `GET /.castellan/callback`: the provider's answer to a sign-in started here.
pub async fn callback(state: &State, ctx: &mut Ctx, req: &Request<Incoming>) -> Answer {
    let params = web::query_pairs(req.uri());
    let st = web::param(&params, "state").ok_or_else(|| {
        Failure::sign_in_failed(
            "Sign-in failed",
            "The provider's answer has no state: start the sign-in from castellan.",
        )
    })?;
    let flow = state
        .store
        .take_flow(&crypto::digest(st))
        .await
        .map_err(|e| Failure::internal("reading the sign-in state", &e))?
        .ok_or_else(|| {
            Failure::sign_in_failed(
                "This sign-in link has expired",
                "It was already used, or it is not from this castellan. Start the sign-in again.",
            )
        })?;
    let browser_matches = web::cookies::cookie(req.headers(), state.cookies.browser)
        .is_some_and(|b| crypto::equal(&crypto::digest(b), &flow.browser_digest));
    if !browser_matches {
        return Err(Failure::sign_in_failed(
            "Sign-in failed",
            format!(
                "This sign-in was started in another browser (or its cookies were cleared), or at another address than {}. Start again here.",
                state.config.public_origin()
            ),
        ));
    }
    if crate::clock::now() - flow.created_at > FLOW_LIFETIME.as_secs() as i64 {
        return Err(Failure::sign_in_failed(
            "This sign-in link has expired",
            "The sign-in took too long. Start again.",
        ));
    }
    let client = state.provider(&flow.provider).ok_or_else(|| {
        Failure::sign_in_failed(
            "Sign-in failed",
            "The provider of this sign-in is no longer configured.",
        )
    })?;
    if let Some(err) = web::param(&params, "error") {
        state.metrics.sign_in(&client.config.id, "refused");
        let detail = web::param(&params, "error_description").unwrap_or("");
        return Err(Failure::sign_in_failed(
            "Sign-in was not completed",
            format!("{} answered: {err} {detail}", client.config.display_name),
        ));
    }
    if let Err(e) = client.check_response_issuer(web::param(&params, "iss")) {
        state.metrics.sign_in(&client.config.id, "rejected");
        return Err(Failure::sign_in_failed("Sign-in failed", e.to_string()));
    }
    let code = web::param(&params, "code").ok_or_else(|| {
        Failure::sign_in_failed("Sign-in failed", "The provider's answer has no code.")
    })?;
    let span = ctx.span("oidc.code_exchange", crate::trace::Kind::Client);
    ctx.span_set(span, "castellan.provider", client.config.id.as_str());
    let exchanged = client
        .exchange(code, &flow.pkce_verifier, &flow.nonce)
        .await;
    if ctx.trace.is_some() {
        let error = exchanged.as_ref().err().map(ToString::to_string);
        ctx.span_end(span, error.as_deref());
    }
    let signed_in = match exchanged {
        Ok(who) => who,
        Err(e @ oidc::Error::Unavailable { .. }) => {
            return Err(provider_unavailable(state, &client.config.display_name, &e));
        }
        Err(e) => {
            state.metrics.sign_in(&client.config.id, "rejected");
            return Err(Failure::sign_in_failed("Sign-in failed", e.to_string()));
        }
    };
    // A re-authentication must be one: the provider says when it authenticated the person.
    if flow.max_age > 0 {
        let fresh = signed_in
            .auth_time
            .is_some_and(|t| crate::clock::now() - t <= flow.max_age + 30);
        if !fresh {
            state.metrics.sign_in(&client.config.id, "rejected");
            return Err(Failure::sign_in_failed(
                "Sign-in failed",
                format!(
                    "This app asks you to sign in again, but {} did not confirm a fresh sign-in (its ID token's auth_time is missing or too old). Try again; if it keeps happening, the provider may not support max_age.",
                    client.config.display_name
                ),
            ));
        }
    }
    // A sign-in for an app with a step-up must meet it; the provider is asked once more, for a
    // fresh authentication, before the answer is no.
    if let Some(app) = step_up::wanted(state, Some(&flow.step_up_app))
        && let Some(short) = app.step_up.shortfall(&signed_in.identity)
    {
        if flow.step_up_forced {
            state.metrics.sign_in(&client.config.id, "rejected");
            return Err(step_up::refused(
                app,
                short,
                &client.config.display_name,
                &signed_in.identity,
            ));
        }
        let browser = web::cookies::cookie(req.headers(), state.cookies.browser).unwrap_or("");
        let start = Start {
            return_to: &flow.return_to,
            switching: false,
            max_age: (flow.max_age > 0).then_some(flow.max_age),
            step_up: Some(app),
            fresh: true,
        };
        return start_flow(state, client, browser, &start).await;
    }
    // An app that asks for the access token (with its scopes): the provider must have given it
    // (else the app would send the person here again and again).
    let granted = signed_in.access.as_ref().map(|a| {
        a.scope.clone().unwrap_or_else(|| {
            requested_scopes(client, step_up::wanted(state, Some(&flow.step_up_app)))
        })
    });
    if let Some(app) = step_up::wanted(state, Some(&flow.step_up_app))
        && app.provider_tokens.access_token_header.is_some()
    {
        let granted = granted.as_deref().unwrap_or("");
        let all = app
            .provider_tokens
            .scopes
            .iter()
            .all(|w| granted.split(' ').any(|g| g == w));
        if !all || signed_in.access.is_none() {
            state.metrics.sign_in(&client.config.id, "rejected");
            return Err(step_up::scopes_refused(
                app,
                &client.config.display_name,
                granted,
            ));
        }
    }
    if signed_in.groups_overage
        && !state
            .directories
            .iter()
            .any(|d| matches!(d.config.kind, crate::config::DirectoryKind::Microsoft(_)))
    {
        tracing::warn!(
            provider = %client.config.id,
            user = %crate::web::ctx::log_safe(&signed_in.identity.email),
            "the ID token leaves the person's groups out (too many to carry: Entra ID's overage), so their group: memberships are unknown; add a [[directories]] kind = \"microsoft\" to ask Microsoft Graph for them"
        );
    }
    state.metrics.sign_in(&client.config.id, "ok");
    start_session(
        state,
        ctx,
        req.headers(),
        NewSession {
            identity: signed_in.identity,
            auth_time: signed_in.auth_time,
            provider_session: Some(ProviderSession {
                id_token: signed_in.id_token,
                sid: signed_in.sid.unwrap_or_default(),
                refresh_token: signed_in.refresh_token.map(|t| client.seal(&t)),
                // Kept only while some app asks for it.
                access: signed_in
                    .access
                    .filter(|_| state.keeps_provider_tokens())
                    .map(|a| SealedAccess {
                        token: client.seal(&a.token),
                        expires_at: a.expires_at,
                        scopes: granted.unwrap_or_default(),
                    }),
            }),
        },
        &flow.return_to,
    )
    .await
}

/// Who just signed in, and how.
pub struct NewSession {
    pub identity: Identity,
    /// When the provider authenticated them, if it says (else: now).
    pub auth_time: Option<i64>,
    /// The OpenID Connect provider's side of the sign-in (None for local accounts).
    pub provider_session: Option<ProviderSession>,
}

/// What an OpenID Connect sign-in keeps of the provider's session: its ID token (sent back as
/// `id_token_hint` at sign-out) and its session id (`sid`, '' when it sends none), which the
/// provider's back-channel logout names.
pub struct ProviderSession {
    pub id_token: String,
    pub sid: String,
    /// The provider's refresh token, sealed, when it granted offline access (revalidation).
    pub refresh_token: Option<String>,
    /// The provider's access token, sealed, when an app asks for it.
    pub access: Option<SealedAccess>,
}

/// A provider access token as the store keeps it.
pub struct SealedAccess {
    pub token: String,
    pub expires_at: i64,
    /// The scopes granted, space-separated.
    pub scopes: String,
}

/// The scopes a sign-in asked `client` for (the provider's, and those of the app it is for).
fn requested_scopes(client: &oidc::Client, app: Option<&App>) -> String {
    let mut scopes: Vec<&str> = client.config.scopes.iter().map(String::as_str).collect();
    for s in app
        .map(|a| a.provider_tokens.scopes.as_slice())
        .unwrap_or_default()
    {
        if !scopes.contains(&s.as_str()) {
            scopes.push(s);
        }
    }
    scopes.join(" ")
}

/// Creates a new session (never reusing an id the browser brought: no fixation) and sends the
/// browser on to `return_to`.
pub async fn start_session(
    state: &State,
    ctx: &mut Ctx,
    headers: &http::HeaderMap,
    new: NewSession,
    return_to: &str,
) -> Answer {
    // Deactivated over SCIM: no new session, whatever the provider says.
    if state.deactivated(&new.identity.email) {
        return Err(Failure::sign_in_failed(
            "Sign-in refused",
            format!(
                "{} is deactivated in your organisation's directory. Ask your administrator to reactivate the account.",
                new.identity.email
            ),
        ));
    }
    let ip = crate::net::ip_text(ctx.client_ip);
    if let Some(old) = web::cookies::cookie(headers, state.cookies.session) {
        let actor = Actor {
            name: new.identity.email.clone(),
            ip: ip.clone(),
        };
        state.forget_session(&crypto::digest(old));
        let _ = state
            .store
            .delete_session(&crypto::digest(old), &actor)
            .await;
    }
    // The directories are asked now, so the first request already sees today's groups.
    state.refresh_directory_groups(&new.identity.email).await;
    let id = crypto::random_token(32);
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(256)
        .collect::<String>();
    let lifetime = state.config.session_lifetime;
    state
        .store
        .create_session(
            &crypto::digest(&id),
            &new.identity,
            lifetime,
            &ip,
            &agent,
            new.auth_time,
        )
        .await
        .map_err(|e| Failure::internal("creating the session", &e))?;
    if let Some(p) = &new.provider_session {
        state
            .store
            .set_provider_session(&crypto::digest(&id), &p.id_token, &p.sid)
            .await
            .map_err(|e| Failure::internal("creating the session", &e))?;
        if let Some(sealed) = &p.refresh_token {
            state
                .store
                .set_refresh_token(&crypto::digest(&id), sealed)
                .await
                .map_err(|e| Failure::internal("creating the session", &e))?;
        }
        if let Some(a) = &p.access {
            state
                .store
                .set_provider_tokens(
                    &crypto::digest(&id),
                    &a.token,
                    a.expires_at,
                    &a.scopes,
                    None,
                    None,
                )
                .await
                .map_err(|e| Failure::internal("creating the session", &e))?;
        }
    }
    tracing::info!(user = %crate::web::ctx::log_safe(&new.identity.email), provider = %new.identity.provider, "signed in");
    ctx.set_user(&new.identity.email);
    ctx.mark(Outcome::SignedIn, Why::None);
    let mut resp = continue_to(state, ctx, &crypto::digest(&id), return_to).await?;
    resp.headers_mut().append(
        header::SET_COOKIE,
        state
            .cookies
            .set(state.cookies.session, &id, Some(lifetime.as_secs())),
    );
    if new.identity.provider == "local" {
        resp.headers_mut()
            .append(header::SET_COOKIE, state.device_cookie(&new.identity.email));
    }
    Ok(resp)
}

/// Sends a signed-in browser on to `return_to`. A path stays here. An absolute URL is another
/// host castellan serves, whose cookies this host cannot set: when it is that host's hand-off
/// (`/.castellan/handoff?hb=…&rd=…`, made by [`bounce`]), the browser goes there with a one-time
/// code (never a session id) bound to that host and to the browser `hb` names; any other URL on
/// that host first goes through its sign-in, which makes such a binding.
pub async fn continue_to(
    state: &State,
    ctx: &mut Ctx,
    session_digest: &str,
    return_to: &str,
) -> Answer {
    if return_to.starts_with('/') {
        return Ok(web::redirect(return_to));
    }
    let Some((target, host)) = url::Url::parse(return_to)
        .ok()
        .and_then(|t| Some((t.clone(), t.host_str()?.to_string())))
    else {
        return Ok(web::redirect("/"));
    };
    let origin = target.origin().ascii_serialization();
    let params: Vec<(String, String)> = target.query_pairs().into_owned().collect();
    let binding = (target.path() == "/.castellan/handoff")
        .then(|| web::param(&params, "hb"))
        .flatten();
    let Some(browser_digest) = binding else {
        let path = &return_to[origin.len()..];
        return Ok(web::redirect(&format!(
            "{origin}/.castellan/sign_in?rd={}",
            pages::q(if path.is_empty() { "/" } else { path })
        )));
    };
    let rd = web::param(&params, "rd").unwrap_or("/");
    let code = crypto::random_token(32);
    state
        .store
        .put_handoff_code(
            &crypto::digest(&code),
            session_digest,
            &host,
            browser_digest,
        )
        .await
        .map_err(|e| Failure::internal("handing the session to another host", &e))?;
    let _ = ctx;
    Ok(web::redirect(&format!(
        "{origin}/.castellan/handoff?code={}&rd={}",
        pages::q(&code),
        pages::q(rd)
    )))
}
