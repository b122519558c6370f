//! An account's payout history (`GET /v1/accounts/{id}/interest/payouts`):
//! newest first, keyset-paginated on the index `interest_payouts_history`,
//! so a page costs the same for an account paid yesterday or for ten years.

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::money::types::format_instant;
use crate::wire::PayoutJson;

/// Where a page starts: just after this payout in the history's order
/// (business date, period start, payout id; all descending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryCursor {
    pub business_date: NaiveDate,
    pub period_start: DateTime<Utc>,
    pub payout_id: Uuid,
}

/// One page's question.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub account_id: String,
    /// Business dates, both ends included.
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub after: Option<HistoryCursor>,
    pub limit: u32,
}

/// A page: its payouts and, when more may follow, the cursor of the last.
/// `None` when the account does not exist.
pub async fn payout_history(
    pool: &PgPool,
    q: &HistoryQuery,
) -> anyhow::Result<Option<(Vec<PayoutJson>, Option<HistoryCursor>)>> {
    if !account_exists(pool, &q.account_id).await? {
        return Ok(None);
    }
    // One more row than asked tells whether another page follows.
    let rows = sqlx::query(
        "SELECT payout_id, account_id, kind, business_date, period_start, period_end, plan_id, rates::text AS rates,
                gross::text AS gross, income_tax::text AS income_tax, local_tax::text AS local_tax,
                rural_tax::text AS rural_tax, adjustment::text AS adjustment, net::text AS net, currency, accepted_at
         FROM interest_payouts
         WHERE account_id = $1
           AND ($2::date IS NULL OR business_date >= $2) AND ($3::date IS NULL OR business_date <= $3)
           AND ($4::date IS NULL OR (business_date, period_start, payout_id) < ($4, $5, $6))
         ORDER BY business_date DESC, period_start DESC, payout_id DESC
         LIMIT $7",
    )
    .bind(&q.account_id)
    .bind(q.from)
    .bind(q.to)
    .bind(q.after.map(|c| c.business_date))
    .bind(q.after.map(|c| c.period_start))
    .bind(q.after.map(|c| c.payout_id))
    .bind(i64::from(q.limit) + 1)
    .fetch_all(pool)
    .await
    .context("reading the payout history")?;
    let more = rows.len() > q.limit as usize;
    let mut page = Vec::with_capacity(rows.len());
    let mut last = None;
    for r in rows.iter().take(q.limit as usize) {
        last = Some(HistoryCursor {
            business_date: r.get("business_date"),
            period_start: r.get("period_start"),
            payout_id: r.get("payout_id"),
        });
        page.push(payout_json(r)?);
    }
    Ok(Some((page, last.filter(|_| more))))
}

/// Whether the account exists (an empty history is not an unknown account).
async fn account_exists(pool: &PgPool, account_id: &str) -> anyhow::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE account_id = $1)")
        .bind(account_id)
        .fetch_one(pool)
        .await
        .context("looking the account up")
}

/// A stored payout in its wire form (SPEC §5), as the 201 showed it.
pub(super) fn payout_json(r: &sqlx::postgres::PgRow) -> anyhow::Result<PayoutJson> {
    let text = |c: &str| -> String { r.get(c) };
    let instant = |c: &str| format_instant(r.get::<DateTime<Utc>, _>(c));
    Ok(PayoutJson {
        payout_id: r.get::<Uuid, _>("payout_id").to_string(),
        account_id: text("account_id"),
        kind: text("kind"),
        business_date: r.get::<NaiveDate, _>("business_date").to_string(),
        period_start: instant("period_start"),
        period_end: instant("period_end"),
        gross: text("gross"),
        income_tax: text("income_tax"),
        local_tax: text("local_tax"),
        rural_tax: text("rural_tax"),
        adjustment: text("adjustment"),
        net: text("net"),
        currency: text("currency"),
        plan: text("plan_id"),
        rates: serde_json::from_str(&text("rates")).context("a stored rates column")?,
        accepted_at: instant("accepted_at"),
    })
}

/// One line of an interest statement: a month (`period` = `YYYY-MM`) or the
/// whole year (`period` = `YYYY`), per currency and withholding profile.
/// Amounts are exact sums of the payouts (NUMERIC, as text).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatementLine {
    pub period: String,
    pub currency: String,
    pub tax_profile: String,
    pub payouts: i64,
    pub gross: String,
    pub income_tax: String,
    pub local_tax: String,
    pub rural_tax: String,
    pub net: String,
}

/// The account's interest statement for `year` (business dates, KST): its
/// months, then the year, each per currency and profile; `None` when the
/// account does not exist. One range scan of `interest_payouts_history`.
pub async fn statement(pool: &PgPool, account_id: &str, year: i32) -> anyhow::Result<Option<Vec<StatementLine>>> {
    if !account_exists(pool, account_id).await? {
        return Ok(None);
    }
    let rows = sqlx::query(
        "SELECT coalesce(to_char(business_date, 'YYYY-MM'), $2::text) AS period, currency, tax_profile,
                count(*) AS payouts, sum(gross)::text AS gross, sum(income_tax)::text AS income_tax,
                sum(local_tax)::text AS local_tax, sum(rural_tax)::text AS rural_tax, sum(net)::text AS net
         FROM interest_payouts
         WHERE account_id = $1 AND business_date >= make_date($3, 1, 1) AND business_date < make_date($3 + 1, 1, 1)
         GROUP BY GROUPING SETS ((to_char(business_date, 'YYYY-MM'), currency, tax_profile), (currency, tax_profile))
         ORDER BY grouping(to_char(business_date, 'YYYY-MM')), period, currency, tax_profile",
    )
    .bind(account_id)
    .bind(year.to_string())
    .bind(year)
    .fetch_all(pool)
    .await
    .context("reading the statement")?;
    let line = |r: &sqlx::postgres::PgRow| StatementLine {
        period: r.get("period"),
        currency: r.get("currency"),
        tax_profile: r.get("tax_profile"),
        payouts: r.get("payouts"),
        gross: r.get("gross"),
        income_tax: r.get("income_tax"),
        local_tax: r.get("local_tax"),
        rural_tax: r.get("rural_tax"),
        net: r.get("net"),
    };
    Ok(Some(rows.iter().map(line).collect()))
}
