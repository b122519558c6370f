//! One batch, as a pipeline of named steps: own (fence) → seek → decode →
//! load → decide → write (dead letters to their outbox, notify at commit) →
//! after commit: Kafka commit, metrics, relays. Everything but `decide` is
//! I/O; `decide` is [`crate::claims::decide`]. Nothing waits for the broker
//! while the transaction holds its account locks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use super::{BatchError, Owned, Worker, WorkerContext};
use crate::claims::{self, Claim, ClaimDecision, Context, Effects, Input, KeyRecord, KeyState, ScopedKey, State};
use crate::kafka::{self, ClaimMessage};
use crate::money::account::CORRECTION_WINDOW_SECS;
use crate::money::types::business_date;
use crate::money::{decode_snapshot, Account, AccountId, IdempotencyKey, Plans};
use crate::service::api;
use crate::service::handoff::{OutboxItem, RelayWork};
use crate::service::plans;
use crate::store::{self, ClaimDone, ClaimResult, DoneAnswer, NewDeadLetter, OffsetCommit, PayoutRow, Tx};

pub(super) type Owners = HashMap<(String, i32), Owned>;
pub(super) type Tp = (String, i32);
type Gap = (String, i32, i64);

pub(super) fn tp(m: &OwnedMessage) -> Tp {
    (m.topic().to_owned(), m.partition())
}

impl Worker {
    /// One batch: own its partitions, seek back over gaps, then apply the
    /// fresh messages (isolating a poison message: [`super::poison`]).
    pub(super) async fn apply_batch(
        &self,
        consumer: &StreamConsumer<WorkerContext>,
        owned: &mut Owners,
        batch: &[OwnedMessage],
        owner: &str,
    ) -> Result<(), BatchError> {
        self.own(owned, batch, owner).await?;
        let gaps = seek_gaps(consumer, owned, batch)?;
        let fresh = fresh(owned, batch, &gaps);
        self.apply_isolating(consumer, owned, &fresh).await
    }

    /// Applies fresh messages (in offset order per partition) in ONE
    /// transaction, with their dead letters and offsets.
    pub(super) async fn apply_part(
        &self,
        consumer: &StreamConsumer<WorkerContext>,
        owned: &mut Owners,
        fresh: &[&OwnedMessage],
    ) -> Result<(), BatchError> {
        let plans = self.plans_for(fresh).await;
        let (inputs, offsets): (Vec<Input>, Vec<i64>) = fresh
            .iter()
            .filter_map(|m| Some((self.decode(m, &plans)?, m.offset())))
            .unzip();
        let now = self.clock.now();
        let mut tx = store::begin_batch(&self.pool, self.idle_in_batch_limit()).await?;
        let mut state = load(&mut tx, &inputs, now).await?;
        // Accounts may name a plan imported since our last reload (another
        // process applied a snapshot on it): reload, or fail and retry the batch.
        let plans = plans::covering(
            &self.pool,
            &self.plans,
            self.settings.default_plan.as_deref(),
            state.accounts.values(),
        )
        .await
        .map_err(anyhow::Error::from)?;
        let cx = Context {
            plans: &plans,
            now,
            claims_per_day: self.settings.claims_per_day,
            keys_expired_before: Some(now - self.settings.idempotency_key_ttl),
        };
        let fx = claims::decide(&mut state, &inputs, &cx, &mut |_| Uuid::now_v7().to_string());
        let next = next_offsets(fresh);
        let rows = Rows::of(&fx, &inputs, &offsets);
        if let Err(e) = write(&mut tx, &state, &fx, &rows, now, &commits(&next, owned)).await {
            if let BatchError::Fenced(_) = e {
                tx.rollback().await.map_err(anyhow::Error::from)?;
            }
            return Err(e);
        }
        tx.commit().await.map_err(anyhow::Error::from)?;
        self.after_commit(consumer, owned, next, &fx, &rows, fresh.len()).await;
        Ok(())
    }

