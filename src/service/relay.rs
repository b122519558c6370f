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

use std::collections::{HashMap, HashSet};
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
/// Handed-over payouts the relay holds while a publication is under way;
/// past this it forgets them and sweeps the table instead (they are there).
const HELD_ITEMS_MAX: usize = 10_000;
/// How often `outbox_pending` is counted, whatever the relay is doing.
const PENDING_GAUGE_INTERVAL: Duration = Duration::from_secs(1);

pub struct Relay {
    pub pool: PgPool,
    pub producer: kafka::ResilientProducer,
    pub topic: String,
    pub status: Arc<Mutex<WorkerStatus>>,
    pub metrics: Metrics,
}

/// What the relay owes: a sweep of the table (requested, or because
/// handed-over payouts were dropped), then the payouts handed over since, in
/// commit order. The sweep goes first: everything dropped was committed
/// before anything held, so per account the order stays commit order.
#[derive(Default)]
struct Owed {
    sweep: Option<Vec<i32>>,
    held: Vec<OutboxItem>,
}

impl Owed {
    fn is_empty(&self) -> bool {
        self.sweep.is_none() && self.held.is_empty()
    }

    fn sweep(&mut self, partitions: &[i32]) {
        let mut all = self.sweep.take().unwrap_or_default();
        all.extend_from_slice(partitions);
        all.sort_unstable();
        all.dedup();
        self.sweep = Some(all);
    }

    /// Holds a committed batch; a full hold is dropped for a sweep (bounded memory).
    fn hold(&mut self, items: Vec<OutboxItem>) {
        if self.held.len() + items.len() > HELD_ITEMS_MAX {
            tracing::warn!(event = "relay_hold_full", dropped = self.held.len() + items.len());
            self.held.clear();
            self.sweep(&[]);
            return;
        }
        self.held.extend(items);
    }

    fn add(&mut self, work: RelayWork) {
        match work {
            RelayWork::Publish(items) => self.hold(items),
            RelayWork::Sweep(partitions) => self.sweep(&partitions),
        }
    }
}

enum Job {
    Sweep(Vec<i32>),
    Items(Vec<OutboxItem>),
}

/// The hand-off channel as the relay reads it while it works: what arrives
/// is added to what it owes.
struct Inbox {
    rx: mpsc::Receiver<RelayWork>,
    /// False once the worker dropped its sender.
    open: bool,
    // An interval, not a sleep per loop: steady work must not postpone the sweep for ever.
    sweep_every: tokio::time::Interval,
    owed: Owed,
}

impl Inbox {
    /// Awaits `job` while holding whatever the worker hands over meanwhile.
    async fn while_reading<T>(&mut self, job: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(job);
        loop {
            tokio::select! {
                biased;
                out = &mut job => return out,
                w = self.rx.recv(), if self.open => match w {
                    Some(w) => self.owed.add(w),
                    None => self.open = false,
                },
                _ = self.sweep_every.tick() => self.owed.sweep(&[]),
            }
        }
    }

    /// Waits for something to do; false when there never will be.
    async fn next(&mut self) -> bool {
        while self.owed.is_empty() {
            if !self.open {
                return false;
            }
            tokio::select! {
                w = self.rx.recv() => match w {
                    Some(w) => self.owed.add(w),
                    None => self.open = false,
                },
                _ = self.sweep_every.tick() => self.owed.sweep(&[]),
            }
        }
        true
    }
}

