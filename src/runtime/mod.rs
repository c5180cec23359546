//! Shared state for every request, split by concern: the policy snapshot and its reloads
//! ([`reload`]), the session cache ([`sessions`]), signing and CSRF keys and the identity-header
//! cache ([`keys`]), the audit writer, metrics, live connections, TLS certificates and the
//! upstream connection pool. Knows no request handling: the gate, castellan's endpoints and the
//! admin pages use it.
//!
//! May use: web, identity, store, policy, config and the leaves.

pub mod audit;
pub mod audit_sinks;
pub mod balance;
mod directories;
pub mod keys;
pub mod live;
pub mod metrics;
pub mod provider_tokens;
pub mod reload;
mod revalidation;
pub mod sessions;
pub mod tls;
mod tokens;
pub mod traces;
pub mod upstream;

use crate::crypto::FastMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::{App, Config};
use crate::identity::assertion::Signer;
use crate::identity::local::Limiter;
use crate::identity::{directory, google, oidc};
use crate::policy::snapshot::Snapshot;
use crate::store::Store;
use crate::web::cookies::CookieNames;
use crate::web::guard;
use audit::AuditSink;
use live::Registry;
use metrics::Metrics;

/// How often the store is checked for changes made by any process.
pub const ACCESS_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long in-flight requests get to finish after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a session read from the store is trusted without reading it again.
pub const SESSION_CACHE_TTL: Duration = Duration::from_secs(2);
/// How long a signed assertion is reused (it stays valid for at least four more minutes).
pub const ASSERTION_REUSE_SECS: i64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Keys(#[from] crate::identity::assertion::Error),
    #[error("cannot load the TLS certificate: {0}")]
    Tls(String),
    #[error("{0}")]
    Directory(String),
    #[error("app {0}: {1}")]
    Upstream(String, String),
}

/// Everything a request needs, shared by all connections. A configuration reload makes a new
/// one that keeps what outlives a configuration (see [`State::reconfigure`]).
pub struct State {
    pub config: Config,
    pub store: Store,
    pub providers: Vec<oidc::Client>,
    /// Where `group:` memberships come from besides castellan's groups and providers' claims.
    pub directories: Vec<directory::Directory>,
    pub metrics: Arc<Metrics>,
    /// Connections to the apps.
    pub upstream: upstream::Pool,
    pub cookies: CookieNames,
    /// Wrong passwords and codes: per account (for clients without a device cookie) and per
    /// client address.
    pub account_limiter: Arc<Limiter>,
    pub ip_limiter: Arc<Limiter>,
    pub audit: AuditSink,
    pub live: Arc<Registry>,
    /// The connections of apps that have their own (`upstream_ca`, a client certificate, a
    /// connect timeout), by app id; the others share [`State::upstream`].
    app_pools: FastMap<String, upstream::Pool>,
    /// The pools of apps with several upstreams or a health check, by app id; see [`balance`].
    pub balancers: FastMap<String, Arc<balance::Balancer>>,
    /// One refresh of a sign-in's grant at a time; see [`provider_tokens`].
    pub refresh_locks: Arc<provider_tokens::RefreshLocks>,
    /// For providers, access-request notifications and upstream health probes.
    pub http: reqwest::Client,
    /// Starts requests' traces when `[tracing]` is configured; see [`traces`].
    pub tracer: Option<Arc<traces::Tracer>>,
    /// ID tokens for private upstreams, access tokens for directories.
    pub metadata: Arc<google::Metadata>,
    /// The certificates served with `[tls]`.
    pub certs: Option<Arc<tls::Certs>>,
    /// Notified on SIGHUP: re-read certificate files.
    pub reload_signal: Arc<tokio::sync::Notify>,
    /// Woken when another replica announces a change (the store's change feed), to reload at once.
    pub changed: Arc<tokio::sync::Notify>,
    /// The assertion signer for the current key ring (swapped when keys rotate).
    signer: RwLock<Arc<Signer>>,
    /// CSRF keys from the store's key ring.
    csrf_keys: RwLock<Arc<guard::Keys>>,
    /// Identity headers recently made; see [`keys`].
    identity_cache: keys::IdentityCache,
    snapshot: RwLock<Arc<Snapshot>>,
    /// People provisioned over SCIM as inactive, read with the snapshot (so a request never
    /// asks the store).
    deactivated: RwLock<Arc<std::collections::HashSet<String>>>,
    /// The store revision the snapshot was built from (-1: none yet).
    revision: AtomicI64,
    /// Serialises reloads, so a slow one can never replace a newer snapshot with an older one.
    reload_lock: tokio::sync::Mutex<()>,
    /// Sessions recently read from the store; see [`sessions`].
    session_cache: sessions::Cache,
    /// Access tokens recently verified; see [`tokens`].
    verified_tokens: tokens::Verified,
    /// Whether the store answered lately; see [`State::store_usable`].
    store_health: Arc<reload::StoreHealth>,
}

