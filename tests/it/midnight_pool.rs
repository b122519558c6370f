//! The midnight pool (issue 15 item 2): with the worker paused (a backlog, as
//! after a worker restart at 00:00), a spike of claims and their `GET` polls
//! must not turn the API unready or into 503 `unavailable`: claims are
//! answered 201, 202 or 503 `overloaded` at the in-flight bound, readiness
//! stays 200 throughout, and every accepted claim is paid once afterwards.
//!
//! The first test is the scenario at a size CI affords (on this machine it
//! also passed with the old single pool: 600 claims do not exhaust 16
//! connections); the second makes the starvation deterministic and fails
//! without the fix.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Duration as Dur;
use interest_now::money::types::format_instant;

use crate::harness::{Answer, Api, Env};

const ACCOUNTS: usize = 600;
const CONCURRENCY: usize = 200;

fn signal(pid: u32, s: &str) {
    let ok = std::process::Command::new("kill")
        .args([s, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {s} {pid}");
}

/// A claim, then (for a 202) its `Location` polled every 20 ms until done or 15 s.
async fn claim_and_poll(api: Api, account: String) -> (String, Answer) {
    let first = api.claim(&account, &format!("key-{account}")).await;
    if first.status == 202 {
        let location = first.location.clone().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let s = api.get(&location).await;
            assert!(
                s.status == 200 || (s.status == 503 && s.body["code"] == "overloaded"),
                "poll of {location}: {s:?}"
            );
            if s.body["state"] == "done" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    (account, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_against_a_paused_worker_keeps_the_api_ready_and_answering() {
    let env = Env::new(4).await;
    let api = env
        .serve("api", &[("CLAIM_WAIT_MS", "1500"), ("CLAIMS_IN_FLIGHT_MAX", "150")])
        .await;
    let worker = env.serve("worker", &[]).await;
    let as_of = format_instant(crate::harness::now() - Dur::days(2));
    let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("m-{i:04}")).collect();
    for a in &accounts {
        env.snapshot(a, 1, "100000000", &as_of).await;
    }
    env.wait_accounts(ACCOUNTS as i64).await;

    // Readiness, probed every 50 ms through the whole spike.
    let stop = Arc::new(AtomicBool::new(false));
    let unready = Arc::new(AtomicUsize::new(0));
    let probes = tokio::spawn({
        let (stop, unready, admin) = (stop.clone(), unready.clone(), api.admin);
        async move {
            let client = crate::harness::client();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = client.get(format!("http://{admin}/readyz")).send().await;
                if !r.is_ok_and(|r| r.status() == 200) {
                    unready.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            n
        }
    });
    signal(worker.child.id(), "-STOP");
    let resume = tokio::spawn({
        let pid = worker.child.id();
        async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            signal(pid, "-CONT");
        }
    });
    let answers: HashMap<String, Answer> = {
        use futures::StreamExt;
        futures::stream::iter(accounts.iter().cloned().map(|a| claim_and_poll(api.api.clone(), a)))
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    };
    resume.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let probed = probes.await.unwrap();

    let mut by_status: HashMap<String, usize> = HashMap::new();
    for a in answers.values() {
        let label = format!("{} {}", a.status, a.body["code"].as_str().unwrap_or(""));
        *by_status.entry(label).or_default() += 1;
    }
    eprintln!("midnight pool: answers {by_status:?}; readiness probed {probed} times");
    for (account, a) in &answers {
        assert!(
            [201, 202].contains(&a.status) || (a.status == 503 && a.body["code"] == "overloaded"),
            "{account}: {a:?}"
        );
    }
    assert!(
        answers.values().any(|a| a.status == 202),
        "the paused worker left claims to poll: {by_status:?}"
    );
    assert_eq!(unready.load(Ordering::Relaxed), 0, "readiness failed during the spike");
    // Every accepted claim is paid once when the worker is back; no refused one is.
    let accepted = answers.values().filter(|a| [201, 202].contains(&a.status)).count() as i64;
    env.wait_count("SELECT count(*) FROM interest_payouts", accepted).await;
    let dup: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT account_id FROM interest_payouts GROUP BY 1 HAVING count(*) > 1) d",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(dup, 0, "no account paid twice");
    env.drop_db().await;
}

/// The same starvation made deterministic: the test holds an ACCESS
/// EXCLUSIVE lock on `claims` for 1.5 s, so every `GET /v1/claims/{id}` waits
/// on it while hundreds more arrive. Reads may be shed (503 `overloaded`),
/// but readiness stays 200 and a claim made meanwhile is answered 201 or 202.
/// Checked to fail with one shared pool (the 2026-12-02 code): the stuck
/// reads took all 16 connections, the probe could not get one within 1 s and
/// readiness answered 503 "database unreachable" while PostgreSQL was up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stuck_on_a_lock_starve_neither_readiness_nor_claims() {
    let env = Env::new(2).await;
    let svc = env.serve("all", &[("CLAIM_WAIT_MS", "2500")]).await;
    let as_of = format_instant(crate::harness::now() - Dur::days(2));
    env.snapshot("lock-1", 1, "100000000", &as_of).await;
    env.wait_accounts(1).await;

    let mut locker = env.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE claims IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let reads = (0..400).map(|_| {
        let api = svc.api.clone();
        async move { api.get(&format!("/v1/claims/{}", uuid::Uuid::new_v4())).await }
    });
    let reads = tokio::spawn(futures::future::join_all(reads));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let claim = tokio::spawn({
        let api = svc.api.clone();
        async move { api.claim("lock-1", "k-during-lock").await }
    });
    let client = crate::harness::client();
    let mut unready = Vec::new();
    let until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < until {
        let r = client.get(format!("http://{}/readyz", svc.admin)).send().await.unwrap();
        if r.status() != 200 {
            unready.push(r.text().await.unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    locker.rollback().await.unwrap();
    let reads = reads.await.unwrap();
    let claim = claim.await.unwrap();
    let shed = reads.iter().filter(|r| r.status == 503).count();
    eprintln!(
        "midnight pool: {shed} of {} stuck reads shed; claim {}",
        reads.len(),
        claim.status
    );
    assert!(
        unready.is_empty(),
        "readiness failed while reads waited on a lock: {unready:?}"
    );
    for r in &reads {
        assert!(
            r.status == 404 || (r.status == 503 && r.body["code"] == "overloaded"),
            "{r:?}"
        );
    }
    assert!(shed > 0, "400 stuck reads exceed the read bound");
    assert!([201, 202].contains(&claim.status), "{claim:?}");
    env.drop_db().await;
}
