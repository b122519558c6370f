use std::process::ExitCode;

use interest_now::cli::{self, BenchCommand, Command, PlansCommand};
use interest_now::commands::{self, finish, EXIT_USAGE};
use interest_now::config::Settings;
use interest_now::{app, bench, demo, simulate, telemetry};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn main() -> ExitCode {
    let cli = cli::parse();
    if let Command::Simulate {
        plans,
        events,
        credit_net,
        claims_per_day,
    } = &cli.command
    {
        let opts = simulate::Options {
            credit_net: *credit_net,
            claims_per_day: *claims_per_day,
        };
        // Script errors read `line N: <reason>`, with nothing in front.
        return match commands::simulate(plans, events, opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::from(EXIT_USAGE)
            }
        };
    }
    if let Command::Demo { accounts } = &cli.command {
        let opts = demo::DemoOptions {
            admin_db_url: env_or("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
            accounts: *accounts as usize,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        return finish(runtime.block_on(demo::run(opts)), 1);
    }
    if let Command::Bench { command } = &cli.command {
        let (db, brokers) = (
            env_or("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
            env_or("KAFKA_BROKERS", "127.0.0.1:9092"),
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let result = runtime.block_on(async move {
            let line = match command {
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
                } => {
                    bench::spike(bench::SpikeOptions {
                        admin_db_url: db,
                        brokers,
                        accounts: *accounts as usize,
                        rate: *rate,
                        concurrency: *concurrency,
                        workers: *workers,
                        apis: *apis,
                        partitions: *partitions,
                        retry_share_percent: *retry_percent,
                        baseline_seconds: *baseline_seconds,
                        churn: *churn,
                        shared_broker: *shared_broker,
                    })
                    .await?
                }
                BenchCommand::Ingest {
                    snapshots,
                    accounts,
                    partitions,
                    max_workers,
                    shared_broker,
                } => {
                    bench::ingest(bench::IngestOptions {
                        admin_db_url: db,
                        brokers,
                        snapshots: *snapshots,
                        accounts: *accounts,
                        partitions: *partitions,
                        max_workers: *max_workers,
                        shared_broker: *shared_broker,
                    })
                    .await?
                }
            };
            println!("{line}");
            anyhow::Ok(())
        });
        return finish(result, 1);
    }
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    telemetry::init_logs();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        match cli.command {
            Command::Simulate { .. } | Command::Demo { .. } | Command::Bench { .. } => unreachable!("handled above"),
            Command::Serve { role } => finish(app::serve(settings, role).await, 1),
            Command::Migrate => finish(commands::migrate(&settings).await, 1),
            // ---- finance (src/finance) ----
            Command::Finance(command) => finish(interest_now::finance::run(&settings, command).await, 1),
            Command::Plans {
                command: PlansCommand::Import { file },
            } => finish(commands::import_plans(&settings, &file).await, 1),
        }
    })
}
