//! The decision function on large policies: `cargo bench --bench decision`.
//!
//! One app policy of N bindings, each naming one user with a path condition (the worst realistic
//! shape: every binding conditional), plus 1,000 castellan groups. Decisions look up the caller's
//! bindings through the member index, so the cost should stay flat as N grows.

use std::hint::black_box;

use castellan::policy::condition::Context;
use castellan::policy::snapshot::{Resource, Snapshot, Who};
use castellan::policy::{BindingCondition, Member, Policy, Role};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn snapshot(bindings: usize) -> Snapshot {
    let mut p = Policy::default();
    for i in 0..bindings {
        let cond = BindingCondition::new(
            &format!("reports-{i}"),
            "",
            &format!("request.path.startsWith(\"/reports/{i}\") && request.time < timestamp(\"2099-01-01T00:00:00Z\")"),
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
        let s = snapshot(n);
        let target = n / 2;
        let email = format!("user{target}@example.com");
        let path = format!("/reports/{target}/q");
        let cx = Context {
            path: &path,
            host: "apps.example.com",
            method: "GET",
            time: 1_800_000_000,
            ip: "10.0.0.1".parse().ok(),
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
