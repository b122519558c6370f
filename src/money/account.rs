//! One account's interest state and the three things that change it:
//! a snapshot, a claim, a settlement. Pure: callers load and store the state.

use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};

mod checkpoint;
#[cfg(test)]
mod checkpoint_tests;
#[cfg(test)]
mod period_tests;

pub use checkpoint::{Checkpoint, PlanUse};

use super::accrual::{point_at, rate_per_second, Accrued, Point};
use super::plan::{AccrualStyle, FractionRule, Plans, ScheduleJson};
use super::snapshot::Snapshot;
use super::tax::{withhold, Withholding};
use super::types::{
    business_date, kst_midnight, kst_midnight_utc, AccountId, Currency, EpochSecs, Minor, ParseError, TaxProfile,
};

/// Default correction window: older corrections go to the DLQ.
pub const CORRECTION_WINDOW_SECS: i64 = 7 * 86_400;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    id: AccountId,
    currency: Currency,
    tax_profile: TaxProfile,
    /// Sorted by seq; `as_of` never decreases with seq. A window of the full
    /// history: the point in force at `points_from` and every later one.
    points: Vec<Point>,
    /// The second from which `points` is complete (`EpochSecs::MIN`: all of it).
    points_from: EpochSecs,
    /// Exact accrual of `[paid_through, checkpoint.at)`: the points before it are not needed.
    checkpoint: Checkpoint,
    /// The highest seq ever applied.
    last_seq: u64,
    /// Interest before this second is paid (or, before any payout, does not exist).
    paid_through: EpochSecs,
    paid_any: bool,
    /// Sub-unit remainder carried from the last payout (`carry` plans).
    carry: Accrued,
    /// Corrections of already-paid interest waiting for the next payout.
    pending_adjustment: Accrued,
    claim_day: Option<NaiveDate>,
    claims_on_day: u32,
    last_claim_at: Option<DateTime<Utc>>,
    settled_through: Option<NaiveDate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// In order (`late = false`) or inserted behind later ones (`late = true`);
    /// `adjustment` is the change to already-paid interest it caused.
    Applied {
        late: bool,
        adjustment: Accrued,
    },
    Duplicate,
}

impl SnapshotOutcome {
    /// The `balance_snapshots_total{outcome}` label.
    pub fn label(&self) -> &'static str {
        match self {
            SnapshotOutcome::Applied { late: false, .. } => "applied",
            SnapshotOutcome::Applied { late: true, .. } => "late",
            SnapshotOutcome::Duplicate => "duplicate",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayoutKind {
    Claim,
    Auto,
}

impl PayoutKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            PayoutKind::Claim => "claim",
            PayoutKind::Auto => "auto",
        }
    }
}

/// A payout decided by the engine. Amounts in minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payout {
    pub kind: PayoutKind,
    pub business_date: NaiveDate,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub gross: Minor,
    pub tax: Withholding,
    /// The whole-unit part (truncated toward zero) of the corrections included in `gross`.
    pub adjustment: Minor,
    pub net: Minor,
    pub currency: Currency,
    pub plan: String,
    /// The schedule entries applied during the period, per plan.
    pub rates: Vec<AppliedRates>,
    pub accepted_at: DateTime<Utc>,
    /// Exact decomposition: `gross + carried_out + dropped = accrued + carried_in`.
    pub accrued: Accrued,
    pub carried_in: Accrued,
    pub carried_out: Accrued,
    pub dropped: Accrued,
}

/// One schedule entry of a plan in force during a payout's period (in the
/// plan file's form: decimal strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedRates {
    pub plan: String,
    pub entry: ScheduleJson,
}

/// Why a claim was not paid.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Refusal {
    AlreadyClaimedToday { next_claim_at: DateTime<Utc> },
    NothingToClaim,
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::AlreadyClaimedToday { .. } => "already_claimed_today",
            Refusal::NothingToClaim => "nothing_to_claim",
        }
    }
}

/// The live view for the app's ticking counter.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub balance: Minor,
    pub accrued: Accrued,
    pub claimable: Minor,
    pub rate_per_second: rust_decimal::Decimal,
    pub as_of: DateTime<Utc>,
    pub last_claim_at: Option<DateTime<Utc>>,
    pub next_claim_at: DateTime<Utc>,
}

fn reject(code: &'static str, detail: impl Into<String>) -> ParseError {
    ParseError::new(code, detail)
}

