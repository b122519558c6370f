//! The one module that speaks SQL (besides `migrations/`). Bulk writes use
//! `UNNEST` so a batch of thousands of claims is a handful of statements.
//! Exact accrual units (numerators up to ~10^36) travel as text into NUMERIC.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::claims::{Answered, NewPoint};
use crate::money::plan::{check_import, Plan, PlanJson};
use crate::money::{Account, AccountId, Accrued, Currency, Minor, Plans, Point, StoredAccount, TaxProfile};
use crate::wire::{self, PayoutJson};

pub type Tx<'a> = Transaction<'a, Postgres>;

/// Connection pool sized for a worker's or API's needs; fails fast when the
/// database is down so callers can answer 503 instead of hanging.
pub async fn connect(url: &secrecy::SecretString, max_connections: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.expose_secret().parse().context("DATABASE_URL")?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options.application_name("interest-now"))
        .await
        .context("connecting to PostgreSQL")?;
    Ok(pool)
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::migrate!("./migrations")
        .run(pool)
        .await
        .context("applying migrations")?;
    Ok(())
}

// ---- rate plans -------------------------------------------------------------

pub async fn load_plans(pool: &PgPool, default_plan: Option<&str>) -> anyhow::Result<Plans> {
    let rows = sqlx::query("SELECT definition::text AS d FROM rate_plans ORDER BY imported_at, plan_id")
        .fetch_all(pool)
        .await
        .context("loading rate plans")?;
    let mut plans = Vec::with_capacity(rows.len());
    for row in rows {
        let json: PlanJson = serde_json::from_str(row.get("d")).context("stored plan")?;
        plans.push(json.to_plan().map_err(|e| anyhow::anyhow!("stored plan: {e}"))?);
    }
    let default = default_plan.map(str::to_owned);
    Plans::new(plans, default).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Minimum time between importing a rate change and its taking effect, so
/// every worker (which reloads plans every few seconds) has it first.
pub const PLAN_LEAD_SECS: i64 = 60;

/// Imports plans in one transaction; refuses any change to what is in force
/// or about to be. Returns the ids written.
pub async fn import_plans(pool: &PgPool, plans: &[Plan], now: DateTime<Utc>) -> anyhow::Result<Vec<String>> {
    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE rate_plans IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let mut written = Vec::new();
    for plan in plans {
        let old: Option<String> = sqlx::query_scalar("SELECT definition::text FROM rate_plans WHERE plan_id = $1")
            .bind(&plan.id)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(old) = old {
            let old: PlanJson = serde_json::from_str(&old)?;
            let old = old.to_plan().map_err(|e| anyhow::anyhow!("{e}"))?;
            check_import(&old, plan, now, PLAN_LEAD_SECS)?;
            if old == *plan {
                continue;
            }
        }
        sqlx::query(
            "INSERT INTO rate_plans (plan_id, definition) VALUES ($1, $2::jsonb)
             ON CONFLICT (plan_id) DO UPDATE SET definition = EXCLUDED.definition, imported_at = now()",
        )
        .bind(&plan.id)
        .bind(serde_json::to_string(&plan.to_json())?)
        .execute(&mut *tx)
        .await?;
        written.push(plan.id.clone());
    }
    tx.commit().await?;
    Ok(written)
}

// ---- partitions: offsets and fencing ----------------------------------------

/// Takes ownership of a partition: bumps its epoch (fencing out any previous
/// owner's uncommitted work) and returns (next offset, epoch).
pub async fn own_partition(pool: &PgPool, topic: &str, partition: i32, owner: &str) -> anyhow::Result<(i64, i64)> {
    let row = sqlx::query(
        "INSERT INTO consumer_offsets (topic, partition, next_offset, owner_epoch, owner) VALUES ($1, $2, 0, 1, $3)
         ON CONFLICT (topic, partition) DO UPDATE
            SET owner_epoch = consumer_offsets.owner_epoch + 1, owner = EXCLUDED.owner, updated_at = now()
         RETURNING next_offset, owner_epoch",
    )
    .bind(topic)
    .bind(partition)
    .bind(owner)
    .fetch_one(pool)
    .await
    .context("owning partition")?;
    Ok((row.get(0), row.get(1)))
}

/// Next offset to store for one partition, with the epoch this worker owns it at.
pub struct OffsetCommit {
    pub topic: String,
    pub partition: i32,
    pub next: i64,
    pub epoch: i64,
}

/// Stores the next offsets where this worker still owns the partition at its
/// epoch; returns the partitions it was fenced from (then: roll back).
pub async fn commit_offsets(tx: &mut Tx<'_>, commits: &[OffsetCommit]) -> anyhow::Result<Vec<(String, i32)>> {
    let rows = sqlx::query(
        "UPDATE consumer_offsets c SET next_offset = t.n, updated_at = now()
         FROM unnest($1::text[], $2::int4[], $3::int8[], $4::int8[]) AS t(topic, p, n, e)
         WHERE c.topic = t.topic AND c.partition = t.p AND c.owner_epoch = t.e AND c.next_offset <= t.n
         RETURNING c.topic, c.partition",
    )
    .bind(commits.iter().map(|c| c.topic.as_str()).collect::<Vec<_>>())
    .bind(commits.iter().map(|c| c.partition).collect::<Vec<_>>())
    .bind(commits.iter().map(|c| c.next).collect::<Vec<_>>())
    .bind(commits.iter().map(|c| c.epoch).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    let stored: std::collections::HashSet<(String, i32)> = rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(commits
        .iter()
        .map(|c| (c.topic.clone(), c.partition))
        .filter(|tp| !stored.contains(tp))
        .collect())
}

// ---- accounts -----------------------------------------------------------------

pub fn units_text(a: Accrued) -> String {
    a.0.to_string()
}

fn units_parse(s: &str) -> anyhow::Result<Accrued> {
    Ok(Accrued(s.parse().with_context(|| format!("units {s:?}"))?))
}

const ACCOUNT_COLUMNS: &str = "account_id, currency, tax_profile, last_seq, paid_through, paid_any,
    carry_units::text AS carry, pending_adjustment_units::text AS pending, claim_day, claims_on_day,
    last_claim_at, settled_through";

fn account_from_row(row: &sqlx::postgres::PgRow, points: Vec<Point>) -> anyhow::Result<Account> {
    let id: String = row.get("account_id");
    let currency: String = row.get("currency");
    let tax: String = row.get("tax_profile");
    let paid_through: DateTime<Utc> = row.get("paid_through");
    let stored = StoredAccount {
        id: AccountId::try_from(id.as_str())?,
        currency: Currency::try_from(currency.as_str())?,
        tax_profile: TaxProfile::try_from(tax.as_str())?,
        points,
        last_seq: row.get::<i64, _>("last_seq") as u64,
        paid_through: paid_through.timestamp(),
        paid_any: row.get("paid_any"),
        carry: units_parse(row.get("carry"))?,
        pending_adjustment: units_parse(row.get("pending"))?,
        claim_day: row.get("claim_day"),
        claims_on_day: row.get::<i32, _>("claims_on_day") as u32,
        last_claim_at: row.get("last_claim_at"),
        settled_through: row.get("settled_through"),
    };
    Ok(Account::restore(stored)?)
}

/// Loads (and, with `lock`, row-locks in id order, so concurrent batches
/// cannot deadlock on accounts) the accounts with their timelines from
/// `cutoff` on (plus the point in force at the cutoff).
pub async fn load_accounts(
    conn: &mut sqlx::PgConnection,
    ids: &[String],
    window_start: DateTime<Utc>,
    lock: bool,
) -> anyhow::Result<HashMap<String, Account>> {
    let sql = format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = ANY($1) ORDER BY account_id {}",
        if lock { "FOR UPDATE" } else { "" }
    );
    let rows = sqlx::query(&sql)
        .bind(ids)
        .fetch_all(&mut *conn)
        .await
        .context("loading accounts")?;
    if rows.is_empty() {
        return Ok(HashMap::new());
    }
    let mut cutoffs = Vec::with_capacity(rows.len());
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let paid_through: DateTime<Utc> = row.get("paid_through");
        found.push(row.get::<String, _>("account_id"));
        cutoffs.push(paid_through.min(window_start));
    }
    let mut points = load_points(&mut *conn, &found, &cutoffs).await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in &rows {
        let id: String = row.get("account_id");
        let pts = points.remove(&id).unwrap_or_default();
        out.insert(id, account_from_row(row, pts)?);
    }
    Ok(out)
}

