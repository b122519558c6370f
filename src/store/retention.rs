//! Retention: the SQL of `interest-now maintain` (`crate::maintain` decides
//! what to do and when; this file only does it, each step in its own short
//! transaction).
//!
//! * Partitions (migrations/20261203000004_partitions.sql): a partition is
//!   named `<table>_pYYYYMMDD` (one KST day) or `<table>_pYYYYMM` (one month)
//!   and holds exactly that range, so its bounds are read from its name.
//!   Every DDL statement runs with `lock_timeout` [`DDL_LOCK_TIMEOUT_MS`]:
//!   `CREATE TABLE … PARTITION OF` and `DROP TABLE` of a partition need an
//!   ACCESS EXCLUSIVE lock on the parent for a moment, and a DDL statement
//!   waiting for its lock makes every later query of the table queue behind
//!   it. A short timeout bounds that queue; a timed-out step is retried
//!   [`DDL_ATTEMPTS`] times and then left for the next run.
//! * `idempotency_keys` and `balance_points` are pruned with small DELETEs
//!   ([`DELETE_BATCH_ROWS`] rows, one autocommitted statement each): no long
//!   lock, and autovacuum keeps up with the dead rows.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Datelike, Days, Months, NaiveDate, Utc};
use sqlx::PgPool;

use crate::money::types::kst_midnight_utc;

/// How long a DDL statement may wait for its lock before it gives up.
pub const DDL_LOCK_TIMEOUT_MS: u64 = 500;
/// Tries of one DDL step whose lock was busy, a second apart.
pub const DDL_ATTEMPTS: u32 = 5;
/// Rows per DELETE statement of idempotency keys (each its own transaction).
pub const DELETE_BATCH_ROWS: i64 = 5_000;
/// Accounts whose balance points one DELETE statement prunes.
pub const PRUNE_ACCOUNTS_PER_BATCH: i64 = 500;

/// The length of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Day,
    Month,
}

impl Step {
    /// The first day of the partition holding `d`.
    pub fn start(self, d: NaiveDate) -> NaiveDate {
        match self {
            Step::Day => d,
            Step::Month => d.with_day0(0).expect("day 1 exists"),
        }
    }

    /// The first day of the next partition.
    pub fn next(self, start: NaiveDate) -> NaiveDate {
        match self {
            Step::Day => start + Days::new(1),
            Step::Month => start + Months::new(1),
        }
    }

    fn suffix(self, start: NaiveDate) -> String {
        match self {
            Step::Day => start.format("%Y%m%d").to_string(),
            Step::Month => start.format("%Y%m").to_string(),
        }
    }
}

/// One partitioned table.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    pub name: &'static str,
    pub step: Step,
    /// The partition key is a `date` (else a `timestamptz`, bounded at 00:00 KST).
    pub date_key: bool,
    /// A condition on a partition's rows that keeps it from being dropped.
    pub blocker: Option<&'static str>,
}

impl Table {
    pub fn partition_name(&self, start: NaiveDate) -> String {
        format!("{}_p{}", self.name, self.step.suffix(start))
    }

    /// The SQL literal of the partition key at 00:00 (KST) of `d`.
    fn bound(&self, d: NaiveDate) -> String {
        if self.date_key {
            format!("'{d}'")
        } else {
            format!("'{}'", kst_midnight_utc(d).format("%Y-%m-%d %H:%M:%S+00"))
        }
    }

    /// The start of the range a partition's name says it holds.
    fn parse(&self, partition: &str) -> Option<NaiveDate> {
        let rest = partition.strip_prefix(self.name)?.strip_prefix("_p")?;
        match (self.step, rest.len()) {
            (Step::Day, 8) => NaiveDate::parse_from_str(rest, "%Y%m%d").ok(),
            (Step::Month, 6) => NaiveDate::parse_from_str(&format!("{rest}01"), "%Y%m%d").ok(),
            _ => None,
        }
    }
}

