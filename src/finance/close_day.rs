//! `close-day --date D`: the daily accrual journal (`daily_accruals`).
//!
//! The cut is T = 00:00 KST of D+1 (T0 = 00:00 KST of D), defined by data, not
//! by a transaction snapshot: a balance point counts if the worker applied it
//! before T (`received_at < T`), a payout if it was accepted before T
//! (`accepted_at < T`). Both columns are written once and never updated, so
//! once every write stamped before T has committed (the grace period, checked
//! below), the inputs of the cut never change again and any run, at 00:05 under
//! the midnight spike or a week later, computes the same rows. Reads are plain
//! statements, page by page: no lock is taken, no claim waits for us.
//!
//! Per account that existed by T (a point received before T), with
//! A_K(t) = interest from the first point to t on the points known at K and
//! P(K) = Σ (gross + dropped) of payouts accepted before K, in units:
//!
//! ```text
//! liability_end   = A_T(T)   − P(T)
//! liability_start = A_T0(T0) − P(T0)
//! accrued         = A_T(T) − A_T(T0)         (interest of [T0, T) on what is known at T)
//! paid            = P(T) − P(T0)
//! corrections     = liability_end − liability_start − accrued + paid  (= A_T(T0) − A_T0(T0))
//! ```
//!
//! That is the full computation ([`journal`]), from every point and payout
//! ever: the fallback for an account without a row for D−1 (its first day,
//! or a row missing) and what `--full` forces. Every other account is closed
//! incrementally ([`incremental`]): from D−1's `liability_end` plus the day's
//! points and payouts, bit-identical and at a cost that does not grow with
//! the account's age.

mod incremental;

pub use incremental::{cutoff, journal_since, Start};

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use rust_decimal::Decimal;
use sqlx::{PgPool, Row};

use super::{display, major_to_units, units, CloseDayArgs, Day};
use crate::config::Settings;
use crate::money::accrual::accrue;
use crate::money::{Accrued, Currency, Plans, Point};
use crate::{kafka, store};

/// A balance point with the instant the worker applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub point: Point,
    pub received_at: DateTime<Utc>,
}

/// One `daily_accruals` row's amounts, in units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Journal {
    pub accrued: i128,
    pub corrections: i128,
    pub paid: i128,
    pub liability_start: i128,
    pub liability_end: i128,
}

impl Journal {
    /// The row's identity, also a CHECK on the table.
    pub fn holds(&self) -> bool {
        self.liability_end == self.liability_start + self.accrued + self.corrections - self.paid
    }
}

/// The points of `points` received before `k`: the timeline known at `k`.
pub(super) fn known_at(points: &[Received], k: DateTime<Utc>) -> Vec<Point> {
    points
        .iter()
        .filter(|r| r.received_at < k)
        .map(|r| r.point.clone())
        .collect()
}

/// The journal of one account for `day`. Pure: `points` sorted by seq (as the
/// worker keeps them), `paid_t0` / `paid_t` = P(T0) / P(T).
pub fn journal(plans: &Plans, points: &[Received], paid_t0: i128, paid_t: i128, day: &Day) -> Journal {
    let (at_t, at_t0) = (known_at(points, day.t), known_at(points, day.t0));
    let (t0, t) = (day.t0.timestamp(), day.t.timestamp());
    // Accrual starts at the first point (lowest seq, hence earliest as_of) known at K.
    let since_first = |pts: &[Point], to: i64| pts.first().map_or(Accrued::ZERO, |f| accrue(plans, pts, f.at(), to));
    let liability_end = since_first(&at_t, t).0 - paid_t;
    let liability_start = since_first(&at_t0, t0).0 - paid_t0;
    let accrued = accrue(plans, &at_t, t0, t).0;
    let paid = paid_t - paid_t0;
    Journal {
        accrued,
        corrections: liability_end - liability_start - accrued + paid,
        paid,
        liability_start,
        liability_end,
    }
}

