//! Drill 2's frozen worker: one of two workers is stopped (SIGSTOP) while
//! claims flow, then continued (SIGCONT). Its partitions answer again once
//! the group has timed its session out; when it wakes, whatever it held is
//! refused by the fencing epoch (`partition_fenced` in its log).

use std::process::Command;

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
