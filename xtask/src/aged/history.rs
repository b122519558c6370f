//! The aged accounts' past, written straight into the tables with SQL
//! (server-side `INSERT … SELECT generate_series`, no round trip per row):
//! a year of balance points, a claim payout per day with its `claims`,
//! `idempotency_keys` and published `payout_outbox` rows, the account rows
//! with their checkpoint standing at `paid_through` (exact by construction:
//! nothing is accrued in an empty `[paid_through, C)`), and filler
//! `daily_accruals` / `day_closes` rows for the days the benchmark does not
//! close itself. The checkpoints then move through the real pipeline (one
//! in-order snapshot per account, `super::warm_up`), as after the migration.

use chrono::{DateTime, Days, NaiveDate, Utc};
use interest_now::money::types::kst_midnight_utc;

/// The plan every account of the run is on: 2.0% ACT/365F, continuous, since 2020.
pub const PLAN: &str = "aged-flat";

pub const PLANS_JSON: &str = r#"{"plans":[
  {"id":"aged-flat","currency":"KRW","day_count":"ACT/365F","accrual":"continuous","fraction":"carry",
   "schedule":[{"effective_from":"2020-01-01T00:00:00+09:00","tiers":[{"rate_percent":"2.0"}]}]}]}"#;

/// `100000000 + (a * 7919) % 900000000`: an account's base balance in won, by its number `a`.
const BASE_BALANCE: &str = "(100000000 + (a::bigint * 7919) % 900000000)";

/// One stretch of an account group's timeline: `count` points, one every
/// `every_secs` from `from`, seqs `seq_base + 2, + 4, …` (even: the odd
/// ones stay free for late snapshots).
pub struct Stretch {
    pub from: DateTime<Utc>,
    pub every_secs: i64,
    pub count: i64,
    pub seq_base: i64,
}

/// Inserts a stretch of points for accounts `prefix`000001 … `prefix``n`.
/// Each point lands at a jittered instant inside its slot (whole seconds)
/// and is received 5 s later.
pub async fn points(pool: &sqlx::PgPool, prefix: &str, n: usize, s: &Stretch) -> anyhow::Result<u64> {
    let sql = format!(
        "INSERT INTO balance_points (account_id, seq, as_of, balance, plan_id, received_at)
         SELECT $1 || lpad(a::text, 6, '0'), $6 + 2 * (i + 1), t.at,
                ({BASE_BALANCE} + (i * 104729) % 1000000)::numeric, '{PLAN}', t.at + interval '5 seconds'
         FROM generate_series(1, $2) a, generate_series(0, $3 - 1) i,
              LATERAL (SELECT $4::timestamptz
                         + (i * $5 + (a * 31 + i * 37) % greatest($5 / 2, 1)) * interval '1 second' AS at) t"
    );
    let r = sqlx::query(&sql)
        .bind(prefix)
        .bind(n as i32)
        .bind(s.count)
        .bind(s.from)
        .bind(s.every_secs)
        .bind(s.seq_base)
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}

/// One claim payout per account per day of `[first, last]` at 09:00 KST
/// (00:00 UTC), each paying the day since the previous one (the first from
/// `opened`): gross ≈ a day of 2% on the base balance, standard taxes, the
/// table's CHECKs met. Records of the past, not recomputed from the points.
pub async fn payouts(
    pool: &sqlx::PgPool,
    prefix: &str,
    n: usize,
    (first, last): (NaiveDate, NaiveDate),
    opened: DateTime<Utc>,
) -> anyhow::Result<u64> {
    let sql = format!(
        "INSERT INTO interest_payouts (payout_id, claim_id, account_id, kind, business_date, period_start, period_end,
             plan_id, rates, gross, income_tax, local_tax, rural_tax, adjustment, net, currency, accrued_units,
             carried_in_units, carried_out_units, dropped_units, idempotency_key, accepted_at, paid_at, tax_profile)
         SELECT gen_random_uuid(), gen_random_uuid(), id, 'claim', d::date, greatest(pe - interval '1 day', $5), pe,
             '{PLAN}', '[{{\"plan\":\"{PLAN}\",\"effective_from\":\"2020-01-01T00:00:00+09:00\",\"tiers\":[{{\"rate_percent\":\"2.0\"}}]}}]',
             g, it, lt, 0, 0, g - it - lt, 'KRW', g * 13850611200000000000, 0, 0, 0,
             'hist-' || id || '-' || d::date, pe, pe + interval '50 milliseconds', 'standard'
         FROM generate_series(1, $2) a, generate_series($3::date, $4::date, interval '1 day') d,
              LATERAL (SELECT $1 || lpad(a::text, 6, '0') AS id, (d::date::timestamp AT TIME ZONE 'UTC') AS pe,
                              floor({BASE_BALANCE} * 0.02 / 365) AS g) x,
              LATERAL (SELECT trunc(g * 0.14 / 10) * 10 AS it) y,
              LATERAL (SELECT trunc(it * 0.1 / 10) * 10 AS lt) z"
    );
    let r = sqlx::query(&sql)
        .bind(prefix)
        .bind(n as i32)
        .bind(first)
        .bind(last)
        .bind(opened)
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}

