//! Poison messages and the dead-letter outbox (issue 15 item 4), on the real
//! broker and database: a message that always fails is moved aside with its
//! reason and the partition keeps going; dead letters never wait for the
//! broker inside a batch.

use std::time::{Duration, Instant};

use chrono::Duration as Dur;
use interest_now::money::types::format_instant;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use sqlx::Row;

use crate::harness::{now, Env, Service};

fn two_days_ago() -> String {
    format_instant(now() - Dur::days(2))
}

/// Every insert of a balance point for `poison-1` and of a payout for
/// `poison-2` raises an exception (SQLSTATE P0001): a message that always
/// fails, whatever batch it is in.
async fn poison_accounts(env: &Env) {
    for sql in [
        "CREATE FUNCTION poisoned() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'poisoned account %', NEW.account_id; END $$",
        "CREATE TRIGGER poison_points BEFORE INSERT ON balance_points FOR EACH ROW
         WHEN (NEW.account_id = 'poison-1') EXECUTE FUNCTION poisoned()",
        "CREATE TRIGGER poison_payouts BEFORE INSERT ON interest_payouts FOR EACH ROW
         WHEN (NEW.account_id = 'poison-2') EXECUTE FUNCTION poisoned()",
    ] {
        sqlx::query(sql).execute(&env.pool).await.unwrap();
    }
}

async fn count(env: &Env, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&env.pool).await.unwrap()
}

async fn metrics(svc: &Service) -> String {
    let url = format!("http://{}/metrics", svc.admin);
    svc.client.get(&url).send().await.unwrap().text().await.unwrap()
}

/// The value of one metric line (name with labels, as rendered), 0 if absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_snapshot_and_a_poison_claim_are_moved_aside_and_the_partition_keeps_going() {
    // One partition: the poison messages share it (and their first batch) with the good ones.
    let env = Env::new(1).await;
    poison_accounts(&env).await;
    let as_of = two_days_ago();
    for account in ["good-a", "poison-1", "good-b", "poison-2", "good-c"] {
        env.snapshot(account, 1, "50000000", &as_of).await;
    }
    let svc = env.serve("all", &[("CLAIM_WAIT_MS", "1500")]).await;
    env.wait_count("SELECT count(*) FROM accounts", 4).await;
    assert_eq!(
        count(&env, "SELECT count(*) FROM accounts WHERE account_id = 'poison-1'").await,
        0
    );

    // The poison snapshot is on the DLQ with its reason, published from the outbox.
    let dlq = env.read_topic_until("balance-snapshots.dlq", |r| {
        r.iter().any(|(k, _, _)| k.as_deref() == Some("poison-1"))
    });
    let (_, value, headers) = dlq.iter().find(|(k, _, _)| k.as_deref() == Some("poison-1")).unwrap();
    assert_eq!(header(headers, "error"), Some("apply_failed"), "{headers:?}");
    assert!(
        header(headers, "detail").unwrap().contains("poisoned account poison-1"),
        "{headers:?}"
    );
    assert_eq!(value["account_id"], "poison-1", "the original bytes");
    env.wait_count(
        "SELECT count(*) FROM dead_letters WHERE error = 'apply_failed' AND published_at IS NOT NULL
           AND source_offset = 1",
        1,
    )
    .await;

    // Claims in one go: the good ones are paid once, the poison one answered 500 and unpaid.
    let (a, p, b) = tokio::join!(
        svc.claim_to_end("good-a", "k-a"),
        svc.claim_to_end("poison-2", "k-p"),
        svc.claim_to_end("good-b", "k-b"),
    );
    assert_eq!((a.status, b.status), (201, 201), "{a:?} {b:?}");
    assert_eq!(p.status, 500, "{p:?}");
    assert_eq!(p.body["code"], "claim_failed", "{p:?}");
    let payouts = |account: &str| format!("SELECT count(*) FROM interest_payouts WHERE account_id = '{account}'");
    assert_eq!(count(&env, &payouts("good-a")).await, 1);
    assert_eq!(count(&env, &payouts("good-b")).await, 1);
    assert_eq!(count(&env, &payouts("poison-2")).await, 0);
    // The key keeps no answer for a failed claim (released): the same key again is a new attempt, not a replay.
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM idempotency_keys WHERE account_id = 'poison-2' AND state <> 'released'"
        )
        .await,
        0
    );
    let again = svc.claim_to_end("poison-2", "k-p").await;
    assert_eq!((again.status, again.replayed), (500, false), "{again:?}");
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM claims WHERE account_id = 'poison-2' AND status = 500"
        )
        .await,
        2
    );

    // The worker keeps going: later snapshots behind more poison are applied.
    env.snapshot("poison-1", 2, "1", &as_of).await;
    env.snapshot("good-a", 2, "60000000", &format_instant(now() - Dur::days(1)))
        .await;
    env.snapshot("good-d", 1, "1000", &as_of).await;
    env.wait_count("SELECT count(*) FROM accounts", 5).await;
    env.wait_count("SELECT count(*) FROM balance_points WHERE account_id = 'good-a'", 2)
        .await;
    env.wait_count("SELECT count(*) FROM dead_letters WHERE error = 'apply_failed'", 2)
        .await;
    assert_eq!(count(&env, &payouts("good-a")).await, 1, "paid once");

    let m = metrics(&svc).await;
    let series = |topic: &str| format!("poison_messages_total{{topic=\"{}\"}}", env.topic(topic));
    assert_eq!(metric(&m, &series("balance-snapshots")), 2.0, "{m}");
    assert_eq!(metric(&m, &series("interest-claims")), 2.0, "{m}");
    let log = std::fs::read_to_string(&svc.log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(r#""event":"poison_message""#) && l.contains("poisoned account")),
        "a poison_message log line with the reason"
    );
    env.drop_db().await;
}