fn utc(s: EpochSecs) -> DateTime<Utc> {
    Utc.timestamp_opt(s, 0).single().expect("in range")
}

/// An account's stored state, as the store reads it back: the input of
/// [`Account::restore`], which checks what the engine relies on.
#[derive(Debug, Clone)]
pub struct StoredAccount {
    pub id: AccountId,
    pub currency: Currency,
    pub tax_profile: TaxProfile,
    /// The point in force at `points_from` and every later one.
    pub points: Vec<Point>,
    pub points_from: EpochSecs,
    pub checkpoint: Checkpoint,
    pub last_seq: u64,
    pub paid_through: EpochSecs,
    pub paid_any: bool,
    pub carry: Accrued,
    pub pending_adjustment: Accrued,
    pub claim_day: Option<NaiveDate>,
    pub claims_on_day: u32,
    pub last_claim_at: Option<DateTime<Utc>>,
    pub settled_through: Option<NaiveDate>,
}

impl Account {
    /// An account read back from the store. Refuses a state the engine could
    /// not have produced: no point, points out of seq or `as_of` order, a seq
    /// above `last_seq`, a checkpoint before `paid_through` or out of order.
    pub fn restore(s: StoredAccount) -> Result<Account, ParseError> {
        let ordered = s
            .points
            .windows(2)
            .all(|w| w[0].seq < w[1].seq && w[0].as_of <= w[1].as_of);
        let within = s.points.last().is_some_and(|p| p.seq <= s.last_seq);
        if !ordered || !within {
            return Err(reject(
                "invalid_account_state",
                format!("account {}: points empty or out of order", s.id),
            ));
        }
        if !s.checkpoint.is_consistent(s.paid_through, s.last_seq) {
            return Err(reject(
                "invalid_account_state",
                format!("account {}: checkpoint inconsistent: {:?}", s.id, s.checkpoint),
            ));
        }
        Ok(Account {
            id: s.id,
            currency: s.currency,
            tax_profile: s.tax_profile,
            points: s.points,
            points_from: s.points_from,
            checkpoint: s.checkpoint,
            last_seq: s.last_seq,
            paid_through: s.paid_through,
            paid_any: s.paid_any,
            carry: s.carry,
            pending_adjustment: s.pending_adjustment,
            claim_day: s.claim_day,
            claims_on_day: s.claims_on_day,
            last_claim_at: s.last_claim_at,
            settled_through: s.settled_through,
        })
    }

    pub fn id(&self) -> &AccountId {
        &self.id
    }
    pub fn currency(&self) -> Currency {
        self.currency
    }
    pub fn tax_profile(&self) -> TaxProfile {
        self.tax_profile
    }
    /// Sorted by seq; a window of the history (see the field).
    pub fn points(&self) -> &[Point] {
        &self.points
    }
    pub fn points_from(&self) -> EpochSecs {
        self.points_from
    }
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
    pub fn paid_through(&self) -> EpochSecs {
        self.paid_through
    }
    pub fn paid_any(&self) -> bool {
        self.paid_any
    }
    pub fn carry(&self) -> Accrued {
        self.carry
    }
    pub fn pending_adjustment(&self) -> Accrued {
        self.pending_adjustment
    }
    pub fn claim_day(&self) -> Option<NaiveDate> {
        self.claim_day
    }
    pub fn claims_on_day(&self) -> u32 {
        self.claims_on_day
    }
    pub fn last_claim_at(&self) -> Option<DateTime<Utc>> {
        self.last_claim_at
    }
    pub fn settled_through(&self) -> Option<NaiveDate> {
        self.settled_through
    }

    /// The plans its checkpoint and points name, each once, in first-use order.
    pub fn plan_ids(&self) -> impl Iterator<Item = &str> {
        let named = self.checkpoint.plans.iter().map(|u| u.plan.as_str());
        let all: Vec<&str> = named.chain(self.points.iter().map(|p| p.plan.as_str())).collect();
        let once: Vec<&str> = all
            .iter()
            .enumerate()
            .filter(|(i, p)| !all[..*i].contains(p))
            .map(|(_, p)| *p)
            .collect();
        once.into_iter()
    }

    /// The point with this seq, if it is in the loaded window.
    pub fn point(&self, seq: u64) -> Option<&Point> {
        self.points.iter().find(|p| p.seq == seq)
    }

