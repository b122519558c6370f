//! `xtask bench spike|ingest`: the midnight spike and snapshot ingest,
//! measured on the real service (separate API and worker processes), the
//! real broker and the real database, with a pgbench baseline on the same
//! database. Bounded in count and time; stops what it starts; prints one JSON
//! line at the end.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use serde_json::json;

use interest_now::money::types::{business_date, format_instant};
use interest_now_harness::PrivateBroker;

use crate::load::{percentiles, ClaimResult, ClaimSpec, LoadGen};
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
    /// Seconds for each pgbench baseline run; 0: no baseline (its figures null).
    pub baseline_seconds: u64,
    /// Join a worker and stop another in the middle of the spike.
    pub churn: bool,
    /// Use KAFKA_BROKERS instead of a private broker.
    pub shared_broker: bool,
    /// Each worker process in a cgroup of its own capped at this many cores during the spike.
    pub worker_cpu: Option<f64>,
    /// Each API process in a cgroup of its own capped at this many cores during the spike.
    pub api_cpu: Option<f64>,
    /// Where `<name>.json` and `<name>.svg` (the timeline) are written.
    pub out_dir: PathBuf,
    pub name: String,
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
    let result = spike_on(&mut stack, &o, _broker.as_ref().map(|b| b.pid()), started).await;
    stack.teardown(false).await;
    result
}

