//! interest-now: "receive interest now" for deposit accounts.
//! See ARCHITECTURE.md for the map.

pub mod cli;
pub mod money;
pub mod simulate;
