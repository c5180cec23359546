//! Google Workspace / Cloud Identity groups, through the Cloud Identity Groups API (documented at
//! cloud.google.com/identity/docs/reference/rest/v1/groups.memberships), chosen over the Admin
//! SDK Directory API because a service account holding the *Groups Reader* admin role may call it
//! directly, with no domain-wide delegation (no impersonated administrator), and because
//! `searchTransitiveGroups` answers nested membership in one paged query:
//!
//! ```text
//! GET {endpoint}/v1/groups/-/memberships:searchTransitiveGroups
//!     ?query=member_key_id == 'alice@example.com' && 'cloudidentity.googleapis.com/groups.discussion_forum' in labels
//!     &pageSize=1000&pageToken=…
//! → {"memberships": [{"groupKey": {"id": "eng@example.com"}, "group": "groups/…", …}], "nextPageToken": "…"}
//! ```
//!
//! That method needs Google Workspace Enterprise or Cloud Identity Premium and answers 403
//! `PERMISSION_DENIED` elsewhere; castellan then follows the nesting itself with
//! `searchDirectGroups` (same query and answer shape, every edition), breadth first, each group
//! asked once.
//!
//! Credentials: a service account's JSON key file (an RS256 JWT exchanged at its `token_uri` for
//! an access token, RFC 7523, as Google's "OAuth 2.0 for Server to Server Applications" describes),
//! or, without one, the metadata server's service account (Cloud Run, GKE, Compute Engine).
//! Access tokens are reused until five minutes before they expire.

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

use super::{CachedToken, Error};
use crate::identity::google::Metadata;
use serde::Deserialize;

/// The scope that reads groups.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-identity.groups.readonly";
/// Google Groups (every group a Workspace or Cloud Identity customer makes) carry this label.
const LABEL: &str = "cloudidentity.googleapis.com/groups.discussion_forum";
/// More groups than this for one person is a directory castellan will not mirror whole.
const MAX_GROUPS: usize = 2000;

pub struct Google {
    /// The directory's id, for errors.
    id: String,
    http: reqwest::Client,
    endpoint: String,
    auth: Auth,
    token: CachedToken,
}

enum Auth {
    KeyFile(ServiceAccountKey),
    Metadata(Arc<Metadata>),
}

/// The fields castellan uses of a service account's JSON key file.
#[derive(Deserialize)]
struct ServiceAccountKey {
    client_email: String,
    private_key: String,
    private_key_id: Option<String>,
    token_uri: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<i64>,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    memberships: Vec<Relation>,
    #[serde(default, rename = "nextPageToken")]
    next_page_token: String,
}

/// A `GroupRelation` (transitive) or `MembershipRelation` (direct): the group's key.
#[derive(Deserialize)]
struct Relation {
    #[serde(rename = "groupKey")]
    group_key: Option<EntityKey>,
}

#[derive(Deserialize)]
struct EntityKey {
    id: String,
}

/// What a page request ended in.
enum Asked {
    Page(Page),
    /// 403 PERMISSION_DENIED: the method is not available to this customer or caller.
    Refused(String),
}

impl Google {
    /// Reads the key file (if any) now, so a missing or broken one is an error at start.
    pub fn new(
        id: &str,
        credentials: Option<&Path>,
        endpoint: &str,
        http: reqwest::Client,
        metadata: Arc<Metadata>,
    ) -> Result<Google, Error> {
        let auth = match credentials {
            Some(path) => Auth::KeyFile(read_key(path).map_err(|detail| Error::new(id, detail))?),
            None => Auth::Metadata(metadata),
        };
        Ok(Google {
            id: id.to_string(),
            endpoint: endpoint.to_string(),
            http,
            auth,
            token: CachedToken::default(),
        })
    }

    fn error(&self, detail: impl Into<String>) -> Error {
        Error::new(&self.id, detail)
    }

    /// The groups (their email addresses, lower case) `email` belongs to, directly or through
    /// other groups.
    pub async fn groups_of(&self, email: &str) -> Result<Vec<String>, Error> {
        match self.search("searchTransitiveGroups", email).await? {
            Ok(groups) => Ok(groups),
            Err(why) => {
                tracing::debug!(
                    directory = %self.id,
                    "searchTransitiveGroups refused ({why}); following nested groups with searchDirectGroups"
                );
                self.follow_direct_groups(email).await
            }
        }
    }

    /// Breadth first through `searchDirectGroups`: the person's groups, then theirs.
    async fn follow_direct_groups(&self, email: &str) -> Result<Vec<String>, Error> {
        let mut found = BTreeSet::new();
        let mut queue = VecDeque::from([email.to_string()]);
        while let Some(member) = queue.pop_front() {
            let groups = self
                .search("searchDirectGroups", &member)
                .await?
                .map_err(|why| {
                    self.error(format!(
                        "the Cloud Identity API refused to list groups ({why}): give the service account the Groups Reader admin role"
                    ))
                })?;
            for g in groups {
                if found.insert(g.clone()) {
                    queue.push_back(g);
                }
            }
            if found.len() > MAX_GROUPS {
                return Err(self.error(format!("{email} is in more than {MAX_GROUPS} groups")));
            }
        }
        Ok(found.into_iter().collect())
    }

