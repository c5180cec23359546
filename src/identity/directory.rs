//! Directory groups: which groups a person is in, transitively, as their organisation's directory
//! says, for `group:` members. Google's ID tokens carry no groups, so a Google IAP policy's
//! `group:team@example.com` members need Google's directory asked ([`google`]); Microsoft Entra
//! ID leaves groups out of ID tokens past 200 ("overage") and names them by object id
//! ([`microsoft`]). Each source answers one question, `groups_of(email)`; when and how often it
//! is asked, and what happens when it cannot answer, is `runtime::directories`'.

pub mod google;
pub mod microsoft;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Mutex;

use super::google::Metadata;
use crate::config::{self, DirectoryKind};

#[derive(Debug, thiserror::Error)]
#[error("directory {directory}: {detail}")]
pub struct Error {
    directory: String,
    detail: String,
}

impl Error {
    fn new(directory: &str, detail: impl Into<String>) -> Error {
        Error {
            directory: directory.to_string(),
            detail: detail.into(),
        }
    }
}

/// One configured directory.
pub struct Directory {
    pub config: config::Directory,
    source: Source,
}

enum Source {
    Google(google::Google),
    Microsoft(microsoft::Microsoft),
}

impl Directory {
    /// Reads what the source needs (a key file) now, so a missing or broken one is an error at
    /// start.
    pub fn new(
        config: config::Directory,
        http: reqwest::Client,
        metadata: Arc<Metadata>,
    ) -> Result<Directory, Error> {
        let source = match &config.kind {
            DirectoryKind::Google {
                credentials,
                endpoint,
            } => Source::Google(google::Google::new(
                &config.id,
                credentials.as_deref(),
                endpoint,
                http,
                metadata,
            )?),
            DirectoryKind::Microsoft(m) => {
                Source::Microsoft(microsoft::Microsoft::new(&config.id, m.clone(), http))
            }
        };
        Ok(Directory { config, source })
    }

    /// The groups `email` belongs to, directly or through other groups, as `group:` members
    /// name them.
    pub async fn groups_of(&self, email: &str) -> Result<Vec<String>, Error> {
        match &self.source {
            Source::Google(g) => g.groups_of(email).await,
            Source::Microsoft(m) => m.groups_of(email).await,
        }
    }
}

/// An access token reused until five minutes before it expires, fetched once at a time.
#[derive(Default)]
struct CachedToken(Mutex<Option<(String, i64)>>);

impl CachedToken {
    /// The cached token, or a new one from `fetch` (the token and how many seconds it lives).
    async fn get<F, Fut>(&self, fetch: F) -> Result<String, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(String, i64), Error>>,
    {
        let now = crate::clock::now();
        let mut cached = self.0.lock().await;
        if let Some((token, exp)) = cached.as_ref()
            && exp - 300 > now
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = fetch().await?;
        *cached = Some((token.clone(), now + lifetime));
        Ok(token)
    }

    /// Forgets the token (the API said it is no longer good).
    async fn forget(&self) {
        *self.0.lock().await = None;
    }
}
