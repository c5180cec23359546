//! Policy documents, one per resource, with etags.

use sqlx::{Any, Row, Transaction};

use super::{Actor, Error, Result, Store, now};
use crate::policy::snapshot::Resource;
use crate::policy::{Document, Policy};

fn new_etag() -> String {
    crate::crypto::random_token(9)
}

fn decode(resource: &str, text: &str, etag: String) -> Result<Policy> {
    let doc: Document = serde_json::from_str(text)
        .map_err(|e| Error::Corrupt(format!("policy of {resource}: {e}")))?;
    let mut p = Policy::from_document(&doc)
        .map_err(|e| Error::Corrupt(format!("policy of {resource}: {e}")))?;
    p.etag = etag;
    Ok(p)
}

impl Store {
    /// The resource's policy; an empty one (with an etag) when none was ever set.
    pub async fn policy(&self, resource: &Resource) -> Result<Policy> {
        let row = sqlx::query("SELECT document, etag FROM policies WHERE resource = $1")
            .bind(resource.key())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => decode(&resource.key(), r.get(0), r.get(1)),
            None => Ok(Policy {
                etag: "empty".into(),
                bindings: Vec::new(),
            }),
        }
    }

    async fn policy_in(tx: &mut Transaction<'static, Any>, resource: &Resource) -> Result<Policy> {
        let row = sqlx::query("SELECT document, etag FROM policies WHERE resource = $1")
            .bind(resource.key())
            .fetch_optional(&mut **tx)
            .await?;
        match row {
            Some(r) => decode(&resource.key(), r.get(0), r.get(1)),
            None => Ok(Policy {
                etag: "empty".into(),
                bindings: Vec::new(),
            }),
        }
    }

    /// Every stored policy.
    pub async fn policies(&self) -> Result<Vec<(Resource, Policy)>> {
        let rows = sqlx::query("SELECT resource, document, etag FROM policies")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let key: String = r.get(0);
                let resource = Resource::from_key(&key)
                    .ok_or_else(|| Error::Corrupt(format!("policy key {key}")))?;
                Ok((resource, decode(&key, r.get(1), r.get(2))?))
            })
            .collect()
    }

    /// Replaces the policy. With `expected_etag`, refuses when the stored one is different (someone
    /// changed it since it was read). Returns the stored policy with its new etag.
    pub async fn set_policy(
        &self,
        resource: &Resource,
        policy: &Policy,
        expected_etag: Option<&str>,
        actor: &Actor,
        action: &str,
    ) -> Result<Policy> {
        let mut tx = self.write().await?;
        let before = Store::policy_in(&mut tx, resource).await?;
        if let Some(given) = expected_etag
            && given != before.etag
        {
            return Err(Error::StaleEtag {
                given: given.to_string(),
                current: before.etag,
            });
        }
        let mut stored = policy.clone();
        stored.etag = new_etag();
        let mut doc = stored.to_document();
        doc.etag = String::new();
        let text = serde_json::to_string(&doc).expect("a policy document serialises");
        sqlx::query(
            "INSERT INTO policies (resource, document, etag, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (resource) DO UPDATE SET document = excluded.document, etag = excluded.etag, updated_at = excluded.updated_at",
        )
        .bind(resource.key())
        .bind(&text)
        .bind(&stored.etag)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        let mut before_doc = before.to_document();
        before_doc.etag = String::new();
        Store::record_change(
            &mut tx,
            actor,
            action,
            &resource.key(),
            Some(&serde_json::to_value(before_doc).expect("serialises")),
            Some(&serde_json::to_value(doc).expect("serialises")),
        )
        .await?;
        Store::bump(&mut tx).await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// Reads, changes and writes a policy in one transaction. `change` returns whether it changed
    /// anything (nothing is written, and no audit record made, when it did not) and a value to hand back.
    pub async fn update_policy<T>(
        &self,
        resource: &Resource,
        actor: &Actor,
        action: &str,
        change: impl FnOnce(&mut Policy) -> (bool, T),
    ) -> Result<(Policy, T)> {
        let mut tx = self.write().await?;
        let before = Store::policy_in(&mut tx, resource).await?;
        let mut after = before.clone();
        let (changed, out) = change(&mut after);
        if !changed {
            return Ok((before, out));
        }
        after.etag = new_etag();
        let mut doc = after.to_document();
        doc.etag = String::new();
        sqlx::query(
            "INSERT INTO policies (resource, document, etag, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (resource) DO UPDATE SET document = excluded.document, etag = excluded.etag, updated_at = excluded.updated_at",
        )
        .bind(resource.key())
        .bind(serde_json::to_string(&doc).expect("serialises"))
        .bind(&after.etag)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        let mut before_doc = before.to_document();
        before_doc.etag = String::new();
        Store::record_change(
            &mut tx,
            actor,
            action,
            &resource.key(),
            Some(&serde_json::to_value(before_doc).expect("serialises")),
            Some(&serde_json::to_value(doc).expect("serialises")),
        )
        .await?;
        Store::bump(&mut tx).await?;
        tx.commit().await?;
        Ok((after, out))
    }
}

#[cfg(test)]
mod tests {
    use super::super::store_test;
    use super::*;
    use crate::policy::{Member, Role};

    store_test! {
        async fn etags_guard_against_lost_updates(s: Store) {
            let r = Resource::App("demo".into());
            let read = s.policy(&r).await.unwrap();
            let mut mine = read.clone();
            mine.add(Role::Accessor, Member::AllAuthenticatedUsers, None);
            let r0 = s.revision().await.unwrap();
            let stored = s
                .set_policy(&r, &mine, Some(&read.etag), &Actor::cli(), "policy.set")
                .await
                .unwrap();
            assert_ne!(stored.etag, read.etag);
            assert!(s.revision().await.unwrap() > r0);
            // A second writer with the old etag is refused and nothing changes.
            let err = s
                .set_policy(
                    &r,
                    &Policy::default(),
                    Some(&read.etag),
                    &Actor::cli(),
                    "policy.set",
                )
                .await
                .unwrap_err();
            assert!(
                err.to_string()
                    .contains("the policy changed since you read it"),
                "{err}"
            );
            assert_eq!(s.policy(&r).await.unwrap().bindings.len(), 1);
            // Unconditional update through the closure.
            let (p, added) = s
                .update_policy(&r, &Actor::cli(), "policy.add", |p| {
                    let a = p.add(
                        Role::Admin,
                        Member::parse("user:root@example.com").unwrap(),
                        None,
                    );
                    (a, a)
                })
                .await
                .unwrap();
            assert!(added);
            assert_eq!(p.bindings.len(), 2);
            assert_eq!(s.policies().await.unwrap().len(), 1);
        }
    }
}
