//! The HTTP API (SPEC §5). A claim's path: validate → one clock reading →
//! produce to `interest-claims` (durable once acknowledged) → wait for the
//! owning worker's answer (PostgreSQL NOTIFY) up to `CLAIM_WAIT_MS` → 201 or
//! the stored problem, else 202 with `Location`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use tokio::sync::{oneshot, Semaphore};
use uuid::Uuid;

use crate::claims::{Answered, ClaimAnswer};
use crate::config::{Clock, Settings};
use crate::kafka::{self, ClaimMessage};
use crate::money::types::{business_date, format_instant, parse_instant};
use crate::money::{Account, AccountId, IdempotencyKey, Plans, Refusal};
use crate::service::plans;
use crate::service::problem::problem;
use crate::service::request;
use crate::store::{self, CLAIM_DONE_CHANNEL};
use crate::telemetry::Metrics;
use crate::wire::{self, PayoutJson};

/// Largest request body accepted on any route.
pub use crate::service::request::REQUEST_BODY_BYTES_MAX;
/// Seconds a client should wait after a 503.
const RETRY_AFTER_SECS: &str = "1";

pub struct ApiInner {
    pub settings: Settings,
    pub pool: PgPool,
    pub producer: Arc<kafka::ResilientProducer>,
    pub plans: Arc<RwLock<Arc<Plans>>>,
    pub clock: Clock,
    pub metrics: Metrics,
    pub waiters: Mutex<HashMap<Uuid, oneshot::Sender<Answered>>>,
    pub in_flight: Arc<Semaphore>,
    pub keys_in_flight: Mutex<HashSet<String>>,
    pub db_healthy: AtomicBool,
    pub accepting: AtomicBool,
}

pub type ApiState = Arc<ApiInner>;

pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/v1/accounts/{account_id}/interest", get(get_interest))
        .route("/v1/accounts/{account_id}/interest/claims", post(post_claim))
        .route("/v1/claims/{claim_id}", get(get_claim))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    v1.fallback(|| async { problem_response("not_found", 404, "no such route") })
        .method_not_allowed_fallback(|| async {
            problem_response("method_not_allowed", 405, "method not allowed here")
        })
        .with_state(state)
}

/// A problem+json response.
pub fn problem_response(code: &str, status: u16, detail: impl Into<String>) -> Response {
    json_response(status, problem(code, status, detail), false)
}

fn json_response(status: u16, body: Value, replayed: bool) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    let mut resp = (status, [(header::CONTENT_TYPE, content_type)], body.to_string()).into_response();
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
    }
    resp
}

