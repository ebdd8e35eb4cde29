//! Integration tests of the patch crate: publish into real repo folders and update real install folders.

mod attacks;
mod http;
mod kill;
mod property;
mod publish;
mod roundtrip;
mod support;
