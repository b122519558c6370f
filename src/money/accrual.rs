//! Exact accrual over a balance timeline.
//!
//! Representation: an [`Accrued`] amount is an `i128` count of
//! `1 / ACCRUAL_DENOMINATOR` of a minor unit. The denominator is chosen so that
//! one second of interest on any integer balance at any rate with at most six
//! decimal places of a percent, under any of the three day counts, is an
//! integer number of units:
//!
//! ```text
//! interest per second = balance × rate_micro_percent / (100 × 10^6 × Y × 86 400)
//! ACCRUAL_DENOMINATOR = 100 × 10^6 × 86 400 × lcm(360, 365, 366)
//!                     = 100 × 10^6 × 86 400 × 1 603 080 ≈ 1.39 × 10^19
//! units per second    = Σ tiers (part × rate_micro_percent) × (1 603 080 / Y)
//! ```
//!
//! Sums of integers cannot drift, so accrual is exactly additive. Bound:
//! 10^15 won at 100% for 100 years is 10^15 × 10^8 × 4 453 × 3.2 × 10^9 ≈
//! 1.4 × 10^36 units, below `i128::MAX` ≈ 1.7 × 10^38.

use super::plan::{AccrualStyle, DayCount, Plan, Plans, ScheduleEntry};
use super::types::{kst_date_of_secs, kst_midnight, kst_new_year, kst_year_of_secs, EpochSecs, Minor, SECS_PER_DAY};
use chrono::{DateTime, Datelike, Days, Utc};
use rust_decimal::Decimal;

/// lcm(360, 365, 366): every year length divides it.
pub const YEAR_DAYS_LCM: i128 = 1_603_080;
/// Units per minor unit of money.
pub const ACCRUAL_DENOMINATOR: i128 = 100 * 1_000_000 * 86_400 * YEAR_DAYS_LCM;
/// Decimal places shown when an exact amount is displayed (truncated toward zero).
pub const DISPLAY_DECIMALS: u32 = 10;

/// An exact amount of interest: `units / ACCRUAL_DENOMINATOR` minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Accrued(pub i128);

impl Accrued {
    pub const ZERO: Accrued = Accrued(0);

    pub fn from_minor(m: Minor) -> Self {
        Accrued(m.0 as i128 * ACCRUAL_DENOMINATOR)
    }

    /// Whole minor units, rounded toward negative infinity (floor).
    pub fn floor_minor(&self) -> i64 {
        self.0.div_euclid(ACCRUAL_DENOMINATOR) as i64
    }

    /// Whole minor units, rounded toward zero (truncation).
    pub fn trunc_minor(&self) -> i64 {
        (self.0 / ACCRUAL_DENOMINATOR) as i64
    }

    /// A decimal in major units with `DISPLAY_DECIMALS` extra places beyond the
    /// minor unit, truncated toward zero. For display only: the exact value is
    /// the unit count.
    pub fn to_display(&self, minor_digits: u32) -> Decimal {
        let whole = self.0 / ACCRUAL_DENOMINATOR;
        let rest = self.0 % ACCRUAL_DENOMINATOR;
        let scale = 10_i128.pow(DISPLAY_DECIMALS);
        // |rest| < 1.4e19, × 1e10 < 1.4e29: fits i128. Division truncates toward zero.
        let frac = rest * scale / ACCRUAL_DENOMINATOR;
        Decimal::from_i128_with_scale(whole * scale + frac, DISPLAY_DECIMALS + minor_digits).normalize()
    }
}

impl std::ops::Add for Accrued {
    type Output = Accrued;
    fn add(self, o: Accrued) -> Accrued {
        Accrued(self.0.checked_add(o.0).expect("accrual overflow"))
    }
}

impl std::ops::Sub for Accrued {
    type Output = Accrued;
    fn sub(self, o: Accrued) -> Accrued {
        Accrued(self.0.checked_sub(o.0).expect("accrual overflow"))
    }
}

impl std::iter::Sum for Accrued {
    fn sum<I: Iterator<Item = Accrued>>(iter: I) -> Accrued {
        iter.fold(Accrued::ZERO, |a, b| a + b)
    }
}

/// One balance snapshot in an account's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    pub seq: u64,
    pub as_of: DateTime<Utc>,
    pub balance: Minor,
    pub plan: String,
}

impl Point {
    /// The second from which this balance is in force (instants floor to the second).
    pub fn at(&self) -> EpochSecs {
        self.as_of.timestamp()
    }
}

/// What one [`Interval`] counts: whole seconds (continuous) or day closes (daily_close).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Seconds(i64),
    Days(i64),
}

