//! The dev tool's command line: `xtask demo`, `xtask bench spike|scale|ingest|aged`
//! (and the hidden `xtask loadgen`, the load generator's own process).
//! Bad arguments print one line and exit 2, like the product's.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    about = "interest-now's dev tool: the demo and the benchmarks, on the real service, broker and database"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Benchmarks on the real service, broker and database; each prints one JSON line.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// The whole story on one machine: accounts, snapshots, a midnight spike, the payout report.
    Demo {
        /// Accounts to create.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(100..=1_000_000))]
        accounts: u32,
    },
    /// The benchmarks' load generator, as a process of its own (started by `bench spike`).
    #[command(hide = true)]
    Loadgen {
        /// API addresses, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        apis: Vec<std::net::SocketAddr>,
        /// One claim a line: account TAB idempotency key.
        #[arg(long)]
        claims: std::path::PathBuf,
        #[arg(long)]
        concurrency: usize,
        /// Open loop at this many claims/s; omitted: closed loop.
        #[arg(long)]
        rate: Option<u64>,
        /// The start instant, Unix milliseconds.
        #[arg(long)]
        start_at_ms: i64,
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// A fraction of a core, for a cgroup quota: more than 0, at most 64.
fn cores(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 64.0 => Ok(f),
        _ => Err(format!("{s:?} is not a number of cores in (0, 64]")),
    }
}

/// Process counts for `bench scale`: 1 to 12 each, comma-separated.
fn count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=12).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a process count in 1..=12")),
    }
}

/// Parses the arguments; on a usage error prints one line and exits 2
/// (the product's own helper, so both tools answer a bad flag alike).
pub fn parse() -> Cli {
    interest_now::cli::parse_or_exit()
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The midnight spike: N accounts claim from 00:00 KST; compared with a pgbench baseline.
    Spike {
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1000..=2_000_000))]
        accounts: u32,
        /// Open-loop arrival rate (claims/s); omitted: as fast as the service answers.
        #[arg(long)]
        rate: Option<u64>,
        /// Concurrent HTTP connections.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        #[arg(long, default_value_t = 1)]
        apis: usize,
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        /// Percent of accounts that retry with the same Idempotency-Key.
        #[arg(long, default_value_t = 5)]
        retry_percent: usize,
        /// Seconds for each pgbench baseline run.
        #[arg(long, default_value_t = 10)]
        baseline_seconds: u64,
        /// A worker joins and another leaves in the middle of the spike.
        #[arg(long)]
        churn: bool,
        /// Use the broker at KAFKA_BROKERS instead of a fresh private one.
        #[arg(long)]
        shared_broker: bool,
        /// Each worker process in a cgroup (v1 cpu, cpuacct) of its own, capped at F cores during the spike.
        #[arg(long, value_name = "F", value_parser = cores)]
        worker_cpu: Option<f64>,
        /// Each API process in a cgroup of its own, capped at F cores during the spike.
        #[arg(long, value_name = "F", value_parser = cores)]
        api_cpu: Option<f64>,
        /// Directory for spike.json and spike.svg (the timeline).
        #[arg(long, default_value = "target/bench")]
        out: std::path::PathBuf,
    },
    /// Horizontal scale under CPU quotas: 1/2/4 capped workers, then 1/2/4 capped APIs; one JSON line.
    Scale {
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1000..=2_000_000))]
        accounts: u32,
        /// Cores for each worker in the worker table.
        #[arg(long, value_name = "F", default_value_t = 0.1, value_parser = cores)]
        worker_cpu: f64,
        /// Cores for each API in the API table.
        #[arg(long, value_name = "F", default_value_t = 0.1, value_parser = cores)]
        api_cpu: f64,
        /// Process counts of each table.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4", value_parser = count)]
        counts: Vec<usize>,
        /// Uncapped workers in the API table.
        #[arg(long, default_value_t = 2)]
        api_table_workers: usize,
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        /// Seconds for each pgbench baseline run (once, in the first run).
        #[arg(long, default_value_t = 10)]
        baseline_seconds: u64,
        #[arg(long)]
        shared_broker: bool,
        /// Directory for scale.json and each run's JSON and timeline SVG.
        #[arg(long, default_value = "target/bench")]
        out: std::path::PathBuf,
    },
    /// Aged accounts (a past written with SQL) against fresh ones, in one run.
    Aged(AgedArgs),
    /// Snapshot ingest: snapshots per second applied by 1..=N workers.
    Ingest {
        #[arg(long, default_value_t = 200_000)]
        snapshots: usize,
        #[arg(long, default_value_t = 100_000)]
        accounts: usize,
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        #[arg(long, default_value_t = 3)]
        max_workers: usize,
        /// Use the broker at KAFKA_BROKERS instead of a fresh private one per round.
        #[arg(long)]
        shared_broker: bool,
        /// Each worker in a cgroup (v1 cpu, cpuacct) of its own, capped at F cores.
        #[arg(long, value_name = "F", value_parser = cores)]
        worker_cpu: Option<f64>,
    },
}

/// `bench aged`: sizes of the SQL-written past and of the samples.
#[derive(Debug, clap::Args)]
pub struct AgedArgs {
    /// Aged accounts: a past of --days with --changes-per-day, a claim every day.
    #[arg(long, default_value_t = 1_000)]
    pub accounts: usize,
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(5..=3_650))]
    pub days: u64,
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..=86_400))]
    pub changes_per_day: i64,
    /// Busy accounts: --busy-changes a day during the last --busy-days (before: --changes-per-day).
    #[arg(long, default_value_t = 20)]
    pub busy: usize,
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(i64).range(1..=86_400))]
    pub busy_changes: i64,
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i64).range(1..=30))]
    pub busy_days: i64,
    /// Accounts never paid: --days of history, paid through their first point.
    #[arg(long, default_value_t = 200)]
    pub never_paid: usize,
    /// Accounts per group (and as many fresh twins) whose GET and claim are timed.
    #[arg(long, default_value_t = 500)]
    pub samples: usize,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[arg(long, default_value_t = 12)]
    pub partitions: i32,
    /// CI size: 100 aged, 30 days, 5 busy with 200 a day, 20 never paid, 50 samples (overrides the sizes).
    #[arg(long)]
    pub small: bool,
    /// Use the broker at KAFKA_BROKERS instead of a fresh private one.
    #[arg(long)]
    pub shared_broker: bool,
    /// Keep the run's database at the end (its URL on stderr).
    #[arg(long)]
    pub keep_db: bool,
}

impl AgedArgs {
    pub fn options(self, admin_db_url: String, brokers: String) -> crate::aged::AgedOptions {
        let small = self.small;
        let pick = |big: usize, little: usize| if small { little } else { big };
        crate::aged::AgedOptions {
            admin_db_url,
            brokers,
            accounts: pick(self.accounts, 100),
            days: if small { 30 } else { self.days },
            changes_per_day: self.changes_per_day,
            busy: pick(self.busy, 5),
            busy_changes: if small { 200 } else { self.busy_changes },
            busy_days: self.busy_days,
            never_paid: pick(self.never_paid, 20),
            samples: pick(self.samples, 50),
            workers: self.workers,
            partitions: if small { 4 } else { self.partitions },
            shared_broker: self.shared_broker,
            keep_db: self.keep_db,
        }
    }
}
