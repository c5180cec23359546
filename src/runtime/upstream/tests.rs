use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use hyper::server::conn::http1 as server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

fn pool() -> Pool {
    pool_trusting(rustls::RootCertStore::empty())
}

fn pool_trusting(roots: rustls::RootCertStore) -> Pool {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    Pool::new(
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
            )
            .https_or_http()
            .enable_http1()
            .wrap_connector(http),
    )
}

/// An HTTPS server on loopback for `localhost` (a self-signed certificate, returned) that
/// answers every request with `tls`, and counts its connections.
async fn tls_upstream() -> (
    Uri,
    rustls::pki_types::CertificateDer<'static>,
    Arc<AtomicUsize>,
) {
    let pair = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&pair)
        .unwrap();
    let der = cert.der().clone();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![der.clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(pair.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base: Uri = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    )
    .parse()
    .unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let _ = server::Builder::new()
                    .serve_connection(
                        TokioIo::new(tls),
                        hyper::service::service_fn(|_: Request<Incoming>| async {
                            Ok::<_, std::convert::Infallible>(Response::new(crate::web::full(
                                "tls",
                            )))
                        }),
                    )
                    .await;
            });
        }
    });
    (base, der, accepted)
}

/// An HTTP/1.1 server on loopback that answers `/n` with n bytes and counts its connections.
async fn upstream() -> (Uri, Arc<AtomicUsize>) {
    let (listener, base) = listen().await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(server::Builder::new().serve_connection(
                TokioIo::new(tcp),
                hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let n: usize = req.uri().path()[1..].parse().unwrap_or(0);
                    Ok::<_, std::convert::Infallible>(Response::new(crate::web::full(vec![
                        b'x';
                        n
                    ])))
                }),
            ));
        }
    });
    (base, accepted)
}

/// A listener on a free loopback port, and its `http://` URI.
async fn listen() -> (TcpListener, Uri) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    (listener, base)
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header(http::header::HOST, "upstream")
        .body(crate::web::empty())
        .unwrap()
}

async fn fetch(pool: &Pool, base: &Uri, path: &str) -> Result<Bytes, Error> {
    let resp = pool.send(&base.to_string(), get(path), false).await?;
    Ok(resp
        .into_body()
        .collect()
        .await
        .map_err(Error::Http)?
        .to_bytes())
}

#[tokio::test]
async fn a_connection_is_reused_once_its_response_is_read() {
    let (base, accepted) = upstream().await;
    let pool = pool();
    for n in [0, 5, 100_000, 0, 7] {
        assert_eq!(
            fetch(&pool, &base, &format!("/{n}")).await.unwrap().len(),
            n
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_response_dropped_half_read_closes_its_connection() {
    let (base, accepted) = upstream().await;
    let pool = pool();
    let resp = pool
        .send(&base.to_string(), get("/1000000"), false)
        .await
        .unwrap();
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    // The rest of the first body must not be read as the next response.
    assert_eq!(fetch(&pool, &base, "/3").await.unwrap(), "xxx");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
    // Answers one request per connection and closes it without saying so (no
    // `Connection: close`), as an upstream whose keep-alive timer fired would.
    let (listener, base) = listen().await;
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            read_head(&mut tcp).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(tcp);
        }
    });
    let pool = pool();
    for _ in 0..5 {
        assert_eq!(fetch(&pool, &base, "/").await.unwrap(), "ok");
        // The close arrives while the connection sits in the pool.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads one request head from `tcp`; false when the connection ended first.
async fn read_head(tcp: &mut tokio::net::TcpStream) -> bool {
    let mut seen = Vec::new();
    let mut buf = [0; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}

#[tokio::test]
async fn bytes_after_a_response_never_answer_the_next_request() {
    // An unasked-for response behind the real one (a broken or hostile app): served to
    // whoever's request came next on that connection, it would be another user's page. The
    // first connection sends it with its answer, the second 20 ms after (while the connection
    // sits in the pool); later connections answer "fine".
    const POISON: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPOISON";
    let (listener, base) = listen().await;
    tokio::spawn(async move {
        for n in 0.. {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                while read_head(&mut tcp).await {
                    let answer: &[u8] = if n == 0 { b"ok" } else { b"fine" };
                    let mut bytes = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                        answer.len()
                    )
                    .into_bytes();
                    bytes.extend_from_slice(answer);
                    if n == 0 {
                        bytes.extend_from_slice(POISON);
                    }
                    if tcp.write_all(&bytes).await.is_err() {
                        return;
                    }
                    if n == 1 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let _ = tcp.write_all(POISON).await;
                    }
                }
            });
        }
    });
    let pool = pool();
    assert_eq!(fetch(&pool, &base, "/").await.unwrap(), "ok");
    for _ in 0..3 {
        assert_eq!(fetch(&pool, &base, "/").await.unwrap(), "fine");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn https_upstreams_are_verified_and_their_connections_reused() {
    let (base, cert, accepted) = tls_upstream().await;
    // A certificate nobody vouches for is refused before any request goes out.
    assert!(matches!(
        fetch(&pool(), &base, "/").await,
        Err(Error::Connect(_))
    ));
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let pool = pool_trusting(roots);
    for _ in 0..3 {
        assert_eq!(fetch(&pool, &base, "/").await.unwrap(), "tls");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_upstream_that_refuses_connections_is_a_connect_error() {
    let (listener, base) = listen().await;
    drop(listener);
    assert!(matches!(
        fetch(&pool(), &base, "/").await,
        Err(Error::Connect(_))
    ));
}
