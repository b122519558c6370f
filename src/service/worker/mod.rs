//! The partition worker: consumes `balance-snapshots` and `interest-claims`,
//! applies each batch in ONE PostgreSQL transaction (state, payouts,
//! idempotency records, outbox rows and the consumed offsets, fenced by the
//! partition's owner epoch), then wakes the outbox relay.
//!
//! This file is the consumer loop (batching, rebalances, retries); the steps
//! of one batch are in [`batch`]; what a batch decides is [`crate::claims`];
//! [`poison`] splits a batch that fails deterministically and moves the one
//! message that cannot be applied aside, so no message stalls a partition.
//!
//! Batching is what makes the midnight spike cheap: a few statements per
//! thousand claims instead of a transaction per claim.

mod batch;
mod poison;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Clock, Settings};
use crate::kafka;
use crate::money::Plans;
use crate::service::handoff::RelayWork;
pub use crate::service::handoff::WorkerStatus;
use crate::telemetry::Metrics;

/// What a rebalance callback tells the worker loop.
#[derive(Debug, Default)]
pub struct RebalanceLog {
    pub revoked: Vec<(String, i32)>,
    pub assigned: Vec<(String, i32)>,
    pub joined: bool,
}

pub struct WorkerContext {
    pub log: Arc<Mutex<RebalanceLog>>,
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ClientContext for WorkerContext {}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut log = self.log.lock().expect("rebalance log");
            log.revoked.extend(partitions(tpl));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut log = self.log.lock().expect("rebalance log");
            log.assigned.extend(partitions(tpl));
            log.joined = true;
        }
    }
}

/// Ownership of one partition: the fencing epoch and the next offset to apply.
#[derive(Debug, Clone, Copy)]
struct Owned {
    epoch: i64,
    next: i64,
    /// Already sought back once: a gap that remains is data the broker no longer has.
    sought: bool,
}

/// A worker process runs one consumer per input topic, each in its own
/// consumer group, so each topic's partitions spread evenly over the workers
/// (one group over both topics may give one member every claims partition)
/// and claims never wait behind a batch of snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Claims = 0,
    Snapshots = 1,
}

impl Stream {
    pub const ALL: [Stream; 2] = [Stream::Claims, Stream::Snapshots];

    pub fn topic(self) -> &'static str {
        match self {
            Stream::Claims => kafka::CLAIMS,
            Stream::Snapshots => kafka::SNAPSHOTS,
        }
    }

    /// The consumer group: `KAFKA_GROUP_ID` plus `.claims` or `.snapshots`.
    pub fn group(self, base: &str) -> String {
        match self {
            Stream::Claims => format!("{base}.claims"),
            Stream::Snapshots => format!("{base}.snapshots"),
        }
    }
}

pub struct Worker {
    pub stream: Stream,
    pub settings: Settings,
    pub pool: PgPool,
    pub metrics: Metrics,
    pub plans: Arc<RwLock<Arc<Plans>>>,
    pub clock: Clock,
    pub status: Arc<Mutex<WorkerStatus>>,
    /// Committed payouts go to the relay, in commit order.
    pub relay: mpsc::Sender<RelayWork>,
    /// Woken after a commit that wrote dead letters (the dead-letter relay publishes them).
    pub dead_letters: Arc<tokio::sync::Notify>,
}

/// How long the worker waits for more messages to fill a batch.
const BATCH_LINGER: Duration = Duration::from_millis(15);
/// How often consumer lag is measured (a broker round trip per partition).
const LAG_INTERVAL: Duration = Duration::from_secs(3);
/// A worker that received no partitions reports ready after this (an idle standby).
const STANDBY_READY_AFTER: Duration = Duration::from_secs(15);
/// Retry pause after a transient failure (database down, deadlock, fenced):
/// the batch is retried whole (what already committed is skipped).
const RETRY_PAUSE: Duration = Duration::from_millis(250);

impl Worker {
    /// How long a batch's transaction may sit idle between statements
    /// before PostgreSQL ends it ([`store::begin_batch`]): the consumer
    /// group's session timeout. A worker silent that long has lost its
    /// partitions to another worker, so its batch can only be refused by
    /// the fencing epoch; ending it then frees the rows the new owner needs
    /// at about the moment the new owner starts. A healthy batch is idle
    /// between statements only while it computes, milliseconds per batch.
    fn idle_in_batch_limit(&self) -> Duration {
        Duration::from_millis(self.settings.kafka_liveness.session_timeout_ms.into())
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let log = Arc::new(Mutex::new(RebalanceLog::default()));
        let consumer: StreamConsumer<WorkerContext> = kafka::consumer_config(&self.settings)
            .set("group.id", self.stream.group(&self.settings.kafka_group_id))
            .create_with_context(WorkerContext { log: log.clone() })
            .context("creating the consumer")?;
        consumer
            .subscribe(&[&self.settings.topic(self.stream.topic())])
            .context("subscribing")?;
        let mut owned: HashMap<(String, i32), Owned> = HashMap::new();
        // Assigned by the group (owned or not yet touched): what the relay sweeps.
        let mut assigned: BTreeSet<(String, i32)> = BTreeSet::new();
        let mut last_lag = Instant::now();
        let started = Instant::now();
        let owner = format!("{}-{}", hostname(), std::process::id());
        tracing::info!(event = "worker_started", owner, "worker started");
        while !shutdown.is_cancelled() {
            let mut batch = self.collect(&consumer, &shutdown).await;
            self.absorb_rebalances(&log, &mut owned, &mut assigned, &mut batch);
            if !batch.is_empty() {
                self.apply_with_retry(&consumer, &mut owned, batch, &owner, &shutdown)
                    .await;
            }
            if last_lag.elapsed() > LAG_INTERVAL {
                self.update_lag(&consumer, &owned);
                last_lag = Instant::now();
                // A member left without partitions (more workers than partitions) gets no
                // assignment callback; after a while it is a ready, idle standby.
                if started.elapsed() > STANDBY_READY_AFTER {
                    self.status.lock().expect("status").joined[self.stream as usize] = true;
                }
            }
        }
        // Graceful: the last batch is committed; leave the group so only our partitions move.
        consumer.unsubscribe();
        tracing::info!(event = "worker_stopped", "worker left the group");
        Ok(())
    }

