//! The load generator of the demo and the benchmarks: claims fired at the
//! API processes like a bank backend would, 202s followed to the end.

use std::net::SocketAddr;
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
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
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
                claim_until_done(&client, api, account, &key, scheduled).await
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
