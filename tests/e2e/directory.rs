//! Google Groups through the Cloud Identity API: a Google IAP policy imported with
//! `policy import-gcloud` works unchanged for `group:` members, nested groups included; a change
//! in the directory reaches decisions (and open connections) at the next refresh; a directory
//! that cannot be reached is trusted for its grace, then `group:` bindings fail closed.
//!
//! Google's endpoints cannot be reached here, so a double on loopback stands in for them,
//! following the documented wire formats:
//! - the metadata server's `GET /computeMetadata/v1/instance/service-accounts/default/token?scopes=…`
//!   with `Metadata-Flavor: Google` (cloud.google.com/compute/docs/access/authenticate-workloads),
//!   answering `{"access_token", "expires_in", "token_type"}`;
//! - the token endpoint of a service account key file (`token_uri`): an RS256 JWT bearer grant
//!   (RFC 7523; developers.google.com/identity/protocols/oauth2/service-account, "Preparing to
//!   make an authorized API call"), checked against the key's public half, answering
//!   `{"access_token", "expires_in", "token_type"}`;
//! - `GET /v1/groups/-/memberships:searchTransitiveGroups` and `:searchDirectGroups`
//!   (cloud.google.com/identity/docs/reference/rest/v1/groups.memberships): a `query` that must
//!   name `member_key_id` and the discussion-forum label, `pageSize`/`pageToken` paging (the
//!   double answers two groups a page to make castellan follow `nextPageToken`),
//!   `GroupRelation`/`MembershipRelation` items with `groupKey.id`, and Google's JSON errors
//!   (`{"error": {"code", "message", "status"}}`): 403 `PERMISSION_DENIED` for the transitive
//!   search on editions without it, 503 `UNAVAILABLE` when down.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::support::*;

const LABEL: &str = "cloudidentity.googleapis.com/groups.discussion_forum";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-identity.groups.readonly";
const CLIENT_EMAIL: &str = "castellan@test-project.iam.gserviceaccount.com";

/// What the double's directory holds and how it behaves.
#[derive(Default)]
struct Directory {
    /// member (person or group email) → the groups it is a direct member of.
    direct: HashMap<String, Vec<String>>,
    /// Answer the transitive search with 403, as editions without it do.
    no_transitive_search: bool,
    /// Answer everything with 503.
    down: bool,
    /// castellan is given no key file: it takes its token from the metadata server (this
    /// double, at Google's documented `…/service-accounts/default/token?scopes=…`).
    from_metadata: bool,
    token_requests: usize,
    searches: usize,
}

