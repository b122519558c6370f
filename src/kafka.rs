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

/// The producer for claims and the DLQ: low latency.
pub fn producer(settings: &Settings) -> anyhow::Result<FutureProducer> {
    producer_with_linger(settings, 2)
}

/// The relay's producer: payouts are not on a customer's critical path, so a
/// longer linger packs more of them per request to the broker.
pub fn relay_producer(settings: &Settings) -> anyhow::Result<FutureProducer> {
    producer_with_linger(settings, 20)
}

fn producer_with_linger(settings: &Settings, linger_ms: u32) -> anyhow::Result<FutureProducer> {
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
        .set("message.timeout.ms", "10000")
        .set("request.timeout.ms", "5000")
        .create()?)
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
    c.set("group.id", &settings.kafka_group_id)
        // Only the partitions that move pause during a rebalance.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Offsets live in PostgreSQL with the state; Kafka commits are only for lag tooling.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A brand-new group reads everything.
        .set("auto.offset.reset", "earliest")
        // A dead worker's partitions move within seconds.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "500")
        // A batch takes well under this.
        .set("max.poll.interval.ms", "60000")
        // Low latency for claims: do not wait long for fuller fetches.
        .set("fetch.wait.max.ms", "10")
        .set("fetch.min.bytes", "1")
        // Bound the prefetch buffer (memory stays flat under the spike).
        .set("queued.max.messages.kbytes", "16384")
        .set("enable.partition.eof", "false");
    c
}
