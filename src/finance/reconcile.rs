//! `reconcile --date D`: checks the money invariants of a business date and
//! prints either a one-screen summary (exit 0) or every offending account with
//! what was expected and what was found (exit 1).
//!
//! - (a) every payout of D: `net = gross − taxes`, amounts non-negative with at
//!   most the currency's decimals, KRW taxes in 10 won, and the exact units
//!   decomposition `gross·10^minor·DEN + carried_out + dropped = accrued + carried_in`;
//! - (b) every `daily_accruals` row of D: its identity, its `paid_units` against
//!   the payouts accepted in [T0, T), its `liability_start` against the previous
//!   day's `liability_end`, its display columns; and, once close-day completed,
//!   that every account that existed by T has its row; with `--recompute`,
//!   every row against the full recomputation from the account's whole
//!   history (close-day builds D from D−1's row: this audits the chain);
//! - (c) every payout of D has an outbox row that was published;
//! - (d) no payout of D overlaps (non-empty periods) another payout of the account;
//! - (e) every `daily_close` payout of D ends where SPEC §2 "Payout period"
//!   says: at 00:00 KST of its business date (whole days), or at its start
//!   when that is later (an empty period carrying only an adjustment).
//!   Continuous periods are not checked here (the finance fixtures write
//!   synthetic continuous periods by SQL); the engine's tests hold them.
//!
//! The database holds most of (a) as CHECK constraints too: this is the pair
//! across the boundary, and catches what constraints cannot see.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use sqlx::{PgPool, Row};

use super::close_day::{compute_whole, Journal, PageAccount};
use super::{display, kst, major_to_units, units, Day, ReconcileArgs};
use crate::config::Settings;
use crate::money::plan::AccrualStyle;
use crate::money::{Currency, Plans};

/// What failed, for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub check: &'static str,
    /// Empty for a problem of the whole date.
    pub account_id: String,
    pub detail: String,
}

#[derive(Debug, Default)]
struct Report {
    problems: Vec<Problem>,
    lines: Vec<String>,
}

impl Report {
    fn fail(&mut self, check: &'static str, account_id: &str, detail: String) {
        self.problems.push(Problem {
            check,
            account_id: account_id.to_owned(),
            detail,
        });
    }
}

pub async fn run(settings: &Settings, args: &ReconcileArgs) -> anyhow::Result<()> {
    let day = Day::new(args.date)?;
    let pool = super::connect(settings, 2, false).await?;
    let mut report = Report::default();
    check_payouts(&pool, &day, &mut report).await?;
    check_journal(&pool, &day, &mut report).await?;
    if args.recompute {
        let plans = crate::store::load_plans(&pool, settings.default_plan.as_deref()).await?;
        let n = check_recomputed(&pool, &plans, &day, &mut report).await?;
        report.lines.push(format!(
            "(b) daily_accruals: {n} rows recomputed from the whole history"
        ));
    }
    check_outbox(&pool, &day, &mut report).await?;
    check_overlaps(&pool, &day, &mut report).await?;
    let plans = crate::store::load_plans(&pool, settings.default_plan.as_deref()).await?;
    check_period_ends(&pool, &plans, &day, &mut report).await?;
    let n = report.problems.len();
    if n == 0 {
        println!("reconcile {}: OK", day.date);
        for l in &report.lines {
            println!("  {l}");
        }
        return Ok(());
    }
    println!("reconcile {}: {n} problem(s)", day.date);
    for p in report.problems.iter().take(args.show_max as usize) {
        match p.account_id.as_str() {
            "" => println!("  ({}) {}", p.check, p.detail),
            account => println!("  ({}) account {account}: {}", p.check, p.detail),
        }
    }
    if n > args.show_max as usize {
        println!("  ... and {} more", n - args.show_max as usize);
    }
    let accounts: std::collections::BTreeSet<&str> = report
        .problems
        .iter()
        .map(|p| p.account_id.as_str())
        .filter(|a| !a.is_empty())
        .collect();
    anyhow::bail!(
        "reconcile {}: {n} problem(s) on {} account(s)",
        day.date,
        accounts.len()
    )
}

