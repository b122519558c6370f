use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::process::ExitCode;

use interest_now::cli::{self, Command};
use interest_now::money::{PlanFile, Plans};
use interest_now::simulate;

fn main() -> ExitCode {
    let cli = cli::parse();
    match cli.command {
        Command::Simulate {
            plans,
            events,
            credit_net,
            claims_per_day,
        } => {
            let run = || -> anyhow::Result<()> {
                let text = std::fs::read_to_string(&plans).map_err(|e| anyhow::anyhow!("{}: {e}", plans.display()))?;
                let plans = Plans::new(PlanFile::parse(&text)?, None)?;
                let events = File::open(&events).map_err(|e| anyhow::anyhow!("{}: {e}", events.display()))?;
                let out = BufWriter::new(std::io::stdout().lock());
                simulate::run(
                    plans,
                    BufReader::new(events),
                    out,
                    simulate::Options {
                        credit_net,
                        claims_per_day,
                    },
                )
            };
            match run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
