//! Dead letters: the outbox of `balance-snapshots.dlq` (written with the
//! batch, published by the dead-letter relay after commit), and the answer of
//! a claim the worker could not apply (a poison message).

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{Tx, CLAIM_DONE_CHANNEL};

/// A dead letter to write: the original bytes and why they were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeadLetter {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The stable reason code: the `error` header.
    pub error: String,
    pub detail: String,
    /// (partition, offset) it was consumed at, when known.
    pub source: Option<(i32, i64)>,
}

/// Writes dead letters in the batch's transaction (committed with its offsets).
pub async fn insert_dead_letters(tx: &mut Tx<'_>, rows: &[NewDeadLetter]) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO dead_letters (message_key, payload, error, detail, source_partition, source_offset)
         SELECT k, p, e, d, sp, so
         FROM unnest($1::bytea[], $2::bytea[], $3::text[], $4::text[], $5::int4[], $6::int8[])
           WITH ORDINALITY AS t(k, p, e, d, sp, so, ord)
         ORDER BY ord",
    )
    .bind(rows.iter().map(|r| r.key.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.payload.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.error.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.detail.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.source.map(|s| s.0)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.source.map(|s| s.1)).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await
    .context("writing dead letters")?;
    Ok(())
}

/// A dead letter waiting to be published.
#[derive(Debug, Clone)]
pub struct PendingDeadLetter {
    pub seq: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub error: String,
    pub detail: String,
}

/// The oldest unpublished dead letters, locked for this transaction; rows
/// another relay holds are skipped, so two processes never publish the same
/// row at the same time.
pub async fn lock_pending_dead_letters(tx: &mut Tx<'_>, limit: i64) -> anyhow::Result<Vec<PendingDeadLetter>> {
    let rows = sqlx::query(
        "SELECT seq, message_key, payload, error, detail FROM dead_letters
         WHERE published_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
    .context("loading pending dead letters")?;
    Ok(rows
        .into_iter()
        .map(|r| PendingDeadLetter {
            seq: r.get("seq"),
            key: r.get("message_key"),
            payload: r.get("payload"),
            error: r.get("error"),
            detail: r.get("detail"),
        })
        .collect())
}

pub async fn mark_dead_letters_published(tx: &mut Tx<'_>, seqs: &[i64]) -> anyhow::Result<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE dead_letters SET published_at = now() WHERE seq = ANY($1) AND published_at IS NULL")
        .bind(seqs)
        .execute(&mut **tx)
        .await
        .context("marking dead letters published")?;
    Ok(())
}

pub async fn dead_letters_pending(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE published_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}

/// A claim the worker could not apply, with the answer it gets instead.
#[derive(Debug, Clone)]
pub struct FailedClaim {
    pub claim_id: Uuid,
    pub client_id: String,
    pub idempotency_key: String,
    pub account_id: String,
    pub accepted_at: DateTime<Utc>,
    pub business_date: NaiveDate,
    pub status: i16,
    /// The problem (RFC 9457) the client receives.
    pub body: serde_json::Value,
}

/// Answers a claim that cannot be applied: its `claims` row becomes done
/// with the given status and problem (never over an answer already given),
/// and its waiter is woken with the bare claim id, so the API reads the
/// stored answer from `claims`. No `idempotency_keys` row: a retry with the
/// same key is a new attempt. Delivered at commit.
pub async fn answer_failed_claim(tx: &mut Tx<'_>, c: &FailedClaim) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO claims (claim_id, idempotency_key, account_id, accepted_at, business_date, state, status, body,
                             completed_at, client_id)
         VALUES ($1, $2, $3, $4, $5, 'done', $6, $7::jsonb, now(), $8)
         ON CONFLICT (claim_id, accepted_at) DO UPDATE SET state = 'done', status = EXCLUDED.status, body = EXCLUDED.body,
            payout_id = NULL, replay_of = NULL, completed_at = EXCLUDED.completed_at
         WHERE claims.state <> 'done'",
    )
    .bind(c.claim_id)
    .bind(&c.idempotency_key)
    .bind(&c.account_id)
    .bind(c.accepted_at)
    .bind(c.business_date)
    .bind(c.status)
    .bind(c.body.to_string())
    .bind(&c.client_id)
    .execute(&mut **tx)
    .await
    .context("answering a failed claim")?;
    // The key keeps no answer: a retry with it is a new attempt.
    sqlx::query(
        "UPDATE idempotency_keys SET state = 'released'
         WHERE client_id = $1 AND idempotency_key = $2 AND claim_id = $3 AND state IN ('pending', 'queued')",
    )
    .bind(&c.client_id)
    .bind(&c.idempotency_key)
    .bind(c.claim_id)
    .execute(&mut **tx)
    .await
    .context("releasing a failed claim's key")?;
    let payload = serde_json::json!([{ "claim_id": c.claim_id }]).to_string();
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CLAIM_DONE_CHANNEL)
        .bind(payload)
        .execute(&mut **tx)
        .await
        .context("notifying a failed claim")?;
    Ok(())
}
