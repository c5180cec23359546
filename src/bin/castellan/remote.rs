//! `castellan login`, `castellan token print` and `castellan proxy`: reaching protected apps from
//! the command line as the person signed in, without a configuration file.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;
use url::Url;

use castellan::config::{App, IdentityHeaders};
use castellan::crypto;
use castellan::gate::identity::value;
use castellan::gate::proxy::{self, Forwarded, Outbound};
use castellan::runtime::upstream::Pool;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Print an access token for an app (for curl, scripts, notebooks), valid up to an hour.
    #[command(
        after_help = "Example:\n  curl -H \"Proxy-Authorization: Bearer $(castellan token print https://apps.example.com/reports)\" \\\n       https://apps.example.com/reports/api"
    )]
    Print { url: String },
}

/// Stored credentials, by castellan origin: `~/.config/castellan/credentials.json`, mode 0600.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Credentials {
    #[serde(flatten)]
    by_origin: BTreeMap<String, Credential>,
}

#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Credential {
    refresh_token: String,
    email: String,
    expires_at: i64,
}

fn credentials_path() -> Result<PathBuf> {
    let dir = castellan::config::cli_credentials_dir().ok_or_else(|| {
        anyhow!("neither XDG_CONFIG_HOME nor HOME is set: cannot find where to keep credentials")
    })?;
    Ok(dir.join("credentials.json"))
}

fn load() -> Result<Credentials> {
    let path = credentials_path()?;
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not readable JSON", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Credentials::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn save(creds: &Credentials) -> Result<PathBuf> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = credentials_path()?;
    let dir = path.parent().expect("the path has a folder");
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(serde_json::to_string_pretty(creds)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

pub(crate) fn origin_of(url: &str) -> Result<(Url, String)> {
    let u = Url::parse(url)
        .with_context(|| format!("`{url}` is not a URL: write e.g. https://apps.example.com"))?;
    if !matches!(u.scheme(), "http" | "https") {
        bail!("`{url}` must be an http:// or https:// URL");
    }
    let origin = u.origin().ascii_serialization();
    Ok((u, origin))
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the HTTP client builds")
}

/// The token endpoint's answer: the JSON body, success or not.
async fn token_answer(origin: &str, form: &[(&str, &str)]) -> Result<(bool, serde_json::Value)> {
    let resp = http()
        .post(format!("{origin}/.castellan/token"))
        .form(form)
        .send()
        .await
        .with_context(|| format!("cannot reach {origin}"))?;
    let ok = resp.status().is_success();
    Ok((ok, resp.json().await.unwrap_or_default()))
}

async fn token_call(origin: &str, form: &[(&str, &str)]) -> Result<serde_json::Value> {
    let (ok, v) = token_answer(origin, form).await?;
    if !ok {
        bail!(
            "{origin} refused: {} {}",
            v["error"].as_str().unwrap_or("error"),
            v["error_description"].as_str().unwrap_or("")
        );
    }
    Ok(v)
}

/// `castellan login URL`: a browser sign-in returned to this computer. When the app at `URL`
/// needs a more recent sign-in than the browser's (its `reauth_max_age`), or a stronger one (its
/// step-up), the browser is asked to sign in again, so the command line's session is what the app
/// wants.
pub async fn login(url: &str, no_browser: bool) -> Result<ExitCode> {
    let (_, origin) = origin_of(url)?;
    let mut max_age = None;
    let mut step_up: Option<String> = None;
    loop {
        let cred = browser_sign_in(url, &origin, no_browser, max_age, step_up.as_deref()).await?;
        let mut creds = load()?;
        creds.by_origin.insert(origin.clone(), cred.clone());
        let path = save(&creds)?;
        // Does the app take this sign-in? An app that wants a fresher one says how fresh.
        let (ok, v) = token_answer(
            &origin,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &cred.refresh_token),
                ("audience", url),
            ],
        )
        .await?;
        if !ok && v["reauthentication_required"] == true && max_age.is_none() {
            let m = v["max_age"].as_i64().unwrap_or(0);
            println!(
                "This app needs a sign-in within the last {m} s: sign in again in the browser."
            );
            max_age = Some(m);
            continue;
        }
        // The app needs a stronger sign-in (its step-up): once more, through what it needs.
        if !ok && v["insufficient_user_authentication"] == true && step_up.is_none() {
            println!(
                "{}",
                v["error_description"]
                    .as_str()
                    .unwrap_or("This app needs a stronger sign-in.")
            );
            println!("Sign in again in the browser, the way the app asks.");
            step_up = Some(v["app"].as_str().unwrap_or_default().to_string());
            continue;
        }
        println!(
            "Signed in to {origin} as {} (saved in {}).",
            cred.email,
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
}

async fn browser_sign_in(
    url: &str,
    origin: &str,
    no_browser: bool,
    max_age: Option<i64>,
    step_up: Option<&str>,
) -> Result<Credential> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let verifier = crypto::random_token(48);
    let state = crypto::random_token(16);
    let link = format!(
        "{origin}/.castellan/cli/authorize?port={port}&state={state}&code_challenge={}{}{}",
        crypto::pkce_challenge(&verifier),
        max_age.map(|m| format!("&max_age={m}")).unwrap_or_default(),
        step_up
            .map(|a| format!(
                "&app={}",
                url::form_urlencoded::byte_serialize(a.as_bytes()).collect::<String>()
            ))
            .unwrap_or_default()
    );
    println!("Open this link to sign in, then approve:\n\n  {link}\n");
    if !no_browser {
        let _ = std::process::Command::new("xdg-open")
            .arg(&link)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    println!("Waiting for the browser (up to 5 minutes)…");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, String)>(1);
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let q: BTreeMap<String, String> = url::form_urlencoded::parse(
                                req.uri().query().unwrap_or("").as_bytes(),
                            )
                            .into_owned()
                            .collect();
                            let body = match (req.uri().path(), q.get("code"), q.get("state")) {
                                ("/callback", Some(code), Some(st)) => {
                                    let _ = tx.send((code.clone(), st.clone())).await;
                                    "castellan: the command line is signed in. You can close this tab."
                                }
                                _ => "castellan: this is not a sign-in callback.",
                            };
                            Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from_static(body.as_bytes()),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let got = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            match rx.recv().await {
                Some((code, st)) if crypto::equal(&st, &state) => return Some(code),
                Some(_) => continue, // a stray or forged callback: keep waiting for ours
                None => return None,
            }
        }
    })
    .await;
    server.abort();
    let code = got.ok().flatten().ok_or_else(|| {
        anyhow!("no sign-in arrived within 5 minutes; run `castellan login {url}` again")
    })?;
    let v = token_call(
        origin,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", &verifier),
        ],
    )
    .await?;
    Ok(Credential {
        refresh_token: v["refresh_token"]
            .as_str()
            .ok_or_else(|| anyhow!("{origin} sent no refresh token"))?
            .to_string(),
        email: v["email"].as_str().unwrap_or("").to_string(),
        expires_at: v["expires_at"].as_i64().unwrap_or(0),
    })
}

