//! OpenTelemetry tracing when `[tracing]` is configured: which requests are recorded, and the
//! exporter that sends their spans to the collector over OTLP/HTTP (protobuf).
//!
//! Sampling is parent-based, as OpenTelemetry's default sampler: a trusted proxy's `traceparent`
//! decides for the traces it started; a new trace is recorded when its random id falls within
//! `sample_ratio`. Finished traces wait in a bounded queue; the exporter sends them in batches (up
//! to 512 spans, or what arrived within a second) and retries a collector that is down or busy
//! (429, 502, 503, 504, or no answer) with backoff. Traces are diagnostics, not records: when
//! the queue is full, new ones are dropped and counted (`castellan_trace_spans_dropped_total`),
//! and a request never waits for the collector. The audit trail is what keeps every decision.

use std::time::Duration;

use http::HeaderMap;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::config::Tracing;
use crate::trace::{self, Trace};

/// Finished traces waiting for the exporter.
const QUEUE: usize = 4096;
/// Spans in one export.
const BATCH_SPANS: usize = 512;
/// How long the first trace of a batch waits for others.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Attempts at one batch before it is dropped.
const ATTEMPTS: u32 = 5;

static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// Starts traces for requests and hands finished ones to the exporter.
pub struct Tracer {
    /// A new trace is sampled when the last 8 bytes of its id, as a number, are below this.
    threshold: u64,
    queue: mpsc::Sender<Box<Trace>>,
    dropped: Counter,
}

impl Tracer {
    /// The tracer for `config`, with its exporter running.
    pub fn start(config: &Tracing, exported: Counter, dropped: Counter) -> Tracer {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("castellan/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client for the collector builds");
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(export(config.clone(), http, rx, exported, dropped.clone()));
        Tracer {
            threshold: threshold(config.sample_ratio),
            queue,
            dropped,
        }
    }

    /// The trace of one request named `name`: the one a trusted proxy's `traceparent` (and
    /// `tracestate`) continues (`trusted`), or a new one.
    pub fn begin(&self, headers: &HeaderMap, trusted: bool, name: String) -> Box<Trace> {
        let remote = trusted
            .then(|| headers.get(&TRACEPARENT))
            .flatten()
            .and_then(|v| trace::parse_traceparent(v.as_bytes()));
        let state = remote
            .and_then(|_| headers.get(&TRACESTATE))
            .filter(|v| trace::valid_tracestate(v.as_bytes()))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let id = trace::new_trace_id();
        let sampled = match remote {
            Some(r) => r.sampled,
            None => sampled(&id, self.threshold),
        };
        Box::new(Trace::new(remote, state, id, sampled, name))
    }

    /// Hands a finished trace to the exporter (a sampled one; others have nothing to send).
    pub fn finish(&self, trace: Box<Trace>) {
        if !trace.sampled || trace.spans.is_empty() {
            return;
        }
        let spans = trace.spans.len() as u64;
        if self.queue.try_send(trace).is_err() {
            self.dropped.inc_by(spans);
        }
    }
}

/// Sets the request's `traceparent` (and `tracestate`) for the next hop, replacing the client's.
pub fn propagate(headers: &mut HeaderMap, trace: &Trace, span: trace::Open) {
    if let Ok(v) = http::HeaderValue::from_str(&trace.traceparent(span)) {
        headers.insert(&TRACEPARENT, v);
    }
    headers.remove(&TRACESTATE);
    if let Some(state) = trace
        .state
        .as_deref()
        .and_then(|s| http::HeaderValue::from_str(s).ok())
    {
        headers.insert(&TRACESTATE, state);
    }
}

fn threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else {
        (ratio.max(0.0) * u64::MAX as f64) as u64
    }
}

fn sampled(id: &trace::TraceId, threshold: u64) -> bool {
    let mut low = [0u8; 8];
    low.copy_from_slice(&id[8..]);
    threshold == u64::MAX || u64::from_be_bytes(low) < threshold
}

async fn export(
    config: Tracing,
    http: reqwest::Client,
    mut rx: mpsc::Receiver<Box<Trace>>,
    exported: Counter,
    dropped: Counter,
) {
    let instance = format!(
        "{}:{}",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
        std::process::id()
    );
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![*first];
        let mut spans = batch[0].spans.len();
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while spans < BATCH_SPANS {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(t)) => {
                    spans += t.spans.len();
                    batch.push(*t);
                }
                _ => break,
            }
        }
        let body = trace::otlp::export_request(&batch, &config.service_name, &instance);
        let mut wait = Duration::from_secs(1);
        let mut attempt = 1;
        loop {
            match send(&http, &config, body.clone()).await {
                Ok(()) => {
                    exported.inc_by(spans as u64);
                    if failing {
                        tracing::info!(collector = %config.endpoint, "tracing: the collector takes spans again");
                        failing = false;
                    }
                    break;
                }
                Err((e, retry)) => {
                    if !failing {
                        tracing::warn!(collector = %config.endpoint, "tracing: cannot export spans: {e}");
                        failing = true;
                    }
                    if !retry || attempt == ATTEMPTS {
                        dropped.inc_by(spans as u64);
                        break;
                    }
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
            }
        }
    }
}

/// For `castellan check-config`: an empty export (no spans), which a collector answers 200.
pub async fn check(config: &Tracing) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    send(&http, config, Vec::new()).await.map_err(|(e, _)| e)
}

/// One POST; on failure, what went wrong and whether OTLP says to try again.
async fn send(
    http: &reqwest::Client,
    config: &Tracing,
    body: Vec<u8>,
) -> Result<(), (String, bool)> {
    let mut req = http
        .post(config.endpoint.as_str())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .timeout(Duration::from_secs(10));
    for (name, value) in &config.headers {
        req = req.header(name, &value.0);
    }
    match req.body(body).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let status = r.status().as_u16();
            let retry = matches!(status, 429 | 502 | 503 | 504);
            Err((format!("{} answered {status}", config.endpoint), retry))
        }
        Err(e) => Err((format!("{}: {e}", config.endpoint), true)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ratio_samples_that_share_of_random_ids() {
        let t = super::threshold(0.25);
        let n = 20_000;
        let kept = (0..n)
            .filter(|_| super::sampled(&crate::trace::new_trace_id(), t))
            .count();
        assert!((4_000..6_000).contains(&kept), "{kept} of {n}");
        assert!(!super::sampled(&[0xff; 16], super::threshold(0.0)));
        assert!(super::sampled(&[0xff; 16], super::threshold(1.0)));
    }
}
