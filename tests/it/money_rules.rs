//! The money rules of SPEC §2, checked through the simulator.

use interest_now::money::accrual::{Accrued, ACCRUAL_DENOMINATOR, YEAR_DAYS_LCM};
use interest_now::simulate::Options;

use crate::support::{check, claim, flat_plan, payouts, plans, snapshot};

fn two_percent() -> interest_now::money::Plans {
    plans(&[flat_plan("p", "2.0", "ACT/365F", "continuous", "carry")])
}

/// One full day at a constant balance, standard profile: (gross, income, local, net).
fn one_day(balance: &str) -> (String, String, String, String) {
    let out = check(
        two_percent(),
        Options::default(),
        &[
            snapshot("a", 1, balance, "2026-03-01T00:00:00+09:00"),
            claim("a", "2026-03-02T00:00:00+09:00", "k"),
        ],
    );
    let p = payouts(&out)[0];
    let s = |k: &str| p[k].as_str().unwrap().to_owned();
    (s("gross"), s("income_tax"), s("local_tax"), s("net"))
}

#[test]
fn the_four_public_examples_hold() {
    let t = |a: &str, b: &str, c: &str, d: &str| (a.to_owned(), b.to_owned(), c.to_owned(), d.to_owned());
    assert_eq!(one_day("200000"), t("10", "0", "0", "10"));
    assert_eq!(one_day("2000000"), t("109", "10", "0", "99"));
    assert_eq!(one_day("50000000"), t("2739", "380", "30", "2329"));
    assert_eq!(one_day("100000000"), t("5479", "760", "70", "4649"));
}

#[test]
fn claims_either_side_of_midnight_land_on_different_dates() {
    // 10^12 won earns about 634 won a second, so one second is claimable.
    let out = check(
        two_percent(),
        Options::default(),
        &[
            snapshot("a", 1, "1000000000000", "2026-11-22T00:00:00+09:00"),
            claim("a", "2026-11-22T23:59:59.999+09:00", "k1"),
            claim("a", "2026-11-23T00:00:00.000+09:00", "k2"),
            claim("a", "2026-11-23T00:00:07.000+09:00", "k3"),
        ],
    );
    let p = payouts(&out);
    assert_eq!(p.len(), 2, "{out:?}");
    assert_eq!(p[0]["business_date"], "2026-11-22");
    assert_eq!(p[1]["business_date"], "2026-11-23");
    assert_eq!(p[1]["period_start"], "2026-11-22T23:59:59.000+09:00");
    assert_eq!(out[3]["status"], 409);
    assert_eq!(out[3]["code"], "already_claimed_today");
    assert_eq!(out[3]["next_claim_at"], "2026-11-24T00:00:00.000+09:00");
}

#[test]
fn nothing_to_claim_does_not_use_up_the_day() {
    let out = check(
        two_percent(),
        Options::default(),
        &[
            snapshot("a", 1, "1000000", "2026-11-22T00:00:00+09:00"),
            claim("a", "2026-11-22T00:00:10+09:00", "k1"),
            claim("a", "2026-11-22T23:00:00+09:00", "k2"),
        ],
    );
    assert_eq!(out[1]["code"], "nothing_to_claim");
    assert_eq!(out[1]["status"], 422);
    assert_eq!(out[2]["status"], 201);
}

