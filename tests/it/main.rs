//! The one integration-test binary (one link, fast CI). Modules by feature.

mod money_rules;
mod properties;
mod simulate_cli;
mod support;
