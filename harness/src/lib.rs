//! The one harness of the integration tests (`tests/it`) and the dev tool
//! (`xtask`: demo and benchmarks): the real thing on one machine.
//!
//! * [`Env`]: a fresh PostgreSQL database (migrated, plans imported) and fresh
//!   topics (by prefix) on a broker, and the product binary run with that
//!   configuration ([`Env::command`], [`Env::serve`]).
//! * [`Service`]: one `serve --role …` child process on free loopback ports,
//!   ready when its `/readyz` says so; [`Api`] is an HTTP client for it.
//! * [`PrivateBroker`]: a broker of one's own (the one `scripts/infra-up`
//!   builds and caches) on a free port.
//! * [`clock`]: the test suite's clock (`TEST_CLOCK_AT`).
//!
//! The product is driven only through its binary, whose path the caller
//! gives ([`Product`]): tests pass `env!("CARGO_BIN_EXE_interest-now")`,
//! the dev tool the binary beside its own executable.

mod broker;
pub mod clock;
mod env;
mod service;

pub use broker::PrivateBroker;
pub use env::{Env, Product, Record, Spec, TOPICS};
pub use service::{free_addr, wait_ready, Answer, Api, Service};
