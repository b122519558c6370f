//! The dev tool's command line: `xtask demo`, `xtask bench spike|ingest`.
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
