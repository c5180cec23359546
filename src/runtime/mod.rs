//! Shared state for every request, split by concern: the policy snapshot and its reloads, the
//! session cache, signing and CSRF keys, the audit writer, metrics, live connections, TLS
//! certificates and the upstream connection pool.

pub mod audit;
pub mod live;
pub mod metrics;
pub mod tls;
pub mod upstream;

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::{App, Config};
use crate::gate::proxy::Upstream;
use crate::identity::assertion::Signer;
use crate::identity::local::Limiter;
use crate::identity::oidc;
use crate::policy::Identity;
use crate::policy::condition::Context;
use crate::policy::snapshot::Snapshot;
use crate::runtime::audit::AuditSink;
use crate::runtime::live::Registry;
use crate::runtime::metrics::Metrics;
use crate::store::{self, Store};
use crate::web::{self, CookieNames};

/// How often the store is checked for changes made by any process.
pub const ACCESS_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long in-flight requests get to finish after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a request needs, shared by all connections.
pub struct State {
    pub config: Config,
    pub store: Store,
    /// The assertion signer for the current key ring (swapped when keys rotate).
    signer: RwLock<Arc<Signer>>,
    /// Keys for CSRF tokens (HMAC), from the store's key ring: the active one makes tokens, all
    /// of them check tokens.
    csrf_keys: RwLock<Arc<CsrfKeys>>,
    pub providers: Vec<oidc::Client>,
    pub metrics: Arc<Metrics>,
    pub upstream: Upstream,
    pub cookies: CookieNames,
    pub account_limiter: Arc<Limiter>,
    pub ip_limiter: Arc<Limiter>,
    pub audit: AuditSink,
    pub live: Arc<Registry>,
    /// For access-request notifications.
    pub webhook_client: reqwest::Client,
    /// ID tokens for private upstreams.
    pub metadata: crate::identity::google::Metadata,
    snapshot: RwLock<Arc<Snapshot>>,
    /// The store revision the snapshot was built from (-1: none yet).
    revision: AtomicI64,
    /// Serialises reloads, so a slow one can never replace a newer snapshot with an older one.
    reload_lock: tokio::sync::Mutex<()>,
    /// Sessions recently read from the store, by digest: (identity, expires_at, last_seen, read at).
    /// Entries live [`SESSION_CACHE_TTL`] and the whole cache is dropped whenever the store changes
    /// (sign-outs and revocations bump its revision), so a revoked session stops working as fast
    /// as a policy change does.
    session_cache: std::sync::Mutex<std::collections::HashMap<String, CachedSession>>,
    /// Whether the store answered lately; see [`State::store_usable`].
    store_health: Arc<StoreHealth>,
    /// The certificates served with `[tls]`.
    pub certs: Option<Arc<crate::runtime::tls::Certs>>,
    /// Notified on SIGHUP: re-read certificate files.
    pub reload_signal: Arc<tokio::sync::Notify>,
    /// Woken when another replica announces a change (PostgreSQL NOTIFY), to reload at once.
    pub changed: Arc<tokio::sync::Notify>,
    /// Identity headers recently made, by person, app audience and header style: (headers, issued
    /// at). Reused for up to [`ASSERTION_REUSE_SECS`] of their assertion's five-minute life, so
    /// signing is not paid per request.
    identity_cache: std::sync::Mutex<
        std::collections::HashMap<String, (crate::gate::proxy::AddedHeaders, i64)>,
    >,
}

/// What a configuration reload hands from one [`State`] to the next.
struct Shared {
    store: Store,
    metrics: Arc<Metrics>,
    account_limiter: Arc<Limiter>,
    ip_limiter: Arc<Limiter>,
    audit: AuditSink,
    live: Arc<Registry>,
    certs: Option<Arc<crate::runtime::tls::Certs>>,
    reload_signal: Arc<tokio::sync::Notify>,
    changed: Arc<tokio::sync::Notify>,
    store_health: Arc<StoreHealth>,
}