async fn load_points(
    conn: &mut sqlx::PgConnection,
    ids: &[String],
    cutoffs: &[DateTime<Utc>],
) -> anyhow::Result<HashMap<String, Vec<Point>>> {
    let rows = sqlx::query(
        "SELECT bp.account_id, bp.seq, bp.as_of, bp.balance::text AS balance, bp.plan_id, a.currency
         FROM unnest($1::text[], $2::timestamptz[]) AS t(id, cutoff)
         JOIN accounts a ON a.account_id = t.id
         JOIN LATERAL (
             (SELECT * FROM balance_points p WHERE p.account_id = t.id AND p.as_of < t.cutoff ORDER BY p.seq DESC LIMIT 1)
             UNION ALL
             (SELECT * FROM balance_points p WHERE p.account_id = t.id AND p.as_of >= t.cutoff)
         ) bp ON true
         ORDER BY bp.account_id, bp.seq",
    )
    .bind(ids)
    .bind(cutoffs)
    .fetch_all(&mut *conn)
    .await
    .context("loading balance timelines")?;
    let mut out: HashMap<String, Vec<Point>> = HashMap::new();
    for row in rows {
        let currency = Currency::try_from(row.get::<String, _>("currency").as_str())?;
        let balance = currency.parse_amount(row.get("balance"))?;
        out.entry(row.get("account_id")).or_default().push(Point {
            seq: row.get::<i64, _>("seq") as u64,
            as_of: row.get("as_of"),
            balance,
            plan: row.get("plan_id"),
        });
    }
    Ok(out)
}

