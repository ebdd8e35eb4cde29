//! Real etcd clusters for tests: Debian's `etcd` members on free loopback ports, data in a temp folder,
//! members stopped and started one by one (quorum loss), everything killed and removed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{TempDir, free_port, get, wait_for};

/// What etcd 3.4 logs (at info) once it has bound its peer, client and metrics ports.
const SERVING: &str = "now serving peer/client/metrics";

/// How long a member (or the whole cluster) gets to become healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

/// One member of an [`EtcdCluster`].
#[derive(Debug)]
struct Member {
    name: String,
    client: SocketAddr,
    /// Plain-http `/health` and `/metrics` (also when clients must use TLS).
    metrics: SocketAddr,
    peer: SocketAddr,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Times started: its log says "now serving" once per start that bound all its ports.
    starts: usize,
}

/// A running etcd cluster of 1 or more members; killed and its data removed when dropped (a panicking test too).
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    tls: Option<ServerTls>,
    // Dropped after the members (fields drop in order): the data goes once the processes are gone.
    _dir: TempDir,
}

/// Client-side TLS of the members (PEM files): clients must use https and trust `ca`; with
/// `client_cert_auth` they must also show a certificate `ca` signed.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub client_cert_auth: bool,
}

/// The etcd binary: `SLIPWAY_ETCD` if set, else Debian's `/usr/bin/etcd`. Panics with what to do when missing.
pub fn etcd_bin() -> PathBuf {
    let path = std::env::var_os("SLIPWAY_ETCD").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from);
    assert!(
        path.exists(),
        "{} not found: run the suite with ./scripts/test, which installs Debian's etcd-server \
         (or `apt-get install etcd-server`, or set SLIPWAY_ETCD)",
        path.display()
    );
    path
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one of them reports healthy.
    pub async fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, None).await
    }

    /// Like [`EtcdCluster::start`], with clients served over TLS (peers stay plain on loopback).
    pub async fn start_tls(n: usize, tls: ServerTls) -> EtcdCluster {
        EtcdCluster::start_with(n, Some(tls)).await
    }

    async fn start_with(n: usize, tls: Option<ServerTls>) -> EtcdCluster {
        assert!(n >= 1, "an etcd cluster has at least one member");
        // A port free_port found can be taken by another test before etcd binds it; etcd then exits at once.
        // Such a start is tried again on new ports (in a new folder), a few times.
        let mut last = String::new();
        for _ in 0..4 {
            let mut cluster = EtcdCluster::on_fresh_ports(n, tls.clone());
            match cluster.wait_started().await {
                Ok(()) => return cluster,
                Err(why) => last = why,
            }
        }
        panic!("etcd did not start: {last}")
    }

    fn on_fresh_ports(n: usize, tls: Option<ServerTls>) -> EtcdCluster {
        let dir = TempDir::in_memory("etcd");
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let name = format!("m{i}");
                Member {
                    client: SocketAddr::from(([127, 0, 0, 1], free_port())),
                    metrics: SocketAddr::from(([127, 0, 0, 1], free_port())),
                    peer: SocketAddr::from(([127, 0, 0, 1], free_port())),
                    data: dir.join(format!("{name}.data")),
                    log: dir.join(format!("{name}.log")),
                    name,
                    child: None,
                    starts: 0,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            tls,
            _dir: dir,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster
    }

    /// Waits until every member is healthy; Err (with the exited member's log) as soon as one exits.
    async fn wait_started(&mut self) -> Result<(), String> {
        let deadline = std::time::Instant::now() + HEALTHY_WITHIN;
        for i in 0..self.members.len() {
            loop {
                if self.healthy(i).await {
                    break;
                }
                let exited = self.members[i].child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                if let Some(status) = exited {
                    let log = std::fs::read_to_string(&self.members[i].log).unwrap_or_default();
                    let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                    return Err(format!("member {i} exited ({status}): {tail}"));
                }
                if std::time::Instant::now() > deadline {
                    return Err(format!("member {i} not healthy within {HEALTHY_WITHIN:?}"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// The members' client URLs (`http://127.0.0.1:PORT`), in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Member `i`'s client URL (`https://` when started with TLS).
    pub fn endpoint(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.members[i].client)
    }

    /// Member `i`'s client address.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        self.members[i].client
    }

    /// Member `i`'s log file (for a failing test's message).
    pub fn log(&self, i: usize) -> &Path {
        &self.members[i].log
    }

    /// Member `i`'s process id while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// The folder holding every member's data and log (removed on drop).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Kills member `i` (SIGKILL) and waits for it to be gone; its data stays for [`EtcdCluster::start_member`].
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data (after [`EtcdCluster::stop_member`]); does not wait for health,
    /// since alone it may have no quorum: see [`EtcdCluster::wait_healthy`].
    pub fn start_member(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
    }

    /// Whether member `i` is running (started and not stopped).
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// Whether member `i`'s latest start bound its ports: then its ports answer for it, not for another
    /// test's etcd that took a port free_port handed to both.
    fn serving(&self, i: usize) -> bool {
        let log = std::fs::read_to_string(&self.members[i].log).unwrap_or_default();
        log.matches(SERVING).count() >= self.members[i].starts
    }

    /// Whether member `i` runs, bound its ports and answers `/health` with true (it has a leader and can
    /// read through Raft).
    pub async fn healthy(&self, i: usize) -> bool {
        if !self.is_running(i) || !self.serving(i) {
            return false;
        }
        match tokio::time::timeout(Duration::from_secs(3), get(self.members[i].metrics, "/health", &[])).await {
            Ok(Ok(reply)) => reply.status.is_success() && reply.text().contains("\"health\":\"true\""),
            _ => false,
        }
    }

    /// Waits until member `i` reports healthy; panics after 30 s with its log's tail.
    pub async fn wait_healthy(&self, i: usize) {
        let what = format!("etcd member {i} to be healthy (log {})", self.members[i].log.display());
        wait_for(&what, HEALTHY_WITHIN, || async { self.healthy(i).await.then_some(()) }).await
    }

    /// Waits until every running member reports healthy.
    pub async fn wait_all_healthy(&self) {
        for i in 0..self.members.len() {
            if self.is_running(i) {
                self.wait_healthy(i).await;
            }
        }
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("open etcd log");
        let err = log.try_clone().expect("clone etcd log handle");
        let client_url = format!("{}://{}", if self.tls.is_some() { "https" } else { "http" }, m.client);
        let mut cmd = Command::new(etcd_bin());
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file").arg(&tls.cert).arg("--key-file").arg(&tls.key);
            cmd.arg("--trusted-ca-file").arg(&tls.ca);
            cmd.arg(format!("--client-cert-auth={}", tls.client_cert_auth));
        }
        let child = cmd
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-metrics-urls")
            .arg(format!("http://{}", m.metrics))
            .arg("--listen-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(format!("slipway-test-{}", std::process::id()))
            .arg("--initial-cluster-state")
            .arg("new")
            // Short Raft timings: a lost leader is replaced in well under a second on loopback.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", etcd_bin().display()));
        self.members[i].child = Some(child);
        self.members[i].starts += 1;
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
    }
}