/// An access token for the app at `url`, from the saved credential.
async fn access_token(url: &str) -> Result<(String, i64)> {
    let (_, origin) = origin_of(url)?;
    let creds = load()?;
    let cred = creds.by_origin.get(&origin).ok_or_else(|| {
        anyhow!("not signed in to {origin}: run `castellan login {origin}` first")
    })?;
    let v = token_call(
        &origin,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &cred.refresh_token),
            ("audience", url),
        ],
    )
    .await?;
    let token = v["access_token"]
        .as_str()
        .ok_or_else(|| anyhow!("{origin} sent no access token"))?
        .to_string();
    Ok((token, v["expires_in"].as_i64().unwrap_or(60)))
}

pub async fn token(cmd: TokenCommand) -> Result<ExitCode> {
    match cmd {
        TokenCommand::Print { url } => {
            let (token, _) = access_token(&url).await?;
            println!("{token}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where tokens come from: the person signed in with `castellan login`, or a service account.
enum Source {
    SignedIn,
    ServiceAccount { name: String, key: String },
}

/// A fresh token for the app at `url`, renewed five minutes before it expires.
pub(crate) struct Fresh {
    url: String,
    source: Source,
    current: Mutex<Option<(String, Instant)>>,
}

impl Fresh {
    pub(crate) fn signed_in(url: &str) -> Fresh {
        Fresh {
            url: url.to_string(),
            source: Source::SignedIn,
            current: Mutex::new(None),
        }
    }

    pub(crate) fn service_account(url: &str, name: &str, key: &str) -> Fresh {
        Fresh {
            url: url.to_string(),
            source: Source::ServiceAccount {
                name: name.to_string(),
                key: key.to_string(),
            },
            current: Mutex::new(None),
        }
    }

    pub(crate) async fn get(&self) -> Result<String> {
        let mut slot = self.current.lock().await;
        if let Some((t, until)) = slot.as_ref()
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let (token, expires_in) = match &self.source {
            Source::SignedIn => access_token(&self.url).await?,
            Source::ServiceAccount { name, key } => {
                let (_, origin) = origin_of(&self.url)?;
                let v = token_call(
                    &origin,
                    &[
                        ("grant_type", "client_credentials"),
                        ("client_id", name),
                        ("client_secret", key),
                        ("audience", &self.url),
                    ],
                )
                .await?;
                let token = v["access_token"]
                    .as_str()
                    .ok_or_else(|| anyhow!("{origin} sent no access token"))?
                    .to_string();
                (token, v["expires_in"].as_i64().unwrap_or(60))
            }
        };
        let renew = Duration::from_secs((expires_in - 300).max(30) as u64);
        *slot = Some((token.clone(), Instant::now() + renew));
        Ok(token)
    }
}

pub async fn proxy(url: &str, port: u16) -> Result<ExitCode> {
    let (remote, origin) = origin_of(url)?;
    let fresh = Arc::new(Fresh::signed_in(url));
    fresh.get().await?; // fail now, not on the first request, if the sign-in is gone
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}: choose another --port"))?;
    let local = listener.local_addr()?;
    let app = Arc::new(App {
        id: "remote".into(),
        upstreams: vec![Url::parse(&origin)?],
        health_check: None,
        connection: castellan::config::UpstreamConnection {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            ca: None,
            client_cert: None,
        },
        host: remote.host_str().unwrap_or_default().to_string(),
        path_prefix: "/".into(),
        audience: String::new(),
        identity_headers: IdentityHeaders::Castellan,
        upstream_auth: None,
        cors_origins: Vec::new(),
        reauth_max_age: None,
        step_up: Default::default(),
        headers: Default::default(),
        claims: Default::default(),
        provider_tokens: Default::default(),
    });
    let upstream = Arc::new(Pool::for_apps(Duration::from_secs(10)));
    let authority = remote.host_str().map(|h| match remote.port() {
        Some(p) => format!("{h}:{p}"),
        None => h.to_string(),
    });
    println!("Forwarding http://{local} to {origin} as the signed-in user (Ctrl-C to stop).");
    loop {
        let (stream, peer) = listener.accept().await?;
        let (fresh, app, upstream, authority) = (
            fresh.clone(),
            app.clone(),
            upstream.clone(),
            authority.clone(),
        );
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let (fresh, app, upstream, authority) = (
                        fresh.clone(),
                        app.clone(),
                        upstream.clone(),
                        authority.clone(),
                    );
                    async move {
                        let resp = match fresh.get().await {
                            Err(e) => {
                                let mut r = hyper::Response::new(castellan::web::full(format!(
                                    "castellan proxy: {e}\n"
                                )));
                                *r.status_mut() = http::StatusCode::UNAUTHORIZED;
                                r
                            }
                            Ok(token) => {
                                let target = req
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.as_str().to_string())
                                    .unwrap_or_else(|| "/".into());
                                if let Some(a) = authority
                                    .as_deref()
                                    .and_then(|a| http::HeaderValue::from_str(a).ok())
                                {
                                    req.headers_mut().insert(http::header::HOST, a);
                                }
                                // Proxy-Authorization, so the app keeps its own Authorization header.
                                let added = vec![(
                                    http::header::PROXY_AUTHORIZATION,
                                    value(&format!("Bearer {token}")),
                                )];
                                let forwarded = Forwarded {
                                    peer_ip: peer.ip(),
                                    peer_trusted: false,
                                    proto: "http",
                                };
                                let out = Outbound {
                                    app: &app,
                                    target: &target,
                                    forwarded,
                                    added,
                                    live: None,
                                    balancer: None,
                                };
                                match proxy::forward(&upstream, Duration::from_secs(120), req, out)
                                    .await
                                {
                                    Ok(r) => r,
                                    Err(e) => {
                                        let mut r = hyper::Response::new(castellan::web::full(
                                            format!("castellan proxy: {e}\n"),
                                        ));
                                        *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                                        r
                                    }
                                }
                            }
                        };
                        Ok::<_, Infallible>(resp)
                    }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}
