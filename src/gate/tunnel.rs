//! The tunnel front door: a WebSocket to a TCP app (`upstream = "tcp://HOST:PORT"`), through the
//! gate like every request, then carried to a TCP connection castellan opens only once the
//! decision allowed it. The wire protocol is [`crate::tunnel`]'s.
//!
//! A tunnel is registered live for as long as it is open: a change of policy, a sign-out, a
//! revoked key or a deactivation closes it within a second, on every replica, with close code
//! [`tunnel::REVOKED`]. Each ends in an audit record (kind `tunnel`) with its duration and the
//! bytes each way.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::Admitted;
use crate::config::App;
use crate::policy::Role;
use crate::runtime::State;
use crate::runtime::metrics::{AppLabel, Metrics, TunnelBytesLabels};
use crate::store::AuditRecord;
use crate::tunnel::{self, Tally};
use crate::web::ctx::Ctx;
use crate::web::failure::Failure;
use crate::web::{self, Body};

/// Answers a request for a TCP app; never fails: a refusal is answered by [`Failure::respond`].
pub async fn serve(
    state: &State,
    ctx: &mut Ctx,
    req: Request<Incoming>,
    app: &App,
    host: &str,
    path: &str,
) -> Response<Body> {
    match open(state, ctx, req, app, host, path).await {
        Ok(r) => r,
        Err(f) => f.respond(ctx),
    }
}

async fn open(
    state: &State,
    ctx: &mut Ctx,
    mut req: Request<Incoming>,
    app: &App,
    host: &str,
    path: &str,
) -> Result<Response<Body>, Failure> {
    let (
        Admitted {
            principal, live, ..
        },
        origin,
    ) = super::admit_request(state, ctx, &req, app, host, path).await?;
    let Some(key) = tunnel_key(&req) else {
        let url = match app.path_prefix.as_str() {
            "/" => origin.clone(),
            p => format!("{origin}{p}"),
        };
        return Err(Failure::tunnel_only(&app.id, &url));
    };
    if let Some(p) = &principal {
        let name = p.name();
        let max = state.config.max_tunnels_per_person;
        let open = state
            .live
            .count(|g| g.role == Role::TunnelAccessor && g.principal.name() == name);
        if open >= max {
            return Err(Failure::tunnel_limit(&name, max));
        }
    }
    // Only now, allowed, does castellan connect to the app.
    let target = app.upstream_authority();
    let timeout = app.connection.connect_timeout;
    let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&target)).await {
        Ok(Ok(tcp)) => tcp,
        failed => {
            let (kind, timed_out, detail) = match failed {
                Ok(Err(e)) => ("connect", false, e.to_string()),
                _ => ("timeout", true, format!("no answer within {timeout:?}")),
            };
            state.metrics.upstream_error(&app.id, kind);
            tracing::warn!(app = %app.id, upstream = %target, "cannot open a tunnel: {detail}");
            return Err(Failure::upstream(&app.id, timed_out));
        }
    };
    let _ = tcp.set_nodelay(true);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let keepalive = state.config.tunnel_keepalive;
    let record = AuditRecord {
        kind: "tunnel".into(),
        actor: principal
            .as_ref()
            .map_or_else(|| "anonymous".into(), |p| p.name().into()),
        ip: crate::net::ip_text(ctx.client_ip).into(),
        app: app.id.clone(),
        method: req.method().as_str().into(),
        path: path.into(),
        binding: ctx.binding.clone().unwrap_or_default(),
        reference: ctx.reference().into(),
        after: ctx
            .client_cert
            .as_deref()
            .map(|subject| serde_json::json!({ "client_certificate": subject })),
        ..Default::default()
    };
    let carried = Carried {
        metrics: state.metrics.clone(),
        audit: state.audit.clone(),
        app: app.id.to_string(),
    };
    let registered = live.map(crate::runtime::live::Pending::register);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("tunnel upgrade failed: {e}");
                return;
            }
        };
        let ws = tunnel::websocket(TokioIo::new(upgraded), true).await;
        let (reader, writer) = tcp.into_split();
        let (guard, revoked) = match registered {
            Some((guard, revoked)) => (Some(guard), revoked),
            None => (None, Box::pin(std::future::pending()) as _),
        };
        carried
            .run(ws, reader, writer, keepalive, revoked, record)
            .await;
        drop(guard);
    });

    let mut resp = Response::new(web::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, super::identity::value(&key));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(tunnel::SUBPROTOCOL),
    );
    h.insert(
        tunnel::KEEPALIVE_HEADER,
        HeaderValue::from(keepalive.as_secs().max(1)),
    );
    Ok(resp)
}

