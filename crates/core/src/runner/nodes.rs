//! What a node does beside running jobs, as one of several sharing a database: reap the
//! jobs of nodes that died, tell the others what it runs and learn what they run, and act on
//! their notices (a job queued, events appended, a cancel).

use std::sync::Arc;
use std::time::Duration;

use seedbed_storage::{EndGuard, JobStatus, Lane, Notice, now_ms};
use seedbed_types::ErrorCode;
use tokio_util::sync::CancellationToken;

use crate::backend::Failure;
use crate::catalog::Announcement;
use crate::error::Result;
use crate::jobs::Jobs;

impl Jobs {
    /// Every half lease until `shutdown`: put back the jobs of nodes that died, tell the
    /// other nodes what this one runs and learn what they run. On the way out, this node
    /// stops announcing itself.
    pub(super) async fn run_reaper(&self, shutdown: CancellationToken) {
        let every = self.inner.config.lease / 2;
        loop {
            if let Err(error) = self.refresh_peers().await {
                tracing::warn!(%error, "exchanging model lists with other nodes failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => break,
            }
            if let Err(error) = self.reap(None).await {
                tracing::warn!(%error, "reaping expired leases failed");
            }
        }
        let inner = &self.inner;
        if let Err(error) = inner.db.retire_node(&inner.config.node_id).await {
            tracing::warn!(%error, "removing this node's announcement failed");
        }
    }

    /// Announce what this node runs; take in what the others announced, where they were seen
    /// within three leases (a node gone longer is dead, and its models with it). The runner
    /// does this every half lease; a server does it once before it listens, so its first
    /// request already sees the other nodes' models.
    pub async fn refresh_peers(&self) -> Result<()> {
        let inner = &self.inner;
        let runs = inner.config.runs;
        let mine = inner.catalog.announcement(runs.local, runs.gateway);
        let json = serde_json::to_string(&mine)
            .map_err(|e| crate::error::CoreError::Internal(format!("announcement: {e}")))?;
        let node = &inner.config.node_id;
        inner.db.announce_node(node, &json).await?;
        let since = now_ms() - 3 * inner.config.lease.as_millis() as i64;
        let mut peers = Announcement::default();
        for other in inner.db.nodes_seen_since(since).await? {
            if other.id == *node {
                continue;
            }
            match serde_json::from_str::<Announcement>(&other.catalog) {
                Ok(announced) => {
                    for (name, model) in announced.models {
                        peers.models.entry(name).or_insert(model);
                    }
                    peers.relayed.extend(announced.relayed);
                }
                Err(error) => {
                    tracing::warn!(node = %other.id, %error, "ignoring another node's model list")
                }
            }
        }
        let merged = Arc::new(inner.catalog.with_peers(peers));
        match inner.cluster_catalog.write() {
            Ok(mut current) => *current = merged,
            Err(poisoned) => *poisoned.into_inner() = merged,
        }
        Ok(())
    }

    /// Act on other nodes' notices until `shutdown`; returns at once where there are none.
    pub(super) async fn listen(&self, shutdown: CancellationToken) {
        let inner = &self.inner;
        let mut notices = match inner.db.listen().await {
            Ok(Some(notices)) => notices,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "cannot listen to other nodes: polling only");
                return;
            }
        };
        inner
            .listening
            .store(true, std::sync::atomic::Ordering::Relaxed);
        loop {
            let notice = tokio::select! {
                notice = notices.next() => notice,
                _ = shutdown.cancelled() => return,
            };
            match notice {
                Ok(Notice::Queued(Lane::Local)) => inner.wake.notify_one(),
                Ok(Notice::Queued(Lane::Gateway)) => inner.wake_gateway.notify_one(),
                Ok(Notice::Events(_)) => self.tick(),
                Ok(Notice::Cancel(id)) => {
                    if let Some(cancel) = self.running_token(&id) {
                        cancel.cancel();
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "lost the notice connection: reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    // Whatever was missed meanwhile: look again.
                    inner.wake.notify_one();
                    inner.wake_gateway.notify_one();
                    self.tick();
                }
            }
        }
    }

    /// Requeue the jobs of dead nodes (their lease ran out) and, after a restart, this
    /// node's own from before (`restarted`); those tried too often fail.
    pub(crate) async fn reap(&self, restarted: Option<&str>) -> Result<()> {
        let config = &self.inner.config;
        let recovered = self.inner.db.reap(restarted, config.max_attempts).await?;
        for id in &recovered.requeued {
            tracing::warn!(job = %id, "requeued a job interrupted by a restart or a dead node");
        }
        if !recovered.requeued.is_empty() {
            for lane in [Lane::Local, Lane::Gateway] {
                self.tell_positions(lane).await;
            }
        }
        for id in &recovered.exhausted {
            let message = format!(
                "the job was interrupted {} times and will not run again.",
                config.max_attempts
            );
            let failure = Failure::new(ErrorCode::RetriesExhausted, message.clone());
            let guard = EndGuard::Abandoned { restarted };
            if self
                .end(id, JobStatus::Failed, &failure.into_event(), guard, None)
                .await?
            {
                tracing::error!(job = %id, "{message}");
            }
        }
        Ok(())
    }
}
