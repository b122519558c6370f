//! Newtypes parsed at the edge. Inner code never sees raw strings.

use std::fmt;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Why a value from outside was refused. `code` is stable and machine-readable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ParseError {
    pub code: &'static str,
    pub detail: String,
}

impl ParseError {
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

/// Account id: 1–64 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct AccountId(String);

impl AccountId {
    pub const LEN_MAX: usize = 64;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for AccountId {
    type Error = ParseError;
    fn try_from(s: &str) -> Result<Self, ParseError> {
        let ok_len = !s.is_empty() && s.len() <= Self::LEN_MAX;
        let ok_chars = s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok_len && ok_chars {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseError::new(
                "invalid_account_id",
                "account_id must be 1-64 characters of [A-Za-z0-9_-]",
            ))
        }
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Client-chosen idempotency key: 1–255 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const LEN_MAX: usize = 255;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for IdempotencyKey {
    type Error = ParseError;
    fn try_from(s: &str) -> Result<Self, ParseError> {
        let printable = s.bytes().all(|b| (0x20..=0x7e).contains(&b));
        if !s.is_empty() && s.len() <= Self::LEN_MAX && printable {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseError::new(
                "idempotency_key_invalid",
                "Idempotency-Key must be 1-255 printable ASCII characters",
            ))
        }
    }
}

/// An ISO 4217 currency with its minor unit (KRW has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    minor_digits: u32,
}

/// The currencies we know, with their ISO 4217 minor units.
const CURRENCIES: &[(&str, u32)] = &[
    ("KRW", 0),
    ("JPY", 0),
    ("USD", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("CNY", 2),
    ("HKD", 2),
    ("SGD", 2),
    ("AUD", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("KWD", 3),
    ("BHD", 3),
];

impl Currency {
    pub const KRW: Currency = Currency {
        code: "KRW",
        minor_digits: 0,
    };

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn minor_digits(&self) -> u32 {
        self.minor_digits
    }

    /// Minor units per major unit (1 for KRW, 100 for USD).
    pub fn minor_per_major(&self) -> i64 {
        10_i64.pow(self.minor_digits)
    }

    /// Withholding taxes are truncated to this many minor units: 10 won for
    /// KRW (원 단위 절사 to 10 won, as the tax office does), one minor unit
    /// for other currencies.
    pub fn tax_step_minor(&self) -> i64 {
        if self.minor_digits == 0 && self.code == "KRW" {
            10
        } else {
            1
        }
    }

    /// Parses an amount string into minor units: at most the currency's minor
    /// digits, non-negative, at most `AMOUNT_MAJOR_MAX` major units.
    pub fn parse_amount(&self, text: &str) -> Result<Minor, ParseError> {
        let d: Decimal = text
            .parse()
            .map_err(|_| ParseError::new("invalid_amount", format!("not a decimal: {text:?}")))?;
        self.amount_from_decimal(d)
    }

    pub fn amount_from_decimal(&self, d: Decimal) -> Result<Minor, ParseError> {
        if d.is_sign_negative() && !d.is_zero() {
            return Err(ParseError::new("negative_amount", "amount must be >= 0"));
        }
        let d = d.normalize();
        if d.scale() > self.minor_digits {
            return Err(ParseError::new(
                "too_many_decimals",
                format!("{} allows at most {} decimal places", self.code, self.minor_digits),
            ));
        }
        if d > Decimal::from(AMOUNT_MAJOR_MAX) {
            return Err(ParseError::new(
                "amount_too_large",
                format!("amount exceeds {AMOUNT_MAJOR_MAX}"),
            ));
        }
        let minor = d * Decimal::from(self.minor_per_major());
        // Exact: scale <= minor_digits, so `minor` is an integer.
        let minor: i64 = minor
            .trunc()
            .try_into()
            .map_err(|_| ParseError::new("amount_too_large", "amount out of range"))?;
        Ok(Minor(minor))
    }

    /// An amount in minor units as an exact decimal of major units.
    pub fn to_decimal(&self, m: Minor) -> Decimal {
        Decimal::from_i128_with_scale(m.0 as i128, self.minor_digits)
    }
}

impl TryFrom<&str> for Currency {
    type Error = ParseError;
    fn try_from(s: &str) -> Result<Self, ParseError> {
        CURRENCIES
            .iter()
            .find(|(code, _)| *code == s)
            .map(|(code, minor_digits)| Currency {
                code,
                minor_digits: *minor_digits,
            })
            .ok_or_else(|| ParseError::new("unknown_currency", format!("unknown currency {s:?}")))
    }
}

/// The largest amount we accept, in major units (10^15 won).
pub const AMOUNT_MAJOR_MAX: i64 = 1_000_000_000_000_000;

/// An amount in the currency's minor unit (won for KRW).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Minor(pub i64);

/// A rate in percent with at most six decimal places, stored as millionths of
/// a percent ("2.0" = 2_000_000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RatePercent(i64);

impl RatePercent {
    pub const SCALE: i64 = 1_000_000;
    pub const DECIMALS: u32 = 6;
    /// 100% a year; anything above is a typo in a plan file.
    pub const MAX_PERCENT: i64 = 100;

    pub fn micro_percent(&self) -> i64 {
        self.0
    }

    pub fn to_decimal(&self) -> Decimal {
        Decimal::new(self.0, Self::DECIMALS).normalize()
    }
}

impl TryFrom<&str> for RatePercent {
    type Error = ParseError;
    fn try_from(s: &str) -> Result<Self, ParseError> {
        let d: Decimal = s
            .parse()
            .map_err(|_| ParseError::new("invalid_rate", format!("not a decimal: {s:?}")))?;
        let d = d.normalize();
        if d.is_sign_negative() || d > Decimal::from(Self::MAX_PERCENT) {
            return Err(ParseError::new("invalid_rate", "rate must be 0..=100 percent"));
        }
        if d.scale() > Self::DECIMALS {
            return Err(ParseError::new("invalid_rate", "rate allows at most 6 decimal places"));
        }
        let micro: i64 = (d * Decimal::from(Self::SCALE))
            .trunc()
            .try_into()
            .map_err(|_| ParseError::new("invalid_rate", "rate out of range"))?;
        Ok(Self(micro))
    }
}

/// Withholding-tax profile of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaxProfile {
    #[default]
    Standard,
    Preferential,
    Exempt,
}

impl TaxProfile {
    pub fn as_str(&self) -> &'static str {
        match self {
            TaxProfile::Standard => "standard",
            TaxProfile::Preferential => "preferential",
            TaxProfile::Exempt => "exempt",
        }
    }
}

impl TryFrom<&str> for TaxProfile {
    type Error = ParseError;
    fn try_from(s: &str) -> Result<Self, ParseError> {
        match s {
            "standard" => Ok(Self::Standard),
            "preferential" => Ok(Self::Preferential),
            "exempt" => Ok(Self::Exempt),
            _ => Err(ParseError::new(
                "invalid_tax_profile",
                format!("unknown tax profile {s:?}"),
            )),
        }
    }
}

/// Seconds since the Unix epoch; accrual works on whole seconds.
pub type EpochSecs = i64;

/// Korea Standard Time, UTC+9, no daylight saving.
pub const KST_OFFSET_SECS: i64 = 9 * 3600;
pub const SECS_PER_DAY: i64 = 86_400;

pub fn kst() -> FixedOffset {
    FixedOffset::east_opt(KST_OFFSET_SECS as i32).expect("valid offset")
}

/// An instant floored to the whole second (toward the past, also before 1970).
pub fn floor_secs(t: DateTime<Utc>) -> EpochSecs {
    t.timestamp()
}

/// The business date of an instant: its calendar date in KST.
pub fn business_date(t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&kst()).date_naive()
}