struct Double {
    addr: SocketAddr,
    dir: Arc<Mutex<Directory>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Double {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

pub fn answer(status: u16, body: Value) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn google_error(code: u16, status: &str, message: &str) -> hyper::Response<Body> {
    answer(
        code,
        json!({"error": {"code": code, "message": message, "status": status}}),
    )
}

struct Keys {
    public_pem: Vec<u8>,
    token_uri: String,
}

async fn serve(
    req: hyper::Request<Incoming>,
    dir: Arc<Mutex<Directory>>,
    keys: Arc<Keys>,
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
    let flavor = req.headers().get("metadata-flavor").cloned();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut d = dir.lock().unwrap();
    if path == "/computeMetadata/v1/instance/service-accounts/default/token" {
        if flavor.as_ref().map(|v| v.as_bytes()) != Some(b"Google") {
            return Ok(answer(403, json!("Missing Metadata-Flavor:Google header.")));
        }
        if query.get("scopes").map(String::as_str) != Some(SCOPE) {
            return Ok(answer(400, json!("scopes do not match")));
        }
        d.token_requests += 1;
        return Ok(answer(
            200,
            json!({"access_token": "ya29.test-token", "expires_in": 3599, "token_type": "Bearer"}),
        ));
    }
    if d.down {
        return Ok(google_error(
            503,
            "UNAVAILABLE",
            "The service is currently unavailable.",
        ));
    }
    if path == "/token" {
        d.token_requests += 1;
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(&body).into_owned().collect();
        if form.get("grant_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        {
            return Ok(answer(400, json!({"error": "unsupported_grant_type"})));
        }
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(&keys.public_pem).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&[&keys.token_uri]);
        v.set_issuer(&[CLIENT_EMAIL]);
        v.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
        let claims = match jsonwebtoken::decode::<Value>(
            form.get("assertion").map(String::as_str).unwrap_or(""),
            &key,
            &v,
        ) {
            Ok(t) => t.claims,
            Err(e) => {
                return Ok(answer(
                    400,
                    json!({"error": "invalid_grant", "error_description": format!("Invalid JWT: {e}")}),
                ));
            }
        };
        let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
        if claims["scope"] != SCOPE || lifetime > 3600 {
            return Ok(answer(
                400,
                json!({"error": "invalid_scope", "error_description": format!("{claims}")}),
            ));
        }
        return Ok(answer(
            200,
            json!({"access_token": "ya29.test-token", "expires_in": 3599, "token_type": "Bearer"}),
        ));
    }
    let method = match path.as_str() {
        "/v1/groups/-/memberships:searchTransitiveGroups" => "transitive",
        "/v1/groups/-/memberships:searchDirectGroups" => "direct",
        _ => {
            return Ok(google_error(
                404,
                "NOT_FOUND",
                "Requested entity was not found.",
            ));
        }
    };
    if auth.as_deref() != Some("Bearer ya29.test-token") {
        return Ok(google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        ));
    }
    d.searches += 1;
    // The documented form: member_key_id == '…' && '<label>' in labels.
    let q = query.get("query").cloned().unwrap_or_default();
    let member = q
        .strip_prefix("member_key_id == '")
        .and_then(|r| r.split_once("' && "))
        .filter(|(_, rest)| *rest == format!("'{LABEL}' in labels"))
        .map(|(m, _)| m.to_string());
    let Some(member) = member else {
        return Ok(google_error(
            400,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument.",
        ));
    };
    if method == "transitive" && d.no_transitive_search {
        return Ok(google_error(
            403,
            "PERMISSION_DENIED",
            "Error(2028): Permission denied for resource groups/- (or it may not exist).",
        ));
    }
    let groups: Vec<(String, &str)> = if method == "direct" {
        d.direct
            .get(&member)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|g| (g, "DIRECT"))
            .collect()
    } else {
        let direct: BTreeSet<String> = d
            .direct
            .get(&member)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut all = BTreeSet::new();
        let mut todo: Vec<String> = direct.iter().cloned().collect();
        while let Some(g) = todo.pop() {
            if all.insert(g.clone()) {
                todo.extend(d.direct.get(&g).cloned().unwrap_or_default());
            }
        }
        all.into_iter()
            .map(|g| {
                let kind = if direct.contains(&g) {
                    "DIRECT"
                } else {
                    "INDIRECT"
                };
                (g, kind)
            })
            .collect()
    };
    let start: usize = query
        .get("pageToken")
        .and_then(|t| t.strip_prefix("page-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let page: Vec<Value> = groups
        .iter()
        .skip(start)
        .take(2)
        .map(|(g, kind)| {
            json!({
                "groupKey": {"id": g},
                "group": format!("groups/{}", g.replace(['@', '.'], "")),
                "displayName": g.split('@').next().unwrap(),
                "relationType": kind,
                "labels": {LABEL: ""},
                "roles": [{"role": "MEMBER"}],
            })
        })
        .collect();
    let mut out = json!({ "memberships": page });
    if start + 2 < groups.len() {
        out["nextPageToken"] = json!(format!("page-{}", start + 2));
    }
    Ok(answer(200, out))
}

impl Double {
    async fn start(keys_dir: &std::path::Path) -> (Double, std::path::PathBuf) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pem = keys_dir.join("key.pem");
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            pem.to_str().unwrap(),
        ]);
        let public_pem = openssl(&["pkey", "-in", pem.to_str().unwrap(), "-pubout"]);
        let token_uri = format!("http://{addr}/token");
        // A service account key file as `gcloud iam service-accounts keys create` writes it.
        let key_file = keys_dir.join("service-account.json");
        std::fs::write(
            &key_file,
            json!({
                "type": "service_account",
                "project_id": "test-project",
                "private_key_id": "0123456789abcdef",
                "private_key": std::fs::read_to_string(&pem).unwrap(),
                "client_email": CLIENT_EMAIL,
                "client_id": "100000000000000000001",
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": token_uri,
            })
            .to_string(),
        )
        .unwrap();
        let keys = Arc::new(Keys {
            public_pem,
            token_uri,
        });
        let dir = Arc::new(Mutex::new(Directory::default()));
        let d = dir.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (d, keys) = (d.clone(), keys.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| serve(req, d.clone(), keys.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (Double { addr, dir, task }, key_file)
    }

    fn set(&self, member: &str, groups: &[&str]) {
        self.dir.lock().unwrap().direct.insert(
            member.into(),
            groups.iter().map(|g| g.to_string()).collect(),
        );
    }
}