/// CSRF keys: all of the ring's, and which one makes new tokens.
struct CsrfKeys {
    keys: Vec<Vec<u8>>,
    active: usize,
}

/// The assertion signer and the CSRF keys, from the store's key rings at this moment.
async fn load_keys(
    config: &Config,
    store: &Store,
) -> Result<(Signer, CsrfKeys), crate::identity::assertion::Error> {
    let now = crate::clock::now();
    let signer = Signer::load(store, &config.public_origin(), config.key_rotation, now).await?;
    let rotate_after = config.key_rotation.saturating_sub(Duration::from_secs(
        crate::identity::assertion::PUBLISH_AHEAD_SECS as u64,
    ));
    let ring = store
        .key_ring("csrf", now, rotate_after, || {
            (
                crate::crypto::random_token(12),
                crate::crypto::random_bytes(32),
            )
        })
        .await?;
    let csrf = CsrfKeys {
        active: crate::identity::assertion::active_key(&ring, now),
        keys: ring.into_iter().map(|k| k.material).collect(),
    };
    Ok((signer, csrf))
}

/// A session as the cache keeps it.
#[derive(Clone)]
struct CachedSession {
    identity: Arc<Identity>,
    expires_at: i64,
    last_seen: i64,
    /// When the person last proved who they are (the session's sign-in).
    signed_in_at: i64,
    read: std::time::Instant,
}

/// What the background reload learned about the store.
struct StoreHealth {
    /// The last reload reached the store.
    up: std::sync::atomic::AtomicBool,
    /// When a reload last reached the store (unix ms).
    last_ok_ms: AtomicI64,
}

/// How long a session read from the store is trusted without reading it again.
pub const SESSION_CACHE_TTL: Duration = Duration::from_secs(2);
/// How long a signed assertion is reused (it stays valid for at least four more minutes).
pub const ASSERTION_REUSE_SECS: i64 = 60;

impl State {
    pub async fn new(
        config: Config,
        store: Store,
    ) -> Result<Arc<State>, crate::identity::assertion::Error> {
        let metrics = Arc::new(Metrics::new());
        let certs = match config.tls.as_ref().map(|t| &t.certificates) {
            None => None,
            Some(crate::config::Certificates::Files { cert, key }) => {
                let certs = Arc::new(crate::runtime::tls::Certs::default());
                crate::runtime::tls::load_files(&certs, cert, key)
                    .map_err(crate::identity::assertion::Error::Tls)?;
                Some(certs)
            }
            Some(crate::config::Certificates::Acme(_)) => {
                Some(Arc::new(crate::runtime::tls::Certs::default()))
            }
        };
        let shared = Shared {
            // Five wrong passwords per account, twenty per client address, in five minutes.
            account_limiter: Arc::new(Limiter::new(5, Duration::from_secs(300))),
            ip_limiter: Arc::new(Limiter::new(20, Duration::from_secs(300))),
            audit: AuditSink::start(
                store.clone(),
                crate::runtime::audit::Spool::new(&config.audit_spool, &config.store),
                metrics.audit_dropped.clone(),
                metrics.audit_spooled.clone(),
                metrics.audit_set_aside.clone(),
            ),
            metrics,
            live: Arc::new(Registry::default()),
            certs,
            reload_signal: Arc::new(tokio::sync::Notify::new()),
            changed: Arc::new(tokio::sync::Notify::new()),
            store_health: Arc::new(StoreHealth {
                up: std::sync::atomic::AtomicBool::new(true),
                last_ok_ms: AtomicI64::new(crate::clock::now_ms()),
            }),
            store,
        };
        State::build(config, shared).await
    }