/// (a) Each payout's arithmetic, read back from the table.
async fn check_payouts(pool: &PgPool, day: &Day, report: &mut Report) -> anyhow::Result<()> {
    let mut rows = sqlx::query(
        "SELECT payout_id::text AS id, account_id, kind, currency, gross::text AS gross, income_tax::text AS it,
                local_tax::text AS lt, rural_tax::text AS rt, net::text AS net, accrued_units::text AS au,
                carried_in_units::text AS ci, carried_out_units::text AS co, dropped_units::text AS du
         FROM interest_payouts WHERE business_date = $1 ORDER BY account_id, period_start",
    )
    .bind(day.date)
    .fetch(pool);
    let mut totals: BTreeMap<(String, String), (u64, Decimal, Decimal, Decimal)> = BTreeMap::new();
    while let Some(r) = rows.try_next().await.context("reading payouts")? {
        let account: String = r.get("account_id");
        let currency = Currency::try_from(r.get::<&str, _>("currency"))?;
        let dec = |c: &str| -> anyhow::Result<Decimal> { Ok(r.get::<&str, _>(c).parse()?) };
        let p = PayoutAmounts {
            id: r.get("id"),
            currency,
            gross: dec("gross")?,
            taxes: [dec("it")?, dec("lt")?, dec("rt")?],
            net: dec("net")?,
            units: [
                units(r.get("au"))?,
                units(r.get("ci"))?,
                units(r.get("co"))?,
                units(r.get("du"))?,
            ],
        };
        for detail in payout_problems(&p) {
            report.fail("a", &account, detail);
        }
        let t = totals.entry((r.get("kind"), currency.code().to_owned())).or_default();
        *t = (
            t.0 + 1,
            t.1 + p.gross,
            t.2 + p.taxes.iter().sum::<Decimal>(),
            t.3 + p.net,
        );
    }
    if totals.is_empty() {
        report.lines.push(format!("(a) payouts of {}: none", day.date));
    }
    for ((kind, currency), (n, gross, taxes, net)) in totals {
        report.lines.push(format!(
            "(a) payouts of {} ({kind}, {currency}): {n} checked; gross {gross}, taxes {taxes}, net {net}",
            day.date
        ));
    }
    Ok(())
}

/// One payout's stored amounts.
#[derive(Debug, Clone)]
pub struct PayoutAmounts {
    pub id: String,
    pub currency: Currency,
    pub gross: Decimal,
    /// income, local, rural.
    pub taxes: [Decimal; 3],
    pub net: Decimal,
    /// accrued, carried_in, carried_out, dropped.
    pub units: [i128; 4],
}