    /// Owns every partition of the batch not owned yet: bumps its epoch
    /// (fencing out the previous owner); a claims partition's leftovers go
    /// to the relay first.
    async fn own(&self, owned: &mut Owners, batch: &[OwnedMessage], owner: &str) -> anyhow::Result<()> {
        let claims_topic = self.settings.topic(kafka::CLAIMS);
        for m in batch {
            if let std::collections::hash_map::Entry::Vacant(slot) = owned.entry(tp(m)) {
                let (topic, partition) = slot.key().clone();
                let (next, epoch) = store::own_partition(&self.pool, &topic, partition, owner).await?;
                if topic == claims_topic {
                    // A crashed owner's committed but unpublished payouts go out first.
                    let _ = self.relay.send(RelayWork::Sweep(vec![partition])).await;
                }
                slot.insert(Owned {
                    epoch,
                    next,
                    sought: false,
                });
            }
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
            if let Ok(fresh) = store::load_plans(&self.pool, self.settings.default_plan.as_deref()).await {
                let fresh = Arc::new(fresh);
                *self.plans.write().expect("plans") = fresh.clone();
                return fresh;
            }
        }
        plans
    }

    /// A message as the decision takes it. A claims-topic message this code
    /// never produces (unreadable, or with invalid ids) is logged and skipped.
    fn decode(&self, m: &OwnedMessage, plans: &Plans) -> Option<Input> {
        let payload = m.payload().unwrap_or_default();
        let message = if m.topic() == self.settings.topic(kafka::SNAPSHOTS) {
            claims::Message::Snapshot {
                raw: payload.to_vec(),
                key: m.key().map(<[u8]>::to_vec),
                parsed: decode_snapshot(payload, plans),
            }
        } else {
            match serde_json::from_slice::<ClaimMessage>(payload) {
                Ok(c) => claim_message(c)?,
                Err(e) => {
                    tracing::error!(event = "unreadable_claim_message", error = e.to_string());
                    return None;
                }
            }
        };
        Some(Input {
            partition: m.partition(),
            message,
        })
    }

    /// Durable: advance in memory, tell Kafka (for lag tooling), count, wake the relays.
    async fn after_commit(
        &self,
        consumer: &StreamConsumer<WorkerContext>,
        owned: &mut Owners,
        next: HashMap<Tp, i64>,
        fx: &Effects,
        rows: &Rows,
        applied: usize,
    ) {
        let mut tpl = TopicPartitionList::new();
        for (tp, n) in next {
            owned.get_mut(&tp).expect("owned").next = n;
            let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(n));
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(event = "kafka_commit_failed", error = %e);
        }
        self.record(fx, rows, applied);
        if !rows.dead_letters.is_empty() {
            self.dead_letters.notify_one();
        }
        if !rows.payouts.is_empty() {
            let items = rows.outbox_items();
            // Waits when the relay is behind: bounded, and order is kept.
            let _ = self.relay.send(RelayWork::Publish(items)).await;
        }
    }

    fn record(&self, fx: &Effects, rows: &Rows, applied: usize) {
        let m = &self.metrics;
        m.worker_batch_size
            .with_label_values(&["worker"])
            .observe(applied as f64);
        let mut snapshot_counts: HashMap<&'static str, u64> = HashMap::new();
        for s in &fx.snapshots {
            *snapshot_counts
                .entry(s.as_ref().map_or("rejected", |o| o.label()))
                .or_default() += 1;
        }
        for (label, n) in &snapshot_counts {
            m.snapshots_total.with_label_values(&[label]).inc_by(*n);
        }
        for p in &fx.payouts {
            m.payouts_total.with_label_values(&[p.payout.kind.as_str()]).inc();
        }
        for r in rows.claims.iter().filter(|r| r.replay_of.is_some()) {
            m.idempotent_replays_total
                .with_label_values(&[&r.status.to_string()])
                .inc();
        }
        for d in &fx.dead_letters {
            tracing::warn!(event = "snapshot_rejected", code = d.code, detail = d.detail.as_str());
        }
    }
}

