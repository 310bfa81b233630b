//! What nodes sharing a Postgres database tell each other, through `NOTIFY`: a job was
//! queued, a job has new events, a job should stop. Each is sent inside the transaction that
//! made it true, so it arrives only once that transaction is committed. A notice is a wake-up,
//! never the only way to learn something: every listener also polls, slowly, so a notice lost
//! while a connection was down costs latency, not correctness. SQLite has no notices; nodes
//! there poll.

use sqlx::AnyConnection;
use sqlx::postgres::PgListener;

use super::{Backend, Db, Lane};
use crate::error::Result;

const CHANNEL: &str = "seedbed";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A job entered `lane`'s queue (new, or put back).
    Queued(Lane),
    /// The job's event log grew.
    Events(String),
    /// A client asked the job to stop.
    Cancel(String),
}

impl Notice {
    fn payload(&self) -> String {
        match self {
            Self::Queued(lane) => format!("queued {}", lane.as_str()),
            Self::Events(id) => format!("events {id}"),
            Self::Cancel(id) => format!("cancel {id}"),
        }
    }

    fn parse(payload: &str) -> Option<Self> {
        let (kind, arg) = payload.split_once(' ')?;
        Some(match kind {
            "queued" => Self::Queued(Lane::parse(arg)?),
            "events" => Self::Events(arg.to_string()),
            "cancel" => Self::Cancel(arg.to_string()),
            _ => return None,
        })
    }
}

/// Other nodes' notices (this node's own arrive too), as they come.
pub struct Notices {
    listener: PgListener,
}

impl Notices {
    /// The next notice; an error when the connection dropped (the listener reconnects on the
    /// next call: poll for what may have been missed).
    pub async fn next(&mut self) -> Result<Notice> {
        loop {
            let notification = self.listener.recv().await?;
            if let Some(notice) = Notice::parse(notification.payload()) {
                return Ok(notice);
            }
            tracing::debug!(
                payload = notification.payload(),
                "ignored an unknown notice"
            );
        }
    }
}

impl Db {
    /// Listen to every node's notices; `None` on SQLite, which has none.
    pub async fn listen(&self) -> Result<Option<Notices>> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let mut listener = PgListener::connect(&self.url).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(Notices { listener }))
    }

    /// Send `notice` when the transaction on `conn` commits (nothing on SQLite).
    pub(crate) async fn notify_in(&self, conn: &mut AnyConnection, notice: &Notice) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT 1 FROM pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(notice.payload())
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Hold the job's row until the transaction on `conn` ends, so writers of one job take
    /// turns (SQLite's single write lock does this already).
    pub(crate) async fn lock_job_in(&self, conn: &mut AnyConnection, id: &str) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_read_back() {
        for notice in [
            Notice::Queued(Lane::Local),
            Notice::Queued(Lane::Gateway),
            Notice::Events("job_1".into()),
            Notice::Cancel("job_2".into()),
        ] {
            assert_eq!(Notice::parse(&notice.payload()), Some(notice));
        }
        assert_eq!(Notice::parse("queued nowhere"), None);
        assert_eq!(Notice::parse("garbage"), None);
    }
}