fn admin(env: &Env) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .create()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_dlq_delays_dead_letters_and_never_holds_up_a_batch() {
    let env = Env::new(1).await;
    // The DLQ topic is gone (the service's clients never auto-create topics).
    let dlq = env.topic("balance-snapshots.dlq");
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    for r in admin(&env).delete_topics(&[&dlq], &options).await.unwrap() {
        r.unwrap();
    }
    let svc = env.serve("all", &[]).await;
    env.produce("balance-snapshots", "bad-1", "not json").await;
    env.snapshot("good-x", 1, "50000000", &two_days_ago()).await;
    // The refused snapshot's batch commits at once, with its dead letter pending.
    let started = Instant::now();
    env.wait_count("SELECT count(*) FROM accounts WHERE account_id = 'good-x'", 1)
        .await;
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let letter = sqlx::query("SELECT error, published_at IS NULL AS pending FROM dead_letters")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(letter.get::<String, _>("error"), "invalid_json");
    // The relay tried and failed (a delivery times out after 5 s): counted, still pending.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = metrics(&svc).await;
        if metric(&m, "dead_letter_publish_failures_total") >= 1.0 {
            assert_eq!(metric(&m, "dead_letters_pending"), 1.0, "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "no failed publication counted: {m}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        count(&env, "SELECT count(*) FROM dead_letters WHERE published_at IS NULL").await,
        1
    );
    // Meanwhile the worker applies what comes next.
    env.snapshot("good-y", 1, "1000", &two_days_ago()).await;
    env.wait_count("SELECT count(*) FROM accounts", 2).await;

    // The DLQ is back: the dead letter goes out, at least once, and is marked.
    let topic = NewTopic::new(&dlq, 1, TopicReplication::Fixed(1));
    for r in admin(&env).create_topics(&[topic], &options).await.unwrap() {
        r.unwrap();
    }
    env.wait_count("SELECT count(*) FROM dead_letters WHERE published_at IS NOT NULL", 1)
        .await;
    let records = env.read_topic_until("balance-snapshots.dlq", |r| !r.is_empty());
    let (key, _, headers) = records.first().expect("the dead letter on the DLQ");
    assert_eq!(key.as_deref(), Some("bad-1"));
    assert_eq!(header(headers, "error"), Some("invalid_json"), "{headers:?}");
    assert!(
        header(headers, "detail").is_some_and(|d| d.starts_with("not JSON")),
        "{headers:?}"
    );
    env.drop_db().await;
}