/// Everything wrong with one payout, as readable lines (empty when it is right).
pub fn payout_problems(p: &PayoutAmounts) -> Vec<String> {
    let mut out = Vec::new();
    let [it, lt, rt] = p.taxes;
    let id = &p.id;
    let want_net = p.gross - it - lt - rt;
    if p.net != want_net {
        out.push(format!(
            "payout {id}: net {} but gross {} − income_tax {it} − local_tax {lt} − rural_tax {rt} = {want_net} (off by {})",
            p.net,
            p.gross,
            p.net - want_net
        ));
    }
    for (name, v) in [
        ("gross", p.gross),
        ("income_tax", it),
        ("local_tax", lt),
        ("rural_tax", rt),
        ("net", p.net),
    ] {
        if v.is_sign_negative() && !v.is_zero() {
            out.push(format!("payout {id}: {name} {v} is negative"));
        }
        if v.normalize().scale() > p.currency.minor_digits() {
            out.push(format!(
                "payout {id}: {name} {v} has more decimals than {} allows",
                p.currency.code()
            ));
        }
    }
    if p.gross <= Decimal::ZERO {
        out.push(format!("payout {id}: gross {} is not positive", p.gross));
    }
    let step = Decimal::from(p.currency.tax_step_minor()) / Decimal::from(p.currency.minor_per_major());
    for (name, v) in [("income_tax", it), ("local_tax", lt), ("rural_tax", rt)] {
        if !(v % step).is_zero() {
            out.push(format!(
                "payout {id}: {name} {v} is not a multiple of {step} {}",
                p.currency.code()
            ));
        }
    }
    let [accrued, carried_in, carried_out, dropped] = p.units;
    if carried_out < 0 || dropped < 0 {
        out.push(format!(
            "payout {id}: carried_out {carried_out} / dropped {dropped} units negative"
        ));
    }
    match major_to_units(p.gross, p.currency) {
        Ok(gross_units) if gross_units + carried_out + dropped != accrued + carried_in => {
            let (left, right) = (gross_units + carried_out + dropped, accrued + carried_in);
            out.push(format!(
                "payout {id}: gross·DEN + carried_out + dropped = {left} but accrued + carried_in = {right} \
                 (off by {} units = {} {})",
                left - right,
                display(left - right, p.currency),
                p.currency.code()
            ));
        }
        Ok(_) => {}
        Err(e) => out.push(format!("payout {id}: {e}")),
    }
    out
}

/// (b) The journal rows of D: each row's arithmetic and continuity, then
/// that every account that existed by the cut has its row.
async fn check_journal(pool: &PgPool, day: &Day, report: &mut Report) -> anyhow::Result<()> {
    let close = sqlx::query("SELECT completed_at FROM day_closes WHERE business_date = $1")
        .bind(day.date)
        .fetch_optional(pool)
        .await
        .context("reading day_closes")?;
    let completed: Option<DateTime<Utc>> = match close {
        None => {
            report.lines.push(format!(
                "(b) daily_accruals: close-day has not run for {}; checked (a), (c), (d) only",
                day.date
            ));
            return Ok(());
        }
        Some(r) => r.get("completed_at"),
    };
    let checked = check_journal_rows(pool, day, report).await?;
    let Some(done) = completed else {
        report.lines.push(format!(
            "(b) daily_accruals: {checked} rows checked, but close-day for {} has not completed; rerun it",
            day.date
        ));
        report.fail(
            "b",
            "",
            format!("close-day for {} started but did not complete; rerun it", day.date),
        );
        return Ok(());
    };
    check_journal_complete(pool, day, report).await?;
    report.lines.push(format!(
        "(b) daily_accruals: {checked} rows checked; close-day completed at {}",
        kst(done)
    ));
    Ok(())
}

/// Streams D's journal rows with the previous day's end and the day's
/// payouts beside each, and reports every row that does not add up.
/// Returns the number of rows checked.
async fn check_journal_rows(pool: &PgPool, day: &Day, report: &mut Report) -> anyhow::Result<u64> {
    let mut rows = sqlx::query(
        "SELECT d.account_id, d.currency, d.accrued_units::text AS au, d.corrections_units::text AS cu,
                d.paid_units::text AS pu, d.liability_start_units::text AS ls, d.liability_end_units::text AS le,
                d.accrued::text AS accrued, d.liability_end::text AS liability_end,
                prev.liability_end_units::text AS prev_le,
                coalesce(pay.gross, 0)::text AS pay_gross, coalesce(pay.dropped, 0)::text AS pay_dropped
         FROM daily_accruals d
         LEFT JOIN daily_accruals prev ON prev.account_id = d.account_id AND prev.business_date = d.business_date - 1
         LEFT JOIN LATERAL (
             SELECT sum(p.gross) AS gross, sum(p.dropped_units) AS dropped FROM interest_payouts p
             WHERE p.account_id = d.account_id AND p.accepted_at >= $2 AND p.accepted_at < $3
         ) pay ON true
         WHERE d.business_date = $1
         ORDER BY d.account_id",
    )
    .bind(day.date)
    .bind(day.t0)
    .bind(day.t)
    .fetch(pool);
    let mut checked = 0_u64;
    while let Some(r) = rows.try_next().await.context("reading daily_accruals")? {
        checked += 1;
        let account: String = r.get("account_id");
        for detail in journal_problems(&journal_row(&r)?) {
            report.fail("b", &account, detail);
        }
    }
    Ok(checked)
}

