//! Payouts and their outbox: written with the batch, published by the relay.

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{units_text, Tx};
use crate::money::Minor;
use crate::wire::{self, PayoutJson};

/// A payout row with what the outbox publishes.
#[derive(Debug, Clone)]
pub struct PayoutRow {
    pub payout_id: Uuid,
    pub claim_id: Option<Uuid>,
    pub idempotency_key: Option<String>,
    pub account_id: String,
    /// The withholding profile the taxes were computed under.
    pub tax_profile: crate::money::TaxProfile,
    pub partition: i32,
    pub payout: crate::money::Payout,
    pub body: PayoutJson,
}

/// `paid_at` is the batch's clock reading, the one its balance points get as
/// `received_at`, so an explanation can tell which points a payout knew.
pub async fn insert_payouts(tx: &mut Tx<'_>, rows: &[PayoutRow], paid_at: DateTime<Utc>) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let amt = |f: &dyn Fn(&crate::money::Payout) -> Minor| -> Vec<String> {
        rows.iter()
            .map(|r| r.payout.currency.to_decimal(f(&r.payout)).to_string())
            .collect()
    };
    sqlx::query(
        "INSERT INTO interest_payouts (payout_id, claim_id, account_id, kind, business_date, period_start, period_end,
             plan_id, rates, gross, income_tax, local_tax, rural_tax, adjustment, net, currency, idempotency_key, accepted_at,
             accrued_units, carried_in_units, carried_out_units, dropped_units, tax_profile, paid_at)
         SELECT id, cid, a, k, d, ps, pe, plan, rates::jsonb, g::numeric, it::numeric, lt::numeric, rt::numeric,
                adj::numeric, n::numeric, cur, ik, acc, au::numeric, ci::numeric, co::numeric, du::numeric, tp, $24
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::date[], $6::timestamptz[], $7::timestamptz[],
                     $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
                     $16::text[], $17::text[], $18::timestamptz[], $19::text[], $20::text[], $21::text[], $22::text[],
                     $23::text[])
           AS t(id, cid, a, k, d, ps, pe, plan, rates, g, it, lt, rt, adj, n, cur, ik, acc, au, ci, co, du, tp)",
    )
    .bind(rows.iter().map(|r| r.payout_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.claim_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.account_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.payout.kind.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.payout.business_date).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.payout.period_start).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.payout.period_end).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.payout.plan.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| wire::rates(&r.payout.rates).to_string()).collect::<Vec<_>>())
    .bind(amt(&|p| p.gross))
    .bind(amt(&|p| p.tax.income_tax))
    .bind(amt(&|p| p.tax.local_tax))
    .bind(amt(&|p| p.tax.rural_tax))
    .bind(amt(&|p| p.adjustment))
    .bind(amt(&|p| p.net))
    .bind(rows.iter().map(|r| r.payout.currency.code()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.idempotency_key.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.payout.accepted_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| units_text(r.payout.accrued)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| units_text(r.payout.carried_in)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| units_text(r.payout.carried_out)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| units_text(r.payout.dropped)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.tax_profile.as_str()).collect::<Vec<_>>())
    .bind(paid_at)
    .execute(&mut **tx)
    .await
    .context("inserting payouts")?;
    sqlx::query(
        "INSERT INTO payout_outbox (payout_id, partition, message_key, payload)
         SELECT id, p, k, b::jsonb FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::text[]) WITH ORDINALITY AS t(id, p, k, b, ord)
         ORDER BY ord",
    )
    .bind(rows.iter().map(|r| r.payout_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.partition).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.account_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.body.to_value().to_string()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await
    .context("writing the outbox")?;
    Ok(())
}

/// Outbox rows not yet published, for the given claim partitions, oldest first.
pub async fn unpublished(pool: &PgPool, partitions: &[i32], limit: i64) -> anyhow::Result<Vec<(Uuid, String, String)>> {
    let rows = sqlx::query(
        "SELECT payout_id, message_key, payload::text AS payload FROM payout_outbox
         WHERE published_at IS NULL AND partition = ANY($1) ORDER BY seq LIMIT $2",
    )
    .bind(partitions)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

pub async fn mark_published(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<()> {
    sqlx::query("UPDATE payout_outbox SET published_at = now() WHERE payout_id = ANY($1) AND published_at IS NULL")
        .bind(ids)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn outbox_pending(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM payout_outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}
