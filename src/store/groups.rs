//! castellan's own groups (the `group:NAME` members that are not asserted by a provider).

use sqlx::Row;

use super::{Actor, Error, Result, Store, now};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Group {
    pub name: String,
    pub description: String,
    pub members: Vec<String>,
}

impl Store {
    pub async fn create_group(&self, name: &str, description: &str, actor: &Actor) -> Result<()> {
        let mut tx = self.write().await?;
        let r = sqlx::query("INSERT INTO groups (name, description, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(name)
            .bind(description)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(Error::Exists(format!("group {name}")));
        }
        Store::record_change(
            &mut tx,
            actor,
            "group.create",
            &format!("group:{name}"),
            None,
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_group(&self, name: &str, actor: &Actor) -> Result<()> {
        let mut tx = self.write().await?;
        let members = Store::members_in(&mut tx, name).await?;
        let r = sqlx::query("DELETE FROM groups WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(Error::NotFound(format!("group {name}")));
        }
        Store::record_change(
            &mut tx,
            actor,
            "group.delete",
            &format!("group:{name}"),
            Some(&serde_json::json!({ "members": members })),
            None,
        )
        .await?;
        Store::bump(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn members_in(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        name: &str,
    ) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT email FROM group_members WHERE group_name = $1 ORDER BY email")
                .bind(name)
                .fetch_all(&mut **tx)
                .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Adds (`add` true) or removes a member; false when nothing changed.
    pub async fn set_group_member(
        &self,
        name: &str,
        email: &str,
        add: bool,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let exists: Option<String> = sqlx::query_scalar("SELECT name FROM groups WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(Error::NotFound(format!(
                "group {name} (create it with `castellan groups create {name}`)"
            )));
        }
        let r = if add {
            sqlx::query("INSERT INTO group_members (group_name, email, added_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(name)
                .bind(email)
                .bind(now())
                .execute(&mut *tx)
                .await?
        } else {
            sqlx::query("DELETE FROM group_members WHERE group_name = $1 AND email = $2")
                .bind(name)
                .bind(email)
                .execute(&mut *tx)
                .await?
        };
        let changed = r.rows_affected() > 0;
        if changed {
            let (action, before, after) = if add {
                (
                    "group.add-member",
                    None,
                    Some(serde_json::json!({ "member": email })),
                )
            } else {
                (
                    "group.remove-member",
                    Some(serde_json::json!({ "member": email })),
                    None,
                )
            };
            Store::record_change(
                &mut tx,
                actor,
                action,
                &format!("group:{name}"),
                before.as_ref(),
                after.as_ref(),
            )
            .await?;
            Store::bump(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    pub async fn groups(&self) -> Result<Vec<Group>> {
        let groups = sqlx::query("SELECT name, description FROM groups ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let memberships = self.memberships().await?;
        Ok(groups
            .iter()
            .map(|r| {
                let name: String = r.get(0);
                Group {
                    members: memberships
                        .iter()
                        .filter(|(g, _)| *g == name)
                        .map(|(_, e)| e.clone())
                        .collect(),
                    description: r.get(1),
                    name,
                }
            })
            .collect())
    }

    /// Every (group, email) membership.
    /// Every (group, email) membership decisions count: castellan's own groups, the groups a
    /// provider provisions over SCIM (active people only), and what the directories last said (within their grace: older answers are removed). The server and
    /// `castellan check` both build their snapshots from this, so they agree.
    pub async fn memberships(&self) -> Result<Vec<(String, String)>> {
        let rows =
            sqlx::query("SELECT group_name, email FROM group_members ORDER BY group_name, email")
                .fetch_all(&self.pool)
                .await?;
        let mut all: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for d in self.directory_groups(None).await? {
            all.extend(d.groups.into_iter().map(|g| (g, d.email.clone())));
        }
        all.extend(self.scim_memberships().await?);
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::super::store_test;
    use super::*;

    store_test! {
        async fn group_lifecycle(s: Store) {
            let a = Actor::cli();
            s.create_group("eng", "engineers", &a).await.unwrap();
            assert!(matches!(
                s.create_group("eng", "", &a).await,
                Err(Error::Exists(_))
            ));
            assert!(
                s.set_group_member("eng", "a@example.com", true, &a)
                    .await
                    .unwrap()
            );
            assert!(
                !s.set_group_member("eng", "a@example.com", true, &a)
                    .await
                    .unwrap()
            );
            assert!(matches!(
                s.set_group_member("nope", "a@example.com", true, &a).await,
                Err(Error::NotFound(_))
            ));
            assert_eq!(s.groups().await.unwrap()[0].members, vec!["a@example.com"]);
            s.delete_group("eng", &a).await.unwrap();
            assert!(
                s.memberships().await.unwrap().is_empty(),
                "members go with the group"
            );
        }
    }
}