impl Relay {
    /// Runs until the worker drops its sender (after its last batch).
    ///
    /// The hand-off channel is read all the time, also while a publication
    /// waits for a broker or a topic that is away: the worker never waits
    /// behind the relay for longer than one channel send, so claims keep
    /// being paid while `interest-payouts` cannot be written (the outbox
    /// holds the payouts; drill 5, docs/RELIABILITY.md). After a failure the
    /// next attempt probes with one payout before it sends the backlog, so a
    /// topic that stays away costs one failed send per `RETRY_PAUSE`, not one
    /// per pending payout (each failure counts towards renewing the producer).
    pub async fn run(self, rx: mpsc::Receiver<RelayWork>, shutdown: CancellationToken) {
        let gauge = shutdown.child_token();
        let _stop_gauge = gauge.clone().drop_guard();
        tokio::spawn(count_pending(self.pool.clone(), self.metrics.clone(), gauge));
        let mut sweep_every = tokio::time::interval(SWEEP_INTERVAL);
        sweep_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inbox = Inbox {
            rx,
            open: true,
            sweep_every,
            owed: Owed::default(),
        };
        let mut failing = false;
        while inbox.next().await {
            let job = self.next_job(&mut inbox.owed);
            failing = !self.work(job, failing, &mut inbox).await;
            if failing {
                if shutdown.is_cancelled() || !inbox.open {
                    tracing::warn!(
                        event = "relay_stopped_with_pending",
                        "left in the outbox for the next owner"
                    );
                    return;
                }
                inbox.while_reading(tokio::time::sleep(RETRY_PAUSE)).await;
            }
        }
    }

    /// The sweep first (of the requested and every assigned partition), else what is held.
    fn next_job(&self, owed: &mut Owed) -> Job {
        match owed.sweep.take() {
            Some(mut partitions) => {
                partitions.extend(self.status.lock().expect("status").claim_partitions.iter());
                partitions.sort_unstable();
                partitions.dedup();
                Job::Sweep(partitions)
            }
            None => Job::Items(std::mem::take(&mut owed.held)),
        }
    }

    /// Does one job while reading the channel; true when everything in it went out.
    /// A job that fails leaves its payouts to a sweep (they are in the table).
    async fn work(&self, job: Job, probe: bool, inbox: &mut Inbox) -> bool {
        let (done, published) = match job {
            Job::Sweep(partitions) => {
                let (done, published) = inbox.while_reading(self.sweep(&partitions, probe)).await;
                if !done {
                    inbox.owed.sweep(&partitions);
                }
                (done, published)
            }
            Job::Items(items) => {
                let (done, published) = inbox.while_reading(self.publish_once(&items)).await;
                if !done {
                    inbox.owed.sweep(&[]);
                }
                (done, published)
            }
        };
        // What went out needs no second copy from the hold.
        let published: HashSet<Uuid> = published.into_iter().collect();
        inbox.owed.held.retain(|i| !published.contains(&i.payout_id));
        done
    }

