//! `xtask`: the dev tool beside the product. `xtask demo` tells the midnight
//! story on one machine; `xtask bench spike|scale|ingest|aged` measure the real
//! processes. Both run on the shared harness (`interest-now-harness`), which
//! the integration tests use too, and drive the `interest-now` binary.

mod aged;
mod bench;
mod cgroup;
mod cli;
mod cpu;
mod demo;
mod load;
mod stack;
mod timeline;

use std::process::ExitCode;

use cli::{BenchCommand, Command};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn main() -> ExitCode {
    let cli = cli::parse();
    let db = env_or("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres");
    let brokers = env_or("KAFKA_BROKERS", "127.0.0.1:9092");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Demo { accounts } => {
                demo::run(demo::DemoOptions {
                    admin_db_url: db,
                    accounts: accounts as usize,
                })
                .await
            }
            Command::Loadgen {
                apis,
                claims,
                concurrency,
                rate,
                start_at_ms,
                out,
            } => {
                let line = load::loadgen(load::LoadGenArgs {
                    apis,
                    claims,
                    concurrency,
                    rate,
                    start_at_ms,
                    out,
                })
                .await?;
                println!("{line}");
                // Stays until the benchmark has read its CPU time and closes stdin.
                tokio::task::spawn_blocking(|| {
                    use std::io::Read as _;
                    let _ = std::io::stdin().read_to_end(&mut Vec::new());
                })
                .await?;
                Ok(())
            }
            Command::Bench { command } => {
                let line = run_bench(command, db, brokers).await?;
                println!("{line}");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(1)
        }
    }
}

async fn run_bench(command: BenchCommand, db: String, brokers: String) -> anyhow::Result<serde_json::Value> {
    match command {
        BenchCommand::Spike {
            accounts,
            rate,
            concurrency,
            workers,
            apis,
            partitions,
            retry_percent,
            baseline_seconds,
            churn,
            shared_broker,
            worker_cpu,
            api_cpu,
            out,
        } => {
            bench::spike(bench::SpikeOptions {
                admin_db_url: db,
                brokers,
                accounts: accounts as usize,
                rate,
                concurrency,
                workers,
                apis,
                partitions,
                retry_share_percent: retry_percent,
                baseline_seconds,
                churn,
                shared_broker,
                worker_cpu,
                api_cpu,
                out_dir: out,
                name: "spike".to_owned(),
            })
            .await
        }
        BenchCommand::Scale {
            accounts,
            worker_cpu,
            api_cpu,
            counts,
            api_table_workers,
            concurrency,
            partitions,
            baseline_seconds,
            shared_broker,
            out,
        } => {
            bench::scale(bench::ScaleOptions {
                admin_db_url: db,
                brokers,
                accounts: accounts as usize,
                worker_cpu,
                api_cpu,
                counts,
                api_table_workers,
                concurrency,
                partitions,
                baseline_seconds,
                shared_broker,
                out_dir: out,
            })
            .await
        }
        BenchCommand::Aged(a) => aged::aged(a.options(db, brokers)).await,
        BenchCommand::Ingest {
            snapshots,
            accounts,
            partitions,
            max_workers,
            shared_broker,
            worker_cpu,
        } => {
            bench::ingest(bench::IngestOptions {
                admin_db_url: db,
                brokers,
                snapshots,
                accounts,
                partitions,
                max_workers,
                shared_broker,
                worker_cpu,
            })
            .await
        }
    }
}
