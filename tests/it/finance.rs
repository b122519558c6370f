//! Finance on the real broker and database: close-day under claim traffic and
//! after a kill, settle racing claims, the payout report cell by cell,
//! reconcile catching tampering, and the finance_reader role.
//!
//! "Now" is placed with CLOCK_OFFSET_SECONDS: the service lives inside the
//! business date under test (or just after it), and the batch commands run
//! with their own offset, e.g. at 00:05 KST of the next day.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Days, NaiveDate, Utc};
use interest_now::money::types::{kst, kst_midnight_utc};
use interest_now::money::ACCRUAL_DENOMINATOR as DEN;
use sqlx::Row;

use crate::harness::{offset_to, Env};

/// The test plans: flat 2.0% ACT/365F (carry and drop), and 3.65% daily close.
const PLANS: &str = r#"{"plans":[
  {"id":"fin-flat","currency":"KRW","day_count":"ACT/365F","accrual":"continuous","fraction":"carry",
   "schedule":[{"effective_from":"2020-01-01T00:00:00+09:00","tiers":[{"rate_percent":"2.0"}]}]},
  {"id":"fin-drop","currency":"KRW","day_count":"ACT/365F","accrual":"continuous","fraction":"drop",
   "schedule":[{"effective_from":"2020-01-01T00:00:00+09:00","tiers":[{"rate_percent":"2.0"}]}]},
  {"id":"fin-daily","currency":"KRW","day_count":"ACT/365F","accrual":"daily_close","fraction":"drop",
   "schedule":[{"effective_from":"2020-01-01T00:00:00+09:00","tiers":[{"rate_percent":"3.65"}]}]}]}"#;

/// Exact units of 2.0% ACT/365F on `balance` won for `secs` seconds
/// (units per second = balance × 2,000,000 micro-percent × 1,603,080 / 365).
fn flat_units(balance: i128, secs: i64) -> i128 {
    balance * 2_000_000 * 4_392 * secs as i128
}

fn won(n: i128) -> i128 {
    n * DEN
}

fn kst_today() -> NaiveDate {
    crate::harness::now().with_timezone(&kst()).date_naive()
}

fn days_before(d: NaiveDate, n: u64) -> NaiveDate {
    d.checked_sub_days(Days::new(n)).unwrap()
}

fn next(d: NaiveDate) -> NaiveDate {
    d.checked_add_days(Days::new(1)).unwrap()
}

fn rfc(t: DateTime<Utc>) -> String {
    interest_now::money::types::format_instant(t)
}

/// A fresh environment with the test plans imported.
async fn fin_env(partitions: i32) -> Env {
    let env = Env::new(partitions).await;
    env.import_plans(PLANS);
    env
}