/// A row of the query in `check_journal_rows`, parsed.
fn journal_row(r: &sqlx::postgres::PgRow) -> anyhow::Result<JournalRow> {
    Ok(JournalRow {
        currency: Currency::try_from(r.get::<&str, _>("currency"))?,
        units: [
            units(r.get("au"))?,
            units(r.get("cu"))?,
            units(r.get("pu"))?,
            units(r.get("ls"))?,
            units(r.get("le"))?,
        ],
        shown: [
            r.get::<&str, _>("accrued").parse()?,
            r.get::<&str, _>("liability_end").parse()?,
        ],
        prev_end: r.get::<Option<&str>, _>("prev_le").map(units).transpose()?,
        paid_gross: r.get::<&str, _>("pay_gross").parse()?,
        paid_dropped: units(r.get("pay_dropped"))?,
    })
}

/// Accounts recomputed per statement by `--recompute`.
const RECOMPUTE_PAGE_SIZE: i64 = 500;

/// (b, `--recompute`) D's rows against the full computation, page by page.
/// Returns the number of rows recomputed.
async fn check_recomputed(pool: &PgPool, plans: &Plans, day: &Day, report: &mut Report) -> anyhow::Result<u64> {
    let (mut after, mut checked) = (String::new(), 0_u64);
    loop {
        let rows = sqlx::query(
            "SELECT account_id, currency, accrued_units::text AS au, corrections_units::text AS cu,
                    paid_units::text AS pu, liability_start_units::text AS ls, liability_end_units::text AS le
             FROM daily_accruals WHERE business_date = $1 AND account_id > $2 ORDER BY account_id LIMIT $3",
        )
        .bind(day.date)
        .bind(&after)
        .bind(RECOMPUTE_PAGE_SIZE)
        .fetch_all(pool)
        .await
        .context("reading daily_accruals")?;
        let Some(last) = rows.last() else { return Ok(checked) };
        after = last.get("account_id");
        let mut stored = BTreeMap::new();
        let mut page = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.get("account_id");
            let journal = Journal {
                accrued: units(r.get("au"))?,
                corrections: units(r.get("cu"))?,
                paid: units(r.get("pu"))?,
                liability_start: units(r.get("ls"))?,
                liability_end: units(r.get("le"))?,
            };
            let currency = Currency::try_from(r.get::<&str, _>("currency"))?;
            page.push(PageAccount {
                account_id: id.clone(),
                currency,
                done: true,
            });
            stored.insert(id, journal);
        }
        let refs: Vec<&PageAccount> = page.iter().collect();
        let mut full = compute_whole(pool, plans, day, &refs).await?;
        for (id, row) in stored {
            let want = full.remove(&id).expect("computed for every account of the page");
            if want != row {
                report.fail("b", &id, format!("stored {row:?} but the whole history gives {want:?}"));
            }
            checked += 1;
        }
    }
}

