//! A claim's typed answer: what the worker decides, stores, replays and
//! sends to the waiting API process (NOTIFY), and what `simulate` prints.
//! The API alone turns it into an HTTP status and body.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::{AccountId, Refusal};
use crate::wire::PayoutJson;

/// The answer to one claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum ClaimAnswer {
    /// Paid: the payout as the customer is shown it (kept whole for replays).
    Paid(Box<PayoutJson>),
    /// The idempotency key was first used for another account.
    KeyReused,
    /// No snapshot was ever received for the account.
    UnknownAccount,
    /// The money engine refused the claim.
    Refused(Refusal),
    /// Not applied, never paid: the API withdrew the claim (it answered 503
    /// after an ambiguous delivery), or a later request took its key over.
    Withdrawn,
    /// Not applied, never paid: applying it failed the same way every time
    /// (a poison message, moved aside). The key keeps no answer.
    Failed,
}

/// The first answer given for an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub account_id: AccountId,
    pub claim_id: Uuid,
    pub answer: ClaimAnswer,
}

/// An idempotency key in the scope of the client that sent it: keys of two
/// clients never meet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopedKey {
    pub client: String,
    pub key: String,
}

/// What the store holds for a key when a claim with it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// The API reserved the key for this claim (queuing it or answered 202).
    Held { claim_id: Uuid },
    /// The key holds no answer: its claim `claim_id` was withdrawn, or that
    /// claim's answer was not kept (it depended on data not arrived yet). A
    /// claim with another id takes the key as if it were new.
    Released { claim_id: Uuid },
    /// The key's first answer, replayed to every later claim with it.
    Answered(KeyRecord),
}

/// What a decided claim does to its key's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyWrite {
    /// The claim's answer becomes the key's answer.
    Answer,
    /// The answer is not kept: a new request with the key is a new claim
    /// (404 `unknown_account`: the account's first snapshot may be on its way).
    Release,
}

/// A finished claim as the API receives it: its answer, and whether that
/// answer replays an earlier claim's (`Idempotent-Replayed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answered {
    pub claim_id: Uuid,
    pub replayed: bool,
    pub answer: ClaimAnswer,
}
