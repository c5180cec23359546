//! The running server: shared state, the accept loop with graceful shutdown, and the request path
//! (reserved paths → app match → authenticate → decide → answer or proxy), with one log line per request.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::assertion::Signer;
use crate::config::{App, Config};
use crate::local::Limiter;
use crate::metrics::{AppLabel, Metrics, RequestLabels};
use crate::oidc;
use crate::pages;
use crate::policy::{self, Decision, Identity, Member};
use crate::proxy::{self, Upstream};
use crate::store::{self, Store};
use crate::web::{self, Body, CookieNames};

/// How often the access lists are checked for changes made by other processes.
pub const ACCESS_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long in-flight requests get to finish after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a request needs, shared by all connections.
pub struct State {
    pub config: Config,
    pub store: Store,
    pub signer: Signer,
    /// Key for CSRF tokens (HMAC), kept in the store.
    pub csrf_key: Vec<u8>,
    pub providers: Vec<oidc::Client>,
    pub metrics: Metrics,
    pub upstream: Upstream,
    pub cookies: CookieNames,
    pub account_limiter: Limiter,
    pub ip_limiter: Limiter,
    access: RwLock<Arc<AccessLists>>,
}

/// Each app's members, as last loaded from the store.
#[derive(Default)]
struct AccessLists {
    revision: Option<i64>,
    by_app: HashMap<String, Vec<Member>>,
}

impl State {
    pub async fn new(config: Config, store: Store) -> Result<Arc<State>, crate::assertion::Error> {
        let signer = Signer::load(&store, &config.public_origin()).await?;
        let (_, csrf_key) = store
            .key_or_create("csrf", || ("csrf".into(), crate::crypto::random_bytes(32)))
            .await?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .user_agent(concat!("castellan/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client for providers builds");
        let providers = config
            .providers
            .iter()
            .map(|p| oidc::Client::new(p.clone(), config.redirect_uri(), http.clone()))
            .collect();
        let state = Arc::new(State {
            cookies: CookieNames::new(config.secure_cookies()),
            upstream: Upstream::new(config.upstream_connect_timeout, config.upstream_timeout),
            // Five wrong passwords per account, twenty per client address, in five minutes.
            account_limiter: Limiter::new(5, Duration::from_secs(300)),
            ip_limiter: Limiter::new(20, Duration::from_secs(300)),
            metrics: Metrics::new(),
            access: RwLock::new(Arc::new(AccessLists::default())),
            signer,
            csrf_key,
            providers,
            config,
            store,
        });
        state.reload_access().await?;
        Ok(state)
    }

    /// Loads the access lists if the store's revision changed; returns whether it did.
    pub async fn reload_access(&self) -> Result<bool, store::Error> {
        let revision = self.store.revision().await?;
        if self.access_lists().revision == Some(revision) {
            return Ok(false);
        }
        let mut by_app: HashMap<String, Vec<Member>> = HashMap::new();
        for (app, member, _) in self.store.bindings().await? {
            by_app.entry(app).or_default().push(member);
        }
        *self.access.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(AccessLists {
            revision: Some(revision),
            by_app,
        });
        Ok(true)
    }

    fn access_lists(&self) -> Arc<AccessLists> {
        self.access
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn provider(&self, id: &str) -> Option<&oidc::Client> {
        self.providers.iter().find(|p| p.config.id == id)
    }

    /// The app that serves `host` and `path`: a matching `host` beats none, then the longest prefix.
    pub fn match_app(&self, host: Option<&str>, path: &str) -> Option<&App> {
        self.config
            .apps
            .iter()
            .filter(|a| a.host.is_none() || a.host.as_deref() == host)
            .filter(|a| prefix_matches(&a.path_prefix, path))
            .max_by_key(|a| (a.host.is_some(), a.path_prefix.len()))
    }

    /// The signed-in person, from the session cookie. `Ok(None)` for no, unknown, expired or
    /// ambiguous cookies; `Err` when the store cannot answer (the caller fails closed).
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<(Identity, String)>, store::Error> {
        let Some(id) = web::cookie(headers, self.cookies.session) else {
            return Ok(None);
        };
        if id.len() != 43
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Ok(None);
        }
        let digest = crate::crypto::digest(id);
        let Some(session) = self
            .store
            .session(&digest, self.config.session_idle_timeout)
            .await?
        else {
            return Ok(None);
        };
        // Record use at most once a minute (sooner for short idle timeouts): enough for the idle
        // timeout, cheap for the store.
        let every = (self.config.session_idle_timeout.as_secs() / 4).clamp(1, 60) as i64;
        if store::now() - session.last_seen >= every {
            self.store.touch_session(&digest).await?;
        }
        Ok(Some((session.identity, digest)))
    }

    /// The CSRF token for forms shown to the browser identified by `browser_id`.
    pub fn csrf_token(&self, browser_id: &str) -> String {
        crate::crypto::mac(&self.csrf_key, &format!("csrf:{browser_id}"))
    }
}

/// `/reports` matches `/reports`, `/reports/x` and `/reports;x`, not `/reportsx`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let prefix = prefix.trim_end_matches('/');
    path == prefix || path.starts_with(prefix) && path[prefix.len()..].starts_with(['/', ';'])
}

