//! Fuzz target: the edge checks of `POST /v1/accounts/{account_id}/interest/claims`
//! (`interest_now::service::request::parse_claim_request`).
//!
//! Input framing, so seeds stay readable text: up to four parts split at the
//! first three newlines: the (percent-decoded) account id path segment, the
//! `Idempotency-Key` header value, the `Content-Type` header value (an empty
//! part means the header is absent), and the body (the rest, newlines
//! included).
//!
//! Invariants: no panic; deterministic; the outcome equals an independent
//! model of SPEC §5 (which check fails first, with which code and status);
//! an accepted request round-trips its account id and key unchanged; every
//! refusal renders as a problem with a known title and the same status.
#![no_main]

use interest_now::money::{AccountId, IdempotencyKey};
use interest_now::service::problem::problem;
use interest_now::service::request::{parse_claim_request, REQUEST_BODY_BYTES_MAX};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == b'\n');
    let account = parts.next().unwrap_or_default();
    let key = parts.next().filter(|p| !p.is_empty());
    let content_type = parts.next().filter(|p| !p.is_empty());
    let body = parts.next().unwrap_or_default();
    // The router percent-decodes the path and hands the handler UTF-8 only.
    let Ok(account) = std::str::from_utf8(account) else {
        return;
    };

    let got = parse_claim_request(account, key, content_type, body);
    assert_eq!(
        got,
        parse_claim_request(account, key, content_type, body),
        "deterministic"
    );
    let want = model(account, key, content_type, body);
    match (&got, want) {
        (Ok(req), Ok(())) => {
            assert_eq!(req.account.as_str(), account);
            assert_eq!(Some(req.key.as_str().as_bytes()), key);
            assert_eq!(AccountId::try_from(req.account.as_str()).as_ref(), Ok(&req.account));
            assert_eq!(IdempotencyKey::try_from(req.key.as_str()).as_ref(), Ok(&req.key));
        }
        (Err(r), Err((code, status))) => {
            assert_eq!((r.code, r.status), (code, status), "{r}");
            let p = problem(r.code, r.status, r.detail.clone());
            assert_eq!(p["status"], Value::from(r.status));
            assert_eq!(p["code"], Value::from(r.code));
            assert_ne!(p["title"], "Internal error", "code {} has a title", r.code);
        }
        (got, want) => panic!("parser says {got:?}, the model says {want:?}"),
    }
});

/// SPEC §5 written out independently of the parser: the first failing check decides.
fn model(
    account: &str,
    key: Option<&[u8]>,
    content_type: Option<&[u8]>,
    body: &[u8],
) -> Result<(), (&'static str, u16)> {
    let account_ok = (1..=64).contains(&account.len())
        && account
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !account_ok {
        return Err(("invalid_account_id", 400));
    }
    let key_ok = key.is_some_and(|k| (1..=255).contains(&k.len()) && k.iter().all(|b| (b' '..=b'~').contains(b)));
    if !key_ok {
        return Err(("idempotency_key_invalid", 400));
    }
    if body.len() > REQUEST_BODY_BYTES_MAX {
        return Err(("body_too_large", 413));
    }
    if body.iter().all(|b| b" \t\n\r\x0c".contains(b)) {
        return Ok(());
    }
    let json_type = content_type.is_some_and(|c| {
        let text = String::from_utf8_lossy(c);
        let essence = text.split(';').next().unwrap_or("");
        essence
            .trim_matches(|ch: char| ch.is_ascii_whitespace())
            .eq_ignore_ascii_case("application/json")
    });
    if !json_type {
        return Err(("unsupported_media_type", 415));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(_)) => Ok(()),
        _ => Err(("invalid_body", 400)),
    }
}
