//! The tests' view of the shared harness (`harness/`, crate
//! `interest-now-harness`, which the dev tool `xtask` uses too): a fresh
//! PostgreSQL database and a fresh set of topics (by prefix) on the local
//! broker per test, and the service as real child processes on free loopback
//! ports. This module only fixes the tests' defaults (this crate's binary,
//! the suite's clock, tokens) and turns the harness's errors into panics.
//!
//! Needs `scripts/infra-up` (the README's test command runs it).
//!
//! Time: every test reads "now" from [`now`], the suite's clock, and every
//! process the harness starts gets the same clock through
//! `CLOCK_OFFSET_SECONDS`. `TEST_CLOCK_AT` (RFC 3339) places the whole run at
//! that instant (the suite then runs forward from it): `scripts/test-dates`
//! runs the time-sensitive tests at a rate change, a month end, a leap day
//! and one second before New Year, so no test may depend on today's date.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use interest_now_harness as harness;
pub use interest_now_harness::clock::{now, offset_to, suite_offset};
pub use interest_now_harness::{client, free_addr, Answer, Api, PrivateBroker, Record, Service};
use sqlx::{PgPool, Row};

pub const TOKEN: &str = "test-token-1";

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn admin_db_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A test's environment: the harness's [`harness::Env`] with panicking methods.
pub struct Env(harness::Env);

impl std::ops::Deref for Env {
    type Target = harness::Env;
    fn deref(&self) -> &harness::Env {
        &self.0
    }
}

impl Env {
    /// A fresh database (migrated, example plans imported) and fresh topics.
    pub async fn new(partitions: i32) -> Env {
        Self::with_brokers(partitions, brokers()).await
    }

    /// A fresh environment on a given broker (a private one, for broker faults).
    pub async fn with_brokers(partitions: i32, brokers: String) -> Env {
        let spec = harness::Spec {
            product: harness::Product {
                // `DRILL_PRODUCT_BIN`: run a drill against another build of
                // the service (a before/after pair); the suite's own otherwise.
                bin: std::env::var_os("DRILL_PRODUCT_BIN")
                    .filter(|b| !b.is_empty())
                    .map(Into::into)
                    .unwrap_or_else(|| env!("CARGO_BIN_EXE_interest-now").into()),
                dir: env!("CARGO_MANIFEST_DIR").into(),
            },
            admin_db_url: admin_db_url(),
            brokers,
            name: format!("it_{}", uuid::Uuid::new_v4().simple()),
            partitions,
            plans_json: include_str!("../../examples/plans.json").to_owned(),
            tokens: vec![TOKEN.to_owned(), "other-token".to_owned()],
            clock_offset_secs: suite_offset(),
            env: vec![
                ("CLAIM_WAIT_MS".to_owned(), "5000".to_owned()),
                ("RUST_LOG".to_owned(), "info,rdkafka=warn,sqlx=warn".to_owned()),
            ],
            log_dir: std::env::temp_dir(),
        };
        Env(harness::Env::create(spec)
            .await
            .expect("a fresh environment (run scripts/infra-up)"))
    }

    /// Starts `serve --role ROLE` and waits until it is ready.
    pub async fn serve(&self, role: &str, extra: &[(&str, &str)]) -> Service {
        self.0.serve(role, extra).await.unwrap()
    }

    /// Like `serve`, on a given HTTP address (to restart an API where clients expect it).
    pub async fn serve_on(&self, role: &str, http: SocketAddr, extra: &[(&str, &str)]) -> Service {
        self.0.serve_on(role, http, extra).await.unwrap()
    }

    /// The binary with this environment's configuration.
    pub fn command(&self, args: &[&str]) -> Command {
        self.0.command(args)
    }

    pub async fn produce(&self, topic: &str, key: &str, payload: &str) {
        self.0.produce(topic, key, payload).await.expect("produce");
    }

    /// A snapshot on the default plan.
    pub async fn snapshot(&self, account: &str, seq: u64, balance: &str, as_of: &str) {
        let json = format!(
            r#"{{"account_id":"{account}","seq":{seq},"balance":"{balance}","currency":"KRW","as_of":"{as_of}"}}"#
        );
        self.produce("balance-snapshots", account, &json).await;
    }

    /// A snapshot that names its rate plan.
    pub async fn snapshot_on(&self, plan: &str, account: &str, seq: u64, balance: &str, as_of: &str) {
        let json = format!(
            r#"{{"account_id":"{account}","seq":{seq},"balance":"{balance}","currency":"KRW","as_of":"{as_of}","plan":"{plan}"}}"#
        );
        self.produce("balance-snapshots", account, &json).await;
    }

    /// Imports a plan file (JSON text) with `plans import`, on the suite's clock.
    pub fn import_plans(&self, json: &str) {
        self.0.import_plans(json).expect("plans import");
    }

    /// Waits until `sql` (returning one bigint) yields `want` (30 s at most).
    pub async fn wait_count(&self, sql: &str, want: i64) {
        self.0.wait_count(sql, want, Duration::from_secs(30)).await.unwrap();
    }

    /// Waits until the account exists (its first snapshot was applied).
    pub async fn wait_accounts(&self, n: i64) {
        self.wait_count("SELECT count(*) FROM accounts", n).await;
    }

    pub async fn payout_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM interest_payouts")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Reads every message of a topic from the beginning (bounded wait).
    pub fn read_topic(&self, name: &str, want: usize) -> Vec<Record> {
        self.read_topic_until(name, |records| records.len() >= want)
    }

    /// Reads a topic from the beginning until `done` holds (bounded wait).
    pub fn read_topic_until(&self, name: &str, done: impl Fn(&[Record]) -> bool) -> Vec<Record> {
        self.0.read_topic_until(name, done).expect("read topic")
    }

    pub async fn drop_db(self) {
        self.0.drop_db().await;
    }
}

/// Every payout row, as (account, kind, business_date, gross, net).
pub async fn payout_rows(pool: &PgPool) -> Vec<(String, String, String, String, String)> {
    sqlx::query(
        "SELECT account_id, kind, business_date::text, gross::text, net::text FROM interest_payouts
         ORDER BY account_id, period_start",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}
