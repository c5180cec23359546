use super::*;

fn labels(app: &str, decision: &'static str, status: u16) -> RequestLabels {
    RequestLabels {
        app: app.into(),
        decision,
        status,
    }
}

/// The line of `render`'s text that starts with `prefix`.
fn line(text: &str, prefix: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix} in\n{text}"))
        .to_string()
}

#[test]
fn requests_are_counted_by_their_labels_and_in_their_own_metrics() {
    let one = Metrics::new();
    let other = Metrics::new();
    for _ in 0..3 {
        one.request(labels("demo", "allow", 200), 0.001);
    }
    one.request(labels("demo", "deny", 403), 0.001);
    // Same labels, another app's text in a new allocation: the same counter.
    one.request(labels(&String::from("demo"), "allow", 200), 0.002);
    other.request(labels("demo", "allow", 200), 0.001);

    let text = one.render();
    assert_eq!(
        line(
            &text,
            r#"castellan_requests_total{app="demo",decision="allow",status="200"}"#
        ),
        r#"castellan_requests_total{app="demo",decision="allow",status="200"} 4"#
    );
    assert!(
        line(
            &text,
            r#"castellan_requests_total{app="demo",decision="deny",status="403"}"#
        )
        .ends_with(" 1")
    );
    assert!(
        line(
            &text,
            r#"castellan_request_duration_seconds_count{app="demo"}"#
        )
        .ends_with(" 5")
    );
    // The other instance saw one request, whatever this thread had cached for the first.
    assert!(
        line(
            &other.render(),
            r#"castellan_requests_total{app="demo",decision="allow",status="200"}"#
        )
        .ends_with(" 1")
    );
}

#[test]
fn a_thread_with_more_label_sets_than_it_keeps_still_counts_every_request() {
    let m = Metrics::new();
    for round in 0..2 {
        for status in 0..(HANDLES_MAX as u16 + 10) {
            m.request(labels("demo", "allow", 200 + status), 0.001);
        }
        let text = m.render();
        let expected = round + 1;
        assert!(
            line(
                &text,
                r#"castellan_requests_total{app="demo",decision="allow",status="200"}"#
            )
            .ends_with(&format!(" {expected}"))
        );
        assert!(
            line(
                &text,
                r#"castellan_requests_total{app="demo",decision="allow",status="273"}"#
            )
            .ends_with(&format!(" {expected}"))
        );
    }
}
