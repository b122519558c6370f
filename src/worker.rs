//! The partition worker: consumes `balance-snapshots` and `interest-claims`,
//! applies each batch in ONE PostgreSQL transaction (state, payouts,
//! idempotency records, outbox rows and the consumed offsets, fenced by the
//! partition's owner epoch), then wakes the outbox relay.
//!
//! Batching is what makes the midnight spike cheap: a few statements per
//! thousand claims instead of a transaction per claim.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Clock, Settings};
use crate::kafka::{self, ClaimMessage};
use crate::money::account::CORRECTION_WINDOW_SECS;
use crate::money::types::business_date;
use crate::money::{decode_snapshot, Account, AccountId, IdempotencyKey, ParseError, Plans, Snapshot, SnapshotOutcome};
use crate::problem::problem;
use crate::repo::{self, ClaimResult, KeyRecord, PayoutRow};
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

/// Shared with the relay and readiness probe.
#[derive(Debug, Default)]
pub struct WorkerStatus {
    /// Partitions of `interest-claims` this worker owns: the relay publishes their payouts.
    pub claim_partitions: Vec<i32>,
    /// Per stream: in the group yet.
    pub joined: [bool; 2],
    /// Per stream: messages behind.
    pub lag: [i64; 2],
}

impl WorkerStatus {
    pub fn joined(&self) -> bool {
        self.joined.iter().all(|j| *j)
    }

    pub fn lag(&self) -> i64 {
        self.lag.iter().sum()
    }
}

pub struct Worker {
    pub stream: Stream,
    pub settings: Settings,
    pub pool: PgPool,
    pub producer: Arc<kafka::ResilientProducer>,
    pub metrics: Metrics,
    pub plans: Arc<RwLock<Arc<Plans>>>,
    pub clock: Clock,
    pub status: Arc<Mutex<WorkerStatus>>,
    /// Committed payouts go to the relay, in commit order.
    pub relay: mpsc::Sender<crate::outbox::RelayWork>,
}

/// How long the worker waits for more messages to fill a batch.
const BATCH_LINGER: Duration = Duration::from_millis(15);
/// How often consumer lag is measured (a broker round trip per partition).
const LAG_INTERVAL: Duration = Duration::from_secs(3);
/// A worker that received no partitions reports ready after this (an idle standby).
const STANDBY_READY_AFTER: Duration = Duration::from_secs(15);
/// Retry pause after a failed batch (database down, deadlock, fenced).
const RETRY_PAUSE: Duration = Duration::from_millis(250);

pub struct Decoded {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub input: Input,
}

pub enum Input {
    Snapshot {
        raw: Vec<u8>,
        key: Option<Vec<u8>>,
        parsed: Result<Snapshot, ParseError>,
    },
    Claim(ClaimMessage),
    /// An internal message that does not parse (never produced by this code).
    Unreadable(String),
}

