//! Admin APIs: where they may listen (loopback or a unix socket only), the bearer-token check, and JSON error answers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use wire::Problem;
use wire::api::ErrorBody;

/// Where an admin API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Listen {
    /// Parses `ip:port` (loopback only) or `unix:/path` (relative paths
    /// from `base`). The problem names `field`.
    pub fn parse(text: &str, base: &Path, field: &str) -> Result<Listen, Problem> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(Problem::new(field, "unix: needs a socket path"));
            }
            let p = Path::new(path);
            return Ok(Listen::Unix(if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }));
        }
        match text.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_loopback() => Ok(Listen::Tcp(a)),
            Ok(a) => Err(Problem::new(
                field,
                format!("{a} is not a loopback address; admin APIs only bind loopback or a unix socket"),
            )),
            Err(_) => Err(Problem::new(
                field,
                format!("{text:?} is neither a loopback ip:port nor unix:/path"),
            )),
        }
    }
}

/// A bound admin socket (kept as a std listener so it can be duplicated and
/// handed over to another process).
#[derive(Debug)]
pub enum Bound {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

impl Bound {
    /// Binds `listen`; a unix socket is created with mode 0600.
    pub fn bind(listen: &Listen) -> std::io::Result<Bound> {
        match listen {
            Listen::Tcp(addr) => Ok(Bound::Tcp(std::net::TcpListener::bind(addr)?)),
            Listen::Unix(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let _ = std::fs::remove_file(path);
                let l = std::os::unix::net::UnixListener::bind(path)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                Ok(Bound::Unix(l, path.clone()))
            }
        }
    }

    /// `ip:port` or `unix:/path`.
    pub fn addr(&self) -> std::io::Result<String> {
        match self {
            Bound::Tcp(l) => Ok(l.local_addr()?.to_string()),
            Bound::Unix(_, p) => Ok(format!("unix:{}", p.display())),
        }
    }

    /// Another handle on the same socket.
    pub fn try_clone(&self) -> std::io::Result<Bound> {
        Ok(match self {
            Bound::Tcp(l) => Bound::Tcp(l.try_clone()?),
            Bound::Unix(l, p) => Bound::Unix(l.try_clone()?, p.clone()),
        })
    }

    /// The socket as a plain descriptor (to hand over to another process).
    pub fn into_owned_fd(self) -> std::os::fd::OwnedFd {
        match self {
            Bound::Tcp(l) => l.into(),
            Bound::Unix(l, _) => l.into(),
        }
    }
}

/// Serves `app` on a bound socket until `stop` turns true.
pub fn serve_bound(
    bound: Bound,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let until_stop = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    Ok(match bound {
        Bound::Tcp(l) => {
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            tokio::spawn(async move {
                let _ = axum::serve(l, app).with_graceful_shutdown(until_stop).await;
            })
        }
        Bound::Unix(l, _) => {
            l.set_nonblocking(true)?;
            let l = tokio::net::UnixListener::from_std(l)?;
            tokio::spawn(async move {
                let _ = axum::serve(l, app).with_graceful_shutdown(until_stop).await;
            })
        }
    })
}

/// Binds `listen` and serves `app` until `stop` turns true. Returns the
/// bound address (`ip:port` or `unix:/path`) and the serving task.
pub async fn serve(
    listen: &Listen,
    app: axum::Router,
    stop: watch::Receiver<bool>,
) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
    let bound = Bound::bind(listen)?;
    let addr = bound.addr()?;
    Ok((addr, serve_bound(bound, app, stop)?))
}

/// State of an API that is protected by a bearer token.
pub trait HasToken {
    fn admin_token(&self) -> &str;
}

impl<T: HasToken> HasToken for std::sync::Arc<T> {
    fn admin_token(&self) -> &str {
        (**self).admin_token()
    }
}

/// Proof that a request carried the admin token.
#[derive(Debug)]
pub struct Authorized;

impl<S: HasToken + Send + Sync> FromRequestParts<S> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let given = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), state.admin_token().as_bytes()) {
            Ok(Authorized)
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send the admin token as 'Authorization: Bearer <token>' (see the token file)",
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() || b.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An API failure, answered as [`ErrorBody`] JSON.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: error.to_string(),
                message: message.into(),
                problems: Vec::new(),
            },
        }
    }

    pub fn with_problems(mut self, problems: Vec<Problem>) -> ApiError {
        self.body.problems = problems;
        self
    }

    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn bad_request(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", what)
    }

    pub fn conflict(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", what)
    }

    pub fn internal(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", what)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// Parses a JSON request body into `T`, or a 400 that says why.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("body is not a valid {what}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_or_unix() {
        let base = Path::new("/base");
        assert_eq!(
            Listen::parse("127.0.0.1:9", base, "x").unwrap(),
            Listen::Tcp("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(
            Listen::parse("unix:a.sock", base, "x").unwrap(),
            Listen::Unix("/base/a.sock".into())
        );
        assert!(
            Listen::parse("0.0.0.0:9", base, "x")
                .unwrap_err()
                .message
                .contains("loopback")
        );
        assert!(Listen::parse("nope", base, "x").is_err());
        assert!(Listen::parse("unix:", base, "x").is_err());
    }
}