/// What became of one partition step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Nothing to do: the partition exists (create) or is gone (drop).
    Already,
    /// Left alone, with the reason (rows in DEFAULT for its range; a row
    /// that must be kept; its lock stayed busy).
    Skipped(String),
}

/// The range partitions of `table` (start of each range), DEFAULT excluded.
pub async fn partitions(pool: &PgPool, table: &Table) -> anyhow::Result<Vec<(String, NaiveDate)>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = to_regclass($1) ORDER BY 1",
    )
    .bind(table.name)
    .fetch_all(pool)
    .await
    .with_context(|| format!("listing the partitions of {}", table.name))?;
    Ok(names
        .into_iter()
        .filter_map(|n| table.parse(&n).map(|d| (n, d)))
        .collect())
}

/// Creates the partition of `table` starting at `start`, unless it exists or
/// DEFAULT already holds rows of its range (then it stays there: the safety
/// net keeps them; see ARCHITECTURE.md).
pub async fn create_partition(pool: &PgPool, table: &Table, start: NaiveDate) -> anyhow::Result<Outcome> {
    let name = table.partition_name(start);
    let (lo, hi) = (table.bound(start), table.bound(table.step.next(start)));
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&name)
        .fetch_one(pool)
        .await?;
    if exists {
        return Ok(Outcome::Already);
    }
    let key = partition_key(table);
    let in_default: bool = sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM {t}_default WHERE {key} >= {lo} AND {key} < {hi})",
        t = table.name
    ))
    .fetch_one(pool)
    .await?;
    if in_default {
        return Ok(Outcome::Skipped("the default partition holds rows of its range".into()));
    }
    let ddl = format!(
        "CREATE TABLE {name} PARTITION OF {t} FOR VALUES FROM ({lo}) TO ({hi})",
        t = table.name
    );
    with_lock_timeout(pool, &[ddl]).await
}

fn partition_key(table: &Table) -> &'static str {
    match table.name {
        "claims" => "accepted_at",
        "interest_payouts" => "period_start",
        "daily_accruals" => "business_date",
        _ => "created_at",
    }
}

/// Drops the partition `name` unless one of its rows matches the table's
/// blocker (checked under the same lock as the drop, so no such row can
/// arrive in between). The parent is locked first, as every query locks it.
pub async fn drop_partition(pool: &PgPool, table: &Table, name: &str) -> anyhow::Result<Outcome> {
    let mut steps = vec![format!("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE", table.name)];
    if let Some(blocker) = table.blocker {
        // Raises (SQLSTATE P0001, caught below) when a row must be kept.
        steps.push(format!(
            "DO $$ BEGIN IF EXISTS (SELECT 1 FROM {name} WHERE {blocker}) THEN
                 RAISE EXCEPTION 'interest-now: kept' USING ERRCODE = 'P0001'; END IF; END $$"
        ));
    }
    steps.push(format!("DROP TABLE {name}"));
    match with_lock_timeout(pool, &steps).await {
        Err(e) if sqlstate(&e).as_deref() == Some("P0001") => Ok(Outcome::Skipped(format!(
            "it still has a row with {}",
            table.blocker.unwrap_or("?")
        ))),
        other => other,
    }
}

