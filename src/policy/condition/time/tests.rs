//! The date and time functions against Google's documented examples, daylight saving, durations
//! and arithmetic, and what their errors say.

use super::super::{Condition, Context, Destination, Node};
use super::{NANOS_PER_SECOND, Nanos};
use crate::clock::parse_rfc3339;

fn at(rfc3339: &str) -> i64 {
    parse_rfc3339(rfc3339).unwrap_or_else(|| panic!("{rfc3339}"))
}

/// Evaluates `src` for a request to `host` at `time` (RFC 3339), from 10.0.0.1, to a TCP app whose
/// upstream is 10.0.0.5:22 when `tcp`.
fn holds_at(src: &str, host: &str, time: &str, tcp: bool) -> bool {
    let c = Condition::compile(src).unwrap_or_else(|e| panic!("{}", e.pointed(src)));
    c.eval(&Context {
        path: "/admin/users",
        host,
        method: "GET",
        time: at(time),
        ip: "10.0.0.1".parse().ok(),
        destination: tcp.then_some(Destination {
            host: "10.0.0.5",
            port: 22,
        }),
        auth: None,
        access_levels: &[],
    })
}

/// Every example from Google's pages on IAM Conditions for IAP, evaluated where it should hold and
/// where it should not. Pages:
/// - AC = https://cloud.google.com/access-context-manager/docs/time-and-date-conditions (the date and
///   time functions, their ranges and their time-zone argument);
/// - HP = https://cloud.google.com/iap/docs/hostname-and-path-conditions (request.host/path);
/// - AR = https://cloud.google.com/iam/docs/conditions-attribute-reference (date/time, destination;
///   the search tool held only this page's summary, so these are the forms it and the temporary-access
///   page use, as written in IAP policies, not quotes of the page)
/// - the issue's own examples (IS), as a new user typed them.
#[test]
fn googles_documented_examples() {
    let cases: &[(&str, &str, &str, &str, bool)] = &[
        // (page, expression, host, time, holds)
        (
            "AC",
            r#"request.time.getFullYear("America/Los_Angeles") == 2020"#,
            "a",
            "2020-06-01T12:00:00Z",
            true,
        ),
        // 05:00 UTC on New Year's Day is still 2020 in Los Angeles.
        (
            "AC",
            r#"request.time.getFullYear("America/Los_Angeles") == 2020"#,
            "a",
            "2021-01-01T05:00:00Z",
            true,
        ),
        (
            "AC",
            r#"request.time.getFullYear("America/Los_Angeles") == 2020"#,
            "a",
            "2021-01-01T09:00:00Z",
            false,
        ),
        // "0 == January" (the page's own example writes == 1 under "Is the month January?"; the
        // documented range is what Google's evaluator does, and what castellan does).
        (
            "AC",
            r#"request.time.getMonth("America/Los_Angeles") == 0"#,
            "a",
            "2027-02-01T07:00:00Z",
            true,
        ),
        (
            "AC",
            r#"request.time.getMonth("America/Los_Angeles") == 0"#,
            "a",
            "2027-02-01T09:00:00Z",
            false,
        ),
        (
            "AC",
            r#"request.time.getDate("America/Los_Angeles") == 1"#,
            "a",
            "2027-03-01T20:00:00Z",
            true,
        ),
        (
            "AC",
            r#"request.time.getDate("America/Los_Angeles") == 1"#,
            "a",
            "2027-03-01T05:00:00Z",
            false,
        ),
        (
            "AC",
            r#"request.time.getDayOfMonth("America/Los_Angeles") == 0"#,
            "a",
            "2027-03-01T20:00:00Z",
            true,
        ),
        (
            "AC",
            r#"request.time.getDayOfMonth("America/Los_Angeles") == 0"#,
            "a",
            "2027-03-02T20:00:00Z",
            false,
        ),
        // Monday 4 January 2027 at noon in Los Angeles; at 05:00 UTC it is still Sunday there.
        (
            "AC",
            r#"request.time.getDayOfWeek("America/Los_Angeles") == 1"#,
            "a",
            "2027-01-04T20:00:00Z",
            true,
        ),
        (
            "AC",
            r#"request.time.getDayOfWeek("America/Los_Angeles") == 1"#,
            "a",
            "2027-01-04T05:00:00Z",
            false,
        ),
        (
            "AC",
            r#"request.time.getDayOfYear("America/Los_Angeles") == 0"#,
            "a",
            "2027-01-01T20:00:00Z",
            true,
        ),
        (
            "AC",
            r#"request.time.getDayOfYear("America/Los_Angeles") == 364"#,
            "a",
            "2027-01-01T05:00:00Z",
            true,
        ),
        (
            "AC",
            r#"request.time.getHours("America/Los_Angeles") >= 9 && request.time.getHours("America/Los_Angeles") < 17"#,
            "a",
            "2027-01-04T17:00:00Z",
            true,
        ),
        (
            "AC",
            r#"request.time.getHours("America/Los_Angeles") >= 9 && request.time.getHours("America/Los_Angeles") < 17"#,
            "a",
            "2027-01-04T16:59:59Z",
            false,
        ),
        (
            "AC",
            r#"request.time.getMinutes("America/Los_Angeles") < 30"#,
            "a",
            "2027-01-04T17:29:00Z",
            true,
        ),
        (
            "AC",
            r#"request.time.getMinutes("America/Los_Angeles") < 30"#,
            "a",
            "2027-01-04T17:30:00Z",
            false,
        ),
        // "If you don't specify a timezone, the expression defaults to UTC"; fixed offsets.
        (
            "AC",
            "request.time.getHours() == 23",
            "a",
            "2027-01-04T23:10:00Z",
            true,
        ),
        (
            "AC",
            r#"request.time.getHours("UTC") == 23"#,
            "a",
            "2027-01-04T23:10:00Z",
            true,
        ),
        (
            "AC",
            r#"request.time.getHours("+05:30") == 4 && request.time.getMinutes("+05:30") == 40"#,
            "a",
            "2027-01-04T23:10:00Z",
            true,
        ),
        (
            "AC",
            r#"request.time.getDayOfWeek("-08:00") == 1"#,
            "a",
            "2027-01-05T07:59:59Z",
            true,
        ),
        (
            "AC",
            r#"request.time.getHours("CET") == 0"#,
            "a",
            "2027-01-04T23:10:00Z",
            true,
        ),
        (
            "AC",
            r#"request.time.getHours("US/Central") == 17"#,
            "a",
            "2027-01-04T23:10:00Z",
            true,
        ),
        (
            "HP",
            r#"request.host.endsWith(".google.com")"#,
            "sheets.google.com",
            "2027-01-04T12:00:00Z",
            true,
        ),
        (
            "HP",
            r#"request.host.endsWith(".google.com")"#,
            "notgoogle.com",
            "2027-01-04T12:00:00Z",
            false,
        ),
        (
            "HP",
            r#"request.host.endsWith("google.com")"#,
            "notgoogle.com",
            "2027-01-04T12:00:00Z",
            true,
        ),
        (
            "HP",
            r#"request.path.startsWith("/admin")"#,
            "a",
            "2027-01-04T12:00:00Z",
            true,
        ),
        (
            "AR",
            r#"request.time < timestamp("2020-07-01T00:00:00.000Z")"#,
            "a",
            "2020-06-30T23:59:59Z",
            true,
        ),
        (
            "AR",
            r#"request.time < timestamp("2020-07-01T00:00:00.000Z")"#,
            "a",
            "2020-07-01T00:00:00Z",
            false,
        ),
        (
            "AR",
            r#"request.time > timestamp("2020-07-01T00:00:00.000Z") && request.time < timestamp("2020-07-02T00:00:00.000Z")"#,
            "a",
            "2020-07-01T12:00:00Z",
            true,
        ),
        (
            "IS",
            r#"request.time.getHours("Europe/Berlin") >= 9"#,
            "a",
            "2027-01-04T08:00:00Z",
            true,
        ),
        (
            "IS",
            r#"request.time.getHours("Europe/Berlin") >= 9"#,
            "a",
            "2027-01-04T07:59:59Z",
            false,
        ),
        (
            "IS",
            r#"request.time.getDayOfWeek("America/New_York") < 5"#,
            "a",
            "2027-01-07T12:00:00Z",
            true,
        ),
        (
            "IS",
            r#"request.time.getDayOfWeek("America/New_York") < 5"#,
            "a",
            "2027-01-08T12:00:00Z",
            false,
        ),
    ];
    for (page, src, host, time, want) in cases {
        assert_eq!(
            holds_at(src, host, time, false),
            *want,
            "{page}: {src} at {time} on {host}"
        );
    }
    // AR, destination attributes (IAP TCP forwarding): on a TCP app's upstream only.
    for (src, tcp, want) in [
        ("destination.port == 22", true, true),
        (
            r#"destination.ip == "10.0.0.5" && destination.port == 22"#,
            true,
            true,
        ),
        (r#"destination.ip != "10.0.0.5""#, true, false),
        ("destination.port in [22, 2222]", true, true),
        ("destination.port == 22", false, false),
        ("destination.port != 22", false, false),
        ("!(destination.port == 22)", false, false),
    ] {
        assert_eq!(
            holds_at(src, "a", "2027-01-04T12:00:00Z", tcp),
            want,
            "{src} (tcp: {tcp})"
        );
    }
}

/// Daylight saving in two zones, on both sides of each change, and past the last transition the
/// database lists (where the zone's rule carries on).
#[test]
fn daylight_saving_is_the_zones_own() {
    let hour = |zone: &str, time: &str| -> i64 {
        let c = Condition::compile(&format!("request.time.getHours(\"{zone}\") == 0")).unwrap();
        let Node::Compare(_, field, _) = &c.root else {
            unreachable!()
        };
        let Node::TimeField(f, _, z) = &**field else {
            unreachable!()
        };
        z.field(*f, Nanos::from(at(time)) * NANOS_PER_SECOND)
            .unwrap()
    };
    // Berlin: 02:00 CET becomes 03:00 CEST on 28 March 2027, 03:00 CEST 02:00 CET on 31 October.
    assert_eq!(hour("Europe/Berlin", "2027-03-28T00:59:59Z"), 1);
    assert_eq!(hour("Europe/Berlin", "2027-03-28T01:00:00Z"), 3);
    assert_eq!(hour("Europe/Berlin", "2027-10-31T00:30:00Z"), 2);
    assert_eq!(hour("Europe/Berlin", "2027-10-31T01:30:00Z"), 2);
    assert_eq!(hour("Europe/Berlin", "2027-10-31T02:30:00Z"), 3);
    // New York: 02:00 EST becomes 03:00 EDT on 14 March 2027, 02:00 EDT 01:00 EST on 7 November.
    assert_eq!(hour("America/New_York", "2027-03-14T06:59:59Z"), 1);
    assert_eq!(hour("America/New_York", "2027-03-14T07:00:00Z"), 3);
    assert_eq!(hour("America/New_York", "2027-11-07T05:30:00Z"), 1);
    assert_eq!(hour("America/New_York", "2027-11-07T06:30:00Z"), 1);
    assert_eq!(hour("America/New_York", "2027-11-07T07:30:00Z"), 2);
    // Far ahead, by the zones' rules: summer and winter time in 2040.
    assert_eq!(hour("Europe/Berlin", "2040-07-01T12:00:00Z"), 14);
    assert_eq!(hour("Europe/Berlin", "2040-12-01T12:00:00Z"), 13);
    assert_eq!(hour("america/new_york", "2040-07-01T12:00:00Z"), 8);
    // An office-hours condition across Berlin's spring change: 09:00 local is 08:00 UTC the week
    // before and 07:00 UTC the day after.
    let office = r#"request.time.getHours("Europe/Berlin") >= 9 && request.time.getHours("Europe/Berlin") < 17"#;
    assert!(!holds_at(office, "a", "2027-03-26T07:30:00Z", false));
    assert!(holds_at(office, "a", "2027-03-29T07:30:00Z", false));
}

#[test]
fn durations_and_time_arithmetic() {
    let t = "2027-01-04T12:00:00Z";
    for (src, want) in [
        (r#"duration("1h30m") == duration("90m")"#, true),
        (r#"duration("1.5h") == duration("5400s")"#, true),
        (r#"duration("300ms") < duration("1s")"#, true),
        (r#"duration("-1h") < duration("0")"#, true),
        (
            r#"duration("1us") == duration("1000ns") && duration("1µs") == duration("1us")"#,
            true,
        ),
        (
            r#"request.time - timestamp("2027-01-04T00:00:00Z") == duration("12h")"#,
            true,
        ),
        (
            r#"(request.time - timestamp("2027-01-04T00:00:00Z")).getHours() == 12"#,
            true,
        ),
        (
            r#"(request.time - timestamp("2027-01-04T00:00:00Z")).getMinutes() == 720"#,
            true,
        ),
        (r#"duration("-90m").getHours() == -1"#, true),
        (
            r#"timestamp("2027-01-01T00:00:00Z") + duration("72h") < request.time"#,
            true,
        ),
        (
            r#"duration("72h") + timestamp("2027-01-01T00:00:00Z") < request.time"#,
            true,
        ),
        (
            r#"request.time - duration("1h") > timestamp("2027-01-04T10:59:59Z")"#,
            true,
        ),
        (r#"request.time + duration("1s") > request.time"#, true),
        (
            r#"timestamp("2027-01-01T00:00:00.5Z") > timestamp("2027-01-01T00:00:00Z")"#,
            true,
        ),
        (
            r#"timestamp("2027-01-01T01:00:00+01:00") == timestamp("2027-01-01T00:00:00Z")"#,
            true,
        ),
        ("1 + 2 == 3 && 5 - 7 == -2", true),
        (r#""/re" + "ports" == "/reports""#, true),
        (r#"request.time.getMilliseconds() == 0"#, true),
    ] {
        assert_eq!(holds_at(src, "a", t, false), want, "{src}");
    }
    // The expiry finder reads a folded `timestamp + duration` bound.
    let c =
        Condition::compile(r#"request.time < timestamp("2027-01-01T00:00:00Z") + duration("24h")"#)
            .unwrap();
    assert_eq!(c.expiry(), Some(at("2027-01-02T00:00:00Z")));
    // Out of range at run time is an error, so the condition does not hold (either way round).
    let far = Condition::compile(r#"request.time + duration("87600000h") > request.time"#).unwrap();
    let late = Context {
        path: "/",
        host: "a",
        method: "GET",
        time: at("9990-01-01T00:00:00Z"),
        ip: None,
        destination: None,
        auth: None,
        access_levels: &[],
    };
    assert!(!far.eval(&late));
    let negated =
        Condition::compile(r#"!(request.time + duration("87600000h") > request.time)"#).unwrap();
    assert!(!negated.eval(&late));
}

#[test]
fn time_errors_say_what_to_write() {
    let cases: &[(&str, usize, &str)] = &[
        (
            r#"request.time.getHours("Europe/Berln") > 9"#,
            23,
            "did you mean \"Europe/Berlin\"",
        ),
        (
            r#"request.time.getHours("Mars/Olympus") > 9"#,
            23,
            "unknown time zone `Mars/Olympus`",
        ),
        (
            r#"request.time.getHours("+25:00") > 9"#,
            23,
            "unknown time zone",
        ),
        (
            "request.time.getHours(request.path) > 9",
            23,
            "takes a string literal",
        ),
        ("request.path.getHours() > 9", 14, "needs a timestamp"),
        (
            r#"duration("1h").getDayOfWeek() > 1"#,
            16,
            "a duration has getHours",
        ),
        (r#"duration("5d") > duration("1h")"#, 10, "not a duration"),
        (
            r#"duration("1h") > 5"#,
            18,
            "cannot compare a duration with a int",
        ),
        (
            r#"request.time + 5 > request.time"#,
            16,
            "cannot add a int to a timestamp",
        ),
        (
            r#"request.time + request.time > request.time"#,
            16,
            "cannot add a timestamp to a timestamp",
        ),
        (
            r#"timestamp("9999-12-31T00:00:00Z") + duration("48h") > request.time"#,
            1,
            "out of range",
        ),
        (
            r#"timestamp("10000-01-01T00:00:00Z") > request.time"#,
            11,
            "not a timestamp",
        ),
        (
            "request.method in [1, \"GET\"]",
            23,
            "strings or ints, not both",
        ),
        ("request.method in [22]", 1, "this is a string"),
        (
            r#"resource.name == "projects/p/iap_web/compute/services/dash""#,
            10,
            "bind on that app instead",
        ),
        (
            r#"request.time.between("09:00:00", "17:00:00")"#,
            14,
            "unknown method `between`",
        ),
    ];
    for (src, column, needle) in cases {
        let e = Condition::compile(src).expect_err(src);
        assert!(e.message.contains(needle), "{src}: {e}");
        assert_eq!(e.column, *column, "{src}: {e}");
    }
}
