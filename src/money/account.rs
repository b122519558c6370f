//! One account's interest state and the three things that change it:
//! a snapshot, a claim, a settlement. Pure: callers load and store the state.

use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};
use serde_json::json;

use super::accrual::{accrue, point_at, rate_per_second, Accrued, Point};
use super::plan::{AccrualStyle, FractionRule, Plans};
use super::snapshot::Snapshot;
use super::tax::{withhold, Withholding};
use super::types::{
    business_date, format_instant, kst_midnight, kst_midnight_utc, AccountId, Currency, EpochSecs, Minor, ParseError,
    TaxProfile,
};

/// Default correction window: older corrections go to the DLQ.
pub const CORRECTION_WINDOW_SECS: i64 = 7 * 86_400;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub currency: Currency,
    pub tax_profile: TaxProfile,
    /// Sorted by seq; `as_of` never decreases with seq. May be a window of the
    /// full history: it covers everything from `paid_through` on, and the
    /// correction window.
    pub points: Vec<Point>,
    /// The highest seq ever applied.
    pub last_seq: u64,
    /// Interest before this second is paid (or, before any payout, does not exist).
    pub paid_through: EpochSecs,
    pub paid_any: bool,
    /// Sub-unit remainder carried from the last payout (`carry` plans).
    pub carry: Accrued,
    /// Corrections of already-paid interest waiting for the next payout.
    pub pending_adjustment: Accrued,
    pub claim_day: Option<NaiveDate>,
    pub claims_on_day: u32,
    pub last_claim_at: Option<DateTime<Utc>>,
    pub settled_through: Option<NaiveDate>,
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
    pub rates: serde_json::Value,
    pub accepted_at: DateTime<Utc>,
    /// Exact decomposition: `gross + carried_out + dropped = accrued + carried_in`.
    pub accrued: Accrued,
    pub carried_in: Accrued,
    pub carried_out: Accrued,
    pub dropped: Accrued,
}

impl Payout {
    /// The payout as the API, the outbox and `simulate` show it (SPEC §5).
    /// Amounts are decimal strings.
    pub fn to_json(&self, payout_id: &str, account_id: &AccountId) -> serde_json::Value {
        let c = self.currency;
        let amt = |m: Minor| c.to_decimal(m).to_string();
        json!({
            "payout_id": payout_id,
            "account_id": account_id,
            "kind": self.kind.as_str(),
            "business_date": self.business_date.to_string(),
            "period_start": format_instant(self.period_start),
            "period_end": format_instant(self.period_end),
            "gross": amt(self.gross),
            "income_tax": amt(self.tax.income_tax),
            "local_tax": amt(self.tax.local_tax),
            "rural_tax": amt(self.tax.rural_tax),
            "adjustment": amt(self.adjustment),
            "net": amt(self.net),
            "currency": c.code(),
            "plan": self.plan,
            "rates": self.rates,
            "accepted_at": format_instant(self.accepted_at),
        })
    }
}

