//! Claims, idempotency keys, and the answers sent to waiting API processes by NOTIFY.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::Tx;
use crate::claims::{KeyWrite, ScopedKey};

/// An idempotency key's row as the worker reads it.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub account_id: String,
    pub claim_id: Uuid,
    /// `pending`, `queued`, `answered` or `released` (see the migration).
    pub state: String,
    pub status: Option<i16>,
    pub body: Option<serde_json::Value>,
}

/// The rows of the batch's keys, locked in key order (`FOR UPDATE`): the
/// API's withdrawal of a held claim and the worker's answer to it are
/// serialised on this row, so exactly one of them happens.
pub async fn load_keys(tx: &mut Tx<'_>, keys: &[ScopedKey]) -> anyhow::Result<HashMap<ScopedKey, StoredKey>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT k.client_id, k.idempotency_key, k.account_id, k.claim_id, k.state, k.status, k.body::text AS body
         FROM idempotency_keys k
         JOIN unnest($1::text[], $2::text[]) AS q(c, key) ON k.client_id = q.c AND k.idempotency_key = q.key
         ORDER BY k.client_id, k.idempotency_key
         FOR UPDATE OF k",
    )
    .bind(keys.iter().map(|k| k.client.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.key.as_str()).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await
    .context("loading idempotency keys")?;
    rows.into_iter()
        .map(|r| {
            let scoped = ScopedKey {
                client: r.get("client_id"),
                key: r.get("idempotency_key"),
            };
            Ok((scoped, stored_key(&r)?))
        })
        .collect()
}

fn stored_key(r: &sqlx::postgres::PgRow) -> anyhow::Result<StoredKey> {
    let body: Option<String> = r.get("body");
    Ok(StoredKey {
        account_id: r.get("account_id"),
        claim_id: r.get("claim_id"),
        state: r.get("state"),
        status: r.get("status"),
        body: body.map(|b| serde_json::from_str(&b)).transpose()?,
    })
}

/// A claim's final answer, as written by the worker.
#[derive(Debug, Clone)]
pub struct ClaimResult {
    pub claim_id: Uuid,
    pub key: ScopedKey,
    pub account_id: String,
    pub accepted_at: DateTime<Utc>,
    pub business_date: NaiveDate,
    pub status: i16,
    /// The answer's body as JSON text, serialised once: stored in `claims`
    /// and `idempotency_keys`, and sent to the waiting API as it is.
    pub body: String,
    pub payout_id: Option<Uuid>,
    pub replay_of: Option<Uuid>,
    /// What the claim records for its key (`idempotency_keys`), if anything.
    pub key_write: Option<KeyWrite>,
}

pub async fn store_claim_results(tx: &mut Tx<'_>, results: &[ClaimResult]) -> anyhow::Result<()> {
    if results.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = results.iter().map(|r| r.claim_id).collect();
    let clients: Vec<&str> = results.iter().map(|r| r.key.client.as_str()).collect();
    let keys: Vec<&str> = results.iter().map(|r| r.key.key.as_str()).collect();
    let accounts: Vec<&str> = results.iter().map(|r| r.account_id.as_str()).collect();
    let accepted: Vec<DateTime<Utc>> = results.iter().map(|r| r.accepted_at).collect();
    let dates: Vec<NaiveDate> = results.iter().map(|r| r.business_date).collect();
    let status: Vec<i16> = results.iter().map(|r| r.status).collect();
    let bodies: Vec<&str> = results.iter().map(|r| r.body.as_str()).collect();
    let payouts: Vec<Option<Uuid>> = results.iter().map(|r| r.payout_id).collect();
    let replay: Vec<Option<Uuid>> = results.iter().map(|r| r.replay_of).collect();
    sqlx::query(
        "INSERT INTO claims (claim_id, idempotency_key, account_id, accepted_at, business_date, state, status, body,
                             payout_id, replay_of, completed_at, client_id)
         SELECT id, k, a, acc, d, 'done', s, b::jsonb, p, r, now(), c
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::date[], $6::int2[], $7::text[],
                     $8::uuid[], $9::uuid[], $10::text[]) AS t(id, k, a, acc, d, s, b, p, r, c)
         ON CONFLICT (claim_id, accepted_at) DO UPDATE SET state = 'done', status = EXCLUDED.status, body = EXCLUDED.body,
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
    .bind(&clients)
    .execute(&mut **tx)
    .await
    .context("storing claim results")?;
    store_key_writes(tx, results).await
}