    /// Publishes the partitions' unpublished rows in `seq` order, the first
    /// round one row only when `probe`; (all out, ids published).
    async fn sweep(&self, partitions: &[i32], probe: bool) -> (bool, Vec<Uuid>) {
        let mut published = Vec::new();
        if partitions.is_empty() {
            return (true, published);
        }
        let mut limit = if probe { 1 } else { SWEEP_BATCH_MAX };
        loop {
            let rows = match store::unpublished(&self.pool, partitions, limit).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(event = "relay_sweep_failed", error = format!("{e:#}"));
                    return (false, published);
                }
            };
            let n = rows.len() as i64;
            let items: Vec<OutboxItem> = rows
                .into_iter()
                .map(|(payout_id, key, payload)| OutboxItem {
                    payout_id,
                    key,
                    payload: as_handed_over(payload),
                })
                .collect();
            let (done, ids) = self.publish_once(&items).await;
            published.extend(ids);
            // A probe that went out is followed by full rounds.
            if !done || (n < limit && limit == SWEEP_BATCH_MAX) || n == 0 {
                return (done, published);
            }
            limit = SWEEP_BATCH_MAX;
        }
    }

    /// One attempt: marks what was delivered published; (all out, its ids).
    async fn publish_once(&self, items: &[OutboxItem]) -> (bool, Vec<Uuid>) {
        let delivered = self.publish(items).await;
        let ids: Vec<Uuid> = delivered.iter().map(|&i| items[i].payout_id).collect();
        if !ids.is_empty() {
            if let Err(e) = store::mark_published(&self.pool, &ids).await {
                // Published but not marked: a later sweep publishes again (at least once).
                tracing::warn!(event = "relay_mark_failed", error = format!("{e:#}"));
            }
        }
        (delivered.len() == items.len(), ids)
    }

    /// Sends `items` (in commit order) in rounds of at most one payout per
    /// account: round r holds each account's r-th payout, and starts only
    /// when every send of round r − 1 was acknowledged. After a failing round
    /// nothing more is sent. Returns the indices delivered.
    ///
    /// Why rounds: sends in flight together can land in any order when some
    /// fail — a payout refused while the topic is away, its successor
    /// accepted a moment later when it is back (or a retried produce request
    /// overtaken by the next one). The first copy of an account's later
    /// payout would then precede the earlier one on the topic (drill 5 saw
    /// it). With one payout per account in flight, an account's payout is
    /// sent only after all its earlier ones were acknowledged, and what is
    /// not delivered stays unpublished for a sweep, which sends in `seq`
    /// order. A claims batch holds one payout per account almost always, so
    /// a job is almost always one round.
    async fn publish(&self, items: &[OutboxItem]) -> Vec<usize> {
        let mut delivered = Vec::with_capacity(items.len());
        for round in rounds(items) {
            let sends = round.iter().map(|&n| {
                let i = &items[n];
                let headers = OwnedHeaders::new().insert(Header {
                    key: "payout_id",
                    value: Some(&i.payout_id.to_string()),
                });
                self.producer
                    .send(&self.topic, &i.key, i.payload.as_bytes(), Some(headers))
            });
            let results = futures::future::join_all(sends).await;
            let mut failed = false;
            for (&n, r) in round.iter().zip(&results) {
                match r {
                    Ok(_) => delivered.push(n),
                    Err(e) => {
                        if !failed {
                            tracing::warn!(event = "relay_send_failed", error = %e);
                        }
                        failed = true;
                    }
                }
            }
            if failed {
                break;
            }
        }
        delivered
    }
}

/// The indices of `items` in rounds: round r holds each key's r-th item, in
/// the order the keys first appear.
fn rounds(items: &[OutboxItem]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(items.len());
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (n, item) in items.iter().enumerate() {
        let r = seen.entry(item.key.as_str()).or_insert(0);
        if *r == rounds.len() {
            rounds.push(Vec::new());
        }
        rounds[*r].push(n);
        *r += 1;
    }
    rounds
}

/// Keeps `outbox_pending` current while the relay may be stuck on a
/// publication (the alert on it must see the backlog grow).
async fn count_pending(pool: PgPool, metrics: Metrics, stop: CancellationToken) {
    let mut every = tokio::time::interval(PENDING_GAUGE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {
                if let Ok(n) = store::outbox_pending(&pool).await {
                    metrics.outbox_pending.set(n);
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::{as_handed_over, rounds, OutboxItem};

    fn item(key: &str) -> OutboxItem {
        OutboxItem {
            payout_id: uuid::Uuid::new_v4(),
            key: key.to_owned(),
            payload: String::new(),
        }
    }

    #[test]
    fn an_accounts_payouts_go_in_successive_rounds() {
        let items: Vec<OutboxItem> = ["a", "b", "a", "c", "a", "b"].into_iter().map(item).collect();
        assert_eq!(rounds(&items), vec![vec![0, 1, 3], vec![2, 5], vec![4]]);
        assert!(rounds(&[]).is_empty());
    }

    #[test]
    fn a_swept_payload_has_the_hand_off_bytes() {
        // jsonb's rendering: keys by length, then bytewise; ", " and ": ".
        let jsonb = r#"{"net": "99", "kind": "claim", "rates": [{"plan": "basic", "tiers": [{"rate_percent": "2.0"}]}], "payout_id": "p"}"#;
        let handed_over = serde_json::json!({
            "payout_id": "p", "kind": "claim", "net": "99",
            "rates": [{"tiers": [{"rate_percent": "2.0"}], "plan": "basic"}],
        })
        .to_string();
        assert_eq!(as_handed_over(jsonb.to_owned()), handed_over);
    }
}
