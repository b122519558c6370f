//! `xtask bench spike|ingest`: the midnight spike and snapshot ingest,
//! measured on the real service (separate API and worker processes), the
//! real broker and the real database, with a pgbench baseline on the same
//! database. Bounded in count and time; stops what it starts; prints one JSON
//! line at the end.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use serde_json::json;

use interest_now::money::types::{business_date, format_instant};
use interest_now_harness::PrivateBroker;

use crate::load::{fire_claims, percentiles, ClaimResult, ClaimSpec};
use crate::stack::{next_midnight_offset, run_clock_now, Stack};

pub struct SpikeOptions {
    pub admin_db_url: String,
    pub brokers: String,
    pub accounts: usize,
    pub rate: Option<u64>,
    pub concurrency: usize,
    pub workers: usize,
    pub apis: usize,
    pub partitions: i32,
    pub retry_share_percent: usize,
    pub baseline_seconds: u64,
    /// Join a worker and stop another in the middle of the spike.
    pub churn: bool,
    /// Use KAFKA_BROKERS instead of a private broker.
    pub shared_broker: bool,
}

/// Balances large enough that ten minutes of interest are well over 1 won.
fn balance_of(i: usize) -> i64 {
    100_000_000 + (i as i64 * 7_919) % 900_000_000
}

fn account_id(i: usize) -> String {
    format!("acct-{i:06}")
}

/// Streams one snapshot per account and waits until all are applied; returns the rate.
async fn load(stack: &Stack, n: usize, as_of: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let snapshots = (0..n).map(|i| {
        let id = account_id(i);
        let json = format!(
            r#"{{"account_id":"{id}","seq":1,"balance":"{}","currency":"KRW","as_of":"{as_of}"}}"#,
            balance_of(i)
        );
        (id, json)
    });
    stack.env.produce_many("balance-snapshots", snapshots).await?;
    stack
        .wait_count("SELECT count(*) FROM accounts", n as i64, Duration::from_secs(600))
        .await?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// The broker a run uses: its own (default) or the shared one.
pub(crate) async fn broker_for(shared: bool, brokers: &str) -> anyhow::Result<(Option<PrivateBroker>, String)> {
    if shared {
        return Ok((None, brokers.to_owned()));
    }
    let b = PrivateBroker::start().await?;
    let address = b.address.clone();
    Ok((Some(b), address))
}

pub async fn spike(o: SpikeOptions) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let (_broker, brokers) = broker_for(o.shared_broker, &o.brokers).await?;
    let mut stack = Stack::create(
        &crate::stack::run_name("interest_now_bench"),
        &o.admin_db_url,
        &brokers,
        o.partitions,
        include_str!("../../examples/plans.json"),
    )
    .await?;
    let (midnight, ingest_rate) = prepare(&mut stack, &o).await?;
    let broker_pid = _broker.as_ref().map(|b| b.pid());
    let before = cpu_sample(&stack, broker_pid);
    let (results, secs) = fire(&mut stack, &o, midnight).await?;
    let after = cpu_sample(&stack, broker_pid);
    let rss = stack.worker_rss_mb_max();
    let day = business_date(midnight).to_string();
    let (paid_accounts, duplicates) = payout_check(&stack, &day).await?;
    let (baseline, ceiling) = baselines(&stack, o.concurrency.min(64), o.baseline_seconds)?;
    let mut line = summary(&o, &results, secs, paid_accounts, duplicates, (baseline, ceiling));
    let round = |x: f64| (x * 10.0).round() / 10.0;
    line["worker_rss_mb_max"] = json!(rss);
    line["ingest_snapshots_per_s"] = json!(round(ingest_rate));
    line["elapsed_s"] = json!(round(started.elapsed().as_secs_f64()));
    let paid = results.iter().filter(|r| r.status == 201).count();
    line["cpu_us_per_claim"] = crate::cpu::per_claim_us(&before, &after, paid);
    stack.teardown(false).await;
    Ok(line)
}

/// The CPU time of the run's processes (see `crate::cpu`).
fn cpu_sample(stack: &Stack, broker: Option<u32>) -> crate::cpu::Sample {
    let pids = |role: &str| -> Vec<u32> {
        stack
            .services
            .iter()
            .filter(|s| s.role == role)
            .map(|s| s.child.id())
            .collect()
    };
    crate::cpu::sample(&pids("api"), &pids("worker"), broker)
}

