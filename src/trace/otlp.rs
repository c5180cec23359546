//! OTLP/HTTP's request body: an `ExportTraceServiceRequest` in protobuf's binary encoding, written
//! by hand for the fields castellan sets (opentelemetry-proto's `collector/trace/v1` and
//! `trace/v1`, `common/v1`, `resource/v1`), so tracing costs no code generator and no runtime.

use super::{Span, Trace, Value};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// Span.flags bits: the W3C trace flags, and whether the parent is known to be remote.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire));
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A nested message, written by `f` and then framed with its length.
fn message(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    bytes(out, field, &inner);
}

/// `KeyValue { key = 1; AnyValue value = 2 }`, `AnyValue { string 1; bool 2; int64 3 }`.
fn attribute(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    message(out, field, |kv| {
        bytes(kv, 1, key.as_bytes());
        message(kv, 2, |v| match value {
            Value::Str(s) => bytes(v, 1, s.as_bytes()),
            Value::Bool(b) => {
                tag(v, 2, VARINT);
                varint(v, u64::from(*b));
            }
            Value::Int(i) => {
                tag(v, 3, VARINT);
                varint(v, *i as u64);
            }
        });
    });
}

fn span(out: &mut Vec<u8>, trace: &Trace, s: &Span) {
    message(out, 2, |m| {
        bytes(m, 1, &trace.trace_id);
        bytes(m, 2, &s.id);
        if let Some(state) = &trace.state {
            bytes(m, 3, state.as_bytes());
        }
        if let Some(parent) = &s.parent {
            bytes(m, 4, parent);
        }
        bytes(m, 5, s.name.as_bytes());
        tag(m, 6, VARINT);
        varint(m, s.kind as u64);
        tag(m, 7, FIXED64);
        m.extend_from_slice(&s.start.to_le_bytes());
        tag(m, 8, FIXED64);
        m.extend_from_slice(&s.end.max(s.start).to_le_bytes());
        for (k, v) in &s.attributes {
            attribute(m, 9, k, v);
        }
        // Status { message = 2; code = 3 } with STATUS_CODE_ERROR (2); unset otherwise.
        if let Some(error) = &s.error {
            message(m, 15, |st| {
                bytes(st, 2, error.as_bytes());
                tag(st, 3, VARINT);
                varint(st, 2);
            });
        }
        let remote = s.parent.is_some() && trace.remote_parent && s.kind == super::Kind::Server;
        let flags = u32::from(trace.sampled) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 };
        tag(m, 16, FIXED32);
        m.extend_from_slice(&flags.to_le_bytes());
    });
}

/// The body of one export: every span of `traces`, from one resource (`service.name` and
/// `service.version`, plus `service.instance.id`), under the instrumentation scope `castellan`.
pub fn export_request(traces: &[Trace], service_name: &str, instance: &str) -> Vec<u8> {
    let version = env!("CARGO_PKG_VERSION");
    let mut out = Vec::new();
    // ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1 }
    message(&mut out, 1, |rs| {
        // ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2 }
        message(rs, 1, |r| {
            attribute(r, 1, "service.name", &Value::Str(service_name.into()));
            attribute(r, 1, "service.version", &Value::Str(version.into()));
            attribute(r, 1, "service.instance.id", &Value::Str(instance.into()));
        });
        message(rs, 2, |ss| {
            // ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2 }
            message(ss, 1, |scope| {
                bytes(scope, 1, b"castellan");
                bytes(scope, 2, version.as_bytes());
            });
            for t in traces {
                for s in &t.spans {
                    span(ss, t, s);
                }
            }
        });
    });
    out
}
