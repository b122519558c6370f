//! `xtask demo`: the whole story on one machine. 10,000 accounts,
//! two worker processes and an API, the clock set just before 00:00 KST, and
//! claims fired through the midnight rollover, then a short report.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::Row;

use interest_now::money::types::format_instant;
use interest_now_harness::PrivateBroker;

use crate::load::{fire_claims, percentiles, ClaimResult, ClaimSpec};
use crate::stack::{next_midnight_offset, run_clock_now, Stack};

pub struct DemoOptions {
    pub admin_db_url: String,
    pub accounts: usize,
}

/// Seconds between starting the processes and midnight on the service clock.
const LEAD_SECS: i64 = 25;

pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let plans = include_str!("../../examples/plans.json");
    println!(
        "interest-now demo: {} accounts through the 00:00 KST rollover\n",
        opts.accounts
    );
    // A fresh broker of its own (the cached nisshi): the shared one may hold data from earlier runs.
    let broker = PrivateBroker::start().await?;
    let mut stack = Stack::create("interest_now_demo", &opts.admin_db_url, &broker.address, 12, plans).await?;
    let (midnight, offset) = next_midnight_offset(run_clock_now()?, LEAD_SECS);
    stack.env.offset_secs = offset;
    println!(
        "  service clock set to {} (CLOCK_OFFSET_SECONDS={})",
        format_instant(stack.service_now()),
        stack.env.offset_secs
    );
    stack.spawn("worker", &[]).await?;
    stack.spawn("worker", &[]).await?;
    stack.spawn("api", &[]).await?;
    println!(
        "  started 2 workers and 1 API ({:.1} s)",
        started.elapsed().as_secs_f32()
    );
    let n = opts.accounts;
    load(&stack, n).await?;
    println!(
        "  {} balance snapshots streamed and applied ({:.1} s)",
        n,
        started.elapsed().as_secs_f32()
    );
    let before = claims_before_midnight(&stack, n, midnight).await;
    let (after, spike_secs) = claims_from_midnight(&stack, n, midnight).await?;
    report(&stack, &before, &after, spike_secs).await?;
    println!(
        "\n  finished in {:.1} s; processes stopped.",
        started.elapsed().as_secs_f32()
    );
    println!(
        "  The demo database stays for you to explore: psql {}",
        stack.env.db_url
    );
    stack.teardown(true).await;
    drop(broker);
    Ok(())
}

/// Accounts whose interest stays under 1 won (nothing to claim): the first `n / 20`.
fn small(n: usize) -> usize {
    n / 20
}

/// One snapshot per account, three days before the service clock, on the three example plans.
async fn load(stack: &Stack, n: usize) -> anyhow::Result<()> {
    let small = small(n);
    let as_of = format_instant(stack.service_now() - chrono::Duration::days(3));
    let snapshots = (0..n).map(|i| {
        let id = format!("acct-{i:05}");
        let balance = if i < small { 1_000 } else { 1_000_000 + (i as i64 * 7_919) % 200_000_000 };
        let plan = ["basic", "tiered", "daily"][i % 3];
        let json = format!(
            r#"{{"account_id":"{id}","seq":1,"balance":"{balance}","currency":"KRW","as_of":"{as_of}","plan":"{plan}"}}"#
        );
        (id, json)
    });
    stack.env.produce_many("balance-snapshots", snapshots).await?;
    stack
        .wait_count("SELECT count(*) FROM accounts", n as i64, Duration::from_secs(120))
        .await
}

/// Sleeps until `t` on the service clock.
async fn sleep_until(stack: &Stack, t: DateTime<Utc>) {
    tokio::time::sleep((t - stack.service_now()).to_std().unwrap_or_default()).await;
}

/// Before midnight: a fifth of the accounts claim, some retry with the same key.
async fn claims_before_midnight(stack: &Stack, n: usize, midnight: DateTime<Utc>) -> Vec<ClaimResult> {
    sleep_until(stack, midnight - chrono::Duration::seconds(6)).await;
    let small = small(n);
    let early: Vec<ClaimSpec> = (small..small + n / 5)
        .map(|i| (format!("acct-{i:05}"), format!("eve-{i}")))
        .collect();
    let retries: Vec<ClaimSpec> = early.iter().step_by(10).cloned().collect();
    let mut before = fire_claims(&stack.apis, early, 64, None).await;
    before.extend(fire_claims(&stack.apis, retries, 16, None).await);
    println!(
        "  {} claims before midnight (service clock {})",
        before.len(),
        format_instant(stack.service_now())
    );
    before
}