/// Runs `statements` in one transaction under `lock_timeout`, retried while
/// the lock is busy (SQLSTATE 55P03).
async fn with_lock_timeout(pool: &PgPool, statements: &[String]) -> anyhow::Result<Outcome> {
    for attempt in 1..=DDL_ATTEMPTS {
        let mut tx = pool.begin().await?;
        sqlx::query(&format!("SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT_MS}ms'"))
            .execute(&mut *tx)
            .await?;
        let mut result = Ok(());
        for s in statements {
            result = sqlx::query(s).execute(&mut *tx).await.map(drop);
            if result.is_err() {
                break;
            }
        }
        match result {
            Ok(()) => {
                tx.commit().await?;
                return Ok(Outcome::Done);
            }
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                tx.rollback().await?;
                if attempt < DDL_ATTEMPTS {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Err(e) => return Err(anyhow::Error::from(e).context(statements.last().cloned().unwrap_or_default())),
        }
    }
    Ok(Outcome::Skipped(format!(
        "its lock stayed busy ({DDL_ATTEMPTS} tries of {DDL_LOCK_TIMEOUT_MS} ms)"
    )))
}

fn sqlstate(e: &anyhow::Error) -> Option<String> {
    e.chain()
        .find_map(|c| c.downcast_ref::<sqlx::Error>())
        .and_then(|e| e.as_database_error())
        .and_then(|d| d.code().map(|c| c.into_owned()))
}

/// Deletes idempotency keys that hold an answer or nothing (`answered`,
/// `released`) and were (re)reserved more than `older_than` ago, oldest
/// first, in batches; never a `pending` or `queued` key (its claim is still
/// to be applied). Rows a request or the worker holds are skipped (SKIP
/// LOCKED) and the condition is checked again on the row deleted, so a key
/// retaken in the meantime stays. Returns the rows deleted.
pub async fn delete_expired_keys(pool: &PgPool, older_than: Duration) -> anyhow::Result<u64> {
    let mut deleted = 0;
    loop {
        let n = sqlx::query(
            "WITH doomed AS (
                SELECT client_id, idempotency_key FROM idempotency_keys
                WHERE state IN ('answered', 'released') AND created_at < now() - make_interval(secs => $1)
                ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             DELETE FROM idempotency_keys k USING doomed d
             WHERE k.client_id = d.client_id AND k.idempotency_key = d.idempotency_key
               AND k.state IN ('answered', 'released') AND k.created_at < now() - make_interval(secs => $1)",
        )
        .bind(older_than.as_secs_f64())
        .bind(DELETE_BATCH_ROWS)
        .execute(pool)
        .await
        .context("deleting expired idempotency keys")?
        .rows_affected();
        deleted += n;
        if (n as i64) < DELETE_BATCH_ROWS {
            return Ok(deleted);
        }
    }
}

/// Deletes the balance points no reader can need any more, in batches, and
/// returns how many — visiting every account (the first pass; see
/// [`prune_balance_points_since`] for the incremental runs after it).
///
/// Per account, with `cut = least(accounts.checkpoint_at, keep_from)`: every
/// point with `as_of < cut` except the latest of them (the balance in force
/// at the cut). The account's `history_from` is set to that point's `as_of`:
/// its history before it is gone. Why that is safe, reader by reader:
///
/// * the engine accrues from its checkpoint C on (`src/money/account/
///   checkpoint.rs`) and the worker loads the points from `least(C, the
///   batch's earliest instant, now − (correction window + 1 day))` on, plus
///   the one in force there (`store::history_needed`); with `keep_from ≤ now
///   − 8 days` every such window starts at or after `cut`;
/// * a late snapshot is refused when older than the correction window (7
///   days), so no correction reaches before `cut`;
/// * the API's live view loads from `least(C, now)`, later still;
/// * close-day builds day D from D−1's row and the points of the 8 days
///   before D (`crate::maintain` passes `keep_from` ≤ 8 days before the first
///   day not yet closed); its whole-history computation, and `reconcile
///   --recompute`, refuse an account whose `history_from` is set.
///
/// Points are ordered by `seq`, which orders `as_of` too (a sequence whose
/// `as_of` runs backwards is refused). Accounts are walked in pages of
/// [`PRUNE_ACCOUNTS_PER_BATCH`] (keyset on `account_id`), one autocommitted
/// statement per page: the whole run reads each account once, and locks only
/// the rows of accounts it prunes, for one short statement.
pub async fn prune_balance_points(pool: &PgPool, keep_from: DateTime<Utc>) -> anyhow::Result<u64> {
    let (mut deleted, mut after) = (0_u64, String::new());
    loop {
        let page: Vec<String> =
            sqlx::query_scalar("SELECT account_id FROM accounts WHERE account_id > $1 ORDER BY account_id LIMIT $2")
                .bind(&after)
                .bind(PRUNE_ACCOUNTS_PER_BATCH)
                .fetch_all(pool)
                .await
                .context("reading accounts to prune")?;
        let Some(last) = page.last() else {
            return Ok(deleted);
        };
        after = last.clone();
        deleted += prune_accounts(pool, &page, keep_from).await?;
    }
}

/// The prune rule of [`prune_balance_points`] for the accounts `ids` (one
/// statement); the points deleted.
async fn prune_accounts(pool: &PgPool, ids: &[String], keep_from: DateTime<Utc>) -> anyhow::Result<u64> {
    let n: i64 = sqlx::query_scalar(
        "WITH page AS (
            SELECT account_id, coalesce(checkpoint_at, paid_through) AS c
            FROM accounts WHERE account_id = ANY($2)),
         cut AS (
            SELECT page.account_id, k.seq AS kept, k.as_of AS kept_at
            FROM page CROSS JOIN LATERAL (
                SELECT b.seq, b.as_of FROM balance_points b
                WHERE b.account_id = page.account_id AND b.as_of < least(page.c, $1)
                ORDER BY b.seq DESC LIMIT 1) k
            WHERE EXISTS (SELECT 1 FROM balance_points o WHERE o.account_id = page.account_id AND o.seq < k.seq)),
         gone AS (
            DELETE FROM balance_points b USING cut
            WHERE b.account_id = cut.account_id AND b.seq < cut.kept RETURNING 1),
         -- Runs although nothing reads it (a data-modifying WITH always does).
         marked AS (
            UPDATE accounts a SET history_from = cut.kept_at FROM cut WHERE a.account_id = cut.account_id)
         SELECT count(*) FROM gone",
    )
    .bind(keep_from)
    .bind(ids)
    .fetch_one(pool)
    .await
    .context("pruning balance points")?;
    Ok(n as u64)
}

