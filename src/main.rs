use std::process::ExitCode;

use interest_now::cli::{self, Command, PlansCommand};
use interest_now::commands::{self, finish, EXIT_USAGE};
use interest_now::config::Settings;
use interest_now::service::app;
use interest_now::{simulate, telemetry};

fn main() -> ExitCode {
    let cli = cli::parse();
    if let Command::Simulate {
        plans,
        events,
        credit_net,
        claims_per_day,
        explain,
    } = &cli.command
    {
        let opts = simulate::Options {
            credit_net: *credit_net,
            claims_per_day: *claims_per_day,
            explain: *explain,
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
            Command::Simulate { .. } => unreachable!("handled above"),
            Command::Serve { role } => finish(app::serve(settings, role).await, 1),
            Command::Migrate => finish(commands::migrate(&settings).await, 1),
            Command::Maintain => finish(interest_now::maintain::run(&settings).await, 1),
            // ---- finance (src/finance) ----
            Command::Finance(command) => finish(interest_now::finance::run(&settings, command).await, 1),
            Command::Plans {
                command: PlansCommand::Import { file },
            } => finish(commands::import_plans(&settings, &file).await, 1),
        }
    })
}
