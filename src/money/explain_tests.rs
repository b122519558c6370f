//! Summing an explanation reproduces its payout exactly, for random timelines:
//! tiers, a rate change mid-period, ACT/ACT across a new year, late snapshots
//! (corrections of paid interest), both accrual styles, both fraction rules,
//! every tax profile.

use chrono::{NaiveDate, TimeZone, Utc};
use proptest::prelude::*;

use super::{explain, Paid};
use crate::money::accrual::{Accrued, Span};
use crate::money::plan::{FractionRule, PlanFile, Plans};
use crate::money::snapshot::Snapshot;
use crate::money::types::{AccountId, Currency, Minor, TaxProfile};
use crate::money::{Account, Payout};

const T0: i64 = 1_798_124_400; // 2026-12-25T00:00:00+09:00: a new year inside every run
const DAY: i64 = 86_400;

fn plan_set(style: &str, fraction: &str) -> Plans {
    let plan = |id: &str, rates: [&str; 2]| {
        format!(
            r#"{{"id":"{id}","day_count":"ACT/ACT","accrual":"{style}","fraction":"{fraction}","schedule":[
            {{"effective_from":"2025-01-01T00:00:00+09:00","tiers":[{{"up_to":"1000000","rate_percent":"{}"}},{{"rate_percent":"0.123457"}}]}},
            {{"effective_from":"2026-12-28T13:14:15+09:00","tiers":[{{"rate_percent":"{}"}}]}}]}}"#,
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

fn snap(seq: u64, as_of: i64, balance: i64, plan: Option<&str>, profile: TaxProfile) -> Snapshot {
    Snapshot {
        account_id: AccountId::try_from("acc").unwrap(),
        seq,
        balance: Minor(balance),
        currency: Currency::KRW,
        as_of: Utc.timestamp_opt(as_of, 0).unwrap(),
        plan: plan.map(str::to_owned),
        tax_profile: Some(profile),
    }
}

#[derive(Debug, Clone)]
enum Event {
    /// Delivered `delay` seconds after its `as_of`: a delay past a later
    /// snapshot makes it late.
    Snapshot {
        as_of: i64,
        balance: i64,
        plan: Option<&'static str>,
        delay: i64,
    },
    Claim {
        at: i64,
    },
    Settle {
        day: u64,
    },
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    let snapshot = (
        0..12 * DAY,
        0i64..=40_000_000_000,
        prop::option::weighted(0.5, prop::sample::select(vec!["p", "q"])),
        prop_oneof![3 => Just(0i64), 1 => 0..3 * DAY],
    )
        .prop_map(|(t, balance, plan, delay)| Event::Snapshot {
            as_of: T0 + t,
            balance,
            plan,
            delay,
        });
    let other = prop_oneof![
        3 => (0..12 * DAY).prop_map(|t| Event::Claim { at: T0 + t }),
        1 => (0u64..12).prop_map(|day| Event::Settle { day }),
    ];
    (
        prop::collection::vec(snapshot, 1..10),
        prop::collection::vec(other, 1..12),
    )
        .prop_map(|(s, o)| s.into_iter().chain(o).collect())
}

/// Runs the events in delivery order; checks every payout's explanation.
fn run(plans: &Plans, events: &[Event], profile: TaxProfile) -> Result<usize, TestCaseError> {
    // Seqs follow as_of; delivery follows as_of + delay (or the claim instant).
    let mut snaps: Vec<(i64, i64, &Event)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Snapshot { as_of, .. } => Some((*as_of, 0, e)),
            _ => None,
        })
        .collect();
    snaps.sort_by_key(|s| s.0);
    let mut deliveries: Vec<(i64, u64, &Event)> = Vec::new();
    for (i, (as_of, _, e)) in snaps.iter().enumerate() {
        let Event::Snapshot { delay, .. } = e else {
            unreachable!()
        };
        deliveries.push((as_of + delay, i as u64 + 1, e));
    }
    for e in events {
        match e {
            Event::Claim { at } => deliveries.push((*at, 0, e)),
            Event::Settle { day } => deliveries.push((T0 + (*day as i64 + 1) * DAY + 60, 0, e)),
            Event::Snapshot { .. } => {}
        }
    }
    deliveries.sort_by_key(|d| (d.0, d.1));
    let first = deliveries.iter().position(|d| d.1 == 1).expect("seq 1");
    let Event::Snapshot {
        as_of, balance, plan, ..
    } = deliveries[first].2
    else {
        unreachable!()
    };
    let mut account = Account::open(&snap(1, *as_of, *balance, *plan, profile), plans);
    let mut last_carry = Accrued::ZERO;
    let mut checked = 0;
    for (now, seq, e) in &deliveries[first + 1..] {
        let now_utc = Utc.timestamp_opt(*now, 0).unwrap();
        let payout = match e {
            Event::Snapshot {
                as_of, balance, plan, ..
            } => {
                let _ = account.apply_snapshot(&snap(*seq, *as_of, *balance, *plan, profile), plans, now_utc);
                None
            }
            Event::Claim { at } => account.claim(plans, Utc.timestamp_opt(*at, 0).unwrap(), 1).ok(),
            Event::Settle { day } => {
                let date = NaiveDate::from_ymd_opt(2026, 12, 25).unwrap() + chrono::Days::new(*day);
                account.settle(plans, date, now_utc)
            }
        };
        if let Some(p) = payout {
            check(plans, &account, &p, last_carry, profile)?;
            last_carry = p.carried_out;
            checked += 1;
        }
    }
    Ok(checked)
}

