//! Helpers shared by the tests.

use interest_now::money::{PlanFile, Plans};
use interest_now::simulate::{Options, Simulator};
use serde_json::Value;

/// A one-plan file: flat `rate` under `day_count`, `accrual`, `fraction`, from 2020.
pub fn flat_plan(id: &str, rate: &str, day_count: &str, accrual: &str, fraction: &str) -> String {
    format!(
        r#"{{"id":"{id}","currency":"KRW","day_count":"{day_count}","accrual":"{accrual}","fraction":"{fraction}",
           "schedule":[{{"effective_from":"2020-01-01T00:00:00+09:00","tiers":[{{"rate_percent":"{rate}"}}]}}]}}"#
    )
}

pub fn plans(plan_objects: &[String]) -> Plans {
    let json = format!(r#"{{"plans":[{}]}}"#, plan_objects.join(","));
    Plans::new(PlanFile::parse(&json).expect("test plans parse"), None).expect("test plans")
}

/// Runs a script through the simulator and returns every outcome line.
pub fn check(plans: Plans, opts: Options, script: &[String]) -> Vec<Value> {
    let mut sim = Simulator::new(plans, opts);
    let mut out = Vec::new();
    for (i, line) in script.iter().enumerate() {
        out.extend(sim.event(i + 1, line).unwrap_or_else(|e| panic!("line {}: {e}", i + 1)));
    }
    out
}

pub fn snapshot(account: &str, seq: u64, balance: &str, as_of: &str) -> String {
    format!(
        r#"{{"type":"snapshot","account_id":"{account}","seq":{seq},"balance":"{balance}","currency":"KRW","as_of":"{as_of}"}}"#
    )
}

pub fn claim(account: &str, at: &str, key: &str) -> String {
    format!(r#"{{"type":"claim","account_id":"{account}","at":"{at}","idempotency_key":"{key}"}}"#)
}

/// The payouts (status 201) among outcome lines.
pub fn payouts(out: &[Value]) -> Vec<&Value> {
    out.iter()
        .filter(|v| v["status"] == 201)
        .map(|v| &v["payout"])
        .collect()
}
