//! Drills of the bank that never sleeps (issue 14): real processes on
//! loopback, bounded in count and time, each ending with the audit — every
//! claim answered 201/202 paid exactly once, nothing else paid, the outbox
//! drained. Figures are printed as one JSON line (`drill: {...}`), never
//! asserted as timings.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::Duration as Dur;
use interest_now::money::types::{format_instant, kst, kst_midnight_utc};
use sqlx::Row;

use crate::harness::{free_addr, now, suite_offset, Api, Env, Service};

mod downstream;
mod frozen;
mod netns;
mod timeline;

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

/// Drill 5, downstream isolation: core banking stops reading
/// `interest-payouts`, then the topic is gone (deleted: no write can
/// succeed) for `DRILL_DOWNSTREAM_OUTAGE_S` (12 s here, 60 s in the full
/// drill) while claims flow at a steady rate. Claims keep being paid and
/// answered at the same speed, the outbox holds the payouts
/// (`outbox_pending` past the chart's alert threshold), and when the topic is
/// back every payout reaches it, in period order per account, any duplicate
/// byte-identical under its `payout_id`.
///
/// It found a per-account ordering defect of the relay after the topic
/// returns (one account's payout published after three later ones: sends in
/// flight together landed out of order when some failed); the relay now
/// sends at most one payout per account at a time (`Relay::publish`). Not
/// back in CI until it has passed a few runs on a quiet machine (one pass
/// after the fix so far; docs/RELIABILITY.md); run it with `scripts/drill
/// downstream`.
#[ignore = "35 s drill, not yet back in CI; scripts/drill downstream"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn downstream_isolation_claims_flow_while_the_payouts_topic_is_gone() {
    let plan = downstream::Plan::from_env();
    let env = Env::new(4).await;
    let svc = env
        .serve("all", &[("CLAIMS_PER_DAY", "100000"), ("CLAIM_WAIT_MS", "1000")])
        .await;
    let as_of = format_instant(now() - Dur::days(2));
    for i in 0..plan.accounts {
        env.snapshot(&downstream::account(i), 1, "10000000000", &as_of).await;
    }
    env.wait_accounts(plan.accounts as i64).await;
    let apis = Arc::new(RwLock::new(vec![svc.api.clone()]));
    let run = run_downstream(&env, &svc, apis, plan).await;
    let audited = audit_keys(&env, &run.claims).await;
    let topic = downstream_topic_audit(&env, &run).await;
    let drained_s = downstream::drained_s(&env, run.returned_at).await;
    let figures = downstream_figures(plan, &run, audited, &topic, drained_s);
    println!("drill: {figures}");
    let svg = downstream_timeline(plan, &run);
    println!("timeline: {}", timeline::write("downstream", &svg, &figures).display());
    assert_claims_kept_flowing(plan, &figures);
    drop(svc);
    env.drop_db().await;
}

/// While the topic was gone, claims were paid at once at the offered rate
/// (a relay stuck on the topic must not hold the worker up), and the gauge
/// the alert reads rose with the backlog. Loose bounds: a shared machine.
fn assert_claims_kept_flowing(plan: downstream::Plan, figures: &serde_json::Value) {
    let gone = &figures["topic_gone"];
    let paid_per_s = gone["answered_201_per_s"].as_f64().unwrap();
    assert!(
        paid_per_s >= 0.8 * plan.rate_per_s as f64,
        "claims paid at once while the topic was gone: {paid_per_s}/s"
    );
    let queued = gone["answered_202"].as_u64().unwrap();
    assert!(
        queued * 100 <= plan.rate_per_s * plan.outage_s,
        "{queued} claims answered 202 while the topic was gone"
    );
    let pending = figures["outbox_pending_max_metric"].as_u64().unwrap();
    assert!(
        pending * 2 >= plan.rate_per_s * plan.outage_s,
        "outbox_pending on /metrics rose only to {pending}"
    );
}

/// What the load, the sampler and the tap recorded.
struct DownstreamRun {
    claims: Vec<downstream::Claim>,
    samples: Vec<downstream::Sample>,
    before_deletion: Vec<downstream::Copy>,
    /// The database's clock just before the topic was created again.
    returned_at: chrono::DateTime<chrono::Utc>,
}

