//! The outbox relay: publishes payouts written by the worker's transactions to
//! `interest-payouts`, at least once, in order per account, each carrying its
//! `payout_id` as a header and in the body.
//!
//! The worker hands each committed batch's payouts over a bounded channel
//! (FIFO, so commit order is publication order); before the first batch of a
//! newly owned partition it asks for a sweep of that partition's leftovers
//! (payouts a crashed owner committed but never published). A slow periodic
//! sweep catches anything else.
//!
//! [`DeadLetterRelay`] does the same for the dead-letter outbox
//! (`dead_letters`) and `balance-snapshots.dlq`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::kafka;
use crate::service::handoff::{OutboxItem, RelayWork, WorkerStatus};
use crate::store;
use crate::telemetry::Metrics;

/// Rows published per sweep round.
const SWEEP_BATCH_MAX: i64 = 5_000;
/// Periodic sweep of every assigned claims partition, for anything left behind.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// Pause before retrying a failed publication.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Batches the worker may hand over before it waits for the relay.
pub const RELAY_QUEUE_MAX: usize = 64;

pub struct Relay {
    pub pool: PgPool,
    pub producer: kafka::ResilientProducer,
    pub topic: String,
    pub status: Arc<Mutex<WorkerStatus>>,
    pub metrics: Metrics,
}

