//! API keys. A secret is stored only as HMAC-SHA256 under a server secret (the "pepper") that
//! lives outside the database, so a leaked database alone does not allow offline guessing of
//! weak keys. A presented key is found by its hash and the hashes are compared again in
//! constant time.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sqlx::AssertSqlSafe;
use sqlx::Row;
use sqlx::any::AnyRow;
use subtle::ConstantTimeEq;

use super::Db;
use crate::error::Result;
use crate::now_ms;

/// How `secret_hash` was made: today's keyed hash, or the plain SHA-256 of databases written
/// before it (rewritten to the keyed hash the next time the key is presented).
const HMAC_KIND: &str = "hmac-sha256";
const LEGACY_KIND: &str = "sha256";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub id: String,
    pub name: String,
    /// Comma-separated: `generate`, `ops`, `admin`.
    pub scopes: Vec<String>,
    pub images_per_minute: Option<u32>,
    pub quota_images: Option<u64>,
    pub bootstrap: bool,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl KeyRow {
    fn from_row(row: &AnyRow) -> Result<Self> {
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
}

/// What start-up did with the bootstrap keys given on the command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BootstrapKeys {
    /// Bootstrap keys in force now (new or kept).
    pub active: usize,
    /// Bootstrap keys no longer on the command line, revoked now.
    pub revoked: usize,
}

/// The key store: the database plus the pepper its hashes are keyed with.
#[derive(Clone)]
pub struct Keys {
    db: Db,
    pepper: Arc<[u8]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

const KEY_COLUMNS: &str =
    "id, name, scopes, images_per_minute, quota_images, bootstrap, created_at, revoked_at";

/// Bootstrap keys are named after their hash, so a rotated flag value makes a new row instead
/// of colliding with the old one's id.
fn bootstrap_id(hash: &[u8]) -> String {
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("key_bootstrap_{hex}")
}

impl Keys {
    /// `pepper` must stay the same across restarts (and nodes): keys hashed under another
    /// pepper no longer match.
    pub fn new(db: Db, pepper: Vec<u8>) -> Self {
        Self {
            db,
            pepper: pepper.into(),
        }
    }

    fn hash(&self, secret: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.pepper).expect("HMAC takes any key");
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Store a new key.
    pub async fn insert(&self, key: &NewKey<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, name, secret_hash, hash_kind, scopes, images_per_minute, \
                 quota_images, bootstrap, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8)",
        )
        .bind(key.id)
        .bind(key.name)
        .bind(self.hash(key.secret))
        .bind(HMAC_KIND)
        .bind(key.scopes.join(","))
        .bind(key.images_per_minute.map(i64::from))
        .bind(key.quota_images.map(|n| n as i64))
        .bind(now_ms())
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Make the bootstrap keys exactly `secrets` (each with `scopes`): new ones are added, a
    /// revoked one given again is live again, and bootstrap keys no longer given are revoked.
    /// Keys created through the API are untouched.
    pub async fn sync_bootstrap(
        &self,
        secrets: &[String],
        scopes: &[String],
    ) -> Result<BootstrapKeys> {
        for secret in secrets {
            self.upgrade_legacy(secret).await?;
        }
        let hashes: Vec<Vec<u8>> = secrets.iter().map(|s| self.hash(s)).collect();
        let mut tx = self.db.pool.begin().await?;
        let now = now_ms();
        for hash in &hashes {
            sqlx::query(
                "INSERT INTO api_keys (id, name, secret_hash, hash_kind, scopes, bootstrap, created_at) \
                 VALUES ($1, 'bootstrap (--api-key)', $2, $3, $4, 1, $5) \
                 ON CONFLICT (secret_hash) DO UPDATE SET scopes = excluded.scopes, \
                     revoked_at = NULL, bootstrap = 1, images_per_minute = NULL, quota_images = NULL",
            )
            .bind(bootstrap_id(hash))
            .bind(hash)
            .bind(HMAC_KIND)
            .bind(scopes.join(","))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let live: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, secret_hash FROM api_keys WHERE bootstrap = 1 AND revoked_at IS NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut revoked = 0;
        for (id, hash) in live {
            if !hashes.contains(&hash) {
                sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                revoked += 1;
            }
        }
        tx.commit().await?;
        Ok(BootstrapKeys {
            active: hashes.len(),
            revoked,
        })
    }

    /// A row hashed the old way (plain SHA-256) is rewritten under the pepper once its secret
    /// is seen; true if one was.
    async fn upgrade_legacy(&self, secret: &str) -> Result<bool> {
        let legacy = Sha256::digest(secret.as_bytes()).to_vec();
        // Read first: a wrong key (the common case under attack) must not take the write lock.
        let id: Option<String> =
            sqlx::query_scalar("SELECT id FROM api_keys WHERE secret_hash = $1 AND hash_kind = $2")
                .bind(&legacy)
                .bind(LEGACY_KIND)
                .fetch_optional(&self.db.pool)
                .await?;
        let Some(id) = id else { return Ok(false) };
        let done = sqlx::query(
            "UPDATE api_keys SET secret_hash = $1, hash_kind = $2 WHERE id = $3 AND hash_kind = $4",
        )
        .bind(self.hash(secret))
        .bind(HMAC_KIND)
        .bind(&id)
        .bind(LEGACY_KIND)
        .execute(&self.db.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The live key whose secret this is, if any.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<KeyRow>> {
        let presented = self.hash(secret);
        let find = || {
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {KEY_COLUMNS}, secret_hash FROM api_keys \
                 WHERE secret_hash = $1 AND hash_kind = $2 AND revoked_at IS NULL"
            )))
            .bind(&presented)
            .bind(HMAC_KIND)
        };
        let mut row = find().fetch_optional(&self.db.pool).await?;
        if row.is_none() && self.upgrade_legacy(secret).await? {
            row = find().fetch_optional(&self.db.pool).await?;
        }
        let Some(row) = row else { return Ok(None) };
        let stored: Vec<u8> = row.try_get("secret_hash")?;
        if !bool::from(stored.ct_eq(&presented)) {
            return Ok(None);
        }
        Ok(Some(KeyRow::from_row(&row)?))
    }

