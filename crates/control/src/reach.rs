//! An admin API found through its process's status file, and found again when the process comes back elsewhere:
//! a call that cannot connect reads the status file (and the token) again and, if they name a new address, retries.

use std::path::PathBuf;
use std::sync::Mutex;

use http::Method;
use plumbing::client::{ApiClient, ClientError};

/// Where a part writes its status and keeps its token.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// The part's status file (`pid` and the address field).
    pub status: PathBuf,
    /// The field of the status file that holds the API address.
    pub field: &'static str,
    pub token: PathBuf,
}

/// A client of one part's admin API that follows the part when it restarts on a new address.
#[derive(Debug)]
pub(crate) struct Reach {
    found: Found,
    /// The client in use and the token it carries.
    client: Mutex<(ApiClient, String)>,
}

impl Reach {
    /// The part as its status file names it now (its address there, its token), alive or not.
    pub fn open(found: Found, addr: &str) -> Result<Reach, ClientError> {
        let token = std::fs::read_to_string(&found.token)
            .unwrap_or_default()
            .trim()
            .to_string();
        let client = ApiClient::new(addr, Some(token.clone()))?;
        Ok(Reach {
            found,
            client: Mutex::new((client, token)),
        })
    }

    fn current(&self) -> (ApiClient, String) {
        self.client.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The client the status file names now, if it differs from the one in use (a new address or token).
    fn rediscover(&self, (old, old_token): &(ApiClient, String)) -> Option<ApiClient> {
        let running = crate::procs::read_status(&self.found.status, self.found.field)?;
        let token = std::fs::read_to_string(&self.found.token).ok()?.trim().to_string();
        if running.addr == old.addr() && &token == old_token {
            return None;
        }
        let fresh = ApiClient::new(&running.addr, Some(token.clone())).ok()?;
        tracing::info!(from = old.addr(), to = %running.addr, pid = running.pid, "found it again on a new address");
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = (fresh.clone(), token);
        Some(fresh)
    }

    /// A call; one that cannot connect is retried once on the address the status file names now.
    pub async fn call<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let now = self.current();
        let first = now.0.call(method.clone(), path, body).await;
        if !matches!(first, Err(ClientError::Connect { .. })) {
            return first;
        }
        match self.rediscover(&now) {
            Some(fresh) => fresh.call(method, path, body).await,
            None => first,
        }
    }

    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, None).await
    }

    pub async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }
}