/// Bearer-token check. The scheme is matched case-insensitively (RFC 9110
/// §11.1). The presented token and every configured one are compared as
/// SHA-256 digests (fixed length) in constant time, all of them, without an
/// early exit, so timing tells neither a token's content nor its length.
/// Tokens are never logged.
async fn auth(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let ok = presented.is_some_and(|p| token_matches(&state.settings.api_tokens, p));
    if !ok {
        state.metrics.claims_total.with_label_values(&["unauthorized"]).inc();
        let mut resp = problem_response("unauthorized", 401, "a valid bearer token is required");
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    next.run(req).await
}

/// The token of `Authorization: Bearer <token>`, the scheme in any case; `None`
/// for another scheme or an empty token.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether `presented` is one of `configured`: digests compared in constant
/// time, over every configured token.
fn token_matches(configured: &[secrecy::SecretString], presented: &str) -> bool {
    let digest = Sha256::digest(presented.as_bytes());
    configured
        .iter()
        .map(|t| Sha256::digest(t.expose_secret().as_bytes()).ct_eq(&digest))
        .fold(subtle::Choice::from(0), |acc, eq| acc | eq)
        .into()
}

#[allow(clippy::result_large_err)] // a ready response, built once on the error path
fn parse_account(raw: &str) -> Result<AccountId, Response> {
    AccountId::try_from(raw).map_err(|e| refuse("invalid_account_id", 400, e.detail))
}

/// A path segment as text; one that does not decode is answered with `code`.
type RawPath = Result<Path<String>, axum::extract::rejection::PathRejection>;

fn path_text(raw: RawPath) -> String {
    // An undecodable segment cannot be a valid id: the parsers refuse the empty string.
    raw.map(|Path(p)| p).unwrap_or_default()
}

async fn get_interest(State(state): State<ApiState>, raw: RawPath) -> Response {
    let raw = path_text(raw);
    let id = match parse_account(&raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let now = state.clock.now();
    let loaded = async {
        let mut conn = state.pool.acquire().await?;
        store::load_accounts(&mut conn, &[id.to_string()], now, false).await
    }
    .await;
    match loaded {
        Err(e) => {
            tracing::warn!(event = "view_failed", error = format!("{e:#}"));
            problem_response("unavailable", 503, "the database is unavailable")
        }
        Ok(mut found) => match found.remove(id.as_str()) {
            None => problem_response("unknown_account", 404, format!("no account {id}")),
            Some(acc) => interest_view(&state, &acc, now).await,
        },
    }
}

/// The live view of a stored account, on plans that cover it (reloaded if it
/// names a plan imported since the last reload); 503 if they cannot be had.
async fn interest_view(state: &ApiInner, acc: &Account, now: DateTime<Utc>) -> Response {
    let default_plan = state.settings.default_plan.as_deref();
    match plans::covering(&state.pool, &state.plans, default_plan, [acc]).await {
        Ok(plans) => {
            let view = acc.view(&plans, now, state.settings.claims_per_day);
            json_response(200, wire::view(&view, acc.id(), acc.currency()), false)
        }
        Err(e) => {
            tracing::warn!(event = "view_failed", error = %e);
            problem_response("unavailable", 503, "the account's rate plan is not available yet")
        }
    }
}

/// Removes the key from the in-flight set when the request ends, however it ends.
struct KeyGuard<'a> {
    state: &'a ApiInner,
    key: String,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.state.keys_in_flight.lock().expect("keys").remove(&self.key);
    }
}

/// A body over the limit is not read whole; the parser is shown this
/// stand-in, one byte over the limit, and refuses it for its size.
static OVERSIZE_BODY: [u8; REQUEST_BODY_BYTES_MAX + 1] = [b' '; REQUEST_BODY_BYTES_MAX + 1];

/// Checks the request with the same pure function the fuzzer drives
/// (`request::parse_claim_request`): account id, key, body, in that order.
async fn check_request(raw: &str, headers: &HeaderMap, body: Body) -> Result<request::ClaimRequest, Response> {
    let read: Result<Bytes, _> = axum::body::to_bytes(body, REQUEST_BODY_BYTES_MAX).await;
    let bytes: &[u8] = match &read {
        Ok(b) => b,
        Err(_) => &OVERSIZE_BODY,
    };
    let header = |name| headers.get(name).map(|v: &HeaderValue| v.as_bytes());
    request::parse_claim_request(
        raw,
        header("idempotency-key"),
        header(header::CONTENT_TYPE.as_str()),
        bytes,
    )
    .map_err(|r| refuse(r.code, r.status, r.detail))
}

async fn post_claim(State(state): State<ApiState>, raw: RawPath, headers: HeaderMap, body: Body) -> Response {
    let raw = path_text(raw);
    let started = Instant::now();
    let resp = claim(&state, &raw, &headers, body).await;
    let outcome = match resp.status().as_u16() {
        201 => "paid",
        202 => "accepted",
        _ => resp.extensions().get::<Outcome>().map(|o| o.0).unwrap_or("error"),
    };
    state.metrics.claims_total.with_label_values(&[outcome]).inc();
    state
        .metrics
        .claim_duration_seconds
        .with_label_values(&["api"])
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// The problem code of a response, for the metric label.
#[derive(Clone, Copy)]
struct Outcome(&'static str);

fn refuse(code: &'static str, status: u16, detail: impl Into<String>) -> Response {
    let mut r = problem_response(code, status, detail);
    r.extensions_mut().insert(Outcome(code));
    r
}

async fn claim(state: &ApiInner, raw: &str, headers: &HeaderMap, body: Body) -> Response {
    let request::ClaimRequest { account, key } = match check_request(raw, headers, body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if !state.accepting.load(Ordering::Relaxed) || !state.db_healthy.load(Ordering::Relaxed) {
        return refuse("unavailable", 503, "not accepting claims right now");
    }
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        return refuse("overloaded", 503, "too many claims in flight");
    };
    if !state
        .keys_in_flight
        .lock()
        .expect("keys")
        .insert(key.as_str().to_owned())
    {
        return refuse(
            "claim_in_progress",
            409,
            "a request with this Idempotency-Key is still in flight",
        );
    }
    let _guard = KeyGuard {
        state,
        key: key.as_str().to_owned(),
    };
    // The claim's instant: one clock reading, here, whatever happens later.
    let accepted_at = state.clock.now();
    let claim_id = Uuid::now_v7();
    let (tx, rx) = oneshot::channel();
    state.waiters.lock().expect("waiters").insert(claim_id, tx);
    // Removed however the request ends, also when the request timeout drops it.
    let _waiter = WaiterGuard { state, claim_id };
    wait_for_answer(state, claim_id, &account, &key, accepted_at, rx).await
}

/// Removes the claim's waiter when the request ends, however it ends.
struct WaiterGuard<'a> {
    state: &'a ApiInner,
    claim_id: Uuid,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.state.waiters.lock().expect("waiters").remove(&self.claim_id);
    }
}

