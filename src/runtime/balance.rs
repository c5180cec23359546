//! Pools of upstreams: a web app may name several (`upstream = [...]`, its replicas). Each
//! request goes to the one with the fewest outstanding requests (a response body or a WebSocket
//! counts until it ends) among those in the pool. An upstream leaves the pool when it refuses a
//! connection (for [`EJECT_FOR`], passive) or fails its `health_check` as often as `unhealthy` says
//! (active), and comes back after the ejection, or after `healthy` passing checks. When every
//! upstream is out, requests still try them, least loaded first: a pool that is wrong about all of
//! them should not refuse everyone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::{App, HealthCheck};

/// How long an upstream that refused a connection stays out of the pool (unless a health check
/// puts it back sooner).
pub const EJECT_FOR: Duration = Duration::from_secs(10);

/// One app's upstreams and what castellan knows of each.
pub struct Balancer {
    targets: Vec<Target>,
    /// Where the search for the least loaded starts, turning, so ties spread.
    next: AtomicUsize,
}

struct Target {
    url: String,
    outstanding: AtomicU32,
    /// Set by the active health check.
    healthy: AtomicBool,
    /// Passive ejection: out of the pool until then (Unix milliseconds).
    ejected_until: AtomicI64,
    /// Checks in a row: positive passing, negative failing.
    streak: AtomicI64,
    /// What the last check said, for the console.
    last_check: std::sync::Mutex<String>,
}

/// What the console shows of one upstream.
pub struct TargetState {
    pub url: String,
    pub in_pool: bool,
    pub outstanding: u32,
    pub detail: String,
}

/// A request in flight to one upstream: counted until dropped.
pub struct InFlight {
    balancer: Arc<Balancer>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.balancer.targets[self.index]
            .outstanding
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    pub fn new(app: &App) -> Balancer {
        Balancer {
            targets: app
                .upstreams
                .iter()
                .map(|u| Target {
                    url: u.as_str().to_string(),
                    outstanding: AtomicU32::new(0),
                    healthy: AtomicBool::new(true),
                    ejected_until: AtomicI64::new(0),
                    streak: AtomicI64::new(0),
                    last_check: std::sync::Mutex::new(String::new()),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    pub fn url(&self, i: usize) -> &str {
        &self.targets[i].url
    }

    fn in_pool(&self, i: usize, now_ms: i64) -> bool {
        let t = &self.targets[i];
        t.healthy.load(Ordering::Relaxed) && t.ejected_until.load(Ordering::Relaxed) <= now_ms
    }

    /// The upstream for the next attempt, leaving out those in `tried` (a bit per upstream): the
    /// least loaded in the pool, else the least loaded of the rest. None when all were tried.
    pub fn pick(&self, tried: u64) -> Option<usize> {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = crate::clock::now_ms();
        let mut best: Option<(bool, u32, usize)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if tried & (1 << i) != 0 {
                continue;
            }
            let load = self.targets[i].outstanding.load(Ordering::Relaxed);
            // In the pool first, then fewer outstanding.
            let key = (!self.in_pool(i, now), load, i);
            if best.is_none_or(|b| (key.0, key.1) < (b.0, b.1)) {
                best = Some(key);
            }
        }
        best.map(|(_, _, i)| i)
    }

    /// Counts a request to upstream `i` until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>, i: usize) -> InFlight {
        self.targets[i].outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight {
            balancer: self.clone(),
            index: i,
        }
    }

    /// Upstream `i` refused (or did not take) a connection: out of the pool for [`EJECT_FOR`].
    pub fn refused(&self, i: usize) {
        let until = crate::clock::now_ms() + EJECT_FOR.as_millis() as i64;
        self.targets[i]
            .ejected_until
            .store(until, Ordering::Relaxed);
    }

    /// Records a health check of upstream `i`; returns whether it changed the upstream's standing.
    pub fn checked(&self, i: usize, passed: bool, detail: String, hc: &HealthCheck) -> bool {
        let t = &self.targets[i];
        *t.last_check.lock().unwrap_or_else(|p| p.into_inner()) = detail;
        let streak = if passed {
            t.streak
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| Some(s.max(0) + 1))
                .map_or(1, |s| s.max(0) + 1)
        } else {
            t.streak
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| Some(s.min(0) - 1))
                .map_or(-1, |s| s.min(0) - 1)
        };
        let was = t.healthy.load(Ordering::Relaxed);
        if passed && streak >= i64::from(hc.healthy) {
            t.healthy.store(true, Ordering::Relaxed);
            // A passing check also ends a passive ejection.
            t.ejected_until.store(0, Ordering::Relaxed);
        } else if !passed && -streak >= i64::from(hc.unhealthy) {
            t.healthy.store(false, Ordering::Relaxed);
        }
        was != t.healthy.load(Ordering::Relaxed)
    }

    /// Each upstream as the console shows it.
    pub fn states(&self) -> Vec<TargetState> {
        let now = crate::clock::now_ms();
        self.targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let check = t
                    .last_check
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let detail = if !t.healthy.load(Ordering::Relaxed) {
                    format!("out: failing its health check ({check})")
                } else if t.ejected_until.load(Ordering::Relaxed) > now {
                    "out: refused a connection, back within 10 s".to_string()
                } else {
                    check
                };
                TargetState {
                    url: t.url.trim_end_matches('/').to_string(),
                    in_pool: self.in_pool(i, now),
                    outstanding: t.outstanding.load(Ordering::Relaxed),
                    detail,
                }
            })
            .collect()
    }
}

