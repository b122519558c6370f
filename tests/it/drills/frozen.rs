//! Drill 2's frozen worker: one of two workers is stopped (SIGSTOP) while
//! claims flow, then continued (SIGCONT). Its partitions answer again once
//! the group has timed its session out; when it wakes, whatever it held is
//! refused by the fencing epoch (`partition_fenced` in its log).

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use super::downstream::Plan;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Rate `DRILL_FROZEN_RATE` (default 50/s), 5 s before, a freeze of
/// `DRILL_FROZEN_S` (default 20 s), 10 s after.
pub fn plan() -> Plan {
    Plan {
        rate_per_s: env_u64("DRILL_FROZEN_RATE", 50),
        accounts: 200,
        before_s: 5,
        outage_s: env_u64("DRILL_FROZEN_S", 20),
        after_s: 10,
    }
}

/// The workers' session timeout for this run: `DRILL_SESSION_TIMEOUT_MS`,
/// else the service's default (none passed).
pub fn liveness_env() -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(ms) = std::env::var("DRILL_SESSION_TIMEOUT_MS") {
        out.push(("KAFKA_SESSION_TIMEOUT_MS".to_owned(), ms));
    }
    if let Ok(ms) = std::env::var("DRILL_HEARTBEAT_INTERVAL_MS") {
        out.push(("KAFKA_HEARTBEAT_INTERVAL_MS".to_owned(), ms));
    }
    out
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

/// Lines of a service log that carry `event`.
pub fn events(log: &std::path::Path, event: &str) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let needle = format!("\"event\":\"{event}\"");
    let plain = format!("event={event}");
    text.lines()
        .filter(|l| l.contains(&needle) || l.contains(&plain))
        .count()
}

/// What sampling `pg_blocking_pids` every 100 ms saw: the most sessions of
/// the drill's database waiting on another session's lock at once, and the
/// longest any of them had been waiting when seen.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct LockWaits {
    pub samples: u64,
    pub blocked_sessions_max: i64,
    pub longest_wait_ms: i64,
}

/// Samples lock waits until `stop` is set.
pub async fn sample_lock_waits(pool: PgPool, stop: Arc<AtomicBool>) -> LockWaits {
    let mut seen = LockWaits::default();
    while !stop.load(Ordering::Relaxed) {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT count(*)::int8, coalesce(max(extract(epoch FROM now() - query_start) * 1000), 0)::int8
             FROM pg_stat_activity
             WHERE datname = current_database() AND cardinality(pg_blocking_pids(pid)) > 0",
        )
        .fetch_optional(&pool)
        .await
        .ok()
        .flatten();
        if let Some((blocked, wait_ms)) = row {
            seen.samples += 1;
            seen.blocked_sessions_max = seen.blocked_sessions_max.max(blocked);
            seen.longest_wait_ms = seen.longest_wait_ms.max(wait_ms);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

/// Stops `pid` (SIGSTOP) in the middle of a batch, so the freeze holds a
/// transaction and its row locks (the case that stalls the others): stops
/// it, looks 300 ms later for a session idle in a transaction for longer
/// than 250 ms (only a stopped process holds one that long; the other
/// worker's batches take milliseconds), and if there is none continues it
/// and tries again, up to `tries` times. Returns the tries it took, `None`
/// if none caught a batch (the process is stopped all the same).
pub async fn stop_mid_batch(pool: &PgPool, pid: u32, tries: u32) -> Option<u32> {
    for n in 1..=tries {
        signal(pid, "-STOP");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state = 'idle in transaction'
               AND now() - state_change > interval '250 milliseconds'",
        )
        .fetch_one(pool)
        .await
        .unwrap_or(0);
        if held > 0 {
            return Some(n);
        }
        if n < tries {
            signal(pid, "-CONT");
            tokio::time::sleep(Duration::from_millis(20 + 37 * u64::from(n % 5))).await;
        }
    }
    None
}
