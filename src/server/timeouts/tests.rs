use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Timeouts;
use crate::server::graceful::Shutdown;
use crate::server::{Protocol, Protocols};

const LIMITS: Timeouts = Timeouts {
    head: Duration::from_millis(300),
    idle: Duration::from_millis(1500),
};

/// castellan's HTTP/1 serving with short limits; `/slow` answers after 2 s (longer than both).
async fn serve() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let protocols = Arc::new(Protocols::new(LIMITS));
    let shutdown = Arc::new(Shutdown::default());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (protocols, shutdown) = (protocols.clone(), shutdown.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: http::Request<_>| {
                    Box::pin(async move {
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("done"))))
                    })
                });
                let _ = protocols
                    .serve(stream, Protocol::Http1, service, &shutdown)
                    .await;
            });
        }
    });
    addr
}

async fn get(stream: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// How long until the server closes `stream` (reads until the end).
async fn closed_after(stream: &mut TcpStream, since: Instant) -> Duration {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the server closed the connection")
        .unwrap();
    since.elapsed()
}

#[tokio::test]
async fn a_keep_alive_connection_may_wait_longer_than_a_head_may_take() {
    let addr = serve().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert!(get(&mut s, "/").await.ends_with("done"));
    // Three head limits of silence: hyper's own header timeout would have closed it by now.
    tokio::time::sleep(LIMITS.head * 3).await;
    assert!(get(&mut s, "/").await.ends_with("done"), "still open");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_limit() {
    let addr = serve().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert!(get(&mut s, "/").await.ends_with("done"));
    let waited = closed_after(&mut s, Instant::now()).await;
    assert!(
        waited >= LIMITS.idle - Duration::from_millis(100) && waited < LIMITS.idle * 2,
        "closed after {waited:?}"
    );
}

#[tokio::test]
async fn a_head_that_stalls_is_cut_at_the_head_limit_on_any_request() {
    let addr = serve().await;
    // The first request of a connection, and a later one.
    for earlier in [false, true] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if earlier {
            assert!(get(&mut s, "/").await.ends_with("done"));
        }
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .unwrap();
        let waited = closed_after(&mut s, Instant::now()).await;
        assert!(
            waited < LIMITS.head * 3,
            "a stalled head (after an earlier request: {earlier}) closed after {waited:?}"
        );
    }
}

#[tokio::test]
async fn a_request_being_served_has_no_limit_of_ours() {
    let addr = serve().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    // /slow takes 2 s, longer than both limits, and is answered; the connection stays usable.
    assert!(get(&mut s, "/slow").await.ends_with("done"));
    assert!(get(&mut s, "/").await.ends_with("done"));
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/slow")
        .header("host", "x")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let body = send.send_request(req).await.unwrap().into_body();
    assert_eq!(body.collect().await.unwrap().to_bytes(), "done");
}