/// False for a WebSocket (or other upgrade) whose `Origin` is not the host it connects to: a page on
/// another site must not ride the person's session into the app (cross-site WebSocket hijacking).
fn same_origin_upgrade(req: &Request<Incoming>, host: Option<&str>) -> bool {
    if !req.headers().contains_key(http::header::UPGRADE) {
        return true;
    }
    let Some(origin) = req.headers().get(http::header::ORIGIN) else {
        return true; // not a browser: there is no ambient page to defend against
    };
    let Some(origin) = origin.to_str().ok().and_then(|o| url::Url::parse(o).ok()) else {
        return false;
    };
    let host_port = req
        .uri()
        .authority()
        .and_then(|a| a.port_u16())
        .or_else(|| {
            let h = req.headers().get(http::header::HOST)?.to_str().ok()?;
            h.parse::<http::uri::Authority>().ok()?.port_u16()
        })
        .or_else(|| match origin.scheme() {
            "https" | "wss" => Some(443),
            _ => Some(80),
        });
    origin
        .host_str()
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
        .as_deref()
        == host
        && origin.port_or_known_default() == host_port
}

/// What the log line and metrics say about one request.
pub struct Outcome {
    pub app: String,
    pub user: String,
    pub decision: &'static str,
    pub reason: &'static str,
    pub reference: Option<String>,
}

impl Outcome {
    pub fn new(app: &str) -> Outcome {
        Outcome {
            app: app.to_string(),
            user: String::new(),
            decision: "-",
            reason: "-",
            reference: None,
        }
    }
}

/// Handles one request; never fails (every error becomes a page).
pub async fn handle(state: Arc<State>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let host = web::request_host(req.uri(), req.headers());
    let mut outcome = Outcome::new("-");
    let resp = match crate::path::normalize(req.uri().path()) {
        None => {
            outcome.decision = "bad-request";
            web::html(
                StatusCode::BAD_REQUEST,
                pages::error(
                    "Bad request",
                    "The request path is not valid.",
                    &crypto_ref(&mut outcome),
                ),
            )
        }
        // Decided on the normalised path, so `/%2ecastellan/…` is castellan's too and never proxied.
        Some(normal) if normal == "/.castellan" || normal.starts_with("/.castellan/") => {
            outcome.app = "castellan".into();
            crate::reserved::handle(&state, peer, req, &normal, &mut outcome).await
        }
        Some(normal) => protected(&state, peer, req, host.as_deref(), &normal, &mut outcome).await,
    };
    let status = resp.status().as_u16();
    let latency = start.elapsed();
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            app: outcome.app.clone(),
            decision: outcome.decision,
            status,
        })
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&AppLabel {
            app: outcome.app.clone(),
        })
        .observe(latency.as_secs_f64());
    tracing::info!(
        target: "castellan::request",
        method = %method,
        host = host.as_deref().unwrap_or("-"),
        path = %path,
        app = %outcome.app,
        user = %outcome.user,
        decision = outcome.decision,
        reason = outcome.reason,
        status,
        latency_ms = (latency.as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
        reference = outcome.reference.as_deref().unwrap_or("-"),
        peer = %peer.ip(),
    );
    resp
}

