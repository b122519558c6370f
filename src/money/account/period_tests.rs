//! SPEC §2 "Payout period": a payout's period says exactly what it paid —
//! up to the claim's second for `continuous`, whole KST days for `daily_close`.

use chrono::{DateTime, Utc};

use super::Account;
use crate::money::accrual::accrue;
use crate::money::plan::{PlanFile, Plans};
use crate::money::snapshot::Snapshot;
use crate::money::types::{parse_instant, AccountId, Currency, Minor};

fn plans(style: &str) -> Plans {
    let json = format!(
        r#"{{"plans":[{{"id":"p","accrual":"{style}","schedule":[{{"effective_from":"2020-01-01T00:00:00+09:00","tiers":[{{"rate_percent":"2.0"}}]}}]}}]}}"#
    );
    Plans::new(PlanFile::parse(&json).unwrap(), Some("p".into())).unwrap()
}

fn at(s: &str) -> DateTime<Utc> {
    parse_instant(s).unwrap()
}

fn open(plans: &Plans, as_of: &str) -> Account {
    let snap = Snapshot {
        account_id: AccountId::try_from("acc").unwrap(),
        seq: 1,
        balance: Minor(100_000_000),
        currency: Currency::KRW,
        as_of: at(as_of),
        plan: None,
        tax_profile: None,
    };
    Account::open(&snap, plans)
}

#[test]
fn a_continuous_claim_pays_through_its_second() {
    let plans = plans("continuous");
    let mut acc = open(&plans, "2026-03-01T09:00:00+09:00");
    let p = acc.claim(&plans, at("2026-03-03T13:45:10.700+09:00"), 1).unwrap();
    assert_eq!(p.period_start, at("2026-03-01T09:00:00+09:00"));
    assert_eq!(p.period_end, at("2026-03-03T13:45:10+09:00"));
    let (s, e) = (p.period_start.timestamp(), p.period_end.timestamp());
    assert_eq!(p.accrued, accrue(&plans, acc.points(), s, e));
    let next = acc.claim(&plans, at("2026-03-04T08:00:00+09:00"), 1).unwrap();
    assert_eq!(next.period_start, p.period_end, "no gap, no overlap");
}

#[test]
fn a_daily_close_claim_pays_whole_days_through_the_midnight_of_its_date() {
    let plans = plans("daily_close");
    let mut acc = open(&plans, "2026-03-01T09:00:00+09:00");
    let p = acc.claim(&plans, at("2026-03-03T13:45:10.700+09:00"), 1).unwrap();
    assert_eq!(p.period_start, at("2026-03-01T09:00:00+09:00"));
    assert_eq!(p.period_end, at("2026-03-03T00:00:00+09:00"));
    // Two closes (1 and 2 March) of 100,000,000 at 2% / 365: 2 × 5,479.45… = 10,958.90…
    assert_eq!(p.gross, Minor(10_958));
    let (s, e) = (p.period_start.timestamp(), p.period_end.timestamp());
    assert_eq!(p.accrued, accrue(&plans, acc.points(), s, e));
    assert_eq!(acc.paid_through(), e);
    let next = acc.claim(&plans, at("2026-03-04T00:00:00+09:00"), 1).unwrap();
    assert_eq!(next.period_start, at("2026-03-03T00:00:00+09:00"), "no gap, no overlap");
    assert_eq!(next.period_end, at("2026-03-04T00:00:00+09:00"));
    assert_eq!(
        next.accrued,
        accrue(&plans, acc.points(), e, next.period_end.timestamp())
    );
}

#[test]
fn a_daily_close_claim_on_the_first_day_has_nothing_to_pay() {
    let plans = plans("daily_close");
    let mut acc = open(&plans, "2026-03-01T09:00:00+09:00");
    assert!(acc.claim(&plans, at("2026-03-01T23:59:59+09:00"), 1).is_err());
    assert_eq!(acc.paid_through(), at("2026-03-01T09:00:00+09:00").timestamp());
}