    /// Core banking credits `amount` (simulation only): the balance in force
    /// at `at` grows by it, as a new point after every known one. Paid
    /// interest is not corrected (the credit follows its payout).
    pub fn credit(&mut self, plans: &Plans, at: DateTime<Utc>, amount: Minor) {
        let current = point_at(&self.points, at.timestamp())
            .expect("a paid account has a point")
            .clone();
        let as_of = at.max(self.points.last().expect("point").as_of);
        self.last_seq += 1;
        let point = Point {
            seq: self.last_seq,
            as_of,
            balance: Minor(current.balance.0 + amount.0),
            plan: current.plan,
        };
        let adjustment = self.insert_point(plans, self.points.len(), point, EpochSecs::MAX, false);
        debug_assert_eq!(adjustment, Accrued::ZERO);
        self.keep_checkpoint_current(plans);
    }
}

impl Account {
    /// A new account from its first snapshot.
    pub fn open(snap: &Snapshot, plans: &Plans) -> Account {
        let plan = snap
            .plan
            .clone()
            .or_else(|| plans.default_id().map(str::to_owned))
            .expect("decoder checked the plan");
        let point = Point {
            seq: snap.seq,
            as_of: snap.as_of,
            balance: snap.balance,
            plan,
        };
        Account {
            id: snap.account_id.clone(),
            currency: snap.currency,
            tax_profile: snap.tax_profile.unwrap_or_default(),
            paid_through: point.at(),
            checkpoint: Checkpoint::at_paid_through(point.at()),
            points: vec![point],
            points_from: EpochSecs::MIN,
            last_seq: snap.seq,
            paid_any: false,
            carry: Accrued::ZERO,
            pending_adjustment: Accrued::ZERO,
            claim_day: None,
            claims_on_day: 0,
            last_claim_at: None,
            settled_through: None,
        }
    }

    fn style(&self, plans: &Plans) -> AccrualStyle {
        let p = self.points.last().expect("an account has a point");
        plans.get(&p.plan).expect("validated").accrual
    }

    /// Applies a snapshot at wall-clock `now`. Duplicates (same seq, same
    /// content) are ignored; a late one (lower seq) takes its place in the
    /// timeline; any change to already-paid interest becomes a pending
    /// adjustment for the next payout.
    pub fn apply_snapshot(
        &mut self,
        snap: &Snapshot,
        plans: &Plans,
        now: DateTime<Utc>,
    ) -> Result<SnapshotOutcome, ParseError> {
        let idx = self.points.partition_point(|p| p.seq < snap.seq);
        let plan = match self.placement(snap, plans, idx)? {
            Placement::Duplicate => return Ok(SnapshotOutcome::Duplicate),
            Placement::New { plan } => plan,
        };
        let next = self.points.get(idx).filter(|p| p.seq > snap.seq);
        let late = snap.seq < self.last_seq;
        let at = snap.as_of.timestamp();
        let touches_paid = self.paid_any && at < self.paid_through;
        if (late || touches_paid) && snap.as_of < now - chrono::Duration::seconds(CORRECTION_WINDOW_SECS) {
            return Err(reject(
                "correction_too_old",
                "correction older than the correction window",
            ));
        }
        let point = Point {
            seq: snap.seq,
            as_of: snap.as_of,
            balance: snap.balance,
            plan,
        };
        let next_at = next.map(|n| n.at()).unwrap_or(EpochSecs::MAX);
        let adjustment = self.insert_point(plans, idx, point, next_at, touches_paid);
        self.last_seq = self.last_seq.max(snap.seq);
        self.pending_adjustment = self.pending_adjustment + adjustment;
        if let Some(tp) = snap.tax_profile {
            if !late {
                self.tax_profile = tp;
            }
        }
        self.keep_checkpoint_current(plans);
        Ok(SnapshotOutcome::Applied { late, adjustment })
    }

    /// Inserts `point` before the one starting at `next_at`; returns the
    /// change to already-paid interest (`touches_paid`) and books the change
    /// to the checkpoint's accrual. Only `[point.at, next_at)` accrues
    /// differently, so both are differences over it.
    fn insert_point(
        &mut self,
        plans: &Plans,
        idx: usize,
        point: Point,
        next_at: EpochSecs,
        touches_paid: bool,
    ) -> Accrued {
        let at = point.at();
        // Nothing paid yet: accrual simply starts at the first snapshot.
        let ps = if self.paid_any {
            self.paid_through
        } else {
            self.paid_through.min(at)
        };
        let paid = (at, next_at.min(self.paid_through));
        let cp = (at.max(ps), next_at.min(self.checkpoint.at));
        let paid_before = if touches_paid {
            self.accrue_span(plans, paid.0, paid.1)
        } else {
            Accrued::ZERO
        };
        let cp_before = self.accrue_span(plans, cp.0, cp.1);
        self.points.insert(idx, point);
        let adjustment = if touches_paid {
            self.accrue_span(plans, paid.0, paid.1) - paid_before
        } else {
            Accrued::ZERO
        };
        let cp_delta = self.accrue_span(plans, cp.0, cp.1) - cp_before;
        self.paid_through = ps;
        self.checkpoint_after_insert(idx, cp_delta);
        adjustment
    }