/// Every account that had a balance point applied before the cut has a
/// journal row for D.
async fn check_journal_complete(pool: &PgPool, day: &Day, report: &mut Report) -> anyhow::Result<()> {
    let missing: Vec<String> = sqlx::query_scalar(
        "SELECT a.account_id FROM accounts a
         WHERE EXISTS (SELECT 1 FROM balance_points p WHERE p.account_id = a.account_id AND p.received_at < $2)
           AND NOT EXISTS (SELECT 1 FROM daily_accruals d WHERE d.account_id = a.account_id AND d.business_date = $1)
         ORDER BY a.account_id",
    )
    .bind(day.date)
    .bind(day.t)
    .fetch_all(pool)
    .await
    .context("checking journal completeness")?;
    for account in &missing {
        report.fail(
            "b",
            account,
            format!(
                "no daily_accruals row for {} (the account existed by the cut)",
                day.date
            ),
        );
    }
    Ok(())
}

/// One stored journal row with what it is checked against.
#[derive(Debug, Clone)]
pub struct JournalRow {
    pub currency: Currency,
    /// accrued, corrections, paid, liability_start, liability_end.
    pub units: [i128; 5],
    /// The display columns: accrued, liability_end.
    pub shown: [Decimal; 2],
    /// The previous day's liability_end_units, when that row exists.
    pub prev_end: Option<i128>,
    /// Σ gross and Σ dropped_units of the account's payouts accepted in [T0, T).
    pub paid_gross: Decimal,
    pub paid_dropped: i128,
}

pub fn journal_problems(r: &JournalRow) -> Vec<String> {
    let mut out = Vec::new();
    let c = r.currency;
    let amount = |u: i128| format!("{u} units ({} {})", display(u, c), c.code());
    let [accrued, corrections, paid, start, end] = r.units;
    let want_end = start + accrued + corrections - paid;
    if end != want_end {
        out.push(format!(
            "liability_end {} but start + accrued + corrections − paid = {}",
            amount(end),
            amount(want_end)
        ));
    }
    match major_to_units(r.paid_gross, c) {
        Ok(g) if g + r.paid_dropped != paid => out.push(format!(
            "paid_units {} but the payouts accepted that day sum to {} (gross {} + dropped {}; off by {})",
            amount(paid),
            amount(g + r.paid_dropped),
            r.paid_gross,
            r.paid_dropped,
            amount(paid - g - r.paid_dropped)
        )),
        Ok(_) => {}
        Err(e) => out.push(format!("payouts of the day: {e}")),
    }
    if let Some(prev) = r.prev_end.filter(|p| *p != start) {
        out.push(format!(
            "liability_start {} but the previous day ended at {}",
            amount(start),
            amount(prev)
        ));
    }
    for (name, shown, u) in [("accrued", r.shown[0], accrued), ("liability_end", r.shown[1], end)] {
        if shown != display(u, c) {
            out.push(format!("{name} shows {shown} but its units are {}", amount(u)));
        }
    }
    out
}

/// (c) Every payout of D was published.
async fn check_outbox(pool: &PgPool, day: &Day, report: &mut Report) -> anyhow::Result<()> {
    let rows = sqlx::query(
        "SELECT p.payout_id::text AS id, p.account_id, p.net::text AS net, p.currency, o.payout_id IS NULL AS missing
         FROM interest_payouts p LEFT JOIN payout_outbox o ON o.payout_id = p.payout_id
         WHERE p.business_date = $1 AND (o.payout_id IS NULL OR o.published_at IS NULL)
         ORDER BY p.account_id, p.period_start",
    )
    .bind(day.date)
    .fetch_all(pool)
    .await
    .context("checking the outbox")?;
    let n = rows.len();
    for r in rows {
        let what = if r.get("missing") {
            "has no outbox row"
        } else {
            "is not yet published"
        };
        let detail = format!(
            "payout {} (net {} {}) {what} on interest-payouts",
            r.get::<&str, _>("id"),
            r.get::<&str, _>("net"),
            r.get::<&str, _>("currency")
        );
        report.fail("c", r.get("account_id"), detail);
    }
    if n == 0 {
        report
            .lines
            .push("(c) outbox: every payout of the date was published".into());
    }
    Ok(())
}

