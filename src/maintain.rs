//! `interest-now maintain`: retention (ARCHITECTURE.md, "Retention").
//!
//! One run, each step its own short transaction (`store::retention`):
//! 1. creates the partitions of today and the days (months) ahead;
//! 2. drops the partitions whose whole range is older than its table keeps,
//!    except one that still holds a row that must stay (an `accepted` claim,
//!    an unpublished outbox row or dead letter: logged and kept);
//! 3. deletes expired idempotency keys;
//! 4. prunes balance points no reader needs (`store::retention::prune_balance_points_since`:
//!    every account on the first run, then only the accounts whose points
//!    crossed the cut or that were paid since the last run; none before
//!    close-day has closed a day).
//!
//! It prints one JSON line of what it did. It is idempotent: a second run
//! creates and drops nothing. Interest payouts and the daily journal are
//! finance records: partitioned by month, never dropped here (docs/FINANCE.md
//! shows how an operator detaches an old month).

use std::time::{Duration, Instant};

use chrono::{DateTime, Days, Months, NaiveDate, Utc};
use serde_json::json;
use sqlx::PgPool;

use crate::config::{Clock, Settings};
use crate::money::account::CORRECTION_WINDOW_SECS;
use crate::money::types::{business_date, kst_midnight_utc};
use crate::store;
use crate::store::retention::{self, Outcome, Step, Table};

/// Partitions kept ahead of today: a week of days, a quarter of months, so a
/// missed run (or several) never lets the midnight traffic reach the DEFAULT
/// partition.
const DAYS_AHEAD: u64 = 7;
const MONTHS_AHEAD: u32 = 3;
/// Claims are kept at least this long whatever the key TTL (a 202's
/// `Location` must outlive the night it was given in).
const CLAIMS_KEPT_MIN: Duration = Duration::from_secs(2 * 86_400);
/// Balance points kept behind now: the correction window and one day
/// (the worker's load window, `service::worker::batch`).
const POINTS_KEPT_SECS: i64 = CORRECTION_WINDOW_SECS + 86_400;

/// How long a table keeps a partition, and by whose clock its key is stamped.
#[derive(Debug, Clone, Copy)]
enum Keep {
    /// Never dropped by the service (finance records).
    Forever,
    /// Keyed by the service's clock (`CLOCK_OFFSET_SECONDS` included).
    ServiceClock(Duration),
    /// Keyed by the database's `now()` (`DEFAULT now()` columns).
    DatabaseClock(Duration),
}

/// The partitioned tables, in the order `maintain` visits them.
fn partitioned() -> [Table; 5] {
    let day = |name, blocker| Table {
        name,
        step: Step::Day,
        date_key: false,
        blocker: Some(blocker),
    };
    let month = |name, date_key| Table {
        name,
        step: Step::Month,
        date_key,
        blocker: None,
    };
    [
        day("claims", "state = 'accepted'"),
        day("payout_outbox", "published_at IS NULL"),
        day("dead_letters", "published_at IS NULL"),
        month("interest_payouts", false),
        month("daily_accruals", true),
    ]
}

fn tables(settings: &Settings) -> [(Table, Keep); 5] {
    let outbox = Keep::DatabaseClock(settings.outbox_retention);
    let claims = Keep::ServiceClock(settings.idempotency_key_ttl.max(CLAIMS_KEPT_MIN));
    let [c, o, d, p, j] = partitioned();
    [
        (c, claims),
        (o, outbox),
        (d, outbox),
        (p, Keep::Forever),
        (j, Keep::Forever),
    ]
}

#[derive(Debug, Default)]
struct Summary {
    created: Vec<String>,
    dropped: Vec<String>,
    kept: Vec<serde_json::Value>,
    keys_deleted: u64,
    points_pruned: u64,
    points_accounts: u64,
    points: &'static str,
}

pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    let started = Instant::now();
    let pool = store::connect_as(
        &settings.database_url,
        2,
        &store::Session {
            application_name: "interest-now-maintain",
            log_statements: false,
            jit: false,
            lock_timeout_ms: None,
        },
    )
    .await?;
    let service_now = Clock::new(settings.clock_offset_seconds).now();
    let database_now = retention::database_now(&pool).await?;
    let mut summary = Summary::default();
    for (table, keep) in tables(settings) {
        let now = match keep {
            Keep::DatabaseClock(_) => database_now,
            Keep::ServiceClock(_) | Keep::Forever => service_now,
        };
        create_ahead(&pool, &table, now, &mut summary).await?;
        drop_expired(&pool, &table, keep, now, &mut summary).await?;
    }
    // A key deleted only once its TTL and a margin have passed: the worker
    // withdraws a claim older than the TTL that finds no key row, and the
    // margin covers the clocks of the API, the worker and the database.
    let margin = settings.idempotency_key_ttl.min(Duration::from_secs(60));
    summary.keys_deleted = retention::delete_expired_keys(&pool, settings.idempotency_key_ttl + margin).await?;
    prune_points(&pool, service_now, &mut summary).await?;
    let line = json!({
        "maintain": "done",
        "created": summary.created,
        "dropped": summary.dropped,
        "kept": summary.kept,
        "idempotency_keys_deleted": summary.keys_deleted,
        "balance_points_pruned": summary.points_pruned,
        "balance_points_accounts_visited": summary.points_accounts,
        "balance_points": summary.points,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    println!("{line}");
    Ok(())
}

/// Today's partition and those ahead.
async fn create_ahead(pool: &PgPool, table: &Table, now: DateTime<Utc>, s: &mut Summary) -> anyhow::Result<()> {
    create_from(pool, table, business_date(now), now, s).await
}

/// The partitions from the one holding `from` to those ahead of `now`.
async fn create_from(
    pool: &PgPool,
    table: &Table,
    from: NaiveDate,
    now: DateTime<Utc>,
    s: &mut Summary,
) -> anyhow::Result<()> {
    let today = business_date(now);
    let last = match table.step {
        Step::Day => today + Days::new(DAYS_AHEAD),
        Step::Month => today + Months::new(MONTHS_AHEAD),
    };
    let mut start = table.step.start(from.min(today));
    while start <= last {
        let name = table.partition_name(start);
        match retention::create_partition(pool, table, start).await? {
            Outcome::Done => s.created.push(name),
            Outcome::Already => {}
            Outcome::Skipped(reason) => keep(s, name, reason),
        }
        start = table.step.next(start);
    }
    Ok(())
}

/// Every partition from the day (month) of `from` to those ahead of `now`,
/// as hourly runs of `maintain` since `from` would have created them (each
/// run creates today's and the ones ahead), and drops nothing: for rows of
/// the past loaded before the service ran (an import of an earlier system's
/// records; `xtask bench aged`'s SQL-written year), so that they land in
/// their partitions, not in DEFAULT, and the next `maintain` drops the
/// expired ones. Returns the partitions created; one whose range already has
/// rows in DEFAULT is left out, as `maintain` leaves it.
pub async fn create_partitions_since(
    pool: &PgPool,
    from: NaiveDate,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<String>> {
    let mut summary = Summary::default();
    for table in partitioned() {
        create_from(pool, &table, from, now, &mut summary).await?;
    }
    Ok(summary.created)
}

/// Partitions whose range ended before `now − keep`.
async fn drop_expired(
    pool: &PgPool,
    table: &Table,
    keep: Keep,
    now: DateTime<Utc>,
    s: &mut Summary,
) -> anyhow::Result<()> {
    let (Keep::ServiceClock(kept) | Keep::DatabaseClock(kept)) = keep else {
        return Ok(());
    };
    let horizon = now - chrono::Duration::from_std(kept)?;
    for (name, start) in retention::partitions(pool, table).await? {
        if range_end(table, start) > horizon {
            continue;
        }
        match retention::drop_partition(pool, table, &name).await? {
            Outcome::Done => s.dropped.push(name),
            Outcome::Already => {}
            Outcome::Skipped(reason) => keep_partition(s, name, reason),
        }
    }
    Ok(())
}

fn range_end(table: &Table, start: NaiveDate) -> DateTime<Utc> {
    kst_midnight_utc(table.step.next(start))
}

fn keep(s: &mut Summary, partition: String, reason: String) {
    tracing::info!(event = "partition_not_created", partition, reason);
    s.kept.push(json!({ "partition": partition, "not_created": reason }));
}

fn keep_partition(s: &mut Summary, partition: String, reason: String) {
    tracing::warn!(
        event = "partition_kept",
        partition,
        reason,
        "an expired partition was not dropped"
    );
    s.kept.push(json!({ "partition": partition, "not_dropped": reason }));
}

/// Balance points older than every reader's window (`retention::prune_balance_points`).
async fn prune_points(pool: &PgPool, now: DateTime<Utc>, s: &mut Summary) -> anyhow::Result<()> {
    let window = chrono::Duration::seconds(POINTS_KEPT_SECS);
    // The journal's first day is computed from the whole history: nothing is
    // pruned before close-day has closed a day.
    let Some(day) = retention::first_unclosed_day(pool).await? else {
        s.points = "kept: close-day has never run";
        return Ok(());
    };
    let keep_from = (now - window).min(kst_midnight_utc(day) - window);
    let pruned = retention::prune_balance_points_since(pool, keep_from, now).await?;
    s.points_pruned = pruned.points;
    s.points_accounts = pruned.accounts_visited;
    s.points = if pruned.full {
        "pruned: every account (no watermark yet)"
    } else {
        "pruned: the accounts whose points crossed the cut or that were paid since the last run"
    };
    Ok(())
}
