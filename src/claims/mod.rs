//! The claim decision, without I/O (sans-IO): a batch of decoded messages
//! (snapshots, claims, settlements) and the loaded state in; the typed
//! answer of every claim and the rows to write out. No SQL, Kafka, HTTP or
//! status codes here, and no clock reading or id generation: the caller
//! passes `now` and a payout-id generator, so a batch replays exactly.
//!
//! The worker and `simulate` both call [`decide`]; the rules of an answer
//! (replay, key reused, unknown account, refusals, payouts) live only here
//! and in [`crate::money::Account`].
//!
//! May import: `crate::money`, `crate::wire` (the payout's typed wire form).

pub mod answer;
pub mod decide;

pub use answer::{Answered, ClaimAnswer, KeyRecord, KeyState, KeyWrite, ScopedKey};
pub use decide::{
    decide, Claim, ClaimDecision, Context, DeadLetter, Effects, Input, Message, NewPoint, PaidOut, State,
};

#[cfg(test)]
mod tests;
