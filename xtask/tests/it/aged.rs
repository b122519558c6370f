//! A small `xtask bench aged` in CI: every field of its JSON line is there
//! and sane (no timing targets: the figures belong to docs/CAPACITY.md).

use crate::spike::bench;

fn positive(v: &serde_json::Value, what: &str) {
    assert!(v.as_f64().is_some_and(|x| x > 0.0), "{what} = {v}");
}

#[test]
fn a_small_aged_run_measures_aged_and_fresh_accounts_side_by_side() {
    let r = bench(&["aged", "--small"]);
    let groups = ["aged", "busy", "never_paid"];
    for g in groups {
        for key in [g.to_owned(), format!("{g}_fresh")] {
            for figure in ["claim_ms", "get_interest_ms"] {
                positive(&r[figure][&key]["p50"], &format!("{figure}.{key}.p50"));
                positive(&r[figure][&key]["p99"], &format!("{figure}.{key}.p99"));
                assert!(
                    r[figure][&key]["p99"].as_f64() >= r[figure][&key]["p50"].as_f64(),
                    "{r}"
                );
            }
            for kind in ["first_after_sql_history", "in_order", "late"] {
                positive(&r["snapshot_apply_us"][kind][&key], &format!("{kind}.{key}"));
            }
        }
        for ratio in ["claim_p99", "get_p99", "in_order_apply"] {
            positive(&r["ratios"][format!("{ratio}_{g}_vs_fresh")], ratio);
        }
    }
    positive(&r["ratios"]["close_day_last_vs_first"], "close-day ratio");
    let close = &r["close_day_ms"];
    positive(&r["ratios"]["close_day_last_vs_second"], "close-day ratio");
    for day in ["first_day", "second_day", "last_day", "day_before_last_full"] {
        positive(&close[day], day);
    }
    // The last day chains from the previous day's row (the incremental close), for every account that existed.
    assert_eq!(close["last_day_rows_from_previous_row"], 125, "{r}");
    // A month of 5 changes a day is ~150 points; busy accounts add 200 a day for 8 days; fresh ones what the measured rounds sent.
    let rows = &r["per_account"]["rows_by_group_before_maintain"];
    assert!(rows["aged"]["balance_points"].as_f64() > Some(140.0), "{r}");
    assert!(rows["busy"]["balance_points"].as_f64() > Some(1_500.0), "{r}");
    assert!(rows["fresh"]["balance_points"].as_f64() < Some(60.0), "{r}");
    // A claim a day for a month (and the one of this run), with its claim, key and outbox rows.
    for table in ["interest_payouts", "claims", "idempotency_keys", "payout_outbox"] {
        assert!(rows["aged"][table].as_f64() > Some(25.0), "{table}: {r}");
    }
    assert!(rows["fresh"]["interest_payouts"].as_f64() <= Some(1.0), "{r}");
    let before = &r["per_account"]["before_maintain"];
    assert_eq!(before["accounts"], 250, "{r}");
    positive(&before["bytes_per_account"], "bytes per account");
    positive(
        &before["tables"]["interest_payouts"]["rows_per_account"],
        "payouts per account",
    );
    // maintain: timed with the sizes after it, or null with the reason.
    match r["maintain_ms"].as_u64() {
        Some(_) => positive(
            &r["per_account"]["after_maintain"]["bytes_per_account"],
            "after maintain",
        ),
        None => assert!(r["maintain"].as_str().unwrap().starts_with("absent"), "{r}"),
    }
    // The past's claims and outbox rows were in their daily partitions (created
    // first): maintain drops the expired ones, and a week of them stays.
    if r["maintain_ms"].as_u64().is_some() {
        let did = &r["maintain_did"];
        for table in ["claims", "payout_outbox", "dead_letters"] {
            assert!(did["dropped"][table]["partitions"].as_u64() > Some(15), "{table}: {r}");
        }
        let after = &r["per_account"]["rows_by_group_after_maintain"];
        for table in ["claims", "payout_outbox"] {
            assert!(after["aged"][table].as_f64() < Some(10.0), "{table}: {r}");
        }
    }
    assert!(r["history"]["partitions_created"].as_u64() > Some(90), "{r}");
    positive(&r["history"]["rows_written_by_sql"], "rows written");
    assert!(r["written_by_sql"].as_array().is_some_and(|a| !a.is_empty()), "{r}");
    assert!(
        r["through_the_real_pipeline"].as_array().is_some_and(|a| !a.is_empty()),
        "{r}"
    );
}
