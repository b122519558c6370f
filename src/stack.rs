//! A whole local deployment for `demo` and `bench`: a fresh database and
//! fresh topics (by prefix) on the local broker, API and worker processes
//! spawned from this same binary, and a load generator that speaks the API.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;

use crate::kafka;
use crate::money::PlanFile;
use crate::repo;

pub const TOKEN: &str = "local-demo-token";

/// A broker of our own for a benchmark: a fresh in-memory nisshi (the one
/// `scripts/infra-up` builds and caches) on a free loopback port, so data left
/// in the shared broker by earlier runs cannot skew the figures.
pub struct PrivateBroker {
    child: Child,
    pub address: String,
}

impl PrivateBroker {
    pub async fn start() -> anyhow::Result<PrivateBroker> {
        Self::start_on(free_addr().port(), "memory://nisshi/").await
    }

    /// The broker `scripts/infra-up` built: with the SQLite engine (which
    /// survives a restart) when available, else the memory-only build.
    pub fn binary() -> anyhow::Result<std::path::PathBuf> {
        let cache = std::env::var("INTEREST_NOW_CACHE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| {
                std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/interest-now")
            });
        ["nisshi-0.8.1-sqlite/bin/nisshi", "nisshi-0.8.1/bin/nisshi"]
            .iter()
            .map(|p| cache.join(p))
            .find(|p| p.exists())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no broker under {}: run scripts/infra-up once (it builds it)",
                    cache.display()
                )
            })
    }

    /// Starts a broker on `port` with `storage` (`memory://nisshi/` or `sqlite://FILE`).
    pub async fn start_on(port: u16, storage: &str) -> anyhow::Result<PrivateBroker> {
        let bin = Self::binary()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let dir = std::env::temp_dir().join(format!("interest-now-broker-{port}"));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("broker.log"))?;
        let child = Command::new(bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", storage, "--group-initial-rebalance-delay", "0s"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting the private broker")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                bail!("the private broker did not listen on {port} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(PrivateBroker {
            child,
            address: format!("127.0.0.1:{port}"),
        })
    }
}

impl PrivateBroker {
    /// Stops the broker (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// "Now" for a run of the demo or a benchmark: the system clock, shifted by
/// `CLOCK_OFFSET_SECONDS` when the environment sets it (so a run can be placed
/// at a chosen date, e.g. by the shifted-clock tests). A malformed value is an
/// error, like the service's own.
pub fn run_clock_now() -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    let offset = match std::env::var("CLOCK_OFFSET_SECONDS") {
        Ok(v) => v
            .parse::<i64>()
            .map_err(|_| anyhow::anyhow!("CLOCK_OFFSET_SECONDS must be a whole number of seconds, got {v:?}"))?,
        Err(_) => 0,
    };
    Ok(chrono::Utc::now() + chrono::Duration::seconds(offset))
}

/// The next 00:00 KST after `now`, and the offset that puts a service clock
/// `lead_secs` before it at this moment.
pub fn next_midnight_offset(
    now: chrono::DateTime<chrono::Utc>,
    lead_secs: i64,
) -> (chrono::DateTime<chrono::Utc>, i64) {
    let midnight =
        crate::money::types::kst_midnight_utc(crate::money::types::business_date(now) + chrono::Days::new(1));
    (midnight, (midnight - chrono::Utc::now()).num_seconds() - lead_secs)
}

pub struct Stack {
    pub name: String,
    pub db_url: String,
    pub admin_db_url: String,
    pub brokers: String,
    pub prefix: String,
    pub pool: PgPool,
    pub offset_secs: i64,
    pub apis: Vec<SocketAddr>,
    pub children: Vec<(String, Child, SocketAddr)>,
    pub log_dir: std::path::PathBuf,
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("loopback")
        .local_addr()
        .expect("addr")
}

