//! The HTTP API (SPEC §5). A claim's path: validate → one clock reading →
//! produce to `interest-claims` (durable once acknowledged) → wait for the
//! owning worker's answer (PostgreSQL NOTIFY) up to `CLAIM_WAIT_MS` → 201 or
//! the stored problem, else 202 with `Location`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Request, State};
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

use crate::claims::{Answered, ClaimAnswer, ScopedKey};
use crate::config::{ApiClient, Clock, Settings};
use crate::kafka::{self, ClaimMessage};
use crate::money::types::{business_date, format_instant, parse_instant};
use crate::money::{Account, AccountId, Plans, Refusal};
use crate::service::plans;
use crate::service::problem::problem;
use crate::service::request;
use crate::service::reserve::Reserver;
use crate::store::{self, CLAIM_DONE_CHANNEL};
use crate::telemetry::Metrics;
use crate::wire::{self, PayoutJson};

/// Largest request body accepted on any route.
pub use crate::service::request::REQUEST_BODY_BYTES_MAX;
/// Seconds a client should wait after a 503.
const RETRY_AFTER_SECS: &str = "1";

/// The API's database pools, apart so that what must never starve does not
/// wait behind what may: at midnight the `GET` polls of a backlog cannot take
/// the connections that answer claims, and neither can take the health probe's.
pub struct ApiPools {
    /// The claim path: reserve a key, queue or withdraw a claim, read an answer,
    /// and the answer listener's session.
    pub claims: PgPool,
    /// `GET` routes. At most [`READS_IN_FLIGHT_MAX`] of them wait for it at once;
    /// past that they are answered 503 `overloaded` at once.
    pub reads: PgPool,
    /// The database watch: whether the database can be reached at all.
    pub health: PgPool,
}

/// Connections of each API pool.
pub const CLAIM_POOL_SIZE: u32 = 16;
pub const READ_POOL_SIZE: u32 = 8;
/// `lock_timeout` of the claim pool's statements (reserving, queueing and
/// withdrawing a key): a key row is locked only by a worker's batch that
/// holds its claim, normally for milliseconds. A frozen or cut-off worker
/// holds it until PostgreSQL ends its transaction; waiting that long would
/// hold a claim-pool connection per retry and stall every claim grouped
/// with it (`reserve`). Below `SETTLE_STEP`, so the server gives up before
/// the request does and the connection returns to the pool clean.
pub const KEY_LOCK_TIMEOUT_MS: u32 = 300;
/// `GET` requests holding or waiting for a read connection at once, at most.
pub const READS_IN_FLIGHT_MAX: usize = 256;

pub struct ApiInner {
    pub settings: Settings,
    pub pools: ApiPools,
    /// Rate plans are read on demand from here (the process's shared pool).
    pub pool: PgPool,
    pub reads_in_flight: Arc<Semaphore>,
    pub producer: Arc<kafka::ResilientProducer>,
    pub plans: Arc<RwLock<Arc<Plans>>>,
    pub clock: Clock,
    pub metrics: Metrics,
    pub waiters: Mutex<HashMap<Uuid, oneshot::Sender<Done>>>,
    /// Key reservations, group-committed across concurrent requests.
    pub reserver: Reserver,
    pub in_flight: Arc<Semaphore>,
    pub db_healthy: AtomicBool,
    pub accepting: AtomicBool,
}

pub type ApiState = Arc<ApiInner>;

pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/v1/accounts/{account_id}/interest", get(get_interest))
        .route("/v1/accounts/{account_id}/interest/claims", post(post_claim))
        .route("/v1/claims/{claim_id}", get(get_claim))
        .route("/v1/payouts/{payout_id}", get(crate::service::history::get_payout))
        .route(
            "/v1/accounts/{account_id}/interest/payouts",
            get(crate::service::history::get_payouts),
        )
        .route(
            "/v1/accounts/{account_id}/interest/statements/{year}",
            get(crate::service::history::get_statement),
        )
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

/// A 200 with a JSON body.
pub(crate) fn json_ok(body: Value) -> Response {
    json_response(200, body, false)
}

fn json_response(status: u16, body: Value, replayed: bool) -> Response {
    text_response(status, body.to_string(), replayed)
}