#[test]
fn claims_per_day_is_configurable() {
    let script = [
        snapshot("a", 1, "1000000000000", "2026-11-22T00:00:00+09:00"),
        claim("a", "2026-11-22T01:00:00+09:00", "k1"),
        claim("a", "2026-11-22T02:00:00+09:00", "k2"),
        claim("a", "2026-11-22T03:00:00+09:00", "k3"),
    ];
    let out = check(
        two_percent(),
        Options {
            credit_net: false,
            claims_per_day: 2,
            ..Options::default()
        },
        &script,
    );
    let statuses: Vec<_> = out[1..].iter().map(|v| v["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [201, 201, 409]);
}

fn units(balance: i128, micro_percent: i128, year_days: i128, secs: i128) -> i128 {
    balance * micro_percent * (YEAR_DAYS_LCM / year_days) * secs
}

/// Exact interest of a claim period in units, recovered from gross + what stays accrued.
fn gross_of(out: &[serde_json::Value]) -> i64 {
    payouts(out)[0]["gross"].as_str().unwrap().parse().unwrap()
}

#[test]
fn a_rate_change_splits_the_period_at_its_instant() {
    let plan = r#"{"id":"p","schedule":[
        {"effective_from":"2026-01-01T00:00:00+09:00","tiers":[{"rate_percent":"2.0"}]},
        {"effective_from":"2026-06-01T00:00:00+09:00","tiers":[{"rate_percent":"4.0"}]}]}"#;
    let out = check(
        plans(&[plan.to_owned()]),
        Options::default(),
        &[
            snapshot("a", 1, "365000000", "2026-05-31T12:00:00+09:00"),
            claim("a", "2026-06-01T12:00:00+09:00", "k"),
            r#"{"type":"query","account_id":"a","at":"2026-06-01T12:00:00+09:00"}"#.to_owned(),
        ],
    );
    let exact = units(365_000_000, 2_000_000, 365, 43_200) + units(365_000_000, 4_000_000, 365, 43_200);
    // 365,000,000 × (2% + 4%) / 2 / 365 = 30,000 exactly.
    assert_eq!(exact, 30_000 * ACCRUAL_DENOMINATOR);
    assert_eq!(gross_of(&out), 30_000);
    let rates = &payouts(&out)[0]["rates"];
    assert_eq!(
        rates.as_array().unwrap().len(),
        2,
        "both schedule entries are reported: {rates}"
    );
}

#[test]
fn a_balance_straddling_a_tier_bound_pays_each_part_at_its_rate() {
    let plan = r#"{"id":"t","schedule":[{"effective_from":"2026-01-01T00:00:00+09:00",
        "tiers":[{"up_to":"50000000","rate_percent":"2.0"},{"rate_percent":"4.0"}]}]}"#;
    let out = check(
        plans(&[plan.to_owned()]),
        Options::default(),
        &[
            snapshot("a", 1, "60000000", "2026-03-01T00:00:00+09:00"),
            claim("a", "2026-03-02T00:00:00+09:00", "k"),
        ],
    );
    let exact = units(50_000_000, 2_000_000, 365, 86_400) + units(10_000_000, 4_000_000, 365, 86_400);
    assert_eq!(Accrued(exact).floor_minor(), 3835);
    assert_eq!(gross_of(&out), 3835);
}

#[test]
fn act_act_uses_366_days_for_seconds_in_a_leap_year() {
    let out = check(
        plans(&[flat_plan("p", "10", "ACT/ACT", "continuous", "carry")]),
        Options::default(),
        &[
            snapshot("a", 1, "1000000000", "2027-12-31T12:00:00+09:00"),
            claim("a", "2028-01-01T12:00:00+09:00", "k"),
        ],
    );
    let exact = units(1_000_000_000, 10_000_000, 365, 43_200) + units(1_000_000_000, 10_000_000, 366, 43_200);
    // 136,986.30... + 136,612.02... = 273,598.32...
    assert_eq!(gross_of(&out), Accrued(exact).floor_minor());
    assert_eq!(gross_of(&out), 273_598);
}

#[test]
fn daily_close_counts_only_the_closing_balance() {
    let out = check(
        plans(&[flat_plan("d", "3.65", "ACT/365F", "daily_close", "carry")]),
        Options::default(),
        &[
            snapshot("a", 1, "1000000", "2026-03-01T09:00:00+09:00"),
            snapshot("a", 2, "99000000", "2026-03-01T12:00:00+09:00"),
            snapshot("a", 3, "2000000", "2026-03-01T23:59:59+09:00"),
            claim("a", "2026-03-01T23:59:59.999+09:00", "k0"),
            claim("a", "2026-03-02T15:00:00+09:00", "k1"),
        ],
    );
    // Before the first close nothing is due.
    assert_eq!(out[3]["code"], "nothing_to_claim");
    // One day (1 March, the first snapshot's day) on the closing 2,000,000 at 3.65%: 200 won.
    let p = payouts(&out);
    assert_eq!(p[0]["gross"], "200");
    // SPEC §2: whole KST days — the period ends at 00:00 KST of the claim's business date.
    assert_eq!(p[0]["period_end"], "2026-03-02T00:00:00.000+09:00");
}

