//! `xtask bench aged`: the cost of an account and of a day as accounts age.
//!
//! Aged accounts get a long past quickly — written with SQL straight into
//! the tables (`history`) — and fresh accounts are created through the real
//! pipeline in the same database; then, in one run, the same figures are
//! measured for both: snapshot apply (in order and late), `GET …/interest`,
//! claims, `close-day` of the last day against the first, `maintain`, and
//! rows and bytes per account before and after it (`probe`). Each aged group
//! has its own fresh "twins" (disjoint fresh accounts, as many), so every
//! ratio compares the same number of messages under the same conditions.
//! The past's partitions are created before its rows are written, by the
//! code of `maintain` (`interest_now::maintain::create_partitions_since`), so
//! the past's claims, outbox rows and payouts sit in their daily (monthly)
//! partitions, as a year of `maintain` runs would have left them, and the
//! measured `maintain` drops the expired ones (`maintain_did`).

mod history;
mod probe;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{json, Value};

use interest_now::money::types::{business_date, format_instant};

use crate::stack::{run_clock_now, Stack};
use history::{plus, start_of, Stretch};

pub struct AgedOptions {
    pub admin_db_url: String,
    pub brokers: String,
    pub accounts: usize,
    pub days: u64,
    pub changes_per_day: i64,
    pub busy: usize,
    pub busy_changes: i64,
    /// Days of busy activity at the end of the history (the correction window and one).
    pub busy_days: i64,
    pub never_paid: usize,
    /// Accounts per group whose GET and claim are timed.
    pub samples: usize,
    pub workers: usize,
    pub partitions: i32,
    pub shared_broker: bool,
    /// Keep the database at the end (to explore it).
    pub keep_db: bool,
}

/// An aged group (id prefix, count) and its fresh twins.
struct Group {
    name: &'static str,
    ids: Vec<String>,
    twins: Vec<String>,
}

fn ids(prefix: &str, from: usize, n: usize) -> Vec<String> {
    (from + 1..=from + n).map(|a| format!("{prefix}{a:06}")).collect()
}

fn groups(o: &AgedOptions) -> Vec<Group> {
    let mut from = 0;
    let mut group = |name, prefix: &str, n: usize| {
        let g = Group {
            name,
            ids: ids(prefix, 0, n),
            twins: ids("fresh-", from, n),
        };
        from += n;
        g
    };
    vec![
        group("aged", "aged-", o.accounts),
        group("busy", "busy-", o.busy),
        group("never_paid", "never-", o.never_paid),
    ]
}

/// The run's calendar: history from 00:00 KST of `first` to `eve` (ten
/// minutes ago); `last` = yesterday, the last day close-day can close.
struct Calendar {
    first: NaiveDate,
    last: NaiveDate,
    start: DateTime<Utc>,
    eve: DateTime<Utc>,
    now: DateTime<Utc>,
}

fn calendar(now: DateTime<Utc>, days: u64) -> Calendar {
    let now = DateTime::from_timestamp(now.timestamp(), 0).expect("in range");
    let today = business_date(now);
    let first = today - chrono::Days::new(days);
    Calendar {
        first,
        last: today - chrono::Days::new(1),
        start: start_of(first),
        eve: now - chrono::Duration::minutes(10),
        now,
    }
}

pub async fn aged(o: AgedOptions) -> anyhow::Result<Value> {
    anyhow::ensure!(
        o.days >= 5,
        "--days must be at least 5 (closes days 1 and 2, and the last two days)"
    );
    let started = Instant::now();
    let (_broker, brokers) = crate::bench::broker_for(o.shared_broker, &o.brokers).await?;
    let mut stack = Stack::create(
        &crate::stack::run_name("interest_now_aged"),
        &o.admin_db_url,
        &brokers,
        o.partitions,
        history::PLANS_JSON,
    )
    .await?;
    // The processes run on the run's clock (CLOCK_OFFSET_SECONDS, e.g. the test suite's).
    stack.env.offset_secs = (run_clock_now()? - Utc::now()).num_seconds();
    // Stopped and dropped whatever happened (a failed run leaves nothing behind).
    let result = run_on(&mut stack, &o).await;
    if o.keep_db {
        eprintln!("bench aged: database kept: {}", stack.env.db_url);
    }
    stack.teardown(o.keep_db).await;
    let mut line = result?;
    line["elapsed_s"] = json!(round1(started.elapsed().as_secs_f64()));
    Ok(line)
}

