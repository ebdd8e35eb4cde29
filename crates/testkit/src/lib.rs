//! Test support: temp folders, deadline waits, a small HTTP client, workspace binaries, service files,
//! real etcd clusters.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

mod etcd;
pub use etcd::{EtcdCluster, ServerTls, etcd_bin};

/// A folder under the system temp folder, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), tag)
    }

    /// A temp folder in memory (`/dev/shm`) where there is one, else as [`TempDir::new`]: for data that
    /// fsyncs a lot (etcd) and is gone with the test.
    pub fn in_memory(tag: &str) -> TempDir {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            TempDir::new_in(shm, tag)
        } else {
            TempDir::new(tag)
        }
    }

    fn new_in(base: &Path, tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = base.join(format!(
            "slipway-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A response as tests look at it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 keep-alive connection.
pub struct Client {
    addr: SocketAddr,
    sender: http1::SendRequest<Full<Bytes>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.addr)
    }
}

/// Any failure of the test client.
pub type ClientError = Box<dyn std::error::Error + Send + Sync>;

impl Client {
    pub async fn connect(addr: SocketAddr) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Client { addr, sender })
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends a request; `headers` are extra `(name, value)` pairs.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, ClientError> {
        self.sender.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self.sender.send_request(req.body(Full::new(body))?).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, ClientError> {
        self.send("GET", path, headers, Bytes::new()).await
    }
}

/// A GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Reply, ClientError> {
    Client::connect(addr).await?.get(path, headers).await
}

/// Path of a binary of this workspace in the profile folder the running test or
/// example was built into (`target/<profile>/deps/<test>` or `…/examples/<ex>`).
pub fn profile_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    profile_dir.join(name)
}

/// Path of a binary of this workspace, built (debug profile) if it is not there yet.
pub fn workspace_bin(name: &str) -> PathBuf {
    let path = profile_bin(name);
    if !path.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--bin", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --bin {name} failed");
    }
    path
}

/// A fresh, empty PostgreSQL database on the throwaway server `scripts/test`
/// starts (URL in `SLIPWAY_TEST_PG`); returns its URL. Panics with what to do
/// when the server is not there: these tests are never skipped.
pub fn pg_database(tag: &str) -> String {
    let admin = std::env::var("SLIPWAY_TEST_PG").unwrap_or_else(|_| {
        panic!(
            "SLIPWAY_TEST_PG is not set: run the suite with ./scripts/test, which starts a throwaway PostgreSQL \
             (or set SLIPWAY_TEST_PG=postgres://user@127.0.0.1:PORT/postgres yourself)"
        )
    });
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "t_{}_{}_{}",
        tag.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut c = postgres::Client::connect(&admin, postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL at {admin}: {e}"));
    // Concurrent CREATE DATABASE copies of the template conflict: retry.
    let mut tries = 0;
    while let Err(e) = c.batch_execute(&format!("CREATE DATABASE {name}")) {
        tries += 1;
        if tries > 50 {
            panic!("cannot create database {name}: {e:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20 * tries));
    }
    match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("SLIPWAY_TEST_PG must end in /DATABASE: {admin}"),
    }
}

/// A loopback port that was free a moment ago (for a process that must be told its port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// Waits until something accepts connections on `addr`, or panics after `limit`.
pub async fn wait_port(addr: SocketAddr, limit: Duration) {
    wait_for(&format!("{addr} to accept connections"), limit, || async {
        TcpStream::connect(addr).await.ok().map(|_| ())
    })
    .await
}

/// A slipway.toml for tests and benches: the demo app as the service, one
/// HTTP listener on port 0, and deploy settings short enough for a test.
/// `extra` is appended as is (more tables).
#[derive(Debug, Clone)]
pub struct ServiceToml {
    pub name: String,
    /// The instance command (usually the demo-app binary).
    pub command: PathBuf,
    pub count: u32,
    /// Every canary step's hold.
    pub hold: String,
    pub drain_deadline: String,
    /// Extra keys of the canary's latency_p50 metric, e.g. `tolerance = 0.5`.
    pub latency: String,
    pub rolling_bake: String,
    pub blue_green_check: String,
    pub rollback_window: String,
    pub extra: String,
}

impl ServiceToml {
    pub fn new(name: &str, command: &Path) -> ServiceToml {
        ServiceToml {
            name: name.into(),
            command: command.to_path_buf(),
            count: 3,
            hold: "3s".into(),
            drain_deadline: "4s".into(),
            latency: String::new(),
            rolling_bake: "500ms".into(),
            blue_green_check: "1s".into(),
            rollback_window: "60s".into(),
            extra: String::new(),
        }
    }

    pub fn render(&self) -> String {
        let latency = if self.latency.is_empty() {
            String::new()
        } else {
            format!(", {}", self.latency)
        };
        format!(
            r#"
[service]
name = "{name}"
state_dir = "state"

[[listener]]
name = "web"
kind = "http"
addr = "127.0.0.1:0"

[instance]
count = {count}
command = "{command}"
readiness = {{ kind = "http", path = "/healthz", start_deadline = "20s" }}
drain = {{ signal = "SIGTERM", stop_deadline = "5s" }}

[deploy]
drain_deadline = "{drain}"
session_idle = "2s"

[deploy.canary]
instances = 2
steps = [{{ weight = 10, hold = "{hold}" }}, {{ weight = 50, hold = "{hold}" }}]
extension = "1s"
max_extensions = 0
on_inconclusive = "continue"

[deploy.canary.analysis]
metrics = [
  {{ name = "error_rate", kind = "error_rate", absolute_tolerance = 0.01, critical = true }},
  {{ name = "latency_p50", kind = "latency", quantile = 0.5, critical = true{latency} }},
]

[deploy.rolling]
max_surge = 1
bake = "{bake}"

[deploy.blue_green]
check = "{check}"
rollback_window = "{window}"
{extra}
"#,
            name = self.name,
            count = self.count,
            command = self.command.display(),
            drain = self.drain_deadline,
            hold = self.hold,
            bake = self.rolling_bake,
            check = self.blue_green_check,
            window = self.rollback_window,
            extra = self.extra,
        )
    }
}
