//! Drills of the bank that never sleeps (issue 14): real processes on
//! loopback, bounded in count and time, each ending with the audit — every
//! claim answered 201/202 paid exactly once, nothing else paid, the outbox
//! drained. Figures are printed as one JSON line (`drill: {...}`), never
//! asserted as timings.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::Duration as Dur;
use interest_now::money::types::{format_instant, kst, kst_midnight_utc};
use sqlx::Row;

use crate::harness::{free_addr, now, suite_offset, Api, Env, Service};

/// How one claim went: its final status, how many requests it took, and how
/// long the client waited from the first request to the final answer.
#[derive(Debug, Clone)]
struct Outcome {
    status: u16,
    attempts: usize,
    waited: Duration,
}

/// A backend as a bank's would behave: the same key on 503 or a refused
/// connection, after the `Retry-After` it is given (200 ms when there is
/// none), against whichever API is in rotation now.
async fn claim_as_a_backend(apis: &RwLock<Vec<Api>>, account: &str, key: &str, limit: Duration) -> Outcome {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        let api = {
            let list = apis.read().unwrap();
            list[attempts % list.len()].clone()
        };
        attempts += 1;
        let url = format!("http://{}/v1/accounts/{account}/interest/claims", api.http);
        let sent = api
            .client
            .post(&url)
            .bearer_auth(crate::harness::TOKEN)
            .header("Idempotency-Key", key)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let mut pause = Duration::from_millis(200);
        if let Ok(r) = sent {
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            assert!(status < 500 || status == 503, "{account}: {status} {body}");
            let in_progress = status == 409 && body["code"] == "claim_in_progress";
            if status != 503 && !in_progress {
                return Outcome {
                    status,
                    attempts,
                    waited: started.elapsed(),
                };
            }
            if let Some(secs) = retry_after {
                pause = Duration::from_secs(secs);
            }
        }
        assert!(started.elapsed() < limit, "{account}: no final answer within {limit:?}");
        tokio::time::sleep(pause).await;
    }
}

/// Replaces every process one at a time, the way the chart's rollout does
/// (maxSurge 1, maxUnavailable 0): the new one starts and becomes ready, the
/// old one leaves rotation and gets SIGTERM, and the next waits until it exited.
async fn roll(env: &Env, apis: &RwLock<Vec<Api>>, mut olds: Vec<Service>, extra: &[(&str, &str)]) -> Vec<Service> {
    let mut news = Vec::new();
    while let Some(mut old) = (!olds.is_empty()).then(|| olds.remove(0)) {
        let new = env.serve_on(&old.role, free_addr(), extra).await;
        if old.role == "api" {
            let mut list = apis.write().unwrap();
            list.push(new.api.clone());
            list.retain(|a| a.http != old.api.http);
        }
        old.sigterm();
        tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(45)));
        news.push(new);
    }
    news
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_through_midnight_replaces_every_process_and_loses_nothing() {
    const ACCOUNTS: usize = 300;
    const RATE_PER_S: u64 = 30;
    let env = Env::new(4).await;
    // The service clock stands 5 s before the next 00:00 KST when the claims start.
    let suite_now = now();
    let midnight = kst_midnight_utc(suite_now.with_timezone(&kst()).date_naive() + Dur::days(1));
    let lead_s = 25; // start-up and loading, then 5 s of claims before midnight
    let offset = suite_offset() + (midnight - suite_now).num_seconds() - lead_s;
    let offset_text = offset.to_string();
    let extra = [
        ("CLOCK_OFFSET_SECONDS", offset_text.as_str()),
        ("CLAIM_WAIT_MS", "1000"),
    ];
    let mut olds = Vec::new();
    for role in ["api", "api", "worker", "worker"] {
        olds.push(env.serve(role, &extra).await);
    }
    let apis = Arc::new(RwLock::new(
        olds.iter()
            .filter(|s| s.role == "api")
            .map(|s| s.api.clone())
            .collect::<Vec<_>>(),
    ));
    let service_now = move || chrono::Utc::now() + Dur::seconds(offset);
    let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("up-{i:04}")).collect();
    let as_of = format_instant(service_now() - Dur::days(2));
    for a in &accounts {
        env.snapshot(a, 1, "100000000", &as_of).await;
    }
    env.wait_accounts(ACCOUNTS as i64).await;
    let start = midnight - Dur::seconds(5);
    tokio::time::sleep((start - service_now()).to_std().unwrap_or_default()).await;

    // Claims at a steady rate through midnight, while every process is replaced.
    let clients = accounts.iter().enumerate().map(|(i, a)| {
        let (apis, a) = (apis.clone(), a.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i as u64 * 1000 / RATE_PER_S)).await;
            let key = format!("upgrade-{a}");
            (
                a.clone(),
                claim_as_a_backend(&apis, &a, &key, Duration::from_secs(60)).await,
            )
        })
    });
    let clients = futures::future::join_all(clients);
    let (outcomes, news) = tokio::join!(clients, async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        roll(&env, &apis, std::mem::take(&mut olds), &extra).await
    });
    let outcomes: HashMap<String, Outcome> = outcomes.into_iter().map(|r| r.unwrap()).collect();
    let audited = audit(&env, &outcomes, midnight).await;
    report(&outcomes, audited);
    drop(news);
    env.drop_db().await;
}

