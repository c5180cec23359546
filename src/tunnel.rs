//! castellan's tunnel protocol: a TCP byte stream carried in a WebSocket (RFC 6455), so that it
//! passes every HTTP load balancer and Cloud Run, as Google IAP's TCP forwarding does. Both ends
//! use this module: the server (`gate::tunnel`, between the WebSocket and the app's TCP
//! connection) and `castellan tunnel` (between the WebSocket and a local connection or stdio).
//!
//! The wire, subprotocol `castellan-tunnel.v1`:
//! - each binary message carries the next bytes of the stream;
//! - an empty binary message says "no more bytes from me" (TCP's FIN: half-close), so `ssh`,
//!   `scp` and `psql` see their peer finish writing while still reading;
//! - once both sides have sent theirs, either closes the WebSocket with 1000;
//! - the server pings every keep-alive interval (its `Castellan-Tunnel-Keepalive` response header,
//!   in seconds) so idle load balancers keep the connection; either side gives up on a peer it
//!   has heard nothing from for three intervals;
//! - any other ending is a close frame with a code and a reason for the person: [`REVOKED`] when
//!   access ended, 1011 when the app's connection failed, [`NO_ANSWER`] for a silent peer.
//!
//! Back pressure both ways: a side reads the next message only after writing the previous one,
//! and reads its TCP side only after the WebSocket took the previous chunk, so neither buffers
//! more than [`CHUNK`] plus the WebSocket's bounded write buffer however slow the other end is.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

/// The WebSocket subprotocol both sides name.
pub const SUBPROTOCOL: &str = "castellan-tunnel.v1";
/// The response header that tells the client the server's keep-alive interval, in seconds.
pub const KEEPALIVE_HEADER: &str = "castellan-tunnel-keepalive";
/// Close code: the person's access ended (policy change, sign-out, revoked key, deactivation).
pub const REVOKED: u16 = 4403;
/// Close code: the peer answered nothing for three keep-alive intervals.
pub const NO_ANSWER: u16 = 4408;
/// The most read from a TCP side before it is sent on.
pub const CHUNK: usize = 64 * 1024;
/// The largest message accepted: a peer sending more is refused, not buffered.
const MAX_MESSAGE: usize = 1 << 20;

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// A fresh `Sec-WebSocket-Key`.
pub fn new_key() -> String {
    use base64::Engine;
    let mut raw = [0u8; 16];
    aws_lc_rs::rand::fill(&mut raw).expect("the system's random source works");
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// Wraps an upgraded connection as one side of a tunnel.
pub async fn websocket<S>(io: S, server: bool) -> WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .write_buffer_size(0)
        .max_write_buffer_size(4 * CHUNK);
    let role = if server { Role::Server } else { Role::Client };
    WebSocketStream::from_raw_socket(io, role, Some(config)).await
}

/// Why a tunnel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Both sides finished writing: a clean end.
    Finished,
    /// The other side closed the WebSocket, with its code and reason.
    Closed(u16, String),
    /// This side's TCP connection failed.
    Local(String),
    /// The other side's connection ended without a close (a killed client, a cut network).
    Dropped,
    /// The WebSocket broke the protocol.
    Broken(String),
    /// Nothing was heard from the other side for three keep-alive intervals.
    Silent,
    /// Stopped from outside, with the close code and reason sent.
    Stopped(u16, String),
}

impl End {
    /// How the audit trail and the logs name it.
    pub fn label(&self) -> &'static str {
        match self {
            End::Finished => "finished",
            End::Closed(..) => "peer-closed",
            End::Local(_) => "connection-failed",
            End::Dropped => "dropped",
            End::Broken(_) => "websocket-failed",
            End::Silent => "no-answer",
            End::Stopped(..) => "stopped",
        }
    }

    /// The close frame this side sends for it (None when the peer closed: tungstenite answers).
    fn close_frame(&self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            End::Finished => (1000, String::new()),
            End::Closed(..) => return None,
            End::Local(e) => (1011, e.clone()),
            End::Dropped => return None,
            End::Broken(e) => (1002, e.clone()),
            End::Silent => (NO_ANSWER, "no answer to keep-alives".to_string()),
            End::Stopped(code, reason) => (*code, reason.clone()),
        };
        // A close frame's reason is at most 123 bytes.
        let mut reason = reason;
        while reason.len() > 123 {
            reason.pop();
        }
        Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        })
    }
}

