//! The JSON wire forms of what the engine decides: a payout (the 201 body,
//! the `interest-payouts` event, `simulate`'s output) and the live view.
//! One definition each; amounts are decimal strings, instants RFC 3339 in KST.
//!
//! Bodies are rendered through `serde_json::Value`, whose object keys are
//! sorted, so the bytes do not depend on field order here.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::money::accrual::{Interval, Span, DISPLAY_DECIMALS};
use crate::money::explain::Explanation;
use crate::money::plan::TierJson;
use crate::money::types::format_instant;
use crate::money::{AccountId, Accrued, AppliedRates, Currency, Minor, Payout, View, ACCRUAL_DENOMINATOR};
use chrono::{TimeZone, Utc};
use rust_decimal::Decimal;

/// A payout as the API, the outbox event and `simulate` show it (SPEC §5).
/// Reading a stored body back ignores fields it does not know, so a body
/// written by a newer version never blocks a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutJson {
    pub payout_id: String,
    pub account_id: String,
    pub kind: String,
    pub business_date: String,
    pub period_start: String,
    pub period_end: String,
    pub gross: String,
    pub income_tax: String,
    pub local_tax: String,
    pub rural_tax: String,
    pub adjustment: String,
    pub net: String,
    pub currency: String,
    pub plan: String,
    pub rates: Vec<RatesJson>,
    pub accepted_at: String,
}

/// One schedule entry in force during the payout's period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatesJson {
    pub plan: String,
    pub effective_from: String,
    pub tiers: Vec<TierJson>,
}

impl PayoutJson {
    pub fn new(payout_id: &str, account_id: &AccountId, p: &Payout) -> PayoutJson {
        let c = p.currency;
        let amt = |m: Minor| c.to_decimal(m).to_string();
        PayoutJson {
            payout_id: payout_id.to_owned(),
            account_id: account_id.to_string(),
            kind: p.kind.as_str().to_owned(),
            business_date: p.business_date.to_string(),
            period_start: format_instant(p.period_start),
            period_end: format_instant(p.period_end),
            gross: amt(p.gross),
            income_tax: amt(p.tax.income_tax),
            local_tax: amt(p.tax.local_tax),
            rural_tax: amt(p.tax.rural_tax),
            adjustment: amt(p.adjustment),
            net: amt(p.net),
            currency: c.code().to_owned(),
            plan: p.plan.clone(),
            rates: rates_json(&p.rates),
            accepted_at: format_instant(p.accepted_at),
        }
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("plain data")
    }

    /// A stored body read back (a replayed answer).
    pub fn from_value(v: &Value) -> Result<PayoutJson, serde_json::Error> {
        PayoutJson::deserialize(v)
    }
}

fn rates_json(rates: &[AppliedRates]) -> Vec<RatesJson> {
    rates
        .iter()
        .map(|r| RatesJson {
            plan: r.plan.clone(),
            effective_from: r.entry.effective_from.clone(),
            tiers: r.entry.tiers.clone(),
        })
        .collect()
}

/// The `interest_payouts.rates` column: the same array as the body's `rates`.
pub fn rates(rates: &[AppliedRates]) -> Value {
    serde_json::to_value(rates_json(rates)).expect("plain data")
}

/// The live view (`GET /v1/accounts/{id}/interest`, `simulate`'s `query`).
pub fn view(v: &View, account_id: &AccountId, currency: Currency) -> Value {
    serde_json::json!({
        "account_id": account_id,
        "balance": currency.to_decimal(v.balance).to_string(),
        "accrued": v.accrued.to_display(currency.minor_digits()).to_string(),
        "claimable": currency.to_decimal(v.claimable).to_string(),
        "rate_per_second": v.rate_per_second.to_string(),
        "currency": currency.code(),
        "as_of": format_instant(v.as_of),
        "last_claim_at": v.last_claim_at.map(format_instant),
        "next_claim_at": format_instant(v.next_claim_at),
    })
}

/// A late snapshot that corrected already-paid interest, as an explanation
/// lists it under `adjustment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CorrectionJson {
    pub seq: u64,
    pub as_of: String,
    pub balance: String,
    pub received_at: String,
}

/// An explanation's wire form (`GET /v1/payouts/{id}?explain=true` and
/// `simulate --explain`). Every exact amount is `{"amount", "units"}`: the
/// amount a decimal of the currency truncated toward zero at
/// `display_decimals` places past the minor unit, `units` the exact integer
/// count of `1 / units_per_minor` of a minor unit.
pub fn explanation(e: &Explanation, currency: Currency, corrections: &[CorrectionJson]) -> Value {
    use serde_json::json;
    let digits = currency.minor_digits();
    let exact = |a: Accrued| json!({ "amount": a.to_display(digits).to_string(), "units": a.0.to_string() });
    let amt = |m: Minor| currency.to_decimal(m).to_string();
    let intervals: Vec<Value> = e.intervals.iter().map(|i| interval_json(i, currency)).collect();
    let taxes: Vec<Value> = e
        .taxes
        .iter()
        .map(|t| {
            json!({
                "tax": t.kind.as_str(),
                "base": amt(t.base),
                "rate_percent": (Decimal::from(t.rate_num) * Decimal::from(100) / Decimal::from(t.rate_den))
                    .normalize()
                    .to_string(),
                "truncated_to": amt(Minor(t.step)),
                "amount": amt(t.amount),
            })
        })
        .collect();
    json!({
        "display_decimals": DISPLAY_DECIMALS,
        "units_per_minor": ACCRUAL_DENOMINATOR.to_string(),
        "intervals": intervals,
        "accrued": exact(e.accrued),
        "carry_in": exact(e.carry_in),
        "adjustment": { "amount": exact(e.adjustment_in)["amount"], "units": e.adjustment_in.0.to_string(),
                        "snapshots": corrections },
        "total": exact(e.total),
        "gross": { "amount": amt(e.gross), "rounding": "floor of total to the minor unit" },
        "remainder": exact(e.remainder),
        "fraction": e.fraction.as_str(),
        "carried_out": exact(e.carried_out),
        "dropped": exact(e.dropped),
        "taxes": taxes,
        "net": amt(e.net),
    })
}

/// One interval of an explanation: its balance, plan, tier parts and rates,
/// day count, the seconds or day closes, and the exact accrual.
fn interval_json(i: &Interval, currency: Currency) -> Value {
    use serde_json::json;
    let digits = currency.minor_digits();
    let amt = |m: Minor| currency.to_decimal(m).to_string();
    let instant = |s: i64| format_instant(Utc.timestamp_opt(s, 0).single().expect("in range"));
    let tiers: Vec<Value> = i
        .entry
        .tier_parts(i.point.balance)
        .map(|t| {
            json!({
                "from": amt(t.from),
                "up_to": t.tier.up_to.map(amt),
                "part": amt(t.part),
                "rate_percent": t.tier.rate.to_decimal().to_string(),
            })
        })
        .collect();
    let (count_key, count) = match i.span {
        Span::Seconds(n) => ("seconds", n),
        Span::Days(n) => ("days", n),
    };
    json!({
        "from": instant(i.from),
        "to": instant(i.to),
        "snapshot_seq": i.point.seq,
        "balance": amt(i.point.balance),
        "plan": i.plan.id,
        "accrual": i.plan.accrual.as_str(),
        "day_count": i.plan.day_count.as_str(),
        "year_days": i.year_days,
        "rate_effective_from": format_instant(i.entry.effective_from),
        "tiers": tiers,
        count_key: count,
        "accrued": { "amount": i.units.to_display(digits).to_string(), "units": i.units.0.to_string() },
    })
}
