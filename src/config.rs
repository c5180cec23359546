//! Reads `castellan.toml` into a validated [`Config`]: every error at once, each with its key path and the fix.
//!
//! The file is walked by hand rather than through `serde(deny_unknown_fields)` so that one run reports every
//! unknown key, every wrong type and every bad value together, instead of stopping at the first.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Value;

use crate::net::IpNet;
use crate::policy::StepUp;
use crate::policy::access_level::{AccessLevel, Window};
use url::Url;

/// The validated configuration. Everything the server sees has been checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// How browsers reach castellan: scheme, host and port, no path.
    pub public_url: Url,
    pub store: StoreLocation,
    /// How long decisions continue from the last applied snapshot while the store cannot be
    /// reached; after that every protected request is refused until it is back.
    pub store_outage_grace: Duration,
    /// Where decision records wait while the store cannot take them (flushed on recovery).
    pub audit_spool: PathBuf,
    /// How often the assertion signing key and the CSRF key are replaced.
    pub key_rotation: Duration,
    pub local_accounts: bool,
    /// Local accounts must use a second factor (TOTP): `local_accounts_mfa = "required"`.
    pub local_accounts_mfa_required: bool,
    pub trusted_proxies: Vec<IpNet>,
    pub session_lifetime: Duration,
    pub session_idle_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_timeout: Duration,
    /// How many tunnels one person (or service account) may hold open at once, per replica.
    pub max_tunnels_per_person: usize,
    /// How often castellan pings an idle tunnel, under the idle timeout of every load balancer
    /// on the way; a client silent for three intervals is dropped.
    pub tunnel_keepalive: Duration,
    pub metrics_listen: Option<SocketAddr>,
    /// How long audit records are kept.
    pub audit_retention: Duration,
    /// Where new access requests are announced (a JSON POST, Slack-compatible).
    pub access_request_webhook: Option<Url>,
    /// The Google metadata server, for `upstream_auth = "google-id-token"`.
    pub google_metadata_url: String,
    /// Members who hold roles/admin on the global policy by configuration: the way to a first
    /// administrator where no command line can reach the store (Cloud Run).
    pub admins: Vec<crate::policy::Member>,
    pub providers: Vec<Provider>,
    /// Where `group:` memberships come from besides castellan's own groups and the providers'
    /// claims: directories asked about each signed-in person.
    pub directories: Vec<Directory>,
    /// Named requirements on a request's context that conditions reference (`[[access_levels]]`).
    pub access_levels: Vec<AccessLevel>,
    /// Where the audit trail is streamed to (`[[audit_sinks]]`).
    pub audit_sinks: Vec<AuditSink>,
    /// OpenTelemetry traces (`[tracing]`); None: off, and nothing is recorded.
    pub tracing: Option<Tracing>,
    /// The bearer token SCIM clients present at `/.castellan/scim/v2/` (None: SCIM is off).
    pub scim_token: Option<Secret>,
    pub apps: Vec<App>,
    /// HTTPS on `listen`, with certificates from files or ACME.
    pub tls: Option<Tls>,
    /// The ingress that asks `/.castellan/auth` (forward-auth), if any: it decides which headers
    /// describe the original request.
    pub forward_auth: Option<ForwardAuth>,
}

/// The ingress in front of castellan that uses forward-auth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardAuth {
    /// nginx `auth_request`: `X-Original-Method`, `X-Original-URI`, `X-Forwarded-Host`, `-Proto`.
    Nginx,
    /// Traefik `forwardAuth`: `X-Forwarded-Method`, `-Uri`, `-Host`, `-Proto`.
    Traefik,
    /// Caddy `forward_auth`: `X-Forwarded-Method`, `-Uri`, `-Host`, `-Proto`.
    Caddy,
}

impl ForwardAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardAuth::Nginx => "nginx",
            ForwardAuth::Traefik => "traefik",
            ForwardAuth::Caddy => "caddy",
        }
    }
}

/// `[tls]`: where certificates come from, and the plain-HTTP listener beside HTTPS.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub certificates: Certificates,
    /// A plain-HTTP listener that redirects to HTTPS (and answers ACME HTTP-01 challenges).
    pub http_listen: Option<SocketAddr>,
    /// `Strict-Transport-Security` max-age; zero sends none.
    pub hsts: Duration,
    /// CA certificates (PEM) that client certificates are verified against: with it, the
    /// listener asks browsers for a certificate (without requiring one), for access levels.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Certificates {
    /// PEM files, reloaded when they change and on SIGHUP.
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    Acme(Acme),
}

/// Automatic certificates from an ACME CA (Let's Encrypt by default).
#[derive(Debug, Clone, PartialEq)]
pub struct Acme {
    pub domains: Vec<String>,
    pub email: Option<String>,
    pub directory: String,
    /// A PEM root for a private or test CA's ACME endpoint.
    pub ca_root: Option<PathBuf>,
    pub challenge: AcmeChallenge,
}

impl Acme {
    /// Whether the certificate covers `host` (a `*.` domain covers one label in its place).
    pub fn covers(&self, host: &str) -> bool {
        self.domains.iter().any(|d| match d.strip_prefix("*.") {
            Some(base) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == base),
            None => d == host,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum AcmeChallenge {
    /// Answered on `http_listen` (port 80 in production).
    Http01,
    /// Answered in the TLS handshake on `listen` (port 443 in production).
    TlsAlpn01,
    /// A TXT record written through a DNS provider: the one challenge that proves wildcards.
    Dns01(DnsProvider),
}

/// Where DNS-01's TXT records are written.
#[derive(Debug, Clone, PartialEq)]
pub enum DnsProvider {
    /// RFC 2136 dynamic updates, signed with a TSIG key, to the zone's primary server
    /// (`host:port`, port 53 by default).
    Rfc2136 { server: String, key: TsigKey },
}

/// A TSIG key (RFC 8945): its name as the DNS server knows it, the algorithm and the secret.
#[derive(Clone, PartialEq)]
pub struct TsigKey {
    pub name: String,
    pub algorithm: TsigAlgorithm,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TsigKey({}, {}, secret hidden)",
            self.name,
            self.algorithm.name()
        )
    }
}

/// The TSIG algorithms castellan signs with (RFC 8945 §6: HMAC-SHA256 is the one to use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl TsigAlgorithm {
    const ALL: [TsigAlgorithm; 3] = [
        TsigAlgorithm::HmacSha256,
        TsigAlgorithm::HmacSha384,
        TsigAlgorithm::HmacSha512,
    ];

    /// Its name as BIND's `tsig-keygen -a` and TSIG records write it.
    pub fn name(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha384 => "hmac-sha384",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }

    pub fn parse(name: &str) -> Option<TsigAlgorithm> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// Where Google's metadata server is when nothing says otherwise.
pub const DEFAULT_METADATA_URL: &str = "http://metadata.google.internal";

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Where castellan keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite database file (created when missing).
    Sqlite(PathBuf),
    /// A PostgreSQL database, shared by every replica (`postgres://USER:PASSWORD@HOST/DB`).
    Postgres(url::Url),
}

impl StoreLocation {
    /// Parses a store URL; a relative SQLite path is taken relative to `base`.
    pub fn parse(s: &str, base: &Path) -> Result<StoreLocation, String> {
        if let Some(path) = s.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(
                    "the SQLite path is empty: write e.g. \"sqlite://castellan.db\"".into(),
                );
            }
            let path = Path::new(path);
            return Ok(StoreLocation::Sqlite(if path.is_absolute() {
                path.to_path_buf()
            } else {
                base.join(path)
            }));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            let url = url::Url::parse(s).map_err(|e| {
                format!("`{}` is not a PostgreSQL URL ({e}): write \"postgres://USER:PASSWORD@HOST:5432/DATABASE\"", redact(s))
            })?;
            if url.host_str().is_none_or(str::is_empty)
                || url.path().trim_start_matches('/').is_empty()
            {
                return Err(format!(
                    "`{}` names no host or database: write \"postgres://USER:PASSWORD@HOST:5432/DATABASE\"",
                    redact(s)
                ));
            }
            return Ok(StoreLocation::Postgres(url));
        }
        Err(format!(
            "`{}` is not a store URL: write \"sqlite://PATH\" (relative paths are relative to the config file's folder) or \"postgres://USER:PASSWORD@HOST:5432/DATABASE\"",
            redact(s)
        ))
    }
}

/// `s` with anything between `://` and `@` masked, so passwords never reach logs or errors.
fn redact(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(a), Some(b)) if b > a => format!("{}://***{}", &s[..a], &s[b..]),
        _ => s.to_string(),
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            StoreLocation::Postgres(url) => {
                let mut shown = url.clone();
                if url.password().is_some() {
                    let _ = shown.set_password(Some("***"));
                }
                write!(f, "{shown}")
            }
        }
    }
}

/// A directory castellan asks which groups a person is in (transitively), on sign-in and every
/// `refresh`; its answers count for `grace` when it cannot be reached.
#[derive(Debug, Clone)]
pub struct Directory {
    pub id: String,
    pub kind: DirectoryKind,
    pub refresh: Duration,
    pub grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryKind {
    /// Google Workspace / Cloud Identity groups, through the Cloud Identity Groups API.
    Google {
        /// A service account's JSON key file; None: the metadata server's service account.
        credentials: Option<PathBuf>,
        /// The API's base URL (a Private Service Connect endpoint, or a test double).
        endpoint: String,
    },
    /// Microsoft Entra ID groups, through Microsoft Graph.
    Microsoft(MicrosoftDirectory),
}

/// An Entra ID tenant's Graph, asked with an app registration's client credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct MicrosoftDirectory {
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
    /// Microsoft Graph's base URL (a national cloud's, or a test double).
    pub endpoint: String,
    /// Where tokens come from: `{authority}/{tenant}/oauth2/v2.0/token`.
    pub authority: String,
}

impl fmt::Debug for MicrosoftDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MicrosoftDirectory")
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Microsoft Graph and the Entra ID token endpoints.
pub const GRAPH_URL: &str = "https://graph.microsoft.com";
pub const ENTRA_AUTHORITY: &str = "https://login.microsoftonline.com";

/// A secret from the configuration: compared, never shown (`Debug` prints `<redacted>`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Google's Cloud Identity API.
pub const CLOUD_IDENTITY_URL: &str = "https://cloudidentity.googleapis.com";

/// One OpenID Connect provider.
#[derive(Clone)]
pub struct Provider {
    pub id: String,
    pub display_name: String,
    /// Exactly as configured: compared verbatim with the discovery document and the ID token's `iss`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
    pub require_verified_email: bool,
    /// The ID-token (or userinfo) claim that lists the person's groups, for `group:` members.
    pub groups_claim: Option<String>,
    /// Audiences of this provider's ID tokens that programs may present as bearer tokens.
    pub programmatic_audiences: Vec<String>,
    /// How often a session's grant is refreshed at the provider (when it granted a refresh
    /// token: `offline_access` in `scopes`); a refusal ends the session.
    pub revalidate: Duration,
    /// ID-token claims kept with the session, for conditions (`request.auth.claims.NAME`).
    pub claims: Vec<String>,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("id", &self.id)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("groups_claim", &self.groups_claim)
            .finish()
    }
}

/// One protected upstream app.
#[derive(Debug, Clone)]
pub struct App {
    pub id: std::sync::Arc<str>,
    /// `scheme://host:port` of the app (never empty; several for a pool of a web app's
    /// replicas); the request path is forwarded unchanged.
    pub upstreams: Vec<Url>,
    /// How each upstream is checked (`health_check`), if at all.
    pub health_check: Option<HealthCheck>,
    /// How castellan connects to the upstreams: timeouts, and for `https://` ones the CA and
    /// client certificate.
    pub connection: UpstreamConnection,
    /// Match on the `Host` header (lower case, no port); `*.example.com` matches every name one
    /// label below example.com. Never castellan's own host (public_url's).
    pub host: String,
    /// Match on the request path; the longest matching prefix wins.
    pub path_prefix: String,
    /// The `aud` of the identity assertion sent to this app.
    pub audience: String,
    /// Which identity headers the app receives.
    pub identity_headers: IdentityHeaders,
    /// How castellan authenticates itself to the upstream, if at all.
    pub upstream_auth: Option<UpstreamAuth>,
    /// Origins whose scripts may call this app with the person's credentials (CORS).
    pub cors_origins: Vec<String>,
    /// A sign-in older than this must be repeated before the app opens (`reauth_max_age`, or the
    /// top-level default).
    pub reauth_max_age: Option<Duration>,
    /// How the person must have signed in (`require_second_factor`, `require_passkey`,
    /// `require_acr`): a sign-in that lacks it is taken through it first.
    pub step_up: StepUp,
    /// Headers set on or removed from what goes to the app and what comes back from it.
    pub headers: HeaderRules,
    /// What the app learns of the person beyond email and id: claims added to the assertion
    /// (`assertion_claims`) and sent as headers (`claim_headers`, header → claim).
    pub claims: AppClaims,
    /// The person's own tokens from their sign-in provider, sent to the app (opt-in).
    pub provider_tokens: ProviderTokens,
}

/// Traces exported to an OpenTelemetry collector over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// Where spans are POSTed: `otlp_endpoint`, with `/v1/traces` added when it has no path.
    pub endpoint: Url,
    /// The share of new traces recorded, 0 to 1; a trusted proxy's `traceparent` decides for the
    /// traces it starts.
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Headers sent with every export (a vendor's API key, say).
    pub headers: Vec<(http::HeaderName, Secret)>,
}

/// A place the audit trail is delivered to, every record in order, at least once.
#[derive(Debug, Clone)]
pub struct AuditSink {
    pub id: String,
    pub kind: AuditSinkKind,
    /// Records per delivery.
    pub batch: usize,
}

#[derive(Debug, Clone)]
pub enum AuditSinkKind {
    /// JSON batches POSTed to `url`, signed with `secret` (HMAC-SHA256) when there is one.
    Webhook { url: Url, secret: Option<Secret> },
    /// JSON lines appended to `path`, which is rotated at `max_size` bytes, `keep` old files kept.
    File {
        path: PathBuf,
        max_size: u64,
        keep: usize,
    },
    /// RFC 5424 messages over TCP (`tcp://HOST:PORT`) or TLS (`tls://HOST:PORT`, RFC 5425),
    /// octet-counted (RFC 6587); TLS verified against `ca` or the system's roots.
    Syslog { address: Url, ca: Option<PathBuf> },
}

/// How castellan reaches an app's upstreams.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConnection {
    /// `upstream_connect_timeout` (the app's, else the top-level one).
    pub connect_timeout: Duration,
    /// `upstream_timeout` (the app's, else the top-level one): until the response headers.
    pub timeout: Duration,
    /// `upstream_ca`: PEM certificates that `https://` upstreams are verified against instead of
    /// the system's roots.
    pub ca: Option<PathBuf>,
    /// `upstream_client_cert` and `upstream_client_key`: presented to `https://` upstreams that
    /// ask for a client certificate (mTLS to the app).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl UpstreamConnection {
    /// Whether the app needs connections of its own (not the shared pool's): its own
    /// connect timeout, CA or client certificate.
    pub fn own_pool(&self, default_connect_timeout: Duration) -> bool {
        self.ca.is_some()
            || self.client_cert.is_some()
            || self.connect_timeout != default_connect_timeout
    }
}

/// An app's active health check: `GET path` on each upstream every `interval`; `unhealthy`
/// failures in a row (an error, a timeout, a status of 500 or more) take it out of the pool,
/// `healthy` successes put it back.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy: u32,
    pub unhealthy: u32,
}

/// What an app asks of the person's provider tokens: the headers that carry their access token
/// (`access_token_header`) and ID token (`id_token_header`), and the scopes its access token needs
/// beyond the provider's (`provider_scopes`, asked for when a sign-in is for this app).
#[derive(Debug, Clone, Default)]
pub struct ProviderTokens {
    pub access_token_header: Option<http::HeaderName>,
    pub id_token_header: Option<http::HeaderName>,
    pub scopes: Vec<String>,
}

impl ProviderTokens {
    /// Whether the app asks for any token.
    pub fn wanted(&self) -> bool {
        self.access_token_header.is_some() || self.id_token_header.is_some()
    }

    /// The headers castellan alone fills for this app (a client's copies are removed).
    pub fn headers(&self) -> impl Iterator<Item = &http::HeaderName> {
        self.access_token_header
            .iter()
            .chain(self.id_token_header.iter())
    }
}

/// The claims an app asks for (`groups`, `amr`, `acr`, or one a provider's `claims` keeps).
#[derive(Debug, Clone, Default)]
pub struct AppClaims {
    pub assertion: Vec<String>,
    pub headers: Vec<(http::HeaderName, String)>,
}

impl AppClaims {
    pub fn is_empty(&self) -> bool {
        self.assertion.is_empty() && self.headers.is_empty()
    }

    /// Every claim named, each once.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        let mut seen = HashSet::new();
        self.assertion
            .iter()
            .map(String::as_str)
            .chain(self.headers.iter().map(|(_, c)| c.as_str()))
            .filter(move |c| seen.insert(*c))
    }
}

/// Claims castellan's assertions carry already (or that JWT reserves): an app cannot ask for them
/// under these names.
const ASSERTION_OWN_CLAIMS: &[&str] = &[
    "iss", "aud", "sub", "email", "provider", "iat", "exp", "nbf", "jti", "hd", "google",
];

