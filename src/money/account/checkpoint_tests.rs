//! The checkpoint is exact: an account reloaded before every message with only
//! the window the store would load (and its checkpoint moved to random places)
//! answers bit-identically to one that keeps its whole timeline, and the
//! latter's payouts and views equal the full recomputation from the first point.

use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};
use proptest::prelude::*;

use super::{Account, AppliedRates, StoredAccount, CORRECTION_WINDOW_SECS};
use crate::money::accrual::{accrue, Point};
use crate::money::plan::{PlanFile, Plans};
use crate::money::snapshot::Snapshot;
use crate::money::types::{kst_date_of_secs, kst_midnight, AccountId, Currency, EpochSecs, Minor};

const T0: i64 = 1_767_193_200; // 2026-01-01T00:00:00+09:00
const DAY: i64 = 86_400;

fn plan_set(style: &str) -> Plans {
    let plan = |id: &str, rates: [&str; 2]| {
        format!(
            r#"{{"id":"{id}","day_count":"ACT/ACT","accrual":"{style}","fraction":"carry","schedule":[
            {{"effective_from":"2025-01-01T00:00:00+09:00","tiers":[{{"up_to":"1000000","rate_percent":"{}"}},{{"rate_percent":"0.123457"}}]}},
            {{"effective_from":"2026-01-04T13:14:15+09:00","tiers":[{{"rate_percent":"{}"}}]}}]}}"#,
            rates[0], rates[1]
        )
    };
    let json = format!(
        r#"{{"plans":[{},{}]}}"#,
        plan("p", ["3.1", "4.44"]),
        plan("q", ["2.0", "1.5"])
    );
    Plans::new(PlanFile::parse(&json).unwrap(), Some("p".into())).unwrap()
}

fn utc(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(s, 0).unwrap()
}

#[derive(Debug, Clone)]
enum Event {
    Snapshot {
        seq: u64,
        as_of: i64,
        balance: i64,
        plan: Option<&'static str>,
    },
    Claim {
        at: i64,
    },
    Settle {
        date: NaiveDate,
    },
    View {
        at: i64,
    },
}

/// A message, the clock when it is processed, and (subject only) a checkpoint move first.
#[derive(Debug, Clone)]
struct Step {
    now: i64,
    event: Event,
    advance_by: Option<i64>,
}

fn snap(seq: u64, as_of: i64, balance: i64, plan: Option<&str>) -> Snapshot {
    Snapshot {
        account_id: AccountId::try_from("acc").unwrap(),
        seq,
        balance: Minor(balance),
        currency: Currency::KRW,
        as_of: Utc
            .timestamp_opt(as_of / 1_000, (as_of % 1_000) as u32 * 1_000_000)
            .unwrap(),
        plan: plan.map(str::to_owned),
        tax_profile: None,
    }
}

/// Seconds, mostly on a coarse grid so that instants coincide (a claim at a
/// snapshot's second, a late snapshot at the checkpoint or at paid_through).
fn secs(max: i64) -> impl Strategy<Value = i64> {
    prop_oneof![3 => (0..max / 3_600).prop_map(|h| h * 3_600), 1 => 0..max]
}

/// Snapshots (as_of in milliseconds, delivered on time or up to 6 days late),
/// claims processed after a lag, settlements, views; in processing order.
fn steps() -> impl Strategy<Value = Vec<Step>> {
    let gap = prop_oneof![3 => secs(2 * DAY).prop_map(|s| s * 1_000), 1 => 0i64..150_000_000];
    let snaps = prop::collection::vec(
        (
            gap,
            0i64..=50_000_000_000,
            prop::option::weighted(0.5, prop::sample::select(vec!["p", "q"])),
            prop::option::weighted(0.4, secs(8 * DAY)),
        ),
        1..10,
    );
    let others = prop::collection::vec(
        (
            0u8..4,
            secs(12 * DAY),
            secs(DAY),
            prop::option::weighted(0.3, secs(3 * DAY)),
        ),
        0..14,
    );
    (snaps, others).prop_map(|(snaps, others)| {
        let mut out = Vec::new();
        let mut as_of = T0 * 1_000;
        for (i, (gap, balance, plan, delay)) in snaps.into_iter().enumerate() {
            as_of += gap;
            let now = as_of.div_euclid(1_000) + delay.unwrap_or(0);
            let event = Event::Snapshot {
                seq: i as u64 + 1,
                as_of,
                balance,
                plan,
            };
            out.push(Step {
                now,
                event,
                advance_by: None,
            });
        }
        for (kind, at, lag, advance_by) in others {
            let at = T0 + at;
            let (event, now) = match kind {
                0 | 1 => (Event::Claim { at }, at + lag),
                2 => {
                    let date = kst_date_of_secs(at);
                    (Event::Settle { date }, kst_midnight(date + Days::new(1)) + lag)
                }
                _ => (Event::View { at }, at + lag),
            };
            out.push(Step { now, event, advance_by });
        }
        out.sort_by_key(|s| s.now);
        out
    })
}

