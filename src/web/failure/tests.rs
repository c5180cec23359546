//! The one failure shape: what each constructor answers, to browsers and to scripts.

use super::*;

fn ctx(navigation: bool) -> Ctx {
    Ctx::new(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1".parse().unwrap(),
        navigation,
    )
}

async fn body(resp: Response<Body>) -> String {
    use http_body_util::BodyExt;
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn one_json_shape_and_one_page_per_failure() {
    let mut c = ctx(false);
    let r = Failure::denied("bob@example.com", "demo", Reason::NoMatchingBinding).respond(&mut c);
    assert_eq!(r.status(), 403);
    let v: Value = serde_json::from_str(&body(r).await).unwrap();
    assert_eq!(v["error"], "access_denied");
    assert_eq!(v["reason"], "no-matching-binding");
    assert_eq!(v["reference"].as_str(), c.reference.as_deref());
    assert_eq!(c.outcome, Outcome::Deny);

    let mut c = ctx(true);
    let r = Failure::denied("bob@example.com", "demo", Reason::NoMatchingBinding).respond(&mut c);
    assert!(body(r).await.contains("<h1>Access denied</h1>"));
}

#[tokio::test]
async fn sign_in_redirects_browsers_and_tells_scripts() {
    let f = || Failure::sign_in("/.castellan/sign_in?rd=%2F".into(), None);
    let r = f().respond(&mut ctx(true));
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "/.castellan/sign_in?rd=%2F");
    let r = f().respond(&mut ctx(false));
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"castellan\""
    );
    let v: Value = serde_json::from_str(&body(r).await).unwrap();
    assert_eq!(v["error"], "unauthenticated");
    assert_eq!(v["sign_in_url"], "/.castellan/sign_in?rd=%2F");
}

#[tokio::test]
async fn oauth_failures_speak_rfc_6750() {
    let r = Failure::invalid_token("the token \"x\" expired").respond(&mut ctx(false));
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"castellan\", error=\"invalid_token\", error_description=\"the token 'x' expired\""
    );
    let v: Value = serde_json::from_str(&body(r).await).unwrap();
    assert_eq!(v["error_description"], v["message"]);
    let r = Failure::oauth("invalid_client", "unknown client").respond(&mut ctx(false));
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"castellan\"");
}

#[tokio::test]
async fn retry_after_and_allow_are_set() {
    let r = Failure::store_unavailable().respond(&mut ctx(true));
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "10");
    let r = Failure::method_not_allowed("GET, POST").respond(&mut ctx(false));
    assert_eq!(r.headers()["allow"], "GET, POST");
}
