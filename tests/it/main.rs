//! The one integration-test binary (one link, fast CI). Modules by feature.

mod checkpoint;
mod drills;
mod failover;
mod faults;
mod finance;
mod harness;
mod history;
mod hostile;
mod http_limits;
mod idempotency;
mod maintain;
mod midnight_pool;
mod money_rules;
mod pipeline;
mod plan_reload;
mod poison;
mod privilege;
mod properties;
mod simulate_cli;
mod supervise;
mod support;
