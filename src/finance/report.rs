//! `report payouts --date D` and `report withholding --month YYYY-MM`.
//!
//! CSV is RFC 4180: a header row, CRLF line ends, a field quoted (with `""`
//! for a quote) when it holds a comma, a quote, CR or LF. JSON is JSON Lines:
//! one object per line, in the same column order. Amounts are printed exactly
//! as PostgreSQL stores them (decimal text, no thousands separators; strings in
//! JSON); instants are RFC 3339 in KST with microseconds. Rows are streamed:
//! memory does not grow with the size of the day.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::Row;

use super::{kst, Format, ReportCommand};
use crate::config::Settings;

/// The columns of `report payouts`, in order (docs/FINANCE.md describes each).
pub const PAYOUT_COLUMNS: [&str; 18] = [
    "payout_id",
    "claim_id",
    "account_id",
    "kind",
    "business_date",
    "period_start",
    "period_end",
    "plan_id",
    "gross",
    "income_tax",
    "local_tax",
    "rural_tax",
    "adjustment",
    "net",
    "currency",
    "idempotency_key",
    "accepted_at",
    "paid_at",
];

/// The columns of `report withholding`, in order.
pub const WITHHOLDING_COLUMNS: [&str; 6] = ["month", "currency", "income_tax", "local_tax", "rural_tax", "total"];

/// One payout as reported. Field order = `PAYOUT_COLUMNS`.
#[derive(Debug, Serialize)]
struct PayoutLine {
    payout_id: String,
    claim_id: Option<String>,
    account_id: String,
    kind: String,
    business_date: String,
    period_start: String,
    period_end: String,
    plan_id: String,
    gross: String,
    income_tax: String,
    local_tax: String,
    rural_tax: String,
    adjustment: String,
    net: String,
    currency: String,
    idempotency_key: Option<String>,
    accepted_at: String,
    paid_at: String,
}

impl PayoutLine {
    fn from_row(r: &sqlx::postgres::PgRow) -> PayoutLine {
        let at = |c: &str| kst(r.get::<DateTime<Utc>, _>(c));
        let s = |c: &str| r.get::<String, _>(c);
        PayoutLine {
            payout_id: s("payout_id"),
            claim_id: r.get("claim_id"),
            account_id: s("account_id"),
            kind: s("kind"),
            business_date: s("business_date"),
            period_start: at("period_start"),
            period_end: at("period_end"),
            plan_id: s("plan_id"),
            gross: s("gross"),
            income_tax: s("income_tax"),
            local_tax: s("local_tax"),
            rural_tax: s("rural_tax"),
            adjustment: s("adjustment"),
            net: s("net"),
            currency: s("currency"),
            idempotency_key: r.get("idempotency_key"),
            accepted_at: at("accepted_at"),
            paid_at: at("paid_at"),
        }
    }

    fn cells(&self) -> [&str; 18] {
        fn o(v: &Option<String>) -> &str {
            v.as_deref().unwrap_or("")
        }
        [
            &self.payout_id,
            o(&self.claim_id),
            &self.account_id,
            &self.kind,
            &self.business_date,
            &self.period_start,
            &self.period_end,
            &self.plan_id,
            &self.gross,
            &self.income_tax,
            &self.local_tax,
            &self.rural_tax,
            &self.adjustment,
            &self.net,
            &self.currency,
            o(&self.idempotency_key),
            &self.accepted_at,
            &self.paid_at,
        ]
    }
}

#[derive(Debug, Serialize)]
struct WithholdingLine {
    month: String,
    currency: String,
    income_tax: String,
    local_tax: String,
    rural_tax: String,
    total: String,
}

pub async fn run(settings: &Settings, command: ReportCommand) -> anyhow::Result<()> {
    match command {
        ReportCommand::Payouts { date, format, output } => {
            let mut out = Sink::open(output.as_deref())?;
            payouts(settings, date, format, &mut out).await?;
            out.commit()
        }
        ReportCommand::Statement {
            account,
            year,
            format,
            output,
        } => {
            let account = crate::money::AccountId::try_from(account.as_str())
                .map_err(|e| anyhow::anyhow!("--account: {}", e.detail))?;
            let mut out = Sink::open(output.as_deref())?;
            statement(settings, &account, year, format, &mut out).await?;
            out.commit()
        }
        ReportCommand::Withholding { month, format, output } => {
            let mut out = Sink::open(output.as_deref())?;
            withholding(settings, month, format, &mut out).await?;
            out.commit()
        }
    }
}

async fn payouts(settings: &Settings, date: NaiveDate, format: Format, out: &mut Sink) -> anyhow::Result<()> {
    let pool = super::connect(settings, 2, true).await?;
    if format == Format::Csv {
        write_csv_row(out, &PAYOUT_COLUMNS)?;
    }
    let mut rows = sqlx::query(
        "SELECT payout_id::text AS payout_id, claim_id::text AS claim_id, account_id, kind,
                business_date::text AS business_date, period_start, period_end, plan_id,
                gross::text AS gross, income_tax::text AS income_tax, local_tax::text AS local_tax,
                rural_tax::text AS rural_tax, adjustment::text AS adjustment, net::text AS net, currency,
                idempotency_key, accepted_at, paid_at
         FROM interest_payouts WHERE business_date = $1
         ORDER BY accepted_at, payout_id",
    )
    .bind(date)
    .fetch(&pool);
    while let Some(r) = rows.try_next().await.context("reading payouts")? {
        let line = PayoutLine::from_row(&r);
        match format {
            Format::Csv => write_csv_row(out, &line.cells())?,
            Format::Json => write_json_line(out, &line)?,
        }
    }
    Ok(())
}