/// Every account was answered 201 or 202 and has exactly one payout (202s
/// are paid by the workers that replaced the old ones); business dates on
/// both sides of midnight; every payout published.
async fn audit(
    env: &Env,
    outcomes: &HashMap<String, Outcome>,
    midnight: chrono::DateTime<chrono::Utc>,
) -> (usize, usize) {
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| !matches!(o.status, 201 | 202))
        .collect();
    assert!(refused.is_empty(), "claims that failed: {refused:?}");
    env.wait_count(
        "SELECT count(DISTINCT account_id) FROM interest_payouts",
        outcomes.len() as i64,
    )
    .await;
    let rows = sqlx::query("SELECT account_id, count(*) AS n FROM interest_payouts GROUP BY account_id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    let paid: HashMap<String, i64> = rows.iter().map(|r| (r.get("account_id"), r.get("n"))).collect();
    let lost = outcomes.keys().filter(|a| !paid.contains_key(*a)).count();
    let doubled = paid.values().filter(|n| **n > 1).count();
    let strangers = paid.keys().filter(|a| !outcomes.contains_key(*a)).count();
    assert_eq!(
        (lost, doubled, strangers),
        (0, 0, 0),
        "lost, paid twice, paid without a claim"
    );
    let day = midnight.with_timezone(&kst()).date_naive();
    let dates: Vec<chrono::NaiveDate> =
        sqlx::query_scalar("SELECT DISTINCT business_date FROM interest_payouts ORDER BY 1")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        dates,
        vec![day - Dur::days(1), day],
        "claims on both sides of 00:00 KST"
    );
    env.wait_count("SELECT count(*) FROM payout_outbox WHERE published_at IS NULL", 0)
        .await;
    (lost, doubled)
}

fn report(outcomes: &HashMap<String, Outcome>, (lost, doubled): (usize, usize)) {
    let mut waits: Vec<u128> = outcomes.values().map(|o| o.waited.as_millis()).collect();
    waits.sort_unstable();
    let p99 = waits[(waits.len() * 99 / 100).min(waits.len() - 1)];
    let retried = outcomes.values().filter(|o| o.attempts > 1).count();
    let accepted_202 = outcomes.values().filter(|o| o.status == 202).count();
    println!(
        "drill: {}",
        serde_json::json!({
            "drill": "upgrade_through_midnight",
            "claims": outcomes.len(),
            "needed_a_retry": retried,
            "answered_202": accepted_202,
            "wait_ms_p99": p99,
            "wait_ms_max": waits.last(),
            "lost": lost,
            "doubled": doubled,
        })
    );
}