/// An app's header rules (`set_request_headers`, `remove_request_headers`,
/// `set_response_headers`, `remove_response_headers`), applied when castellan proxies to it.
/// They never touch castellan's own headers: the configuration refuses identity, forwarding,
/// hop-by-hop and cookie headers, and castellan's identity headers are added after the rules.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    pub set_request: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove_request: Vec<http::HeaderName>,
    pub set_response: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove_response: Vec<http::HeaderName>,
}

impl HeaderRules {
    /// Applies the request rules: removals first, then the values set (replacing what the client
    /// sent under that name).
    pub fn to_request(&self, headers: &mut http::HeaderMap) {
        Self::apply(&self.remove_request, &self.set_request, headers);
    }

    /// Applies the response rules, the same way, to the app's answer.
    pub fn to_response(&self, headers: &mut http::HeaderMap) {
        Self::apply(&self.remove_response, &self.set_response, headers);
    }

    fn apply(
        remove: &[http::HeaderName],
        set: &[(http::HeaderName, http::HeaderValue)],
        headers: &mut http::HeaderMap,
    ) {
        for name in remove {
            headers.remove(name);
        }
        for (name, value) in set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Why a header name cannot be in an app's header rules, if it cannot: castellan owns it.
fn reserved_header(name: &str, setting: bool) -> Option<&'static str> {
    let identity = ["x-castellan-", "x-goog-iap-", "x-goog-authenticated-"];
    if identity
        .iter()
        .any(|p| name.replace('_', "-").starts_with(p))
    {
        return Some(
            "it is one of castellan's identity headers, which castellan alone sets (and strips from everything else)",
        );
    }
    match name {
        "connection"
        | "keep-alive"
        | "proxy-connection"
        | "proxy-authenticate"
        | "proxy-authorization"
        | "te"
        | "trailer"
        | "transfer-encoding"
        | "upgrade" => Some(
            "it is a hop-by-hop header, which describes one connection and is castellan's to manage",
        ),
        "host" | "content-length" => Some("castellan sets it from the request it forwards"),
        "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "forwarded" => Some(
            "castellan sets it from the connection (and trusted_proxies), so the app can rely on it",
        ),
        "cookie" | "set-cookie" if setting => Some(
            "castellan guards cookies (its own are never passed to the app nor set by it); set cookies in the app",
        ),
        _ => None,
    }
}

/// What an app is, by its upstream's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppKind {
    /// `http://` or `https://`: castellan proxies requests (and WebSockets) to it.
    Web,
    /// `tcp://HOST:PORT`: castellan opens a TCP connection per tunnel (`castellan tunnel`).
    Tcp,
}

impl App {
    /// The app's (first) upstream: a TCP app's only one.
    pub fn upstream(&self) -> &Url {
        &self.upstreams[0]
    }

    pub fn kind(&self) -> AppKind {
        if self.upstream().scheme() == "tcp" {
            AppKind::Tcp
        } else {
            AppKind::Web
        }
    }

    /// The role a caller needs to use the app: roles/accessor for a web app,
    /// roles/tunnelAccessor for a TCP app (web access never implies a shell).
    pub fn role(&self) -> crate::policy::Role {
        match self.kind() {
            AppKind::Web => crate::policy::Role::Accessor,
            AppKind::Tcp => crate::policy::Role::TunnelAccessor,
        }
    }

    /// The upstream's `host:port` (a TCP app's).
    pub fn upstream_authority(&self) -> String {
        let host = self.upstream().host_str().unwrap_or_default();
        let port = self.upstream().port_or_known_default().unwrap_or(0);
        format!("{host}:{port}")
    }

    /// Whether a sign-in for this app asks for more than a plain one: a step-up, or the
    /// provider's tokens (with their scopes). The sign-in URL then names the app.
    pub fn asks_at_sign_in(&self) -> bool {
        !self.step_up.is_empty() || self.provider_tokens.wanted()
    }

    /// What conditions see as `destination.ip` and `destination.port`: a TCP app's upstream host
    /// (an address without brackets, or a name) and port; `None` for a web app.
    pub fn destination(&self) -> Option<crate::policy::condition::Destination<'_>> {
        (self.kind() == AppKind::Tcp).then(|| crate::policy::condition::Destination {
            host: self
                .upstream()
                .host_str()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']'),
            port: self.upstream().port_or_known_default().unwrap_or(0),
        })
    }

    /// Whether this app's `host` is `host`, or a `*.` wildcard one label above it. False for apps
    /// without a host (they serve any host).
    pub fn serves_host(&self, host: &str) -> bool {
        self.host == host
            || self.host.strip_prefix("*.").is_some_and(|base| {
                host.split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == base)
            })
    }
}

/// The identity headers an app receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityHeaders {
    /// `X-Castellan-Jwt-Assertion`, `X-Castellan-Email`, `X-Castellan-User`.
    Castellan,
    /// Google IAP's: `x-goog-iap-jwt-assertion`, `x-goog-authenticated-user-email`, `-id`.
    GoogleIap,
}

/// castellan's own credential towards a private upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAuth {
    /// The audience of the Google ID token (Cloud Run: the service URL).
    pub audience: String,
    /// The header that carries it: `authorization` or `x-serverless-authorization`.
    pub header: http::HeaderName,
}

/// Everything wrong with a configuration file, in file order.
#[derive(Debug)]
pub struct Errors {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

/// One thing wrong, at one key.
#[derive(Debug)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{} has {n} error{}:",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            if p.key.is_empty() {
                writeln!(f, "  - {}", p.message)?;
            } else {
                writeln!(f, "  - {}: {}", p.key, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

/// Where configuration values come from besides the file: `${VAR}` expansion reads this.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;

    /// Whether the command reading the configuration uses no secrets but the store's, so an
    /// unset `${VAR}` elsewhere is no problem (see [`Config::load_for_store`]).
    fn secrets_unused(&self) -> bool {
        false
    }
}

/// The process environment.
pub struct ProcessEnv;

/// An environment with no variables: for configurations read without one (tests, fuzzing).
pub struct NoEnv;

impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, Errors> {
        Config::load_with(path, &ProcessEnv)
    }

    /// Reads the file for a command that only opens the store (`access`, `policy`, `users`, …):
    /// an unset `${VAR}` anywhere but in `store` is not a problem, as such commands use no
    /// provider, directory or SCIM secret (such values stay as written, `${VAR}`; the server
    /// and `check-config` still require them).
    pub fn load_for_store(path: &Path) -> Result<Config, Errors> {
        let env = StoreOnly(&ProcessEnv);
        Config::load_with(path, &env)
    }

    /// Reads the configuration: the whole TOML from `CASTELLAN_CONFIG_TOML` when that is set (for
    /// platforms such as Cloud Run that rarely mount files), else the file at `path`.
    pub fn load_with(path: &Path, env: &dyn Env) -> Result<Config, Errors> {
        let (text, base, label) = match env.var(CONFIG_TOML_VAR).filter(|t| !t.trim().is_empty()) {
            Some(text) => (text, PathBuf::from("."), PathBuf::from(CONFIG_TOML_VAR)),
            None => {
                let text = std::fs::read_to_string(path).map_err(|e| Errors {
                    file: path.to_path_buf(),
                    problems: vec![Problem {
                        key: String::new(),
                        message: match e.kind() {
                            std::io::ErrorKind::NotFound => format!(
                                "the file does not exist. Create it (the README has a complete example), point to it with --config FILE or CASTELLAN_CONFIG, or put the whole configuration in {CONFIG_TOML_VAR}"
                            ),
                            _ => format!("cannot read it: {e}"),
                        },
                    }],
                })?;
                (
                    text,
                    path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                    path.to_path_buf(),
                )
            }
        };
        Config::parse(&text, &base, env).map_err(|problems| Errors {
            file: label,
            problems,
        })
    }

    /// Parses TOML text; relative store paths are resolved against `base` (the config file's folder).
    /// `CASTELLAN_<KEY>` environment variables override the top-level keys (see [`ENV_KEYS`]), and
    /// `PORT` (set by Cloud Run) makes the default `listen` `0.0.0.0:$PORT`.
    pub fn parse(text: &str, base: &Path, env: &dyn Env) -> Result<Config, Vec<Problem>> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            vec![Problem {
                key: String::new(),
                message: format!("not valid TOML: {}", e.to_string().trim()),
            }]
        })?;
        let mut problems = Vec::new();
        for key in ENV_KEYS {
            let var = format!("CASTELLAN_{}", key.to_ascii_uppercase());
            let Some(v) = env.var(&var) else { continue };
            let value = match *key {
                "local_accounts" => match v.trim() {
                    "true" => Value::Boolean(true),
                    "false" => Value::Boolean(false),
                    other => {
                        problems.push(Problem {
                            key: var,
                            message: format!("`{other}` is not true or false"),
                        });
                        continue;
                    }
                },
                "trusted_proxies" | "admins" => Value::Array(
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| Value::String(s.into()))
                        .collect(),
                ),
                _ => Value::String(v),
            };
            table.insert((*key).to_string(), value);
        }
        if !table.contains_key("listen")
            && let Some(port) = env.var("PORT").filter(|p| !p.is_empty())
        {
            table.insert("listen".into(), Value::String(format!("0.0.0.0:{port}")));
        }
        let mut r = Reader {
            problems: Vec::new(),
            env,
        };
        let config = r.config(table, base);
        problems.extend(r.problems);
        if problems.is_empty() {
            Ok(config.expect("a config with no problems is complete"))
        } else {
            Err(problems)
        }
    }

    /// The callback URL to register with every OpenID provider.
    pub fn redirect_uri(&self) -> String {
        format!("{}/.castellan/callback", self.public_origin())
    }

    /// Whether `peer` is one of `trusted_proxies`, whose forwarding headers (`X-Forwarded-*`,
    /// `traceparent`) castellan believes.
    pub fn trusts_proxy(&self, peer: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(peer))
    }

    /// `scheme://host[:port]` of `public_url`, without a trailing slash.
    pub fn public_origin(&self) -> String {
        self.public_url.origin().ascii_serialization()
    }

    pub fn secure_cookies(&self) -> bool {
        self.public_url.scheme() == "https"
    }

    /// Whether castellan serves `host` (lower case, no port): the public_url host or an app's.
    pub fn serves_host(&self, host: &str) -> bool {
        self.public_url.host_str() == Some(host) || self.apps.iter().any(|a| a.serves_host(host))
    }

    pub fn app(&self, id: &str) -> Option<&App> {
        self.apps.iter().find(|a| &*a.id == id)
    }
}

/// Whether the configuration comes from [`CONFIG_TOML_VAR`] rather than a file (which is then not
/// watched for changes).
pub fn from_environment() -> bool {
    ProcessEnv
        .var(CONFIG_TOML_VAR)
        .is_some_and(|t| !t.trim().is_empty())
}

/// Whether `NO_COLOR` asks for output without colours (<https://no-color.org>: set and not empty).
pub fn no_color() -> bool {
    ProcessEnv.var("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// The operating-system user running this process, for the audit trail of command-line changes:
/// `$USER`, `$LOGNAME`, or the name /etc/passwd gives its uid (containers often set no `$USER`).
pub fn invoking_user() -> String {
    ProcessEnv
        .var("USER")
        .or_else(|| ProcessEnv.var("LOGNAME"))
        .filter(|u| !u.is_empty())
        .or_else(os_user)
        .unwrap_or_else(|| "unknown".into())
}

fn os_user() -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata("/proc/self").ok()?.uid();
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
            })
            .or(Some(format!("uid {uid}")))
    }
    #[cfg(not(unix))]
    None
}

/// Where `castellan login` keeps the command line's credentials: `$XDG_CONFIG_HOME/castellan`, else
/// `$HOME/.config/castellan`.
pub fn cli_credentials_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|base| base.join("castellan"))
}

/// A service account's key for `castellan tunnel --service-account` (never a command-line
/// argument, which other users of the machine can read).
pub fn service_account_key() -> Option<String> {
    std::env::var("CASTELLAN_SERVICE_ACCOUNT_KEY")
        .ok()
        .filter(|k| !k.is_empty())
}

/// The variable that can hold the whole configuration instead of a file.
pub const CONFIG_TOML_VAR: &str = "CASTELLAN_CONFIG_TOML";

/// Top-level keys that `CASTELLAN_<KEY>` environment variables override (`trusted_proxies` as a
/// comma-separated list). Providers and apps come from the file or `CASTELLAN_CONFIG_TOML`.
pub const ENV_KEYS: &[&str] = &[
    "listen",
    "public_url",
    "store",
    "store_outage_grace",
    "audit_spool",
    "key_rotation",
    "reauth_max_age",
    "local_accounts",
    "local_accounts_mfa",
    "trusted_proxies",
    "session_lifetime",
    "session_idle_timeout",
    "upstream_connect_timeout",
    "upstream_timeout",
    "max_tunnels_per_person",
    "tunnel_keepalive",
    "metrics_listen",
    "audit_retention",
    "access_request_webhook",
    "google_metadata_url",
    "forward_auth",
    "scim_token",
    "admins",
];

struct Reader<'a> {
    problems: Vec<Problem>,
    env: &'a dyn Env,
}

/// The environment as a store-only command sees it (see [`Config::load_for_store`]).
struct StoreOnly<'a>(&'a dyn Env);

impl Env for StoreOnly<'_> {
    fn var(&self, name: &str) -> Option<String> {
        self.0.var(name)
    }

    fn secrets_unused(&self) -> bool {
        true
    }
}

/// Top-level keys the environment cannot override (lists and tables); with [`ENV_KEYS`], every
/// top-level key.
const TRACING_KEYS: &[&str] = &["otlp_endpoint", "sample_ratio", "service_name", "headers"];
const TABLE_KEYS: &[&str] = &[
    "tracing",
    "providers",
    "directories",
    "apps",
    "tls",
    "access_levels",
    "audit_sinks",
];
const DIRECTORY_KEYS: &[&str] = &[
    "id",
    "kind",
    "credentials",
    "endpoint",
    "refresh",
    "grace",
    "tenant",
    "client_id",
    "client_secret",
    "authority",
];
const TLS_KEYS: &[&str] = &["cert", "key", "acme", "http_listen", "hsts", "client_ca"];

const AUDIT_SINK_KEYS: &[&str] = &[
    "id", "kind", "url", "secret", "path", "max_size", "keep", "address", "ca", "batch",
];

const ACCESS_LEVEL_KEYS: &[&str] = &[
    "name",
    "ip_ranges",
    "client_certificate",
    "days",
    "hours",
    "time_zone",
];
const ACME_KEYS: &[&str] = &[
    "domains",
    "email",
    "directory",
    "ca_root",
    "challenge",
    "dns",
];
const ACME_DNS_KEYS: &[&str] = &[
    "provider",
    "server",
    "key_name",
    "key_algorithm",
    "key_secret",
];
const PROVIDER_KEYS: &[&str] = &[
    "id",
    "display_name",
    "issuer",
    "client_id",
    "client_secret",
    "scopes",
    "require_verified_email",
    "groups_claim",
    "claims",
    "programmatic_audiences",
    "revalidate",
];
/// Every `[[apps]]` key: the ones any app takes, then the HTTP-only ones.
const APP_KEYS: &[&str] = &[
    "id",
    "upstream",
    "host",
    "path_prefix",
    "audience",
    "reauth_max_age",
    "require_second_factor",
    "require_passkey",
    "require_acr",
    "upstream_connect_timeout",
    "identity_headers",
    "upstream_auth",
    "upstream_auth_audience",
    "upstream_auth_header",
    "cors_origins",
    "set_request_headers",
    "remove_request_headers",
    "set_response_headers",
    "remove_response_headers",
    "assertion_claims",
    "claim_headers",
    "access_token_header",
    "id_token_header",
    "provider_scopes",
    "health_check",
    "upstream_timeout",
    "upstream_ca",
    "upstream_client_cert",
    "upstream_client_key",
];
/// The keys a TCP app refuses (castellan passes its bytes through, with no HTTP headers): the
/// tail of [`APP_KEYS`] from `identity_headers` on.
fn http_only_app_keys() -> &'static [&'static str] {
    let first = APP_KEYS
        .iter()
        .position(|k| *k == "identity_headers")
        .expect("APP_KEYS names identity_headers");
    &APP_KEYS[first..]
}