/// Checks `app`'s upstreams every `interval` while `balancer` is in use (the state that holds it),
/// over connections of its own made as the app's are (its CA, client certificate, timeouts).
pub async fn health_checks(app: App, hc: HealthCheck, balancer: std::sync::Weak<Balancer>) {
    let pool = match super::upstream::Pool::for_app(&app.connection) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            tracing::error!(app = %app.id, "health checks cannot run: {e}");
            return;
        }
    };
    loop {
        tokio::time::sleep(hc.interval).await;
        let Some(b) = balancer.upgrade() else {
            return;
        };
        let mut checks = tokio::task::JoinSet::new();
        for i in 0..b.len() {
            let upstream = b.url(i).to_string();
            let pool = pool.clone();
            let (path, timeout) = (hc.path.clone(), hc.timeout);
            checks.spawn(async move { (i, check(&pool, &upstream, &path, timeout).await) });
        }
        while let Some(Ok((i, (passed, detail)))) = checks.join_next().await {
            if b.checked(i, passed, detail.clone(), &hc) {
                if passed {
                    tracing::info!(app = %app.id, upstream = %b.url(i), "upstream passes its health check again: back in the pool");
                } else {
                    tracing::warn!(app = %app.id, upstream = %b.url(i), "upstream fails its health check ({detail}): out of the pool");
                }
            }
        }
    }
}

/// One health check: `GET path` on `upstream` within `timeout`; passes below status 500.
pub async fn check(
    pool: &super::upstream::Pool,
    upstream: &str,
    path: &str,
    timeout: Duration,
) -> (bool, String) {
    let authority = upstream
        .split_once("://")
        .map_or(upstream, |(_, rest)| rest)
        .trim_end_matches('/')
        .to_string();
    let req = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "castellan health check")
        .body(crate::web::empty())
        .expect("a GET request builds");
    match tokio::time::timeout(timeout, pool.send(upstream, req, false)).await {
        Ok(Ok(r)) if r.status().as_u16() < 500 => (true, format!("HTTP {}", r.status().as_u16())),
        Ok(Ok(r)) => (false, format!("HTTP {}", r.status().as_u16())),
        Ok(Err(e)) => (false, format!("{e}")),
        Err(_) => (
            false,
            format!("no answer within {} s", timeout.as_secs_f32()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(n: usize) -> Arc<Balancer> {
        let toml = format!(
            "[[apps]]\nid = \"a\"\nhost = \"a.example.com\"\nupstream = [{}]\n",
            (0..n)
                .map(|i| format!("\"http://10.0.0.{i}:80\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let dir = tempfile::tempdir().unwrap();
        let config =
            crate::config::Config::parse(&toml, dir.path(), &crate::config::NoEnv).unwrap();
        Arc::new(Balancer::new(&config.apps[0]))
    }

    #[test]
    fn the_least_loaded_in_the_pool_gets_the_request() {
        let b = balancer(3);
        let _a = b.begin(0);
        let _b = b.begin(0);
        let _c = b.begin(1);
        assert_eq!(b.pick(0), Some(2));
        let _d = b.begin(2);
        let _e = b.begin(2);
        assert_eq!(b.pick(0), Some(1), "1 has one, the others two");
        // Ties spread: with nothing outstanding, successive picks visit every upstream.
        let idle = balancer(3);
        let picked: std::collections::HashSet<usize> =
            (0..3).filter_map(|_| idle.pick(0)).collect();
        assert_eq!(picked.len(), 3);
        // Dropping the guards counts them out.
        drop((_a, _b, _c, _d, _e));
        assert!(b.states().iter().all(|s| s.outstanding == 0));
    }

    #[test]
    fn a_refused_or_failing_upstream_leaves_the_pool_and_comes_back() {
        let b = balancer(2);
        b.refused(0);
        for _ in 0..4 {
            assert_eq!(b.pick(0), Some(1));
        }
        assert!(!b.states()[0].in_pool);
        // Everything tried but 0: still tried, not refused.
        assert_eq!(b.pick(0b10), Some(0));
        assert_eq!(b.pick(0b11), None);
        let hc = HealthCheck {
            path: "/healthz".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy: 2,
            unhealthy: 2,
        };
        // A passing check does not readmit at once; two in a row do (and end the ejection).
        assert!(!b.checked(0, true, "HTTP 200".into(), &hc));
        assert!(
            !b.checked(1, false, "HTTP 503".into(), &hc),
            "one failure: still in"
        );
        assert!(
            b.checked(1, false, "HTTP 503".into(), &hc),
            "two failures: out"
        );
        assert!(!b.states()[1].in_pool);
        assert!(
            !b.checked(0, true, "HTTP 200".into(), &hc),
            "0 was healthy all along"
        );
        assert!(
            b.states()[0].in_pool,
            "the passing check ended its ejection"
        );
        assert_eq!(b.pick(0), Some(0));
        assert!(b.states()[1].detail.contains("HTTP 503"));
    }
}
