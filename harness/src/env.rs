//! A fresh environment: a database of its own (migrated by the product's
//! `migrate`, plans loaded by its `plans import`), fresh topics by prefix, and
//! the product binary run with that configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::service::{free_addr, Api, Service};

/// The topics of SPEC §4, created per environment under its prefix.
pub const TOPICS: [&str; 4] = [
    "balance-snapshots",
    "balance-snapshots.dlq",
    "interest-claims",
    "interest-payouts",
];

/// How to run the product: its binary and the working directory of its commands.
#[derive(Debug, Clone)]
pub struct Product {
    pub bin: PathBuf,
    pub dir: PathBuf,
}

/// What an environment is made of.
#[derive(Debug, Clone)]
pub struct Spec {
    pub product: Product,
    /// A URL of the PostgreSQL server (any database): the new one is created beside it.
    pub admin_db_url: String,
    pub brokers: String,
    /// The database's name (dropped first if it exists); it also names topics, group and logs.
    pub name: String,
    pub partitions: i32,
    /// The rate plans loaded with `plans import` (JSON text).
    pub plans_json: String,
    /// `API_TOKENS`; the first is the one [`Api`] clients send.
    pub tokens: Vec<String>,
    /// `CLOCK_OFFSET_SECONDS` of every command (changeable later: [`Env::offset_secs`]).
    pub clock_offset_secs: i64,
    /// More environment for every command (e.g. `CLAIM_WAIT_MS`, `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Where the services' logs go.
    pub log_dir: PathBuf,
}

/// A consumed message: key, JSON value, headers.
pub type Record = (Option<String>, Value, Vec<(String, String)>);

pub struct Env {
    pub name: String,
    pub db_url: String,
    pub admin_db_url: String,
    pub brokers: String,
    pub prefix: String,
    pub partitions: i32,
    pub pool: PgPool,
    pub producer: FutureProducer,
    pub product: Product,
    pub tokens: Vec<String>,
    /// `CLOCK_OFFSET_SECONDS` of the commands started from now on.
    pub offset_secs: i64,
    pub env: Vec<(String, String)>,
    pub log_dir: PathBuf,
}

impl Env {
    /// A fresh database (migrated, plans imported) and fresh topics.
    pub async fn create(spec: Spec) -> anyhow::Result<Env> {
        Self::create_with_product_url(spec, None).await
    }