async fn withholding(settings: &Settings, month: NaiveDate, format: Format, out: &mut Sink) -> anyhow::Result<()> {
    let pool = super::connect(settings, 2, true).await?;
    let rows = sqlx::query(
        "SELECT month, currency, income_tax::text AS income_tax, local_tax::text AS local_tax,
                rural_tax::text AS rural_tax, total::text AS total
         FROM monthly_withholding WHERE month = $1 ORDER BY currency",
    )
    .bind(month.format("%Y-%m").to_string())
    .fetch_all(&pool)
    .await
    .context("reading monthly_withholding")?;
    if format == Format::Csv {
        write_csv_row(out, &WITHHOLDING_COLUMNS)?;
    }
    for r in rows {
        let s = |c: &str| r.get::<String, _>(c);
        let line = WithholdingLine {
            month: s("month"),
            currency: s("currency"),
            income_tax: s("income_tax"),
            local_tax: s("local_tax"),
            rural_tax: s("rural_tax"),
            total: s("total"),
        };
        match format {
            Format::Csv => write_csv_row(
                out,
                &[
                    &line.month,
                    &line.currency,
                    &line.income_tax,
                    &line.local_tax,
                    &line.rural_tax,
                    &line.total,
                ],
            )?,
            Format::Json => write_json_line(out, &line)?,
        }
    }
    Ok(())
}

const STATEMENT_COLUMNS: [&str; 9] = [
    "period",
    "currency",
    "tax_profile",
    "payouts",
    "gross",
    "income_tax",
    "local_tax",
    "rural_tax",
    "net",
];

/// The statement's lines: the months, then the year (`period` = `YYYY`).
async fn statement(
    settings: &Settings,
    account: &crate::money::AccountId,
    year: i32,
    format: Format,
    out: &mut Sink,
) -> anyhow::Result<()> {
    let pool = super::connect(settings, 2, true).await?;
    let lines = crate::store::statement(&pool, account.as_str(), year)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no account {account}"))?;
    if format == Format::Csv {
        write_csv_row(out, &STATEMENT_COLUMNS)?;
    }
    for l in &lines {
        match format {
            Format::Csv => write_csv_row(
                out,
                &[
                    &l.period,
                    &l.currency,
                    &l.tax_profile,
                    &l.payouts.to_string(),
                    &l.gross,
                    &l.income_tax,
                    &l.local_tax,
                    &l.rural_tax,
                    &l.net,
                ],
            )?,
            Format::Json => write_json_line(out, l)?,
        }
    }
    Ok(())
}

/// One CSV field per RFC 4180.
pub fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

fn write_csv_row(out: &mut Sink, cells: &[&str]) -> anyhow::Result<()> {
    let line: Vec<_> = cells.iter().map(|c| csv_field(c)).collect();
    write!(out.writer(), "{}\r\n", line.join(",")).context("writing the report")
}

fn write_json_line(out: &mut Sink, value: &impl Serialize) -> anyhow::Result<()> {
    let w = out.writer();
    serde_json::to_writer(&mut *w, value).context("writing the report")?;
    w.write_all(b"\n").context("writing the report")
}

/// Where a report goes: stdout, or a file written atomically (a temporary file
/// beside it, renamed on success, removed on failure: nothing half-written is left).
enum Sink {
    Stdout(BufWriter<std::io::Stdout>),
    File {
        w: BufWriter<File>,
        tmp: PathBuf,
        path: PathBuf,
        done: bool,
    },
}

impl Sink {
    fn open(path: Option<&Path>) -> anyhow::Result<Sink> {
        let Some(path) = path else {
            return Ok(Sink::Stdout(BufWriter::new(std::io::stdout())));
        };
        let name = path
            .file_name()
            .with_context(|| format!("{}: not a file name", path.display()))?;
        let tmp = path.with_file_name(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Sink::File {
            w: BufWriter::new(file),
            tmp,
            path: path.to_owned(),
            done: false,
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File { w, .. } => w,
        }
    }

    fn commit(mut self) -> anyhow::Result<()> {
        match &mut self {
            Sink::Stdout(w) => w.flush().context("writing the report"),
            Sink::File { w, tmp, path, done } => {
                w.flush().context("writing the report")?;
                w.get_ref().sync_all().context("syncing the report")?;
                std::fs::rename(&*tmp, &*path).with_context(|| format!("renaming to {}", path.display()))?;
                *done = true;
                Ok(())
            }
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Sink::File { tmp, done: false, .. } = self {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("plain-key_1"), "plain-key_1");
        assert_eq!(csv_field("-5"), "-5");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field(""), "");
    }
}
