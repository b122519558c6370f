//! The API always answers (src/service/http.rs): a client that sends its
//! request head slowly is cut off after `HTTP_HEADER_READ_TIMEOUT_MS`, idle
//! connections (fresh or kept alive) are closed after it, a flood of them
//! does not keep a real client from its answer, a connection over
//! `HTTP_CONNECTIONS_MAX` and a request over `HTTP_REQUESTS_IN_FLIGHT_MAX`
//! get the API's 503 `overloaded` problem, and a claim is answered within
//! `CLAIM_WAIT_MS` + 1 s.
//!
//! How each was checked to fail without the fix: with `axum::serve` back in
//! `app.rs::spawn_api_side` (no timer, so no header-read timeout; no caps),
//! the slow client and the idle connections are never closed, and the
//! over-cap connection and the request past the in-flight cap are served
//! instead of 503; each assertion below names which.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{now, Env, Service, TOKEN};

/// The header-read timeout the tests run with.
const HEADER_READ_TIMEOUT_MS: u64 = 1_000;
/// Slack on a shared CI machine over every stated bound.
const SLACK: Duration = Duration::from_secs(2);
/// Idle connections in the flood (loopback; well under the default cap).
const IDLE_FLOOD: usize = 300;

async fn start(role: &str, extra: &[(&str, &str)]) -> (Env, Service) {
    let env = Env::new(1).await;
    let timeout = HEADER_READ_TIMEOUT_MS.to_string();
    let mut all = vec![("HTTP_HEADER_READ_TIMEOUT_MS", timeout.as_str())];
    all.extend_from_slice(extra);
    let svc = env.serve(role, &all).await;
    if role == "all" {
        // An hour of interest on a million won: a claim has something to pay.
        let at = interest_now::money::types::format_instant(now() - chrono::Duration::hours(1));
        env.snapshot("known-acct", 1, "1000000", &at).await;
        env.wait_accounts(1).await;
    }
    (env, svc)
}

/// Waits until the server closes `conn` (EOF or reset), reading and dropping
/// whatever it sends, and writing one byte of `drip` every 200 ms. Returns
/// how long that took, or `None` if it is still open after `limit`.
async fn closed_within(conn: &mut TcpStream, drip: &[u8], limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut drip = drip.iter();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        if let Some(b) = drip.next() {
            if conn.write_all(&[*b]).await.is_err() {
                return Some(started.elapsed());
            }
        }
        match tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    None
}

/// A normal claim, answered in time with one of the promised statuses.
async fn claim_answered(svc: &Service, key: &str, claim_wait: Duration) {
    let started = Instant::now();
    let a = svc.claim("known-acct", key).await;
    assert!([201, 202].contains(&a.status), "claim: {a:?}");
    assert!(
        started.elapsed() < claim_wait + Duration::from_secs(1) + SLACK,
        "claim took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_client_is_cut_off_while_others_are_answered() {
    let (env, svc) = start("all", &[]).await;
    let mut slow = TcpStream::connect(svc.http).await.unwrap();
    // A request head that never ends: one byte every 200 ms.
    let head =
        "POST /v1/accounts/known-acct/interest/claims HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_owned() + &"s".repeat(100);
    let limit = Duration::from_millis(HEADER_READ_TIMEOUT_MS) + SLACK;
    let (closed, ()) = tokio::join!(closed_within(&mut slow, head.as_bytes(), limit), async {
        claim_answered(&svc, "slow-header-neighbour", Duration::from_secs(5)).await;
    });
    // Without the fix: None (axum::serve never times a request head out).
    assert!(closed.is_some(), "the slow client was still connected after {limit:?}");
    drop(svc);
    env.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_neither_blocks_clients_nor_stays() {
    let (env, svc) = start("all", &[]).await;
    let mut idle = Vec::with_capacity(IDLE_FLOOD);
    for _ in 0..IDLE_FLOOD {
        idle.push(TcpStream::connect(svc.http).await.unwrap());
    }
    // Real clients are answered while the flood is open.
    claim_answered(&svc, "idle-flood-neighbour", Duration::from_secs(5)).await;
    let view = svc.get("/v1/accounts/known-acct/interest").await;
    assert_eq!(view.status, 200, "{view:?}");
    // A kept-alive connection that goes idle after its answer is closed too.
    let mut kept = TcpStream::connect(svc.http).await.unwrap();
    let get = format!("GET /v1/claims/not-a-uuid HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    kept.write_all(get.as_bytes()).await.unwrap();
    idle.push(kept);
    // Every idle connection is closed by the server after the header-read timeout.
    // Without the fix: none is (no timer), and this fails at the first.
    let limit = Duration::from_millis(HEADER_READ_TIMEOUT_MS) + SLACK;
    for (i, conn) in idle.iter_mut().enumerate() {
        let closed = closed_within(conn, b"", limit).await;
        assert!(closed.is_some(), "idle connection {i} still open after {limit:?}");
    }
    drop(svc);
    env.drop_db().await;
}

/// Sends a raw GET on a fresh connection; returns the response head and body.
async fn raw_get(http: SocketAddr, path: &str) -> String {
    let mut conn = TcpStream::connect(http).await.unwrap();
    let get = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n");
    conn.write_all(get.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "no answer within 5 s");
    String::from_utf8_lossy(&out).into_owned()
}

fn assert_overloaded(resp: &str, what: &str) {
    let lower = resp.to_ascii_lowercase();
    assert!(resp.starts_with("HTTP/1.1 503"), "{what}: {resp}");
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{what}: {resp}"
    );
    assert!(lower.contains("retry-after: 1"), "{what}: {resp}");
    assert!(resp.contains(r#""code":"overloaded""#), "{what}: {resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_cap_clients_get_503_overloaded_until_idle_ones_are_closed() {
    let (env, svc) = start("api", &[("HTTP_CONNECTIONS_MAX", "20")]).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(svc.http).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // the server has accepted them
    let path = format!("/v1/claims/{}", uuid::Uuid::nil());
    // Without the fix: 404 unknown_claim (no cap).
    assert_overloaded(&raw_get(svc.http, &path).await, "over the connection cap");
    // The idle ones are closed after the header-read timeout; then clients are served.
    tokio::time::sleep(Duration::from_millis(HEADER_READ_TIMEOUT_MS) + Duration::from_millis(500)).await;
    let served = raw_get(svc.http, &path).await;
    assert!(served.starts_with("HTTP/1.1 404"), "{served}");
    drop(idle);
    drop(svc);
    env.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_in_flight_cap_requests_are_shed_with_503_overloaded() {
    // No worker: the claim waits its whole CLAIM_WAIT_MS, holding the one slot.
    let (env, svc) = start(
        "api",
        &[("HTTP_REQUESTS_IN_FLIGHT_MAX", "1"), ("CLAIM_WAIT_MS", "2000")],
    )
    .await;
    let (claim, shed) = tokio::join!(
        claim_answered(&svc, "in-flight-holder", Duration::from_secs(2)),
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            raw_get(svc.http, &format!("/v1/claims/{}", uuid::Uuid::nil())).await
        }
    );
    let () = claim;
    // Without the fix: 404 unknown_claim (no in-flight cap).
    assert_overloaded(&shed, "over the in-flight cap");
    drop(svc);
    env.drop_db().await;
}