pub async fn run(settings: &Settings, args: &CloseDayArgs) -> anyhow::Result<()> {
    let day = Day::new(args.date)?;
    day.require_closed(settings, args.grace_seconds, "close-day")?;
    let pool = super::connect(settings, 4, false).await?;
    wait_for_claims(settings, &pool, &day, Duration::from_secs(args.wait_seconds.into())).await?;
    let plans = store::load_plans(&pool, settings.default_plan.as_deref()).await?;
    sqlx::query("INSERT INTO day_closes (business_date, cut_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(day.date)
        .bind(day.t)
        .execute(&pool)
        .await
        .context("recording the close")?;
    let (mut written, mut skipped) = (0_u64, 0_u64);
    let (mut from_previous, mut from_history) = (0_u64, 0_u64);
    let mut after = String::new();
    loop {
        let page = load_page(&pool, &day, &after, args.page_size).await?;
        let Some(last) = page.last() else { break };
        after = last.account_id.clone();
        let todo: Vec<&PageAccount> = page.iter().filter(|a| !a.done).collect();
        skipped += (page.len() - todo.len()) as u64;
        if todo.is_empty() {
            continue;
        }
        let (rows, whole) = compute(&pool, &plans, &day, &todo, args.full).await?;
        from_history += whole;
        from_previous += rows.len() as u64 - whole;
        let n = insert(&pool, &day, &rows).await?;
        written += n;
        skipped += rows.len() as u64 - n;
    }
    let accounts: i64 = sqlx::query_scalar(
        "UPDATE day_closes SET completed_at = coalesce(completed_at, now()),
                accounts = (SELECT count(*) FROM daily_accruals WHERE business_date = $1)
         WHERE business_date = $1 RETURNING accounts",
    )
    .bind(day.date)
    .fetch_one(&pool)
    .await
    .context("completing the close")?;
    print_summary(&pool, &day, written, skipped, accounts).await?;
    println!(
        "  computed: {from_previous} from the previous day's row, {from_history} from their whole history \
         (no row for the previous day{})",
        if args.full { ", or --full" } else { "" }
    );
    Ok(())
}

/// The cut is complete only when every claim accepted before T is applied.
/// Checks the claims the API answered 202 for and, on the broker, that the
/// workers have applied every `interest-claims` message queued before now.
async fn wait_for_claims(settings: &Settings, pool: &PgPool, day: &Day, wait: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait;
    let topic = settings.topic(kafka::CLAIMS);
    let marks = watermarks(settings, &topic).await?;
    loop {
        let accepted: i64 =
            sqlx::query_scalar("SELECT count(*) FROM claims WHERE state = 'accepted' AND accepted_at < $1")
                .bind(day.t)
                .fetch_one(pool)
                .await?;
        let applied: HashMap<i32, i64> =
            sqlx::query_as("SELECT partition, next_offset FROM consumer_offsets WHERE topic = $1")
                .bind(&topic)
                .fetch_all(pool)
                .await?
                .into_iter()
                .collect();
        let behind: i64 = marks
            .iter()
            .map(|(p, low, high)| (high - applied.get(p).copied().unwrap_or(0).max(*low)).max(0))
            .sum();
        if accepted == 0 && behind == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the cut is not complete: {accepted} claim(s) accepted before {} are still being processed and the \
                 workers are {behind} claim message(s) behind; nothing written, rerun when the workers have caught up",
                super::kst(day.t)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// (partition, low, high) watermarks of `topic`, read once.
async fn watermarks(settings: &Settings, topic: &str) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_brokers)
        // Never joins the group: only metadata and watermarks are read.
        .set("group.id", format!("{}-close-day", settings.kafka_group_id))
        .set("enable.auto.commit", "false")
        .set("log_level", "4")
        .create()
        .context("creating the Kafka client")?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(10);
        let md = consumer
            .fetch_metadata(Some(&topic), timeout)
            .with_context(|| format!("metadata of {topic}"))?;
        let t = md.topics().first().with_context(|| format!("no topic {topic}"))?;
        if let Some(e) = t.error() {
            anyhow::bail!("topic {topic}: {e:?}");
        }
        t.partitions()
            .iter()
            .map(|p| {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p.id(), timeout)
                    .with_context(|| format!("watermarks of {topic}/{}", p.id()))?;
                Ok((p.id(), low, high))
            })
            .collect()
    })
    .await?
}

