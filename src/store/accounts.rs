//! Accounts and their balance points, locked and loaded per batch.
//!
//! An account is read back with its accrual checkpoint (`checkpoint_*`
//! columns, `money::account::Checkpoint`) and only the points the engine
//! needs: the last one before the cutoff and every one from it on, where the
//! cutoff is the earlier of the checkpoint and the oldest instant a message of
//! the batch looks at ([`history_needed`]). A claim, a settlement, a view and
//! an in-order snapshot therefore read O(1) points; a late snapshot reads the
//! points from its own `as_of` on.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{secs_utc, units_parse, units_text, Tx};
use crate::claims::{Input, Message, NewPoint};
use crate::money::account::{Checkpoint, PlanUse};
use crate::money::types::{business_date, floor_secs, kst_midnight_utc};
use crate::money::{Account, AccountId, Currency, Point, StoredAccount, TaxProfile};

const ACCOUNT_COLUMNS: &str = "account_id, currency, tax_profile, last_seq, paid_through, paid_any,
    carry_units::text AS carry, pending_adjustment_units::text AS pending, claim_day, claims_on_day,
    last_claim_at, settled_through, checkpoint_at, checkpoint_units::text AS checkpoint_units,
    checkpoint_plans::text AS checkpoint_plans";

/// From which instant each account's timeline is needed (besides its checkpoint).
#[derive(Debug, Clone)]
pub enum Needed {
    /// The same instant for every account (the API's view: its clock reading).
    Same(DateTime<Utc>),
    /// Per account; an account not named needs only its checkpoint.
    PerAccount(HashMap<String, DateTime<Utc>>),
}

impl From<DateTime<Utc>> for Needed {
    fn from(t: DateTime<Utc>) -> Needed {
        Needed::Same(t)
    }
}

impl Needed {
    fn of(&self, account_id: &str) -> Option<DateTime<Utc>> {
        match self {
            Needed::Same(t) => Some(*t),
            Needed::PerAccount(m) => m.get(account_id).copied(),
        }
    }
}

/// The oldest instant each account's messages in a batch look at: a
/// snapshot its `as_of` (but never before `oldest_correction`: an older
/// late snapshot is refused `correction_too_old`, and an in-order one needs
/// only the last point), a claim the midnight that starts its business date
/// ([`claim_history_from`]), a settlement the end of its date.
pub fn history_needed(inputs: &[Input], oldest_correction: DateTime<Utc>) -> Needed {
    let mut out: HashMap<String, DateTime<Utc>> = HashMap::new();
    for input in inputs {
        let (id, at) = match &input.message {
            Message::Snapshot { parsed: Ok(s), .. } => (s.account_id.to_string(), s.as_of.max(oldest_correction)),
            Message::Snapshot { .. } => continue,
            // A daily_close claim pays through 00:00 KST of its business date
            // (`Account::claim_through`); the style is not known before the load.
            Message::Claim(c) => (c.account_id.to_string(), claim_history_from(c.accepted_at)),
            Message::Settle { account_id, date, .. } => {
                let next = date.checked_add_days(Days::new(1)).expect("date in range");
                (account_id.clone(), kst_midnight_utc(next))
            }
        };
        let e = out.entry(id).or_insert(at);
        *e = (*e).min(at);
    }
    Needed::PerAccount(out)
}

/// A claim's history is needed from the earlier of its instant and 00:00 KST
/// of its business date, whatever its account's accrual style (for a
/// continuous account: the points since midnight, a handful at most).
pub fn claim_history_from(accepted_at: DateTime<Utc>) -> DateTime<Utc> {
    accepted_at.min(kst_midnight_utc(business_date(accepted_at)))
}

/// `checkpoint_plans`: one object per plan, in the order of their first point.
#[derive(Serialize, Deserialize)]
struct StoredPlanUse {
    plan: String,
    seq: u64,
    at: i64,
}

fn plans_json(uses: &[PlanUse]) -> String {
    let stored: Vec<StoredPlanUse> = uses
        .iter()
        .map(|u| StoredPlanUse {
            plan: u.plan.clone(),
            seq: u.first_seq,
            at: u.first_at,
        })
        .collect();
    serde_json::to_string(&stored).expect("plain data")
}

