//! The client's one error type: every way a call to etcd can fail, typed so callers decide on the variant
//! (unreachable and no quorum mean "change nothing and retry"; compare failed means "deposed").

/// A failed etcd call or a value that did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint could be connected to or answered at the transport level (each endpoint's reason listed).
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// An endpoint answered but the cluster could not commit or read through Raft (no leader, request timed
    /// out, or no answer within the request timeout).
    #[error("etcd has no quorum: {0}")]
    NoQuorum(String),
    /// A transaction's comparison failed: for a fenced write, the writer is no longer the leader.
    #[error("etcd compare failed: {0}")]
    CompareFailed(String),
    /// A stored value (or an etcd answer) that does not decode: `key` and why.
    #[error("bad value at {key}: {reason}")]
    BadValue { key: String, reason: String },
    /// The lease is gone (expired or revoked).
    #[error("etcd lease {0:x} not found (expired or revoked)")]
    LeaseNotFound(i64),
    /// etcd refused the request for another reason (gRPC status code and message).
    #[error("etcd refused the request: {message} (code {code})")]
    Refused { code: i32, message: String },
    /// The client's configuration is wrong (endpoint URL, TLS files); every problem listed.
    #[error("etcd client config: {0}")]
    Config(String),
}

impl EtcdError {
    /// Whether the failure says nothing about the cluster's state (unreachable or no quorum): the caller
    /// keeps what it has and retries.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, EtcdError::Unreachable(_) | EtcdError::NoQuorum(_))
    }
}