/// The load for the whole plan; meanwhile the topic goes and comes back.
async fn run_downstream(
    env: &Env,
    svc: &Service,
    apis: Arc<RwLock<Vec<Api>>>,
    plan: downstream::Plan,
) -> DownstreamRun {
    let tap_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tap = downstream::tap_until_stopped(env, tap_stop.clone());
    let t0 = Instant::now();
    let (claims, samples, returned_at) = tokio::join!(
        downstream::load(apis, plan, t0),
        downstream::sample(env, svc, t0, plan.total_s()),
        async {
            tokio::time::sleep_until((t0 + Duration::from_secs(plan.before_s)).into()).await;
            downstream::delete_payouts_topic(env).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            tap_stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let back = t0 + Duration::from_secs(plan.before_s + plan.outage_s);
            tokio::time::sleep_until(back.into()).await;
            let returned_at: chrono::DateTime<chrono::Utc> =
                sqlx::query_scalar("SELECT now()").fetch_one(&env.pool).await.unwrap();
            downstream::create_payouts_topic(env).await;
            returned_at
        },
    );
    DownstreamRun {
        claims,
        samples,
        before_deletion: tap.join().unwrap(),
        returned_at,
    }
}

/// Every claim answered 201, or 202 and then completed as 201 (its key's
/// stored answer), has exactly one payout (by its key); every other claim
/// none (a 202 may complete as 422 when the account's previous claim, held
/// up, took the same second); nothing is paid without a 201/202.
async fn audit_keys(env: &Env, claims: &[downstream::Claim]) -> (usize, usize) {
    env.wait_count("SELECT count(*) FROM claims WHERE state = 'accepted'", 0)
        .await;
    let rows = sqlx::query(
        "SELECT k.idempotency_key, k.status::int4, count(p.payout_id)
           FROM idempotency_keys k LEFT JOIN interest_payouts p USING (idempotency_key)
          GROUP BY 1, 2",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let keys: HashMap<String, (Option<i32>, i64)> = rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect();
    let answered = |c: &downstream::Claim| keys.get(&c.key).copied().unwrap_or((None, 0));
    let accepted = |c: &&downstream::Claim| matches!(c.outcome.status, 201 | 202);
    let lost = claims
        .iter()
        .filter(accepted)
        .filter(|c| (c.outcome.status == 201 || answered(c).0 == Some(201)) && answered(c).1 == 0)
        .count();
    let doubled = keys.values().filter(|(_, n)| *n > 1).count();
    let unpaid_answer_paid = claims.iter().filter(|c| !accepted(c) && answered(c).1 > 0).count();
    let paid: i64 = keys.values().map(|(_, n)| n).sum();
    assert_eq!(paid, env.payout_count().await, "every payout has its claim's key");
    assert_eq!(
        (lost, doubled, unpaid_answer_paid),
        (0, 0, 0),
        "lost, paid twice, paid though answered otherwise"
    );
    env.wait_count("SELECT count(*) FROM payout_outbox WHERE published_at IS NULL", 0)
        .await;
    (lost, doubled)
}

/// Reads the topic that came back until every payout is accounted for, and
/// checks both reads against the database.
async fn downstream_topic_audit(env: &Env, run: &DownstreamRun) -> downstream::TopicAudit {
    let paid = downstream::paid(env, run.returned_at).await;
    let seen_before: std::collections::HashSet<String> = run.before_deletion.iter().map(|c| c.payout_id()).collect();
    let wanted: std::collections::HashSet<String> = paid
        .iter()
        .filter(|p| !seen_before.contains(&p.payout_id) && !p.published_before_return)
        .map(|p| p.payout_id.clone())
        .collect();
    let (brokers, topic) = (env.brokers.clone(), env.topic("interest-payouts"));
    let after = tokio::task::spawn_blocking(move || {
        downstream::tap(&brokers, &topic, Duration::from_secs(60), |copies| {
            let ids: std::collections::HashSet<String> = copies.iter().map(|c| c.payout_id()).collect();
            wanted.iter().all(|id| ids.contains(id))
        })
    })
    .await
    .unwrap();
    let all: Vec<downstream::Copy> = run.before_deletion.iter().chain(&after).cloned().collect();
    downstream::audit_topic(&all, &paid)
}

/// The chart's alert on the outbox (helm/interest-now): its threshold, after
/// checking that the rule compares the same gauge with it.
fn outbox_alert_threshold() -> i64 {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/interest-now");
    let rule = std::fs::read_to_string(chart.join("templates/prometheusrule.yaml")).unwrap();
    assert!(
        rule.contains("expr: max(outbox_pending{") && rule.contains("> {{ $t.outboxPending }}"),
        "the alert InterestNowOutboxPending no longer reads `max(outbox_pending) > threshold`"
    );
    let values = std::fs::read_to_string(chart.join("values.yaml")).unwrap();
    let thresholds = values.split_once("  thresholds:").unwrap().1;
    thresholds
        .lines()
        .find_map(|l| l.trim().strip_prefix("outboxPending:")?.trim().parse().ok())
        .expect("prometheusRule.thresholds.outboxPending in values.yaml")
}

/// Per phase (before, topic gone, after): claims answered per second, p99 and
/// max wait of the claims started in it, final answers other than 201/202.
fn phase_figures(plan: downstream::Plan, claims: &[downstream::Claim]) -> Vec<serde_json::Value> {
    let lengths = [plan.before_s, plan.outage_s, plan.after_s];
    (0..3)
        .map(|phase| {
            let started: Vec<&downstream::Claim> = claims
                .iter()
                .filter(|c| plan.phase(c.started.as_secs()) == phase)
                .collect();
            let answered: Vec<&downstream::Claim> = claims
                .iter()
                .filter(|c| c.done_s() < plan.total_s() && plan.phase(c.done_s()) == phase)
                .collect();
            let paid_at_once = answered.iter().filter(|c| c.outcome.status == 201).count();
            let mut waits: Vec<u128> = started.iter().map(|c| c.outcome.waited.as_millis()).collect();
            waits.sort_unstable();
            serde_json::json!({
                "answered_per_s": answered.len() as f64 / lengths[phase] as f64,
                "answered_201_per_s": paid_at_once as f64 / lengths[phase] as f64,
                "wait_ms_p99": percentile(&waits, 99),
                "wait_ms_max": waits.last(),
                "errors": started.iter().filter(|c| !matches!(c.outcome.status, 201 | 202)).count(),
                "answered_202": started.iter().filter(|c| c.outcome.status == 202).count(),
                "needed_a_retry": started.iter().filter(|c| c.outcome.attempts > 1).count(),
            })
        })
        .collect()
}

fn percentile(sorted: &[u128], p: usize) -> u128 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn downstream_figures(
    plan: downstream::Plan,
    run: &DownstreamRun,
    (lost, doubled): (usize, usize),
    topic: &downstream::TopicAudit,
    drained_s: f64,
) -> serde_json::Value {
    let [before, gone, after] = <[serde_json::Value; 3]>::try_from(phase_figures(plan, &run.claims)).unwrap();
    let threshold = outbox_alert_threshold();
    let metric_max = run.samples.iter().map(|s| s.metric).max().unwrap_or(0);
    serde_json::json!({
        "drill": "downstream",
        "rate_per_s": plan.rate_per_s,
        "outage_s": plan.outage_s,
        "claims": run.claims.len(),
        "before": before,
        "topic_gone": gone,
        "after": after,
        "outbox_pending_max_metric": metric_max,
        "outbox_pending_max_table": run.samples.iter().map(|s| s.table).max().unwrap_or(0),
        "alert_threshold": threshold,
        "alert_condition_met": metric_max > threshold,
        "drained_s_after_return": drained_s,
        "topic_copies": topic.copies,
        "duplicates_byte_identical": topic.duplicates,
        "lost_with_deleted_topic": topic.on_the_deleted_topic_only,
        "accounts_in_order": topic.accounts_in_order,
        "lost": lost,
        "doubled": doubled,
    })
}

/// Per second of the drill (a claim counts in the second it was answered):
/// answers, errors (neither 201 nor 202) and the p99 wait in ms.
fn per_second(claims: &[downstream::Claim], seconds: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut answered = vec![0.0; seconds];
    let mut errors = vec![0.0; seconds];
    let mut waits: Vec<Vec<u128>> = vec![Vec::new(); seconds];
    for c in claims {
        let s = (c.done_s() as usize).min(seconds - 1);
        answered[s] += 1.0;
        waits[s].push(c.outcome.waited.as_millis());
        if !matches!(c.outcome.status, 201 | 202) {
            errors[s] += 1.0;
        }
    }
    let p99: Vec<f64> = waits
        .iter_mut()
        .map(|w| {
            w.sort_unstable();
            percentile(w, 99) as f64
        })
        .collect();
    (answered, errors, p99)
}

/// The timeline per second: answers, p99 wait of the answers, errors, outbox pending.
fn downstream_timeline(plan: downstream::Plan, run: &DownstreamRun) -> String {
    let seconds = run
        .samples
        .last()
        .map_or(plan.total_s(), |s| s.second + 1)
        .max(plan.total_s()) as usize;
    let (answered, errors, p99) = per_second(&run.claims, seconds);
    let mut pending = vec![0.0; seconds];
    for s in &run.samples {
        pending[(s.second as usize).min(seconds - 1)] = s.metric.max(0) as f64;
    }
    let series = |title: &str, values: Vec<f64>| timeline::Series {
        title: title.to_owned(),
        values,
    };
    let fault = (plan.before_s as f64, (plan.before_s + plan.outage_s) as f64);
    timeline::svg(
        &format!(
            "downstream isolation: interest-payouts gone for {} s (shaded)",
            plan.outage_s
        ),
        seconds,
        fault,
        &[
            series("claims answered per second", answered),
            series("p99 wait of the answers, ms", p99),
            series("errors (final answers other than 201/202)", errors),
            series("outbox_pending (/metrics)", pending),
        ],
    )
}

/// Drill 2's and 4's mechanism: a namespace of the test's own with two veth
/// links to the host; cutting one stops TCP over it and leaves the other
/// alone, restoring it brings it back, and dropping the guard removes all.
#[ignore = "needs root (CAP_NET_ADMIN) and iproute2"]
#[test]
fn a_cut_link_drops_its_traffic_only_and_comes_back() {
    let ns = netns::Netns::create("t1", 231, &["broker", "database"]).expect("namespace (root?)");
    let (broker, database) = (ns.link("broker").clone(), ns.link("database").clone());
    let on_broker = std::net::TcpListener::bind((broker.host_addr, 0)).unwrap();
    let on_database = std::net::TcpListener::bind((database.host_addr, 0)).unwrap();
    let (bp, dp) = (
        on_broker.local_addr().unwrap().port(),
        on_database.local_addr().unwrap().port(),
    );
    assert!(netns::reaches(&ns, broker.host_addr, bp), "broker link before the cut");
    ns.cut("broker").unwrap();
    assert!(!netns::reaches(&ns, broker.host_addr, bp), "broker link cut");
    assert!(netns::reaches(&ns, database.host_addr, dp), "database link kept");
    // The host still reaches its own end's address (host processes keep the broker).
    assert!(std::net::TcpStream::connect((broker.host_addr, bp)).is_ok());
    ns.restore("broker").unwrap();
    assert!(netns::reaches(&ns, broker.host_addr, bp), "broker link restored");
    let name = ns.name.clone();
    drop(ns);
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&name),
        "namespace removed"
    );
    let host_if = std::process::Command::new("ip")
        .args(["link", "show", &broker.host_if])
        .output()
        .unwrap();
    assert!(!host_if.status.success(), "host veth end removed");
}

