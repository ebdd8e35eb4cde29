//! Checked-on-read values against real etcd: a malformed route table written by hand with `etcdctl` is
//! refused with its reason while the last good table stays; the next good one is taken.

use std::time::Duration;

use cluster::{Client, ClientConfig, LastGood, Layout, RoutesRecord, WatchEvent, encode};
use testkit::EtcdCluster;
use wire::{Release, RouteTable};

fn etcdctl_put(etcd: &EtcdCluster, key: &str, value: &str) {
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.endpoints().join(","), "put", key, value])
        .output()
        .expect("run etcdctl (Debian's etcd-client)");
    assert!(
        out.status.success(),
        "etcdctl put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn table(release: &str) -> RoutesRecord {
    let mut table = RouteTable::default();
    table.releases.push(Release::new(release, 100));
    RoutesRecord {
        format: cluster::FORMAT,
        generation: 1,
        table,
    }
}

#[tokio::test]
async fn a_malformed_value_written_by_hand_is_refused_and_the_last_good_one_kept() {
    let etcd = EtcdCluster::start(1).await;
    let c = Client::new(&ClientConfig::new(etcd.endpoints())).unwrap();
    let layout = Layout::new("t").unwrap();
    let key = layout.routes();
    c.put(&key, &encode(&table("v1")), None).await.unwrap();

    let mut routes = LastGood::<RoutesRecord>::default();
    let kv = c.get(&key).await.unwrap().unwrap();
    assert_eq!(routes.offer(&key, &kv.value, kv.mod_revision), Ok(true));
    let mut watch = c.watch_prefix(layout.root(), kv.mod_revision + 1).await.unwrap();

    etcdctl_put(&etcd, &key, r#"{"format":1,"generation":2,"table":{"release":"v2"}}"#);
    etcdctl_put(&etcd, &key, "oops");
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        for ev in tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("events")
            .unwrap()
        {
            let WatchEvent::Put(kv) = ev else {
                panic!("unexpected delete")
            };
            reasons.push(routes.offer(&key, &kv.value, kv.mod_revision).unwrap_err());
        }
    }
    assert!(reasons[0].contains("invalid type"), "{}", reasons[0]);
    assert!(reasons[1].contains("not JSON"), "{}", reasons[1]);
    assert_eq!(routes.get(), Some(&table("v1")), "the last good table is kept");
    assert!(routes.refused().is_some_and(|(_, why)| why.contains(&key)));

    c.put(&key, &encode(&table("v3")), None).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("event")
        .unwrap();
    let WatchEvent::Put(kv) = &ev[0] else {
        panic!("unexpected delete")
    };
    assert_eq!(routes.offer(&key, &kv.value, kv.mod_revision), Ok(true));
    assert_eq!(routes.get(), Some(&table("v3")));
    assert!(routes.refused().is_none());
}
