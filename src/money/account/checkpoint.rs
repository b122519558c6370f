//! The accrual checkpoint: what an account's timeline before an instant C
//! contributes to its unpaid interest, so the engine can forget those points.
//!
//! With `ps` = paid_through and every instant written in whole seconds:
//!
//! ```text
//! at       = C ≥ ps
//! accrued  = accrue(full timeline, ps, C)            (exact units; 0 when C = ps)
//! plans    = K: per plan, the first point (seq order) with at < C whose segment
//!            [at, next.at) ends after ps — the plans a payout of [ps, end) lists
//!            for the part of the timeline before C
//! ```
//!
//! The point in force at C is not copied here: it is the stored point the
//! loader returns as "the last one before the cutoff". A payout of `[ps, end)`
//! is then exact from `accrued` and the points from C on when end ≥ C
//! (`accrued + accrue(C, end)`), and from the points from `end` on when
//! end < C (`accrued − accrue(end, C)`). Accrual is exactly additive (integers),
//! so either split is bit-identical to accruing the whole timeline from `ps`.
//!
//! The loaded points (`points_from`) always cover every instant the engine is
//! asked about: the store loads each account from min(C, the instants of the
//! batch's messages for it), see `store::history_needed`.

use super::{Account, Point};
use crate::money::accrual::{accrue, Accrued};
use crate::money::plan::Plans;
use crate::money::types::EpochSecs;

/// One plan used before the checkpoint, with its first point (seq order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanUse {
    pub plan: String,
    pub first_seq: u64,
    pub first_at: EpochSecs,
}

/// An account's exact accrual up to `at` (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub at: EpochSecs,
    pub accrued: Accrued,
    /// Sorted by `first_seq`, one entry per plan.
    pub plans: Vec<PlanUse>,
}

impl Checkpoint {
    /// The checkpoint of an account nothing has accrued on yet: C = ps.
    pub fn at_paid_through(paid_through: EpochSecs) -> Checkpoint {
        Checkpoint {
            at: paid_through,
            accrued: Accrued::ZERO,
            plans: Vec::new(),
        }
    }

    /// What [`Account::restore`] relies on: C ≥ ps, one entry per plan in
    /// seq order, each first used before C.
    pub fn is_consistent(&self, paid_through: EpochSecs, last_seq: u64) -> bool {
        let ordered = self.plans.windows(2).all(|w| w[0].first_seq < w[1].first_seq);
        let unique = self
            .plans
            .iter()
            .enumerate()
            .all(|(i, u)| !self.plans[..i].iter().any(|v| v.plan == u.plan));
        let before = self
            .plans
            .iter()
            .all(|u| u.first_at < self.at && u.first_seq <= last_seq);
        self.at >= paid_through && ordered && unique && before
    }
}

/// The end of the segment of `points[i]`: the next point's second, or never.
fn seg_end(points: &[Point], i: usize) -> EpochSecs {
    points.get(i + 1).map(|n| n.at()).unwrap_or(EpochSecs::MAX)
}

/// The points that matter for `[a, b)`: from the one in force at `a` to the
/// last one starting before `b`. Accruing on them equals accruing on all.
fn span(points: &[Point], a: EpochSecs, b: EpochSecs) -> &[Point] {
    let lo = points.partition_point(|p| p.at() <= a).saturating_sub(1);
    let hi = points.partition_point(|p| p.at() < b).max(lo);
    &points[lo..hi]
}

impl Account {
    /// Whether the loaded points hold the one in force at `s` and every later one.
    fn covers(&self, s: EpochSecs) -> bool {
        s >= self.points_from || self.points.last().is_some_and(|p| s >= p.at())
    }

    /// `accrue(full timeline, a, b)` on the loaded window.
    pub(super) fn accrue_span(&self, plans: &Plans, a: EpochSecs, b: EpochSecs) -> Accrued {
        if b <= a {
            return Accrued::ZERO;
        }
        assert!(
            self.covers(a),
            "account {}: second {a} is before the loaded timeline",
            self.id
        );
        accrue(plans, span(&self.points, a, b), a, b)
    }

    /// `accrue(full timeline, paid_through, t)`, zero for t ≤ paid_through.
    pub(super) fn unpaid_through(&self, plans: &Plans, t: EpochSecs) -> Accrued {
        let c = &self.checkpoint;
        if t <= self.paid_through {
            Accrued::ZERO
        } else if t >= c.at {
            c.accrued + self.accrue_span(plans, c.at, t)
        } else {
            c.accrued - self.accrue_span(plans, t, c.at)
        }
    }

