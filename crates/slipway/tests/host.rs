//! `slipway host join` as a process against real etcd and a real router process: it registers with its
//! labels, puts the cluster's route table to the router, and leaves on SIGTERM (its keys go at once).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{Client, ClientConfig, HostRecord, Layout, RoutesRecord, decode, encode};
use testkit::{EtcdCluster, TempDir, wait_for};
use wire::{Release, RouteTable};

fn slipway() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_slipway"));
    c.env("NO_COLOR", "1");
    c
}

/// Kills the child when the test ends, passed or not.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn host_join_registers_follows_the_cluster_table_and_leaves_on_sigterm() {
    let etcd = EtcdCluster::start(1).await;
    let dir = TempDir::new("host-join");
    let config = dir.join("router.toml");
    std::fs::write(
        &config,
        "state_dir = \"state\"\nworkers = 1\nadmin = { listen = \"127.0.0.1:0\" }\n\
         [[listener]]\nname = \"web\"\nkind = \"http\"\naddr = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let state = dir.join("state");
    let _router = Kill(
        slipway()
            .arg("router")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let status = wait_for("router up", Duration::from_secs(10), || async {
        router::read_status(&state).ok()
    })
    .await;
    let mut host = Kill(
        slipway()
            .args([
                "host",
                "join",
                "--etcd",
                &etcd.endpoints().join(","),
                "--name",
                "h1",
                "--labels",
                "zone=a",
            ])
            .args(["--cluster", "t", "--ttl", "3s", "--router-state"])
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let c = Client::new(&ClientConfig::new(etcd.endpoints())).unwrap();
    let layout = Layout::new("t").unwrap();
    let kv = wait_for("the host record", Duration::from_secs(10), || async {
        c.get(&layout.host("h1")).await.unwrap()
    })
    .await;
    let rec: HostRecord = decode(&layout.host("h1"), &kv.value).unwrap();
    assert_eq!(rec.labels["zone"], "a");

    let mut table = RouteTable::default();
    table.releases.push(Release::new("v7", 100));
    let record = RoutesRecord {
        format: cluster::FORMAT,
        generation: 1,
        table,
    };
    c.put(&layout.routes(), &encode(&record), None).await.unwrap();
    let token = std::fs::read_to_string(state.join("admin.token")).unwrap();
    let admin = plumbing::client::ApiClient::new(&status.admin, Some(token.trim().to_string())).unwrap();
    wait_for("the router to serve v7", Duration::from_secs(10), || async {
        let t: RouteTable = admin.get("/v1/routes").await.ok()?;
        (t.releases.first().map(|r| r.id.as_str()) == Some("v7")).then_some(())
    })
    .await;

    let _ = Command::new("kill").arg("-TERM").arg(host.0.id().to_string()).status();
    let t0 = Instant::now();
    let code = host.0.wait().unwrap();
    assert!(code.success(), "{code:?}");
    assert_eq!(
        c.get(&layout.host("h1")).await.unwrap(),
        None,
        "leaving revokes the lease"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "left in {:?}, no faster than the TTL",
        t0.elapsed()
    );
}

#[test]
fn host_join_lists_every_bad_flag_at_once() {
    let out = slipway()
        .args([
            "host",
            "join",
            "--etcd",
            "ftp://x",
            "--name",
            "H 1",
            "--labels",
            "zone,Rack=1",
            "--ttl",
            "10ms",
        ])
        .args(["--cluster", "a/b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for what in [
        "--labels \"zone\"",
        "--labels \"Rack\"",
        "--name",
        "--ttl",
        "--cluster",
        "ftp://x",
        "--router-state",
    ] {
        assert!(err.contains(what), "{what} missing from:\n{err}");
    }
}
