//! A task of `serve` that dies takes the process down (issue 15, item 3):
//! the answer listener, once the database has refused it for 30 s, ends; the
//! supervisor logs `task_failed` and the process exits non-zero.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::harness::{admin_db_url, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_whose_answer_listener_dies_exits_non_zero() {
    let env = Env::new(1).await;
    let mut api = env.serve("api", &[]).await;
    let admin = PgPool::connect(&admin_db_url()).await.unwrap();
    // No new session may open; then the service's sessions (the LISTEN one
    // among them) are cut.
    sqlx::query(&format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false", env.name))
        .execute(&admin)
        .await
        .unwrap();
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND application_name = 'interest-now'",
    )
    .bind(&env.name)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(!cut.is_empty(), "no service session to cut");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = api.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the API kept running without its answer listener (log: {})",
            api.log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "exited with {status}");
    let log = std::fs::read_to_string(&api.log).unwrap();
    assert!(log.contains("answer_listener_failed"), "{log}");
    assert!(log.contains("task_failed"), "{log}");
    sqlx::query(&format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", env.name))
        .execute(&admin)
        .await
        .unwrap();
    env.drop_db().await;
}
