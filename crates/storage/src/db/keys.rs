//! API keys. Only `SHA-256(secret)` is stored; a presented key is found by its hash and the
//! hashes are compared again in constant time.

use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use subtle::ConstantTimeEq;

use sqlx::AssertSqlSafe;

use super::Db;
use crate::error::Result;
use crate::now_ms;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub id: String,
    pub name: String,
    /// Comma-separated: `generate`, `admin`.
    pub scopes: Vec<String>,
    pub images_per_minute: Option<u32>,
    pub quota_images: Option<u64>,
    pub bootstrap: bool,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl KeyRow {
    fn from_row(row: &SqliteRow) -> Result<Self> {
        let scopes: String = row.try_get("scopes")?;
        Ok(Self {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            scopes: scopes
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            images_per_minute: row
                .try_get::<Option<i64>, _>("images_per_minute")?
                .map(|n| n as u32),
            quota_images: row
                .try_get::<Option<i64>, _>("quota_images")?
                .map(|n| n as u64),
            bootstrap: row.try_get::<i64, _>("bootstrap")? != 0,
            created_at: row.try_get("created_at")?,
            revoked_at: row.try_get("revoked_at")?,
        })
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

#[derive(Debug, Clone)]
pub struct NewKey<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub secret: &'a str,
    pub scopes: &'a [String],
    pub images_per_minute: Option<u32>,
    pub quota_images: Option<u64>,
    pub bootstrap: bool,
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

const KEY_COLUMNS: &str =
    "id, name, scopes, images_per_minute, quota_images, bootstrap, created_at, revoked_at";

impl Db {
    /// Store a key (a bootstrap key given again on the command line is updated in place).
    pub async fn insert_key(&self, key: &NewKey<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, name, secret_hash, scopes, images_per_minute, quota_images, bootstrap, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (secret_hash) DO UPDATE SET scopes = excluded.scopes, revoked_at = NULL, \
                 images_per_minute = excluded.images_per_minute, quota_images = excluded.quota_images",
        )
        .bind(key.id)
        .bind(key.name)
        .bind(hash(key.secret))
        .bind(key.scopes.join(","))
        .bind(key.images_per_minute.map(i64::from))
        .bind(key.quota_images.map(|n| n as i64))
        .bind(i64::from(key.bootstrap))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The live key whose secret this is, if any.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<KeyRow>> {
        let presented = hash(secret);
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS}, secret_hash FROM api_keys WHERE secret_hash = ? AND revoked_at IS NULL"
        )))
        .bind(&presented)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: Vec<u8> = row.try_get("secret_hash")?;
        if !bool::from(stored.ct_eq(&presented)) {
            return Ok(None);
        }
        Ok(Some(KeyRow::from_row(&row)?))
    }

    pub async fn key(&self, id: &str) -> Result<Option<KeyRow>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(KeyRow::from_row).transpose()
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyRow>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(KeyRow::from_row).collect()
    }

    /// Revoke a key; false if there was no such live key.
    pub async fn revoke_key(&self, id: &str) -> Result<bool> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Live keys; with none, the server runs without authentication (loopback only).
    pub async fn live_key_count(&self) -> Result<u64> {
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok(count as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_db;

    #[tokio::test]
    async fn keys_are_found_by_secret_and_revoked() {
        let db = test_db().await;
        let scopes = ["generate".to_string()];
        db.insert_key(&NewKey {
            id: "key_1",
            name: "ci",
            secret: "sb-secret",
            scopes: &scopes,
            images_per_minute: Some(10),
            quota_images: None,
            bootstrap: false,
        })
        .await
        .unwrap();
        let key = db.authenticate("sb-secret").await.unwrap().unwrap();
        assert_eq!(key.id, "key_1");
        assert!(key.has_scope("generate") && !key.has_scope("admin"));
        assert_eq!(key.images_per_minute, Some(10));
        assert_eq!(db.authenticate("sb-secreT").await.unwrap(), None);
        assert_eq!(db.live_key_count().await.unwrap(), 1);
        assert!(db.revoke_key("key_1").await.unwrap());
        assert!(!db.revoke_key("key_1").await.unwrap());
        assert_eq!(db.authenticate("sb-secret").await.unwrap(), None);
        assert_eq!(db.list_keys().await.unwrap().len(), 1);
        // The raw secret is nowhere in the database.
        let raw: Vec<u8> = sqlx::query_scalar("SELECT secret_hash FROM api_keys")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(raw.len(), 32);
    }
}
