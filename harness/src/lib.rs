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

/// How long a test client keeps an idle keep-alive connection: below the
/// server's `HTTP_HEADER_READ_TIMEOUT_MS` (5 s), which closes idle
/// connections. A pool that kept them longer would now and then send a
/// request on a connection the server is closing, and see it reset.
pub const CLIENT_POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

/// The HTTP client of the tests: keep-alive, idle connections dropped after
/// [`CLIENT_POOL_IDLE`].
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(CLIENT_POOL_IDLE)
        .build()
        .expect("an HTTP client")
}
