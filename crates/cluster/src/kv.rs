//! The etcd v3 calls slipway uses, over the JSON gateway (`/v3/kv/*`, `/v3/lease/*`): keys and values
//! base64 on the wire, 64-bit integers as strings, fields at their zero value left out.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::error::EtcdError;
use crate::transport::{ClientConfig, Transport};

/// A lease's id.
pub type LeaseId = i64;

/// One stored key and its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    /// 0 when the key is not under a lease.
    pub lease: LeaseId,
}

impl KeyValue {
    /// The key as text (slipway's keys are UTF-8).
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }
}

/// What a range read found, and the store's revision it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub kvs: Vec<KeyValue>,
    pub revision: i64,
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub ttl_secs: i64,
}

/// How a comparison compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// One condition of a transaction. A missing key has create and mod revision 0 and version 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    CreateRevision(String, Cmp, i64),
    ModRevision(String, Cmp, i64),
    Version(String, Cmp, i64),
    Value(String, Cmp, Vec<u8>),
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Get {
        key: String,
    },
    GetPrefix {
        prefix: String,
    },
    Delete {
        key: String,
    },
}

/// A transaction: if every compare holds, `success` runs, else `failure`; atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// What a transaction did: which branch, the revision after it, and the key-values its gets read (in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    pub revision: i64,
    pub reads: Vec<Vec<KeyValue>>,
}

/// The end of the range holding every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// An int64 the gateway sends as a string (or, leniently, as a number).
fn de_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        I(i64),
    }
    match N::deserialize(d)? {
        N::I(i) => Ok(i),
        N::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct RawHeader {
    #[serde(default, deserialize_with = "de_i64")]
    pub(crate) revision: i64,
}

#[derive(Deserialize)]
pub(crate) struct RawKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "de_i64")]
    create_revision: i64,
    #[serde(default, deserialize_with = "de_i64")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "de_i64")]
    version: i64,
    #[serde(default, deserialize_with = "de_i64")]
    lease: i64,
}

impl RawKv {
    pub(crate) fn decode(self) -> Result<KeyValue, EtcdError> {
        let bad = |what: &str, e: base64::DecodeError| EtcdError::BadValue {
            key: self.key.clone(),
            reason: format!("{what} is not base64: {e}"),
        };
        Ok(KeyValue {
            key: B64.decode(&self.key).map_err(|e| bad("key", e))?,
            value: B64.decode(&self.value).map_err(|e| bad("value", e))?,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        })
    }
}

#[derive(Deserialize)]
struct RawRange {
    #[serde(default)]
    header: RawHeader,
    #[serde(default)]
    kvs: Vec<RawKv>,
}

#[derive(Deserialize)]
struct RawPut {
    #[serde(default)]
    header: RawHeader,
}

#[derive(Deserialize)]
struct RawTxn {
    #[serde(default)]
    header: RawHeader,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<RawTxnResponse>,
}

#[derive(Deserialize)]
struct RawTxnResponse {
    response_range: Option<RawRange>,
}

#[derive(Deserialize)]
struct RawGrant {
    #[serde(rename = "ID", default, deserialize_with = "de_i64")]
    id: i64,
    #[serde(rename = "TTL", default, deserialize_with = "de_i64")]
    ttl: i64,
    #[serde(default)]
    error: String,
}

#[derive(Deserialize)]
struct RawKeepAlive {
    result: Option<RawGrant>,
}

fn decode_kvs(raw: Vec<RawKv>) -> Result<Vec<KeyValue>, EtcdError> {
    raw.into_iter().map(RawKv::decode).collect()
}

fn cmp_name(c: Cmp) -> &'static str {
    match c {
        Cmp::Equal => "EQUAL",
        Cmp::NotEqual => "NOT_EQUAL",
        Cmp::Greater => "GREATER",
        Cmp::Less => "LESS",
    }
}

fn compare_json(c: &Compare) -> Value {
    match c {
        Compare::CreateRevision(k, cmp, r) => {
            json!({"key": b64(k.as_bytes()), "target": "CREATE", "result": cmp_name(*cmp), "create_revision": r.to_string()})
        }
        Compare::ModRevision(k, cmp, r) => {
            json!({"key": b64(k.as_bytes()), "target": "MOD", "result": cmp_name(*cmp), "mod_revision": r.to_string()})
        }
        Compare::Version(k, cmp, v) => {
            json!({"key": b64(k.as_bytes()), "target": "VERSION", "result": cmp_name(*cmp), "version": v.to_string()})
        }
        Compare::Value(k, cmp, v) => {
            json!({"key": b64(k.as_bytes()), "target": "VALUE", "result": cmp_name(*cmp), "value": b64(v)})
        }
    }
}