/// Drill 2, the frozen worker: two workers, claims at a steady rate; one
/// worker is stopped (SIGSTOP) for `DRILL_FROZEN_S` and continued. Every
/// claim answered 201/202 is paid once (fencing holds); the figures are how
/// long the frozen worker's claims waited (the takeover), and the
/// rebalances the survivor saw besides the two the freeze causes.
#[ignore = "45 s drill; scripts/drill frozen"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_worker_s_partitions_move_and_its_batch_is_fenced() {
    let plan = frozen::plan();
    let env = Env::new(4).await;
    let live = frozen::liveness_env();
    let mut extra: Vec<(&str, &str)> = vec![("CLAIMS_PER_DAY", "100000"), ("CLAIM_WAIT_MS", "15000")];
    extra.extend(live.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let api = env.serve("api", &extra).await;
    let survivor = env.serve("worker", &extra).await;
    let frozen_worker = env.serve("worker", &extra).await;
    let as_of = format_instant(now() - Dur::days(2));
    for i in 0..plan.accounts {
        env.snapshot(&downstream::account(i), 1, "10000000000", &as_of).await;
    }
    env.wait_accounts(plan.accounts as i64).await;
    let joined = frozen::events(&survivor.log, "partition_assigned");
    let apis = Arc::new(RwLock::new(vec![api.api.clone()]));
    let t0 = Instant::now();
    let pid = frozen_worker.child.id();
    let stop_sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn(frozen::sample_lock_waits(env.pool.clone(), stop_sampling.clone()));
    let (claims, caught) = tokio::join!(downstream::load(apis, plan, t0), async {
        tokio::time::sleep_until((t0 + Duration::from_secs(plan.before_s)).into()).await;
        let caught = frozen::stop_mid_batch(&env.pool, pid, 40).await;
        tokio::time::sleep(Duration::from_secs(plan.outage_s)).await;
        frozen::signal(pid, "-CONT");
        caught
    });
    stop_sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    let lock_waits = sampler.await.unwrap();
    let audited = audit_keys(&env, &claims).await;
    let mut figures = frozen_figures(plan, &claims, audited, &live, [&survivor, &frozen_worker], joined);
    figures["lock_waits"] = serde_json::to_value(lock_waits).unwrap();
    figures["stopped_mid_batch_after_tries"] = serde_json::json!(caught);
    println!("drill: {figures}");
    let svg = claims_timeline(plan, &claims, "frozen worker: SIGSTOP (shaded)");
    println!("timeline: {}", timeline::write("frozen", &svg, &figures).display());
    drop((api, survivor, frozen_worker));
    env.drop_db().await;
}

