//! "Why this amount": a payout taken apart by the engine that paid it.
//!
//! [`explain`] lists the intervals [`accrual::accrue`] sums (the same walk,
//! [`accrual::walk`]), then retraces [`Account`](super::Account)'s payout
//! arithmetic: carry and adjustment brought in, the floor to `gross`, the
//! remainder carried or dropped, and each tax line ([`tax::tax_lines`], the
//! lines `withhold` adds up). Nothing here decides money; it only shows how the
//! decided amounts arise, and [`Explanation::reproduces`] says whether they do.

use super::accrual::{intervals, Accrued, Interval, Point};
use super::plan::{FractionRule, Plans};
use super::tax::{tax_lines, TaxLine, Withholding};
use super::types::{Currency, EpochSecs, Minor, TaxProfile};

/// What a payout says it paid, as the engine returned it or the store kept it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paid {
    pub period_start: EpochSecs,
    pub period_end: EpochSecs,
    pub accrued: Accrued,
    /// Carry and corrections brought in (`carry_in + adjustment_in`).
    pub carried_in: Accrued,
    pub carried_out: Accrued,
    pub dropped: Accrued,
    pub gross: Minor,
    pub tax: Withholding,
    pub net: Minor,
}

/// How a payout's amounts arise, step by step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation<'a> {
    pub intervals: Vec<Interval<'a>>,
    /// Σ intervals: the interest of `[period_start, period_end)`.
    pub accrued: Accrued,
    /// The remainder the previous payout carried out (`carry` plans).
    pub carry_in: Accrued,
    /// Corrections of already-paid interest (late snapshots), brought into this payout.
    pub adjustment_in: Accrued,
    /// `accrued + carry_in + adjustment_in`.
    pub total: Accrued,
    /// `total` rounded down (floor) to the minor unit.
    pub gross: Minor,
    /// `total − gross`, in `[0, 1)` minor unit: carried out or dropped by the fraction rule.
    pub remainder: Accrued,
    pub fraction: FractionRule,
    pub carried_out: Accrued,
    pub dropped: Accrued,
    pub taxes: Vec<TaxLine>,
    /// `gross − Σ taxes`.
    pub net: Minor,
}

/// Explains `paid`, the payout of `[period_start, period_end)`, on `points`
/// (the timeline as it was when the payout was decided: the point in force
/// at `period_start` and every later one), under the fraction rule of the
/// plan in force at the end, with `carry_in` from the previous payout: the
/// rest of what it brought in is the adjustment (corrections).
pub fn explain<'a>(
    plans: &'a Plans,
    points: &'a [Point],
    paid: &Paid,
    carry_in: Accrued,
    fraction: FractionRule,
    profile: TaxProfile,
    currency: Currency,
) -> Explanation<'a> {
    let adjustment_in = paid.carried_in - carry_in;
    let intervals = intervals(plans, points, paid.period_start, paid.period_end);
    let accrued: Accrued = intervals.iter().map(|i| i.units).sum();
    let total = accrued + carry_in + adjustment_in;
    // Floor: toward negative infinity (a negative total pays nothing).
    let gross = Minor(total.floor_minor().max(0));
    let remainder = total - Accrued::from_minor(gross);
    let taxes = tax_lines(gross, profile, currency);
    let net = Minor(gross.0 - taxes.iter().map(|t| t.amount.0).sum::<i64>());
    let (carried_out, dropped) = match fraction {
        FractionRule::Carry => (remainder, Accrued::ZERO),
        FractionRule::Drop => (Accrued::ZERO, remainder),
    };
    Explanation {
        intervals,
        accrued,
        carry_in,
        adjustment_in,
        total,
        gross,
        remainder,
        fraction,
        carried_out,
        dropped,
        taxes,
        net,
    }
}

impl Explanation<'_> {
    /// Every amount the payout states, reproduced exactly; else the first
    /// that is not (what it brought in, `carried_in`, is an input).
    pub fn reproduces(&self, paid: &Paid) -> Result<(), &'static str> {
        let tax = |k| {
            self.taxes
                .iter()
                .filter(|t| t.kind == k)
                .map(|t| t.amount.0)
                .sum::<i64>()
        };
        use super::tax::TaxKind::*;
        let checks = [
            (self.accrued == paid.accrued, "accrued"),
            (self.gross == paid.gross, "gross"),
            (self.carried_out == paid.carried_out, "carried_out"),
            (self.dropped == paid.dropped, "dropped"),
            (tax(Income) == paid.tax.income_tax.0, "income_tax"),
            (tax(Local) == paid.tax.local_tax.0, "local_tax"),
            (tax(Rural) == paid.tax.rural_tax.0, "rural_tax"),
            (self.net == paid.net, "net"),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, what)) => Err(what),
            None => Ok(()),
        }
    }
}

impl Paid {
    /// What an engine payout states.
    pub fn of(p: &super::Payout) -> Paid {
        Paid {
            period_start: p.period_start.timestamp(),
            period_end: p.period_end.timestamp(),
            accrued: p.accrued,
            carried_in: p.carried_in,
            carried_out: p.carried_out,
            dropped: p.dropped,
            gross: p.gross,
            tax: p.tax,
            net: p.net,
        }
    }
}

#[cfg(test)]
#[path = "explain_tests.rs"]
mod tests;
