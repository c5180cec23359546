//! People and groups an identity provider provisions over SCIM 2.0. A person made inactive or
//! deleted has every session ended (with what was handed off from them) in the same transaction,
//! and cannot sign in while inactive; a group's members count as `group:DISPLAY-NAME` members
//! (see `memberships`). Every change bumps the revision, so every replica follows within a second.

use sqlx::Row;

use super::{Actor, Error, Result, Store, now};

/// SQL put together from this file's constants and integers only (never from a request).
macro_rules! sql {
    ($($t:tt)*) => {
        sqlx::AssertSqlSafe(format!($($t)*))
    };
}

/// A SCIM User as stored: the client's resource (minus `id`, `meta`, `schemas`) and what
/// castellan looks it up by.
#[derive(Debug, Clone, PartialEq)]
pub struct ScimUser {
    pub id: String,
    pub user_name: String,
    /// The person as castellan's sessions and policies name them: the primary email, else the
    /// first, else `userName`; lower case.
    pub email: String,
    pub external_id: Option<String>,
    pub active: bool,
    pub resource: serde_json::Value,
    pub created: i64,
    pub modified: i64,
}

/// A SCIM Group as stored, with its members' ids.
#[derive(Debug, Clone, PartialEq)]
pub struct ScimGroup {
    pub id: String,
    pub display_name: String,
    pub external_id: Option<String>,
    pub resource: serde_json::Value,
    pub members: Vec<String>,
    pub created: i64,
    pub modified: i64,
}

