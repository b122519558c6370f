//! `interest-now simulate` end to end, as a finance user runs it.

use std::path::Path;
use std::process::{Command, Output};

fn simulate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_interest-now"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("simulate")
        .args(args)
        .output()
        .expect("run interest-now")
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("interest-now-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn the_examples_run_and_show_every_kind_of_outcome() {
    let out = simulate(&["--plans", "examples/plans.json", "--events", "examples/events.jsonl"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = lines(&out);
    let event = |n: u64| v.iter().filter(move |l| l["event"] == n);
    let first = event(5).next().unwrap();
    assert_eq!(first["status"], 201);
    assert_eq!(first["payout"]["gross"], "2739");
    assert_eq!(first["payout"]["net"], "2329");
    let replay = event(6).next().unwrap();
    assert_eq!(replay["replayed"], true);
    assert_eq!(replay["payout"], first["payout"]);
    assert_eq!(event(7).next().unwrap()["code"], "already_claimed_today");
    assert_eq!(event(13).next().unwrap()["code"], "float_balance");
    assert_eq!(event(18).next().unwrap()["snapshot"], "late");
    assert_eq!(event(19).next().unwrap()["code"], "unknown_account");
    assert_eq!(event(20).next().unwrap()["code"], "idempotency_key_reused");
    let autos: Vec<_> = event(21).collect();
    assert_eq!(autos.len(), 3);
    assert!(autos
        .iter()
        .all(|a| a["payout"]["kind"] == "auto" && a["payout"]["business_date"] == "2026-12-01"));
    assert!(event(22).next().unwrap()["view"]["accrued"].is_string());
}

#[test]
fn a_malformed_line_stops_with_its_number_and_exit_2() {
    let events = temp_file(
        "bad.jsonl",
        "{\"type\":\"snapshot\",\"account_id\":\"a\",\"seq\":1,\"balance\":\"1\",\"currency\":\"KRW\",\"as_of\":\"2026-01-01T00:00:00+09:00\"}\n{\"type\":\"claim\",\"account_id\":\"a\"}\n{\"type\":\"query\",\"account_id\":\"a\",\"at\":\"2026-01-02T00:00:00+09:00\"}\n",
    );
    let out = simulate(&["--plans", "examples/plans.json", "--events", events.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("line 2: "), "{stderr}");
    assert_eq!(lines(&out).len(), 1, "nothing printed after the bad line");
    for bad in [
        "not json",
        "{\"type\":\"teleport\"}",
        "{\"type\":\"settle\",\"date\":\"2026-13-01\"}",
    ] {
        let events = temp_file("bad1.jsonl", bad);
        let out = simulate(&["--plans", "examples/plans.json", "--events", events.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("line 1: "));
    }
}

#[test]
fn bad_flags_and_files_get_one_line_and_exit_2() {
    let out = simulate(&["--plans", "examples/plans.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim().lines().count(), 1);
    let out = simulate(&[
        "--plans",
        "examples/plans.json",
        "--events",
        "examples/events.jsonl",
        "--claims-per-day",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = simulate(&["--plans", "nope.json", "--events", "examples/events.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.json"));
    assert!(Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/plans.json")
        .exists());
}

/// `simulate --explain` (issue 12 item 5): every payout line carries the
/// explanation the API serves, adding up to the payout; the late snapshots
/// that corrected alice's paid interest are listed under her next payout's
/// adjustment, and the carry is the previous payout's remainder.
#[test]
fn explain_adds_an_explanation_that_sums_to_each_payout() {
    let out = simulate(&[
        "--plans",
        "examples/plans.json",
        "--events",
        "examples/events.jsonl",
        "--explain",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = lines(&out);
    let paid: Vec<&serde_json::Value> = v.iter().filter(|l| l["payout"].is_object()).collect();
    assert!(paid.len() >= 5);
    for line in &paid {
        crate::history::assert_explanation_adds_up(&line["payout"]);
    }
    let mut alice: Vec<&serde_json::Value> = paid
        .iter()
        .map(|l| &l["payout"])
        .filter(|p| p["account_id"] == "alice")
        .collect();
    alice.dedup_by_key(|p| p["payout_id"].clone()); // a replay repeats its payout
    let last = alice.last().unwrap();
    let seqs: Vec<u64> = last["explanation"]["adjustment"]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 4], "{last}");
    assert_ne!(last["explanation"]["adjustment"]["units"], "0");
    for w in alice.windows(2) {
        assert_eq!(w[1]["explanation"]["carry_in"], w[0]["explanation"]["carried_out"]);
    }
    // Without the flag, nothing changes in the output.
    let plain = simulate(&["--plans", "examples/plans.json", "--events", "examples/events.jsonl"]);
    let mut stripped = v.clone();
    for l in &mut stripped {
        if let Some(p) = l.get_mut("payout").and_then(|p| p.as_object_mut()) {
            p.remove("explanation");
        }
    }
    assert_eq!(stripped, lines(&plain));
}
