//! interest-now: "receive interest now" for deposit accounts.
//! See ARCHITECTURE.md for the map.

pub mod api;
pub mod app;
pub mod claims;
pub mod cli;
pub mod commands;
pub mod config;
pub mod finance;
pub mod handoff;
pub mod kafka;
pub mod money;
pub mod outbox;
pub mod problem;
pub mod repo;
pub mod request;
pub mod simulate;
pub mod telemetry;
pub mod wire;
pub mod worker;
