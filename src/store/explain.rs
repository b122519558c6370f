//! What `GET /v1/payouts/{id}` reads: the stored payout and, to explain it,
//! the balance timeline of its period, the carry the previous payout left
//! and the late snapshots (corrections) received since that payout.

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::history::payout_json;
use super::units_parse;
use crate::money::accrual::{Accrued, Point};
use crate::money::explain::Paid;
use crate::money::tax::Withholding;
use crate::money::types::format_instant;
use crate::money::{Currency, TaxProfile};
use crate::wire::{CorrectionJson, PayoutJson};

/// A payout as stored, with what its explanation starts from.
#[derive(Debug, Clone)]
pub struct StoredPayout {
    pub json: PayoutJson,
    pub account_id: String,
    pub currency: Currency,
    pub tax_profile: TaxProfile,
    pub paid: Paid,
    pub paid_at: DateTime<Utc>,
}

/// The period's timeline and what came in from before it.
#[derive(Debug, Clone)]
pub struct ExplainInputs {
    /// Sorted by seq: the point in force at the period's start (as known by
    /// the payout, or later) and every point up to its end, with the service
    /// clock at which each was applied.
    pub points: Vec<(Point, DateTime<Utc>)>,
    /// The previous payout's carried-out remainder (zero for the first).
    pub carry_in: Accrued,
    /// Late snapshots of already-paid intervals received since the previous payout.
    pub corrections: Vec<CorrectionJson>,
}

const PAYOUT_COLUMNS: &str = "payout_id, account_id, kind, business_date, period_start, period_end, plan_id,
    rates::text AS rates, gross::text AS gross, income_tax::text AS income_tax, local_tax::text AS local_tax,
    rural_tax::text AS rural_tax, adjustment::text AS adjustment, net::text AS net, currency, accepted_at, paid_at,
    tax_profile, accrued_units::text AS au, carried_in_units::text AS ciu, carried_out_units::text AS cou,
    dropped_units::text AS du";

/// One payout by id; `None` when there is none.
pub async fn payout_by_id(pool: &PgPool, payout_id: Uuid) -> anyhow::Result<Option<StoredPayout>> {
    let row = sqlx::query(&format!(
        "SELECT {PAYOUT_COLUMNS} FROM interest_payouts WHERE payout_id = $1"
    ))
    .bind(payout_id)
    .fetch_optional(pool)
    .await
    .context("reading a payout")?;
    let Some(r) = row else { return Ok(None) };
    let currency = Currency::try_from(r.get::<String, _>("currency").as_str())?;
    let minor = |c: &str| currency.parse_amount(r.get(c));
    let units = |c: &str| units_parse(r.get(c));
    let paid = Paid {
        period_start: r.get::<DateTime<Utc>, _>("period_start").timestamp(),
        period_end: r.get::<DateTime<Utc>, _>("period_end").timestamp(),
        accrued: units("au")?,
        carried_in: units("ciu")?,
        carried_out: units("cou")?,
        dropped: units("du")?,
        gross: minor("gross")?,
        tax: Withholding {
            income_tax: minor("income_tax")?,
            local_tax: minor("local_tax")?,
            rural_tax: minor("rural_tax")?,
        },
        net: minor("net")?,
    };
    Ok(Some(StoredPayout {
        json: payout_json(&r)?,
        account_id: r.get("account_id"),
        currency,
        tax_profile: TaxProfile::try_from(r.get::<String, _>("tax_profile").as_str())?,
        paid,
        paid_at: r.get("paid_at"),
    }))
}

