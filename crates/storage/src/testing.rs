//! TEMPORARY (replaced by the helper's testing module on merge).
use std::sync::atomic::{AtomicUsize, Ordering};

pub async fn postgres_url() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let server = std::env::var("SEEDBED_TEST_POSTGRES_URL").expect("SEEDBED_TEST_POSTGRES_URL");
    let name = format!(
        "t{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        seedbed_types::now_ms()
    );
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&server).await.unwrap();
    sqlx::Executor::execute(
        &mut conn,
        sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")),
    )
    .await
    .unwrap();
    let base = server.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}
