//! Claims, idempotency keys, and the answers sent to waiting API processes by NOTIFY.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::Tx;
use crate::claims::Answered;

/// The stored first answer for an idempotency key.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub account_id: String,
    pub claim_id: Uuid,
    pub status: i16,
    pub body: serde_json::Value,
}

pub async fn load_keys(tx: &mut Tx<'_>, keys: &[String]) -> anyhow::Result<HashMap<String, StoredKey>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT idempotency_key, account_id, claim_id, status, body::text AS body FROM idempotency_keys
         WHERE idempotency_key = ANY($1)",
    )
    .bind(keys)
    .fetch_all(&mut **tx)
    .await
    .context("loading idempotency keys")?;
    rows.into_iter()
        .map(|r| {
            let rec = StoredKey {
                account_id: r.get("account_id"),
                claim_id: r.get("claim_id"),
                status: r.get("status"),
                body: serde_json::from_str(r.get("body"))?,
            };
            Ok((r.get("idempotency_key"), rec))
        })
        .collect()
}

/// A claim's final answer, as written by the worker.
#[derive(Debug, Clone)]
pub struct ClaimResult {
    pub claim_id: Uuid,
    pub idempotency_key: String,
    pub account_id: String,
    pub accepted_at: DateTime<Utc>,
    pub business_date: NaiveDate,
    pub status: i16,
    pub body: serde_json::Value,
    pub payout_id: Option<Uuid>,
    pub replay_of: Option<Uuid>,
    /// First answer for its key: also recorded in `idempotency_keys`.
    pub first_for_key: bool,
}

