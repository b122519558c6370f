//! Logs (tracing, one line per event) and Prometheus metrics (SPEC §9).
//! Metric names carry units last and never an account id as a label.

use prometheus::{
    register_histogram_vec_with_registry, register_int_counter_vec_with_registry, register_int_counter_with_registry,
    register_int_gauge_vec_with_registry, register_int_gauge_with_registry, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Registry,
};

pub fn init_logs() {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn"));
    // Logs go to stderr: stdout carries command output (reports, JSON lines).
    let _ = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .json()
        .flatten_event(true)
        .try_init();
}

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub claims_total: IntCounterVec,
    pub claim_duration_seconds: HistogramVec,
    pub snapshots_total: IntCounterVec,
    pub payouts_total: IntCounterVec,
    pub outbox_pending: IntGauge,
    pub consumer_lag: IntGaugeVec,
    pub worker_batch_size: HistogramVec,
    pub idempotent_replays_total: IntCounterVec,
    pub dead_letters: DeadLetterMetrics,
}

/// Poison messages and the dead-letter outbox (issue 15 item 4).
#[derive(Clone)]
pub struct DeadLetterMetrics {
    /// Messages the worker could not apply and moved aside.
    pub poison_messages_total: IntCounterVec,
    /// Dead letters committed but not yet published to the DLQ topic.
    pub pending: IntGauge,
    /// Failed deliveries to the DLQ topic (the rows stay pending and are retried).
    pub publish_failures_total: IntCounter,
}

impl DeadLetterMetrics {
    fn register(r: &Registry) -> DeadLetterMetrics {
        DeadLetterMetrics {
            poison_messages_total: register_int_counter_vec_with_registry!(
                "poison_messages_total",
                "Messages that failed deterministically on their own and were moved aside, by topic",
                &["topic"],
                r
            )
            .expect("metric"),
            pending: register_int_gauge_with_registry!(
                "dead_letters_pending",
                "Dead letters written but not yet published to balance-snapshots.dlq",
                r
            )
            .expect("metric"),
            publish_failures_total: register_int_counter_with_registry!(
                "dead_letter_publish_failures_total",
                "Dead letters the broker did not acknowledge (they stay pending and are retried)",
                r
            )
            .expect("metric"),
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        Metrics {
            claims_total: register_int_counter_vec_with_registry!(
                "interest_claims_total",
                "Claims answered, by outcome (the problem code, or paid/accepted)",
                &["outcome"],
                r
            )
            .expect("metric"),
            claim_duration_seconds: register_histogram_vec_with_registry!(
                "interest_claim_duration_seconds",
                "Time from accepting a claim to answering it",
                &["role"],
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0],
                r
            )
            .expect("metric"),
            snapshots_total: register_int_counter_vec_with_registry!(
                "balance_snapshots_total",
                "Balance snapshots consumed, by outcome (applied, duplicate, late, rejected)",
                &["outcome"],
                r
            )
            .expect("metric"),
            payouts_total: register_int_counter_vec_with_registry!(
                "interest_payouts_total",
                "Payouts written, by kind (claim, auto)",
                &["kind"],
                r
            )
            .expect("metric"),
            outbox_pending: register_int_gauge_with_registry!(
                "outbox_pending",
                "Payouts written but not yet published to interest-payouts",
                r
            )
            .expect("metric"),
            consumer_lag: register_int_gauge_vec_with_registry!(
                "kafka_consumer_lag",
                "Messages behind the high watermark, per owned partition",
                &["topic", "partition"],
                r
            )
            .expect("metric"),
            worker_batch_size: register_histogram_vec_with_registry!(
                "worker_batch_size",
                "Messages applied per worker transaction",
                &["role"],
                vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0],
                r
            )
            .expect("metric"),
            idempotent_replays_total: register_int_counter_vec_with_registry!(
                "idempotent_replays_total",
                "Claims answered by replaying the first answer for their Idempotency-Key",
                &["status"],
                r
            )
            .expect("metric"),
            dead_letters: DeadLetterMetrics::register(r),
            registry,
        }
    }

    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encode metrics");
        String::from_utf8(buf).expect("utf-8 metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