/// Writes the accounts' new state (insert or update).
pub async fn store_accounts(tx: &mut Tx<'_>, accounts: &[&Account]) -> anyhow::Result<()> {
    if accounts.is_empty() {
        return Ok(());
    }
    let col = |f: &dyn Fn(&Account) -> String| accounts.iter().map(|a| f(a)).collect::<Vec<String>>();
    let ids = col(&|a| a.id().to_string());
    let currency = col(&|a| a.currency().code().to_owned());
    let tax = col(&|a| a.tax_profile().as_str().to_owned());
    let carry = col(&|a| units_text(a.carry()));
    let pending = col(&|a| units_text(a.pending_adjustment()));
    let last_seq: Vec<i64> = accounts.iter().map(|a| a.last_seq() as i64).collect();
    let paid_through: Vec<DateTime<Utc>> = accounts.iter().map(|a| secs_utc(a.paid_through())).collect();
    let paid_any: Vec<bool> = accounts.iter().map(|a| a.paid_any()).collect();
    let claim_day: Vec<Option<NaiveDate>> = accounts.iter().map(|a| a.claim_day()).collect();
    let claims_on_day: Vec<i32> = accounts.iter().map(|a| a.claims_on_day() as i32).collect();
    let last_claim_at: Vec<Option<DateTime<Utc>>> = accounts.iter().map(|a| a.last_claim_at()).collect();
    let settled: Vec<Option<NaiveDate>> = accounts.iter().map(|a| a.settled_through()).collect();
    sqlx::query(
        "INSERT INTO accounts (account_id, currency, tax_profile, last_seq, paid_through, paid_any, carry_units,
                               pending_adjustment_units, claim_day, claims_on_day, last_claim_at, settled_through)
         SELECT id, cur, tax, seq, pt, pa, carry::numeric, pend::numeric, cd, cod, lca, st
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::timestamptz[], $6::bool[], $7::text[],
                     $8::text[], $9::date[], $10::int4[], $11::timestamptz[], $12::date[])
              AS t(id, cur, tax, seq, pt, pa, carry, pend, cd, cod, lca, st)
         ON CONFLICT (account_id) DO UPDATE SET
            tax_profile = EXCLUDED.tax_profile, last_seq = EXCLUDED.last_seq, paid_through = EXCLUDED.paid_through,
            paid_any = EXCLUDED.paid_any, carry_units = EXCLUDED.carry_units,
            pending_adjustment_units = EXCLUDED.pending_adjustment_units, claim_day = EXCLUDED.claim_day,
            claims_on_day = EXCLUDED.claims_on_day, last_claim_at = EXCLUDED.last_claim_at,
            settled_through = EXCLUDED.settled_through, updated_at = now()",
    )
    .bind(ids)
    .bind(currency)
    .bind(tax)
    .bind(last_seq)
    .bind(paid_through)
    .bind(paid_any)
    .bind(carry)
    .bind(pending)
    .bind(claim_day)
    .bind(claims_on_day)
    .bind(last_claim_at)
    .bind(settled)
    .execute(&mut **tx)
    .await
    .context("storing accounts")?;
    Ok(())
}

