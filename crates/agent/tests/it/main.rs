//! Agent integration tests with real demo-app processes.

mod harness;

mod instances;
mod releases;
