use super::*;

async fn state() -> (tempfile::TempDir, Arc<State>) {
    State::for_tests(
        r#"
        listen = "127.0.0.1:8080"
        [[apps]]
        id = "demo"
        host = "127.0.0.1"
        upstream = "http://127.0.0.1:9"
    "#,
    )
    .await
}

fn cookie(state: &State, id: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::COOKIE,
        format!("{}={id}", state.cookies.session).parse().unwrap(),
    );
    headers
}

/// Made-up session ids are refused without leaving anything behind: only the ids of sessions
/// the store knows are remembered, so a client cannot fill the cache with its own.
#[tokio::test]
async fn only_the_ids_of_real_sessions_are_remembered() {
    let (_dir, state) = state().await;
    let id = crate::crypto::random_token(32);
    state
        .store
        .create_session(
            &crate::crypto::digest(&id),
            &crate::policy::Identity::local("ann@example.com"),
            std::time::Duration::from_secs(3600),
            "127.0.0.1",
            "test",
            None,
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let found = state.session(&cookie(&state, &id)).await.unwrap();
        assert_eq!(found.unwrap().identity.email, "ann@example.com");
    }
    for _ in 0..50 {
        let made_up = crate::crypto::random_token(32);
        assert_eq!(made_up.len(), 43, "a well-formed id, so it is looked up");
        assert!(
            state
                .session(&cookie(&state, &made_up))
                .await
                .unwrap()
                .is_none()
        );
    }
    let cache = state.session_cache.lock();
    assert_eq!(
        (cache.digests.len(), cache.sessions.len()),
        (1, 1),
        "ann's session and its id, nothing else"
    );
}