    /// The plans in force during a payout of `[paid_through, end)`, each once,
    /// in the order of their first point: the points whose segment meets
    /// `[paid_through, max(end, paid_through + 1))`.
    pub(super) fn plans_used(&self, end: EpochSecs) -> Vec<String> {
        let (ps, c) = (self.paid_through, &self.checkpoint);
        let e = end.max(ps + 1);
        if end < c.at {
            // Every such point starts before C: a plan is used iff its first point starts before e.
            return c
                .plans
                .iter()
                .filter(|u| u.first_at < e)
                .map(|u| u.plan.clone())
                .collect();
        }
        let mut out: Vec<String> = c.plans.iter().map(|u| u.plan.clone()).collect();
        let from = self.points.partition_point(|p| p.at() < c.at);
        let to = self.points.partition_point(|p| p.at() < e);
        for i in from..to.max(from) {
            let p = &self.points[i];
            if seg_end(&self.points, i) > ps && !out.contains(&p.plan) {
                out.push(p.plan.clone());
            }
        }
        out
    }

    /// K for `[ps, c)` recomputed from the loaded points (they must cover `ps`).
    fn plan_uses(&self, ps: EpochSecs, c: EpochSecs) -> Vec<PlanUse> {
        assert!(
            self.covers(ps),
            "account {}: second {ps} is before the loaded timeline",
            self.id
        );
        let from = self.points.partition_point(|p| p.at() <= ps).saturating_sub(1);
        let to = self.points.partition_point(|p| p.at() < c);
        let mut out: Vec<PlanUse> = Vec::new();
        for i in from..to.max(from) {
            let p = &self.points[i];
            if seg_end(&self.points, i) > ps && !out.iter().any(|u| u.plan == p.plan) {
                out.push(PlanUse {
                    plan: p.plan.clone(),
                    first_seq: p.seq,
                    first_at: p.at(),
                });
            }
        }
        out
    }

    /// Moves the checkpoint forward to `to` (no-op when `to` ≤ C): the exact
    /// accrual of `[C, to)` joins it, and the plans of the points starting there.
    pub fn advance_checkpoint(&mut self, plans: &Plans, to: EpochSecs) {
        let c = self.checkpoint.at;
        if to <= c {
            return;
        }
        let accrued = self.accrue_span(plans, c, to);
        let from = self.points.partition_point(|p| p.at() < c);
        let upto = self.points.partition_point(|p| p.at() < to);
        for i in from..upto.max(from) {
            let p = &self.points[i];
            let known = self.checkpoint.plans.iter().any(|u| u.plan == p.plan);
            if seg_end(&self.points, i) > self.paid_through && !known {
                self.checkpoint.plans.push(PlanUse {
                    plan: p.plan.clone(),
                    first_seq: p.seq,
                    first_at: p.at(),
                });
            }
        }
        self.checkpoint.accrued = self.checkpoint.accrued + accrued;
        self.checkpoint.at = to;
    }

    /// The checkpoint's policy: after every change it stands at the last
    /// point's second (or later), so the loaded window is O(1) points.
    pub(super) fn keep_checkpoint_current(&mut self, plans: &Plans) {
        let latest = self.points.last().expect("an account has a point").at();
        self.advance_checkpoint(plans, latest);
    }

    /// After a payout through `end`, paid_through moved from `ps_before` to
    /// `end` ≥ it: the checkpoint keeps only `[end, C)` (or restarts at `end`).
    pub(super) fn checkpoint_after_pay(&mut self, plans: &Plans, end: EpochSecs) {
        let c = self.checkpoint.at.max(end);
        self.checkpoint = Checkpoint {
            at: c,
            accrued: self.accrue_span(plans, end, c),
            plans: self.plan_uses(end, c),
        };
    }

    /// After `point` was inserted (at index `idx`) and paid_through became
    /// `ps` (`accrued_delta` = the change of accrual in `[ps, C)`).
    pub(super) fn checkpoint_after_insert(&mut self, idx: usize, accrued_delta: Accrued) {
        let (ps, c) = (self.paid_through, self.checkpoint.at);
        self.checkpoint.accrued = self.checkpoint.accrued + accrued_delta;
        let p = &self.points[idx];
        let at = p.at();
        if at <= ps {
            // The point before it may no longer reach past ps: recompute (the window covers `at`).
            self.checkpoint.plans = self.plan_uses(ps, c);
        } else if at < c {
            // Its predecessor still reaches past ps; only the new point joins K.
            let (plan, seq) = (p.plan.clone(), p.seq);
            let uses = &mut self.checkpoint.plans;
            match uses.iter_mut().find(|u| u.plan == plan) {
                Some(u) if u.first_seq > seq => (u.first_seq, u.first_at) = (seq, at),
                Some(_) => {}
                None => uses.push(PlanUse {
                    plan,
                    first_seq: seq,
                    first_at: at,
                }),
            }
            uses.sort_by_key(|u| u.first_seq);
        }
    }
}