/// Inserts new timeline points.
pub async fn insert_points(tx: &mut Tx<'_>, points: &[NewPoint], received_at: DateTime<Utc>) -> anyhow::Result<()> {
    if points.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = points.iter().map(|n| n.account_id.as_str()).collect();
    let seqs: Vec<i64> = points.iter().map(|n| n.point.seq as i64).collect();
    let as_of: Vec<DateTime<Utc>> = points.iter().map(|n| n.point.as_of).collect();
    let balance: Vec<String> = points
        .iter()
        .map(|n| n.currency.to_decimal(n.point.balance).to_string())
        .collect();
    let plan: Vec<&str> = points.iter().map(|n| n.point.plan.as_str()).collect();
    sqlx::query(
        "INSERT INTO balance_points (account_id, seq, as_of, balance, plan_id, received_at)
         SELECT id, seq, ts, bal::numeric, plan, $6
         FROM unnest($1::text[], $2::int8[], $3::timestamptz[], $4::text[], $5::text[]) AS t(id, seq, ts, bal, plan)",
    )
    .bind(ids)
    .bind(seqs)
    .bind(as_of)
    .bind(balance)
    .bind(plan)
    .bind(received_at)
    .execute(&mut **tx)
    .await
    .context("inserting balance points")?;
    Ok(())
}

pub fn secs_utc(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).expect("in range")
}

// ---- claims, idempotency, payouts, outbox -------------------------------------

/// The stored first answer for an idempotency key.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub account_id: String,
    pub claim_id: Uuid,
    pub status: i16,
    pub body: serde_json::Value,
}

pub async fn load_keys(tx: &mut Tx<'_>, keys: &[String]) -> anyhow::Result<HashMap<String, StoredKey>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT idempotency_key, account_id, claim_id, status, body::text AS body FROM idempotency_keys
         WHERE idempotency_key = ANY($1)",
    )
    .bind(keys)
    .fetch_all(&mut **tx)
    .await
    .context("loading idempotency keys")?;
    rows.into_iter()
        .map(|r| {
            let rec = StoredKey {
                account_id: r.get("account_id"),
                claim_id: r.get("claim_id"),
                status: r.get("status"),
                body: serde_json::from_str(r.get("body"))?,
            };
            Ok((r.get("idempotency_key"), rec))
        })
        .collect()
}

/// A claim's final answer, as written by the worker.
#[derive(Debug, Clone)]
pub struct ClaimResult {
    pub claim_id: Uuid,
    pub idempotency_key: String,
    pub account_id: String,
    pub accepted_at: DateTime<Utc>,
    pub business_date: NaiveDate,
    pub status: i16,
    pub body: serde_json::Value,
    pub payout_id: Option<Uuid>,
    pub replay_of: Option<Uuid>,
    /// First answer for its key: also recorded in `idempotency_keys`.
    pub first_for_key: bool,
}