const ALICE: (&str, &str) = ("alice@example.com", "alice-password");
const BOB: (&str, &str) = ("bob@example.com", "bob-password");

struct World {
    double: Double,
    c: Castellan,
    _idp: Idp,
    _echo: Echo,
    _keys: tempfile::TempDir,
}

/// castellan with the IdP, the directory double (refresh 1 s, grace `grace`), and `demo`'s
/// policy imported from Google IAP: `group:data-team@example.com` may open it.
async fn world(grace: &str, setup_directory: impl FnOnce(&Double)) -> World {
    let keys = tempfile::tempdir().unwrap();
    let (double, key_file) = Double::start(keys.path()).await;
    setup_directory(&double);
    let echo = Echo::start().await;
    let (port, origin) = Castellan::reserve();
    let idp = Idp::start(&origin, None).await;
    let credentials = if double.dir.lock().unwrap().from_metadata {
        format!("google_metadata_url = \"http://{}\"\n", double.addr)
    } else {
        String::new()
    };
    let top = format!(
        "admins = [\"user:alice@example.com\"]\n{credentials}[[directories]]\nid = \"google\"\nkind = \"google\"\n{}endpoint = \"http://{}\"\nrefresh = \"1s\"\ngrace = \"{grace}\"\n",
        if credentials.is_empty() {
            format!("credentials = \"{}\"\n", key_file.display())
        } else {
            String::new()
        },
        double.addr
    );
    let mut setup = Setup::new(echo.addr);
    setup.idp = Some(&idp);
    setup.local_accounts = false;
    setup.top = &top;
    let c = Castellan::start_on(port, setup).await;
    // As `gcloud iap web get-iam-policy --resource-type=backend-services --service=… --format=json` prints it.
    let iap = keys.path().join("iap.json");
    std::fs::write(
        &iap,
        json!({
            "bindings": [{"members": ["group:data-team@example.com"], "role": "roles/iap.httpsResourceAccessor"}],
            "etag": "BwYHZEDo6aM=",
            "version": 1
        })
        .to_string(),
    )
    .unwrap();
    let out = ok(&c.cli(&["policy", "import-gcloud", "demo", iap.to_str().unwrap()]));
    assert!(out.contains("imported 1 binding(s)"), "{out}");
    World {
        double,
        c,
        _idp: idp,
        _echo: echo,
        _keys: keys,
    }
}