#[test]
fn a_late_snapshot_corrects_paid_interest_through_an_adjustment() {
    let out = check(
        two_percent(),
        Options::default(),
        &[
            snapshot("a", 1, "36500000", "2026-03-01T00:00:00+09:00"),
            snapshot("a", 3, "36500000", "2026-03-03T00:00:00+09:00"),
            claim("a", "2026-03-03T00:00:00+09:00", "k1"),
            // seq 2 arrives late: from 2 March the balance was 73,000,000, one more day of 2,000 won.
            snapshot("a", 2, "73000000", "2026-03-02T00:00:00+09:00"),
            claim("a", "2026-03-04T00:00:00+09:00", "k2"),
        ],
    );
    assert_eq!(out[3]["snapshot"], "late");
    assert_eq!(out[3]["adjustment"], "2000");
    let p = payouts(&out);
    assert_eq!(p[0]["gross"], "4000", "2 days × 2,000 as first known");
    assert_eq!(p[1]["adjustment"], "2000");
    assert_eq!(p[1]["gross"], "4000", "1 day on 36,500,000 plus the 2,000 correction");
}

#[test]
fn duplicates_are_ignored_and_conflicts_refused() {
    let out = check(
        two_percent(),
        Options::default(),
        &[
            snapshot("a", 1, "1000", "2026-03-01T00:00:00+09:00"),
            snapshot("a", 1, "1000", "2026-03-01T00:00:00+09:00"),
            snapshot("a", 1, "2000", "2026-03-01T00:00:00+09:00"),
            snapshot("a", 2, "2000", "2026-02-01T00:00:00+09:00"),
        ],
    );
    assert_eq!(out[1]["snapshot"], "duplicate");
    assert_eq!(out[2]["code"], "seq_conflict");
    assert_eq!(out[3]["code"], "as_of_backwards");
}

#[test]
fn corrections_older_than_the_window_are_refused() {
    let out = check(
        two_percent(),
        Options::default(),
        &[
            snapshot("a", 1, "1000", "2026-03-01T00:00:00+09:00"),
            snapshot("a", 3, "1000", "2026-03-20T00:00:00+09:00"),
            snapshot("a", 2, "5000", "2026-03-02T00:00:00+09:00"),
        ],
    );
    assert_eq!(out[2]["code"], "correction_too_old");
}

#[test]
fn settlement_and_claims_never_pay_the_same_interest() {
    let out = check(
        two_percent(),
        Options::default(),
        &[
            snapshot("a", 1, "36500000", "2026-03-01T00:00:00+09:00"),
            snapshot("b", 1, "36500000", "2026-03-01T00:00:00+09:00"),
            claim("a", "2026-03-31T00:00:00+09:00", "k1"),
            r#"{"type":"settle","date":"2026-03-31"}"#.to_owned(),
            r#"{"type":"settle","date":"2026-03-31"}"#.to_owned(),
            claim("b", "2026-04-01T00:00:00+09:00", "k2"),
        ],
    );
    let p = payouts(&out);
    let summary: Vec<_> = p
        .iter()
        .map(|p| {
            (
                p["account_id"].as_str().unwrap(),
                p["kind"].as_str().unwrap(),
                p["gross"].as_str().unwrap(),
            )
        })
        .collect();
    // a: 30 days by claim, 1 day by settlement; b: 31 days by settlement; the rerun pays nothing; b's claim finds nothing.
    assert_eq!(
        summary,
        [("a", "claim", "60000"), ("a", "auto", "2000"), ("b", "auto", "62000")]
    );
    assert_eq!(p[1]["business_date"], "2026-04-01");
    assert_eq!(out.last().unwrap()["code"], "nothing_to_claim");
}

#[test]
fn credit_net_compounds() {
    let mut script = vec![snapshot("a", 1, "100000000", "2026-01-01T00:00:00+09:00")];
    for day in 2..=31 {
        script.push(claim(
            "a",
            &format!("2026-01-{day:02}T00:00:00+09:00"),
            &format!("k{day}"),
        ));
    }
    let flat = check(two_percent(), Options::default(), &script);
    let compounding = check(
        two_percent(),
        Options {
            credit_net: true,
            claims_per_day: 1,
            ..Options::default()
        },
        &script,
    );
    let total = |out: &[serde_json::Value]| -> i64 {
        payouts(out)
            .iter()
            .map(|p| p["gross"].as_str().unwrap().parse::<i64>().unwrap())
            .sum()
    };
    assert_eq!(payouts(&flat).len(), 30);
    assert!(total(&compounding) > total(&flat), "credited interest earns interest");
}
