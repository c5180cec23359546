//! Microsoft Entra ID groups, through Microsoft Graph (documented at
//! learn.microsoft.com/graph/api/user-list-transitivememberof), with an app registration's client
//! credentials (the application permission *User.Read.All*, admin-consented):
//!
//! ```text
//! POST {authority}/{tenant}/oauth2/v2.0/token   client_credentials, scope {endpoint}/.default
//! GET  {endpoint}/v1.0/users/{userPrincipalName}/transitiveMemberOf/microsoft.graph.group?$select=id&$top=999
//! → {"value": [{"id": "…"}], "@odata.nextLink": "…"}
//! ```
//!
//! A person whose email is not their user principal name is found by `mail` (`GET
//! /v1.0/users?$filter=mail eq '…'`); someone in neither has no groups. Groups are named by object
//! id, as Entra's `groups` claim names them, so `group:OBJECT-ID` members mean the same whether
//! the groups came in the ID token or from here. This is also how castellan answers the ID
//! token's groups "overage" (more than 200 groups: the token carries `_claim_names` instead of
//! `groups`).

use std::collections::BTreeSet;

use super::{CachedToken, Error};
use crate::config::MicrosoftDirectory;
use serde::Deserialize;

const MAX_GROUPS: usize = 5000;

pub struct Microsoft {
    id: String,
    config: MicrosoftDirectory,
    http: reqwest::Client,
    token: CachedToken,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<i64>,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    value: Vec<Object>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

#[derive(Deserialize)]
struct Object {
    id: String,
}

/// What a Graph request ended in.
enum Answer {
    Page(Page),
    /// 404 `Request_ResourceNotFound`: no such user.
    NotFound,
}

impl Microsoft {
    pub fn new(id: &str, config: MicrosoftDirectory, http: reqwest::Client) -> Microsoft {
        Microsoft {
            id: id.to_string(),
            config,
            http,
            token: CachedToken::default(),
        }
    }

    fn error(&self, detail: impl Into<String>) -> Error {
        Error::new(&self.id, detail)
    }

    pub async fn groups_of(&self, email: &str) -> Result<Vec<String>, Error> {
        let by_upn: String = url::form_urlencoded::byte_serialize(email.as_bytes()).collect();
        let user = match self.transitive_groups(&by_upn).await? {
            Some(groups) => return Ok(groups),
            None => self.user_by_mail(email).await?,
        };
        match user {
            Some(object_id) => Ok(self
                .transitive_groups(&object_id)
                .await?
                .unwrap_or_default()),
            // Not in the directory (deleted, or another tenant's): no groups from it.
            None => Ok(Vec::new()),
        }
    }

    /// Every page of the user's transitive groups; None if there is no such user.
    async fn transitive_groups(&self, user: &str) -> Result<Option<Vec<String>>, Error> {
        let mut url = format!(
            "{}/v1.0/users/{user}/transitiveMemberOf/microsoft.graph.group?$select=id&$top=999",
            self.config.endpoint
        );
        let mut groups = BTreeSet::new();
        loop {
            let page = match self.get(&url).await? {
                Answer::NotFound => return Ok(None),
                Answer::Page(p) => p,
            };
            groups.extend(
                page.value
                    .into_iter()
                    .map(|o| o.id.to_ascii_lowercase())
                    .filter(|g| crate::policy::valid_group(g)),
            );
            if groups.len() > MAX_GROUPS {
                return Err(self.error(format!("the user is in more than {MAX_GROUPS} groups")));
            }
            match page.next_link {
                // Followed only within Graph: a link elsewhere would carry the token there.
                Some(next) if next.starts_with(&format!("{}/", self.config.endpoint)) => url = next,
                Some(next) => {
                    return Err(self.error(format!("Graph's next page is elsewhere ({next})")));
                }
                None => return Ok(Some(groups.into_iter().collect())),
            }
        }
    }

    async fn user_by_mail(&self, email: &str) -> Result<Option<String>, Error> {
        let mut url = url::Url::parse(&format!("{}/v1.0/users", self.config.endpoint))
            .map_err(|e| self.error(format!("the endpoint is not a URL ({e})")))?;
        url.query_pairs_mut()
            .append_pair(
                "$filter",
                &format!("mail eq '{}'", email.replace('\'', "''")),
            )
            .append_pair("$select", "id");
        match self.get(url.as_str()).await? {
            Answer::NotFound => Ok(None),
            Answer::Page(p) => Ok(p.value.into_iter().next().map(|o| o.id)),
        }
    }

    async fn get(&self, url: &str) -> Result<Answer, Error> {
        let token = self.access_token().await?;
        let resp = self
            .http
            .get(url)
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| self.error(format!("Microsoft Graph could not be asked: {e}")))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.error(format!("Graph's answer was unreadable ({e})")))?;
        // Graph's answers, read: 404 names a missing user, 401 an expired token.
        if status.as_u16() == 404 {
            return Ok(Answer::NotFound);
        }
        if status.as_u16() == 401 {
            self.token.forget().await;
        }
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            return Err(self.error(format!(
                "Graph answered {status}: {} {} (the app registration needs the User.Read.All application permission, admin-consented)",
                v["error"]["code"].as_str().unwrap_or(""),
                v["error"]["message"].as_str().unwrap_or("")
            )));
        }
        serde_json::from_slice(&body)
            .map(Answer::Page)
            .map_err(|e| self.error(format!("Graph answered something unexpected ({e})")))
    }

    /// OAuth 2.0 client credentials at the tenant's token endpoint.
    async fn access_token(&self) -> Result<String, Error> {
        self.token.get(|| self.client_credentials()).await
    }

    async fn client_credentials(&self) -> Result<(String, i64), Error> {
        let token_url = format!(
            "{}/{}/oauth2/v2.0/token",
            self.config.authority, self.config.tenant
        );
        let scope = format!("{}/.default", self.config.endpoint);
        let resp = self
            .http
            .post(&token_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.config.client_id.as_str()),
                ("client_secret", self.config.client_secret.as_str()),
                ("scope", scope.as_str()),
            ])
            .send()
            .await
            .map_err(|e| self.error(format!("the token request to {token_url} failed: {e}")))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.error(format!("the token answer was unreadable ({e})")))?;
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            return Err(self.error(format!(
                "{token_url} refused the client {} ({status}): {}",
                self.config.client_id,
                v["error_description"].as_str().unwrap_or("")
            )));
        }
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| self.error(format!("the token answer is not what Entra sends ({e})")))?;
        Ok((t.access_token, t.expires_in.unwrap_or(3600)))
    }
}