    /// Every page of `method` for `member`; the inner error is a refusal (403).
    async fn search(
        &self,
        method: &str,
        member: &str,
    ) -> Result<Result<Vec<String>, String>, Error> {
        let query = format!(
            "member_key_id == '{}' && '{LABEL}' in labels",
            member.replace('\\', "\\\\").replace('\'', "\\'")
        );
        let mut groups = BTreeSet::new();
        let mut page_token = String::new();
        loop {
            match self.page(method, &query, &page_token).await? {
                Asked::Refused(why) => return Ok(Err(why)),
                Asked::Page(page) => {
                    groups.extend(
                        page.memberships
                            .into_iter()
                            .filter_map(|m| m.group_key)
                            .map(|k| k.id.to_ascii_lowercase())
                            .filter(|g| crate::policy::valid_group(g)),
                    );
                    if groups.len() > MAX_GROUPS {
                        return Err(
                            self.error(format!("{member} is in more than {MAX_GROUPS} groups"))
                        );
                    }
                    if page.next_page_token.is_empty() {
                        return Ok(Ok(groups.into_iter().collect()));
                    }
                    page_token = page.next_page_token;
                }
            }
        }
    }

    async fn page(&self, method: &str, query: &str, page_token: &str) -> Result<Asked, Error> {
        let token = self.access_token().await?;
        let mut url = url::Url::parse(&format!(
            "{}/v1/groups/-/memberships:{method}",
            self.endpoint
        ))
        .map_err(|e| self.error(format!("the endpoint is not a URL ({e})")))?;
        url.query_pairs_mut()
            .append_pair("query", query)
            .append_pair("pageSize", "1000");
        if !page_token.is_empty() {
            url.query_pairs_mut().append_pair("pageToken", page_token);
        }
        let resp = self
            .http
            .get(url.as_str())
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| self.error(format!("{method} failed: {e}")))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.error(format!("{method}: the answer was unreadable ({e})")))?;
        // Google's answers, read (403 PERMISSION_DENIED, 401 UNAUTHENTICATED).
        if status.as_u16() == 403 {
            return Ok(Asked::Refused(google_error(&body)));
        }
        if status.as_u16() == 401 {
            // The token was revoked or expired early: the next attempt gets a new one.
            self.token.forget().await;
        }
        if !status.is_success() {
            return Err(self.error(format!(
                "{method} answered {status}: {}",
                google_error(&body)
            )));
        }
        serde_json::from_slice(&body)
            .map(Asked::Page)
            .map_err(|e| self.error(format!("{method} answered something unexpected ({e})")))
    }

    async fn access_token(&self) -> Result<String, Error> {
        self.token
            .get(|| async {
                match &self.auth {
                    Auth::Metadata(m) => m.access_token(SCOPE).await.map_err(|e| self.error(e)),
                    Auth::KeyFile(key) => self.exchange(key, crate::clock::now()).await,
                }
            })
            .await
    }

    /// RFC 7523: a JWT signed with the service account's key, for an access token.
    async fn exchange(&self, key: &ServiceAccountKey, now: i64) -> Result<(String, i64), Error> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = key.private_key_id.clone();
        let claims = serde_json::json!({
            "iss": key.client_email,
            "scope": SCOPE,
            "aud": key.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let signing = jsonwebtoken::EncodingKey::from_rsa_pem(key.private_key.as_bytes())
            .map_err(|e| self.error(format!("the key file's private_key is unusable ({e})")))?;
        let assertion = jsonwebtoken::encode(&header, &claims, &signing)
            .map_err(|e| self.error(format!("signing the token request failed ({e})")))?;
        let resp = self
            .http
            .post(&key.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| {
                self.error(format!(
                    "the token request to {} failed: {e}",
                    key.token_uri
                ))
            })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.error(format!("the token answer was unreadable ({e})")))?;
        if !status.is_success() {
            return Err(self.error(format!(
                "{} refused the service account {} ({status}): {}",
                key.token_uri,
                key.client_email,
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            )));
        }
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| self.error(format!("the token answer is not what Google sends ({e})")))?;
        Ok((t.access_token, t.expires_in.unwrap_or(3600)))
    }
}

fn read_key(path: &Path) -> Result<ServiceAccountKey, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the service account key file {} ({e}): create one with `gcloud iam service-accounts keys create`, or leave credentials out on Google Cloud to use the metadata server",
            path.display()
        )
    })?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not a service account key file ({e}): it needs client_email, private_key and token_uri",
            path.display()
        )
    })
}

/// The message of Google's JSON error body (`{"error": {"code", "message", "status"}}`).
fn google_error(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match (
        v["error"]["status"].as_str(),
        v["error"]["message"].as_str(),
    ) {
        (Some(s), Some(m)) => format!("{s}: {m}"),
        (_, Some(m)) => m.to_string(),
        _ => String::from_utf8_lossy(body).chars().take(200).collect(),
    }
}