/// The inputs of a stored payout's explanation. Balance points pruned by
/// retention are simply absent: the explanation then fails to reproduce the
/// payout and the caller answers that it has expired.
pub async fn explain_inputs(pool: &PgPool, p: &StoredPayout) -> anyhow::Result<ExplainInputs> {
    let start = crate::store::secs_utc(p.paid.period_start);
    let end = crate::store::secs_utc(p.paid.period_end);
    let (carry_in, since) = previous_payout(pool, p).await?;
    // From the point in force at the start as the payout knew it (received by
    // then); a point received later may start later, and loads with the rest.
    let rows = sqlx::query(
        "WITH first AS (
             SELECT coalesce(
                 (SELECT as_of FROM balance_points WHERE account_id = $1 AND as_of < $2 + interval '1 second'
                    AND received_at <= $4 ORDER BY seq DESC LIMIT 1),
                 (SELECT as_of FROM balance_points WHERE account_id = $1 AND as_of < $2 + interval '1 second'
                    ORDER BY seq DESC LIMIT 1),
                 $2) AS as_of)
         SELECT seq, b.as_of, balance::text AS balance, plan_id, received_at
         FROM balance_points b, first
         WHERE account_id = $1 AND b.as_of >= first.as_of AND b.as_of < $3 + interval '1 second'
         ORDER BY seq",
    )
    .bind(&p.account_id)
    .bind(start)
    .bind(end)
    .bind(p.paid_at)
    .fetch_all(pool)
    .await
    .context("reading the period's balance points")?;
    let mut points = Vec::with_capacity(rows.len());
    for r in &rows {
        let point = Point {
            seq: r.get::<i64, _>("seq") as u64,
            as_of: r.get("as_of"),
            balance: p.currency.parse_amount(r.get("balance"))?,
            plan: r.get("plan_id"),
        };
        points.push((point, r.get::<DateTime<Utc>, _>("received_at")));
    }
    let corrections = if carry_in == p.paid.carried_in {
        Vec::new() // no adjustment came in: points received meanwhile were not corrections
    } else {
        corrections(pool, p, since).await?
    };
    Ok(ExplainInputs {
        points,
        carry_in,
        corrections,
    })
}

/// The previous payout's carried-out remainder and when it was paid (none: zero, never).
async fn previous_payout(pool: &PgPool, p: &StoredPayout) -> anyhow::Result<(Accrued, Option<DateTime<Utc>>)> {
    let start = crate::store::secs_utc(p.paid.period_start);
    let previous = sqlx::query(
        "SELECT carried_out_units::text AS cou, paid_at FROM interest_payouts
         WHERE account_id = $1 AND payout_id <> $2 AND period_end <= $3 AND paid_at <= $4
         ORDER BY period_end DESC, paid_at DESC, accepted_at DESC LIMIT 1",
    )
    .bind(&p.account_id)
    .bind(Uuid::parse_str(&p.json.payout_id)?)
    .bind(start)
    .bind(p.paid_at)
    .fetch_optional(pool)
    .await
    .context("reading the previous payout")?;
    Ok(match previous {
        Some(r) => (units_parse(r.get("cou"))?, Some(r.get::<DateTime<Utc>, _>("paid_at"))),
        None => (Accrued::ZERO, None),
    })
}

/// The late snapshots of already-paid intervals received between the previous payout and this one.
async fn corrections(
    pool: &PgPool,
    p: &StoredPayout,
    since: Option<DateTime<Utc>>,
) -> anyhow::Result<Vec<CorrectionJson>> {
    let start = crate::store::secs_utc(p.paid.period_start);
    let rows = sqlx::query(
        "SELECT seq, as_of, balance::text AS balance, received_at FROM balance_points
         WHERE account_id = $1 AND ($2::timestamptz IS NULL OR received_at > $2) AND received_at <= $3
           AND as_of < $4
         ORDER BY seq",
    )
    .bind(&p.account_id)
    .bind(since)
    .bind(p.paid_at)
    .bind(start)
    .fetch_all(pool)
    .await
    .context("reading the corrections")?;
    Ok(rows
        .iter()
        .map(|r| CorrectionJson {
            seq: r.get::<i64, _>("seq") as u64,
            as_of: format_instant(r.get("as_of")),
            balance: r.get("balance"),
            received_at: format_instant(r.get("received_at")),
        })
        .collect())
}
