//! The load generator of the demo and the benchmarks: claims fired at the
//! API processes like a bank backend would, 202s followed to the end.
//!
//! `bench spike` runs it as a process of its own ([`LoadGen`], the hidden
//! subcommand `xtask loadgen`), so its CPU is accounted apart from the
//! benchmark's own work and it competes with the service like any client:
//! it opens its connections just before the start (kept alive and reused
//! for every claim), waits for the start instant, fires, writes each claim's
//! fate to a file, prints one JSON line and exits when its stdin closes (so
//! its CPU can be read while it still exists).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;

use crate::stack::TOKEN;

/// One claim's fate as the client saw it.
#[derive(Debug, Clone)]
pub struct ClaimResult {
    pub account: String,
    /// The final status: a 202 is followed until the claim is done.
    pub status: u16,
    pub first_status: u16,
    /// Answered with `Idempotent-Replayed: true`.
    pub replayed: bool,
    pub code: Option<String>,
    pub business_date: Option<String>,
    pub latency: Duration,
    /// When the final answer arrived, from the start of the run.
    pub done_at: Duration,
}

/// A claim to send: account, idempotency key.
pub type ClaimSpec = (String, String);

/// Fires claims with `concurrency` connections; `rate_per_s` = None is as fast
/// as the service answers, Some(r) is an open-loop schedule of r per second
/// (late requests are sent at once, and their latency counts from the schedule).
pub async fn fire_claims(
    apis: &[SocketAddr],
    claims: Vec<ClaimSpec>,
    concurrency: usize,
    rate_per_s: Option<u64>,
) -> Vec<ClaimResult> {
    fire_with(&client(concurrency), apis, claims, concurrency, rate_per_s).await
}

