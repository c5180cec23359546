//! The `castellan` command: serve, demo, check-config, and managing users, access, groups, sessions
//! and the audit trail. One module per command family.

mod access;
mod audit;
mod demo;
mod groups;
mod remote;
mod service_accounts;
mod sessions;
mod store_cmd;
mod tunnel;
mod users;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use castellan::config::Config;
use castellan::identity::local;
use castellan::policy::snapshot::Resource;
use castellan::policy::{Member, Role};
use castellan::store::{Actor, Store};
use castellan::{runtime, server};

/// mimalloc: every request allocates and frees a few dozen small buffers (headers, strings, tasks),
/// often on different threads; glibc's malloc spent a fifth of castellan's instructions on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Freed memory goes back to the system at once. mimalloc's default delays it until later
/// allocations, so an idle castellan kept the 19 MiB a password check (Argon2) had used: 38 MiB
/// after one sign-in instead of 18. Under load this costs about one `madvise` per 17 requests.
fn return_freed_memory_at_once() {
    // `mi_option_purge_delay` in the mimalloc v3 that Cargo.lock pins (include/mimalloc.h); the
    // -sys crate leaves options unnamed and says to pass their index.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets a plain integer option; called first thing in main, before other threads.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0)
    }
}

#[derive(Parser)]
#[command(
    name = "castellan",
    version,
    about = "A self-hosted identity-aware proxy: sign people in, decide every request, proxy to your app.",
    long_about = "castellan sits in front of your apps (Streamlit dashboards, notebooks, admin tools), signs people in \
with OpenID Connect or local accounts, lets through only those you shared the app with, and tells the app who they are \
in a signed JWT header.\n\nTry it with zero setup:  castellan demo",
    after_help = "Every command finds its configuration with --config FILE, or CASTELLAN_CONFIG, or ./castellan.toml, \
and its store (users, sessions, access lists) through the configuration's `store` key."
)]
struct Cli {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        env = "CASTELLAN_CONFIG",
        default_value = "castellan.toml",
        value_name = "FILE"
    )]
    config: PathBuf,

    /// Log format: human-readable text, or one JSON object per line.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "CASTELLAN_LOG_FORMAT"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    #[command(
        after_help = "Example:\n  castellan serve --config /etc/castellan/castellan.toml\n\n\
SIGTERM or Ctrl-C stops accepting connections and lets in-flight requests finish (up to 30 s).\n\
Set RUST_LOG (e.g. RUST_LOG=castellan=debug) for more detail."
    )]
    Serve,

    /// Run a self-contained demo: temporary store, a generated admin account, a built-in "whoami" app.
    #[command(
        after_help = "Example:\n  castellan demo\n  castellan demo --listen 127.0.0.1:9090\n\n\
Prints the URL to open and the admin password (once). Everything lives in a temporary folder that is deleted on exit."
    )]
    Demo {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        listen: SocketAddr,
    },

    /// Ask a running castellan whether it is healthy (for container health checks).
    #[command(
        after_help = "Examples:\n  castellan healthcheck\n  castellan healthcheck --url http://127.0.0.1:8080/.castellan/healthz\n\n\
Checks /.castellan/healthz on the configured listen address; exit status 0 when healthy, 1 when not.\n\
Container images have no shell or curl: use it as HEALTHCHECK CMD [\"/castellan\", \"healthcheck\"]."
    )]
    Healthcheck {
        /// The health URL (default: http://LISTEN/.castellan/healthz).
        #[arg(long)]
        url: Option<String>,
    },

    /// Validate the configuration and report every problem at once.
    #[command(
        after_help = "Example:\n  castellan check-config --config castellan.toml\n\nExit status 0 when valid, 2 when not."
    )]
    CheckConfig,

    /// Manage local accounts (the built-in sign-in; `local_accounts = true`).
    #[command(subcommand)]
    Users(users::UsersCommand),

    /// Share an app: add or remove members of its policy; takes effect in under a second.
    #[command(subcommand)]
    Access(access::AccessCommand),

    /// Read, replace or import whole policy documents (the shape gcloud prints).
    #[command(subcommand)]
    Policy(access::PolicyCommand),

    /// Explain whether someone may open an app, and which binding decides it.
    Check(access::CheckArgs),

    /// Manage castellan's own groups (members `group:NAME`).
    #[command(subcommand)]
    Groups(groups::GroupsCommand),

    /// List and revoke sign-in sessions; open connections of revoked sessions close within a second.
    #[command(subcommand)]
    Sessions(sessions::SessionsCommand),

    /// Read the audit trail of decisions and changes.
    Audit(audit::AuditArgs),

    /// Sign the command line in to a castellan (a browser sign-in returned to this computer).
    #[command(
        after_help = "Example:\n  castellan login https://apps.example.com\n\n\
Prints a link (and opens it when a browser is available); after you approve, the credential is saved\n\
in ~/.config/castellan/credentials.json (mode 0600). It is a session: `castellan sessions` lists and\n\
revokes it like any other. No configuration file is needed."
    )]
    Login {
        url: String,
        /// Only print the link; do not try to open a browser.
        #[arg(long)]
        no_browser: bool,
    },

    /// Access tokens for scripts, as the person signed in with `castellan login`.
    #[command(subcommand)]
    Token(remote::TokenCommand),

    /// Forward a local port to a protected app, attaching fresh credentials (WebSockets too).
    #[command(
        after_help = "Example:\n  castellan proxy https://apps.example.com --port 8080\n  curl http://127.0.0.1:8080/api/items\n\n\
Listens on 127.0.0.1 only. Like `gcloud run services proxy`, but for any app behind castellan, as the\n\
person signed in with `castellan login`; tokens are renewed before they expire."
    )]
    Proxy {
        url: String,
        #[arg(long, default_value = "8080")]
        port: u16,
    },

    /// Open tunnels to a TCP app (SSH, PostgreSQL, any TCP service) behind castellan.
    #[command(after_help = TUNNEL_HELP)]
    Tunnel(tunnel::TunnelArgs),

    /// Manage service accounts (members `serviceAccount:NAME`) and their keys.
    #[command(subcommand, name = "service-accounts")]
    ServiceAccounts(service_accounts::ServiceAccountsCommand),

    /// Move an installation between stores (SQLite to PostgreSQL, or back).
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
}