fn frozen_figures(
    plan: downstream::Plan,
    claims: &[downstream::Claim],
    (lost, doubled): (usize, usize),
    live: &[(String, String)],
    [survivor, frozen_worker]: [&Service; 2],
    joined: usize,
) -> serde_json::Value {
    let [before, during, after] = <[serde_json::Value; 3]>::try_from(phase_figures(plan, claims)).unwrap();
    serde_json::json!({
        "drill": "frozen",
        "liveness": live.iter().cloned().collect::<HashMap<String, String>>(),
        "rate_per_s": plan.rate_per_s,
        "frozen_s": plan.outage_s,
        "claims": claims.len(),
        "before": before,
        "frozen": during,
        "after": after,
        "survivor_assigned_events_before_load": joined,
        "survivor_assigned_events": frozen::events(&survivor.log, "partition_assigned"),
        "survivor_revoked_events": frozen::events(&survivor.log, "partition_revoked"),
        "frozen_fenced_events": frozen::events(&frozen_worker.log, "partition_fenced"),
        "frozen_revoked_events": frozen::events(&frozen_worker.log, "partition_revoked"),
        "lost": lost,
        "doubled": doubled,
    })
}

/// Answers, p99 wait of the answers and errors per second, the fault shaded.
fn claims_timeline(plan: downstream::Plan, claims: &[downstream::Claim], title: &str) -> String {
    let seconds = claims
        .iter()
        .map(|c| c.done_s() + 1)
        .max()
        .unwrap_or(0)
        .max(plan.total_s()) as usize;
    let (answered, errors, p99) = per_second(claims, seconds);
    let series = |title: &str, values: Vec<f64>| timeline::Series {
        title: title.to_owned(),
        values,
    };
    let fault = (plan.before_s as f64, (plan.before_s + plan.outage_s) as f64);
    timeline::svg(
        title,
        seconds,
        fault,
        &[
            series("claims answered per second", answered),
            series("p99 wait of the answers, ms", p99),
            series("errors (final answers other than 201/202)", errors),
        ],
    )
}
