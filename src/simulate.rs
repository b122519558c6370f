//! `interest-now simulate`: the money engine driven by a script of events, for
//! finance and product teams ("what would this customer get?") and for tests.
//!
//! Input: JSON Lines of `snapshot`, `claim`, `settle` and `query` events.
//! Output: one JSON line per outcome. Amounts are JSON strings holding exact
//! decimals. A malformed line stops the run with `line N: <reason>`.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};

use chrono::{DateTime, Days, Utc};
use serde_json::{json, Map, Value};

use crate::money::accrual::point_at;
use crate::money::snapshot::decode_fields;
use crate::money::types::{format_instant, kst_midnight_utc, parse_date, parse_instant};
use crate::money::{Account, AccountId, IdempotencyKey, Minor, Plans, Point, SnapshotOutcome};

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Credit each payout's net into the balance at the payout instant.
    pub credit_net: bool,
    pub claims_per_day: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            credit_net: false,
            claims_per_day: 1,
        }
    }
}

/// A script error: which line, and why.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

/// With `--credit-net`, script seqs are spread apart so that the credits the
/// simulator inserts fit between them without changing their order.
const CREDIT_SEQ_SPACING: u64 = 1 << 20;

pub struct Simulator {
    plans: Plans,
    opts: Options,
    accounts: BTreeMap<AccountId, Account>,
    /// Idempotency key → (account, the first answer).
    answers: HashMap<IdempotencyKey, (AccountId, Value)>,
    now: DateTime<Utc>,
}

impl Simulator {
    pub fn new(plans: Plans, opts: Options) -> Self {
        Self {
            plans,
            opts,
            accounts: BTreeMap::new(),
            answers: HashMap::new(),
            now: DateTime::<Utc>::MIN_UTC,
        }
    }

    pub fn account(&self, id: &AccountId) -> Option<&Account> {
        self.accounts.get(id)
    }

    /// Runs one event (1-based line `n`) and returns its outcome lines.
    pub fn event(&mut self, n: usize, line: &str) -> Result<Vec<Value>, String> {
        let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let obj = value.as_object().ok_or("not a JSON object")?;
        let kind = obj.get("type").and_then(Value::as_str).ok_or("missing \"type\"")?;
        match kind {
            "snapshot" => Ok(vec![self.snapshot(n, obj)?]),
            "claim" => Ok(vec![self.claim(n, obj)?]),
            "settle" => self.settle(n, obj),
            "query" => Ok(vec![self.query(n, obj)?]),
            other => Err(format!("unknown event type {other:?}")),
        }
    }

    fn advance(&mut self, t: DateTime<Utc>) {
        self.now = self.now.max(t);
    }

    fn snapshot(&mut self, n: usize, obj: &Map<String, Value>) -> Result<Value, String> {
        let snap = match decode_fields(obj, &self.plans) {
            Ok(s) => s,
            Err(e) => return Ok(json!({"event": n, "snapshot": "rejected", "code": e.code, "detail": e.detail})),
        };
        let mut snap = snap;
        if self.opts.credit_net {
            snap.seq = snap
                .seq
                .checked_mul(CREDIT_SEQ_SPACING)
                .ok_or("seq too large for --credit-net")?;
        }
        self.advance(snap.as_of);
        let result = match self.accounts.get_mut(&snap.account_id) {
            Some(acc) => acc.apply_snapshot(&snap, &self.plans, self.now),
            None => {
                self.accounts
                    .insert(snap.account_id.clone(), Account::open(&snap, &self.plans));
                Ok(SnapshotOutcome::Applied {
                    late: false,
                    adjustment: Default::default(),
                })
            }
        };
        Ok(match result {
            Ok(outcome @ SnapshotOutcome::Applied { adjustment, .. }) => {
                let minor = snap.currency.minor_digits();
                json!({"event": n, "snapshot": outcome.label(), "adjustment": adjustment.to_display(minor).to_string()})
            }
            Ok(outcome) => json!({"event": n, "snapshot": outcome.label()}),
            Err(e) => json!({"event": n, "snapshot": "rejected", "code": e.code, "detail": e.detail}),
        })
    }

