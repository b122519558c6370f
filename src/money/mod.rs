//! The money rules of SPEC §2, with no I/O: no sqlx, axum, rdkafka or tokio
//! here, and no floating point. Everything else pays out what this computes.
//!
//! - [`types`]: newtypes parsed at the edge (account id, amounts, rates, dates).
//! - [`plan`]: rate plans with marginal tiers on an effective-dated schedule.
//! - [`accrual`]: exact accrual over a balance timeline.
//! - [`tax`]: Korean withholding tax.
//! - [`snapshot`]: decoding a balance snapshot, with stable reason codes.
//! - [`account`]: one account's state and the snapshot / claim / settle transitions.

pub mod account;
pub mod accrual;
pub mod explain;
pub mod plan;
pub mod snapshot;
pub mod tax;
pub mod types;

pub use account::{Account, AppliedRates, Payout, PayoutKind, Refusal, SnapshotOutcome, StoredAccount, View};
pub use accrual::{Accrued, Point, ACCRUAL_DENOMINATOR};
pub use plan::{MissingPlan, Plan, PlanFile, Plans};
pub use snapshot::{decode_snapshot, Snapshot};
pub use types::{AccountId, Currency, IdempotencyKey, Minor, ParseError, RatePercent, TaxProfile};