pub async fn store_claim_results(tx: &mut Tx<'_>, results: &[ClaimResult]) -> anyhow::Result<()> {
    if results.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = results.iter().map(|r| r.claim_id).collect();
    let keys: Vec<&str> = results.iter().map(|r| r.idempotency_key.as_str()).collect();
    let accounts: Vec<&str> = results.iter().map(|r| r.account_id.as_str()).collect();
    let accepted: Vec<DateTime<Utc>> = results.iter().map(|r| r.accepted_at).collect();
    let dates: Vec<NaiveDate> = results.iter().map(|r| r.business_date).collect();
    let status: Vec<i16> = results.iter().map(|r| r.status).collect();
    let bodies: Vec<String> = results.iter().map(|r| r.body.to_string()).collect();
    let payouts: Vec<Option<Uuid>> = results.iter().map(|r| r.payout_id).collect();
    let replay: Vec<Option<Uuid>> = results.iter().map(|r| r.replay_of).collect();
    sqlx::query(
        "INSERT INTO claims (claim_id, idempotency_key, account_id, accepted_at, business_date, state, status, body,
                             payout_id, replay_of, completed_at)
         SELECT id, k, a, acc, d, 'done', s, b::jsonb, p, r, now()
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::date[], $6::int2[], $7::text[],
                     $8::uuid[], $9::uuid[]) AS t(id, k, a, acc, d, s, b, p, r)
         ON CONFLICT (claim_id) DO UPDATE SET state = 'done', status = EXCLUDED.status, body = EXCLUDED.body,
            payout_id = EXCLUDED.payout_id, replay_of = EXCLUDED.replay_of, completed_at = EXCLUDED.completed_at",
    )
    .bind(&ids)
    .bind(&keys)
    .bind(&accounts)
    .bind(&accepted)
    .bind(&dates)
    .bind(&status)
    .bind(&bodies)
    .bind(&payouts)
    .bind(&replay)
    .execute(&mut **tx)
    .await
    .context("storing claim results")?;
    let firsts: Vec<&ClaimResult> = results.iter().filter(|r| r.first_for_key).collect();
    if !firsts.is_empty() {
        sqlx::query(
            "INSERT INTO idempotency_keys (idempotency_key, account_id, claim_id, status, body)
             SELECT k, a, id, s, b::jsonb FROM unnest($1::text[], $2::text[], $3::uuid[], $4::int2[], $5::text[])
               AS t(k, a, id, s, b)",
        )
        .bind(firsts.iter().map(|r| r.idempotency_key.as_str()).collect::<Vec<_>>())
        .bind(firsts.iter().map(|r| r.account_id.as_str()).collect::<Vec<_>>())
        .bind(firsts.iter().map(|r| r.claim_id).collect::<Vec<_>>())
        .bind(firsts.iter().map(|r| r.status).collect::<Vec<_>>())
        .bind(firsts.iter().map(|r| r.body.to_string()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await
        .context("storing idempotency keys")?;
    }
    Ok(())
}

/// A payout row with what the outbox publishes.
#[derive(Debug, Clone)]
pub struct PayoutRow {
    pub payout_id: Uuid,
    pub claim_id: Option<Uuid>,
    pub idempotency_key: Option<String>,
    pub account_id: String,
    pub partition: i32,
    pub payout: crate::money::Payout,
    pub body: PayoutJson,
}

pub async fn insert_payouts(tx: &mut Tx<'_>, rows: &[PayoutRow]) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let amt = |f: &dyn Fn(&crate::money::Payout) -> Minor| -> Vec<String> {
        rows.iter()
            .map(|r| r.payout.currency.to_decimal(f(&r.payout)).to_string())
            .collect()
    };
    sqlx::query(
        "INSERT INTO interest_payouts (payout_id, claim_id, account_id, kind, business_date, period_start, period_end,
             plan_id, rates, gross, income_tax, local_tax, rural_tax, adjustment, net, currency, idempotency_key, accepted_at,
             accrued_units, carried_in_units, carried_out_units, dropped_units)
         SELECT id, cid, a, k, d, ps, pe, plan, rates::jsonb, g::numeric, it::numeric, lt::numeric, rt::numeric,
                adj::numeric, n::numeric, cur, ik, acc, au::numeric, ci::numeric, co::numeric, du::numeric
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::date[], $6::timestamptz[], $7::timestamptz[],
                     $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
                     $16::text[], $17::text[], $18::timestamptz[], $19::text[], $20::text[], $21::text[], $22::text[])
           AS t(id, cid, a, k, d, ps, pe, plan, rates, g, it, lt, rt, adj, n, cur, ik, acc, au, ci, co, du)",
    )
    .bind(rows.iter().map(|r| r.payout_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.claim_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.account_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.payout.kind.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.payout.business_date).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.payout.period_start).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.payout.period_end).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.payout.plan.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| wire::rates(&r.payout.rates).to_string()).collect::<Vec<_>>())
    .bind(amt(&|p| p.gross))
    .bind(amt(&|p| p.tax.income_tax))
    .bind(amt(&|p| p.tax.local_tax))
    .bind(amt(&|p| p.tax.rural_tax))
    .bind(amt(&|p| p.adjustment))
    .bind(amt(&|p| p.net))
    .bind(rows.iter().map(|r| r.payout.currency.code()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.idempotency_key.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.payout.accepted_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| units_text(r.payout.accrued)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| units_text(r.payout.carried_in)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| units_text(r.payout.carried_out)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| units_text(r.payout.dropped)).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await
    .context("inserting payouts")?;
    sqlx::query(
        "INSERT INTO payout_outbox (payout_id, partition, message_key, payload)
         SELECT id, p, k, b::jsonb FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::text[]) WITH ORDINALITY AS t(id, p, k, b, ord)
         ORDER BY ord",
    )
    .bind(rows.iter().map(|r| r.payout_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.partition).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.account_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.body.to_value().to_string()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await
    .context("writing the outbox")?;
    Ok(())
}