/// A claims-topic message with its ids parsed; `None` (logged) if they are invalid.
pub(super) fn claim_message(c: ClaimMessage) -> Option<claims::Message> {
    match c {
        ClaimMessage::Claim {
            claim_id,
            client_id,
            account_id,
            idempotency_key,
            accepted_at,
        } => match (
            AccountId::try_from(account_id.as_str()),
            IdempotencyKey::try_from(idempotency_key.as_str()),
        ) {
            (Ok(account_id), Ok(key)) => Some(claims::Message::Claim(Claim {
                claim_id,
                client: client_id,
                account_id,
                key,
                accepted_at,
            })),
            _ => {
                tracing::error!(event = "invalid_claim_message", claim_id = %claim_id);
                None
            }
        },
        ClaimMessage::Settle {
            account_id,
            date,
            run_at,
        } => Some(claims::Message::Settle {
            account_id,
            date,
            run_at,
        }),
    }
}

/// PostgreSQL's offset is the truth. Kafka's committed offset trails it (it is
/// committed after the database), so messages below it are skipped; one
/// ahead of it (a reset or lost group offset) means a gap: seek back, once.
fn seek_gaps(
    consumer: &StreamConsumer<WorkerContext>,
    owned: &mut Owners,
    batch: &[OwnedMessage],
) -> anyhow::Result<Vec<Gap>> {
    let mut gaps: Vec<Gap> = Vec::new();
    for ((topic, partition), o) in owned.iter_mut() {
        let first = batch
            .iter()
            .filter(|m| m.topic() == topic && m.partition() == *partition)
            .map(|m| m.offset())
            .min();
        match gap_step(o, first) {
            GapStep::None => {}
            GapStep::SeekBack => gaps.push((topic.clone(), *partition, o.next)),
            GapStep::Lost { to } => tracing::error!(
                event = "offsets_lost",
                topic,
                partition,
                from = o.next,
                to,
                "the broker no longer has these messages (claims among them stay accepted in `claims`)"
            ),
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
    Ok(gaps)
}

/// What a batch's first offset for a partition means against the stored offset.
#[derive(Debug, PartialEq, Eq)]
enum GapStep {
    /// Contiguous (or below: already applied, skipped).
    None,
    /// Ahead of the stored offset for the first time: a lost or reset group
    /// offset; re-read from the stored offset.
    SeekBack,
    /// Still ahead after seeking back: the broker no longer has the messages
    /// up to `to` (retention, a recreated topic). Go on from `to`.
    Lost { to: i64 },
}

/// Decides the gap step and keeps `sought` current: it is set by a seek and
/// cleared once the partition reads contiguously again, so a later gap is
/// sought back again rather than taken for lost.
fn gap_step(o: &mut Owned, first: Option<i64>) -> GapStep {
    match first {
        Some(f) if f > o.next && !o.sought => {
            o.sought = true;
            GapStep::SeekBack
        }
        Some(f) if f > o.next => {
            o.sought = false;
            GapStep::Lost { to: f }
        }
        Some(_) => {
            o.sought = false;
            GapStep::None
        }
        None => GapStep::None,
    }
}

/// The messages not applied yet (at or above the stored offset, not in a gap being re-read).
fn fresh<'a>(owned: &Owners, batch: &'a [OwnedMessage], gaps: &[Gap]) -> Vec<&'a OwnedMessage> {
    let in_gap = |m: &OwnedMessage| gaps.iter().any(|(t, p, _)| m.topic() == t && m.partition() == *p);
    batch
        .iter()
        .filter(|m| !in_gap(m) && m.offset() >= owned[&tp(m)].next)
        .collect()
}

fn next_offsets(fresh: &[&OwnedMessage]) -> HashMap<Tp, i64> {
    let mut next: HashMap<Tp, i64> = HashMap::new();
    for m in fresh {
        let e = next.entry(tp(m)).or_default();
        *e = (*e).max(m.offset() + 1);
    }
    next
}

fn commits(next: &HashMap<Tp, i64>, owned: &Owners) -> Vec<OffsetCommit> {
    next.iter()
        .map(|(tp, n)| OffsetCommit {
            topic: tp.0.clone(),
            partition: tp.1,
            next: *n,
            epoch: owned[tp].epoch,
        })
        .collect()
}

