//! Property tests of exactness: additivity, batching, carry and drop, taxes.

use chrono::{DateTime, TimeZone, Utc};
use interest_now::money::accrual::{accrue, Accrued};
use interest_now::money::snapshot::Snapshot;
use interest_now::money::tax::withhold;
use interest_now::money::{Account, AccountId, Currency, Minor, Plans, TaxProfile};
use proptest::prelude::*;

use crate::support::plans;

const T0: i64 = 1_767_193_200; // 2026-01-01T00:00:00+09:00

fn plan_set(fraction: &str) -> Plans {
    let json = format!(
        r#"{{"id":"p","day_count":"ACT/ACT","fraction":"{fraction}","schedule":[
            {{"effective_from":"2026-01-01T00:00:00+09:00","tiers":[{{"up_to":"1000000","rate_percent":"3.1"}},{{"up_to":"900000000","rate_percent":"2.0"}},{{"rate_percent":"0.123457"}}]}},
            {{"effective_from":"2026-01-09T13:14:15+09:00","tiers":[{{"rate_percent":"4.44"}}]}},
            {{"effective_from":"2027-01-01T00:00:00+09:00","tiers":[{{"rate_percent":"1.5"}}]}}]}}"#
    );
    plans(&[json])
}

fn utc(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(s, 0).unwrap()
}

fn snap(seq: u64, at: i64, balance: i64) -> Snapshot {
    Snapshot {
        account_id: AccountId::try_from("acc").unwrap(),
        seq,
        balance: Minor(balance),
        currency: Currency::KRW,
        as_of: utc(at),
        plan: None,
        tax_profile: None,
    }
}

/// A timeline: increasing offsets (seconds after T0) with balances up to 10^15.
fn timeline() -> impl Strategy<Value = Vec<(i64, i64)>> {
    prop::collection::vec((1i64..400_000, 0i64..=1_000_000_000_000_000), 1..6).prop_map(|v| {
        let mut at = 0;
        v.into_iter()
            .map(|(gap, bal)| {
                at += gap;
                (at, bal)
            })
            .collect()
    })
}

fn open(plans: &Plans, tl: &[(i64, i64)]) -> Account {
    let mut acc = Account::open(&snap(1, T0 + tl[0].0, tl[0].1), plans);
    for (i, &(at, bal)) in tl.iter().enumerate().skip(1) {
        acc.apply_snapshot(&snap(i as u64 + 1, T0 + at, bal), plans, utc(T0))
            .unwrap();
    }
    acc
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn splitting_any_interval_at_any_second_is_exact(tl in timeline(), a in 0i64..2_000_000, len in 0i64..40_000_000, cut in 0.0f64..1.0) {
        let plans = plan_set("carry");
        let acc = open(&plans, &tl);
        let (a, c) = (T0 + a, T0 + a + len);
        // The split point is chosen by a generated fraction; it is not money.
        let b = a + (len as f64 * cut) as i64;
        let whole = accrue(&plans, acc.points(), a, c);
        prop_assert_eq!(accrue(&plans, acc.points(), a, b) + accrue(&plans, acc.points(), b, c), whole);
    }

    #[test]
    fn any_arrival_order_of_the_same_timeline_pays_the_same(tl in timeline(), order in Just(()).prop_perturb(|_, mut rng| { let mut v: Vec<usize> = (0..6).collect(); for i in (1..6).rev() { v.swap(i, rng.random_range(0..=i)); } v }), claims in prop::collection::vec(1i64..3_000_000, 1..5)) {
        let plans = plan_set("carry");
        let in_order = open(&plans, &tl);
        let arrival: Vec<usize> = order.into_iter().filter(|&i| i < tl.len()).collect();
        let first = arrival[0];
        let mut shuffled = Account::open(&snap(first as u64 + 1, T0 + tl[first].0, tl[first].1), &plans);
        for &i in &arrival[1..] {
            shuffled.apply_snapshot(&snap(i as u64 + 1, T0 + tl[i].0, tl[i].1), &plans, utc(T0)).unwrap();
        }
        prop_assert_eq!(shuffled.points(), in_order.points());
        let (mut x, mut y) = (in_order, shuffled);
        let mut at = T0;
        for step in claims {
            at += step;
            let px = x.claim(&plans, utc(at), 1);
            let py = y.claim(&plans, utc(at), 1);
            prop_assert_eq!(px, py);
        }
    }

    #[test]
    fn carry_pays_the_exact_integral_to_the_last_unit(tl in timeline(), steps in prop::collection::vec(1i64..200_000, 1..60), late in 0usize..6) {
        let plans = plan_set("carry");
        let mut acc = open(&plans, &tl[..1]);
        let start = acc.paid_through();
        let mut paid = Accrued::ZERO;
        let mut at = T0 + tl[0].0;
        let mut pending: Vec<(u64, i64, i64)> = tl.iter().enumerate().skip(1).map(|(i, &(t, b))| (i as u64 + 1, T0 + t, b)).collect();
        // Deliver snapshots when the clock passes them, one of them after a claim (a correction).
        for step in steps {
            at += step;
            pending.retain(|&(seq, t, b)| {
                let deliver_now = t <= at && seq as usize != late + 1;
                if deliver_now { acc.apply_snapshot(&snap(seq, t, b), &plans, utc(t)).unwrap(); }
                !deliver_now
            });
            if let Ok(p) = acc.claim(&plans, utc(at), u32::MAX) {
                prop_assert!(p.gross.0 >= 1);
                paid = paid + Accrued::from_minor(p.gross);
            }
        }
        for (seq, t, b) in pending {
            // Whatever is still pending (the held-back one included) arrives now.
            let _ = acc.apply_snapshot(&snap(seq, t, b), &plans, utc(t));
        }
        let end = at + 1;
        let remaining = acc.accrued_at(&plans, end);
        prop_assert_eq!(paid + remaining, accrue(&plans, acc.points(), start, end));
    }

    #[test]
    fn drop_loses_less_than_one_unit_per_payout(tl in timeline(), steps in prop::collection::vec(1i64..500_000, 1..40)) {
        let plans = plan_set("drop");
        let mut acc = open(&plans, &tl);
        let mut at = T0;
        for step in steps {
            at += step;
            let due = acc.accrued_at(&plans, at);
            if let Ok(p) = acc.claim(&plans, utc(at), u32::MAX) {
                let lost = due - Accrued::from_minor(p.gross);
                prop_assert!(lost >= Accrued::ZERO && lost < Accrued::from_minor(Minor(1)));
                prop_assert_eq!(acc.carry(), Accrued::ZERO);
            }
        }
    }

    #[test]
    fn taxes_are_tens_never_exceed_gross_and_net_adds_up(gross in 0i64..=1_000_000_000_000_000) {
        for profile in [TaxProfile::Standard, TaxProfile::Preferential, TaxProfile::Exempt] {
            let w = withhold(Minor(gross), profile, Currency::KRW);
            for t in [w.income_tax, w.local_tax, w.rural_tax] {
                prop_assert_eq!(t.0 % 10, 0);
                prop_assert!(t.0 >= 0);
            }
            prop_assert!(w.total().0 <= gross);
            let net = gross - w.total().0;
            prop_assert_eq!(net + w.income_tax.0 + w.local_tax.0 + w.rural_tax.0, gross);
        }
    }
}
