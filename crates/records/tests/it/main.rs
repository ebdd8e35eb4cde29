//! Integration tests of the records layer against a real SQLite file and a real PostgreSQL.

mod api_props;
mod concurrent;
mod crawl;
mod migrate;
mod model;
mod props;
mod service;
mod store;
