use super::*;
use crate::clock::parse_rfc3339;

fn cx<'a>(path: &'a str, method: &'a str, ip: &str, time: i64) -> Context<'a> {
    Context {
        path,
        host: "apps.example.com",
        method,
        time,
        ip: ip.parse().ok(),
        destination: None,
        auth: None,
        access_levels: &[],
    }
}

fn at(rfc3339: &str) -> i64 {
    parse_rfc3339(rfc3339).unwrap_or_else(|| panic!("{rfc3339}"))
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let deep = format!("1 > {}1{}", "(".repeat(2000), ")".repeat(2000));
    let e = Condition::compile(&deep).unwrap_err();
    assert!(e.message.contains("nests more than 64"), "{e}");
    let nots = format!("{}true", "!".repeat(3000));
    assert!(Condition::compile(&nots).is_err());
    let ok = format!("{}true{}", "(".repeat(60), ")".repeat(60));
    assert!(Condition::compile(&ok).is_ok());
}

#[test]
fn evaluation_table() {
    let t2026 = parse_rfc3339("2026-06-01T00:00:00Z").unwrap();
    let t2028 = parse_rfc3339("2028-06-01T00:00:00Z").unwrap();
    let cases: &[(&str, &str, &str, &str, i64, bool)] = &[
        (
            "request.path.startsWith(\"/reports\")",
            "/reports/q",
            "GET",
            "10.0.0.1",
            t2026,
            true,
        ),
        (
            "request.path.startsWith(\"/reports\")",
            "/admin",
            "GET",
            "10.0.0.1",
            t2026,
            false,
        ),
        (
            "request.path.endsWith('.csv')",
            "/a.csv",
            "GET",
            "10.0.0.1",
            t2026,
            true,
        ),
        (
            "request.path.contains(\"/q/\")",
            "/a/q/b",
            "GET",
            "10.0.0.1",
            t2026,
            true,
        ),
        (
            "request.host == \"apps.example.com\"",
            "/",
            "GET",
            "10.0.0.1",
            t2026,
            true,
        ),
        (
            "request.host != \"apps.example.com\"",
            "/",
            "GET",
            "10.0.0.1",
            t2026,
            false,
        ),
        (
            "request.method in [\"GET\", \"HEAD\"]",
            "/",
            "HEAD",
            "10.0.0.1",
            t2026,
            true,
        ),
        (
            "request.method in [\"GET\", \"HEAD\"]",
            "/",
            "POST",
            "10.0.0.1",
            t2026,
            false,
        ),
        (
            "request.time < timestamp(\"2027-01-01T00:00:00Z\")",
            "/",
            "GET",
            "10.0.0.1",
            t2026,
            true,
        ),
        (
            "request.time < timestamp(\"2027-01-01T00:00:00Z\")",
            "/",
            "GET",
            "10.0.0.1",
            t2028,
            false,
        ),
        (
            "inIpRange(origin.ip, \"10.0.0.0/8\")",
            "/",
            "GET",
            "10.9.9.9",
            t2026,
            true,
        ),
        (
            "inIpRange(origin.ip, \"10.0.0.0/8\")",
            "/",
            "GET",
            "192.0.2.1",
            t2026,
            false,
        ),
        (
            "inIpRange(origin.ip, \"10.0.0.0/8\")",
            "/",
            "GET",
            "none",
            t2026,
            false,
        ),
        (
            "!inIpRange(origin.ip, \"10.0.0.0/8\")",
            "/",
            "GET",
            "192.0.2.1",
            t2026,
            true,
        ),
        (
            "(request.path.startsWith(\"/a\") || request.path.startsWith(\"/b\")) && request.method == \"GET\"",
            "/b/x",
            "GET",
            "10.0.0.1",
            t2026,
            true,
        ),
        (
            "request.path.startsWith(\"/a\") || request.path.startsWith(\"/b\") && false",
            "/a",
            "GET",
            "1.1.1.1",
            t2026,
            true,
        ),
        ("true && !false", "/", "GET", "1.1.1.1", t2026, true),
        ("1 < 2", "/", "GET", "1.1.1.1", t2026, true),
    ];
    for (src, path, method, ip, time, want) in cases {
        let c = Condition::compile(src).unwrap_or_else(|e| panic!("{src}: {}", e.pointed(src)));
        assert_eq!(
            c.eval(&cx(path, method, ip, *time)),
            *want,
            "{src} on {path} {method} {ip}"
        );
    }
}

