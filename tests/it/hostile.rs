//! Hostile and malformed requests against the real served API: every one gets
//! its documented status and an `application/problem+json` body with the
//! stable `code` and the same `status`; bearer tokens never reach the log.

use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use serde_json::Value;

use crate::harness::{Env, Service, TOKEN};

const PROBLEM_BASE: &str = "https://interest-now.dev/problems/";

/// One request and the problem it must get back.
struct Case {
    name: &'static str,
    method: Method,
    path: String,
    /// The whole `Authorization` header value; `None` sends none.
    auth: Option<String>,
    /// The raw `Idempotency-Key` header value; `None` sends none.
    key: Option<HeaderValue>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

impl Case {
    /// A claim for `account` with a good token and key and no body.
    fn claim(name: &'static str, account: &str, status: u16, code: &'static str) -> Case {
        Case {
            name,
            method: Method::POST,
            path: format!("/v1/accounts/{account}/interest/claims"),
            auth: Some(format!("Bearer {TOKEN}")),
            key: Some(HeaderValue::from_static("hostile-key")),
            content_type: None,
            body: Vec::new(),
            status,
            code,
        }
    }

    fn request(name: &'static str, method: Method, path: &str, status: u16, code: &'static str) -> Case {
        Case {
            method,
            path: path.to_owned(),
            key: None,
            ..Case::claim(name, "unused", status, code)
        }
    }

    fn key(self, key: HeaderValue) -> Case {
        Case { key: Some(key), ..self }
    }

    fn no_key(self) -> Case {
        Case { key: None, ..self }
    }

    fn auth(self, auth: Option<&str>) -> Case {
        Case {
            auth: auth.map(str::to_owned),
            ..self
        }
    }

