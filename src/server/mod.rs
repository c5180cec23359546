//! The running server: the accept loop with graceful shutdown, configuration reloads, and the
//! background work (reloading the policy snapshot, closing live connections whose access ended,
//! sweeping). Routing lives in [`routes`]: the only place that sees the gate, castellan's own
//! endpoints and the admin pages together.
//!
//! May use: everything below it; nothing uses it but the command line.

pub mod acme;
pub mod dns01;
pub mod graceful;
pub mod routes;
pub mod timeouts;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::config::Config;
use crate::runtime::{ACCESS_POLL_INTERVAL, DRAIN_TIMEOUT, State};
use crate::store;
use crate::web;
/// Raises the soft limit on open files to the hard limit: every client connection and every
/// WebSocket's upstream connection is a file descriptor, and service managers often start
/// processes with a soft limit of 1,024 (systemd's default) under a much higher hard limit.
/// Returns the limit now in force.
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("cannot raise the open files limit: {e}");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// How long a new connection may take to send enough of its first request to tell HTTP/1 from
/// HTTP/2 (after that, the head limit of [`timeouts`] applies).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the audit trail's new records are copied to its index by person. A copy statement
/// takes up to 10,000 records (at 15,000 requests a second, one and a half a round), so a longer
/// wait would save little at load, and at lighter loads this keeps each round's burst of work,
/// and the records a query by person reads from the trail itself, small.
const AUDIT_INDEX_EVERY: Duration = Duration::from_secs(1);

/// The protocol a client speaks on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Waits until the client has sent enough to choose the protocol: the 24 bytes of the HTTP/2
/// preface, or anything that is not its start. Peeked, not read, so hyper reads the request
/// itself into its own buffer (hyper-util's automatic choice reads the first bytes apart and
/// hands them back in front of the stream, and hyper then grows its read buffer to 16 KiB for
/// every connection). `None` when the client closes or takes longer than [`FIRST_BYTES_TIMEOUT`].
pub async fn first_bytes(stream: &TcpStream) -> Option<Protocol> {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let deadline = tokio::time::Instant::now() + FIRST_BYTES_TIMEOUT;
    let mut buf = [0u8; 24];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return None,
        };
        if n == 0 {
            return None;
        }
        if buf[..n] != PREFACE[..n] {
            return Some(Protocol::Http1);
        }
        if n == PREFACE.len() {
            return Some(Protocol::Http2);
        }
        // Part of the preface so far: peek again shortly (peek does not wait for more bytes).
        if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(20)))
            .await
            .is_err()
        {
            return None;
        }
    }
}

/// hyper's HTTP/1 and HTTP/2 servers as castellan configures them, built once and shared by
/// every connection (each connection copies the settings it needs when it starts), and the
/// limits an HTTP/1 connection's phases have ([`timeouts`]). Public for the peer benchmark's stack
/// floor, which serves with the same settings.
pub struct Protocols {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    timeouts: timeouts::Timeouts,
}

impl Protocols {
    pub fn new(timeouts: timeouts::Timeouts) -> Protocols {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            // Ours instead (`timeouts`): hyper's runs while a connection waits for a request too,
            // which made it a 10-second idle timeout. (It is all hyper's HTTP/1 timer is for, so
            // HTTP/1 has none.)
            .header_read_timeout(None::<Duration>)
            // A request's line and headers may take 64 KiB; more is refused (431) before anything
            // is decided. Set exactly: hyper's buffer limit alone is only reached when its
            // buffer happens to grow onto it (a 70 KB header once passed under it).
            .max_header_size(64 * 1024)
            .max_buf_size(64 * 1024);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .keep_alive_interval(Duration::from_secs(30));
        Protocols {
            http1,
            http2,
            timeouts,
        }
    }

    /// Serves one connection in `protocol` until it ends, under `shutdown`: HTTP/1 with upgrades
    /// (for WebSockets) and the limits of `timeouts`, or HTTP/2.
    pub async fn serve<I, S, B>(
        &self,
        io: I,
        protocol: Protocol,
        service: S,
        shutdown: &graceful::Shutdown,
    ) -> hyper::Result<()>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
        S::Future: Unpin + Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: hyper::body::Body + Unpin + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match protocol {
            Protocol::Http1 => {
                let phase = timeouts::Phase::new();
                let io = TokioIo::new(timeouts::Clocked::new(io, phase.clone()));
                let service = timeouts::Phased::new(service, phase.clone());
                let conn = self.http1.serve_connection(io, service).with_upgrades();
                let deadline = timeouts::Deadline::new(phase, self.timeouts);
                shutdown.watch(conn, Some(deadline)).await
            }
            Protocol::Http2 => {
                let conn = self.http2.serve_connection(TokioIo::new(io), service);
                shutdown.watch(conn, None).await
            }
        }
    }
}

