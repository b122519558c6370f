//! Least privilege (issue 15, item 7): the service runs as a login granted
//! only `interest_now_app` (DML, no DDL, no DELETE), `finance_reader` is a
//! group role nobody logs in as, and only the owner creates in the schema.
//! Roles are cluster-wide: each test makes logins with unique names and
//! drops them at the end.

use chrono::Duration as Dur;
use interest_now::money::types::format_instant;
use sqlx::PgPool;

use crate::harness::{admin_db_url, now, Env};

/// A LOGIN role with a password, granted `group` (or nothing), and the
/// environment's database URL as that role.
pub struct Login {
    pub name: String,
    pub url: String,
}

impl Login {
    pub async fn create(env: &Env, group: Option<&str>) -> Login {
        let name = format!("it_login_{}", uuid::Uuid::new_v4().simple());
        let password = uuid::Uuid::new_v4().simple().to_string();
        let admin = PgPool::connect(&admin_db_url()).await.unwrap();
        let grant = group.map(|g| format!(" IN ROLE {g}")).unwrap_or_default();
        sqlx::query(&format!("CREATE ROLE {name} LOGIN PASSWORD '{password}'{grant}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let url = env
            .db_url
            .replacen("://postgres@", &format!("://{name}:{password}@"), 1);
        assert_ne!(url, env.db_url, "TEST_DATABASE_URL connects as postgres");
        Login { name, url }
    }

    /// Drops the login (after the database that granted it anything is gone).
    pub async fn drop(self) {
        let admin = PgPool::connect(&admin_db_url()).await.unwrap();
        sqlx::query(&format!("DROP ROLE IF EXISTS {}", self.name))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
    }
}

/// The SQLSTATE of a statement that must fail.
async fn refused(pool: &PgPool, sql: &str) -> String {
    let err = sqlx::query(sql).execute(pool).await.expect_err(sql);
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_as_the_application_role_which_has_no_ddl_and_no_delete() {
    let env = Env::new(2).await;
    let app = Login::create(&env, Some("interest_now_app")).await;
    let svc = env.serve("all", &[("DATABASE_URL", &app.url)]).await;
    env.snapshot("priv-a", 1, "100000000", &format_instant(now() - Dur::days(2)))
        .await;
    env.wait_accounts(1).await;
    let paid = svc.claim_to_end("priv-a", "priv-k").await;
    assert_eq!(paid.status, 201, "{:?}", paid.body);
    let replay = svc.claim("priv-a", "priv-k").await;
    assert!(replay.replayed, "replayed through the app role");
    assert_eq!(env.payout_count().await, 1);
    drop(svc);

    let pool = PgPool::connect(&app.url).await.unwrap();
    for sql in [
        "CREATE TABLE app_made (x int)",
        "DROP TABLE claims",
        "ALTER TABLE accounts ADD COLUMN x int",
        "TRUNCATE idempotency_keys",
        "DELETE FROM interest_payouts",
        "DELETE FROM claims",
        "CREATE INDEX ON accounts (currency)",
    ] {
        assert_eq!(refused(&pool, sql).await, "42501", "{sql}");
    }
    pool.close().await;
    env.drop_db().await;
    app.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finance_reader_is_a_group_and_only_the_owner_creates_in_the_schema() {
    let env = Env::new(1).await;
    // Nobody logs in as the group itself.
    let direct = env.db_url.replacen("://postgres@", "://finance_reader@", 1);
    let err = PgPool::connect(&direct).await.expect_err("finance_reader is NOLOGIN");
    let code = err.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("28000"), "{err}");
    // A login with no grants cannot create objects in the schema.
    let nobody = Login::create(&env, None).await;
    let pool = PgPool::connect(&nobody.url).await.unwrap();
    assert_eq!(refused(&pool, "CREATE TABLE public.anyone_made (x int)").await, "42501");
    assert_eq!(refused(&pool, "SELECT * FROM interest_payouts").await, "42501");
    pool.close().await;
    env.drop_db().await;
    nobody.drop().await;
}
