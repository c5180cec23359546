//! The browser's trips to the provider: the authorization request (with what a sign-in asks
//! beyond who the person is) and the RP-initiated logout URL.

use url::Url;

use super::{Client, Error, GOOGLE_ISSUER};

/// What a sign-in asks of the provider beyond who the person is.
#[derive(Debug, Default)]
pub struct Asking<'a> {
    /// Let the person pick another account (`prompt=select_account`).
    pub select_account: bool,
    /// A fresh authentication, whatever session the provider holds (`prompt=login`).
    pub fresh: bool,
    /// `max_age`: an authentication at most this old (implies `prompt=login`).
    pub max_age: Option<i64>,
    /// `acr_values`: the authentication levels wanted, most preferred first.
    pub acr_values: Option<&'a str>,
    /// Scopes beyond the provider's own, for the app this sign-in is for (Google: incremental
    /// authorization, `include_granted_scopes`).
    pub extra_scopes: &'a [String],
}

impl Client {
    /// Where to send the browser to sign in.
    pub async fn authorization_url(
        &self,
        state: &str,
        nonce: &str,
        pkce_verifier: &str,
        asking: &Asking<'_>,
    ) -> Result<Url, Error> {
        let m = self.metadata().await?;
        let mut url = m.authorization_endpoint.clone();
        // Offline access (for revalidation, see `refresh`): OIDC Core §11 asks for prompt=consent
        // with it; Google takes access_type=offline instead of the scope.
        let offline = self.offline_access();
        let google = self.config.issuer == GOOGLE_ISSUER;
        let mut scopes: Vec<&str> = self
            .config
            .scopes
            .iter()
            .map(String::as_str)
            .filter(|s| !(google && *s == "offline_access"))
            .collect();
        for s in asking.extra_scopes {
            if !scopes.contains(&s.as_str()) {
                scopes.push(s);
            }
        }
        let mut prompts: Vec<&str> = Vec::new();
        if asking.select_account {
            prompts.push("select_account");
        }
        if asking.fresh || asking.max_age.is_some() {
            prompts.push("login");
        }
        if offline {
            prompts.push("consent");
        }
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.config.client_id)
                .append_pair("redirect_uri", &self.redirect_uri)
                .append_pair("scope", &scopes.join(" "))
                .append_pair("state", state)
                .append_pair("nonce", nonce)
                .append_pair(
                    "code_challenge",
                    &crate::crypto::pkce_challenge(pkce_verifier),
                )
                .append_pair("code_challenge_method", "S256");
            if !prompts.is_empty() {
                q.append_pair("prompt", &prompts.join(" "));
            }
            // A fresh authentication: the provider must ask again (prompt=login) and report
            // auth_time, which the callback checks against max_age.
            if let Some(age) = asking.max_age {
                q.append_pair("max_age", &age.to_string());
            }
            // An app's require_acr (OIDC Core §3.1.2.1): a request the provider may ignore, so
            // the callback checks the ID token's acr.
            if let Some(acr) = asking.acr_values {
                q.append_pair("acr_values", acr);
            }
            if offline && google {
                q.append_pair("access_type", "offline");
            }
            if google && !asking.extra_scopes.is_empty() {
                q.append_pair("include_granted_scopes", "true");
            }
        }
        Ok(url)
    }

    /// Whether sign-ins ask for a refresh token (`offline_access` in `scopes`).
    pub fn offline_access(&self) -> bool {
        self.config.scopes.iter().any(|s| s == "offline_access")
    }

    /// Where to send a browser that signs out, so the provider's session ends too (OpenID Connect
    /// RP-Initiated Logout): `None` when the provider has no `end_session_endpoint`.
    pub async fn logout_url(&self, id_token: &str, post_logout_redirect_uri: &str) -> Option<Url> {
        let m = self.metadata().await.ok()?;
        let mut url = m.end_session_endpoint.clone()?;
        {
            let mut q = url.query_pairs_mut();
            if !id_token.is_empty() {
                q.append_pair("id_token_hint", id_token);
            }
            q.append_pair("client_id", &self.config.client_id)
                .append_pair("post_logout_redirect_uri", post_logout_redirect_uri);
        }
        Some(url)
    }
}
