//! Graceful shutdown of open connections, with nothing shared written while they serve.
//!
//! hyper-util's `GracefulShutdown` wraps each connection in a future that polls a watch channel
//! every time the connection is polled; the channel's waiter list is one mutex for all
//! connections, so every poll of every connection took the same lock, on whichever core it ran
//! (several times a request). Here a connection registers its waker once (again only if its
//! task's waker changes) and otherwise reads one flag that is written once, at shutdown.
//!
//! The same wrapper enforces an HTTP/1 connection's time limits ([`super::timeouts`]), since it
//! is the one place that sees each of the connection's turns.

use std::collections::HashMap;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use tokio::sync::Notify;

use super::timeouts::Deadline;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection that can be asked to finish: the request in flight completes, an idle
/// keep-alive connection closes.
pub trait GracefulConnection: Future<Output = hyper::Result<()>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> GracefulConnection for http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, B, E> GracefulConnection for http2::Connection<I, S, E>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: Read + Write + Unpin,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

/// Connections being served, and the signal that asks them to finish.
#[derive(Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    started: AtomicBool,
    /// The wakers of the open connections' tasks, by connection.
    wakers: Mutex<HashMap<u64, Waker>>,
    next_id: AtomicU64,
    open: AtomicUsize,
    /// Told when the last open connection ends after shutdown started.
    all_closed: Notify,
}

impl Inner {
    fn wakers(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waker>> {
        self.wakers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One open connection's place in [`Shutdown`]: dropped when the connection ends.
struct Registration {
    inner: Arc<Inner>,
    id: u64,
    waker: Option<Waker>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.waker.is_some() {
            self.inner.wakers().remove(&self.id);
        }
        if self.inner.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.all_closed.notify_waiters();
        }
    }
}

impl Shutdown {
    /// Serves `conn` to its end; once [`Shutdown::shutdown`] is called, the connection is asked
    /// to finish (the request in flight completes, an idle keep-alive connection closes). With a
    /// `deadline`, the connection is closed when it outlives the limit of its phase.
    pub fn watch<C: GracefulConnection>(&self, conn: C, deadline: Option<Deadline>) -> Watched<C> {
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        Watched {
            // Boxed once per connection, so the wrapper needs no pin projection.
            conn: Box::pin(conn),
            me: Registration {
                inner: self.inner.clone(),
                id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
                waker: None,
            },
            asked: false,
            deadline,
        }
    }

    /// Asks every open connection to finish, and returns once all have ended.
    pub async fn shutdown(&self) {
        self.inner.started.store(true, Ordering::Release);
        let wakers: Vec<Waker> = self.inner.wakers().values().cloned().collect();
        for w in wakers {
            w.wake();
        }
        loop {
            let closed = self.inner.all_closed.notified();
            let mut closed = pin!(closed);
            closed.as_mut().enable();
            if self.inner.open.load(Ordering::Acquire) == 0 {
                return;
            }
            closed.await;
        }
    }
}

/// A connection served under [`Shutdown`].
pub struct Watched<C> {
    conn: Pin<Box<C>>,
    me: Registration,
    /// Whether the connection was asked to finish.
    asked: bool,
    deadline: Option<Deadline>,
}

impl<C: GracefulConnection> Future for Watched<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = &mut *self;
        if !this.asked {
            let me = &mut this.me;
            if !me.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                me.waker = Some(cx.waker().clone());
                me.inner.wakers().insert(me.id, cx.waker().clone());
            }
            // Read after registering: a shutdown that started in between is seen here, one that
            // starts later wakes the waker just registered.
            if me.inner.started.load(Ordering::Acquire) {
                this.asked = true;
                this.conn.as_mut().graceful_shutdown();
            }
        }
        let served = this.conn.as_mut().poll(cx);
        // Checked once the connection has had its turn (a request that just arrived or ended
        // has moved its phase). Dropping the connection closes it; an idle one has nothing in
        // flight, and hyper has just found nothing to read.
        if served.is_pending()
            && let Some(deadline) = &mut this.deadline
            && let Poll::Ready(expired) = deadline.poll(cx)
        {
            tracing::debug!("connection closed: {expired:?} timeout");
            return Poll::Ready(Ok(()));
        }
        served
    }
}

#[cfg(test)]
mod tests;
