//! How long an HTTP/1 connection may take: a request's line and headers must arrive within
//! [`HEAD_TIMEOUT`] of its first byte, and a keep-alive connection may wait [`IDLE_TIMEOUT`] for
//! its next request.
//!
//! hyper's own header timeout starts when a connection begins to wait for a request, so it was
//! also a 10-second idle timeout: a load balancer that keeps its connections to backends open for
//! minutes (Google's for 600 s, and it asks backends to keep theirs longer; Oracle's for 300 s)
//! would send a request on a connection castellan was closing, and answer its client 502. So the
//! two are told apart here: the connection's IO says when bytes arrive, the service when a
//! request's head is complete, the response body when it has been sent, and the connection's
//! wrapper ([`super::graceful::Watched`]) closes it when the deadline of its phase passes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// From a request's first byte to the end of its headers.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// From the end of a response to the next request's first byte: longer than the 600 s for which
/// Google's load balancers keep idle connections to their backends.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(620);

/// The two limits (tests use short ones).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub head: Duration,
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            head: HEAD_TIMEOUT,
            idle: IDLE_TIMEOUT,
        }
    }
}

const IDLE: u64 = 0;
const HEAD: u64 = 1;
const BUSY: u64 = 2;

/// Where an HTTP/1 connection is: waiting for a request (since when), reading a request's head
/// (since when), or serving a request. One word: the phase in the low two bits, the milliseconds
/// since the connection began above them.
pub struct Phase {
    origin: Instant,
    word: AtomicU64,
}

impl Phase {
    /// A new connection: its first request's head is due within the head limit.
    pub fn new() -> Arc<Phase> {
        Arc::new(Phase {
            origin: Instant::now(),
            word: AtomicU64::new(HEAD),
        })
    }

    fn set(&self, phase: u64) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.word.store(ms << 2 | phase, Ordering::Relaxed);
    }

    /// Bytes arrived: the start of a request's head, if the connection was waiting for one.
    fn bytes_arrived(&self) {
        if self.word.load(Ordering::Relaxed) & 3 == IDLE {
            self.set(HEAD);
        }
    }

    /// A request's head is complete: it is being served, with no deadline of ours (so no time).
    fn request_began(&self) {
        self.word.store(BUSY, Ordering::Relaxed);
    }

    /// The response has been sent (or abandoned): the connection waits for the next request.
    fn response_ended(&self) {
        self.set(IDLE);
    }

    fn deadline(&self, word: u64, t: Timeouts) -> Option<(Instant, Expired)> {
        let since = self.origin + Duration::from_millis(word >> 2);
        match word & 3 {
            IDLE => Some((since + t.idle, Expired::Idle)),
            HEAD => Some((since + t.head, Expired::Head)),
            _ => None,
        }
    }
}

/// Which limit a connection outlived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    Idle,
    Head,
}

/// The timer of one connection: set again only when its phase changes.
pub struct Deadline {
    phase: Arc<Phase>,
    timeouts: Timeouts,
    sleep: Pin<Box<Sleep>>,
    /// The phase word the timer was set for, and what it means when it fires (`None`: busy).
    set_for: (u64, Option<Expired>),
}

impl Deadline {
    pub fn new(phase: Arc<Phase>, timeouts: Timeouts) -> Deadline {
        let word = phase.word.load(Ordering::Relaxed);
        let (at, expired) = phase
            .deadline(word, timeouts)
            .expect("a new connection is reading its first request");
        Deadline {
            phase,
            timeouts,
            sleep: Box::pin(tokio::time::sleep_until(at.into())),
            set_for: (word, Some(expired)),
        }
    }

    /// Ready when the connection has outlived the limit of its phase.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        let word = self.phase.word.load(Ordering::Relaxed);
        if word != self.set_for.0 {
            let next = self.phase.deadline(word, self.timeouts);
            if let Some((at, _)) = next {
                self.sleep.as_mut().reset(at.into());
            }
            self.set_for = (word, next.map(|(_, e)| e));
        }
        match self.set_for.1 {
            None => Poll::Pending,
            Some(expired) => self.sleep.as_mut().poll(cx).map(|()| expired),
        }
    }
}

/// A connection's IO, telling its [`Phase`] when bytes arrive.
pub struct Clocked<I> {
    io: I,
    phase: Arc<Phase>,
}

impl<I> Clocked<I> {
    pub fn new(io: I, phase: Arc<Phase>) -> Clocked<I> {
        Clocked { io, phase }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Clocked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.phase.bytes_arrived();
        }
        read
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Clocked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A service whose requests mark the connection busy and whose responses, once sent, idle.
pub struct Phased<S> {
    service: S,
    phase: Arc<Phase>,
}

impl<S> Phased<S> {
    pub fn new(service: S, phase: Arc<Phase>) -> Phased<S> {
        Phased { service, phase }
    }
}

impl<S, B> hyper::service::Service<http::Request<Incoming>> for Phased<S>
where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>,
    S::Future: Unpin,
{
    type Response = http::Response<Ending<B>>;
    type Error = S::Error;
    type Future = PhasedFuture<S::Future>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        self.phase.request_began();
        PhasedFuture {
            future: self.service.call(req),
            phase: Some(self.phase.clone()),
        }
    }
}

/// The service's future, whose response carries the phase to its body.
pub struct PhasedFuture<F> {
    future: F,
    phase: Option<Arc<Phase>>,
}

impl<F, B, E> Future for PhasedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>> + Unpin,
{
    type Output = Result<http::Response<Ending<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        Pin::new(&mut this.future).poll(cx).map(|answer| {
            let phase = this.phase.take().expect("not polled after it was ready");
            answer.map(|resp| resp.map(|body| Ending { body, phase }))
        })
    }
}

/// A response body that, dropped (sent, or abandoned with its connection), idles the connection.
pub struct Ending<B> {
    body: B,
    phase: Arc<Phase>,
}

impl<B> Drop for Ending<B> {
    fn drop(&mut self) {
        self.phase.response_ended();
    }
}

impl<B: Body + Unpin> Body for Ending<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
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