/// (d) No interval of interest was paid twice.
async fn check_overlaps(pool: &PgPool, day: &Day, report: &mut Report) -> anyhow::Result<()> {
    let rows = sqlx::query(
        "SELECT a.account_id, a.payout_id::text AS a_id, a.period_start AS a_start, a.period_end AS a_end,
                b.payout_id::text AS b_id, b.period_start AS b_start, b.period_end AS b_end,
                b.business_date::text AS b_date, b.kind AS b_kind, a.kind AS a_kind
         FROM interest_payouts a
         JOIN interest_payouts b ON b.account_id = a.account_id AND b.payout_id <> a.payout_id
         WHERE a.business_date = $1
           AND a.period_end > a.period_start AND b.period_end > b.period_start
           AND a.period_start < b.period_end AND b.period_start < a.period_end
           AND (b.business_date <> $1 OR a.payout_id < b.payout_id)
         ORDER BY a.account_id, a.period_start",
    )
    .bind(day.date)
    .fetch_all(pool)
    .await
    .context("checking overlapping periods")?;
    let n = rows.len();
    for r in rows {
        let at = |c: &str| kst(r.get::<DateTime<Utc>, _>(c));
        let detail = format!(
            "paid twice: {} payout {} [{}, {}) overlaps {} payout {} [{}, {}) of {}",
            r.get::<&str, _>("a_kind"),
            r.get::<&str, _>("a_id"),
            at("a_start"),
            at("a_end"),
            r.get::<&str, _>("b_kind"),
            r.get::<&str, _>("b_id"),
            at("b_start"),
            at("b_end"),
            r.get::<&str, _>("b_date"),
        );
        report.fail("d", r.get("account_id"), detail);
    }
    if n == 0 {
        report.lines.push("(d) periods: no interval paid twice".into());
    }
    Ok(())
}

/// Where a payout's period must end (SPEC §2), from its plan's accrual style
/// (check (e) uses it for `daily_close` payouts).
pub fn expected_period_end(
    style: AccrualStyle,
    kind: &str,
    business_date: chrono::NaiveDate,
    period_start: DateTime<Utc>,
    accepted_at: DateTime<Utc>,
) -> DateTime<Utc> {
    let midnight = crate::money::types::kst_midnight_utc(business_date);
    let through = match (style, kind) {
        (AccrualStyle::Continuous, "claim") => {
            // Instants floor to the second.
            DateTime::from_timestamp(accepted_at.timestamp(), 0).expect("in range")
        }
        _ => midnight,
    };
    through.max(period_start)
}

