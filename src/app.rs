//! `interest-now serve`: wires the API, the worker, the relay and the admin
//! port together, and stops them gracefully on SIGTERM.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiInner, ApiState};
use crate::config::{Clock, Settings};
use crate::handoff::WorkerStatus;
use crate::kafka;
use crate::money::Plans;
use crate::outbox::Relay;
use crate::repo;
use crate::telemetry::Metrics;
use crate::worker::{Stream, Worker};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Api,
    Worker,
    All,
}

impl Role {
    fn api(self) -> bool {
        matches!(self, Role::Api | Role::All)
    }
    fn worker(self) -> bool {
        matches!(self, Role::Worker | Role::All)
    }
}

/// How long the API keeps answering after SIGTERM while readiness already
/// fails, so load balancers stop sending before the listener closes.
const API_DRAIN: Duration = Duration::from_secs(2);
/// Plans are reloaded this often (imports must lead changes by more: repo::PLAN_LEAD_SECS).
const PLAN_RELOAD: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Admin {
    pool: PgPool,
    metrics: Metrics,
    api: Option<ApiState>,
    worker: Option<Arc<Mutex<WorkerStatus>>>,
    stopping: CancellationToken,
}

/// Messages behind before a worker reports ready.
const READY_LAG_MAX: i64 = 10_000;

async fn readyz(State(a): State<Admin>) -> (StatusCode, String) {
    if a.stopping.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping".into());
    }
    let db = tokio::time::timeout(Duration::from_secs(1), sqlx::query("SELECT 1").execute(&a.pool)).await;
    if !db.is_ok_and(|r| r.is_ok()) {
        return (StatusCode::SERVICE_UNAVAILABLE, "database unreachable".into());
    }
    if let Some(w) = &a.worker {
        let s = w.lock().expect("status");
        if !s.joined() {
            return (StatusCode::SERVICE_UNAVAILABLE, "not yet in the consumer group".into());
        }
        if s.lag() > READY_LAG_MAX {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("catching up: {} messages behind", s.lag()),
            );
        }
    }
    if let Some(api) = &a.api {
        if !api.accepting.load(Ordering::Relaxed) {
            return (StatusCode::SERVICE_UNAVAILABLE, "draining".into());
        }
    }
    (StatusCode::OK, "ready".into())
}

fn admin_router(admin: Admin) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(a): State<Admin>| async move { a.metrics.render() }),
        )
        .with_state(admin)
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub fn on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!(event = "shutdown_requested");
        token.cancel();
    });
}

pub async fn serve(settings: Settings, role: Role) -> anyhow::Result<()> {
    if role.api() {
        settings.require_api_tokens()?;
    }
    let shutdown = CancellationToken::new();
    on_signal(shutdown.clone());
    run(settings, role, shutdown).await
}