/// Serves until `shutdown`, then drains in-flight requests for up to [`DRAIN_TIMEOUT`]. With
/// `config_file`, the configuration is reloaded when it changes and on SIGHUP.
pub async fn run(
    state: Arc<State>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl std::future::Future<Output = ()>,
    config_file: Option<std::path::PathBuf>,
) -> std::io::Result<()> {
    let current = Current::new(state.clone());
    spawn_background(current.clone());
    if let Some(l) = metrics_listener {
        tokio::spawn(serve_metrics(current.clone(), l));
    }
    #[cfg(unix)]
    {
        let reload = state.reload_signal.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration and certificates");
                reload.notify_waiters();
            }
        });
    }
    if let Some(path) = config_file {
        tokio::spawn(watch_config(current.clone(), path));
    }
    let tls = start_tls(&state).await?;
    let protocols = Arc::new(Protocols::new(timeouts::Timeouts::default()));
    let graceful = Arc::new(graceful::Shutdown::default());
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
                let current = current.clone();
                // The state this connection's last request was served with (behind a lock of
                // its own, never shared with another connection's).
                let held = current.hold();
                // The connection's client certificate (its subject), once TLS has verified it.
                let service = move |client_cert: Option<Arc<str>>| hyper::service::service_fn(move |req| {
                    // Each request is served with the configuration of the moment it arrives.
                    let state = current.latest(&held);
                    let client_cert = client_cert.clone();
                    let hsts = state.config.tls.as_ref().filter(|t| !t.hsts.is_zero()).map(|t| {
                        http::HeaderValue::from_str(&format!("max-age={}", t.hsts.as_secs()))
                            .expect("a number is a valid header value")
                    });
                    // Boxed: the request's future is large, and hyper keeps a place for the
                    // service's future in every connection, in use or idle.
                    Box::pin(async move {
                        let mut resp = routes::handle(state, peer, client_cert, req).await;
                        if let Some(v) = hsts {
                            resp.headers_mut().entry(http::header::STRICT_TRANSPORT_SECURITY).or_insert(v);
                        }
                        Ok::<_, Infallible>(resp)
                    })
                });
                let protocols = protocols.clone();
                let watcher = graceful.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let ended = match tls {
                        None => {
                            // A client that connects and sends nothing (or half the HTTP/2
                            // preface) is let go after FIRST_BYTES_TIMEOUT.
                            let Some(protocol) = first_bytes(&stream).await else {
                                return;
                            };
                            protocols.serve(stream, protocol, service(None), &watcher).await
                        }
                        // Boxed: a TLS connection's handshake and stream are large, and inline
                        // they would be part of every connection's task, plain HTTP included.
                        Some(acceptor) => Box::pin(async move {
                            let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                                    return Ok(());
                                }
                                Err(_) => return Ok(()),
                            };
                            // An ACME validator only checks the challenge certificate.
                            let alpn = stream.get_ref().1.alpn_protocol();
                            if alpn == Some(crate::runtime::tls::ACME_TLS_ALPN) {
                                return Ok(());
                            }
                            // ALPN has chosen the protocol (HTTP/2 over TLS needs it, RFC 9113
                            // §3.2): no guessing from the first bytes.
                            let protocol = if alpn == Some(b"h2") { Protocol::Http2 } else { Protocol::Http1 };
                            let client_cert = crate::runtime::tls::client_subject(stream.get_ref().1);
                            protocols.serve(stream, protocol, service(client_cert), &watcher).await
                        }).await,
                    };
                    if let Err(e) = ended {
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
    state.audit.flush().await;
    Ok(())
}

/// How long a client gets to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// With `[tls]`: the acceptor, the certificate file watcher or the ACME manager, SIGHUP, and
/// the plain-HTTP listener.
async fn start_tls(state: &Arc<State>) -> std::io::Result<Option<tokio_rustls::TlsAcceptor>> {
    let (Some(tls), Some(certs)) = (&state.config.tls, &state.certs) else {
        return Ok(None);
    };
    match &tls.certificates {
        crate::config::Certificates::Files { cert, key } => {
            tokio::spawn(crate::runtime::tls::watch_files(
                certs.clone(),
                cert.clone(),
                key.clone(),
                state.reload_signal.clone(),
            ));
        }
        crate::config::Certificates::Acme(acme) => {
            tokio::spawn(crate::server::acme::run(
                state.clone(),
                acme.clone(),
                certs.clone(),
            ));
        }
    }
    if let Some(addr) = tls.http_listen {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {addr} (tls.http_listen): {e}"),
            )
        })?;
        tracing::info!("redirecting http://{addr} to HTTPS");
        tokio::spawn(crate::server::acme::serve_http(state.clone(), listener));
    }
    let config = crate::runtime::tls::server_config(certs.clone(), tls.client_ca.as_deref())
        .map_err(std::io::Error::other)?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(config)))
}