/// Sets the service clock `lead` seconds before the next midnight, starts the
/// processes, loads the accounts (each already paid the day before); returns
/// that midnight and the load's snapshot rate.
async fn prepare(stack: &mut Stack, o: &SpikeOptions) -> anyhow::Result<(DateTime<Utc>, f64)> {
    // Midnight on the service clock comes `lead` seconds from now: time to start and load.
    let lead = 15 + (o.accounts / 10_000) as i64 * 2;
    let (midnight, offset) = next_midnight_offset(run_clock_now()?, lead);
    stack.env.offset_secs = offset;
    for _ in 0..o.workers {
        stack.spawn("worker", &[]).await?;
    }
    for _ in 0..o.apis {
        stack.spawn("api", &[("CLAIM_WAIT_MS", "2000")]).await?;
    }
    let as_of = format_instant(stack.service_now() - chrono::Duration::days(2));
    let ingest_rate = load(stack, o.accounts, &as_of).await?;
    eprintln!("bench: {} accounts loaded ({ingest_rate:.0} snapshots/s)", o.accounts);
    // Every account already claimed on the day before midnight (a fixture, to keep the run short).
    let eve = midnight - chrono::Duration::seconds(600);
    sqlx::query(
        "UPDATE accounts SET paid_through = $1, paid_any = true, claim_day = $2, claims_on_day = 1, last_claim_at = $1,
                checkpoint_at = $1, checkpoint_units = 0,
                checkpoint_plans = interest_checkpoint_plans_at(account_id, $1)",
    )
    .bind(eve)
    .bind(business_date(eve))
    .execute(stack.pool())
    .await?;
    // As a production database would be: statistics current, the fixture's dead rows gone.
    sqlx::query("VACUUM ANALYZE accounts, balance_points")
        .execute(stack.pool())
        .await?;
    Ok((midnight, ingest_rate))
}

/// Waits for midnight on the service clock and fires every claim (and the
/// retries), churning the workers if asked; returns the results and the seconds taken.
async fn fire(stack: &mut Stack, o: &SpikeOptions, midnight: DateTime<Utc>) -> anyhow::Result<(Vec<ClaimResult>, f64)> {
    let until_midnight = (midnight - stack.service_now()).to_std().unwrap_or_default();
    if until_midnight.is_zero() {
        eprintln!("bench: loading overran midnight on the service clock; the spike still runs on the new day");
    }
    tokio::time::sleep(until_midnight).await;
    let n = o.accounts;
    let mut claims: Vec<ClaimSpec> = (0..n).map(|i| (account_id(i), format!("spike-{i}"))).collect();
    let retries = n * o.retry_share_percent / 100;
    claims.extend((0..retries).map(|i| (account_id(i * 7 % n), format!("spike-{}", i * 7 % n))));
    let apis = stack.apis.clone();
    let (concurrency, rate) = (o.concurrency, o.rate);
    eprintln!("bench: 00:00 KST on the service clock: firing {} claims", claims.len());
    let t = Instant::now();
    let fire = tokio::spawn(async move { fire_claims(&apis, claims, concurrency, rate).await });
    if o.churn {
        // In the middle of the spike a worker joins and another leaves (SIGTERM, as in a rolling deploy).
        tokio::time::sleep(Duration::from_millis(500)).await;
        stack.spawn("worker", &[]).await?;
        let first = stack
            .services
            .iter()
            .position(|s| s.role == "worker")
            .expect("a worker");
        let took = tokio::task::block_in_place(|| stack.services[first].stop(false))?;
        eprintln!(
            "bench: churn: a worker joined, another left (exited {:.1} s after SIGTERM)",
            took.as_secs_f32()
        );
    }
    let results = fire.await?;
    Ok((results, t.elapsed().as_secs_f64()))
}

/// The spike's JSON line (without the figures `spike` adds: memory, ingest, elapsed).
fn summary(
    o: &SpikeOptions,
    results: &[ClaimResult],
    secs: f64,
    paid_accounts: i64,
    duplicates: i64,
    (baseline, ceiling): (f64, f64),
) -> serde_json::Value {
    let n = o.accounts;
    let (p50, p95, p99, max) = percentiles(results);
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for r in results {
        *statuses.entry(r.status).or_default() += 1;
    }
    let errors = results
        .iter()
        .filter(|r| r.status != 201 && !(r.status == 409 && r.code.as_deref() == Some("claim_in_progress")))
        .count();
    let answered: std::collections::HashSet<&str> = results
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.account.as_str())
        .collect();
    let lost = answered.len().saturating_sub(paid_accounts as usize) + n.saturating_sub(paid_accounts as usize);
    let completed = results.iter().filter(|r| r.status == 201).count();
    let claims_per_s = completed as f64 / secs;
    let round = |x: f64| (x * 10.0).round() / 10.0;
    json!({
        "accounts": n,
        "offered_rate": o.rate.map(|r| json!(r)).unwrap_or(json!("max")),
        "claims_per_s": round(claims_per_s),
        "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "max_ms": max,
        "errors": errors, "duplicates": duplicates, "lost": lost,
        "baseline_claims_per_s": round(baseline),
        "ceiling_claims_per_s": round(ceiling),
        "ratio_vs_baseline": round(claims_per_s / baseline.max(1.0) * 100.0) / 100.0,
        "ratio_vs_ceiling": round(claims_per_s / ceiling.max(1.0) * 100.0) / 100.0,
        "workers": o.workers, "apis": o.apis, "concurrency": o.concurrency,
        "statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "first_answer_202": results.iter().filter(|r| r.first_status == 202).count(),
    })
}

