//! A whole local deployment for `demo` and `bench`, on the shared harness: a
//! fresh database and topics ([`Env`]), API and worker processes of the
//! `interest-now` binary, stopped gracefully at the end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use interest_now_harness::{Env, Product, Service, Spec};

use crate::cgroup::{Cgroups, Group};

pub const TOKEN: &str = "local-demo-token";

/// The `interest-now` binary the dev tool drives: `INTEREST_NOW_BIN`, else the
/// one beside this executable (the same target profile directory). Started by
/// cargo (`cargo xtask …`), it first builds that binary with the same profile.
pub fn product() -> anyhow::Result<Product> {
    let dir = std::env::current_dir()?;
    if let Ok(bin) = std::env::var("INTEREST_NOW_BIN") {
        return Ok(Product { bin: bin.into(), dir });
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().context("the dev tool's directory")?;
    let bin = profile_dir.join("interest-now");
    if let Ok(cargo) = std::env::var("CARGO") {
        build_product(&cargo, profile_dir)?;
    }
    if !bin.exists() {
        bail!(
            "no {}: build it first (cargo build --workspace) or set INTEREST_NOW_BIN",
            bin.display()
        );
    }
    Ok(Product { bin, dir })
}

/// `cargo build -p interest-now -p xtask` in the profile of `profile_dir`
/// (debug, release, …): with the dev tool in the build, the dependencies'
/// features are those of the dev tool's own build (and of `scripts/demo`),
/// so nothing is rebuilt and the binary is the one built with it.
fn build_product(cargo: &str, profile_dir: &std::path::Path) -> anyhow::Result<()> {
    let profile = profile_dir.file_name().and_then(|p| p.to_str()).unwrap_or("debug");
    let profile = if profile == "debug" { "dev" } else { profile };
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--package", "interest-now", "--package", "xtask"])
        .args(["--profile", profile])
        .status()
        .context("building interest-now")?;
    if !status.success() {
        bail!("building interest-now failed");
    }
    Ok(())
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
    use interest_now::money::types::{business_date, kst_midnight_utc};
    let midnight = kst_midnight_utc(business_date(now) + chrono::Days::new(1));
    (midnight, (midnight - chrono::Utc::now()).num_seconds() - lead_secs)
}

/// An environment and the processes running on it.
pub struct Stack {
    pub env: Env,
    pub services: Vec<Service>,
    /// The HTTP addresses of the API processes.
    pub apis: Vec<SocketAddr>,
    /// The cgroup of each service process started in one (same order as `services`).
    pub groups: Vec<Option<Group>>,
    /// The run's cgroups (`--worker-cpu`, `--api-cpu`); removed at teardown.
    pub cgroups: Option<Cgroups>,
}

/// `base` plus this process's id: a benchmark's database and topic names.
pub fn run_name(base: &str) -> String {
    format!("{base}_{}", std::process::id())
}

impl Stack {
    /// A fresh database `name` (dropped first if present) and fresh topics.
    /// Benchmarks pass a name with their process id ([`run_name`]), so two runs
    /// at once never drop each other's database; the demo keeps one name, so
    /// its next run replaces the database it left to explore.
    pub async fn create(
        name: &str,
        admin_db_url: &str,
        brokers: &str,
        partitions: i32,
        plans_json: &str,
    ) -> anyhow::Result<Stack> {
        let spec = Spec {
            product: product()?,
            admin_db_url: admin_db_url.to_owned(),
            brokers: brokers.to_owned(),
            name: name.to_owned(),
            partitions,
            plans_json: plans_json.to_owned(),
            tokens: vec![TOKEN.to_owned()],
            clock_offset_secs: 0,
            env: vec![(
                "RUST_LOG".to_owned(),
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )],
            log_dir: std::env::temp_dir().join(format!("interest-now-{name}")),
        };
        Ok(Stack {
            env: Env::create(spec).await?,
            services: Vec::new(),
            apis: Vec::new(),
            groups: Vec::new(),
            cgroups: None,
        })
    }

    /// "Now" on the service clock (`CLOCK_OFFSET_SECONDS` of the processes).
    pub fn service_now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + chrono::Duration::seconds(self.env.offset_secs)
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        &self.env.pool
    }

    /// Starts `serve --role ROLE` and waits until it is ready.
    pub async fn spawn(&mut self, role: &str, extra: &[(&str, &str)]) -> anyhow::Result<SocketAddr> {
        let svc = self.env.serve(role, extra).await?;
        self.push(svc, None)
    }

    /// Like [`Stack::spawn`], the process in a cgroup of its own (created on
    /// first use, see `crate::cgroup`) capped at `cores` (None: uncapped, only
    /// accounted); the cap can be changed later through `groups`.
    pub async fn spawn_in_cgroup(
        &mut self,
        role: &str,
        extra: &[(&str, &str)],
        cores: Option<f64>,
    ) -> anyhow::Result<SocketAddr> {
        if self.cgroups.is_none() {
            self.cgroups = Some(Cgroups::new()?);
        }
        let name = format!("{role}-{}", self.services.len());
        let group = self.cgroups.as_mut().expect("cgroups").group(&name, cores)?;
        let bin = self.env.product.bin.clone();
        let wrapper = Cgroups::wrapper(&self.env.log_dir, &bin)?;
        let value = group.env_value();
        let mut env: Vec<(&str, &str)> = extra.to_vec();
        env.push(("XTASK_CGROUPS", &value));
        self.env.product.bin = wrapper;
        let svc = self.env.serve(role, &env).await;
        self.env.product.bin = bin;
        self.push(svc?, Some(group))
    }

    fn push(&mut self, svc: Service, group: Option<Group>) -> anyhow::Result<SocketAddr> {
        let http = svc.http;
        if svc.role != "worker" {
            self.apis.push(http);
        }
        self.services.push(svc);
        self.groups.push(group);
        Ok(http)
    }

    /// Peak resident memory of the worker processes, in MB.
    pub fn worker_rss_mb_max(&self) -> u64 {
        self.services
            .iter()
            .filter(|s| s.role == "worker")
            .filter_map(Service::peak_rss_mb)
            .max()
            .unwrap_or(0)
    }

    /// Waits until `sql` returns `want` (bounded).
    pub async fn wait_count(&self, sql: &str, want: i64, limit: Duration) -> anyhow::Result<()> {
        self.env.wait_count(sql, want, limit).await
    }

    /// Stops every process gracefully (SIGTERM), then drops the database unless `keep_db`.
    pub async fn teardown(mut self, keep_db: bool) {
        for svc in &mut self.services {
            if svc.running() {
                let _ = svc.stop(false);
            }
        }
        self.cgroups.take();
        if keep_db {
            self.env.pool.close().await;
        } else {
            self.env.drop_db().await;
        }
    }

    /// Where the processes' logs are.
    pub fn log_dir(&self) -> &PathBuf {
        &self.env.log_dir
    }
}