/// The state requests are served with; a configuration reload swaps it. Requests in flight keep
/// the state they started with, so nothing is cut off by a reload.
///
/// A request does not take the shared lock: its connection keeps a reference to the state its
/// last request had, and takes the lock again only when the generation (bumped by each swap) has
/// moved, so requests on both cores read one counter that changes only on reloads instead of all
/// writing to one lock.
pub struct Current {
    state: RwLock<Arc<State>>,
    generation: AtomicU64,
}

/// A connection's reference to the state, and the generation it was taken at. Weak, so that an
/// idle keep-alive connection keeps no replaced state alive.
pub struct Held(Mutex<(u64, Weak<State>)>);

impl Current {
    pub fn new(state: Arc<State>) -> Arc<Current> {
        Arc::new(Current {
            state: RwLock::new(state),
            generation: AtomicU64::new(0),
        })
    }

    pub fn get(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A new connection's reference to the current state.
    pub fn hold(&self) -> Held {
        // The generation first: a swap in between makes the reference look older than it is,
        // and the next request takes it again.
        let generation = self.generation.load(Ordering::Acquire);
        Held(Mutex::new((generation, Arc::downgrade(&self.get()))))
    }

    /// The current state, through the connection's reference unless a swap happened since.
    pub fn latest(&self, held: &Held) -> Arc<State> {
        let generation = self.generation.load(Ordering::Acquire);
        let mut held = held.0.lock().unwrap_or_else(|p| p.into_inner());
        if held.0 == generation
            && let Some(state) = held.1.upgrade()
        {
            return state;
        }
        let state = self.get();
        *held = (generation, Arc::downgrade(&state));
        state
    }

    fn set(&self, state: Arc<State>) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state;
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// Re-reads the configuration file when it changes (checked every two seconds, which also sees
/// files replaced through bind mounts and Kubernetes ConfigMap updates) or on SIGHUP: a valid file
/// becomes the running configuration at once; an invalid one is refused, every problem logged,
/// and the running configuration stays.
async fn watch_config(current: Arc<Current>, path: std::path::PathBuf) {
    let signal = current.get().reload_signal.clone();
    let mut seen = std::fs::read(&path).ok();
    loop {
        let signalled = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => false,
            _ = signal.notified() => true,
        };
        let now = std::fs::read(&path).ok();
        if !signalled && now == seen {
            continue;
        }
        seen = now;
        match Config::load(&path) {
            Err(errors) => tracing::error!(
                "configuration reload refused, the running configuration stays:\n{errors}"
            ),
            Ok(config) => match current.get().reconfigure(config).await {
                Ok(state) => {
                    current.set(state);
                    tracing::info!("configuration reloaded from {}", path.display());
                    // What the new configuration asks (an app's step-up, say) applies to the
                    // connections already open too.
                    current.get().recheck_live(false).await;
                }
                Err(e) => tracing::error!(
                    "configuration reload failed, the running configuration stays: {e}"
                ),
            },
        }
    }
}

/// Says at start-up which apps' upstreams cannot be reached (they get 502s until they answer),
/// naming the app and the address, rather than leaving it to the first request's log line.
async fn check_upstreams(state: Arc<State>) {
    for app in &state.config.apps {
        for upstream in &app.upstreams {
            let (Some(host), Some(port)) = (upstream.host_str(), upstream.port_or_known_default())
            else {
                continue;
            };
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let connect = tokio::net::TcpStream::connect((host.as_str(), port));
            let others = if app.upstreams.len() > 1 {
                "the pool's other upstreams take its requests meanwhile"
            } else {
                "its requests get 502 until it answers"
            };
            match tokio::time::timeout(app.connection.connect_timeout, connect).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(
                    app = %app.id,
                    upstream = %upstream,
                    "app {} cannot be reached at {upstream} ({e}); {others}. Start it, or fix upstream in its [[apps]] entry",
                    app.id,
                ),
                Err(_) => tracing::warn!(
                    app = %app.id,
                    upstream = %upstream,
                    "app {} did not answer at {upstream} within {} s; {others}",
                    app.id,
                    app.connection.connect_timeout.as_secs()
                ),
            }
        }
    }
}

