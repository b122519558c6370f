//! `GET /v1/accounts/{account_id}/interest/payouts`: the account's payouts,
//! newest first, `limit` (1–100, default 20) per page, an opaque `cursor`
//! from the previous page, and business dates `from`/`to` (inclusive).
//! Every malformed parameter is a 400 `invalid_query` naming it.

use std::collections::HashMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::{DateTime, NaiveDate};
use serde_json::json;
use uuid::Uuid;

use crate::money::accrual::Point;
use crate::money::explain::explain;
use crate::money::types::parse_date;
use crate::money::Plans;
use crate::service::api::{self, problem_response, ApiState, RawPath};
use crate::store::{self, HistoryCursor, HistoryQuery};
use crate::wire;

pub const PAGE_DEFAULT: u32 = 20;
pub const PAGE_MAX: u32 = 100;

pub async fn get_payouts(
    State(state): State<ApiState>,
    raw: RawPath,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let account = match api::parse_account(&api::path_text(raw)) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let params = match query {
        Ok(Query(p)) => p,
        Err(_) => return invalid("the query string is malformed"),
    };
    let q = match parse_query(account.as_str(), &params) {
        Ok(q) => q,
        Err(detail) => return invalid(detail),
    };
    let Ok(_permit) = state.reads_in_flight.clone().try_acquire_owned() else {
        return problem_response("overloaded", 503, "too many reads in flight");
    };
    match store::payout_history(&state.pools.reads, &q).await {
        Err(e) => {
            tracing::warn!(event = "history_failed", error = format!("{e:#}"));
            problem_response("unavailable", 503, "the database is unavailable")
        }
        Ok(None) => problem_response("unknown_account", 404, format!("no account {account}")),
        Ok(Some((items, next))) => {
            let items: Vec<_> = items.iter().map(|p| p.to_value()).collect();
            let body = json!({
                "account_id": account, "items": items, "next_cursor": next.map(encode_cursor),
            });
            api::json_ok(body)
        }
    }
}

/// `GET /v1/accounts/{account_id}/interest/statements/{year}`: the year's
/// interest statement (the same lines as `report statement`), months first.
pub async fn get_statement(
    State(state): State<ApiState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    // An undecodable segment cannot be a valid id or year: both parsers refuse "".
    let (account, year) = path.map(|Path(p)| p).unwrap_or_default();
    let account = match api::parse_account(&account) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let Some(year) = year.parse::<i32>().ok().filter(|y| (2000..=9998).contains(y)) else {
        return problem_response("invalid_year", 400, "the year is a number from 2000 to 9998");
    };
    let Ok(_permit) = state.reads_in_flight.clone().try_acquire_owned() else {
        return problem_response("overloaded", 503, "too many reads in flight");
    };
    match store::statement(&state.pools.reads, account.as_str(), year).await {
        Err(e) => {
            tracing::warn!(event = "statement_failed", error = format!("{e:#}"));
            problem_response("unavailable", 503, "the database is unavailable")
        }
        Ok(None) => problem_response("unknown_account", 404, format!("no account {account}")),
        Ok(Some(lines)) => {
            let whole_year = year.to_string();
            let (totals, months): (Vec<_>, Vec<_>) = lines.into_iter().partition(|l| l.period == whole_year);
            api::json_ok(json!({ "account_id": account, "year": year, "months": months, "totals": totals }))
        }
    }
}

/// `GET /v1/payouts/{payout_id}[?explain=true]`: one payout, and with
/// `explain=true` how the engine computed it (`money::explain`). The
/// explanation is replayed from the stored balance points and must reproduce
/// every stored amount exactly; when it cannot (the period's points are past
/// retention) the answer is 410 `explanation_expired`, never a wrong story.
pub async fn get_payout(
    State(state): State<ApiState>,
    raw: RawPath,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let Ok(id) = Uuid::parse_str(&api::path_text(raw)) else {
        return problem_response("invalid_payout_id", 400, "payout ids are UUIDs");
    };
    let explain = match query.as_ref().map(|Query(p)| p) {
        Err(_) => return invalid("the query string is malformed"),
        Ok(p) if p.keys().any(|k| k != "explain") => return invalid("the only parameter is explain"),
        Ok(p) => match p.get("explain").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return invalid("explain is true or false"),
        },
    };
    let Ok(_permit) = state.reads_in_flight.clone().try_acquire_owned() else {
        return problem_response("overloaded", 503, "too many reads in flight");
    };
    let unavailable = |e: anyhow::Error| {
        tracing::warn!(event = "payout_read_failed", error = format!("{e:#}"));
        problem_response("unavailable", 503, "the database is unavailable")
    };
    let stored = match store::payout_by_id(&state.pools.reads, id).await {
        Err(e) => return unavailable(e),
        Ok(None) => return problem_response("unknown_payout", 404, format!("no payout {id}")),
        Ok(Some(p)) => p,
    };
    let mut body = stored.json.to_value();
    if explain {
        let inputs = match store::explain_inputs(&state.pools.reads, &stored).await {
            Err(e) => return unavailable(e),
            Ok(i) => i,
        };
        let plans = state.plans.read().expect("plans lock").clone();
        match explain_stored(&plans, &stored, &inputs) {
            Some(e) => body["explanation"] = e,
            None => {
                return problem_response(
                    "explanation_expired",
                    410,
                    "the balance history of this payout's period is no longer kept, so it cannot be replayed",
                )
            }
        }
    }
    api::json_ok(body)
}

