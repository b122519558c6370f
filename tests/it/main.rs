//! The one integration-test binary (one link, fast CI). Modules by feature.

mod faults;
mod finance;
mod harness;
mod hostile;
mod money_rules;
mod pipeline;
mod plan_reload;
mod properties;
mod simulate_cli;
mod supervise;
mod support;
