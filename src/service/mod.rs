//! The running service, `interest-now serve`: the HTTP API, the partition
//! workers, the outbox relay, and the wiring that starts and stops them.
//!
//! May import everything beneath it: `crate::claims` (the decision),
//! `crate::store` (SQL), `crate::kafka`, `crate::money`, `crate::wire`,
//! `crate::config`, `crate::telemetry`. Nothing beneath imports it, except
//! that `simulate` shows answers with the API's status mapping.

pub mod api;
pub mod app;
pub mod handoff;
pub mod history;
pub mod http;
pub mod plans;
pub mod problem;
pub mod relay;
pub mod request;
pub mod reserve;
pub mod worker;