/// The instant the store loads a message's account from (`store::history_needed`).
fn needed(step: &Step) -> i64 {
    match step.event {
        Event::Snapshot { as_of, .. } => as_of.div_euclid(1_000).max(step.now - CORRECTION_WINDOW_SECS - DAY),
        Event::Claim { at } => at.min(kst_midnight(kst_date_of_secs(at))),
        Event::View { at } => at,
        Event::Settle { date } => kst_midnight(date + Days::new(1)),
    }
}

/// What the store reads back: the stored state, the last point before `cutoff`
/// and every point from it on (`store::load_accounts`).
fn reload(acc: &Account, all: &[Point], cutoff: EpochSecs) -> Account {
    let first = all.partition_point(|p| p.at() < cutoff).saturating_sub(1);
    Account::restore(StoredAccount {
        id: acc.id().clone(),
        currency: acc.currency(),
        tax_profile: acc.tax_profile(),
        points: all[first..].to_vec(),
        points_from: cutoff,
        checkpoint: acc.checkpoint().clone(),
        last_seq: acc.last_seq(),
        paid_through: acc.paid_through(),
        paid_any: acc.paid_any(),
        carry: acc.carry(),
        pending_adjustment: acc.pending_adjustment(),
        claim_day: acc.claim_day(),
        claims_on_day: acc.claims_on_day(),
        last_claim_at: acc.last_claim_at(),
        settled_through: acc.settled_through(),
    })
    .unwrap()
}

/// The rates of `[start, end)` as computed before the checkpoint existed: from every point.
fn rates_from_all(plans: &Plans, points: &[Point], start: EpochSecs, end: EpochSecs) -> Vec<AppliedRates> {
    let mut out = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let seg_end = points.get(i + 1).map(|n| n.at()).unwrap_or(EpochSecs::MAX);
        if p.at() >= end.max(start + 1) || seg_end <= start || seen.contains(&p.plan.as_str()) {
            continue;
        }
        seen.push(&p.plan);
        let plan = plans.get(&p.plan).unwrap();
        for e in plan.entries_in(start, end) {
            out.push(AppliedRates {
                plan: plan.id.clone(),
                entry: e.to_json(plan.currency),
            });
        }
    }
    out
}

/// Applies one message; its outcome as text (every outcome type is compared whole).
fn apply(acc: &mut Account, plans: &Plans, step: &Step) -> String {
    let now = utc(step.now);
    match step.event {
        Event::Snapshot {
            seq,
            as_of,
            balance,
            plan,
        } => {
            format!("{:?}", acc.apply_snapshot(&snap(seq, as_of, balance, plan), plans, now))
        }
        Event::Claim { at } => format!("{:?}", acc.claim(plans, utc(at), 1)),
        Event::Settle { date } => format!("{:?}", acc.settle(plans, date, now)),
        Event::View { at } => format!("{:?}", acc.view(plans, utc(at), 1)),
    }
}

/// The reference keeps every point: its payouts and views must be the full recomputation.
fn check_full(acc: &mut Account, plans: &Plans, step: &Step) -> Result<String, TestCaseError> {
    let before = acc.clone();
    let pts = before.points();
    let out = apply(acc, plans, step);
    let payout = match step.event {
        Event::Claim { at } => before.clone().claim(plans, utc(at), 1).ok(),
        Event::Settle { date } => before.clone().settle(plans, date, utc(step.now)),
        Event::View { at } => {
            let t = at.max(before.paid_through());
            let whole = accrue(plans, pts, before.paid_through(), t) + before.carry() + before.pending_adjustment();
            prop_assert_eq!(acc.view(plans, utc(at), 1).accrued, whole);
            None
        }
        Event::Snapshot { .. } => None,
    };
    if let Some(p) = payout {
        let (s, e) = (p.period_start.timestamp(), p.period_end.timestamp());
        prop_assert_eq!(p.accrued, accrue(plans, pts, s, e));
        prop_assert_eq!(p.rates, rates_from_all(plans, pts, s, e));
    }
    Ok(out)
}

