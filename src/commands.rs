//! The one-shot commands: each returns an exit code.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::{Clock, Settings};
use crate::money::{PlanFile, Plans};
use crate::{simulate, store};

/// Exit code 2: the caller's input (arguments, files, configuration) is wrong.
pub const EXIT_USAGE: u8 = 2;

pub fn simulate(plans: &Path, events: &Path, opts: simulate::Options) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(plans).with_context(|| format!("{}", plans.display()))?;
    let plans = Plans::new(PlanFile::parse(&text)?, None)?;
    let events = File::open(events).with_context(|| format!("{}", events.display()))?;
    let out = BufWriter::new(std::io::stdout().lock());
    simulate::run(plans, BufReader::new(events), out, opts)
}

pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let pool = store::connect(&settings.database_url, 2).await?;
    store::migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}

pub async fn import_plans(settings: &Settings, file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    let plans = PlanFile::parse(&text)?;
    let pool = store::connect(&settings.database_url, 2).await?;
    let now = Clock::new(settings.clock_offset_seconds).now();
    let written = store::import_plans(&pool, &plans, now).await?;
    println!(
        "plans imported: {} written, {} unchanged",
        written.len(),
        plans.len() - written.len()
    );
    Ok(())
}

/// Runs a fallible command; errors print one line and give `code`.
pub fn finish(result: anyhow::Result<()>, code: u8) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(code)
        }
    }
}