pub(super) struct PageAccount {
    pub(super) account_id: String,
    pub(super) currency: Currency,
    pub(super) done: bool,
}

/// The next page of accounts that existed by T (keyset on account_id), each
/// marked when its row for D is already written (a rerun skips it).
async fn load_page(pool: &PgPool, day: &Day, after: &str, size: u32) -> anyhow::Result<Vec<PageAccount>> {
    let rows = sqlx::query(
        "SELECT a.account_id, a.currency,
                EXISTS (SELECT 1 FROM daily_accruals d WHERE d.account_id = a.account_id AND d.business_date = $3) AS done
         FROM accounts a
         WHERE a.account_id > $1
           AND EXISTS (SELECT 1 FROM balance_points p WHERE p.account_id = a.account_id AND p.received_at < $2)
         ORDER BY a.account_id
         LIMIT $4",
    )
    .bind(after)
    .bind(day.t)
    .bind(day.date)
    .bind(i64::from(size))
    .fetch_all(pool)
    .await
    .context("reading accounts")?;
    rows.into_iter()
        .map(|r| {
            Ok(PageAccount {
                account_id: r.get("account_id"),
                currency: Currency::try_from(r.get::<&str, _>("currency"))?,
                done: r.get("done"),
            })
        })
        .collect()
}

struct RowOut<'a> {
    account: &'a PageAccount,
    journal: Journal,
}

/// The page's rows (in page order) and how many came from the whole history.
async fn compute<'a>(
    pool: &PgPool,
    plans: &Plans,
    day: &Day,
    accounts: &[&'a PageAccount],
    full: bool,
) -> anyhow::Result<(Vec<RowOut<'a>>, u64)> {
    let starts = if full {
        HashMap::new()
    } else {
        incremental::load_starts(pool, day, accounts).await?
    };
    let (since, whole): (Vec<&PageAccount>, Vec<&PageAccount>) = accounts
        .iter()
        .partition(|a| starts.get(&a.account_id).is_some_and(|s| s.previous_end.is_some()));
    let mut journals = compute_whole(pool, plans, day, &whole).await?;
    journals.extend(compute_since(pool, plans, day, &since, &starts).await?);
    let mut out = Vec::with_capacity(accounts.len());
    for account in accounts {
        let journal = journals.remove(&account.account_id).expect("computed above");
        // Asserted here before the write; the table repeats it as a CHECK.
        anyhow::ensure!(
            journal.holds(),
            "account {}: journal identity fails: {journal:?}",
            account.account_id
        );
        out.push(RowOut { account, journal });
    }
    Ok((out, whole.len() as u64))
}

fn check_plans(plans: &Plans, account: &PageAccount, points: &[Received]) -> anyhow::Result<()> {
    if let Some(p) = points.iter().find(|r| plans.get(&r.point.plan).is_none()) {
        anyhow::bail!("account {}: unknown plan {:?}", account.account_id, p.point.plan);
    }
    Ok(())
}

/// The full computation, from every point and payout ever (see the module
/// docs); `reconcile --recompute` checks the stored rows against it.
pub(super) async fn compute_whole(
    pool: &PgPool,
    plans: &Plans,
    day: &Day,
    accounts: &[&PageAccount],
) -> anyhow::Result<HashMap<String, Journal>> {
    if accounts.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<&str> = accounts.iter().map(|a| a.account_id.as_str()).collect();
    refuse_pruned(pool, &ids).await?;
    let mut points = load_points(pool, &ids, day, accounts).await?;
    let mut paid = load_paid(pool, &ids, day, accounts).await?;
    let mut out = HashMap::with_capacity(accounts.len());
    for account in accounts {
        let pts = points.remove(&account.account_id).unwrap_or_default();
        check_plans(plans, account, &pts)?;
        let (paid_t0, paid_t) = paid.remove(&account.account_id).unwrap_or_default();
        out.insert(account.account_id.clone(), journal(plans, &pts, paid_t0, paid_t, day));
    }
    Ok(out)
}

