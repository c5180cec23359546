//! Distributed tracing: W3C Trace Context (`traceparent`, `tracestate`) and the spans one request
//! makes, which [`otlp`] encodes for an OpenTelemetry collector.
//!
//! A leaf: the runtime decides whether a request is traced and sends its spans; the server, the
//! gate and the endpoints record them on the request's [`Trace`]. A request that is not sampled
//! still carries its trace id on to the app, and records nothing.
//!
//! May use: crypto (the seed of its ids).

pub mod otlp;

use std::time::{SystemTime, UNIX_EPOCH};

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// The `traceparent` a trusted proxy sent (W3C Trace Context §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

fn hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn to_hex(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
}

/// Reads a `traceparent` header: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`. A later
/// version is read by the same four fields (§3.2.4); version `ff`, upper-case hex and all-zero
/// ids are invalid, and so is anything else malformed: such a header starts a new trace.
pub fn parse_traceparent(value: &[u8]) -> Option<Remote> {
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let [version] = hex::<1>(&value[..2])?;
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if value.len() > 55 && value[55] != b'-' {
        return None;
    }
    let trace_id = hex::<16>(&value[3..35])?;
    let span_id = hex::<8>(&value[36..52])?;
    let [flags] = hex::<1>(&value[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Remote {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// A `tracestate` worth passing on unchanged: at most 512 printable characters (§3.3.1.5).
pub fn valid_tracestate(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= 512 && value.iter().all(|b| (0x20..0x7f).contains(b))
}

/// The trace id as logs and tracing back ends show it: 32 lower-case hex digits.
pub fn trace_id_hex(id: &TraceId) -> String {
    let mut s = String::with_capacity(32);
    to_hex(id, &mut s);
    s
}

/// What a span is, in OpenTelemetry's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

/// One recorded span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub name: String,
    pub kind: Kind,
    pub id: SpanId,
    pub parent: Option<SpanId>,
    /// Nanoseconds since 1970; `end` is 0 while the span is open.
    pub start: u64,
    pub end: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// Set when the operation failed, with what went wrong.
    pub error: Option<String>,
}

/// A span that is open: what [`Trace::start`] returns and the other methods take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    index: usize,
    id: SpanId,
}

/// One request's trace: its ids and, when sampled, the spans recorded so far (the first is the
/// request's own, the server span).
#[derive(Debug)]
pub struct Trace {
    pub trace_id: TraceId,
    /// The `tracestate` received with the parent, passed on unchanged.
    pub state: Option<String>,
    /// The parent came from another process (a trusted proxy's `traceparent`).
    pub remote_parent: bool,
    pub sampled: bool,
    pub spans: Vec<Span>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

thread_local! {
    /// Each thread's generator of ids, seeded from the system's random source.
    static IDS: std::cell::Cell<u64> = std::cell::Cell::new({
        let mut seed = [0u8; 8];
        crate::crypto::fill_random(&mut seed);
        u64::from_le_bytes(seed)
    });
}

/// 64 random bits from wyrand (a fast generator, as OpenTelemetry's SDKs use for ids: trace ids
/// must be unpredictable enough to be unique and to sample by, not secret; nothing in castellan
/// trusts one).
fn random_u64() -> u64 {
    IDS.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    })
}

fn new_span_id() -> SpanId {
    loop {
        let id = random_u64();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// A new trace id, random in all its bits (so its last bytes can decide sampling, as W3C Trace
/// Context Level 2 asks).
pub fn new_trace_id() -> TraceId {
    let mut id = [0u8; 16];
    while id == [0; 16] {
        id[..8].copy_from_slice(&random_u64().to_be_bytes());
        id[8..].copy_from_slice(&random_u64().to_be_bytes());
    }
    id
}

impl Trace {
    /// A trace for one request, continuing `remote` when a trusted proxy sent one; `name` is the
    /// server span's.
    pub fn new(
        remote: Option<Remote>,
        state: Option<String>,
        trace_id: TraceId,
        sampled: bool,
        name: String,
    ) -> Trace {
        let mut trace = Trace {
            trace_id: remote.map_or(trace_id, |r| r.trace_id),
            state: remote.and(state),
            remote_parent: remote.is_some(),
            sampled,
            spans: Vec::new(),
        };
        trace.push(name, Kind::Server, remote.map(|r| r.span_id));
        trace
    }

    fn push(&mut self, name: String, kind: Kind, parent: Option<SpanId>) -> Open {
        let id = new_span_id();
        if !self.sampled {
            return Open {
                index: usize::MAX,
                id,
            };
        }
        let start = now_ns();
        self.spans.push(Span {
            name,
            kind,
            id,
            parent,
            start,
            end: 0,
            attributes: Vec::new(),
            error: None,
        });
        Open {
            index: self.spans.len() - 1,
            id,
        }
    }

    /// The request's own span.
    pub fn root(&self) -> Open {
        Open {
            index: if self.sampled { 0 } else { usize::MAX },
            id: self.spans.first().map_or([0; 8], |s| s.id),
        }
    }

    /// Starts a span under the request's.
    pub fn start(&mut self, name: &'static str, kind: Kind) -> Open {
        let parent = self.spans.first().map(|s| s.id);
        self.push(name.to_string(), kind, parent)
    }

    fn span(&mut self, open: Open) -> Option<&mut Span> {
        self.spans.get_mut(open.index)
    }

    /// Sets an attribute (nothing when the trace is not sampled).
    pub fn set(&mut self, open: Open, key: &'static str, value: impl Into<Value>) {
        if let Some(s) = self.span(open) {
            s.attributes.push((key, value.into()));
        }
    }

    /// Marks the span failed.
    pub fn fail(&mut self, open: Open, message: impl Into<String>) {
        if let Some(s) = self.span(open) {
            s.error = Some(message.into());
        }
    }

    /// Ends the span now.
    pub fn end(&mut self, open: Open) {
        if let Some(s) = self.span(open) {
            s.end = now_ns();
        }
    }

    /// Ends every span still open (one a failure returned from early), the request's last.
    pub fn end_all(&mut self) {
        let now = now_ns();
        for s in self.spans.iter_mut().rev() {
            if s.end == 0 {
                s.end = now;
            }
        }
    }

    /// The `traceparent` for a request made within `open` (to the app, say).
    pub fn traceparent(&self, open: Open) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        to_hex(&self.trace_id, &mut s);
        s.push('-');
        to_hex(&open.id, &mut s);
        s.push_str(if self.sampled { "-01" } else { "-00" });
        s
    }
}

#[cfg(test)]
mod tests;
