//! The claim decision driven directly: every answer, replays, order within a
//! batch, and batch boundaries. Pure, so no database or broker.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use uuid::Uuid;

use super::*;
use crate::money::plan::PlanFile;
use crate::money::types::{kst_midnight_utc, parse_instant};
use crate::money::{decode_snapshot, AccountId, IdempotencyKey, PayoutKind, Plans, Refusal, SnapshotOutcome};

const T0: &str = "2026-03-02T00:00:00+09:00";

fn plans() -> Plans {
    let json = r#"{"plans":[{"id":"basic","schedule":[{"effective_from":"2020-01-01T00:00:00+09:00","tiers":[{"rate_percent":"2.0"}]}]}]}"#;
    Plans::new(PlanFile::parse(json).unwrap(), None).unwrap()
}

fn t0() -> DateTime<Utc> {
    parse_instant(T0).unwrap()
}

fn snap(account: &str, seq: u64, balance: &str, at: DateTime<Utc>) -> Message {
    let json = format!(
        r#"{{"account_id":"{account}","seq":{seq},"balance":"{balance}","currency":"KRW","as_of":"{}"}}"#,
        at.to_rfc3339()
    );
    Message::Snapshot {
        parsed: decode_snapshot(json.as_bytes(), &plans()),
        raw: json.into_bytes(),
        key: Some(account.as_bytes().to_vec()),
    }
}

fn claim(n: u128, account: &str, key: &str, at: DateTime<Utc>) -> Message {
    Message::Claim(Claim {
        claim_id: Uuid::from_u128(n),
        client: "bank-app".into(),
        account_id: AccountId::try_from(account).unwrap(),
        key: IdempotencyKey::try_from(key).unwrap(),
        accepted_at: at,
    })
}

fn scoped(key: &str) -> ScopedKey {
    ScopedKey {
        client: "bank-app".into(),
        key: key.into(),
    }
}