impl Reader<'_> {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn config(&mut self, mut t: toml::Table, base: &Path) -> Option<Config> {
        let top: Vec<&str> = ENV_KEYS.iter().chain(TABLE_KEYS).copied().collect();
        self.unknown_keys(&t, "", &top);
        let listen = self
            .socket_addr(&mut t, "", "listen")
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
        let had_public_url = t.contains_key("public_url");
        let mut public_url = self.public_url(&mut t, listen);
        let store = self.store(&mut t, base);
        let store_outage_grace = self
            .duration(&mut t, "", "store_outage_grace")
            .unwrap_or(Duration::from_secs(300));
        let key_rotation = self
            .duration(&mut t, "", "key_rotation")
            .unwrap_or(Duration::from_secs(30 * 86400));
        if key_rotation < Duration::from_secs(2 * 3600) {
            self.problem(
                "key_rotation",
                "keys must live at least \"2h\": a new key is published an hour before it is used. Write e.g. \"30d\"",
            );
        }
        let audit_spool = self
            .string(&mut t, "", "audit_spool")
            .map(|p| base.join(p))
            .unwrap_or_else(|| std::env::temp_dir().join("castellan-audit-spool"));
        let local_accounts = self.boolean(&mut t, "", "local_accounts").unwrap_or(true);
        let local_accounts_mfa_required = match self
            .string(&mut t, "", "local_accounts_mfa")
            .as_deref()
        {
            None | Some("optional") => false,
            Some("required") => true,
            Some(other) => {
                self.problem(
                    "local_accounts_mfa",
                    format!("`{other}` is not a choice: write \"optional\" (people may add a second factor) or \"required\" (everyone sets one up at their next sign-in)"),
                );
                false
            }
        };
        let trusted_proxies = self.trusted_proxies(&mut t);
        let session_lifetime = self
            .duration(&mut t, "", "session_lifetime")
            .unwrap_or(Duration::from_secs(24 * 3600));
        let session_idle_timeout = self
            .duration(&mut t, "", "session_idle_timeout")
            .unwrap_or(Duration::from_secs(8 * 3600));
        let upstream_connect_timeout = self
            .duration(&mut t, "", "upstream_connect_timeout")
            .unwrap_or(Duration::from_secs(5));
        let upstream_timeout = self
            .duration(&mut t, "", "upstream_timeout")
            .unwrap_or(Duration::from_secs(60));
        let max_tunnels_per_person = self
            .count(&mut t, "", "max_tunnels_per_person")
            .unwrap_or(32);
        let tunnel_keepalive = self
            .duration(&mut t, "", "tunnel_keepalive")
            .unwrap_or(Duration::from_secs(20));
        let metrics_listen = self.socket_addr(&mut t, "", "metrics_listen");
        let audit_retention = self
            .duration(&mut t, "", "audit_retention")
            .unwrap_or(Duration::from_secs(90 * 86400));
        let access_request_webhook = self.string(&mut t, "", "access_request_webhook").and_then(|s| {
            match Url::parse(&s) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
                _ => {
                    self.problem(
                        "access_request_webhook",
                        format!("`{s}` is not an http(s) URL: write e.g. \"https://hooks.slack.com/services/T000/B000/XXXX\""),
                    );
                    None
                }
            }
        });
        let admins = self.admins(&mut t);
        // Google's convention: GCE_METADATA_HOST (host[:port]) points every client library at
        // another metadata server, and wins over the file.
        let google_metadata_url = match self.env.var("GCE_METADATA_HOST").filter(|h| !h.is_empty())
        {
            Some(host) => format!("http://{host}"),
            None => self
                .string(&mut t, "", "google_metadata_url")
                .unwrap_or_else(|| DEFAULT_METADATA_URL.to_string()),
        }
        .trim_end_matches('/')
        .to_string();
        let tls = self.tls(&mut t, base);
        if let (Some(tls), false) = (&tls, had_public_url) {
            // HTTPS by default: the first ACME domain, or the listen address.
            let host = match &tls.certificates {
                Certificates::Acme(a) if !a.domains.is_empty() => {
                    match a.domains.iter().find(|d| !d.starts_with("*.")) {
                        Some(d) => d.clone(),
                        None => {
                            let base = &a.domains[0][2..];
                            self.problem("public_url", format!("the ACME domains are all wildcards, so castellan cannot pick a host for its own pages: set public_url = \"https://auth.{base}\" (any host the certificate covers)"));
                            base.to_string()
                        }
                    }
                }
                _ => public_url
                    .as_ref()
                    .and_then(|u| u.host_str())
                    .unwrap_or("127.0.0.1")
                    .to_string(),
            };
            let port = if listen.port() == 443 {
                String::new()
            } else {
                format!(":{}", listen.port())
            };
            public_url = Url::parse(&format!("https://{host}{port}")).ok();
        }
        if tls.is_some() && public_url.as_ref().is_some_and(|u| u.scheme() != "https") {
            self.problem(
                "public_url",
                "with [tls] castellan serves HTTPS: public_url must start with https://, e.g. \"https://apps.example.com\"",
            );
        }
        let had_providers = t.contains_key("providers");
        let providers = self.providers(&mut t);
        let directories = self.directories(&mut t, base);
        let access_levels = self.access_levels(&mut t);
        let audit_sinks = self.audit_sinks(&mut t, base);
        let tracing = self.tracing(&mut t);
        let scim_token = self.string(&mut t, "", "scim_token").and_then(|token| {
            if token.len() < 32 && !self.env.secrets_unused() {
                self.problem(
                    "scim_token",
                    "a SCIM token needs at least 32 characters: make one with `openssl rand -base64 32` and give the same to the identity provider",
                );
                None
            } else {
                Some(Secret(token))
            }
        });
        let forward_auth = match self.string(&mut t, "", "forward_auth").as_deref() {
            None => None,
            Some("nginx") => Some(ForwardAuth::Nginx),
            Some("traefik") => Some(ForwardAuth::Traefik),
            Some("caddy") => Some(ForwardAuth::Caddy),
            Some(other) => {
                self.problem(
                    "forward_auth",
                    format!("`{other}` is not an ingress castellan answers: write \"nginx\", \"traefik\" or \"caddy\" (the one in front of castellan; it decides which headers say what the original request was)"),
                );
                None
            }
        };
        let had_apps = t.contains_key("apps");
        let reauth_default = self.duration(&mut t, "", "reauth_max_age");
        let apps = self.apps(
            &mut t,
            base,
            reauth_default,
            (upstream_connect_timeout, upstream_timeout),
        );
        let client_ca = tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        for (i, level) in access_levels.iter().enumerate() {
            if level.client_certificate && !client_ca {
                self.problem(
                    format!("access_levels[{i}].client_certificate"),
                    format!("access level `{}` asks for a client certificate, which castellan can only verify over HTTPS against the CA that issues them: set [tls] client_ca = \"/etc/castellan/device-ca.pem\"", level.name),
                );
            }
        }
        for (i, app) in apps.iter().enumerate() {
            if app.provider_tokens.wanted() && providers.is_empty() {
                self.problem(
                    format!("apps[{i}]"),
                    format!("app {} asks for the person's provider tokens, which only a sign-in provider gives (local accounts have none): add a [[providers]] entry or remove access_token_header and id_token_header", app.id),
                );
            }
            if !app.step_up.acr.is_empty() && providers.is_empty() {
                self.problem(
                    format!("apps[{i}].require_acr"),
                    format!("app {} asks for an acr, which only a sign-in provider can assert (local accounts have none): add a [[providers]] entry or remove require_acr", app.id),
                );
            }
            for name in app.claims.names() {
                let kept = ["groups", "amr", "acr"].contains(&name)
                    || providers.iter().any(|p| p.claims.iter().any(|c| c == name));
                if !kept {
                    self.problem(
                        format!("apps[{i}]"),
                        format!("app {} asks for claim `{name}`, which no provider keeps: add it to a [[providers]] claims list (groups, amr and acr are always there)", app.id),
                    );
                }
            }
        }

        if let Some(own) = public_url.as_ref().and_then(|u| u.host_str()) {
            for (i, app) in apps.iter().enumerate() {
                if app.host == own {
                    self.problem(
                        format!("apps[{i}].host"),
                        format!("`{own}` is castellan's own host (public_url), where its sign-in, account and console pages live: an app there could read and drive them. Give the app a host of its own (a DNS name pointing at castellan, or \"127.0.0.1\" on this machine), or give castellan one with public_url"),
                    );
                }
            }
        }
        if !local_accounts && providers.is_empty() && !had_providers {
            self.problem(
                "local_accounts",
                "local accounts are off and no [[providers]] are configured, so nobody could sign in. \
                 Add a [[providers]] table or set local_accounts = true",
            );
        }
        if !had_apps {
            self.problem(
                "apps",
                "no [[apps]] are configured: add at least one, e.g.\n      [[apps]]\n      id = \"demo\"\n      upstream = \"http://127.0.0.1:8501\"",
            );
        }
        Some(Config {
            listen,
            public_url: public_url?,
            store: store?,
            store_outage_grace,
            audit_spool,
            key_rotation,
            local_accounts,
            local_accounts_mfa_required,
            trusted_proxies,
            session_lifetime,
            session_idle_timeout,
            upstream_connect_timeout,
            upstream_timeout,
            max_tunnels_per_person,
            tunnel_keepalive,
            metrics_listen,
            audit_retention,
            access_request_webhook,
            google_metadata_url,
            admins,
            providers,
            directories,
            access_levels,
            audit_sinks,
            tracing,
            scim_token,
            apps,
            tls,
            forward_auth,
        })
    }

    fn unknown_keys(&mut self, t: &toml::Table, prefix: &str, known: &[&str]) {
        for key in t.keys() {
            if !known.contains(&key.as_str()) {
                let hint = closest(key, known)
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_else(|| format!("; known keys here: {}", known.join(", ")));
                self.problem(format!("{prefix}{key}"), format!("unknown key{hint}"));
            }
        }
    }

    /// Takes a string value, expanding `${VAR}` from the environment.
    fn string(&mut self, t: &mut toml::Table, prefix: &str, key: &str) -> Option<String> {
        let path = format!("{prefix}{key}");
        match t.remove(key)? {
            Value::String(s) => self.expand(&path, &s),
            other => {
                self.problem(
                    path,
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn expand(&mut self, path: &str, s: &str) -> Option<String> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        let mut ok = true;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            if let Some(after) = rest.strip_prefix("$$") {
                out.push('$');
                rest = after;
            } else if let Some(after) = rest.strip_prefix("${") {
                let Some(end) = after.find('}') else {
                    self.problem(
                        path,
                        "`${` without a closing `}` (write `$$` for a literal `$`)",
                    );
                    return None;
                };
                let name = &after[..end];
                match self.env.var(name) {
                    Some(v)
                        if v.is_empty()
                            && !name.is_empty()
                            && !(path != "store" && self.env.secrets_unused()) =>
                    {
                        self.problem(
                            path,
                            format!("environment variable {name} is set but empty: give it the value (the file only refers to it)"),
                        );
                        ok = false;
                    }
                    Some(v) if !name.is_empty() => out.push_str(&v),
                    // A secret this command never uses: left as written.
                    None if !name.is_empty() && path != "store" && self.env.secrets_unused() => {
                        out.push_str(&format!("${{{name}}}"));
                    }
                    _ => {
                        self.problem(
                            path,
                            format!("environment variable {name} is not set: export it, or write the value itself"),
                        );
                        ok = false;
                    }
                }
                rest = &after[end + 1..];
            } else {
                out.push('$');
                rest = &rest[1..];
            }
        }
        out.push_str(rest);
        ok.then_some(out)
    }

    fn boolean(&mut self, t: &mut toml::Table, prefix: &str, key: &str) -> Option<bool> {
        match t.remove(key)? {
            Value::Boolean(b) => Some(b),
            other => {
                self.problem(
                    format!("{prefix}{key}"),
                    format!("expected true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// A positive whole number (a string of digits too: the environment's overrides are strings).
    fn count(&mut self, t: &mut toml::Table, prefix: &str, key: &str) -> Option<usize> {
        let v = t.remove(key)?;
        let n = match &v {
            Value::Integer(i) => usize::try_from(*i).ok(),
            Value::String(s) => s.trim().parse::<usize>().ok(),
            _ => None,
        };
        match n {
            Some(n) if n > 0 => Some(n),
            _ => {
                self.problem(
                    format!("{prefix}{key}"),
                    format!("`{v}` is not a positive whole number: write e.g. {key} = 32"),
                );
                None
            }
        }
    }

    fn socket_addr(&mut self, t: &mut toml::Table, prefix: &str, key: &str) -> Option<SocketAddr> {
        let s = self.string(t, prefix, key)?;
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    format!("{prefix}{key}"),
                    format!("`{s}` is not an address and port: write e.g. \"127.0.0.1:8080\" or \"[::]:8080\""),
                );
                None
            }
        }
    }

    fn duration(&mut self, t: &mut toml::Table, prefix: &str, key: &str) -> Option<Duration> {
        let s = self.string(t, prefix, key)?;
        match parse_duration(&s) {
            Some(d) if !d.is_zero() => Some(d),
            _ => {
                self.problem(
                    format!("{prefix}{key}"),
                    format!("`{s}` is not a duration: write a positive number with a unit, e.g. \"90s\", \"15m\", \"8h\" or \"7d\""),
                );
                None
            }
        }
    }

    fn public_url(&mut self, t: &mut toml::Table, listen: SocketAddr) -> Option<Url> {
        let Some(s) = self.string(t, "", "public_url") else {
            if t.contains_key("public_url") {
                return None;
            }
            // castellan's own pages need a host no app shares: `localhost` on this machine,
            // while apps are reached at 127.0.0.1 (or their own names).
            return Url::parse(&format!("http://localhost:{}", listen.port())).ok();
        };
        let fix =
            "write the URL browsers use to reach castellan, e.g. \"https://apps.example.com\"";
        match Url::parse(&s) {
            Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                self.problem(
                    "public_url",
                    format!("`{s}` must start with http:// or https://"),
                );
                None
            }
            Ok(u)
                if u.host_str().is_none() || !u.username().is_empty() || u.password().is_some() =>
            {
                self.problem(
                    "public_url",
                    format!("`{s}` needs a host and no user name: {fix}"),
                );
                None
            }
            Ok(u) if u.path() != "/" || u.query().is_some() || u.fragment().is_some() => {
                self.problem(
                    "public_url",
                    format!("`{s}` has a path, query or fragment; castellan's own pages live under /.castellan/ on that origin: {fix}"),
                );
                None
            }
            Ok(u) => Some(u),
            Err(e) => {
                self.problem("public_url", format!("`{s}` is not a URL ({e}): {fix}"));
                None
            }
        }
    }

    fn store(&mut self, t: &mut toml::Table, base: &Path) -> Option<StoreLocation> {
        let s = self
            .string(t, "", "store")
            .unwrap_or_else(|| "sqlite://castellan.db".into());
        match StoreLocation::parse(&s, base) {
            Ok(l) => Some(l),
            Err(e) => {
                self.problem("store", e);
                None
            }
        }
    }

    fn admins(&mut self, t: &mut toml::Table) -> Vec<crate::policy::Member> {
        let Some(v) = t.remove("admins") else {
            return Vec::new();
        };
        let Value::Array(items) = v else {
            self.problem(
                "admins",
                "expected a list of members, e.g. [\"user:you@example.com\"]",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let text = item.as_str().map(str::to_string).unwrap_or_default();
            // A member as policies write it, or a bare email. (A bare email is tried second:
            // `user:alice@example.com` is itself a valid email address, with `user:alice` as
            // its local part.)
            let parsed = crate::policy::Member::parse(&text).or_else(|e| {
                if crate::policy::is_email(&text.to_ascii_lowercase()) {
                    crate::policy::Member::parse(&format!("user:{text}"))
                } else {
                    Err(e)
                }
            });
            match parsed {
                Ok(m)
                    if !matches!(
                        m,
                        crate::policy::Member::AllUsers
                            | crate::policy::Member::AllAuthenticatedUsers
                    ) =>
                {
                    out.push(m)
                }
                Ok(_) => self.problem(
                    format!("admins[{i}]"),
                    "everyone cannot be an administrator: name people, groups or service accounts",
                ),
                Err(e) => self.problem(format!("admins[{i}]"), e.to_string()),
            }
        }
        out
    }

    fn trusted_proxies(&mut self, t: &mut toml::Table) -> Vec<IpNet> {
        let Some(v) = t.remove("trusted_proxies") else {
            return Vec::new();
        };
        let Value::Array(items) = v else {
            self.problem(
                "trusted_proxies",
                "expected a list of addresses or networks, e.g. [\"10.0.0.0/8\", \"127.0.0.1\"]",
            );
            return Vec::new();
        };
        let mut nets = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match item.as_str().and_then(IpNet::parse) {
                Some(n) => nets.push(n),
                None => self.problem(
                    format!("trusted_proxies[{i}]"),
                    format!("{item} is not an address or network: write e.g. \"10.0.0.0/8\" or \"192.0.2.7\""),
                ),
            }
        }
        nets
    }

    /// `[[audit_sinks]]`: a webhook or a JSON-lines file, each with a unique id.
    /// `[tracing]`: OpenTelemetry traces over OTLP/HTTP.
    fn tracing(&mut self, t: &mut toml::Table) -> Option<Tracing> {
        const P: &str = "tracing.";
        let mut tr = match t.remove("tracing")? {
            Value::Table(tr) => tr,
            other => {
                self.problem("tracing", format!("expected a table, found {}: write it as [tracing] with otlp_endpoint = \"http://127.0.0.1:4318\"", other.type_str()));
                return None;
            }
        };
        self.unknown_keys(&tr, P, TRACING_KEYS);
        let endpoint = self.required(&mut tr, P, "otlp_endpoint", "\"http://127.0.0.1:4318\"");
        let endpoint = match endpoint.as_deref().map(Url::parse) {
            Some(Ok(mut u)) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                // As OTEL_EXPORTER_OTLP_ENDPOINT: a base URL gets the signal's path.
                if u.path() == "/" || u.path().is_empty() {
                    u.set_path("/v1/traces");
                }
                Some(u)
            }
            Some(_) => {
                self.problem("tracing.otlp_endpoint", "expected the collector's OTLP/HTTP address, e.g. \"http://127.0.0.1:4318\" (castellan adds /v1/traces) or a full URL to POST to");
                None
            }
            None => None,
        };
        let sample_ratio = match tr.remove("sample_ratio") {
            None => 1.0,
            Some(Value::Float(f)) if (0.0..=1.0).contains(&f) => f,
            Some(Value::Integer(i)) if i == 0 || i == 1 => i as f64,
            Some(other) => {
                self.problem("tracing.sample_ratio", format!("expected a share of traces from 0 to 1, e.g. 0.1 for one in ten; found {other}"));
                1.0
            }
        };
        let service_name = self
            .string(&mut tr, P, "service_name")
            .unwrap_or_else(|| "castellan".to_string());
        let mut headers = Vec::new();
        match tr.remove("headers") {
            None => {}
            Some(Value::Table(h)) => {
                for (name, value) in h {
                    let key = format!("{P}headers.{name}");
                    let Ok(parsed) = http::HeaderName::from_bytes(name.as_bytes()) else {
                        self.problem(key, format!("`{name}` is not a header name: letters, digits and - only"));
                        continue;
                    };
                    match value {
                        Value::String(v) => match self.expand(&key, &v) {
                            Some(v) if http::HeaderValue::from_str(&v).is_ok() => {
                                headers.push((parsed, Secret(v)));
                            }
                            Some(_) => self.problem(key, "is not a header value: printable characters only, one line"),
                            None => {}
                        },
                        other => self.problem(key, format!("expected a string, found {}", other.type_str())),
                    }
                }
            }
            Some(other) => self.problem("tracing.headers", format!("expected a table of header names and values, e.g. headers = {{ authorization = \"Bearer ${{OTLP_TOKEN}}\" }}; found {}", other.type_str())),
        }
        Some(Tracing {
            endpoint: endpoint?,
            sample_ratio,
            service_name,
            headers,
        })
    }

    fn audit_sinks(&mut self, t: &mut toml::Table, base: &Path) -> Vec<AuditSink> {
        let mut out: Vec<AuditSink> = Vec::new();
        for (prefix, mut a) in self.tables(t, "audit_sinks") {
            self.unknown_keys(&a, &prefix, AUDIT_SINK_KEYS);
            let id = self.required(&mut a, &prefix, "id", "\"siem\"");
            let kind = self.required(&mut a, &prefix, "kind", "\"webhook\"");
            let batch = self.count(&mut a, &prefix, "batch").unwrap_or(100);
            if !(1..=1000).contains(&batch) {
                self.problem(
                    format!("{prefix}batch"),
                    "expected 1 to 1000 records a delivery",
                );
            }
            let kind = match kind.as_deref() {
                Some("webhook") => {
                    let url = self.required(
                        &mut a,
                        &prefix,
                        "url",
                        "\"https://siem.example.com/castellan\"",
                    );
                    let secret = self.string(&mut a, &prefix, "secret").map(Secret);
                    match url.as_deref().map(Url::parse) {
                        Some(Ok(u)) if matches!(u.scheme(), "http" | "https") => {
                            Some(AuditSinkKind::Webhook { url: u, secret })
                        }
                        Some(_) => {
                            self.problem(
                                format!("{prefix}url"),
                                "expected an http:// or https:// URL",
                            );
                            None
                        }
                        None => None,
                    }
                }
                Some("file") => {
                    let path = self.required(
                        &mut a,
                        &prefix,
                        "path",
                        "\"/var/log/castellan/audit.jsonl\"",
                    );
                    let max_size = match self.string(&mut a, &prefix, "max_size") {
                        None => Some(100 << 20),
                        Some(s) => parse_size(&s).or_else(|| {
                            self.problem(
                                format!("{prefix}max_size"),
                                format!("`{s}` is not a size: write e.g. \"100MB\" or \"512KB\""),
                            );
                            None
                        }),
                    };
                    let keep = self.count(&mut a, &prefix, "keep").unwrap_or(5);
                    match (path, max_size) {
                        (Some(p), Some(max_size)) => Some(AuditSinkKind::File {
                            path: base.join(p),
                            max_size,
                            keep,
                        }),
                        _ => None,
                    }
                }
                Some("syslog") => {
                    let address = self.required(
                        &mut a,
                        &prefix,
                        "address",
                        "\"tls://siem.example.com:6514\"",
                    );
                    let ca = self.string(&mut a, &prefix, "ca").map(|p| base.join(p));
                    match address.as_deref().map(Url::parse) {
                        Some(Ok(u))
                            if matches!(u.scheme(), "tcp" | "tls")
                                && u.host_str().is_some()
                                && u.port().is_some() =>
                        {
                            if ca.is_some() && u.scheme() != "tls" {
                                self.problem(format!("{prefix}ca"), "ca is for tls:// addresses");
                            }
                            Some(AuditSinkKind::Syslog { address: u, ca })
                        }
                        Some(_) => {
                            self.problem(format!("{prefix}address"), "expected tcp://HOST:PORT or tls://HOST:PORT, e.g. \"tls://siem.example.com:6514\"");
                            None
                        }
                        None => None,
                    }
                }
                Some(other) => {
                    self.problem(
                        format!("{prefix}kind"),
                        format!(
                            "`{other}` is not a sink castellan has: write \"webhook\", \"syslog\" or \"file\""
                        ),
                    );
                    None
                }
                None => None,
            };
            let (Some(id), Some(kind)) = (id, kind) else {
                continue;
            };
            if !valid_id(&id) || out.iter().any(|o| o.id == id) {
                self.problem(
                    format!("{prefix}id"),
                    format!("`{id}` is not a unique id: use lower-case letters, digits and '-'"),
                );
                continue;
            }
            out.push(AuditSink {
                id,
                kind,
                batch: batch.clamp(1, 1000),
            });
        }
        out
    }

    /// `[[access_levels]]`: a unique name and at least one requirement.
    fn access_levels(&mut self, t: &mut toml::Table) -> Vec<AccessLevel> {
        let mut out: Vec<AccessLevel> = Vec::new();
        for (prefix, mut l) in self.tables(t, "access_levels") {
            self.unknown_keys(&l, &prefix, ACCESS_LEVEL_KEYS);
            let name = self.required(
                &mut l,
                &prefix,
                "name",
                "\"accessPolicies/1/accessLevels/corp_devices\"",
            );
            let mut ip_ranges = Vec::new();
            match l.remove("ip_ranges") {
                None => {}
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        match item.as_str().and_then(IpNet::parse) {
                            Some(n) => ip_ranges.push(n),
                            None => self.problem(
                                format!("{prefix}ip_ranges[{i}]"),
                                format!(
                                    "{item} is not an address or network: write e.g. \"10.0.0.0/8\""
                                ),
                            ),
                        }
                    }
                }
                Some(_) => self.problem(
                    format!("{prefix}ip_ranges"),
                    "expected a list of networks, e.g. [\"10.0.0.0/8\", \"2001:db8::/32\"]",
                ),
            }
            let client_certificate = self
                .boolean(&mut l, &prefix, "client_certificate")
                .unwrap_or(false);
            let window = self.window(&mut l, &prefix);
            if ip_ranges.is_empty() && !client_certificate && window.is_none() {
                self.problem(
                    prefix.trim_end_matches('.').to_string(),
                    "an access level needs a requirement: ip_ranges, client_certificate = true, or days/hours",
                );
            }
            let Some(name) = name else { continue };
            if name.is_empty() || name.contains(char::is_whitespace) || name.contains('"') {
                self.problem(format!("{prefix}name"), format!("`{name}` is not a level name: no spaces or quotes, e.g. \"accessPolicies/1/accessLevels/corp_devices\" or \"corp_devices\""));
                continue;
            }
            if out.iter().any(|o| o.name == name) {
                self.problem(
                    format!("{prefix}name"),
                    format!("access level `{name}` is defined twice"),
                );
                continue;
            }
            out.push(AccessLevel {
                name,
                ip_ranges,
                client_certificate,
                window,
            });
        }
        out
    }

    /// An access level's `days`, `hours` and `time_zone`; None when it has neither days nor hours.
    fn window(&mut self, l: &mut toml::Table, prefix: &str) -> Option<Window> {
        const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let days = l.remove("days");
        let hours = self.string(l, prefix, "hours");
        let zone = self.string(l, prefix, "time_zone");
        if days.is_none() && hours.is_none() {
            if zone.is_some() {
                self.problem(
                    format!("{prefix}time_zone"),
                    "time_zone applies to days and hours: add them, or remove it",
                );
            }
            return None;
        }
        let mut on = [days.is_none(); 7];
        if let Some(days) = days {
            let names: Option<Vec<&str>> = days
                .as_array()
                .and_then(|a| a.iter().map(|d| d.as_str()).collect());
            match names {
                Some(names) if !names.is_empty() => {
                    for n in names {
                        match DAYS.iter().position(|d| d.eq_ignore_ascii_case(&n[..n.len().min(3)]) && n.len() >= 3) {
                            Some(i) => on[i] = true,
                            None => self.problem(format!("{prefix}days"), format!("`{n}` is not a day: write e.g. [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]")),
                        }
                    }
                }
                _ => self.problem(
                    format!("{prefix}days"),
                    "expected a list of days, e.g. [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]",
                ),
            }
        }
        let minutes = |s: &str| -> Option<u16> {
            let (h, m) = s.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
        };
        let (from, to) = match &hours {
            None => (0, 24 * 60),
            Some(h) => match h
                .split_once('-')
                .and_then(|(a, b)| Some((minutes(a)?, minutes(b)?)))
            {
                Some((a, b)) if a < b => (a, b),
                _ => {
                    self.problem(format!("{prefix}hours"), format!("`{h}` is not a span of hours: write \"09:00-17:00\" (24-hour clock, the end excluded, within one day)"));
                    (0, 24 * 60)
                }
            },
        };
        let zone = match zone.as_deref().map(crate::policy::condition::Zone::parse) {
            None => crate::policy::condition::Zone::parse("UTC").ok()?,
            Some(Ok(z)) => z,
            Some(Err(e)) => {
                self.problem(format!("{prefix}time_zone"), e);
                return None;
            }
        };
        Some(Window {
            days: on,
            from,
            to,
            zone,
        })
    }

    fn tables(&mut self, t: &mut toml::Table, key: &str) -> Vec<(String, toml::Table)> {
        let Some(v) = t.remove(key) else {
            return Vec::new();
        };
        let Value::Array(items) = v else {
            self.problem(
                key,
                format!("expected a list of tables: write each one as [[{key}]]"),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Value::Table(table) => out.push((format!("{key}[{i}]."), table)),
                other => self.problem(
                    format!("{key}[{i}]"),
                    format!(
                        "expected a table, found {}: write it as [[{key}]]",
                        other.type_str()
                    ),
                ),
            }
        }
        out
    }

    fn required(
        &mut self,
        t: &mut toml::Table,
        prefix: &str,
        key: &str,
        example: &str,
    ) -> Option<String> {
        if !t.contains_key(key) {
            self.problem(
                format!("{prefix}{key}"),
                format!("missing: add e.g. {key} = {example}"),
            );
            return None;
        }
        let v = self.string(t, prefix, key)?;
        if v.trim().is_empty() {
            self.problem(
                format!("{prefix}{key}"),
                format!("is empty: write e.g. {key} = {example}"),
            );
            return None;
        }
        Some(v)
    }

    fn providers(&mut self, t: &mut toml::Table) -> Vec<Provider> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (prefix, mut p) in self.tables(t, "providers") {
            self.unknown_keys(&p, &prefix, PROVIDER_KEYS);
            let id = self.required(&mut p, &prefix, "id", "\"corp\"");
            if let Some(id) = &id {
                if !valid_id(id) || id == "local" {
                    self.problem(
                        format!("{prefix}id"),
                        format!("`{id}` is not a valid provider id: use lower-case letters, digits and '-' (and not \"local\", which names local accounts)"),
                    );
                } else if !seen.insert(id.clone()) {
                    self.problem(
                        format!("{prefix}id"),
                        format!("provider id `{id}` is used twice: ids must be unique"),
                    );
                }
            }
            let issuer = self
                .required(&mut p, &prefix, "issuer", "\"https://accounts.google.com\"")
                .and_then(|s| match Url::parse(&s) {
                    Ok(u) if matches!(u.scheme(), "https" | "http") && u.host_str().is_some() && u.query().is_none() => Some(s),
                    _ => {
                        self.problem(
                            format!("{prefix}issuer"),
                            format!("`{s}` is not an issuer URL: write the provider's issuer exactly as its discovery document says, e.g. \"https://accounts.google.com\""),
                        );
                        None
                    }
                });
            let client_id = self.required(&mut p, &prefix, "client_id", "\"castellan\"");
            let client_secret = self.required(
                &mut p,
                &prefix,
                "client_secret",
                "\"${CORP_CLIENT_SECRET}\"",
            );
            let display_name = self.string(&mut p, &prefix, "display_name");
            let scopes = self.scopes(&mut p, &prefix);
            let require_verified_email = self
                .boolean(&mut p, &prefix, "require_verified_email")
                .unwrap_or(true);
            let groups_claim = self.string(&mut p, &prefix, "groups_claim");
            let revalidate = self
                .duration(&mut p, &prefix, "revalidate")
                .unwrap_or(Duration::from_secs(300));
            let programmatic_audiences = self.string_list(
                &mut p,
                &prefix,
                "programmatic_audiences",
                usize::MAX,
                |s| !s.is_empty(),
                "expected a list of audiences, e.g. [\"https://apps.example.com\"] (for Google service-account ID tokens: the audience they were minted for)",
            );
            let claims = self.string_list(
                &mut p,
                &prefix,
                "claims",
                32,
                |s| !s.is_empty() && s.len() <= 256 && !s.contains(char::is_whitespace),
                "expected a list of at most 32 claim names, e.g. [\"department\", \"https://example.com/roles\"]",
            );
            if let (Some(id), Some(issuer), Some(client_id), Some(client_secret)) =
                (id, issuer, client_id, client_secret)
            {
                out.push(Provider {
                    display_name: display_name.unwrap_or_else(|| id.clone()),
                    id,
                    issuer,
                    client_id,
                    client_secret,
                    scopes,
                    require_verified_email,
                    groups_claim,
                    programmatic_audiences,
                    revalidate,
                    claims,
                });
            }
        }
        out
    }

    fn directories(&mut self, t: &mut toml::Table, base: &Path) -> Vec<Directory> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (prefix, mut d) in self.tables(t, "directories") {
            self.unknown_keys(&d, &prefix, DIRECTORY_KEYS);
            let id = self.required(&mut d, &prefix, "id", "\"google\"");
            if let Some(id) = &id
                && (!valid_id(id) || !seen.insert(id.clone()))
            {
                self.problem(
                    format!("{prefix}id"),
                    format!("`{id}` is not a usable directory id: use lower-case letters, digits and '-', each id once"),
                );
            }
            let kind = match self
                .required(&mut d, &prefix, "kind", "\"google\"")
                .as_deref()
            {
                None => None,
                Some("google") => Some(DirectoryKind::Google {
                    credentials: self
                        .string(&mut d, &prefix, "credentials")
                        .map(|p| base.join(p)),
                    endpoint: self
                        .string(&mut d, &prefix, "endpoint")
                        .unwrap_or_else(|| CLOUD_IDENTITY_URL.to_string())
                        .trim_end_matches('/')
                        .to_string(),
                }),
                Some("microsoft") => {
                    let tenant =
                        self.required(&mut d, &prefix, "tenant", "\"contoso.onmicrosoft.com\"");
                    let client_id = self.required(
                        &mut d,
                        &prefix,
                        "client_id",
                        "\"00000000-0000-0000-0000-000000000000\"",
                    );
                    let client_secret = self.required(
                        &mut d,
                        &prefix,
                        "client_secret",
                        "\"${GRAPH_CLIENT_SECRET}\"",
                    );
                    let mut url = |key: &str, default: &str| {
                        self.string(&mut d, &prefix, key)
                            .unwrap_or_else(|| default.to_string())
                            .trim_end_matches('/')
                            .to_string()
                    };
                    let endpoint = url("endpoint", GRAPH_URL);
                    let authority = url("authority", ENTRA_AUTHORITY);
                    match (tenant, client_id, client_secret) {
                        (Some(tenant), Some(client_id), Some(client_secret)) => {
                            Some(DirectoryKind::Microsoft(MicrosoftDirectory {
                                tenant,
                                client_id,
                                client_secret,
                                endpoint,
                                authority,
                            }))
                        }
                        _ => None,
                    }
                }
                Some(other) => {
                    self.problem(
                        format!("{prefix}kind"),
                        format!("`{other}` is not a directory castellan can ask: write \"google\" (Google Workspace / Cloud Identity groups) or \"microsoft\" (Entra ID groups, through Microsoft Graph)"),
                    );
                    None
                }
            };
            let refresh = self
                .duration(&mut d, &prefix, "refresh")
                .unwrap_or(Duration::from_secs(300));
            let grace = self
                .duration(&mut d, &prefix, "grace")
                .unwrap_or(Duration::from_secs(3600));
            if let (Some(id), Some(kind)) = (id, kind) {
                out.push(Directory {
                    id,
                    kind,
                    refresh,
                    grace,
                });
            }
        }
        out
    }

    /// `tls.acme.dns`: where DNS-01's TXT records are written.
    fn dns_provider(&mut self, a: &mut toml::Table) -> Option<DnsProvider> {
        use base64::Engine as _;
        const P: &str = "tls.acme.dns.";
        let mut d = match a.remove("dns")? {
            Value::Table(d) => d,
            other => {
                self.problem("tls.acme.dns", format!("expected a table, found {}: write dns = {{ provider = \"rfc2136\", server = \"ns1.example.com:53\", key_name = \"castellan\", key_secret = \"${{TSIG_SECRET}}\" }}", other.type_str()));
                return None;
            }
        };
        self.unknown_keys(&d, P, ACME_DNS_KEYS);
        match self.string(&mut d, P, "provider").as_deref() {
            Some("rfc2136") => {}
            None => self.problem("tls.acme.dns.provider", "say which DNS provider writes the record: provider = \"rfc2136\" (dynamic updates with a TSIG key: BIND, PowerDNS, Knot, Windows DNS)"),
            Some(other) => self.problem("tls.acme.dns.provider", format!("`{other}` is not a DNS provider castellan speaks: write \"rfc2136\" (dynamic updates with a TSIG key). For Cloud DNS or Route 53, delegate _acme-challenge to a zone on an RFC 2136 server with a CNAME (see docs/https.md)")),
        }
        let server = self.string(&mut d, P, "server");
        if server.is_none() {
            self.problem("tls.acme.dns.server", "the zone's primary DNS server, which takes the updates: server = \"ns1.example.com:53\"");
        }
        let name = self.string(&mut d, P, "key_name");
        let valid_name = name.as_deref().is_some_and(|n| {
            let n = n.trim_end_matches('.');
            !n.is_empty() && n.len() < 254 && n.split('.').all(|l| !l.is_empty() && l.len() <= 63)
        });
        if !valid_name {
            self.problem("tls.acme.dns.key_name", "the TSIG key's name as the DNS server knows it (BIND: key \"castellan\" { … }): key_name = \"castellan\"");
        }
        let algorithm = match self.string(&mut d, P, "key_algorithm") {
            None => TsigAlgorithm::HmacSha256,
            Some(name) => TsigAlgorithm::parse(&name).unwrap_or_else(|| {
                let known: Vec<&str> = TsigAlgorithm::ALL.iter().map(|a| a.name()).collect();
                self.problem(
                    "tls.acme.dns.key_algorithm",
                    format!(
                        "`{name}` is not a TSIG algorithm castellan signs with: write one of {}",
                        known.join(", ")
                    ),
                );
                TsigAlgorithm::HmacSha256
            }),
        };
        let secret = match self.string(&mut d, P, "key_secret") {
            // A secret this command never uses, left as written (see `expand`).
            Some(s) if s.starts_with("${") && self.env.secrets_unused() => Vec::new(),
            Some(s) => base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .ok()
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| {
                    self.problem("tls.acme.dns.key_secret", "expected the key's secret in base64, as tsig-keygen prints it (secret \"…\";); keep it out of the file: key_secret = \"${TSIG_SECRET}\"");
                    Vec::new()
                }),
            None => {
                self.problem("tls.acme.dns.key_secret", "the TSIG key's secret (base64): key_secret = \"${TSIG_SECRET}\"");
                Vec::new()
            }
        };
        Some(DnsProvider::Rfc2136 {
            server: server?,
            key: TsigKey {
                name: name?,
                algorithm,
                secret,
            },
        })
    }

    fn tls(&mut self, t: &mut toml::Table, base: &Path) -> Option<Tls> {
        let mut tls = match t.remove("tls")? {
            Value::Table(tls) => tls,
            other => {
                self.problem(
                    "tls",
                    format!(
                        "expected a table, found {}: write it as [tls]",
                        other.type_str()
                    ),
                );
                return None;
            }
        };
        self.unknown_keys(&tls, "tls.", TLS_KEYS);
        let http_listen = self.socket_addr(&mut tls, "tls.", "http_listen");
        let hsts = match tls.get("hsts") {
            Some(Value::String(s)) if s == "off" => {
                tls.remove("hsts");
                Duration::ZERO
            }
            _ => self
                .duration(&mut tls, "tls.", "hsts")
                .unwrap_or(Duration::from_secs(365 * 86400)),
        };
        let file = |r: &mut Self, tls: &mut toml::Table, key: &str| {
            r.string(tls, "tls.", key).map(|p| base.join(p))
        };
        let cert = file(self, &mut tls, "cert");
        let key = file(self, &mut tls, "key");
        let client_ca = file(self, &mut tls, "client_ca");
        let acme = match tls.remove("acme") {
            None => None,
            Some(Value::Table(mut a)) => {
                self.unknown_keys(&a, "tls.acme.", ACME_KEYS);
                let domains: Vec<String> = match a.remove("domains") {
                    Some(Value::Array(items)) => items
                        .iter()
                        .filter_map(|i| {
                            i.as_str()
                                .map(|s| s.trim_end_matches('.').to_ascii_lowercase())
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                if domains.is_empty()
                    || domains.iter().any(|d| {
                        let d = d.strip_prefix("*.").unwrap_or(d);
                        d.is_empty()
                            || !d.split('.').all(|l| {
                                !l.is_empty()
                                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                            })
                    })
                {
                    self.problem(
                        "tls.acme.domains",
                        "expected a list of host names to get a certificate for, e.g. [\"apps.example.com\"] (a wildcard is one `*.` label in front: \"*.apps.example.com\", with challenge = \"dns-01\")",
                    );
                }
                let email = self.string(&mut a, "tls.acme.", "email");
                let directory = self
                    .string(&mut a, "tls.acme.", "directory")
                    .unwrap_or_else(|| LETS_ENCRYPT.to_string());
                if !directory.starts_with("https://") {
                    self.problem(
                        "tls.acme.directory",
                        format!("`{directory}` must be an https:// URL, e.g. \"{LETS_ENCRYPT}\""),
                    );
                }
                let ca_root = file(self, &mut a, "ca_root");
                let dns = self.dns_provider(&mut a);
                let challenge = match (
                    self.string(&mut a, "tls.acme.", "challenge").as_deref(),
                    dns,
                ) {
                    (None | Some("dns-01"), Some(dns)) => AcmeChallenge::Dns01(dns),
                    (Some("dns-01"), None) => {
                        self.problem("tls.acme.dns", "dns-01 writes a TXT record through a DNS provider: add dns = { provider = \"rfc2136\", server = \"ns1.example.com:53\", key_name = \"castellan\", key_secret = \"${TSIG_SECRET}\" }");
                        AcmeChallenge::TlsAlpn01
                    }
                    (Some(other @ ("http-01" | "tls-alpn-01")), Some(_)) => {
                        self.problem("tls.acme.dns", format!("is used by the dns-01 challenge only: remove it, or write challenge = \"dns-01\" instead of \"{other}\""));
                        AcmeChallenge::TlsAlpn01
                    }
                    (None, None) if http_listen.is_some() => AcmeChallenge::Http01,
                    (None, None) => AcmeChallenge::TlsAlpn01,
                    (Some("http-01"), None) => AcmeChallenge::Http01,
                    (Some("tls-alpn-01"), None) => AcmeChallenge::TlsAlpn01,
                    (Some(other), _) => {
                        self.problem("tls.acme.challenge", format!("`{other}` is not a challenge castellan answers: write \"http-01\" (needs tls.http_listen, port 80), \"tls-alpn-01\" (on listen, port 443) or \"dns-01\" (a TXT record through tls.acme.dns; the one that proves wildcards)"));
                        AcmeChallenge::TlsAlpn01
                    }
                };
                if challenge == AcmeChallenge::Http01 && http_listen.is_none() {
                    self.problem("tls.acme.challenge", "http-01 is answered on the plain-HTTP listener: set tls.http_listen = \"0.0.0.0:80\", or use challenge = \"tls-alpn-01\"");
                }
                if let Some(w) = domains.iter().find(|d| d.starts_with("*."))
                    && !matches!(challenge, AcmeChallenge::Dns01(_))
                {
                    self.problem("tls.acme.domains", format!("`{w}` is a wildcard, which only the dns-01 challenge can prove: add dns = {{ provider = \"rfc2136\", … }} (see docs/https.md), or name each host"));
                }
                Some(Acme {
                    domains,
                    email,
                    directory,
                    ca_root,
                    challenge,
                })
            }
            Some(other) => {
                self.problem("tls.acme", format!("expected a table, found {}: write acme = {{ domains = [\"apps.example.com\"], email = \"you@example.com\" }}", other.type_str()));
                return None;
            }
        };
        let certificates = match (cert, key, acme) {
            (Some(cert), Some(key), None) => Certificates::Files { cert, key },
            (None, None, Some(acme)) => Certificates::Acme(acme),
            (None, None, None) => {
                self.problem("tls", "say where certificates come from: cert = \"cert.pem\" and key = \"key.pem\", or acme = { domains = [\"apps.example.com\"] }");
                return None;
            }
            (_, _, Some(_)) => {
                self.problem("tls", "use either cert and key files or acme, not both");
                return None;
            }
            _ => {
                self.problem("tls", "cert and key go together: set both (PEM files)");
                return None;
            }
        };
        Some(Tls {
            certificates,
            http_listen,
            hsts,
            client_ca,
        })
    }

    fn scopes(&mut self, p: &mut toml::Table, prefix: &str) -> Vec<String> {
        let default = vec!["openid".into(), "email".into(), "profile".into()];
        let Some(v) = p.remove("scopes") else {
            return default;
        };
        let scopes: Option<Vec<String>> = match &v {
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect(),
            _ => None,
        };
        match scopes {
            Some(s)
                if s.iter().any(|x| x == "openid")
                    && s.iter().all(|x| !x.contains(' ') && !x.is_empty()) =>
            {
                s
            }
            _ => {
                self.problem(
                    format!("{prefix}scopes"),
                    "expected a list of scope names that includes \"openid\", e.g. [\"openid\", \"email\", \"profile\"]",
                );
                default
            }
        }
    }

    fn apps(
        &mut self,
        t: &mut toml::Table,
        base: &Path,
        reauth_default: Option<Duration>,
        (connect_default, timeout_default): (Duration, Duration),
    ) -> Vec<App> {
        let mut ids = HashSet::new();
        let mut audiences = HashSet::new();
        let mut routes = BTreeMap::new();
        let mut out = Vec::new();
        for (prefix, mut a) in self.tables(t, "apps") {
            self.unknown_keys(&a, &prefix, APP_KEYS);
            let id = self.required(&mut a, &prefix, "id", "\"demo\"");
            if let Some(id) = &id {
                if !valid_id(id) {
                    self.problem(
                        format!("{prefix}id"),
                        format!("`{id}` is not a valid app id: use lower-case letters, digits and '-', starting with a letter or digit"),
                    );
                } else if !ids.insert(id.clone()) {
                    self.problem(
                        format!("{prefix}id"),
                        format!("app id `{id}` is used twice: ids must be unique"),
                    );
                }
            }
            let upstreams = self.upstreams(&mut a, &prefix);
            if upstreams.first().is_some_and(|u| u.scheme() == "tcp") {
                for &key in http_only_app_keys() {
                    if a.contains_key(key) {
                        self.problem(
                            format!("{prefix}{key}"),
                            format!("{key} does not apply to a TCP app: castellan passes its bytes through unchanged, with no HTTP headers to add; remove it"),
                        );
                    }
                }
            }
            if !a.contains_key("host") {
                self.problem(
                    format!("{prefix}host"),
                    "every app is served on a host of its own, never on castellan's (public_url's host), so that its pages cannot read or drive castellan's: add host = \"127.0.0.1\" to reach it on this machine, or a DNS name that points at castellan, e.g. host = \"dashboard.example.com\"",
                );
            }
            let host = self.string(&mut a, &prefix, "host").and_then(|h| {
                let lower = h.to_ascii_lowercase();
                // `*.apps.example.com` serves every name one label below apps.example.com.
                let name = lower.strip_prefix("*.").unwrap_or(&lower);
                let ok = name.contains('.')
                    && name.split('.').all(|l| {
                        !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    });
                if ok {
                    Some(lower)
                } else {
                    self.problem(
                        format!("{prefix}host"),
                        format!("`{h}` is not a host name: write it without scheme or port, e.g. \"demo.example.com\" or \"*.apps.example.com\""),
                    );
                    None
                }
            });
            let path_prefix = match self.string(&mut a, &prefix, "path_prefix") {
                None => "/".to_string(),
                Some(p)
                    if p.starts_with('/')
                        && !p.starts_with("/.castellan")
                        && !p.contains(['?', '#', '\\']) =>
                {
                    p
                }
                Some(p) => {
                    self.problem(
                        format!("{prefix}path_prefix"),
                        format!("`{p}` must start with '/', must not be under /.castellan/ (reserved) and has no query: write e.g. \"/reports\""),
                    );
                    "/".to_string()
                }
            };
            let audience = self.string(&mut a, &prefix, "audience");
            let identity_headers = match self.string(&mut a, &prefix, "identity_headers").as_deref()
            {
                None | Some("castellan") => IdentityHeaders::Castellan,
                Some("google-iap") => IdentityHeaders::GoogleIap,
                Some(other) => {
                    self.problem(
                        format!("{prefix}identity_headers"),
                        format!("`{other}` is not a header style: write \"castellan\" (the default) or \"google-iap\""),
                    );
                    IdentityHeaders::Castellan
                }
            };
            let auth_kind = self.string(&mut a, &prefix, "upstream_auth");
            let auth_audience = self.string(&mut a, &prefix, "upstream_auth_audience");
            let auth_header = self.string(&mut a, &prefix, "upstream_auth_header");
            let upstream_auth = match auth_kind.as_deref() {
                None | Some("none") => {
                    if auth_audience.is_some() || auth_header.is_some() {
                        self.problem(
                            format!("{prefix}upstream_auth"),
                            "upstream_auth_audience and upstream_auth_header need upstream_auth = \"google-id-token\"",
                        );
                    }
                    None
                }
                Some("google-id-token") => {
                    let header = match auth_header
                        .as_deref()
                        .map(str::to_ascii_lowercase)
                        .as_deref()
                    {
                        None | Some("authorization") => http::header::AUTHORIZATION,
                        Some("x-serverless-authorization") => {
                            http::HeaderName::from_static("x-serverless-authorization")
                        }
                        Some(other) => {
                            self.problem(
                                format!("{prefix}upstream_auth_header"),
                                format!("`{other}` is not supported: write \"authorization\" (the default) or \"x-serverless-authorization\" (to let the app's own Authorization header through)"),
                            );
                            http::header::AUTHORIZATION
                        }
                    };
                    let audience = auth_audience
                        .or_else(|| upstreams.first().map(|u| u.origin().ascii_serialization()))
                        .unwrap_or_default();
                    Some(UpstreamAuth { audience, header })
                }
                Some(other) => {
                    self.problem(
                        format!("{prefix}upstream_auth"),
                        format!("`{other}` is not an upstream authentication: write \"google-id-token\" (Cloud Run and other Google-authenticated services) or leave it out"),
                    );
                    None
                }
            };
            let cors_origins = match a.remove("cors_origins") {
                None => Vec::new(),
                Some(Value::Array(items)) => {
                    let mut out = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        let ok = item.as_str().and_then(|s| Url::parse(s).ok()).filter(|u| {
                            matches!(u.scheme(), "http" | "https")
                                && u.path() == "/"
                                && u.query().is_none()
                                && u.host_str().is_some()
                        });
                        match ok {
                            Some(u) => out.push(u.origin().ascii_serialization()),
                            None => self.problem(
                                format!("{prefix}cors_origins[{i}]"),
                                format!("{item} is not an origin: write scheme, host and port only, e.g. \"https://dashboard.example.com\" (\"*\" is not allowed with credentials)"),
                            ),
                        }
                    }
                    out
                }
                Some(_) => {
                    self.problem(
                        format!("{prefix}cors_origins"),
                        "expected a list of origins, e.g. [\"https://dashboard.example.com\"]",
                    );
                    Vec::new()
                }
            };
            let headers = HeaderRules {
                set_request: self.header_values(&mut a, &prefix, "set_request_headers"),
                remove_request: self.header_names(&mut a, &prefix, "remove_request_headers"),
                set_response: self.header_values(&mut a, &prefix, "set_response_headers"),
                remove_response: self.header_names(&mut a, &prefix, "remove_response_headers"),
            };
            let claims = self.app_claims(&mut a, &prefix, &headers);
            let provider_tokens = self.provider_tokens(&mut a, &prefix, &headers, &claims);
            let step_up = StepUp {
                second_factor: self
                    .boolean(&mut a, &prefix, "require_second_factor")
                    .unwrap_or(false),
                passkey: self
                    .boolean(&mut a, &prefix, "require_passkey")
                    .unwrap_or(false),
                acr: self.string_list(
                    &mut a,
                    &prefix,
                    "require_acr",
                    16,
                    |v| !v.is_empty() && v.len() <= 256 && !v.contains(char::is_whitespace),
                    "expected a list of acr values, most preferred first, e.g. [\"urn:example:mfa\"] (no spaces: they are sent as the space-separated acr_values)",
                ),
            };
            let Some(id) = id else { continue };
            let audience = audience.unwrap_or_else(|| format!("castellan:{id}"));
            if !audiences.insert(audience.clone()) {
                self.problem(
                    format!("{prefix}audience"),
                    format!("audience `{audience}` is used by another app: each app needs its own, so an assertion for one app is never accepted by another"),
                );
            }
            if let Some(host) = &host
                && let Some(other) = routes.insert((host.clone(), path_prefix.clone()), id.clone())
            {
                self.problem(
                    format!("{prefix}path_prefix"),
                    format!("app `{other}` already serves host {host} with path_prefix \"{path_prefix}\": give one of them another host or path_prefix"),
                );
            }
            // Without an upstream or a host the app is not served (the problem is reported).
            let health_check = self.health_check(&mut a, &prefix);
            let connection = self.upstream_connection(
                &mut a,
                &prefix,
                base,
                &upstreams,
                (connect_default, timeout_default),
            );
            if let (false, Some(host)) = (upstreams.is_empty(), host) {
                out.push(App {
                    id: id.into(),
                    upstreams,
                    health_check,
                    connection,
                    host,
                    path_prefix,
                    audience,
                    identity_headers,
                    upstream_auth,
                    cors_origins,
                    reauth_max_age: self
                        .duration(&mut a, &prefix, "reauth_max_age")
                        .or(reauth_default),
                    step_up,
                    headers,
                    claims,
                    provider_tokens,
                });
            }
        }
        out
    }

    /// A list of at most `max` strings that each pass `valid`, or the problem `expected` reported.
    fn string_list(
        &mut self,
        t: &mut toml::Table,
        prefix: &str,
        key: &str,
        max: usize,
        valid: impl Fn(&str) -> bool,
        expected: &str,
    ) -> Vec<String> {
        match t.remove(key) {
            None => Vec::new(),
            Some(Value::Array(items))
                if items.len() <= max && items.iter().all(|i| i.as_str().is_some_and(&valid)) =>
            {
                items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect()
            }
            Some(_) => {
                self.problem(format!("{prefix}{key}"), expected);
                Vec::new()
            }
        }
    }

    /// `assertion_claims = ["groups", "department"]` and `claim_headers = { "X-Department" =
    /// "department" }`: claim names castellan does not set itself, header names no rule or
    /// castellan header uses.
    fn app_claims(&mut self, a: &mut toml::Table, prefix: &str, rules: &HeaderRules) -> AppClaims {
        let mut out = AppClaims::default();
        let claim = |r: &mut Self, key: String, name: &str| -> Option<String> {
            if name.is_empty() || name.len() > 256 || name.contains(char::is_whitespace) {
                r.problem(
                    key,
                    format!(
                        "`{name}` is not a claim name: write e.g. \"groups\" or \"department\""
                    ),
                );
                None
            } else if ASSERTION_OWN_CLAIMS.contains(&name) {
                r.problem(key, format!("the assertion carries `{name}` already: castellan sets it, an app cannot ask for another value under that name"));
                None
            } else {
                Some(name.to_string())
            }
        };
        match a.remove("assertion_claims") {
            None => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let key = format!("{prefix}assertion_claims[{i}]");
                    if let Some(c) = claim(self, key, item.as_str().unwrap_or_default()) {
                        out.assertion.push(c);
                    }
                }
            }
            Some(_) => self.problem(
                format!("{prefix}assertion_claims"),
                "expected a list of claim names, e.g. [\"groups\", \"department\"]",
            ),
        }
        match a.remove("claim_headers") {
            None => {}
            Some(Value::Table(items)) => {
                for (header, c) in items {
                    let key = format!("{prefix}claim_headers.{header}");
                    let Some(name) = self.header_name(key.clone(), &header, true) else {
                        continue;
                    };
                    let in_rules = rules.set_request.iter().any(|(n, _)| *n == name)
                        || rules.remove_request.contains(&name);
                    if in_rules {
                        self.problem(key, format!("{header} is also in this app's request header rules: give the claim a header of its own"));
                        continue;
                    }
                    if let Some(c) = claim(self, key, c.as_str().unwrap_or_default()) {
                        out.headers.push((name, c));
                    }
                }
            }
            Some(_) => self.problem(
                format!("{prefix}claim_headers"),
                "expected a table of header names and claims, e.g. { \"X-Department\" = \"department\" }",
            ),
        }
        out
    }

    /// `access_token_header`, `id_token_header` and `provider_scopes`: header names of the app's
    /// own (no rule, claim or castellan header uses them), and scopes only for an access token.
    fn provider_tokens(
        &mut self,
        a: &mut toml::Table,
        prefix: &str,
        rules: &HeaderRules,
        claims: &AppClaims,
    ) -> ProviderTokens {
        let mut header = |r: &mut Self, key: &str| -> Option<http::HeaderName> {
            let name = r.string(a, prefix, key)?;
            let at = format!("{prefix}{key}");
            let parsed = r.header_name(at.clone(), &name, true)?;
            let taken = rules.set_request.iter().any(|(n, _)| *n == parsed)
                || rules.remove_request.contains(&parsed)
                || claims.headers.iter().any(|(n, _)| *n == parsed);
            if taken {
                r.problem(at, format!("{name} is also in this app's request header rules or claim_headers: give the token a header of its own"));
                return None;
            }
            Some(parsed)
        };
        let access_token_header = header(self, "access_token_header");
        let id_token_header = header(self, "id_token_header");
        if access_token_header.is_some() && access_token_header == id_token_header {
            self.problem(
                format!("{prefix}id_token_header"),
                "the access token and the ID token need headers of their own",
            );
        }
        let scopes = self.string_list(
            a,
            prefix,
            "provider_scopes",
            32,
            |s| !s.is_empty() && s.len() <= 512 && !s.contains(char::is_whitespace),
            "expected a list of OAuth scopes, e.g. [\"https://www.googleapis.com/auth/bigquery.readonly\"]",
        );
        if !scopes.is_empty() && access_token_header.is_none() {
            self.problem(
                format!("{prefix}provider_scopes"),
                "provider_scopes are for the access token the app receives: add access_token_header too",
            );
        }
        ProviderTokens {
            access_token_header,
            id_token_header,
            scopes,
        }
    }

    /// A header name for an app's header rules, or the problem reported.
    fn header_name(&mut self, key: String, name: &str, setting: bool) -> Option<http::HeaderName> {
        let Ok(parsed) = http::HeaderName::from_bytes(name.as_bytes()) else {
            self.problem(
                key,
                format!("`{name}` is not a header name: letters, digits and - only, e.g. \"X-Frame-Options\""),
            );
            return None;
        };
        match reserved_header(parsed.as_str(), setting) {
            Some(why) => {
                self.problem(key, format!("{name} cannot be in header rules: {why}"));
                None
            }
            None => Some(parsed),
        }
    }

    /// `remove_…_headers = ["Server", "X-Powered-By"]`.
    fn header_names(
        &mut self,
        t: &mut toml::Table,
        prefix: &str,
        key: &str,
    ) -> Vec<http::HeaderName> {
        match t.remove(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let name = item.as_str().unwrap_or_default();
                    if let Some(n) = self.header_name(format!("{prefix}{key}[{i}]"), name, false) {
                        out.push(n);
                    }
                }
                out
            }
            Some(_) => {
                self.problem(
                    format!("{prefix}{key}"),
                    "expected a list of header names, e.g. [\"Server\", \"X-Powered-By\"]",
                );
                Vec::new()
            }
        }
    }

    /// `set_…_headers = { "X-Frame-Options" = "DENY" }`.
    fn header_values(
        &mut self,
        t: &mut toml::Table,
        prefix: &str,
        key: &str,
    ) -> Vec<(http::HeaderName, http::HeaderValue)> {
        match t.remove(key) {
            None => Vec::new(),
            Some(Value::Table(items)) => {
                let mut out = Vec::new();
                for (name, value) in items {
                    let at = format!("{prefix}{key}.{name}");
                    let Some(n) = self.header_name(at.clone(), &name, true) else {
                        continue;
                    };
                    match value.as_str().map(http::HeaderValue::from_str) {
                        Some(Ok(v)) => out.push((n, v)),
                        _ => self.problem(
                            at,
                            "expected a header value: a string without line breaks, e.g. \"DENY\"",
                        ),
                    }
                }
                out
            }
            Some(_) => {
                self.problem(
                    format!("{prefix}{key}"),
                    "expected a table of names and values, e.g. { \"X-Frame-Options\" = \"DENY\" }",
                );
                Vec::new()
            }
        }
    }

    /// `upstream`: one URL, or for a web app a list of them (a pool: least outstanding requests,
    /// unhealthy ones left out). Empty when it is missing or wrong (the problem is reported).
    fn upstreams(&mut self, a: &mut toml::Table, prefix: &str) -> Vec<Url> {
        let example = "\"http://127.0.0.1:8501\", or a list [\"http://10.0.0.5:8501\", \"http://10.0.0.6:8501\"]";
        match a.remove("upstream") {
            None => {
                self.problem(
                    format!("{prefix}upstream"),
                    format!("missing: add e.g. upstream = {example}"),
                );
                Vec::new()
            }
            Some(Value::String(s)) => self.upstream(prefix, &s).into_iter().collect(),
            Some(Value::Array(items)) if !items.is_empty() && items.len() <= 32 => {
                let mut out: Vec<Url> = Vec::new();
                for item in &items {
                    let Some(u) = item.as_str().and_then(|s| self.upstream(prefix, s)) else {
                        if item.as_str().is_none() {
                            self.problem(
                                format!("{prefix}upstream"),
                                format!("expected URLs, e.g. upstream = {example}"),
                            );
                        }
                        return Vec::new();
                    };
                    if u.scheme() == "tcp" {
                        self.problem(
                            format!("{prefix}upstream"),
                            "a TCP app has one upstream: write upstream = \"tcp://HOST:PORT\"",
                        );
                        return Vec::new();
                    }
                    if out.contains(&u) {
                        self.problem(format!("{prefix}upstream"), format!("{u} is listed twice"));
                        return Vec::new();
                    }
                    out.push(u);
                }
                out
            }
            Some(_) => {
                self.problem(
                    format!("{prefix}upstream"),
                    format!("expected a URL or a list of up to 32, e.g. upstream = {example}"),
                );
                Vec::new()
            }
        }
    }

    /// An app's `upstream_connect_timeout`, `upstream_timeout`, `upstream_ca`,
    /// `upstream_client_cert` and `upstream_client_key`; the CA and certificate only for `https://`
    /// upstreams, the certificate and key together.
    fn upstream_connection(
        &mut self,
        a: &mut toml::Table,
        prefix: &str,
        base: &Path,
        upstreams: &[Url],
        (connect_default, timeout_default): (Duration, Duration),
    ) -> UpstreamConnection {
        let connect_timeout = self
            .duration(a, prefix, "upstream_connect_timeout")
            .unwrap_or(connect_default);
        let timeout = self
            .duration(a, prefix, "upstream_timeout")
            .unwrap_or(timeout_default);
        let file = |r: &mut Self, a: &mut toml::Table, key: &str| {
            r.string(a, prefix, key).map(|p| base.join(p))
        };
        let ca = file(self, a, "upstream_ca");
        let cert = file(self, a, "upstream_client_cert");
        let key = file(self, a, "upstream_client_key");
        let client_cert = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                self.problem(
                    format!("{prefix}upstream_client_cert"),
                    "a client certificate needs its key: set both upstream_client_cert and upstream_client_key",
                );
                None
            }
        };
        let tls = ca.is_some() || client_cert.is_some();
        if tls && !upstreams.iter().all(|u| u.scheme() == "https") {
            self.problem(
                format!("{prefix}upstream"),
                "upstream_ca and upstream_client_cert are for https:// upstreams: write the upstream as https://HOST:PORT",
            );
        }
        UpstreamConnection {
            connect_timeout,
            timeout,
            ca,
            client_cert,
        }
    }

    /// `health_check = { path = "/healthz", interval = "5s", timeout = "2s", healthy = 2,
    /// unhealthy = 2 }`: how castellan checks each upstream of a web app.
    fn health_check(&mut self, a: &mut toml::Table, prefix: &str) -> Option<HealthCheck> {
        let key = format!("{prefix}health_check");
        let mut t = match a.remove("health_check")? {
            Value::Table(t) => t,
            _ => {
                self.problem(
                    key,
                    "expected a table, e.g. health_check = { path = \"/healthz\" }",
                );
                return None;
            }
        };
        let inner = format!("{key}.");
        self.unknown_keys(
            &t,
            &inner,
            &["path", "interval", "timeout", "healthy", "unhealthy"],
        );
        let path = self.required(&mut t, &inner, "path", "\"/healthz\"")?;
        if !path.starts_with('/') {
            self.problem(
                format!("{inner}path"),
                format!("`{path}` is not a path: write e.g. \"/healthz\""),
            );
            return None;
        }
        let interval = self
            .duration(&mut t, &inner, "interval")
            .unwrap_or(Duration::from_secs(5));
        let timeout = self
            .duration(&mut t, &inner, "timeout")
            .unwrap_or(Duration::from_secs(2));
        let mut threshold = |r: &mut Self, k: &str| {
            let n = r.count(&mut t, &inner, k).unwrap_or(2);
            if n == 0 || n > 100 {
                r.problem(format!("{inner}{k}"), "expected a count from 1 to 100");
            }
            n.clamp(1, 100) as u32
        };
        let healthy = threshold(self, "healthy");
        let unhealthy = threshold(self, "unhealthy");
        if interval.is_zero() || timeout.is_zero() || timeout > interval {
            self.problem(
                key,
                "interval and timeout must be more than 0 s, and timeout at most the interval",
            );
            return None;
        }
        Some(HealthCheck {
            path,
            interval,
            timeout,
            healthy,
            unhealthy,
        })
    }

    fn upstream(&mut self, prefix: &str, s: &str) -> Option<Url> {
        match Url::parse(s) {
            Ok(u) if u.scheme() == "tcp" => {
                if u.host_str().is_some_and(|h| !h.is_empty())
                    && u.port().is_some()
                    && matches!(u.path(), "" | "/")
                    && u.query().is_none()
                    && u.username().is_empty()
                {
                    Some(u)
                } else {
                    self.problem(
                        format!("{prefix}upstream"),
                        format!("`{s}` is not a TCP upstream: write tcp://HOST:PORT, e.g. \"tcp://10.0.0.5:22\" (SSH) or \"tcp://127.0.0.1:5432\" (PostgreSQL)"),
                    );
                    None
                }
            }
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.path() == "/"
                    && u.query().is_none()
                    && u.username().is_empty() =>
            {
                Some(u)
            }
            _ => {
                self.problem(
                    format!("{prefix}upstream"),
                    format!("`{s}` is not an upstream URL: write scheme, host and port only, e.g. \"http://127.0.0.1:8501\" (the request path is forwarded as it is), or tcp://HOST:PORT for a TCP app (SSH, a database)"),
                );
                None
            }
        }
    }
}