/// Runs until `shutdown` is cancelled, then drains and returns.
pub async fn run(settings: Settings, role: Role, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = repo::connect(&settings.database_url, 16).await?;
    let plans = repo::load_plans(&pool, settings.default_plan.as_deref()).await?;
    if plans.is_empty() {
        tracing::warn!(
            event = "no_plans",
            "no rate plans loaded; run `interest-now plans import`"
        );
    }
    let plans = Arc::new(RwLock::new(Arc::new(plans)));
    let metrics = Metrics::new();
    let clock = Clock::new(settings.clock_offset_seconds);
    let producer = {
        let s = settings.clone();
        Arc::new(kafka::ResilientProducer::new(move || kafka::producer(&s))?)
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(reload_plans(
        pool.clone(),
        plans.clone(),
        settings.default_plan.clone(),
        shutdown.clone(),
    ));

    let api_state = role.api().then(|| {
        Arc::new(ApiInner {
            settings: settings.clone(),
            pool: pool.clone(),
            producer: producer.clone(),
            plans: plans.clone(),
            clock,
            metrics: metrics.clone(),
            waiters: Mutex::new(HashMap::new()),
            in_flight: Arc::new(Semaphore::new(settings.claims_in_flight_max)),
            keys_in_flight: Mutex::new(HashSet::new()),
            db_healthy: AtomicBool::new(true),
            accepting: AtomicBool::new(true),
        })
    });
    let worker_status = role.worker().then(|| Arc::new(Mutex::new(WorkerStatus::default())));
    let admin = Admin {
        pool: pool.clone(),
        metrics: metrics.clone(),
        api: api_state.clone(),
        worker: worker_status.clone(),
        stopping: shutdown.clone(),
    };
    let admin_listener = TcpListener::bind(settings.admin_addr)
        .await
        .context("binding ADMIN_ADDR")?;
    // The admin port stays up through the drain (readiness reports "stopping") and goes with the process.
    let admin_server = tokio::spawn(async move {
        let _ = axum::serve(admin_listener, admin_router(admin)).await;
    });

    if let Some(status) = worker_status {
        let (relay_tx, relay_rx) = tokio::sync::mpsc::channel(crate::outbox::RELAY_QUEUE_MAX);
        let workers: Vec<Worker> = Stream::ALL
            .into_iter()
            .map(|stream| Worker {
                stream,
                settings: settings.clone(),
                pool: pool.clone(),
                producer: producer.clone(),
                metrics: metrics.clone(),
                plans: plans.clone(),
                clock,
                status: status.clone(),
                relay: relay_tx.clone(),
            })
            .collect();
        drop(relay_tx);
        let relay = Relay {
            pool: pool.clone(),
            producer: {
                let s = settings.clone();
                kafka::ResilientProducer::new(move || kafka::relay_producer(&s))?
            },
            topic: settings.topic(kafka::PAYOUTS),
            status,
            metrics: metrics.clone(),
        };
        for worker in workers {
            let ws = shutdown.clone();
            tasks.spawn(async move {
                if let Err(e) = worker.run(ws.clone()).await {
                    tracing::error!(event = "worker_failed", error = format!("{e:#}"));
                    ws.cancel();
                }
            });
        }
        let rs = shutdown.clone();
        tasks.spawn(relay.run(relay_rx, rs));
    }

    if let Some(state) = api_state {
        let listener = TcpListener::bind(settings.http_addr)
            .await
            .context("binding HTTP_ADDR")?;
        tasks.spawn(api::listen_for_answers(state.clone(), shutdown.clone()));
        tasks.spawn(api::watch_database(state.clone(), shutdown.clone()));
        let app = api::router(state.clone());
        let stop = shutdown.clone();
        let drain_state = state.clone();
        tasks.spawn(async move {
            let graceful = async move {
                stop.cancelled().await;
                // Fail readiness and refuse new claims, let the balancer notice, then close.
                drain_state.accepting.store(false, Ordering::Relaxed);
                tokio::time::sleep(API_DRAIN).await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(graceful).await {
                tracing::error!(event = "http_failed", error = %e);
            }
        });
    }
    tracing::info!(event = "serving", role = ?role, http = %settings.http_addr, admin = %settings.admin_addr);
    while tasks.join_next().await.is_some() {}
    admin_server.abort();
    // Flush anything the producer still holds (DLQ, payouts) before exit.
    use rdkafka::producer::Producer;
    let _ = producer.get().flush(Duration::from_secs(5));
    tracing::info!(event = "stopped");
    Ok(())
}

async fn reload_plans(pool: PgPool, plans: Arc<RwLock<Arc<Plans>>>, default: Option<String>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PLAN_RELOAD) => {}
        }
        match repo::load_plans(&pool, default.as_deref()).await {
            Ok(p) => *plans.write().expect("plans") = Arc::new(p),
            Err(e) => tracing::warn!(event = "plan_reload_failed", error = format!("{e:#}")),
        }
    }
}