    /// A state for `config` that keeps everything that outlives a configuration: the store, live
    /// connections, the audit writer, metrics, rate limits, certificates. Settings that need a
    /// restart (listen addresses, store, TLS) keep their running values, with a warning.
    pub async fn reconfigure(
        &self,
        mut config: Config,
    ) -> Result<Arc<State>, crate::identity::assertion::Error> {
        let old = &self.config;
        let mut kept = Vec::new();
        if config.listen != old.listen {
            kept.push("listen");
            config.listen = old.listen;
        }
        if config.store != old.store {
            kept.push("store");
            config.store = old.store.clone();
        }
        if config.metrics_listen != old.metrics_listen {
            kept.push("metrics_listen");
            config.metrics_listen = old.metrics_listen;
        }
        if config.audit_spool != old.audit_spool {
            kept.push("audit_spool");
            config.audit_spool = old.audit_spool.clone();
        }
        if config.tls != old.tls {
            kept.push("tls");
            config.tls = old.tls.clone();
        }
        if !kept.is_empty() {
            tracing::warn!(
                "configuration reload: {} changed, which takes a restart; the running values stay until then",
                kept.join(", ")
            );
        }
        State::build(
            config,
            Shared {
                store: self.store.clone(),
                metrics: self.metrics.clone(),
                account_limiter: self.account_limiter.clone(),
                ip_limiter: self.ip_limiter.clone(),
                audit: self.audit.clone(),
                live: self.live.clone(),
                certs: self.certs.clone(),
                reload_signal: self.reload_signal.clone(),
                changed: self.changed.clone(),
                store_health: self.store_health.clone(),
            },
        )
        .await
    }

