//! The decision function on large policies: `cargo bench --bench decision`.
//!
//! One app policy of N bindings, each naming one user with a path condition (the worst realistic
//! shape: every binding conditional), plus 1,000 castellan groups. Decisions look up the caller's
//! bindings through the member index, so the cost should stay flat as N grows. A second group
//! decides through a condition as Google writes one for office hours (time zone, day of week, a
//! regular expression): the price of IAM-condition compatibility on the hot path.

use std::hint::black_box;

use castellan::policy::condition::Context;
use castellan::policy::snapshot::{Resource, Snapshot, Who};
use castellan::policy::{BindingCondition, Member, Policy, Role};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const PATH_CONDITION: &str = "request.path.startsWith(\"/reports/{i}\") && request.time < timestamp(\"2099-01-01T00:00:00Z\")";
const OFFICE_HOURS: &str = "request.time.getHours(\"Europe/Berlin\") >= 9 && request.time.getHours(\"Europe/Berlin\") < 17 && request.time.getDayOfWeek(\"Europe/Berlin\") in [1, 2, 3, 4, 5] && request.path.matches(r\"^/reports/{i}/[a-z]+$\")";

fn snapshot(bindings: usize, condition: &str) -> Snapshot {
    let mut p = Policy::default();
    for i in 0..bindings {
        let cond = BindingCondition::new(
            &format!("reports-{i}"),
            "",
            &condition.replace("{i}", &i.to_string()),
        )
        .unwrap();
        p.add(
            Role::Accessor,
            Member::parse(&format!("user:user{i}@example.com")).unwrap(),
            Some(cond),
        );
    }
    p.add(
        Role::Accessor,
        Member::parse("domain:partner.org").unwrap(),
        None,
    );
    let memberships = (0..1000)
        .map(|g| (format!("group{g}"), format!("user{g}@example.com")))
        .collect();
    Snapshot::new(vec![(Resource::App("demo".into()), p)], memberships)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decide");
    for n in [10usize, 1_000, 10_000] {
        let s = snapshot(n, PATH_CONDITION);
        let target = n / 2;
        let email = format!("user{target}@example.com");
        let path = format!("/reports/{target}/q");
        let cx = Context {
            path: &path,
            host: "apps.example.com",
            method: "GET",
            // Friday 15 January 2027, 09:00 in Berlin.
            time: 1_800_000_000,
            ip: "10.0.0.1".parse().ok(),
            destination: None,
            auth: None,
            access_levels: &[],
        };
        let groups: Vec<String> = vec!["eng".into()];
        assert!(
            s.decide(
                "demo",
                Role::Accessor,
                Who::User {
                    email: &email,
                    groups: &groups,
                    domain: Some("example.com"),
                },
                &cx
            )
            .allowed()
        );
        g.bench_with_input(
            BenchmarkId::new("allowed-by-conditional-binding", n),
            &n,
            |b, _| {
                b.iter(|| {
                    s.decide(
                        "demo",
                        Role::Accessor,
                        black_box(Who::User {
                            email: &email,
                            groups: &groups,
                            domain: Some("example.com"),
                        }),
                        black_box(&cx),
                    )
                })
            },
        );
        let stranger = Who::User {
            email: "nobody@example.com",
            groups: &groups,
            domain: Some("example.com"),
        };
        assert!(!s.decide("demo", Role::Accessor, stranger, &cx).allowed());
        g.bench_with_input(BenchmarkId::new("denied-no-binding", n), &n, |b, _| {
            b.iter(|| s.decide("demo", Role::Accessor, black_box(stranger), black_box(&cx)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("decide-office-hours");
    let n = 1_000;
    let s = snapshot(n, OFFICE_HOURS);
    let email = format!("user{}@example.com", n / 2);
    let path = format!("/reports/{}/q", n / 2);
    let groups: Vec<String> = vec!["eng".into()];
    let who = Who::User {
        email: &email,
        groups: &groups,
        domain: Some("example.com"),
    };
    let cx = |time| Context {
        path: &path,
        host: "apps.example.com",
        method: "GET",
        time,
        ip: "10.0.0.1".parse().ok(),
        destination: None,
        auth: None,
        access_levels: &[],
    };
    let (inside, outside) = (cx(1_800_000_000), cx(1_800_000_000 - 3600));
    assert!(s.decide("demo", Role::Accessor, who, &inside).allowed());
    assert!(!s.decide("demo", Role::Accessor, who, &outside).allowed());
    g.bench_function(BenchmarkId::new("allowed-at-09:00-berlin", n), |b| {
        b.iter(|| s.decide("demo", Role::Accessor, black_box(who), black_box(&inside)))
    });
    g.bench_function(BenchmarkId::new("denied-at-08:00-berlin", n), |b| {
        b.iter(|| s.decide("demo", Role::Accessor, black_box(who), black_box(&outside)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
