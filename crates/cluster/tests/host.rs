//! A joined host against real etcd and a real router: it registers under a lease with its labels, its router
//! follows the cluster's route table, a malformed table changes nothing, and while etcd has no quorum the host
//! changes nothing locally; it converges again on its own when etcd is back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use cluster::{
    Client, ClientConfig, Host, HostConfig, HostRecord, Layout, LeaveReason, ObservedRecord, RoutesRecord, decode,
    encode,
};
use plumbing::client::ApiClient;
use testkit::{EtcdCluster, TempDir, wait_for};
use wire::{Release, RouteTable};

struct Router {
    running: router::RunningRouter,
    _dir: TempDir,
}

async fn start_router() -> Router {
    let dir = TempDir::new("cluster-router");
    let text = format!(
        "state_dir = \"{}\"\nadmin = {{ listen = \"127.0.0.1:0\" }}\nhealth = {{ kind = \"none\" }}\n\
         [[listener]]\nname = \"web\"\nkind = \"http\"\naddr = \"127.0.0.1:0\"\n",
        dir.join("state").display()
    );
    let raw: wire::router_config::RouterConfigFile = toml::from_str(&text).unwrap();
    let running = router::start(router::Config::from_raw(&raw, dir.path()).unwrap())
        .await
        .unwrap();
    Router { running, _dir: dir }
}

impl Router {
    fn admin(&self) -> ApiClient {
        ApiClient::new(&self.running.admin_addr(), Some(self.running.token().to_string())).unwrap()
    }

    async fn releases(&self) -> Vec<String> {
        let t: RouteTable = self.admin().get("/v1/routes").await.unwrap();
        t.releases.into_iter().map(|r| r.id).collect()
    }
}

fn etcd_client(etcd: &EtcdCluster) -> Client {
    Client::new(&ClientConfig::new(etcd.endpoints())).unwrap()
}

fn join(etcd: &EtcdCluster, router: &Router, name: &str) -> Host {
    join_via(etcd.endpoints(), router, name)
}

fn join_via(endpoints: Vec<String>, router: &Router, name: &str) -> Host {
    let mut client = ClientConfig::new(endpoints);
    client.request_timeout = Duration::from_millis(1000);
    Host::join(HostConfig {
        etcd: client,
        cluster: "t".into(),
        name: name.into(),
        labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
        ttl: Duration::from_secs(2),
        router_admin: router.running.admin_addr(),
        router_token: router.running.token().to_string(),
        turn: Duration::from_millis(100),
    })
    .unwrap()
}

fn routes(generation: u64, release: &str) -> Vec<u8> {
    let mut table = RouteTable::default();
    table.releases.push(Release::new(release, 100));
    encode(&RoutesRecord {
        format: cluster::FORMAT,
        generation,
        table,
    })
}

async fn wait_releases(router: &Router, want: &[&str], limit: Duration) {
    wait_for(&format!("the router to serve {want:?}"), limit, || async {
        (router.releases().await == want).then_some(())
    })
    .await
}

#[tokio::test]
async fn a_host_registers_with_its_labels_and_its_router_follows_the_cluster_table() {
    let etcd = EtcdCluster::start(1).await;
    let router = start_router().await;
    let c = etcd_client(&etcd);
    let layout = Layout::new("t").unwrap();
    let host = join(&etcd, &router, "h1");

    let kv = wait_for("the host record", Duration::from_secs(10), || async {
        c.get(&layout.host("h1")).await.unwrap()
    })
    .await;
    let rec: HostRecord = decode(&layout.host("h1"), &kv.value).unwrap();
    assert_eq!(rec.labels.get("zone").map(String::as_str), Some("a"));
    assert!(kv.lease != 0, "the host record is under the heartbeat lease");
    // The record is written before the turn's status is published: wait for that turn to end.
    wait_for("the status to name the lease", Duration::from_secs(5), || async {
        (host.status().lease == Some(kv.lease)).then_some(())
    })
    .await;

    c.put(&layout.routes(), &routes(1, "v1"), None).await.unwrap();
    wait_releases(&router, &["v1"], Duration::from_secs(5)).await;
    c.put(&layout.routes(), &routes(2, "v2"), None).await.unwrap();
    wait_releases(&router, &["v2"], Duration::from_secs(5)).await;
    let observed = wait_for(
        "the observed record at generation 2",
        Duration::from_secs(5),
        || async {
            let kv = c.get(&layout.observed("h1")).await.unwrap()?;
            let rec: ObservedRecord = decode(&layout.observed("h1"), &kv.value).unwrap();
            (rec.routes_generation == 2).then_some((rec, kv.lease))
        },
    )
    .await;
    assert_eq!(observed.1, kv.lease);
    assert_eq!(observed.0.note, None);

    // A heartbeat keeps it: still there after more than a TTL.
    let beat = rec.heartbeat_ms;
    wait_for("a newer heartbeat", Duration::from_secs(5), || async {
        let kv = c.get(&layout.host("h1")).await.unwrap()?;
        let rec: HostRecord = decode(&layout.host("h1"), &kv.value).unwrap();
        (rec.heartbeat_ms > beat + 2000).then_some(())
    })
    .await;
    host.leave().await.unwrap();
    assert_eq!(
        c.get(&layout.host("h1")).await.unwrap(),
        None,
        "leaving revokes the lease"
    );
    assert_eq!(c.get(&layout.observed("h1")).await.unwrap(), None);
}