/// Which column a list filters on (`attr eq "value"`), and the value.
#[derive(Debug, Clone, Copy)]
pub enum ScimFilter<'a> {
    All,
    UserName(&'a str),
    ExternalId(&'a str),
    DisplayName(&'a str),
}

/// A page of a list: 1-based `start`, at most `count`.
#[derive(Debug, Clone, Copy)]
pub struct ScimPage {
    pub start: i64,
    pub count: i64,
}

fn scim_actor() -> Actor {
    Actor {
        name: "scim".into(),
        ip: String::new(),
    }
}

fn user_from(r: &sqlx::any::AnyRow) -> ScimUser {
    ScimUser {
        id: r.get(0),
        user_name: r.get(1),
        email: r.get(2),
        external_id: r.get(3),
        active: r.get::<i64, _>(4) != 0,
        resource: serde_json::from_str(&r.get::<String, _>(5)).unwrap_or_default(),
        created: r.get(6),
        modified: r.get(7),
    }
}

const USER_COLUMNS: &str = "id, user_name, email, external_id, active, resource, created, modified";

impl Store {
    /// Creates (`create`) or replaces a user. Returns how many sign-ins ended: all of the
    /// person's when they become inactive, or of their old email when it changes.
    pub async fn scim_put_user(&self, u: &ScimUser, create: bool) -> Result<u64> {
        let mut tx = self.write().await?;
        let taken: Option<String> =
            sqlx::query_scalar("SELECT id FROM scim_users WHERE user_name = $1")
                .bind(&u.user_name)
                .fetch_optional(&mut *tx)
                .await?;
        if taken.as_ref().is_some_and(|t| *t != u.id) {
            return Err(Error::Exists(format!("userName {}", u.user_name)));
        }
        let old = if create {
            None
        } else {
            let old = sqlx::query(sql!("SELECT {USER_COLUMNS} FROM scim_users WHERE id = $1"))
                .bind(&u.id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| user_from(&r));
            if old.is_none() {
                return Err(Error::NotFound(format!("user {}", u.id)));
            }
            old
        };
        let resource = u.resource.to_string();
        if create {
            sqlx::query(sql!(
                "INSERT INTO scim_users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ))
            .bind(&u.id)
            .bind(&u.user_name)
            .bind(&u.email)
            .bind(&u.external_id)
            .bind(i64::from(u.active))
            .bind(&resource)
            .bind(u.created)
            .bind(u.modified)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "UPDATE scim_users SET user_name = $1, email = $2, external_id = $3, active = $4, resource = $5, modified = $6 WHERE id = $7",
            )
            .bind(&u.user_name)
            .bind(&u.email)
            .bind(&u.external_id)
            .bind(i64::from(u.active))
            .bind(&resource)
            .bind(u.modified)
            .bind(&u.id)
            .execute(&mut *tx)
            .await?;
        }
        let mut ended = 0;
        if !u.active {
            ended += end_sessions_of(&mut tx, &u.email).await?;
        }
        if let Some(old) = &old
            && old.email != u.email
        {
            ended += end_sessions_of(&mut tx, &old.email).await?;
        }
        let action = match (&old, u.active) {
            (None, _) => "scim.user.create",
            (Some(o), false) if o.active => "scim.user.deactivate",
            (Some(o), true) if !o.active => "scim.user.reactivate",
            _ => "scim.user.update",
        };
        Store::record_change(
            &mut tx,
            &scim_actor(),
            action,
            &u.email,
            old.as_ref()
                .map(|o| serde_json::json!({"userName": o.user_name, "active": o.active}))
                .as_ref(),
            Some(&serde_json::json!({"userName": u.user_name, "active": u.active, "sessions_ended": ended})),
        )
        .await?;
        Store::bump(&mut tx).await?;
        tx.commit().await?;
        Ok(ended)
    }

    /// Deletes a user (and their group memberships); returns how many sign-ins ended, or None
    /// if there was no such user.
    pub async fn scim_delete_user(&self, id: &str) -> Result<Option<u64>> {
        let mut tx = self.write().await?;
        let email: Option<String> =
            sqlx::query_scalar("SELECT email FROM scim_users WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(email) = email else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM scim_users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM scim_members WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let ended = end_sessions_of(&mut tx, &email).await?;
        Store::record_change(
            &mut tx,
            &scim_actor(),
            "scim.user.delete",
            &email,
            None,
            Some(&serde_json::json!({"sessions_ended": ended})),
        )
        .await?;
        Store::bump(&mut tx).await?;
        tx.commit().await?;
        Ok(Some(ended))
    }

    pub async fn scim_user(&self, id: &str) -> Result<Option<ScimUser>> {
        Ok(
            sqlx::query(sql!("SELECT {USER_COLUMNS} FROM scim_users WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| user_from(&r)),
        )
    }

    /// A page of the users `filter` selects, and how many it selects in all.
    pub async fn scim_users(
        &self,
        filter: ScimFilter<'_>,
        page: ScimPage,
    ) -> Result<(i64, Vec<ScimUser>)> {
        let (clause, value) = match filter {
            ScimFilter::All => ("1 = 1", None),
            ScimFilter::UserName(v) => ("user_name = $1", Some(v.to_ascii_lowercase())),
            ScimFilter::ExternalId(v) => ("external_id = $1", Some(v.to_string())),
            ScimFilter::DisplayName(_) => ("1 = 0", None),
        };
        let total: i64 = match &value {
            Some(v) => {
                sqlx::query_scalar(sql!("SELECT COUNT(*) FROM scim_users WHERE {clause}"))
                    .bind(v)
                    .fetch_one(&self.pool)
                    .await?
            }
            None => {
                sqlx::query_scalar(sql!("SELECT COUNT(*) FROM scim_users WHERE {clause}"))
                    .fetch_one(&self.pool)
                    .await?
            }
        };
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM scim_users WHERE {clause} ORDER BY created, id LIMIT {} OFFSET {}",
            page.count.max(0),
            (page.start - 1).max(0)
        );
        let rows = match &value {
            Some(v) => {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(v)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok((total, rows.iter().map(user_from).collect()))
    }

    /// The emails of provisioned people who are inactive (refused at sign-in and as bearers).
    pub async fn scim_inactive(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT DISTINCT email FROM scim_users WHERE active = 0")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Creates (`create`) or replaces a group with its members (ids of provisioned users; an
    /// unknown one is refused, and nothing changes).
    pub async fn scim_put_group(&self, g: &ScimGroup, create: bool) -> Result<()> {
        let mut tx = self.write().await?;
        let taken: Option<String> =
            sqlx::query_scalar("SELECT id FROM scim_groups WHERE display_name = $1")
                .bind(&g.display_name)
                .fetch_optional(&mut *tx)
                .await?;
        if taken.as_ref().is_some_and(|t| *t != g.id) {
            return Err(Error::Exists(format!("displayName {}", g.display_name)));
        }
        for m in &g.members {
            let known: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM scim_users WHERE id = $1")
                .bind(m)
                .fetch_one(&mut *tx)
                .await?;
            if known == 0 {
                return Err(Error::NotFound(format!("member {m} (no such user)")));
            }
        }
        let resource = g.resource.to_string();
        if create {
            sqlx::query(
                "INSERT INTO scim_groups (id, display_name, external_id, resource, created, modified) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&g.id)
            .bind(&g.display_name)
            .bind(&g.external_id)
            .bind(&resource)
            .bind(g.created)
            .bind(g.modified)
            .execute(&mut *tx)
            .await?;
        } else {
            let n = sqlx::query(
                "UPDATE scim_groups SET display_name = $1, external_id = $2, resource = $3, modified = $4 WHERE id = $5",
            )
            .bind(&g.display_name)
            .bind(&g.external_id)
            .bind(&resource)
            .bind(g.modified)
            .bind(&g.id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(Error::NotFound(format!("group {}", g.id)));
            }
        }
        sqlx::query("DELETE FROM scim_members WHERE group_id = $1")
            .bind(&g.id)
            .execute(&mut *tx)
            .await?;
        for m in &g.members {
            sqlx::query(
                "INSERT INTO scim_members (group_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(&g.id)
            .bind(m)
            .execute(&mut *tx)
            .await?;
        }
        Store::record_change(
            &mut tx,
            &scim_actor(),
            if create {
                "scim.group.create"
            } else {
                "scim.group.update"
            },
            &format!("group {}", g.display_name),
            None,
            Some(&serde_json::json!({"members": g.members.len()})),
        )
        .await?;
        Store::bump(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn scim_delete_group(&self, id: &str) -> Result<bool> {
        let mut tx = self.write().await?;
        let name: Option<String> =
            sqlx::query_scalar("SELECT display_name FROM scim_groups WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(name) = name else {
            return Ok(false);
        };
        sqlx::query("DELETE FROM scim_groups WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM scim_members WHERE group_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Store::record_change(
            &mut tx,
            &scim_actor(),
            "scim.group.delete",
            &format!("group {name}"),
            None,
            None,
        )
        .await?;
        Store::bump(&mut tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn scim_group(&self, id: &str) -> Result<Option<ScimGroup>> {
        let Some(r) = sqlx::query(
            "SELECT id, display_name, external_id, resource, created, modified FROM scim_groups WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let members: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM scim_members WHERE group_id = $1 ORDER BY user_id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(ScimGroup {
            id: r.get(0),
            display_name: r.get(1),
            external_id: r.get(2),
            resource: serde_json::from_str(&r.get::<String, _>(3)).unwrap_or_default(),
            members,
            created: r.get(4),
            modified: r.get(5),
        }))
    }

    /// A page of the groups `filter` selects, and how many it selects in all.
    pub async fn scim_groups(
        &self,
        filter: ScimFilter<'_>,
        page: ScimPage,
    ) -> Result<(i64, Vec<ScimGroup>)> {
        let (clause, value) = match filter {
            ScimFilter::All => ("1 = 1", None),
            ScimFilter::DisplayName(v) => ("display_name = $1", Some(v)),
            ScimFilter::ExternalId(v) => ("external_id = $1", Some(v)),
            ScimFilter::UserName(_) => ("1 = 0", None),
        };
        let ids: Vec<String> = {
            let sql = format!(
                "SELECT id FROM scim_groups WHERE {clause} ORDER BY created, id LIMIT {} OFFSET {}",
                page.count.max(0),
                (page.start - 1).max(0)
            );
            match value {
                Some(v) => {
                    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                        .bind(v)
                        .fetch_all(&self.pool)
                        .await?
                }
                None => {
                    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                        .fetch_all(&self.pool)
                        .await?
                }
            }
        };
        let total: i64 = {
            let sql = format!("SELECT COUNT(*) FROM scim_groups WHERE {clause}");
            match value {
                Some(v) => {
                    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                        .bind(v)
                        .fetch_one(&self.pool)
                        .await?
                }
                None => {
                    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                        .fetch_one(&self.pool)
                        .await?
                }
            }
        };
        let mut groups = Vec::new();
        for id in ids {
            if let Some(g) = self.scim_group(&id).await? {
                groups.push(g);
            }
        }
        Ok((total, groups))
    }

    /// The members of a group, in one query: (user id, userName, email, active).
    pub async fn scim_group_members(
        &self,
        group_id: &str,
    ) -> Result<Vec<(String, String, String, bool)>> {
        let rows = sqlx::query(
            "SELECT u.id, u.user_name, u.email, u.active FROM scim_members m \
             JOIN scim_users u ON u.id = m.user_id WHERE m.group_id = $1 ORDER BY u.user_name",
        )
        .bind(group_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get::<i64, _>(3) != 0))
            .collect())
    }

    /// (group display name, email) of every active provisioned person in a provisioned group.
    pub(super) async fn scim_memberships(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT g.display_name, u.email FROM scim_members m \
             JOIN scim_groups g ON g.id = m.group_id JOIN scim_users u ON u.id = m.user_id \
             WHERE u.active = 1",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// Ends every sign-in of `email` (each with what was handed off from it).
async fn end_sessions_of(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    email: &str,
) -> Result<u64> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id_digest FROM sessions WHERE email = $1 AND parent = '' AND expires_at > $2",
    )
    .bind(email)
    .bind(now())
    .fetch_all(&mut **tx)
    .await?;
    Store::delete_with_descendants(tx, &ids).await?;
    Ok(ids.len() as u64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::store_test;
    use super::*;
    use crate::policy::Identity;

    fn user(id: &str, email: &str, active: bool) -> ScimUser {
        ScimUser {
            id: id.into(),
            user_name: email.into(),
            email: email.into(),
            external_id: None,
            active,
            resource: serde_json::json!({}),
            created: now(),
            modified: now(),
        }
    }

    store_test! {
        async fn deactivation_ends_sessions_and_memberships(s: Store) {
            s.scim_put_user(&user("u1", "a@x", true), true).await.unwrap();
            assert!(matches!(s.scim_put_user(&user("u2", "a@x", true), true).await, Err(Error::Exists(_))));
            let group = ScimGroup {
                id: "g1".into(),
                display_name: "eng".into(),
                external_id: None,
                resource: serde_json::json!({}),
                members: vec!["u1".into()],
                created: now(),
                modified: now(),
            };
            s.scim_put_group(&group, true).await.unwrap();
            let mut unknown = group.clone();
            unknown.members.push("nobody".into());
            assert!(matches!(s.scim_put_group(&unknown, false).await, Err(Error::NotFound(_))));
            assert!(s.memberships().await.unwrap().contains(&("eng".into(), "a@x".into())));
            let who = Identity {
                email: "a@x".into(),
                subject: "a".into(),
                provider: "corp".into(),
                groups: vec![],
                hd: None,
                domain: None,
                amr: Vec::new(),
                acr: None,
                claims: Default::default(),
            };
            s.create_session(&crate::crypto::digest("d1"), &who, Duration::from_secs(600), "ip", "ua", None).await.unwrap();
            let r0 = s.revision().await.unwrap();
            assert_eq!(s.scim_put_user(&user("u1", "a@x", false), false).await.unwrap(), 1);
            assert!(s.revision().await.unwrap() > r0);
            assert_eq!(s.scim_inactive().await.unwrap(), ["a@x"]);
            assert!(s.session(&crate::crypto::digest("d1"), Duration::from_secs(600)).await.unwrap().is_none());
            assert!(!s.memberships().await.unwrap().iter().any(|(_, e)| e == "a@x"));
            let (total, page) = s.scim_users(ScimFilter::UserName("A@X"), ScimPage { start: 1, count: 10 }).await.unwrap();
            assert_eq!((total, page.len()), (1, 1));
            assert_eq!(s.scim_delete_user("u1").await.unwrap(), Some(0));
            assert_eq!(s.scim_delete_user("u1").await.unwrap(), None);
            assert!(s.scim_inactive().await.unwrap().is_empty());
        }
    }
}