/// The whole history is gone for accounts `maintain` pruned: computing
/// their journal from it would be wrong, so it is refused, naming one.
async fn refuse_pruned(pool: &PgPool, ids: &[&str]) -> anyhow::Result<()> {
    let pruned: Option<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT account_id, history_from FROM accounts
         WHERE account_id = ANY($1) AND history_from IS NOT NULL ORDER BY account_id LIMIT 1",
    )
    .bind(ids)
    .fetch_optional(pool)
    .await
    .context("checking for pruned histories")?;
    if let Some((account, from)) = pruned {
        anyhow::bail!(
            "account {account}: its balance history before {} was pruned by maintain, so it cannot be computed \
             from the whole history; close the days in order (each from the previous day's row)",
            super::kst(from)
        );
    }
    Ok(())
}

/// The incremental close, from D−1's row and the day's news.
async fn compute_since(
    pool: &PgPool,
    plans: &Plans,
    day: &Day,
    accounts: &[&PageAccount],
    starts: &HashMap<String, Start>,
) -> anyhow::Result<HashMap<String, Journal>> {
    if accounts.is_empty() {
        return Ok(HashMap::new());
    }
    let cutoffs: Vec<(&PageAccount, i64)> = accounts
        .iter()
        .map(|a| (*a, cutoff(day, starts[&a.account_id].first_news)))
        .collect();
    let mut points = incremental::load_window(pool, day, &cutoffs).await?;
    let mut out = HashMap::with_capacity(accounts.len());
    for (account, cut) in cutoffs {
        let pts = points.remove(&account.account_id).unwrap_or_default();
        check_plans(plans, account, &pts)?;
        let start = starts[&account.account_id];
        out.insert(account.account_id.clone(), journal_since(plans, &pts, cut, start, day));
    }
    Ok(out)
}

async fn load_points(
    pool: &PgPool,
    ids: &[&str],
    day: &Day,
    accounts: &[&PageAccount],
) -> anyhow::Result<HashMap<String, Vec<Received>>> {
    let currency: HashMap<&str, Currency> = accounts.iter().map(|a| (a.account_id.as_str(), a.currency)).collect();
    let rows = sqlx::query(
        "SELECT account_id, seq, as_of, balance::text AS balance, plan_id, received_at
         FROM balance_points WHERE account_id = ANY($1) AND received_at < $2
         ORDER BY account_id, seq",
    )
    .bind(ids)
    .bind(day.t)
    .fetch_all(pool)
    .await
    .context("reading balance points")?;
    let mut out: HashMap<String, Vec<Received>> = HashMap::new();
    for r in rows {
        let id: String = r.get("account_id");
        let balance = currency[id.as_str()].parse_amount(r.get("balance"))?;
        let point = Point {
            seq: r.get::<i64, _>("seq") as u64,
            as_of: r.get("as_of"),
            balance,
            plan: r.get("plan_id"),
        };
        out.entry(id).or_default().push(Received {
            point,
            received_at: r.get("received_at"),
        });
    }
    Ok(out)
}

/// Per account: (P(T0), P(T)).
async fn load_paid(
    pool: &PgPool,
    ids: &[&str],
    day: &Day,
    accounts: &[&PageAccount],
) -> anyhow::Result<HashMap<String, (i128, i128)>> {
    let currency: HashMap<&str, Currency> = accounts.iter().map(|a| (a.account_id.as_str(), a.currency)).collect();
    let rows = sqlx::query(
        "SELECT account_id,
                coalesce(sum(gross) FILTER (WHERE accepted_at < $2), 0)::text AS gross_t0,
                coalesce(sum(dropped_units) FILTER (WHERE accepted_at < $2), 0)::text AS dropped_t0,
                sum(gross)::text AS gross_t,
                sum(dropped_units)::text AS dropped_t
         FROM interest_payouts WHERE account_id = ANY($1) AND accepted_at < $3
         GROUP BY account_id",
    )
    .bind(ids)
    .bind(day.t0)
    .bind(day.t)
    .fetch_all(pool)
    .await
    .context("reading payouts")?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let id: String = r.get("account_id");
        let c = currency[id.as_str()];
        let p = |gross: &str, dropped: &str| -> anyhow::Result<i128> {
            let g: Decimal = r.get::<&str, _>(gross).parse()?;
            Ok(major_to_units(g, c)? + units(r.get(dropped))?)
        };
        let sums = (p("gross_t0", "dropped_t0")?, p("gross_t", "dropped_t")?);
        out.insert(id, sums);
    }
    Ok(out)
}