/// What a configuration reload hands from one [`State`] to the next.
struct Shared {
    store: Store,
    metrics: Arc<Metrics>,
    account_limiter: Arc<Limiter>,
    ip_limiter: Arc<Limiter>,
    audit: AuditSink,
    live: Arc<Registry>,
    refresh_locks: Arc<provider_tokens::RefreshLocks>,
    certs: Option<Arc<tls::Certs>>,
    reload_signal: Arc<tokio::sync::Notify>,
    changed: Arc<tokio::sync::Notify>,
    store_health: Arc<reload::StoreHealth>,
    tracer: Option<Arc<traces::Tracer>>,
}

impl State {
    /// Sets the upstream pool gauges from the pools as they are now (at each scrape; an app that
    /// left the configuration leaves the gauges with it).
    pub fn refresh_upstream_metrics(&self) {
        use metrics::UpstreamLabels;
        self.metrics.upstream_in_pool.clear();
        self.metrics.upstream_outstanding.clear();
        for (app, balancer) in &self.balancers {
            for t in balancer.states() {
                let labels = UpstreamLabels {
                    app: app.clone(),
                    upstream: t.url,
                };
                self.metrics
                    .upstream_in_pool
                    .get_or_create(&labels)
                    .set(i64::from(t.in_pool));
                self.metrics
                    .upstream_outstanding
                    .get_or_create(&labels)
                    .set(t.outstanding as i64);
            }
        }
    }

    /// A state for tests: the configuration `toml` (no environment) on a SQLite store in a
    /// temporary folder, which lives as long as the returned `TempDir`.
    #[cfg(test)]
    pub(crate) async fn for_tests(toml: &str) -> (tempfile::TempDir, Arc<State>) {
        let (dir, store) = crate::store::temp_store().await;
        let config = Config::parse(toml, dir.path(), &crate::config::NoEnv).unwrap();
        let state = State::new(config, store).await.unwrap();
        (dir, state)
    }

    pub async fn new(config: Config, store: Store) -> Result<Arc<State>, Error> {
        let metrics = Arc::new(Metrics::new());
        let certs = match config.tls.as_ref().map(|t| &t.certificates) {
            None => None,
            Some(crate::config::Certificates::Files { cert, key }) => {
                let certs = Arc::new(tls::Certs::default());
                tls::load_files(&certs, cert, key).map_err(Error::Tls)?;
                Some(certs)
            }
            Some(crate::config::Certificates::Acme(_)) => Some(Arc::new(tls::Certs::default())),
        };
        let shared = Shared {
            // Five wrong passwords per account, twenty per client address, in five minutes.
            account_limiter: Arc::new(Limiter::new(5, Duration::from_secs(300))),
            ip_limiter: Arc::new(Limiter::new(20, Duration::from_secs(300))),
            audit: AuditSink::start(
                store.clone(),
                audit::Spool::new(&config.audit_spool, &config.store),
                metrics.audit_dropped.clone(),
                metrics.audit_spooled.clone(),
                metrics.audit_set_aside.clone(),
            ),
            live: Arc::new(Registry::default()),
            refresh_locks: Arc::default(),
            certs,
            reload_signal: Arc::new(tokio::sync::Notify::new()),
            changed: Arc::new(tokio::sync::Notify::new()),
            store_health: Arc::new(reload::StoreHealth::new()),
            tracer: config.tracing.as_ref().map(|t| {
                Arc::new(traces::Tracer::start(
                    t,
                    metrics.trace_spans_exported.clone(),
                    metrics.trace_spans_dropped.clone(),
                ))
            }),
            metrics,
            store,
        };
        State::build(config, shared).await
    }