/// (accounts with exactly one claim payout on `day`, accounts paid more than once that day).
async fn payout_check(stack: &Stack, day: &str) -> anyhow::Result<(i64, i64)> {
    let row: (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n > 1)
         FROM (SELECT account_id, count(*) AS n FROM interest_payouts
               WHERE kind = 'claim' AND business_date = $1::date GROUP BY account_id) p",
    )
    .bind(day)
    .fetch_one(stack.pool())
    .await?;
    Ok(row)
}

/// What a team would build first, measured with pgbench on the same database:
/// one transaction per claim (lock the account, insert payout, idempotency and
/// outbox rows, update the account), and the same work for 1,000 claims per
/// transaction (the ceiling of batching). Returns claims per second for each.
fn baselines(stack: &Stack, clients: usize, seconds: u64) -> anyhow::Result<(f64, f64)> {
    let setup = include_str!("bench/baseline_setup.sql");
    let psql = Command::new("psql")
        .args([&stack.env.db_url, "-q", "-v", "ON_ERROR_STOP=1", "-c", setup])
        .output()
        .context("psql")?;
    if !psql.status.success() {
        bail!("baseline setup: {}", String::from_utf8_lossy(&psql.stderr));
    }
    let dir = stack.log_dir().clone();
    let single = dir.join("baseline_single.sql");
    let batched = dir.join("baseline_batch.sql");
    std::fs::write(&single, include_str!("bench/baseline_single.sql"))?;
    std::fs::write(&batched, include_str!("bench/baseline_batch.sql"))?;
    let accounts: i64 = {
        let out = Command::new("psql")
            .args([&stack.env.db_url, "-tAc", "SELECT count(*) FROM baseline.accounts"])
            .output()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("baseline account count")?
    };
    let tps = |script: &std::path::Path, clients: usize| -> anyhow::Result<f64> {
        let out = Command::new("pgbench")
            .args([
                "-n",
                "-T",
                &seconds.to_string(),
                "-c",
                &clients.to_string(),
                "-j",
                "2",
                "-D",
                &format!("naccounts={accounts}"),
            ])
            .arg("-f")
            .arg(script)
            .arg(&stack.env.db_url)
            .output()
            .context("pgbench (install postgresql-client)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let tps = text
            .lines()
            .find(|l| l.starts_with("tps = "))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse::<f64>().ok());
        match tps {
            Some(t) if out.status.success() => Ok(t),
            _ => bail!("pgbench failed: {}{}", text, String::from_utf8_lossy(&out.stderr)),
        }
    };
    let baseline = tps(&single, clients)?;
    // Batches of 1,000 over a few clients: more would only wait on each other's locks.
    let ceiling = tps(&batched, 2)? * 1000.0;
    Ok((baseline, ceiling))
}

pub struct IngestOptions {
    pub admin_db_url: String,
    pub brokers: String,
    pub snapshots: usize,
    pub accounts: usize,
    pub partitions: i32,
    pub max_workers: usize,
    pub shared_broker: bool,
}

/// Snapshots per second applied by 1, 2 and 3 workers: the topic is filled
/// first, then the workers start and drain it.
pub async fn ingest(o: IngestOptions) -> anyhow::Result<serde_json::Value> {
    let mut rounds = Vec::new();
    for workers in 1..=o.max_workers {
        let (_broker, brokers) = broker_for(o.shared_broker, &o.brokers).await?;
        let mut stack = Stack::create(
            &crate::stack::run_name("interest_now_ingest"),
            &o.admin_db_url,
            &brokers,
            o.partitions,
            include_str!("../../examples/plans.json"),
        )
        .await?;
        let base = run_clock_now()? - chrono::Duration::days(3);
        let per_account = o.snapshots.div_ceil(o.accounts);
        let snapshots = (0..o.snapshots).map(|k| {
            let (i, seq) = (k % o.accounts, k / o.accounts + 1);
            let as_of = format_instant(base + chrono::Duration::seconds(seq as i64 * 60));
            let id = account_id(i);
            (
                id.clone(),
                format!(
                    r#"{{"account_id":"{id}","seq":{seq},"balance":"{}","currency":"KRW","as_of":"{as_of}"}}"#,
                    balance_of(i + seq)
                ),
            )
        });
        stack.env.produce_many("balance-snapshots", snapshots).await?;
        let t = Instant::now();
        for _ in 0..workers {
            stack.spawn("worker", &[]).await?;
        }
        stack
            .wait_count(
                "SELECT count(*) FROM balance_points",
                o.snapshots as i64,
                Duration::from_secs(600),
            )
            .await?;
        let secs = t.elapsed().as_secs_f64();
        let rss = stack.worker_rss_mb_max();
        eprintln!(
            "bench ingest: {workers} worker(s): {} snapshots in {secs:.1} s",
            o.snapshots
        );
        rounds.push(json!({"workers": workers, "snapshots_per_s": (o.snapshots as f64 / secs).round(),
            "per_worker_snapshots_per_s": (o.snapshots as f64 / secs / workers as f64).round(), "worker_rss_mb_max": rss,
            "snapshots_per_account": per_account}));
        stack.teardown(false).await;
    }
    Ok(json!({"snapshots": o.snapshots, "accounts": o.accounts, "partitions": o.partitions, "rounds": rounds}))
}