/// A response whose body is JSON text already (a worker's stored answer).
fn text_response(status: u16, body: String, replayed: bool) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    let mut resp = (status, [(header::CONTENT_TYPE, content_type)], body).into_response();
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
    let client = presented.and_then(|p| token_client(&state.settings.api_tokens, p));
    let Some(client) = client else {
        state.metrics.claims_total.with_label_values(&["unauthorized"]).inc();
        let mut resp = problem_response("unauthorized", 401, "a valid bearer token is required");
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    };
    let mut req = req;
    req.extensions_mut().insert(ClientId(client.client_id.clone()));
    next.run(req).await
}

/// The identity behind the request's token: the scope of its idempotency keys.
#[derive(Debug, Clone)]
pub struct ClientId(pub String);

/// The token of `Authorization: Bearer <token>`, the scheme in any case; `None`
/// for another scheme or an empty token.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The client whose token `presented` is: digests compared in constant
/// time, with every configured token, before the one that matched is picked.
fn token_client<'a>(configured: &'a [ApiClient], presented: &str) -> Option<&'a ApiClient> {
    let digest = Sha256::digest(presented.as_bytes());
    let matches: Vec<bool> = configured
        .iter()
        .map(|c| Sha256::digest(c.token.expose_secret().as_bytes()).ct_eq(&digest).into())
        .collect();
    configured.iter().zip(matches).find_map(|(c, m)| m.then_some(c))
}

#[allow(clippy::result_large_err)] // a ready response, built once on the error path
pub(crate) fn parse_account(raw: &str) -> Result<AccountId, Response> {
    AccountId::try_from(raw).map_err(|e| refuse("invalid_account_id", 400, e.detail))
}

/// A path segment as text; one that does not decode is answered with `code`.
pub(crate) type RawPath = Result<Path<String>, axum::extract::rejection::PathRejection>;

pub(crate) fn path_text(raw: RawPath) -> String {
    // An undecodable segment cannot be a valid id: the parsers refuse the empty string.
    raw.map(|Path(p)| p).unwrap_or_default()
}