    fn claim(&mut self, n: usize, obj: &Map<String, Value>) -> Result<Value, String> {
        let account_id = parse_field(obj, "account_id", |s| AccountId::try_from(s).map_err(|e| e.detail))?;
        let at = parse_field(obj, "at", |s| parse_instant(s).map_err(|e| e.detail))?;
        let key = parse_field(obj, "idempotency_key", |s| {
            IdempotencyKey::try_from(s).map_err(|e| e.detail)
        })?;
        self.advance(at);
        if let Some((owner, answer)) = self.answers.get(&key) {
            return Ok(if *owner == account_id {
                let mut replay = answer.clone();
                replay["event"] = json!(n);
                replay["replayed"] = json!(true);
                replay
            } else {
                json!({"event": n, "status": 422, "code": "idempotency_key_reused"})
            });
        }
        let answer = match self.accounts.get_mut(&account_id) {
            None => json!({"event": n, "status": 404, "code": "unknown_account"}),
            Some(acc) => match acc.claim(&self.plans, at, self.opts.claims_per_day) {
                Ok(payout) => {
                    let body = payout.to_json(&format!("sim-{n}"), &account_id);
                    if self.opts.credit_net {
                        credit(acc, at, payout.net);
                    }
                    json!({"event": n, "status": 201, "payout": body})
                }
                Err(refusal) => {
                    let mut v = json!({"event": n, "status": refusal.status(), "code": refusal.code()});
                    if let crate::money::Refusal::AlreadyClaimedToday { next_claim_at } = refusal {
                        v["next_claim_at"] = json!(format_instant(next_claim_at));
                    }
                    v
                }
            },
        };
        self.answers.insert(key, (account_id, answer.clone()));
        Ok(answer)
    }

    fn settle(&mut self, n: usize, obj: &Map<String, Value>) -> Result<Vec<Value>, String> {
        let date = parse_field(obj, "date", |s| parse_date(s).map_err(|e| e.detail))?;
        let through = kst_midnight_utc(date.checked_add_days(Days::new(1)).ok_or("date out of range")?);
        self.advance(through);
        let mut out = Vec::new();
        for (id, acc) in self.accounts.iter_mut() {
            if let Some(payout) = acc.settle(&self.plans, date, self.now) {
                out.push(json!({"event": n, "status": 201, "payout": payout.to_json(&format!("sim-{n}-{id}"), id)}));
                if self.opts.credit_net {
                    credit(acc, payout.period_end, payout.net);
                }
            }
        }
        Ok(out)
    }

    fn query(&mut self, n: usize, obj: &Map<String, Value>) -> Result<Value, String> {
        let account_id = parse_field(obj, "account_id", |s| AccountId::try_from(s).map_err(|e| e.detail))?;
        let at = parse_field(obj, "at", |s| parse_instant(s).map_err(|e| e.detail))?;
        self.advance(at);
        Ok(match self.accounts.get(&account_id) {
            None => json!({"event": n, "status": 404, "code": "unknown_account"}),
            Some(acc) => {
                let view = acc.view(&self.plans, at, self.opts.claims_per_day);
                json!({"event": n, "view": view.to_json(&account_id, acc.currency)})
            }
        })
    }
}

/// Core banking credits the net amount: the balance in force at `at` grows by `net`.
fn credit(acc: &mut Account, at: DateTime<Utc>, net: Minor) {
    let current = point_at(&acc.points, at.timestamp())
        .expect("a paid account has a point")
        .clone();
    let as_of = at.max(acc.points.last().expect("point").as_of);
    acc.last_seq += 1;
    acc.points.push(Point {
        seq: acc.last_seq,
        as_of,
        balance: Minor(current.balance.0 + net.0),
        plan: current.plan,
    });
}

fn parse_field<T>(
    obj: &Map<String, Value>,
    name: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, String> {
    let text = obj
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string field {name:?}"))?;
    parse(text).map_err(|e| format!("{name}: {e}"))
}

/// Runs a whole script, writing outcome lines to `out` as it goes.
pub fn run(plans: Plans, events: impl BufRead, mut out: impl Write, opts: Options) -> Result<(), anyhow::Error> {
    let mut sim = Simulator::new(plans, opts);
    for (i, line) in events.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| LineError {
            line: n,
            reason: e.to_string(),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let outcomes = sim.event(n, &line).map_err(|reason| LineError { line: n, reason })?;
        for o in outcomes {
            writeln!(out, "{o}")?;
        }
    }
    out.flush()?;
    Ok(())
}
