use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Shutdown;

/// A server whose requests take `delay` to answer, its connections (HTTP/2 with `h2`, else
/// HTTP/1 with upgrades, as castellan serves them) watched by `shutdown`.
async fn serve(shutdown: Arc<Shutdown>, delay: Duration, h2: bool) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("done"))))
                });
                let io = TokioIo::new(stream);
                let _ = if h2 {
                    let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    shutdown
                        .watch(builder.serve_connection(io, service), None)
                        .await
                } else {
                    let builder = hyper::server::conn::http1::Builder::new();
                    shutdown
                        .watch(builder.serve_connection(io, service).with_upgrades(), None)
                        .await
                };
            });
        }
    });
    addr
}

async fn get(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn idle_keep_alive_connections_close_and_shutdown_returns() {
    let shutdown = Arc::new(Shutdown::default());
    let addr = serve(shutdown.clone(), Duration::ZERO, false).await;
    let mut a = TcpStream::connect(addr).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    assert!(get(&mut a).await.ends_with("done"));
    assert!(get(&mut b).await.ends_with("done"));
    // Both are idle now, each waiting in its own task.
    tokio::time::timeout(Duration::from_secs(5), shutdown.shutdown())
        .await
        .expect("shutdown returned once the idle connections closed");
    let mut rest = Vec::new();
    assert_eq!(
        a.read_to_end(&mut rest).await.unwrap(),
        0,
        "closed by the server"
    );
}

#[tokio::test]
async fn a_request_in_flight_is_answered_before_shutdown_returns() {
    let shutdown = Arc::new(Shutdown::default());
    let addr = serve(shutdown.clone(), Duration::from_millis(300), false).await;
    let client = tokio::spawn(async move {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/")
            .header("host", "x")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), shutdown.shutdown())
        .await
        .expect("shutdown returned");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "waited for the request"
    );
    assert_eq!(client.await.unwrap(), "done");
}

#[tokio::test]
async fn an_idle_http2_connection_is_sent_away_and_shutdown_returns() {
    let shutdown = Arc::new(Shutdown::default());
    let addr = serve(shutdown.clone(), Duration::ZERO, true).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("http://x/")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "done");
    tokio::time::timeout(Duration::from_secs(5), shutdown.shutdown())
        .await
        .expect("shutdown returned once the idle HTTP/2 connection closed");
    // The client's side ends too: the server sent GOAWAY and closed.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the client's connection ended")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_with_no_connections_returns_at_once() {
    let shutdown = Shutdown::default();
    tokio::time::timeout(Duration::from_secs(1), shutdown.shutdown())
        .await
        .unwrap();
}