async fn get_interest(State(state): State<ApiState>, raw: RawPath) -> Response {
    let raw = path_text(raw);
    let id = match parse_account(&raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let Ok(_permit) = state.reads_in_flight.clone().try_acquire_owned() else {
        return problem_response("overloaded", 503, "too many reads in flight");
    };
    let now = state.clock.now();
    let loaded = async {
        let mut conn = state.pools.reads.acquire().await?;
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

async fn post_claim(
    State(state): State<ApiState>,
    Extension(client): Extension<ClientId>,
    raw: RawPath,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let raw = path_text(raw);
    let started = Instant::now();
    let resp = claim(&state, client, &raw, &headers, body).await;
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

/// Time left after the claim's wait for the steps that settle its answer
/// (queue it for a 202, or withdraw it), inside the request timeout's margin.
const SETTLE_STEP: Duration = Duration::from_millis(400);

/// One claim in flight in this process: what the request settles on.
struct Pending<'a> {
    state: &'a ApiInner,
    key: ScopedKey,
    account: AccountId,
    claim_id: Uuid,
    accepted_at: DateTime<Utc>,
    /// The end of the claim's wait (`CLAIM_WAIT_MS` after the request began).
    deadline: tokio::time::Instant,
}

async fn claim(state: &ApiInner, client: ClientId, raw: &str, headers: &HeaderMap, body: Body) -> Response {
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
    let claim = Pending {
        state,
        key: ScopedKey {
            client: client.0,
            key: key.as_str().to_owned(),
        },
        account,
        // The claim's instant: one clock reading, here, whatever happens later.
        accepted_at: state.clock.now(),
        claim_id: Uuid::now_v7(),
        deadline: tokio::time::Instant::now() + Duration::from_millis(state.settings.claim_wait_ms),
    };
    match reserve(&claim).await {
        Ok(()) => claim.queue_and_wait().await,
        Err(resp) => resp,
    }
}

/// Reserves the key for this claim (across every API process), or answers
/// from the row that holds it: its stored answer, its 202, or 409 while
/// another request still holds it. Nothing is produced unless reserved.
async fn reserve(c: &Pending<'_>) -> Result<(), Response> {
    let stale_ms = (c.state.settings.claim_wait_ms + 3_000) as i64;
    for _ in 0..3 {
        let row = store::Reservation {
            key: c.key.clone(),
            account_id: c.account.to_string(),
            claim_id: c.claim_id,
            accepted_at: c.accepted_at,
        };
        let attempt = async {
            match c.state.reserver.reserve(row).await {
                Ok(true) => Ok(None),
                Ok(false) => store::read_key(&c.state.pools.claims, &c.key).await.map(Some),
                Err(e) => Err(anyhow::anyhow!("{e:#}")),
            }
        };
        let held = match tokio::time::timeout_at(c.deadline, attempt).await {
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(held))) => held,
            Ok(Err(e)) => {
                tracing::warn!(event = "key_not_reserved", error = format!("{e:#}"));
                return Err(refuse(
                    "unavailable",
                    503,
                    "the claim was not accepted; retry with the same Idempotency-Key",
                ));
            }
            Err(_) => return Err(refuse("overloaded", 503, "the claim was not accepted in time; retry")),
        };
        let Some(held) = held else { continue };
        if held.stored.account_id != c.account.as_str() {
            return Err(answer(&key_reused(held.stored.claim_id), &c.account));
        }
        match held.stored.state.as_str() {
            "answered" => return Err(replay(&held.stored)),
            "queued" => return Err(accepted_response(held.stored.claim_id, &c.account, held.accepted_at)),
            // The request that reserved it ended without settling (its process died): withdraw it, then retry.
            "pending" if held.age_ms > stale_ms => {
                let _ = store::release_key(&c.state.pools.claims, &c.key, held.stored.claim_id).await;
            }
            "pending" => {
                return Err(refuse(
                    "claim_in_progress",
                    409,
                    "a request with this Idempotency-Key is still in flight",
                ))
            }
            _ => {}
        }
    }
    Err(refuse(
        "unavailable",
        503,
        "the claim was not accepted; retry with the same Idempotency-Key",
    ))
}

fn key_reused(claim_id: Uuid) -> Answered {
    Answered {
        claim_id,
        replayed: false,
        answer: ClaimAnswer::KeyReused,
    }
}

/// The key's stored answer, replayed as it was given.
fn replay(stored: &store::StoredKey) -> Response {
    let (Some(status), Some(body)) = (stored.status, stored.body.clone()) else {
        return refuse("unavailable", 503, "the stored answer could not be read; retry");
    };
    let mut resp = json_response(status as u16, body, true);
    if let Some(label) = claim_from_stored(status, stored.body.as_ref().unwrap_or(&Value::Null))
        .as_ref()
        .and_then(outcome_label)
    {
        resp.extensions_mut().insert(Outcome(label));
    }
    resp
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

impl Pending<'_> {
    /// Produces the claim and waits for its answer until the deadline. A 202
    /// promises the claim is durable, so nothing is answered before the
    /// broker acknowledges it; an acknowledgement not had by the deadline
    /// (refused, timed out, or merely slow) withdraws the claim before the
    /// 503, so a 503 claim is never paid.
    async fn queue_and_wait(&self) -> Response {
        let (tx, rx) = oneshot::channel();
        self.state.waiters.lock().expect("waiters").insert(self.claim_id, tx);
        // Removed however the request ends, also when the request timeout drops it.
        let _waiter = WaiterGuard {
            state: self.state,
            claim_id: self.claim_id,
        };
        let msg = ClaimMessage::Claim {
            claim_id: self.claim_id,
            client_id: self.key.client.clone(),
            account_id: self.account.to_string(),
            idempotency_key: self.key.key.clone(),
            accepted_at: self.accepted_at,
        };
        let payload = serde_json::to_vec(&msg).expect("serializable");
        let topic = self.state.settings.topic(kafka::CLAIMS);
        let send = self.state.producer.send(&topic, self.account.as_str(), &payload, None);
        match tokio::time::timeout_at(self.deadline, send).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(event = "claim_not_queued", error = %e);
                return self.withdraw().await;
            }
            Err(_) => {
                tracing::warn!(
                    event = "claim_not_queued",
                    error = "no acknowledgement by the claim's deadline"
                );
                return self.withdraw().await;
            }
        }
        match tokio::time::timeout_at(self.deadline, rx).await {
            Ok(Ok(done)) => done.response(),
            _ => self.accepted().await,
        }
    }

    /// Withdraws the claim: the worker, which checks the key under its lock,
    /// will not apply it. If the worker got there first, its answer is given
    /// instead. If the database cannot be reached either, the outcome is not
    /// known: 503 `claim_outcome_unknown`, and a retry with the same key
    /// learns it (it replays the answer, or withdraws the claim and claims anew).
    async fn withdraw(&self) -> Response {
        let release = store::release_key(&self.state.pools.claims, &self.key, self.claim_id);
        match tokio::time::timeout(SETTLE_STEP, release).await {
            Ok(Ok(true)) => refuse(
                "unavailable",
                503,
                "the claim could not be queued and was not accepted; retry with the same Idempotency-Key",
            ),
            Ok(Ok(false)) => self.answer_from_store().await,
            _ => self.outcome_unknown(),
        }
    }

    fn outcome_unknown(&self) -> Response {
        refuse(
            "claim_outcome_unknown",
            503,
            "whether the claim was accepted is not known yet; retry with the same Idempotency-Key to learn it",
        )
    }

    /// The claim's answer as the worker stored it; the outcome is unknown
    /// if it cannot be read.
    async fn answer_from_store(&self) -> Response {
        let ids = [self.claim_id];
        let read = store::load_claims(&self.state.pools.claims, &ids);
        match tokio::time::timeout(SETTLE_STEP, read).await {
            Ok(Ok(mut found)) => match found.pop().filter(|r| r.state == "done").as_ref().and_then(answered) {
                Some(done) => answer(&done, &self.account),
                // Not answered and no longer reserved for us: a later request took the key over.
                None => refuse(
                    "unavailable",
                    503,
                    "the claim was not accepted; retry with the same Idempotency-Key",
                ),
            },
            _ => self.outcome_unknown(),
        }
    }

    /// 202: durable, not finished — once the key records the claim as queued
    /// (then a retry answers 202 with the same `Location`, and `GET` finds it).
    /// If the worker answered meanwhile, that answer is given instead.
    async fn accepted(&self) -> Response {
        let day = business_date(self.accepted_at);
        let queue = store::queue_claim(
            &self.state.pools.claims,
            &self.key,
            self.claim_id,
            self.account.as_str(),
            self.accepted_at,
            day,
        );
        match tokio::time::timeout(SETTLE_STEP, queue).await {
            Ok(Ok(true)) => accepted_response(self.claim_id, &self.account, Some(self.accepted_at)),
            Ok(Ok(false)) => self.answer_from_store().await,
            Ok(Err(e)) => {
                tracing::warn!(event = "accepted_claim_not_recorded", error = format!("{e:#}"));
                self.outcome_unknown()
            }
            Err(_) => self.outcome_unknown(),
        }
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
        ClaimAnswer::Withdrawn => 503,
        ClaimAnswer::Failed => 500,
    }
}