/// One stretch of constant accrual: one balance under one schedule entry and
/// one year length. `units = weighted × (lcm / year_days) × seconds` (a day
/// close counts 86,400 seconds). [`accrue`] is the sum of its intervals, and
/// the payout explanation lists the same intervals: both come from [`walk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval<'a> {
    /// `[from, to)` for continuous seconds; for a day close, the KST day
    /// ending at `to` (00:00 KST of the next day), `from = to − 1 day`.
    pub from: EpochSecs,
    pub to: EpochSecs,
    pub point: &'a Point,
    pub plan: &'a Plan,
    pub entry: &'a ScheduleEntry,
    pub year_days: i64,
    pub span: Span,
    pub units: Accrued,
}

/// Units of one second of interest on `weighted` (Σ part × micro-percent).
fn units_per_second(weighted: i128, year_days: i64) -> i128 {
    // Exact: YEAR_DAYS_LCM is a multiple of every year length.
    weighted * (YEAR_DAYS_LCM / year_days as i128)
}

/// The intervals of a constant balance (`point`) under `plan` for the seconds
/// `[from, to)`, split exactly at rate changes and (ACT/ACT) at KST new years.
fn walk_constant<'a>(
    plan: &'a Plan,
    point: &'a Point,
    from: EpochSecs,
    to: EpochSecs,
    visit: &mut impl FnMut(Interval<'a>),
) {
    if to <= from || point.balance.0 == 0 {
        return;
    }
    let mut cuts: Vec<EpochSecs> = plan.changes_between(from, to).collect();
    if plan.day_count == DayCount::ActAct {
        let (y0, y1) = (kst_year_of_secs(from), kst_year_of_secs(to - 1));
        cuts.extend((y0 + 1..=y1).map(kst_new_year));
    }
    cuts.push(to);
    cuts.sort_unstable();
    let mut start = from;
    for end in cuts {
        if end <= start {
            continue;
        }
        if let Some(entry) = plan.entry_at(start) {
            let year_days = plan.day_count.year_days_at(start);
            let per_sec = units_per_second(entry.weighted_balance(point.balance), year_days);
            visit(Interval {
                from: start,
                to: end,
                point,
                plan,
                entry,
                year_days,
                span: Span::Seconds(end - start),
                units: Accrued(per_sec * (end - start) as i128),
            });
        }
        start = end;
    }
}

/// Interest on a constant `balance` under `plan` for the seconds `[from, to)`.
pub fn accrue_constant(plan: &Plan, balance: Minor, from: EpochSecs, to: EpochSecs) -> Accrued {
    let point = Point {
        seq: 0,
        as_of: DateTime::<Utc>::UNIX_EPOCH,
        balance,
        plan: String::new(),
    };
    let mut total = Accrued::ZERO;
    walk_constant(plan, &point, from, to, &mut |i| total = total + i.units);
    total
}

/// One day's interest under a `daily_close` plan for the KST day whose close is
/// `close` (00:00 KST of the next day): the balance and rate in force during the
/// day's last second.
fn walk_day<'a>(plan: &'a Plan, point: &'a Point, close: EpochSecs, visit: &mut impl FnMut(Interval<'a>)) {
    let last_second = close - 1;
    if let Some(entry) = plan.entry_at(last_second) {
        let year_days = plan.day_count.year_days_at(last_second);
        let per_sec = units_per_second(entry.weighted_balance(point.balance), year_days);
        visit(Interval {
            from: close - SECS_PER_DAY,
            to: close,
            point,
            plan,
            entry,
            year_days,
            span: Span::Days(1),
            units: Accrued(per_sec * SECS_PER_DAY as i128),
        });
    }
}

/// The timeline point in force during second `s` (the highest seq whose `at` ≤ s).
pub fn point_at(points: &[Point], s: EpochSecs) -> Option<&Point> {
    // `points` are sorted by seq with non-decreasing `at`.
    let idx = points.partition_point(|p| p.at() <= s);
    idx.checked_sub(1).map(|i| &points[i])
}

/// Exact interest accrued on `points` over the interval from `from` to `to`.
///
/// Continuous plans accrue per whole second in `[from, to)`. Daily-close plans
/// earn one day for each KST day close `C` (00:00 KST) in `(from, to]`, on the
/// point in force during second `C - 1`. Both conventions split additively at
/// any point: accrue(a, b) + accrue(b, c) = accrue(a, c).
pub fn accrue(plans: &Plans, points: &[Point], from: EpochSecs, to: EpochSecs) -> Accrued {
    let mut total = Accrued::ZERO;
    walk(plans, points, from, to, &mut |i| total = total + i.units);
    total
}

/// The intervals [`accrue`] sums, in time order, each with a non-zero rate entry.
pub fn intervals<'a>(plans: &'a Plans, points: &'a [Point], from: EpochSecs, to: EpochSecs) -> Vec<Interval<'a>> {
    let mut out = Vec::new();
    walk(plans, points, from, to, &mut |i| out.push(i));
    out
}

