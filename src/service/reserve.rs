//! Group commit of idempotency-key reservations: the claims that arrive
//! while the previous reservations are in flight are reserved together, in
//! ONE statement (`store::reserve_keys`), instead of a round trip each. At
//! midnight that is a handful of statements per thousand claims; a lone
//! claim goes alone, at once.
//!
//! A request still waits for its own key's outcome before anything is
//! produced (ARCHITECTURE.md, claim path step 2): batching changes how many
//! statements carry the reservations, not what a reservation means.

use std::collections::HashSet;

use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::claims::ScopedKey;
use crate::store::{self, Reservation};

/// Reservations waiting for a statement, at most (the senders wait beyond;
/// `CLAIMS_IN_FLIGHT_MAX` bounds them).
pub const RESERVE_QUEUE_MAX: usize = 4_096;
/// Keys in one statement, at most.
pub const RESERVE_BATCH_MAX: usize = 500;
/// Reservation statements in flight at once: while they run, the next
/// claims gather into the next batch. Below the claim pool's size, so
/// queueing, withdrawing and reading answers always find a connection.
pub const RESERVE_STATEMENTS_IN_FLIGHT_MAX: usize = 4;

/// A reservation's outcome: reserved, held by another claim (or the key
/// appeared twice in the batch: the later one reads who holds it), or the
/// statement failed.
pub type Reserved = Result<bool, Arc<anyhow::Error>>;

struct Request {
    row: Reservation,
    reply: oneshot::Sender<Reserved>,
}

/// The handle requests reserve through; the batching task runs until every
/// handle is dropped.
#[derive(Clone)]
pub struct Reserver {
    queue: mpsc::Sender<Request>,
}

impl Reserver {
    pub fn start(pool: PgPool, ttl: Duration) -> Reserver {
        let (queue, rx) = mpsc::channel(RESERVE_QUEUE_MAX);
        tokio::spawn(run(pool, ttl, rx));
        Reserver { queue }
    }

    /// Reserves `row.key` for `row.claim_id`; `Ok(false)`: another claim holds it.
    pub async fn reserve(&self, row: Reservation) -> Reserved {
        let (reply, answer) = oneshot::channel();
        let gone = || Arc::new(anyhow::anyhow!("the key reserver has stopped"));
        self.queue.send(Request { row, reply }).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn run(pool: PgPool, ttl: Duration, mut rx: mpsc::Receiver<Request>) {
    let statements = Arc::new(Semaphore::new(RESERVE_STATEMENTS_IN_FLIGHT_MAX));
    loop {
        // A statement slot first: while none is free, requests gather in the queue.
        let Ok(slot) = statements.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < RESERVE_BATCH_MAX {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            reserve_batch(&pool, ttl, batch).await;
            drop(slot);
        });
    }
}

/// One statement for the batch's distinct keys; a key's later duplicates
/// are answered "held" (the first one holds it, or is reserving it now).
async fn reserve_batch(pool: &PgPool, ttl: Duration, batch: Vec<Request>) {
    let mut seen: HashSet<&ScopedKey> = HashSet::with_capacity(batch.len());
    let first: Vec<bool> = batch.iter().map(|r| seen.insert(&r.row.key)).collect();
    let rows: Vec<Reservation> = batch
        .iter()
        .zip(&first)
        .filter(|(_, f)| **f)
        .map(|(r, _)| r.row.clone())
        .collect();
    let outcome = reserve_rows(pool, rows, ttl).await.map_err(Arc::new);
    for (r, first) in batch.into_iter().zip(first) {
        let answer = match &outcome {
            Ok(reserved) => Ok(first && reserved.contains(&r.row.claim_id)),
            Err(e) => Err(e.clone()),
        };
        // A request that stopped waiting (its deadline passed) is gone: its
        // `pending` row goes stale and is withdrawn by the next request with the key.
        let _ = r.reply.send(answer);
    }
}

/// Times one statement of a batch may give up on a locked row and be
/// retried without the keys found locked.
const LOCKED_RETRIES_MAX: usize = 3;

/// Reserves `rows` in one statement. A key row locked by a worker's batch
/// (a retry of a claim that batch holds, or a frozen worker's batch) makes
/// the statement give up after the pool's `lock_timeout` instead of holding
/// the whole group until that batch ends: the keys found locked then are
/// answered "held" (the request reads the row and answers 202 or 409, as
/// for any claim in flight) and the others are reserved again at once.
async fn reserve_rows(pool: &PgPool, mut rows: Vec<Reservation>, ttl: Duration) -> anyhow::Result<HashSet<Uuid>> {
    let mut tries = 0;
    loop {
        match store::reserve_keys(pool, &rows, ttl).await {
            Err(e) if store::is_lock_timeout(&e) && tries < LOCKED_RETRIES_MAX => {
                tries += 1;
                let keys: Vec<&ScopedKey> = rows.iter().map(|r| &r.key).collect();
                let locked = store::locked_keys(pool, &keys).await?;
                tracing::info!(event = "key_rows_locked", keys = rows.len(), locked = locked.len());
                rows.retain(|r| !locked.contains(&r.key));
                if rows.is_empty() {
                    return Ok(HashSet::new());
                }
            }
            outcome => return outcome,
        }
    }
}