    /// Where a snapshot goes in the timeline, and with which plan: refuses a
    /// currency change, a seq applied with other content, an `as_of` out of
    /// seq order and a switch of accrual style.
    fn placement(&self, snap: &Snapshot, plans: &Plans, idx: usize) -> Result<Placement, ParseError> {
        debug_assert_eq!(snap.account_id, self.id);
        if snap.currency != self.currency {
            return Err(reject(
                "currency_mismatch",
                format!("account is in {}", self.currency.code()),
            ));
        }
        let prev = idx.checked_sub(1).map(|i| &self.points[i]);
        let next = self.points.get(idx).filter(|p| p.seq > snap.seq);
        if let Some(same) = self.points.get(idx).filter(|p| p.seq == snap.seq) {
            let same_plan = snap.plan.as_ref().is_none_or(|p| *p == same.plan);
            let identical = same.as_of == snap.as_of && same.balance == snap.balance && same_plan;
            return if identical {
                Ok(Placement::Duplicate)
            } else {
                Err(reject(
                    "seq_conflict",
                    format!("seq {} was already applied with other content", snap.seq),
                ))
            };
        }
        let plan = snap
            .plan
            .clone()
            .or_else(|| prev.or(next).map(|p| p.plan.clone()))
            .expect("an account has a point");
        if prev.is_some_and(|p| p.as_of > snap.as_of) || next.is_some_and(|n| n.as_of < snap.as_of) {
            return Err(reject(
                "as_of_backwards",
                "as_of runs backwards against the account's sequence",
            ));
        }
        if plans.get(&plan).expect("decoder checked").accrual != self.style(plans) {
            return Err(reject(
                "plan_style_mismatch",
                "a plan change may not switch the accrual style",
            ));
        }
        Ok(Placement::New { plan })
    }

    /// Exact unpaid interest at second `t`, including carry and corrections.
    pub fn accrued_at(&self, plans: &Plans, t: EpochSecs) -> Accrued {
        self.unpaid_through(plans, t) + self.carry + self.pending_adjustment
    }

    pub fn view(&self, plans: &Plans, at: DateTime<Utc>, claims_per_day: u32) -> View {
        let t = at.timestamp();
        let accrued = self.accrued_at(plans, t);
        let latest = self.points.last().expect("an account has a point");
        let today = business_date(at);
        let used_up = self.claim_day == Some(today) && self.claims_on_day >= claims_per_day;
        View {
            balance: point_at(&self.points, t).unwrap_or(latest).balance,
            accrued,
            claimable: Minor(accrued.floor_minor().max(0)),
            rate_per_second: rate_per_second(plans, &self.points, t),
            as_of: latest.as_of,
            last_claim_at: self.last_claim_at,
            next_claim_at: if used_up { next_midnight(today) } else { at },
        }
    }

    /// A customer's claim accepted at `at`: pays everything unpaid through `at`
    /// (floored to the second) — for `daily_close` plans through 00:00 KST of
    /// its business date, the last close it pays (SPEC §2 "Payout period") —
    /// at most `claims_per_day` times per KST date.
    pub fn claim(&mut self, plans: &Plans, at: DateTime<Utc>, claims_per_day: u32) -> Result<Payout, Refusal> {
        let day = business_date(at);
        if self.claim_day == Some(day) && self.claims_on_day >= claims_per_day {
            return Err(Refusal::AlreadyClaimedToday {
                next_claim_at: next_midnight(day),
            });
        }
        let payout = self
            .pay(plans, PayoutKind::Claim, self.claim_through(plans, at), day, at)
            .ok_or(Refusal::NothingToClaim)?;
        if self.claim_day == Some(day) {
            self.claims_on_day += 1;
        } else if self.claim_day.is_none_or(|d| d < day) {
            self.claim_day = Some(day);
            self.claims_on_day = 1;
        }
        self.last_claim_at = Some(self.last_claim_at.map_or(at, |l| l.max(at)));
        Ok(payout)
    }

