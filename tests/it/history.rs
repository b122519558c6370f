//! `GET /v1/accounts/{id}/interest/payouts` (issue 12 item 1): the history
//! shows each payout exactly as its 201 did, newest first, in pages that
//! neither skip nor repeat, filtered by business date; bad parameters are
//! 400 `invalid_query`, an unknown account 404.

use std::time::Duration;

use chrono::Duration as Dur;
use interest_now::money::types::format_instant;
use serde_json::Value;

use crate::harness::{now, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_pages_newest_first_exactly_as_paid() {
    let env = Env::new(2).await;
    let svc = env.serve("all", &[("CLAIMS_PER_DAY", "50")]).await;
    // 10^12 won earns about 634 won a second: every claim has something to pay.
    env.snapshot("hist-1", 1, "1000000000000", &format_instant(now() - Dur::hours(1)))
        .await;
    env.snapshot("hist-0", 1, "1000000", &format_instant(now() - Dur::hours(1)))
        .await;
    env.wait_accounts(2).await;
    let mut paid: Vec<Value> = Vec::new();
    // Interest accrues by whole seconds: a claim a second.
    for i in 0..7 {
        let a = svc.claim_to_end("hist-1", &format!("h-{i}")).await;
        assert_eq!(a.status, 201, "{a:?}");
        paid.push(a.body);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
    paid.reverse(); // newest first

    let mut seen: Vec<Value> = Vec::new();
    let mut path = "/v1/accounts/hist-1/interest/payouts?limit=3".to_owned();
    for _page in 0..4 {
        let page = svc.get(&path).await;
        assert_eq!(page.status, 200, "{page:?}");
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().cloned());
        match page.body["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/accounts/hist-1/interest/payouts?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, paid, "every payout once, newest first, each as its 201 showed it");
    assert!(seen.iter().all(|p| p["kind"] == "claim"));

    let today = paid[0]["business_date"].as_str().unwrap().to_owned();
    let day = |from: &str, to: &str| format!("/v1/accounts/hist-1/interest/payouts?from={from}&to={to}");
    assert_eq!(
        svc.get(&day(&today, &today)).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        7
    );
    assert!(svc.get(&day("2000-01-01", "2000-12-31")).await.body["items"]
        .as_array()
        .unwrap()
        .is_empty());
    // An account never paid has an empty history; an unknown one is 404.
    let none = svc.get("/v1/accounts/hist-0/interest/payouts").await;
    assert_eq!(
        (none.status, none.body["items"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    assert_eq!(none.body["next_cursor"], Value::Null);
    let unknown = svc.get("/v1/accounts/nobody/interest/payouts").await;
    assert_eq!(
        (unknown.status, unknown.body["code"].as_str()),
        (404, Some("unknown_account"))
    );
    for bad in [
        "limit=0",
        "limit=101",
        "limit=x",
        "from=2026-02-30",
        "cursor=00",
        "page=2",
        "from=2026-02-02&to=2026-02-01",
    ] {
        let r = svc.get(&format!("/v1/accounts/hist-1/interest/payouts?{bad}")).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (400, Some("invalid_query")),
            "{bad}: {r:?}"
        );
        assert!(r.content_type.starts_with("application/problem+json"));
    }

    // A page is one range scan of the history index, in its order (no sort),
    // whatever the account's age. (Seq scans off: the test's table is tiny.)
    let mut tx = env.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT payout_id FROM interest_payouts WHERE account_id = 'hist-1'
           AND (business_date, period_start, payout_id) < ('2999-01-01', now(), gen_random_uuid())
         ORDER BY business_date DESC, period_start DESC, payout_id DESC LIMIT 21",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    // On the partitioned table: a Merge Append of each partition's copy of
    // the history index (named after its columns), already in page order.
    let nodes: Vec<&str> = plan.iter().map(|l| l.trim().trim_start_matches("->").trim()).collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("account_id_business_date") || plan.contains("interest_payouts_history"),
        "{plan}"
    );
    let sorts_or_scans = |n: &&str| {
        ["Sort  (", "Incremental Sort", "Seq Scan"]
            .iter()
            .any(|k| n.starts_with(k))
    };
    assert!(!nodes.iter().any(sorts_or_scans), "{plan}");
    tx.rollback().await.unwrap();
    env.drop_db().await;
}

/// The year's interest statement (issue 12 item 3): the CLI and the API give
/// the same lines, per month and for the year, per withholding profile; and
/// every account's statement summed is the monthly withholding report, to the won.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_add_up_to_the_monthly_withholding_report() {
    use rust_decimal::Decimal;
    let env = Env::new(2).await;
    let svc = env.serve("all", &[("CLAIMS_PER_DAY", "3")]).await;
    let as_of = format_instant(now() - Dur::hours(3));
    let profiles = [("st-std", "standard"), ("st-pref", "preferential"), ("st-ex", "exempt")];
    for (account, profile) in profiles {
        let json = format!(
            r#"{{"account_id":"{account}","seq":1,"balance":"1000000000000","currency":"KRW","as_of":"{as_of}","tax_profile":"{profile}"}}"#
        );
        env.produce("balance-snapshots", account, &json).await;
    }
    env.wait_accounts(3).await;
    let mut month = String::new();
    for round in 0..2 {
        for (account, _) in profiles {
            let a = svc.claim_to_end(account, &format!("st-{account}-{round}")).await;
            assert_eq!(a.status, 201, "{a:?}");
            month = a.body["business_date"].as_str().unwrap()[..7].to_owned();
        }
        tokio::time::sleep(Duration::from_millis(1_100)).await;
    }
    let year = &month[..4];

    let dec = |v: &Value| v.as_str().unwrap().parse::<Decimal>().unwrap();
    let mut summed = [Decimal::ZERO; 3];
    for (account, profile) in profiles {
        let cli: Vec<Value> = env
            .run(&[
                "report",
                "statement",
                "--account",
                account,
                "--year",
                year,
                "--format",
                "json",
            ])
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let api = svc
            .get(&format!("/v1/accounts/{account}/interest/statements/{year}"))
            .await;
        assert_eq!(api.status, 200, "{api:?}");
        let mut both = api.body["months"].as_array().unwrap().clone();
        both.extend(api.body["totals"].as_array().unwrap().iter().cloned());
        assert_eq!(both, cli, "the API and the CLI give the same statement");
        assert_eq!(cli.len(), 2, "one month and the year: {cli:?}");
        let (m, y) = (&cli[0], &cli[1]);
        assert_eq!(
            (m["period"].as_str(), y["period"].as_str()),
            (Some(month.as_str()), Some(year))
        );
        assert_eq!(
            (m["tax_profile"].as_str(), m["payouts"].as_i64()),
            (Some(profile), Some(2))
        );
        for f in ["gross", "income_tax", "local_tax", "rural_tax", "net"] {
            assert_eq!(dec(&m[f]), dec(&y[f]), "{account} {f}: the year is its one month");
        }
        assert_eq!(
            dec(&m["net"]),
            dec(&m["gross"]) - dec(&m["income_tax"]) - dec(&m["local_tax"]) - dec(&m["rural_tax"])
        );
        if profile == "exempt" {
            assert_eq!(dec(&m["income_tax"]), Decimal::ZERO);
        } else {
            assert!(dec(&m["income_tax"]) > Decimal::ZERO, "{m}");
        }
        for (i, f) in ["income_tax", "local_tax", "rural_tax"].iter().enumerate() {
            summed[i] += dec(&m[f]);
        }
    }
    let report: Value = serde_json::from_str(
        env.run(&["report", "withholding", "--month", &month, "--format", "json"])
            .unwrap()
            .trim(),
    )
    .unwrap();
    for (i, f) in ["income_tax", "local_tax", "rural_tax"].iter().enumerate() {
        assert_eq!(summed[i], dec(&report[f]), "{f}: statements vs monthly_withholding");
    }

    let unknown = svc
        .get(&format!("/v1/accounts/nobody/interest/statements/{year}"))
        .await;
    assert_eq!(
        (unknown.status, unknown.body["code"].as_str()),
        (404, Some("unknown_account"))
    );
    for bad in ["1999", "20x6", "99999"] {
        let r = svc.get(&format!("/v1/accounts/st-std/interest/statements/{bad}")).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (400, Some("invalid_year")),
            "{bad}"
        );
    }
    let out = env
        .command(&["report", "statement", "--account", "nobody", "--year", year])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!((out.status.code(), err.trim().lines().count()), (Some(1), 1), "{err}");
    let out = env
        .command(&["report", "statement", "--account", "st-std", "--year", "twenty"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    env.drop_db().await;
}

/// Sums an explanation's parts the way a reader would, and checks them
/// against the payout it explains: Σ intervals = accrued; accrued + carry +
/// adjustment = total; floor(total) = gross; gross − Σ taxes = net.
pub(crate) fn assert_explanation_adds_up(body: &Value) {
    use rust_decimal::Decimal;
    let e = &body["explanation"];
    let units = |v: &Value| v["units"].as_str().unwrap().parse::<i128>().unwrap();
    let dec = |v: &Value| v.as_str().unwrap().parse::<Decimal>().unwrap();
    let per_minor: i128 = e["units_per_minor"].as_str().unwrap().parse().unwrap();
    let intervals = e["intervals"].as_array().unwrap();
    let summed: i128 = intervals.iter().map(|i| units(&i["accrued"])).sum();
    assert_eq!(summed, units(&e["accrued"]), "{e}");
    let total = units(&e["accrued"]) + units(&e["carry_in"]) + units(&e["adjustment"]);
    assert_eq!(total, units(&e["total"]));
    let gross = total.div_euclid(per_minor);
    assert_eq!(Decimal::from(gross as i64), dec(&body["gross"]), "floor of the total");
    assert_eq!(dec(&e["gross"]["amount"]), dec(&body["gross"]));
    assert_eq!(total - gross * per_minor, units(&e["remainder"]));
    let taxes: Decimal = e["taxes"].as_array().unwrap().iter().map(|t| dec(&t["amount"])).sum();
    assert_eq!(dec(&body["gross"]) - taxes, dec(&body["net"]));
    assert_eq!(dec(&e["net"]), dec(&body["net"]));
    for t in e["taxes"].as_array().unwrap() {
        assert_eq!(dec(&body[t["tax"].as_str().unwrap()]), dec(&t["amount"]), "{t}");
    }
}

/// `GET /v1/payouts/{id}?explain=true` (issue 12 item 2) on the real
/// database: a tiered continuous payout over two balances, the next payout
/// bringing in the correction a late snapshot made (listed with it), a
/// `daily_close` payout of whole days whose account's checkpoint is past
/// midnight, and 410 once the period's points are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_explains_itself_exactly() {
    let env = Env::new(2).await;
    let svc = env.serve("all", &[("CLAIMS_PER_DAY", "5")]).await;
    let t = now();
    env.snapshot_on("tiered", "ex-1", 1, "80000000000", &format_instant(t - Dur::hours(3)))
        .await;
    env.snapshot_on("tiered", "ex-1", 3, "30000000", &format_instant(t - Dur::hours(1)))
        .await;
    env.snapshot_on("daily", "ex-d", 1, "900000000000", &format_instant(t - Dur::days(3)))
        .await;
    env.snapshot_on("daily", "ex-d", 2, "800000000000", &format_instant(t))
        .await;
    env.wait_count(
        "SELECT count(*) FROM balance_points WHERE account_id IN ('ex-1', 'ex-d')",
        4,
    )
    .await;

    let first = svc.claim_to_end("ex-1", "ex-a").await;
    assert_eq!(first.status, 201, "{first:?}");
    let id = first.body["payout_id"].as_str().unwrap();
    let plain = svc.get(&format!("/v1/payouts/{id}")).await;
    assert_eq!(
        (plain.status, &plain.body),
        (200, &first.body),
        "the payout as its 201 showed it"
    );
    let ex = svc.get(&format!("/v1/payouts/{id}?explain=true")).await;
    assert_eq!(ex.status, 200, "{ex:?}");
    assert_explanation_adds_up(&ex.body);
    let e = &ex.body["explanation"];
    let intervals = e["intervals"].as_array().unwrap();
    assert_eq!(intervals.len(), 2, "{e}");
    assert_eq!(intervals[0]["snapshot_seq"], 1);
    assert_eq!(
        intervals[0]["tiers"].as_array().unwrap().len(),
        2,
        "both tiers of 80,000,000,000"
    );
    assert_eq!(intervals[0]["tiers"][1]["rate_percent"], "4");
    assert_eq!(
        intervals[1]["tiers"].as_array().unwrap().len(),
        1,
        "30,000,000 is in the first tier"
    );
    assert_eq!(e["carry_in"]["units"], "0");
    assert_eq!(e["adjustment"]["units"], "0");

    // seq 2 arrives late, inside the paid period: its correction is carried
    // into the next payout, whose explanation names it.
    env.snapshot_on("tiered", "ex-1", 2, "90000000000", &format_instant(t - Dur::hours(2)))
        .await;
    env.wait_count("SELECT count(*) FROM balance_points WHERE account_id = 'ex-1'", 3)
        .await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let second = svc.claim_to_end("ex-1", "ex-b").await;
    assert_eq!(second.status, 201, "{second:?}");
    let ex2 = svc
        .get(&format!(
            "/v1/payouts/{}?explain=true",
            second.body["payout_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(ex2.status, 200, "{ex2:?}");
    assert_explanation_adds_up(&ex2.body);
    let e2 = &ex2.body["explanation"];
    assert_eq!(
        e2["carry_in"]["units"], e["carried_out"]["units"],
        "the first payout's remainder"
    );
    assert_ne!(e2["adjustment"]["units"], "0", "{e2}");
    let snaps = e2["adjustment"]["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{e2}");
    assert_eq!(snaps[0]["seq"], 2);
    assert_eq!(
        ex2.body["adjustment"],
        e2["adjustment"]["amount"].as_str().unwrap().split('.').next().unwrap()
    );
    // The first payout still explains itself as it was paid (seq 2 came later).
    let again = svc.get(&format!("/v1/payouts/{id}?explain=true")).await;
    assert_eq!(again.body, ex.body);

    let daily = svc.claim_to_end("ex-d", "ex-c").await;
    assert_eq!(daily.status, 201, "{daily:?}");
    let did = daily.body["payout_id"].as_str().unwrap().to_owned();
    let exd = svc.get(&format!("/v1/payouts/{did}?explain=true")).await;
    assert_eq!(exd.status, 200, "{exd:?}");
    assert_explanation_adds_up(&exd.body);
    let days = exd.body["explanation"]["intervals"].as_array().unwrap();
    // Whole days from the first snapshot's day through the day before the
    // claim's business date (three, unless the claim crossed a midnight).
    let claimed_on: chrono::NaiveDate = exd.body["business_date"].as_str().unwrap().parse().unwrap();
    let whole_days = (claimed_on - interest_now::money::types::business_date(t - Dur::days(3))).num_days();
    assert!((3..=4).contains(&whole_days));
    assert_eq!(
        days.len() as i64,
        whole_days,
        "whole days through yesterday: {}",
        exd.body
    );
    assert!(days.iter().all(|d| d["days"] == 1));
    assert_eq!(days[0]["snapshot_seq"], 1);
    assert!(exd.body["period_end"]
        .as_str()
        .unwrap()
        .ends_with("T00:00:00.000+09:00"));
    assert_eq!(days[2]["to"], exd.body["period_end"]);

    // Retention took the period's points: no explanation rather than a wrong one.
    sqlx::query("DELETE FROM balance_points WHERE account_id = 'ex-d' AND seq = 1")
        .execute(&env.pool)
        .await
        .unwrap();
    let gone = svc.get(&format!("/v1/payouts/{did}?explain=true")).await;
    assert_eq!(
        (gone.status, gone.body["code"].as_str()),
        (410, Some("explanation_expired")),
        "{gone:?}"
    );
    assert_eq!(svc.get(&format!("/v1/payouts/{did}")).await.status, 200);

    let cases = [
        (
            "/v1/payouts/00000000-0000-7000-8000-000000000000",
            404,
            "unknown_payout",
        ),
        ("/v1/payouts/not-a-uuid", 400, "invalid_payout_id"),
        (&format!("/v1/payouts/{did}?explain=yes") as &str, 400, "invalid_query"),
        (&format!("/v1/payouts/{did}?verbose=true"), 400, "invalid_query"),
    ];
    for (path, status, code) in cases {
        let r = svc.get(path).await;
        assert_eq!((r.status, r.body["code"].as_str()), (status, Some(code)), "{path}");
    }
    env.drop_db().await;
}

/// Paging the history while the account keeps being paid (issue 12, "no
/// item lost or repeated under concurrent new payouts"): every payout that
/// existed when paging began is seen exactly once; the keyset cursor keeps
/// newer payouts (which sort before it) from shifting the pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_while_new_payouts_arrive_loses_and_repeats_nothing() {
    let env = Env::new(2).await;
    let svc = env.serve("all", &[("CLAIMS_PER_DAY", "50")]).await;
    env.snapshot("hist-c", 1, "1000000000000", &format_instant(now() - Dur::hours(1)))
        .await;
    env.wait_accounts(1).await;
    let mut before = Vec::new();
    for i in 0..6 {
        let a = svc.claim_to_end("hist-c", &format!("c-{i}")).await;
        assert_eq!(a.status, 201, "{a:?}");
        before.push(a.body["payout_id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
    let api = svc.api.clone();
    let more = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..4 {
            let a = api.claim_to_end("hist-c", &format!("c-new-{i}")).await;
            assert_eq!(a.status, 201, "{a:?}");
            ids.push(a.body["payout_id"].as_str().unwrap().to_owned());
            tokio::time::sleep(Duration::from_millis(1_000)).await;
        }
        ids
    });
    let mut seen: Vec<String> = Vec::new();
    let mut path = "/v1/accounts/hist-c/interest/payouts?limit=2".to_owned();
    loop {
        let page = svc.get(&path).await;
        assert_eq!(page.status, 200, "{page:?}");
        seen.extend(
            page.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["payout_id"].as_str().unwrap().to_owned()),
        );
        match page.body["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/accounts/hist-c/interest/payouts?limit=2&cursor={c}"),
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(700)).await; // new payouts land between pages
    }
    let new = more.await.unwrap();
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no payout twice: {seen:?}");
    for id in &before {
        assert!(seen.contains(id), "{id} lost: {seen:?}");
    }
    assert!(seen.iter().all(|id| before.contains(id) || new.contains(id)));
    let all = svc.get("/v1/accounts/hist-c/interest/payouts?limit=100").await;
    assert_eq!(
        all.body["items"].as_array().unwrap().len(),
        10,
        "every payout is in the history afterwards"
    );
    env.drop_db().await;
}
