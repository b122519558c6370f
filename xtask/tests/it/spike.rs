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

/// A fresh output directory for one test's JSON and SVG files.
fn out_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("xtask-it-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Whether this machine has the cgroup v1 `cpu` and `cpuacct` controllers (`--worker-cpu`).
fn cgroup_v1() -> bool {
    Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists()
        && (Path::new("/sys/fs/cgroup/cpuacct/cpuacct.usage").exists()
            || Path::new("/sys/fs/cgroup/cpu/cpuacct.usage").exists())
}

/// The benchmarks' cgroups present now (each run removes its own at the end).
fn bench_cgroups() -> Vec<String> {
    std::fs::read_dir("/sys/fs/cgroup/cpu")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("xtask-bench-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_small_midnight_spike_pays_every_account_exactly_once() {
    let out = out_dir("spike");
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
        "--out",
        out.to_str().unwrap(),
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
    // The load generator is a process of its own, with its connections opened before the start.
    assert!(cpu["load_generator"].as_u64() > Some(0), "{r}");
    assert_eq!(r["load_generator"]["claims"], 1100, "{r}");
    assert_eq!(r["load_generator"]["connections_warmed"], 32, "{r}");
    // The timeline beside the JSON: one 201 curve, latencies, errors, lag.
    let svg = std::fs::read_to_string(out.join("spike.svg")).expect("spike.svg");
    assert!(svg.starts_with("<svg ") && svg.contains("claims completed") && svg.contains("consumer lag"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("spike.json")).expect("spike.json")).unwrap();
    assert_eq!(json["statuses"], r["statuses"]);
    let _ = std::fs::remove_dir_all(&out);
}

/// `bench scale` at CI size: 1 and 2 capped workers, then 1 and 2 capped
/// APIs; every claim paid once in every run, efficiencies computed from the
/// runs' own throughputs, CPU read from the cgroups, which are gone at the end.
/// Where cgroup v1 is missing, the run stops with one clear line.
#[test]
fn a_small_scale_run_caps_each_process_and_removes_its_cgroups() {
    let out = out_dir("scale");
    let args = [
        "scale",
        "--accounts",
        "1000",
        "--counts",
        "1,2",
        "--concurrency",
        "32",
        "--worker-cpu",
        "0.5",
        "--api-cpu",
        "0.5",
        "--partitions",
        "4",
        "--baseline-seconds",
        "1",
        "--out",
        out.to_str().unwrap(),
    ];
    if !cgroup_v1() {
        let o = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .arg("bench")
            .args(args)
            .env("INTEREST_NOW_BIN", product_bin())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("cgroup v1") && err.trim().lines().count() == 1,
            "{err}"
        );
        return;
    }
    let before = bench_cgroups();
    let r = bench(&args);
    for table in ["workers", "apis"] {
        let rows = r["tables"][table].as_array().expect("rows");
        assert_eq!(rows.len(), 2, "{r}");
        let thr: Vec<f64> = rows.iter().map(|row| row["claims_per_s"].as_f64().unwrap()).collect();
        assert_eq!(rows[0]["efficiency"], 1.0, "{r}");
        let want = ((thr[1] / (2.0 * thr[0])) * 100.0).round() / 100.0;
        assert_eq!(rows[1]["efficiency"].as_f64(), Some(want), "{r}");
        for row in rows {
            assert_eq!(
                (row["errors"].as_u64(), row["duplicates"].as_u64(), row["lost"].as_u64()),
                (Some(0), Some(0), Some(0)),
                "{row}"
            );
            // The capped role's CPU comes from its cgroups, and its quota was in force.
            let capped = if table == "workers" { "worker" } else { "api" };
            assert!(row["throttled"][capped]["periods"].as_u64().is_some(), "{row}");
            let part = if table == "workers" { "workers" } else { "api" };
            assert!(row["cpu_us_per_claim"][part].as_u64() > Some(0), "{row}");
            assert!(row["ratio_vs_baseline"].as_f64().is_some(), "{row}");
            assert!(Path::new(row["timeline_svg"].as_str().unwrap()).exists(), "{row}");
        }
    }
    assert!(out.join("scale.json").exists());
    let left: Vec<String> = bench_cgroups().into_iter().filter(|g| !before.contains(g)).collect();
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_small_ingest_applies_every_snapshot() {
    let mut args = vec![
        "ingest",
        "--snapshots",
        "4000",
        "--accounts",
        "1000",
        "--max-workers",
        "2",
        "--partitions",
        "4",
    ];
    if cgroup_v1() {
        args.extend(["--worker-cpu", "1"]);
    }
    let r = bench(&args);
    let rounds = r["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2);
    for round in rounds {
        assert!(round["snapshots_per_s"].as_f64().is_some_and(|v| v > 0.0), "{round}");
        assert!(round["cpu_us_per_snapshot"]["workers"].as_u64() > Some(0), "{round}");
    }
}
