//! Prometheus metrics: requests by app, decision and status; latency; sign-ins; upstream errors.
//!
//! Every request is counted in two families ([`Metrics::request`]). A family is a map behind a
//! lock that every thread takes, so each thread keeps the counters it has used (a few: one per
//! app, outcome and status) and finds them again by comparing labels, with no hash and no lock.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub app: Arc<str>,
    pub decision: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabel {
    pub app: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignInLabels {
    pub provider: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub app: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelBytesLabels {
    pub app: String,
    /// `up` (from the person to the app) or `down`.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub app: String,
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndedLabels {
    pub by: &'static str,
}

/// What ended sign-ins from outside castellan (the `by` label of `castellan_sign_ins_ended`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    /// The provider's OpenID Connect back-channel logout.
    BackChannelLogout,
    /// A SCIM client deactivated or deleted the person (counted per person).
    Scim,
    /// The provider refused to refresh the sign-in's grant.
    Revalidation,
}

impl EndedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            EndedBy::BackChannelLogout => "back-channel-logout",
            EndedBy::Scim => "scim",
            EndedBy::Revalidation => "revalidation",
        }
    }
}

pub struct Metrics {
    /// Which of the process's `Metrics` this is (tests make several): the per-thread handles of
    /// [`Metrics::request`] say whose they are.
    id: u64,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<AppLabel, Histogram, fn() -> Histogram>,
    pub sign_ins: Family<SignInLabels, Counter>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub sign_ins_ended: Family<EndedLabels, Counter>,
    pub tunnels_open: Family<AppLabel, Gauge>,
    pub tunnel_bytes: Family<TunnelBytesLabels, Counter>,
    pub audit_dropped: Counter,
    pub trace_spans_exported: Counter,
    pub trace_spans_dropped: Counter,
    pub audit_spooled: Gauge,
    pub audit_set_aside: Gauge,
    /// Audit records a sink has yet to deliver, by sink.
    pub audit_sink_backlog: Family<SinkLabel, Gauge>,
    /// Audit records not yet in the index by person.
    pub audit_unindexed: Gauge,
    pub upstream_in_pool: Family<UpstreamLabels, Gauge>,
    pub upstream_outstanding: Family<UpstreamLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms … ~8 s
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

/// A thread's handles on one request label set's counter and its app's latency histogram.
struct RequestHandles {
    metrics: u64,
    labels: RequestLabels,
    count: Counter,
    latency: Histogram,
}

/// The most label sets a thread keeps handles on; past it, it starts again.
const HANDLES_MAX: usize = 64;

impl Metrics {
    /// Counts an answered request, and how long it took, in seconds.
    pub fn request(&self, labels: RequestLabels, seconds: f64) {
        thread_local! {
            static HANDLES: std::cell::RefCell<Vec<RequestHandles>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        HANDLES.with_borrow_mut(|handles| {
            let i = match handles
                .iter()
                .position(|h| h.metrics == self.id && h.labels == labels)
            {
                Some(i) => i,
                None => {
                    // Counters outlive their family's lock: a clone shares its value.
                    let count = self.requests.get_or_create(&labels).clone();
                    let latency = self
                        .latency
                        .get_or_create(&AppLabel {
                            app: labels.app.clone(),
                        })
                        .clone();
                    if handles.len() >= HANDLES_MAX {
                        handles.clear();
                    }
                    handles.push(RequestHandles {
                        metrics: self.id,
                        labels,
                        count,
                        latency,
                    });
                    handles.len() - 1
                }
            };
            handles[i].count.inc();
            handles[i].latency.observe(seconds);
        });
    }

    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("castellan");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<AppLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let sign_ins = Family::<SignInLabels, Counter>::default();
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by app, decision and response status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, by app",
            latency.clone(),
        );
        registry.register(
            "sign_ins",
            "Sign-in attempts by provider and result",
            sign_ins.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed upstream requests by app and kind (connect, timeout, protocol)",
            upstream_errors.clone(),
        );
        let sign_ins_ended = Family::<EndedLabels, Counter>::default();
        registry.register(
            "sign_ins_ended",
            "Sign-ins ended from outside castellan (with the sessions handed off from them), by what ended them",
            sign_ins_ended.clone(),
        );
        let tunnels_open = Family::<AppLabel, Gauge>::default();
        registry.register(
            "tunnels_open",
            "Tunnels open to TCP apps, by app",
            tunnels_open.clone(),
        );
        let tunnel_bytes = Family::<TunnelBytesLabels, Counter>::default();
        registry.register(
            "tunnel_bytes",
            "Bytes carried by tunnels, by app and direction (up: to the app, down: from it)",
            tunnel_bytes.clone(),
        );
        let trace_spans_exported = Counter::default();
        registry.register(
            "trace_spans_exported",
            "Spans the OpenTelemetry collector took",
            trace_spans_exported.clone(),
        );
        let trace_spans_dropped = Counter::default();
        registry.register(
            "trace_spans_dropped",
            "Spans not exported: the queue was full, or the collector refused them or stayed unreachable",
            trace_spans_dropped.clone(),
        );
        let audit_dropped = Counter::default();
        registry.register(
            "audit_dropped",
            "Decision records dropped because the audit queue was full",
            audit_dropped.clone(),
        );
        let audit_spooled = Gauge::default();
        registry.register(
            "audit_spooled",
            "Decision records waiting in the on-disk spool for the store to come back",
            audit_spooled.clone(),
        );
        let audit_set_aside = Gauge::default();
        registry.register(
            "audit_set_aside_files",
            "Spool files the store refused, kept for an operator (rename one back to .jsonl to retry it)",
            audit_set_aside.clone(),
        );
        let audit_sink_backlog = Family::<SinkLabel, Gauge>::default();
        registry.register(
            "audit_sink_backlog",
            "Audit records an audit sink has yet to deliver (it catches up when it is back)",
            audit_sink_backlog.clone(),
        );
        let audit_unindexed = Gauge::default();
        registry.register(
            "audit_unindexed",
            "Audit records not yet in the index by person, which the server builds every second (queries by person read these from the trail itself)",
            audit_unindexed.clone(),
        );
        let upstream_in_pool = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "upstream_in_pool",
            "1 while an upstream of an app's pool takes requests, 0 while it is out (failing its health check, or ejected after a refused connection)",
            upstream_in_pool.clone(),
        );
        let upstream_outstanding = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "upstream_outstanding",
            "Requests an upstream of an app's pool is answering now",
            upstream_outstanding.clone(),
        );
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Metrics {
            id: MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            upstream_in_pool,
            upstream_outstanding,
            audit_sink_backlog,
            audit_unindexed,
            audit_dropped,
            trace_spans_exported,
            trace_spans_dropped,
            audit_spooled,
            audit_set_aside,
            registry,
            requests,
            latency,
            sign_ins,
            upstream_errors,
            sign_ins_ended,
            tunnels_open,
            tunnel_bytes,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn sign_ins_ended(&self, by: EndedBy, n: u64) {
        self.sign_ins_ended
            .get_or_create(&EndedLabels { by: by.as_str() })
            .inc_by(n);
    }

    /// A failed call to an app's upstream, by kind (connect, timeout, protocol, credential).
    pub fn upstream_error(&self, app: &str, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                app: app.to_string(),
                kind,
            })
            .inc();
    }

    pub fn sign_in(&self, provider: &str, result: &'static str) {
        self.sign_ins
            .get_or_create(&SignInLabels {
                provider: provider.to_string(),
                result,
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests;
