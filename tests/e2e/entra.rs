//! Microsoft Entra ID groups through Microsoft Graph: a person whose ID token carries no groups
//! because they are in too many ("overage": `_claim_names` instead of `groups`, which the test
//! provider emits as Entra does) still matches `group:OBJECT-ID` members, from Graph; people whose
//! email is not their user principal name are found by `mail`; someone removed from a group, or
//! from the directory, loses it at the next refresh.
//!
//! Graph and Entra's token endpoint cannot be reached here; the double follows their documented
//! wire formats: client credentials at `/{tenant}/oauth2/v2.0/token`
//! (learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow),
//! `GET /v1.0/users/{id | userPrincipalName}/transitiveMemberOf/microsoft.graph.group`
//! (learn.microsoft.com/graph/api/user-list-transitivememberof) with `@odata.nextLink` paging
//! (one group a page here, to make castellan follow it), `GET /v1.0/users?$filter=mail eq '…'`
//! (learn.microsoft.com/graph/api/user-list), and Graph's error body
//! (`{"error": {"code": "Request_ResourceNotFound", "message", "innerError"}}`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::directory::{Body, answer};
use crate::support::*;

const TENANT: &str = "contoso.onmicrosoft.com";
const DATA_TEAM: &str = "5f8e2a1c-0b7d-4c3e-9a6f-1d2e3f4a5b6c";
const ENG: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

#[derive(Default)]
struct Graph {
    /// user principal name → (object id, mail, transitive group ids).
    users: HashMap<String, (String, String, Vec<String>)>,
    token_requests: usize,
}

fn graph_error(status: u16, code: &str, message: &str) -> hyper::Response<Body> {
    answer(
        status,
        json!({"error": {"code": code, "message": message, "innerError": {"date": "2026-12-05T00:00:00", "request-id": "00000000-0000-0000-0000-000000000000"}}}),
    )
}

async fn serve(
    req: hyper::Request<Incoming>,
    graph: Arc<Mutex<Graph>>,
    base: String,
) -> Result<hyper::Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut g = graph.lock().unwrap();
    if path == format!("/{TENANT}/oauth2/v2.0/token") {
        g.token_requests += 1;
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(&body).into_owned().collect();
        let want = [
            ("grant_type", "client_credentials"),
            ("client_id", "castellan-app"),
            ("client_secret", "graph-secret"),
            ("scope", &format!("{base}/.default")),
        ];
        if want
            .iter()
            .any(|(k, v)| form.get(*k).map(String::as_str) != Some(*v))
        {
            return Ok(answer(
                401,
                json!({"error": "invalid_client", "error_description": format!("AADSTS7000215: Invalid client secret provided. {form:?}")}),
            ));
        }
        return Ok(answer(
            200,
            json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": "eyJ0eXAi.graph.token"}),
        ));
    }
    if auth.as_deref() != Some("Bearer eyJ0eXAi.graph.token") {
        return Ok(graph_error(
            401,
            "InvalidAuthenticationToken",
            "Access token is empty.",
        ));
    }
    if path == "/v1.0/users" {
        // $filter=mail eq '…' (the only filter castellan sends).
        let filter = query.get("$filter").cloned().unwrap_or_default();
        let Some(mail) = filter
            .strip_prefix("mail eq '")
            .and_then(|m| m.strip_suffix('\''))
        else {
            return Ok(graph_error(
                400,
                "Request_UnsupportedQuery",
                "Unsupported query.",
            ));
        };
        let found: Vec<Value> = g
            .users
            .values()
            .filter(|(_, m, _)| m == mail)
            .map(|(id, _, _)| json!({"id": id}))
            .collect();
        return Ok(answer(
            200,
            json!({"@odata.context": format!("{base}/v1.0/$metadata#users(id)"), "value": found}),
        ));
    }
    let Some(user) = path
        .strip_prefix("/v1.0/users/")
        .and_then(|r| r.strip_suffix("/transitiveMemberOf/microsoft.graph.group"))
    else {
        return Ok(graph_error(400, "BadRequest", "Invalid request."));
    };
    let user = url::form_urlencoded::parse(format!("u={user}").as_bytes())
        .next()
        .unwrap()
        .1
        .to_string();
    let Some((_, _, groups)) = g
        .users
        .iter()
        .find(|(upn, (id, _, _))| **upn == user || *id == user)
        .map(|(_, v)| v.clone())
    else {
        return Ok(graph_error(
            404,
            "Request_ResourceNotFound",
            &format!(
                "Resource '{user}' does not exist or one of its queried reference-property objects are not present."
            ),
        ));
    };
    let skip: usize = query
        .get("$skiptoken")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut out = json!({
        "@odata.context": format!("{base}/v1.0/$metadata#groups(id)"),
        "value": groups.iter().skip(skip).take(1).map(|id| json!({"@odata.type": "#microsoft.graph.group", "id": id})).collect::<Vec<_>>(),
    });
    if skip + 1 < groups.len() {
        out["@odata.nextLink"] = json!(format!(
            "{base}{path}?$select=id&$top=999&$skiptoken={}",
            skip + 1
        ));
    }
    Ok(answer(200, out))
}

