//! The real thing for integration tests: a fresh PostgreSQL database and a
//! fresh set of topics (by prefix) on the local broker per test, and the
//! service as real child processes on free loopback ports.
//!
//! Needs `scripts/infra-up` (the README's test command runs it).
//!
//! Time: every test reads "now" from [`now`], the suite's clock, and every
//! process the harness starts gets the same clock through
//! `CLOCK_OFFSET_SECONDS`. `TEST_CLOCK_AT` (RFC 3339) places the whole run at
//! that instant (the suite then runs forward from it): `scripts/test-dates`
//! runs the time-sensitive tests at a rate change, a month end, a leap day
//! and one second before New Year, so no test may depend on today's date.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use sqlx::{PgPool, Row};

pub const TOKEN: &str = "test-token-1";

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn admin_db_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Seconds between the suite's clock and the system clock, fixed at the first
/// reading: 0, or what places the run at `TEST_CLOCK_AT`.
static SUITE_OFFSET: LazyLock<i64> = LazyLock::new(|| match std::env::var("TEST_CLOCK_AT") {
    Ok(at) if !at.is_empty() => {
        let at = DateTime::parse_from_rfc3339(&at)
            .unwrap_or_else(|e| panic!("TEST_CLOCK_AT={at:?} is not an RFC 3339 instant: {e}"));
        (at.with_timezone(&Utc) - Utc::now()).num_seconds()
    }
    _ => 0,
});

/// The suite's offset from the system clock, in whole seconds (what the
/// harness passes as `CLOCK_OFFSET_SECONDS`).
pub fn suite_offset() -> i64 {
    *SUITE_OFFSET
}

/// "Now" on the suite's clock: the instant the service processes read.
pub fn now() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::seconds(suite_offset())
}

/// `CLOCK_OFFSET_SECONDS` that makes a process's clock read `at` now.
pub fn offset_to(at: DateTime<Utc>) -> String {
    (at - Utc::now()).num_seconds().to_string()
}

pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A consumed message: key, JSON value, headers.
pub type Record = (Option<String>, Value, Vec<(String, String)>);

pub struct Env {
    pub brokers: String,
    pub name: String,
    pub db_url: String,
    pub prefix: String,
    pub pool: PgPool,
    pub producer: FutureProducer,
    pub partitions: i32,
}

impl Env {
    /// A fresh database (migrated, example plans imported) and fresh topics.
    pub async fn new(partitions: i32) -> Env {
        Self::with_brokers(partitions, brokers()).await
    }

