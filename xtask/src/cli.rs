//! The dev tool's command line: `xtask demo`, `xtask bench spike|ingest|aged`.
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
