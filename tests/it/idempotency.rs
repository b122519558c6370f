//! Idempotency as the IETF draft and Stripe mean it, and SPEC §4's promise at
//! the edge: keys scoped per client, a 202's retry answered from the key
//! without a second message, `claim_in_progress` across API processes, an
//! answer that depended on data not arrived yet not kept, keys that expire,
//! and a claim answered 503 after an ambiguous delivery never paid.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Duration as Dur;
use interest_now::money::types::format_instant;

use crate::harness::{Api, Env};

fn two_days_ago() -> String {
    format_instant(crate::harness::now() - Dur::days(2))
}

/// The API client of the second configured token: another client.
fn other_client(api: &Api) -> Api {
    Api {
        token: "other-token".into(),
        ..api.clone()
    }
}

async fn count(env: &Env, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&env.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_scoped_to_the_client_behind_the_token() {
    let env = Env::new(2).await;
    let svc = env.serve("all", &[]).await;
    env.snapshot("bob", 1, "50000000", &two_days_ago()).await;
    env.snapshot("carol", 1, "50000000", &two_days_ago()).await;
    env.wait_accounts(2).await;
    let other = other_client(&svc.api);

    let mine = svc.claim("bob", "shared-key").await;
    assert_eq!(mine.status, 201, "{mine:?}");
    // The other client's same key is its own: a new claim, not 422, not bob's payout.
    let theirs = other.claim("carol", "shared-key").await;
    assert_eq!(theirs.status, 201, "{theirs:?}");
    assert!(!theirs.replayed);
    assert_ne!(theirs.body["payout_id"], mine.body["payout_id"]);
    // Each client's key replays its own answer, and only to that client.
    let again = other.claim("carol", "shared-key").await;
    assert!(again.replayed && again.body == theirs.body, "{again:?}");
    let reused = other.claim("bob", "shared-key").await;
    assert_eq!(
        (reused.status, reused.body["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    assert_eq!(env.payout_count().await, 2);
    env.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_202_is_answered_from_the_key_without_a_second_message() {
    let env = Env::new(2).await;
    env.snapshot("dora", 1, "50000000", &two_days_ago()).await;
    let w = env.serve("worker", &[]).await;
    env.wait_accounts(1).await;
    drop(w);
    // No worker: every claim waits out CLAIM_WAIT_MS and is answered 202.
    // A wait long enough for a slow acknowledgement on a loaded CI machine
    // (an acknowledgement past the wait is a withdrawn 503, not a 202).
    let api = env.serve("api", &[("CLAIM_WAIT_MS", "3000")]).await;
    let first = api.claim("dora", "k-202").await;
    assert_eq!(first.status, 202, "{first:?}");
    let again = api.claim("dora", "k-202").await;
    assert_eq!(again.status, 202, "{again:?}");
    assert_eq!(again.location, first.location, "the same claim");
    assert_eq!(again.body["accepted_at"], first.body["accepted_at"]);
    let other_account = api.claim("erin", "k-202").await;
    assert_eq!(other_account.status, 422, "{other_account:?}");
    // Read for the harness's 30 s bound unless a second message shows up sooner.
    let messages = env.read_topic_until("interest-claims", |r| r.len() > 1);
    assert_eq!(messages.len(), 1, "one claim message for three requests: {messages:?}");
    // A worker pays it once; the key then replays the payout.
    let _w = env.serve("worker", &[]).await;
    let location = first.location.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.get(&location).await.body["state"] != "done" {
        assert!(Instant::now() < deadline, "the 202 claim was never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let replay = api.claim("dora", "k-202").await;
    assert_eq!((replay.status, replay.replayed), (201, true), "{replay:?}");
    assert_eq!(env.payout_count().await, 1);
    env.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_in_progress_holds_across_api_processes() {
    let env = Env::new(2).await;
    env.snapshot("fay", 1, "50000000", &two_days_ago()).await;
    let w = env.serve("worker", &[]).await;
    env.wait_accounts(1).await;
    drop(w);
    let one = env.serve("api", &[("CLAIM_WAIT_MS", "1500")]).await;
    let two = env.serve("api", &[("CLAIM_WAIT_MS", "1500")]).await;
    let first = tokio::spawn({
        let api = one.api.clone();
        async move { api.claim("fay", "k-busy").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let meanwhile = two.claim("fay", "k-busy").await;
    assert_eq!(meanwhile.status, 409, "{meanwhile:?}");
    assert_eq!(meanwhile.body["code"], "claim_in_progress");
    let first = first.await.unwrap();
    assert_eq!(first.status, 202, "{first:?}");
    let after = two.claim("fay", "k-busy").await;
    assert_eq!((after.status, after.location), (202, first.location));
    env.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_account_is_not_kept_as_the_keys_answer() {
    let env = Env::new(2).await;
    let svc = env.serve("all", &[]).await;
    let early = svc.claim("gus", "k-early").await;
    assert_eq!(
        (early.status, early.body["code"].as_str()),
        (404, Some("unknown_account"))
    );
    // The account's first snapshot arrives; the same key is now a claim of its own.
    env.snapshot("gus", 1, "50000000", &two_days_ago()).await;
    env.wait_accounts(1).await;
    let later = svc.claim("gus", "k-early").await;
    assert_eq!((later.status, later.replayed), (201, false), "{later:?}");
    let again = svc.claim("gus", "k-early").await;
    assert_eq!((again.status, again.replayed), (201, true), "a kept answer replays");
    assert_eq!(env.payout_count().await, 1);
    env.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_used_again_after_its_ttl_is_a_new_request() {
    let env = Env::new(2).await;
    let svc = env.serve("all", &[("IDEMPOTENCY_KEY_TTL", "2s")]).await;
    env.snapshot("hal", 1, "50000000", &two_days_ago()).await;
    env.wait_accounts(1).await;
    let first = svc.claim("hal", "k-ttl").await;
    assert_eq!(first.status, 201, "{first:?}");
    let live = svc.claim("hal", "k-ttl").await;
    assert_eq!((live.status, live.replayed), (201, true), "a live key replays");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // Expired: a new claim, which the day's limit refuses (not the old payout replayed).
    let expired = svc.claim("hal", "k-ttl").await;
    assert_eq!((expired.status, expired.replayed), (409, false), "{expired:?}");
    assert_eq!(expired.body["code"], "already_claimed_today");
    assert_eq!(env.payout_count().await, 1);
    env.drop_db().await;
}

/// SPEC §4: "a claim it answered otherwise is not paid". The broker is
/// paused (SIGSTOP) past the claim's deadline, so acknowledgements are
/// withheld; it resumes within the producer's delivery timeout, so the
/// withheld messages do land. Every claim answered 503 must stay unpaid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_answered_503_after_a_withheld_acknowledgement_is_never_paid() {
    use crate::harness::PrivateBroker;
    let mut broker = PrivateBroker::start().await.unwrap();
    let env = Env::with_brokers(2, broker.address.clone()).await;
    let api = env.serve("api", &[("CLAIM_WAIT_MS", "800")]).await;
    let _w = env.serve("worker", &[]).await;
    let accounts: Vec<String> = (0..30).map(|i| format!("ack-{i:02}")).collect();
    for a in &accounts {
        env.snapshot(a, 1, "100000000", &two_days_ago()).await;
    }
    env.wait_accounts(accounts.len() as i64).await;

    let pid = broker.pid().to_string();
    let signal = |s: &str| {
        let ok = std::process::Command::new("kill").args([s, &pid]).status().unwrap();
        assert!(ok.success(), "kill {s} {pid}");
    };
    let claims = accounts.iter().map(|a| {
        let api = api.api.clone();
        let a = a.clone();
        async move {
            let answer = api.claim(&a, &format!("key-{a}")).await;
            (a, answer)
        }
    });
    signal("-STOP");
    let spike = tokio::spawn(futures::future::join_all(claims));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    signal("-CONT");
    let answers: HashMap<String, crate::harness::Answer> = spike.await.unwrap().into_iter().collect();

    let refused: Vec<&String> = answers
        .iter()
        .filter(|(_, a)| a.status == 503)
        .map(|(k, _)| k)
        .collect();
    assert!(!refused.is_empty(), "the pause withheld acknowledgements: {answers:?}");
    for (account, a) in &answers {
        assert!([201, 202, 503].contains(&a.status), "{account}: {a:?}");
    }
    // The withheld messages land after the pause and reach the worker, which withdraws them.
    env.wait_count(
        "SELECT count(*) FROM claims WHERE body->>'code' = 'claim_withdrawn'",
        refused.len() as i64,
    )
    .await;
    for (account, a) in &answers {
        let paid = count(
            &env,
            &format!("SELECT count(*) FROM interest_payouts WHERE idempotency_key = 'key-{account}'"),
        )
        .await;
        let want = if a.status == 503 { 0 } else { 1 };
        if a.status == 202 {
            env.wait_count(
                &format!("SELECT count(*) FROM interest_payouts WHERE idempotency_key = 'key-{account}'"),
                1,
            )
            .await;
        } else {
            assert_eq!(paid, want, "{account} answered {}: paid {paid} times", a.status);
        }
    }
    // A retry of a refused claim with the same key is a new claim, paid once.
    let retry = api.claim(refused[0], &format!("key-{}", refused[0])).await;
    assert_eq!(retry.status, 201, "{retry:?}");
    broker.stop();
    env.drop_db().await;
}
