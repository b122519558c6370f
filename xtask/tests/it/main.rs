//! The dev tool's integration tests (real broker and database, like the
//! product's `tests/it`): the small, CI-sized benchmarks.

mod aged;
mod spike;