    fn body(self, content_type: &'static str, body: impl Into<Vec<u8>>) -> Case {
        Case {
            content_type: Some(content_type),
            body: body.into(),
            ..self
        }
    }
}

fn cases() -> Vec<Case> {
    use Method as M;
    let json = "application/json";
    let ok = "known-acct";
    vec![
        // Idempotency-Key
        Case::claim("missing Idempotency-Key", ok, 400, "idempotency_key_invalid").no_key(),
        Case::claim("empty Idempotency-Key", ok, 400, "idempotency_key_invalid").key(HeaderValue::from_static("")),
        Case::claim("Idempotency-Key with a tab", ok, 400, "idempotency_key_invalid")
            .key(HeaderValue::from_static("tab\tkey")),
        Case::claim(
            "Idempotency-Key with a non-ASCII byte",
            ok,
            400,
            "idempotency_key_invalid",
        )
        .key(HeaderValue::from_bytes(b"caf\xe9-key").unwrap()),
        Case::claim("Idempotency-Key of 256 characters", ok, 400, "idempotency_key_invalid")
            .key(HeaderValue::from_str(&"k".repeat(256)).unwrap()),
        // Authorization
        Case::claim("missing token", ok, 401, "unauthorized").auth(None),
        Case::claim("wrong token", ok, 401, "unauthorized").auth(Some("Bearer not-the-token")),
        Case::claim("token without the Bearer scheme", ok, 401, "unauthorized").auth(Some(TOKEN)),
        Case::claim("Basic credentials", ok, 401, "unauthorized").auth(Some("Basic dGVzdDp0ZXN0")),
        Case::claim("empty bearer token", ok, 401, "unauthorized").auth(Some("Bearer ")),
        // Same length as TOKEN ("test-token-1"), one character off; and other lengths.
        Case::claim("wrong token of the same length", ok, 401, "unauthorized").auth(Some("Bearer test-token-2")),
        Case::claim("wrong token, longer", ok, 401, "unauthorized").auth(Some("Bearer test-token-1-and-more")),
        Case::claim("wrong token, one character", ok, 401, "unauthorized").auth(Some("Bearer t")),
        Case::claim("the token in another case", ok, 401, "unauthorized").auth(Some("Bearer TEST-TOKEN-1")),
        // The scheme is case-insensitive (RFC 9110 §11.1): auth passes and the
        // next check answers (before the fix: 401).
        Case::request(
            "lowercase bearer scheme",
            M::GET,
            "/v1/claims/not-a-uuid",
            400,
            "invalid_claim_id",
        )
        .auth(Some(&format!("bearer {TOKEN}"))),
        Case::request(
            "uppercase BEARER scheme",
            M::GET,
            "/v1/claims/not-a-uuid",
            400,
            "invalid_claim_id",
        )
        .auth(Some(&format!("BEARER {TOKEN}"))),
        Case::claim("a token's prefix", ok, 401, "unauthorized").auth(Some(&format!("Bearer {}", &TOKEN[..4]))),
        Case::claim("a token with a suffix", ok, 401, "unauthorized").auth(Some(&format!("Bearer {TOKEN}x"))),
        Case::request(
            "interest view without a token",
            M::GET,
            "/v1/accounts/known-acct/interest",
            401,
            "unauthorized",
        )
        .auth(None),
        Case::request(
            "claim status without a token",
            M::GET,
            &format!("/v1/claims/{}", uuid::Uuid::nil()),
            401,
            "unauthorized",
        )
        .auth(None),
        // Body
        Case::claim("body of 1025 bytes", ok, 413, "body_too_large")
            .body(json, format!("{{\"p\":\"{}\"}}", "x".repeat(1017))),
        Case::claim("body of 16 KiB", ok, 413, "body_too_large").body(json, vec![b' '; 16 * 1024]),
        Case::claim("non-JSON body sent as JSON", ok, 400, "invalid_body").body(json, "claim please"),
        Case::claim("truncated JSON", ok, 400, "invalid_body").body(json, "{\"a\":"),
        Case::claim("a number where an object is expected", ok, 400, "invalid_body").body(json, "1.5"),
        Case::claim("an array where an object is expected", ok, 400, "invalid_body").body(json, "[]"),
        Case::claim("a string where an object is expected", ok, 400, "invalid_body").body(json, "\"{}\""),
        Case::claim("JSON body as text/plain", ok, 415, "unsupported_media_type").body("text/plain", "{}"),
        Case::claim("form body", ok, 415, "unsupported_media_type").body("application/x-www-form-urlencoded", "a=1"),
        // Account id in the path
        Case::claim("account id with a space", "a%20b", 400, "invalid_account_id"),
        Case::claim(
            "account id of 65 characters",
            &"a".repeat(65),
            400,
            "invalid_account_id",
        ),
        Case::claim("account id in Unicode", "%C3%A9t%C3%A9", 400, "invalid_account_id"),
        Case::claim("account id with a dot", "a.b", 400, "invalid_account_id"),
        Case::claim("account id with an encoded slash", "a%2Fb", 400, "invalid_account_id"),
        Case::request(
            "interest view of a bad account id",
            M::GET,
            "/v1/accounts/a%20b/interest",
            400,
            "invalid_account_id",
        ),
        Case::request(
            "empty account id",
            M::GET,
            "/v1/accounts//interest",
            400,
            "invalid_account_id",
        ),
        // Checks run in the documented order: account, key, body.
        Case::claim("bad account and no key", "a%20b", 400, "invalid_account_id").no_key(),
        Case::claim("no key and a bad body", ok, 400, "idempotency_key_invalid")
            .no_key()
            .body("text/plain", "x"),
        // Routes and methods
        Case::request("unknown route", M::GET, "/v1/nope", 404, "not_found"),
        Case::request(
            "unknown route without a token",
            M::GET,
            "/v2/accounts/a/interest",
            404,
            "not_found",
        )
        .auth(None),
        Case::request("root", M::GET, "/", 404, "not_found"),
        Case::request(
            "GET on the claims route",
            M::GET,
            "/v1/accounts/known-acct/interest/claims",
            405,
            "method_not_allowed",
        ),
        Case::request(
            "DELETE on the interest route",
            M::DELETE,
            "/v1/accounts/known-acct/interest",
            405,
            "method_not_allowed",
        ),
        Case::request(
            "POST on a claim",
            M::POST,
            &format!("/v1/claims/{}", uuid::Uuid::nil()),
            405,
            "method_not_allowed",
        ),
        // Claim ids
        Case::request(
            "malformed claim id",
            M::GET,
            "/v1/claims/not-a-uuid",
            400,
            "invalid_claim_id",
        ),
        Case::request(
            "claim id too long",
            M::GET,
            &format!("/v1/claims/{}0", uuid::Uuid::nil()),
            400,
            "invalid_claim_id",
        ),
        Case::request(
            "unknown claim id",
            M::GET,
            &format!("/v1/claims/{}", uuid::Uuid::now_v7()),
            404,
            "unknown_claim",
        ),
        // Unknown account (the request is valid; the answer comes from the worker)
        Case::request(
            "interest view of an unknown account",
            M::GET,
            "/v1/accounts/nobody/interest",
            404,
            "unknown_account",
        ),
        Case::claim("claim for an unknown account", "nobody", 404, "unknown_account"),
    ]
}

async fn send(svc: &Service, case: &Case) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let url = format!("http://{}{}", svc.http, case.path);
    let mut req = svc
        .client
        .request(case.method.clone(), url)
        .timeout(Duration::from_secs(20));
    if let Some(auth) = &case.auth {
        req = req.header(AUTHORIZATION, auth);
    }
    if let Some(key) = &case.key {
        req = req.header("idempotency-key", key.clone());
    }
    if let Some(ct) = case.content_type {
        req = req.header(CONTENT_TYPE, ct);
    }
    if !case.body.is_empty() {
        req = req.body(case.body.clone());
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

/// Checks one answer; returns a description of what is wrong, if anything.
fn check(case: &Case, status: u16, headers: &reqwest::header::HeaderMap, body: &[u8]) -> Option<String> {
    let ct = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let problem: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut wrong = Vec::new();
    if status != case.status {
        wrong.push(format!("status {status}, want {}", case.status));
    }
    if !ct.starts_with("application/problem+json") {
        wrong.push(format!("content-type {ct:?}"));
    }
    if problem["code"] != case.code {
        wrong.push(format!("code {}, want {}", problem["code"], case.code));
    }
    if problem["status"] != status {
        wrong.push(format!("body status {}", problem["status"]));
    }
    if problem["type"] != format!("{PROBLEM_BASE}{}", case.code) || !problem["title"].is_string() {
        wrong.push("type/title".to_owned());
    }
    if status == 401 && headers.get("www-authenticate").and_then(|v| v.to_str().ok()) != Some("Bearer") {
        wrong.push("no WWW-Authenticate: Bearer".to_owned());
    }
    (!wrong.is_empty()).then(|| {
        format!(
            "{} ({} {}): {}; body {}",
            case.name,
            case.method,
            case.path,
            wrong.join(", "),
            String::from_utf8_lossy(body)
        )
    })
}

async fn start(extra: &[(&str, &str)]) -> (Env, Service) {
    let env = Env::new(1).await;
    let svc = env.serve("all", extra).await;
    env.snapshot(
        "known-acct",
        1,
        "1000000",
        &interest_now::money::types::format_instant(crate::harness::now()),
    )
    .await;
    env.wait_accounts(1).await;
    (env, svc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_problem() {
    let (env, svc) = start(&[]).await;
    let mut failures = Vec::new();
    for case in cases() {
        let (status, headers, body) = send(&svc, &case).await;
        failures.extend(check(&case, status, &headers, &body));
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases().len(),
        failures.join("\n")
    );
    // Nothing above was a payable claim.
    assert_eq!(env.payout_count().await, 0);
    // A malformed account id is counted as what it is, not as an error.
    let metrics_url = format!("http://{}/metrics", svc.admin);
    let m = svc.client.get(&metrics_url).send().await.unwrap().text().await.unwrap();
    assert!(
        m.contains(r#"interest_claims_total{outcome="invalid_account_id"}"#),
        "{m}"
    );
    drop(svc);
    env.drop_db().await;
}

/// A path segment that is not UTF-8 once percent-decoded must still be a
/// problem, not the router's plain-text rejection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_path_segments_get_a_problem() {
    let (env, svc) = start(&[]).await;
    let cases = [
        Case::claim("account id not UTF-8", "%FF", 400, "invalid_account_id"),
        Case::request(
            "interest view, id not UTF-8",
            Method::GET,
            "/v1/accounts/%C3%28/interest",
            400,
            "invalid_account_id",
        ),
        Case::request(
            "claim id not UTF-8",
            Method::GET,
            "/v1/claims/%FF",
            400,
            "invalid_claim_id",
        ),
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let (status, headers, body) = send(&svc, case).await;
        failures.extend(check(case, status, &headers, &body));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    drop(svc);
    env.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_never_reach_the_log() {
    let secret = format!("secret-{}", uuid::Uuid::new_v4().simple());
    let wrong = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    // As chatty as the service gets, short of the client libraries' own wire traces.
    let log_level = "trace,rdkafka=info,librdkafka=info,sqlx=info,h2=info,tokio=info,runtime=info,mio=info";
    let (env, mut svc) = start(&[("API_TOKENS", &secret), ("RUST_LOG", log_level)]).await;
    let good = format!("Bearer {secret}");
    let bad = format!("Bearer {wrong}");
    let requests = [
        Case::claim("good token", "known-acct", 422, "").auth(Some(&good)),
        Case::claim("good token, bad key", "known-acct", 400, "")
            .auth(Some(&good))
            .no_key(),
        Case::claim("wrong token", "known-acct", 401, "").auth(Some(&bad)),
        Case::request("view", Method::GET, "/v1/accounts/known-acct/interest", 200, "").auth(Some(&good)),
        Case::request("unknown route", Method::GET, "/v1/nope", 404, "").auth(Some(&good)),
    ];
    for case in &requests {
        let (status, _, body) = send(&svc, case).await;
        assert_eq!(status, case.status, "{}: {}", case.name, String::from_utf8_lossy(&body));
    }
    // Stop the service so that everything it logged is in the file.
    svc.sigterm();
    svc.wait_exit(Duration::from_secs(30));
    let log_path = svc.log.clone();
    let log = std::fs::read_to_string(&log_path).unwrap_or_else(|e| panic!("{}: {e}", log_path.display()));
    assert!(
        log.contains("\"serving\""),
        "not the service's log: {}",
        log_path.display()
    );
    for (what, token) in [("the configured token", &secret), ("the wrong token", &wrong)] {
        assert!(
            !log.contains(token.as_str()),
            "{what} appears in {}",
            log_path.display()
        );
    }
    drop(svc);
    env.drop_db().await;
}

/// Found by fuzz/snapshot_decode: a snapshot whose `as_of` is a valid RFC 3339
/// string but lies outside the years 0001–9998 (UTC) was accepted, and the
/// account's view then showed it as "-0001-12-31T09:01:00.000+09:00" (not an
/// openapi.yaml Timestamp; it cannot be parsed back either).
#[test]
fn snapshots_with_an_unrepresentable_as_of_are_refused() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plans.json")).unwrap();
    let plans = interest_now::money::Plans::new(interest_now::money::PlanFile::parse(&text).unwrap(), None).unwrap();
    for as_of in ["0000-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"] {
        let json = format!(r#"{{"account_id":"a","seq":1,"balance":"1","currency":"KRW","as_of":"{as_of}"}}"#);
        let refused = interest_now::money::decode_snapshot(json.as_bytes(), &plans).map(|s| s.as_of);
        assert_eq!(refused.map_err(|e| e.code), Err("invalid_timestamp"), "{as_of}");
    }
}