    /// A state for `config` that keeps everything that outlives a configuration: the store, live
    /// connections, the audit writer, metrics, rate limits, certificates. Settings that need a
    /// restart (listen addresses, store, TLS) keep their running values, with a warning.
    pub async fn reconfigure(&self, mut config: Config) -> Result<Arc<State>, Error> {
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
        if config.tracing != old.tracing {
            kept.push("[tracing]");
            config.tracing = old.tracing.clone();
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
                refresh_locks: self.refresh_locks.clone(),
                certs: self.certs.clone(),
                reload_signal: self.reload_signal.clone(),
                changed: self.changed.clone(),
                store_health: self.store_health.clone(),
                tracer: self.tracer.clone(),
            },
        )
        .await
    }

    async fn build(config: Config, shared: Shared) -> Result<Arc<State>, Error> {
        let Shared {
            store,
            metrics,
            account_limiter,
            ip_limiter,
            audit,
            live,
            refresh_locks,
            certs,
            reload_signal,
            changed,
            store_health,
            tracer,
        } = shared;
        let (signer, csrf_keys) = keys::load(&config, &store).await?;
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
        let metadata = Arc::new(google::Metadata::new(&config.google_metadata_url));
        let directories = config
            .directories
            .iter()
            .map(|d| directory::Directory::new(d.clone(), http.clone(), metadata.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Directory(e.to_string()))?;
        // Apps whose connections are their own: a connect timeout, CA or client certificate.
        let mut app_pools = FastMap::default();
        for a in &config.apps {
            if a.connection.own_pool(config.upstream_connect_timeout) {
                let pool = upstream::Pool::for_app(&a.connection)
                    .map_err(|e| Error::Upstream(a.id.to_string(), e))?;
                app_pools.insert(a.id.to_string(), pool);
            }
        }
        // Apps with a pool of upstreams or a health check, each with its health-check task
        // (which ends with this state).
        let balancers: FastMap<String, Arc<balance::Balancer>> = config
            .apps
            .iter()
            .filter(|a| a.upstreams.len() > 1 || a.health_check.is_some())
            .map(|a| {
                let b = Arc::new(balance::Balancer::new(a));
                if let Some(hc) = &a.health_check {
                    tokio::spawn(balance::health_checks(
                        a.clone(),
                        hc.clone(),
                        Arc::downgrade(&b),
                    ));
                }
                (a.id.to_string(), b)
            })
            .collect();
        let state = Arc::new(State {
            app_pools,
            balancers,
            directories,
            certs,
            reload_signal,
            cookies: CookieNames::new(config.secure_cookies()),
            upstream: upstream::Pool::for_apps(config.upstream_connect_timeout),
            account_limiter,
            ip_limiter,
            audit,
            metadata,
            http,
            metrics,
            live,
            refresh_locks,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            deactivated: RwLock::new(Arc::default()),
            revision: AtomicI64::new(-1),
            reload_lock: tokio::sync::Mutex::new(()),
            session_cache: sessions::Cache::default(),
            verified_tokens: tokens::Verified::default(),
            store_health,
            tracer,
            changed,
            identity_cache: keys::IdentityCache::default(),
            signer: RwLock::new(Arc::new(signer)),
            csrf_keys: RwLock::new(Arc::new(csrf_keys)),
            providers,
            config,
            store,
        });
        state.reload().await.map_err(|e| Error::Keys(e.into()))?;
        // Each audit sink's delivery, for as long as this configuration is in use.
        for sink in &state.config.audit_sinks {
            tokio::spawn(audit_sinks::run(Arc::downgrade(&state), sink.clone()));
        }
        Ok(state)
    }

    pub fn provider(&self, id: &str) -> Option<&oidc::Client> {
        self.providers.iter().find(|p| p.config.id == id)
    }

    /// The connections to `app`'s upstreams.
    pub fn pool_for(&self, app: &crate::config::App) -> &upstream::Pool {
        self.app_pools.get(&*app.id).unwrap_or(&self.upstream)
    }

    /// Whether sign-ins keep the provider's access token: only while some app asks for it.
    pub fn keeps_provider_tokens(&self) -> bool {
        self.config.apps.iter().any(|a| a.provider_tokens.wanted())
    }

    /// Whether `host` (lower case, no port) is castellan's own: the host of `public_url`, where
    /// the sign-in pages, the account page, the console and the admin API live and no app is
    /// served.
    pub fn is_console_host(&self, host: &str) -> bool {
        self.config.public_url.host_str() == Some(host)
    }

    /// The app that serves `host` and `path`: an exact `host` beats a wildcard one; then the
    /// longest prefix. castellan's own host serves no app, even one a wildcard names.
    pub fn match_app(&self, host: &str, path: &str) -> Option<&App> {
        if self.is_console_host(host) {
            return None;
        }
        let rank = |a: &App| {
            if a.host == host {
                Some(1)
            } else if a.serves_host(host) {
                Some(0)
            } else {
                None
            }
        };
        self.config
            .apps
            .iter()
            .filter(|a| prefix_matches(&a.path_prefix, path))
            .filter_map(|a| rank(a).map(|r| (r, a)))
            .max_by_key(|(r, a)| (*r, a.path_prefix.len()))
            .map(|(_, a)| a)
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