    /// Waits for one message, then takes whatever else arrives within the linger.
    async fn collect(
        &self,
        consumer: &StreamConsumer<WorkerContext>,
        shutdown: &CancellationToken,
    ) -> Vec<OwnedMessage> {
        let mut batch = Vec::new();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return batch,
            m = consumer.recv() => match m {
                Ok(m) => batch.push(m.detach()),
                Err(e) => { tracing::warn!(event = "consumer_error", error = %e); return batch; }
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => return batch,
        }
        let deadline = tokio::time::Instant::now() + BATCH_LINGER;
        while batch.len() < self.settings.worker_batch_size_max {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                _ => break,
            }
        }
        batch
    }

    /// Forgets revoked partitions (their unapplied messages are dropped: the
    /// next owner reads them from the offset stored in PostgreSQL).
    /// Applies the group's assignments and revocations. A newly assigned
    /// claims partition is swept at once: a previous owner may have committed
    /// payouts it never published, and no claim may ever arrive on it again
    /// to make this worker own it (it is owned lazily, on first use).
    fn absorb_rebalances(
        &self,
        log: &Mutex<RebalanceLog>,
        owned: &mut HashMap<(String, i32), Owned>,
        assigned: &mut BTreeSet<(String, i32)>,
        batch: &mut Vec<OwnedMessage>,
    ) {
        let mut log = log.lock().expect("rebalance log");
        for tp in log.revoked.drain(..) {
            owned.remove(&tp);
            assigned.remove(&tp);
            batch.retain(|m| !(m.topic() == tp.0 && m.partition() == tp.1));
            tracing::info!(event = "partition_revoked", topic = tp.0, partition = tp.1);
        }
        let mut fresh = Vec::new();
        for tp in log.assigned.drain(..) {
            // Re-own on first use: the epoch is bumped then.
            owned.remove(&tp);
            tracing::info!(event = "partition_assigned", topic = tp.0, partition = tp.1);
            fresh.push(tp.1);
            assigned.insert(tp);
        }
        let mut status = self.status.lock().expect("status");
        status.joined[self.stream as usize] |= log.joined;
        if self.stream == Stream::Claims {
            status.claim_partitions = assigned.iter().map(|(_, p)| *p).collect();
            // A full relay queue is fine: the periodic sweep covers every assigned partition.
            if !fresh.is_empty() {
                let _ = self.relay.try_send(RelayWork::Sweep(fresh));
            }
        }
    }

    async fn apply_with_retry(
        &self,
        consumer: &StreamConsumer<WorkerContext>,
        owned: &mut HashMap<(String, i32), Owned>,
        mut batch: Vec<OwnedMessage>,
        owner: &str,
        shutdown: &CancellationToken,
    ) {
        loop {
            match self.apply_batch(consumer, owned, &batch, owner).await {
                Ok(()) => return,
                Err(BatchError::Fenced(tps)) => {
                    for tp in tps {
                        tracing::warn!(
                            event = "partition_fenced",
                            topic = tp.0,
                            partition = tp.1,
                            "another worker owns it now"
                        );
                        owned.remove(&tp);
                        batch.retain(|m| !(m.topic() == tp.0 && m.partition() == tp.1));
                    }
                    if batch.is_empty() {
                        return;
                    }
                }
                Err(BatchError::Other(e)) => {
                    tracing::warn!(event = "batch_failed", error = format!("{e:#}"), "retrying");
                    // Re-read ownership: a failed transaction may have been fenced.
                    owned.retain(|_, _| false);
                    if shutdown.is_cancelled() {
                        return;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    fn update_lag(&self, consumer: &StreamConsumer<WorkerContext>, owned: &HashMap<(String, i32), Owned>) {
        let mut total = 0;
        for ((topic, p), o) in owned {
            let fetched =
                tokio::task::block_in_place(|| consumer.fetch_watermarks(topic, *p, Duration::from_millis(200)));
            if let Ok((_, high)) = fetched {
                let lag = (high - o.next).max(0);
                total += lag;
                self.metrics
                    .consumer_lag
                    .with_label_values(&[topic, &p.to_string()])
                    .set(lag);
            }
        }
        self.status.lock().expect("status").lag[self.stream as usize] = total;
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into())
}

#[derive(Debug)]
pub(crate) enum BatchError {
    Fenced(Vec<(String, i32)>),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for BatchError {
    fn from(e: anyhow::Error) -> Self {
        BatchError::Other(e)
    }
}