/// The run on a created stack: the past, the processes, the fresh accounts, the measurements.
async fn run_on(stack: &mut Stack, o: &AgedOptions) -> anyhow::Result<Value> {
    let cal = calendar(stack.service_now(), o.days);
    let groups = groups(o);
    // The past's partitions first, as a year of hourly `maintain` runs would
    // have created them (the same code), so its rows land in them, not in DEFAULT.
    let t = Instant::now();
    let partitions = interest_now::maintain::create_partitions_since(stack.pool(), cal.first, cal.now).await?;
    let partitions_s = t.elapsed().as_secs_f64();
    eprintln!(
        "bench aged: {} partitions of the past created ({partitions_s:.1} s)",
        partitions.len()
    );
    let (written, write_s) = write_past(stack, o, &cal).await?;
    for _ in 0..o.workers {
        stack.spawn("worker", &[]).await?;
    }
    stack.spawn("api", &[]).await?;
    let fresh: Vec<String> = groups.iter().flat_map(|g| g.twins.clone()).collect();
    let two_days_ago = cal.now - chrono::Duration::days(2);
    let created_us = probe::apply_us(stack, snapshots(&fresh, &HashMap::new(), two_days_ago, 1)).await?;
    eprintln!(
        "bench aged: {} fresh accounts created through the pipeline",
        fresh.len()
    );
    let mut line = measure(stack, o, &cal, &groups).await?;
    line["history"] = json!({"rows_written_by_sql": written, "write_s": round1(write_s),
        "partitions_created": partitions.len(), "partitions_s": round1(partitions_s),
        "fresh_create_us_per_snapshot": created_us});
    line["options"] = options_json(o, &cal);
    Ok(line)
}

/// Every measurement, in order: warm-up, in-order and late snapshots, GET,
/// claims, close-day, sizes, maintain, sizes.
async fn measure(stack: &mut Stack, o: &AgedOptions, cal: &Calendar, groups: &[Group]) -> anyhow::Result<Value> {
    let warm = snapshot_rounds(stack, groups, cal.eve + chrono::Duration::seconds(60), Round::First).await?;
    eprintln!("bench aged: checkpoints moved by one in-order snapshot per account: {warm}");
    let in_order = snapshot_rounds(stack, groups, cal.eve + chrono::Duration::seconds(120), Round::InOrder).await?;
    let late = snapshot_rounds(stack, groups, cal.now - chrono::Duration::days(1), Round::Late).await?;
    eprintln!("bench aged: snapshot apply µs: in order {in_order}, late {late}");
    let (get, claim) = http_rounds(stack, o, groups).await?;
    let close = close_days(stack, cal).await?;
    eprintln!("bench aged: close-day {close}");
    let before = probe::sizes(stack).await?;
    let rows_before = rows_by_group(stack).await?;
    let (maintain_ms, maintain_note, maintain_did) = maintain(stack)?;
    let after = if maintain_ms.is_some() {
        probe::sizes(stack).await?
    } else {
        Value::Null
    };
    let rows_after = match maintain_ms {
        Some(_) => rows_by_group(stack).await?,
        None => Value::Null,
    };
    let ratios = ratios(&claim, &get, &in_order, &close);
    Ok(json!({
        "claim_ms": claim, "get_interest_ms": get,
        "snapshot_apply_us": {"first_after_sql_history": warm, "in_order": in_order, "late": late},
        "close_day_ms": close,
        "maintain_ms": maintain_ms, "maintain": maintain_note, "maintain_did": maintain_did,
        "per_account": {"before_maintain": before, "after_maintain": after,
            "rows_by_group_before_maintain": rows_before, "rows_by_group_after_maintain": rows_after},
        "ratios": ratios,
        "written_by_sql": ["balance_points (aged, busy, never_paid)", "interest_payouts with tax_profile",
            "claims", "idempotency_keys", "payout_outbox (published)",
            "the past's partitions, before its rows (maintain::create_partitions_since)",
            "accounts (checkpoint at paid_through)",
            "daily_accruals and day_closes of the days between day 2 and the last two (filler)"],
        "through_the_real_pipeline": ["fresh accounts (snapshots from the broker)",
            "every checkpoint's first move (one in-order snapshot per account)", "measured snapshots",
            "GET and claims (HTTP to the API process)", "close-day of days 1 and 2, the day before the last (--full) and the last",
            "maintain"],
    }))
}