/// Writes the rows; those already present are left alone. Returns how many were written.
async fn insert(pool: &PgPool, day: &Day, rows: &[RowOut<'_>]) -> anyhow::Result<u64> {
    let col = |f: &dyn Fn(&RowOut) -> String| rows.iter().map(f).collect::<Vec<String>>();
    let done = sqlx::query(
        "INSERT INTO daily_accruals (account_id, business_date, currency, accrued_units, corrections_units, paid_units,
                                     liability_start_units, liability_end_units, accrued, liability_end)
         SELECT id, $1, cur, au::numeric, cu::numeric, pu::numeric, ls::numeric, le::numeric, ad::numeric, led::numeric
         FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                     $10::text[]) AS t(id, cur, au, cu, pu, ls, le, ad, led)
         ON CONFLICT (account_id, business_date) DO NOTHING",
    )
    .bind(day.date)
    .bind(col(&|r| r.account.account_id.clone()))
    .bind(col(&|r| r.account.currency.code().to_owned()))
    .bind(col(&|r| r.journal.accrued.to_string()))
    .bind(col(&|r| r.journal.corrections.to_string()))
    .bind(col(&|r| r.journal.paid.to_string()))
    .bind(col(&|r| r.journal.liability_start.to_string()))
    .bind(col(&|r| r.journal.liability_end.to_string()))
    .bind(col(&|r| display(r.journal.accrued, r.account.currency).to_string()))
    .bind(col(&|r| {
        display(r.journal.liability_end, r.account.currency).to_string()
    }))
    .execute(pool)
    .await
    .context("writing daily_accruals")?;
    Ok(done.rows_affected())
}