fn run(plans: &Plans, steps: &[Step]) -> Result<(), TestCaseError> {
    let Some(open_at) = steps.iter().position(|s| matches!(s.event, Event::Snapshot { .. })) else {
        return Ok(());
    };
    let Event::Snapshot {
        seq,
        as_of,
        balance,
        plan,
    } = steps[open_at].event
    else {
        unreachable!()
    };
    let mut full = Account::open(&snap(seq, as_of, balance, plan), plans);
    let mut windowed = full.clone();
    for step in &steps[open_at + 1..] {
        if let Some(by) = step.advance_by {
            let to = windowed.checkpoint().at + by;
            windowed.advance_checkpoint(plans, to);
        }
        let cutoff = windowed.checkpoint().at.min(needed(step));
        let mut subject = reload(&windowed, full.points(), cutoff);
        let expected = check_full(&mut full, plans, step)?;
        prop_assert_eq!(apply(&mut subject, plans, step), expected, "step {:?}", step);
        prop_assert_eq!(subject.paid_through(), full.paid_through());
        prop_assert_eq!(subject.pending_adjustment(), full.pending_adjustment());
        windowed = subject;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn a_windowed_account_with_a_checkpoint_answers_like_the_full_timeline(steps in steps()) {
        run(&plan_set("continuous"), &steps)?;
    }

    #[test]
    fn the_same_holds_for_daily_close_plans(steps in steps()) {
        run(&plan_set("daily_close"), &steps)?;
    }
}

/// A late snapshot before the checkpoint, inside the correction window, is
/// corrected exactly: the unpaid part goes into the checkpoint, the paid
/// part into the adjustment.
#[test]
fn a_late_snapshot_before_the_checkpoint_is_corrected_exactly() {
    let plans = plan_set("continuous");
    let mut full = Account::open(&snap(1, T0 * 1_000, 10_000_000, None), &plans);
    let points = [
        (2, T0 + DAY, 15_000_000),
        (4, T0 + 3 * DAY, 30_000_000),
        (5, T0 + 4 * DAY, 40_000_000),
    ];
    for (seq, at, bal) in points {
        full.apply_snapshot(&snap(seq, at * 1_000, bal, None), &plans, utc(at))
            .unwrap();
    }
    full.claim(&plans, utc(T0 + 2 * DAY + 7), 1).unwrap();
    assert_eq!(
        full.checkpoint().at,
        T0 + 4 * DAY,
        "the checkpoint stands at the last point"
    );
    // seq 3 at day 2 - 1h arrives at day 5: before the payout and before C.
    let late = Step {
        now: T0 + 5 * DAY,
        event: Event::Snapshot {
            seq: 3,
            as_of: (T0 + 2 * DAY - 3600) * 1_000,
            balance: 20_000_000,
            plan: Some("q"),
        },
        advance_by: None,
    };
    let all = full.points().to_vec();
    let mut windowed = reload(&full, &all, needed(&late).min(full.checkpoint().at));
    assert!(windowed.points().len() < all.len());
    let expected = apply(&mut full, &plans, &late);
    assert_eq!(apply(&mut windowed, &plans, &late), expected);
    assert!(expected.contains("late: true"));
    let end = T0 + 6 * DAY;
    let all = full.points().to_vec();
    let view = reload(&windowed, &all, windowed.checkpoint().at).view(&plans, utc(end), 1);
    let unpaid = accrue(&plans, &all, full.paid_through(), end) + full.carry() + full.pending_adjustment();
    assert_eq!(view.accrued, unpaid);
    let paid = reload(&windowed, &all, windowed.checkpoint().at)
        .claim(&plans, utc(end), 1)
        .unwrap();
    assert_eq!(
        paid.rates,
        rates_from_all(&plans, &all, paid.period_start.timestamp(), end)
    );
}

fn at_hour(h: i64, event: Event) -> Step {
    Step {
        now: T0 + h * 3_600,
        event,
        advance_by: None,
    }
}

fn snap_at(seq: u64, h: i64, plan: &'static str) -> Event {
    Event::Snapshot {
        seq,
        as_of: (T0 + h * 3_600) * 1_000,
        balance: 5_000_000_000,
        plan: Some(plan),
    }
}

/// A late point exactly at paid_through cuts its predecessor's segment there:
/// the predecessor's plan leaves the payout's rates.
#[test]
fn a_late_point_at_paid_through_drops_the_plan_before_it() {
    let steps = [
        at_hour(0, snap_at(1, 0, "p")),
        at_hour(10, snap_at(3, 10, "q")),
        at_hour(11, Event::Claim { at: T0 + 5 * 3_600 }),
        at_hour(12, snap_at(2, 5, "q")),
        at_hour(31, Event::Claim { at: T0 + 30 * 3_600 }),
    ];
    run(&plan_set("continuous"), &steps).unwrap();
}

/// A late point between paid_through and the checkpoint that uses a plan
/// first seen later moves that plan's first use earlier: a payout ending
/// between the two lists it.
#[test]
fn a_late_point_moves_a_plans_first_use_earlier() {
    let steps = [
        at_hour(0, snap_at(1, 0, "p")),
        at_hour(23, Event::Claim { at: T0 + 23 * 3_600 }),
        at_hour(30, snap_at(3, 30, "q")),
        at_hour(40, snap_at(4, 40, "p")),
        at_hour(40, snap_at(2, 26, "q")),
        at_hour(41, Event::Claim { at: T0 + 28 * 3_600 }),
    ];
    run(&plan_set("continuous"), &steps).unwrap();
}