/// Runs a batch command with the clock standing at `at`.
fn run_at(env: &Env, args: &[&str], at: DateTime<Utc>) -> Output {
    let mut cmd = env.command(args);
    cmd.env("CLOCK_OFFSET_SECONDS", offset_to(at));
    // A blocking wait: let the runtime move other tasks (a claim stream) off this thread.
    tokio::task::block_in_place(|| cmd.output().unwrap())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts success and returns stdout.
fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

async fn snap(
    env: &Env,
    account: &str,
    seq: u64,
    balance: &str,
    as_of: DateTime<Utc>,
    plan: &str,
    profile: Option<&str>,
) {
    let profile = profile.map(|p| format!(r#","tax_profile":"{p}""#)).unwrap_or_default();
    let json = format!(
        r#"{{"account_id":"{account}","seq":{seq},"balance":"{balance}","currency":"KRW","as_of":"{}","plan":"{plan}"{profile}}}"#,
        rfc(as_of)
    );
    env.produce("balance-snapshots", account, &json).await;
}

/// One daily_accruals row, exactly as stored (computed_at left out).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Journal {
    currency: String,
    accrued: i128,
    corrections: i128,
    paid: i128,
    start: i128,
    end: i128,
    accrued_shown: String,
    end_shown: String,
}

async fn journal(env: &Env, date: NaiveDate) -> BTreeMap<String, Journal> {
    let rows = sqlx::query(
        "SELECT account_id, currency, accrued_units::text, corrections_units::text, paid_units::text,
                liability_start_units::text, liability_end_units::text, accrued::text, liability_end::text
         FROM daily_accruals WHERE business_date = $1 ORDER BY account_id",
    )
    .bind(date)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let u = |r: &sqlx::postgres::PgRow, i: usize| r.get::<String, _>(i).parse::<i128>().unwrap();
    rows.iter()
        .map(|r| {
            let j = Journal {
                currency: r.get(1),
                accrued: u(r, 2),
                corrections: u(r, 3),
                paid: u(r, 4),
                start: u(r, 5),
                end: u(r, 6),
                accrued_shown: r.get(7),
                end_shown: r.get(8),
            };
            assert_eq!(
                j.end,
                j.start + j.accrued + j.corrections - j.paid,
                "identity of {}",
                r.get::<String, _>(0)
            );
            (r.get(0), j)
        })
        .collect()
}

/// (gross, dropped_units, carried_out_units, period_start, period_end) of an account's only payout of a kind.
async fn payout(env: &Env, account: &str, kind: &str) -> (i128, i128, i128, DateTime<Utc>, DateTime<Utc>) {
    let r = sqlx::query(
        "SELECT gross::text, dropped_units::text, carried_out_units::text, period_start, period_end
         FROM interest_payouts WHERE account_id = $1 AND kind = $2",
    )
    .bind(account)
    .bind(kind)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let n = |i: usize| r.get::<String, _>(i).parse::<i128>().unwrap();
    (n(0), n(1), n(2), r.get(3), r.get(4))
}

async fn wait_published(env: &Env) {
    env.wait_count("SELECT count(*) FROM payout_outbox WHERE published_at IS NULL", 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_day_is_the_same_cut_under_claim_traffic_on_rerun_and_an_hour_later() {
    let env = fin_env(2).await;
    let d = days_before(kst_today(), 3);
    let (t0, t) = (kst_midnight_utc(d), kst_midnight_utc(next(d)));
    let day_before = kst_midnight_utc(days_before(d, 1));
    // Phase 0: the service lives at 22:00 of D-1; the accounts open.
    let mut a0 = env
        .serve(
            "all",
            &[("CLOCK_OFFSET_SECONDS", &offset_to(t0 - chrono::Duration::hours(2)))],
        )
        .await;
    snap(&env, "f-const", 1, "36500000", day_before, "fin-flat", None).await;
    snap(&env, "f-claim", 1, "50000000", day_before, "fin-flat", None).await;
    snap(
        &env,
        "f-drop",
        1,
        "1234567",
        day_before + chrono::Duration::hours(3),
        "fin-drop",
        None,
    )
    .await;
    snap(
        &env,
        "f-daily",
        1,
        "1000000",
        days_before_at(d, 2, 10),
        "fin-daily",
        None,
    )
    .await;
    snap(&env, "f-late", 1, "36500000", day_before, "fin-flat", None).await;
    snap(&env, "f-late", 3, "36500000", t0, "fin-flat", None).await;
    let bulk: Vec<String> = (0..100).map(|i| format!("b-{i:03}")).collect();
    for b in &bulk {
        snap(&env, b, 1, "10000000", day_before, "fin-flat", None).await;
    }
    env.wait_count("SELECT count(*) FROM balance_points", 106).await;
    a0.sigterm();
    a0.wait_exit(Duration::from_secs(30));

    // Phase A: the service lives at noon of D: claims, a late snapshot, a new account.
    let mut a = env
        .serve(
            "all",
            &[("CLOCK_OFFSET_SECONDS", &offset_to(t0 + chrono::Duration::hours(12)))],
        )
        .await;
    // Learned during D: f-late's balance doubled from noon of D-1 (seq 2 arrives after seq 3).
    snap(
        &env,
        "f-late",
        2,
        "73000000",
        day_before + chrono::Duration::hours(12),
        "fin-flat",
        None,
    )
    .await;
    snap(
        &env,
        "f-new",
        1,
        "36500000",
        t0 + chrono::Duration::hours(6),
        "fin-flat",
        None,
    )
    .await;
    env.wait_count("SELECT count(*) FROM balance_points", 108).await;
    for acct in ["f-claim", "f-drop"]
        .iter()
        .copied()
        .chain(bulk[..10].iter().map(String::as_str))
    {
        let paid = a.claim_to_end(acct, &format!("d-{acct}")).await;
        assert_eq!(paid.status, 201, "{acct}: {:?}", paid.body);
    }
    a.sigterm();
    a.wait_exit(Duration::from_secs(30));

    // Phase B: the service lives just after midnight; claims of D+1 stream in.
    let b = env
        .serve(
            "all",
            &[("CLOCK_OFFSET_SECONDS", &offset_to(t + chrono::Duration::seconds(20)))],
        )
        .await;
    let stream = tokio::spawn({
        let (api, bulk) = (b.api.clone(), bulk.clone());
        async move {
            for acct in &bulk {
                let r = api.claim_to_end(acct, &format!("d1-{acct}")).await;
                assert_eq!(r.status, 201, "{acct}: {:?}", r.body);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
    });
    // Not known at the cut: f-const changes during D (received after T), f-after opens.
    snap(
        &env,
        "f-const",
        2,
        "0",
        t0 + chrono::Duration::hours(12),
        "fin-flat",
        None,
    )
    .await;
    snap(&env, "f-after", 1, "36500000", t0, "fin-flat", None).await;
    // Close-day starts once the stream is flowing (5 claims of D+1 paid).
    wait_for(|| async { env.payout_count().await >= 17 }).await;
    let first = ok(
        run_at(
            &env,
            &["close-day", "--date", &d.to_string()],
            t + chrono::Duration::minutes(5),
        ),
        "close-day",
    );
    assert!(!stream.is_finished(), "close-day ran while claims were being paid");
    assert!(first.contains("106 written, 0 already closed"), "{first}");
    let at_midnight = journal(&env, d).await;
    stream.await.unwrap();
    env.wait_count("SELECT count(*) FROM balance_points", 110).await;

    // Rerun: nothing written, nothing changed.
    let again = ok(
        run_at(
            &env,
            &["close-day", "--date", &d.to_string()],
            t + chrono::Duration::minutes(20),
        ),
        "rerun",
    );
    assert!(again.contains("0 written, 106 already closed"), "{again}");
    assert_eq!(journal(&env, d).await, at_midnight);
    // From scratch an hour later, after all that traffic: the same rows.
    sqlx::query("DELETE FROM daily_accruals")
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM day_closes").execute(&env.pool).await.unwrap();
    ok(
        run_at(
            &env,
            &["close-day", "--date", &d.to_string(), "--page-size", "7"],
            t + chrono::Duration::hours(1),
        ),
        "later",
    );
    assert_eq!(journal(&env, d).await, at_midnight);

    // The amounts themselves.
    let j = &at_midnight;
    assert_eq!(j.len(), 106);
    assert!(!j.contains_key("f-after"), "opened after the cut");
    let c = &j["f-const"];
    assert_eq!(
        (c.start, c.accrued, c.corrections, c.paid, c.end),
        (won(2000), won(2000), 0, 0, won(4000))
    );
    assert_eq!(
        (c.accrued_shown.as_str(), c.end_shown.as_str(), c.currency.as_str()),
        ("2000", "4000", "KRW")
    );
    let l = &j["f-late"];
    assert_eq!(
        (l.start, l.accrued, l.corrections, l.end),
        (won(2000), won(2000), won(1000), won(5000))
    );
    let n = &j["f-new"];
    assert_eq!((n.start, n.accrued, n.end), (0, won(1500), won(1500)));
    let dl = &j["f-daily"];
    assert_eq!(
        (dl.start, dl.accrued, dl.end),
        (won(200), won(100), won(300)),
        "closes of D-2, D-1, then D"
    );
    let (gross, _, carried, _, end) = payout(&env, "f-claim", "claim").await;
    let fc = &j["f-claim"];
    assert_eq!(fc.paid, won(gross));
    assert_eq!(fc.end, flat_units(50_000_000, (t - end).num_seconds()) + carried);
    assert_eq!(fc.start, flat_units(50_000_000, 86_400));
    let (gross, dropped, _, _, end) = payout(&env, "f-drop", "claim").await;
    let fd = &j["f-drop"];
    assert!(dropped > 0);
    assert_eq!(fd.paid, won(gross) + dropped);
    assert_eq!(
        fd.end,
        flat_units(1_234_567, (t - end).num_seconds()),
        "a drop payout leaves no remainder"
    );
    let unpaid = &j["b-050"];
    assert_eq!((unpaid.accrued, unpaid.paid), (flat_units(10_000_000, 86_400), 0));
    // The day before, closed too: each liability_start of D is that day's liability_end.
    let prev = days_before(d, 1);
    ok(
        run_at(
            &env,
            &["close-day", "--date", &prev.to_string()],
            t + chrono::Duration::hours(1),
        ),
        "close D-1",
    );
    let yesterday = journal(&env, prev).await;
    assert_eq!(yesterday.len(), 105, "f-new opened during D");
    for (account, row) in &yesterday {
        assert_eq!(row.end, j[account].start, "{account}");
    }
    wait_published(&env).await;
    let rec = ok(
        run_at(
            &env,
            &["reconcile", "--date", &d.to_string()],
            t + chrono::Duration::hours(1),
        ),
        "reconcile",
    );
    assert!(rec.contains("OK") && rec.contains("106 rows checked"), "{rec}");
    drop(b);
    env.drop_db().await;
}

fn days_before_at(d: NaiveDate, n: u64, hour: i64) -> DateTime<Utc> {
    kst_midnight_utc(days_before(d, n)) + chrono::Duration::hours(hour)
}

/// Polls `cond` until it holds (bounded).
async fn wait_for<F, Fut>(cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(Instant::now() < deadline, "condition not reached in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_day_killed_halfway_resumes_to_the_same_journal() {
    let env = fin_env(2).await;
    let d = days_before(kst_today(), 3);
    let t = kst_midnight_utc(next(d));
    let svc = env
        .serve(
            "all",
            &[("CLOCK_OFFSET_SECONDS", &offset_to(t - chrono::Duration::hours(2)))],
        )
        .await;
    let accounts: Vec<String> = (0..150).map(|i| format!("k-{i:03}")).collect();
    for (i, a) in accounts.iter().enumerate() {
        let as_of = days_before_at(d, 1, 0) + chrono::Duration::minutes(i as i64);
        snap(
            &env,
            a,
            1,
            &((i as u64 + 1) * 1_000_000).to_string(),
            as_of,
            "fin-flat",
            None,
        )
        .await;
    }
    env.wait_count("SELECT count(*) FROM balance_points", 150).await;
    for a in accounts.iter().step_by(10) {
        assert_eq!(svc.claim_to_end(a, &format!("k-{a}")).await.status, 201);
    }
    wait_published(&env).await;
    drop(svc);
    let date = d.to_string();
    let mut child = env
        .command(&["close-day", "--date", &date, "--page-size", "1"])
        .env("CLOCK_OFFSET_SECONDS", offset_to(t + chrono::Duration::minutes(5)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // SIGKILL as soon as the first rows are there.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM daily_accruals")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        if n > 0 || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        assert!(Instant::now() < deadline, "close-day wrote nothing in 30 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The server may still be finishing the killed client's last statement: wait for its session to end.
    env.wait_count(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
         AND application_name = 'interest-now-finance'",
        0,
    )
    .await;
    let partial: i64 = sqlx::query_scalar("SELECT count(*) FROM daily_accruals")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let later = t + chrono::Duration::hours(1);
    eprintln!("close-day killed after {partial} of 150 rows");
    if partial < 150 {
        let completed: Option<DateTime<Utc>> = sqlx::query_scalar("SELECT completed_at FROM day_closes")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        assert_eq!(completed, None, "a killed close-day is not complete");
        let rec = run_at(&env, &["reconcile", "--date", &date], later);
        assert_eq!(rec.status.code(), Some(1));
        assert!(text(&rec.stdout).contains("did not complete"), "{}", text(&rec.stdout));
    }
    let out = ok(
        run_at(&env, &["close-day", "--date", &date, "--page-size", "13"], later),
        "resume",
    );
    assert!(
        out.contains(&format!("{} written, {partial} already closed", 150 - partial)),
        "{out}"
    );
    let resumed = journal(&env, d).await;
    assert_eq!(resumed.len(), 150);

    // Half the rows lost: reconcile names them, a rerun restores exactly them.
    sqlx::query("DELETE FROM daily_accruals WHERE right(account_id, 1) IN ('1', '3', '5', '7', '9')")
        .execute(&env.pool)
        .await
        .unwrap();
    let rec = run_at(&env, &["reconcile", "--date", &date], later);
    assert_eq!(rec.status.code(), Some(1));
    assert!(
        text(&rec.stdout).contains("(b) account k-001: no daily_accruals row"),
        "{}",
        text(&rec.stdout)
    );
    let out = ok(run_at(&env, &["close-day", "--date", &date], later), "rerun");
    assert!(out.contains("75 written, 75 already closed"), "{out}");
    assert_eq!(journal(&env, d).await, resumed);
    // And from scratch.
    sqlx::query("DELETE FROM daily_accruals")
        .execute(&env.pool)
        .await
        .unwrap();
    ok(run_at(&env, &["close-day", "--date", &date], later), "from scratch");
    assert_eq!(journal(&env, d).await, resumed);
    for (i, a) in accounts.iter().enumerate() {
        let balance = (i as i128 + 1) * 1_000_000;
        assert_eq!(resumed[a].accrued, flat_units(balance, 86_400), "{a}");
    }
    ok(run_at(&env, &["reconcile", "--date", &date], later), "reconcile");
    env.drop_db().await;
}

/// An account's payouts in period order: (kind, gross, dropped, carried_out, start, end, business_date).
type PayoutRow = (String, i128, i128, i128, DateTime<Utc>, DateTime<Utc>, NaiveDate);

async fn payouts_of(env: &Env, account: &str) -> Vec<PayoutRow> {
    sqlx::query(
        "SELECT kind, gross::text, dropped_units::text, carried_out_units::text, period_start, period_end, business_date
         FROM interest_payouts WHERE account_id = $1 ORDER BY period_start, period_end",
    )
    .bind(account)
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        let n = |i: usize| r.get::<String, _>(i).parse::<i128>().unwrap();
        (r.get(0), n(1), n(2), n(3), r.get(4), r.get(5), r.get(6))
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_racing_claims_pays_every_interval_exactly_once() {
    let env = fin_env(2).await;
    let d = days_before(kst_today(), 3);
    let t = kst_midnight_utc(next(d));
    let start = t + chrono::Duration::seconds(90);
    let svc = env.serve("all", &[("CLOCK_OFFSET_SECONDS", &offset_to(start))]).await;
    let first = days_before_at(d, 1, 0);
    // s-00..s-39 claim (the first ten before the run, the rest racing it), s-q-* never claim,
    // s-tiny-* have less than a won due.
    let rich: Vec<String> = (0..40)
        .map(|i| format!("s-{i:02}"))
        .chain((0..5).map(|i| format!("s-q-{i}")))
        .collect();
    for a in &rich {
        snap(&env, a, 1, "100000000", first, "fin-flat", None).await;
    }
    for i in 0..5 {
        snap(&env, &format!("s-tiny-{i}"), 1, "100", first, "fin-flat", None).await;
    }
    env.wait_accounts(50).await;
    let date = d.to_string();

    // Not before the day is over (plus the grace).
    let early = run_at(&env, &["settle", "--date", &next(d).to_string()], start);
    assert_eq!(early.status.code(), Some(1));
    let err = text(&early.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("can run from"), "{err}");

    for a in &rich[..10] {
        assert_eq!(svc.claim_to_end(a, &format!("race-{a}")).await.status, 201);
    }
    // The race: settlement messages and claims on the same accounts at once.
    let settle = tokio::task::spawn_blocking({
        let mut cmd = env.command(&["settle", "--date", &date]);
        cmd.env("CLOCK_OFFSET_SECONDS", offset_to(start));
        move || cmd.output().unwrap()
    });
    let claims = tokio::spawn({
        let (api, racing) = (svc.api.clone(), rich[10..40].to_vec());
        async move {
            let api = &api;
            let claims = racing.iter().enumerate().map(|(i, a)| async move {
                tokio::time::sleep(Duration::from_millis(60 * i as u64)).await;
                (a.clone(), api.claim_to_end(a, &format!("race-{a}")).await)
            });
            futures::future::join_all(claims).await
        }
    });
    let (answers, settled) = (claims.await.unwrap(), settle.await.unwrap());
    let summary = ok(settled.clone(), "settle");
    assert!(
        summary.contains("50 in all, 50 settled by this run, 0 already settled"),
        "{summary}"
    );
    assert!(
        text(&settled.stderr).contains(&format!("settle {date}: 50/50 done")),
        "{}",
        text(&settled.stderr)
    );
    for (a, r) in &answers {
        assert_eq!(r.status, 201, "{a}: {:?}", r.body);
    }
    let settled_n: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts WHERE settled_through = $1")
        .bind(d)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(settled_n, 50);

    // Every interval paid once: periods contiguous from the first snapshot, and
    // what was paid plus the carried remainder is exactly the interest.
    let (mut auto_first, mut claim_first) = (0, 0);
    for (i, a) in rich.iter().enumerate() {
        let rows = payouts_of(&env, a).await;
        assert_eq!(rows[0].4, first, "{a}: paid from the first snapshot");
        for w in rows.windows(2) {
            assert_eq!(w[1].4, w[0].5, "{a}: contiguous, no overlap, no gap: {rows:?}");
        }
        let last = rows.last().unwrap();
        let paid: i128 = rows.iter().map(|r| won(r.1) + r.2).sum();
        assert_eq!(
            paid + last.3,
            flat_units(100_000_000, (last.5 - first).num_seconds()),
            "{a}"
        );
        if let Some(auto) = rows.iter().find(|r| r.0 == "auto") {
            assert_eq!(
                (auto.5, auto.6),
                (t, next(d)),
                "{a}: auto pays through 00:00 of D+1, dated D+1"
            );
        }
        let kinds: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        match (i, kinds.as_slice()) {
            (0..10, ["claim"]) => {}
            (10..40, ["claim"]) => claim_first += 1,
            (10..40, ["auto", "claim"]) => auto_first += 1,
            (40.., ["auto"]) => {}
            (_, other) => panic!("{a}: unexpected payouts {other:?}"),
        }
    }
    eprintln!("racing accounts: settle applied first {auto_first}, claim applied first {claim_first}");
    let tiny: i64 = sqlx::query_scalar("SELECT count(*) FROM interest_payouts WHERE account_id LIKE 's-tiny-%'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(tiny, 0, "less than one won is not paid");

    // Again: nothing produced, nothing paid.
    let before = env.payout_count().await;
    let again = ok(
        run_at(
            &env,
            &["settle", "--date", &date],
            start + chrono::Duration::minutes(10),
        ),
        "settle again",
    );
    assert!(again.contains("0 settled by this run, 50 already settled"), "{again}");
    assert_eq!(env.payout_count().await, before);

    wait_published(&env).await;
    let rec = ok(
        run_at(
            &env,
            &["reconcile", "--date", &next(d).to_string()],
            start + chrono::Duration::minutes(10),
        ),
        "reconcile",
    );
    assert!(rec.contains("OK") && rec.contains("close-day has not run"), "{rec}");
    env.drop_db().await;
}

/// Parses RFC 4180 CSV (quoted fields, doubled quotes, CRLF).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => assert_eq!(chars.next(), Some('\n'), "CRLF line ends"),
            (false, '\n') => panic!("bare LF"),
            (false, c) => field.push(c),
        }
        if !quoted && c == '\r' {
            row.push(std::mem::take(&mut field));
            rows.push(std::mem::take(&mut row));
        }
    }
    assert!(row.is_empty() && field.is_empty(), "the last line ends with CRLF");
    rows
}

fn fmt_kst(t: DateTime<Utc>) -> String {
    t.with_timezone(&kst())
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

/// Standard withholding: 14% truncated to 10 won, and 10% of that truncated to 10 won.
fn standard_tax(gross: i128) -> (i128, i128) {
    let income = gross * 14 / 1000 * 10;
    (income, income / 100 * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payout_report_shows_claims_auto_payouts_and_adjustments_cell_by_cell() {
    let env = fin_env(2).await;
    let r = days_before(kst_today(), 2);
    let r0 = kst_midnight_utc(r);
    let now = r0 + chrono::Duration::seconds(150);
    let svc = env.serve("all", &[("CLOCK_OFFSET_SECONDS", &offset_to(now))]).await;
    let first = days_before_at(r, 2, 0);
    snap(&env, "r-claim", 1, "50000000", first, "fin-flat", None).await;
    snap(&env, "r-auto", 1, "36500000", first, "fin-flat", Some("preferential")).await;
    snap(&env, "r-adj", 1, "36500000", first, "fin-flat", None).await;
    snap(&env, "r-adj", 3, "36500000", days_before_at(r, 1, 0), "fin-flat", None).await;
    env.wait_count("SELECT count(*) FROM balance_points", 4).await;
    ok(
        run_at(&env, &["settle", "--date", &days_before(r, 1).to_string()], now),
        "settle",
    );
    // Learned after the auto payout: r-adj's balance doubled from noon of R-2 (+1,000 won already paid for).
    snap(
        &env,
        "r-adj",
        2,
        "73000000",
        first + chrono::Duration::hours(12),
        "fin-flat",
        None,
    )
    .await;
    env.wait_count("SELECT count(*) FROM balance_points", 5).await;
    let key = r#"k,"1""#;
    assert_eq!(svc.claim_to_end("r-claim", key).await.status, 201);
    assert_eq!(svc.claim_to_end("r-adj", "adj-1").await.status, 201);

    let csv_text = ok(
        run_at(&env, &["report", "payouts", "--date", &r.to_string()], now),
        "report",
    );
    assert!(csv_text.contains(r#","k,""1""","#), "the key is quoted: {csv_text}");
    let rows = parse_csv(&csv_text);
    let header: Vec<&str> = rows[0].iter().map(String::as_str).collect();
    assert_eq!(header, interest_now::finance::report::PAYOUT_COLUMNS);
    assert_eq!(rows.len(), 6, "{csv_text}");
    let stored = sqlx::query(
        "SELECT payout_id::text, claim_id::text, account_id, kind, accepted_at, paid_at, period_end
         FROM interest_payouts WHERE business_date = $1 ORDER BY accepted_at, payout_id",
    )
    .bind(r)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let r0s = fmt_kst(r0);
    for (line, db) in rows[1..].iter().zip(&stored) {
        let cell: BTreeMap<&str, &str> = header.iter().copied().zip(line.iter().map(String::as_str)).collect();
        let (account, kind) = (db.get::<String, _>(2), db.get::<String, _>(3));
        assert_eq!(
            (cell["account_id"], cell["kind"]),
            (account.as_str(), kind.as_str()),
            "rows in accepted order"
        );
        assert_eq!(cell["payout_id"], db.get::<String, _>(0));
        assert_eq!(cell["claim_id"], db.get::<Option<String>, _>(1).unwrap_or_default());
        assert_eq!(cell["accepted_at"], fmt_kst(db.get(4)));
        assert_eq!(cell["paid_at"], fmt_kst(db.get(5)));
        assert_eq!(
            (cell["business_date"], cell["plan_id"], cell["currency"]),
            (r.to_string().as_str(), "fin-flat", "KRW")
        );
        let end: DateTime<Utc> = db.get(6);
        // period_start, period_end, gross, income_tax, local_tax, rural_tax, adjustment, net
        let want: Vec<String> = match (account.as_str(), kind.as_str()) {
            ("r-auto", "auto") => cells(&fmt_kst(first), &r0s, &["4000", "360", "0", "20", "0", "3620"]),
            ("r-claim", "auto") => cells(&fmt_kst(first), &r0s, &["5479", "760", "70", "0", "0", "4649"]),
            ("r-adj", "auto") => cells(&fmt_kst(first), &r0s, &["4000", "560", "50", "0", "0", "3390"]),
            ("r-adj", "claim") => {
                assert_eq!(cell["idempotency_key"], "adj-1");
                let gross = (flat_units(36_500_000, (end - r0).num_seconds()) + won(1000)) / DEN;
                let (it, lt) = standard_tax(gross);
                let amounts = [gross, it, lt, 0, 1000, gross - it - lt].map(|n| n.to_string());
                cells(&r0s, &fmt_kst(end), &amounts.each_ref().map(String::as_str))
            }
            ("r-claim", "claim") => {
                assert_eq!(cell["idempotency_key"], key);
                // The auto payout carried 0.45 won: everything through `end`, less the 5,479 paid.
                let gross = flat_units(50_000_000, (end - first).num_seconds()) / DEN - 5479;
                let (it, lt) = standard_tax(gross);
                let amounts = [gross, it, lt, 0, 0, gross - it - lt].map(|n| n.to_string());
                cells(&r0s, &fmt_kst(end), &amounts.each_ref().map(String::as_str))
            }
            other => panic!("unexpected payout {other:?}"),
        };
        let cols = [
            "period_start",
            "period_end",
            "gross",
            "income_tax",
            "local_tax",
            "rural_tax",
            "adjustment",
            "net",
        ];
        let got: Vec<&str> = cols.iter().map(|c| cell[c]).collect();
        assert_eq!(got, want, "{account} {kind}");
        if kind == "auto" {
            assert_eq!((cell["claim_id"], cell["idempotency_key"]), ("", ""));
        }
    }

    // JSON Lines: the same cells; absent ids are null.
    let json = ok(
        run_at(
            &env,
            &["report", "payouts", "--date", &r.to_string(), "--format", "json"],
            now,
        ),
        "json",
    );
    let objects: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(objects.len(), 5);
    for (obj, line) in objects.iter().zip(&rows[1..]) {
        for (col, cell) in header.iter().zip(line) {
            match &obj[col] {
                serde_json::Value::Null => assert_eq!(cell, "", "{col}"),
                v => assert_eq!(v.as_str().unwrap(), cell, "{col}"),
            }
        }
    }
    // To a file: the same bytes, nothing on stdout.
    let path = std::env::temp_dir().join(format!("{}-payouts.csv", env.name));
    let to_file = ok(
        run_at(
            &env,
            &[
                "report",
                "payouts",
                "--date",
                &r.to_string(),
                "-o",
                path.to_str().unwrap(),
            ],
            now,
        ),
        "report -o",
    );
    assert_eq!(
        (to_file.as_str(), std::fs::read_to_string(&path).unwrap()),
        ("", csv_text.clone())
    );
    let _ = std::fs::remove_file(&path);

    // Withholding of the month: the sums of the rows above.
    let month = r.format("%Y-%m").to_string();
    let w = ok(
        run_at(&env, &["report", "withholding", "--month", &month], now),
        "withholding",
    );
    let sum = |col: &str| -> i128 {
        let i = header.iter().position(|h| *h == col).unwrap();
        rows[1..].iter().map(|l| l[i].parse::<i128>().unwrap()).sum()
    };
    let (it, lt, rt) = (sum("income_tax"), sum("local_tax"), sum("rural_tax"));
    assert_eq!(
        parse_csv(&w),
        vec![
            vec!["month", "currency", "income_tax", "local_tax", "rural_tax", "total"]
                .into_iter()
                .map(String::from)
                .collect(),
            vec![
                month.clone(),
                "KRW".into(),
                it.to_string(),
                lt.to_string(),
                rt.to_string(),
                (it + lt + rt).to_string()
            ],
        ]
    );
    env.drop_db().await;
}

fn cells(start: &str, end: &str, amounts: &[&str]) -> Vec<String> {
    [start, end].iter().chain(amounts).map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_names_the_accounts_whose_money_does_not_add_up() {
    let env = fin_env(2).await;
    let x = days_before(kst_today(), 3);
    let t = kst_midnight_utc(next(x));
    let svc = env
        .serve(
            "all",
            &[("CLOCK_OFFSET_SECONDS", &offset_to(t - chrono::Duration::minutes(10)))],
        )
        .await;
    let accounts = ["t-ok", "t-gross", "t-outbox", "t-overlap", "t-net", "t-miss"];
    for a in accounts {
        snap(&env, a, 1, "50000000", days_before_at(x, 1, 0), "fin-flat", None).await;
    }
    env.wait_accounts(accounts.len() as i64).await;
    for a in accounts {
        assert_eq!(svc.claim_to_end(a, &format!("rk-{a}")).await.status, 201);
    }
    wait_published(&env).await;
    let date = x.to_string();
    let later = t + chrono::Duration::minutes(5);
    ok(run_at(&env, &["close-day", "--date", &date], later), "close-day");
    let clean = ok(run_at(&env, &["reconcile", "--date", &date], later), "clean reconcile");
    assert!(clean.starts_with(&format!("reconcile {date}: OK")), "{clean}");

    // Tampering the CHECK constraints allow.
    for sql in [
        "UPDATE interest_payouts SET gross = gross + 10, net = net + 10,
                accrued_units = accrued_units + 10 * 13850611200000000000 WHERE account_id = 't-gross'",
        "DELETE FROM payout_outbox WHERE payout_id IN (SELECT payout_id FROM interest_payouts WHERE account_id = 't-outbox')",
        "INSERT INTO interest_payouts (payout_id, claim_id, account_id, kind, business_date, period_start, period_end,
             plan_id, rates, gross, income_tax, local_tax, rural_tax, adjustment, net, currency, accrued_units,
             carried_in_units, carried_out_units, dropped_units, idempotency_key, accepted_at, tax_profile)
         SELECT gen_random_uuid(), NULL, account_id, 'auto', business_date, period_start + interval '1 hour', period_end,
             plan_id, rates, gross, income_tax, local_tax, rural_tax, adjustment, net, currency, accrued_units,
             carried_in_units, carried_out_units, dropped_units, NULL, accepted_at, tax_profile
         FROM interest_payouts WHERE account_id = 't-overlap'",
        "INSERT INTO payout_outbox (payout_id, partition, message_key, payload, published_at)
         SELECT payout_id, 0, account_id, '{}', now() FROM interest_payouts WHERE account_id = 't-overlap' AND kind = 'auto'",
        "DELETE FROM daily_accruals WHERE account_id = 't-miss'",
    ] {
        sqlx::query(sql).execute(&env.pool).await.unwrap();
    }
    // What the CHECKs forbid: drop them in this throwaway database to see reconcile's own check.
    let checks: Vec<String> = sqlx::query_scalar(
        "SELECT conname::text FROM pg_constraint WHERE conrelid = 'interest_payouts'::regclass AND contype = 'c'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    for c in checks {
        sqlx::query(&format!("ALTER TABLE interest_payouts DROP CONSTRAINT {c}"))
            .execute(&env.pool)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE interest_payouts SET net = net - 10 WHERE account_id = 't-net'")
        .execute(&env.pool)
        .await
        .unwrap();

    let out = run_at(&env, &["reconcile", "--date", &date], later);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for want in [
        "(a) account t-net: payout ",
        "(b) account t-gross: paid_units ",
        "(b) account t-miss: no daily_accruals row",
        "(c) account t-outbox: payout ",
        "(d) account t-overlap: paid twice",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    assert!(
        stdout.contains("(off by -10)") && stdout.contains("has no outbox row"),
        "{stdout}"
    );
    assert!(!stdout.contains("t-ok"), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("reconcile {date}: ")) && stderr.contains("on 5 account(s)"),
        "{stderr}"
    );
    env.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finance_reader_reads_the_finance_tables_and_nothing_else() {
    let env = Env::new(1).await;
    // A person's login granted the group role (finance_reader itself is NOLOGIN).
    let login = crate::privilege::Login::create(&env, Some("finance_reader")).await;
    let reader = sqlx::PgPool::connect(&login.url).await.unwrap();
    for view in [
        "interest_payouts",
        "daily_accruals",
        "day_closes",
        "payout_daily_summary",
        "monthly_withholding",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {view}"))
            .fetch_one(&reader)
            .await
            .unwrap();
        assert_eq!(n, 0, "{view}");
    }
    for sql in [
        "INSERT INTO daily_accruals (account_id, business_date, currency, accrued_units, corrections_units, paid_units,
             liability_start_units, liability_end_units, accrued, liability_end) VALUES ('x', '2026-01-01', 'KRW', 0, 0, 0, 0, 0, 0, 0)",
        "UPDATE interest_payouts SET net = net",
        "DELETE FROM daily_accruals",
        "TRUNCATE interest_payouts",
        "SELECT * FROM idempotency_keys",
        "SELECT * FROM payout_outbox",
        "SELECT * FROM accounts",
        "SELECT * FROM balance_points",
        "SELECT * FROM claims",
        "SELECT * FROM consumer_offsets",
        "SELECT * FROM rate_plans",
    ] {
        let err = sqlx::query(sql).execute(&reader).await.expect_err(sql);
        let code = err.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{sql}: {err}");
    }
    reader.close().await;
    env.drop_db().await;
    login.drop().await;
}

#[test]
fn finance_commands_refuse_bad_arguments_with_2_and_an_unfinished_day_with_1() {
    let bin = env!("CARGO_BIN_EXE_interest-now");
    let run = |args: &[&str]| {
        Command::new(bin)
            .args(args)
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("CLOCK_OFFSET_SECONDS", crate::harness::suite_offset().to_string())
            .output()
            .unwrap()
    };
    for args in [
        &["close-day", "--date", "2026-02-30"][..],
        &["close-day", "--date", "2026-11-01", "--page-size", "0"],
        &["settle", "--date", "tomorrow"],
        &["report", "payouts", "--date", "2026-11-01", "--format", "xml"],
        &["report", "withholding", "--month", "2026-1"],
        &["report", "withholding", "--month", "2026-13"],
        &["reconcile", "--date", "20261101"],
    ] {
        let out = run(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
    for cmd in ["close-day", "settle"] {
        let out = run(&[cmd, "--date", &kst_today().to_string()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        assert_eq!(err.lines().count(), 1, "{cmd}: {err}");
        assert!(err.contains("can run from"), "{cmd}: {err}");
    }
}

/// A small deterministic generator (xorshift64*) for the fixture below.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Writes `accounts` accounts with a random history straight into the
/// tables (SQL, not the pipeline: `received_at` must spread over many days):
/// points in as_of order, each received on time or up to five days late
/// (late by seq, as a correction), and auto payouts with their published outbox rows.
async fn write_history(env: &Env, first: NaiveDate, days: u64, accounts: usize) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let start = kst_midnight_utc(first) - chrono::Duration::days(2);
    let span_secs = ((days + 2) * 86_400) as i64;
    for i in 0..accounts {
        let id = format!("h-{i:03}");
        let plan = if i % 3 == 0 { "fin-daily" } else { "fin-flat" };
        let mut as_of: Vec<DateTime<Utc>> = (0..1 + rng.below(12))
            .map(|_| start + chrono::Duration::milliseconds(rng.below(span_secs as u64 * 1_000) as i64))
            .collect();
        as_of.sort();
        for (seq, at) in as_of.iter().enumerate() {
            let late = rng.below(10) < 3;
            let delay = rng.below(if late { 5 * 86_400 } else { 7_200 }) as i64;
            sqlx::query(
                "INSERT INTO balance_points (account_id, seq, as_of, balance, plan_id, received_at)
                 VALUES ($1, $2, $3, $4::numeric, $5, $6)",
            )
            .bind(&id)
            .bind(seq as i64 + 1)
            .bind(at)
            .bind((rng.below(900_000_000) * 1_000).to_string())
            .bind(plan)
            .bind(*at + chrono::Duration::seconds(delay))
            .execute(&env.pool)
            .await
            .unwrap();
        }
        let first_at = DateTime::from_timestamp(as_of[0].timestamp(), 0).unwrap();
        sqlx::query(
            "INSERT INTO accounts (account_id, currency, tax_profile, last_seq, paid_through, checkpoint_at)
             VALUES ($1, 'KRW', 'standard', $2, $3, $3)",
        )
        .bind(&id)
        .bind(as_of.len() as i64)
        .bind(first_at)
        .execute(&env.pool)
        .await
        .unwrap();
        for day in 0..days {
            if rng.below(4) == 0 {
                let at = kst_midnight_utc(first + Days::new(day)) + chrono::Duration::seconds(rng.below(86_400) as i64);
                write_auto_payout(
                    env,
                    &id,
                    at,
                    rng.below(5_000) as i128 + 1,
                    rng.below(DEN as u64) as i128,
                )
                .await;
            }
        }
    }
}

async fn write_auto_payout(env: &Env, account: &str, at: DateTime<Utc>, gross: i128, dropped: i128) {
    sqlx::query(
        "WITH p AS (
             INSERT INTO interest_payouts (payout_id, account_id, kind, business_date, period_start, period_end,
                 plan_id, rates, gross, income_tax, local_tax, rural_tax, adjustment, net, currency, accrued_units,
                 carried_in_units, carried_out_units, dropped_units, accepted_at, tax_profile)
             VALUES (gen_random_uuid(), $1, 'auto', ($2 AT TIME ZONE 'Asia/Seoul')::date, $2 - interval '1 hour', $2,
                 'fin-flat', '[]', $3::numeric, 0, 0, 0, 0, $3::numeric, 'KRW', $4::numeric, 0, 0, $5::numeric, $2,
                 'standard')
             RETURNING payout_id)
         INSERT INTO payout_outbox (payout_id, partition, message_key, payload, published_at)
         SELECT payout_id, 0, $1, '{}', now() FROM p",
    )
    .bind(account)
    .bind(at)
    .bind(gross.to_string())
    .bind((gross * DEN + dropped).to_string())
    .bind(dropped.to_string())
    .execute(&env.pool)
    .await
    .unwrap();
}

/// "computed: N from the previous day's row" of a close-day output.
fn from_previous(out: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.contains("computed:"))
        .expect("the computed line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_incremental_close_writes_the_rows_of_the_full_recomputation_day_after_day() {
    let env = fin_env(2).await;
    let (days, accounts) = (10_u64, 40_usize);
    let first = days_before(kst_today(), days + 3);
    write_history(&env, first, days, accounts).await;
    let dates: Vec<NaiveDate> = (0..days).map(|n| first + Days::new(n)).collect();
    let later = crate::harness::now();
    let mut incremental = Vec::new();
    let mut chained = 0;
    for d in &dates {
        let out = ok(
            run_at(&env, &["close-day", "--date", &d.to_string()], later),
            "close-day",
        );
        chained += from_previous(&out);
        incremental.push(journal(&env, *d).await);
    }
    assert!(chained > 100, "most rows come from the previous day's row ({chained})");
    assert!(
        incremental.last().unwrap().len() > 30,
        "most accounts exist by the last day"
    );
    sqlx::query("DELETE FROM daily_accruals")
        .execute(&env.pool)
        .await
        .unwrap();
    for (d, expected) in dates.iter().zip(&incremental) {
        let out = ok(
            run_at(&env, &["close-day", "--date", &d.to_string(), "--full"], later),
            "full",
        );
        assert_eq!(from_previous(&out), 0, "{out}");
        assert_eq!(
            &journal(&env, *d).await,
            expected,
            "{d}: incremental and full rows differ"
        );
        ok(
            run_at(&env, &["reconcile", "--date", &d.to_string()], later),
            "reconcile",
        );
    }
    // A rerun writes nothing and changes nothing.
    let d = dates[6].to_string();
    let out = ok(run_at(&env, &["close-day", "--date", &d], later), "rerun");
    assert!(out.contains(" 0 written,"), "{out}");
    assert_eq!(journal(&env, dates[6]).await, incremental[6]);
    // Killed halfway through an incremental day, then resumed: the same rows.
    sqlx::query("DELETE FROM daily_accruals WHERE business_date = $1")
        .bind(dates[6])
        .execute(&env.pool)
        .await
        .unwrap();
    kill_after_first_rows(&env, &d, later).await;
    let out = ok(
        run_at(&env, &["close-day", "--date", &d, "--page-size", "7"], later),
        "resume",
    );
    assert!(from_previous(&out) > 0, "{out}");
    assert_eq!(journal(&env, dates[6]).await, incremental[6]);
    let audit = ok(
        run_at(&env, &["reconcile", "--date", &d, "--recompute"], later),
        "audit",
    );
    assert!(audit.contains("rows recomputed from the whole history"), "{audit}");
    // A row that still adds up and continues the chain, but moves accrual into corrections:
    // only the recomputation sees it.
    sqlx::query(
        "UPDATE daily_accruals SET accrued_units = accrued_units + 1, corrections_units = corrections_units - 1,
                accrued = accrued WHERE business_date = $1 AND account_id = 'h-004'",
    )
    .bind(dates[6])
    .execute(&env.pool)
    .await
    .unwrap();
    ok(
        run_at(&env, &["reconcile", "--date", &d], later),
        "reconcile without the audit",
    );
    let audit = run_at(&env, &["reconcile", "--date", &d, "--recompute"], later);
    assert_eq!(audit.status.code(), Some(1), "{}", text(&audit.stdout));
    assert!(
        text(&audit.stdout).contains("(b) account h-004: stored"),
        "{}",
        text(&audit.stdout)
    );
    env.drop_db().await;
}

/// Starts close-day one account per page and SIGKILLs it once a row of `date` is written.
async fn kill_after_first_rows(env: &Env, date: &str, at: DateTime<Utc>) {
    let mut child = env
        .command(&["close-day", "--date", date, "--page-size", "1"])
        .env("CLOCK_OFFSET_SECONDS", offset_to(at))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM daily_accruals WHERE business_date = $1::date")
            .bind(date)
            .fetch_one(&env.pool)
            .await
            .unwrap();
        if n > 0 || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        assert!(Instant::now() < deadline, "close-day wrote nothing in 30 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    env.wait_count(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
         AND application_name = 'interest-now-finance'",
        0,
    )
    .await;
}