    pub async fn key(&self, id: &str) -> Result<Option<KeyRow>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(KeyRow::from_row).transpose()
    }

    pub async fn list(&self) -> Result<Vec<KeyRow>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
        )))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(KeyRow::from_row).collect()
    }

    /// Revoke a key; false if there was no such live key.
    pub async fn revoke(&self, id: &str) -> Result<bool> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(&self.db.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn live_count(&self) -> Result<u64> {
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL")
                .fetch_one(&self.db.pool)
                .await?;
        Ok(count as u64)
    }

    /// Whether any key, live or revoked, was ever stored: once one was, the server never
    /// runs open again (revoking every key must not let anonymous callers in).
    pub async fn any_ever(&self) -> Result<bool> {
        let any: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM (SELECT 1 FROM api_keys LIMIT 1) AS any_key")
                .fetch_one(&self.db.pool)
                .await?;
        Ok(any != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tests::on_both;

    fn keys(db: &Db) -> Keys {
        Keys::new(db.clone(), b"pepper".to_vec())
    }

    #[tokio::test]
    async fn keys_are_found_by_secret_and_revoked() {
        on_both(keys_are_found_by_secret_and_revoked_on).await;
    }

    async fn keys_are_found_by_secret_and_revoked_on(db: Db) {
        let keys = keys(&db);
        assert!(!keys.any_ever().await.unwrap());
        let scopes = ["generate".to_string()];
        keys.insert(&NewKey {
            id: "key_1",
            name: "ci",
            secret: "sb-secret",
            scopes: &scopes,
            images_per_minute: Some(10),
            quota_images: None,
        })
        .await
        .unwrap();
        let key = keys.authenticate("sb-secret").await.unwrap().unwrap();
        assert_eq!(key.id, "key_1");
        assert!(key.has_scope("generate") && !key.has_scope("admin"));
        assert_eq!(key.images_per_minute, Some(10));
        assert_eq!(keys.authenticate("sb-secreT").await.unwrap(), None);
        assert_eq!(keys.live_count().await.unwrap(), 1);
        assert!(keys.revoke("key_1").await.unwrap());
        assert!(!keys.revoke("key_1").await.unwrap());
        assert_eq!(keys.authenticate("sb-secret").await.unwrap(), None);
        assert_eq!(keys.list().await.unwrap().len(), 1);
        assert_eq!(keys.live_count().await.unwrap(), 0);
        assert!(keys.any_ever().await.unwrap());
    }

    #[tokio::test]
    async fn hashes_are_keyed_so_the_database_alone_does_not_check_a_guess() {
        on_both(hashes_are_keyed_so_the_database_alone_does_not_check_a_guess_on).await;
    }

    async fn hashes_are_keyed_so_the_database_alone_does_not_check_a_guess_on(db: Db) {
        let scopes = ["generate".to_string()];
        keys(&db)
            .insert(&NewKey {
                id: "key_1",
                name: "weak",
                secret: "password1",
                scopes: &scopes,
                images_per_minute: None,
                quota_images: None,
            })
            .await
            .unwrap();
        let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_hash FROM api_keys")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(stored.len(), 32);
        assert_ne!(stored, Sha256::digest(b"password1").to_vec());
        // Another pepper (a stolen database without the server's secret file) finds nothing.
        let other = Keys::new(db.clone(), b"another".to_vec());
        assert_eq!(other.authenticate("password1").await.unwrap(), None);
        assert!(keys(&db).authenticate("password1").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn legacy_sha256_rows_still_work_and_are_rewritten() {
        on_both(legacy_sha256_rows_still_work_and_are_rewritten_on).await;
    }

    async fn legacy_sha256_rows_still_work_and_are_rewritten_on(db: Db) {
        sqlx::query(
            "INSERT INTO api_keys (id, name, secret_hash, scopes, bootstrap, created_at) \
             VALUES ('key_old', 'old', $1, 'generate', 0, 0)",
        )
        .bind(Sha256::digest(b"sb-old").to_vec())
        .execute(&db.pool)
        .await
        .unwrap();
        let keys = keys(&db);
        assert_eq!(keys.authenticate("sb-wrong").await.unwrap(), None);
        let key = keys.authenticate("sb-old").await.unwrap().unwrap();
        assert_eq!(key.id, "key_old");
        let kind: String = sqlx::query_scalar("SELECT hash_kind FROM api_keys")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(kind, HMAC_KIND);
        assert!(keys.authenticate("sb-old").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn bootstrap_keys_follow_the_command_line() {
        on_both(bootstrap_keys_follow_the_command_line_on).await;
    }

    async fn bootstrap_keys_follow_the_command_line_on(db: Db) {
        let keys = keys(&db);
        let all = ["generate".to_string(), "admin".to_string()];
        let one = |s: &str| vec![s.to_string()];
        let synced = keys.sync_bootstrap(&one("first"), &all).await.unwrap();
        assert_eq!(
            synced,
            BootstrapKeys {
                active: 1,
                revoked: 0
            }
        );
        // The same flag again changes nothing; a new value replaces the old one.
        keys.sync_bootstrap(&one("first"), &all).await.unwrap();
        assert_eq!(keys.live_count().await.unwrap(), 1);
        let synced = keys.sync_bootstrap(&one("second"), &all).await.unwrap();
        assert_eq!(
            synced,
            BootstrapKeys {
                active: 1,
                revoked: 1
            }
        );
        assert_eq!(keys.authenticate("first").await.unwrap(), None);
        let second = keys.authenticate("second").await.unwrap().unwrap();
        assert!(second.bootstrap && second.has_scope("admin"));
        // Keys made through the API survive; no flag at all revokes every bootstrap key.
        keys.insert(&NewKey {
            id: "key_api",
            name: "api",
            secret: "sb-api",
            scopes: &one("generate"),
            images_per_minute: None,
            quota_images: None,
        })
        .await
        .unwrap();
        let synced = keys.sync_bootstrap(&[], &all).await.unwrap();
        assert_eq!(
            synced,
            BootstrapKeys {
                active: 0,
                revoked: 1
            }
        );
        assert_eq!(keys.authenticate("second").await.unwrap(), None);
        assert!(keys.authenticate("sb-api").await.unwrap().is_some());
        // Given again later, a revoked bootstrap key is live again.
        keys.sync_bootstrap(&one("first"), &all).await.unwrap();
        assert!(keys.authenticate("first").await.unwrap().is_some());
    }
}