/// One HTTP client for a run: keep-alive connections, reused by every claim.
fn client(concurrency: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .pool_idle_timeout(interest_now_harness::CLIENT_POOL_IDLE)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn fire_with(
    client: &reqwest::Client,
    apis: &[SocketAddr],
    claims: Vec<ClaimSpec>,
    concurrency: usize,
    rate_per_s: Option<u64>,
) -> Vec<ClaimResult> {
    let start = tokio::time::Instant::now();
    let apis = apis.to_vec();
    futures::stream::iter(claims.into_iter().enumerate())
        .map(|(i, (account, key))| {
            let (client, apis) = (client.clone(), apis.clone());
            async move {
                let scheduled = match rate_per_s {
                    Some(r) => start + Duration::from_micros(i as u64 * 1_000_000 / r.max(1)),
                    None => tokio::time::Instant::now(),
                };
                tokio::time::sleep_until(scheduled).await;
                let api = apis[i % apis.len()];
                let mut r = claim_until_done(&client, api, account, &key, scheduled).await;
                r.done_at = start.elapsed();
                r
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

async fn claim_until_done(
    client: &reqwest::Client,
    api: SocketAddr,
    account: String,
    key: &str,
    scheduled: tokio::time::Instant,
) -> ClaimResult {
    let url = format!("http://{api}/v1/accounts/{account}/interest/claims");
    let mut result = ClaimResult {
        account,
        status: 0,
        first_status: 0,
        replayed: false,
        code: None,
        business_date: None,
        latency: Duration::ZERO,
        done_at: Duration::ZERO,
    };
    let resp = client
        .post(&url)
        .bearer_auth(TOKEN)
        .header("Idempotency-Key", key)
        .send()
        .await;
    let Ok(resp) = resp else {
        result.latency = scheduled.elapsed();
        return result;
    };
    result.first_status = resp.status().as_u16();
    result.replayed = resp
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v.as_bytes() == b"true");
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut status = result.first_status;
    // The database check after the run verifies payouts; parse bodies only where the client needs them.
    let mut body: serde_json::Value = if status == 201 {
        let _ = resp.bytes().await;
        serde_json::Value::Null
    } else {
        resp.json().await.unwrap_or_default()
    };
    if status == 202 {
        let url = format!("http://{api}{}", location.unwrap_or_default());
        for _ in 0..600 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let Ok(r) = client.get(&url).bearer_auth(TOKEN).send().await else {
                continue;
            };
            let s: serde_json::Value = r.json().await.unwrap_or_default();
            if s["state"] == "done" {
                status = s["status"].as_u64().unwrap_or(0) as u16;
                body = if status == 201 {
                    s["payout"].clone()
                } else {
                    s["problem"].clone()
                };
                break;
            }
        }
    }
    result.status = status;
    result.code = body["code"].as_str().map(str::to_owned);
    result.business_date = body["business_date"].as_str().map(str::to_owned);
    result.latency = scheduled.elapsed();
    result
}

/// Latency percentiles in milliseconds: (p50, p95, p99, max).
pub fn percentiles(results: &[ClaimResult]) -> (u64, u64, u64, u64) {
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 120_000, 3).expect("histogram");
    for r in results {
        let _ = h.record((r.latency.as_millis() as u64).clamp(1, 120_000));
    }
    (
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.95),
        h.value_at_quantile(0.99),
        h.max(),
    )
}

/// `xtask loadgen`: what the load generator process is told.
pub struct LoadGenArgs {
    pub apis: Vec<SocketAddr>,
    /// One claim a line: `account<TAB>idempotency key`.
    pub claims: PathBuf,
    pub concurrency: usize,
    pub rate: Option<u64>,
    /// The start instant, Unix milliseconds.
    pub start_at_ms: i64,
    /// Where each claim's fate is written ([`write_results`]).
    pub out: PathBuf,
}

/// The body of `xtask loadgen`: opens the connections just before the
/// start, fires at the start, writes the results; returns its JSON line.
pub async fn loadgen(a: LoadGenArgs) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(&a.claims)?;
    let claims: Vec<ClaimSpec> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(acct, key)| (acct.to_owned(), key.to_owned()))
        .collect();
    let client = client(a.concurrency);
    let until = |ms: i64| Duration::from_millis((ms - chrono::Utc::now().timestamp_millis()).max(0) as u64);
    // Connections opened within the server's keep-alive (5 s) of the start, then reused.
    tokio::time::sleep(until(a.start_at_ms - 1_000)).await;
    let warm = futures::stream::iter(0..a.concurrency)
        .map(|i| {
            let url = format!(
                "http://{}/v1/claims/00000000-0000-7000-8000-000000000000",
                a.apis[i % a.apis.len()]
            );
            let client = client.clone();
            async move { client.get(url).bearer_auth(TOKEN).send().await.is_ok() }
        })
        .buffer_unordered(a.concurrency)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    tokio::time::sleep(until(a.start_at_ms)).await;
    let late_ms = chrono::Utc::now().timestamp_millis() - a.start_at_ms;
    let t = std::time::Instant::now();
    let results = fire_with(&client, &a.apis, claims, a.concurrency, a.rate).await;
    let secs = t.elapsed().as_secs_f64();
    write_results(&a.out, &results)?;
    Ok(serde_json::json!({"claims": results.len(), "secs": secs, "connections_warmed": warm, "late_start_ms": late_ms}))
}

/// One line per claim: status, first status, replayed, code (`-`: none),
/// latency µs, done at µs, account.
pub fn write_results(path: &Path, results: &[ClaimResult]) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(results.len() * 48);
    for r in results {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.status,
            r.first_status,
            u8::from(r.replayed),
            r.code.as_deref().unwrap_or("-"),
            r.latency.as_micros(),
            r.done_at.as_micros(),
            r.account
        );
    }
    std::fs::write(path, out)?;
    Ok(())
}

