//! [`decide`]: applies a batch of messages, in order, to the loaded state.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::answer::{ClaimAnswer, KeyRecord, KeyState, KeyWrite, ScopedKey};
use crate::money::{
    Account, AccountId, Currency, IdempotencyKey, ParseError, Payout, Plans, Point, Snapshot, SnapshotOutcome,
    TaxProfile,
};
use crate::wire::PayoutJson;

/// What the caller loaded: the batch's accounts and the stored state of each
/// idempotency key the batch names (absent: never seen, or expired). `decide`
/// updates both as it goes, so a later message of the batch sees what an
/// earlier one did.
#[derive(Debug, Default)]
pub struct State {
    pub accounts: HashMap<String, Account>,
    pub keys: HashMap<ScopedKey, KeyState>,
}

/// What the rules need besides the state: the plans, the wall clock reading
/// for snapshot corrections, the daily claim limit.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub plans: &'a Plans,
    pub now: DateTime<Utc>,
    pub claims_per_day: u32,
    /// Idempotency keys answered or released before this instant may have
    /// been deleted by `maintain` (their `IDEMPOTENCY_KEY_TTL` ran out). A
    /// claim accepted before it that finds no key row is a stale message
    /// whose row was deleted — every claim that must still be applied holds
    /// a `pending` or `queued` row, which is never deleted — so it is
    /// withdrawn, never paid. `None`: keys never expire (`simulate`).
    pub keys_expired_before: Option<DateTime<Utc>>,
}

/// One decoded message and the partition it came from (payouts are published
/// per claims partition).
#[derive(Debug)]
pub struct Input {
    pub partition: i32,
    pub message: Message,
}

#[derive(Debug)]
pub enum Message {
    /// A balance snapshot; `raw` and `key` are kept for the dead-letter queue.
    Snapshot {
        parsed: Result<Snapshot, ParseError>,
        raw: Vec<u8>,
        key: Option<Vec<u8>>,
    },
    Claim(Claim),
    Settle {
        account_id: String,
        date: NaiveDate,
        run_at: DateTime<Utc>,
    },
}

/// A customer's claim as the API accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub claim_id: Uuid,
    /// The client whose idempotency key this is (the identity behind its token).
    pub client: String,
    pub account_id: AccountId,
    pub key: IdempotencyKey,
    /// The API's one clock reading: it fixes the business date.
    pub accepted_at: DateTime<Utc>,
}

/// A claim and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimDecision {
    pub claim: Claim,
    pub answer: ClaimAnswer,
    /// The claim whose answer this replays.
    pub replay_of: Option<Uuid>,
    /// What to record for the key: its answer, or its release; `None` for a
    /// replay, a key reuse or a withdrawn claim (the key's row stays as it is).
    pub key_write: Option<KeyWrite>,
    /// Set when this claim made a payout (not on a replay).
    pub payout_id: Option<String>,
}

/// A payout made by this batch (a claim's or a settlement's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidOut {
    pub payout_id: String,
    pub claim_id: Option<Uuid>,
    pub idempotency_key: Option<String>,
    pub account_id: AccountId,
    /// The withholding profile the taxes were computed under.
    pub tax_profile: TaxProfile,
    pub partition: i32,
    pub payout: Payout,
    /// What the outbox publishes (and a claim's 201 shows).
    pub body: PayoutJson,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPoint {
    pub account_id: String,
    pub point: Point,
    pub currency: Currency,
}

/// A snapshot refused: to the DLQ, with its reason code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub raw: Vec<u8>,
    pub key: Option<Vec<u8>>,
    pub code: &'static str,
    pub detail: String,
}

/// Everything one batch changes, in message order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Accounts whose state changed (to write from `State::accounts`).
    pub touched: BTreeSet<String>,
    pub new_points: Vec<NewPoint>,
    pub payouts: Vec<PaidOut>,
    pub claims: Vec<ClaimDecision>,
    /// One per snapshot message, in order.
    pub snapshots: Vec<Result<SnapshotOutcome, ParseError>>,
    pub dead_letters: Vec<DeadLetter>,
}

/// Applies `inputs` in order. `payout_id` names each new payout (the worker
/// passes UUIDs v7, `simulate` readable names); it is called once per payout.
pub fn decide(
    state: &mut State,
    inputs: &[Input],
    cx: &Context<'_>,
    payout_id: &mut dyn FnMut(&AccountId) -> String,
) -> Effects {
    let mut fx = Effects::default();
    for input in inputs {
        match &input.message {
            Message::Snapshot { parsed, raw, key } => {
                let outcome = snapshot(state, &mut fx, parsed, cx);
                if let Err(e) = &outcome {
                    fx.dead_letters.push(DeadLetter {
                        raw: raw.clone(),
                        key: key.clone(),
                        code: e.code,
                        detail: e.detail.clone(),
                    });
                }
                fx.snapshots.push(outcome);
            }
            Message::Claim(c) => {
                let decision = claim(state, &mut fx, c, input.partition, cx, payout_id);
                fx.claims.push(decision);
            }
            Message::Settle {
                account_id,
                date,
                run_at,
            } => {
                if let Some(acc) = state.accounts.get_mut(account_id) {
                    if let Some(payout) = acc.settle(cx.plans, *date, *run_at) {
                        let id = payout_id(acc.id());
                        pay(&mut fx, acc, payout, id, None, input.partition);
                    }
                    fx.touched.insert(account_id.clone());
                }
            }
        }
    }
    fx
}