/// The KST date that contains the whole second `s`.
pub fn kst_date_of_secs(s: EpochSecs) -> NaiveDate {
    let days = (s + KST_OFFSET_SECS).div_euclid(SECS_PER_DAY);
    NaiveDate::from_num_days_from_ce_opt((days + 719_163) as i32).expect("date in range")
}

/// 00:00 KST of `d`, in epoch seconds.
pub fn kst_midnight(d: NaiveDate) -> EpochSecs {
    let days = d.num_days_from_ce() as i64 - 719_163;
    days * SECS_PER_DAY - KST_OFFSET_SECS
}

/// 00:00 KST of `d` as an instant.
pub fn kst_midnight_utc(d: NaiveDate) -> DateTime<Utc> {
    Utc.timestamp_opt(kst_midnight(d), 0).single().expect("in range")
}

/// 00:00 KST on 1 January of `year`, in epoch seconds.
pub fn kst_new_year(year: i32) -> EpochSecs {
    kst_midnight(NaiveDate::from_ymd_opt(year, 1, 1).expect("valid year"))
}

/// Is the KST year containing second `s` a leap year?
pub fn kst_year_of_secs(s: EpochSecs) -> i32 {
    kst_date_of_secs(s).year()
}

pub fn is_leap_year(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Parses an RFC 3339 instant that carries an offset.
pub fn parse_instant(text: &str) -> Result<DateTime<Utc>, ParseError> {
    let t = DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ParseError::new(
                "invalid_timestamp",
                format!("not an RFC 3339 timestamp with offset: {text:?}"),
            )
        })?;
    // Bounded so every instant also has a four-digit year in KST (how we show it).
    let years = INSTANT_YEAR_MIN..=INSTANT_YEAR_MAX;
    if !years.contains(&t.year()) || !years.contains(&t.with_timezone(&kst()).year()) {
        return Err(ParseError::new(
            "invalid_timestamp",
            format!("{text:?} is outside the years {INSTANT_YEAR_MIN}-{INSTANT_YEAR_MAX}"),
        ));
    }
    Ok(t)
}

