//! Signed, content-addressed client releases.

pub(crate) mod canonical;
pub(crate) mod chunker;
pub(crate) mod fsx;
pub(crate) mod hash;
pub(crate) mod keys;
pub(crate) mod meta;