/// The key's recorded first answer.
fn first(state: &State, key: &str) -> KeyRecord {
    match &state.keys[&scoped(key)] {
        KeyState::Answered(r) => r.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

fn settle(account: &str, date: NaiveDate, run_at: DateTime<Utc>) -> Message {
    Message::Settle {
        account_id: account.to_owned(),
        date,
        run_at,
    }
}

/// Runs messages as one batch; payout ids are `p1`, `p2`, … in `*next` order.
fn run_with(state: &mut State, msgs: Vec<Message>, next: &mut u32) -> Effects {
    let plans = plans();
    let cx = Context {
        plans: &plans,
        now: t0() + Duration::days(30),
        claims_per_day: 1,
        keys_expired_before: None,
    };
    let inputs: Vec<Input> = msgs
        .into_iter()
        .map(|message| Input { partition: 3, message })
        .collect();
    decide(state, &inputs, &cx, &mut |_| {
        *next += 1;
        format!("p{next}")
    })
}

fn run(state: &mut State, msgs: Vec<Message>) -> Effects {
    run_with(state, msgs, &mut 0)
}

fn answers(fx: &Effects) -> Vec<&ClaimAnswer> {
    fx.claims.iter().map(|d| &d.answer).collect()
}

/// A funded account: 100 million won at 2% since T0.
fn funded() -> State {
    let mut state = State::default();
    run(&mut state, vec![snap("alice", 1, "100000000", t0())]);
    state
}

#[test]
fn a_claim_with_interest_is_paid_and_recorded_for_its_key() {
    let mut state = funded();
    let fx = run(&mut state, vec![claim(1, "alice", "k1", t0() + Duration::days(1))]);
    let d = &fx.claims[0];
    let ClaimAnswer::Paid(body) = &d.answer else {
        panic!("{:?}", d.answer)
    };
    assert_eq!((body.payout_id.as_str(), body.account_id.as_str()), ("p1", "alice"));
    assert_eq!(body.kind, "claim");
    assert_eq!(
        (d.key_write, d.replay_of, d.payout_id.as_deref()),
        (Some(KeyWrite::Answer), None, Some("p1"))
    );
    assert_eq!(fx.payouts.len(), 1);
    let p = &fx.payouts[0];
    assert_eq!(
        (p.claim_id, p.idempotency_key.as_deref(), p.partition),
        (Some(Uuid::from_u128(1)), Some("k1"), 3)
    );
    assert_eq!(p.payout.kind, PayoutKind::Claim);
    assert_eq!(p.body, **body, "the outbox carries what the customer is shown");
    assert!(fx.touched.contains("alice"));
    assert_eq!(first(&state, "k1").answer, d.answer);
}

#[test]
fn an_unknown_account_is_refused_and_its_key_released_for_a_later_claim() {
    let mut state = State::default();
    let fx = run(&mut state, vec![claim(1, "nobody", "k1", t0())]);
    assert_eq!(answers(&fx), [&ClaimAnswer::UnknownAccount]);
    assert_eq!(fx.claims[0].key_write, Some(KeyWrite::Release));
    assert!(fx.payouts.is_empty() && fx.touched.is_empty());
    assert_eq!(
        state.keys[&scoped("k1")],
        KeyState::Released {
            claim_id: Uuid::from_u128(1)
        }
    );
    // The account's first snapshot arrives; the same key is a new claim, and pays.
    run(&mut state, vec![snap("nobody", 1, "100000000", t0())]);
    let fx = run(&mut state, vec![claim(2, "nobody", "k1", t0() + Duration::days(1))]);
    assert!(
        matches!(fx.claims[0].answer, ClaimAnswer::Paid(_)),
        "{:?}",
        fx.claims[0]
    );
    assert_eq!(fx.claims[0].replay_of, None);
}

#[test]
fn a_withdrawn_or_superseded_claim_is_never_applied() {
    let at = t0() + Duration::days(1);
    // The API withdrew claim 1 (503 after an ambiguous delivery).
    let mut state = funded();
    state.keys.insert(
        scoped("k"),
        KeyState::Released {
            claim_id: Uuid::from_u128(1),
        },
    );
    let fx = run(&mut state, vec![claim(1, "alice", "k", at)]);
    assert_eq!(answers(&fx), [&ClaimAnswer::Withdrawn]);
    assert_eq!((fx.claims[0].key_write, fx.payouts.len()), (None, 0));
    // A retry took the key over as claim 2: claim 1 arriving late is not applied, claim 2 pays.
    state.keys.insert(
        scoped("k"),
        KeyState::Held {
            claim_id: Uuid::from_u128(2),
        },
    );
    let fx = run(&mut state, vec![claim(1, "alice", "k", at), claim(2, "alice", "k", at)]);
    assert_eq!(fx.claims[0].answer, ClaimAnswer::Withdrawn);
    assert!(matches!(fx.claims[1].answer, ClaimAnswer::Paid(_)));
    assert_eq!(fx.payouts.len(), 1);
}

#[test]
fn keys_of_two_clients_never_meet() {
    let mut state = funded();
    run(&mut state, vec![snap("bob", 1, "100000000", t0())]);
    let at = t0() + Duration::days(1);
    let mut other = claim(2, "bob", "k", at);
    if let Message::Claim(c) = &mut other {
        c.client = "partner".into();
    }
    let fx = run(&mut state, vec![claim(1, "alice", "k", at), other]);
    assert!(matches!(fx.claims[0].answer, ClaimAnswer::Paid(_)));
    assert!(
        matches!(fx.claims[1].answer, ClaimAnswer::Paid(_)),
        "another client's same key is its own: {:?}",
        fx.claims[1].answer
    );
    assert_eq!(fx.payouts.len(), 2);
}

#[test]
fn nothing_accrued_is_nothing_to_claim() {
    let mut state = funded();
    let fx = run(&mut state, vec![claim(1, "alice", "k1", t0())]);
    assert_eq!(answers(&fx), [&ClaimAnswer::Refused(Refusal::NothingToClaim)]);
    assert!(fx.payouts.is_empty());
}

#[test]
fn a_second_claim_the_same_day_is_refused_until_midnight_kst() {
    let mut state = funded();
    let day = t0() + Duration::days(1);
    let fx = run(
        &mut state,
        vec![
            claim(1, "alice", "k1", day),
            claim(2, "alice", "k2", day + Duration::hours(5)),
        ],
    );
    let next = kst_midnight_utc(NaiveDate::from_ymd_opt(2026, 3, 4).unwrap());
    assert!(matches!(fx.claims[0].answer, ClaimAnswer::Paid(_)));
    assert_eq!(
        fx.claims[1].answer,
        ClaimAnswer::Refused(Refusal::AlreadyClaimedToday { next_claim_at: next })
    );
    assert_eq!(
        fx.claims[1].key_write,
        Some(KeyWrite::Answer),
        "a refusal is the key's answer too"
    );
    assert_eq!(fx.payouts.len(), 1);
}

#[test]
fn the_same_key_for_another_account_is_reused_and_not_recorded() {
    let mut state = funded();
    run(&mut state, vec![snap("bob", 1, "100000000", t0())]);
    let at = t0() + Duration::days(1);
    let fx = run(&mut state, vec![claim(1, "alice", "k1", at), claim(2, "bob", "k1", at)]);
    assert_eq!(fx.claims[1].answer, ClaimAnswer::KeyReused);
    assert_eq!((fx.claims[1].key_write, fx.claims[1].replay_of), (None, None));
    assert_eq!(fx.payouts.len(), 1, "bob is not paid");
    assert_eq!(
        first(&state, "k1").claim_id,
        Uuid::from_u128(1),
        "the key keeps its first answer"
    );
}

/// Every kept first answer, then the same key again (in the next batch):
/// the same answer, marked as a replay of the first claim, with no effect.
#[test]
fn every_answer_replays_exactly() {
    let day = t0() + Duration::days(1);
    let cases: Vec<(&str, Vec<Message>)> = vec![
        ("paid", vec![]),
        ("nothing", vec![]),
        ("already", vec![claim(90, "alice", "other", day)]),
    ];
    for (case, before) in cases {
        let mut state = funded();
        run(&mut state, before);
        let (account, at) = match case {
            "nothing" => ("alice", t0()),
            _ => ("alice", day),
        };
        let first = run(&mut state, vec![claim(1, account, "k", at)]);
        let again = run(&mut state, vec![claim(2, account, "k", at + Duration::days(3))]);
        let d = &again.claims[0];
        assert_eq!(d.answer, first.claims[0].answer, "{case}");
        assert_eq!(d.replay_of, Some(Uuid::from_u128(1)), "{case}");
        assert!(d.key_write.is_none() && d.payout_id.is_none(), "{case}");
        assert!(again.payouts.is_empty() && again.touched.is_empty(), "{case}");
    }
}

#[test]
fn a_replay_comes_from_the_loaded_key_records() {
    let mut state = funded();
    let stored = ClaimAnswer::Refused(Refusal::NothingToClaim);
    state.keys.insert(
        scoped("k"),
        KeyState::Answered(KeyRecord {
            account_id: AccountId::try_from("alice").unwrap(),
            claim_id: Uuid::from_u128(77),
            answer: stored.clone(),
        }),
    );
    let fx = run(&mut state, vec![claim(1, "alice", "k", t0() + Duration::days(9))]);
    assert_eq!(fx.claims[0].answer, stored);
    assert_eq!(fx.claims[0].replay_of, Some(Uuid::from_u128(77)));
    assert!(fx.payouts.is_empty(), "a stored key is never paid again");
}

#[test]
fn order_within_a_batch_is_message_order() {
    let at = t0() + Duration::days(1);
    let mut state = State::default();
    let fx = run(
        &mut state,
        vec![claim(1, "alice", "a", at), snap("alice", 1, "100000000", t0())],
    );
    assert_eq!(answers(&fx), [&ClaimAnswer::UnknownAccount], "the claim came first");
    let mut state = State::default();
    let fx = run(
        &mut state,
        vec![snap("alice", 1, "100000000", t0()), claim(1, "alice", "a", at)],
    );
    assert!(
        matches!(fx.claims[0].answer, ClaimAnswer::Paid(_)),
        "the snapshot came first"
    );
}

#[test]
fn the_same_key_twice_in_one_batch_replays_the_first() {
    let mut state = funded();
    let at = t0() + Duration::days(1);
    let fx = run(&mut state, vec![claim(1, "alice", "k", at), claim(2, "alice", "k", at)]);
    assert_eq!(fx.claims[1].answer, fx.claims[0].answer);
    assert_eq!(fx.claims[1].replay_of, Some(Uuid::from_u128(1)));
    assert_eq!(fx.payouts.len(), 1, "paid once");
}

#[test]
fn snapshots_report_outcomes_and_dead_letters() {
    let mut state = funded();
    let mut bad = snap("alice", 2, "1", t0());
    if let Message::Snapshot { parsed, .. } = &mut bad {
        *parsed = decode_snapshot(br#"{"account_id":"alice"}"#, &plans());
    }
    let fx = run(
        &mut state,
        vec![
            snap("alice", 1, "100000000", t0()),
            snap("alice", 1, "5", t0()),
            bad,
            snap("alice", 2, "200000000", t0() + Duration::hours(1)),
        ],
    );
    assert_eq!(fx.snapshots[0], Ok(SnapshotOutcome::Duplicate));
    assert_eq!(fx.snapshots[1].as_ref().unwrap_err().code, "seq_conflict");
    assert!(fx.snapshots[2].is_err());
    assert!(matches!(
        fx.snapshots[3],
        Ok(SnapshotOutcome::Applied { late: false, .. })
    ));
    let codes: Vec<&str> = fx.dead_letters.iter().map(|d| d.code).collect();
    assert_eq!(codes.len(), 2);
    assert_eq!(codes[0], "seq_conflict");
    assert_eq!(fx.dead_letters[0].key.as_deref(), Some(&b"alice"[..]));
    assert_eq!(fx.new_points.len(), 1, "only the applied snapshot is a new point");
    assert_eq!(fx.new_points[0].point.seq, 2);
}

#[test]
fn settlement_pays_once_per_date_without_a_claim() {
    let mut state = funded();
    let date = NaiveDate::from_ymd_opt(2026, 3, 5).unwrap();
    let run_at = t0() + Duration::days(5);
    let fx = run(
        &mut state,
        vec![settle("alice", date, run_at), settle("alice", date, run_at)],
    );
    assert_eq!(fx.payouts.len(), 1);
    let p = &fx.payouts[0];
    assert_eq!(
        (p.payout.kind, p.claim_id, p.idempotency_key.as_deref()),
        (PayoutKind::Auto, None, None)
    );
    assert!(fx.claims.is_empty());
    let none = run(&mut state, vec![settle("nobody", date, run_at)]);
    assert_eq!(none, Effects::default());
}

/// A script of every kind of message, for the batch-boundary test.
fn script() -> Vec<Message> {
    let d = |days: i64| t0() + Duration::days(days);
    vec![
        claim(1, "bob", "b0", d(0)),
        snap("alice", 1, "100000000", d(0)),
        snap("bob", 1, "5000000", d(0)),
        claim(2, "alice", "a1", d(1)),
        claim(3, "alice", "a1", d(1)),
        claim(4, "alice", "a2", d(1)),
        claim(5, "bob", "a1", d(1)),
        snap("alice", 2, "50000000", d(1) + Duration::hours(2)),
        snap("alice", 2, "50000000", d(1) + Duration::hours(2)),
        claim(6, "bob", "b0", d(2)),
        claim(7, "bob", "b1", d(2)),
        settle("alice", NaiveDate::from_ymd_opt(2026, 3, 4).unwrap(), d(3)),
        claim(8, "alice", "a3", d(3)),
        claim(9, "nobody", "n1", d(3)),
        claim(10, "nobody", "n1", d(4)),
        snap("bob", 3, "6000000", d(4)),
        claim(11, "bob", "b2", d(5)),
        claim(12, "alice", "a2", d(6)),
    ]
}

#[test]
fn batch_boundaries_do_not_change_answers_or_effects() {
    let whole = {
        let mut state = State::default();
        let fx = run(&mut state, script());
        (fx, state.accounts)
    };
    for size in [1, 2, 3, 5, 7] {
        let mut state = State::default();
        let mut next = 0;
        let mut merged = Effects::default();
        let mut msgs = script().into_iter().peekable();
        while msgs.peek().is_some() {
            let batch: Vec<Message> = msgs.by_ref().take(size).collect();
            let fx = run_with(&mut state, batch, &mut next);
            merged.touched.extend(fx.touched);
            merged.new_points.extend(fx.new_points);
            merged.payouts.extend(fx.payouts);
            merged.claims.extend(fx.claims);
            merged.snapshots.extend(fx.snapshots);
            merged.dead_letters.extend(fx.dead_letters);
        }
        assert_eq!(merged, whole.0, "batches of {size}");
        assert_eq!(state.accounts, whole.1, "batches of {size}");
    }
    let kinds: Vec<&str> = whole
        .0
        .claims
        .iter()
        .map(|d| match (&d.answer, d.replay_of) {
            (_, Some(_)) => "replay",
            (ClaimAnswer::Paid(_), _) => "paid",
            (ClaimAnswer::KeyReused, _) => "reused",
            (ClaimAnswer::UnknownAccount, _) => "unknown",
            (ClaimAnswer::Refused(Refusal::NothingToClaim), _) => "nothing",
            (ClaimAnswer::Refused(_), _) => "already",
            (ClaimAnswer::Withdrawn, _) => "withdrawn",
            (ClaimAnswer::Failed, _) => "failed",
        })
        .collect();
    for kind in ["replay", "paid", "reused", "unknown", "already"] {
        assert!(kinds.contains(&kind), "the script covers {kind}: {kinds:?}");
    }
}

#[test]
fn the_answer_travels_as_json_unchanged() {
    let mut state = funded();
    let fx = run(&mut state, vec![claim(1, "alice", "k", t0() + Duration::days(1))]);
    let next_claim_at = t0();
    let all = [
        fx.claims[0].answer.clone(),
        ClaimAnswer::KeyReused,
        ClaimAnswer::UnknownAccount,
        ClaimAnswer::Refused(Refusal::NothingToClaim),
        ClaimAnswer::Refused(Refusal::AlreadyClaimedToday { next_claim_at }),
        ClaimAnswer::Withdrawn,
        ClaimAnswer::Failed,
    ];
    for answer in all {
        let a = Answered {
            claim_id: Uuid::from_u128(5),
            replayed: true,
            answer,
        };
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Answered>(&text).unwrap(), a, "{text}");
    }
}

/// The worker stores an answer as the API shows it (status and body) and
/// reads it back to replay it: every answer survives the round trip.
#[test]
fn the_stored_http_form_reads_back_as_the_same_answer() {
    let mut state = funded();
    let fx = run(&mut state, vec![claim(1, "alice", "k", t0() + Duration::days(1))]);
    let all = [
        fx.claims[0].answer.clone(),
        ClaimAnswer::KeyReused,
        ClaimAnswer::UnknownAccount,
        ClaimAnswer::Refused(Refusal::NothingToClaim),
        ClaimAnswer::Refused(Refusal::AlreadyClaimedToday { next_claim_at: t0() }),
        ClaimAnswer::Withdrawn,
        ClaimAnswer::Failed,
    ];
    for answer in all {
        let status = crate::service::api::claim_status(&answer) as i16;
        let body = crate::service::api::claim_body(&answer, "alice");
        // As PostgreSQL hands it back: jsonb text, parsed again.
        let body: serde_json::Value = serde_json::from_str(&body.to_string()).unwrap();
        assert_eq!(
            crate::service::api::claim_from_stored(status, &body),
            Some(answer),
            "{status} {body}"
        );
    }
}

/// `maintain` deletes an expired key's row; a stale message of that key (a
/// withdrawn claim delivered late) then finds no row and must not be paid,
/// while a claim without a row accepted inside the TTL is applied as before.
#[test]
fn a_claim_older_than_the_key_ttl_without_a_key_row_is_withdrawn_not_paid() {
    let plans = plans();
    let now = t0() + Duration::days(30);
    let cx = Context {
        plans: &plans,
        now,
        claims_per_day: 1,
        keys_expired_before: Some(now - Duration::days(7)),
    };
    let mut state = funded();
    let stale = claim(1, "alice", "k-old", now - Duration::days(8));
    let fresh = claim(2, "alice", "k-new", now - Duration::seconds(1));
    let inputs: Vec<Input> = [stale, fresh]
        .into_iter()
        .map(|message| Input { partition: 0, message })
        .collect();
    let fx = decide(&mut state, &inputs, &cx, &mut |_| "p1".to_owned());
    assert_eq!(fx.claims[0].answer, ClaimAnswer::Withdrawn);
    assert_eq!(
        (fx.claims[0].key_write, fx.claims[0].payout_id.as_deref()),
        (None, None)
    );
    assert!(
        matches!(fx.claims[1].answer, ClaimAnswer::Paid(_)),
        "{:?}",
        fx.claims[1].answer
    );
    assert_eq!(fx.payouts.len(), 1, "only the live claim pays");
}
