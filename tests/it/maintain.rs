//! `interest-now maintain` (issue 10 items 3–4): partitions created ahead and
//! dropped when expired (never one with a row that must stay), idempotent,
//! safe under a stream of claims (nothing lost, nothing paid twice, no claim
//! blocked), keys expired after IDEMPOTENCY_KEY_TTL, the double-payment guards
//! of the partitioned payouts table, indexes for every periodic query, and
//! one-line errors for bad settings.

use std::time::{Duration, Instant};

use chrono::{Days, NaiveDate};
use interest_now::money::types::{business_date, format_instant, kst_midnight_utc};
use serde_json::Value;

use crate::harness::{now, Env};

fn two_days_ago() -> String {
    format_instant(now() - chrono::Duration::days(2))
}

/// Runs `maintain` (with extra environment) and returns its one JSON line.
fn maintain(env: &Env, extra: &[(&str, &str)]) -> Value {
    let mut cmd = env.command(&["maintain"]);
    cmd.envs(extra.iter().copied());
    let out = cmd.output().expect("maintain runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "maintain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
    serde_json::from_str(stdout.trim()).expect("a JSON line")
}

fn list(v: &Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} in {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

async fn exec(env: &Env, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn scalar(env: &Env, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&env.pool).await.unwrap()
}

/// A daily partition of `table` for the KST day `d`, as maintain names them.
async fn day_partition(env: &Env, table: &str, d: NaiveDate) -> String {
    let name = format!("{table}_p{}", d.format("%Y%m%d"));
    let (lo, hi) = (kst_midnight_utc(d), kst_midnight_utc(d + Days::new(1)));
    exec(
        env,
        &format!("CREATE TABLE {name} PARTITION OF {table} FOR VALUES FROM ('{lo}') TO ('{hi}')"),
    )
    .await;
    name
}

/// Old partitions: one maintain must drop (claims all done, outbox all
/// published) and two it must keep (an accepted claim, an unpublished payout).
async fn old_partitions(env: &Env) -> (Vec<String>, Vec<String>) {
    let today = business_date(now());
    let (d30, d31) = (today - Days::new(30), today - Days::new(31));
    let claims_done = day_partition(env, "claims", d31).await;
    let claims_accepted = day_partition(env, "claims", d30).await;
    let outbox_published = day_partition(env, "payout_outbox", d31).await;
    let outbox_pending = day_partition(env, "payout_outbox", d30).await;
    for (table, state) in [(&claims_done, "done"), (&claims_accepted, "accepted")] {
        let (status, body) = if state == "done" {
            ("201", "'{}'")
        } else {
            ("NULL", "NULL")
        };
        let at = kst_midnight_utc(table_day(table)) + chrono::Duration::hours(1);
        exec(
            env,
            &format!(
                "INSERT INTO claims (claim_id, idempotency_key, account_id, accepted_at, business_date, state, status, body)
                 SELECT gen_random_uuid(), 'old-' || i, 'old', '{at}', current_date, '{state}', {status}, {body}
                 FROM generate_series(1, 3) i"
            ),
        )
        .await;
    }
    for (table, published) in [(&outbox_published, "now()"), (&outbox_pending, "NULL")] {
        let at = kst_midnight_utc(table_day(table)) + chrono::Duration::hours(1);
        exec(
            env,
            &format!(
                "INSERT INTO payout_outbox (payout_id, partition, message_key, payload, created_at, published_at)
                 VALUES (gen_random_uuid(), 0, 'old', '{{}}', '{at}', {published})"
            ),
        )
        .await;
    }
    (
        vec![claims_done, outbox_published],
        vec![claims_accepted, outbox_pending],
    )
}

fn table_day(partition: &str) -> NaiveDate {
    let digits = &partition[partition.len() - 8..];
    NaiveDate::parse_from_str(digits, "%Y%m%d").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintain_creates_ahead_drops_what_expired_keeps_what_must_stay_and_twice_is_a_no_op() {
    let env = Env::new(1).await;
    let (expired, must_stay) = old_partitions(&env).await;
    let first = maintain(&env, &[]);
    let dropped = list(&first, "dropped");
    for p in &expired {
        assert!(dropped.contains(p), "{p} dropped: {first}");
    }
    let kept = first["kept"].to_string();
    for p in &must_stay {
        assert!(!dropped.contains(p) && kept.contains(p.as_str()), "{p} kept: {first}");
    }
    // A week of days and a quarter of months ahead exist after any run.
    let ahead = business_date(now()) + Days::new(7);
    for t in ["claims", "payout_outbox", "dead_letters"] {
        let name = format!("{t}_p{}", ahead.format("%Y%m%d"));
        assert_eq!(
            scalar(&env, &format!("SELECT count(*) FROM pg_class WHERE relname = '{name}'")).await,
            1
        );
    }
    assert_eq!(first["balance_points"], "kept: close-day has never run", "{first}");
    let second = maintain(&env, &[]);
    assert!(
        list(&second, "created").is_empty(),
        "second run creates nothing: {second}"
    );
    assert!(
        list(&second, "dropped").is_empty(),
        "second run drops nothing: {second}"
    );
    assert_eq!(second["idempotency_keys_deleted"], 0);
    // The rows that had to stay are still there.
    assert_eq!(
        scalar(&env, "SELECT count(*) FROM claims WHERE state = 'accepted'").await,
        3
    );
    assert_eq!(
        scalar(&env, "SELECT count(*) FROM payout_outbox WHERE published_at IS NULL").await,
        1
    );
    env.drop_db().await;
}

/// Claims keep flowing while maintain runs, again and again, with real work
/// to do each time (expired partitions to drop): every claim is answered
/// 201 promptly, paid once, and no claim row is doubled or left accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintain_during_a_stream_of_claims_loses_nothing_and_pays_nothing_twice() {
    let env = Env::new(2).await;
    let accounts: Vec<String> = (0..60).map(|i| format!("stream-{i}")).collect();
    for a in &accounts {
        env.snapshot(a, 1, "50000000", &two_days_ago()).await;
    }
    let svc = env.serve("all", &[]).await;
    env.wait_accounts(accounts.len() as i64).await;
    let api = svc.api.clone();
    let stream = tokio::spawn(async move {
        let mut answers = Vec::new();
        for (i, a) in accounts.iter().enumerate() {
            let started = Instant::now();
            let r = api.claim(a, &format!("stream-key-{i}")).await;
            answers.push((r.status, started.elapsed()));
        }
        answers
    });
    let mut runs = Vec::new();
    while !stream.is_finished() {
        old_partitions_for_drop(&env, runs.len() as u64).await;
        let started = Instant::now();
        let v = maintain(&env, &[]);
        runs.push((started.elapsed(), list(&v, "dropped").len()));
    }
    let answers = stream.await.unwrap();
    assert!(runs.len() >= 2, "maintain ran during the stream: {runs:?}");
    let slowest = answers.iter().map(|a| a.1).max().unwrap();
    assert!(answers.iter().all(|a| a.0 == 201), "{answers:?}");
    assert!(slowest < Duration::from_secs(2), "no claim waited long: {slowest:?}");
    assert_eq!(env.payout_count().await, 60);
    let once = "SELECT count(*) FROM (SELECT claim_id FROM interest_payouts GROUP BY claim_id HAVING count(*) > 1) d";
    assert_eq!(scalar(&env, once).await, 0, "no claim paid twice");
    let doubled = "SELECT count(*) FROM (SELECT claim_id FROM claims GROUP BY claim_id HAVING count(*) > 1) d";
    assert_eq!(scalar(&env, doubled).await, 0, "one claims row per claim");
    assert_eq!(
        scalar(&env, "SELECT count(*) FROM claims WHERE state = 'accepted'").await,
        0
    );
    env.wait_count("SELECT count(*) FROM payout_outbox WHERE published_at IS NULL", 0)
        .await;
    eprintln!("maintain runs during the stream (elapsed, dropped): {runs:?}; slowest claim {slowest:?}");
    env.drop_db().await;
}

/// An expired claims partition (done rows) for maintain to drop in run `n`.
async fn old_partitions_for_drop(env: &Env, n: u64) {
    let d = business_date(now()) - Days::new(40 + n);
    let name = day_partition(env, "claims", d).await;
    let at = kst_midnight_utc(d) + chrono::Duration::hours(1);
    exec(
        env,
        &format!(
            "INSERT INTO {name} (claim_id, idempotency_key, account_id, accepted_at, business_date, state, status, body)
             SELECT gen_random_uuid(), 'k' || i, 'old', '{at}', '{d}', 'done', 201, '{{}}'
             FROM generate_series(1, 2000) i"
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_maintain_an_expired_key_replays_nothing_and_a_live_key_still_replays() {
    let env = Env::new(1).await;
    let ttl = [("IDEMPOTENCY_KEY_TTL", "2s")];
    let svc = env.serve("all", &ttl).await;
    env.snapshot("old-key", 1, "50000000", &two_days_ago()).await;
    env.snapshot("live-key", 1, "50000000", &two_days_ago()).await;
    env.wait_accounts(2).await;
    let expired = svc.claim("old-key", "k-expired").await;
    assert_eq!(expired.status, 201, "{expired:?}");
    // The TTL and the deletion margin (min(TTL, 60 s)) pass.
    tokio::time::sleep(Duration::from_millis(4_300)).await;
    let live = svc.claim("live-key", "k-live").await;
    assert_eq!(live.status, 201, "{live:?}");
    let v = maintain(&env, &ttl);
    assert_eq!(v["idempotency_keys_deleted"], 1, "{v}");
    let gone = "SELECT count(*) FROM idempotency_keys WHERE idempotency_key = 'k-expired'";
    assert_eq!(scalar(&env, gone).await, 0);
    let replay = svc.claim("live-key", "k-live").await;
    assert!(
        replay.replayed && replay.body == live.body,
        "the live key replays: {replay:?}"
    );
    let again = svc.claim("old-key", "k-expired").await;
    assert!(!again.replayed, "an expired key replays nothing: {again:?}");
    assert_eq!(again.body["code"], "already_claimed_today", "a new claim: {again:?}");
    assert_eq!(env.payout_count().await, 2);
    env.drop_db().await;
}

/// A payout row for the guard test (USD: the KRW units CHECK does not apply).
fn payout_sql(claim: &str, account: &str, kind: &str, start: &str, end: &str) -> String {
    let (claim, key) = if kind == "claim" {
        (format!("'{claim}'"), "'k'")
    } else {
        ("NULL".to_owned(), "NULL")
    };
    format!(
        "INSERT INTO interest_payouts (payout_id, claim_id, account_id, kind, business_date, period_start, period_end,
             plan_id, rates, gross, income_tax, local_tax, rural_tax, adjustment, net, currency, accrued_units,
             carried_in_units, carried_out_units, dropped_units, idempotency_key, accepted_at, tax_profile)
         VALUES (gen_random_uuid(), {claim}, '{account}', '{kind}', '2026-12-01', '{start}', '{end}', 'p', '[]',
                 1, 0, 0, 0, 0, 1, 'USD', 0, 0, 0, 0, {key}, '{end}', 'exempt')"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partitioned_payouts_table_refuses_every_double_payment_it_guards() {
    let env = Env::new(1).await;
    let claim = uuid::Uuid::new_v4().to_string();
    let (s, e) = ("2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z");
    exec(&env, &payout_sql(&claim, "g", "claim", s, e)).await;
    exec(
        &env,
        &payout_sql("", "g", "auto", "2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z"),
    )
    .await;
    let attempts = [
        (
            "the same claim paid again for the same period",
            payout_sql(&claim, "g2", "claim", s, e),
        ),
        (
            "another payout of the same non-empty interval",
            payout_sql(
                &uuid::Uuid::new_v4().to_string(),
                "g",
                "claim",
                s,
                "2026-11-20T12:00:00Z",
            ),
        ),
        (
            "a second auto payout for the same date",
            payout_sql("", "g", "auto", "2026-11-21T00:00:00Z", "2026-11-21T00:00:00Z"),
        ),
    ];
    for (what, sql) in attempts {
        let err = sqlx::raw_sql(&sql).execute(&env.pool).await.expect_err(what);
        let code = err.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("23505"), "{what}: {err}");
    }
    assert_eq!(env.payout_count().await, 2);
    let parts = "SELECT count(DISTINCT tableoid) FROM interest_payouts";
    assert_eq!(scalar(&env, parts).await, 1, "rows live in a partition");
    env.drop_db().await;
}

/// Every periodic or hot query, on tables holding a few thousand rows:
/// none reads a table that grows by a sequential scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_periodic_query_scans_a_growing_table() {
    let env = Env::new(1).await;
    exec(
        &env,
        "INSERT INTO claims (claim_id, idempotency_key, account_id, accepted_at, business_date, state, status, body, client_id)
         SELECT gen_random_uuid(), 'k' || i, 'a' || (i % 100), now(), current_date, 'done', 201, '{}', 'c'
         FROM generate_series(1, 5000) i;
         INSERT INTO payout_outbox (payout_id, partition, message_key, payload, published_at)
         SELECT gen_random_uuid(), i % 4, 'a', '{}', now() FROM generate_series(1, 5000) i;
         INSERT INTO dead_letters (payload, error, detail, published_at)
         SELECT 'x', 'e', 'd', now() FROM generate_series(1, 5000) i;
         INSERT INTO idempotency_keys (client_id, idempotency_key, account_id, claim_id, state, status, body)
         SELECT 'c', 'k' || i, 'a', gen_random_uuid(), 'answered', 201, '{}' FROM generate_series(1, 5000) i;
         INSERT INTO balance_points (account_id, seq, as_of, balance, plan_id, received_at)
         SELECT 'a' || (i % 100), i, now() - make_interval(secs => 5000 - i), 1, 'p', now() FROM generate_series(1, 5000) i;
         ANALYZE claims; ANALYZE payout_outbox; ANALYZE dead_letters; ANALYZE idempotency_keys; ANALYZE balance_points;",
    )
    .await;
    let queries = [
        // maintain's incremental prune: the points that crossed the cut, the accounts paid since.
        "SELECT as_of, account_id FROM balance_points WHERE (as_of, account_id) > (now() - interval '1 hour', '')
             AND as_of < now() - interval '50 minutes' ORDER BY as_of, account_id LIMIT 5000",
        "SELECT DISTINCT account_id FROM interest_payouts
             WHERE business_date >= (now() AT TIME ZONE 'Asia/Seoul')::date AND accepted_at >= now()",
        "SELECT count(*) FROM claims WHERE state = 'accepted' AND accepted_at < now()",
        "SELECT * FROM claims WHERE claim_id = ANY('{00000000-0000-0000-0000-000000000001}'::uuid[])",
        "SELECT payout_id FROM payout_outbox WHERE published_at IS NULL AND partition = ANY('{0,1}') ORDER BY seq LIMIT 5000",
        "SELECT count(*) FROM payout_outbox WHERE published_at IS NULL",
        "UPDATE payout_outbox SET published_at = now() WHERE payout_id = ANY('{00000000-0000-0000-0000-000000000001}'::uuid[]) AND published_at IS NULL",
        "SELECT seq FROM dead_letters WHERE published_at IS NULL ORDER BY seq LIMIT 500 FOR UPDATE SKIP LOCKED",
        "SELECT count(*) FROM dead_letters WHERE published_at IS NULL",
        "UPDATE dead_letters SET published_at = now() WHERE seq = ANY('{1,2}') AND published_at IS NULL",
        "SELECT * FROM idempotency_keys WHERE client_id = 'c' AND idempotency_key = 'k7'",
        "SELECT * FROM idempotency_keys WHERE claim_id = '00000000-0000-0000-0000-000000000001'",
        "SELECT client_id FROM idempotency_keys WHERE state IN ('answered', 'released')
             AND created_at < now() - interval '7 days' ORDER BY created_at LIMIT 5000",
    ];
    for q in queries {
        let plan: Value = sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) {q}"))
            .fetch_one(&env.pool)
            .await
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        let mut scans = Vec::new();
        seq_scans(&plan, &mut scans);
        for rel in scans {
            let rows = scalar(
                &env,
                &format!("SELECT reltuples::int8 FROM pg_class WHERE relname = '{rel}'"),
            )
            .await;
            assert!(rows < 100, "{q}: a Seq Scan on {rel} ({rows} rows): {plan}");
        }
    }
    env.drop_db().await;
}

fn seq_scans(plan: &Value, out: &mut Vec<String>) {
    match plan {
        Value::Object(m) => {
            if m.get("Node Type").and_then(Value::as_str) == Some("Seq Scan") {
                out.push(m["Relation Name"].as_str().unwrap_or_default().to_owned());
            }
            m.values().for_each(|v| seq_scans(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| seq_scans(v, out)),
        _ => {}
    }
}

/// The prune rule on its own (maintain holds it while close-day reads every
/// point): per account, points before least(paid_through, keep_from) go,
/// except the one in force there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_points_before_the_window_and_the_checkpoint_are_pruned_but_the_one_in_force() {
    let env = Env::new(1).await;
    // Checkpoints stand on whole seconds.
    let t = chrono::DateTime::from_timestamp(now().timestamp(), 0).unwrap();
    // 'paid' was paid a day ago; 'unpaid' never was (paid_through at its first
    // point), but its checkpoint advanced with its snapshots; 'fresh' has its
    // checkpoint where it started: nothing of it may go.
    exec(
        &env,
        &format!(
            "INSERT INTO accounts (account_id, currency, tax_profile, last_seq, paid_through, checkpoint_at) VALUES
                 ('paid', 'KRW', 'standard', 40, '{day}', '{day}'), ('unpaid', 'KRW', 'standard', 40, '{old}', '{day}'),
                 ('fresh', 'KRW', 'standard', 40, '{old}', '{old}');
             INSERT INTO balance_points (account_id, seq, as_of, balance, plan_id, received_at)
             SELECT a, s, '{t}'::timestamptz - make_interval(days => 40 - s), 1000, 'p', now()
             FROM unnest(ARRAY['paid', 'unpaid', 'fresh']) a, generate_series(1, 40) s;",
            day = t - chrono::Duration::days(1),
            old = t - chrono::Duration::days(39),
        ),
    )
    .await;
    let keep_from = t - chrono::Duration::days(8);
    let pruned = interest_now::store::retention::prune_balance_points(&env.pool, keep_from)
        .await
        .unwrap();
    // paid, unpaid: points 1..=31 are before now − 8 d; 31 stays (in force at the cut).
    // fresh: its checkpoint is the as_of of seq 1: no point lies before it.
    assert_eq!(pruned, 60, "30 points of 'paid' and of 'unpaid', none of 'fresh'");
    let min_seq = |a: &str| format!("SELECT min(seq) FROM balance_points WHERE account_id = '{a}'");
    assert_eq!(scalar(&env, &min_seq("paid")).await, 31);
    assert_eq!(scalar(&env, &min_seq("unpaid")).await, 31);
    assert_eq!(
        scalar(&env, "SELECT count(*) FROM balance_points WHERE account_id = 'fresh'").await,
        40
    );
    let marked: Vec<(String, bool)> = sqlx::query_as(
        "SELECT a.account_id, a.history_from = (SELECT as_of FROM balance_points b WHERE b.account_id = a.account_id AND b.seq = 31)
         FROM accounts a WHERE a.history_from IS NOT NULL ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(marked, [("paid".to_owned(), true), ("unpaid".to_owned(), true)]);
    // Twice is a no-op.
    let again = interest_now::store::retention::prune_balance_points(&env.pool, keep_from)
        .await
        .unwrap();
    assert_eq!(again, 0);
    env.drop_db().await;
}

/// An environment variable of a case.
type Var = (&'static str, &'static str);

/// Every new setting's bad value, and a bad flag, stop `maintain` with one line and exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_and_flags_give_one_line_and_exit_2() {
    let env = Env::new(1).await;
    let cases: [(&[&str], &[Var]); 4] = [
        (&["maintain"], &[("OUTBOX_RETENTION", "7")]),
        (&["maintain"], &[("OUTBOX_RETENTION", "0d")]),
        (&["maintain"], &[("IDEMPOTENCY_KEY_TTL", "a week")]),
        (&["maintain", "--now"], &[]),
    ];
    for (args, vars) in cases {
        let mut cmd = env.command(args);
        cmd.envs(vars.iter().copied());
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {vars:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?} {vars:?}: {stderr}");
    }
    env.drop_db().await;
}

/// After `maintain` pruned an account's history, a computation from the whole
/// history would be wrong: close-day `--full` refuses it, naming the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_history_computation_refuses_a_pruned_account() {
    let env = Env::new(1).await;
    let t = chrono::DateTime::from_timestamp(now().timestamp(), 0).unwrap() - chrono::Duration::days(3);
    exec(
        &env,
        &format!(
            "INSERT INTO accounts (account_id, currency, tax_profile, last_seq, paid_through, checkpoint_at, history_from)
             VALUES ('pruned-1', 'KRW', 'standard', 1, '{t}', '{t}', '{t}');
             INSERT INTO balance_points (account_id, seq, as_of, balance, plan_id, received_at)
             VALUES ('pruned-1', 1, '{t}', 1000, 'basic', '{t}');"
        ),
    )
    .await;
    let yesterday = (now().with_timezone(&interest_now::money::types::kst()).date_naive() - Days::new(1)).to_string();
    let out = env
        .command(&["close-day", "--date", &yesterday, "--full"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("pruned-1") && stderr.contains("pruned by maintain"),
        "{stderr}"
    );
    env.drop_db().await;
}

/// Per account: the points the prune rule needs with `keep_from` (every one
/// from `cut = least(checkpoint, keep_from)` on, and the latest before it),
/// as (needed ones missing, unneeded ones left), summed over every account.
async fn against_the_rule(env: &Env, keep_from: chrono::DateTime<chrono::Utc>, all: &str) -> (i64, i64) {
    sqlx::query_as(&format!(
        "WITH cut AS (SELECT account_id, least(coalesce(checkpoint_at, paid_through), $1) AS c FROM accounts),
              full_history AS ({all}),
              needed AS (
                  SELECT h.account_id, h.seq FROM full_history h JOIN cut USING (account_id)
                  WHERE h.as_of >= cut.c
                     OR h.seq = (SELECT max(seq) FROM full_history o WHERE o.account_id = h.account_id AND o.as_of < cut.c))
         SELECT (SELECT count(*) FROM needed n WHERE NOT EXISTS
                    (SELECT 1 FROM balance_points b WHERE b.account_id = n.account_id AND b.seq = n.seq)),
                (SELECT count(*) FROM balance_points b WHERE NOT EXISTS
                    (SELECT 1 FROM needed n WHERE n.account_id = b.account_id AND n.seq = b.seq))"
    ))
    .bind(keep_from)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// The incremental prune: after a first pass over every account, a run visits
/// only the accounts whose points crossed the cut since the previous run, or
/// that were paid since (a checkpoint moved by a claim), and leaves exactly the
/// points the rule needs — no needed one pruned, no unneeded one left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_incremental_prune_visits_what_changed_and_leaves_exactly_the_needed_points() {
    use interest_now::store::retention::prune_balance_points_since;
    let env = Env::new(1).await;
    let t = chrono::DateTime::from_timestamp(now().timestamp(), 0).unwrap();
    let days = |n: i64| t - chrono::Duration::days(n);
    // 20 dormant accounts (a point a day from 40 to 31 days ago, checkpoint
    // after the last), 3 active ones (a point a day for 40 days, checkpoint a
    // day ago), 1 with the dormant points whose checkpoint lags behind them
    // (as after the checkpoint migration: at its first point) until a claim
    // moves it. A point's as_of is t − (41 − seq) days.
    exec(
        &env,
        &format!(
            "INSERT INTO accounts (account_id, currency, tax_profile, last_seq, paid_through, checkpoint_at)
             SELECT 'dormant-' || i, 'USD', 'exempt', 10, '{d30}'::timestamptz, '{d30}'::timestamptz FROM generate_series(1, 20) i
             UNION ALL SELECT 'active-' || i, 'USD', 'exempt', 40, '{d1}', '{d1}' FROM generate_series(1, 3) i
             UNION ALL SELECT 'lagging', 'USD', 'exempt', 10, '{d40}', '{d40}';
             INSERT INTO balance_points (account_id, seq, as_of, balance, plan_id, received_at)
             SELECT a.account_id, s, '{t}'::timestamptz - make_interval(days => 41 - s), 1000, 'p', now()
             FROM accounts a, generate_series(1, 40) s WHERE a.account_id LIKE 'active-%' OR s <= 10;",
            d30 = days(30),
            d1 = days(1),
            d40 = days(40),
        ),
    )
    .await;
    // The rule is checked against the whole history, kept aside.
    exec(
        &env,
        "CREATE TABLE full_history AS SELECT account_id, seq, as_of FROM balance_points",
    )
    .await;
    let all = "SELECT * FROM full_history";
    let accounts = 24;

    // First run: no watermark, every account.
    let k1 = days(20);
    let first = prune_balance_points_since(&env.pool, k1, now()).await.unwrap();
    assert!(first.full, "{first:?}");
    assert_eq!(first.accounts_visited, accounts, "{first:?}");
    // dormant: 9 each (all but the last); active: 19 each (seq 1..=20 before k1, 20 stays);
    // lagging: nothing (its checkpoint is at its first point).
    assert_eq!(first.points, 20 * 9 + 3 * 19, "{first:?}");
    assert_eq!(against_the_rule(&env, k1, all).await, (0, 0));

    // A claim pays 'lagging' (its checkpoint moves past its last point), and keep_from moves 10 days.
    exec(
        &env,
        &format!(
            "UPDATE accounts SET checkpoint_at = '{t}', paid_through = '{t}' WHERE account_id = 'lagging';
             INSERT INTO interest_payouts (payout_id, claim_id, account_id, kind, business_date, period_start,
                 period_end, plan_id, rates, gross, income_tax, local_tax, rural_tax, adjustment, net, currency,
                 accrued_units, carried_in_units, carried_out_units, dropped_units, idempotency_key, accepted_at, tax_profile)
             VALUES (gen_random_uuid(), gen_random_uuid(), 'lagging', 'claim', '{today}', '{d40}', '{t}', 'p', '[]',
                 1, 0, 0, 0, 0, 1, 'USD', 0, 0, 0, 0, 'k', '{t}', 'exempt');",
            today = business_date(t),
            d40 = days(40),
        ),
    )
    .await;
    let k2 = days(10);
    let second = prune_balance_points_since(&env.pool, k2, now()).await.unwrap();
    assert!(!second.full, "{second:?}");
    // Only what changed: the 3 active accounts (10 points each crossed [k1, k2)) and the paid one
    // (no point of it crossed: found by its payout); none of the 20 dormant ones.
    assert_eq!(second.accounts_visited, 4, "{second:?}");
    // active: seq 20..=29 go (30 stays in force at k2); lagging: 9 of its 10 (the last stays).
    assert_eq!(second.points, 3 * 10 + 9, "{second:?}");
    assert_eq!(against_the_rule(&env, k2, all).await, (0, 0));

    // Nothing changed: nothing pruned, no dormant account visited.
    let third = prune_balance_points_since(&env.pool, k2, now()).await.unwrap();
    assert_eq!(third.points, 0, "{third:?}");
    assert!(third.accounts_visited <= 1, "only the one paid recently: {third:?}");
    assert_eq!(against_the_rule(&env, k2, all).await, (0, 0));
    env.drop_db().await;
}

/// The batch commands (close-day, maintain) run their sessions with JIT off;
/// the service's own sessions keep the server's setting.
#[tokio::test]
async fn the_batch_commands_sessions_run_without_jit() {
    use interest_now::store::{connect, connect_as, Session};
    let env = Env::new(1).await;
    let url = secrecy::SecretString::from(env.db_url.clone());
    let batch = Session {
        application_name: "interest-now-finance",
        log_statements: false,
        jit: false,
        lock_timeout_ms: None,
    };
    let show = |pool: sqlx::PgPool| async move {
        let v: String = sqlx::query_scalar("SHOW jit").fetch_one(&pool).await.unwrap();
        v
    };
    assert_eq!(show(connect_as(&url, 1, &batch).await.unwrap()).await, "off");
    let server = show(env.pool.clone()).await;
    assert_eq!(show(connect(&url, 1).await.unwrap()).await, server);
    env.drop_db().await;
}
