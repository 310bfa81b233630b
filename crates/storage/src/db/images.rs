//! Records of stored output images and their expiry.

use sqlx::AnyConnection;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::Db;
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRow {
    pub job_id: String,
    pub index: u32,
    pub blob_key: String,
    pub width: u32,
    pub height: u32,
    /// `jpeg` or `png`.
    pub format: String,
    pub bytes: u64,
    pub created_at: i64,
    pub expires_at: i64,
}

impl ImageRow {
    fn from_row(row: &AnyRow) -> Result<Self> {
        Ok(Self {
            job_id: row.try_get("job_id")?,
            index: row.try_get::<i64, _>("idx")? as u32,
            blob_key: row.try_get("blob_key")?,
            width: row.try_get::<i64, _>("width")? as u32,
            height: row.try_get::<i64, _>("height")? as u32,
            format: row.try_get("format")?,
            bytes: row.try_get::<i64, _>("bytes")? as u64,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
        })
    }
}

impl Db {
    /// Record an image whoever holds its job (tests, tools; the runner's are fenced).
    pub async fn put_image(&self, image: &ImageRow) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        put_image_in(&mut conn, image).await
    }

    pub async fn image(&self, job_id: &str, index: u32) -> Result<Option<ImageRow>> {
        let row = sqlx::query("SELECT * FROM images WHERE job_id = $1 AND idx = $2")
            .bind(job_id)
            .bind(i64::from(index))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(ImageRow::from_row).transpose()
    }

    pub async fn job_images(&self, job_id: &str) -> Result<Vec<ImageRow>> {
        let rows = sqlx::query("SELECT * FROM images WHERE job_id = $1 ORDER BY idx")
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(ImageRow::from_row).collect()
    }

    /// Up to `limit` images whose time ran out before `now`.
    pub async fn expired_images(&self, now: i64, limit: u32) -> Result<Vec<ImageRow>> {
        let rows =
            sqlx::query("SELECT * FROM images WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2")
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(ImageRow::from_row).collect()
    }

    pub async fn delete_image(&self, job_id: &str, index: u32) -> Result<()> {
        sqlx::query("DELETE FROM images WHERE job_id = $1 AND idx = $2")
            .bind(job_id)
            .bind(i64::from(index))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Record a stored image (again, when a re-run job stores it anew).
pub(crate) async fn put_image_in(conn: &mut AnyConnection, image: &ImageRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO images (job_id, idx, blob_key, width, height, format, bytes, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (job_id, idx) DO UPDATE SET blob_key = excluded.blob_key, width = excluded.width, \
             height = excluded.height, format = excluded.format, bytes = excluded.bytes, \
             created_at = excluded.created_at, expires_at = excluded.expires_at",
    )
    .bind(&image.job_id)
    .bind(i64::from(image.index))
    .bind(&image.blob_key)
    .bind(i64::from(image.width))
    .bind(i64::from(image.height))
    .bind(&image.format)
    .bind(image.bytes as i64)
    .bind(image.created_at)
    .bind(image.expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tests::on_both;

    #[tokio::test]
    async fn images_are_recorded_replaced_and_expire() {
        on_both(images_are_recorded_replaced_and_expire_on).await;
    }

    async fn images_are_recorded_replaced_and_expire_on(db: Db) {
        let mut image = ImageRow {
            job_id: "job_1".into(),
            index: 0,
            blob_key: "images/job_1/0.jpeg".into(),
            width: 64,
            height: 32,
            format: "jpeg".into(),
            bytes: 100,
            created_at: 1,
            expires_at: 1000,
        };
        db.put_image(&image).await.unwrap();
        image.bytes = 200;
        db.put_image(&image).await.unwrap();
        assert_eq!(db.image("job_1", 0).await.unwrap(), Some(image.clone()));
        assert_eq!(db.job_images("job_1").await.unwrap().len(), 1);
        assert!(db.expired_images(999, 10).await.unwrap().is_empty());
        assert_eq!(db.expired_images(1000, 10).await.unwrap(), [image]);
        db.delete_image("job_1", 0).await.unwrap();
        assert_eq!(db.image("job_1", 0).await.unwrap(), None);
    }
}