/// The `Sec-WebSocket-Accept` for a WebSocket handshake (RFC 6455 §4.2.1) that names the tunnel
/// subprotocol; None for anything else.
fn tunnel_key(req: &Request<Incoming>) -> Option<String> {
    let h = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let ok = req.method() == http::Method::GET
        && has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade")
        && h.get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13")
        && has_token(header::SEC_WEBSOCKET_PROTOCOL, tunnel::SUBPROTOCOL);
    let key = h.get(header::SEC_WEBSOCKET_KEY)?;
    ok.then(|| tunnel::accept_key(key.as_bytes()))
}

/// What an open tunnel reports to: metrics as bytes move, the audit trail when it ends.
struct Carried {
    metrics: Arc<Metrics>,
    audit: crate::runtime::audit::AuditSink,
    app: String,
}

impl Carried {
    async fn run(
        self,
        ws: tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
        reader: tokio::net::tcp::OwnedReadHalf,
        writer: tokio::net::tcp::OwnedWriteHalf,
        keepalive: Duration,
        mut revoked: crate::runtime::live::Revoked,
        mut record: AuditRecord,
    ) {
        let started = Instant::now();
        let open = self
            .metrics
            .tunnels_open
            .get_or_create(&AppLabel {
                app: self.app.as_str().into(),
            })
            .clone();
        open.inc();
        let tally = Tally::default();
        let (mut up_seen, mut down_seen) = (0, 0);
        let mut report = |tally: &Tally| {
            let up = tally.received.load(Ordering::Relaxed);
            let down = tally.sent.load(Ordering::Relaxed);
            self.bytes("up").inc_by(up - up_seen);
            self.bytes("down").inc_by(down - down_seen);
            (up_seen, down_seen) = (up, down);
        };
        let end = {
            // The stop signal: access revoked; meanwhile, bytes go to the metrics every second.
            let stop = async {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        () = &mut revoked => return (tunnel::REVOKED, "access was revoked".to_string()),
                        _ = tick.tick() => report(&tally),
                    }
                }
            };
            tunnel::pump(ws, reader, writer, keepalive, true, stop, &tally).await
        };
        report(&tally);
        open.dec();
        let elapsed = started.elapsed();
        let (up, down) = (
            tally.received.load(Ordering::Relaxed),
            tally.sent.load(Ordering::Relaxed),
        );
        tracing::info!(
            app = %self.app, user = %record.actor, ended = end.label(),
            seconds = elapsed.as_secs(), bytes_up = up, bytes_down = down,
            "tunnel closed"
        );
        record.at = crate::clock::now_ms();
        record.action = "closed".into();
        record.reason = end.label().into();
        record.latency_us = Some(elapsed.as_micros() as i64);
        record.after = Some(serde_json::json!({
            "ended": end.label(),
            "detail": match &end {
                tunnel::End::Closed(code, reason) => format!("{code} {reason}"),
                tunnel::End::Local(e) | tunnel::End::Broken(e) => e.clone(),
                tunnel::End::Stopped(_, reason) => reason.clone(),
                tunnel::End::Finished | tunnel::End::Silent | tunnel::End::Dropped => String::new(),
            },
            "seconds": elapsed.as_secs_f64(),
            "bytes_up": up,
            "bytes_down": down,
        }));
        self.audit.record(record).await;
    }

    fn bytes(&self, direction: &'static str) -> prometheus_client::metrics::counter::Counter {
        self.metrics
            .tunnel_bytes
            .get_or_create(&TunnelBytesLabels {
                app: self.app.as_str().into(),
                direction,
            })
            .clone()
    }
}