/// The explanation of a stored payout, if one reproduces it exactly: first
/// on the points received by the time it was paid, then on every point now
/// known (the service and database clocks may disagree by a little).
fn explain_stored(plans: &Plans, p: &store::StoredPayout, inputs: &store::ExplainInputs) -> Option<serde_json::Value> {
    let by_then: Vec<Point> = inputs
        .points
        .iter()
        .filter(|(_, received)| *received <= p.paid_at)
        .map(|(pt, _)| pt.clone())
        .collect();
    let all: Vec<Point> = inputs.points.iter().map(|(pt, _)| pt.clone()).collect();
    let plan = plans.get(&p.json.plan)?;
    if all.iter().any(|pt| plans.get(&pt.plan).is_none()) {
        return None;
    }
    [by_then, all].iter().find_map(|points| {
        let e = explain(
            plans,
            points,
            &p.paid,
            inputs.carry_in,
            plan.fraction,
            p.tax_profile,
            p.currency,
        );
        e.reproduces(&p.paid)
            .ok()
            .map(|()| wire::explanation(&e, p.currency, &inputs.corrections))
    })
}

fn invalid(detail: impl Into<String>) -> Response {
    problem_response("invalid_query", 400, detail)
}

fn parse_query(account_id: &str, params: &HashMap<String, String>) -> Result<HistoryQuery, String> {
    if let Some(unknown) = params
        .keys()
        .find(|k| !["limit", "cursor", "from", "to"].contains(&k.as_str()))
    {
        return Err(format!("unknown parameter {unknown:?}"));
    }
    let limit = match params.get("limit") {
        None => PAGE_DEFAULT,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=PAGE_MAX).contains(n))
            .ok_or_else(|| format!("limit must be a whole number from 1 to {PAGE_MAX}"))?,
    };
    let date = |name: &str| -> Result<Option<NaiveDate>, String> {
        params
            .get(name)
            .map(|v| parse_date(v).map_err(|_| format!("{name} must be a date, YYYY-MM-DD")))
            .transpose()
    };
    let (from, to) = (date("from")?, date("to")?);
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err("from is after to".into());
        }
    }
    let after = match params.get("cursor") {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or("cursor is not one this server gave")?),
    };
    Ok(HistoryQuery {
        account_id: account_id.to_owned(),
        from,
        to,
        after,
        limit,
    })
}

/// Opaque to clients: the hex of `date|microseconds|payout_id`.
fn encode_cursor(c: HistoryCursor) -> String {
    let plain = format!(
        "{}|{}|{}",
        c.business_date,
        c.period_start.timestamp_micros(),
        c.payout_id
    );
    plain.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(hex: &str) -> Option<HistoryCursor> {
    if hex.len() % 2 != 0 || hex.len() > 256 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    let plain = String::from_utf8(bytes?).ok()?;
    let mut parts = plain.split('|');
    let business_date = parse_date(parts.next()?).ok()?;
    let period_start = DateTime::from_timestamp_micros(parts.next()?.parse().ok()?)?;
    let payout_id = Uuid::parse_str(parts.next()?).ok()?;
    parts.next().is_none().then_some(HistoryCursor {
        business_date,
        period_start,
        payout_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_and_anything_else_is_refused() {
        let c = HistoryCursor {
            business_date: NaiveDate::from_ymd_opt(2026, 12, 3).unwrap(),
            period_start: DateTime::from_timestamp_micros(1_764_720_000_123_456).unwrap(),
            payout_id: Uuid::from_u128(42),
        };
        assert_eq!(decode_cursor(&encode_cursor(c)), Some(c));
        let whole = encode_cursor(c);
        for bad in [
            "",
            "zz",
            "0",
            "7c7c",
            &whole[..whole.len() - 2],
            &format!("{whole}7c31"),
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parameters_are_checked_one_by_one() {
        let q = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            parse_query("a", &m)
        };
        assert_eq!(q(&[]).unwrap().limit, PAGE_DEFAULT);
        assert_eq!(
            q(&[("limit", "100"), ("from", "2026-01-01"), ("to", "2026-01-01")])
                .unwrap()
                .limit,
            100
        );
        for bad in [
            vec![("limit", "0")],
            vec![("limit", "101")],
            vec![("limit", "ten")],
            vec![("from", "2026-13-01")],
            vec![("from", "2026-02-02"), ("to", "2026-02-01")],
            vec![("cursor", "nope")],
            vec![("page", "2")],
        ] {
            assert!(q(&bad).is_err(), "{bad:?}");
        }
    }
}
