//! `interest-now serve`: wires the API, the worker, the relay and the admin
//! port together, and stops them gracefully on SIGTERM.

use std::collections::HashMap;
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

use crate::config::{Clock, Settings};
use crate::kafka;
use crate::money::Plans;
use crate::service::api::{self, ApiInner, ApiState};
use crate::service::handoff::WorkerStatus;
use crate::service::http;
use crate::service::relay::{DeadLetterRelay, Relay};
use crate::service::worker::{Stream, Worker};
use crate::store;
use crate::telemetry::Metrics;

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
    if !store::ping(&a.pool, Duration::from_secs(1)).await {
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

/// What every part of the process shares.
struct Shared {
    settings: Settings,
    pool: PgPool,
    /// Readiness's own connections: "cannot serve", never "busy".
    health: PgPool,
    plans: Arc<RwLock<Arc<Plans>>>,
    metrics: Metrics,
    clock: Clock,
    producer: Arc<kafka::ResilientProducer>,
}

/// Runs until `shutdown` is cancelled, then drains and returns. A part that
/// stops (or panics) before shutdown was asked for stops the whole process
/// with an error, so the pod is restarted instead of running half alive.
pub async fn run(settings: Settings, role: Role, shutdown: CancellationToken) -> anyhow::Result<()> {
    let shared = connect(settings).await?;
    let settings = &shared.settings;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(reload_plans(
        shared.pool.clone(),
        shared.plans.clone(),
        Duration::from_secs(settings.plan_reload_secs),
        settings.default_plan.clone(),
        shutdown.clone(),
    ));
    let api_state = if role.api() {
        Some(api_state(&shared).await?)
    } else {
        None
    };
    let worker_status = role.worker().then(|| Arc::new(Mutex::new(WorkerStatus::default())));
    let admin = Admin {
        pool: shared.health.clone(),
        metrics: shared.metrics.clone(),
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
        spawn_worker_side(&mut tasks, &shared, status, &shutdown)?;
    }
    if let Some(state) = api_state {
        spawn_api_side(&mut tasks, state, &shutdown).await?;
    }
    tracing::info!(event = "serving", role = ?role, http = %settings.http_addr, admin = %settings.admin_addr);
    let failed = supervise(&mut tasks, &shutdown).await;
    admin_server.abort();
    // Flush anything the producer still holds (claims) before exit.
    use rdkafka::producer::Producer;
    let _ = shared.producer.get().flush(Duration::from_secs(5));
    tracing::info!(event = "stopped");
    match failed {
        Some(what) => Err(anyhow::anyhow!("{what}; stopped the process")),
        None => Ok(()),
    }
}

/// The database pool, the plans, the metrics, the clock and the producer.
async fn connect(settings: Settings) -> anyhow::Result<Shared> {
    let pool = store::connect(&settings.database_url, 16).await?;
    let health = store::connect(&settings.database_url, HEALTH_POOL_SIZE).await?;
    let plans = store::load_plans(&pool, settings.default_plan.as_deref()).await?;
    if plans.is_empty() {
        tracing::warn!(
            event = "no_plans",
            "no rate plans loaded; run `interest-now plans import`"
        );
    }
    let producer = {
        let s = settings.clone();
        Arc::new(kafka::ResilientProducer::new(move || kafka::producer(&s))?)
    };
    warm_up(&producer, &settings.topic(kafka::CLAIMS)).await;
    Ok(Shared {
        clock: Clock::new(settings.clock_offset_seconds),
        settings,
        pool,
        health,
        plans: Arc::new(RwLock::new(Arc::new(plans))),
        metrics: Metrics::new(),
        producer,
    })
}

/// Connects the producer and reads the claims topic's metadata before the
/// process reports ready, so its first claim does not spend its wait
/// (`CLAIM_WAIT_MS`) on them. Bounded; a broker away now is logged, not fatal.
async fn warm_up(producer: &kafka::ResilientProducer, topic: &str) {
    use rdkafka::producer::Producer;
    let (producer, topic) = (producer.get(), topic.to_owned());
    let fetched = tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .map(|_| ())
    })
    .await;
    if let Ok(Err(e)) = fetched {
        tracing::warn!(event = "producer_warm_up_failed", error = %e);
    }
}

/// Connections of the health pool (readiness and the API's database watch).
const HEALTH_POOL_SIZE: u32 = 2;

async fn api_state(shared: &Shared) -> anyhow::Result<ApiState> {
    let url = &shared.settings.database_url;
    let pools = api::ApiPools {
        claims: store::connect_as(
            url,
            api::CLAIM_POOL_SIZE,
            &store::Session {
                lock_timeout_ms: Some(api::KEY_LOCK_TIMEOUT_MS),
                ..store::Session::SERVICE
            },
        )
        .await?,
        reads: store::connect(url, api::READ_POOL_SIZE).await?,
        health: shared.health.clone(),
    };
    let reserver = crate::service::reserve::Reserver::start(pools.claims.clone(), shared.settings.idempotency_key_ttl);
    Ok(Arc::new(ApiInner {
        settings: shared.settings.clone(),
        reserver,
        pools,
        pool: shared.pool.clone(),
        reads_in_flight: Arc::new(Semaphore::new(api::READS_IN_FLIGHT_MAX)),
        producer: shared.producer.clone(),
        plans: shared.plans.clone(),
        clock: shared.clock,
        metrics: shared.metrics.clone(),
        waiters: Mutex::new(HashMap::new()),
        in_flight: Arc::new(Semaphore::new(shared.settings.claims_in_flight_max)),
        db_healthy: AtomicBool::new(true),
        accepting: AtomicBool::new(true),
    }))
}