    async fn build(
        config: Config,
        shared: Shared,
    ) -> Result<Arc<State>, crate::identity::assertion::Error> {
        let Shared {
            store,
            metrics,
            account_limiter,
            ip_limiter,
            audit,
            live,
            certs,
            reload_signal,
            changed,
            store_health,
        } = shared;
        let (signer, csrf_keys) = load_keys(&config, &store).await?;
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
            certs,
            reload_signal,
            cookies: CookieNames::new(config.secure_cookies()),
            upstream: Upstream::new(config.upstream_connect_timeout, config.upstream_timeout),
            account_limiter,
            ip_limiter,
            audit,
            webhook_client: http.clone(),
            metadata: crate::identity::google::Metadata::new(&config.google_metadata_url),
            metrics,
            live,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            revision: AtomicI64::new(-1),
            reload_lock: tokio::sync::Mutex::new(()),
            session_cache: std::sync::Mutex::new(std::collections::HashMap::new()),
            store_health,
            changed,
            identity_cache: std::sync::Mutex::new(std::collections::HashMap::new()),
            signer: RwLock::new(Arc::new(signer)),
            csrf_keys: RwLock::new(Arc::new(csrf_keys)),
            providers,
            config,
            store,
        });
        state.reload().await?;
        Ok(state)
    }

    /// The policy snapshot decisions read: immutable, swapped whole.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether decisions may still be made: the store answers, or it stopped answering less than
    /// `store_outage_grace` ago (decisions then continue from the last snapshot). After that,
    /// every protected request is refused until the store is back.
    pub fn store_usable(&self) -> bool {
        self.store_health.up.load(Ordering::Acquire)
            || crate::clock::now_ms() - self.store_health.last_ok_ms.load(Ordering::Acquire)
                <= self.config.store_outage_grace.as_millis() as i64
    }

    /// Seconds since the store last answered a reload, when the last one failed.
    pub fn store_down_for(&self) -> Option<i64> {
        (!self.store_health.up.load(Ordering::Acquire)).then(|| {
            (crate::clock::now_ms() - self.store_health.last_ok_ms.load(Ordering::Acquire)) / 1000
        })
    }

    /// Forces the next reload to rebuild everything (after missed change notifications).
    pub fn invalidate(&self) {
        self.revision.store(-1, Ordering::Release);
        self.changed.notify_one();
    }

    /// Rebuilds the snapshot if the store changed; returns whether it did.
    pub async fn reload(&self) -> Result<bool, store::Error> {
        let result = self.reload_inner().await;
        match &result {
            Ok(_) => {
                self.store_health
                    .last_ok_ms
                    .store(crate::clock::now_ms(), Ordering::Release);
                self.store_health.up.store(true, Ordering::Release);
            }
            Err(_) => self.store_health.up.store(false, Ordering::Release),
        }
        result
    }

    async fn reload_inner(&self) -> Result<bool, store::Error> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let revision = self.store.revision().await?;
        if self.revision.load(Ordering::Acquire) == revision {
            return Ok(false);
        }
        let snapshot = Snapshot::with_admins(
            self.store.policies().await?,
            self.store.memberships().await?,
            &self.config.admins,
        );
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
        self.session_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.identity_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.revision.store(revision, Ordering::Release);
        Ok(true)
    }

    /// Re-decides every live connection (WebSockets, streams) against the current snapshot and the
    /// clock, and, with `sessions`, checks their sessions still exist; closes those that fail.
    pub async fn recheck_live(&self, sessions: bool) {
        let entries = self.live.snapshot();
        if entries.is_empty() {
            return;
        }
        let live_sessions: Option<HashSet<String>> = if sessions {
            let digests: Vec<String> = entries
                .iter()
                .map(|(_, g)| g.session.clone())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            match self
                .store
                .live_sessions(&digests, self.config.session_idle_timeout)
                .await
            {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("cannot check the sessions of live connections: {e}");
                    None
                }
            }
        } else {
            None
        };
        let snapshot = self.snapshot();
        let now = crate::clock::now();
        let ended: Vec<u64> = entries
            .iter()
            .filter(|(_, g)| {
                let cx = Context {
                    path: &g.path,
                    host: &g.host,
                    method: &g.method,
                    time: now,
                    ip: g.ip,
                };
                let allowed = snapshot
                    .decide(&g.app, crate::gate::caller(&g.identity), &cx)
                    .allowed();
                let session_ok = live_sessions
                    .as_ref()
                    .is_none_or(|s| s.contains(&g.session));
                !allowed || !session_ok
            })
            .map(|(id, _)| *id)
            .collect();
        let n = self.live.revoke(&ended);
        if n > 0 {
            tracing::info!("closed {n} live connection(s) whose access ended");
        }
    }

    pub fn provider(&self, id: &str) -> Option<&oidc::Client> {
        self.providers.iter().find(|p| p.config.id == id)
    }

    /// The app that serves `host` and `path`: an exact `host` beats a wildcard one, which beats
    /// none; then the longest prefix.
    pub fn match_app(&self, host: Option<&str>, path: &str) -> Option<&App> {
        let rank = |a: &App| match (&a.host, host) {
            (None, _) => Some(0),
            (Some(h), Some(asked)) if h == asked => Some(2),
            (Some(_), Some(asked)) if a.serves_host(asked) => Some(1),
            _ => None,
        };
        self.config
            .apps
            .iter()
            .filter(|a| prefix_matches(&a.path_prefix, path))
            .filter_map(|a| rank(a).map(|r| (r, a)))
            .max_by_key(|(r, a)| (*r, a.path_prefix.len()))
            .map(|(_, a)| a)
    }

    /// The signed-in person and their session's digest, from the session cookie. `Ok(None)` for
    /// no, unknown, expired or ambiguous cookies; `Err` when the store cannot answer (the caller
    /// fails closed).
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<(Arc<Identity>, String)>, store::Error> {
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
        let now = crate::clock::now();
        let idle = self.config.session_idle_timeout.as_secs() as i64;
        // Record use at most once a minute (sooner for short idle timeouts): enough for the idle
        // timeout, cheap for the store.
        let every = (idle / 4).clamp(1, 60);
        if let Some(identity) = self
            .session_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
            .filter(|c| {
                c.read.elapsed() < SESSION_CACHE_TTL
                    && c.expires_at > now
                    && c.last_seen > now - idle
                    && now - c.last_seen < every
            })
            .map(|c| c.identity.clone())
        {
            return Ok(Some((identity, digest)));
        }
        // While the store is known to be down, a session seen before the outage is answered from
        // the cache at once (asking the store would wait out its connection timeout).
        if !self.store_health.up.load(Ordering::Acquire)
            && self.store_usable()
            && let Some(identity) = self.cached_session(&digest, now)
        {
            return Ok(Some((identity, digest)));
        }
        let stored = match self
            .store
            .session(&digest, self.config.session_idle_timeout)
            .await
        {
            Ok(stored) => stored,
            // The store is down: a session seen before the outage keeps working within the
            // grace period, as decisions from the last snapshot do. Nothing else gets in.
            Err(e) if e.is_unavailable() && self.store_usable() => {
                return match self.cached_session(&digest, now) {
                    Some(identity) => Ok(Some((identity, digest))),
                    None => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let Some(session) = stored else {
            self.forget_session(&digest);
            return Ok(None);
        };
        let mut last_seen = session.last_seen;
        if now - session.last_seen >= every {
            match self.store.touch_session(&digest).await {
                Ok(()) => last_seen = now,
                Err(e) if e.is_unavailable() => {}
                Err(e) => return Err(e),
            }
        }
        let mut cache = self.session_cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 100_000 {
            cache.clear();
        }
        let identity = Arc::new(session.identity);
        cache.insert(
            digest.clone(),
            CachedSession {
                identity: identity.clone(),
                expires_at: session.expires_at,
                last_seen,
                signed_in_at: session.created_at,
                read: std::time::Instant::now(),
            },
        );
        drop(cache);
        Ok(Some((identity, digest)))
    }

    /// A session in the cache that has not expired, however long ago it was read.
    fn cached_session(&self, digest: &str, now: i64) -> Option<Arc<Identity>> {
        let cache = self.session_cache.lock().unwrap_or_else(|p| p.into_inner());
        let c = cache.get(digest)?;
        (c.expires_at > now).then(|| c.identity.clone())
    }

    /// When the session `digest` (just authenticated) was signed in.
    pub fn signed_in_at(&self, digest: &str) -> Option<i64> {
        self.session_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .map(|c| c.signed_in_at)
    }

    /// Drops a session from the cache at once (this process ended it).
    pub fn forget_session(&self, digest: &str) {
        self.session_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
    }

    /// The identity headers for `app`'s style (castellan's own, or Google IAP's): a signed
    /// assertion, the email and the user id.
    pub fn identity_headers(
        &self,
        app: &App,
        who: &Identity,
    ) -> Result<crate::gate::proxy::AddedHeaders, crate::identity::assertion::Error> {
        use crate::config::IdentityHeaders;
        use crate::gate::proxy::value;
        use crate::identity::google::IAP_PREFIX;
        use http::HeaderName;
        let key = identity_cache_key(app.identity_headers, who, &app.audience);
        let now = crate::clock::now();
        if let Some(key) = &key
            && let Some((headers, iat)) = self
                .identity_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(key)
            && now - iat < ASSERTION_REUSE_SECS
        {
            return Ok(headers.clone());
        }
        let headers = match app.identity_headers {
            IdentityHeaders::Castellan => vec![
                (
                    HeaderName::from_static(crate::gate::proxy::ASSERTION_HEADER),
                    value(&self.signer().sign(who, &app.audience)?),
                ),
                (
                    HeaderName::from_static(crate::gate::proxy::EMAIL_HEADER),
                    value(&who.email),
                ),
                (
                    HeaderName::from_static(crate::gate::proxy::USER_HEADER),
                    value(&format!("{}:{}", who.provider, who.subject)),
                ),
            ],
            IdentityHeaders::GoogleIap => vec![
                (
                    HeaderName::from_static("x-goog-iap-jwt-assertion"),
                    value(&self.signer().sign_iap(who, &app.audience)?),
                ),
                (
                    HeaderName::from_static("x-goog-authenticated-user-email"),
                    value(&format!("{IAP_PREFIX}{}", who.email)),
                ),
                (
                    HeaderName::from_static("x-goog-authenticated-user-id"),
                    value(&format!("{IAP_PREFIX}{}", who.subject)),
                ),
            ],
        };
        if let Some(key) = key {
            let mut cache = self
                .identity_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if cache.len() > 100_000 {
                cache.clear();
            }
            cache.insert(key, (headers.clone(), now));
        }
        Ok(headers)
    }

    /// The CSRF token for forms shown to the browser identified by `browser_id`.
    pub fn csrf_token(&self, browser_id: &str) -> String {
        let keys = self
            .csrf_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        crate::crypto::mac(&keys.keys[keys.active], &format!("csrf:{browser_id}"))
    }

    /// Whether `token` is a CSRF token for `browser_id` under any key of the ring (a form shown
    /// before a rotation still posts).
    pub fn csrf_valid(&self, browser_id: &str, token: &str) -> bool {
        let keys = self
            .csrf_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        keys.keys.iter().any(|k| {
            crate::crypto::equal(&crate::crypto::mac(k, &format!("csrf:{browser_id}")), token)
        })
    }

    /// The signer for the current key ring.
    pub fn signer(&self) -> Arc<Signer> {
        self.signer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the key rings (rotating them when due) and swaps in the result.
    pub async fn refresh_keys(&self) -> Result<(), crate::identity::assertion::Error> {
        let (signer, csrf) = load_keys(&self.config, &self.store).await?;
        if signer.kid() != self.signer().kid() {
            tracing::info!(
                kid = signer.kid(),
                "assertions are now signed with a new key"
            );
        }
        *self.signer.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(signer);
        *self.csrf_keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(csrf);
        Ok(())
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

/// The identity header cache's key: everything the headers say, NUL-separated. None when a part
/// holds a NUL itself (two different identities could then share a key): such headers are made
/// afresh every time.
fn identity_cache_key(
    style: crate::config::IdentityHeaders,
    who: &Identity,
    audience: &str,
) -> Option<String> {
    use crate::config::IdentityHeaders;
    let style = match style {
        IdentityHeaders::Castellan => "c",
        IdentityHeaders::GoogleIap => "g",
    };
    let parts = [
        style,
        &who.provider,
        &who.subject,
        &who.email,
        who.hd.as_deref().unwrap_or(""),
        audience,
    ];
    let mut key = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for part in parts {
        key.push_str(part);
        key.push('\0');
    }
    (key.bytes().filter(|&b| b == 0).count() == parts.len()).then_some(key)
}

#[cfg(test)]
mod tests {
    #[test]
    fn identity_cache_keys_never_mistake_one_person_for_another() {
        use crate::config::IdentityHeaders::{Castellan, GoogleIap};
        let who = |subject: &str, email: &str| Identity {
            email: email.into(),
            subject: subject.into(),
            provider: "idp".into(),
            groups: vec![],
            hd: None,
        };
        let a = identity_cache_key(Castellan, &who("a", "a@x.com"), "aud").unwrap();
        assert_ne!(
            Some(a.clone()),
            identity_cache_key(Castellan, &who("b", "a@x.com"), "aud")
        );
        assert_ne!(
            Some(a.clone()),
            identity_cache_key(GoogleIap, &who("a", "a@x.com"), "aud")
        );
        assert_ne!(
            Some(a),
            identity_cache_key(Castellan, &who("a", "a@x.com"), "other")
        );
        // With NUL inside a claim these two would join to the same string: neither is cached.
        assert_eq!(
            identity_cache_key(Castellan, &who("s\0e", "x"), "aud"),
            None
        );
        assert_eq!(
            identity_cache_key(Castellan, &who("s", "e\0x"), "aud"),
            None
        );
    }

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