async fn wait_for_answer(
    state: &ApiInner,
    claim_id: Uuid,
    account: &AccountId,
    key: &IdempotencyKey,
    accepted_at: DateTime<Utc>,
    rx: oneshot::Receiver<Answered>,
) -> Response {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(state.settings.claim_wait_ms);
    let msg = ClaimMessage::Claim {
        claim_id,
        account_id: account.to_string(),
        idempotency_key: key.as_str().to_owned(),
        accepted_at,
    };
    let payload = serde_json::to_vec(&msg).expect("serializable");
    let topic = state.settings.topic(kafka::CLAIMS);
    // 202 promises the claim is durable, so nothing is answered before the
    // broker acknowledges it. The producer's own bound (CLAIM_QUEUE_TIMEOUT)
    // always yields a delivery report, so this never hangs.
    if let Err(e) = state.producer.send(&topic, account.as_str(), &payload, None).await {
        tracing::warn!(event = "claim_not_queued", error = %e);
        return refuse(
            "unavailable",
            503,
            "the claim could not be queued and was not accepted; retry with the same Idempotency-Key",
        );
    }
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(done)) => answer(&done, account),
        _ => accepted(state, claim_id, account, key, accepted_at).await,
    }
}

fn answer(done: &Answered, account: &AccountId) -> Response {
    let status = claim_status(&done.answer);
    let mut resp = json_response(status, claim_body(&done.answer, account.as_str()), done.replayed);
    if let Some(label) = outcome_label(&done.answer) {
        resp.extensions_mut().insert(Outcome(label));
    }
    resp
}

// ---- claim answers on the wire: the one place they become HTTP ------------------

/// The HTTP status of a claim's answer (stored with it in `claims`).
pub fn claim_status(a: &ClaimAnswer) -> u16 {
    match a {
        ClaimAnswer::Paid(_) => 201,
        ClaimAnswer::UnknownAccount => 404,
        ClaimAnswer::Refused(Refusal::AlreadyClaimedToday { .. }) => 409,
        ClaimAnswer::KeyReused | ClaimAnswer::Refused(Refusal::NothingToClaim) => 422,
    }
}

/// The problem code of a refused claim; `None` when paid.
pub fn claim_code(a: &ClaimAnswer) -> Option<&'static str> {
    match a {
        ClaimAnswer::Paid(_) => None,
        ClaimAnswer::UnknownAccount => Some("unknown_account"),
        ClaimAnswer::KeyReused => Some("idempotency_key_reused"),
        ClaimAnswer::Refused(r) => Some(r.code()),
    }
}

/// The `claims_total{outcome}` label of a refused claim.
fn outcome_label(a: &ClaimAnswer) -> Option<&'static str> {
    match a {
        ClaimAnswer::Paid(_) => None,
        ClaimAnswer::UnknownAccount => Some("unknown_account"),
        ClaimAnswer::Refused(Refusal::AlreadyClaimedToday { .. }) => Some("conflict"),
        ClaimAnswer::KeyReused | ClaimAnswer::Refused(Refusal::NothingToClaim) => Some("unprocessable"),
    }
}