/// Each key's answer or release; the last write of the batch per key wins
/// (one statement may not touch a row twice). A key's row keeps the
/// `created_at` of its first use: its time to live counts from there.
async fn store_key_writes(tx: &mut Tx<'_>, results: &[ClaimResult]) -> anyhow::Result<()> {
    let mut last: HashMap<&ScopedKey, &ClaimResult> = HashMap::new();
    for r in results.iter().filter(|r| r.key_write.is_some()) {
        last.insert(&r.key, r);
    }
    if last.is_empty() {
        return Ok(());
    }
    let rows: Vec<&ClaimResult> = last.into_values().collect();
    let answered = |r: &&ClaimResult| r.key_write == Some(KeyWrite::Answer);
    sqlx::query(
        "INSERT INTO idempotency_keys (client_id, idempotency_key, account_id, claim_id, accepted_at, state, status, body)
         SELECT c, k, a, id, acc, st, s, b::jsonb
         FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::timestamptz[], $6::text[], $7::int2[],
                     $8::text[]) AS t(c, k, a, id, acc, st, s, b)
         ON CONFLICT (client_id, idempotency_key) DO UPDATE SET account_id = EXCLUDED.account_id,
            claim_id = EXCLUDED.claim_id, accepted_at = EXCLUDED.accepted_at, state = EXCLUDED.state,
            status = EXCLUDED.status, body = EXCLUDED.body",
    )
    .bind(rows.iter().map(|r| r.key.client.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.key.key.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.account_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.claim_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.accepted_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| if answered(r) { "answered" } else { "released" }).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| answered(r).then_some(r.status)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| answered(r).then_some(r.body.as_str())).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await
    .context("storing idempotency keys")?;
    Ok(())
}

/// NOTIFY payloads are limited to 8000 bytes; answers are packed below this.
const NOTIFY_PAYLOAD_BYTES_MAX: usize = 7_800;

/// A finished claim as it travels to the waiting API process: its stored
/// status and body (the HTTP answer, as JSON text) and whether it replays
/// an earlier claim's answer. Without `status` and body (`None`) it is a
/// bare id: the answer is in `claims`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimDone<'a> {
    pub claim_id: Uuid,
    pub answer: Option<DoneAnswer<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoneAnswer<'a> {
    pub status: u16,
    pub replayed: bool,
    pub body: &'a str,
}

/// One line per answer: `claim_id TAB status TAB r|- TAB body`, or the bare
/// `claim_id`. Compact JSON has no raw tab or newline (inside strings they
/// are escaped), so the API splits lines and fields without parsing the
/// bodies it does not wait for, and forwards the others' bodies unparsed.
fn done_line(out: &mut String, d: &ClaimDone<'_>) {
    use std::fmt::Write;
    let _ = write!(out, "{}", d.claim_id);
    if let Some(a) = d.answer {
        let replayed = if a.replayed { 'r' } else { '-' };
        let _ = write!(out, "\t{}\t{replayed}\t{}", a.status, a.body);
    }
    out.push('\n');
}

/// The notifications' payloads: answers packed in order, none over the limit.
/// An answer too large for one payload goes as its bare id.
pub fn done_payloads(answers: &[ClaimDone<'_>]) -> Vec<String> {
    let mut payloads: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut line = String::new();
    for d in answers {
        line.clear();
        done_line(&mut line, d);
        if line.len() > NOTIFY_PAYLOAD_BYTES_MAX {
            line.clear();
            done_line(&mut line, &ClaimDone { answer: None, ..*d });
        }
        if current.len() + line.len() > NOTIFY_PAYLOAD_BYTES_MAX {
            payloads.push(std::mem::take(&mut current));
        }
        current.push_str(&line);
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    payloads
}

/// The answers of one notification. A JSON array (`[{"claim_id": …}]`, what
/// a moved-aside claim sends) holds bare ids; a line that cannot be read is
/// skipped (its waiter reads `claims` before answering 202).
pub fn parse_done(payload: &str) -> Vec<ClaimDone<'_>> {
    if payload.starts_with('[') {
        let items: Vec<serde_json::Value> = serde_json::from_str(payload).unwrap_or_default();
        return items
            .iter()
            .filter_map(|i| Uuid::parse_str(i["claim_id"].as_str()?).ok())
            .map(|claim_id| ClaimDone { claim_id, answer: None })
            .collect();
    }
    payload.lines().filter_map(parse_done_line).collect()
}

fn parse_done_line(line: &str) -> Option<ClaimDone<'_>> {
    let mut fields = line.splitn(4, '\t');
    let claim_id = Uuid::parse_str(fields.next()?).ok()?;
    let Some(status) = fields.next() else {
        return Some(ClaimDone { claim_id, answer: None });
    };
    let status = status.parse().ok()?;
    let replayed = fields.next()? == "r";
    let body = fields.next()?;
    Some(ClaimDone {
        claim_id,
        answer: Some(DoneAnswer { status, replayed, body }),
    })
}