    /// Like [`Env::create`], with the product given another `DATABASE_URL`
    /// for the same new database (e.g. a multi-host URL, which the harness's
    /// own pool, built from `admin_db_url`, does not read): `product_db_url`
    /// maps the database's name to it. Migration and plan import go through it.
    pub async fn create_with_product_url(
        spec: Spec,
        product_db_url: Option<&dyn Fn(&str) -> String>,
    ) -> anyhow::Result<Env> {
        let admin = PgPool::connect(&spec.admin_db_url).await.with_context(|| {
            format!(
                "connecting to PostgreSQL at {} (run scripts/infra-up)",
                spec.admin_db_url
            )
        })?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", spec.name))
            .execute(&admin)
            .await?;
        sqlx::query(&format!("CREATE DATABASE {}", spec.name))
            .execute(&admin)
            .await?;
        admin.close().await;
        let db_url = match spec.admin_db_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{}", spec.name),
            None => bail!("the database URL {} has no database part", spec.admin_db_url),
        };
        let pool = PgPoolOptions::new().max_connections(10).connect(&db_url).await?;
        let db_url = product_db_url.map_or(db_url, |url_of| url_of(&spec.name));
        std::fs::create_dir_all(&spec.log_dir)?;
        let env = Env {
            prefix: format!("{}-{}.", spec.name, chrono::Utc::now().timestamp()),
            producer: ClientConfig::new()
                .set("bootstrap.servers", &spec.brokers)
                .set("partitioner", "murmur2_random")
                .set("message.timeout.ms", "10000")
                .create()?,
            name: spec.name,
            db_url,
            admin_db_url: spec.admin_db_url,
            brokers: spec.brokers,
            partitions: spec.partitions,
            pool,
            product: spec.product,
            tokens: spec.tokens,
            offset_secs: spec.clock_offset_secs,
            env: spec.env,
            log_dir: spec.log_dir,
        };
        env.run(&["migrate"])?;
        env.create_topics().await?;
        env.import_plans(&spec.plans_json)?;
        Ok(env)
    }

    async fn create_topics(&self) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.brokers).create()?;
        let names: Vec<String> = TOPICS.iter().map(|t| self.topic(t)).collect();
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|n| NewTopic::new(n, self.partitions, TopicReplication::Fixed(1)))
            .collect();
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
        for r in admin.create_topics(&topics, &options).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
        }
        Ok(())
    }

    /// The full name of topic `name` in this environment.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    /// The product binary with this environment's configuration.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.product.bin);
        c.current_dir(&self.product.dir)
            .args(args)
            .env("DATABASE_URL", &self.db_url)
            .env("KAFKA_BROKERS", &self.brokers)
            .env("KAFKA_TOPIC_PREFIX", &self.prefix)
            .env("KAFKA_GROUP_ID", format!("{}-group", self.name))
            .env("API_TOKENS", self.tokens.join(","))
            .env("CLOCK_OFFSET_SECONDS", self.offset_secs.to_string())
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs a one-shot command to completion; its stderr is the error.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command(args)
            .output()
            .with_context(|| format!("running {}", self.product.bin.display()))?;
        if !out.status.success() {
            bail!(
                "interest-now {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Imports a plan file (JSON text) with `plans import`, on this environment's clock.
    pub fn import_plans(&self, json: &str) -> anyhow::Result<()> {
        let path = std::env::temp_dir().join(format!("{}-{}-plans.json", self.name, uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, json)?;
        let result = self.run(&["plans", "import", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        result.map(drop)
    }

    /// Starts `serve --role ROLE` on free ports and waits until it is ready.
    pub async fn serve(&self, role: &str, extra: &[(&str, &str)]) -> anyhow::Result<Service> {
        self.serve_on(role, free_addr(), extra).await
    }

    /// Like `serve`, on a given HTTP address (to restart an API where clients expect it).
    pub async fn serve_on(&self, role: &str, http: SocketAddr, extra: &[(&str, &str)]) -> anyhow::Result<Service> {
        let admin = free_addr();
        let log = self.log_dir.join(format!("{}-{role}-{}.log", self.name, admin.port()));
        let file = std::fs::File::create(&log)?;
        let mut cmd = self.command(&["serve", "--role", role]);
        cmd.env("HTTP_ADDR", http.to_string())
            .env("ADMIN_ADDR", admin.to_string())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("spawning serve")?;
        let svc = Service {
            role: role.to_owned(),
            child,
            admin,
            log,
            api: Api {
                http,
                client: crate::client(),
                token: self.tokens.first().cloned().unwrap_or_default(),
            },
        };
        svc.wait_ready()
            .await
            .with_context(|| format!("{role} (log: {})", svc.log.display()))?;
        Ok(svc)
    }

    /// Produces one message to topic `name` (acknowledged).
    pub async fn produce(&self, name: &str, key: &str, payload: &str) -> anyhow::Result<()> {
        let topic = self.topic(name);
        self.producer
            .send(
                FutureRecord::to(&topic).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
        Ok(())
    }

    /// Produces (key, payload) messages to topic `name` as fast as the broker
    /// takes them (bounded in flight); returns how many.
    pub async fn produce_many(
        &self,
        name: &str,
        messages: impl Iterator<Item = (String, String)>,
    ) -> anyhow::Result<usize> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "500000")
            .set("message.timeout.ms", "30000")
            .create()?;
        let topic = self.topic(name);
        let sends = futures::stream::iter(messages).map(|(key, payload)| {
            let (producer, topic) = (&producer, &topic);
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))
            }
        });
        let results: Vec<_> = sends.buffer_unordered(10_000).collect().await;
        let n = results.len();
        for r in results {
            r?;
        }
        Ok(n)
    }

    /// Waits until `sql` (returning one bigint) yields `want`, for at most `limit`.
    pub async fn wait_count(&self, sql: &str, want: i64, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&self.pool).await?;
            if n == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {sql} = {want} (now {n})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads topic `name` from the beginning until `done` holds (at most 30 s).
    pub fn read_topic_until(&self, name: &str, done: impl Fn(&[Record]) -> bool) -> anyhow::Result<Vec<Record>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set(
                "group.id",
                format!("{}-reader-{}", self.name, uuid::Uuid::new_v4().simple()),
            )
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()?;
        consumer.subscribe(&[&self.topic(name)])?;
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(&out) && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                out.push(record(&m));
            }
        }
        Ok(out)
    }

    /// Closes the pool and drops the database (best effort).
    pub async fn drop_db(self) {
        self.pool.close().await;
        if let Ok(admin) = PgPool::connect(&self.admin_db_url).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
                .execute(&admin)
                .await;
        }
    }
}

fn record(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
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
    (key, payload, headers)
}