struct Double {
    addr: SocketAddr,
    graph: Arc<Mutex<Graph>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Double {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Double {
    async fn start() -> Double {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let graph = Arc::new(Mutex::new(Graph::default()));
        let g = graph.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let g = g.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        serve(req, g.clone(), format!("http://{addr}"))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Double { addr, graph, task }
    }

    fn user(&self, upn: &str, object_id: &str, mail: &str, groups: &[&str]) {
        self.graph.lock().unwrap().users.insert(
            upn.into(),
            (
                object_id.into(),
                mail.into(),
                groups.iter().map(|g| g.to_string()).collect(),
            ),
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn entra_groups_come_from_graph_when_the_id_token_cannot_carry_them() {
    let graph = Double::start().await;
    // alice is in too many groups for her ID token (overage); data-team through eng, as Graph's
    // transitive answer says. carol's email is not her user principal name.
    graph.user(
        "alice@example.com",
        "11111111-aaaa-4aaa-8aaa-111111111111",
        "alice@example.com",
        &[ENG, DATA_TEAM],
    );
    graph.user(
        "carol.c@contoso.onmicrosoft.com",
        "33333333-cccc-4ccc-8ccc-333333333333",
        "carol@example.com",
        &[DATA_TEAM],
    );
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    let idp = Idp::start_with(
        &origin,
        &[
            ("IDP_USERS", "alice@example.com:alice-password,bob@example.com:bob-password,carol@example.com:carol-password"),
            ("IDP_GROUPS_OVERAGE", "alice@example.com"),
            ("IDP_GROUPS", &format!("bob@example.com={DATA_TEAM}")),
        ],
    )
    .await;
    let top = format!(
        "[[directories]]\nid = \"entra\"\nkind = \"microsoft\"\ntenant = \"{TENANT}\"\nclient_id = \"castellan-app\"\nclient_secret = \"graph-secret\"\nendpoint = \"http://{0}\"\nauthority = \"http://{0}\"\nrefresh = \"1s\"\n",
        graph.addr
    );
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.local_accounts = false;
    setup.top = &top;
    setup.provider_extra = "groups_claim = \"groups\"";
    let c = Castellan::start_on(port, setup).await;
    c.grant("demo", &format!("group:{DATA_TEAM}"));

    let sign_in = |who: &'static str, password: &'static str| {
        let c = &c;
        async move {
            let mut b = Browser::new();
            b.sign_in_oidc(&c.url("/"), who, password).await;
            b.cookie(&c.origin, "castellan_session").unwrap().clone()
        }
    };
    let alice = sign_in("alice@example.com", "alice-password").await;
    let bob = sign_in("bob@example.com", "bob-password").await;
    let carol = sign_in("carol@example.com", "carol-password").await;
    assert_eq!(
        status_with_session(&c, &alice).await,
        200,
        "alice's groups came from Graph (overage)"
    );
    assert_eq!(
        status_with_session(&c, &bob).await,
        200,
        "bob's came in his ID token, as before"
    );
    assert_eq!(
        status_with_session(&c, &carol).await,
        200,
        "carol was found by mail"
    );
    let out = ok(&c.cli(&["check", "demo", "alice@example.com"]));
    assert!(
        out.contains(&format!("groups from directory entra: {ENG}, {DATA_TEAM}"))
            || out.contains(&format!("groups from directory entra: {DATA_TEAM}, {ENG}")),
        "{out}"
    );

    // alice leaves data-team; carol is deleted from the directory: both lose it at the next refresh.
    graph.user(
        "alice@example.com",
        "11111111-aaaa-4aaa-8aaa-111111111111",
        "alice@example.com",
        &[ENG],
    );
    graph
        .graph
        .lock()
        .unwrap()
        .users
        .remove("carol.c@contoso.onmicrosoft.com");
    until_status_with_session(&c, &alice, 403, Duration::from_secs(5)).await;
    until_status_with_session(&c, &carol, 403, Duration::from_secs(5)).await;
    assert_eq!(status_with_session(&c, &bob).await, 200);
    assert!(
        graph.graph.lock().unwrap().token_requests <= 2,
        "tokens are reused"
    );
}