const TUNNEL_HELP: &str = "Examples:\n  castellan login https://ssh.example.com\n  \
castellan tunnel https://ssh.example.com --local-port 2222 &\n  ssh -p 2222 alice@127.0.0.1\n\n  \
ssh -o ProxyCommand='castellan tunnel https://ssh.example.com --stdio' alice@db-host\n  \
scp -o ProxyCommand='castellan tunnel https://ssh.example.com --stdio' big.tar alice@db-host:\n\n  \
castellan tunnel https://pg.example.com --local-port 5432 &\n  psql -h 127.0.0.1 -p 5432 -U app appdb\n\n  \
CASTELLAN_SERVICE_ACCOUNT_KEY=$KEY castellan tunnel https://pg.example.com --local-port 5432 --service-account etl-job\n\n\
The app must be a TCP app (upstream = \"tcp://HOST:PORT\") and you need roles/tunnelAccessor on it.\n\
--local-port listens on 127.0.0.1 only. Tokens are renewed before they expire; an open tunnel closes\n\
within a second when your access ends. No configuration file is needed.";

fn main() -> ExitCode {
    return_freed_memory_at_once();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: in a file or a log collector they are noise.
    let colour =
        std::io::IsTerminal::is_terminal(&std::io::stderr()) && !castellan::config::no_color();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Exit status for an invalid configuration, distinct from runtime failures.
const CONFIG_INVALID: u8 = 2;

fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprint!("{errors}");
        ExitCode::from(CONFIG_INVALID)
    })
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Demo { listen } => return demo(listen).await,
        Command::Login { url, no_browser } => return remote::login(&url, no_browser).await,
        Command::Token(cmd) => return remote::token(cmd).await,
        Command::Proxy { url, port } => return remote::proxy(&url, port).await,
        Command::Tunnel(args) => return tunnel::run(args).await,
        Command::Store(cmd) => return store_cmd::run(cmd).await,
        _ => {}
    }
    // The server and check-config need every secret; commands that only open the store (and
    // the health check) do not, so a second terminal beside `serve` needs no provider secret.
    let strict = matches!(cli.command, Command::Serve | Command::CheckConfig);
    let loaded = if strict {
        Config::load(&cli.config)
    } else {
        Config::load_for_store(&cli.config)
    };
    let config = match loaded {
        Ok(c) => c,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(CONFIG_INVALID));
        }
    };
    match cli.command {
        Command::Demo { .. }
        | Command::Login { .. }
        | Command::Token(_)
        | Command::Store(_)
        | Command::Tunnel(_)
        | Command::Proxy { .. } => {
            unreachable!("handled above")
        }
        Command::CheckConfig => {
            println!(
                "{}: OK. {} app(s): {}; sign-in: {}; store: {}; callback URL to register with providers: {}",
                cli.config.display(),
                config.apps.len(),
                config
                    .apps
                    .iter()
                    .map(|a| &*a.id)
                    .collect::<Vec<_>>()
                    .join(", "),
                sign_in_methods(&config),
                config.store,
                config.redirect_uri(),
            );
            let providers = check_providers(&config).await;
            let dns = check_dns01(&config).await;
            if let Some(tracing) = &config.tracing {
                match castellan::runtime::traces::check(tracing).await {
                    Ok(()) => println!(
                        "tracing: the collector at {} takes OTLP/HTTP exports",
                        tracing.endpoint
                    ),
                    Err(e) => eprintln!(
                        "warning: tracing: {e}; spans will be retried and then dropped until it does (check otlp_endpoint: castellan POSTs protobuf to it)"
                    ),
                }
            }
            Ok(if dns == ExitCode::SUCCESS {
                providers
            } else {
                dns
            })
        }
        Command::Serve => {
            // The file is watched for changes unless the configuration came from the environment.
            let from_env = castellan::config::from_environment();
            serve(config, None, (!from_env).then_some(cli.config.as_path())).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck { url } => {
            let url = url.unwrap_or_else(|| {
                let mut addr = config.listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip(if addr.is_ipv4() {
                        [127, 0, 0, 1].into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                format!("http://{addr}/.castellan/healthz")
            });
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(3))
                .build()?;
            match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => {
                    println!("healthy: {url}");
                    Ok(ExitCode::SUCCESS)
                }
                Ok(r) => {
                    eprintln!("unhealthy: {url} answered {}", r.status());
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => {
                    eprintln!("unhealthy: {url}: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Users(cmd) => users::run(&config, cmd).await,
        Command::Access(cmd) => access::access(&config, cmd).await,
        Command::Policy(cmd) => access::policy(&config, cmd).await,
        Command::Check(args) => access::check(&config, args).await,
        Command::Groups(cmd) => groups::run(&config, cmd).await,
        Command::Sessions(cmd) => sessions::run(&config, cmd).await,
        Command::Audit(args) => audit::run(&config, args).await,
        Command::ServiceAccounts(cmd) => service_accounts::run(&config, cmd).await,
    }
}

/// Asks each provider for its discovery document and keys, and whether its token endpoint accepts
/// castellan's client id and secret: a wrong secret fails check-config (exit 2) instead of the
/// first person's sign-in. A provider this machine cannot reach is only a warning.
async fn check_providers(config: &Config) -> ExitCode {
    use castellan::identity::oidc::{Client, Credentials};
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("the HTTP client builds");
    let mut status = ExitCode::SUCCESS;
    for p in &config.providers {
        let client = Client::new(p.clone(), config.redirect_uri(), http.clone());
        let answer = match client.check().await {
            Ok(()) => client.check_credentials().await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(Credentials::Accepted) => println!(
                "provider {}: discovery and keys OK; its token endpoint accepts castellan's client_id and client_secret",
                p.id
            ),
            Ok(Credentials::Refused(words)) => {
                eprintln!(
                    "provider {}: its token endpoint refused castellan's client credentials ({words}): check client_id and client_secret against the app registered at {}",
                    p.id, p.issuer
                );
                status = ExitCode::from(CONFIG_INVALID);
            }
            Ok(Credentials::Unclear(words)) => eprintln!(
                "warning: provider {}: could not tell whether it accepts castellan's client credentials (its token endpoint answered {words})",
                p.id
            ),
            Err(e) => eprintln!(
                "warning: {e}; check-config could not ask it from here, and sign-in with it needs it"
            ),
        }
    }
    status
}

/// DNS-01's provider, asked before the first order needs it: is the server authoritative for the
/// zone, and does it take the TSIG key?
async fn check_dns01(config: &Config) -> ExitCode {
    use castellan::config::{AcmeChallenge, Certificates};
    let Some(Certificates::Acme(acme)) = config.tls.as_ref().map(|t| &t.certificates) else {
        return ExitCode::SUCCESS;
    };
    let AcmeChallenge::Dns01(dns) = &acme.challenge else {
        return ExitCode::SUCCESS;
    };
    let mut status = ExitCode::SUCCESS;
    for domain in &acme.domains {
        use castellan::server::dns01::Checked;
        match castellan::server::dns01::check(dns, domain).await {
            Checked::Zone(zone) => println!(
                "ACME dns-01 for {domain}: the DNS server is authoritative for {zone} and takes the TSIG key"
            ),
            Checked::Unreachable(e) => eprintln!(
                "warning: ACME dns-01 for {domain}: {e}; check-config could not ask it from here, and certificates need it"
            ),
            Checked::Refused(e) => {
                eprintln!("ACME dns-01 for {domain}: {e}");
                status = ExitCode::from(CONFIG_INVALID);
            }
        }
    }
    status
}

fn sign_in_methods(config: &Config) -> String {
    let mut m: Vec<String> = config
        .providers
        .iter()
        .map(|p| format!("{} ({})", p.id, p.issuer))
        .collect();
    if config.local_accounts {
        m.push("local accounts".into());
    }
    m.join(", ")
}

pub(crate) async fn open_store(config: &Config) -> Result<Store> {
    Store::open(&config.store).await.map_err(Into::into)
}

async fn serve(config: Config, banner: Option<String>, config_file: Option<&Path>) -> Result<()> {
    if let Some(files) = server::raise_open_files_limit() {
        tracing::debug!("open files limit: {files}");
    }
    let store = open_store(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {}: is another program using it? Set `listen` in the configuration \
             (or `castellan demo --listen 127.0.0.1:9090`) to a free address",
            config.listen
        )
    })?;
    let metrics_listener =
        match config.metrics_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for metrics (metrics_listen)")
            })?),
            None => None,
        };
    let state = runtime::State::new(config, store).await?;
    let c = &state.config;
    tracing::info!(
        listen = %c.listen,
        public_url = %c.public_url,
        apps = c.apps.len(),
        sign_in = %sign_in_methods(c),
        store = %c.store,
        "castellan is serving"
    );
    if c.public_url.scheme() == "http" && !is_loopback_host(&c.public_url) {
        tracing::warn!(
            "public_url {} is plain http on a non-loopback host: session cookies can be read on the network. \
             Put castellan behind HTTPS and set public_url to the https:// address",
            c.public_url
        );
    }
    for provider in &state.providers {
        let provider_id = provider.config.id.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let Some(p) = state.provider(&provider_id) else {
                return;
            };
            match p.check().await {
                Ok(()) => {
                    tracing::info!(provider = %provider_id, issuer = %p.config.issuer, "provider discovery ok")
                }
                Err(e) => {
                    tracing::error!(provider = %provider_id, "{e}; sign-in with it will fail until this is fixed")
                }
            }
        });
    }
    if let Some(l) = &metrics_listener {
        tracing::info!("metrics at http://{}/metrics", l.local_addr()?);
    }
    if let Some(b) = banner {
        println!("{b}");
    }
    server::run(
        state,
        listener,
        metrics_listener,
        shutdown_signal(),
        config_file.map(Path::to_path_buf),
    )
    .await?;
    Ok(())
}

fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        None => false,
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn demo(listen: SocketAddr) -> Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("castellan-demo-")
        .tempdir()?;
    let whoami = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let whoami_addr = whoami.local_addr()?;
    tokio::spawn(demo::serve_whoami(whoami));
    let config_path = dir.path().join("castellan.toml");
    // castellan's own pages on `localhost`, the app on the listen address: two origins, so the
    // app's pages can never read castellan's.
    let app_host = match listen.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        ip => ip.to_string(),
    };
    let text = format!(
        "# Written by `castellan demo`; deleted when it exits.\nlisten = \"{listen}\"\n\
         public_url = \"http://localhost:{port}\"\nstore = \"sqlite://castellan.db\"\n\n\
         [[apps]]\nid = \"demo\"\nhost = \"{app_host}\"\nupstream = \"http://{whoami_addr}\"\n",
        port = listen.port()
    );
    std::fs::write(&config_path, text)?;
    let config = match load_config(&config_path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let store = open_store(&config).await?;
    let email = "admin@example.com";
    let password = castellan::crypto::random_token(12);
    let hash = tokio::task::spawn_blocking({
        let p = password.clone();
        move || local::hash_password(&p)
    })
    .await?;
    store.add_user(email, &hash).await?;
    castellan::admin::ops::add(
        &store,
        &Resource::App("demo".into()),
        Role::Accessor,
        Member::parse(&format!("user:{email}"))?,
        None,
        &Actor::cli(),
    )
    .await?;
    castellan::admin::ops::add(
        &store,
        &Resource::Global,
        Role::Admin,
        Member::parse(&format!("user:{email}"))?,
        None,
        &Actor::cli(),
    )
    .await?;
    drop(store);
    let console = config.public_origin();
    let app_url = format!("http://{app_host}:{}", listen.port());
    // The commands as they run from here: `castellan` may not be on the PATH (cargo run).
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "castellan".into());
    let banner = format!(
        "\ncastellan demo is running.\n\n  Open      {app_url}/\n  Email     {email}\n  Password  {password}   (shown only now)\n\n\
         The app behind it is a built-in \"whoami\" page that shows the identity castellan sends it.\n\
         castellan's own pages (sign-in, your account, the admin console) are at {console}/, an address the app never shares.\n\
         The admin console (share the app, approve access requests, read the audit trail): {console}/.castellan/admin/\n\
         In another terminal, share it or take it away (effective in under a second):\n\
         \x20 {me} users add alice@example.com --config {cfg}\n\
         \x20 {me} access add demo user:alice@example.com --config {cfg}\n\
         \x20 {me} access list demo --config {cfg}\n\n\
         Ctrl-C stops the demo and deletes its temporary store.\n",
        cfg = config_path.display()
    );
    serve(config, Some(banner), None).await?;
    drop(dir);
    Ok(ExitCode::SUCCESS)
}

/// `2026-11-28 18:04:05 UTC` from unix seconds.
pub(crate) fn format_time(secs: i64) -> String {
    castellan::clock::format_rfc3339(secs)
        .replace('T', " ")
        .replace('Z', " UTC")
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_format_as_utc() {
        assert_eq!(super::format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::format_time(1_795_889_045), "2026-11-28 18:04:05 UTC");
    }
}