/// NOTIFY payloads are limited to 8000 bytes; answers are packed below this.
const NOTIFY_PAYLOAD_BYTES_MAX: usize = 7_800;

/// Wakes API processes waiting on these claims, typed answers included, so they
/// need no query of their own (delivered at commit). An answer too large for
/// one payload is sent as its bare id; the API then reads it from `claims`.
pub async fn notify_claims_done(tx: &mut Tx<'_>, answers: &[Answered]) -> anyhow::Result<()> {
    let mut payloads: Vec<String> = Vec::new();
    let mut current = String::from("[");
    for r in answers {
        let mut item = serde_json::to_string(r)?;
        if item.len() + 2 > NOTIFY_PAYLOAD_BYTES_MAX {
            item = serde_json::to_string(&serde_json::json!({ "claim_id": r.claim_id }))?;
        }
        if current.len() + item.len() + 2 > NOTIFY_PAYLOAD_BYTES_MAX {
            current.push(']');
            payloads.push(std::mem::replace(&mut current, String::from("[")));
        }
        if current.len() > 1 {
            current.push(',');
        }
        current.push_str(&item);
    }
    if current.len() > 1 {
        current.push(']');
        payloads.push(current);
    }
    if !payloads.is_empty() {
        sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .bind(CLAIM_DONE_CHANNEL)
            .bind(&payloads)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

pub const CLAIM_DONE_CHANNEL: &str = "interest_claim_done";

/// A claim as the API shows it.
#[derive(Debug, Clone)]
pub struct ClaimRecord {
    pub claim_id: Uuid,
    pub account_id: String,
    pub state: String,
    pub accepted_at: DateTime<Utc>,
    pub status: Option<i16>,
    pub body: Option<serde_json::Value>,
    pub replayed: bool,
}

pub async fn load_claims(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<Vec<ClaimRecord>> {
    let rows = sqlx::query(
        "SELECT claim_id, account_id, state, accepted_at, status, body::text AS body, replay_of IS NOT NULL AS replayed
         FROM claims WHERE claim_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
    .context("loading claims")?;
    rows.into_iter()
        .map(|r| {
            let body: Option<String> = r.get("body");
            Ok(ClaimRecord {
                claim_id: r.get("claim_id"),
                account_id: r.get("account_id"),
                state: r.get("state"),
                accepted_at: r.get("accepted_at"),
                status: r.get("status"),
                body: body.map(|b| serde_json::from_str(&b)).transpose()?,
                replayed: r.get("replayed"),
            })
        })
        .collect()
}

/// Records a claim the API answered 202 for, unless the worker already finished it.
pub async fn insert_accepted_claim(
    pool: &PgPool,
    claim_id: Uuid,
    key: &str,
    account_id: &str,
    accepted_at: DateTime<Utc>,
    business_date: NaiveDate,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO claims (claim_id, idempotency_key, account_id, accepted_at, business_date, state)
         VALUES ($1, $2, $3, $4, $5, 'accepted') ON CONFLICT (claim_id) DO NOTHING",
    )
    .bind(claim_id)
    .bind(key)
    .bind(account_id)
    .bind(accepted_at)
    .bind(business_date)
    .execute(pool)
    .await?;
    Ok(())
}

/// Outbox rows not yet published, for the given claim partitions, oldest first.
pub async fn unpublished(pool: &PgPool, partitions: &[i32], limit: i64) -> anyhow::Result<Vec<(Uuid, String, String)>> {
    let rows = sqlx::query(
        "SELECT payout_id, message_key, payload::text AS payload FROM payout_outbox
         WHERE published_at IS NULL AND partition = ANY($1) ORDER BY seq LIMIT $2",
    )
    .bind(partitions)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

pub async fn mark_published(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<()> {
    sqlx::query("UPDATE payout_outbox SET published_at = now() WHERE payout_id = ANY($1) AND published_at IS NULL")
        .bind(ids)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn outbox_pending(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM payout_outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}