#[test]
fn matches_searches_with_re2_syntax_unless_anchored() {
    let at = |src: &str, path: &str| {
        Condition::compile(src)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .eval(&cx(path, "GET", "10.0.0.1", 0))
    };
    // The issue's example, and Google's documented form with a raw string.
    let reports = "request.path.matches(\"^/reports/[0-9]+$\")";
    assert!(at(reports, "/reports/12"));
    assert!(!at(reports, "/reports/12/x"));
    assert!(!at(reports, "/reports/"));
    assert!(at(
        r#"request.path.matches(r"^/reports/\d+$")"#,
        "/reports/7"
    ));
    assert!(at(
        r#"request.path.matches("^/reports/\\d+$")"#,
        "/reports/7"
    ));
    // Unanchored, as CEL's matches(): a match anywhere counts.
    assert!(at("request.path.matches(\"csv\")", "/export/a.csv"));
    assert!(!at("request.path.matches(\"^csv\")", "/export/a.csv"));
    // RE2's Unicode classes and case-insensitive flag.
    assert!(at(r#"request.path.matches(r"^/\p{L}+$")"#, "/Zürich"));
    assert!(at(r#"request.host.matches(r"(?i)^APPS\.")"#, "/"));
    assert!(!at("!request.path.matches(\"csv\")", "/a.csv"));
}

#[test]
fn compile_errors_point_at_the_problem() {
    let cases: &[(&str, usize, &str)] = &[
        ("request.path.startsWith(\"/a\"", 29, "expected `)`"),
        ("request.pth == \"/\"", 9, "unknown attribute `request.pth`"),
        ("request.path", 1, "must be true or false"),
        (
            "request.path == 1",
            17,
            "cannot compare a string with a int",
        ),
        ("request.time < \"2027\"", 16, "cannot compare"),
        ("timestamp(\"tomorrow\")", 11, "not a timestamp"),
        ("inIpRange(origin.ip, \"10.0.0.0/99\")", 22, "not a network"),
        (
            "request.path.matches(\"(\")",
            22,
            "not a regular expression",
        ),
        (
            "request.path.matches(r\"(a)\\1\")",
            22,
            "no look-around or back-references",
        ),
        (
            "request.path.matches(request.host)",
            22,
            "takes a string literal",
        ),
        ("request.time.matches(\"x\")", 14, "string"),
        (
            "request.path.matches(\"(a{1000}){1000}\")",
            22,
            "too large to run safely",
        ),
        (
            "request.auth.access_levels == \"corp\"",
            31,
            "cannot compare a list of strings with a string",
        ),
        (
            "request.path.matchez(\"x\")",
            14,
            "unknown method `matchez`",
        ),
        ("request.path == \"/\" &&", 23, "ends too early"),
        (
            "request.path == \"/\" ; true",
            21,
            "unexpected character `;`",
        ),
        ("request.path == \"/", 17, "not closed"),
        ("foo()", 1, "unknown name `foo`"),
        ("request.method in \"GET\"", 19, "needs a list"),
        ("origin.ip == origin.ip", 1, "cannot be compared"),
        ("true true", 6, "unexpected `true`"),
    ];
    for (src, column, needle) in cases {
        let e = Condition::compile(src).expect_err(src);
        assert!(e.message.contains(needle), "{src}: {e}");
        assert_eq!(e.column, *column, "{src}: {e}");
    }
    let e = Condition::compile("request.pth == \"/\"").unwrap_err();
    assert_eq!(
        e.pointed("request.pth == \"/\""),
        "request.pth == \"/\"\n        ^ unknown attribute `request.pth`: use request.path, request.host, request.method, request.time, origin.ip, destination.ip, destination.port or request.auth (provider, groups, amr, acr, claims)"
    );
}

#[test]
fn expiry_is_found_in_top_level_conjunctions() {
    let t = parse_rfc3339("2027-01-01T00:00:00Z").unwrap();
    let c = Condition::compile(
        "request.path.startsWith(\"/r\") && request.time < timestamp(\"2027-01-01T00:00:00Z\")",
    )
    .unwrap();
    assert_eq!(c.expiry(), Some(t));
    assert_eq!(
        Condition::compile("request.method == \"GET\"")
            .unwrap()
            .expiry(),
        None
    );
}

#[test]
fn what_cannot_be_evaluated_never_grants() {
    // No client address: the condition is an error, negated or not (it used to be `!false`).
    let none = cx("/", "GET", "none", 0);
    for (src, want) in [
        (r#"inIpRange(origin.ip, "10.0.0.0/8")"#, false),
        (r#"!inIpRange(origin.ip, "10.0.0.0/8")"#, false),
        (r#"!inIpRange(origin.ip, "10.0.0.0/8") && true"#, false),
        (r#"inIpRange(origin.ip, "10.0.0.0/8") || true"#, true),
        (r#"true || inIpRange(origin.ip, "10.0.0.0/8")"#, true),
        (r#"inIpRange(origin.ip, "10.0.0.0/8") && false"#, false),
        (r#"!(inIpRange(origin.ip, "10.0.0.0/8") && false)"#, true),
        (r#"!(inIpRange(origin.ip, "10.0.0.0/8") || false)"#, false),
    ] {
        let c = Condition::compile(src).unwrap();
        assert_eq!(c.eval(&none), want, "{src}");
    }
}

/// The parser never panics, whatever it is given: 20,000 expressions glued from the grammar's
/// pieces (deterministic, so a failure repeats), compiled and, when they compile, evaluated for a
/// web app and a TCP app. The `condition` fuzz target explores the same property with coverage.
#[test]
fn the_parser_never_panics() {
    const PIECES: &[&str] = &[
        "request.path",
        "request.host",
        "request.method",
        "request.time",
        "origin.ip",
        "destination.ip",
        "destination.port",
        "request.auth",
        "request.auth.claims.dept",
        "request.auth.claims[",
        "request.auth.groups",
        "request.auth.amr",
        "request.auth.acr",
        "request.auth.provider",
        "has(",
        "resource.name",
        "timestamp(",
        "duration(",
        "inIpRange(",
        ".getHours(",
        ".getDayOfWeek(",
        ".matches(",
        ".startsWith(",
        "\"Europe/Berlin\"",
        "\"+05:30\"",
        "\"1h\"",
        "\"2027-01-01T00:00:00Z\"",
        "\"10.0.0.0/8\"",
        "\"^/a[0-9]+$\"",
        "r\"\\d\"",
        "\"",
        "'",
        "(",
        ")",
        "[",
        "]",
        ",",
        ".",
        "!",
        "-",
        "+",
        "&&",
        "||",
        "==",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        " in ",
        "0",
        "22",
        "-1",
        "9223372036854775807",
        "true",
        "false",
        "x",
        " ",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let web = cx("/a1", "GET", "10.0.0.1", at("2027-01-04T12:00:00Z"));
    let claims: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_value(serde_json::json!({"dept": ["a", 1, true]})).unwrap();
    let amr = vec!["pwd".to_string()];
    let mut web = web;
    web.auth = Some(Auth {
        provider: "corp",
        groups: [&amr, &[]],
        amr: &amr,
        acr: None,
        claims: &claims,
    });
    let mut tcp = web.clone();
    tcp.destination = Some(Destination {
        host: "10.0.0.5",
        port: 22,
    });
    let mut compiled = 0;
    for _ in 0..20_000 {
        let len = 1 + next() % 12;
        let src: String = (0..len)
            .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
            .collect();
        match Condition::compile(&src) {
            Ok(c) => {
                compiled += 1;
                let _ = (c.eval(&web), c.eval(&tcp), c.expiry());
            }
            Err(e) => assert!(
                e.column >= 1 && e.column <= src.chars().count() + 1,
                "{src}: {e}"
            ),
        }
    }
    assert!(
        compiled > 0,
        "the generator should produce some valid conditions"
    );
}

#[test]
fn request_auth_sees_provider_groups_sign_in_and_claims() {
    let claims: std::collections::BTreeMap<String, serde_json::Value> = serde_json::from_value(
        serde_json::json!({"department": "eng", "level": 3, "contractor": false,
                           "teams": ["data", "infra"], "https://example.com/roles": ["admin"]}),
    )
    .unwrap();
    let (provider_groups, castellan_groups) =
        (vec!["staff".to_string()], vec!["oncall".to_string()]);
    let amr = vec!["pwd".to_string(), "otp".to_string()];
    let mut c = cx("/", "GET", "10.0.0.1", 0);
    c.auth = Some(Auth {
        provider: "corp",
        groups: [&provider_groups, &castellan_groups],
        amr: &amr,
        acr: Some("urn:example:mfa"),
        claims: &claims,
    });
    let anonymous = cx("/", "GET", "10.0.0.1", 0);
    let service = {
        let mut s = cx("/", "GET", "10.0.0.1", 0);
        s.auth = Some(Auth::service_account());
        s
    };
    for (src, person, sa, anon) in [
        (r#"request.auth.provider == "corp""#, true, false, false),
        (
            r#"request.auth.provider == "serviceAccount""#,
            false,
            true,
            false,
        ),
        (
            r#""staff" in request.auth.groups && "oncall" in request.auth.groups"#,
            true,
            false,
            false,
        ),
        (r#""admins" in request.auth.groups"#, false, false, false),
        (r#""otp" in request.auth.amr"#, true, false, false),
        (
            r#"request.auth.acr == "urn:example:mfa""#,
            true,
            false,
            false,
        ),
        (
            r#"request.auth.claims.department == "eng""#,
            true,
            false,
            false,
        ),
        (
            r#"request.auth.claims.level >= 3 && request.auth.claims.contractor == false"#,
            true,
            false,
            false,
        ),
        (
            r#"request.auth.claims.department in ["eng", "ops"]"#,
            true,
            false,
            false,
        ),
        (
            r#""infra" in request.auth.claims.teams"#,
            true,
            false,
            false,
        ),
        (
            r#""admin" in request.auth.claims["https://example.com/roles"]"#,
            true,
            false,
            false,
        ),
        (
            r#"request.auth.claims.department.startsWith("en")"#,
            true,
            false,
            false,
        ),
        (r#"has(request.auth.claims.department)"#, true, false, false),
        (
            r#"!has(request.auth.claims.cost_centre)"#,
            true,
            true,
            false,
        ),
        // Absent claims: the comparison is false, whichever way it is written.
        (
            r#"request.auth.claims.cost_centre == "x""#,
            false,
            false,
            false,
        ),
        (
            r#"request.auth.claims.cost_centre != "x""#,
            false,
            false,
            false,
        ),
        (
            r#""x" in request.auth.claims.cost_centre"#,
            false,
            false,
            false,
        ),
        // A claim of another type than the literal is an error: never a grant, negated or not.
        (r#"request.auth.claims.level == "3""#, false, false, false),
        (r#"!(request.auth.claims.level == "3")"#, false, true, false),
    ] {
        let cond = Condition::compile(src).unwrap_or_else(|e| panic!("{}", e.pointed(src)));
        assert_eq!(cond.eval(&c), person, "{src} (person)");
        assert_eq!(cond.eval(&service), sa, "{src} (service account)");
        assert_eq!(cond.eval(&anonymous), anon, "{src} (anonymous)");
    }
    for (src, needle) in [
        ("request.auth.claims == 1", "name the claim"),
        (
            "request.auth.email == \"a\"",
            "unknown attribute `request.auth.email`",
        ),
        ("has(request.path)", "has() takes a claim"),
        ("1 in request.auth.groups", "looks for a string"),
        (
            "request.auth.groups == \"x\"",
            "cannot compare a list of strings",
        ),
    ] {
        let e = Condition::compile(src).expect_err(src);
        assert!(e.message.contains(needle), "{src}: {e}");
    }
}

#[test]
fn access_levels_are_the_requests_whoever_asks() {
    let named = r#""accessPolicies/1/accessLevels/corp" in request.auth.access_levels"#;
    let c = Condition::compile(&format!("{named} || request.path == \"/open\"")).unwrap();
    assert_eq!(
        c.access_levels_named(),
        ["accessPolicies/1/accessLevels/corp"]
    );
    let met = ["accessPolicies/1/accessLevels/corp"];
    let mut with = cx("/", "GET", "10.0.0.1", 0);
    with.access_levels = &met;
    let without = cx("/", "GET", "10.0.0.1", 0);
    assert!(c.eval(&with));
    assert!(!c.eval(&without));
    // An anonymous caller of a public app is decided on its request's levels too.
    assert!(with.auth.is_none());
    // Negated, a level the request lacks is simply absent: no error, the negation holds.
    let not = Condition::compile(&format!("!({named})")).unwrap();
    assert!(not.eval(&without) && !not.eval(&with));
}
