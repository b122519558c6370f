//! What `bench aged` measures, each through the real service or binary:
//! snapshot apply (the real workers, from the broker), `GET …/interest` and
//! claims (HTTP through the API process), `close-day` and `maintain` (the
//! binary's commands), and the tables' rows and bytes per account.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Value};

use crate::load::{fire_claims, ClaimSpec};
use crate::stack::{Stack, TOKEN};

/// The per-account tables (and the partitions of any that are partitioned).
pub const TABLES: [&str; 8] = [
    "accounts",
    "balance_points",
    "interest_payouts",
    "payout_outbox",
    "claims",
    "idempotency_keys",
    "daily_accruals",
    "dead_letters",
];

/// p50 and p99 of `samples`, in milliseconds (two decimals), and their count.
pub fn latency(mut samples: Vec<Duration>) -> Value {
    samples.sort();
    let at = |q: f64| -> f64 {
        if samples.is_empty() {
            return 0.0;
        }
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        (samples[i].as_secs_f64() * 100_000.0).round() / 100.0
    };
    json!({"p50": at(0.50), "p99": at(0.99), "n": samples.len()})
}

/// Produces the snapshots and waits until the workers applied all of them
/// (`balance_points` received since just before the first send, for these
/// accounts); returns microseconds per snapshot, sending included.
pub async fn apply_us(stack: &Stack, snapshots: Vec<(String, String)>) -> anyhow::Result<f64> {
    let ids: Vec<String> = snapshots.iter().map(|(id, _)| id.clone()).collect();
    let n = snapshots.len() as i64;
    if n == 0 {
        return Ok(0.0);
    }
    let since = stack.service_now() - chrono::Duration::milliseconds(5);
    let t = Instant::now();
    stack
        .env
        .produce_many("balance-snapshots", snapshots.into_iter())
        .await?;
    let deadline = t + Duration::from_secs(600);
    loop {
        let applied: i64 =
            sqlx::query_scalar("SELECT count(*) FROM balance_points WHERE account_id = ANY($1) AND received_at >= $2")
                .bind(&ids)
                .bind(since)
                .fetch_one(stack.pool())
                .await?;
        if applied >= n {
            break;
        }
        let refused: Option<(String, String)> =
            sqlx::query_as("SELECT error, detail FROM dead_letters ORDER BY seq DESC LIMIT 1")
                .fetch_optional(stack.pool())
                .await?;
        if let Some((error, detail)) = refused {
            bail!("a measured snapshot was refused: {error}: {detail} ({applied} of {n} applied)");
        }
        if Instant::now() > deadline {
            bail!("{applied} of {n} snapshots applied after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((t.elapsed().as_secs_f64() * 1e6 / n as f64 * 10.0).round() / 10.0)
}

/// `GET /v1/accounts/{id}/interest` for every account of `ids` (in the
/// order given, `concurrency` at once); the latency of each 200, by account.
pub async fn get_interest(
    stack: &Stack,
    ids: &[String],
    concurrency: usize,
) -> anyhow::Result<Vec<(String, Duration)>> {
    use futures::StreamExt;
    let client = reqwest::Client::builder()
        .pool_idle_timeout(interest_now_harness::CLIENT_POOL_IDLE)
        .timeout(Duration::from_secs(30))
        .build()?;
    let api = stack.apis[0];
    let results: Vec<anyhow::Result<(String, Duration)>> = futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let client = client.clone();
            async move {
                let t = Instant::now();
                let url = format!("http://{api}/v1/accounts/{id}/interest");
                let r = client.get(&url).bearer_auth(TOKEN).send().await?;
                let status = r.status();
                let _ = r.bytes().await?;
                if status != 200 {
                    bail!("GET {url}: {status}");
                }
                Ok((id, t.elapsed()))
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

/// One claim per account of `ids` through the API (keys of this run);
/// the latency of each by account, and how many were not 201.
pub async fn claims(stack: &Stack, ids: &[String], concurrency: usize) -> (Vec<(String, Duration)>, usize) {
    let specs: Vec<ClaimSpec> = ids.iter().map(|id| (id.clone(), format!("aged-{id}"))).collect();
    let results = fire_claims(&stack.apis, specs, concurrency, None).await;
    let not_paid = results.iter().filter(|r| r.status != 201).count();
    (results.into_iter().map(|r| (r.account, r.latency)).collect(), not_paid)
}

/// Runs `interest-now ARGS` to completion; its wall time in ms and its stdout.
pub fn timed(stack: &Stack, args: &[&str]) -> anyhow::Result<(u64, String)> {
    let t = Instant::now();
    let out = stack.env.run(args)?;
    Ok((t.elapsed().as_millis() as u64, out))
}

/// Whether the binary has `maintain` (`maintain --help` succeeds).
pub fn has_maintain(stack: &Stack) -> bool {
    stack.env.run(&["maintain", "--help"]).is_ok()
}

/// Rows and bytes (`pg_total_relation_size`, summed over partitions) of
/// each per-account table, and both per account.
pub async fn sizes(stack: &Stack) -> anyhow::Result<Value> {
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
        .fetch_one(stack.pool())
        .await?;
    let per = |x: i64| (x as f64 / accounts.max(1) as f64 * 10.0).round() / 10.0;
    let (mut rows_total, mut bytes_total) = (0_i64, 0_i64);
    let mut tables = serde_json::Map::new();
    for t in TABLES {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(t)
            .fetch_one(stack.pool())
            .await?;
        if !exists {
            continue;
        }
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {t}"))
            .fetch_one(stack.pool())
            .await?;
        let bytes: i64 = sqlx::query_scalar(
            "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree($1::regclass)),
                             pg_total_relation_size($1::regclass))::bigint",
        )
        .bind(t)
        .fetch_one(stack.pool())
        .await?;
        rows_total += rows;
        bytes_total += bytes;
        tables.insert(
            t.to_owned(),
            json!({"rows_per_account": per(rows), "bytes_per_account": per(bytes)}),
        );
    }
    Ok(json!({
        "accounts": accounts,
        "rows_per_account": per(rows_total),
        "bytes_per_account": per(bytes_total),
        "tables": tables,
    }))
}

/// Rows per account of a group (by id prefix) in each per-account table
/// that has an `account_id`, and their sum.
pub async fn rows_per_account(stack: &Stack, prefix: &str) -> anyhow::Result<Value> {
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts WHERE account_id LIKE $1 || '%'")
        .bind(prefix)
        .fetch_one(stack.pool())
        .await?;
    let mut out = serde_json::Map::new();
    let mut total = 0_i64;
    for t in TABLES.iter().filter(|t| **t != "dead_letters") {
        // The outbox keys its rows by the account id (the Kafka key).
        let column = if *t == "payout_outbox" {
            "message_key"
        } else {
            "account_id"
        };
        let sql = format!("SELECT count(*) FROM {t} WHERE {column} LIKE $1 || '%'");
        let rows: i64 = sqlx::query_scalar(&sql).bind(prefix).fetch_one(stack.pool()).await?;
        total += rows;
        out.insert((*t).to_owned(), json!(per(rows, accounts)));
    }
    out.insert("total".into(), json!(per(total, accounts)));
    Ok(Value::Object(out))
}

fn per(x: i64, accounts: i64) -> f64 {
    (x as f64 / accounts.max(1) as f64 * 10.0).round() / 10.0
}
