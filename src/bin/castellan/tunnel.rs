//! `castellan tunnel URL`: a TCP connection to a TCP app behind castellan (SSH, PostgreSQL), as the
//! person signed in with `castellan login` or as a service account, carried in a WebSocket
//! (`castellan::tunnel`). Each local connection, or the one on stdio (SSH's `ProxyCommand`), is a
//! tunnel of its own, with a fresh token.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use http::header;

use castellan::tunnel::{self, End, Tally};

use crate::remote::{self, Fresh};

#[derive(Args)]
pub struct TunnelArgs {
    /// The TCP app's URL on castellan, e.g. https://ssh.example.com.
    url: String,
    /// Listen on 127.0.0.1:PORT; every connection to it is a tunnel of its own.
    #[arg(
        long,
        value_name = "PORT",
        conflicts_with = "stdio",
        required_unless_present = "stdio"
    )]
    local_port: Option<u16>,
    /// Carry stdin and stdout instead (for SSH's ProxyCommand); ends when the tunnel does.
    #[arg(long)]
    stdio: bool,
    /// Authenticate as this service account instead of the person signed in with `castellan
    /// login`; its key is read from CASTELLAN_SERVICE_ACCOUNT_KEY (never from the command line).
    #[arg(long, value_name = "NAME")]
    service_account: Option<String>,
}

pub async fn run(args: TunnelArgs) -> Result<ExitCode> {
    let (remote_url, _) = remote::origin_of(&args.url)?;
    let fresh = Arc::new(match &args.service_account {
        None => Fresh::signed_in(&args.url),
        Some(name) => {
            let key = castellan::config::service_account_key().ok_or_else(|| {
                anyhow!(
                    "--service-account {name} needs its key in CASTELLAN_SERVICE_ACCOUNT_KEY \
                         (create one with `castellan service-accounts keys create {name}`)"
                )
            })?;
            Fresh::service_account(&args.url, name, &key)
        }
    });
    // Fail now, not at the first connection, if the sign-in or the key is not good.
    fresh.get().await?;
    let client = reqwest::Client::builder()
        .http1_only()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the HTTP client builds");
    if args.stdio {
        let end = match connect(&client, &remote_url, &fresh).await {
            Ok((ws, keepalive)) => {
                let tally = Tally::default();
                tunnel::pump(
                    ws,
                    tokio::io::stdin(),
                    tokio::io::stdout(),
                    keepalive,
                    false,
                    std::future::pending(),
                    &tally,
                )
                .await
            }
            Err(e) => {
                eprintln!("castellan tunnel: {e:#}");
                std::process::exit(1);
            }
        };
        // Exits at once: a read of stdin may still be waiting in its thread.
        std::process::exit(match explain(&end) {
            None => 0,
            Some(why) => {
                eprintln!("castellan tunnel: {why}");
                1
            }
        });
    }
    let port = args
        .local_port
        .expect("clap requires --local-port without --stdio");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| {
            format!("cannot listen on 127.0.0.1:{port}: choose another --local-port")
        })?;
    let local = listener.local_addr()?;
    eprintln!(
        "Listening on {local}: each connection is a tunnel to {} (Ctrl-C to stop).",
        args.url
    );
    loop {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (client, url, fresh) = (client.clone(), remote_url.clone(), fresh.clone());
        tokio::spawn(async move {
            let (ws, keepalive) = match connect(&client, &url, &fresh).await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("castellan tunnel: connection from {peer} refused: {e:#}");
                    return;
                }
            };
            let (r, w) = stream.into_split();
            let tally = Tally::default();
            let end =
                tunnel::pump(ws, r, w, keepalive, false, std::future::pending(), &tally).await;
            if let Some(why) = explain(&end) {
                eprintln!("castellan tunnel: connection from {peer} ended: {why}");
            }
        });
    }
}

/// What to tell the person about how a tunnel ended; None for a clean end.
fn explain(end: &End) -> Option<String> {
    match end {
        End::Finished | End::Closed(1000, _) => None,
        End::Closed(tunnel::REVOKED, reason) => Some(format!(
            "{reason}: your access to this app ended (policy change, sign-out or revoked key)"
        )),
        End::Closed(code, reason) => Some(format!("castellan closed the tunnel ({code}) {reason}")),
        End::Local(e) => Some(format!("the local connection failed: {e}")),
        End::Dropped => Some("the connection to castellan was cut".into()),
        End::Broken(e) => Some(format!("the connection to castellan failed: {e}")),
        End::Silent => Some("castellan stopped answering (no keep-alive for too long)".into()),
        End::Stopped(_, reason) => Some(reason.clone()),
    }
}

type Ws = tokio_tungstenite::WebSocketStream<reqwest::Upgraded>;

/// Opens one tunnel: the WebSocket handshake with a fresh token. Returns the WebSocket and the
/// server's keep-alive interval.
async fn connect(
    client: &reqwest::Client,
    url: &url::Url,
    fresh: &Fresh,
) -> Result<(Ws, Duration)> {
    let token = fresh.get().await?;
    let key = tunnel::new_key();
    let resp = client
        .get(url.clone())
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, &key)
        .header(header::SEC_WEBSOCKET_PROTOCOL, tunnel::SUBPROTOCOL)
        .bearer_auth(&token)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    if resp.status().as_u16() != 101 {
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        // The sign-in became too old for the app between the token and the tunnel.
        if body["error"] == "reauthentication_required" {
            bail!(
                "{url} needs a sign-in within the last {} s and yours is older: run `castellan login {}` again",
                body["max_age"],
                url.origin().ascii_serialization()
            );
        }
        if body["error"] == "insufficient_user_authentication" {
            bail!(
                "{}: run `castellan login {url}` again and sign in that way",
                body["message"]
                    .as_str()
                    .unwrap_or("the app needs a stronger sign-in")
            );
        }
        match body["message"].as_str() {
            Some(m) => bail!("{url} answered {status}: {m}"),
            None => bail!(
                "{url} answered {status}: is it a TCP app on castellan (upstream = \"tcp://…\")? \
                 A proxy in front of castellan must pass WebSocket upgrades"
            ),
        }
    }
    let expected = tunnel::accept_key(key.as_bytes());
    let accepted = resp
        .headers()
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !accepted {
        bail!("{url} did not complete the WebSocket handshake (wrong Sec-WebSocket-Accept)");
    }
    let keepalive = resp
        .headers()
        .get(tunnel::KEEPALIVE_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(Duration::from_secs(20), Duration::from_secs);
    let io = resp
        .upgrade()
        .await
        .with_context(|| format!("the WebSocket to {url} did not open"))?;
    Ok((tunnel::websocket(io, false).await, keepalive))
}
