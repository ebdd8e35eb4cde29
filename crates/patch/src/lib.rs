//! Signed, content-addressed client releases.

pub(crate) mod apply;
pub(crate) mod canonical;
pub(crate) mod chunker;
pub(crate) mod client;
pub(crate) mod delta;
pub(crate) mod fsx;
pub(crate) mod hash;
pub(crate) mod install;
pub(crate) mod keys;
pub(crate) mod manifest;
pub(crate) mod meta;
pub(crate) mod pack;
pub(crate) mod plan;
pub(crate) mod publish;
pub(crate) mod repo;
pub(crate) mod report;
pub(crate) mod serve;
pub(crate) mod source;
pub(crate) mod spec;
pub(crate) mod trust;

pub use apply::ApplyError;
pub use apply::{ApplyStats, Progress};
pub use client::{Client, ClientError, ClientOptions, UpdateOutcome, UpdateRequest, VerifyReport};
pub use keys::KeyPair;
pub use meta::{MetaRef, Role, Root, Snapshot, Timestamp, seal};
pub use publish::{PublishError, PublishOptions, Published, publish};
pub use repo::{
    Expiry, Keyring, Repo, RepoError, TIMESTAMP, init, manifest_name, root_name, rotate, sign_timestamp, snapshot_name,
    unix_now,
};
pub use report::{Report, human as human_bytes};
pub use serve::{serve, start as start_server};
pub use source::FetchError;
pub use trust::TrustError;
