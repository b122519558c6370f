//! Fuzz target: arbitrary bytes as a `balance-snapshots` message value
//! (SPEC §3) through `decode_snapshot`, against the example plans.
//!
//! Invariants: no panic; the answer is deterministic; every refusal carries
//! one of the stable DLQ reason codes; an accepted snapshot has seq >= 1, a
//! balance in 0..=AMOUNT_MAJOR_MAX, a known plan in its currency, survives a
//! re-encoding round trip unchanged, and can open an account whose live view
//! renders without panicking.
#![no_main]

use std::sync::LazyLock;

use chrono::{Duration, SecondsFormat};
use interest_now::money::snapshot::SNAPSHOT_BYTES_MAX;
use interest_now::money::types::AMOUNT_MAJOR_MAX;
use interest_now::money::{decode_snapshot, Account, AccountId, PlanFile, Plans, Snapshot};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

static PLANS: LazyLock<Plans> = LazyLock::new(|| {
    let text = include_str!("../../examples/plans.json");
    Plans::new(PlanFile::parse(text).expect("examples/plans.json parses"), None).expect("example plans are valid")
});

/// The reason codes a refused snapshot may carry (the DLQ `error` header).
const CODES: &[&str] = &[
    "message_too_large",
    "invalid_json",
    "missing_field",
    "invalid_account_id",
    "invalid_seq",
    "unknown_currency",
    "invalid_amount",
    "amount_too_large",
    "float_balance",
    "negative_amount",
    "too_many_decimals",
    "invalid_timestamp",
    "unknown_plan",
    "currency_mismatch",
    "invalid_tax_profile",
];

fuzz_target!(|data: &[u8]| {
    let plans = &*PLANS;
    let decoded = decode_snapshot(data, plans);
    assert_eq!(decoded, decode_snapshot(data, plans), "decoding is deterministic");
    match decoded {
        Err(e) => assert!(
            CODES.contains(&e.code),
            "unknown reason code {:?} ({})",
            e.code,
            e.detail
        ),
        Ok(s) => check_accepted(data, &s, plans),
    }
});

fn check_accepted(data: &[u8], s: &Snapshot, plans: &Plans) {
    assert!(data.len() <= SNAPSHOT_BYTES_MAX);
    assert!(s.seq >= 1 && s.seq <= i64::MAX as u64, "seq {}", s.seq);
    let balance_max = AMOUNT_MAJOR_MAX
        .checked_mul(s.currency.minor_per_major())
        .expect("bound fits");
    assert!((0..=balance_max).contains(&s.balance.0), "balance {:?}", s.balance);
    assert_eq!(AccountId::try_from(s.account_id.as_str()).as_ref(), Ok(&s.account_id));
    let plan_id = s.plan.as_deref().or(plans.default_id()).expect("a plan applies");
    let plan = plans.get(plan_id).expect("the plan is known");
    assert_eq!(plan.currency, s.currency, "plan and snapshot currency agree");

    let account = Account::open(s, plans);
    for later in [Duration::zero(), Duration::seconds(1), Duration::days(1)] {
        let Some(at) = s.as_of.checked_add_signed(later) else {
            continue;
        };
        let view = account.view(plans, at, 1);
        assert_eq!(view.balance, s.balance);
        assert!(view.claimable.0 >= 0);
        let shown = interest_now::wire::view(&view, &s.account_id, s.currency);
        assert_eq!(
            shown["balance"],
            Value::from(s.currency.to_decimal(s.balance).to_string())
        );
        let as_of = shown["as_of"].as_str().unwrap_or_default();
        assert!(
            is_api_timestamp(as_of),
            "as_of {as_of:?} is not an openapi.yaml Timestamp"
        );
    }

    let encoded = encode(s);
    assert_eq!(
        decode_snapshot(encoded.as_bytes(), plans).as_ref(),
        Ok(s),
        "round trip through {encoded}"
    );
}

/// openapi.yaml's `Timestamp`: `YYYY-MM-DDTHH:MM:SS.mmm+09:00`.
fn is_api_timestamp(text: &str) -> bool {
    let shape = b"dddd-dd-ddTdd:dd:dd.ddd+09:00";
    text.len() == shape.len()
        && text
            .bytes()
            .zip(shape.iter())
            .all(|(c, &want)| if want == b'd' { c.is_ascii_digit() } else { c == want })
}

/// The snapshot as core banking would send it, with the balance as a decimal string.
fn encode(s: &Snapshot) -> String {
    let mut v = json!({
        "account_id": s.account_id.as_str(),
        "seq": s.seq,
        "balance": s.currency.to_decimal(s.balance).to_string(),
        "currency": s.currency.code(),
        "as_of": s.as_of.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    });
    if let Some(plan) = &s.plan {
        v["plan"] = Value::from(plan.as_str());
    }
    if let Some(profile) = s.tax_profile {
        v["tax_profile"] = Value::from(profile.as_str());
    }
    v.to_string()
}
