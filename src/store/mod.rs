//! The service's SQL (besides `migrations/`), one file per table family.
//! Bulk writes use `UNNEST` so a batch of thousands of claims is a handful
//! of statements. Exact accrual units (numerators up to ~10^36) travel as
//! text into NUMERIC. The finance commands (`crate::finance`) keep their own
//! set-based reporting SQL over the finance tables; they share `connect` and
//! the units helpers from here.
//!
//! May import: `crate::money`, `crate::claims` and `crate::wire` (the types
//! it stores); never the service (`crate::service`) or Kafka.

mod accounts;
mod claims;
pub mod dburl;
mod dead_letters;
mod explain;
pub mod failover;
mod history;
mod offsets;
mod payouts;
mod plans;
pub mod retention;

pub use accounts::*;
pub use claims::*;
pub use dead_letters::*;
pub use explain::*;
pub use history::*;
pub use offsets::*;
pub use payouts::*;
pub use plans::*;

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use crate::money::Accrued;

pub type Tx<'a> = Transaction<'a, Postgres>;

/// Connection pool sized for a worker's or API's needs; fails fast when the
/// database is down so callers can answer 503 instead of hanging. A
/// multi-host `DATABASE_URL` (or `target_session_attrs=read-write`) gives a
/// pool that follows a failover to the read-write host ([`failover`]).
pub async fn connect(url: &secrecy::SecretString, max_connections: u32) -> anyhow::Result<PgPool> {
    connect_as(url, max_connections, &Session::SERVICE).await
}

/// How a pool's sessions present themselves and run.
pub struct Session<'a> {
    /// `application_name`: how an operator tells the finance commands from
    /// the service in `pg_stat_activity`.
    pub application_name: &'a str,
    /// Whether sqlx logs each statement (a report written to stdout wants quiet).
    pub log_statements: bool,
    /// `false` turns PostgreSQL's JIT off for these sessions. The batch
    /// commands (close-day, maintain) run thousands of short, index-driven
    /// statements whose planner estimates grow with the tables; past the
    /// JIT cost threshold each one paid tens of milliseconds of compilation,
    /// so a night's close grew with the bank's age (docs/CAPACITY.md, aged).
    pub jit: bool,
    /// `lock_timeout` of every statement: a statement that would wait longer
    /// for a row another transaction holds fails with SQLSTATE 55P03
    /// ([`is_lock_timeout`]) instead of waiting, so its connection comes back
    /// to the pool. `None`: PostgreSQL's default (wait).
    pub lock_timeout_ms: Option<u32>,
}

impl Session<'static> {
    /// The service's sessions ([`connect`]).
    pub const SERVICE: Session<'static> = Session {
        application_name: "interest-now",
        log_statements: true,
        jit: true,
        lock_timeout_ms: None,
    };
}

/// Like [`connect`], with the sessions' [`Session`] settings.
pub async fn connect_as(
    url: &secrecy::SecretString,
    max_connections: u32,
    session: &Session<'_>,
) -> anyhow::Result<PgPool> {
    use sqlx::ConnectOptions;
    let parsed = dburl::DbUrl::parse(url.expose_secret()).map_err(anyhow::Error::msg)?;
    let mut hosts = Vec::with_capacity(parsed.hosts.len());
    for host in parsed.hosts {
        let mut options: PgConnectOptions = host.url.parse().context("DATABASE_URL")?;
        options = options.application_name(session.application_name);
        if !session.log_statements {
            options = options.disable_statement_logging();
        }
        if !session.jit {
            options = options.options([("jit", "off")]);
        }
        if let Some(ms) = session.lock_timeout_ms {
            options = options.options([("lock_timeout", ms.to_string())]);
        }
        hosts.push(failover::Host {
            label: host.label,
            options,
        });
    }
    let pool_options = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3));
    let pool = if parsed.read_write {
        failover::connect(hosts, pool_options).await
    } else {
        let single = hosts.pop().expect("one host").options;
        pool_options.connect_with(single).await.map_err(anyhow::Error::from)
    };
    pool.context("connecting to PostgreSQL")
}

/// Whether `error` is a statement that gave up waiting for a lock
/// (`lock_timeout`, SQLSTATE 55P03), wherever it sits in the chain.
pub fn is_lock_timeout(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<sqlx::Error>()
            .and_then(sqlx::Error::as_database_error)
            .and_then(|d| d.code())
            .is_some_and(|code| code == "55P03")
    })
}

/// Begins a worker batch's transaction, which PostgreSQL ends (killing the
/// session) if it sits idle longer than `idle_limit` between statements: a
/// worker frozen or cut off mid-batch holds its accounts' and keys' row
/// locks only that long, not until it wakes, so the worker that takes its
/// partitions over is not stalled behind them (docs/RELIABILITY.md, drill 2).
/// What the frozen worker held is rolled back; when it wakes, its batch fails
/// and is retried under the fencing epoch, which refuses it.
pub async fn begin_batch(pool: &PgPool, idle_limit: Duration) -> anyhow::Result<Tx<'static>> {
    let mut tx = pool.begin().await?;
    let ms = idle_limit.as_millis().clamp(1, i32::MAX as u128);
    sqlx::query(&format!("SET LOCAL idle_in_transaction_session_timeout = {ms}"))
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// A database round trip within `limit`: the health probe of readiness and
/// of the API's database watch.
pub async fn ping(pool: &PgPool, limit: Duration) -> bool {
    let probe = sqlx::query("SELECT 1").execute(pool);
    tokio::time::timeout(limit, probe).await.is_ok_and(|r| r.is_ok())
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::migrate!("./migrations")
        .run(pool)
        .await
        .context("applying migrations")?;
    Ok(())
}

// ---- exact units and instants ------------------------------------------------

pub fn units_text(a: Accrued) -> String {
    a.0.to_string()
}

pub(crate) fn units_parse(s: &str) -> anyhow::Result<Accrued> {
    Ok(Accrued(units(s)?))
}

/// Exact accrual units as stored (`NUMERIC(40,0)` read as text).
pub fn units(text: &str) -> anyhow::Result<i128> {
    text.parse().with_context(|| format!("units value {text:?}"))
}

pub fn secs_utc(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).expect("in range")
}