    /// A fresh environment on a given broker (a private one, for broker faults).
    pub async fn with_brokers(partitions: i32, brokers: String) -> Env {
        let name = format!("it_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPool::connect(&admin_db_url())
            .await
            .expect("PostgreSQL at TEST_DATABASE_URL (run scripts/infra-up)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let db_url = admin_db_url()
            .rsplit_once('/')
            .map(|(base, _)| format!("{base}/{name}"))
            .unwrap();
        let pool = PgPool::connect(&db_url).await.unwrap();
        interest_now::repo::migrate(&pool).await.unwrap();
        let env = Env {
            brokers: brokers.clone(),
            prefix: format!("{name}."),
            name,
            db_url,
            pool,
            producer: ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("partitioner", "murmur2_random")
                .set("message.timeout.ms", "10000")
                .create()
                .unwrap(),
            partitions,
        };
        env.create_topics().await;
        let out = env
            .command(&["plans", "import", "examples/plans.json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "plans import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        env
    }

    async fn create_topics(&self) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .unwrap();
        let names: Vec<String> = [
            "balance-snapshots",
            "balance-snapshots.dlq",
            "interest-claims",
            "interest-payouts",
        ]
        .iter()
        .map(|t| self.topic(t))
        .collect();
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|n| NewTopic::new(n, self.partitions, TopicReplication::Fixed(1)))
            .collect();
        let results = admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .expect("create topics");
        for r in results {
            r.expect("topic created");
        }
    }

    pub fn topic(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    /// The binary with this environment's configuration.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_interest-now"));
        c.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .env("DATABASE_URL", &self.db_url)
            .env("KAFKA_BROKERS", &self.brokers)
            .env("KAFKA_TOPIC_PREFIX", &self.prefix)
            .env("KAFKA_GROUP_ID", format!("{}-group", self.name))
            .env("API_TOKENS", format!("{TOKEN},other-token"))
            .env("CLAIM_WAIT_MS", "5000")
            .env("CLOCK_OFFSET_SECONDS", suite_offset().to_string())
            .env("RUST_LOG", "info,rdkafka=warn,sqlx=warn");
        c
    }

    /// Starts `serve --role ROLE` and waits until it is ready.
    pub async fn serve(&self, role: &str, extra: &[(&str, &str)]) -> Service {
        self.serve_on(role, free_addr(), extra).await
    }

    /// Like `serve`, on a given HTTP address (to restart an API where clients expect it).
    pub async fn serve_on(&self, role: &str, http: SocketAddr, extra: &[(&str, &str)]) -> Service {
        let admin = free_addr();
        let log =
            std::fs::File::create(std::env::temp_dir().join(format!("{}-{role}-{}.log", self.name, admin.port())))
                .unwrap();
        let mut cmd = self.command(&["serve", "--role", role]);
        cmd.env("HTTP_ADDR", http.to_string())
            .env("ADMIN_ADDR", admin.to_string());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let svc = Service {
            child,
            admin,
            api: Api {
                http,
                client: reqwest::Client::new(),
            },
        };
        svc.wait_ready().await;
        svc
    }

    pub async fn produce(&self, topic: &str, key: &str, payload: &str) {
        let topic = self.topic(topic);
        self.producer
            .send(
                FutureRecord::to(&topic).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
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
        let path = std::env::temp_dir().join(format!("{}-{}-plans.json", self.name, uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, json).unwrap();
        let out = self
            .command(&["plans", "import", path.to_str().unwrap()])
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(
            out.status.success(),
            "plans import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until `sql` (returning one bigint) yields `want`.
    pub async fn wait_count(&self, sql: &str, want: i64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap();
            if n == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {sql} = {want} (now {n})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set(
                "group.id",
                format!("{}-reader-{}", self.name, uuid::Uuid::new_v4().simple()),
            )
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer.subscribe(&[&self.topic(name)]).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(&out) && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                let payload = m
                    .payload()
                    .map(|p| serde_json::from_slice(p).unwrap_or(Value::Null))
                    .unwrap_or(Value::Null);
                out.push((key, payload, headers));
            }
        }
        out
    }

    pub async fn drop_db(self) {
        self.pool.close().await;
        if let Ok(admin) = PgPool::connect(&admin_db_url()).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
                .execute(&admin)
                .await;
        }
    }
}

pub struct Service {
    pub child: Child,
    pub admin: SocketAddr,
    pub api: Api,
}

/// A client for one API process; cheap to clone into tasks.
#[derive(Clone)]
pub struct Api {
    pub http: SocketAddr,
    pub client: reqwest::Client,
}

impl std::ops::Deref for Service {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// An HTTP answer: status, headers of interest, JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub replayed: bool,
    pub location: Option<String>,
    pub content_type: String,
    pub retry_after: Option<String>,
    pub body: Value,
}

impl Service {
    pub async fn wait_ready(&self) {
        wait_ready(&self.client, self.admin).await;
    }

    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for exit after SIGTERM; returns how long it took.
    pub fn wait_exit(&mut self, limit: Duration) -> Duration {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return t.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("service did not exit within {limit:?}");
    }
}

pub async fn wait_ready(client: &reqwest::Client, admin: SocketAddr) {
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let url = format!("http://{admin}/readyz");
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "service on {admin} not ready in 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Api {
    async fn answer(r: reqwest::Response) -> Answer {
        let h = r.headers().clone();
        let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Answer {
            status: r.status().as_u16(),
            replayed: get("idempotent-replayed").as_deref() == Some("true"),
            location: get("location"),
            content_type: get("content-type").unwrap_or_default(),
            retry_after: get("retry-after"),
            body: r.json().await.unwrap_or(Value::Null),
        }
    }

    pub async fn claim(&self, account: &str, key: &str) -> Answer {
        let url = format!("http://{}/v1/accounts/{account}/interest/claims", self.http);
        let r = self
            .client
            .post(url)
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", key)
            .send()
            .await
            .unwrap();
        Self::answer(r).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        let r = self
            .client
            .get(format!("http://{}{path}", self.http))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        Self::answer(r).await
    }

    /// A claim's final answer: follows a 202 until the claim is done.
    pub async fn claim_to_end(&self, account: &str, key: &str) -> Answer {
        let first = self.claim(account, key).await;
        if first.status != 202 {
            return first;
        }
        let location = first.location.clone().expect("202 has Location");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.get(&location).await;
            if s.body["state"] == "done" {
                let status = s.body["status"].as_u64().unwrap() as u16;
                let body = if status == 201 {
                    s.body["payout"].clone()
                } else {
                    s.body["problem"].clone()
                };
                return Answer { status, body, ..first };
            }
            assert!(Instant::now() < deadline, "claim {location} never finished");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
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
