//! Rate plans: loaded by every process, imported by `plans import`.

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use crate::money::plan::{check_import, Plan, PlanJson};
use crate::money::Plans;

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
