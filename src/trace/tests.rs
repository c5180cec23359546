use super::*;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

#[test]
fn traceparent_is_read_as_w3c_trace_context_writes_it() {
    let r = parse_traceparent(format!("00-{TRACE}-b7ad6b7169203331-01").as_bytes()).unwrap();
    assert_eq!(trace_id_hex(&r.trace_id), TRACE);
    assert_eq!(r.span_id, [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]);
    assert!(r.sampled);
    let r = parse_traceparent(format!("00-{TRACE}-b7ad6b7169203331-00").as_bytes()).unwrap();
    assert!(!r.sampled);
    // A later version: the same four fields, anything after a dash ignored.
    assert!(
        parse_traceparent(format!("cc-{TRACE}-b7ad6b7169203331-01-what-comes-next").as_bytes())
            .is_some()
    );
    for bad in [
        format!("00-{TRACE}-b7ad6b7169203331-01-extra"),
        format!("ff-{TRACE}-b7ad6b7169203331-01"),
        format!("00-{}-b7ad6b7169203331-01", TRACE.to_uppercase()),
        format!("00-{}-b7ad6b7169203331-01", "0".repeat(32)),
        format!("00-{TRACE}-0000000000000000-01"),
        format!("00-{TRACE}-b7ad6b716920333-01"),
        format!("00_{TRACE}-b7ad6b7169203331-01"),
        format!("cc-{TRACE}-b7ad6b7169203331-01x"),
        "".to_string(),
    ] {
        assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
    }
    assert!(valid_tracestate(b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
    assert!(!valid_tracestate(b"a=\x01"));
    assert!(!valid_tracestate(&[b'a'; 513]));
}

#[test]
fn a_sampled_trace_records_spans_under_the_remote_parent_and_passes_the_trace_on() {
    let remote = parse_traceparent(format!("00-{TRACE}-b7ad6b7169203331-01").as_bytes());
    let mut t = Trace::new(
        remote,
        Some("rojo=1".into()),
        new_trace_id(),
        true,
        "GET".into(),
    );
    assert_eq!(
        trace_id_hex(&t.trace_id),
        TRACE,
        "the remote trace continues"
    );
    let up = t.start("upstream", Kind::Client);
    t.set(up, "http.response.status_code", 200i64);
    t.fail(up, "connection reset");
    t.end(up);
    assert_eq!(t.spans.len(), 2);
    assert_eq!(t.spans[0].parent, Some(remote.unwrap().span_id));
    assert_eq!(t.spans[1].parent, Some(t.spans[0].id));
    assert_eq!(t.spans[1].error.as_deref(), Some("connection reset"));
    let header = t.traceparent(up);
    assert_eq!(header.len(), 55);
    let passed = parse_traceparent(header.as_bytes()).unwrap();
    assert_eq!(
        (passed.trace_id, passed.span_id, passed.sampled),
        (t.trace_id, t.spans[1].id, true)
    );
    assert_eq!(t.state.as_deref(), Some("rojo=1"));
}

#[test]
fn an_unsampled_trace_records_nothing_and_still_passes_its_id_on() {
    let mut t = Trace::new(
        None,
        Some("ignored=1".into()),
        new_trace_id(),
        false,
        "GET".into(),
    );
    assert_eq!(t.state, None, "no tracestate without a parent");
    let up = t.start("upstream", Kind::Client);
    t.set(up, "k", "v");
    t.end(up);
    assert!(t.spans.is_empty());
    let passed = parse_traceparent(t.traceparent(up).as_bytes()).unwrap();
    assert_eq!(passed.trace_id, t.trace_id);
    assert!(!passed.sampled);
}

#[test]
fn an_export_request_frames_every_span() {
    let mut t = Trace::new(None, None, [7; 16], true, "GET".into());
    let a = t.start("authenticate", Kind::Internal);
    t.end(a);
    let body = otlp::export_request(&[t], "castellan", "host:1");
    // ExportTraceServiceRequest.resource_spans (field 1, length-delimited) first.
    assert_eq!(body[0], 0x0a);
    // Every span's trace id appears once, framed as field 1 of Span (0x0a, 16 bytes).
    let needle = [&[0x0a, 16][..], &[7; 16]].concat();
    assert_eq!(
        body.windows(needle.len())
            .filter(|w| *w == needle.as_slice())
            .count(),
        2
    );
}