/// The years an instant may fall in.
pub const INSTANT_YEAR_MIN: i32 = 1900;
pub const INSTANT_YEAR_MAX: i32 = 9998;

/// Formats an instant as RFC 3339 in KST with milliseconds, as the API shows it.
pub fn format_instant(t: DateTime<Utc>) -> String {
    t.with_timezone(&kst())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

pub fn parse_date(text: &str) -> Result<NaiveDate, ParseError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| ParseError::new("invalid_date", format!("not a YYYY-MM-DD date: {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_checked() {
        assert!(AccountId::try_from("acc-1_X").is_ok());
        assert!(AccountId::try_from("").is_err());
        assert!(AccountId::try_from("a b").is_err());
        assert!(AccountId::try_from("é").is_err());
        assert!(AccountId::try_from("x".repeat(64).as_str()).is_ok());
        assert!(AccountId::try_from("x".repeat(65).as_str()).is_err());
    }

    #[test]
    fn idempotency_keys_are_checked() {
        assert!(IdempotencyKey::try_from("k 1~").is_ok());
        assert!(IdempotencyKey::try_from("").is_err());
        assert!(IdempotencyKey::try_from("tab\tkey").is_err());
        assert!(IdempotencyKey::try_from("x".repeat(256).as_str()).is_err());
    }

    #[test]
    fn amounts_respect_minor_units() {
        let krw = Currency::KRW;
        assert_eq!(krw.parse_amount("1000").unwrap(), Minor(1000));
        assert_eq!(krw.parse_amount("1000.0").unwrap(), Minor(1000));
        assert_eq!(krw.parse_amount("1000.5").unwrap_err().code, "too_many_decimals");
        assert_eq!(krw.parse_amount("-1").unwrap_err().code, "negative_amount");
        assert_eq!(
            krw.parse_amount("1000000000000001").unwrap_err().code,
            "amount_too_large"
        );
        let usd = Currency::try_from("USD").unwrap();
        assert_eq!(usd.parse_amount("12.34").unwrap(), Minor(1234));
        assert_eq!(usd.to_decimal(Minor(1234)).to_string(), "12.34");
    }

    #[test]
    fn rates_parse_exactly() {
        assert_eq!(RatePercent::try_from("2.0").unwrap().micro_percent(), 2_000_000);
        assert_eq!(RatePercent::try_from("0.000001").unwrap().micro_percent(), 1);
        assert!(RatePercent::try_from("0.0000001").is_err());
        assert!(RatePercent::try_from("-1").is_err());
        assert!(RatePercent::try_from("101").is_err());
    }

    #[test]
    fn kst_dates_roll_at_midnight_kst() {
        let before = parse_instant("2026-11-22T23:59:59.999+09:00").unwrap();
        let after = parse_instant("2026-11-23T00:00:00.000+09:00").unwrap();
        assert_eq!(business_date(before).to_string(), "2026-11-22");
        assert_eq!(business_date(after).to_string(), "2026-11-23");
        assert_eq!(kst_midnight(business_date(after)), after.timestamp());
        assert_eq!(kst_date_of_secs(after.timestamp() - 1).to_string(), "2026-11-22");
        assert_eq!(kst_date_of_secs(after.timestamp()).to_string(), "2026-11-23");
        // Before 1970 too (div_euclid).
        let old = parse_instant("1969-12-31T23:00:00+09:00").unwrap();
        assert_eq!(kst_date_of_secs(old.timestamp()).to_string(), "1969-12-31");
    }
}