/// The body of a claim's answer: the payout, or the problem.
pub fn claim_body(a: &ClaimAnswer, account_id: &str) -> Value {
    let status = claim_status(a);
    match a {
        ClaimAnswer::Paid(payout) => payout.to_value(),
        ClaimAnswer::KeyReused => problem(
            "idempotency_key_reused",
            status,
            "this Idempotency-Key was used for another account",
        ),
        ClaimAnswer::UnknownAccount => problem("unknown_account", status, format!("no account {account_id}")),
        ClaimAnswer::Refused(r @ Refusal::AlreadyClaimedToday { next_claim_at }) => {
            let mut body = problem(
                r.code(),
                status,
                "this account already claimed today; the next claim opens at 00:00 KST",
            );
            body["next_claim_at"] = json!(format_instant(*next_claim_at));
            body
        }
        ClaimAnswer::Refused(r @ Refusal::NothingToClaim) => {
            problem(r.code(), status, "less than one unit of interest has accrued")
        }
    }
}

/// A stored answer (`claims.status`, `claims.body`) read back as the typed
/// answer: the inverse of [`claim_status`] and [`claim_body`].
pub fn claim_from_stored(status: i16, body: &Value) -> Option<ClaimAnswer> {
    let code = body["code"].as_str();
    Some(match (status, code) {
        (201, _) => ClaimAnswer::Paid(Box::new(PayoutJson::from_value(body).ok()?)),
        (404, Some("unknown_account")) => ClaimAnswer::UnknownAccount,
        (422, Some("idempotency_key_reused")) => ClaimAnswer::KeyReused,
        (422, Some("nothing_to_claim")) => ClaimAnswer::Refused(Refusal::NothingToClaim),
        (409, Some("already_claimed_today")) => {
            let next_claim_at = parse_instant(body["next_claim_at"].as_str()?).ok()?;
            ClaimAnswer::Refused(Refusal::AlreadyClaimedToday { next_claim_at })
        }
        _ => return None,
    })
}

/// A finished claim row as the waiting request receives it.
fn answered(r: &store::ClaimRecord) -> Option<Answered> {
    let answer = claim_from_stored(r.status?, r.body.as_ref()?);
    if answer.is_none() {
        tracing::error!(event = "stored_answer_unreadable", claim_id = %r.claim_id);
    }
    Some(Answered {
        claim_id: r.claim_id,
        replayed: r.replayed,
        answer: answer?,
    })
}

/// 202: durable, not finished. Last look first: the answer may have just landed.
async fn accepted(
    state: &ApiInner,
    claim_id: Uuid,
    account: &AccountId,
    key: &IdempotencyKey,
    at: DateTime<Utc>,
) -> Response {
    if let Ok(mut found) = store::load_claims(&state.pool, &[claim_id]).await {
        if let Some(done) = found.pop().filter(|r| r.state == "done").as_ref().and_then(answered) {
            return answer(&done, account);
        }
    }
    let day = business_date(at);
    if let Err(e) = store::insert_accepted_claim(&state.pool, claim_id, key.as_str(), account.as_str(), at, day).await {
        tracing::warn!(event = "accepted_claim_not_recorded", error = format!("{e:#}"));
    }
    let body = json!({
        "claim_id": claim_id, "account_id": account, "state": "accepted",
        "accepted_at": format_instant(at), "status": null, "payout": null, "problem": null,
    });
    let mut resp = json_response(202, body, false);
    let location = format!("/v1/claims/{claim_id}");
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(&location).expect("ascii"));
    resp
}

async fn get_claim(State(state): State<ApiState>, raw: RawPath) -> Response {
    let Ok(id) = Uuid::parse_str(&path_text(raw)) else {
        return problem_response("invalid_claim_id", 400, "claim ids are UUIDs");
    };
    match store::load_claims(&state.pool, &[id]).await {
        Err(_) => problem_response("unavailable", 503, "the database is unavailable"),
        Ok(mut v) => match v.pop() {
            None => problem_response("unknown_claim", 404, "no such claim"),
            Some(r) => {
                let (payout, problem) = match (r.status, &r.body) {
                    (Some(201), Some(b)) => (b.clone(), Value::Null),
                    (Some(_), Some(b)) => (Value::Null, b.clone()),
                    _ => (Value::Null, Value::Null),
                };
                let body = json!({
                    "claim_id": r.claim_id, "account_id": r.account_id, "state": r.state,
                    "accepted_at": format_instant(r.accepted_at), "status": r.status,
                    "payout": payout, "problem": problem,
                });
                json_response(200, body, false)
            }
        },
    }
}

