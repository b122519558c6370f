//! A small, fast version of `xtask bench spike` and `xtask bench ingest` in
//! CI: for correctness only (no timing assertions). The benchmarks create
//! their own databases and topics and stop every process they start. They run
//! on the suite's clock (`TEST_CLOCK_AT`, see the harness's `clock`), like the
//! product's integration tests.

use std::path::Path;
use std::process::Command;

use interest_now_harness::clock::suite_offset;

/// The `interest-now` binary beside the dev tool: `cargo build --workspace`
/// (or `cargo test --workspace`) builds it into the same directory.
fn product_bin() -> std::path::PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_xtask")).with_file_name("interest-now");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (cargo build --workspace --all-targets)",
        bin.display()
    );
    bin
}

pub fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("bench")
        .args(args)
        .env("INTEREST_NOW_BIN", product_bin())
        .env(
            "DATABASE_URL",
            std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
        )
        .env(
            "KAFKA_BROKERS",
            std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        )
        .env("CLOCK_OFFSET_SECONDS", suite_offset().to_string())
        .output()
        .expect("run the benchmark");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().expect("a JSON line");
    serde_json::from_str(line).expect("the last line is JSON")
}

#[test]
fn a_small_midnight_spike_pays_every_account_exactly_once() {
    let r = bench(&[
        "spike",
        "--accounts",
        "1000",
        "--concurrency",
        "32",
        "--baseline-seconds",
        "1",
        "--retry-percent",
        "10",
    ]);
    assert_eq!(r["accounts"], 1000);
    assert_eq!(
        (r["errors"].as_u64(), r["duplicates"].as_u64(), r["lost"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{r}"
    );
    // 1,000 first claims and 100 retries with the same key, all answered 201.
    assert_eq!(r["statuses"]["201"], 1100, "{r}");
    for field in [
        "claims_per_s",
        "baseline_claims_per_s",
        "ceiling_claims_per_s",
        "p99_ms",
        "worker_rss_mb_max",
    ] {
        assert!(r[field].as_f64().is_some_and(|v| v > 0.0), "{field} in {r}");
    }
    // CPU per claim by component: the service's processes and the database did work.
    let cpu = &r["cpu_us_per_claim"];
    for part in [
        "api",
        "workers",
        "postgres",
        "load_generator",
        "broker",
        "service",
        "total",
    ] {
        assert!(cpu[part].as_u64().is_some(), "cpu_us_per_claim.{part} in {r}");
    }
    assert!(
        cpu["service"].as_u64() > Some(0) && cpu["postgres"].as_u64() > Some(0),
        "{r}"
    );
}

#[test]
fn a_small_ingest_applies_every_snapshot() {
    let r = bench(&[
        "ingest",
        "--snapshots",
        "4000",
        "--accounts",
        "1000",
        "--max-workers",
        "2",
        "--partitions",
        "4",
    ]);
    let rounds = r["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2);
    for round in rounds {
        assert!(round["snapshots_per_s"].as_f64().is_some_and(|v| v > 0.0), "{round}");
    }
}