/// The claim rows, answered idempotency keys and published outbox rows of
/// the group's payouts, each carrying the payout's JSON as the service writes it.
pub async fn payout_trail(pool: &sqlx::PgPool, prefix: &str) -> anyhow::Result<()> {
    sqlx::query(
        "WITH p AS (
             SELECT payout_id, claim_id, idempotency_key, account_id, accepted_at, business_date, paid_at,
                    jsonb_build_object('payout_id', payout_id, 'account_id', account_id, 'kind', kind,
                        'business_date', business_date, 'period_start', period_start, 'period_end', period_end,
                        'gross', gross::text, 'income_tax', income_tax::text, 'local_tax', local_tax::text,
                        'rural_tax', rural_tax::text, 'adjustment', adjustment::text, 'net', net::text,
                        'currency', currency, 'plan', plan_id, 'rates', rates, 'accepted_at', accepted_at) AS body
             FROM interest_payouts WHERE account_id LIKE $1 || '%'),
         c AS (INSERT INTO claims (claim_id, idempotency_key, account_id, accepted_at, business_date, state, status,
                                   body, payout_id, completed_at, client_id)
               SELECT claim_id, idempotency_key, account_id, accepted_at, business_date, 'done', 201, body,
                      payout_id, paid_at, 'history' FROM p),
         k AS (INSERT INTO idempotency_keys (client_id, idempotency_key, account_id, claim_id, state, status, body,
                                             accepted_at, created_at)
               SELECT 'history', idempotency_key, account_id, claim_id, 'answered', 201, body, accepted_at, paid_at
               FROM p)
         INSERT INTO payout_outbox (payout_id, partition, message_key, payload, created_at, published_at)
         SELECT payout_id, 0, account_id, body, paid_at, paid_at + interval '1 second' FROM p",
    )
    .bind(prefix)
    .execute(pool)
    .await?;
    Ok(())
}

/// The group's account rows. `paid` = Some(last payout's instant and date):
/// paid through it, one claim that day; None: never paid (paid through the
/// first point). The checkpoint stands at `paid_through` with nothing in it.
pub async fn accounts(
    pool: &sqlx::PgPool,
    prefix: &str,
    paid: Option<(DateTime<Utc>, NaiveDate)>,
) -> anyhow::Result<u64> {
    let r = sqlx::query(
        "INSERT INTO accounts (account_id, currency, tax_profile, last_seq, paid_through, paid_any, claim_day,
                               claims_on_day, last_claim_at, checkpoint_at, checkpoint_units, checkpoint_plans)
         SELECT account_id, 'KRW', 'standard', last_seq, pt, $2::timestamptz IS NOT NULL, $3,
                CASE WHEN $2::timestamptz IS NULL THEN 0 ELSE 1 END, $2, pt, 0,
                interest_checkpoint_plans_at(account_id, pt)
         FROM (SELECT account_id, max(seq) AS last_seq, coalesce($2, date_trunc('second', min(as_of))) AS pt
               FROM balance_points WHERE account_id LIKE $1 || '%' GROUP BY account_id) b",
    )
    .bind(prefix)
    .bind(paid.map(|p| p.0))
    .bind(paid.map(|p| p.1))
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Filler journal rows for `[first, last]` (every SQL-written account, a
/// day's accrual of about 100,000,000 won at 2% less the day's payouts,
/// completed `day_closes`): the size of a year of journal, not its truth —
/// the days the benchmark times are closed by the real `close-day`.
pub async fn journal_filler(pool: &sqlx::PgPool, first: NaiveDate, last: NaiveDate) -> anyhow::Result<u64> {
    if last < first {
        return Ok(0);
    }
    let r = sqlx::query(
        "WITH u AS (SELECT 5479::numeric * 13850611200000000000 AS day_units)
         INSERT INTO daily_accruals (account_id, business_date, currency, accrued_units, corrections_units, paid_units,
                                     liability_start_units, liability_end_units, accrued, liability_end)
         SELECT a.account_id, d::date, 'KRW', u.day_units, 0, coalesce(p.paid, 0), 0, u.day_units - coalesce(p.paid, 0),
                trunc(u.day_units / 13850611200000000000, 10),
                trunc((u.day_units - coalesce(p.paid, 0)) / 13850611200000000000, 10)
         FROM accounts a CROSS JOIN u CROSS JOIN generate_series($1::date, $2::date, interval '1 day') d
         LEFT JOIN LATERAL (SELECT sum(gross) * 13850611200000000000 AS paid FROM interest_payouts q
                            WHERE q.account_id = a.account_id AND q.business_date = d::date) p ON true",
    )
    .bind(first)
    .bind(last)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO day_closes (business_date, cut_at, completed_at, accounts)
         SELECT d::date, (d::date + 1)::timestamp AT TIME ZONE 'Asia/Seoul', now(),
                (SELECT count(*) FROM daily_accruals WHERE business_date = d::date)
         FROM generate_series($1::date, $2::date, interval '1 day') d",
    )
    .bind(first)
    .bind(last)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// 00:00 KST of `date`.
pub fn start_of(date: NaiveDate) -> DateTime<Utc> {
    kst_midnight_utc(date)
}

/// `date` + `n` days.
pub fn plus(date: NaiveDate, n: u64) -> NaiveDate {
    date + Days::new(n)
}
