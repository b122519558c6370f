//! The incremental close: day D from D−1's closing row plus what D brought.
//!
//! With the notation of the parent module, `liability_start(D)` = A_T0(T0) −
//! P(T0) is exactly `liability_end(D−1)` (both "as known at T0", inputs frozen
//! after the grace), so the row of D needs only:
//!
//! ```text
//! accrued     = accrue(points known at T, T0, T)
//! corrections = accrue(known at T, c, T0) − accrue(known at T0, c, T0)
//!               where c = min(T0, earliest as_of received in [T0, T)), floored to the second:
//!               the points received during D change accrual only from their own as_of on
//! paid        = Σ (gross in units + dropped) of payouts accepted in [T0, T)
//! ```
//!
//! and the points known at T from the one in force at c on. Accrual is exactly
//! additive, so the row is bit-identical to the full recomputation. Per
//! account that is O(1) rows for a day without news (the point in force at
//! T0), the day's points and payouts, and — only for a late snapshot applied
//! on D — the points from its `as_of` on (bounded by the correction window,
//! or by the account's last point for an in-order one).

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgPool, Row};

use super::{Journal, PageAccount, Received};
use crate::finance::{major_to_units, units, Day};
use crate::money::accrual::accrue;
use crate::money::types::floor_secs;
use crate::money::{Currency, Plans, Point};
use crate::store::secs_utc;

/// What an account brings to D besides its points: D−1's closing liability
/// (`None`: no row, the full computation runs), the earliest `as_of` received
/// during D, and what was paid during D.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub previous_end: Option<i128>,
    pub first_news: Option<DateTime<Utc>>,
    pub paid: i128,
}

/// The second from which the points matter for D: T0, or earlier when D
/// brought a point dated before it.
pub fn cutoff(day: &Day, first_news: Option<DateTime<Utc>>) -> i64 {
    floor_secs(first_news.map_or(day.t0, |n| n.min(day.t0)))
}

/// The journal of D from D−1's `liability_start` and the points known at T
/// from the one in force at `cutoff` on (sorted by seq). Pure.
pub fn journal_since(plans: &Plans, points: &[Received], cutoff: i64, start: Start, day: &Day) -> Journal {
    let liability_start = start.previous_end.expect("the incremental close needs D-1's row");
    let (at_t, at_t0) = (super::known_at(points, day.t), super::known_at(points, day.t0));
    let (t0, t) = (day.t0.timestamp(), day.t.timestamp());
    let accrued = accrue(plans, &at_t, t0, t).0;
    let corrections = accrue(plans, &at_t, cutoff, t0).0 - accrue(plans, &at_t0, cutoff, t0).0;
    Journal {
        accrued,
        corrections,
        paid: start.paid,
        liability_start,
        liability_end: liability_start + accrued + corrections - start.paid,
    }
}

/// Per account of the page: D−1's closing row, the day's earliest news and
/// its payouts (one statement, index lookups per account).
pub async fn load_starts(
    pool: &PgPool,
    day: &Day,
    accounts: &[&PageAccount],
) -> anyhow::Result<HashMap<String, Start>> {
    let ids: Vec<&str> = accounts.iter().map(|a| a.account_id.as_str()).collect();
    let currency: HashMap<&str, Currency> = accounts.iter().map(|a| (a.account_id.as_str(), a.currency)).collect();
    let previous = day.date.pred_opt().context("date out of range")?;
    let rows = sqlx::query(
        "SELECT p.id, d.liability_end_units::text AS previous_end,
                (SELECT min(b.as_of) FROM balance_points b
                 WHERE b.account_id = p.id AND b.received_at >= $2 AND b.received_at < $3) AS first_news,
                coalesce(pay.gross, 0)::text AS gross, coalesce(pay.dropped, 0)::text AS dropped
         FROM unnest($1::text[]) AS p(id)
         LEFT JOIN daily_accruals d ON d.account_id = p.id AND d.business_date = $4
         LEFT JOIN LATERAL (
             SELECT sum(i.gross) AS gross, sum(i.dropped_units) AS dropped FROM interest_payouts i
             WHERE i.account_id = p.id AND i.accepted_at >= $2 AND i.accepted_at < $3
         ) pay ON true",
    )
    .bind(&ids)
    .bind(day.t0)
    .bind(day.t)
    .bind(previous)
    .fetch_all(pool)
    .await
    .context("reading the previous day's rows and the day's news")?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let id: String = r.get("id");
        let gross: Decimal = r.get::<&str, _>("gross").parse()?;
        let paid = major_to_units(gross, currency[id.as_str()])? + units(r.get("dropped"))?;
        let previous_end = r.get::<Option<&str>, _>("previous_end").map(units).transpose()?;
        let first_news = r.get("first_news");
        out.insert(
            id,
            Start {
                previous_end,
                first_news,
                paid,
            },
        );
    }
    Ok(out)
}