fn checkpoint_from_row(row: &sqlx::postgres::PgRow) -> anyhow::Result<Checkpoint> {
    let at: DateTime<Utc> = row.get("checkpoint_at");
    let uses: Vec<StoredPlanUse> =
        serde_json::from_str(row.get("checkpoint_plans")).context("accounts.checkpoint_plans")?;
    Ok(Checkpoint {
        at: at.timestamp(),
        accrued: units_parse(row.get("checkpoint_units"))?,
        plans: uses
            .into_iter()
            .map(|u| PlanUse {
                plan: u.plan,
                first_seq: u.seq,
                first_at: u.at,
            })
            .collect(),
    })
}

fn account_from_row(row: &sqlx::postgres::PgRow, points: Vec<Point>, from: DateTime<Utc>) -> anyhow::Result<Account> {
    let id: String = row.get("account_id");
    let currency: String = row.get("currency");
    let tax: String = row.get("tax_profile");
    let paid_through: DateTime<Utc> = row.get("paid_through");
    let stored = StoredAccount {
        id: AccountId::try_from(id.as_str())?,
        currency: Currency::try_from(currency.as_str())?,
        tax_profile: TaxProfile::try_from(tax.as_str())?,
        points,
        points_from: from.timestamp(),
        checkpoint: checkpoint_from_row(row)?,
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
/// cannot deadlock on accounts) the accounts with their timelines from the
/// cutoff on (plus the point in force at the cutoff): the earlier of the
/// checkpoint and what `needed` says, floored to the second.
pub async fn load_accounts(
    conn: &mut sqlx::PgConnection,
    ids: &[String],
    needed: impl Into<Needed>,
    lock: bool,
) -> anyhow::Result<HashMap<String, Account>> {
    let needed = needed.into();
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
        let id: String = row.get("account_id");
        let checkpoint: DateTime<Utc> = row.get("checkpoint_at");
        let cutoff = needed.of(&id).map_or(checkpoint, |t| checkpoint.min(t));
        cutoffs.push(secs_utc(floor_secs(cutoff)));
        found.push(id);
    }
    let mut points = load_points(&mut *conn, &found, &cutoffs).await?;
    let mut out = HashMap::with_capacity(rows.len());
    for (row, cutoff) in rows.iter().zip(cutoffs) {
        let id: String = row.get("account_id");
        let pts = points.remove(&id).unwrap_or_default();
        out.insert(id, account_from_row(row, pts, cutoff)?);
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
    let cp_at: Vec<DateTime<Utc>> = accounts.iter().map(|a| secs_utc(a.checkpoint().at)).collect();
    let cp_units = col(&|a| units_text(a.checkpoint().accrued));
    let cp_plans = col(&|a| plans_json(&a.checkpoint().plans));
    sqlx::query(
        "INSERT INTO accounts (account_id, currency, tax_profile, last_seq, paid_through, paid_any, carry_units,
                               pending_adjustment_units, claim_day, claims_on_day, last_claim_at, settled_through,
                               checkpoint_at, checkpoint_units, checkpoint_plans)
         SELECT id, cur, tax, seq, pt, pa, carry::numeric, pend::numeric, cd, cod, lca, st, ca, cu::numeric, cp::jsonb
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::timestamptz[], $6::bool[], $7::text[],
                     $8::text[], $9::date[], $10::int4[], $11::timestamptz[], $12::date[], $13::timestamptz[],
                     $14::text[], $15::text[])
              AS t(id, cur, tax, seq, pt, pa, carry, pend, cd, cod, lca, st, ca, cu, cp)
         ON CONFLICT (account_id) DO UPDATE SET
            tax_profile = EXCLUDED.tax_profile, last_seq = EXCLUDED.last_seq, paid_through = EXCLUDED.paid_through,
            paid_any = EXCLUDED.paid_any, carry_units = EXCLUDED.carry_units,
            pending_adjustment_units = EXCLUDED.pending_adjustment_units, claim_day = EXCLUDED.claim_day,
            claims_on_day = EXCLUDED.claims_on_day, last_claim_at = EXCLUDED.last_claim_at,
            settled_through = EXCLUDED.settled_through, checkpoint_at = EXCLUDED.checkpoint_at,
            checkpoint_units = EXCLUDED.checkpoint_units, checkpoint_plans = EXCLUDED.checkpoint_plans,
            updated_at = now()",
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
    .bind(cp_at)
    .bind(cp_units)
    .bind(cp_plans)
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