#[tokio::test]
async fn a_malformed_table_changes_nothing_and_is_reported() {
    let etcd = EtcdCluster::start(1).await;
    let router = start_router().await;
    let c = etcd_client(&etcd);
    let layout = Layout::new("t").unwrap();
    let host = join(&etcd, &router, "h1");
    c.put(&layout.routes(), &routes(1, "v1"), None).await.unwrap();
    wait_releases(&router, &["v1"], Duration::from_secs(10)).await;

    c.put(
        &layout.routes(),
        br#"{"format":1,"generation":2,"table":{"release":[{"id":"v2","weight":-1}]}}"#,
        None,
    )
    .await
    .unwrap();
    let reason = wait_for("the refusal", Duration::from_secs(5), || async {
        host.status().refused
    })
    .await;
    assert!(reason.contains(&layout.routes()), "{reason}");
    let note = wait_for("the refusal in the observed record", Duration::from_secs(5), || async {
        let kv = c.get(&layout.observed("h1")).await.unwrap()?;
        decode::<ObservedRecord>(&layout.observed("h1"), &kv.value)
            .unwrap()
            .note
    })
    .await;
    assert!(note.contains("route table"), "{note}");
    assert_eq!(router.releases().await, ["v1"], "the last good table is still served");
    assert_eq!(host.status().routes_generation, 1);
}

