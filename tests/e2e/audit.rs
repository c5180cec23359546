//! The audit trail read back by person: the server copies new records to the trail's index by
//! person every second, many at a time, and `castellan audit --user` finds a person's records before
//! that (from the trail itself) and after (from the index), the same either way.

use std::time::{Duration, Instant};

use crate::support::*;

const PASSWORD: &str = "correct horse battery staple";

/// The paths of `email`'s decisions, as `castellan audit --user EMAIL --json` prints them.
fn decided_paths(c: &Castellan, email: &str) -> Vec<String> {
    let out = c.cli(&["audit", "--user", email, "--decision", "allowed", "--json"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// `SELECT COUNT(*)` of `sql` (one `?`: the person) in the instance's SQLite store.
async fn count(c: &Castellan, sql: &str, email: &str) -> i64 {
    use sqlx::Connection;
    let db = c.config_path.parent().unwrap().join("castellan.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(email)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_s_records_are_found_before_and_after_the_server_indexes_them() {
    let echo = Echo::start().await;
    let metrics_port = free_port();
    let top = format!("metrics_listen = \"127.0.0.1:{metrics_port}\"");
    let mut setup = Setup::new(echo.addr);
    setup.top = &top;
    let c = Castellan::start(setup).await;
    for who in ["erin@example.com", "fay@example.com"] {
        c.add_user(who, PASSWORD);
        c.grant("demo", &format!("user:{who}"));
    }
    let mut erin = Browser::new();
    assert_eq!(
        erin.sign_in_local(&c, "erin@example.com", PASSWORD, "/")
            .await
            .status,
        302
    );
    let mut fay = Browser::new();
    assert_eq!(
        fay.sign_in_local(&c, "fay@example.com", PASSWORD, "/")
            .await
            .status,
        302
    );
    for i in 0..3 {
        assert_eq!(erin.get(&c.url(&format!("/erin/{i}"))).await.status, 200);
        assert_eq!(fay.get(&c.url(&format!("/fay/{i}"))).await.status, 200);
    }
    let wanted = ["/erin/0", "/erin/1", "/erin/2"];
    let mut before = decided_paths(&c, "erin@example.com");
    let waited = Instant::now();
    while before.len() < wanted.len() && waited.elapsed() < Duration::from_secs(5) {
        // The audit writer lets records gather for 50 ms before it writes them.
        tokio::time::sleep(Duration::from_millis(100)).await;
        before = decided_paths(&c, "erin@example.com");
    }
    assert_eq!(
        before, wanted,
        "found in the trail itself, before any indexing"
    );

    // Once the records have settled (2 s) the server's next round (every second) indexes them all.
    let trail = "SELECT COUNT(*) FROM audit WHERE actor = ?";
    let indexed = "SELECT COUNT(*) FROM audit_actors WHERE actor = ?";
    let all = count(&c, trail, "erin@example.com").await;
    assert!(all > 3, "erin signed in and was let in three times: {all}");
    let started = Instant::now();
    while count(&c, indexed, "erin@example.com").await < all {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the server did not index erin's {all} records in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("indexed after {:?}", started.elapsed());
    assert_eq!(
        decided_paths(&c, "erin@example.com"),
        wanted,
        "the same, from the index"
    );
    assert_eq!(
        decided_paths(&c, "fay@example.com"),
        ["/fay/0", "/fay/1", "/fay/2"]
    );
    // Nothing was written since: the gauge says nothing waits to be indexed.
    let metrics = scrape(metrics_port).await;
    assert!(metrics.contains("castellan_audit_unindexed 0"), "{metrics}");
}
