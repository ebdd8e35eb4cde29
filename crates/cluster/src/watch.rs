//! Watches over the gateway's streaming `/v3/watch`: one HTTP response that stays open and carries one
//! JSON object per line; [`Watch::next`] hands out the events of each message in revision order.

use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::error::EtcdError;
use crate::kv::{Client, KeyValue, RawHeader, RawKv, b64, prefix_end};

/// What happened to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    /// The key was deleted (or its lease expired) at `revision`.
    Delete {
        key: Vec<u8>,
        revision: i64,
    },
}

/// A watch on a prefix; dropped = cancelled (the connection closes).
#[derive(Debug)]
pub struct Watch {
    endpoint: String,
    body: Incoming,
    buf: BytesMut,
    /// The last revision delivered (or the one before the start).
    revision: i64,
}

#[derive(Deserialize)]
struct RawMessage {
    result: Option<RawWatchResponse>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawWatchResponse {
    #[serde(default)]
    header: RawHeader,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default)]
    compact_revision: serde_json::Value,
    #[serde(default)]
    events: Vec<RawEvent>,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(default, rename = "type")]
    kind: String,
    kv: RawKv,
}

impl Client {
    /// Watches every key under `prefix` from `start_revision` on (0 = from now); returns once etcd has
    /// created the watch, so a change made after this returns is seen.
    pub async fn watch_prefix(&self, prefix: &str, start_revision: i64) -> Result<Watch, EtcdError> {
        let mut create = json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix.as_bytes()))});
        if start_revision > 0 {
            create["start_revision"] = json!(start_revision.to_string());
        }
        let body = json!({ "create_request": create }).to_string();
        let (endpoint, body) = self.transport.stream("/v3/watch", body.into()).await?;
        let mut watch = Watch {
            endpoint,
            body,
            buf: BytesMut::new(),
            revision: start_revision.saturating_sub(1),
        };
        let first = watch.message().await?;
        if !first.created {
            return Err(EtcdError::Refused {
                code: 0,
                message: "the watch was not created".into(),
            });
        }
        if start_revision <= 0 {
            watch.revision = first.header.revision;
        }
        Ok(watch)
    }
}

impl Watch {
    /// The last revision this watch delivered (a new watch from `revision() + 1` misses nothing).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    async fn line(&mut self) -> Result<Vec<u8>, EtcdError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(pos + 1);
                return Ok(line[..pos].to_vec());
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(EtcdError::Unreachable(format!("{}: watch broke: {e}", self.endpoint))),
                None => return Err(EtcdError::Unreachable(format!("{}: watch closed", self.endpoint))),
            }
        }
    }

    async fn message(&mut self) -> Result<RawWatchResponse, EtcdError> {
        loop {
            let line = self.line().await?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let msg: RawMessage = serde_json::from_slice(&line).map_err(|e| EtcdError::BadValue {
                key: "/v3/watch".into(),
                reason: format!("a watch message does not decode: {e}"),
            })?;
            if let Some(err) = msg.error {
                return Err(EtcdError::Refused {
                    code: 0,
                    message: format!("watch: {err}"),
                });
            }
            if let Some(r) = msg.result {
                if r.canceled {
                    let reason = if r.cancel_reason.is_empty() {
                        "cancelled".into()
                    } else {
                        r.cancel_reason
                    };
                    return Err(EtcdError::Refused {
                        code: 0,
                        message: format!("watch: {reason} (compacted at {})", r.compact_revision),
                    });
                }
                return Ok(r);
            }
        }
    }

    /// The next batch of events (never empty), waiting as long as it takes. Err when the stream broke or etcd
    /// cancelled the watch: start a new one from [`Watch::revision`] + 1.
    pub async fn next(&mut self) -> Result<Vec<WatchEvent>, EtcdError> {
        loop {
            let msg = self.message().await?;
            if msg.events.is_empty() {
                continue;
            }
            let mut out = Vec::with_capacity(msg.events.len());
            for ev in msg.events {
                let kv = ev.kv.decode()?;
                self.revision = self.revision.max(kv.mod_revision);
                out.push(if ev.kind == "DELETE" {
                    WatchEvent::Delete {
                        key: kv.key,
                        revision: kv.mod_revision,
                    }
                } else {
                    WatchEvent::Put(kv)
                });
            }
            return Ok(out);
        }
    }
}