pub async fn store_claim_results(tx: &mut Tx<'_>, results: &[ClaimResult]) -> anyhow::Result<()> {
    if results.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = results.iter().map(|r| r.claim_id).collect();
    let keys: Vec<&str> = results.iter().map(|r| r.idempotency_key.as_str()).collect();
    let accounts: Vec<&str> = results.iter().map(|r| r.account_id.as_str()).collect();
    let accepted: Vec<DateTime<Utc>> = results.iter().map(|r| r.accepted_at).collect();
    let dates: Vec<NaiveDate> = results.iter().map(|r| r.business_date).collect();
    let status: Vec<i16> = results.iter().map(|r| r.status).collect();
    let bodies: Vec<String> = results.iter().map(|r| r.body.to_string()).collect();
    let payouts: Vec<Option<Uuid>> = results.iter().map(|r| r.payout_id).collect();
    let replay: Vec<Option<Uuid>> = results.iter().map(|r| r.replay_of).collect();
    sqlx::query(
        "INSERT INTO claims (claim_id, idempotency_key, account_id, accepted_at, business_date, state, status, body,
                             payout_id, replay_of, completed_at)
         SELECT id, k, a, acc, d, 'done', s, b::jsonb, p, r, now()
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::date[], $6::int2[], $7::text[],
                     $8::uuid[], $9::uuid[]) AS t(id, k, a, acc, d, s, b, p, r)
         ON CONFLICT (claim_id) DO UPDATE SET state = 'done', status = EXCLUDED.status, body = EXCLUDED.body,
            payout_id = EXCLUDED.payout_id, replay_of = EXCLUDED.replay_of, completed_at = EXCLUDED.completed_at",
    )
    .bind(&ids)
    .bind(&keys)
    .bind(&accounts)
    .bind(&accepted)
    .bind(&dates)
    .bind(&status)
    .bind(&bodies)
    .bind(&payouts)
    .bind(&replay)
    .execute(&mut **tx)
    .await
    .context("storing claim results")?;
    let firsts: Vec<&ClaimResult> = results.iter().filter(|r| r.first_for_key).collect();
    if !firsts.is_empty() {
        sqlx::query(
            "INSERT INTO idempotency_keys (idempotency_key, account_id, claim_id, status, body)
             SELECT k, a, id, s, b::jsonb FROM unnest($1::text[], $2::text[], $3::uuid[], $4::int2[], $5::text[])
               AS t(k, a, id, s, b)",
        )
        .bind(firsts.iter().map(|r| r.idempotency_key.as_str()).collect::<Vec<_>>())
        .bind(firsts.iter().map(|r| r.account_id.as_str()).collect::<Vec<_>>())
        .bind(firsts.iter().map(|r| r.claim_id).collect::<Vec<_>>())
        .bind(firsts.iter().map(|r| r.status).collect::<Vec<_>>())
        .bind(firsts.iter().map(|r| r.body.to_string()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await
        .context("storing idempotency keys")?;
    }
    Ok(())
}
/// NOTIFY payloads are limited to 8000 bytes; answers are packed below this.
const NOTIFY_PAYLOAD_BYTES_MAX: usize = 7_800;

/// Wakes API processes waiting on these claims, typed answers included, so they
/// need no query of their own (delivered at commit). An answer too large for
/// one payload is sent as its bare id; the API then reads it from `claims`.
pub async fn notify_claims_done(tx: &mut Tx<'_>, answers: &[Answered]) -> anyhow::Result<()> {
    let mut payloads: Vec<String> = Vec::new();
    let mut current = String::from("[");
    for r in answers {
        let mut item = serde_json::to_string(r)?;
        if item.len() + 2 > NOTIFY_PAYLOAD_BYTES_MAX {
            item = serde_json::to_string(&serde_json::json!({ "claim_id": r.claim_id }))?;
        }
        if current.len() + item.len() + 2 > NOTIFY_PAYLOAD_BYTES_MAX {
            current.push(']');
            payloads.push(std::mem::replace(&mut current, String::from("[")));
        }
        if current.len() > 1 {
            current.push(',');
        }
        current.push_str(&item);
    }
    if current.len() > 1 {
        current.push(']');
        payloads.push(current);
    }
    if !payloads.is_empty() {
        sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .bind(CLAIM_DONE_CHANNEL)
            .bind(&payloads)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

pub const CLAIM_DONE_CHANNEL: &str = "interest_claim_done";

/// A claim as the API shows it.
#[derive(Debug, Clone)]
pub struct ClaimRecord {
    pub claim_id: Uuid,
    pub account_id: String,
    pub state: String,
    pub accepted_at: DateTime<Utc>,
    pub status: Option<i16>,
    pub body: Option<serde_json::Value>,
    pub replayed: bool,
}

pub async fn load_claims(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<Vec<ClaimRecord>> {
    let rows = sqlx::query(
        "SELECT claim_id, account_id, state, accepted_at, status, body::text AS body, replay_of IS NOT NULL AS replayed
         FROM claims WHERE claim_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
    .context("loading claims")?;
    rows.into_iter()
        .map(|r| {
            let body: Option<String> = r.get("body");
            Ok(ClaimRecord {
                claim_id: r.get("claim_id"),
                account_id: r.get("account_id"),
                state: r.get("state"),
                accepted_at: r.get("accepted_at"),
                status: r.get("status"),
                body: body.map(|b| serde_json::from_str(&b)).transpose()?,
                replayed: r.get("replayed"),
            })
        })
        .collect()
}

/// Records a claim the API answered 202 for, unless the worker already finished it.
pub async fn insert_accepted_claim(
    pool: &PgPool,
    claim_id: Uuid,
    key: &str,
    account_id: &str,
    accepted_at: DateTime<Utc>,
    business_date: NaiveDate,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO claims (claim_id, idempotency_key, account_id, accepted_at, business_date, state)
         VALUES ($1, $2, $3, $4, $5, 'accepted') ON CONFLICT (claim_id) DO NOTHING",
    )
    .bind(claim_id)
    .bind(key)
    .bind(account_id)
    .bind(accepted_at)
    .bind(business_date)
    .execute(pool)
    .await?;
    Ok(())
}
