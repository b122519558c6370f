//! interest-now: "receive interest now" for deposit accounts.
//! See ARCHITECTURE.md for the map.

pub mod claims;
pub mod cli;
pub mod commands;
pub mod config;
pub mod finance;
pub mod kafka;
pub mod maintain;
pub mod money;
pub mod service;
pub mod simulate;
pub mod store;
pub mod telemetry;
pub mod wire;