impl Worker {
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
        let mut last_lag = Instant::now();
        let started = Instant::now();
        let owner = format!("{}-{}", hostname(), std::process::id());
        tracing::info!(event = "worker_started", owner, "worker started");
        while !shutdown.is_cancelled() {
            let mut batch = self.collect(&consumer, &shutdown).await;
            self.absorb_rebalances(&log, &mut owned, &mut batch);
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
    fn absorb_rebalances(
        &self,
        log: &Mutex<RebalanceLog>,
        owned: &mut HashMap<(String, i32), Owned>,
        batch: &mut Vec<OwnedMessage>,
    ) {
        let mut log = log.lock().expect("rebalance log");
        for tp in log.revoked.drain(..) {
            owned.remove(&tp);
            batch.retain(|m| !(m.topic() == tp.0 && m.partition() == tp.1));
            tracing::info!(event = "partition_revoked", topic = tp.0, partition = tp.1);
        }
        for tp in log.assigned.drain(..) {
            // Re-own on first use: the epoch is bumped then.
            owned.remove(&tp);
            tracing::info!(event = "partition_assigned", topic = tp.0, partition = tp.1);
        }
        let mut status = self.status.lock().expect("status");
        status.joined[self.stream as usize] |= log.joined;
        if self.stream == Stream::Claims {
            status.claim_partitions = owned.keys().map(|(_, p)| *p).collect();
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

    async fn apply_batch(
        &self,
        consumer: &StreamConsumer<WorkerContext>,
        owned: &mut HashMap<(String, i32), Owned>,
        batch: &[OwnedMessage],
        owner: &str,
    ) -> Result<(), BatchError> {
        // Own every partition in the batch, then skip what is already applied.
        let claims_topic = self.settings.topic(kafka::CLAIMS);
        for m in batch {
            let tp = (m.topic().to_owned(), m.partition());
            if let std::collections::hash_map::Entry::Vacant(slot) = owned.entry(tp) {
                let (topic, partition) = slot.key().clone();
                let (next, epoch) = repo::own_partition(&self.pool, &topic, partition, owner).await?;
                if topic == claims_topic {
                    // A crashed owner's committed but unpublished payouts go out first.
                    let _ = self.relay.send(crate::outbox::RelayWork::Sweep(vec![partition])).await;
                }
                slot.insert(Owned {
                    epoch,
                    next,
                    sought: false,
                });
            }
        }
        // PostgreSQL's offset is the truth. Kafka's committed offset trails it (it is
        // committed after the database), so messages below it are skipped; one
        // ahead of it (a reset or lost group offset) means a gap: seek back.
        let mut gaps: Vec<(String, i32, i64)> = Vec::new();
        for ((topic, partition), o) in owned.iter_mut() {
            let first = batch
                .iter()
                .filter(|m| m.topic() == topic && m.partition() == *partition)
                .map(|m| m.offset())
                .min();
            match first {
                Some(f) if f > o.next && !o.sought => {
                    o.sought = true;
                    gaps.push((topic.clone(), *partition, o.next));
                }
                Some(f) if f > o.next => {
                    tracing::error!(
                        event = "offsets_lost",
                        topic,
                        partition,
                        from = o.next,
                        to = f,
                        "the broker no longer has these messages"
                    );
                }
                _ => {}
            }
        }
        for (topic, partition, next) in &gaps {
            tracing::warn!(
                event = "offset_gap",
                topic,
                partition,
                next,
                "seeking back to the stored offset"
            );
            consumer
                .seek(topic, *partition, Offset::Offset(*next), Duration::from_secs(5))
                .map_err(|e| anyhow::anyhow!("seeking {topic}/{partition} to {next}: {e}"))?;
        }
        let in_gap = |m: &OwnedMessage| gaps.iter().any(|(t, p, _)| m.topic() == t && m.partition() == *p);
        let fresh: Vec<&OwnedMessage> = batch
            .iter()
            .filter(|m| !in_gap(m) && m.offset() >= owned[&(m.topic().to_owned(), m.partition())].next)
            .collect();
        let plans = self.plans_for(&fresh).await;
        let decoded: Vec<Decoded> = fresh.iter().map(|m| self.decode(m, &plans)).collect();
        let now = self.clock.now();
        let mut tx = self.pool.begin().await.map_err(anyhow::Error::from)?;
        let mut ids: Vec<String> = decoded.iter().filter_map(|d| d.account_id()).collect();
        ids.sort();
        ids.dedup();
        let window_start = now - chrono::Duration::seconds(CORRECTION_WINDOW_SECS + 86_400);
        let mut accounts = repo::load_accounts(&mut tx, &ids, window_start, true).await?;
        let keys: Vec<String> = decoded.iter().filter_map(|d| d.claim_key()).collect();
        let stored_keys = repo::load_keys(&mut tx, &keys).await?;
        let fx = apply(
            &mut accounts,
            stored_keys,
            &decoded,
            &plans,
            now,
            self.settings.claims_per_day,
        );
        self.send_to_dlq(&fx.dlq).await?;
        let touched: Vec<&Account> = fx.touched.iter().filter_map(|id| accounts.get(id)).collect();
        repo::store_accounts(&mut tx, &touched).await?;
        repo::insert_points(&mut tx, &fx.new_points, now).await?;
        repo::store_claim_results(&mut tx, &fx.results).await?;
        repo::insert_payouts(&mut tx, &fx.payouts).await?;
        let mut next: HashMap<(String, i32), i64> = HashMap::new();
        for m in &fresh {
            let e = next.entry((m.topic().to_owned(), m.partition())).or_default();
            *e = (*e).max(m.offset() + 1);
        }
        let commits: Vec<repo::OffsetCommit> = next
            .iter()
            .map(|(tp, n)| repo::OffsetCommit {
                topic: tp.0.clone(),
                partition: tp.1,
                next: *n,
                epoch: owned[tp].epoch,
            })
            .collect();
        let fenced = repo::commit_offsets(&mut tx, &commits).await?;
        if !fenced.is_empty() {
            tx.rollback().await.map_err(anyhow::Error::from)?;
            return Err(BatchError::Fenced(fenced));
        }
        repo::notify_claims_done(&mut tx, &fx.results).await?;
        tx.commit().await.map_err(anyhow::Error::from)?;
        // Durable: advance in memory, tell Kafka (for lag tooling), wake the relay.
        let mut tpl = TopicPartitionList::new();
        for (tp, n) in next {
            owned.get_mut(&tp).expect("owned").next = n;
            let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(n));
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(event = "kafka_commit_failed", error = %e);
        }
        self.record(&fx, fresh.len());
        if !fx.payouts.is_empty() {
            let items = fx
                .payouts
                .iter()
                .map(|p| crate::outbox::OutboxItem {
                    payout_id: p.payout_id,
                    key: p.account_id.clone(),
                    payload: p.body.to_string(),
                })
                .collect();
            // Waits when the relay is behind: bounded, and order is kept.
            let _ = self.relay.send(crate::outbox::RelayWork::Publish(items)).await;
        }
        Ok(())
    }

    /// The current plans; reloaded first if a snapshot names a plan we do not know yet.
    async fn plans_for(&self, msgs: &[&OwnedMessage]) -> Arc<Plans> {
        let plans = self.plans.read().expect("plans").clone();
        let unknown = msgs.iter().any(|m| {
            matches!(decode_snapshot(m.payload().unwrap_or_default(), &plans), Err(e) if e.code == "unknown_plan")
                && m.topic() == self.settings.topic(kafka::SNAPSHOTS)
        });
        if unknown {
            if let Ok(fresh) = repo::load_plans(&self.pool, self.settings.default_plan.as_deref()).await {
                let fresh = Arc::new(fresh);
                *self.plans.write().expect("plans") = fresh.clone();
                return fresh;
            }
        }
        plans
    }

    fn decode(&self, m: &OwnedMessage, plans: &Plans) -> Decoded {
        let payload = m.payload().unwrap_or_default();
        let input = if m.topic() == self.settings.topic(kafka::SNAPSHOTS) {
            Input::Snapshot {
                raw: payload.to_vec(),
                key: m.key().map(<[u8]>::to_vec),
                parsed: decode_snapshot(payload, plans),
            }
        } else {
            match serde_json::from_slice::<ClaimMessage>(payload) {
                Ok(c) => Input::Claim(c),
                Err(e) => Input::Unreadable(e.to_string()),
            }
        };
        Decoded {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            input,
        }
    }

    /// Dead letters are acknowledged by the broker before the offsets commit:
    /// a reject is never lost (it may be sent twice after a crash).
    async fn send_to_dlq(&self, dlq: &[DeadLetter]) -> anyhow::Result<()> {
        let topic = self.settings.topic(kafka::SNAPSHOTS_DLQ);
        let sends = dlq.iter().map(|d| {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "error",
                    value: Some(d.code),
                })
                .insert(Header {
                    key: "detail",
                    value: Some(d.detail.as_str()),
                });
            let key = String::from_utf8_lossy(d.key.as_deref().unwrap_or_default()).into_owned();
            let topic = topic.clone();
            async move { self.producer.send(&topic, &key, &d.raw, Some(headers)).await }
        });
        for r in futures::future::join_all(sends).await {
            r?;
        }
        Ok(())
    }

