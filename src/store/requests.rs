//! Access requests: a denied person asks for an app; an admin approves or denies.

use sqlx::Row;

use super::{Actor, Error, Result, Store, now};

#[derive(Debug, Clone, serde::Serialize)]
pub struct AccessRequest {
    pub id: i64,
    pub app: String,
    pub email: String,
    pub reason: String,
    /// `pending`, `approved` or `denied`.
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub decided_by: String,
    pub expires_at: Option<i64>,
}

fn from_row(r: &sqlx::any::AnyRow) -> AccessRequest {
    AccessRequest {
        id: r.get(0),
        app: r.get(1),
        email: r.get(2),
        reason: r.get(3),
        status: r.get(4),
        created_at: r.get(5),
        updated_at: r.get(6),
        decided_by: r.get(7),
        expires_at: r.get(8),
    }
}

/// `SELECT <every column> FROM access_requests <rest>`, as a static string.
macro_rules! select {
    ($rest:literal) => {
        concat!(
            "SELECT id, app, email, reason, status, created_at, updated_at, decided_by, expires_at FROM access_requests ",
            $rest
        )
    };
}

impl Store {
    /// Files a request, or refreshes the person's pending one for the app (repeats merge).
    /// Returns the request and whether it is new.
    pub async fn request_access(
        &self,
        app: &str,
        email: &str,
        reason: &str,
        ip: &str,
    ) -> Result<(AccessRequest, bool)> {
        let mut tx = self.write().await?;
        let now = now();
        let existing: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM access_requests WHERE app = $1 AND email = $2 AND status = 'pending'",
        )
        .bind(app)
        .bind(email)
        .fetch_optional(&mut *tx)
        .await?;
        let (id, new) = match existing {
            Some(id) => {
                sqlx::query("UPDATE access_requests SET reason = CASE WHEN $1 = '' THEN reason ELSE $2 END, updated_at = $3 WHERE id = $4")
                    .bind(reason)
                    .bind(reason)
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                (id, false)
            }
            None => {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO access_requests (app, email, reason, created_at, updated_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                )
                .bind(app)
                .bind(email)
                .bind(reason)
                .bind(now)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                (id, true)
            }
        };
        let actor = Actor {
            name: email.to_string(),
            ip: ip.to_string(),
        };
        Store::record_change(
            &mut tx,
            &actor,
            if new {
                "access-request.create"
            } else {
                "access-request.repeat"
            },
            &format!("app:{app}"),
            None,
            Some(&serde_json::json!({ "request": id, "reason": reason })),
        )
        .await?;
        let row = sqlx::query(select!("WHERE id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((from_row(&row), new))
    }

    /// The person's latest request for the app.
    pub async fn latest_request(&self, app: &str, email: &str) -> Result<Option<AccessRequest>> {
        let row = sqlx::query(select!(
            "WHERE app = $1 AND email = $2 ORDER BY id DESC LIMIT 1"
        ))
        .bind(app)
        .bind(email)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(from_row))
    }

    pub async fn pending_requests(&self) -> Result<Vec<AccessRequest>> {
        let rows = sqlx::query(select!("WHERE status = 'pending' ORDER BY created_at"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    pub async fn access_request(&self, id: i64) -> Result<AccessRequest> {
        let row = sqlx::query(select!("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(from_row)
            .ok_or_else(|| Error::NotFound(format!("access request {id}")))
    }

    /// Marks a pending request approved or denied (the binding itself is made by the caller).
    pub async fn decide_request(
        &self,
        id: i64,
        approve: bool,
        expires_at: Option<i64>,
        actor: &Actor,
    ) -> Result<AccessRequest> {
        let mut tx = self.write().await?;
        let status = if approve { "approved" } else { "denied" };
        let r = sqlx::query(
            "UPDATE access_requests SET status = $1, decided_by = $2, updated_at = $3, expires_at = $4 WHERE id = $5 AND status = 'pending'",
        )
        .bind(status)
        .bind(&actor.name)
        .bind(now())
        .bind(expires_at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(Error::NotFound(format!("pending access request {id}")));
        }
        let row = sqlx::query(select!("WHERE id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let req = from_row(&row);
        Store::record_change(
            &mut tx,
            actor,
            if approve {
                "access-request.approve"
            } else {
                "access-request.deny"
            },
            &format!("app:{}", req.app),
            None,
            Some(
                &serde_json::json!({ "request": id, "email": req.email, "expires_at": expires_at }),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::super::store_test;
    use super::*;

    store_test! {
        async fn repeats_merge_and_decisions_close_requests(s: Store) {
            let (a, new) = s
                .request_access("demo", "a@example.com", "for the Q3 report", "127.0.0.1")
                .await
                .unwrap();
            assert!(new);
            let (b, new) = s
                .request_access("demo", "a@example.com", "", "127.0.0.1")
                .await
                .unwrap();
            assert!(!new);
            assert_eq!(a.id, b.id);
            assert_eq!(
                b.reason, "for the Q3 report",
                "an empty repeat keeps the reason"
            );
            assert_eq!(s.pending_requests().await.unwrap().len(), 1);
            let d = s
                .decide_request(a.id, false, None, &Actor::cli())
                .await
                .unwrap();
            assert_eq!(d.status, "denied");
            assert!(
                s.decide_request(a.id, true, None, &Actor::cli())
                    .await
                    .is_err(),
                "decided once"
            );
            assert_eq!(
                s.latest_request("demo", "a@example.com")
                    .await
                    .unwrap()
                    .unwrap()
                    .status,
                "denied"
            );
            let (c, new) = s
                .request_access("demo", "a@example.com", "again", "127.0.0.1")
                .await
                .unwrap();
            assert!(new && c.id != a.id, "a new request after a denial");
        }
    }
}