    /// The second a claim at `at` pays through. Daily-close accrual earns
    /// only at day closes, so paying through the claim's instant or through
    /// the midnight before it is the same money; the period says the latter.
    /// The store loads a claim's history from that midnight
    /// (`store::history_needed`) so the checkpoint can be recomputed from it.
    pub fn claim_through(&self, plans: &Plans, at: DateTime<Utc>) -> EpochSecs {
        match self.style(plans) {
            AccrualStyle::Continuous => at.timestamp(),
            AccrualStyle::DailyClose => kst_midnight(business_date(at)),
        }
    }

    /// The automatic payout for `date`: everything unpaid through 00:00 KST of
    /// the next day, with that next day as business date. Idempotent per date:
    /// `None` when already settled or when less than one unit is due.
    pub fn settle(&mut self, plans: &Plans, date: NaiveDate, run_at: DateTime<Utc>) -> Option<Payout> {
        if self.settled_through.is_some_and(|d| d >= date) {
            return None;
        }
        let next_day = date.checked_add_days(Days::new(1)).expect("date in range");
        let payout = self.pay(plans, PayoutKind::Auto, kst_midnight(next_day), next_day, run_at);
        self.settled_through = Some(date);
        payout
    }

    /// Pays everything unpaid up to second `through`. The single place where
    /// money leaves the accrued balance.
    fn pay(
        &mut self,
        plans: &Plans,
        kind: PayoutKind,
        through: EpochSecs,
        day: NaiveDate,
        accepted_at: DateTime<Utc>,
    ) -> Option<Payout> {
        let start = self.paid_through;
        let end = through.max(start);
        let accrued = self.unpaid_through(plans, end);
        let carried_in = self.carry + self.pending_adjustment;
        let total = accrued + carried_in;
        let gross = Minor(total.floor_minor());
        if gross.0 < 1 {
            return None;
        }
        let tax = withhold(gross, self.tax_profile, self.currency);
        let net = Minor(gross.0 - tax.total().0);
        let latest =
            point_at(&self.points, end.saturating_sub(1)).unwrap_or_else(|| self.points.last().expect("point"));
        let plan = plans.get(&latest.plan).expect("validated");
        let remainder = total - Accrued::from_minor(gross);
        debug_assert!(remainder >= Accrued::ZERO && remainder < Accrued::from_minor(Minor(1)));
        let payout = Payout {
            kind,
            business_date: day,
            period_start: utc(start),
            period_end: utc(end),
            gross,
            tax,
            adjustment: Minor(self.pending_adjustment.trunc_minor()),
            net,
            currency: self.currency,
            plan: plan.id.clone(),
            rates: self.rates_applied(plans, start, end),
            accepted_at,
            accrued,
            carried_in,
            carried_out: if plan.fraction == FractionRule::Carry {
                remainder
            } else {
                Accrued::ZERO
            },
            dropped: if plan.fraction == FractionRule::Drop {
                remainder
            } else {
                Accrued::ZERO
            },
        };
        debug_assert_eq!(
            Accrued::from_minor(payout.gross) + payout.carried_out + payout.dropped,
            payout.accrued + payout.carried_in
        );
        self.carry = payout.carried_out;
        self.pending_adjustment = Accrued::ZERO;
        self.paid_through = end;
        self.paid_any = true;
        self.checkpoint_after_pay(plans, end);
        Some(payout)
    }

    /// The per-tier rates in force during `[start, end)`, per plan used
    /// (`start` = paid_through; the plans come from the checkpoint and the points after it).
    fn rates_applied(&self, plans: &Plans, start: EpochSecs, end: EpochSecs) -> Vec<AppliedRates> {
        debug_assert_eq!(start, self.paid_through);
        let mut out = Vec::new();
        for id in self.plans_used(end) {
            let plan = plans.get(&id).expect("validated");
            for e in plan.entries_in(start, end) {
                out.push(AppliedRates {
                    plan: plan.id.clone(),
                    entry: e.to_json(plan.currency),
                });
            }
        }
        out
    }
}

/// Where a snapshot lands: on an identical applied one, or as a new point with this plan.
enum Placement {
    Duplicate,
    New { plan: String },
}

fn next_midnight(day: NaiveDate) -> DateTime<Utc> {
    kst_midnight_utc(day.checked_add_days(Days::new(1)).expect("date in range"))
}