/// The SQL-written past of the aged groups; (rows written, seconds).
async fn write_past(stack: &Stack, o: &AgedOptions, cal: &Calendar) -> anyhow::Result<(u64, f64)> {
    let t = Instant::now();
    let pool = stack.pool();
    let span = (cal.eve - cal.start).num_seconds();
    let every = 86_400 / o.changes_per_day.max(1);
    let year = |count| Stretch {
        from: cal.start,
        every_secs: every,
        count,
        seq_base: 0,
    };
    let mut rows = history::points(pool, "aged-", o.accounts, &year(span / every)).await?;
    rows += history::points(pool, "never-", o.never_paid, &year(span / every)).await?;
    let busy_from = cal.eve - chrono::Duration::days(o.busy_days);
    let calm = (busy_from - cal.start).num_seconds() / every;
    rows += history::points(pool, "busy-", o.busy, &year(calm)).await?;
    let busy_every = 86_400 / o.busy_changes.max(1);
    let busy = Stretch {
        from: busy_from,
        every_secs: busy_every,
        count: (cal.eve - busy_from).num_seconds() / busy_every,
        seq_base: 2 * calm,
    };
    rows += history::points(pool, "busy-", o.busy, &busy).await?;
    eprintln!(
        "bench aged: {rows} balance points written ({:.0} s)",
        t.elapsed().as_secs_f64()
    );
    let days = (plus(cal.first, 1), cal.last);
    let paid = Some((start_of(cal.last) + chrono::Duration::hours(9), cal.last));
    for (prefix, n) in [("aged-", o.accounts), ("busy-", o.busy)] {
        rows += history::payouts(pool, prefix, n, days, cal.start).await?;
        history::payout_trail(pool, prefix).await?;
        rows += history::accounts(pool, prefix, paid).await?;
    }
    rows += history::accounts(pool, "never-", None).await?;
    rows += history::journal_filler(pool, plus(cal.first, 2), cal.last - chrono::Days::new(2)).await?;
    // As a production database would be: statistics current.
    sqlx::query("VACUUM ANALYZE").execute(pool).await?;
    eprintln!(
        "bench aged: the SQL-written past: {rows} rows in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    Ok((rows, t.elapsed().as_secs_f64()))
}

/// `per_account` snapshots per account of `ids`, from its (seq, as_of) in
/// `seqs` (default: seq 2 at `as_of`), each next one 2 seqs and 1 s later.
fn snapshots(
    ids: &[String],
    seqs: &HashMap<String, (i64, DateTime<Utc>)>,
    as_of: DateTime<Utc>,
    per_account: usize,
) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(ids.len() * per_account);
    for j in 0..per_account as i64 {
        for (i, id) in ids.iter().enumerate() {
            let (seq, at) = seqs.get(id).copied().unwrap_or((2, as_of));
            let balance = 100_000_000 + (i as i64 * 7_919) % 900_000_000 + 12_345 + j;
            let json = format!(
                r#"{{"account_id":"{id}","seq":{},"balance":"{balance}","currency":"KRW","as_of":"{}","plan":"{}"}}"#,
                seq + 2 * j,
                format_instant(at + chrono::Duration::seconds(j)),
                history::PLAN
            );
            out.push((id.clone(), json));
        }
    }
    out
}

/// Per account of `ids`: the (seq, as_of) of its next in-order snapshot at
/// `as_of`, or with `late` of a late one just after the point in force at `as_of`.
async fn next_seqs(
    stack: &Stack,
    ids: &[String],
    as_of: DateTime<Utc>,
    late: bool,
) -> anyhow::Result<HashMap<String, (i64, DateTime<Utc>)>> {
    let sql = if late {
        "SELECT p.account_id, p.seq + 1, p.as_of + interval '1 second' FROM unnest($1::text[]) t(id)
         JOIN LATERAL (SELECT account_id, seq, as_of FROM balance_points b WHERE b.account_id = t.id AND b.as_of < $2
                       ORDER BY as_of DESC LIMIT 1) p ON true"
    } else {
        "SELECT a.account_id, a.last_seq + 2,
                greatest($2, (SELECT max(as_of) FROM balance_points b WHERE b.account_id = a.account_id) + interval '1 second')
         FROM accounts a WHERE a.account_id = ANY($1)"
    };
    let rows: Vec<(String, i64, DateTime<Utc>)> = sqlx::query_as(sql)
        .bind(ids)
        .bind(as_of)
        .fetch_all(stack.pool())
        .await?;
    Ok(rows.into_iter().map(|(id, seq, at)| (id, (seq, at))).collect())
}

/// A round of snapshots: the first after the SQL-written past (one per
/// account: it moves the checkpoint), in order, or late.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Round {
    First,
    InOrder,
    Late,
}

/// Snapshots per round at least (in order): a small group sends several per
/// account, so the pipeline's fixed latency (batching, polling) is shared.
const ROUND_SNAPSHOTS_MIN: usize = 1_000;

