//! `interest-now simulate`: the money engine driven by a script of events, for
//! finance and product teams ("what would this customer get?") and for tests.
//!
//! Input: JSON Lines of `snapshot`, `claim`, `settle` and `query` events.
//! Output: one JSON line per outcome. Amounts are JSON strings holding exact
//! decimals. A malformed line stops the run with `line N: <reason>`.

use std::collections::HashMap;
use std::io::{BufRead, Write};

use chrono::{DateTime, Days, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::claims::{self, Claim, ClaimAnswer, Context, Effects, Input, Message, State};
use crate::money::explain::{explain, Paid};
use crate::money::snapshot::decode_fields;
use crate::money::types::{format_instant, kst_midnight_utc, parse_date, parse_instant};
use crate::money::{Account, AccountId, Accrued, IdempotencyKey, PayoutKind, Plans, Refusal, SnapshotOutcome};
use crate::service::api::{claim_code, claim_status};
use crate::wire;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Credit each payout's net into the balance at the payout instant.
    pub credit_net: bool,
    pub claims_per_day: u32,
    /// Each payout line carries its explanation (`money::explain`).
    pub explain: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            credit_net: false,
            claims_per_day: 1,
            explain: false,
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
    /// The accounts and every idempotency key's first answer, across events.
    state: State,
    now: DateTime<Utc>,
    /// Per account (`--explain`): the last payout's carried-out remainder
    /// and the late snapshots that corrected paid interest since it.
    explained: HashMap<String, ExplainState>,
    /// Every payout's explanation, by payout id (a replayed answer shows it again).
    explanations: HashMap<String, Value>,
}

#[derive(Debug, Default)]
struct ExplainState {
    carry: Accrued,
    corrections: Vec<wire::CorrectionJson>,
}

impl Simulator {
    pub fn new(plans: Plans, opts: Options) -> Self {
        Self {
            plans,
            opts,
            state: State::default(),
            now: DateTime::<Utc>::MIN_UTC,
            explained: HashMap::new(),
            explanations: HashMap::new(),
        }
    }