/// (e) Every period ends where the accrual style says it does.
async fn check_period_ends(pool: &PgPool, plans: &Plans, day: &Day, report: &mut Report) -> anyhow::Result<()> {
    let rows = sqlx::query(
        "SELECT account_id, payout_id::text AS id, kind, plan_id, period_start, period_end, accepted_at
         FROM interest_payouts WHERE business_date = $1 ORDER BY account_id, period_start",
    )
    .bind(day.date)
    .fetch_all(pool)
    .await
    .context("reading the periods of the date's payouts")?;
    let mut bad = 0;
    for r in &rows {
        let plan_id: &str = r.get("plan_id");
        let Some(plan) = plans.get(plan_id) else {
            report.fail("e", r.get("account_id"), format!("unknown plan {plan_id}"));
            bad += 1;
            continue;
        };
        if plan.accrual == AccrualStyle::Continuous {
            continue;
        }
        let end: DateTime<Utc> = r.get("period_end");
        let want = expected_period_end(
            plan.accrual,
            r.get("kind"),
            day.date,
            r.get("period_start"),
            r.get("accepted_at"),
        );
        if end != want {
            let detail = format!(
                "payout {} ({} plan {plan_id}) ends at {}, expected {}",
                r.get::<&str, _>("id"),
                plan.accrual.as_str(),
                kst(end),
                kst(want)
            );
            report.fail("e", r.get("account_id"), detail);
            bad += 1;
        }
    }
    if bad == 0 {
        report
            .lines
            .push("(e) periods: every daily-close payout ends at 00:00 KST of its date".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::ACCRUAL_DENOMINATOR;

    const DEN: i128 = ACCRUAL_DENOMINATOR;

    fn good() -> PayoutAmounts {
        PayoutAmounts {
            id: "p1".into(),
            currency: Currency::KRW,
            gross: Decimal::from(2739),
            taxes: [Decimal::from(380), Decimal::from(30), Decimal::ZERO],
            net: Decimal::from(2329),
            units: [2739 * DEN + DEN / 3, 0, DEN / 3, 0],
        }
    }

    #[test]
    fn periods_end_where_the_accrual_style_says() {
        let t = |s: &str| crate::money::types::parse_instant(s).unwrap();
        let date = chrono::NaiveDate::from_ymd_opt(2026, 3, 3).unwrap();
        let (start, at) = (t("2026-03-01T09:00:00+09:00"), t("2026-03-03T13:45:10.700+09:00"));
        let end = |style, kind| expected_period_end(style, kind, date, start, at);
        assert_eq!(end(AccrualStyle::Continuous, "claim"), t("2026-03-03T13:45:10+09:00"));
        assert_eq!(end(AccrualStyle::DailyClose, "claim"), t("2026-03-03T00:00:00+09:00"));
        assert_eq!(end(AccrualStyle::Continuous, "auto"), t("2026-03-03T00:00:00+09:00"));
        assert_eq!(end(AccrualStyle::DailyClose, "auto"), t("2026-03-03T00:00:00+09:00"));
        // A period that starts later (nothing accrued, only a carried adjustment) is empty.
        let late = t("2026-03-03T05:00:00+09:00");
        let empty = expected_period_end(AccrualStyle::DailyClose, "claim", date, late, at);
        assert_eq!(empty, late);
    }

    #[test]
    fn a_right_payout_has_no_problems() {
        assert!(payout_problems(&good()).is_empty(), "{:?}", payout_problems(&good()));
    }

    #[test]
    fn wrong_payouts_say_what_is_wrong() {
        let mut p = good();
        p.net -= Decimal::from(10);
        assert!(
            payout_problems(&p)[0].contains("net 2319 but gross 2739"),
            "{:?}",
            payout_problems(&p)
        );
        let mut p = good();
        p.taxes[0] = Decimal::from(385);
        p.net = Decimal::from(2324);
        assert!(payout_problems(&p)
            .iter()
            .any(|l| l.contains("income_tax 385 is not a multiple of 10")));
        let mut p = good();
        p.gross += Decimal::from(1);
        p.net += Decimal::from(1);
        assert!(payout_problems(&p)
            .iter()
            .any(|l| l.contains("off by 13850611200000000000 units = 1 KRW")));
    }

    fn row() -> JournalRow {
        JournalRow {
            currency: Currency::KRW,
            units: [2000 * DEN, 0, 1500 * DEN, 2000 * DEN, 2500 * DEN],
            shown: [Decimal::from(2000), Decimal::from(2500)],
            prev_end: Some(2000 * DEN),
            paid_gross: Decimal::from(1500),
            paid_dropped: 0,
        }
    }

    #[test]
    fn journal_rows_are_checked_against_payouts_and_yesterday() {
        assert!(journal_problems(&row()).is_empty(), "{:?}", journal_problems(&row()));
        let mut r = row();
        r.paid_gross = Decimal::from(1510);
        assert!(
            journal_problems(&r)[0].contains("paid_units"),
            "{:?}",
            journal_problems(&r)
        );
        let mut r = row();
        r.prev_end = Some(1999 * DEN);
        assert!(journal_problems(&r)[0].contains("previous day ended at"));
        let mut r = row();
        r.units[4] += 1;
        assert_eq!(
            journal_problems(&r).len(),
            1,
            "the display truncates: only the identity fails"
        );
    }
}