fn op_json(op: &Op) -> Value {
    match op {
        Op::Put { key, value, lease } => {
            let mut put = json!({"key": b64(key.as_bytes()), "value": b64(value)});
            if let Some(l) = lease {
                put["lease"] = Value::String(l.to_string());
            }
            json!({ "request_put": put })
        }
        Op::Get { key } => json!({"request_range": {"key": b64(key.as_bytes())}}),
        Op::GetPrefix { prefix } => json!({"request_range": {
            "key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix.as_bytes()))}}),
        Op::Delete { key } => json!({"request_delete_range": {"key": b64(key.as_bytes())}}),
    }
}

/// An etcd v3 client: cheap to clone (one shared transport), several endpoints with failover.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) transport: Arc<Transport>,
}

impl Client {
    /// A client for `cfg`; checks the endpoints and loads the TLS files (every problem at once), connects lazily.
    pub fn new(cfg: &ClientConfig) -> Result<Client, EtcdError> {
        Ok(Client {
            transport: Arc::new(Transport::new(cfg)?),
        })
    }

    async fn call<T: DeserializeOwned>(&self, path: &str, body: Value) -> Result<T, EtcdError> {
        let bytes = self.transport.call(path, Bytes::from(body.to_string())).await?;
        serde_json::from_slice(&bytes).map_err(|e| EtcdError::BadValue {
            key: path.to_string(),
            reason: format!("etcd's answer does not decode: {e}"),
        })
    }

    /// The key's current value, if any (a linearizable read: needs quorum).
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let r: RawRange = self.call("/v3/kv/range", json!({"key": b64(key.as_bytes())})).await?;
        Ok(decode_kvs(r.kvs)?.into_iter().next())
    }

    /// Every key under `prefix`, in key order, and the revision read at (linearizable).
    pub async fn get_prefix(&self, prefix: &str) -> Result<Range, EtcdError> {
        let body = json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix.as_bytes()))});
        let r: RawRange = self.call("/v3/kv/range", body).await?;
        Ok(Range {
            revision: r.header.revision,
            kvs: decode_kvs(r.kvs)?,
        })
    }

    /// Stores `value` at `key` (under `lease` if given); returns the new revision.
    pub async fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<i64, EtcdError> {
        let mut body = json!({"key": b64(key.as_bytes()), "value": b64(value)});
        if let Some(l) = lease {
            body["lease"] = Value::String(l.to_string());
        }
        match (self.call::<RawPut>("/v3/kv/put", body).await, lease) {
            (Err(EtcdError::Refused { code: 5, .. }), Some(l)) => Err(EtcdError::LeaseNotFound(l)),
            (r, _) => Ok(r?.header.revision),
        }
    }

    /// Deletes `key`; returns the new revision.
    pub async fn delete(&self, key: &str) -> Result<i64, EtcdError> {
        let r: RawPut = self
            .call("/v3/kv/deleterange", json!({"key": b64(key.as_bytes())}))
            .await?;
        Ok(r.header.revision)
    }

    /// Runs a transaction.
    pub async fn txn(&self, txn: &Txn) -> Result<TxnResult, EtcdError> {
        let body = json!({
            "compare": txn.compare.iter().map(compare_json).collect::<Vec<_>>(),
            "success": txn.success.iter().map(op_json).collect::<Vec<_>>(),
            "failure": txn.failure.iter().map(op_json).collect::<Vec<_>>(),
        });
        let r: RawTxn = self.call("/v3/kv/txn", body).await?;
        let reads = r
            .responses
            .into_iter()
            .filter_map(|resp| resp.response_range.map(|rr| decode_kvs(rr.kvs)))
            .collect::<Result<_, _>>()?;
        Ok(TxnResult {
            succeeded: r.succeeded,
            revision: r.header.revision,
            reads,
        })
    }

    /// Grants a lease of `ttl_secs` seconds.
    pub async fn lease_grant(&self, ttl_secs: i64) -> Result<Lease, EtcdError> {
        let r: RawGrant = self
            .call("/v3/lease/grant", json!({"TTL": ttl_secs.to_string()}))
            .await?;
        if !r.error.is_empty() || r.id == 0 {
            return Err(EtcdError::Refused {
                code: 0,
                message: format!("lease grant: {}", r.error),
            });
        }
        Ok(Lease {
            id: r.id,
            ttl_secs: r.ttl,
        })
    }

    /// Renews a lease once; returns its TTL again. A lease that is gone is [`EtcdError::LeaseNotFound`].
    pub async fn lease_keepalive(&self, id: LeaseId) -> Result<i64, EtcdError> {
        let r: RawKeepAlive = self.call("/v3/lease/keepalive", json!({"ID": id.to_string()})).await?;
        match r.result {
            Some(g) if g.ttl > 0 => Ok(g.ttl),
            _ => Err(EtcdError::LeaseNotFound(id)),
        }
    }

    /// Revokes a lease: every key under it is deleted at once.
    pub async fn lease_revoke(&self, id: LeaseId) -> Result<(), EtcdError> {
        match self
            .call::<Value>("/v3/lease/revoke", json!({"ID": id.to_string()}))
            .await
        {
            Err(EtcdError::Refused { code: 5, .. }) => Err(EtcdError::LeaseNotFound(id)),
            r => r.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn a_gateway_kv_decodes_with_string_integers_and_absent_zeros() {
        let raw: RawRange = serde_json::from_str(
            r#"{"header":{"revision":"7"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmF6"},{"key":"YQ=="}]}"#,
        )
        .unwrap();
        assert_eq!(raw.header.revision, 7);
        let kvs = decode_kvs(raw.kvs).unwrap();
        assert_eq!(kvs[0].key, b"foo");
        assert_eq!(kvs[0].value, b"baz");
        assert_eq!(
            (
                kvs[0].create_revision,
                kvs[0].mod_revision,
                kvs[0].version,
                kvs[0].lease
            ),
            (2, 3, 2, 0)
        );
        assert_eq!(kvs[1].value, b"");
    }

    #[test]
    fn a_kv_that_is_not_base64_is_a_bad_value() {
        let raw: RawKv = serde_json::from_str(r#"{"key":"Zm9v","value":"!!"}"#).unwrap();
        assert!(matches!(raw.decode(), Err(EtcdError::BadValue { .. })));
    }
}
