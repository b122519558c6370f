//! Finance batch commands (SPEC §6, §7; docs/FINANCE.md): the daily accrual
//! journal (`close-day`), the automatic monthly payout (`settle`), the payout
//! table and withholding totals (`report`) and the money invariants (`reconcile`).
//!
//! All of them run under live traffic: they read with plain statements (no row
//! locks), and `settle` pays through the workers' single-writer path.
//!
//! - [`close_day`]: per account and business date, accrued interest and liability.
//! - [`settle`]: one `Settle` message per account on `interest-claims`, then waits.
//! - [`report`]: `report payouts` (CSV / JSON Lines) and `report withholding`.
//! - [`reconcile`]: checks a date's payouts, journal, outbox and intervals.

pub mod close_day;
pub mod reconcile;
pub mod report;
pub mod settle;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Days, NaiveDate, Utc};
use clap::{Args, Subcommand, ValueEnum};
use rust_decimal::Decimal;

use crate::config::{Clock, Settings};
use crate::money::types::{kst_midnight_utc, parse_date};
use crate::money::{Accrued, Currency, ACCRUAL_DENOMINATOR};

/// The finance subcommands, flattened into the top-level command line.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the daily accrual journal for business date D (idempotent; runs under live traffic).
    CloseDay(CloseDayArgs),
    /// Pay all unclaimed interest through the end of D as `kind = auto` (idempotent).
    Settle(SettleArgs),
    /// Finance reports: the payout table of a date, the withholding of a month.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Check the money invariants for business date D; exit 1 with a readable diff when they fail.
    Reconcile(ReconcileArgs),
}

#[derive(Debug, Args)]
pub struct CloseDayArgs {
    /// Business date D (YYYY-MM-DD, KST).
    #[arg(long, value_parser = parse_date)]
    pub date: NaiveDate,
    /// Accounts computed and written per statement (memory is bounded by this).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub page_size: u32,
    /// Refuse to run before 00:00 KST of D+1 plus this many seconds (claims accepted
    /// just before midnight may still be in flight).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(0..=86_400))]
    pub grace_seconds: u32,
    /// How long to wait for the workers to apply every claim message queued before the run.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..=3_600))]
    pub wait_seconds: u32,
    /// Recompute every account from its whole history instead of from the
    /// previous day's row (the check of the incremental close; same rows).
    #[arg(long)]
    pub full: bool,
}

