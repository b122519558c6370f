//! Rate plans: marginal tiers on an effective-dated schedule.
//!
//! The JSON form is what `plans import` loads and what `simulate --plans` reads:
//! `{"plans":[{"id","currency","day_count","accrual","fraction",
//!   "schedule":[{"effective_from","tiers":[{"up_to"?,"rate_percent"}]}]}]}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::account::Account;
use super::types::{
    is_leap_year, kst_year_of_secs, parse_instant, AccountId, Currency, EpochSecs, Minor, ParseError, RatePercent,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayCount {
    /// 365-day year.
    Act365F,
    /// 360-day year.
    Act360,
    /// 366 days for seconds whose KST date is in a leap year, else 365.
    ActAct,
}

impl DayCount {
    pub fn as_str(&self) -> &'static str {
        match self {
            DayCount::Act365F => "ACT/365F",
            DayCount::Act360 => "ACT/360",
            DayCount::ActAct => "ACT/ACT",
        }
    }

    /// Year length in days for the KST year `year`.
    pub fn year_days(&self, year: i32) -> i64 {
        match self {
            DayCount::Act365F => 365,
            DayCount::Act360 => 360,
            DayCount::ActAct if is_leap_year(year) => 366,
            DayCount::ActAct => 365,
        }
    }

    /// Year length in days for the second `s`.
    pub fn year_days_at(&self, s: EpochSecs) -> i64 {
        match self {
            DayCount::ActAct => self.year_days(kst_year_of_secs(s)),
            _ => self.year_days(2001),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccrualStyle {
    Continuous,
    DailyClose,
}

impl AccrualStyle {
    pub fn as_str(&self) -> &'static str {
        match self {
            AccrualStyle::Continuous => "continuous",
            AccrualStyle::DailyClose => "daily_close",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FractionRule {
    /// The sub-unit remainder stays accrued and is paid later.
    Carry,
    /// The sub-unit remainder is dropped at each payout (원 미만 절사).
    Drop,
}

impl FractionRule {
    pub fn as_str(&self) -> &'static str {
        match self {
            FractionRule::Carry => "carry",
            FractionRule::Drop => "drop",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// Upper bound of the tier in minor units; `None` for the last tier.
    pub up_to: Option<Minor>,
    pub rate: RatePercent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleEntry {
    pub effective_from: DateTime<Utc>,
    pub tiers: Vec<Tier>,
}

impl ScheduleEntry {
    pub fn effective_secs(&self) -> EpochSecs {
        self.effective_from.timestamp()
    }

    /// Σ over tiers of (part of `balance` inside the tier) × (tier rate in
    /// millionths of a percent). Exact integer arithmetic.
    pub fn weighted_balance(&self, balance: Minor) -> i128 {
        self.tier_parts(balance)
            .map(|t| t.part.0 as i128 * t.tier.rate.micro_percent() as i128)
            .sum()
    }

    /// The parts of `balance` inside each tier it reaches, lowest first.
    pub fn tier_parts(&self, balance: Minor) -> impl Iterator<Item = TierPart<'_>> {
        let mut below: i64 = 0;
        self.tiers.iter().map_while(move |tier| {
            let top = tier.up_to.map(|m| m.0).unwrap_or(i64::MAX);
            if balance.0 <= below {
                return None;
            }
            let part = TierPart {
                tier,
                from: Minor(below),
                part: Minor(balance.0.min(top) - below),
            };
            below = top;
            Some(part)
        })
    }
}

/// The part of a balance inside one tier: `(from, from + part]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierPart<'a> {
    pub tier: &'a Tier,
    pub from: Minor,
    pub part: Minor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: String,
    pub currency: Currency,
    pub day_count: DayCount,
    pub accrual: AccrualStyle,
    pub fraction: FractionRule,
    /// Sorted by `effective_from`, strictly increasing.
    pub schedule: Vec<ScheduleEntry>,
}

impl Plan {
    /// The schedule entry in force during second `s`, if any.
    pub fn entry_at(&self, s: EpochSecs) -> Option<&ScheduleEntry> {
        let idx = self.schedule.partition_point(|e| e.effective_secs() <= s);
        idx.checked_sub(1).map(|i| &self.schedule[i])
    }

    /// Instants in `(from, to)` at which the rate changes.
    pub fn changes_between(&self, from: EpochSecs, to: EpochSecs) -> impl Iterator<Item = EpochSecs> + '_ {
        self.schedule
            .iter()
            .map(|e| e.effective_secs())
            .filter(move |&s| s > from && s < to)
    }

    /// The schedule entries in force at some second of `[from, to)`.
    pub fn entries_in(&self, from: EpochSecs, to: EpochSecs) -> Vec<&ScheduleEntry> {
        self.schedule
            .iter()
            .enumerate()
            .filter(|(i, e)| {
                let end = self
                    .schedule
                    .get(i + 1)
                    .map(|n| n.effective_secs())
                    .unwrap_or(EpochSecs::MAX);
                e.effective_secs() < to.max(from + 1) && end > from
            })
            .map(|(_, e)| e)
            .collect()
    }
}

/// All known plans; the first one loaded is the default unless configured.
#[derive(Debug, Clone, Default)]
pub struct Plans {
    by_id: BTreeMap<String, Arc<Plan>>,
    default_id: Option<String>,
}

impl Plans {
    pub fn new(plans: Vec<Plan>, default_id: Option<String>) -> Result<Self, ParseError> {
        let default_id = default_id.or_else(|| plans.first().map(|p| p.id.clone()));
        let mut by_id = BTreeMap::new();
        for p in plans {
            let id = p.id.clone();
            if by_id.insert(id.clone(), Arc::new(p)).is_some() {
                return Err(ParseError::new("duplicate_plan", format!("plan {id:?} twice")));
            }
        }
        if let Some(d) = &default_id {
            if !by_id.contains_key(d) {
                return Err(ParseError::new(
                    "unknown_plan",
                    format!("default plan {d:?} is not defined"),
                ));
            }
        }
        Ok(Self { by_id, default_id })
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Plan>> {
        self.by_id.get(id)
    }

    pub fn default_id(&self) -> Option<&str> {
        self.default_id.as_deref()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Plan>> {
        self.by_id.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether every plan the account's points name is loaded: the engine's
    /// precondition for accruing on it (it panics on a plan it does not have).
    /// A stored account may name a plan imported after these plans were
    /// loaded; the caller reloads, or refuses with this reason.
    pub fn covers(&self, account: &Account) -> Result<(), MissingPlan> {
        match account.plan_ids().find(|id| !self.by_id.contains_key(*id)) {
            None => Ok(()),
            Some(plan) => Err(MissingPlan {
                account: account.id().clone(),
                plan: plan.to_owned(),
            }),
        }
    }
}

/// A stored account names a plan these plans do not hold (not loaded yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("account {account} names plan {plan:?}, which is not loaded")]
pub struct MissingPlan {
    pub account: AccountId,
    pub plan: String,
}

// ---- JSON form -------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    pub plans: Vec<PlanJson>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanJson {
    pub id: String,
    #[serde(default = "default_currency")]
    pub currency: String,
    #[serde(default = "default_day_count")]
    pub day_count: String,
    #[serde(default = "default_accrual")]
    pub accrual: String,
    #[serde(default = "default_fraction")]
    pub fraction: String,
    pub schedule: Vec<ScheduleJson>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleJson {
    pub effective_from: String,
    pub tiers: Vec<TierJson>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TierJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to: Option<String>,
    pub rate_percent: String,
}

fn default_currency() -> String {
    "KRW".into()
}
fn default_day_count() -> String {
    "ACT/365F".into()
}
fn default_accrual() -> String {
    "continuous".into()
}
fn default_fraction() -> String {
    "carry".into()
}

impl PlanFile {
    pub fn parse(text: &str) -> Result<Vec<Plan>, ParseError> {
        let file: PlanFile =
            serde_json::from_str(text).map_err(|e| ParseError::new("invalid_plans", format!("plans JSON: {e}")))?;
        if file.plans.is_empty() {
            return Err(ParseError::new("invalid_plans", "no plans in file"));
        }
        file.plans.iter().map(PlanJson::to_plan).collect()
    }
}

impl PlanJson {
    pub fn to_plan(&self) -> Result<Plan, ParseError> {
        let bad = |detail: String| ParseError::new("invalid_plans", format!("plan {:?}: {detail}", self.id));
        if self.id.is_empty()
            || self.id.len() > 64
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            return Err(bad("id must be 1-64 characters of [A-Za-z0-9_.-]".into()));
        }
        let currency = Currency::try_from(self.currency.as_str()).map_err(|e| bad(e.detail))?;
        let day_count = match self.day_count.as_str() {
            "ACT/365F" => DayCount::Act365F,
            "ACT/360" => DayCount::Act360,
            "ACT/ACT" => DayCount::ActAct,
            other => return Err(bad(format!("unknown day_count {other:?}"))),
        };
        let accrual = match self.accrual.as_str() {
            "continuous" => AccrualStyle::Continuous,
            "daily_close" => AccrualStyle::DailyClose,
            other => return Err(bad(format!("unknown accrual {other:?}"))),
        };
        let fraction = match self.fraction.as_str() {
            "carry" => FractionRule::Carry,
            "drop" => FractionRule::Drop,
            other => return Err(bad(format!("unknown fraction {other:?}"))),
        };
        if self.schedule.is_empty() {
            return Err(bad("schedule is empty".into()));
        }
        let mut schedule = Vec::with_capacity(self.schedule.len());
        for entry in &self.schedule {
            schedule.push(entry.to_entry(currency).map_err(|e| bad(e.detail))?);
        }
        let increasing = schedule.windows(2).all(|w| w[0].effective_from < w[1].effective_from);
        if !increasing {
            return Err(bad("schedule must be sorted by effective_from, without repeats".into()));
        }
        Ok(Plan {
            id: self.id.clone(),
            currency,
            day_count,
            accrual,
            fraction,
            schedule,
        })
    }
}

impl ScheduleJson {
    fn to_entry(&self, currency: Currency) -> Result<ScheduleEntry, ParseError> {
        let effective_from = parse_instant(&self.effective_from)?;
        if effective_from.timestamp_subsec_nanos() != 0 {
            return Err(ParseError::new(
                "invalid_plans",
                "effective_from must be a whole second",
            ));
        }
        if self.tiers.is_empty() {
            return Err(ParseError::new("invalid_plans", "tiers are empty"));
        }
        let mut tiers = Vec::with_capacity(self.tiers.len());
        let mut last_top = Minor(0);
        for (i, t) in self.tiers.iter().enumerate() {
            let is_last = i + 1 == self.tiers.len();
            let up_to = match (&t.up_to, is_last) {
                (None, true) => None,
                (Some(_), true) => return Err(ParseError::new("invalid_plans", "the last tier has no up_to")),
                (None, false) => return Err(ParseError::new("invalid_plans", "every tier but the last needs up_to")),
                (Some(text), false) => {
                    let top = currency.parse_amount(text)?;
                    if top <= last_top {
                        return Err(ParseError::new("invalid_plans", "tier bounds must increase"));
                    }
                    last_top = top;
                    Some(top)
                }
            };
            tiers.push(Tier {
                up_to,
                rate: RatePercent::try_from(t.rate_percent.as_str())?,
            });
        }
        Ok(ScheduleEntry { effective_from, tiers })
    }
}

impl Plan {
    /// The JSON form, as `plans import` stores it.
    pub fn to_json(&self) -> PlanJson {
        PlanJson {
            id: self.id.clone(),
            currency: self.currency.code().into(),
            day_count: self.day_count.as_str().into(),
            accrual: self.accrual.as_str().into(),
            fraction: self.fraction.as_str().into(),
            schedule: self.schedule.iter().map(|e| e.to_json(self.currency)).collect(),
        }
    }
}

impl ScheduleEntry {
    pub fn to_json(&self, currency: Currency) -> ScheduleJson {
        ScheduleJson {
            effective_from: super::types::format_instant(self.effective_from),
            tiers: self
                .tiers
                .iter()
                .map(|t| TierJson {
                    up_to: t.up_to.map(|m| currency.to_decimal(m).to_string()),
                    rate_percent: t.rate.to_decimal().to_string(),
                })
                .collect(),
        }
    }
}

/// Why a plan import was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("plan {plan:?}: the schedule entry effective {at} is not in the future (now + {lead_secs}s); rate changes may only take effect in the future")]
    Retroactive { plan: String, at: String, lead_secs: i64 },
    #[error("plan {plan:?}: {what} cannot change once the plan exists")]
    Immutable { plan: String, what: &'static str },
}

/// Checks that importing `new` over `old` changes nothing already in force:
/// entries that start before `now + lead_secs` must be unchanged, so every
/// worker has loaded a change before it applies.
pub fn check_import(old: &Plan, new: &Plan, now: DateTime<Utc>, lead_secs: i64) -> Result<(), ImportError> {
    let plan = new.id.clone();
    if old.currency != new.currency {
        return Err(ImportError::Immutable { plan, what: "currency" });
    }
    if old.day_count != new.day_count || old.accrual != new.accrual || old.fraction != new.fraction {
        return Err(ImportError::Immutable {
            plan,
            what: "day_count, accrual and fraction",
        });
    }
    let horizon = now.timestamp() + lead_secs;
    let frozen = |p: &Plan| -> Vec<ScheduleEntry> {
        p.schedule
            .iter()
            .filter(|e| e.effective_secs() < horizon)
            .cloned()
            .collect()
    };
    let (old_frozen, new_frozen) = (frozen(old), frozen(new));
    if old_frozen != new_frozen {
        let at = new_frozen
            .iter()
            .find(|e| !old_frozen.contains(e))
            .or_else(|| old_frozen.iter().find(|e| !new_frozen.contains(e)))
            .map(|e| super::types::format_instant(e.effective_from))
            .unwrap_or_default();
        return Err(ImportError::Retroactive { plan, at, lead_secs });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIERED: &str = r#"{"plans":[{"id":"tiered","schedule":[
        {"effective_from":"2026-01-01T00:00:00+09:00","tiers":[{"up_to":"50000000","rate_percent":"2.0"},{"rate_percent":"4.0"}]}]}]}"#;

    #[test]
    fn marginal_tiers_weight_each_part() {
        let plans = PlanFile::parse(TIERED).unwrap();
        let e = &plans[0].schedule[0];
        // 60M: 50M at 2% + 10M at 4%.
        let w = e.weighted_balance(Minor(60_000_000));
        assert_eq!(w, 50_000_000i128 * 2_000_000 + 10_000_000i128 * 4_000_000);
        assert_eq!(e.weighted_balance(Minor(0)), 0);
        assert_eq!(e.weighted_balance(Minor(50_000_000)), 50_000_000i128 * 2_000_000);
    }

    #[test]
    fn bad_plans_are_refused() {
        let cases = [
            r#"{"plans":[]}"#,
            r#"{"plans":[{"id":"x","schedule":[]}]}"#,
            r#"{"plans":[{"id":"x","schedule":[{"effective_from":"2026-01-01T00:00:00+09:00","tiers":[{"up_to":"5","rate_percent":"1"}]}]}]}"#,
            r#"{"plans":[{"id":"x","day_count":"30/360","schedule":[{"effective_from":"2026-01-01T00:00:00+09:00","tiers":[{"rate_percent":"1"}]}]}]}"#,
            r#"{"plans":[{"id":"x","schedule":[{"effective_from":"2026-01-01T00:00:00.5+09:00","tiers":[{"rate_percent":"1"}]}]}]}"#,
            r#"{"plans":[{"id":"x","schedule":[{"effective_from":"2026-01-01","tiers":[{"rate_percent":"1"}]}]}]}"#,
        ];
        for c in cases {
            assert!(PlanFile::parse(c).is_err(), "accepted {c}");
        }
    }

    #[test]
    fn retroactive_imports_are_refused() {
        let old = PlanFile::parse(TIERED).unwrap().remove(0);
        let now = parse_instant("2026-06-01T00:00:00+09:00").unwrap();
        let mut changed = old.clone();
        changed.schedule[0].tiers[0].rate = RatePercent::try_from("3").unwrap();
        assert!(check_import(&old, &changed, now, 60).is_err());
        let mut future = old.clone();
        future.schedule.push(ScheduleEntry {
            effective_from: parse_instant("2026-07-01T00:00:00+09:00").unwrap(),
            tiers: vec![Tier {
                up_to: None,
                rate: RatePercent::try_from("3").unwrap(),
            }],
        });
        assert!(check_import(&old, &future, now, 60).is_ok());
        let mut past = old.clone();
        past.schedule.push(ScheduleEntry {
            effective_from: parse_instant("2026-05-01T00:00:00+09:00").unwrap(),
            tiers: vec![Tier {
                up_to: None,
                rate: RatePercent::try_from("3").unwrap(),
            }],
        });
        assert!(check_import(&old, &past, now, 60).is_err());
    }

    fn account_on(plans: &[&str]) -> Account {
        use crate::money::{Accrued, Point, StoredAccount};
        let at = parse_instant("2026-01-02T00:00:00+09:00").unwrap();
        let points: Vec<Point> = plans
            .iter()
            .enumerate()
            .map(|(i, p)| Point {
                seq: i as u64 + 1,
                as_of: at + chrono::Duration::hours(i as i64),
                balance: Minor(1_000_000),
                plan: (*p).to_owned(),
            })
            .collect();
        Account::restore(StoredAccount {
            id: AccountId::try_from("acc-1").unwrap(),
            currency: Currency::KRW,
            tax_profile: Default::default(),
            last_seq: points.len() as u64,
            paid_through: at.timestamp(),
            checkpoint: crate::money::account::Checkpoint::at_paid_through(at.timestamp()),
            points,
            points_from: i64::MIN,
            paid_any: false,
            carry: Accrued::ZERO,
            pending_adjustment: Accrued::ZERO,
            claim_day: None,
            claims_on_day: 0,
            last_claim_at: None,
            settled_through: None,
        })
        .unwrap()
    }

    #[test]
    fn an_account_lists_each_of_its_plans_once() {
        let acc = account_on(&["tiered", "new", "tiered", "new"]);
        assert_eq!(acc.plan_ids().collect::<Vec<_>>(), ["tiered", "new"]);
    }

    #[test]
    fn plans_cover_an_account_only_with_every_plan_it_names() {
        let plans = Plans::new(PlanFile::parse(TIERED).unwrap(), None).unwrap();
        assert_eq!(plans.covers(&account_on(&["tiered"])), Ok(()));
        let missing = plans.covers(&account_on(&["tiered", "imported-later"])).unwrap_err();
        assert_eq!(missing.plan, "imported-later");
        assert_eq!(missing.account.as_str(), "acc-1");
        assert_eq!(
            missing.to_string(),
            "account acc-1 names plan \"imported-later\", which is not loaded"
        );
    }
}