/// Wakes API processes waiting on these claims, their answers included, so
/// they need no query of their own (delivered at commit).
pub async fn notify_claims_done(tx: &mut Tx<'_>, answers: &[ClaimDone<'_>]) -> anyhow::Result<()> {
    let payloads = done_payloads(answers);
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

// ---- the API's side of a key ---------------------------------------------------

/// A key's row as the API finds it when it cannot reserve it.
#[derive(Debug, Clone)]
pub struct HeldKey {
    pub stored: StoredKey,
    pub accepted_at: Option<DateTime<Utc>>,
    /// Milliseconds since the row was (re)reserved.
    pub age_ms: i64,
}

/// One key to reserve for a claim (see [`reserve_keys`]).
#[derive(Debug, Clone)]
pub struct Reservation {
    pub key: ScopedKey,
    pub account_id: String,
    pub claim_id: Uuid,
    pub accepted_at: DateTime<Utc>,
}

/// Reserves each key for its claim before the claim is produced, in ONE
/// statement for all of them: a new row, or one that holds no answer
/// (released) or whose answer expired (`ttl`). Returns the claims whose key
/// was reserved; for the others [`read_key`] tells who holds it. The keys
/// must be distinct (one statement may not touch a row twice). Rows are
/// inserted in key order, the order every statement and the worker's
/// `load_keys` lock them in, so concurrent reservations cannot deadlock.
pub async fn reserve_keys(
    pool: &PgPool,
    rows: &[Reservation],
    ttl: std::time::Duration,
) -> anyhow::Result<std::collections::HashSet<Uuid>> {
    let reserved = sqlx::query_scalar::<_, Uuid>(
        "INSERT INTO idempotency_keys (client_id, idempotency_key, account_id, claim_id, accepted_at, state)
         SELECT c, k, a, id, acc, 'pending'
         FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::timestamptz[]) AS t(c, k, a, id, acc)
         ORDER BY c, k
         ON CONFLICT (client_id, idempotency_key) DO UPDATE SET account_id = EXCLUDED.account_id,
            claim_id = EXCLUDED.claim_id, accepted_at = EXCLUDED.accepted_at, state = 'pending',
            status = NULL, body = NULL, created_at = now()
         WHERE idempotency_keys.state = 'released'
            OR (idempotency_keys.state = 'answered' AND idempotency_keys.created_at < now() - make_interval(secs => $6))
         RETURNING claim_id",
    )
    .bind(rows.iter().map(|r| r.key.client.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.key.key.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.account_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.claim_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.accepted_at).collect::<Vec<_>>())
    .bind(ttl.as_secs_f64())
    .fetch_all(pool)
    .await
    .context("reserving idempotency keys")?;
    Ok(reserved.into_iter().collect())
}

/// Which of `keys` have a row another transaction holds locked right now
/// (a worker's batch holding its claim): asked with `SKIP LOCKED`, so it
/// never waits. The locks it takes itself end with the statement.
pub async fn locked_keys(pool: &PgPool, keys: &[&ScopedKey]) -> anyhow::Result<std::collections::HashSet<ScopedKey>> {
    let rows = sqlx::query(
        "WITH q AS (SELECT * FROM unnest($1::text[], $2::text[]) AS q(c, key)),
              free AS (SELECT k.client_id, k.idempotency_key FROM idempotency_keys k
                       JOIN q ON k.client_id = q.c AND k.idempotency_key = q.key
                       FOR UPDATE OF k SKIP LOCKED)
         SELECT k.client_id, k.idempotency_key FROM idempotency_keys k
         JOIN q ON k.client_id = q.c AND k.idempotency_key = q.key
         EXCEPT SELECT client_id, idempotency_key FROM free",
    )
    .bind(keys.iter().map(|k| k.client.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.key.as_str()).collect::<Vec<_>>())
    .fetch_all(pool)
    .await
    .context("asking which idempotency keys are locked")?;
    Ok(rows
        .into_iter()
        .map(|r| ScopedKey {
            client: r.get("client_id"),
            key: r.get("idempotency_key"),
        })
        .collect())
}

/// The row that holds `key`, read after a reservation failed (`None`: it
/// is gone meanwhile; try once more).
pub async fn read_key(pool: &PgPool, key: &ScopedKey) -> anyhow::Result<Option<HeldKey>> {
    let held = sqlx::query(
        "SELECT account_id, claim_id, state, status, body::text AS body, accepted_at,
                (extract(epoch FROM now() - created_at) * 1000)::int8 AS age_ms
         FROM idempotency_keys WHERE client_id = $1 AND idempotency_key = $2",
    )
    .bind(&key.client)
    .bind(&key.key)
    .fetch_optional(pool)
    .await
    .context("reading the idempotency key")?;
    held.map(|r| {
        Ok(HeldKey {
            stored: stored_key(&r)?,
            accepted_at: r.get("accepted_at"),
            age_ms: r.get("age_ms"),
        })
    })
    .transpose()
}