impl Stack {
    /// A fresh database `name` (dropped first if present) and fresh topics.
    pub async fn create(
        name: &str,
        admin_db_url: &str,
        brokers: &str,
        partitions: i32,
        plans_json: &str,
    ) -> anyhow::Result<Stack> {
        let admin = PgPool::connect(admin_db_url)
            .await
            .context("connecting to PostgreSQL")?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&admin)
            .await?;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
        admin.close().await;
        let db_url = match admin_db_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => bail!("DATABASE_URL has no database part"),
        };
        let pool = repo::connect(&secrecy::SecretString::from(db_url.clone()), 8).await?;
        repo::migrate(&pool).await?;
        let plans = PlanFile::parse(plans_json)?;
        repo::import_plans(&pool, &plans, chrono::Utc::now()).await?;
        let prefix = format!("{name}-{}.", chrono::Utc::now().timestamp());
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", brokers).create()?;
        let names: Vec<String> = [kafka::SNAPSHOTS, kafka::SNAPSHOTS_DLQ, kafka::CLAIMS, kafka::PAYOUTS]
            .iter()
            .map(|t| format!("{prefix}{t}"))
            .collect();
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
            .collect();
        for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
        }
        let log_dir = std::env::temp_dir().join(format!("interest-now-{name}"));
        std::fs::create_dir_all(&log_dir)?;
        Ok(Stack {
            name: name.to_owned(),
            db_url,
            admin_db_url: admin_db_url.to_owned(),
            brokers: brokers.to_owned(),
            prefix,
            pool,
            offset_secs: 0,
            apis: Vec::new(),
            children: Vec::new(),
            log_dir,
        })
    }

    pub fn topic(&self, t: &str) -> String {
        format!("{}{t}", self.prefix)
    }

    /// Starts `serve --role ROLE` from this binary and waits until it is ready.
    pub async fn spawn(&mut self, role: &str, extra_env: &[(&str, String)]) -> anyhow::Result<SocketAddr> {
        let (http, admin) = (free_addr(), free_addr());
        let log_path = self.log_dir.join(format!("{role}-{}.log", admin.port()));
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["serve", "--role", role])
            .env("DATABASE_URL", &self.db_url)
            .env("KAFKA_BROKERS", &self.brokers)
            .env("KAFKA_TOPIC_PREFIX", &self.prefix)
            .env("KAFKA_GROUP_ID", format!("{}-workers", self.name))
            .env("API_TOKENS", TOKEN)
            .env("HTTP_ADDR", http.to_string())
            .env("ADMIN_ADDR", admin.to_string())
            .env("CLOCK_OFFSET_SECONDS", self.offset_secs.to_string())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("spawning serve")?;
        self.children.push((role.to_owned(), child, admin));
        wait_ready(admin, Duration::from_secs(60))
            .await
            .with_context(|| format!("{role} (log: {})", log_path.display()))?;
        if role != "worker" {
            self.apis.push(http);
        }
        Ok(http)
    }

    /// Sends SIGKILL (`hard`) or SIGTERM to the `index`-th child and waits for it.
    pub fn stop_child(&mut self, index: usize, hard: bool) -> anyhow::Result<Duration> {
        let (_, child, _) = &mut self.children[index];
        let started = Instant::now();
        if hard {
            child.kill()?;
        } else {
            Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
        }
        child.wait()?;
        Ok(started.elapsed())
    }

    /// Produces snapshots as fast as the broker takes them (bounded in-flight).
    pub async fn produce_snapshots(&self, snapshots: impl Iterator<Item = (String, String)>) -> anyhow::Result<usize> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "500000")
            .set("message.timeout.ms", "30000")
            .create()?;
        let topic = self.topic(kafka::SNAPSHOTS);
        let sends = futures::stream::iter(snapshots).map(|(key, payload)| {
            let (producer, topic) = (&producer, &topic);
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("producing a snapshot: {e}"))
            }
        });
        let results: Vec<_> = sends.buffer_unordered(10_000).collect().await;
        let n = results.len();
        for r in results {
            r?;
        }
        Ok(n)
    }

    /// Waits until `sql` returns at least `want` (bounded).
    pub async fn wait_count(&self, sql: &str, want: i64, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&self.pool).await?;
            if n >= want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("timed out: {sql} = {n}, wanted {want}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops every process gracefully (SIGTERM), then drops the database.
    pub async fn teardown(mut self, keep_db: bool) {
        for i in 0..self.children.len() {
            if let Ok(None) = self.children[i].1.try_wait() {
                let _ = self.stop_child(i, false);
            }
        }
        self.pool.close().await;
        if !keep_db {
            if let Ok(admin) = PgPool::connect(&self.admin_db_url).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
                    .execute(&admin)
                    .await;
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub async fn wait_ready(admin: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(r) = client.get(format!("http://{admin}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("not ready after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One claim's fate as the client saw it.
#[derive(Debug, Clone)]
pub struct ClaimResult {
    pub account: String,
    /// The final status: a 202 is followed until the claim is done.
    pub status: u16,
    pub first_status: u16,
    /// Answered with `Idempotent-Replayed: true`.
    pub replayed: bool,
    pub code: Option<String>,
    pub business_date: Option<String>,
    pub latency: Duration,
}

/// A claim to send: account, idempotency key.
pub type ClaimSpec = (String, String);

/// Fires claims with `concurrency` connections; `rate_per_s` = None is as fast
/// as the service answers, Some(r) is an open-loop schedule of r per second
/// (late requests are sent at once, and their latency counts from the schedule).
pub async fn fire_claims(
    apis: &[SocketAddr],
    claims: Vec<ClaimSpec>,
    concurrency: usize,
    rate_per_s: Option<u64>,
) -> Vec<ClaimResult> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let start = tokio::time::Instant::now();
    let apis = apis.to_vec();
    futures::stream::iter(claims.into_iter().enumerate())
        .map(|(i, (account, key))| {
            let (client, apis) = (client.clone(), apis.clone());
            async move {
                let scheduled = match rate_per_s {
                    Some(r) => start + Duration::from_micros(i as u64 * 1_000_000 / r.max(1)),
                    None => tokio::time::Instant::now(),
                };
                tokio::time::sleep_until(scheduled).await;
                let api = apis[i % apis.len()];
                claim_until_done(&client, api, account, &key, scheduled).await
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

async fn claim_until_done(
    client: &reqwest::Client,
    api: SocketAddr,
    account: String,
    key: &str,
    scheduled: tokio::time::Instant,
) -> ClaimResult {
    let url = format!("http://{api}/v1/accounts/{account}/interest/claims");
    let mut result = ClaimResult {
        account,
        status: 0,
        first_status: 0,
        replayed: false,
        code: None,
        business_date: None,
        latency: Duration::ZERO,
    };
    let resp = client
        .post(&url)
        .bearer_auth(TOKEN)
        .header("Idempotency-Key", key)
        .send()
        .await;
    let Ok(resp) = resp else {
        result.latency = scheduled.elapsed();
        return result;
    };
    result.first_status = resp.status().as_u16();
    result.replayed = resp
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v.as_bytes() == b"true");
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut status = result.first_status;
    // The database check after the run verifies payouts; parse bodies only where the client needs them.
    let mut body: serde_json::Value = if status == 201 {
        let _ = resp.bytes().await;
        serde_json::Value::Null
    } else {
        resp.json().await.unwrap_or_default()
    };
    if status == 202 {
        let url = format!("http://{api}{}", location.unwrap_or_default());
        for _ in 0..600 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let Ok(r) = client.get(&url).bearer_auth(TOKEN).send().await else {
                continue;
            };
            let s: serde_json::Value = r.json().await.unwrap_or_default();
            if s["state"] == "done" {
                status = s["status"].as_u64().unwrap_or(0) as u16;
                body = if status == 201 {
                    s["payout"].clone()
                } else {
                    s["problem"].clone()
                };
                break;
            }
        }
    }
    result.status = status;
    result.code = body["code"].as_str().map(str::to_owned);
    result.business_date = body["business_date"].as_str().map(str::to_owned);
    result.latency = scheduled.elapsed();
    result
}

/// Latency percentiles in milliseconds: (p50, p95, p99, max).
pub fn percentiles(results: &[ClaimResult]) -> (u64, u64, u64, u64) {
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 120_000, 3).expect("histogram");
    for r in results {
        let _ = h.record((r.latency.as_millis() as u64).clamp(1, 120_000));
    }
    (
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.95),
        h.value_at_quantile(0.99),
        h.max(),
    )
}
