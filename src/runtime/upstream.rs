//! Connections to the apps' upstreams: HTTP/1.1 (over TLS for `https` upstreams), kept alive and
//! reused.
//!
//! A connection has no task of its own: the request that uses it drives it, from sending the
//! request until the last byte of the response body, and then puts it back in the pool. Reading
//! the client's request, forwarding it, reading the app's answer and writing it back all happen in
//! the client connection's task, so a request wakes no other task and no other thread (with a
//! task per upstream connection, each request crossed between tasks at least four times).
//! WebSocket upgrades are the exception: their connection gets a task, and is never reused.

use crate::crypto::FastMap;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tower_service::Service;

use crate::web::{Body, BoxError};

/// How long an unused connection is kept: below common upstream keep-alives (5 s), so a pooled
/// connection is rarely closed under us.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Unused connections kept per upstream; more are closed as they come back.
const MAX_IDLE_PER_UPSTREAM: usize = 256;

type Io = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Connect(#[source] BoxError),
    #[error("{0}")]
    Http(#[source] hyper::Error),
}

/// A send that failed, with the request when it never left.
pub struct Failed {
    pub error: Error,
    pub request: Option<Request<Body>>,
}

/// The upstream connections of one castellan, by upstream. A clone shares them.
#[derive(Clone)]
pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Unused connections by upstream (the app's `upstream` URL), oldest first.
    idle: Mutex<FastMap<String, Vec<Idle>>>,
    sweeping: std::sync::atomic::AtomicBool,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// One HTTP/1.1 connection: what sends requests on it, and what reads and writes its socket.
/// Always boxed: it holds its buffers' bookkeeping inline (about 1.7 KiB), and it moves between
/// the pool, the request and the response body.
struct Conn {
    sender: http1::SendRequest<Body>,
    /// None once the connection has ended.
    driver: Option<http1::Connection<Io, Body>>,
}

impl Conn {
    /// Lets the connection read and write what it can; notices when it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = &mut self.driver
            && let Poll::Ready(result) = Pin::new(driver).poll(cx)
        {
            if let Err(e) = result {
                tracing::debug!("upstream connection ended: {e}");
            }
            // Dropping it fails whatever still waits on it, so nothing waits for ever.
            self.driver = None;
        }
    }
}

impl Pool {
    /// The pool for the apps: plain HTTP, or HTTPS verified against the system's roots.
    pub fn for_apps(connect_timeout: Duration) -> Pool {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .unwrap_or_else(|_| {
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
            })
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Pool::new(https)
    }

    /// A pool of an app's own: its connect timeout, and for `https://` upstreams its CA (instead
    /// of the system's roots) and its client certificate (mTLS to the app).
    pub fn for_app(c: &crate::config::UpstreamConnection) -> Result<Pool, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
        };
        let roots = match &c.ca {
            None => None,
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let pem = read(path, "upstream_ca")?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| format!("upstream_ca {}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("upstream_ca {}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!(
                        "upstream_ca {} holds no certificate",
                        path.display()
                    ));
                }
                Some(roots)
            }
        };
        let builder = match roots {
            Some(roots) => rustls::ClientConfig::builder().with_root_certificates(roots),
            None => {
                use hyper_rustls::ConfigBuilderExt;
                rustls::ClientConfig::builder()
                    .with_native_roots()
                    .map_err(|e| format!("cannot read the system's CA certificates: {e}"))?
            }
        };
        let tls = match &c.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(&read(cert, "upstream_client_cert")?)
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("upstream_client_cert {}: {e}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_slice(&read(key, "upstream_client_key")?)
                    .map_err(|e| format!("upstream_client_key {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("upstream_client_cert: {e}"))?
            }
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(c.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Pool::new(https))
    }

    pub fn new(connector: HttpsConnector<HttpConnector>) -> Pool {
        Pool {
            connector,
            shared: Arc::default(),
        }
    }

    /// Sends `req` (its URI in origin form) to `upstream` (`scheme://host:port`) and waits for the response
    /// head, driving the connection meanwhile. The response's body drives the connection from
    /// then on and returns it to the pool when it ends. With `upgrade`, the connection gets a task
    /// of its own and is not reused.
    pub async fn send(
        &self,
        upstream: &str,
        req: Request<Body>,
        upgrade: bool,
    ) -> Result<Response<Driven>, Error> {
        self.try_send(upstream, req, upgrade)
            .await
            .map_err(|f| f.error)
    }

    /// [`Pool::send`], giving the request back when it never reached the upstream (no
    /// connection could be made, or the connection closed before taking it), so that it can go
    /// to another.
    pub async fn try_send(
        &self,
        upstream: &str,
        mut req: Request<Body>,
        upgrade: bool,
    ) -> Result<Response<Driven>, Failed> {
        loop {
            let (mut conn, reused) = match self.checkout(upstream).await {
                Some(conn) => (conn, true),
                None => match self.connect(upstream).await {
                    Ok(conn) => (conn, false),
                    Err(error) => {
                        return Err(Failed {
                            error,
                            request: Some(req),
                        });
                    }
                },
            };
            let sent = conn.sender.try_send_request(req);
            let result = if upgrade {
                if let Some(driver) = conn.driver.take() {
                    tokio::spawn(async move {
                        if let Err(e) = driver.with_upgrades().await {
                            tracing::debug!("upstream connection ended: {e}");
                        }
                    });
                }
                sent.await
            } else {
                let mut sent = pin!(sent);
                poll_fn(|cx| {
                    conn.drive(cx);
                    sent.as_mut().poll(cx)
                })
                .await
            };
            match result {
                Ok(resp) => {
                    let lease = (!upgrade).then(|| Lease {
                        conn,
                        upstream: upstream.to_string(),
                        pool: Arc::downgrade(&self.shared),
                    });
                    return Ok(resp.map(|body| Driven::new(body, lease)));
                }
                // A kept-alive connection the upstream closed before taking the request: the
                // request went nowhere, so it goes again, on a new connection.
                Err(mut e) if reused => match e.take_message() {
                    Some(r) => req = r,
                    None => {
                        return Err(Failed {
                            error: Error::Http(e.into_error()),
                            request: None,
                        });
                    }
                },
                Err(mut e) => {
                    let request = e.take_message();
                    return Err(Failed {
                        error: Error::Http(e.into_error()),
                        request,
                    });
                }
            }
        }
    }

    /// An unused connection to `upstream` that is still open and ready for a request.
    async fn checkout(&self, upstream: &str) -> Option<Box<Conn>> {
        loop {
            let mut conn = {
                let mut idle = self.shared.idle.lock().expect("pool lock");
                let list = idle.get_mut(upstream)?;
                let found = list.pop()?;
                if found.since.elapsed() > IDLE_TIMEOUT {
                    // Everything below it is older still.
                    list.clear();
                    return None;
                }
                found.conn
            };
            // One turn of the connection lets it notice a close that came while it sat unused,
            // and finish the previous exchange.
            let ready = poll_fn(|cx| {
                conn.drive(cx);
                Poll::Ready(
                    conn.driver.is_some()
                        && matches!(conn.sender.poll_ready(cx), Poll::Ready(Ok(()))),
                )
            })
            .await;
            if ready {
                return Some(conn);
            }
        }
    }

    async fn connect(&self, upstream: &str) -> Result<Box<Conn>, Error> {
        let uri: Uri = upstream.parse().map_err(|e| Error::Connect(Box::new(e)))?;
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(Error::Connect)?;
        let io = connector.call(uri).await.map_err(Error::Connect)?;
        let (sender, driver) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(Error::Http)?;
        Ok(Box::new(Conn {
            sender,
            driver: Some(driver),
        }))
    }
}