/// A fresh reference id, recorded in the outcome so the log line carries it too.
fn crypto_ref(outcome: &mut Outcome) -> String {
    let reference = crate::crypto::reference_id();
    outcome.reference = Some(reference.clone());
    reference
}

async fn protected(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    host: Option<&str>,
    path: &str,
    outcome: &mut Outcome,
) -> Response<Body> {
    let Some(app) = state.match_app(host, path) else {
        let reference = crate::crypto::reference_id();
        outcome.reference = Some(reference.clone());
        return web::html(
            StatusCode::NOT_FOUND,
            pages::error(
                "No app here",
                "castellan has no app configured for this address. Check the link, or the [[apps]] host and path_prefix in the configuration.",
                &reference,
            ),
        );
    };
    outcome.app = app.id.clone();

    let who = match state.authenticate(req.headers()).await {
        Ok(who) => who,
        Err(e) => return internal_error(outcome, "reading the session", &e),
    };
    if let Some((identity, _)) = &who {
        outcome.user = identity.email.clone();
    }
    let lists = state.access_lists();
    let members = lists.by_app.get(&app.id).map(Vec::as_slice).unwrap_or(&[]);
    let decision = policy::decide(members, who.as_ref().map(|(i, _)| i));
    outcome.decision = decision.label();
    outcome.reason = decision.reason().as_str();

    match decision {
        Decision::SignIn => sign_in_required(state, &req),
        Decision::Deny(_) => {
            let reference = crate::crypto::reference_id();
            outcome.reference = Some(reference.clone());
            let email = who.as_ref().map(|(i, _)| i.email.as_str()).unwrap_or("");
            if web::is_navigation(req.headers()) {
                let switch_href = format!(
                    "/.castellan/sign_in?switch=1&rd={}",
                    pages::q(&return_path(&req))
                );
                web::html(
                    StatusCode::FORBIDDEN,
                    pages::denied(&pages::Denied {
                        email,
                        app: &app.id,
                        reference: &reference,
                        switch_href,
                    }),
                )
            } else {
                web::json(
                    StatusCode::FORBIDDEN,
                    &serde_json::json!({
                        "error": "access_denied",
                        "message": format!("{email} has no access to app {}", app.id),
                        "reference": reference,
                    }),
                )
            }
        }
        Decision::Allow(_) if !same_origin_upgrade(&req, host) => {
            outcome.decision = "deny";
            outcome.reason = "cross-origin-websocket";
            let reference = crypto_ref(outcome);
            web::json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({
                    "error": "cross_origin_websocket",
                    "message": "a WebSocket from another origin is refused (cross-site WebSocket hijacking)",
                    "reference": reference,
                }),
            )
        }
        Decision::Allow(_) => {
            let (identity, _) = who.expect("an allow decision has an identity");
            let assertion = match state.signer.sign(&identity, &app.audience) {
                Ok(a) => a,
                Err(e) => return internal_error(outcome, "signing the identity assertion", &e),
            };
            let peer_trusted = state
                .config
                .trusted_proxies
                .iter()
                .any(|n| n.contains(peer.ip()));
            let forwarded = proxy::Forwarded {
                peer_ip: peer.ip(),
                peer_trusted,
                proto: state.config.public_url.scheme(),
            };
            let headers = proxy::IdentityHeaders {
                assertion,
                email: identity.email.clone(),
                user: format!("{}:{}", identity.provider, identity.subject),
            };
            let target = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            };
            match state
                .upstream
                .forward(app, req, &target, &forwarded, headers)
                .await
            {
                Ok(resp) => resp,
                Err(e) => {
                    let reference = crate::crypto::reference_id();
                    outcome.reference = Some(reference.clone());
                    state
                        .metrics
                        .upstream_errors
                        .get_or_create(&crate::metrics::UpstreamErrorLabels {
                            app: app.id.clone(),
                            kind: e.kind(),
                        })
                        .inc();
                    tracing::warn!(app = %app.id, upstream = %app.upstream, reference, "upstream error: {e}");
                    let (status, title) = match e {
                        proxy::Error::Timeout(_) => (
                            StatusCode::GATEWAY_TIMEOUT,
                            "The app took too long to answer",
                        ),
                        _ => (StatusCode::BAD_GATEWAY, "The app is not reachable"),
                    };
                    web::html(
                        status,
                        pages::error(
                            title,
                            &format!(
                                "castellan could not get an answer from {}. Try again in a moment; if it persists, the app's operators can find this reference in castellan's log.",
                                app.id
                            ),
                            &reference,
                        ),
                    )
                }
            }
        }
    }
}