    fn record(&self, fx: &Effects, applied: usize) {
        let m = &self.metrics;
        m.worker_batch_size
            .with_label_values(&["worker"])
            .observe(applied as f64);
        for (label, n) in &fx.snapshot_counts {
            m.snapshots_total.with_label_values(&[label]).inc_by(*n);
        }
        for p in &fx.payouts {
            m.payouts_total.with_label_values(&[p.payout.kind.as_str()]).inc();
        }
        for r in &fx.results {
            if r.replay_of.is_some() {
                m.idempotent_replays_total
                    .with_label_values(&[&r.status.to_string()])
                    .inc();
            }
        }
        for d in &fx.dlq {
            tracing::warn!(event = "snapshot_rejected", code = d.code, detail = d.detail.as_str());
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
enum BatchError {
    Fenced(Vec<(String, i32)>),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for BatchError {
    fn from(e: anyhow::Error) -> Self {
        BatchError::Other(e)
    }
}

impl Decoded {
    fn account_id(&self) -> Option<String> {
        match &self.input {
            Input::Snapshot { parsed: Ok(s), .. } => Some(s.account_id.to_string()),
            Input::Claim(c) => Some(c.account_id().to_owned()),
            _ => None,
        }
    }

    fn claim_key(&self) -> Option<String> {
        match &self.input {
            Input::Claim(ClaimMessage::Claim { idempotency_key, .. }) => Some(idempotency_key.clone()),
            _ => None,
        }
    }
}

pub struct DeadLetter {
    pub raw: Vec<u8>,
    pub key: Option<Vec<u8>>,
    pub code: &'static str,
    pub detail: String,
}

/// Everything one batch changes, computed without I/O.
#[derive(Default)]
pub struct Effects {
    pub dlq: Vec<DeadLetter>,
    pub new_points: Vec<(String, crate::money::Point, crate::money::Currency)>,
    pub touched: BTreeSet<String>,
    pub results: Vec<ClaimResult>,
    pub payouts: Vec<PayoutRow>,
    pub snapshot_counts: HashMap<&'static str, u64>,
}

/// Applies a batch, in order, to the loaded accounts.
pub fn apply(
    accounts: &mut HashMap<String, Account>,
    mut keys: HashMap<String, KeyRecord>,
    inputs: &[Decoded],
    plans: &Plans,
    now: DateTime<Utc>,
    claims_per_day: u32,
) -> Effects {
    let mut fx = Effects::default();
    for d in inputs {
        match &d.input {
            Input::Snapshot { raw, key, parsed } => apply_snapshot(accounts, &mut fx, raw, key, parsed, plans, now),
            Input::Claim(ClaimMessage::Claim {
                claim_id,
                account_id,
                idempotency_key,
                accepted_at,
            }) => {
                let claim = ClaimIn {
                    claim_id: *claim_id,
                    account_id,
                    key: idempotency_key,
                    accepted_at: *accepted_at,
                };
                apply_claim(accounts, &mut keys, &mut fx, claim, d.partition, plans, claims_per_day);
            }
            Input::Claim(ClaimMessage::Settle {
                account_id,
                date,
                run_at,
            }) => {
                if let Some(acc) = accounts.get_mut(account_id) {
                    if let Some(payout) = acc.settle(plans, *date, *run_at) {
                        push_payout(&mut fx, acc, payout, None, None, d.partition);
                    }
                    fx.touched.insert(account_id.clone());
                }
            }
            Input::Unreadable(e) => tracing::error!(event = "unreadable_claim_message", error = e.as_str()),
        }
    }
    fx
}

fn apply_snapshot(
    accounts: &mut HashMap<String, Account>,
    fx: &mut Effects,
    raw: &[u8],
    key: &Option<Vec<u8>>,
    parsed: &Result<Snapshot, ParseError>,
    plans: &Plans,
    now: DateTime<Utc>,
) {
    let outcome = match parsed {
        Err(e) => Err(e.clone()),
        Ok(snap) => {
            let id = snap.account_id.to_string();
            let result = match accounts.get_mut(&id) {
                Some(acc) => acc.apply_snapshot(snap, plans, now),
                None => {
                    accounts.insert(id.clone(), Account::open(snap, plans));
                    Ok(SnapshotOutcome::Applied {
                        late: false,
                        adjustment: Default::default(),
                    })
                }
            };
            if let Ok(SnapshotOutcome::Applied { .. }) = result {
                let acc = &accounts[&id];
                let point = acc
                    .points
                    .iter()
                    .find(|p| p.seq == snap.seq)
                    .expect("just applied")
                    .clone();
                fx.new_points.push((id.clone(), point, acc.currency));
                fx.touched.insert(id);
            }
            result
        }
    };
    match outcome {
        Ok(o) => *fx.snapshot_counts.entry(o.label()).or_default() += 1,
        Err(e) => {
            *fx.snapshot_counts.entry("rejected").or_default() += 1;
            fx.dlq.push(DeadLetter {
                raw: raw.to_vec(),
                key: key.clone(),
                code: e.code,
                detail: e.detail,
            });
        }
    }
}

struct ClaimIn<'a> {
    claim_id: Uuid,
    account_id: &'a str,
    key: &'a str,
    accepted_at: DateTime<Utc>,
}

fn apply_claim(
    accounts: &mut HashMap<String, Account>,
    keys: &mut HashMap<String, KeyRecord>,
    fx: &mut Effects,
    c: ClaimIn<'_>,
    partition: i32,
    plans: &Plans,
    claims_per_day: u32,
) {
    let valid = AccountId::try_from(c.account_id).is_ok() && IdempotencyKey::try_from(c.key).is_ok();
    if !valid {
        tracing::error!(event = "invalid_claim_message", claim_id = %c.claim_id);
        return;
    }
    let mut result = ClaimResult {
        claim_id: c.claim_id,
        idempotency_key: c.key.to_owned(),
        account_id: c.account_id.to_owned(),
        accepted_at: c.accepted_at,
        business_date: business_date(c.accepted_at),
        status: 0,
        body: json!(null),
        payout_id: None,
        replay_of: None,
        first_for_key: false,
    };
    if let Some(first) = keys.get(c.key) {
        if first.account_id == c.account_id {
            (result.status, result.body, result.replay_of) = (first.status, first.body.clone(), Some(first.claim_id));
        } else {
            result.status = 422;
            result.body = problem(
                "idempotency_key_reused",
                422,
                "this Idempotency-Key was used for another account",
            );
        }
        fx.results.push(result);
        return;
    }
    match accounts.get_mut(c.account_id) {
        None => {
            result.status = 404;
            result.body = problem("unknown_account", 404, format!("no account {}", c.account_id));
        }
        Some(acc) => match acc.claim(plans, c.accepted_at, claims_per_day) {
            Ok(payout) => {
                let id = push_payout(fx, acc, payout, Some(c.claim_id), Some(c.key), partition);
                result.status = 201;
                result.body = fx.payouts.last().expect("pushed").body.clone();
                result.payout_id = Some(id);
                fx.touched.insert(c.account_id.to_owned());
            }
            Err(refusal) => {
                result.status = refusal.status() as i16;
                result.body = problem(refusal.code(), refusal.status(), refusal_detail(&refusal));
                if let crate::money::Refusal::AlreadyClaimedToday { next_claim_at } = refusal {
                    result.body["next_claim_at"] = json!(crate::money::types::format_instant(next_claim_at));
                }
            }
        },
    }
    result.first_for_key = true;
    keys.insert(
        c.key.to_owned(),
        KeyRecord {
            account_id: c.account_id.to_owned(),
            claim_id: c.claim_id,
            status: result.status,
            body: result.body.clone(),
        },
    );
    fx.results.push(result);
}

fn refusal_detail(r: &crate::money::Refusal) -> &'static str {
    match r {
        crate::money::Refusal::AlreadyClaimedToday { .. } => {
            "this account already claimed today; the next claim opens at 00:00 KST"
        }
        crate::money::Refusal::NothingToClaim => "less than one unit of interest has accrued",
    }
}

fn push_payout(
    fx: &mut Effects,
    acc: &Account,
    payout: crate::money::Payout,
    claim_id: Option<Uuid>,
    key: Option<&str>,
    partition: i32,
) -> Uuid {
    let payout_id = Uuid::now_v7();
    let body = payout.to_json(&payout_id.to_string(), &acc.id);
    fx.payouts.push(PayoutRow {
        payout_id,
        claim_id,
        idempotency_key: key.map(str::to_owned),
        account_id: acc.id.to_string(),
        partition,
        payout,
        body,
    });
    payout_id
}
