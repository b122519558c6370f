//! RFC 9457 problem details with stable codes, shared by the API and the
//! worker (which stores final claim answers).

use serde_json::{json, Value};

pub const PROBLEM_BASE: &str = "https://interest-now.dev/problems/";

pub fn title(code: &str) -> &'static str {
    match code {
        "unauthorized" => "Missing or invalid bearer token",
        "invalid_account_id" => "Invalid account id",
        "idempotency_key_invalid" => "Missing or invalid Idempotency-Key",
        "invalid_body" => "Invalid request body",
        "body_too_large" => "Request body too large",
        "unsupported_media_type" => "Unsupported media type",
        "unknown_account" => "Unknown account",
        "unknown_claim" => "Unknown claim",
        "invalid_claim_id" => "Invalid claim id",
        "idempotency_key_reused" => "Idempotency-Key already used for another account",
        "claim_in_progress" => "A claim with this Idempotency-Key is in progress",
        "already_claimed_today" => "Interest already claimed today",
        "nothing_to_claim" => "Nothing to claim yet",
        "overloaded" => "Service overloaded, retry shortly",
        "unavailable" => "Service temporarily unavailable",
        "claim_outcome_unknown" => "Outcome of the claim not known yet",
        "claim_withdrawn" => "Claim withdrawn, not paid",
        "claim_failed" => "Claim could not be applied, not paid",
        "not_found" => "Not found",
        "invalid_query" => "Invalid query parameters",
        "invalid_year" => "Invalid year",
        "method_not_allowed" => "Method not allowed",
        _ => "Internal error",
    }
}

pub fn problem(code: &str, status: u16, detail: impl Into<String>) -> Value {
    json!({
        "type": format!("{PROBLEM_BASE}{code}"),
        "title": title(code),
        "status": status,
        "detail": detail.into(),
        "code": code,
    })
}