/// For each group and then its twins: snapshots timed until applied (µs per
/// snapshot). In order: ⌈`ROUND_SNAPSHOTS_MIN` / accounts⌉ per account (the
/// same for the twins); late: one per account (one free seq each).
/// `{group: µs, group_fresh: µs}`.
async fn snapshot_rounds(stack: &Stack, groups: &[Group], as_of: DateTime<Utc>, round: Round) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for g in groups.iter().filter(|g| !g.ids.is_empty()) {
        let per_account = match round {
            Round::InOrder => ROUND_SNAPSHOTS_MIN.div_ceil(g.ids.len()),
            Round::First | Round::Late => 1,
        };
        for (key, ids) in [(g.name.to_owned(), &g.ids), (format!("{}_fresh", g.name), &g.twins)] {
            let seqs = next_seqs(stack, ids, as_of, round == Round::Late).await?;
            anyhow::ensure!(
                seqs.len() == ids.len(),
                "{key}: {} of {} accounts found",
                seqs.len(),
                ids.len()
            );
            let sent = snapshots(ids, &seqs, as_of, per_account);
            out.insert(key, json!(probe::apply_us(stack, sent).await?));
        }
    }
    Ok(Value::Object(out))
}

/// GET …/interest, then one claim, for `samples` accounts of each group and
/// as many of its twins, interleaved in one stream. Returns (GET, claims)
/// latencies `{group: {p50, p99, n}, group_fresh: …}`.
async fn http_rounds(stack: &Stack, o: &AgedOptions, groups: &[Group]) -> anyhow::Result<(Value, Value)> {
    let mut order = Vec::new();
    for g in groups {
        for (a, b) in g.ids.iter().zip(&g.twins).take(o.samples) {
            order.push(a.clone());
            order.push(b.clone());
        }
    }
    let got = probe::get_interest(stack, &order, 4).await?;
    let (claimed, not_paid) = probe::claims(stack, &order, 8).await;
    anyhow::ensure!(
        not_paid == 0,
        "{not_paid} of {} claims were not paid (201)",
        order.len()
    );
    eprintln!("bench aged: {} GETs and {} claims", got.len(), claimed.len());
    Ok((by_group(groups, got), by_group(groups, claimed)))
}

fn by_group(groups: &[Group], samples: Vec<(String, Duration)>) -> Value {
    let mut out = serde_json::Map::new();
    for g in groups.iter().filter(|g| !g.ids.is_empty()) {
        let pick = |ids: &[String]| -> Vec<Duration> {
            let set: std::collections::HashSet<&String> = ids.iter().collect();
            samples
                .iter()
                .filter(|(id, _)| set.contains(id))
                .map(|(_, d)| *d)
                .collect()
        };
        out.insert(g.name.to_owned(), probe::latency(pick(&g.ids)));
        out.insert(format!("{}_fresh", g.name), probe::latency(pick(&g.twins)));
    }
    Value::Object(out)
}

/// "N" of close-day's "computed: N from the previous day's row".
fn from_previous_row(out: &str) -> Option<u64> {
    out.lines()
        .find(|l| l.contains("computed:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<u64>().ok())
}

/// close-day of day 1 (no previous row: computed from its one day of
/// history, no payouts), of day 2 (from day 1's row, one payout per paid
/// account: the same shape as the last day), of the day before the last
/// with --full (the whole year: the chain's start, and what the incremental
/// close saves), and of the last day (from the previous row).
/// Milliseconds, with the dates.
async fn close_days(stack: &Stack, cal: &Calendar) -> anyhow::Result<Value> {
    let day = |d: NaiveDate| d.to_string();
    let (first, second) = (day(cal.first), day(plus(cal.first, 1)));
    let (before_last, last) = (day(cal.last - chrono::Days::new(1)), day(cal.last));
    let (first_ms, _) = probe::timed(stack, &["close-day", "--date", &first])?;
    let (second_ms, _) = probe::timed(stack, &["close-day", "--date", &second])?;
    let (full_ms, _) = probe::timed(stack, &["close-day", "--date", &before_last, "--full"])?;
    let (last_ms, out) = probe::timed(stack, &["close-day", "--date", &last])?;
    Ok(json!({
        "first_day": first_ms, "first_date": first,
        "second_day": second_ms, "second_date": second,
        "last_day": last_ms, "last_date": last, "last_day_rows_from_previous_row": from_previous_row(&out),
        "day_before_last_full": full_ms,
        "activity": {"first_day": day_activity(stack, cal.first).await?,
            "second_day": day_activity(stack, plus(cal.first, 1)).await?,
            "last_day": day_activity(stack, cal.last).await?},
    }))
}

/// What close-day of `date` reads besides the accounts and the previous rows:
/// the points received and the payouts accepted during the day.
async fn day_activity(stack: &Stack, date: NaiveDate) -> anyhow::Result<Value> {
    let (t0, t) = (start_of(date), start_of(plus(date, 1)));
    let (points, payouts): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM balance_points WHERE received_at >= $1 AND received_at < $2),
                (SELECT count(*) FROM interest_payouts WHERE accepted_at >= $1 AND accepted_at < $2)",
    )
    .bind(t0)
    .bind(t)
    .fetch_one(stack.pool())
    .await?;
    Ok(json!({"points": points, "payouts": payouts}))
}

