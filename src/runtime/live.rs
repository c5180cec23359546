//! Connections that outlive their decision: WebSockets, streaming responses and tunnels, whatever
//! the credential they were opened with.
//!
//! Each is registered with what it was decided on. A response whose length is known and at most
//! [`SHORT_BODY`] is not: it is the answer to a request already decided, on its way out in the time
//! it takes to send, and registering every such response cost the request path more than the
//! decision itself. After every change (and every second, for
//! conditions that expire) the server re-decides them against the new snapshot, and closes those
//! that would no longer be allowed or whose session has ended. Google IAP never re-checks an open
//! WebSocket; castellan closes it within a second.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame};
use tokio::sync::watch;

use crate::policy::{Principal, Role};
use crate::web::{Body, BoxError};

/// What a live connection was allowed on.
#[derive(Debug, Clone)]
pub struct Grounds {
    pub app: Arc<str>,
    /// The role it was allowed with (roles/tunnelAccessor for a tunnel).
    pub role: Role,
    pub principal: Principal,
    /// What ends the credential it was opened with.
    pub revocation: Revocation,
    pub host: String,
    pub path: String,
    pub method: String,
    pub ip: Option<IpAddr>,
    /// Whether its connection presented a verified client certificate (for access levels).
    pub client_certificate: bool,
}

/// What, besides a change of policy, ends a live connection's right to stay open.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Revocation {
    /// The session (by digest) it rides on: a browser's, or the command line's whose access token
    /// opened it. Sign-out and revocation end it.
    Session(Arc<str>),
    /// The service account key (by id) its access token was minted with.
    Key(String),
    /// Nothing but the policy (a provider's ID token, an anonymous caller of a public app).
    Never,
}

struct Entry {
    grounds: Grounds,
    cancel: watch::Sender<bool>,
}

#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    entries: Mutex<HashMap<u64, Entry>>,
}

/// Unregisters the connection when dropped (the connection ended by itself).
pub struct Guard {
    id: u64,
    registry: Arc<Registry>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// The largest response of known length that is sent without registering.
pub const SHORT_BODY: u64 = 1 << 20;

/// What an allowed request was decided on, registered only if its response turns out to be live
/// (an upgrade, a stream, or a long body).
pub struct Pending {
    pub registry: Arc<Registry>,
    pub grounds: Grounds,
}

impl Pending {
    pub fn register(self) -> (Guard, Revoked) {
        self.registry.register(self.grounds)
    }
}

/// Resolves when the connection must close.
pub type Revoked = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(self: &Arc<Self>, grounds: Grounds) -> (Guard, Revoked) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = watch::channel(false);
        self.lock().insert(
            id,
            Entry {
                grounds,
                cancel: tx,
            },
        );
        let revoked: Revoked = Box::pin(async move {
            // A closed channel (registry entry removed) means the connection is over anyway.
            let _ = rx.wait_for(|v| *v).await;
        });
        (
            Guard {
                id,
                registry: self.clone(),
            },
            revoked,
        )
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// How many live connections `which` says yes to.
    pub fn count(&self, which: impl Fn(&Grounds) -> bool) -> usize {
        self.lock().values().filter(|e| which(&e.grounds)).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What every live connection was allowed on, with its id.
    pub fn snapshot(&self) -> Vec<(u64, Grounds)> {
        self.lock()
            .iter()
            .map(|(id, e)| (*id, e.grounds.clone()))
            .collect()
    }

    /// Closes the connections with these ids; returns how many were still open.
    pub fn revoke(&self, ids: &[u64]) -> usize {
        let mut map = self.lock();
        let mut n = 0;
        for id in ids {
            if let Some(e) = map.remove(id) {
                let _ = e.cancel.send(true);
                n += 1;
            }
        }
        n
    }
}

/// A response body that ends with an error as soon as its connection is revoked.
pub struct RevocableBody {
    inner: Body,
    revoked: Revoked,
    _guard: Guard,
}

impl RevocableBody {
    pub fn new(inner: Body, guard: Guard, revoked: Revoked) -> RevocableBody {
        RevocableBody {
            inner,
            revoked,
            _guard: guard,
        }
    }
}

impl HttpBody for RevocableBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.revoked.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err("access was revoked".into())));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grounds() -> Grounds {
        Grounds {
            app: "demo".into(),
            role: Role::Accessor,
            principal: Principal::Person(Arc::new(crate::policy::Identity::local("a@example.com"))),
            revocation: Revocation::Session("s".into()),
            host: "h".into(),
            path: "/".into(),
            method: "GET".into(),
            ip: None,
            client_certificate: false,
        }
    }

    #[tokio::test]
    async fn revoking_resolves_and_dropping_unregisters() {
        let r = Arc::new(Registry::default());
        let (guard, revoked) = r.register(grounds());
        let (guard2, _revoked2) = r.register(grounds());
        assert_eq!(r.len(), 2);
        let ids: Vec<u64> = r
            .snapshot()
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| *id == 0)
            .collect();
        assert_eq!(r.revoke(&ids), 1);
        tokio::time::timeout(std::time::Duration::from_secs(1), revoked)
            .await
            .unwrap();
        drop(guard);
        drop(guard2);
        assert!(r.is_empty());
    }
}