/// The spike: from 00:00 every account claims; some retry, some claim twice.
/// Returns the results and the spike's seconds, once every payout is published.
async fn claims_from_midnight(
    stack: &Stack,
    n: usize,
    midnight: DateTime<Utc>,
) -> anyhow::Result<(Vec<ClaimResult>, f64)> {
    sleep_until(stack, midnight + chrono::Duration::milliseconds(100)).await;
    let mut spike: Vec<ClaimSpec> = (0..n).map(|i| (format!("acct-{i:05}"), format!("day-{i}"))).collect();
    spike.extend((0..n).step_by(20).map(|i| (format!("acct-{i:05}"), format!("day-{i}"))));
    spike.extend(
        (0..n)
            .step_by(25)
            .map(|i| (format!("acct-{i:05}"), format!("second-{i}"))),
    );
    let spike_started = Instant::now();
    let after = fire_claims(&stack.apis, spike, 128, None).await;
    let spike_secs = spike_started.elapsed().as_secs_f64();
    stack
        .wait_count(
            "SELECT count(*) FROM payout_outbox WHERE published_at IS NOT NULL",
            sqlx::query_scalar("SELECT count(*) FROM interest_payouts")
                .fetch_one(stack.pool())
                .await?,
            Duration::from_secs(60),
        )
        .await?;
    Ok((after, spike_secs))
}

fn outcome(r: &ClaimResult) -> String {
    match (r.status, r.code.as_deref()) {
        (0, _) => "no answer".into(),
        (201, _) if r.replayed => "201 replayed (same key)".into(),
        (201, _) => "201 paid".into(),
        (s, Some(code)) => format!("{s} {code}"),
        (s, None) => format!("{s}"),
    }
}

async fn report(stack: &Stack, before: &[ClaimResult], after: &[ClaimResult], spike_secs: f64) -> anyhow::Result<()> {
    println!("\nClaims by outcome (final answer; 202s followed to the end)");
    for (label, results) in [("before 00:00", before), ("from 00:00", after)] {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for r in results {
            *counts.entry(outcome(r)).or_default() += 1;
        }
        let accepted = results.iter().filter(|r| r.first_status == 202).count();
        println!("  {label}: {} claims, {accepted} answered 202 first", results.len());
        for (k, v) in counts {
            println!("    {k:<32} {v:>7}");
        }
    }
    let (p50, p95, p99, max) = percentiles(after);
    println!(
        "\nThe spike: {} claims in {:.2} s = {:.0} claims/s",
        after.len(),
        spike_secs,
        after.len() as f64 / spike_secs
    );
    println!("  latency send → final answer: p50 {p50} ms, p95 {p95} ms, p99 {p99} ms, max {max} ms");

    println!("\nPayouts by business date (interest_payouts)");
    let rows = sqlx::query(
        "SELECT business_date::text, kind, count(*), sum(gross)::text, sum(income_tax + local_tax + rural_tax)::text, sum(net)::text
         FROM interest_payouts GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(stack.pool())
    .await?;
    println!(
        "  {:<12} {:<6} {:>7} {:>14} {:>12} {:>14}",
        "date", "kind", "count", "gross", "tax", "net"
    );
    for r in rows {
        let (d, k, c, g, t, n): (String, String, i64, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        println!("  {d:<12} {k:<6} {c:>7} {g:>14} {t:>12} {n:>14}");
    }
    let dupes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT account_id, business_date FROM interest_payouts WHERE kind = 'claim'
          GROUP BY 1, 2 HAVING count(*) > 1) d",
    )
    .fetch_one(stack.pool())
    .await?;
    println!("  accounts paid twice on one business date: {dupes}");

    first_rows(stack).await?;
    println!("\nWhere to look next");
    println!("  interest-now report payouts --date <D>     the payout table for finance (CSV)");
    println!("  interest-now simulate --plans examples/plans.json --events examples/events.jsonl");
    println!(
        "  ARCHITECTURE.md (the claim path), docs/FINANCE.md, openapi.yaml; logs under {}",
        stack.log_dir().display()
    );
    Ok(())
}

/// The first rows of the payout table, as finance sees them.
async fn first_rows(stack: &Stack) -> anyhow::Result<()> {
    println!("\nFirst rows of the payout table");
    let rows = sqlx::query(
        "SELECT account_id, business_date::text, period_start, period_end, gross::text, income_tax::text,
                local_tax::text, net::text, plan_id
         FROM interest_payouts ORDER BY accepted_at, account_id LIMIT 6",
    )
    .fetch_all(stack.pool())
    .await?;
    println!(
        "  {:<11} {:<11} {:<30} {:<30} {:>7} {:>6} {:>5} {:>7} plan",
        "account", "date", "period_start", "period_end", "gross", "income", "local", "net"
    );
    for r in rows {
        let ps: DateTime<Utc> = r.get(2);
        let pe: DateTime<Utc> = r.get(3);
        let (a, d, g, it, lt, n, p): (String, String, String, String, String, String, String) =
            (r.get(0), r.get(1), r.get(4), r.get(5), r.get(6), r.get(7), r.get(8));
        println!(
            "  {a:<11} {d:<11} {:<30} {:<30} {g:>7} {it:>6} {lt:>5} {n:>7} {p}",
            format_instant(ps),
            format_instant(pe)
        );
    }
    Ok(())
}