fn spawn_background(current: Arc<Current>) {
    tokio::spawn(check_upstreams(current.get()));
    let c = current.clone();
    tokio::spawn(async move {
        let mut failing = false;
        let mut ticks: u32 = 0;
        let changed = c.get().changed.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(ACCESS_POLL_INTERVAL) => {}
                _ = changed.notified() => {}
            }
            let s = c.get();
            ticks = ticks.wrapping_add(1);
            match s.reload().await {
                Ok(changed) => {
                    if failing {
                        tracing::info!("the store answers again");
                        failing = false;
                    }
                    if changed {
                        tracing::info!("policies reloaded");
                        s.recheck_live(true).await;
                    } else if ticks.is_multiple_of(5) {
                        // Conditions can stop granting access by the clock alone (expiry).
                        s.recheck_live(false).await;
                    }
                }
                Err(e) if !failing => {
                    tracing::error!(
                        "cannot reload policies: {e}. Decisions continue from the last ones for {} s (store_outage_grace), then fail closed",
                        s.config.store_outage_grace.as_secs()
                    );
                    failing = true;
                }
                Err(_) => {}
            }
        }
    });
    // Wakes the reload loop whenever any replica commits a change. Notifications sent while the
    // feed is disconnected are lost, so every (re)connection forces a full reload; the revision
    // poll above stays as the backstop.
    let feed = current.clone();
    let location = current.get().config.store.clone();
    tokio::spawn(async move {
        store::changes::follow(&location, |change| match change {
            store::changes::Change::Connected => feed.get().invalidate(),
            store::changes::Change::Committed => feed.get().changed.notify_one(),
        })
        .await
    });
    let keys = current.clone();
    tokio::spawn(async move {
        // Every replica re-reads the key rings each minute, so all know a new key long before
        // anyone signs with it (an hour after it is made).
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            if let Err(e) = keys.get().refresh_keys().await {
                tracing::warn!(
                    "refreshing the signing keys failed (keeping the current ones): {e}"
                );
            }
        }
    });
    let directories = current.clone();
    tokio::spawn(async move {
        // One replica at a time asks the directories (the lease outlives two rounds, so another
        // takes over if this one stops); the others see the answers through the revision.
        let holder = crate::server::acme::lease_holder();
        loop {
            let every = directories
                .get()
                .directory_refresh()
                .unwrap_or(Duration::from_secs(60));
            tokio::time::sleep(every).await;
            let state = directories.get();
            if state.directories.is_empty() {
                continue;
            }
            let lease = (every.as_secs() as i64 * 2).max(10);
            match state.store.take_lease("directories", &holder, lease).await {
                Ok(true) => state.refresh_directories().await,
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot take the directory refresh lease: {e}"),
            }
        }
    });
    let revalidation = current.clone();
    tokio::spawn(async move {
        // Refreshes the grants of sign-ins at their providers, one replica at a time.
        let holder = crate::server::acme::lease_holder();
        loop {
            let every = revalidation
                .get()
                .revalidation_interval()
                .unwrap_or(Duration::from_secs(60))
                .clamp(Duration::from_secs(1), Duration::from_secs(60));
            tokio::time::sleep(every).await;
            let state = revalidation.get();
            if state.revalidation_interval().is_none() {
                continue;
            }
            match state.store.take_lease("revalidation", &holder, 120).await {
                Ok(true) => state.revalidate_sessions().await,
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot take the revalidation lease: {e}"),
            }
        }
    });
    let index = current.clone();
    tokio::spawn(async move {
        // Copies the audit trail's new records to its index by person, many at a time (every
        // replica may; a record copied twice is kept once).
        loop {
            tokio::time::sleep(AUDIT_INDEX_EVERY).await;
            let settled =
                crate::clock::now_ms() - crate::runtime::audit_sinks::SETTLE.as_millis() as i64;
            let state = index.get();
            let behind = async {
                state.store.index_audit(settled).await?;
                state.store.audit_unindexed().await
            };
            match behind.await {
                Ok(behind) => {
                    state.metrics.audit_unindexed.set(behind);
                }
                Err(e) => tracing::warn!(
                    "indexing the audit trail by person failed (queries by person read the trail itself meanwhile): {e}"
                ),
            }
        }
    });
    tokio::spawn(async move {
        loop {
            let state = current.get();
            if let Err(e) = state.store.sweep(crate::endpoints::FLOW_LIFETIME).await {
                tracing::warn!("cleaning expired sessions failed: {e}");
            }
            let cutoff = crate::clock::now_ms() - state.config.audit_retention.as_millis() as i64;
            match state.store.prune_audit(cutoff).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!("removed {n} audit records older than the retention period")
                }
                Err(e) => tracing::warn!("pruning the audit trail failed: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
    });
}

/// Serves Prometheus metrics at `/metrics` on `listener`, from the running state (the upstream
/// pools' health is read as the scrape asks).
async fn serve_metrics(current: Arc<Current>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let current = current.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = current.get();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        state.refresh_upstream_metrics();
                        let mut r = Response::new(web::full(state.metrics.render()));
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static(
                                "text/plain; version=0.0.4; charset=utf-8",
                            ),
                        );
                        r
                    } else {
                        crate::web::failure::Failure::not_found("metrics are at /metrics").plain()
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