/// The problem code of a refused claim; `None` when paid.
pub fn claim_code(a: &ClaimAnswer) -> Option<&'static str> {
    match a {
        ClaimAnswer::Paid(_) => None,
        ClaimAnswer::UnknownAccount => Some("unknown_account"),
        ClaimAnswer::KeyReused => Some("idempotency_key_reused"),
        ClaimAnswer::Refused(r) => Some(r.code()),
        ClaimAnswer::Withdrawn => Some(WITHDRAWN),
        ClaimAnswer::Failed => Some(FAILED),
    }
}

/// The code of a claim that could not be applied (a poison message).
const FAILED: &str = "claim_failed";

/// The code of a claim that was withdrawn and not applied.
const WITHDRAWN: &str = "claim_withdrawn";

/// The `claims_total{outcome}` label of a refused claim.
fn outcome_label(a: &ClaimAnswer) -> Option<&'static str> {
    match a {
        ClaimAnswer::Paid(_) => None,
        ClaimAnswer::UnknownAccount => Some("unknown_account"),
        ClaimAnswer::Refused(Refusal::AlreadyClaimedToday { .. }) => Some("conflict"),
        ClaimAnswer::KeyReused | ClaimAnswer::Refused(Refusal::NothingToClaim) => Some("unprocessable"),
        ClaimAnswer::Withdrawn => Some("unavailable"),
        ClaimAnswer::Failed => Some("failed"),
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
        ClaimAnswer::Withdrawn => problem(
            WITHDRAWN,
            status,
            "this claim was not applied and is not paid; retry with the same Idempotency-Key",
        ),
        ClaimAnswer::Failed => problem(
            FAILED,
            status,
            "this claim could not be applied and nothing was paid; a retry, with the same Idempotency-Key or another, is a new attempt",
        ),
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
        (503, Some(WITHDRAWN)) => ClaimAnswer::Withdrawn,
        (500, Some(FAILED)) => ClaimAnswer::Failed,
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

fn accepted_response(claim_id: Uuid, account: &AccountId, at: Option<DateTime<Utc>>) -> Response {
    let body = json!({
        "claim_id": claim_id, "account_id": account, "state": "accepted",
        "accepted_at": at.map(format_instant), "status": null, "payout": null, "problem": null,
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
    let Ok(_permit) = state.reads_in_flight.clone().try_acquire_owned() else {
        return problem_response("overloaded", 503, "too many reads in flight");
    };
    match store::load_claims(&state.pools.reads, &[id]).await {
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
            let mut l = PgListener::connect_with(&state.pools.claims).await?;
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

/// A worker's answer to a waiting request: the stored status and body
/// (JSON text, given as it is) and whether it replays an earlier answer.
#[derive(Debug)]
pub struct Done {
    pub status: u16,
    pub replayed: bool,
    pub body: String,
}

impl Done {
    fn response(self) -> Response {
        // The metric's label of a refusal (rare) is read from its small body.
        let label = match self.status {
            201 => None,
            s => serde_json::from_str::<Value>(&self.body)
                .ok()
                .and_then(|b| claim_from_stored(s as i16, &b))
                .as_ref()
                .and_then(outcome_label),
        };
        let mut resp = text_response(self.status, self.body, self.replayed);
        if let Some(label) = label {
            resp.extensions_mut().insert(Outcome(label));
        }
        resp
    }
}

/// Hands each answer of a notification to its waiting request (answers for
/// other processes' requests are skipped unparsed); returns the waited-for
/// claims sent as a bare id (their answer is read from `claims`).
fn hand_over(state: &ApiInner, payload: &str) -> Vec<Uuid> {
    let mut missing = Vec::new();
    let mut waiters = state.waiters.lock().expect("waiters");
    for item in store::parse_done(payload) {
        let Some(tx) = waiters.remove(&item.claim_id) else {
            continue;
        };
        match item.answer {
            Some(a) => {
                let _ = tx.send(Done {
                    status: a.status,
                    replayed: a.replayed,
                    body: a.body.to_owned(),
                });
            }
            None => {
                waiters.insert(item.claim_id, tx);
                missing.push(item.claim_id);
            }
        }
    }
    missing
}

async fn deliver(state: &ApiInner, ids: &[Uuid]) {
    match store::load_claims(&state.pools.claims, ids).await {
        Ok(records) => {
            let mut waiters = state.waiters.lock().expect("waiters");
            for r in records.iter().filter(|r| r.state == "done") {
                let (Some(status), Some(body)) = (r.status, &r.body) else {
                    continue;
                };
                if let Some(tx) = waiters.remove(&r.claim_id) {
                    let _ = tx.send(Done {
                        status: status as u16,
                        replayed: r.replayed,
                        body: body.to_string(),
                    });
                }
            }
        }
        Err(e) => tracing::warn!(event = "answer_fetch_failed", error = format!("{e:#}")),
    }
}

/// Keeps `db_healthy` current so claims get a fast 503 while the database is
/// away. It probes on its own pool: a busy claim pool is not an absent database.
pub async fn watch_database(state: ApiState, shutdown: tokio_util::sync::CancellationToken) {
    while !shutdown.is_cancelled() {
        let ok = store::ping(&state.pools.health, Duration::from_secs(1)).await;
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
    use super::{bearer_token, token_client};

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
    fn tokens_match_only_whole_and_name_their_client() {
        let clients = crate::config::parse_api_tokens("app:token-one,token-two").unwrap();
        assert_eq!(token_client(&clients, "token-one").unwrap().client_id, "app");
        assert_eq!(
            token_client(&clients, "token-two").unwrap().client_id,
            clients[1].client_id
        );
        for wrong in [
            "token-six",
            "token",
            "token-one-",
            "",
            "TOKEN-ONE",
            "app:token-one",
            "app",
        ] {
            assert!(token_client(&clients, wrong).is_none(), "{wrong:?}");
        }
        assert!(token_client(&[], "token-one").is_none());
    }
}