/// `interest-now maintain`, timed, when the binary has it, and what it did
/// (`maintain_did`).
fn maintain(stack: &Stack) -> anyhow::Result<(Option<u64>, String, Value)> {
    if !probe::has_maintain(stack) {
        return Ok((
            None,
            "absent: `interest-now maintain --help` failed (not in this binary yet)".into(),
            Value::Null,
        ));
    }
    let (ms, out) = probe::timed(stack, &["maintain"])?;
    Ok((Some(ms), "ran once".into(), maintain_did(&out)?))
}

/// From `maintain`'s JSON line: the partitions dropped per table (count, the
/// first and the last), what it kept, the keys deleted and the points pruned.
fn maintain_did(out: &str) -> anyhow::Result<Value> {
    let line: Value =
        serde_json::from_str(out.trim()).map_err(|e| anyhow::anyhow!("maintain printed no JSON line ({e}): {out}"))?;
    let mut dropped: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for name in line["dropped"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let table = name.rsplit_once("_p").map_or(name, |(t, _)| t);
        dropped.entry(table.to_owned()).or_default().push(name.to_owned());
    }
    let dropped: serde_json::Map<String, Value> = dropped
        .into_iter()
        .map(|(t, mut names)| {
            names.sort();
            let v = json!({"partitions": names.len(), "first": names.first(), "last": names.last()});
            (t, v)
        })
        .collect();
    Ok(json!({
        "dropped": dropped,
        "created": line["created"].as_array().map_or(0, Vec::len),
        "kept": line["kept"],
        "idempotency_keys_deleted": line["idempotency_keys_deleted"],
        "balance_points_pruned": line["balance_points_pruned"],
        "balance_points_accounts_visited": line["balance_points_accounts_visited"],
        "balance_points": line["balance_points"],
        "elapsed_ms": line["elapsed_ms"],
    }))
}

/// Rows per account of each group, per table (`probe::rows_per_account`).
async fn rows_by_group(stack: &Stack) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for (name, prefix) in [
        ("aged", "aged-"),
        ("busy", "busy-"),
        ("never_paid", "never-"),
        ("fresh", "fresh-"),
    ] {
        out.insert(name.into(), probe::rows_per_account(stack, prefix).await?);
    }
    Ok(Value::Object(out))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn ratio(a: &Value, b: &Value) -> Value {
    match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => json!((a / b * 100.0).round() / 100.0),
        _ => Value::Null,
    }
}

/// aged ÷ fresh (each group against its twins) and close-day last ÷ first.
fn ratios(claim: &Value, get: &Value, in_order: &Value, close: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for g in ["aged", "busy", "never_paid"] {
        let f = format!("{g}_fresh");
        out.insert(
            format!("claim_p99_{g}_vs_fresh"),
            ratio(&claim[g]["p99"], &claim[&f]["p99"]),
        );
        out.insert(format!("get_p99_{g}_vs_fresh"), ratio(&get[g]["p99"], &get[&f]["p99"]));
        out.insert(
            format!("in_order_apply_{g}_vs_fresh"),
            ratio(&in_order[g], &in_order[&f]),
        );
    }
    out.insert(
        "close_day_last_vs_first".into(),
        ratio(&close["last_day"], &close["first_day"]),
    );
    out.insert(
        "close_day_last_vs_second".into(),
        ratio(&close["last_day"], &close["second_day"]),
    );
    Value::Object(out)
}

fn options_json(o: &AgedOptions, cal: &Calendar) -> Value {
    json!({
        "accounts": o.accounts, "days": o.days, "changes_per_day": o.changes_per_day,
        "busy": o.busy, "busy_changes": o.busy_changes, "busy_days": o.busy_days,
        "never_paid": o.never_paid, "fresh": o.accounts + o.busy + o.never_paid,
        "samples": o.samples, "workers": o.workers, "partitions": o.partitions,
        "history_from": format_instant(cal.start), "history_to": format_instant(cal.eve),
    })
}