/// Why a claim was not paid.
#[derive(Debug, Clone, PartialEq, Eq)]
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

    pub fn status(&self) -> u16 {
        match self {
            Refusal::AlreadyClaimedToday { .. } => 409,
            Refusal::NothingToClaim => 422,
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

impl View {
    pub fn to_json(&self, account_id: &AccountId, currency: Currency) -> serde_json::Value {
        json!({
            "account_id": account_id,
            "balance": currency.to_decimal(self.balance).to_string(),
            "accrued": self.accrued.to_display(currency.minor_digits()).to_string(),
            "claimable": currency.to_decimal(self.claimable).to_string(),
            "rate_per_second": self.rate_per_second.to_string(),
            "currency": currency.code(),
            "as_of": format_instant(self.as_of),
            "last_claim_at": self.last_claim_at.map(format_instant),
            "next_claim_at": format_instant(self.next_claim_at),
        })
    }
}

fn reject(code: &'static str, detail: impl Into<String>) -> ParseError {
    ParseError::new(code, detail)
}

fn utc(s: EpochSecs) -> DateTime<Utc> {
    Utc.timestamp_opt(s, 0).single().expect("in range")
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
            points: vec![point],
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
        debug_assert_eq!(snap.account_id, self.id);
        if snap.currency != self.currency {
            return Err(reject(
                "currency_mismatch",
                format!("account is in {}", self.currency.code()),
            ));
        }
        let idx = self.points.partition_point(|p| p.seq < snap.seq);
        let prev = idx.checked_sub(1).map(|i| &self.points[i]);
        let next = self.points.get(idx).filter(|p| p.seq > snap.seq);
        if let Some(same) = self.points.get(idx).filter(|p| p.seq == snap.seq) {
            let same_plan = snap.plan.as_ref().is_none_or(|p| *p == same.plan);
            let identical = same.as_of == snap.as_of && same.balance == snap.balance && same_plan;
            return if identical {
                Ok(SnapshotOutcome::Duplicate)
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
        let mut adjustment = Accrued::ZERO;
        if touches_paid {
            let hi = next_at.min(self.paid_through);
            let before = accrue(plans, &self.points, at, hi);
            let mut after_points = self.points.clone();
            after_points.insert(idx, point.clone());
            adjustment = accrue(plans, &after_points, at, hi) - before;
        }
        self.points.insert(idx, point);
        self.last_seq = self.last_seq.max(snap.seq);
        self.pending_adjustment = self.pending_adjustment + adjustment;
        if !self.paid_any {
            // Nothing paid yet: accrual simply starts at the first snapshot.
            self.paid_through = self.points[0].at();
        }
        if let Some(tp) = snap.tax_profile {
            if !late {
                self.tax_profile = tp;
            }
        }
        Ok(SnapshotOutcome::Applied { late, adjustment })
    }

    /// Exact unpaid interest at second `t`, including carry and corrections.
    pub fn accrued_at(&self, plans: &Plans, t: EpochSecs) -> Accrued {
        accrue(plans, &self.points, self.paid_through, t.max(self.paid_through)) + self.carry + self.pending_adjustment
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
    /// (floored to the second), at most `claims_per_day` times per KST date.
    pub fn claim(&mut self, plans: &Plans, at: DateTime<Utc>, claims_per_day: u32) -> Result<Payout, Refusal> {
        let day = business_date(at);
        if self.claim_day == Some(day) && self.claims_on_day >= claims_per_day {
            return Err(Refusal::AlreadyClaimedToday {
                next_claim_at: next_midnight(day),
            });
        }
        let payout = self
            .pay(plans, PayoutKind::Claim, at.timestamp(), day, at)
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
        let accrued = accrue(plans, &self.points, start, end);
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
        Some(payout)
    }

    /// The per-tier rates in force during `[start, end)`, per plan used.
    fn rates_applied(&self, plans: &Plans, start: EpochSecs, end: EpochSecs) -> serde_json::Value {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for (i, p) in self.points.iter().enumerate() {
            let seg_end = self.points.get(i + 1).map(|n| n.at()).unwrap_or(EpochSecs::MAX);
            let overlaps = p.at() < end.max(start + 1) && seg_end > start;
            if !overlaps || seen.contains(&p.plan) {
                continue;
            }
            seen.push(p.plan.clone());
            let plan = plans.get(&p.plan).expect("validated");
            for e in plan.entries_in(start, end) {
                let j = e.to_json(plan.currency);
                out.push(json!({"plan": plan.id, "effective_from": j.effective_from, "tiers": j.tiers}));
            }
        }
        serde_json::Value::Array(out)
    }

    /// Drops points no longer needed: those superseded before both
    /// `paid_through` and `keep_from` (the start of the correction window).
    pub fn prune(&mut self, keep_from: EpochSecs) {
        let cut = keep_from.min(self.paid_through);
        let first_needed = self.points.partition_point(|p| p.at() <= cut).saturating_sub(1);
        self.points.drain(..first_needed);
    }
}

fn next_midnight(day: NaiveDate) -> DateTime<Utc> {
    kst_midnight_utc(day.checked_add_days(Days::new(1)).expect("date in range"))
}