/// Locks (in id order) and loads the batch's accounts and the stored first
/// answers of its idempotency keys.
async fn load(tx: &mut Tx<'_>, inputs: &[Input], now: DateTime<Utc>) -> anyhow::Result<State> {
    let mut ids: Vec<String> = inputs.iter().filter_map(account_of).collect();
    ids.sort();
    ids.dedup();
    let window_start = now - chrono::Duration::seconds(CORRECTION_WINDOW_SECS + 86_400);
    let accounts = store::load_accounts(tx, &ids, store::history_needed(inputs, window_start), true).await?;
    let keys: Vec<ScopedKey> = inputs
        .iter()
        .filter_map(|i| match &i.message {
            claims::Message::Claim(c) => Some(scoped(c)),
            _ => None,
        })
        .collect();
    let mut states = HashMap::new();
    for (key, stored) in store::load_keys(tx, &keys).await? {
        let state = key_state(&stored).map_err(|e| anyhow::anyhow!("key {key:?}: {e}"))?;
        states.insert(key, state);
    }
    Ok(State { accounts, keys: states })
}

fn scoped(c: &Claim) -> ScopedKey {
    ScopedKey {
        client: c.client.clone(),
        key: c.key.as_str().to_owned(),
    }
}

/// A key's stored row as the decision takes it.
fn key_state(stored: &store::StoredKey) -> anyhow::Result<KeyState> {
    Ok(match stored.state.as_str() {
        "pending" | "queued" => KeyState::Held {
            claim_id: stored.claim_id,
        },
        "released" => KeyState::Released {
            claim_id: stored.claim_id,
        },
        _ => {
            let (Some(status), Some(body)) = (stored.status, stored.body.as_ref()) else {
                anyhow::bail!("an answered key without its answer");
            };
            let answer =
                api::claim_from_stored(status, body).ok_or_else(|| anyhow::anyhow!("stored answer unreadable"))?;
            KeyState::Answered(KeyRecord {
                account_id: AccountId::try_from(stored.account_id.as_str())?,
                claim_id: stored.claim_id,
                answer,
            })
        }
    })
}

fn account_of(input: &Input) -> Option<String> {
    match &input.message {
        claims::Message::Snapshot { parsed: Ok(s), .. } => Some(s.account_id.to_string()),
        claims::Message::Snapshot { .. } => None,
        claims::Message::Claim(c) => Some(c.account_id.to_string()),
        claims::Message::Settle { account_id, .. } => Some(account_id.clone()),
    }
}

/// The rows a batch's effects become (claim answers in their stored HTTP form).
struct Rows {
    claims: Vec<ClaimResult>,
    payouts: Vec<PayoutRow>,
    dead_letters: Vec<NewDeadLetter>,
}

impl Rows {
    /// `offsets[i]` is the offset `inputs[i]` was consumed at.
    fn of(fx: &Effects, inputs: &[Input], offsets: &[i64]) -> Rows {
        let payouts = fx
            .payouts
            .iter()
            .map(|p| PayoutRow {
                payout_id: Uuid::parse_str(&p.payout_id).expect("the worker's payout ids are UUIDs"),
                claim_id: p.claim_id,
                idempotency_key: p.idempotency_key.clone(),
                account_id: p.account_id.to_string(),
                tax_profile: p.tax_profile,
                partition: p.partition,
                payout: p.payout.clone(),
                body: p.body.clone(),
            })
            .collect();
        Rows {
            claims: fx.claims.iter().map(claim_row).collect(),
            payouts,
            dead_letters: dead_letter_rows(fx, inputs, offsets),
        }
    }

    /// The answers for the waiting API processes: each claim's stored body as it is.
    fn answered(&self) -> Vec<ClaimDone<'_>> {
        self.claims
            .iter()
            .map(|r| ClaimDone {
                claim_id: r.claim_id,
                answer: Some(DoneAnswer {
                    status: r.status as u16,
                    replayed: r.replay_of.is_some(),
                    body: &r.body,
                }),
            })
            .collect()
    }

    /// The outbox event of each payout: a claim's payout is its 201 body,
    /// serialised once already; a settlement's is serialised here.
    fn outbox_items(&self) -> Vec<OutboxItem> {
        let bodies: HashMap<Uuid, &str> = self
            .claims
            .iter()
            .filter_map(|r| Some((r.payout_id?, r.body.as_str())))
            .collect();
        self.payouts
            .iter()
            .map(|p| OutboxItem {
                payout_id: p.payout_id,
                key: p.account_id.clone(),
                payload: bodies
                    .get(&p.payout_id)
                    .map_or_else(|| p.body.to_value().to_string(), |b| (*b).to_owned()),
            })
            .collect()
    }
}