/// Withdraws the claim `claim_id` while the key is still only reserved for
/// it (not queued, not answered): the worker will not apply it. `false`:
/// the key had moved on (the worker answered, or it was queued).
pub async fn release_key(pool: &PgPool, key: &ScopedKey, claim_id: Uuid) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE idempotency_keys SET state = 'released'
         WHERE client_id = $1 AND idempotency_key = $2 AND claim_id = $3 AND state = 'pending'",
    )
    .bind(&key.client)
    .bind(&key.key)
    .bind(claim_id)
    .execute(pool)
    .await
    .context("withdrawing the claim")?;
    Ok(done.rows_affected() == 1)
}

/// Marks the claim queued (the broker acknowledged it; the API answers 202)
/// and records it in `claims` as accepted, in one statement, while the key is
/// still reserved for it. `false`: the key had moved on (answered, or the
/// claim was withdrawn by a later request): no 202 may be given.
pub async fn queue_claim(
    pool: &PgPool,
    key: &ScopedKey,
    claim_id: Uuid,
    account_id: &str,
    accepted_at: DateTime<Utc>,
    business_date: NaiveDate,
) -> anyhow::Result<bool> {
    let row = sqlx::query(
        "WITH k AS (
            UPDATE idempotency_keys SET state = 'queued'
            WHERE client_id = $1 AND idempotency_key = $2 AND claim_id = $3 AND state = 'pending'
            RETURNING claim_id)
         INSERT INTO claims (claim_id, client_id, idempotency_key, account_id, accepted_at, business_date, state)
         SELECT k.claim_id, $1, $2, $4, $5, $6, 'accepted' FROM k
         ON CONFLICT (claim_id, accepted_at) DO NOTHING
         RETURNING claim_id",
    )
    .bind(&key.client)
    .bind(&key.key)
    .bind(claim_id)
    .bind(account_id)
    .bind(accepted_at)
    .bind(business_date)
    .fetch_optional(pool)
    .await
    .context("recording the accepted claim")?;
    Ok(row.is_some())
}

#[cfg(test)]
mod tests {
    use super::{done_payloads, parse_done, ClaimDone, DoneAnswer, NOTIFY_PAYLOAD_BYTES_MAX};
    use uuid::Uuid;

    #[test]
    fn answers_travel_whole_in_order_and_an_oversized_one_as_its_bare_id() {
        let ids: Vec<Uuid> = (0..400).map(|_| Uuid::now_v7()).collect();
        // Bodies with escaped tabs and newlines inside strings, as compact JSON has them.
        let body = serde_json::json!({"detail": "a\tb\nc", "gross": "10"}).to_string();
        let huge = serde_json::json!({"x": "y".repeat(NOTIFY_PAYLOAD_BYTES_MAX)}).to_string();
        let answers: Vec<ClaimDone> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| ClaimDone {
                claim_id: *id,
                answer: Some(DoneAnswer {
                    status: if i % 2 == 0 { 201 } else { 409 },
                    replayed: i % 3 == 0,
                    body: if i == 7 { &huge } else { &body },
                }),
            })
            .collect();
        let payloads = done_payloads(&answers);
        assert!(payloads.len() > 1, "packed into several payloads");
        assert!(payloads.iter().all(|p| p.len() <= NOTIFY_PAYLOAD_BYTES_MAX));
        let back: Vec<ClaimDone> = payloads.iter().flat_map(|p| parse_done(p)).collect();
        let mut expected = answers.clone();
        expected[7].answer = None;
        assert_eq!(back, expected);
    }

    #[test]
    fn a_json_array_of_bare_ids_is_read_and_unreadable_lines_are_skipped() {
        let id = Uuid::now_v7();
        let bare = serde_json::json!([{ "claim_id": id }]).to_string();
        assert_eq!(
            parse_done(&bare),
            vec![ClaimDone {
                claim_id: id,
                answer: None
            }]
        );
        let lines = format!("not-a-uuid\t201\t-\t{{}}\n{id}\tx\t-\t{{}}\n{id}\t201\t-\t{{\"a\":1}}\n");
        let got = parse_done(&lines);
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].answer.map(|a| (a.status, a.replayed, a.body)),
            Some((201, false, "{\"a\":1}"))
        );
    }
}
