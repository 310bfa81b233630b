//! Stored images live as long as their links (`image_ttl`): the janitor deletes them when
//! their time runs out. Apart from the runner since it touches no job.

use std::time::Duration;

use seedbed_storage::now_ms;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::jobs::Jobs;

impl Jobs {
    /// Delete images whose time ran out, every minute until `shutdown`.
    pub fn start_janitor(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        let jobs = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = shutdown.cancelled() => break,
                }
                match jobs.delete_expired().await {
                    Ok(0) => {}
                    Ok(count) => tracing::info!(count, "deleted expired images"),
                    Err(error) => tracing::error!(%error, "deleting expired images failed"),
                }
            }
        })
    }

    /// Delete every expired image (bytes first, then the record); returns how many.
    pub async fn delete_expired(&self) -> Result<usize> {
        let mut deleted = 0;
        loop {
            let expired = self.inner.db.expired_images(now_ms(), 100).await?;
            if expired.is_empty() {
                return Ok(deleted);
            }
            for image in expired {
                self.inner.blobs.delete(&image.blob_key).await?;
                self.inner
                    .db
                    .delete_image(&image.job_id, image.index)
                    .await?;
                deleted += 1;
            }
        }
    }
}