/// `"100MB"`, `"512KB"`, `"1GB"`, or a number of bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().ok()?;
    let factor = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" | "KIB" => 1 << 10,
        "MB" | "MIB" => 1 << 20,
        "GB" | "GIB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor).filter(|n| *n > 0)
}

/// App and provider ids: `[a-z0-9][a-z0-9-]*`, at most 63 characters.
pub fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && id.len() <= 63
}

/// Parses `"90s"`, `"15m"`, `"8h"`, `"7d"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_and_never_show_a_password() {
        let base = Path::new("/etc/castellan");
        assert_eq!(
            StoreLocation::parse("sqlite://state.db", base).unwrap(),
            StoreLocation::Sqlite("/etc/castellan/state.db".into())
        );
        let pg =
            StoreLocation::parse("postgres://castellan:s3cret@db:5432/castellan", base).unwrap();
        assert_eq!(pg.to_string(), "postgres://castellan:***@db:5432/castellan");
        let err = StoreLocation::parse("postgres://castellan:s3cret@db", base).unwrap_err();
        assert!(
            err.contains("names no host or database") && !err.contains("s3cret"),
            "{err}"
        );
        let err = StoreLocation::parse("mysql://u:s3cret@db/x", base).unwrap_err();
        assert!(
            err.contains("is not a store URL") && !err.contains("s3cret"),
            "{err}"
        );
    }

    struct MapEnv(Vec<(&'static str, &'static str)>);
    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        Config::parse(
            text,
            Path::new("/etc/castellan"),
            &MapEnv(vec![("SECRET", "s3cret")]),
        )
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse("[[apps]]\nid = \"demo\"\nhost = \"app.example.com\"\nupstream = \"http://127.0.0.1:8501\"\n").unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.public_url.as_str(), "http://localhost:8080/");
        assert_eq!(
            c.store,
            StoreLocation::Sqlite("/etc/castellan/castellan.db".into())
        );
        assert!(c.local_accounts);
        assert_eq!(c.apps[0].audience, "castellan:demo");
        assert_eq!(c.apps[0].path_prefix, "/");
        assert_eq!(
            c.redirect_uri(),
            "http://localhost:8080/.castellan/callback"
        );
        assert_eq!(c.session_lifetime, Duration::from_secs(86400));
    }

    /// The README's configuration reference: a table row for every key the reader takes, and
    /// a complete example that parses and names every key (so the reference cannot drift).
    #[test]
    fn the_readme_documents_every_key_and_its_complete_example_parses() {
        let readme = include_str!("../README.md");
        let reference = readme
            .split("\n## Configuration reference")
            .nth(1)
            .and_then(|r| r.split("\n## ").next())
            .unwrap();
        let example = reference
            .split("```toml\n")
            .last()
            .and_then(|e| e.split("```").next())
            .unwrap();
        let sections: Vec<(&str, Vec<&str>)> = vec![
            ("", ENV_KEYS.to_vec()),
            ("[tls]", TLS_KEYS.to_vec()),
            ("[[providers]]", PROVIDER_KEYS.to_vec()),
            ("[[directories]]", DIRECTORY_KEYS.to_vec()),
            ("[[access_levels]]", ACCESS_LEVEL_KEYS.to_vec()),
            ("[[audit_sinks]]", AUDIT_SINK_KEYS.to_vec()),
            ("[tracing]", TRACING_KEYS.to_vec()),
            ("[[apps]]", APP_KEYS.to_vec()),
        ];
        let parsed: toml::Table = example.parse().unwrap();
        let mut missing = Vec::new();
        for (name, keys) in &sections {
            // The table of a section: from its heading ("`[tls]`: …", at a line's start) to the
            // next heading.
            let start = if name.is_empty() {
                0
            } else {
                reference.find(&format!("\n`{name}`:")).unwrap()
            };
            let table = reference[start..]
                .split("\n\n`[")
                .next()
                .unwrap_or("")
                .lines()
                .filter(|l| l.starts_with("| `"))
                .map(|l| l.split(" | ").next().unwrap())
                .collect::<Vec<_>>()
                .join(" ");
            // The keys the example gives in that section (every table of an array of tables).
            let given: Vec<String> = match name.trim_matches(['[', ']']) {
                "" => parsed.keys().cloned().collect(),
                section => match parsed.get(section) {
                    Some(toml::Value::Table(t)) => t.keys().cloned().collect(),
                    Some(toml::Value::Array(items)) => items
                        .iter()
                        .filter_map(|i| i.as_table())
                        .flat_map(|t| t.keys().cloned())
                        .collect(),
                    _ => Vec::new(),
                },
            };
            for key in keys {
                if !table.contains(&format!("`{key}`")) {
                    missing.push(format!("{name} {key}: no row in the table"));
                }
                // `acme` replaces `cert` and `key`: its keys are in its row, not the example.
                if *key != "acme" && !given.iter().any(|g| g == key) {
                    missing.push(format!("{name} {key}: not in the complete example"));
                }
            }
        }
        for key in ACME_KEYS.iter().chain(ACME_DNS_KEYS) {
            if !reference.contains(&format!("{key} =")) {
                missing.push(format!("[tls] acme {key}: not in the acme rows"));
            }
        }
        assert!(
            missing.is_empty(),
            "README configuration reference: {missing:#?}"
        );
        let env = MapEnv(vec![
            ("SCIM_TOKEN", "0123456789abcdef0123456789abcdef"),
            ("CORP_CLIENT_SECRET", "s"),
            ("GRAPH_CLIENT_SECRET", "s"),
            ("AUDIT_WEBHOOK_SECRET", "s"),
            ("OTLP_TOKEN", "t"),
        ]);
        if let Err(problems) = Config::parse(example, Path::new("/etc/castellan"), &env) {
            panic!("the README's complete example does not parse: {problems:#?}");
        }
    }

    #[test]
    fn every_top_level_key_of_the_first_table_can_come_from_the_environment() {
        let c = Config::parse(
            "[[apps]]\nid = \"demo\"\nhost = \"app.example.com\"\nupstream = \"http://127.0.0.1:8501\"\n",
            Path::new("/etc/castellan"),
            &MapEnv(vec![("CASTELLAN_ADMINS", "root@example.com, group:ops")]),
        )
        .unwrap();
        let shown: Vec<String> = c.admins.iter().map(|m| m.to_string()).collect();
        assert_eq!(shown, ["user:root@example.com", "group:ops"]);
    }

    #[test]
    fn an_empty_variable_is_named_as_the_problem() {
        let text = "[[providers]]\nid = \"g\"\nissuer = \"https://accounts.google.com\"\nclient_id = \"x\"\nclient_secret = \"${SECRET}\"\n[[apps]]\nid = \"demo\"\nhost = \"app.example.com\"\nupstream = \"http://127.0.0.1:8501\"\n";
        let problems =
            Config::parse(text, Path::new("/etc"), &MapEnv(vec![("SECRET", "")])).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].message.contains("SECRET is set but empty"),
            "{problems:?}"
        );
    }

    #[test]
    fn store_only_commands_need_no_secret_they_do_not_use() {
        let text = "local_accounts = false\nstore = \"postgres://c:${PGPASS}@db/c\"\n[[providers]]\nid = \"g\"\nissuer = \"https://accounts.google.com\"\nclient_id = \"x\"\nclient_secret = \"${GOOGLE_CLIENT_SECRET}\"\n[[apps]]\nid = \"demo\"\nhost = \"app.example.com\"\nupstream = \"http://127.0.0.1:8501\"\n";
        let env = MapEnv(vec![("PGPASS", "pw")]);
        // The server needs the secret: one problem, naming it, and not a wrong second one.
        let problems = Config::parse(text, Path::new("/etc"), &env).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].message.contains("GOOGLE_CLIENT_SECRET"),
            "{problems:?}"
        );
        // A store-only command does not; the store's own variables it still needs.
        let c = Config::parse(text, Path::new("/etc"), &StoreOnly(&env)).unwrap();
        assert_eq!(c.providers[0].client_secret, "${GOOGLE_CLIENT_SECRET}");
        let problems =
            Config::parse(text, Path::new("/etc"), &StoreOnly(&MapEnv(vec![]))).unwrap_err();
        assert!(
            problems.iter().all(|p| p.message.contains("PGPASS")),
            "{problems:?}"
        );
    }

    #[test]
    fn admins_are_members_or_bare_emails() {
        let apps = "[[apps]]\nid = \"demo\"\nhost = \"app.example.com\"\nupstream = \"http://127.0.0.1:8501\"\n";
        let c = parse(&format!(
            "admins = [\"user:Alice@example.com\", \"bob@example.com\", \"group:ops\"]\n{apps}"
        ))
        .unwrap();
        let shown: Vec<String> = c.admins.iter().map(|m| m.to_string()).collect();
        assert_eq!(
            shown,
            [
                "user:alice@example.com",
                "user:bob@example.com",
                "group:ops"
            ]
        );
    }

    #[test]
    fn directories_get_documented_defaults_and_clear_errors() {
        let apps = "[[apps]]\nid = \"demo\"\nhost = \"app.example.com\"\nupstream = \"http://127.0.0.1:8501\"\n";
        let c = parse(&format!(
            "[[directories]]\nid = \"google\"\nkind = \"google\"\ncredentials = \"sa.json\"\n{apps}"
        ))
        .unwrap();
        let d = &c.directories[0];
        assert_eq!(
            (d.refresh, d.grace),
            (Duration::from_secs(300), Duration::from_secs(3600))
        );
        assert_eq!(
            d.kind,
            DirectoryKind::Google {
                credentials: Some("/etc/castellan/sa.json".into()),
                endpoint: CLOUD_IDENTITY_URL.into(),
            }
        );
        let problems = parse(&format!(
            "[[directories]]\nid = \"ms\"\nkind = \"entra\"\nrefersh = \"1m\"\n{apps}"
        ))
        .unwrap_err();
        let text = format!("{problems:?}");
        assert!(
            text.contains("is not a directory castellan can ask"),
            "{text}"
        );
        assert!(text.contains("did you mean `refresh`"), "{text}");
    }

    #[test]
    fn env_expansion_and_unset_variable() {
        let ok = parse(
            "[[providers]]\nid=\"corp\"\nissuer=\"http://127.0.0.1:9000\"\nclient_id=\"c\"\nclient_secret=\"${SECRET}\"\n[[apps]]\nid=\"a\"\nhost = \"app.example.com\"\nupstream=\"http://127.0.0.1:1\"\n",
        )
        .unwrap();
        assert_eq!(ok.providers[0].client_secret, "s3cret");
        assert!(
            !format!("{:?}", ok.providers[0]).contains("s3cret"),
            "Debug must redact the secret"
        );
        let err = parse(
            "[[providers]]\nid=\"corp\"\nissuer=\"http://127.0.0.1:9000\"\nclient_id=\"c\"\nclient_secret=\"${NOPE}\"\n[[apps]]\nid=\"a\"\nhost = \"app.example.com\"\nupstream=\"http://127.0.0.1:1\"\n",
        )
        .unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].key, "providers[0].client_secret");
        assert!(err[0].message.contains("NOPE is not set"));
    }

    #[test]
    fn every_error_is_reported_at_once_with_its_key() {
        let err = parse(
            r#"
listne = "127.0.0.1:8080"
public_url = "ftp://x"
session_lifetime = "forever"
local_accounts = "yes"
[[apps]]
id = "Demo"
upstream = "http://127.0.0.1:8501/sub"
colour = "blue"
[[apps]]
id = "b"
"#,
        )
        .unwrap_err();
        let keys: Vec<&str> = err.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "listne",
            "public_url",
            "session_lifetime",
            "local_accounts",
            "apps[0].id",
            "apps[0].upstream",
            "apps[0].colour",
            "apps[1].upstream",
        ] {
            assert!(keys.contains(&k), "missing error for {k}: {keys:?}");
        }
        let typo = err.iter().find(|p| p.key == "listne").unwrap();
        assert!(
            typo.message.contains("did you mean `listen`"),
            "{}",
            typo.message
        );
    }

    #[test]
    fn duplicate_ids_audiences_and_routes_are_rejected() {
        let err = parse(
            "[[apps]]\nid=\"a\"\nhost = \"app.example.com\"\nupstream=\"http://127.0.0.1:1\"\n[[apps]]\nid=\"a\"\nhost = \"app.example.com\"\nupstream=\"http://127.0.0.1:2\"\naudience=\"castellan:a\"\n",
        )
        .unwrap_err();
        let text: Vec<String> = err
            .iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect();
        assert!(text.iter().any(|t| t.contains("used twice")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("audience")), "{text:?}");
        assert!(
            text.iter().any(|t| t.contains("already serves")),
            "{text:?}"
        );
    }

    #[test]
    fn environment_overrides_and_the_whole_config_in_one_variable() {
        let env = MapEnv(vec![
            ("CASTELLAN_PUBLIC_URL", "https://apps.example.com"),
            ("CASTELLAN_LOCAL_ACCOUNTS", "false"),
            ("CASTELLAN_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1"),
            ("PORT", "9999"),
            ("SECRET", "s3cret"),
            (
                "CASTELLAN_CONFIG_TOML",
                "[[providers]]\nid=\"g\"\nissuer=\"https://accounts.google.com\"\nclient_id=\"c\"\nclient_secret=\"${SECRET}\"\n[[apps]]\nid=\"a\"\nhost = \"app.example.com\"\nupstream=\"https://a-xyz-uc.a.run.app\"\nupstream_auth=\"google-id-token\"\n",
            ),
        ]);
        let c = Config::load_with(Path::new("/nonexistent/castellan.toml"), &env).unwrap();
        assert_eq!(c.public_url.as_str(), "https://apps.example.com/");
        assert!(!c.local_accounts);
        assert_eq!(c.trusted_proxies.len(), 2);
        assert_eq!(
            c.listen,
            "0.0.0.0:9999".parse().unwrap(),
            "Cloud Run's PORT"
        );
        assert_eq!(c.providers[0].client_secret, "s3cret");
        assert_eq!(
            c.apps[0].upstream_auth.as_ref().unwrap().audience,
            "https://a-xyz-uc.a.run.app"
        );
        let bad = MapEnv(vec![
            ("CASTELLAN_LOCAL_ACCOUNTS", "yes"),
            (
                "CASTELLAN_CONFIG_TOML",
                "[[apps]]\nid=\"a\"\nhost = \"app.example.com\"\nupstream=\"http://x:1\"\n",
            ),
        ]);
        let e = Config::load_with(Path::new("/x"), &bad).unwrap_err();
        assert_eq!(e.file, PathBuf::from("CASTELLAN_CONFIG_TOML"));
        assert_eq!(e.problems[0].key, "CASTELLAN_LOCAL_ACCOUNTS");
    }

    #[test]
    fn apps_have_hosts_of_their_own() {
        let err = parse("[[apps]]\nid=\"a\"\nupstream=\"http://127.0.0.1:1\"\n").unwrap_err();
        assert_eq!(err[0].key, "apps[0].host");
        assert!(
            err[0].message.contains("host = \"127.0.0.1\""),
            "{}",
            err[0].message
        );
        let err = parse(
            "public_url = \"https://auth.example.com\"\n[[apps]]\nid=\"a\"\nhost=\"auth.example.com\"\nupstream=\"http://127.0.0.1:1\"\n",
        )
        .unwrap_err();
        assert_eq!(err[0].key, "apps[0].host");
        assert!(
            err[0].message.contains("castellan's own host"),
            "{}",
            err[0].message
        );
    }

    #[test]
    fn forward_auth_names_one_ingress() {
        let ok = |v: &str| {
            parse(&format!(
                "forward_auth = \"{v}\"\n[[apps]]\nid=\"a\"\nhost=\"a.example.com\"\nupstream=\"http://127.0.0.1:1\"\n"
            ))
        };
        assert_eq!(ok("nginx").unwrap().forward_auth, Some(ForwardAuth::Nginx));
        assert_eq!(ok("caddy").unwrap().forward_auth, Some(ForwardAuth::Caddy));
        assert_eq!(
            ok("traefik").unwrap().forward_auth,
            Some(ForwardAuth::Traefik)
        );
        assert_eq!(ok("haproxy").unwrap_err()[0].key, "forward_auth");
    }

    #[test]
    fn no_way_to_sign_in_is_an_error() {
        let err =
            parse("local_accounts = false\n[[apps]]\nid=\"a\"\nhost = \"app.example.com\"\nupstream=\"http://127.0.0.1:1\"\n")
                .unwrap_err();
        assert_eq!(err[0].key, "local_accounts");
    }

    #[test]
    fn a_tcp_app_needs_host_and_port_and_takes_no_http_keys() {
        let app = |extra: &str| {
            parse(&format!(
                "[[apps]]\nid=\"ssh\"\nhost = \"ssh.example.com\"\n{extra}\n"
            ))
        };
        let c = app("upstream = \"tcp://10.0.0.5:22\"").unwrap();
        assert_eq!(c.apps[0].kind(), AppKind::Tcp);
        assert_eq!(c.apps[0].role(), crate::policy::Role::TunnelAccessor);
        assert_eq!(c.apps[0].upstream_authority(), "10.0.0.5:22");
        for bad in ["tcp://10.0.0.5", "tcp://10.0.0.5:22/x", "tcp://:22"] {
            let err = app(&format!("upstream = \"{bad}\"")).unwrap_err();
            assert!(err[0].message.contains("tcp://HOST:PORT"), "{bad}: {err:?}");
        }
        let err =
            app("upstream = \"tcp://10.0.0.5:22\"\nidentity_headers = \"google-iap\"").unwrap_err();
        assert_eq!(err[0].key, "apps[0].identity_headers");
        let web = app("upstream = \"http://127.0.0.1:1\"").unwrap();
        assert_eq!(web.apps[0].role(), crate::policy::Role::Accessor);
    }

    #[test]
    fn header_rules_are_checked_and_never_name_castellans_own_headers() {
        let app = |extra: &str| {
            parse(&format!(
                "[[apps]]\nid=\"dash\"\nhost = \"dash.example.com\"\nupstream = \"http://127.0.0.1:1\"\n{extra}\n"
            ))
        };
        let c = app(
            "set_response_headers = { \"X-Frame-Options\" = \"DENY\", \"Content-Security-Policy\" = \"frame-ancestors 'none'\" }\n\
             remove_response_headers = [\"Server\", \"X-Powered-By\"]\n\
             set_request_headers = { \"X-Team\" = \"data\" }\nremove_request_headers = [\"X-Debug\"]",
        )
        .unwrap();
        let h = &c.apps[0].headers;
        assert_eq!(h.set_response.len(), 2);
        assert_eq!(h.remove_response[1], "x-powered-by");
        let mut req = http::HeaderMap::new();
        req.insert("x-team", "forged".parse().unwrap());
        req.insert("x-debug", "1".parse().unwrap());
        h.to_request(&mut req);
        assert_eq!(req.get("x-team").unwrap(), "data");
        assert!(req.get("x-debug").is_none());
        for (extra, key, needle) in [
            (
                "set_request_headers = { \"X-Goog-Authenticated-User-Email\" = \"x\" }",
                "apps[0].set_request_headers.X-Goog-Authenticated-User-Email",
                "identity headers",
            ),
            (
                "remove_request_headers = [\"x_castellan_email\"]",
                "apps[0].remove_request_headers[0]",
                "identity headers",
            ),
            (
                "remove_request_headers = [\"X-Forwarded-For\"]",
                "apps[0].remove_request_headers[0]",
                "trusted_proxies",
            ),
            (
                "set_response_headers = { \"Set-Cookie\" = \"a=b\" }",
                "apps[0].set_response_headers.Set-Cookie",
                "guards cookies",
            ),
            (
                "set_response_headers = { \"Transfer-Encoding\" = \"chunked\" }",
                "apps[0].set_response_headers.Transfer-Encoding",
                "hop-by-hop",
            ),
            (
                "set_response_headers = { \"Bad Name\" = \"x\" }",
                "apps[0].set_response_headers.Bad Name",
                "not a header name",
            ),
            (
                "set_response_headers = { \"X-A\" = \"line\\nbreak\" }",
                "apps[0].set_response_headers.X-A",
                "without line breaks",
            ),
            (
                "remove_response_headers = \"Server\"",
                "apps[0].remove_response_headers",
                "a list of header names",
            ),
        ] {
            let err = app(extra).unwrap_err();
            assert_eq!(err[0].key, key, "{extra}: {err:?}");
            assert!(err[0].message.contains(needle), "{extra}: {err:?}");
        }
        let err = parse(
            "[[apps]]\nid=\"ssh\"\nhost = \"ssh.example.com\"\nupstream = \"tcp://10.0.0.5:22\"\nremove_response_headers = [\"Server\"]\n",
        )
        .unwrap_err();
        assert!(
            err[0].message.contains("does not apply to a TCP app"),
            "{err:?}"
        );
    }

    #[test]
    fn app_claims_name_what_a_provider_keeps_and_never_castellans_own() {
        let with = |provider: &str, app: &str| {
            parse(&format!(
                "[[providers]]\nid=\"corp\"\nissuer=\"https://idp.example.com\"\nclient_id=\"c\"\nclient_secret=\"${{SECRET}}\"\n{provider}\n\
                 [[apps]]\nid=\"dash\"\nhost = \"dash.example.com\"\nupstream = \"http://127.0.0.1:1\"\n{app}\n"
            ))
        };
        let c = with(
            "claims = [\"department\"]",
            "assertion_claims = [\"groups\", \"department\"]\nclaim_headers = { \"X-Department\" = \"department\", \"X-Amr\" = \"amr\" }",
        )
        .unwrap();
        let names: Vec<&str> = c.apps[0].claims.names().collect();
        assert_eq!(names, ["groups", "department", "amr"]);
        for (provider, app, key, needle) in [
            (
                "",
                "assertion_claims = [\"department\"]",
                "apps[0]",
                "which no provider keeps",
            ),
            (
                "claims = [\"department\"]",
                "assertion_claims = [\"email\"]",
                "apps[0].assertion_claims[0]",
                "carries `email` already",
            ),
            (
                "claims = [\"department\"]",
                "claim_headers = { \"X-Castellan-Department\" = \"department\" }",
                "apps[0].claim_headers.X-Castellan-Department",
                "identity headers",
            ),
            (
                "claims = [\"department\"]",
                "set_request_headers = { \"X-Department\" = \"x\" }\nclaim_headers = { \"X-Department\" = \"department\" }",
                "apps[0].claim_headers.X-Department",
                "request header rules",
            ),
            (
                "claims = \"department\"",
                "",
                "providers[0].claims",
                "list of at most 32 claim names",
            ),
        ] {
            let err = with(provider, app).unwrap_err();
            assert_eq!(err[0].key, key, "{app}: {err:?}");
            assert!(err[0].message.contains(needle), "{app}: {err:?}");
        }
    }

    #[test]
    fn step_up_keys_are_read_and_an_acr_needs_a_provider() {
        let app = |keys: &str| {
            format!(
                "[[apps]]\nid=\"pay\"\nhost = \"pay.example.com\"\nupstream = \"tcp://10.0.0.5:22\"\n{keys}\n"
            )
        };
        let provider = "[[providers]]\nid=\"corp\"\nissuer=\"https://idp.example.com\"\nclient_id=\"c\"\nclient_secret=\"${SECRET}\"\n";
        // Step-up applies to TCP apps too: a tunnel is a person's credential like any other.
        let c = parse(&format!(
            "{provider}{}",
            app("require_second_factor = true\nrequire_passkey = true\nrequire_acr = [\"urn:a\", \"urn:b\"]")
        ))
        .unwrap();
        let s = &c.apps[0].step_up;
        assert!(s.second_factor && s.passkey);
        assert_eq!(s.acr, ["urn:a", "urn:b"]);
        assert!(parse(&app("")).unwrap().apps[0].step_up.is_empty());
        let err = parse(&app("require_acr = [\"urn:a\"]")).unwrap_err();
        assert_eq!(err[0].key, "apps[0].require_acr", "{err:?}");
        assert!(
            err[0].message.contains("only a sign-in provider"),
            "{err:?}"
        );
        let err = parse(&format!("{provider}{}", app("require_acr = [\"a b\"]"))).unwrap_err();
        assert!(err[0].message.contains("no spaces"), "{err:?}");
    }

    #[test]
    fn provider_token_keys_name_headers_of_their_own() {
        let provider = "[[providers]]\nid=\"corp\"\nissuer=\"https://idp.example.com\"\nclient_id=\"c\"\nclient_secret=\"${SECRET}\"\n";
        let app = |keys: &str| {
            format!(
                "[[apps]]\nid=\"bq\"\nhost = \"bq.example.com\"\nupstream = \"http://127.0.0.1:1\"\n{keys}\n"
            )
        };
        let c = parse(&format!(
            "{provider}{}",
            app("access_token_header = \"Authorization\"\nid_token_header = \"X-Id-Token\"\nprovider_scopes = [\"api:read\"]")
        ))
        .unwrap();
        let t = &c.apps[0].provider_tokens;
        assert_eq!(t.access_token_header, Some(http::header::AUTHORIZATION));
        assert_eq!(t.scopes, ["api:read"]);
        assert!(c.apps[0].asks_at_sign_in());
        for (keys, with_provider, key, needle) in [
            (
                "access_token_header = \"X-T\"",
                false,
                "apps[0]",
                "only a sign-in provider gives",
            ),
            (
                "provider_scopes = [\"api:read\"]",
                true,
                "apps[0].provider_scopes",
                "add access_token_header",
            ),
            (
                "access_token_header = \"X-T\"\nid_token_header = \"X-T\"",
                true,
                "apps[0].id_token_header",
                "headers of their own",
            ),
            (
                "access_token_header = \"X-Castellan-Token\"",
                true,
                "apps[0].access_token_header",
                "identity headers",
            ),
            (
                "set_request_headers = { \"X-T\" = \"a\" }\naccess_token_header = \"X-T\"",
                true,
                "apps[0].access_token_header",
                "header rules",
            ),
        ] {
            let toml = if with_provider {
                format!("{provider}{}", app(keys))
            } else {
                app(keys)
            };
            let err = parse(&toml).unwrap_err();
            assert_eq!(err[0].key, key, "{keys}: {err:?}");
            assert!(err[0].message.contains(needle), "{keys}: {err:?}");
        }
    }

    #[test]
    fn access_levels_need_a_requirement_and_a_certificate_needs_a_client_ca() {
        let c = parse(
            "[[access_levels]]\nname = \"office\"\nip_ranges = [\"10.0.0.0/8\"]\ndays = [\"mon\", \"Friday\"]\nhours = \"09:00-17:30\"\ntime_zone = \"Europe/Berlin\"\n\
             [[apps]]\nid=\"a\"\nhost = \"a.example.com\"\nupstream = \"http://127.0.0.1:1\"\n",
        )
        .unwrap();
        let w = c.access_levels[0].window.as_ref().unwrap();
        assert_eq!(w.days, [true, false, false, false, true, false, false]);
        assert_eq!((w.from, w.to), (9 * 60, 17 * 60 + 30));
        for (level, key, needle) in [
            ("name = \"x\"", "access_levels[0]", "needs a requirement"),
            (
                "name = \"x\"\nclient_certificate = true",
                "access_levels[0].client_certificate",
                "client_ca",
            ),
            (
                "name = \"x\"\nhours = \"17:00-09:00\"",
                "access_levels[0].hours",
                "not a span of hours",
            ),
            (
                "name = \"x\"\ndays = [\"someday\"]",
                "access_levels[0].days",
                "not a day",
            ),
            (
                "name = \"x\"\nhours = \"09:00-17:00\"\ntime_zone = \"Europe/Berln\"",
                "access_levels[0].time_zone",
                "did you mean",
            ),
            (
                "name = \"a b\"\nip_ranges = [\"10.0.0.0/8\"]",
                "access_levels[0].name",
                "not a level name",
            ),
        ] {
            let err = parse(&format!(
                "[[access_levels]]\n{level}\n[[apps]]\nid=\"a\"\nhost = \"a.example.com\"\nupstream = \"http://127.0.0.1:1\"\n"
            ))
            .unwrap_err();
            assert_eq!(err[0].key, key, "{level}: {err:?}");
            assert!(err[0].message.contains(needle), "{level}: {err:?}");
        }
    }

    #[test]
    fn a_web_app_may_name_a_pool_of_upstreams_with_a_health_check() {
        let app = |keys: &str| format!("[[apps]]\nid=\"a\"\nhost = \"a.example.com\"\n{keys}\n");
        let c = parse(&app(
            "upstream = [\"http://10.0.0.5:8501\", \"http://10.0.0.6:8501\"]\nhealth_check = { path = \"/healthz\" }",
        ))
        .unwrap();
        assert_eq!(c.apps[0].upstreams.len(), 2);
        assert_eq!(c.apps[0].upstream().as_str(), "http://10.0.0.5:8501/");
        let hc = c.apps[0].health_check.as_ref().unwrap();
        assert_eq!(
            (
                hc.interval.as_secs(),
                hc.timeout.as_secs(),
                hc.healthy,
                hc.unhealthy
            ),
            (5, 2, 2, 2)
        );
        // The app's timeouts default to the top-level ones; its own replace them.
        let c = parse(&format!(
            "upstream_timeout = \"30s\"\n{}",
            app("upstream = \"https://10.0.0.5:1\"\nupstream_connect_timeout = \"1s\"\nupstream_ca = \"ca.pem\"")
        ))
        .unwrap();
        let conn = &c.apps[0].connection;
        assert_eq!(
            (conn.connect_timeout.as_secs(), conn.timeout.as_secs()),
            (1, 30)
        );
        assert!(conn.ca.as_ref().unwrap().ends_with("ca.pem"));
        assert!(conn.own_pool(c.upstream_connect_timeout));
        for (keys, needle) in [
            ("upstream = []", "a URL or a list"),
            (
                "upstream = [\"http://10.0.0.5:1\", \"http://10.0.0.5:1\"]",
                "listed twice",
            ),
            (
                "upstream = [\"tcp://10.0.0.5:22\", \"tcp://10.0.0.6:22\"]",
                "one upstream",
            ),
            (
                "upstream = \"tcp://10.0.0.5:22\"\nhealth_check = { path = \"/\" }",
                "does not apply to a TCP app",
            ),
            (
                "upstream = \"http://10.0.0.5:1\"\nhealth_check = { path = \"healthz\" }",
                "not a path",
            ),
            (
                "upstream = \"http://10.0.0.5:1\"\nhealth_check = { path = \"/h\", interval = \"1s\", timeout = \"5s\" }",
                "timeout at most the interval",
            ),
            (
                "upstream = \"http://10.0.0.5:1\"\nupstream_ca = \"ca.pem\"",
                "for https:// upstreams",
            ),
            (
                "upstream = \"https://10.0.0.5:1\"\nupstream_client_cert = \"c.pem\"",
                "needs its key",
            ),
        ] {
            let err = parse(&app(keys)).unwrap_err();
            assert!(
                err.iter().any(|e| e.message.contains(needle)),
                "{keys}: {err:?}"
            );
        }
    }

    #[test]
    fn dns01_takes_wildcards_and_a_tsig_key() {
        let app = "[[apps]]\nid=\"a\"\nhost = \"a.apps.example.com\"\nupstream = \"http://127.0.0.1:1\"\n";
        let dns = "dns = { provider = \"rfc2136\", server = \"127.0.0.1:5353\", key_name = \"castellan\", key_secret = \"c2VjcmV0\" }";
        let c = parse(&format!(
            "listen = \"0.0.0.0:443\"\n[tls]\nacme = {{ domains = [\"*.apps.example.com\", \"apps.example.com\"], {dns} }}\n{app}"
        ))
        .unwrap();
        let Some(Tls {
            certificates: Certificates::Acme(acme),
            ..
        }) = &c.tls
        else {
            panic!("no ACME: {:?}", c.tls)
        };
        let AcmeChallenge::Dns01(DnsProvider::Rfc2136 { server, key }) = &acme.challenge else {
            panic!("dns-01 is implied by dns: {:?}", acme.challenge)
        };
        assert_eq!(server, "127.0.0.1:5353");
        assert_eq!(
            (key.algorithm, key.secret.as_slice()),
            (TsigAlgorithm::HmacSha256, &b"secret"[..])
        );
        assert!(
            !format!("{key:?}").contains("115"),
            "the secret stays out of Debug output"
        );
        // Its own pages go on the first name that is not a wildcard.
        assert_eq!(c.public_url.as_str(), "https://apps.example.com/");
        assert!(acme.covers("a.apps.example.com") && acme.covers("apps.example.com"));
        assert!(!acme.covers("a.b.apps.example.com") && !acme.covers("xapps.example.com"));

        for (acme, needle) in [
            (
                "domains = [\"*.apps.example.com\"], challenge = \"tls-alpn-01\"",
                "only the dns-01 challenge",
            ),
            (
                "domains = [\"*.apps.example.com\"], challenge = \"dns-01\"",
                "add dns = {",
            ),
            (
                "domains = [\"a.*.example.com\"], challenge = \"dns-01\"",
                "one `*.` label in front",
            ),
            (
                &format!("domains = [\"*.apps.example.com\"], {dns}"),
                "public_url = \"https://auth.apps.example.com\"",
            ),
            (
                &format!("domains = [\"a.example.com\"], challenge = \"http-01\", {dns}"),
                "dns-01 challenge only",
            ),
            (
                "domains = [\"a.example.com\"], dns = { provider = \"route53\", server = \"x\", key_name = \"k\", key_secret = \"c2VjcmV0\" }",
                "not a DNS provider castellan speaks",
            ),
            (
                "domains = [\"a.example.com\"], dns = { provider = \"rfc2136\", server = \"x\", key_name = \"k\", key_secret = \"not base64!\" }",
                "base64, as tsig-keygen prints it",
            ),
            (
                "domains = [\"a.example.com\"], dns = { provider = \"rfc2136\", server = \"x\", key_name = \"k\", key_secret = \"c2VjcmV0\", key_algorithm = \"hmac-md5\" }",
                "hmac-sha256, hmac-sha384, hmac-sha512",
            ),
            (
                "domains = [\"a.example.com\"], dns = { provider = \"rfc2136\", key_name = \"k\", key_secret = \"c2VjcmV0\", zone = \"x\" }",
                "tls.acme.dns.server",
            ),
        ] {
            let err = parse(&format!("[tls]\nacme = {{ {acme} }}\n{app}")).unwrap_err();
            assert!(
                err.iter()
                    .any(|e| e.message.contains(needle) || e.key.contains(needle)),
                "{acme}: {err:?}"
            );
        }
    }

    #[test]
    fn tracing_exports_to_an_otlp_endpoint() {
        let app =
            "[[apps]]\nid=\"a\"\nhost = \"a.example.com\"\nupstream = \"http://127.0.0.1:1\"\n";
        let c = parse(&format!(
            "[tracing]\notlp_endpoint = \"http://collector:4318\"\nsample_ratio = 0.25\nheaders = {{ x-api-key = \"${{SECRET}}\" }}\n{app}"
        ))
        .unwrap();
        let t = c.tracing.unwrap();
        assert_eq!(
            t.endpoint.as_str(),
            "http://collector:4318/v1/traces",
            "a base URL gets the path"
        );
        assert_eq!(
            (t.sample_ratio, t.service_name.as_str()),
            (0.25, "castellan")
        );
        assert_eq!(t.headers[0].0, "x-api-key");
        assert_eq!(t.headers[0].1.0, "s3cret");
        let c = parse(&format!(
            "[tracing]\notlp_endpoint = \"https://otlp.example.com/otlp/v1/traces\"\n{app}"
        ))
        .unwrap();
        assert_eq!(
            c.tracing.unwrap().endpoint.path(),
            "/otlp/v1/traces",
            "a full URL stays"
        );
        assert!(
            parse(app).unwrap().tracing.is_none(),
            "off unless configured"
        );
        for (tracing, needle) in [
            ("sample_ratio = 0.5", "missing"),
            ("otlp_endpoint = \"collector:4318\"", "OTLP/HTTP address"),
            (
                "otlp_endpoint = \"http://c:4318\"\nsample_ratio = 2.0",
                "from 0 to 1",
            ),
            (
                "otlp_endpoint = \"http://c:4318\"\nheaders = { \"bad header\" = \"x\" }",
                "not a header name",
            ),
            (
                "otlp_endpoint = \"http://c:4318\"\nheaders = { a = \"line\\nbreak\" }",
                "not a header value",
            ),
            (
                "otlp_endpoint = \"http://c:4318\"\nsampling = 1",
                "sample_ratio",
            ),
        ] {
            let err = parse(&format!("[tracing]\n{tracing}\n{app}")).unwrap_err();
            assert!(
                err.iter()
                    .any(|e| e.message.contains(needle) || e.key.contains(needle)),
                "{tracing}: {err:?}"
            );
        }
    }

    #[test]
    fn audit_sinks_are_webhooks_or_files() {
        let app =
            "[[apps]]\nid=\"a\"\nhost = \"a.example.com\"\nupstream = \"http://127.0.0.1:1\"\n";
        let c = parse(&format!(
            "[[audit_sinks]]\nid = \"siem\"\nkind = \"webhook\"\nurl = \"https://siem.example.com/in\"\n\
             [[audit_sinks]]\nid = \"ship\"\nkind = \"file\"\npath = \"audit.jsonl\"\nmax_size = \"512KB\"\nkeep = 2\n{app}"
        ))
        .unwrap();
        assert_eq!(c.audit_sinks.len(), 2);
        assert!(matches!(
            &c.audit_sinks[1].kind,
            AuditSinkKind::File {
                max_size: 524_288,
                keep: 2,
                ..
            }
        ));
        assert_eq!(parse_size("100MB"), Some(100 << 20));
        assert_eq!(parse_size("0"), None);
        for (sink, needle) in [
            (
                "id = \"x\"\nkind = \"carrier-pigeon\"",
                "\"syslog\" or \"file\"",
            ),
            (
                "id = \"x\"\nkind = \"syslog\"\naddress = \"udp://h:514\"",
                "tcp://HOST:PORT or tls://",
            ),
            (
                "id = \"x\"\nkind = \"webhook\"\nurl = \"ftp://x\"",
                "http:// or https://",
            ),
            (
                "id = \"x\"\nkind = \"file\"\npath = \"a\"\nmax_size = \"lots\"",
                "not a size",
            ),
            (
                "id = \"x\"\nkind = \"file\"\npath = \"a\"\nbatch = 5000",
                "1 to 1000",
            ),
        ] {
            let err = parse(&format!("[[audit_sinks]]\n{sink}\n{app}")).unwrap_err();
            assert!(
                err.iter().any(|e| e.message.contains(needle)),
                "{sink}: {err:?}"
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("8h"), Some(Duration::from_secs(28800)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604800)));
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("5 minutes"), None);
    }
}