/// The path and query of the request, where the browser returns after signing in.
fn return_path(req: &Request<Incoming>) -> String {
    req.uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into())
}

fn sign_in_required(state: &State, req: &Request<Incoming>) -> Response<Body> {
    let sign_in = format!("/.castellan/sign_in?rd={}", pages::q(&return_path(req)));
    if web::is_navigation(req.headers()) {
        web::redirect(&sign_in)
    } else {
        let mut resp = web::json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({
                "error": "unauthenticated",
                "message": "sign in first",
                "sign_in_url": format!("{}{sign_in}", state.config.public_origin()),
            }),
        );
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"castellan\""),
        );
        resp
    }
}

/// Fails closed: a 500 page with a reference that matches the log line; nothing is proxied.
pub fn internal_error(
    outcome: &mut Outcome,
    doing: &str,
    err: &dyn std::error::Error,
) -> Response<Body> {
    let reference = crate::crypto::reference_id();
    tracing::error!(reference, "internal error while {doing}: {err}");
    outcome.decision = "error";
    outcome.reason = "internal-error";
    outcome.reference = Some(reference.clone());
    web::html(
        StatusCode::INTERNAL_SERVER_ERROR,
        pages::error(
            "Something went wrong",
            "castellan could not check your access, so it did not let the request through. Try again in a moment.",
            &reference,
        ),
    )
}

/// Serves until `shutdown` resolves, then drains in-flight requests for up to [`DRAIN_TIMEOUT`].
pub async fn run(
    state: Arc<State>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    spawn_background(state.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_secs(30));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(state, peer, req).await) }
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: finishing in-flight requests (up to {DRAIN_TIMEOUT:?})");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
    Ok(())
}

fn spawn_background(state: Arc<State>) {
    let s = state.clone();
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::time::sleep(ACCESS_POLL_INTERVAL).await;
            match s.reload_access().await {
                Ok(changed) => {
                    if changed {
                        tracing::info!("access lists reloaded");
                    }
                    if failing {
                        tracing::info!("the store answers again");
                        failing = false;
                    }
                }
                Err(e) if !failing => {
                    tracing::error!("cannot reload access lists (keeping the last ones): {e}");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    });
    tokio::spawn(async move {
        loop {
            if let Err(e) = state.store.sweep(crate::reserved::FLOW_LIFETIME).await {
                tracing::warn!("cleaning expired sessions failed: {e}");
            }
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
    });
}

/// Serves Prometheus metrics at `/metrics` on `listener`.
pub async fn serve_metrics(state: Arc<State>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        let mut r = Response::new(web::full(state.metrics.render()));
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static(
                                "text/plain; version=0.0.4; charset=utf-8",
                            ),
                        );
                        r
                    } else {
                        web::text(StatusCode::NOT_FOUND, "metrics are at /metrics\n")
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/reports", "/reports"));
        assert!(prefix_matches("/reports", "/reports/q"));
        assert!(prefix_matches("/reports/", "/reports/q"));
        assert!(!prefix_matches("/reports", "/reportsx"));
        assert!(prefix_matches("/reports", "/reports;jsessionid=1"));
        assert!(!prefix_matches("/reports", "/"));
    }
}
