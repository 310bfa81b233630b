//! The nodes sharing the database and what each runs: a node announces its catalog (opaque
//! JSON, made by the core) at start and with every reaping pass; the others read those seen
//! recently, so a request for a model only another node has is accepted anywhere.

use sqlx::Row;

use super::Db;
use crate::error::Result;
use crate::now_ms;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub id: String,
    pub catalog: String,
    pub started_at: i64,
    pub seen_at: i64,
}

impl Db {
    /// Say that `node` is alive and runs what `catalog` says.
    pub async fn announce_node(&self, node: &str, catalog: &str) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO nodes (id, catalog, started_at, seen_at) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (id) DO UPDATE SET catalog = excluded.catalog, seen_at = excluded.seen_at",
        )
        .bind(node)
        .bind(catalog)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The nodes seen since `since` (unix ms), oldest first.
    pub async fn nodes_seen_since(&self, since: i64) -> Result<Vec<NodeRow>> {
        let rows = sqlx::query(
            "SELECT id, catalog, started_at, seen_at FROM nodes WHERE seen_at >= $1 \
             ORDER BY started_at, id",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(NodeRow {
                    id: row.try_get("id")?,
                    catalog: row.try_get("catalog")?,
                    started_at: row.try_get("started_at")?,
                    seen_at: row.try_get("seen_at")?,
                })
            })
            .collect()
    }

    /// A node leaving on purpose (graceful shutdown): the others stop offering its models now
    /// rather than when its announcement goes stale.
    pub async fn retire_node(&self, node: &str) -> Result<()> {
        sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tests::on_both;

    #[tokio::test]
    async fn nodes_announce_and_retire() {
        on_both(|db| async move {
            db.announce_node("a", "{\"m\":1}").await.unwrap();
            db.announce_node("b", "{}").await.unwrap();
            db.announce_node("a", "{\"m\":2}").await.unwrap();
            let nodes = db.nodes_seen_since(0).await.unwrap();
            let seen: Vec<_> = nodes
                .iter()
                .map(|n| (n.id.as_str(), n.catalog.as_str()))
                .collect();
            assert_eq!(seen, [("a", "{\"m\":2}"), ("b", "{}")]);
            assert!(
                db.nodes_seen_since(now_ms() + 1000)
                    .await
                    .unwrap()
                    .is_empty()
            );
            db.retire_node("a").await.unwrap();
            assert_eq!(db.nodes_seen_since(0).await.unwrap().len(), 1);
        })
        .await;
    }
}
