//! Decoding a balance snapshot (the `balance-snapshots` message, SPEC §3).
//! Every refusal carries a stable reason code that becomes the DLQ `error` header.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;

use super::plan::Plans;
use super::types::{parse_instant, AccountId, Currency, Minor, ParseError, TaxProfile};

/// A snapshot message larger than this is refused unread.
pub const SNAPSHOT_BYTES_MAX: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub account_id: AccountId,
    pub seq: u64,
    pub balance: Minor,
    pub currency: Currency,
    pub as_of: DateTime<Utc>,
    /// `None`: keep the account's plan (the default plan for a new account).
    pub plan: Option<String>,
    /// `None`: keep the account's profile (`standard` for a new account).
    pub tax_profile: Option<TaxProfile>,
}

fn field<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> Result<&'a Value, ParseError> {
    obj.get(name)
        .ok_or_else(|| ParseError::new("missing_field", format!("missing field {name:?}")))
}

fn string<'a>(v: &'a Value, name: &str, code: &'static str) -> Result<&'a str, ParseError> {
    v.as_str()
        .ok_or_else(|| ParseError::new(code, format!("{name} must be a string")))
}

/// Decodes and validates a snapshot. Unknown fields are ignored (forward
/// compatibility with core banking); everything named in SPEC §3 is checked.
pub fn decode_snapshot(bytes: &[u8], plans: &Plans) -> Result<Snapshot, ParseError> {
    if bytes.len() > SNAPSHOT_BYTES_MAX {
        return Err(ParseError::new(
            "message_too_large",
            format!("{} bytes > {SNAPSHOT_BYTES_MAX}", bytes.len()),
        ));
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| ParseError::new("invalid_json", format!("not JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| ParseError::new("invalid_json", "not a JSON object"))?;
    decode_fields(obj, plans)
}

pub(crate) fn decode_fields(obj: &serde_json::Map<String, Value>, plans: &Plans) -> Result<Snapshot, ParseError> {
    let account_id = AccountId::try_from(string(field(obj, "account_id")?, "account_id", "invalid_account_id")?)?;
    let seq = match field(obj, "seq")? {
        Value::Number(n) => n.as_u64().filter(|&s| s > 0 && s <= i64::MAX as u64),
        _ => None,
    }
    .ok_or_else(|| ParseError::new("invalid_seq", "seq must be a positive integer"))?;
    let currency = Currency::try_from(string(field(obj, "currency")?, "currency", "unknown_currency")?)?;
    let balance = match field(obj, "balance")? {
        Value::String(s) => currency.parse_amount(s)?,
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            let d = n
                .as_i64()
                .map(Decimal::from)
                .ok_or_else(|| ParseError::new("amount_too_large", "balance out of range"))?;
            currency.amount_from_decimal(d)?
        }
        Value::Number(_) => {
            return Err(ParseError::new(
                "float_balance",
                "balance must be a decimal string or an integer, not a float",
            ))
        }
        _ => return Err(ParseError::new("invalid_amount", "balance must be a decimal string")),
    };
    let as_of = parse_instant(string(field(obj, "as_of")?, "as_of", "invalid_timestamp")?)?;
    let plan = match obj.get("plan") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let id = string(v, "plan", "unknown_plan")?;
            if plans.get(id).is_none() {
                return Err(ParseError::new("unknown_plan", format!("unknown plan {id:?}")));
            }
            Some(id.to_owned())
        }
    };
    let plan_currency = plan
        .as_deref()
        .or(plans.default_id())
        .and_then(|id| plans.get(id))
        .map(|p| p.currency);
    match plan_currency {
        Some(c) if c != currency => {
            return Err(ParseError::new(
                "currency_mismatch",
                format!("plan is in {}, snapshot in {}", c.code(), currency.code()),
            ))
        }
        None => {
            return Err(ParseError::new(
                "unknown_plan",
                "no plan given and no default plan configured",
            ))
        }
        _ => {}
    }
    let tax_profile = match obj.get("tax_profile") {
        None | Some(Value::Null) => None,
        Some(v) => Some(TaxProfile::try_from(string(v, "tax_profile", "invalid_tax_profile")?)?),
    };
    Ok(Snapshot {
        account_id,
        seq,
        balance,
        currency,
        as_of,
        plan,
        tax_profile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::plan::PlanFile;

    fn plans() -> Plans {
        let json = r#"{"plans":[{"id":"basic","schedule":[{"effective_from":"2020-01-01T00:00:00+09:00","tiers":[{"rate_percent":"2.0"}]}]},
            {"id":"usd","currency":"USD","schedule":[{"effective_from":"2020-01-01T00:00:00+09:00","tiers":[{"rate_percent":"1.0"}]}]}]}"#;
        Plans::new(PlanFile::parse(json).unwrap(), None).unwrap()
    }

    fn code(json: &str) -> &'static str {
        decode_snapshot(json.as_bytes(), &plans()).unwrap_err().code
    }

    #[test]
    fn good_snapshots_decode() {
        let s = decode_snapshot(
            br#"{"account_id":"a-1","seq":1,"balance":"1000","currency":"KRW","as_of":"2026-01-01T00:00:00+09:00"}"#,
            &plans(),
        )
        .unwrap();
        assert_eq!((s.seq, s.balance), (1, Minor(1000)));
        let s = decode_snapshot(br#"{"account_id":"a-1","seq":2,"balance":1000,"currency":"KRW","as_of":"2026-01-01T00:00:00Z","tax_profile":"exempt"}"#, &plans()).unwrap();
        assert_eq!(s.tax_profile, Some(TaxProfile::Exempt));
    }

    #[test]
    fn every_bad_kind_has_its_code() {
        let base = |patch: &str| {
            format!(r#"{{"account_id":"a","seq":1,"currency":"KRW","as_of":"2026-01-01T00:00:00+09:00",{patch}}}"#)
        };
        assert_eq!(code("{"), "invalid_json");
        assert_eq!(code("[]"), "invalid_json");
        assert_eq!(code(&base(r#""balance":10.5"#)), "float_balance");
        assert_eq!(code(&base(r#""balance":1e3"#)), "float_balance");
        assert_eq!(code(&base(r#""balance":"-1""#)), "negative_amount");
        assert_eq!(code(&base(r#""balance":"1.5""#)), "too_many_decimals");
        assert_eq!(code(&base(r#""balance":"99999999999999999999""#)), "amount_too_large");
        assert_eq!(code(&base(r#""balance":"12abc""#)), "invalid_amount");
        assert_eq!(code(&base(r#""balance":"1","plan":"nope""#)), "unknown_plan");
        assert_eq!(code(&base(r#""balance":"1","plan":"usd""#)), "currency_mismatch");
        assert_eq!(
            code(&base(r#""balance":"1","tax_profile":"vip""#)),
            "invalid_tax_profile"
        );
        assert_eq!(
            code(r#"{"account_id":"a b","seq":1,"balance":"1","currency":"KRW","as_of":"2026-01-01T00:00:00+09:00"}"#),
            "invalid_account_id"
        );
        assert_eq!(
            code(r#"{"account_id":"a","seq":0,"balance":"1","currency":"KRW","as_of":"2026-01-01T00:00:00+09:00"}"#),
            "invalid_seq"
        );
        assert_eq!(
            code(r#"{"account_id":"a","seq":-3,"balance":"1","currency":"KRW","as_of":"2026-01-01T00:00:00+09:00"}"#),
            "invalid_seq"
        );
        assert_eq!(
            code(r#"{"account_id":"a","seq":1,"balance":"1","currency":"KRW","as_of":"2026-01-01T00:00:00"}"#),
            "invalid_timestamp"
        );
        assert_eq!(
            code(r#"{"account_id":"a","seq":1,"balance":"1","currency":"XXX","as_of":"2026-01-01T00:00:00Z"}"#),
            "unknown_currency"
        );
        assert_eq!(
            code(r#"{"seq":1,"balance":"1","currency":"KRW","as_of":"2026-01-01T00:00:00Z"}"#),
            "missing_field"
        );
        let huge = format!(r#"{{"pad":"{}"}}"#, "x".repeat(SNAPSHOT_BYTES_MAX));
        assert_eq!(code(&huge), "message_too_large");
    }
}
