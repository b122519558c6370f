//! The process's rate plans, shared by the API and the workers: reloaded
//! every `PLAN_RELOAD_SECS` (`app::reload_plans`), and on demand here when a
//! stored account names a plan imported since (another process may have
//! applied a snapshot on it seconds ago). The money engine accrues only on
//! plans it holds ([`Plans::covers`]), so every edge that computes on stored
//! accounts asks [`covering`] first.

use std::sync::{Arc, RwLock};

use sqlx::PgPool;

use crate::money::{Account, MissingPlan, Plans};
use crate::store;

/// Why no plans covering the accounts are available. Both are transient by
/// construction (a point's plan is in `rate_plans` before any point names it):
/// the API answers 503, the worker retries the batch.
#[derive(Debug, thiserror::Error)]
pub enum NotCovered {
    #[error("{0} (even after reloading the plans)")]
    Missing(MissingPlan),
    #[error("reloading the plans: {0:#}")]
    Reload(anyhow::Error),
}

/// Plans that cover every plan `accounts` name: the current ones, or the ones
/// reloaded from the database once (and shared with the rest of the process)
/// if one is missing.
pub async fn covering<'a, I>(
    pool: &PgPool,
    shared: &RwLock<Arc<Plans>>,
    default_plan: Option<&str>,
    accounts: I,
) -> Result<Arc<Plans>, NotCovered>
where
    I: IntoIterator<Item = &'a Account> + Clone,
{
    let current = shared.read().expect("plans").clone();
    let Err(missing) = covers_all(&current, accounts.clone()) else {
        return Ok(current);
    };
    tracing::info!(event = "plans_reloading", reason = %missing);
    let fresh = Arc::new(
        store::load_plans(pool, default_plan)
            .await
            .map_err(NotCovered::Reload)?,
    );
    *shared.write().expect("plans") = fresh.clone();
    match covers_all(&fresh, accounts) {
        Ok(()) => Ok(fresh),
        Err(still) => {
            tracing::warn!(event = "plan_missing", error = %still);
            Err(NotCovered::Missing(still))
        }
    }
}

fn covers_all<'a>(plans: &Plans, accounts: impl IntoIterator<Item = &'a Account>) -> Result<(), MissingPlan> {
    accounts.into_iter().try_for_each(|a| plans.covers(a))
}
