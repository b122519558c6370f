//! `settle --date D`: pays every account's unclaimed interest through 00:00 KST
//! of D+1 as `kind = auto`, business date D+1 (SPEC §2 "Automatic payout").
//!
//! The command computes nothing: it puts one `Settle` message per account on
//! `interest-claims`, keyed by account id, so each reaches the worker that owns
//! the account and is applied in order with that account's claims (the single
//! writer). A claim and a settlement therefore never pay the same interest.
//! Idempotent per (account, D): the worker skips accounts already settled
//! through D, the database has one auto payout per (account, business date),
//! and this command does not produce for accounts already settled.
//!
//! Memory is bounded: accounts are read in pages and at most
//! `PENDING_MAX` produced-but-not-yet-settled ids are held at once.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use rdkafka::producer::FutureProducer;
use sqlx::{PgPool, Row};

use super::{Day, Progress, SettleArgs};
use crate::config::{Clock, Settings};
use crate::kafka::{self, ClaimMessage};

/// Produced accounts we wait on at most before reading the next page.
const PENDING_MAX: usize = 100_000;
/// How often the settled state is polled.
const POLL_EVERY: Duration = Duration::from_millis(200);

pub async fn run(settings: &Settings, args: &SettleArgs) -> anyhow::Result<()> {
    let day = Day::new(args.date)?;
    day.require_closed(settings, args.grace_seconds, "settle")?;
    // One clock reading for the run: every auto payout of it is accepted at this instant.
    let run_at = Clock::new(settings.clock_offset_seconds).now();
    let pool = super::connect(settings, 4, false).await?;
    let producer = kafka::producer(settings)?;
    let topic = settings.topic(kafka::CLAIMS);
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds.into());
    let row = sqlx::query(
        "SELECT count(*) AS total, count(*) FILTER (WHERE settled_through IS NULL OR settled_through < $1) AS due
         FROM accounts",
    )
    .bind(day.date)
    .fetch_one(&pool)
    .await
    .context("counting accounts")?;
    let (total, due): (i64, i64) = (row.get("total"), row.get("due"));
    let mut progress = Progress::new(&format!("settle {}", day.date), due as u64);
    let (mut produced, mut pending, mut after) = (0_u64, Vec::<String>::new(), String::new());
    loop {
        let page: Vec<String> = sqlx::query_scalar(
            "SELECT account_id FROM accounts
             WHERE account_id > $1 AND (settled_through IS NULL OR settled_through < $2)
             ORDER BY account_id LIMIT $3",
        )
        .bind(&after)
        .bind(day.date)
        .bind(i64::from(args.page_size))
        .fetch_all(&pool)
        .await
        .context("reading accounts")?;
        let Some(last) = page.last() else { break };
        after = last.clone();
        produce(&producer, &topic, &page, day.date, run_at).await?;
        produced += page.len() as u64;
        pending.extend(page);
        while pending.len() > PENDING_MAX {
            wait_some(&pool, &mut pending, &day, &mut progress, deadline).await?;
        }
    }
    while !pending.is_empty() {
        wait_some(&pool, &mut pending, &day, &mut progress, deadline).await?;
    }
    progress.finish();
    print_summary(&pool, &day, total, produced).await
}

/// Produces one `Settle` per account and waits for the broker's acknowledgements.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    ids: &[String],
    date: NaiveDate,
    run_at: DateTime<Utc>,
) -> anyhow::Result<()> {
    let sends = ids.iter().map(|id| async move {
        let msg = ClaimMessage::Settle {
            account_id: id.clone(),
            date,
            run_at,
        };
        let payload = serde_json::to_vec(&msg).expect("serializable");
        kafka::send(producer, topic, id, &payload, None).await
    });
    for r in futures::future::join_all(sends).await {
        r?;
    }
    Ok(())
}

/// Drops from `pending` the accounts now settled through D; sleeps when none were.
async fn wait_some(
    pool: &PgPool,
    pending: &mut Vec<String>,
    day: &Day,
    progress: &mut Progress,
    deadline: Instant,
) -> anyhow::Result<()> {
    let remaining: Vec<String> = sqlx::query_scalar(
        "SELECT account_id FROM accounts
         WHERE account_id = ANY($1) AND (settled_through IS NULL OR settled_through < $2)",
    )
    .bind(&*pending)
    .bind(day.date)
    .fetch_all(pool)
    .await
    .context("polling settlement")?;
    let settled = pending.len() - remaining.len();
    *pending = remaining;
    progress.advance(settled as u64, &format!("({} queued)", pending.len()));
    if settled == 0 && !pending.is_empty() {
        if Instant::now() >= deadline {
            anyhow::bail!(
                "timed out: {} account(s) not yet settled through {} (their messages are queued and will be applied); \
                 rerun settle --date {} to wait again",
                pending.len(),
                day.date,
                day.date
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    Ok(())
}

async fn print_summary(pool: &PgPool, day: &Day, total: i64, produced: u64) -> anyhow::Result<()> {
    let paid_date = day.next_date();
    println!(
        "settle {}: paid through {} as business date {paid_date}",
        day.date,
        super::kst(day.t)
    );
    println!(
        "  accounts: {total} in all, {produced} settled by this run, {} already settled",
        (total as u64).saturating_sub(produced)
    );
    let rows = sqlx::query(
        "SELECT currency, count(*) AS n, sum(gross)::text AS gross, sum(income_tax)::text AS it,
                sum(local_tax)::text AS lt, sum(rural_tax)::text AS rt, sum(net)::text AS net
         FROM interest_payouts WHERE kind = 'auto' AND business_date = $1
         GROUP BY currency ORDER BY currency",
    )
    .bind(paid_date)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        println!("  auto payouts ({paid_date}): none");
    }
    for r in rows {
        println!(
            "  auto payouts ({paid_date}) {}: {} payouts, gross {}, income tax {}, local tax {}, rural tax {}, net {}",
            r.get::<&str, _>("currency"),
            r.get::<i64, _>("n"),
            r.get::<&str, _>("gross"),
            r.get::<&str, _>("it"),
            r.get::<&str, _>("lt"),
            r.get::<&str, _>("rt"),
            r.get::<&str, _>("net"),
        );
    }
    Ok(())
}
