//! The API's HTTP server: hyper's HTTP/1.1 connections with the bounds
//! `axum::serve` lacks, so every request gets an answer in bounded time:
//!
//! * a header-read timer (`HTTP_HEADER_READ_TIMEOUT_MS`): a client that does
//!   not finish its request head in time is cut off (slowloris), and the same
//!   timer closes a keep-alive connection idle that long;
//! * a request timeout of `CLAIM_WAIT_MS` + [`ANSWER_MARGIN`]: past it the
//!   answer is 503 `unavailable` (with `Retry-After`), never a hang;
//! * a cap on requests in flight (`HTTP_REQUESTS_IN_FLIGHT_MAX`) with load
//!   shedding: over it, 503 `overloaded` at once;
//! * a cap on open connections (`HTTP_CONNECTIONS_MAX`): a connection over
//!   it is answered 503 `overloaded` and closed (at most
//!   [`OVER_CAP_CONNECTIONS_MAX`] of those at once, each for at most the
//!   header-read timeout; beyond that it is closed unanswered).
//!
//! The drain on shutdown: the listener closes when `stop` completes; open
//! connections finish their request in flight and close, within
//! [`Limits::drain_max`].

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::response::Response;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::{BoxError, ServiceBuilder};
use tower_http::trace::TraceLayer;

use crate::config::Settings;
use crate::service::api::problem_response;

/// Time the API may take beyond `CLAIM_WAIT_MS` to answer a request whose
/// head it has read (the 202's last look and record, the response write).
pub const ANSWER_MARGIN: Duration = Duration::from_secs(1);
/// Connections over `HTTP_CONNECTIONS_MAX` being answered 503 at once.
pub const OVER_CAP_CONNECTIONS_MAX: usize = 1_024;
/// Pause after a failed `accept` (out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The server's bounds, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub connections_max: usize,
    pub requests_in_flight_max: usize,
}

impl Limits {
    pub fn from_settings(s: &Settings) -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(s.http_header_read_timeout_ms),
            request_timeout: Duration::from_millis(s.claim_wait_ms) + ANSWER_MARGIN,
            connections_max: s.http_connections_max,
            requests_in_flight_max: s.http_requests_in_flight_max,
        }
    }

    /// How long the drain waits for open connections after the listener closed:
    /// a request in flight is answered within the request timeout.
    pub fn drain_max(&self) -> Duration {
        self.request_timeout + ANSWER_MARGIN
    }

    fn http1(&self, keep_alive: bool) -> http1::Builder {
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .keep_alive(keep_alive);
        b
    }
}

/// The answer of a request the layers refused: shed or timed out.
async fn refused(e: BoxError) -> Response {
    if e.is::<tower::load_shed::error::Overloaded>() {
        tracing::warn!(event = "http_shed", "requests in flight at HTTP_REQUESTS_IN_FLIGHT_MAX");
        problem_response("overloaded", 503, "too many requests in flight")
    } else if e.is::<tower::timeout::error::Elapsed>() {
        tracing::warn!(event = "http_request_timeout");
        problem_response(
            "unavailable",
            503,
            "no answer in time; retry (a claim with the same Idempotency-Key)",
        )
    } else {
        tracing::error!(event = "http_layer_failed", error = %e);
        problem_response("internal", 500, "internal error")
    }
}

/// Serves `app` on `listener` until `stop` completes, then drains.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, stop: impl Future<Output = ()>) {
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(HandleErrorLayer::new(refused))
        .timeout(limits.request_timeout)
        .load_shed()
        .concurrency_limit(limits.requests_in_flight_max)
        .service(app);
    let svc = TowerToHyperService::new(svc);
    let builder = limits.http1(true);
    let connections = Arc::new(Semaphore::new(limits.connections_max));
    let over_cap = Arc::new(Semaphore::new(OVER_CAP_CONNECTIONS_MAX));
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(event = "accept_failed", error = %e);
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            if let Ok(permit) = over_cap.clone().try_acquire_owned() {
                tokio::spawn(answer_over_cap(stream, limits, permit));
            }
            continue;
        };
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc.clone()));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_max(), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(event = "http_drain_incomplete");
    }
}

/// A connection over `HTTP_CONNECTIONS_MAX`: one 503 `overloaded`, then closed.
async fn answer_over_cap(stream: TcpStream, limits: Limits, _permit: tokio::sync::OwnedSemaphorePermit) {
    tracing::warn!(event = "http_connections_full", "connections at HTTP_CONNECTIONS_MAX");
    let svc = hyper::service::service_fn(|_req| async {
        Ok::<_, Infallible>(problem_response("overloaded", 503, "too many connections"))
    });
    let conn = limits.http1(false).serve_connection(TokioIo::new(stream), svc);
    let _ = tokio::time::timeout(limits.header_read_timeout + ANSWER_MARGIN, conn).await;
}