/// Bytes that moved, counted as they move (so metrics follow a long tunnel).
#[derive(Debug, Default)]
pub struct Tally {
    /// From the WebSocket to this side's connection.
    pub received: AtomicU64,
    /// From this side's connection into the WebSocket.
    pub sent: AtomicU64,
}

/// Carries bytes between `ws` and a connection (`reader`, `writer`) until both sides finished,
/// either failed, or `stop` resolves (with the close code and reason to send). `keepalive`: ping
/// this often (the server), and give up after three intervals of silence. Returns why it ended;
/// the close frame has been sent by then.
pub async fn pump<S, R, W>(
    ws: WebSocketStream<S>,
    mut reader: R,
    mut writer: W,
    keepalive: Duration,
    ping: bool,
    stop: impl Future<Output = (u16, String)>,
    tally: &Tally,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let start = Instant::now();
    let heard = AtomicU64::new(0);
    let fin_in = AtomicBool::new(false);
    let fin_out = AtomicBool::new(false);

    // WebSocket → connection.
    let inbound = async {
        loop {
            let msg = match stream.next().await {
                // A peer that leaves once this side finished writing (an SSH client killing its
                // ProxyCommand as it exits) lost nothing: a clean end.
                None | Some(Err(_)) if fin_out.load(Ordering::SeqCst) => return End::Finished,
                // Gone without a close: a killed client, a cut network.
                None
                | Some(Err(
                    WsError::ConnectionClosed
                    | WsError::AlreadyClosed
                    | WsError::Io(_)
                    | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
                )) => return End::Dropped,
                Some(Err(e)) => return End::Broken(e.to_string()),
                Some(Ok(m)) => m,
            };
            heard.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
            match msg {
                Message::Binary(b) if b.is_empty() => {
                    if fin_in.swap(true, Ordering::SeqCst) {
                        return End::Broken("a second end-of-stream".into());
                    }
                    if let Err(e) = writer.shutdown().await {
                        return End::Local(e.to_string());
                    }
                    if fin_out.load(Ordering::SeqCst) {
                        return End::Finished;
                    }
                }
                Message::Binary(b) => {
                    if fin_in.load(Ordering::SeqCst) {
                        return End::Broken("bytes after end-of-stream".into());
                    }
                    // Flushed at once: stdout, for one, holds bytes until a newline otherwise.
                    if let Err(e) = async {
                        writer.write_all(&b).await?;
                        writer.flush().await
                    }
                    .await
                    {
                        return End::Local(e.to_string());
                    }
                    tally.received.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                Message::Close(frame) => {
                    return match frame {
                        Some(f) if u16::from(f.code) != 1000 => {
                            End::Closed(f.code.into(), f.reason.to_string())
                        }
                        _ if fin_in.load(Ordering::SeqCst) && fin_out.load(Ordering::SeqCst) => {
                            End::Finished
                        }
                        Some(f) => End::Closed(1000, f.reason.to_string()),
                        None => End::Closed(1005, String::new()),
                    };
                }
                Message::Text(_) => return End::Broken("a text message in a tunnel".into()),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    };

    // Connection → WebSocket, and the keep-alives.
    let outbound = async {
        let mut buf = BytesMut::with_capacity(CHUNK);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        let mut eof = false;
        loop {
            tokio::select! {
                read = reader.read_buf(&mut buf), if !eof => match read {
                    // A reset after the other side finished writing is how many servers (PostgreSQL
                    // after a Terminate, for one) end: the end of this direction, not a failure.
                    Err(e) if !fin_in.load(Ordering::SeqCst) => return End::Local(e.to_string()),
                    Err(_) | Ok(0) => {
                        eof = true;
                        fin_out.store(true, Ordering::SeqCst);
                        if let Err(e) = sink.send(Message::Binary(Default::default())).await {
                            return End::Broken(e.to_string());
                        }
                        if fin_in.load(Ordering::SeqCst) {
                            return End::Finished;
                        }
                    }
                    Ok(n) => {
                        if let Err(e) = sink.send(Message::Binary(buf.split().freeze())).await {
                            return End::Broken(e.to_string());
                        }
                        tally.sent.fetch_add(n as u64, Ordering::Relaxed);
                        buf.reserve(CHUNK);
                    }
                },
                _ = tick.tick() => {
                    let silent = start.elapsed().as_millis() as u64 - heard.load(Ordering::Relaxed);
                    if silent > 3 * keepalive.as_millis() as u64 {
                        return End::Silent;
                    }
                    if ping && let Err(e) = sink.send(Message::Ping(Default::default())).await {
                        return End::Broken(e.to_string());
                    }
                }
            }
        }
    };

    let end = tokio::select! {
        e = inbound => e,
        e = outbound => e,
        (code, reason) = stop => End::Stopped(code, reason),
    };
    let mut ws = sink.reunite(stream).expect("the halves of one WebSocket");
    let frame = end.close_frame();
    // The close handshake gets a second; a peer that does not answer is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        match frame {
            Some(f) => ws.close(Some(f)).await,
            None => ws.flush().await,
        }
    })
    .await;
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    async fn pair() -> (
        WebSocketStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        (websocket(a, true).await, websocket(b, false).await)
    }

    /// Both ends of a tunnel over an in-memory WebSocket, each with its own in-memory connection:
    /// bytes written at one end come out of the other, half-close included.
    #[tokio::test]
    async fn bytes_and_half_close_cross_both_ways() {
        let (server_ws, client_ws) = pair().await;
        let (server_app, mut app) = tokio::io::duplex(1 << 16);
        let (client_local, mut local) = tokio::io::duplex(1 << 16);
        let (sr, sw) = tokio::io::split(server_app);
        let (cr, cw) = tokio::io::split(client_local);
        let never = std::future::pending::<(u16, String)>;
        let (st, ct) = (Tally::default(), Tally::default());
        let ka = Duration::from_secs(30);
        let server = pump(server_ws, sr, sw, ka, true, never(), &st);
        let client = pump(client_ws, cr, cw, ka, false, never(), &ct);
        let drive = async {
            let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            // The local side sends and finishes writing; the app reads it all, then answers.
            local.write_all(&big).await.unwrap();
            local.shutdown().await.unwrap();
            let mut got = Vec::new();
            app.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, big);
            app.write_all(b"answer").await.unwrap();
            app.shutdown().await.unwrap();
            let mut back = Vec::new();
            local.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"answer");
        };
        let (s, c, ()) = tokio::join!(server, client, drive);
        assert_eq!(s, End::Finished);
        assert_eq!(c, End::Finished);
        assert_eq!(st.received.load(Ordering::Relaxed), 300_000);
        assert_eq!(ct.received.load(Ordering::Relaxed), 6);
    }

    #[tokio::test]
    async fn stopping_sends_the_code_and_reason() {
        let (server_ws, client_ws) = pair().await;
        let (a, _keep_a) = tokio::io::duplex(64);
        let (b, _keep_b) = tokio::io::duplex(64);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let ka = Duration::from_secs(30);
        let (st, ct) = (Tally::default(), Tally::default());
        let stop = async { (REVOKED, "access was revoked".to_string()) };
        let server = pump(server_ws, ar, aw, ka, true, stop, &st);
        let client = pump(client_ws, br, bw, ka, false, std::future::pending(), &ct);
        let (s, c) = tokio::join!(server, client);
        assert_eq!(s, End::Stopped(REVOKED, "access was revoked".into()));
        assert_eq!(c, End::Closed(REVOKED, "access was revoked".into()));
    }
}