fn check(
    plans: &Plans,
    account: &Account,
    p: &Payout,
    carry_in: Accrued,
    profile: TaxProfile,
) -> Result<(), TestCaseError> {
    let fraction = plans.get(&p.plan).unwrap().fraction;
    let period = (p.period_start.timestamp(), p.period_end.timestamp());
    let paid = Paid::of(p);
    let e = explain(
        plans,
        account.points(),
        &paid,
        carry_in,
        fraction,
        profile,
        Currency::KRW,
    );
    prop_assert_eq!(e.reproduces(&paid), Ok(()), "{:?}", p);
    // The intervals are in time order, without overlap, inside the period
    // (a day close counts when its close falls in (start, end]).
    for w in e.intervals.windows(2) {
        prop_assert!(w[0].to <= w[1].from, "{:?}", e.intervals);
    }
    for i in &e.intervals {
        let inside = match i.span {
            Span::Seconds(n) => period.0 <= i.from && i.to <= period.1 && n == i.to - i.from,
            Span::Days(n) => period.0 < i.to && i.to <= period.1 && n == 1,
        };
        prop_assert!(inside, "{:?} outside {:?}", i, period);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn an_explanation_sums_to_its_payout(
        events in events(),
        style in prop::sample::select(vec!["continuous", "daily_close"]),
        fraction in prop::sample::select(vec!["carry", "drop"]),
        profile in prop::sample::select(vec![TaxProfile::Standard, TaxProfile::Preferential, TaxProfile::Exempt]),
    ) {
        run(&plan_set(style, fraction), &events, profile)?;
    }
}

/// A first payout (nothing carried in) of a `carry` plan in won.
fn explain_krw<'a>(
    plans: &'a Plans,
    points: &'a [crate::money::Point],
    paid: &Paid,
    profile: TaxProfile,
) -> super::Explanation<'a> {
    explain(
        plans,
        points,
        paid,
        Accrued::ZERO,
        FractionRule::Carry,
        profile,
        Currency::KRW,
    )
}

/// The public example: 50,000,000 won for one day at 2.0% — one interval of
/// 86,400 seconds, gross 2,739, taxes 380 + 30, net 2,329, the remainder carried.
#[test]
fn one_day_at_two_percent_explained() {
    let json = r#"{"plans":[{"id":"p","schedule":[{"effective_from":"2020-01-01T00:00:00+09:00","tiers":[{"rate_percent":"2.0"}]}]}]}"#;
    let plans = Plans::new(PlanFile::parse(json).unwrap(), None).unwrap();
    let mut account = Account::open(&snap(1, T0, 50_000_000, None, TaxProfile::Standard), &plans);
    let p = account
        .claim(&plans, Utc.timestamp_opt(T0 + DAY, 0).unwrap(), 1)
        .unwrap();
    let paid = Paid::of(&p);
    assert_eq!((paid.period_start, paid.period_end), (T0, T0 + DAY));
    let e = explain_krw(&plans, account.points(), &paid, TaxProfile::Standard);
    assert_eq!(e.reproduces(&paid), Ok(()));
    assert_eq!(e.intervals.len(), 1);
    assert_eq!(e.intervals[0].span, Span::Seconds(DAY));
    assert_eq!(e.intervals[0].year_days, 365);
    assert_eq!(e.gross, Minor(2_739));
    let taxes: Vec<i64> = e.taxes.iter().map(|t| t.amount.0).collect();
    assert_eq!(taxes, [380, 30]);
    assert_eq!(e.net, Minor(2_329));
    assert_eq!(e.carried_out.to_display(0).to_string(), "0.7260273972");
}

/// A wrong timeline (a point missing) is caught, not explained.
#[test]
fn an_explanation_from_the_wrong_timeline_does_not_reproduce() {
    let plans = plan_set("continuous", "carry");
    let mut account = Account::open(&snap(1, T0, 50_000_000, None, TaxProfile::Standard), &plans);
    account
        .apply_snapshot(
            &snap(2, T0 + 3_600, 10_000_000, None, TaxProfile::Standard),
            &plans,
            Utc.timestamp_opt(T0 + 3_600, 0).unwrap(),
        )
        .unwrap();
    let p = account
        .claim(&plans, Utc.timestamp_opt(T0 + DAY, 0).unwrap(), 1)
        .unwrap();
    let only_first = &account.points()[..1];
    let paid = Paid::of(&p);
    let e = explain_krw(&plans, only_first, &paid, TaxProfile::Standard);
    assert_eq!(e.reproduces(&paid), Err("accrued"));
}