/// The name of the prune's row in `retention_marks`.
const PRUNE_MARK: &str = "balance_points";
/// Payouts accepted this long before the previous run started still make
/// their account a candidate (the clocks of the worker and the database).
const PAID_MARGIN_SECS: i64 = 300;

/// What one prune did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    /// Points deleted.
    pub points: u64,
    /// Accounts the prune statement looked at (each at most a few times).
    pub accounts_visited: u64,
    /// Every account was visited: there was no watermark yet.
    pub full: bool,
}

/// The incremental prune: [`prune_balance_points`]'s rule, applied only to
/// the accounts it can change since the previous run, whose `keep_from` and
/// start the watermark (`retention_marks`) holds. An account's cut
/// `least(C, keep_from)` passes a point it did not pass before only when
/// `keep_from` moved past the point (its `as_of` lies in `[previous
/// keep_from, keep_from)`: walked on `balance_points_crossing` in batches of
/// [`DELETE_BATCH_ROWS`] points) or when the checkpoint C moved. C moves with
/// a message; a snapshot brings a point, which crosses `keep_from` later (the
/// first case); a claim or a settlement that pays writes a payout (accepted
/// since the previous run, found by `interest_payouts_date`). After every
/// message C stands at or after the account's last point (ARCHITECTURE.md,
/// the checkpoint policy), so a cut below `keep_from` passes nothing new
/// until the account gets a point. Only a checkpoint left behind its last
/// point from before that policy (the checkpoint migration, a bulk load) and
/// moved by a claim that paid nothing waits for the account's next point to
/// cross: a prune delayed, never one too many. With no watermark (the first
/// run) every account is visited. Cost: the points that crossed and the
/// payouts since, not the number of accounts.
/// `now` is the service's clock (the one that stamps `accepted_at`).
pub async fn prune_balance_points_since(
    pool: &PgPool,
    keep_from: DateTime<Utc>,
    now: DateTime<Utc>,
) -> anyhow::Result<Pruned> {
    let started = now;
    let mark: Option<(DateTime<Utc>, DateTime<Utc>)> =
        sqlx::query_as("SELECT keep_from, ran_at FROM retention_marks WHERE name = $1")
            .bind(PRUNE_MARK)
            .fetch_optional(pool)
            .await
            .context("reading the prune's watermark")?;
    let mut done = Pruned::default();
    match mark {
        None => {
            done.points = prune_balance_points(pool, keep_from).await?;
            done.accounts_visited = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM accounts")
                .fetch_one(pool)
                .await? as u64;
            done.full = true;
        }
        Some((previous, ran_at)) => {
            let paid_since = ran_at - chrono::Duration::seconds(PAID_MARGIN_SECS);
            let paid: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT account_id FROM interest_payouts
                 WHERE business_date >= ($1 AT TIME ZONE 'Asia/Seoul')::date AND accepted_at >= $1",
            )
            .bind(paid_since)
            .fetch_all(pool)
            .await
            .context("reading the accounts paid since the last prune")?;
            for page in paid.chunks(PRUNE_ACCOUNTS_PER_BATCH as usize) {
                done.points += prune_accounts(pool, page, keep_from).await?;
                done.accounts_visited += page.len() as u64;
            }
            prune_crossed(pool, previous, keep_from, &mut done).await?;
        }
    }
    sqlx::query(
        "INSERT INTO retention_marks (name, keep_from, ran_at) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET keep_from = EXCLUDED.keep_from, ran_at = EXCLUDED.ran_at",
    )
    .bind(PRUNE_MARK)
    .bind(keep_from)
    .bind(started)
    .execute(pool)
    .await
    .context("recording the prune's watermark")?;
    Ok(done)
}

