//! The edge checks of a claim request (SPEC §5) as one pure function: the
//! account id from the path, the `Idempotency-Key` header and the optional
//! JSON body. No I/O and no axum here, so the fuzzer (`fuzz/`, target
//! `claim_request`) exercises exactly what the API decides.
//!
//! Checks run in the API's documented order: account id, key, body size,
//! content type, body shape. Each refusal names its stable problem `code`
//! and HTTP `status`.

use serde_json::Value;

use crate::money::{AccountId, IdempotencyKey};

/// Largest request body accepted on a claim, in bytes.
pub const REQUEST_BODY_BYTES_MAX: usize = 1024;

/// A claim request that passed the edge checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    pub account: AccountId,
    pub key: IdempotencyKey,
}

/// Why a request was refused before it was accepted (nothing was recorded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {detail}")]
pub struct Rejection {
    pub code: &'static str,
    pub status: u16,
    pub detail: String,
}

impl Rejection {
    fn new(code: &'static str, status: u16, detail: impl Into<String>) -> Self {
        Self {
            code,
            status,
            detail: detail.into(),
        }
    }
}

/// Parses a claim request. `account` is the percent-decoded path segment;
/// `key` and `content_type` are the raw header values (`None` when absent);
/// `body` is the whole body as received.
pub fn parse_claim_request(
    account: &str,
    key: Option<&[u8]>,
    content_type: Option<&[u8]>,
    body: &[u8],
) -> Result<ClaimRequest, Rejection> {
    let account = AccountId::try_from(account).map_err(|e| Rejection::new("invalid_account_id", 400, e.detail))?;
    let key = parse_idempotency_key(key)?;
    check_claim_body(content_type, body)?;
    Ok(ClaimRequest { account, key })
}

/// The `Idempotency-Key` header: absent, not UTF-8 or not 1–255 printable
/// ASCII characters is `400 idempotency_key_invalid`.
pub fn parse_idempotency_key(raw: Option<&[u8]>) -> Result<IdempotencyKey, Rejection> {
    let text = raw.and_then(|b| std::str::from_utf8(b).ok()).unwrap_or("");
    IdempotencyKey::try_from(text).map_err(|e| Rejection::new("idempotency_key_invalid", 400, e.detail))
}

/// The body: empty or whitespace only (any content type), or a JSON object
/// sent as `application/json`, at most `REQUEST_BODY_BYTES_MAX` bytes.
pub fn check_claim_body(content_type: Option<&[u8]>, body: &[u8]) -> Result<(), Rejection> {
    if body.len() > REQUEST_BODY_BYTES_MAX {
        return Err(Rejection::new(
            "body_too_large",
            413,
            format!("at most {REQUEST_BODY_BYTES_MAX} bytes"),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    if !content_type.is_some_and(is_json_media_type) {
        return Err(Rejection::new(
            "unsupported_media_type",
            415,
            "send application/json or no body",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(_)) => Ok(()),
        _ => Err(Rejection::new("invalid_body", 400, "the body must be a JSON object")),
    }
}

/// `application/json`, case-insensitive, with or without parameters
/// (`; charset=utf-8`). Not `application/jsonx` or `application/json-seq`.
pub fn is_json_media_type(raw: &[u8]) -> bool {
    let essence = raw.split(|&b| b == b';').next().unwrap_or_default();
    essence.trim_ascii().eq_ignore_ascii_case(b"application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(account: &str, key: Option<&str>, ct: Option<&str>, body: &str) -> Result<(), (&'static str, u16)> {
        parse_claim_request(account, key.map(str::as_bytes), ct.map(str::as_bytes), body.as_bytes())
            .map(|_| ())
            .map_err(|r| (r.code, r.status))
    }

    #[test]
    fn the_same_limit_as_the_api() {
        assert_eq!(REQUEST_BODY_BYTES_MAX, crate::service::api::REQUEST_BODY_BYTES_MAX);
    }

    #[test]
    fn good_requests_parse() {
        let json = Some("application/json");
        assert_eq!(code("acc-1", Some("k"), None, ""), Ok(()));
        assert_eq!(code("acc-1", Some("k"), Some("text/plain"), " \n\t"), Ok(()));
        assert_eq!(code("acc-1", Some("k"), json, "{}"), Ok(()));
        assert_eq!(
            code(
                "acc-1",
                Some("k"),
                Some("Application/JSON; charset=utf-8"),
                r#"{"a":[1]}"#
            ),
            Ok(())
        );
        let r = parse_claim_request("a_B-9", Some(b"key 1~"), None, b"").unwrap();
        assert_eq!((r.account.as_str(), r.key.as_str()), ("a_B-9", "key 1~"));
    }

    #[test]
    fn every_refusal_has_its_code_and_status() {
        let json = Some("application/json");
        let bad_account = ("invalid_account_id", 400);
        assert_eq!(code("", Some("k"), None, ""), Err(bad_account));
        assert_eq!(code("a b", Some("k"), None, ""), Err(bad_account));
        assert_eq!(code("é", Some("k"), None, ""), Err(bad_account));
        assert_eq!(code(&"x".repeat(65), Some("k"), None, ""), Err(bad_account));
        let bad_key = ("idempotency_key_invalid", 400);
        assert_eq!(code("a", None, None, ""), Err(bad_key));
        assert_eq!(code("a", Some(""), None, ""), Err(bad_key));
        assert_eq!(code("a", Some("tab\tkey"), None, ""), Err(bad_key));
        assert_eq!(code("a", Some(&"k".repeat(256)), None, ""), Err(bad_key));
        assert!(parse_claim_request("a", Some(b"\xff"), None, b"").is_err());
        assert_eq!(
            code("a", Some("k"), json, &" ".repeat(1025)),
            Err(("body_too_large", 413))
        );
        assert_eq!(
            code("a", Some("k"), Some("text/plain"), "{}"),
            Err(("unsupported_media_type", 415))
        );
        assert_eq!(code("a", Some("k"), None, "{}"), Err(("unsupported_media_type", 415)));
        assert_eq!(
            code("a", Some("k"), Some("application/jsonx"), "{}"),
            Err(("unsupported_media_type", 415))
        );
        assert_eq!(code("a", Some("k"), json, "not json"), Err(("invalid_body", 400)));
        assert_eq!(code("a", Some("k"), json, "1.5"), Err(("invalid_body", 400)));
        assert_eq!(code("a", Some("k"), json, "[]"), Err(("invalid_body", 400)));
        // The first failing check decides.
        assert_eq!(code("a b", None, Some("text/plain"), "x"), Err(bad_account));
        assert_eq!(code("a", None, Some("text/plain"), "x"), Err(bad_key));
    }
}