/// How long the answer listener tries to (re)establish its LISTEN session
/// before it gives up and ends, which stops the process (`app::supervise`):
/// an API that cannot hear answers is restarted rather than left half alive.
/// Well above the database outages the service rides out (faults: 10 s).
const LISTEN_DOWN_MAX: Duration = Duration::from_secs(30);
const LISTEN_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Delivers workers' answers to the requests waiting in this process.
pub async fn listen_for_answers(state: ApiState, shutdown: tokio_util::sync::CancellationToken) {
    let mut down_since: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        let connected = async {
            let mut l = PgListener::connect_with(&state.pool).await?;
            l.listen(CLAIM_DONE_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = match connected.await {
            Ok(l) => l,
            Err(e) => {
                let down = down_since.get_or_insert_with(Instant::now).elapsed();
                tracing::warn!(event = "listener_connect_failed", error = %e, down_ms = down.as_millis() as u64);
                if down >= LISTEN_DOWN_MAX {
                    tracing::error!(event = "answer_listener_failed", error = %e, "no LISTEN session; giving up");
                    return;
                }
                tokio::time::sleep(LISTEN_RETRY_PAUSE).await;
                continue;
            }
        };
        down_since = None;
        loop {
            let n = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = listener.try_recv() => n,
            };
            let n = match n {
                Ok(Some(n)) => n,
                // Connection lost: reconnect; waiters that miss their answer re-check before a 202.
                Ok(None) | Err(_) => break,
            };
            let missing = hand_over(&state, n.payload());
            if !missing.is_empty() {
                let state = state.clone();
                tokio::spawn(async move { deliver(&state, &missing).await });
            }
        }
    }
}

/// Hands each answer of a notification to its waiting request; returns the
/// waited-for claims whose answer was too large to travel (sent as a bare id).
fn hand_over(state: &ApiInner, payload: &str) -> Vec<Uuid> {
    let items: Vec<Value> = serde_json::from_str(payload).unwrap_or_default();
    let mut missing = Vec::new();
    let mut waiters = state.waiters.lock().expect("waiters");
    for item in items {
        let Some(id) = item["claim_id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) else {
            continue;
        };
        let Some(tx) = waiters.remove(&id) else { continue };
        match serde_json::from_value::<Answered>(item) {
            Ok(done) => {
                let _ = tx.send(done);
            }
            Err(_) => {
                waiters.insert(id, tx);
                missing.push(id);
            }
        }
    }
    missing
}

async fn deliver(state: &ApiInner, ids: &[Uuid]) {
    match store::load_claims(&state.pool, ids).await {
        Ok(records) => {
            let mut waiters = state.waiters.lock().expect("waiters");
            for done in records.iter().filter_map(answered) {
                if let Some(tx) = waiters.remove(&done.claim_id) {
                    let _ = tx.send(done);
                }
            }
        }
        Err(e) => tracing::warn!(event = "answer_fetch_failed", error = format!("{e:#}")),
    }
}

/// Keeps `db_healthy` current so claims get a fast 503 while the database is away.
pub async fn watch_database(state: ApiState, shutdown: tokio_util::sync::CancellationToken) {
    while !shutdown.is_cancelled() {
        let ok = store::ping(&state.pool, Duration::from_secs(1)).await;
        if ok != state.db_healthy.swap(ok, Ordering::Relaxed) {
            tracing::warn!(event = "database_health", healthy = ok);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, token_matches};
    use secrecy::SecretString;

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for v in ["Bearer t", "bearer t", "BEARER t", "bEaReR t", "Bearer  t"] {
            assert_eq!(bearer_token(v), Some("t"), "{v:?}");
        }
        for v in ["Basic t", "Bearer", "Bearer ", "Bearert", "t", ""] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }

    #[test]
    fn tokens_match_only_whole() {
        let tokens = [SecretString::from("token-one"), SecretString::from("token-two")];
        assert!(token_matches(&tokens, "token-one"));
        assert!(token_matches(&tokens, "token-two"));
        for wrong in ["token-six", "token", "token-one-", "", "TOKEN-ONE"] {
            assert!(!token_matches(&tokens, wrong), "{wrong:?}");
        }
        assert!(!token_matches(&[], "token-one"));
    }
}