/// Visits every interval of accrual on `points` between `from` and `to` (see [`accrue`]).
pub fn walk<'a>(
    plans: &'a Plans,
    points: &'a [Point],
    from: EpochSecs,
    to: EpochSecs,
    visit: &mut impl FnMut(Interval<'a>),
) {
    if to <= from || points.is_empty() {
        return;
    }
    let plan_of = |p: &Point| -> &'a Plan { plans.get(&p.plan).expect("timeline plans are validated on entry") };
    let mut any_daily = false;
    // Continuous segments.
    for (i, p) in points.iter().enumerate() {
        let plan = plan_of(p);
        if plan.accrual != AccrualStyle::Continuous {
            any_daily = true;
            continue;
        }
        let seg_end = points.get(i + 1).map(|n| n.at()).unwrap_or(EpochSecs::MAX);
        walk_constant(plan, p, p.at().max(from), seg_end.min(to), visit);
    }
    if !any_daily {
        return;
    }
    // Daily closes in (from, to].
    let mut day = kst_date_of_secs(from);
    loop {
        let close = kst_midnight(day.checked_add_days(Days::new(1)).expect("date in range"));
        if close > to {
            break;
        }
        if close > from {
            if let Some(p) = point_at(points, close - 1) {
                let plan = plan_of(p);
                if plan.accrual == AccrualStyle::DailyClose && p.balance.0 != 0 {
                    walk_day(plan, p, close, visit);
                }
            }
        }
        day = day.checked_add_days(Days::new(1)).expect("date in range");
        debug_assert!(day.year() < 10_000);
    }
}

/// Interest per second at second `s` as a decimal of major units, for the
/// app's ticking counter (display only; truncated toward zero).
pub fn rate_per_second(plans: &Plans, points: &[Point], s: EpochSecs) -> Decimal {
    let Some(p) = point_at(points, s) else {
        return Decimal::ZERO;
    };
    let plan = plans.get(&p.plan).expect("validated");
    let per_sec = accrue_constant(plan, p.balance, s, s + 1);
    per_sec.to_display(plan.currency.minor_digits())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::plan::PlanFile;
    use crate::money::types::parse_instant;

    fn plans(json: &str) -> Plans {
        Plans::new(PlanFile::parse(json).unwrap(), None).unwrap()
    }

    fn pt(seq: u64, as_of: &str, balance: i64, plan: &str) -> Point {
        Point {
            seq,
            as_of: parse_instant(as_of).unwrap(),
            balance: Minor(balance),
            plan: plan.into(),
        }
    }

    fn secs(t: &str) -> EpochSecs {
        parse_instant(t).unwrap().timestamp()
    }

    const FLAT: &str = r#"{"plans":[{"id":"p","schedule":[{"effective_from":"2020-01-01T00:00:00+09:00","tiers":[{"rate_percent":"2.0"}]}]}]}"#;

    #[test]
    fn one_day_at_two_percent() {
        let plans = plans(FLAT);
        let pts = [pt(1, "2026-03-01T00:00:00+09:00", 50_000_000, "p")];
        let a = accrue(
            &plans,
            &pts,
            secs("2026-03-01T00:00:00+09:00"),
            secs("2026-03-02T00:00:00+09:00"),
        );
        // 50,000,000 × 2% / 365 = 2739.7260...
        assert_eq!(a.floor_minor(), 2739);
        assert_eq!(a.to_display(0).to_string(), "2739.7260273972");
    }

    #[test]
    fn accrual_is_additive_at_any_split() {
        let plans = plans(FLAT);
        let pts = [
            pt(1, "2026-03-01T00:00:00+09:00", 1_234_567, "p"),
            pt(2, "2026-03-01T10:00:00+09:00", 7_654_321, "p"),
        ];
        let (a, c) = (secs("2026-03-01T00:00:00+09:00"), secs("2026-03-03T00:00:00+09:00"));
        let whole = accrue(&plans, &pts, a, c);
        for b in [a + 1, a + 3600 * 10 - 1, a + 3600 * 10, a + 3600 * 10 + 1, c - 1] {
            assert_eq!(accrue(&plans, &pts, a, b) + accrue(&plans, &pts, b, c), whole);
        }
    }

    #[test]
    fn nothing_accrues_before_the_first_snapshot() {
        let plans = plans(FLAT);
        let pts = [pt(1, "2026-03-01T12:00:00+09:00", 1_000_000, "p")];
        let a = accrue(
            &plans,
            &pts,
            secs("2026-03-01T00:00:00+09:00"),
            secs("2026-03-01T12:00:00+09:00"),
        );
        assert_eq!(a, Accrued::ZERO);
    }

    #[test]
    fn display_truncates_toward_zero() {
        assert_eq!(Accrued(-1).to_display(0).to_string(), "0");
        assert_eq!(Accrued(-1).floor_minor(), -1);
        assert_eq!(Accrued(-1).trunc_minor(), 0);
        assert_eq!(Accrued(ACCRUAL_DENOMINATOR * 3 / 2).to_display(2).to_string(), "0.015");
    }
}
