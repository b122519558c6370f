//! CPU time by component over a benchmark's measured window, read from
//! `/proc/PID/stat` (utime + stime; for PostgreSQL also the postmaster's
//! cutime + cstime, which holds the backends that exited in the window), so a
//! run prints microseconds of CPU per claim for the API, the workers, the
//! broker, PostgreSQL and the load generator (this process). These are
//! steadier than throughput on a shared machine (issue 11).
//!
//! Limits: a process that exits inside the window (a worker leaving under
//! `--churn`) loses what it used; PostgreSQL is the whole local cluster.

use std::collections::BTreeMap;

/// Clock ticks (`CLK_TCK`) per component.
pub type Sample = BTreeMap<&'static str, u64>;

/// utime + stime, and cutime + cstime, of one process, in clock ticks.
fn ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(4)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    (f.len() == 4).then(|| (f[0] + f[1], f[2] + f[3]))
}

/// Every `postgres` process: its own time, plus the reaped children's time
/// of the postmaster (the one whose parent is not `postgres`).
fn postgres_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "postgres" {
            continue;
        }
        if let Some((own, children)) = ticks(pid) {
            total += own + children;
        }
    }
    total
}

/// One reading of every component.
pub fn sample(api: &[u32], workers: &[u32], broker: Option<u32>) -> Sample {
    let sum = |pids: &[u32]| pids.iter().filter_map(|p| ticks(*p)).map(|(own, _)| own).sum::<u64>();
    let mut s = Sample::new();
    s.insert("api", sum(api));
    s.insert("workers", sum(workers));
    s.insert("broker", broker.map(|p| sum(&[p])).unwrap_or(0));
    s.insert("postgres", postgres_ticks());
    s.insert("load_generator", sum(&[std::process::id()]));
    s
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when unknown).
fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}

/// µs of CPU per claim by component between two samples, plus `service`
/// (API + workers: the service's own share) and `total`.
pub fn per_claim_us(before: &Sample, after: &Sample, claims: usize) -> serde_json::Value {
    let us_per_tick = 1_000_000 / clk_tck().max(1);
    let mut out = serde_json::Map::new();
    let mut total = 0;
    for (k, a) in after {
        let used = a.saturating_sub(*before.get(k).unwrap_or(&0)) * us_per_tick;
        total += used;
        out.insert((*k).to_owned(), serde_json::json!(used / claims.max(1) as u64));
    }
    let service =
        (after["api"].saturating_sub(before["api"]) + after["workers"].saturating_sub(before["workers"])) * us_per_tick;
    out.insert("service".to_owned(), serde_json::json!(service / claims.max(1) as u64));
    out.insert("total".to_owned(), serde_json::json!(total / claims.max(1) as u64));
    serde_json::Value::Object(out)
}