impl Relay {
    /// Runs until the worker drops its sender (after its last batch).
    pub async fn run(self, mut work: mpsc::Receiver<RelayWork>, shutdown: CancellationToken) {
        // An interval, not a sleep per loop: steady work must not postpone the sweep for ever.
        let mut sweep_every = tokio::time::interval(SWEEP_INTERVAL);
        sweep_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                w = work.recv() => match w {
                    Some(RelayWork::Publish(items)) => self.publish_all(items, &shutdown).await,
                    Some(RelayWork::Sweep(partitions)) => self.sweep(&partitions, &shutdown).await,
                    None => return,
                },
                _ = sweep_every.tick() => {
                    let partitions = self.status.lock().expect("status").claim_partitions.clone();
                    self.sweep(&partitions, &shutdown).await;
                    if let Ok(n) = store::outbox_pending(&self.pool).await {
                        self.metrics.outbox_pending.set(n);
                    }
                }
            }
        }
    }

    async fn sweep(&self, partitions: &[i32], shutdown: &CancellationToken) {
        if partitions.is_empty() {
            return;
        }
        loop {
            let rows = match store::unpublished(&self.pool, partitions, SWEEP_BATCH_MAX).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(event = "relay_sweep_failed", error = format!("{e:#}"));
                    return;
                }
            };
            let n = rows.len();
            let items = rows
                .into_iter()
                .map(|(payout_id, key, payload)| OutboxItem {
                    payout_id,
                    key,
                    payload: as_handed_over(payload),
                })
                .collect();
            self.publish_all(items, shutdown).await;
            if (n as i64) < SWEEP_BATCH_MAX {
                return;
            }
        }
    }

    /// Publishes in order, retrying the undelivered suffix until done (or shutdown).
    async fn publish_all(&self, mut items: Vec<OutboxItem>, shutdown: &CancellationToken) {
        while !items.is_empty() {
            let delivered = self.publish(&items).await;
            if delivered > 0 {
                let ids: Vec<Uuid> = items[..delivered].iter().map(|i| i.payout_id).collect();
                if let Err(e) = store::mark_published(&self.pool, &ids).await {
                    // Published but not marked: a later sweep publishes again (at least once).
                    tracing::warn!(event = "relay_mark_failed", error = format!("{e:#}"));
                }
                items.drain(..delivered);
            }
            if !items.is_empty() {
                if shutdown.is_cancelled() {
                    tracing::warn!(event = "relay_stopped_with_pending", pending = items.len());
                    return;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    /// Sends all; returns how many were delivered before the first failure.
    async fn publish(&self, items: &[OutboxItem]) -> usize {
        let sends = items.iter().map(|i| {
            let headers = OwnedHeaders::new().insert(Header {
                key: "payout_id",
                value: Some(&i.payout_id.to_string()),
            });
            self.producer
                .send(&self.topic, &i.key, i.payload.as_bytes(), Some(headers))
        });
        let results = futures::future::join_all(sends).await;
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            tracing::warn!(event = "relay_send_failed", error = %e);
        }
        results.iter().take_while(|r| r.is_ok()).count()
    }
}

/// The bytes the worker's hand-off publishes for the same payout.
///
/// A payout may go out twice (at least once): once swept from the outbox and
/// once from the worker's hand-off. The sweep reads `payload::text`, which is
/// PostgreSQL's jsonb rendering (its own key order, `": "` and `", "`); the
/// hand-off is `serde_json::Value::to_string()`. Rendering the swept text
/// through the same `Value` makes a duplicate byte-identical to its first
/// copy, so a consumer may dedupe on `payout_id` or on the bytes alike.
fn as_handed_over(jsonb_text: String) -> String {
    match serde_json::from_str::<serde_json::Value>(&jsonb_text) {
        Ok(v) => v.to_string(),
        Err(_) => jsonb_text,
    }
}

/// Dead letters published per round.
const DEAD_LETTER_BATCH_MAX: i64 = 500;
/// How often pending dead letters are looked for without a wake-up, and the
/// pause after a failed round (an unwritable DLQ only delays publication).
const DEAD_LETTER_POLL: Duration = Duration::from_secs(2);

/// Publishes the dead-letter outbox (`dead_letters`, written in the worker's
/// transactions) to `balance-snapshots.dlq`, at least once, with the headers
/// `error` and `detail`. The worker wakes it after a commit that wrote dead
/// letters; it also looks every `DEAD_LETTER_POLL`. Rows are locked
/// `FOR UPDATE SKIP LOCKED` while they are sent, so the relays of several
/// worker processes share the pending rows without publishing one twice;
/// a crash between the broker's acknowledgement and the commit publishes
/// again (at least once). Nothing here holds an account lock or a batch: a
/// broker that refuses the DLQ delays publication, counted in
/// `dead_letter_publish_failures_total` and visible as `dead_letters_pending`.
pub struct DeadLetterRelay {
    pub pool: PgPool,
    /// Its own producer: its failures must not renew the API's claim producer.
    pub producer: kafka::ResilientProducer,
    pub topic: String,
    pub metrics: Metrics,
    pub wake: Arc<tokio::sync::Notify>,
}

impl DeadLetterRelay {
    /// Runs until shutdown; what is still pending then stays in the table for the next process.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut more = true;
        while !shutdown.is_cancelled() {
            if !more {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(DEAD_LETTER_POLL) => {}
                }
            }
            more = match self.round().await {
                Ok(full) => full,
                Err(e) => {
                    tracing::warn!(event = "dead_letter_relay_failed", error = format!("{e:#}"));
                    false
                }
            };
            if let Ok(n) = store::dead_letters_pending(&self.pool).await {
                self.metrics.dead_letters.pending.set(n);
            }
        }
    }

    /// Publishes one batch of pending rows and marks what the broker
    /// acknowledged; true when the batch was full (more may be waiting) and
    /// everything in it went out.
    async fn round(&self) -> anyhow::Result<bool> {
        let mut tx = self.pool.begin().await?;
        let rows = store::lock_pending_dead_letters(&mut tx, DEAD_LETTER_BATCH_MAX).await?;
        if rows.is_empty() {
            return Ok(false);
        }
        let delivered = self.send(&rows).await;
        store::mark_dead_letters_published(&mut tx, &delivered).await?;
        tx.commit().await?;
        let failed = rows.len() - delivered.len();
        if failed > 0 {
            self.metrics.dead_letters.publish_failures_total.inc_by(failed as u64);
            tracing::warn!(
                event = "dead_letters_unpublished",
                failed,
                topic = self.topic,
                "the DLQ did not take them; they stay pending and are retried"
            );
        }
        Ok(failed == 0 && rows.len() as i64 == DEAD_LETTER_BATCH_MAX)
    }

    /// Sends all; returns the `seq` of each row the broker acknowledged.
    async fn send(&self, rows: &[store::PendingDeadLetter]) -> Vec<i64> {
        let sends = rows.iter().map(|d| {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "error",
                    value: Some(d.error.as_str()),
                })
                .insert(Header {
                    key: "detail",
                    value: Some(d.detail.as_str()),
                });
            let key = String::from_utf8_lossy(d.key.as_deref().unwrap_or_default()).into_owned();
            async move {
                let sent = self.producer.send(&self.topic, &key, &d.payload, Some(headers)).await;
                (d.seq, sent)
            }
        });
        let mut delivered = Vec::new();
        for (seq, sent) in futures::future::join_all(sends).await {
            match sent {
                Ok(_) => delivered.push(seq),
                Err(e) => tracing::debug!(event = "dead_letter_send_failed", seq, error = %e),
            }
        }
        delivered
    }
}