#[derive(Debug, Args)]
pub struct SettleArgs {
    /// Business date D: pays through 00:00 KST of D+1, with business date D+1.
    #[arg(long, value_parser = parse_date)]
    pub date: NaiveDate,
    /// Refuse to run before 00:00 KST of D+1 plus this many seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(0..=86_400))]
    pub grace_seconds: u32,
    /// Give up waiting for the workers after this many seconds (exit 1; rerun to resume).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub timeout_seconds: u32,
    /// Accounts read and produced per page.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub page_size: u32,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// The payout table of business date D.
    Payouts {
        /// Business date D (YYYY-MM-DD, KST).
        #[arg(long, value_parser = parse_date)]
        date: NaiveDate,
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
        /// Write here (atomically: a temporary file renamed at the end) instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// One account's interest statement for a year: per month and for the
    /// year, per currency and withholding profile, the payouts' gross, each
    /// tax and net (what a customer's tax return needs).
    Statement {
        /// The account id.
        #[arg(long)]
        account: String,
        /// The year of business dates (KST).
        #[arg(long, value_parser = clap::value_parser!(i32).range(2000..=9998))]
        year: i32,
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
        /// Write here (atomically) instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Withholding tax totals per currency for a month of business dates.
    Withholding {
        /// The month (YYYY-MM).
        #[arg(long, value_parser = parse_month)]
        month: NaiveDate,
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
        /// Write here (atomically) instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// RFC 4180 CSV with a header row.
    Csv,
    /// JSON Lines: one object per line, amounts as decimal strings.
    Json,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Business date D (YYYY-MM-DD, KST).
    #[arg(long, value_parser = parse_date)]
    pub date: NaiveDate,
    /// Problems listed at most (all are counted).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub show_max: u32,
    /// Also recompute every journal row of D from the account's whole history
    /// and compare (an audit of the incremental close; its cost grows with history).
    #[arg(long)]
    pub recompute: bool,
}

/// Runs a finance command. Errors are one line; `reconcile` returns an error
/// (exit 1) after printing its diff.
pub async fn run(settings: &Settings, command: Command) -> anyhow::Result<()> {
    match command {
        Command::CloseDay(args) => close_day::run(settings, &args).await,
        Command::Settle(args) => settle::run(settings, &args).await,
        Command::Report { command } => report::run(settings, command).await,
        Command::Reconcile(args) => reconcile::run(settings, &args).await,
    }
}

/// A pool for a finance command, named [`APPLICATION_NAME`] in `pg_stat_activity`,
/// with JIT off ([`crate::store::Session::jit`]).
pub async fn connect(settings: &Settings, max_connections: u32, quiet: bool) -> anyhow::Result<sqlx::PgPool> {
    let session = crate::store::Session {
        application_name: APPLICATION_NAME,
        log_statements: !quiet,
        jit: false,
        lock_timeout_ms: None,
    };
    crate::store::connect_as(&settings.database_url, max_connections, &session).await
}

/// `application_name` of the finance commands' database sessions.
pub const APPLICATION_NAME: &str = "interest-now-finance";

/// `YYYY-MM` → the first day of that month.
pub fn parse_month(text: &str) -> Result<NaiveDate, String> {
    let bad = || format!("not a YYYY-MM month: {text:?}");
    let (y, m) = text.split_once('-').ok_or_else(bad)?;
    if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    NaiveDate::from_ymd_opt(y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?, 1).ok_or_else(bad)
}

/// A business date and its boundaries: `[t0, t)` = [00:00 KST of D, 00:00 KST of D+1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day {
    pub date: NaiveDate,
    pub t0: DateTime<Utc>,
    pub t: DateTime<Utc>,
}

impl Day {
    pub fn new(date: NaiveDate) -> anyhow::Result<Day> {
        let next = date.checked_add_days(Days::new(1)).context("date out of range")?;
        Ok(Day {
            date,
            t0: kst_midnight_utc(date),
            t: kst_midnight_utc(next),
        })
    }

    pub fn next_date(&self) -> NaiveDate {
        self.date.checked_add_days(Days::new(1)).expect("checked in Day::new")
    }

    /// Refuses before the day is over plus `grace` on the service clock: work
    /// accepted just before midnight may still be on its way to the database.
    pub fn require_closed(&self, settings: &Settings, grace_seconds: u32, what: &str) -> anyhow::Result<()> {
        let now = Clock::new(settings.clock_offset_seconds).now();
        let ready = self.t + chrono::Duration::seconds(grace_seconds.into());
        if now < ready {
            anyhow::bail!(
                "{what} for {} can run from {} (00:00 KST of the next day + {grace_seconds} s grace); it is now {}",
                self.date,
                kst(ready),
                kst(now)
            );
        }
        Ok(())
    }
}

/// An instant as finance reads it: RFC 3339 in KST, microseconds (what PostgreSQL stores).
pub fn kst(t: DateTime<Utc>) -> String {
    t.with_timezone(&crate::money::types::kst())
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

pub use crate::store::units;

/// An exact amount in major units (as stored in `interest_payouts`) as accrual units.
/// Refuses amounts with more decimals than the currency has.
pub fn major_to_units(amount: Decimal, currency: Currency) -> anyhow::Result<i128> {
    let a = amount.normalize();
    anyhow::ensure!(
        a.scale() <= currency.minor_digits(),
        "{a} has more decimals than {} allows",
        currency.code()
    );
    // Exact: scale <= minor digits, so this is the amount in minor units.
    let minor = a.mantissa() * 10_i128.pow(currency.minor_digits() - a.scale());
    minor
        .checked_mul(ACCRUAL_DENOMINATOR)
        .with_context(|| format!("{a} overflows accrual units"))
}

/// Units as a display decimal of major units (truncated toward zero, 10 extra places).
pub fn display(units: i128, currency: Currency) -> Decimal {
    Accrued(units).to_display(currency.minor_digits())
}

/// Progress on stderr: a bar on a terminal, a plain line every few seconds otherwise.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    last_line: Instant,
}

/// How often the plain (non-terminal) progress line is printed.
const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(2);

impl Progress {
    pub fn new(label: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            let style = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
                .expect("static template")
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(label.to_owned());
            bar
        });
        Progress {
            bar,
            label: label.to_owned(),
            total,
            done: 0,
            last_line: Instant::now(),
        }
    }

    pub fn advance(&mut self, n: u64, note: &str) {
        self.done += n;
        match &self.bar {
            Some(bar) => {
                bar.inc(n);
                bar.set_message(format!("{} {note}", self.label));
            }
            None if self.last_line.elapsed() >= PROGRESS_LINE_EVERY => {
                eprintln!("{}: {}/{} {note}", self.label, self.done, self.total);
                self.last_line = Instant::now();
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => eprintln!("{}: {}/{} done", self.label, self.done, self.total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_parse_strictly() {
        assert_eq!(
            parse_month("2026-11").unwrap(),
            NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()
        );
        for bad in [
            "2026-13",
            "2026-1",
            "26-11",
            "2026-11-01",
            "2026/11",
            "",
            "abcd-ef",
            "2026-00",
        ] {
            assert!(parse_month(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_day_runs_from_kst_midnight_to_kst_midnight() {
        let d = Day::new(NaiveDate::from_ymd_opt(2026, 11, 22).unwrap()).unwrap();
        assert_eq!(kst(d.t0), "2026-11-22T00:00:00.000000+09:00");
        assert_eq!(kst(d.t), "2026-11-23T00:00:00.000000+09:00");
        assert_eq!(d.t - d.t0, chrono::Duration::days(1));
    }

    #[test]
    fn major_amounts_become_units_exactly() {
        let usd = Currency::try_from("USD").unwrap();
        assert_eq!(
            major_to_units(Decimal::new(1234, 2), usd).unwrap(),
            1234 * ACCRUAL_DENOMINATOR
        );
        assert_eq!(
            major_to_units(Decimal::new(5, 0), usd).unwrap(),
            500 * ACCRUAL_DENOMINATOR
        );
        assert_eq!(
            major_to_units(Decimal::new(2739, 0), Currency::KRW).unwrap(),
            2739 * ACCRUAL_DENOMINATOR
        );
        assert!(major_to_units(Decimal::new(15, 1), Currency::KRW).is_err());
        assert_eq!(display(ACCRUAL_DENOMINATOR * 3 / 2, Currency::KRW).to_string(), "1.5");
    }
}
