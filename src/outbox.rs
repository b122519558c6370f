//! The outbox relay: publishes payouts written by the worker's transactions to
//! `interest-payouts`, at least once, in order per account (rows are read in
//! commit order per partition; the idempotent producer keeps that order),
//! each carrying its `payout_id` as a header and in the body.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::kafka;
use crate::repo;
use crate::telemetry::Metrics;
use crate::worker::WorkerStatus;

/// Rows published per round.
const RELAY_BATCH_MAX: i64 = 5_000;
/// Sweep interval when nobody wakes the relay (crash recovery, retries).
const RELAY_SWEEP: Duration = Duration::from_millis(500);

pub struct Relay {
    pub pool: PgPool,
    pub producer: FutureProducer,
    pub topic: String,
    pub status: Arc<Mutex<WorkerStatus>>,
    pub wake: Arc<Notify>,
    pub metrics: Metrics,
}

impl Relay {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut rounds: u64 = 0;
        loop {
            let stopping = shutdown.is_cancelled();
            let published = match self.round().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(event = "relay_failed", error = format!("{e:#}"));
                    0
                }
            };
            rounds += 1;
            if rounds % 10 == 0 {
                if let Ok(n) = repo::outbox_pending(&self.pool).await {
                    self.metrics.outbox_pending.set(n);
                }
            }
            if stopping && published == 0 {
                return;
            }
            if published as i64 == RELAY_BATCH_MAX {
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(RELAY_SWEEP) => {}
                _ = shutdown.cancelled(), if !stopping => {}
            }
        }
    }

    /// Publishes one page of pending payouts; marks the delivered prefix.
    async fn round(&self) -> anyhow::Result<usize> {
        let partitions = self.status.lock().expect("status").claim_partitions.clone();
        if partitions.is_empty() {
            return Ok(0);
        }
        let rows = repo::unpublished(&self.pool, &partitions, RELAY_BATCH_MAX).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let sends = rows.iter().map(|(id, key, payload)| {
            let headers = OwnedHeaders::new().insert(Header { key: "payout_id", value: Some(&id.to_string()) });
            kafka::send(&self.producer, &self.topic, key, payload.as_bytes(), Some(headers))
        });
        let results = futures::future::join_all(sends).await;
        let delivered: Vec<Uuid> = rows.iter().zip(&results).take_while(|(_, r)| r.is_ok()).map(|((id, _, _), _)| *id).collect();
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            tracing::warn!(event = "relay_send_failed", error = %e);
        }
        repo::mark_published(&self.pool, &delivered).await?;
        Ok(delivered.len())
    }
}
