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
}

/// The first answer given for an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub account_id: AccountId,
    pub claim_id: Uuid,
    pub answer: ClaimAnswer,
}

/// A finished claim as the API receives it: its answer, and whether that
/// answer replays an earlier claim's (`Idempotent-Replayed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answered {
    pub claim_id: Uuid,
    pub replayed: bool,
    pub answer: ClaimAnswer,
}
