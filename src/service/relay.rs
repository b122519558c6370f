//! The outbox relay: publishes payouts written by the worker's transactions to
//! `interest-payouts`, at least once, in order per account, each carrying its
//! `payout_id` as a header and in the body.
//!
//! The worker hands each committed batch's payouts over a bounded channel
//! (FIFO, so commit order is publication order); before the first batch of a
//! newly owned partition it asks for a sweep of that partition's leftovers
//! (payouts a crashed owner committed but never published). A slow periodic
//! sweep catches anything else.

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
                    payload,
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