/// Prunes the accounts whose points crossed into `[previous, keep_from)`,
/// walking `balance_points_crossing` in keyset pages.
async fn prune_crossed(
    pool: &PgPool,
    previous: DateTime<Utc>,
    keep_from: DateTime<Utc>,
    done: &mut Pruned,
) -> anyhow::Result<()> {
    let (mut at, mut after) = (previous, String::new());
    while at < keep_from {
        let crossed: Vec<(DateTime<Utc>, String)> = sqlx::query_as(
            "SELECT as_of, account_id FROM balance_points
             WHERE (as_of, account_id) > ($1, $2) AND as_of < $3
             ORDER BY as_of, account_id LIMIT $4",
        )
        .bind(at)
        .bind(&after)
        .bind(keep_from)
        .bind(DELETE_BATCH_ROWS)
        .fetch_all(pool)
        .await
        .context("reading the points that crossed the cut")?;
        let Some((last_at, last_id)) = crossed.last().cloned() else {
            break;
        };
        let mut ids: Vec<String> = crossed.into_iter().map(|(_, id)| id).collect();
        ids.sort();
        ids.dedup();
        for page in ids.chunks(PRUNE_ACCOUNTS_PER_BATCH as usize) {
            done.points += prune_accounts(pool, page, keep_from).await?;
            done.accounts_visited += page.len() as u64;
        }
        (at, after) = (last_at, last_id);
    }
    Ok(())
}

/// The database's clock (the one `DEFAULT now()` stamps `created_at` with).
pub async fn database_now(pool: &PgPool) -> anyhow::Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar("SELECT now()").fetch_one(pool).await?)
}

/// The first day close-day has not completed: the earliest open close, else
/// the day after the last completed one; `None` when close-day never ran.
pub async fn first_unclosed_day(pool: &PgPool) -> anyhow::Result<Option<NaiveDate>> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(min(business_date) FILTER (WHERE completed_at IS NULL), max(business_date) + 1)
         FROM day_closes",
    )
    .fetch_one(pool)
    .await?)
}