    pub fn account(&self, id: &AccountId) -> Option<&Account> {
        self.state.accounts.get(id.as_str())
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

    /// Runs messages through the claim decision (the worker's code), then,
    /// with `--credit-net`, credits each payout's net into the balance.
    fn decide(&mut self, messages: Vec<Message>, payout_id: &mut dyn FnMut(&AccountId) -> String) -> Effects {
        let inputs: Vec<Input> = messages
            .into_iter()
            .map(|message| Input { partition: 0, message })
            .collect();
        let cx = Context {
            plans: &self.plans,
            now: self.now,
            claims_per_day: self.opts.claims_per_day,
            keys_expired_before: None,
        };
        let fx = claims::decide(&mut self.state, &inputs, &cx, payout_id);
        if self.opts.explain {
            self.explain_payouts(&fx);
        }
        if self.opts.credit_net {
            for p in &fx.payouts {
                let at = match p.payout.kind {
                    PayoutKind::Claim => p.payout.accepted_at,
                    PayoutKind::Auto => p.payout.period_end,
                };
                let acc = self.state.accounts.get_mut(p.account_id.as_str()).expect("paid");
                acc.credit(&self.plans, at, p.payout.net);
            }
        }
        fx
    }

    /// The explanation of each payout just decided, from the account's
    /// timeline as it stands (before `--credit-net` credits the payout).
    fn explain_payouts(&mut self, fx: &Effects) {
        for p in &fx.payouts {
            let acc = &self.state.accounts[p.account_id.as_str()];
            let seen = self.explained.entry(p.account_id.to_string()).or_default();
            let fraction = self.plans.get(&p.payout.plan).expect("paid under it").fraction;
            let paid = Paid::of(&p.payout);
            let e = explain(
                &self.plans,
                acc.points(),
                &paid,
                seen.carry,
                fraction,
                p.tax_profile,
                p.payout.currency,
            );
            debug_assert_eq!(e.reproduces(&paid), Ok(()));
            let json = wire::explanation(&e, p.payout.currency, &seen.corrections);
            self.explanations.insert(p.payout_id.clone(), json);
            *seen = ExplainState {
                carry: p.payout.carried_out,
                corrections: Vec::new(),
            };
        }
    }

    /// Remembers a late snapshot that corrected paid interest (`--explain`).
    fn note_correction(&mut self, account: &str, seq: u64, received: DateTime<Utc>) {
        let Some(point) = self.state.accounts.get(account).and_then(|a| a.point(seq)) else {
            return;
        };
        let currency = self.state.accounts[account].currency();
        let correction = wire::CorrectionJson {
            seq,
            as_of: format_instant(point.as_of),
            balance: currency.to_decimal(point.balance).to_string(),
            received_at: format_instant(received),
        };
        self.explained
            .entry(account.to_owned())
            .or_default()
            .corrections
            .push(correction);
    }

    fn snapshot(&mut self, n: usize, obj: &Map<String, Value>) -> Result<Value, String> {
        let mut parsed = decode_fields(obj, &self.plans);
        if let Ok(snap) = &mut parsed {
            if self.opts.credit_net {
                snap.seq = snap
                    .seq
                    .checked_mul(CREDIT_SEQ_SPACING)
                    .ok_or("seq too large for --credit-net")?;
            }
            self.advance(snap.as_of);
        }
        let minor = parsed.as_ref().map(|s| s.currency.minor_digits()).unwrap_or_default();
        let who = parsed.as_ref().ok().map(|s| (s.account_id.to_string(), s.seq));
        let message = Message::Snapshot {
            parsed,
            raw: Vec::new(),
            key: None,
        };
        let mut fx = self.decide(vec![message], &mut |_| unreachable!("a snapshot pays nothing"));
        if let (Some((account, seq)), Some(Ok(SnapshotOutcome::Applied { adjustment, .. }))) =
            (&who, fx.snapshots.last())
        {
            if self.opts.explain && *adjustment != Accrued::ZERO {
                self.note_correction(account, *seq, self.now);
            }
        }
        Ok(match fx.snapshots.pop().expect("one snapshot") {
            Ok(outcome @ SnapshotOutcome::Applied { adjustment, .. }) => {
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
        let claim = Claim {
            claim_id: Uuid::from_u128(n as u128),
            // One client: the script is one bank backend's traffic.
            client: String::new(),
            account_id,
            key,
            accepted_at: at,
        };
        let mut fx = self.decide(vec![Message::Claim(claim)], &mut |_| format!("sim-{n}"));
        let decision = fx.claims.pop().expect("one claim");
        let mut line = self.with_explanation(answer_line(n, &decision.answer));
        if decision.replay_of.is_some() {
            line["replayed"] = json!(true);
        }
        Ok(line)
    }

    fn settle(&mut self, n: usize, obj: &Map<String, Value>) -> Result<Vec<Value>, String> {
        let date = parse_field(obj, "date", |s| parse_date(s).map_err(|e| e.detail))?;
        let through = kst_midnight_utc(date.checked_add_days(Days::new(1)).ok_or("date out of range")?);
        self.advance(through);
        let mut ids: Vec<String> = self.state.accounts.keys().cloned().collect();
        ids.sort();
        let run_at = self.now;
        let messages = ids
            .into_iter()
            .map(|account_id| Message::Settle {
                account_id,
                date,
                run_at,
            })
            .collect();
        let fx = self.decide(messages, &mut |id| format!("sim-{n}-{id}"));
        // A settlement is shown as a paid claim is.
        Ok(fx
            .payouts
            .into_iter()
            .map(|p| self.with_explanation(answer_line(n, &ClaimAnswer::Paid(Box::new(p.body)))))
            .collect())
    }

    /// A payout line with its explanation, under `--explain`.
    fn with_explanation(&self, mut line: Value) -> Value {
        let id = line["payout"]["payout_id"].as_str().map(str::to_owned);
        if let Some(e) = id.and_then(|id| self.explanations.get(&id)) {
            line["payout"]["explanation"] = e.clone();
        }
        line
    }

    fn query(&mut self, n: usize, obj: &Map<String, Value>) -> Result<Value, String> {
        let account_id = parse_field(obj, "account_id", |s| AccountId::try_from(s).map_err(|e| e.detail))?;
        let at = parse_field(obj, "at", |s| parse_instant(s).map_err(|e| e.detail))?;
        self.advance(at);
        Ok(match self.state.accounts.get(account_id.as_str()) {
            None => {
                json!({"event": n, "status": claim_status(&ClaimAnswer::UnknownAccount), "code": "unknown_account"})
            }
            Some(acc) => {
                let view = acc.view(&self.plans, at, self.opts.claims_per_day);
                json!({"event": n, "view": wire::view(&view, &account_id, acc.currency())})
            }
        })
    }
}

/// A claim's answer as one output line: the status, and the payout or the code.
fn answer_line(n: usize, answer: &ClaimAnswer) -> Value {
    let status = claim_status(answer);
    match answer {
        ClaimAnswer::Paid(payout) => json!({"event": n, "status": status, "payout": payout.to_value()}),
        ClaimAnswer::Refused(Refusal::AlreadyClaimedToday { next_claim_at }) => {
            json!({"event": n, "status": status, "code": claim_code(answer), "next_claim_at": format_instant(*next_claim_at)})
        }
        _ => json!({"event": n, "status": status, "code": claim_code(answer)}),
    }
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
