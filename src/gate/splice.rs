//! Copying upgraded connections between the client and the app, and ending them when access ends.
//!
//! A WebSocket whose access ends gets a close frame from castellan, code [`REVOKED`] with the
//! reason [`REVOKED_REASON`], so the app's page can tell the person (a browser's `CloseEvent`
//! carries both) instead of showing a generic "cannot connect". The frame is sent between two of
//! the app's frames: castellan follows the frame boundaries of what the app sends (RFC 6455 §5.2;
//! server frames are unmasked, control frames may come between the fragments of a message), and
//! when access ends in the middle of a frame it lets that frame finish for at most
//! [`FINISH_FRAME`] before closing. Any other upgrade is cut.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::runtime::live::Revoked;

/// The close code a WebSocket gets when access ends (4000–4999 are the application's, RFC 6455
/// §7.4.2; 4403 echoes HTTP's 403).
pub const REVOKED: u16 = 4403;
/// The close frame's reason.
pub const REVOKED_REASON: &str = "castellan: access revoked";
/// How long a frame already under way may take to finish before the connection is cut.
const FINISH_FRAME: Duration = Duration::from_millis(250);
/// Buffers: 2 KiB towards the app, 4 KiB towards the client (tokio's default is 8 KiB each,
/// allocated up front): an idle WebSocket then costs about 10 KiB less, most of its memory.
const TO_APP: usize = 2048;
const TO_CLIENT: usize = 4096;

/// Copies an upgraded connection both ways until either side ends.
pub async fn splice<A, B>(client: &mut A, upstream: &mut B)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let _ = tokio::io::copy_bidirectional_with_sizes(client, upstream, TO_APP, TO_CLIENT).await;
}

/// Like [`splice`] until `revoked` resolves; then a WebSocket (`websocket`) is closed with
/// [`REVOKED`] at the next frame boundary of the app's stream, and anything else is cut.
pub async fn splice_until<A, B>(client: A, upstream: B, websocket: bool, revoked: Revoked)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut app_r, mut app_w) = tokio::io::split(upstream);
    let mut frames = Frames::default();
    let mut buf = vec![0u8; TO_CLIENT];
    // buf[start..end]: read from the app, not yet written to the client. Kept outside the copy,
    // so that bytes read before access ended still reach the client, in order, before the close.
    let (mut start, mut end) = (0, 0);
    let to_app = async {
        let mut up = tokio::io::BufReader::with_capacity(TO_APP, &mut client_r);
        let _ = tokio::io::copy_buf(&mut up, &mut app_w).await;
        let _ = app_w.shutdown().await;
        // The client finished sending; the app may still answer.
        std::future::pending::<()>().await;
    };
    let to_client = async {
        loop {
            if start == end {
                match app_r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => (start, end) = (0, n),
                }
            }
            match client_w.write(&buf[start..end]).await {
                Ok(0) | Err(_) => return,
                Ok(k) => {
                    frames.feed(&buf[start..start + k]);
                    start += k;
                }
            }
        }
    };
    tokio::select! {
        () = to_app => return,
        () = to_client => return,
        () = revoked => {}
    }
    if !websocket {
        tracing::info!("closed an upgraded connection: access was revoked");
        return;
    }
    // Let a frame under way finish, then close.
    let finish = async {
        while !frames.at_boundary() {
            if start == end {
                match app_r.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => (start, end) = (0, n),
                }
            }
            let take = frames.until_boundary(&buf[start..end]);
            if client_w.write_all(&buf[start..start + take]).await.is_err() {
                return false;
            }
            start += take;
        }
        true
    };
    if tokio::time::timeout(FINISH_FRAME, finish).await == Ok(true) {
        let _ = client_w
            .write_all(&close_frame(REVOKED, REVOKED_REASON))
            .await;
        let _ = client_w.flush().await;
        tracing::info!("closed a WebSocket with {REVOKED}: access was revoked");
    } else {
        tracing::info!("cut a WebSocket: access was revoked in the middle of a frame");
    }
    let _ = client_w.shutdown().await;
}

/// An unmasked close frame (a server's) with `code` and `reason` (at most 123 bytes).
fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut f = vec![0x88, (2 + reason.len()) as u8];
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(reason);
    f
}

/// Where a stream of WebSocket frames stands: in a header (with the bytes of it seen so far) or in
/// a payload (with how many bytes are left).
#[derive(Debug, Default)]
struct Frames {
    header: Vec<u8>,
    payload_left: u64,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.payload_left == 0
    }

    /// Follows `bytes` through the frames.
    fn feed(&mut self, bytes: &[u8]) {
        let _ = self.advance(bytes, false);
    }

    /// How many of `bytes` reach the end of the current frame (all of them if it goes on).
    fn until_boundary(&mut self, bytes: &[u8]) -> usize {
        self.advance(bytes, true)
    }

    fn advance(&mut self, mut bytes: &[u8], stop_at_boundary: bool) -> usize {
        let total = bytes.len();
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = (self.payload_left.min(bytes.len() as u64)) as usize;
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
            } else {
                self.header.push(bytes[0]);
                bytes = &bytes[1..];
                if let Some(payload) = header_complete(&self.header) {
                    self.header.clear();
                    self.payload_left = payload;
                }
            }
            if stop_at_boundary && self.at_boundary() {
                return total - bytes.len();
            }
        }
        total
    }
}

/// The payload length once `h` holds a whole frame header, None while it needs more bytes.
fn header_complete(h: &[u8]) -> Option<u64> {
    if h.len() < 2 {
        return None;
    }
    let masked = h[1] & 0x80 != 0;
    let (len_bytes, short) = match h[1] & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let need = 2 + len_bytes + if masked { 4 } else { 0 };
    if h.len() < need {
        return None;
    }
    Some(short.unwrap_or_else(|| {
        h[2..2 + len_bytes]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload_len: usize) -> Vec<u8> {
        let mut f = vec![0x82];
        match payload_len {
            n if n < 126 => f.push(n as u8),
            n if n < 65536 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend(std::iter::repeat_n(0x61, payload_len));
        f
    }

    #[test]
    fn frame_boundaries_are_followed_across_any_split() {
        let stream: Vec<u8> = [frame(5), frame(300), frame(70_000), frame(0), frame(125)].concat();
        // Fed one byte at a time or in odd chunks, the tracker ends every frame where it ends.
        for chunk in [1, 3, 7, 4096, stream.len()] {
            let mut f = Frames::default();
            for c in stream.chunks(chunk) {
                f.feed(c);
            }
            assert!(f.at_boundary(), "chunk {chunk}");
        }
        let mut f = Frames::default();
        f.feed(&stream[..10]);
        assert!(!f.at_boundary());
        // The rest of the second frame (its 300-byte payload started at byte 7 + 4).
        let rest = &stream[10..];
        let take = f.until_boundary(rest);
        assert_eq!(10 + take, 7 + 4 + 300);
        assert!(f.at_boundary());
    }

    #[test]
    fn the_close_frame_is_what_rfc_6455_says() {
        let f = close_frame(REVOKED, "x");
        assert_eq!(f, vec![0x88, 3, 0x11, 0x33, b'x']);
        assert_eq!(close_frame(1000, &"r".repeat(200)).len(), 2 + 2 + 123);
    }
}
