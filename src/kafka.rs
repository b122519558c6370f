//! Kafka plumbing: client settings (every one written out, with why), topic
//! names and the internal claim message.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Settings;

pub const SNAPSHOTS: &str = "balance-snapshots";
pub const SNAPSHOTS_DLQ: &str = "balance-snapshots.dlq";
pub const CLAIMS: &str = "interest-claims";
pub const PAYOUTS: &str = "interest-payouts";

/// A message on `interest-claims`: a customer's claim, or one account's share
/// of a settlement run. Keyed by account id, so it reaches the owning worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClaimMessage {
    Claim {
        claim_id: Uuid,
        /// The client whose idempotency key this is; empty in messages from
        /// before keys were scoped per client.
        #[serde(default)]
        client_id: String,
        account_id: String,
        idempotency_key: String,
        /// The one clock reading taken when the API accepted the claim.
        accepted_at: DateTime<Utc>,
    },
    Settle {
        account_id: String,
        date: NaiveDate,
        run_at: DateTime<Utc>,
    },
}

impl ClaimMessage {
    pub fn account_id(&self) -> &str {
        match self {
            ClaimMessage::Claim { account_id, .. } | ClaimMessage::Settle { account_id, .. } => account_id,
        }
    }
}

fn common(settings: &Settings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &settings.kafka_brokers)
        // Fail over quickly on loopback and in a cluster alike.
        .set("socket.keepalive.enable", "true")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "1000")
        // Topics are created explicitly with their partition count; an
        // auto-created topic would get the broker's default and break co-partitioning.
        .set("allow.auto.create.topics", "false")
        .set("log_level", "4");
    c
}

/// How long a claim may wait for the broker's acknowledgement before the API
/// answers 503 (it never answers 202 for an unacknowledged claim).
pub const CLAIM_QUEUE_TIMEOUT_MS: u32 = 5_000;

/// The producer for claims and the DLQ: low latency, short delivery bound.
pub fn producer(settings: &Settings) -> anyhow::Result<FutureProducer> {
    producer_with(settings, 2, CLAIM_QUEUE_TIMEOUT_MS)
}

/// The relay's producer: payouts are not on a customer's critical path, so a
/// longer linger packs more of them per request to the broker.
pub fn relay_producer(settings: &Settings) -> anyhow::Result<FutureProducer> {
    producer_with(settings, 20, 30_000)
}

fn producer_with(settings: &Settings, linger_ms: u32, message_timeout_ms: u32) -> anyhow::Result<FutureProducer> {
    Ok(common(settings)
        // Java's murmur2, so partition p holds the same accounts as core banking's topics.
        .set("partitioner", "murmur2_random")
        // No duplicates or reordering on retry; requires acks=all.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // A claim is durable once acknowledged; a few ms of linger batches the midnight spike.
        .set("linger.ms", linger_ms.to_string())
        // Bounded buffer: when full, produce fails at once and the API answers 503.
        .set("queue.buffering.max.messages", "200000")
        .set("queue.buffering.max.kbytes", "262144")
        // Give up (and answer 503) rather than hang when the broker is away.
        .set("message.timeout.ms", message_timeout_ms.to_string())
        .set("request.timeout.ms", (message_timeout_ms * 4 / 5).to_string())
        .create()?)
}

/// A producer that replaces itself after repeated delivery failures.
///
/// An idempotent producer that outlives a broker restart can get stuck (the
/// broker no longer knows its producer id and every message times out); a new
/// producer works at once. So after `RENEW_AFTER_FAILURES` failures in a row
/// the next send uses a fresh one.
pub struct ResilientProducer {
    current: std::sync::RwLock<FutureProducer>,
    failures: std::sync::atomic::AtomicU32,
    make: Box<dyn Fn() -> anyhow::Result<FutureProducer> + Send + Sync>,
}

/// Consecutive failed deliveries before the producer is replaced.
pub const RENEW_AFTER_FAILURES: u32 = 3;

impl ResilientProducer {
    pub fn new(make: impl Fn() -> anyhow::Result<FutureProducer> + Send + Sync + 'static) -> anyhow::Result<Self> {
        Ok(Self {
            current: std::sync::RwLock::new(make()?),
            failures: std::sync::atomic::AtomicU32::new(0),
            make: Box::new(make),
        })
    }

    pub fn get(&self) -> FutureProducer {
        self.current.read().expect("producer").clone()
    }

    pub async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: Option<rdkafka::message::OwnedHeaders>,
    ) -> anyhow::Result<(i32, i64)> {
        use std::sync::atomic::Ordering;
        let result = send(&self.get(), topic, key, payload, headers).await;
        if result.is_ok() {
            self.failures.store(0, Ordering::Relaxed);
        } else if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= RENEW_AFTER_FAILURES {
            self.failures.store(0, Ordering::Relaxed);
            match (self.make)() {
                Ok(fresh) => {
                    tracing::warn!(
                        event = "producer_renewed",
                        "repeated delivery failures: using a new producer"
                    );
                    *self.current.write().expect("producer") = fresh;
                }
                Err(e) => tracing::warn!(event = "producer_renew_failed", error = %e),
            }
        }
        result
    }
}

/// Sends one message and waits for the broker's acknowledgement.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: Option<rdkafka::message::OwnedHeaders>,
) -> anyhow::Result<(i32, i64)> {
    let mut record = FutureRecord::to(topic).key(key).payload(payload);
    if let Some(h) = headers {
        record = record.headers(h);
    }
    producer
        .send(record, Duration::from_secs(0))
        .await
        .map(|d| (d.partition, d.offset))
        .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))
}

/// Settings for the worker's consumer group.
pub fn consumer_config(settings: &Settings) -> ClientConfig {
    let mut c = common(settings);
    let live = settings.kafka_liveness;
    c.set("group.id", &settings.kafka_group_id)
        // Only the partitions that move pause during a rebalance.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Offsets live in PostgreSQL with the state; Kafka commits are only for lag tooling.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A brand-new group reads everything.
        .set("auto.offset.reset", "earliest")
        // A frozen, cut-off or dead worker's partitions move after the session
        // timeout (KAFKA_SESSION_TIMEOUT_MS, default 10 s until drill 2 in
        // docs/RELIABILITY.md has measured a shorter one). Heartbeats come from librdkafka's own thread,
        // so a worker busy with the spike keeps its session; a third of the
        // timeout or less, so a rebalance is heard within one interval.
        .set("session.timeout.ms", live.session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", live.heartbeat_interval_ms.to_string())
        // A batch takes well under this; a worker stuck longer (its database
        // unreachable) leaves the group so its partitions move.
        .set("max.poll.interval.ms", live.max_poll_interval_ms.to_string())
        // Low latency for claims: do not wait long for fuller fetches.
        .set("fetch.wait.max.ms", "10")
        .set("fetch.min.bytes", "1")
        // Bound the prefetch buffer (memory stays flat under the spike).
        .set("queued.max.messages.kbytes", "16384")
        .set("enable.partition.eof", "false");
    c
}