async fn sign_in(w: &World, who: (&str, &str)) -> String {
    let mut b = Browser::new();
    b.sign_in_oidc(&w.c.url("/"), who.0, who.1).await;
    b.cookie(&w.c.origin, "castellan_session").unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_imported_iap_policy_works_for_google_groups_and_follows_the_directory() {
    let w = world("1h", |d| {
        // alice is in eng, which is in data-team (nested, as IAP policies often rely on), and
        // in enough other groups that the answer takes several pages.
        d.set(
            "alice@example.com",
            &["eng@example.com", "all@example.com", "cafe@example.com"],
        );
        d.set("eng@example.com", &["data-team@example.com"]);
        d.set("bob@example.com", &["sales@example.com"]);
    })
    .await;
    let alice = sign_in(&w, ALICE).await;
    let bob = sign_in(&w, BOB).await;
    assert_eq!(
        status_with_session(&w.c, &alice).await,
        200,
        "a member of data-team through eng"
    );
    assert_eq!(status_with_session(&w.c, &bob).await, 403);
    // `castellan check` agrees and says where the membership came from.
    let out = ok(&w.c.cli(&["check", "demo", ALICE.0]));
    assert!(out.contains("ALLOWED") || out.contains("allowed"), "{out}");
    assert!(
        out.contains("groups from directory google: all@example.com, cafe@example.com, data-team@example.com, eng@example.com"),
        "{out}"
    );

    // So does the console's Groups page.
    let mut admin = Browser::new();
    let page = admin
        .sign_in_oidc(&w.c.console("/.castellan/admin/groups"), ALICE.0, ALICE.1)
        .await;
    assert!(page.body.contains("From directories"), "{}", page.body);
    assert!(
        page.body
            .contains("all@example.com, cafe@example.com, data-team@example.com, eng@example.com"),
        "{}",
        page.body
    );

    // alice leaves eng: at the next refresh (1 s) she is out, and her open WebSocket closes.
    let mut ws = upgrade(&w.c, &format!("castellan_session={alice}")).await;
    w.double.set("alice@example.com", &["all@example.com"]);
    let took = until_status_with_session(&w.c, &alice, 403, Duration::from_secs(5)).await;
    closed_within(&mut ws, Duration::from_secs(1)).await;
    eprintln!("a group change reached decisions in {took:?}");
    // bob joins data-team directly: in at the next refresh.
    w.double.set(
        "bob@example.com",
        &["sales@example.com", "data-team@example.com"],
    );
    until_status_with_session(&w.c, &bob, 200, Duration::from_secs(5)).await;
    let d = w.double.dir.lock().unwrap();
    assert!(
        d.token_requests <= 2,
        "access tokens are reused: {} token requests",
        d.token_requests
    );
    assert!(
        d.searches > 4,
        "the directory was asked again: {} searches",
        d.searches
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_directory_is_trusted_for_its_grace_then_group_bindings_fail_closed() {
    let w = world("4s", |d| {
        d.set("alice@example.com", &["data-team@example.com"])
    })
    .await;
    let alice = sign_in(&w, ALICE).await;
    ok(&w.c.cli(&["access", "add", "demo", "user:bob@example.com"]));
    let bob = sign_in(&w, BOB).await;
    assert_eq!(status_with_session(&w.c, &alice).await, 200);
    w.double.dir.lock().unwrap().down = true;
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        status_with_session(&w.c, &alice).await,
        200,
        "within the grace the last answer counts"
    );
    until_status_with_session(&w.c, &alice, 403, Duration::from_secs(8)).await;
    // The last answer came at most one refresh (1 s) before the directory went down.
    let after = down.elapsed();
    assert!(
        after >= Duration::from_secs(3),
        "dropped {after:?} after the outage, inside the 4 s grace"
    );
    assert_eq!(
        status_with_session(&w.c, &bob).await,
        200,
        "bindings that need no directory are untouched"
    );
    let out = ok(&w.c.cli(&["audit", "--json", "--limit", "200"]));
    assert!(out.contains("directory.expired"), "{out}");
    // Back up: the next refresh brings alice's groups back.
    w.double.dir.lock().unwrap().down = false;
    until_status_with_session(&w.c, &alice, 200, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nested_groups_are_followed_where_the_transitive_search_is_refused() {
    // On Google Cloud, with the metadata server's service account instead of a key file.
    let w = world("1h", |d| {
        d.dir.lock().unwrap().no_transitive_search = true;
        d.dir.lock().unwrap().from_metadata = true;
        d.set("alice@example.com", &["eng@example.com"]);
        d.set("eng@example.com", &["platform@example.com"]);
        d.set(
            "platform@example.com",
            &["data-team@example.com", "eng@example.com"],
        );
    })
    .await;
    let alice = sign_in(&w, ALICE).await;
    assert_eq!(
        status_with_session(&w.c, &alice).await,
        200,
        "data-team through eng and platform (and a cycle)"
    );
    assert_eq!(
        w.double.dir.lock().unwrap().token_requests,
        1,
        "one token from the metadata server, reused"
    );
}
