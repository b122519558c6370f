//! A process computes on a stored account whose points name a plan it has not
//! loaded yet (imported seconds ago; another process applied the snapshot):
//! it reloads the plans instead of panicking (issue 15, item 3).
//!
//! `PLAN_RELOAD_SECS=59` keeps the periodic reload out of the way, so the
//! process under test can only know the new plan by reloading on demand.

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Duration as Dur;
use interest_now::money::types::format_instant;

use crate::harness::{now, Env, Service};

const FRESH_PLAN: &str = r#"{"plans":[{"id":"fresh-plan","currency":"KRW","schedule":[
    {"effective_from":"2020-01-01T00:00:00+09:00","tiers":[{"rate_percent":"3.0"}]}]}]}"#;

/// The periodic reload, later than anything these tests do.
const NO_PERIODIC_RELOAD: (&str, &str) = ("PLAN_RELOAD_SECS", "59");

fn signal(svc: &Service, sig: &str) {
    let pid = svc.child.id().to_string();
    assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_shows_an_account_on_a_plan_imported_after_its_last_reload() {
    let env = Env::new(1).await;
    let _worker = env.serve("worker", &[]).await;
    let api = env.serve("api", &[NO_PERIODIC_RELOAD]).await;
    env.import_plans(FRESH_PLAN);
    let as_of = format_instant(now() - Dur::hours(1));
    env.snapshot_on("fresh-plan", "fresh-1", 1, "1000000", &as_of).await;
    env.wait_accounts(1).await;
    // Without the on-demand reload the handler panics and the connection closes.
    let view = api.get("/v1/accounts/fresh-1/interest").await;
    assert_eq!(view.status, 200, "{:?}", view.body);
    assert_eq!(view.body["balance"], "1000000");
    assert_ne!(view.body["rate_per_second"], "0");
    env.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claims_owner_pays_on_a_plan_another_worker_applied_first() {
    let env = Env::new(1).await;
    let api = env.serve("api", &[]).await;
    let mut owner = env.serve("worker", &[NO_PERIODIC_RELOAD]).await;
    // The owner sleeps through the import and the snapshot, which a worker
    // of another group applies (so the owner never decodes it: its offset is
    // already stored when the owner wakes).
    signal(&owner, "-STOP");
    env.import_plans(FRESH_PLAN);
    let group = format!("{}-other", env.name);
    let mut other = env.serve("worker", &[("KAFKA_GROUP_ID", &group)]).await;
    let as_of = format_instant(now() - Dur::hours(1));
    env.snapshot_on("fresh-plan", "fresh-2", 1, "1000000000", &as_of).await;
    env.wait_accounts(1).await;
    other.stop(false).unwrap();
    signal(&owner, "-CONT");
    let first = api.claim("fresh-2", "k-fresh").await;
    let answer = claim_done(&api, first, Duration::from_secs(30)).await;
    assert_eq!(answer.0, 201, "{:?} (owner log: {})", answer.1, owner.log.display());
    assert!(owner.running(), "the claims owner died (log: {})", owner.log.display());
    assert_eq!(env.payout_count().await, 1);
    env.drop_db().await;
}

/// A claim's final (status, body), following a 202; panics after `limit`.
async fn claim_done(api: &Service, first: crate::harness::Answer, limit: Duration) -> (u16, serde_json::Value) {
    if first.status != 202 {
        return (first.status, first.body);
    }
    let location = first.location.expect("202 has Location");
    let deadline = Instant::now() + limit;
    loop {
        let s = api.get(&location).await;
        if s.body["state"] == "done" {
            return (s.body["status"].as_u64().unwrap() as u16, s.body);
        }
        assert!(Instant::now() < deadline, "claim {location} never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
