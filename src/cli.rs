//! The command line (SPEC §6). Bad arguments print one line and exit 2.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "interest-now",
    version,
    about = "Receive interest now: per-second accrual, claims and payouts"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the money engine over a script of events (no database, no broker).
    Simulate {
        /// Rate plans JSON (the format `plans import` loads); the first plan is the default.
        #[arg(long)]
        plans: PathBuf,
        /// Events as JSON Lines: snapshot, claim, settle and query events in time order.
        #[arg(long)]
        events: PathBuf,
        /// Credit each payout's net into the balance at the payout instant, as core banking would.
        #[arg(long)]
        credit_net: bool,
        /// Successful claims allowed per account per business date.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        claims_per_day: u32,
        /// Add to each payout how it was computed (the `explanation` of `GET /v1/payouts/{id}?explain=true`).
        #[arg(long)]
        explain: bool,
    },
    /// Run the service: the HTTP API, the partition worker, or both.
    Serve {
        #[arg(long, value_enum, default_value = "all")]
        role: crate::service::app::Role,
    },
    /// Apply the SQL migrations under migrations/.
    Migrate,
    /// Retention: create upcoming partitions, drop expired ones, delete expired
    /// keys, prune history no longer needed (idempotent; runs under live traffic).
    Maintain,
    // ---- finance (src/finance): close-day, settle, report, reconcile ----
    #[command(flatten)]
    Finance(crate::finance::Command),
    /// Manage rate plans.
    Plans {
        #[command(subcommand)]
        command: PlansCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum PlansCommand {
    /// Load rate plans (JSON) into the database; refuses retroactive changes.
    Import {
        /// The plans file: {"plans":[...]}.
        file: PathBuf,
    },
}

/// Parses the arguments; on a usage error prints one line and exits 2.
pub fn parse() -> Cli {
    parse_or_exit()
}

/// Parses any clap command line the project's way (the dev tool's too):
/// help and version as clap prints them; a usage error as one line on
/// stderr and exit 2.
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line: clap's message up to the usage block, joined.
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:"))
                .filter(|l| !l.is_empty())
                .collect();
            let line = if message.is_empty() {
                "error: bad arguments".to_owned()
            } else {
                message.join(" ")
            };
            eprintln!("{line} (see --help)");
            std::process::exit(2);
        }
    }
}