impl Shared {
    fn put_back(self: &Arc<Self>, upstream: String, conn: Box<Conn>) {
        if conn.driver.is_none() || conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.entry(upstream).or_default();
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        drop(idle);
        if !self
            .sweeping
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }
}

/// Closes connections unused for longer than [`IDLE_TIMEOUT`], until the pool is gone.
async fn sweep(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut idle = shared.idle.lock().expect("pool lock");
        idle.retain(|_, list| {
            list.retain(|i| i.since.elapsed() <= IDLE_TIMEOUT);
            !list.is_empty()
        });
    }
}

/// A connection on loan to one response.
struct Lease {
    conn: Box<Conn>,
    upstream: String,
    pool: Weak<Shared>,
}

impl Lease {
    fn give_back(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.put_back(self.upstream, self.conn);
        }
    }
}

/// A response body from an upstream, which drives its connection while it is read and returns
/// it to the pool once read to the end. Dropped before the end, it closes the connection.
pub struct Driven {
    body: Incoming,
    lease: Option<Lease>,
}

impl Driven {
    fn new(body: Incoming, lease: Option<Lease>) -> Driven {
        let mut driven = Driven { body, lease };
        if driven.body.is_end_stream() {
            // No body to read (204, 304, HEAD, Content-Length: 0): nobody will poll it.
            driven.finished();
        }
        driven
    }

    fn finished(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.give_back();
        }
    }
}

impl hyper::body::Body for Driven {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let mut polled = Pin::new(&mut this.body).poll_frame(cx);
        if polled.is_pending()
            && let Some(lease) = &mut this.lease
        {
            lease.conn.drive(cx);
            polled = Pin::new(&mut this.body).poll_frame(cx);
        }
        match &polled {
            Poll::Ready(None) => this.finished(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.finished(),
            Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
