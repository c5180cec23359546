//! Directory groups as last asked: which groups each directory says a person is in, and when it
//! last said so. A change of someone's groups (or their removal when a directory has not
//! answered for longer than its grace) bumps the revision, so every replica rebuilds its snapshot
//! and re-checks open connections; an unchanged answer only records when it came.

use sqlx::Row;

use super::{Actor, Result, Store, now};

/// One person's groups from one directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DirectoryGroups {
    pub directory: String,
    pub email: String,
    pub groups: Vec<String>,
    /// When the directory last answered for this person (unix seconds).
    pub fetched_at: i64,
}

impl Store {
    /// Records `directory`'s answer for `email`; returns whether their groups changed.
    pub async fn put_directory_groups(
        &self,
        directory: &str,
        email: &str,
        groups: &[String],
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let before: Option<String> = sqlx::query_scalar(
            "SELECT groups FROM directory_groups WHERE directory = $1 AND email = $2",
        )
        .bind(directory)
        .bind(email)
        .fetch_optional(&mut *tx)
        .await?;
        let before: Option<Vec<String>> = before.and_then(|b| serde_json::from_str(&b).ok());
        let json = serde_json::to_string(groups).expect("a list of strings serialises");
        sqlx::query(
            "INSERT INTO directory_groups (directory, email, groups, fetched_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (directory, email) DO UPDATE SET groups = excluded.groups, fetched_at = excluded.fetched_at",
        )
        .bind(directory)
        .bind(email)
        .bind(&json)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        let changed = before.as_deref() != Some(groups);
        if changed {
            Store::record_change(
                &mut tx,
                &Actor {
                    name: format!("directory:{directory}"),
                    ip: String::new(),
                },
                "directory.groups",
                email,
                before.map(|b| serde_json::json!({ "groups": b })).as_ref(),
                Some(&serde_json::json!({ "groups": groups })),
            )
            .await?;
            Store::bump(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Forgets `directory`'s answers older than `stale_before`: past their grace, those
    /// memberships no longer count (`group:` bindings fail closed for those people). Returns how
    /// many people's answers went.
    pub async fn expire_directory_groups(&self, directory: &str, stale_before: i64) -> Result<u64> {
        let mut tx = self.write().await?;
        let gone: Vec<String> = sqlx::query_scalar(
            "DELETE FROM directory_groups WHERE directory = $1 AND fetched_at < $2 RETURNING email",
        )
        .bind(directory)
        .bind(stale_before)
        .fetch_all(&mut *tx)
        .await?;
        if !gone.is_empty() {
            Store::record_change(
                &mut tx,
                &Actor {
                    name: format!("directory:{directory}"),
                    ip: String::new(),
                },
                "directory.expired",
                &format!("{} people", gone.len()),
                None,
                Some(&serde_json::json!({ "emails": gone })),
            )
            .await?;
            Store::bump(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(gone.len() as u64)
    }

    /// Every directory answer, of `email` or of everyone.
    pub async fn directory_groups(&self, email: Option<&str>) -> Result<Vec<DirectoryGroups>> {
        let rows = sqlx::query(
            "SELECT directory, email, groups, fetched_at FROM directory_groups \
             WHERE ($1 IS NULL OR email = $2) ORDER BY email, directory",
        )
        .bind(email)
        .bind(email)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| DirectoryGroups {
                directory: r.get(0),
                email: r.get(1),
                groups: serde_json::from_str(&r.get::<String, _>(2)).unwrap_or_default(),
                fetched_at: r.get(3),
            })
            .collect())
    }

    /// The people with a live session (whose directory groups are worth keeping fresh).
    pub async fn signed_in_people(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT email FROM sessions WHERE expires_at > $1 ORDER BY email",
        )
        .bind(now())
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::store_test;
    use super::*;

    store_test! {
        async fn directory_answers_change_the_revision_only_when_groups_change(s: Store) {
            let groups = |g: &[&str]| g.iter().map(|x| x.to_string()).collect::<Vec<_>>();
            let r0 = s.revision().await.unwrap();
            assert!(s.put_directory_groups("google", "a@x", &groups(&["eng@x"])).await.unwrap());
            let r1 = s.revision().await.unwrap();
            assert!(r1 > r0);
            assert!(!s.put_directory_groups("google", "a@x", &groups(&["eng@x"])).await.unwrap());
            assert_eq!(s.revision().await.unwrap(), r1, "the same answer changes nothing");
            assert!(s.put_directory_groups("google", "a@x", &groups(&[])).await.unwrap());
            let listed = s.directory_groups(Some("a@x")).await.unwrap();
            assert_eq!(listed.len(), 1);
            assert!(listed[0].groups.is_empty());
            // Past the grace, answers go, and the revision says so.
            let r2 = s.revision().await.unwrap();
            assert_eq!(s.expire_directory_groups("google", now() - 10).await.unwrap(), 0);
            assert_eq!(s.expire_directory_groups("google", now() + 10).await.unwrap(), 1);
            assert!(s.revision().await.unwrap() > r2);
            assert!(s.directory_groups(None).await.unwrap().is_empty());
        }
    }
}