/// A snapshot opens the account or changes its timeline.
fn snapshot(
    state: &mut State,
    fx: &mut Effects,
    parsed: &Result<Snapshot, ParseError>,
    cx: &Context<'_>,
) -> Result<SnapshotOutcome, ParseError> {
    let snap = parsed.as_ref().map_err(Clone::clone)?;
    let id = snap.account_id.to_string();
    let outcome = match state.accounts.get_mut(&id) {
        Some(acc) => acc.apply_snapshot(snap, cx.plans, cx.now)?,
        None => {
            state.accounts.insert(id.clone(), Account::open(snap, cx.plans));
            SnapshotOutcome::Applied {
                late: false,
                adjustment: Default::default(),
            }
        }
    };
    if let SnapshotOutcome::Applied { .. } = outcome {
        let acc = &state.accounts[&id];
        let point = acc.point(snap.seq).expect("just applied").clone();
        fx.new_points.push(NewPoint {
            account_id: id.clone(),
            point,
            currency: acc.currency(),
        });
        fx.touched.insert(id);
    }
    Ok(outcome)
}

/// The answer rules, in order: a key with an answer replays it (same account)
/// or is refused (another account); a claim the key was released from, or
/// whose key is held for another claim, was withdrawn and is not applied; an
/// unknown account is refused (and the key released); otherwise the account
/// pays or refuses, and that answer becomes the key's.
fn claim(
    state: &mut State,
    fx: &mut Effects,
    c: &Claim,
    partition: i32,
    cx: &Context<'_>,
    payout_id: &mut dyn FnMut(&AccountId) -> String,
) -> ClaimDecision {
    let mut decision = ClaimDecision {
        claim: c.clone(),
        answer: ClaimAnswer::Withdrawn,
        replay_of: None,
        key_write: None,
        payout_id: None,
    };
    let scoped = ScopedKey {
        client: c.client.clone(),
        key: c.key.as_str().to_owned(),
    };
    match state.keys.get(&scoped) {
        Some(KeyState::Answered(first)) => {
            decision.answer = if first.account_id == c.account_id {
                decision.replay_of = Some(first.claim_id);
                first.answer.clone()
            } else {
                ClaimAnswer::KeyReused
            };
            return decision;
        }
        Some(KeyState::Held { claim_id }) if *claim_id != c.claim_id => return decision,
        Some(KeyState::Released { claim_id }) if *claim_id == c.claim_id => return decision,
        None if cx.keys_expired_before.is_some_and(|t| c.accepted_at < t) => return decision,
        Some(KeyState::Held { .. } | KeyState::Released { .. }) | None => {}
    }
    decision.answer = match state.accounts.get_mut(c.account_id.as_str()) {
        None => ClaimAnswer::UnknownAccount,
        Some(acc) => match acc.claim(cx.plans, c.accepted_at, cx.claims_per_day) {
            Err(refusal) => ClaimAnswer::Refused(refusal),
            Ok(payout) => {
                let id = payout_id(&c.account_id);
                let key = Some(c.key.as_str().to_owned());
                let body = pay(fx, acc, payout, id.clone(), Some((c.claim_id, key)), partition);
                fx.touched.insert(c.account_id.to_string());
                decision.payout_id = Some(id);
                ClaimAnswer::Paid(Box::new(body))
            }
        },
    };
    let next = if decision.answer == ClaimAnswer::UnknownAccount {
        decision.key_write = Some(KeyWrite::Release);
        KeyState::Released { claim_id: c.claim_id }
    } else {
        decision.key_write = Some(KeyWrite::Answer);
        KeyState::Answered(KeyRecord {
            account_id: c.account_id.clone(),
            claim_id: c.claim_id,
            answer: decision.answer.clone(),
        })
    };
    state.keys.insert(scoped, next);
    decision
}

/// Records a payout; returns its wire body.
fn pay(
    fx: &mut Effects,
    account: &Account,
    payout: Payout,
    payout_id: String,
    claim: Option<(Uuid, Option<String>)>,
    partition: i32,
) -> PayoutJson {
    let body = PayoutJson::new(&payout_id, account.id(), &payout);
    let (claim_id, idempotency_key) = claim.unzip();
    fx.payouts.push(PaidOut {
        payout_id,
        claim_id,
        idempotency_key: idempotency_key.flatten(),
        account_id: account.id().clone(),
        tax_profile: account.tax_profile(),
        partition,
        payout,
        body: body.clone(),
    });
    body
}
