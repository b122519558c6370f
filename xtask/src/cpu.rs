//! CPU time by component over a benchmark's measured window, so a run prints
//! microseconds of CPU per claim for the API, the workers, the broker,
//! PostgreSQL and the load generator (its own process, `xtask loadgen`).
//! These are steadier than throughput on a shared machine (issue 11). A
//! process in a cgroup of its own (`--worker-cpu`, `--api-cpu`) is read from
//! the group's `cpuacct.usage` (ns, every thread, also after it exits); the
//! others from `/proc/PID/stat` (utime + stime). PostgreSQL is the run's
//! database's backends plus the cluster's shared processes (writers,
//! checkpointer, autovacuum), so other sessions' work on a shared cluster is
//! left out.
//!
//! Limits: a process outside a cgroup that exits inside the window (a worker
//! leaving under `--churn`, a short-lived backend) loses what it used.

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

/// The `postgres` processes' time. With `database`: the backends of that
/// database and the cluster's own processes (postmaster, writers,
/// checkpointer, autovacuum), not the backends of other databases (other
/// sessions' tests on a shared cluster), and not the reaped children's time
/// (it mixes every database's exited backends). Without: every `postgres`
/// process, plus the postmaster's reaped children.
fn postgres_ticks(database: Option<&str>) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "postgres" {
            continue;
        }
        let title = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let Some((own, children)) = ticks(pid) else {
            continue;
        };
        match database {
            None => total += own + children,
            Some(db) if counts_for(&title, db) => total += own,
            Some(_) => {}
        }
    }
    total
}

/// Whether a `postgres` process titled `title` works for database `db`: its
/// backend, or one of the cluster's shared processes (a client backend's
/// title names its database and client address: `postgres: user db 127.0.0.1(5555) idle`).
fn counts_for(title: &str, db: &str) -> bool {
    let words: Vec<&str> = title.split_whitespace().collect();
    if words.contains(&db) {
        return true;
    }
    let backend = words
        .iter()
        .any(|w| w.starts_with("[local]") || (w.ends_with(')') && w.contains('(')));
    !backend
}

/// Where one process's CPU time is read.
pub enum Meter {
    /// `/proc/PID/stat` (utime + stime, clock ticks).
    Pid(u32),
    /// Its cgroup's `cpuacct.usage` (ns): every thread, also after it exits.
    Group(crate::cgroup::Group),
}

impl Meter {
    fn ns(&self, ns_per_tick: u64) -> u64 {
        match self {
            Meter::Pid(p) => ticks(*p).map(|(own, _)| own * ns_per_tick).unwrap_or(0),
            Meter::Group(g) => g.usage_ns().unwrap_or(0),
        }
    }
}

/// One reading of every component, in ns of CPU: the named parts, and
/// `postgres` (see [`postgres_ticks`]: the run's `database` and the cluster's
/// shared processes, or the whole local cluster).
pub fn sample(parts: &[(&'static str, Vec<Meter>)], database: Option<&str>) -> Sample {
    let ns_per_tick = 1_000_000_000 / clk_tck().max(1);
    let mut s = Sample::new();
    for (name, meters) in parts {
        *s.entry(name).or_default() += meters.iter().map(|m| m.ns(ns_per_tick)).sum::<u64>();
    }
    s.insert("postgres", postgres_ticks(database) * ns_per_tick);
    s
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when unknown).
fn clk_tck() -> u64 {
    static TCK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100)
    })
}

fn used(before: &Sample, after: &Sample, k: &str) -> u64 {
    after
        .get(k)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(k).copied().unwrap_or(0))
}

/// µs of CPU per claim by component between two samples, plus `service`
/// (API + workers: the service's own share) and `total`.
pub fn per_claim_us(before: &Sample, after: &Sample, claims: usize) -> serde_json::Value {
    let per = |ns: u64| serde_json::json!((ns as f64 / 1000.0 / claims.max(1) as f64).round() as u64);
    let mut out = serde_json::Map::new();
    let mut total = 0;
    for k in after.keys() {
        let ns = used(before, after, k);
        total += ns;
        out.insert((*k).to_owned(), per(ns));
    }
    out.insert(
        "service".to_owned(),
        per(used(before, after, "api") + used(before, after, "workers")),
    );
    out.insert("total".to_owned(), per(total));
    serde_json::Value::Object(out)
}

/// Cores used on average by each component over `secs` (e.g. PostgreSQL's
/// and the broker's headroom on a run where the workers are capped).
pub fn cores(before: &Sample, after: &Sample, secs: f64) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for k in after.keys() {
        let c = used(before, after, k) as f64 / 1e9 / secs.max(1e-3);
        out.insert((*k).to_owned(), serde_json::json!((c * 100.0).round() / 100.0));
    }
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_claim_figures_are_the_differences_over_the_claims() {
        let before: Sample = [("api", 1_000_000), ("workers", 0), ("postgres", 5_000_000)].into();
        let after: Sample = [("api", 3_000_000), ("workers", 4_000_000), ("postgres", 6_000_000)].into();
        let r = per_claim_us(&before, &after, 100);
        assert_eq!(
            (&r["api"], &r["workers"], &r["postgres"], &r["service"], &r["total"]),
            (
                &serde_json::json!(20),
                &serde_json::json!(40),
                &serde_json::json!(10),
                &serde_json::json!(60),
                &serde_json::json!(70)
            ),
            "{r}"
        );
        let c = cores(&before, &after, 0.002);
        assert_eq!(c["workers"], serde_json::json!(2.0), "{c}");
    }

    #[test]
    fn postgres_counts_the_runs_backends_and_the_shared_processes_only() {
        let db = "interest_now_bench_42";
        assert!(counts_for(
            "postgres: postgres interest_now_bench_42 127.0.0.1(5555) idle",
            db
        ));
        assert!(counts_for("postgres: walwriter ", db));
        assert!(counts_for("postgres: checkpointer ", db));
        assert!(counts_for(
            "/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main",
            db
        ));
        assert!(!counts_for("postgres: postgres other_db 127.0.0.1(6000) INSERT", db));
        assert!(!counts_for("postgres: postgres other_db [local] idle", db));
    }

    #[test]
    fn this_process_has_cpu_time() {
        // Busy until the kernel has charged at least one clock tick (bounded).
        let t = std::time::Instant::now();
        let mut x = 0u64;
        let me = || sample(&[("me", vec![Meter::Pid(std::process::id())])], None)["me"];
        while me() == 0 && t.elapsed() < std::time::Duration::from_secs(10) {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
        }
        assert!(me() > 0 && x != 1);
    }
}