async fn spike_on(
    stack: &mut Stack,
    o: &SpikeOptions,
    broker_pid: Option<u32>,
    started: Instant,
) -> anyhow::Result<serde_json::Value> {
    let (midnight, ingest_rate) = prepare(stack, o).await?;
    // The quotas hold for the spike (loading the accounts ran uncapped, to keep the run short).
    for (svc, group) in stack.services.iter().zip(&stack.groups) {
        if let Some(g) = group {
            g.set_quota(if svc.role == "worker" { o.worker_cpu } else { o.api_cpu })?;
        }
    }
    let fired = fire(stack, o, midnight, broker_pid).await?;
    let results = &fired.results;
    let rss = stack.worker_rss_mb_max();
    let day = business_date(midnight).to_string();
    let (paid_accounts, duplicates) = payout_check(stack, &day).await?;
    let throttled = throttled(stack, &fired.throttled_before);
    // The service is done: its connections are freed for pgbench, its CPU for the baseline.
    for svc in &mut stack.services {
        if svc.running() {
            let _ = tokio::task::block_in_place(|| svc.stop(false));
        }
    }
    // A baseline that cannot run (a shared cluster out of connections) leaves its figures null, not the run failed.
    let mut baseline_error = None;
    let (baseline, ceiling) = if o.baseline_seconds > 0 {
        match baselines(stack, o.concurrency.min(64), o.baseline_seconds) {
            Ok((b, c)) => (Some(b), Some(c)),
            Err(e) => {
                let e = format!("{e:#}").replace('\n', " ");
                eprintln!("bench: no baseline: {e}");
                baseline_error = Some(e);
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    let mut line = summary(o, results, fired.secs, paid_accounts, duplicates, (baseline, ceiling));
    let round = |x: f64| (x * 10.0).round() / 10.0;
    line["worker_rss_mb_max"] = json!(rss);
    line["ingest_snapshots_per_s"] = json!(round(ingest_rate));
    line["elapsed_s"] = json!(round(started.elapsed().as_secs_f64()));
    let paid = results.iter().filter(|r| r.status == 201).count();
    line["cpu_us_per_claim"] = crate::cpu::per_claim_us(&fired.before, &fired.after, paid);
    line["cpu_cores"] = crate::cpu::cores(&fired.before, &fired.after, fired.secs);
    line["worker_cpu"] = json!(o.worker_cpu);
    line["api_cpu"] = json!(o.api_cpu);
    line["throttled"] = throttled;
    if let Some(e) = baseline_error {
        line["baseline_error"] = json!(e);
    }
    line["load_generator"] = fired.loadgen;
    let panels = crate::timeline::spike_panels(results, &fired.lag);
    let title = format!(
        "bench spike: {} accounts, {} worker(s){}, {} API(s){}, {:.0} claims/s, p99 {} ms",
        o.accounts,
        o.workers,
        o.worker_cpu.map(|f| format!(" at {f} core")).unwrap_or_default(),
        o.apis,
        o.api_cpu.map(|f| format!(" at {f} core")).unwrap_or_default(),
        line["claims_per_s"].as_f64().unwrap_or(0.0),
        line["p99_ms"]
    );
    std::fs::create_dir_all(&o.out_dir).with_context(|| format!("creating {}", o.out_dir.display()))?;
    let svg_path = o.out_dir.join(format!("{}.svg", o.name));
    std::fs::write(&svg_path, crate::timeline::svg(&title, &panels))?;
    line["timeline_svg"] = json!(svg_path.display().to_string());
    std::fs::write(o.out_dir.join(format!("{}.json", o.name)), format!("{line}\n"))?;
    Ok(line)
}

/// Throttling of the capped processes since `before`, per role: periods at the quota and ms held back.
fn throttled(stack: &Stack, before: &[(u64, u64)]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for ((svc, group), b) in stack.services.iter().zip(&stack.groups).zip(before) {
        if let Some(g) = group {
            let (n, ns) = g.throttled();
            let e = out
                .entry(svc.role.clone())
                .or_insert_with(|| json!({"periods": 0, "ms": 0}));
            e["periods"] = json!(e["periods"].as_u64().unwrap_or(0) + n.saturating_sub(b.0));
            e["ms"] = json!(e["ms"].as_u64().unwrap_or(0) + ns.saturating_sub(b.1) / 1_000_000);
        }
    }
    serde_json::Value::Object(out)
}

/// The CPU time of the run's processes (see `crate::cpu`): a process in a
/// cgroup by its group's `cpuacct.usage`, the others by `/proc`.
fn cpu_sample(stack: &Stack, broker: Option<u32>, loadgen: Option<u32>) -> crate::cpu::Sample {
    use crate::cpu::Meter;
    let meters = |role: &str| -> Vec<Meter> {
        stack
            .services
            .iter()
            .zip(&stack.groups)
            .filter(|(s, _)| s.role == role)
            .map(|(s, g)| match g {
                Some(g) => Meter::Group(g.clone()),
                None => Meter::Pid(s.child.id()),
            })
            .collect()
    };
    crate::cpu::sample(
        &[
            ("api", meters("api")),
            ("workers", meters("worker")),
            ("broker", broker.map(Meter::Pid).into_iter().collect()),
            ("load_generator", loadgen.map(Meter::Pid).into_iter().collect()),
        ],
        Some(&stack.env.name),
    )
}

/// Starts a service process, in a cgroup of its own when its role is capped.
async fn spawn_role(stack: &mut Stack, o: &SpikeOptions, role: &str, extra: &[(&str, &str)]) -> anyhow::Result<()> {
    let capped = if role == "worker" { o.worker_cpu } else { o.api_cpu };
    if capped.is_some() {
        // Uncapped until the spike (set by `spike_on`).
        stack.spawn_in_cgroup(role, extra, None).await?;
    } else {
        stack.spawn(role, extra).await?;
    }
    Ok(())
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
        spawn_role(stack, o, "worker", &[]).await?;
    }
    for _ in 0..o.apis {
        spawn_role(stack, o, "api", &[("CLAIM_WAIT_MS", "2000")]).await?;
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

/// What the spike's window measured.
struct Fired {
    results: Vec<ClaimResult>,
    secs: f64,
    before: crate::cpu::Sample,
    after: crate::cpu::Sample,
    throttled_before: Vec<(u64, u64)>,
    /// (seconds from the start, claims messages not yet applied).
    lag: Vec<(f64, i64)>,
    loadgen: serde_json::Value,
}

/// Fires every claim (and the retries) from midnight on the service clock,
/// by the load generator's own process, churning the workers if asked; CPU
/// is sampled at the start and once the last answer is in.
async fn fire(
    stack: &mut Stack,
    o: &SpikeOptions,
    midnight: DateTime<Utc>,
    broker_pid: Option<u32>,
) -> anyhow::Result<Fired> {
    let mut start = midnight;
    if stack.service_now() + chrono::Duration::milliseconds(1_500) > midnight {
        eprintln!("bench: loading overran midnight on the service clock; the spike still runs on the new day");
        start = stack.service_now() + chrono::Duration::milliseconds(1_500);
    }
    let n = o.accounts;
    let mut claims: Vec<ClaimSpec> = (0..n).map(|i| (account_id(i), format!("spike-{i}"))).collect();
    let retries = n * o.retry_share_percent / 100;
    claims.extend((0..retries).map(|i| (account_id(i * 7 % n), format!("spike-{}", i * 7 % n))));
    // The start instant on the real clock (the load generator's clock has no offset).
    let start_ms = (start - chrono::Duration::seconds(stack.env.offset_secs)).timestamp_millis();
    let dir = stack.log_dir().join(format!("loadgen-{}", o.name));
    let mut loadgen = LoadGen::start(&dir, &stack.apis, &claims, o.concurrency, o.rate, start_ms).await?;
    eprintln!("bench: 00:00 KST on the service clock: firing {} claims", claims.len());
    tokio::time::sleep((start - stack.service_now()).to_std().unwrap_or_default()).await;
    let before = cpu_sample(stack, broker_pid, loadgen.pid());
    let throttled_before: Vec<(u64, u64)> = stack
        .groups
        .iter()
        .map(|g| g.as_ref().map(|g| g.throttled()).unwrap_or_default())
        .collect();
    let t = Instant::now();
    let stop = stop_flag();
    let lag = tokio::spawn(poll_lag(
        stack.env.pool.clone(),
        stack.env.producer.clone(),
        stack.env.topic("interest-claims"),
        stack.env.partitions,
        stop.clone(),
    ));
    if o.churn {
        // In the middle of the spike a worker joins and another leaves (SIGTERM, as in a rolling deploy).
        tokio::time::sleep(Duration::from_millis(500)).await;
        spawn_role(stack, o, "worker", &[]).await?;
        if let Some(g) = stack.groups.last().and_then(Option::as_ref) {
            g.set_quota(o.worker_cpu)?;
        }
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
    let fired = loadgen.results().await;
    let after = cpu_sample(stack, broker_pid, loadgen.pid());
    let wall = t.elapsed().as_secs_f64();
    loadgen.finish().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let lag = lag.await.unwrap_or_default();
    let (loadgen, results) = fired?;
    let secs = loadgen["secs"].as_f64().unwrap_or(wall);
    Ok(Fired {
        results,
        secs,
        before,
        after,
        throttled_before,
        lag,
        loadgen,
    })
}

fn stop_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}

/// Consumer lag on the claims topic every 250 ms until `stop`: the high
/// watermarks (from the broker) minus the next offsets the workers committed
/// with their batches (from the database).
async fn poll_lag(
    pool: sqlx::PgPool,
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    partitions: i32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<(f64, i64)> {
    use rdkafka::producer::Producer as _;
    let t = Instant::now();
    let mut out = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && t.elapsed() < Duration::from_secs(600) {
        let (p, top) = (producer.clone(), topic.clone());
        let high = tokio::task::spawn_blocking(move || {
            (0..partitions)
                .map(|i| {
                    p.client()
                        .fetch_watermarks(&top, i, Duration::from_millis(500))
                        .map(|(_, h)| h)
                        .unwrap_or(0)
                })
                .sum::<i64>()
        })
        .await
        .unwrap_or(0);
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT sum(next_offset)::bigint FROM consumer_offsets WHERE topic = $1")
                .bind(&topic)
                .fetch_one(&pool)
                .await
                .unwrap_or(None);
        out.push((t.elapsed().as_secs_f64(), (high - applied.unwrap_or(0)).max(0)));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    out
}

/// The spike's JSON line (without the figures `spike` adds: memory, ingest, elapsed).
fn summary(
    o: &SpikeOptions,
    results: &[ClaimResult],
    secs: f64,
    paid_accounts: i64,
    duplicates: i64,
    (baseline, ceiling): (Option<f64>, Option<f64>),
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
        "baseline_claims_per_s": baseline.map(round),
        "ceiling_claims_per_s": ceiling.map(round),
        "ratio_vs_baseline": baseline.map(|b| ratio(claims_per_s, b)),
        "ratio_vs_ceiling": ceiling.map(|c| ratio(claims_per_s, c)),
        "workers": o.workers, "apis": o.apis, "concurrency": o.concurrency,
        "statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "first_answer_202": results.iter().filter(|r| r.first_status == 202).count(),
    })
}

/// `a / b` to two decimals.
fn ratio(a: f64, b: f64) -> f64 {
    (a / b.max(1.0) * 100.0).round() / 100.0
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
    /// Each worker in a cgroup of its own capped at this many cores (from its start).
    pub worker_cpu: Option<f64>,
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
        let broker_pid = _broker.as_ref().map(|b| b.pid());
        let before = cpu_sample(&stack, broker_pid, None);
        let t = Instant::now();
        for _ in 0..workers {
            match o.worker_cpu {
                Some(f) => stack.spawn_in_cgroup("worker", &[], Some(f)).await?,
                None => stack.spawn("worker", &[]).await?,
            };
        }
        stack
            .wait_count(
                "SELECT count(*) FROM balance_points",
                o.snapshots as i64,
                Duration::from_secs(600),
            )
            .await?;
        let secs = t.elapsed().as_secs_f64();
        // The workers did not exist at `before`: all they used is in the window.
        let after = cpu_sample(&stack, broker_pid, None);
        let rss = stack.worker_rss_mb_max();
        eprintln!(
            "bench ingest: {workers} worker(s): {} snapshots in {secs:.1} s",
            o.snapshots
        );
        rounds.push(json!({"workers": workers, "snapshots_per_s": (o.snapshots as f64 / secs).round(),
            "per_worker_snapshots_per_s": (o.snapshots as f64 / secs / workers as f64).round(), "worker_rss_mb_max": rss,
            "snapshots_per_account": per_account, "worker_cpu": o.worker_cpu,
            "cpu_us_per_snapshot": crate::cpu::per_claim_us(&before, &after, o.snapshots),
            "cpu_cores": crate::cpu::cores(&before, &after, secs)}));
        stack.teardown(false).await;
    }
    Ok(json!({"snapshots": o.snapshots, "accounts": o.accounts, "partitions": o.partitions, "rounds": rounds}))
}

pub struct ScaleOptions {
    pub admin_db_url: String,
    pub brokers: String,
    pub accounts: usize,
    pub worker_cpu: f64,
    pub api_cpu: f64,
    pub counts: Vec<usize>,
    pub api_table_workers: usize,
    pub concurrency: usize,
    pub partitions: i32,
    pub baseline_seconds: u64,
    pub shared_broker: bool,
    pub out_dir: PathBuf,
}

/// Horizontal scale on a small machine (issue 11 item 1): the spike with
/// 1, 2, 4 workers each capped at `worker_cpu` (one uncapped API), then with
/// 1, 2, 4 APIs each capped at `api_cpu` (`api_table_workers` uncapped
/// workers); throughput, p99, efficiency = thr(n) / (n × thr(1)), CPU per
/// claim and cores used by component. The pgbench baseline runs once, in the
/// first run; its ratios are given for every row.
pub async fn scale(o: ScaleOptions) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let mut tables = serde_json::Map::new();
    let mut baseline = (None, None);
    for table in ["workers", "apis"] {
        let mut rows: Vec<serde_json::Value> = Vec::new();
        for &n in &o.counts {
            let workers_table = table == "workers";
            let spike_o = SpikeOptions {
                admin_db_url: o.admin_db_url.clone(),
                brokers: o.brokers.clone(),
                accounts: o.accounts,
                rate: None,
                concurrency: o.concurrency,
                workers: if workers_table { n } else { o.api_table_workers },
                apis: if workers_table { 1 } else { n },
                partitions: o.partitions,
                retry_share_percent: 5,
                baseline_seconds: if baseline.0.is_none() { o.baseline_seconds } else { 0 },
                churn: false,
                shared_broker: o.shared_broker,
                worker_cpu: workers_table.then_some(o.worker_cpu),
                api_cpu: (!workers_table).then_some(o.api_cpu),
                out_dir: o.out_dir.clone(),
                name: format!("scale-{table}-{n}"),
            };
            eprintln!("bench scale: {table} = {n}");
            let r = spike(spike_o).await?;
            if baseline.0.is_none() {
                baseline = (r["baseline_claims_per_s"].as_f64(), r["ceiling_claims_per_s"].as_f64());
            }
            let thr = r["claims_per_s"].as_f64().unwrap_or(0.0);
            let first = rows.first().map(|f| {
                (
                    f["n"].as_f64().unwrap_or(1.0),
                    f["claims_per_s"].as_f64().unwrap_or(0.0),
                )
            });
            let efficiency = match first {
                Some((n0, t0)) => efficiency(thr, n as f64 / n0, t0),
                None => 1.0,
            };
            rows.push(json!({
                "n": n, "claims_per_s": thr, "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                "efficiency": efficiency,
                "errors": r["errors"], "duplicates": r["duplicates"], "lost": r["lost"],
                "ratio_vs_baseline": baseline.0.map(|b| ratio(thr, b)),
                "ratio_vs_ceiling": baseline.1.map(|c| ratio(thr, c)),
                "cpu_us_per_claim": r["cpu_us_per_claim"], "cpu_cores": r["cpu_cores"],
                "throttled": r["throttled"], "timeline_svg": r["timeline_svg"],
            }));
        }
        tables.insert(table.to_owned(), json!(rows));
    }
    let line = json!({
        "accounts": o.accounts, "worker_cpu": o.worker_cpu, "api_cpu": o.api_cpu,
        "api_table_workers": o.api_table_workers, "concurrency": o.concurrency,
        "baseline_claims_per_s": baseline.0, "ceiling_claims_per_s": baseline.1,
        "targets": {"efficiency_at_2": 0.85, "efficiency_at_4": 0.75},
        "tables": tables, "elapsed_s": started.elapsed().as_secs(),
    });
    eprint!("{}", scale_table(&line));
    std::fs::create_dir_all(&o.out_dir)?;
    std::fs::write(o.out_dir.join("scale.json"), format!("{line}\n"))?;
    Ok(line)
}

/// thr(n) / (k × thr(first)), k = n / n(first), to two decimals.
fn efficiency(thr: f64, k: f64, first: f64) -> f64 {
    ratio(thr, k * first)
}

/// The readable form of `bench scale`'s line (stderr).
fn scale_table(line: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (table, cap) in [("workers", "worker_cpu"), ("apis", "api_cpu")] {
        let _ = writeln!(
            out,
            "\n{table} (each capped at {} core)\n{:>3} {:>10} {:>7} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8}",
            line[cap],
            "n",
            "claims/s",
            "p99 ms",
            "eff",
            "api us",
            "wrk us",
            "pg us",
            "brk us",
            "lg us",
            "pg cores",
            "brk cores"
        );
        for r in line["tables"][table].as_array().into_iter().flatten() {
            let c = &r["cpu_us_per_claim"];
            let k = &r["cpu_cores"];
            let _ = writeln!(
                out,
                "{:>3} {:>10} {:>7} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8}",
                r["n"].to_string(),
                r["claims_per_s"].to_string(),
                r["p99_ms"].to_string(),
                r["efficiency"].to_string(),
                c["api"].to_string(),
                c["workers"].to_string(),
                c["postgres"].to_string(),
                c["broker"].to_string(),
                c["load_generator"].to_string(),
                k["postgres"].to_string(),
                k["broker"].to_string()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn efficiency_is_throughput_over_n_times_the_first() {
        assert_eq!(efficiency(3_400.0, 2.0, 2_000.0), 0.85);
        assert_eq!(efficiency(6_000.0, 4.0, 2_000.0), 0.75);
        // Counts that do not start at 1: 2 → 4 is k = 2.
        assert_eq!(efficiency(4_000.0, 2.0, 2_000.0), 1.0);
    }

    #[test]
    fn the_scale_table_has_a_row_per_run() {
        let row = json!({"n": 2, "claims_per_s": 3400.0, "p99_ms": 120, "efficiency": 0.85,
            "cpu_us_per_claim": {"api": 30, "workers": 50, "postgres": 20, "broker": 40, "load_generator": 25},
            "cpu_cores": {"postgres": 0.1, "broker": 0.2}});
        let line = json!({"worker_cpu": 0.1, "api_cpu": 0.1, "tables": {"workers": [row.clone()], "apis": [row]}});
        let t = scale_table(&line);
        assert!(t.contains("workers (each capped at 0.1 core)"), "{t}");
        assert_eq!(t.matches("    3400.0").count(), 2, "aligned: {t}");
    }
}