#[tokio::test]
async fn without_quorum_the_host_changes_nothing_and_converges_again_when_etcd_is_back() {
    let mut etcd = EtcdCluster::start(3).await;
    let router = start_router().await;
    let c = etcd_client(&etcd);
    let layout = Layout::new("t").unwrap();
    let host = join(&etcd, &router, "h1");
    c.put(&layout.routes(), &routes(1, "v1"), None).await.unwrap();
    wait_releases(&router, &["v1"], Duration::from_secs(10)).await;

    etcd.stop_member(1);
    etcd.stop_member(2);
    wait_for(
        "the host to see etcd without quorum",
        Duration::from_secs(10),
        || async { (host.status().left == Some(LeaveReason::EtcdUnavailable)).then_some(()) },
    )
    .await;
    assert!(host.status().etcd.is_some());
    // Someone changes the router by hand meanwhile: with etcd unheard, the host must not touch it.
    let mut local = RouteTable::default();
    local.releases.push(Release::new("local", 100));
    let _: wire::api::Applied = router
        .admin()
        .call(http::Method::PUT, "/v1/routes", Some(&local))
        .await
        .unwrap();
    let seen = host.status().turns;
    wait_for("three more host turns", Duration::from_secs(10), || async {
        (host.status().turns >= seen + 3).then_some(())
    })
    .await;
    assert_eq!(
        router.releases().await,
        ["local"],
        "the host changed the router while etcd had no quorum"
    );
    assert_eq!(host.status().left, Some(LeaveReason::EtcdUnavailable));

    etcd.start_member(1);
    etcd.start_member(2);
    etcd.wait_all_healthy().await;
    wait_releases(&router, &["v1"], Duration::from_secs(15)).await;
    c.put(&layout.routes(), &routes(2, "v2"), None).await.unwrap();
    wait_releases(&router, &["v2"], Duration::from_secs(10)).await;
    wait_for("the host to hear etcd again", Duration::from_secs(5), || async {
        host.status().etcd.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_host_that_stops_is_gone_from_etcd_within_its_ttl() {
    let etcd = EtcdCluster::start(1).await;
    let router = start_router().await;
    let c = etcd_client(&etcd);
    let layout = Layout::new("t").unwrap();
    let host = join(&etcd, &router, "h1");
    wait_for("the host record", Duration::from_secs(10), || async {
        c.get(&layout.host("h1")).await.unwrap()
    })
    .await;
    drop(host); // as if killed: no revoke, the heartbeat just stops
    let t0 = std::time::Instant::now();
    wait_for("the host record to expire", Duration::from_secs(5), || async {
        c.get(&layout.host("h1")).await.unwrap().is_none().then_some(())
    })
    .await;
    eprintln!("host key gone {:?} after its heartbeat stopped (TTL 2 s)", t0.elapsed());
}

#[test]
fn a_bad_host_config_lists_every_problem() {
    let err = Host::join(HostConfig {
        etcd: ClientConfig::new(["ftp://x"]),
        cluster: "T".into(),
        name: "h 1".into(),
        labels: BTreeMap::from([("Zone".to_string(), "a".to_string())]),
        ttl: Duration::from_millis(10),
        router_admin: "nowhere".into(),
        router_token: String::new(),
        turn: Duration::from_millis(100),
    })
    .unwrap_err()
    .to_string();
    for what in [
        "cluster name",
        "host name",
        "label \"Zone\"",
        "ttl",
        "router admin",
        "ftp://x",
    ] {
        assert!(err.contains(what), "{what} missing from: {err}");
    }
}

/// A loopback TCP proxy to one etcd member that cuts the link the way a partition can: while cut, every byte is
/// dropped and nothing is closed; a connection that lost a byte stays dead after the link heals (as one whose
/// server side went away meanwhile), new ones work again.
struct Partition {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    _task: tokio::task::JoinHandle<()>,
}

async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, cut: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut dead = false;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if !dead {
                    let _ = to.shutdown().await;
                }
                // A dead link never says it closed either.
                std::future::pending::<()>().await;
                return;
            }
            Ok(n) => n,
        };
        dead |= cut.load(Ordering::SeqCst);
        if !dead && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Partition {
    async fn to(upstream: SocketAddr) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let c = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, c.clone()));
                tokio::spawn(pipe(sr, cw, c.clone()));
            }
        });
        Partition { addr, cut, _task: task }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_partitioned_host_serves_its_last_table_and_converges_after_the_partition_though_its_watch_died() {
    let etcd = EtcdCluster::start(1).await;
    let link = Partition::to(etcd.client_addr(0)).await;
    let router = start_router().await;
    let c = etcd_client(&etcd);
    let layout = Layout::new("t").unwrap();
    let host = join_via(vec![link.endpoint()], &router, "h1");
    c.put(&layout.routes(), &routes(1, "v1"), None).await.unwrap();
    wait_releases(&router, &["v1"], Duration::from_secs(10)).await;

    link.set_cut(true);
    wait_for("the host to lose etcd", Duration::from_secs(10), || async {
        (host.status().left == Some(LeaveReason::EtcdUnavailable)).then_some(())
    })
    .await;
    // The cluster moves on without it; it must keep serving what it had.
    c.put(&layout.routes(), &routes(2, "v2"), None).await.unwrap();
    let seen = host.status().turns;
    wait_for("three more host turns", Duration::from_secs(10), || async {
        (host.status().turns >= seen + 3).then_some(())
    })
    .await;
    assert_eq!(router.releases().await, ["v1"], "a partitioned host changed its router");

    // Healed: the old watch connection stays silent; the host still converges.
    link.set_cut(false);
    wait_releases(&router, &["v2"], Duration::from_secs(15)).await;
    // The router is put to before the turn's status is published: wait for that turn to end.
    wait_for("the host to hear etcd again", Duration::from_secs(5), || async {
        host.status().etcd.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_host_follows_the_table_through_the_loss_of_the_etcd_member_it_watched() {
    let mut etcd = EtcdCluster::start(3).await;
    let router = start_router().await;
    let c = Client::new(&ClientConfig::new([etcd.endpoint(2)])).unwrap();
    let layout = Layout::new("t").unwrap();
    let host = join(&etcd, &router, "h1"); // tries member 0 first: its watch and heartbeat start there
    c.put(&layout.routes(), &routes(1, "v1"), None).await.unwrap();
    wait_releases(&router, &["v1"], Duration::from_secs(10)).await;
    etcd.stop_member(0);
    // Member 0 may have been etcd's Raft leader: a write during the election that follows can time out.
    wait_for("the write of v2", Duration::from_secs(15), || async {
        c.put(&layout.routes(), &routes(2, "v2"), None).await.ok()
    })
    .await;
    wait_releases(&router, &["v2"], Duration::from_secs(10)).await;
    wait_for("the host to hear etcd again", Duration::from_secs(10), || async {
        host.status().etcd.is_none().then_some(())
    })
    .await;
    assert!(
        c.get(&layout.host("h1")).await.unwrap().is_some(),
        "its heartbeat moved to another member"
    );
}
