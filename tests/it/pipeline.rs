//! The service end to end on the real broker and database.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::Duration as Dur;
use interest_now::money::types::{format_instant, kst, kst_midnight_utc};
use interest_now::simulate::Options;
use sqlx::Row;

use crate::harness::{now, payout_rows, suite_offset, Env};
use crate::support::check;

fn two_days_ago() -> String {
    format_instant(now() - Dur::days(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_then_a_claim_pays_what_simulate_pays() {
    let env = Env::new(4).await;
    let svc = env.serve("all", &[]).await;
    let as_of = two_days_ago();
    env.snapshot("alice", 1, "123456789", &as_of).await;
    env.wait_accounts(1).await;
    let view = svc.get("/v1/accounts/alice/interest").await;
    assert_eq!(view.status, 200);
    assert_eq!(view.body["balance"], "123456789");
    let paid = svc.claim_to_end("alice", "k-1").await;
    assert_eq!(paid.status, 201, "{:?}", paid.body);
    let p = &paid.body;
    // The same script through the simulator, at the instant the API fixed.
    let plans_json = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plans.json")).unwrap();
    let sim_plans =
        interest_now::money::Plans::new(interest_now::money::PlanFile::parse(&plans_json).unwrap(), None).unwrap();
    let script = [
        crate::support::snapshot("alice", 1, "123456789", &as_of),
        crate::support::claim("alice", p["accepted_at"].as_str().unwrap(), "k-1"),
    ];
    let sim = check(sim_plans, Options::default(), &script);
    let s = &sim[1]["payout"];
    for field in [
        "gross",
        "income_tax",
        "local_tax",
        "rural_tax",
        "net",
        "period_start",
        "period_end",
        "business_date",
    ] {
        assert_eq!(p[field], s[field], "{field}");
    }
    assert_eq!(env.payout_count().await, 1);
    env.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_refuse_and_never_pay_twice() {
    let env = Env::new(4).await;
    let svc = env.serve("all", &[]).await;
    env.snapshot("bob", 1, "50000000", &two_days_ago()).await;
    env.snapshot("carol", 1, "50000000", &two_days_ago()).await;
    env.wait_accounts(2).await;

    let first = svc.claim("bob", "same-key").await;
    assert_eq!(first.status, 201);
    assert!(!first.replayed);
    let again = svc.claim("bob", "same-key").await;
    assert_eq!(again.status, 201);
    assert!(again.replayed, "Idempotent-Replayed: true");
    assert_eq!(again.body, first.body);
    let other = svc.claim("carol", "same-key").await;
    assert_eq!(other.status, 422);
    assert_eq!(other.body["code"], "idempotency_key_reused");
    assert!(other.content_type.starts_with("application/problem+json"));

    // 20 concurrent requests with one key: exactly one payout.
    let answers = futures::future::join_all((0..20).map(|_| svc.claim("carol", "burst-key"))).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert!(statuses.iter().all(|s| [201, 409].contains(s)), "{statuses:?}");
    assert!(statuses.contains(&201));
    let paid: HashSet<String> = answers
        .iter()
        .filter(|a| a.status == 201)
        .map(|a| a.body["payout_id"].to_string())
        .collect();
    assert_eq!(paid.len(), 1, "every 201 shows the same payout");
    for a in answers.iter().filter(|a| a.status == 409) {
        assert_eq!(a.body["code"], "claim_in_progress");
    }
    assert_eq!(env.payout_count().await, 2);
    env.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_either_side_of_midnight_get_their_own_business_date() {
    let env = Env::new(4).await;
    // Stand 8 seconds before the next 00:00 KST of the suite's clock.
    let suite_now = now();
    let next_midnight = kst_midnight_utc(suite_now.with_timezone(&kst()).date_naive() + Dur::days(1));
    let offset = suite_offset() + (next_midnight - suite_now).num_seconds() - 8;
    let svc = env.serve("all", &[("CLOCK_OFFSET_SECONDS", &offset.to_string())]).await;
    let service_now = || chrono::Utc::now() + Dur::seconds(offset);
    // 10^12 won earns about 634 won a second.
    env.snapshot(
        "dave",
        1,
        "1000000000000",
        &format_instant(service_now() - Dur::hours(1)),
    )
    .await;
    env.wait_accounts(1).await;
    let until = |t: chrono::DateTime<chrono::Utc>| (t - service_now()).to_std().unwrap_or_default();
    tokio::time::sleep(until(next_midnight - Dur::milliseconds(700))).await;
    let before = svc.claim("dave", "before-midnight").await;
    tokio::time::sleep(until(next_midnight + Dur::milliseconds(300))).await;
    let after = svc.claim("dave", "after-midnight").await;
    let again = svc.claim("dave", "same-day-again").await;
    assert_eq!((before.status, after.status), (201, 201), "{before:?} {after:?}");
    let day = |a: &crate::harness::Answer| a.body["business_date"].as_str().unwrap().to_owned();
    let today = next_midnight.with_timezone(&kst()).date_naive();
    assert_eq!(day(&before), (today - Dur::days(1)).to_string());
    assert_eq!(day(&after), today.to_string());
    assert_eq!(again.status, 409);
    assert_eq!(again.body["code"], "already_claimed_today");
    assert_eq!(
        again.body["next_claim_at"],
        format_instant(next_midnight + Dur::days(1))
    );
    env.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_snapshots_go_to_the_dlq_with_their_reason_and_good_ones_flow() {
    let env = Env::new(2).await;
    let _svc = env.serve("worker", &[]).await;
    let t = two_days_ago();
    let bad = [
        ("x1", "not json".to_owned(), "invalid_json"),
        (
            "x2",
            format!(r#"{{"account_id":"x2","seq":1,"balance":10.5,"currency":"KRW","as_of":"{t}"}}"#),
            "float_balance",
        ),
        (
            "x3",
            format!(r#"{{"account_id":"x3","seq":1,"balance":"-1","currency":"KRW","as_of":"{t}"}}"#),
            "negative_amount",
        ),
        (
            "x4",
            format!(r#"{{"account_id":"x4","seq":1,"balance":"1000000000000000000","currency":"KRW","as_of":"{t}"}}"#),
            "amount_too_large",
        ),
        (
            "x5",
            format!(r#"{{"account_id":"x5","seq":1,"balance":"1","currency":"KRW","as_of":"{t}","plan":"nope"}}"#),
            "unknown_plan",
        ),
        (
            "x6",
            format!(r#"{{"account_id":"x 6","seq":1,"balance":"1","currency":"KRW","as_of":"{t}"}}"#),
            "invalid_account_id",
        ),
        (
            "x7",
            format!(r#"{{"account_id":"x7","seq":0,"balance":"1","currency":"KRW","as_of":"{t}"}}"#),
            "invalid_seq",
        ),
        (
            "x8",
            r#"{"account_id":"x8","seq":1,"balance":"1","currency":"KRW","as_of":"yesterday"}"#.to_owned(),
            "invalid_timestamp",
        ),
    ];
    for (key, payload, _) in &bad {
        env.produce("balance-snapshots", key, payload).await;
    }
    // A sequence whose as_of runs backwards.
    env.snapshot("good", 1, "1000", &t).await;
    env.snapshot("good", 2, "2000", &format_instant(now() - Dur::days(3)))
        .await;
    env.snapshot("good2", 1, "1000", &t).await;
    env.wait_accounts(2).await;
    let dlq = env.read_topic("balance-snapshots.dlq", bad.len() + 1);
    let mut codes: Vec<String> = dlq
        .iter()
        .map(|(_, _, h)| {
            h.iter()
                .find(|(k, _)| k == "error")
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        })
        .collect();
    codes.sort();
    let mut want: Vec<String> = bad
        .iter()
        .map(|(_, _, c)| c.to_string())
        .chain(["as_of_backwards".to_owned()])
        .collect();
    want.sort();
    assert_eq!(codes, want);
    assert!(dlq
        .iter()
        .all(|(_, _, h)| h.iter().any(|(k, v)| k == "detail" && !v.is_empty())));
    let balance: String = sqlx::query_scalar(
        "SELECT balance::text FROM balance_points WHERE account_id = 'good' ORDER BY seq DESC LIMIT 1",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(balance, "1000", "the backwards snapshot was not applied");
    env.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_late_snapshots_correct_the_next_payout() {
    // A plan of the test's own with one rate for all time, so the correction
    // does not depend on the date the suite runs on (issue 13: the example
    // plan changes its rate on 2026-12-01).
    const RATE_PERCENT: i64 = 2;
    let plan = crate::support::flat_plan(
        "late-flat",
        &RATE_PERCENT.to_string(),
        "ACT/365F",
        "continuous",
        "carry",
    );
    let env = Env::new(2).await;
    env.import_plans(&format!(r#"{{"plans":[{plan}]}}"#));
    let svc = env.serve("all", &[("CLAIMS_PER_DAY", "5")]).await;
    let base = chrono::DateTime::from_timestamp(now().timestamp(), 0).unwrap();
    let d = |h: i64| format_instant(base - Dur::hours(h));
    let (balance, late_balance) = (36_500_000_i64, 73_000_000_i64);
    env.snapshot_on("late-flat", "erin", 1, &balance.to_string(), &d(72))
        .await;
    env.snapshot_on("late-flat", "erin", 3, &balance.to_string(), &d(24))
        .await;
    env.wait_count("SELECT count(*) FROM balance_points", 2).await;
    let first = svc.claim("erin", "e1").await;
    assert_eq!(first.status, 201);
    // seq 2 arrives late: the balance doubled from 48 h to 24 h ago, a day
    // already paid at the old balance.
    let late_as_of = d(48);
    env.snapshot_on("late-flat", "erin", 2, &late_balance.to_string(), &late_as_of)
        .await;
    env.snapshot_on("late-flat", "erin", 2, &late_balance.to_string(), &late_as_of)
        .await;
    env.wait_count("SELECT count(*) FROM balance_points", 3).await;
    let metrics_url = format!("http://{}/metrics", svc.admin);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = svc.client.get(&metrics_url).send().await.unwrap().text().await.unwrap();
        if m.contains(r#"balance_snapshots_total{outcome="duplicate"} 1"#) {
            assert!(m.contains(r#"balance_snapshots_total{outcome="late"} 1"#), "{m}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "duplicate never counted: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = svc.claim("erin", "e2").await;
    assert_eq!(second.status, 201, "{:?}", second.body);
    // One day (ACT/365F) of interest on the extra balance: an exact number of
    // won here (36,500,000 × 2% / 365 = 2,000), so no rounding to allow for.
    let correction = (late_balance - balance) * RATE_PERCENT / 100 / 365;
    assert_eq!(
        (late_balance - balance) * RATE_PERCENT % (100 * 365),
        0,
        "the expected correction is whole won"
    );
    let adj: i64 = second.body["adjustment"].as_str().unwrap().parse().unwrap();
    assert_eq!(adj, correction);
    let rows = payout_rows(&env.pool).await;
    assert_eq!(rows.len(), 2);
    env.drop_db().await;
}

/// Fires one claim per account (following 202s) and returns the answers.
async fn claim_all(svc: &crate::harness::Api, accounts: &[String]) -> HashMap<String, crate::harness::Answer> {
    let answers = futures::future::join_all(
        accounts
            .iter()
            .map(|a| async move { (a.clone(), svc.claim_to_end(a, &format!("key-{a}")).await) }),
    )
    .await;
    answers.into_iter().collect()
}

async fn load_accounts(env: &Env, n: usize) -> Vec<String> {
    let accounts: Vec<String> = (0..n).map(|i| format!("acct-{i:04}")).collect();
    for a in &accounts {
        env.snapshot(a, 1, "100000000", &two_days_ago()).await;
    }
    env.wait_accounts(n as i64).await;
    accounts
}

/// Every account answered 201 (possibly after a 202) has exactly one payout, and nothing else was paid.
async fn assert_exactly_once(env: &Env, answers: &HashMap<String, crate::harness::Answer>) {
    let paid: HashSet<&String> = answers
        .iter()
        .filter(|(_, a)| a.status == 201)
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        paid.len(),
        answers.len(),
        "every claim was paid: {:?}",
        answers.values().filter(|a| a.status != 201).take(3).collect::<Vec<_>>()
    );
    let rows = sqlx::query("SELECT account_id, count(*) FROM interest_payouts GROUP BY account_id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), paid.len());
    for r in rows {
        let (account, n): (String, i64) = (r.get(0), r.get(1));
        assert_eq!(n, 1, "{account} paid {n} times");
        assert!(paid.contains(&account));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_and_another_joining_lose_and_double_nothing() {
    let env = Env::new(4).await;
    let api = env.serve("api", &[("CLAIM_WAIT_MS", "1000")]).await;
    let mut w1 = env.serve("worker", &[]).await;
    let accounts = load_accounts(&env, 120).await;
    let (first, rest) = accounts.split_at(60);
    let answers_a = tokio::spawn({
        let (first, client) = (first.to_vec(), api.api.clone());
        async move { claim_all(&client, &first).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    w1.kill(); // SIGKILL in the middle of the stream
    let w2 = env.serve("worker", &[]).await;
    let w3_join = env.serve("worker", &[]).await; // a second worker joins mid-stream
    let mut answers = claim_all(&api, rest).await;
    answers.extend(answers_a.await.unwrap());
    assert_exactly_once(&env, &answers).await;
    let epochs: i64 = sqlx::query_scalar("SELECT max(owner_epoch) FROM consumer_offsets")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(epochs >= 2, "partitions changed owner (fencing epochs bumped)");
    // Every payout reaches interest-payouts with its payout_id.
    let ids: HashSet<String> = sqlx::query_scalar::<_, uuid::Uuid>("SELECT payout_id FROM interest_payouts")
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.to_string())
        .collect();
    env.wait_count("SELECT count(*) FROM payout_outbox WHERE published_at IS NULL", 0)
        .await;
    // At least once: a payout may appear twice after a kill, so read until every id is seen.
    let header_id = |r: &crate::harness::Record| r.2.iter().find(|(k, _)| k == "payout_id").map(|(_, v)| v.clone());
    let published = env.read_topic_until("interest-payouts", |records| {
        let seen: HashSet<String> = records.iter().filter_map(header_id).collect();
        ids.is_subset(&seen)
    });
    let seen: HashSet<String> = published
        .iter()
        .map(|(_, body, headers)| {
            let h = headers
                .iter()
                .find(|(k, _)| k == "payout_id")
                .map(|(_, v)| v.clone())
                .unwrap();
            assert_eq!(body["payout_id"], h.as_str());
            h
        })
        .collect();
    assert_eq!(seen, ids);
    drop((w2, w3_join));
    env.drop_db().await;
}

/// A worker that dies between its commit and the relay's publication leaves
/// a payout in the outbox. The next owner of that claims partition publishes
/// it even if no claim ever arrives on the partition again (it used to be
/// swept only once the new owner touched the partition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_a_dead_worker_left_unpublished_is_published_by_the_next_owner() {
    let env = Env::new(2).await;
    let api = env.serve("api", &[]).await;
    let mut w1 = env.serve("worker", &[]).await;
    env.snapshot("orphan", 1, "100000000", &two_days_ago()).await;
    env.wait_accounts(1).await;
    let paid = api.claim_to_end("orphan", "orphan-key").await;
    assert_eq!(paid.status, 201, "{:?}", paid.body);
    let unpublished = "SELECT count(*) FROM payout_outbox WHERE published_at IS NULL";
    env.wait_count(unpublished, 0).await;
    w1.kill();
    // As if it had died after its commit, before the relay marked the payout published.
    sqlx::query("UPDATE payout_outbox SET published_at = NULL")
        .execute(&env.pool)
        .await
        .unwrap();
    let _w2 = env.serve("worker", &[]).await;
    env.wait_count(unpublished, 0).await;
    let id = paid.body["payout_id"].as_str().unwrap().to_owned();
    let published = env.read_topic_until("interest-payouts", |records| {
        records.iter().filter(|r| r.1["payout_id"] == id.as_str()).count() >= 2
    });
    let copies = published.iter().filter(|r| r.1["payout_id"] == id.as_str()).count();
    assert_eq!(copies, 2, "published by the dead worker, and again by the next owner");
    env.drop_db().await;
}