/// One worker per input stream, the relay they hand committed payouts to,
/// and the dead-letter relay they wake.
fn spawn_worker_side(
    tasks: &mut tokio::task::JoinSet<()>,
    shared: &Shared,
    status: Arc<Mutex<WorkerStatus>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let settings = &shared.settings;
    let (relay_tx, relay_rx) = tokio::sync::mpsc::channel(crate::service::relay::RELAY_QUEUE_MAX);
    let dead_letters = Arc::new(tokio::sync::Notify::new());
    for stream in Stream::ALL {
        let worker = Worker {
            stream,
            settings: settings.clone(),
            pool: shared.pool.clone(),
            metrics: shared.metrics.clone(),
            plans: shared.plans.clone(),
            clock: shared.clock,
            status: status.clone(),
            relay: relay_tx.clone(),
            dead_letters: dead_letters.clone(),
        };
        let ws = shutdown.clone();
        tasks.spawn(async move {
            // An error ends the task before shutdown: `supervise` stops the process.
            if let Err(e) = worker.run(ws).await {
                tracing::error!(event = "worker_failed", error = format!("{e:#}"));
            }
        });
    }
    let relay = Relay {
        pool: shared.pool.clone(),
        producer: {
            let s = settings.clone();
            kafka::ResilientProducer::new(move || kafka::relay_producer(&s))?
        },
        topic: settings.topic(kafka::PAYOUTS),
        status,
        metrics: shared.metrics.clone(),
    };
    tasks.spawn(relay.run(relay_rx, shutdown.clone()));
    let dead_letter_relay = DeadLetterRelay {
        pool: shared.pool.clone(),
        producer: {
            let s = settings.clone();
            kafka::ResilientProducer::new(move || kafka::producer(&s))?
        },
        topic: settings.topic(kafka::SNAPSHOTS_DLQ),
        metrics: shared.metrics.clone(),
        wake: dead_letters,
    };
    tasks.spawn(dead_letter_relay.run(shutdown.clone()));
    Ok(())
}

/// The HTTP listener with its graceful drain, the answer listener and the
/// database watch.
async fn spawn_api_side(
    tasks: &mut tokio::task::JoinSet<()>,
    state: ApiState,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(state.settings.http_addr)
        .await
        .context("binding HTTP_ADDR")?;
    tasks.spawn(api::listen_for_answers(state.clone(), shutdown.clone()));
    tasks.spawn(api::watch_database(state.clone(), shutdown.clone()));
    let app = api::router(state.clone());
    let limits = http::Limits::from_settings(&state.settings);
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let graceful = async move {
            stop.cancelled().await;
            // Fail readiness and refuse new claims, let the balancer notice, then close.
            state.accepting.store(false, Ordering::Relaxed);
            tokio::time::sleep(API_DRAIN).await;
        };
        http::serve(listener, app, limits, graceful).await;
    });
    Ok(())
}

/// Waits for every task. The first one to end before shutdown was requested
/// (a panic, or a loop that returned) starts the shutdown of the rest and is
/// reported; the drain then proceeds as on SIGTERM.
async fn supervise(tasks: &mut tokio::task::JoinSet<()>, shutdown: &CancellationToken) -> Option<String> {
    let mut failed = None;
    while let Some(done) = tasks.join_next().await {
        let what = match done {
            Err(e) if e.is_panic() => "a task panicked".to_owned(),
            Err(e) => format!("a task was cancelled: {e}"),
            Ok(()) if !shutdown.is_cancelled() => "a task stopped before shutdown".to_owned(),
            Ok(()) => continue,
        };
        tracing::error!(event = "task_failed", detail = %what);
        failed.get_or_insert(what);
        shutdown.cancel();
    }
    failed
}

/// Reloads the plans every `PLAN_RELOAD_SECS` (imports must lead changes by
/// more: `store::PLAN_LEAD_SECS`); between reloads, `service::plans::covering`
/// reloads on demand when a stored account names a plan not loaded yet.
async fn reload_plans(
    pool: PgPool,
    plans: Arc<RwLock<Arc<Plans>>>,
    every: Duration,
    default: Option<String>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match store::load_plans(&pool, default.as_deref()).await {
            Ok(p) => *plans.write().expect("plans") = Arc::new(p),
            Err(e) => tracing::warn!(event = "plan_reload_failed", error = format!("{e:#}")),
        }
    }
}
