use super::*;
use crate::config::Config;

fn apps() -> Config {
    Config::parse(
        "[[apps]]\nid = \"web\"\nhost = \"a.example.com\"\nupstream = \"http://127.0.0.1:1\"\n\
         [[apps]]\nid = \"ssh\"\nhost = \"b.example.com\"\nupstream = \"tcp://10.0.0.5:22\"\n",
        std::path::Path::new("/etc/castellan"),
        &crate::config::NoEnv,
    )
    .unwrap()
}

/// A web app's policy as gcloud prints it, mixing what castellan takes as is, what it renames and
/// what it must refuse.
const MIXED: &str = r#"bindings:
- condition:
    description: Access for the Q1 audit
    expression: request.time < timestamp("2027-01-01T00:00:00Z")
    title: expires-2027
  members:
  - user:alice@example.com
  - group:analysts@example.com
  role: roles/iap.httpsResourceAccessor
- members:
  - user:owner@example.com
  role: roles/owner
- members:
  - deleted:user:gone@example.com?uid=123
  - domain:example.com
  role: roles/iap.httpsResourceAccessor
- condition:
    expression: '"accessPolicies/1/accessLevels/corp" in request.auth.access_levels'
    title: corp-devices
  members:
  - group:staff@example.com
  role: roles/iap.httpsResourceAccessor
- condition:
    expression: request.time.getHours("Europe/Berlin") >= 9 && request.time.getDayOfWeek("Europe/Berlin") in [1, 2, 3, 4, 5]
    title: office-hours
  members:
  - group:contractors@example.com
  role: roles/accessor
- members:
  - user:ops@example.com
  role: roles/iap.tunnelResourceAccessor
etag: BwYHZEDo6aM=
version: 3
"#;

#[test]
fn every_binding_is_reported_as_is_translated_or_refused() {
    let config = apps();
    let web = config.app("web").unwrap();
    let import = import(MIXED, web, &[]).unwrap();
    let lines: Vec<String> = import.report.iter().map(ToString::to_string).collect();
    let verdicts: Vec<(&str, &Verdict)> = import
        .report
        .iter()
        .map(|e| (e.place.as_str(), &e.verdict))
        .collect();
    assert_eq!(verdicts.len(), 7, "{lines:#?}");
    assert!(
        matches!(verdicts[0], ("bindings[0]", Verdict::Translated(_))),
        "{lines:#?}"
    );
    assert!(lines[0].contains("roles/iap.httpsResourceAccessor is roles/accessor in castellan"));
    assert!(lines[0].contains("if \"expires-2027\""));
    assert!(matches!(verdicts[1], ("bindings[1]", Verdict::Refused(_))));
    assert!(lines[1].contains("roles/owner") && lines[1].contains("user:owner@example.com"));
    assert!(matches!(
        verdicts[2],
        ("bindings[2].members[0]", Verdict::Refused(_))
    ));
    assert!(lines[2].contains("deleted Google account"));
    assert!(matches!(
        verdicts[3],
        ("bindings[2]", Verdict::Translated(_))
    ));
    assert!(lines[3].contains("domain:example.com") && !lines[3].contains("gone"));
    assert!(matches!(verdicts[4], ("bindings[3]", Verdict::Refused(_))));
    assert!(
        lines[4].contains("`accessPolicies/1/accessLevels/corp`")
            && lines[4].contains("[[access_levels]]"),
        "{}",
        lines[4]
    );
    assert_eq!(verdicts[5], ("bindings[4]", &Verdict::AsIs));
    assert!(matches!(verdicts[6], ("bindings[5]", Verdict::Refused(_))));
    assert!(lines[6].contains("web app"), "{}", lines[6]);
    assert_eq!(import.refused(), 4);
    // What was imported is exactly the three bindings that could be.
    let p = &import.policy;
    assert_eq!(p.bindings.len(), 3);
    assert!(p.bindings.iter().all(|b| b.role == Role::Accessor));
    assert_eq!(
        p.bindings[0].condition.as_ref().unwrap().title,
        "expires-2027"
    );
    assert_eq!(
        p.bindings[1].members,
        vec![Member::parse("domain:example.com").unwrap()]
    );
    assert_eq!(
        p.bindings[2].condition.as_ref().unwrap().title,
        "office-hours"
    );
}

#[test]
fn tunnel_policies_and_json() {
    let config = apps();
    let json = serde_json::json!({
        "bindings": [
            {"role": "roles/iap.tunnelResourceAccessor", "members": ["user:ops@example.com"],
             "condition": {"title": "ssh", "expression": "destination.port == 22 && destination.ip == \"10.0.0.5\""}},
            {"role": "roles/iap.admin", "members": ["user:root@example.com"]},
            {"role": "roles/iap.httpsResourceAccessor", "members": ["user:a@example.com"]}
        ],
        "etag": "x", "version": 3
    })
    .to_string();
    let import = import(&json, config.app("ssh").unwrap(), &[]).unwrap();
    assert_eq!(import.refused(), 1, "{:#?}", import.report);
    assert_eq!(import.policy.bindings.len(), 2);
    assert_eq!(import.policy.bindings[0].role, Role::TunnelAccessor);
    assert_eq!(import.policy.bindings[1].role, Role::Admin);
    // The same destination condition on a web app would grant nothing: refused.
    let web = import_one_condition(&config, "web", "destination.port == 22");
    assert!(
        matches!(web, Verdict::Refused(ref why) if why.contains("only TCP apps")),
        "{web:?}"
    );
    assert!(serde_json::from_str::<serde_json::Value>("{").is_err());
    assert!(super::import("{", config.app("web").unwrap(), &[]).is_err());
}

fn import_one_condition(config: &Config, app: &str, expression: &str) -> Verdict {
    let json = serde_json::json!({"bindings": [{"role": "roles/iap.httpsResourceAccessor",
        "members": ["user:a@example.com"], "condition": {"title": "t", "expression": expression}}]})
    .to_string();
    import(&json, config.app(app).unwrap(), &[])
        .unwrap()
        .report
        .remove(0)
        .verdict
}

#[test]
fn a_condition_on_a_configured_access_level_is_imported_as_is() {
    let config = apps();
    let level = crate::policy::access_level::AccessLevel {
        name: "accessPolicies/1/accessLevels/corp".into(),
        ip_ranges: vec![crate::net::IpNet::parse("10.0.0.0/8").unwrap()],
        client_certificate: false,
        window: None,
    };
    let import = import(MIXED, config.app("web").unwrap(), &[level]).unwrap();
    let verdicts: Vec<_> = import
        .report
        .iter()
        .map(|e| (e.place.as_str(), &e.verdict))
        .collect();
    assert!(
        matches!(verdicts[4], ("bindings[3]", Verdict::Translated(_))),
        "{verdicts:?}"
    );
}