/// Reads what [`write_results`] wrote.
pub fn read_results(path: &Path) -> anyhow::Result<Vec<ClaimResult>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(7, '\t').collect();
            anyhow::ensure!(f.len() == 7, "load generator result line {l:?}");
            let us = |s: &str| -> anyhow::Result<Duration> { Ok(Duration::from_micros(s.parse()?)) };
            Ok(ClaimResult {
                status: f[0].parse()?,
                first_status: f[1].parse()?,
                replayed: f[2] == "1",
                code: (f[3] != "-").then(|| f[3].to_owned()),
                latency: us(f[4])?,
                done_at: us(f[5])?,
                account: f[6].to_owned(),
                business_date: None,
            })
        })
        .collect()
}

/// A running `xtask loadgen` process.
pub struct LoadGen {
    child: tokio::process::Child,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    out: PathBuf,
}

impl LoadGen {
    /// Starts the load generator (this executable, `loadgen`), to fire
    /// `claims` at `apis` from `start_at_ms`; its files go in `dir`.
    pub async fn start(
        dir: &Path,
        apis: &[SocketAddr],
        claims: &[ClaimSpec],
        concurrency: usize,
        rate: Option<u64>,
        start_at_ms: i64,
    ) -> anyhow::Result<LoadGen> {
        use anyhow::Context as _;
        use tokio::io::AsyncBufReadExt as _;
        std::fs::create_dir_all(dir)?;
        let spec = dir.join("claims.tsv");
        let out = dir.join("results.tsv");
        let mut text = String::new();
        for (account, key) in claims {
            text.push_str(account);
            text.push('\t');
            text.push_str(key);
            text.push('\n');
        }
        std::fs::write(&spec, text)?;
        let apis: Vec<String> = apis.iter().map(|a| a.to_string()).collect();
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.arg("loadgen")
            .arg("--apis")
            .arg(apis.join(","))
            .arg("--claims")
            .arg(&spec)
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .arg("--start-at-ms")
            .arg(start_at_ms.to_string())
            .arg("--out")
            .arg(&out)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(r) = rate {
            cmd.arg("--rate").arg(r.to_string());
        }
        let mut child = cmd.spawn().context("starting the load generator (xtask loadgen)")?;
        let stdout = tokio::io::BufReader::new(child.stdout.take().context("loadgen stdout")?).lines();
        Ok(LoadGen { child, stdout, out })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the run's end: its JSON line and the results. The process
    /// stays until [`LoadGen::finish`], so its CPU can still be read.
    pub async fn results(&mut self) -> anyhow::Result<(serde_json::Value, Vec<ClaimResult>)> {
        let line = self.stdout.next_line().await?;
        let Some(line) = line else {
            let status = self.child.wait().await?;
            anyhow::bail!("the load generator exited ({status}) without its results");
        };
        let summary: serde_json::Value = serde_json::from_str(&line)?;
        Ok((summary, read_results(&self.out)?))
    }

    /// Closes its stdin, and waits for it to exit.
    pub async fn finish(mut self) {
        drop(self.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip_through_the_file() {
        let r = ClaimResult {
            account: "acct-000001".into(),
            status: 201,
            first_status: 202,
            replayed: true,
            code: Some("claim_in_progress".into()),
            business_date: None,
            latency: Duration::from_micros(12_345),
            done_at: Duration::from_micros(1_000_001),
        };
        let plain = ClaimResult {
            code: None,
            replayed: false,
            ..r.clone()
        };
        let path = std::env::temp_dir().join(format!("xtask-results-{}.tsv", std::process::id()));
        write_results(&path, &[r.clone(), plain]).unwrap();
        let back = read_results(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(back.len(), 2);
        assert_eq!(
            (
                back[0].status,
                back[0].first_status,
                back[0].replayed,
                back[0].code.as_deref()
            ),
            (201, 202, true, Some("claim_in_progress"))
        );
        assert_eq!((back[0].latency, back[0].done_at), (r.latency, r.done_at));
        assert_eq!((back[1].code.as_deref(), back[1].replayed), (None, false));
        assert_eq!(back[1].account, "acct-000001");
    }
}