/// The points known at T from the one in force at each account's cutoff on.
pub async fn load_window(
    pool: &PgPool,
    day: &Day,
    accounts: &[(&PageAccount, i64)],
) -> anyhow::Result<HashMap<String, Vec<Received>>> {
    let ids: Vec<&str> = accounts.iter().map(|(a, _)| a.account_id.as_str()).collect();
    let cutoffs: Vec<DateTime<Utc>> = accounts.iter().map(|(_, c)| secs_utc(*c)).collect();
    let currency: HashMap<&str, Currency> = accounts
        .iter()
        .map(|(a, _)| (a.account_id.as_str(), a.currency))
        .collect();
    let rows = sqlx::query(
        "SELECT bp.account_id, bp.seq, bp.as_of, bp.balance::text AS balance, bp.plan_id, bp.received_at
         FROM unnest($1::text[], $2::timestamptz[]) AS t(id, cutoff)
         JOIN LATERAL (
             (SELECT * FROM balance_points p WHERE p.account_id = t.id AND p.received_at < $3 AND p.as_of < t.cutoff
              ORDER BY p.seq DESC LIMIT 1)
             UNION ALL
             (SELECT * FROM balance_points p WHERE p.account_id = t.id AND p.received_at < $3 AND p.as_of >= t.cutoff)
         ) bp ON true
         ORDER BY bp.account_id, bp.seq",
    )
    .bind(&ids)
    .bind(&cutoffs)
    .bind(day.t)
    .fetch_all(pool)
    .await
    .context("reading the day's balance points")?;
    let mut out: HashMap<String, Vec<Received>> = HashMap::new();
    for r in rows {
        let id: String = r.get("account_id");
        let point = Point {
            seq: r.get::<i64, _>("seq") as u64,
            as_of: r.get("as_of"),
            balance: currency[id.as_str()].parse_amount(r.get("balance"))?,
            plan: r.get("plan_id"),
        };
        out.entry(id).or_default().push(Received {
            point,
            received_at: r.get("received_at"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use chrono::{Days, NaiveDate, TimeZone};
    use proptest::prelude::*;

    use super::*;
    use crate::finance::close_day::journal;
    use crate::money::{Minor, PlanFile};

    const T0: i64 = 1_767_193_200; // 2026-01-01T00:00:00+09:00
    const DAY: i64 = 86_400;

    fn plans(style: &str) -> Plans {
        let json = format!(
            r#"{{"plans":[{{"id":"p","day_count":"ACT/ACT","accrual":"{style}","fraction":"drop","schedule":[
            {{"effective_from":"2025-01-01T00:00:00+09:00","tiers":[{{"up_to":"1000000","rate_percent":"3.1"}},{{"rate_percent":"0.123457"}}]}},
            {{"effective_from":"2026-01-05T13:14:15+09:00","tiers":[{{"rate_percent":"4.44"}}]}}]}},
            {{"id":"q","day_count":"ACT/365F","accrual":"{style}","schedule":[
            {{"effective_from":"2025-01-01T00:00:00+09:00","tiers":[{{"rate_percent":"1.7"}}]}}]}}]}}"#
        );
        Plans::new(PlanFile::parse(&json).unwrap(), None).unwrap()
    }

    fn utc_ms(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).unwrap()
    }

    /// Points (seq order, as_of non-decreasing) each received on time or days late.
    fn points() -> impl Strategy<Value = Vec<Received>> {
        let hours = |max: i64| prop_oneof![3 => (0..max).prop_map(|h| h * 3_600_000), 1 => 0..max * 3_600_000];
        let one = (
            hours(60),
            hours(24),
            prop::bool::weighted(0.3),
            0i64..=10_000_000_000,
            prop::bool::ANY,
        );
        prop::collection::vec(one, 1..14).prop_map(|v| {
            let mut as_of = T0 * 1_000 - 2 * DAY * 1_000;
            v.into_iter()
                .enumerate()
                .map(|(i, (gap, delay, late, balance, q))| {
                    as_of += gap;
                    let delay = if late { delay * 6 } else { delay / 24 };
                    let point = Point {
                        seq: i as u64 + 1,
                        as_of: utc_ms(as_of),
                        balance: Minor(balance),
                        plan: if q { "q" } else { "p" }.into(),
                    };
                    Received {
                        point,
                        received_at: utc_ms(as_of + delay),
                    }
                })
                .collect()
        })
    }

    /// Payouts: (accepted_at, gross + dropped in units).
    fn payouts() -> impl Strategy<Value = Vec<(DateTime<Utc>, i128)>> {
        prop::collection::vec((0i64..14 * DAY, 0i128..1_000_000_000_000_000_000_000), 0..10)
            .prop_map(|v| v.into_iter().map(|(at, u)| (utc_ms((T0 + at) * 1_000), u)).collect())
    }

    fn paid_before(payouts: &[(DateTime<Utc>, i128)], k: DateTime<Utc>) -> i128 {
        payouts.iter().filter(|(at, _)| *at < k).map(|(_, u)| u).sum()
    }

    /// What `load_window` reads: known at T, the last before the cutoff and all from it on.
    fn window(points: &[Received], cut: i64, day: &Day) -> Vec<Received> {
        let known: Vec<&Received> = points.iter().filter(|r| r.received_at < day.t).collect();
        let first = known.partition_point(|r| r.point.at() < cut).saturating_sub(1);
        known[first..].iter().map(|r| (*r).clone()).collect()
    }

    fn start_of(points: &[Received], payouts: &[(DateTime<Utc>, i128)], previous: &Journal, day: &Day) -> Start {
        let news = points
            .iter()
            .filter(|r| r.received_at >= day.t0 && r.received_at < day.t);
        Start {
            previous_end: Some(previous.liability_end),
            first_news: news.map(|r| r.point.as_of).min(),
            paid: paid_before(payouts, day.t) - paid_before(payouts, day.t0),
        }
    }

    fn run(plans: &Plans, points: &[Received], payouts: &[(DateTime<Utc>, i128)]) -> Result<(), TestCaseError> {
        let first = NaiveDate::from_ymd_opt(2025, 12, 29).unwrap();
        let mut previous: Option<Journal> = None;
        for n in 0..20 {
            let day = Day::new(first.checked_add_days(Days::new(n)).unwrap()).unwrap();
            if !points.iter().any(|r| r.received_at < day.t) {
                continue; // the account does not exist yet: no row
            }
            let (p0, p) = (paid_before(payouts, day.t0), paid_before(payouts, day.t));
            let full = journal(plans, points, p0, p, &day);
            let row = match &previous {
                None => full,
                Some(prev) => {
                    let start = start_of(points, payouts, prev, &day);
                    let cut = cutoff(&day, start.first_news);
                    journal_since(plans, &window(points, cut, &day), cut, start, &day)
                }
            };
            prop_assert_eq!(row, full, "day {}", day.date);
            prop_assert!(row.holds());
            previous = Some(row);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn closing_from_the_previous_row_gives_the_full_rows_every_day(pts in points(), pay in payouts()) {
            run(&plans("continuous"), &pts, &pay)?;
        }

        #[test]
        fn the_same_for_daily_close_plans(pts in points(), pay in payouts()) {
            run(&plans("daily_close"), &pts, &pay)?;
        }
    }
}