/// The batch's dead letters as outbox rows, each with the partition and
/// offset it was consumed at: the snapshots `decide` refused, in order.
fn dead_letter_rows(fx: &Effects, inputs: &[Input], offsets: &[i64]) -> Vec<NewDeadLetter> {
    let sources: Vec<(i32, i64)> = inputs
        .iter()
        .zip(offsets)
        .filter(|(i, _)| matches!(i.message, claims::Message::Snapshot { .. }))
        .zip(&fx.snapshots)
        .filter(|(_, outcome)| outcome.is_err())
        .map(|((i, offset), _)| (i.partition, *offset))
        .collect();
    // One refused snapshot per dead letter; should that ever change, keep the letters without a source.
    let paired = sources.len() == fx.dead_letters.len();
    fx.dead_letters
        .iter()
        .enumerate()
        .map(|(n, d)| NewDeadLetter {
            key: d.key.clone(),
            payload: d.raw.clone(),
            error: d.code.to_owned(),
            detail: d.detail.clone(),
            source: paired.then(|| sources[n]),
        })
        .collect()
}

fn claim_row(d: &ClaimDecision) -> ClaimResult {
    let account = d.claim.account_id.as_str();
    ClaimResult {
        claim_id: d.claim.claim_id,
        key: scoped(&d.claim),
        account_id: account.to_owned(),
        accepted_at: d.claim.accepted_at,
        business_date: business_date(d.claim.accepted_at),
        status: api::claim_status(&d.answer) as i16,
        body: api::claim_body(&d.answer, account).to_string(),
        payout_id: d.payout_id.as_deref().map(|id| Uuid::parse_str(id).expect("a UUID")),
        replay_of: d.replay_of,
        key_write: d.key_write,
    }
}

/// One transaction: state, points, answers and keys, payouts and outbox, dead
/// letters, the fenced offsets, and the NOTIFY the API hears at commit.
async fn write(
    tx: &mut Tx<'_>,
    state: &State,
    fx: &Effects,
    rows: &Rows,
    now: DateTime<Utc>,
    commits: &[OffsetCommit],
) -> Result<(), BatchError> {
    let touched: Vec<&Account> = fx.touched.iter().filter_map(|id| state.accounts.get(id)).collect();
    store::store_accounts(tx, &touched).await?;
    store::insert_points(tx, &fx.new_points, now).await?;
    store::store_claim_results(tx, &rows.claims).await?;
    store::insert_payouts(tx, &rows.payouts, now).await?;
    store::insert_dead_letters(tx, &rows.dead_letters).await?;
    let fenced = store::commit_offsets(tx, commits).await?;
    if !fenced.is_empty() {
        return Err(BatchError::Fenced(fenced));
    }
    store::notify_claims_done(tx, &rows.answered()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{gap_step, GapStep, Owned};

    #[test]
    fn a_gap_is_sought_back_once_then_taken_as_lost_and_a_later_gap_is_sought_again() {
        let mut o = Owned {
            epoch: 1,
            next: 10,
            sought: false,
        };
        assert_eq!(gap_step(&mut o, Some(10)), GapStep::None);
        assert_eq!(gap_step(&mut o, None), GapStep::None);
        // A reset group offset: the consumer is ahead of what was applied.
        assert_eq!(gap_step(&mut o, Some(15)), GapStep::SeekBack);
        // After the seek the broker still starts at 15: 10..15 are gone.
        assert_eq!(gap_step(&mut o, Some(15)), GapStep::Lost { to: 15 });
        // The batch from 15 is applied; reading is contiguous again.
        o.next = 20;
        assert_eq!(gap_step(&mut o, Some(20)), GapStep::None);
        // A later gap is sought back again, not taken for lost.
        assert_eq!(gap_step(&mut o, Some(30)), GapStep::SeekBack);
        assert_eq!(gap_step(&mut o, Some(20)), GapStep::None);
        assert!(!o.sought);
    }
}