async fn print_summary(pool: &PgPool, day: &Day, written: u64, skipped: u64, accounts: i64) -> anyhow::Result<()> {
    println!("close-day {}: cut at {}", day.date, super::kst(day.t));
    println!("  accounts: {written} written, {skipped} already closed, {accounts} in the journal for the date");
    let totals = sqlx::query(
        "SELECT currency, count(*) AS n, sum(accrued_units)::text AS a, sum(corrections_units)::text AS c,
                sum(paid_units)::text AS p, sum(liability_end_units)::text AS l
         FROM daily_accruals WHERE business_date = $1 GROUP BY currency ORDER BY currency",
    )
    .bind(day.date)
    .fetch_all(pool)
    .await?;
    for r in totals {
        let c = Currency::try_from(r.get::<&str, _>("currency"))?;
        let show = |col: &str| -> anyhow::Result<String> { Ok(display(units(r.get(col))?, c).to_string()) };
        println!(
            "  {} ({} accounts): accrued {}, corrections {}, paid {}, liability at day end {}",
            c.code(),
            r.get::<i64, _>("n"),
            show("a")?,
            show("c")?,
            show("p")?,
            show("l")?
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::types::parse_instant;
    use crate::money::{Minor, PlanFile, ACCRUAL_DENOMINATOR};

    const FLAT: &str = r#"{"plans":[{"id":"p","schedule":[{"effective_from":"2020-01-01T00:00:00+09:00","tiers":[{"rate_percent":"2.0"}]}]},
        {"id":"d","accrual":"daily_close","fraction":"drop","schedule":[{"effective_from":"2020-01-01T00:00:00+09:00","tiers":[{"rate_percent":"3.65"}]}]}]}"#;

    fn plans() -> Plans {
        Plans::new(PlanFile::parse(FLAT).unwrap(), None).unwrap()
    }

    fn day() -> Day {
        Day::new(chrono::NaiveDate::from_ymd_opt(2026, 3, 2).unwrap()).unwrap()
    }

    fn rx(seq: u64, as_of: &str, balance: i64, plan: &str, received: &str) -> Received {
        Received {
            point: Point {
                seq,
                as_of: parse_instant(as_of).unwrap(),
                balance: Minor(balance),
                plan: plan.into(),
            },
            received_at: parse_instant(received).unwrap(),
        }
    }

    const WON: i128 = ACCRUAL_DENOMINATOR;

    #[test]
    fn a_constant_balance_earns_its_day_and_carries_its_liability() {
        // 36,500,000 at 2% ACT/365F = exactly 2,000 won a day.
        let pts = [rx(
            1,
            "2026-03-01T00:00:00+09:00",
            36_500_000,
            "p",
            "2026-03-01T00:00:01+09:00",
        )];
        let j = journal(&plans(), &pts, 0, 0, &day());
        assert_eq!(j.accrued, 2_000 * WON);
        assert_eq!(j.liability_start, 2_000 * WON);
        assert_eq!(j.liability_end, 4_000 * WON);
        assert_eq!((j.corrections, j.paid), (0, 0));
        assert!(j.holds());
        // A payout of 1,500 (+ 0.25 dropped) during D.
        let j = journal(&plans(), &pts, 0, 1_500 * WON + WON / 4, &day());
        assert_eq!(j.paid, 1_500 * WON + WON / 4);
        assert_eq!(j.liability_end, 2_500 * WON - WON / 4);
        assert!(j.holds());
    }

    #[test]
    fn what_arrives_after_the_cut_is_not_known_at_the_cut_and_late_news_is_a_correction() {
        let base = rx(
            1,
            "2026-03-01T00:00:00+09:00",
            36_500_000,
            "p",
            "2026-03-01T00:00:01+09:00",
        );
        // Received during D: the balance doubled from noon of D-1 (seq 2 arrives late).
        let late = rx(
            2,
            "2026-03-01T12:00:00+09:00",
            73_000_000,
            "p",
            "2026-03-02T09:00:00+09:00",
        );
        // Received after the cut: ignored for D.
        let after = rx(3, "2026-03-02T12:00:00+09:00", 0, "p", "2026-03-03T00:00:00+09:00");
        let j = journal(&plans(), &[base, late, after], 0, 0, &day());
        assert_eq!(j.liability_start, 2_000 * WON);
        assert_eq!(j.accrued, 4_000 * WON);
        assert_eq!(j.corrections, 1_000 * WON, "half a day of D-1 at double the balance");
        assert_eq!(j.liability_end, 7_000 * WON);
        assert!(j.holds());
    }

    #[test]
    fn an_account_opened_during_the_day_starts_from_zero() {
        let pts = [rx(
            1,
            "2026-03-02T12:00:00+09:00",
            36_500_000,
            "p",
            "2026-03-02T12:00:00+09:00",
        )];
        let j = journal(&plans(), &pts, 0, 0, &day());
        assert_eq!(
            (j.liability_start, j.accrued, j.liability_end),
            (0, 1_000 * WON, 1_000 * WON)
        );
    }

    #[test]
    fn daily_close_plans_earn_the_close_at_the_end_of_the_day() {
        // 3.65% ACT/365F on 1,000,000 = 100 won a day, earned at each 00:00 KST close.
        let pts = [rx(
            1,
            "2026-03-01T10:00:00+09:00",
            1_000_000,
            "d",
            "2026-03-01T10:00:00+09:00",
        )];
        let j = journal(&plans(), &pts, 0, 0, &day());
        assert_eq!(
            (j.liability_start, j.accrued, j.liability_end),
            (100 * WON, 100 * WON, 200 * WON)
        );
    }
}
