//! The etcd client against real Debian etcd: reads, writes, transactions, leases, watches, failover
//! across members, and the typed failures (unreachable, no quorum, lease gone).

use std::time::{Duration, Instant};

use cluster::{Client, ClientConfig, Cmp, Compare, EtcdError, Op, Txn, WatchEvent};
use testkit::{EtcdCluster, wait_for};

fn client(endpoints: Vec<String>) -> Client {
    let mut cfg = ClientConfig::new(endpoints);
    cfg.request_timeout = Duration::from_millis(1500);
    Client::new(&cfg).unwrap()
}

#[tokio::test]
async fn put_get_prefix_and_delete_round_trip() {
    let etcd = EtcdCluster::start(1).await;
    let c = client(etcd.endpoints());
    assert_eq!(c.get("/t/a").await.unwrap(), None);
    let r1 = c.put("/t/a", b"1", None).await.unwrap();
    let r2 = c.put("/t/b", &[0, 255, 10], None).await.unwrap();
    c.put("/u/c", b"other prefix", None).await.unwrap();
    assert!(r2 > r1);
    let a = c.get("/t/a").await.unwrap().unwrap();
    assert_eq!(
        (a.key_str().as_str(), a.value.as_slice(), a.create_revision, a.version),
        ("/t/a", &b"1"[..], r1, 1)
    );
    let all = c.get_prefix("/t/").await.unwrap();
    let keys: Vec<String> = all.kvs.iter().map(|kv| kv.key_str()).collect();
    assert_eq!(keys, ["/t/a", "/t/b"]);
    assert_eq!(all.kvs[1].value, [0, 255, 10], "binary values survive base64");
    assert!(all.revision > r2);
    c.delete("/t/a").await.unwrap();
    assert_eq!(c.get("/t/a").await.unwrap(), None);
}

#[tokio::test]
async fn a_txn_runs_success_only_when_its_compare_holds() {
    let etcd = EtcdCluster::start(1).await;
    let c = client(etcd.endpoints());
    let create = Txn {
        compare: vec![Compare::CreateRevision("/t/leader".into(), Cmp::Equal, 0)],
        success: vec![Op::Put {
            key: "/t/leader".into(),
            value: b"me".to_vec(),
            lease: None,
        }],
        failure: vec![Op::Get {
            key: "/t/leader".into(),
        }],
    };
    let won = c.txn(&create).await.unwrap();
    assert!(won.succeeded);
    let lost = c.txn(&create).await.unwrap();
    assert!(!lost.succeeded, "the key exists now");
    assert_eq!(lost.reads[0][0].value, b"me");
    assert_eq!(lost.reads[0][0].create_revision, won.revision);
    let fenced = Txn {
        compare: vec![Compare::CreateRevision("/t/leader".into(), Cmp::Equal, won.revision)],
        success: vec![Op::Put {
            key: "/t/data".into(),
            value: b"x".to_vec(),
            lease: None,
        }],
        failure: vec![],
    };
    assert!(c.txn(&fenced).await.unwrap().succeeded);
    c.delete("/t/leader").await.unwrap();
    c.txn(&create).await.unwrap(); // recreated: a new create revision
    assert!(
        !c.txn(&fenced).await.unwrap().succeeded,
        "the old create revision no longer holds"
    );
}

#[tokio::test]
async fn keys_under_a_lease_go_with_it() {
    let etcd = EtcdCluster::start(1).await;
    let c = client(etcd.endpoints());
    let lease = c.lease_grant(2).await.unwrap();
    assert_eq!(lease.ttl_secs, 2);
    c.put("/t/host", b"h1", Some(lease.id)).await.unwrap();
    assert_eq!(c.get("/t/host").await.unwrap().unwrap().lease, lease.id);
    assert_eq!(c.lease_keepalive(lease.id).await.unwrap(), 2);
    c.lease_revoke(lease.id).await.unwrap();
    assert_eq!(c.get("/t/host").await.unwrap(), None);
    assert_eq!(
        c.lease_keepalive(lease.id).await,
        Err(EtcdError::LeaseNotFound(lease.id))
    );
    assert_eq!(
        c.put("/t/x", b"", Some(lease.id)).await,
        Err(EtcdError::LeaseNotFound(lease.id))
    );
    // Not kept alive: expires by itself within its TTL (etcd may round up by a second).
    let short = c.lease_grant(1).await.unwrap();
    c.put("/t/gone", b"", Some(short.id)).await.unwrap();
    let t0 = Instant::now();
    wait_for("the unrenewed lease to expire", Duration::from_secs(5), || async {
        c.get("/t/gone").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "expired after {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn a_watch_sees_puts_and_deletes_in_order_and_resumes_from_its_revision() {
    let etcd = EtcdCluster::start(1).await;
    let c = client(etcd.endpoints());
    c.put("/w/before", b"0", None).await.unwrap();
    let mut w = c.watch_prefix("/w/", 0).await.unwrap();
    c.put("/w/a", b"1", None).await.unwrap();
    c.put("/elsewhere", b"x", None).await.unwrap();
    c.delete("/w/a").await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("events")
            .unwrap();
        seen.extend(batch);
    }
    let WatchEvent::Put(kv) = &seen[0] else {
        panic!("{seen:?}")
    };
    assert_eq!((kv.key.as_slice(), kv.value.as_slice()), (&b"/w/a"[..], &b"1"[..]));
    let WatchEvent::Delete { key, revision } = &seen[1] else {
        panic!("{seen:?}")
    };
    assert_eq!(key, b"/w/a");
    assert_eq!(*revision, w.revision());
    // A new watch from an old revision replays what it missed.
    let mut again = c.watch_prefix("/w/", kv.mod_revision).await.unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(5), again.next())
        .await
        .expect("replay")
        .unwrap();
    assert_eq!(batch.first(), Some(&seen[0]));
}

#[tokio::test]
async fn calls_fail_over_to_the_members_still_up() {
    let mut etcd = EtcdCluster::start(3).await;
    let c = client(etcd.endpoints());
    c.put("/f/k", b"1", None).await.unwrap();
    etcd.stop_member(0);
    c.put("/f/k", b"2", None).await.unwrap();
    assert_eq!(c.get("/f/k").await.unwrap().unwrap().value, b"2");
    let mut w = c.watch_prefix("/f/", 0).await.unwrap();
    c.put("/f/k", b"3", None).await.unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("event")
        .unwrap();
    assert!(matches!(&batch[0], WatchEvent::Put(kv) if kv.value == b"3"));
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    let c = client(vec![format!("http://127.0.0.1:{}", testkit::free_port())]);
    let err = c.get("/k").await.unwrap_err();
    assert!(matches!(err, EtcdError::Unreachable(_)), "{err:?}");
    assert!(err.is_unavailable());
    assert!(matches!(c.watch_prefix("/", 0).await, Err(EtcdError::Unreachable(_))));
}

#[tokio::test]
async fn two_of_three_members_down_is_no_quorum_until_they_are_back() {
    let mut etcd = EtcdCluster::start(3).await;
    let c = client(etcd.endpoints());
    c.put("/q/k", b"1", None).await.unwrap();
    etcd.stop_member(1);
    etcd.stop_member(2);
    let t0 = Instant::now();
    let err = c.put("/q/k", b"2", None).await.unwrap_err();
    assert!(matches!(err, EtcdError::NoQuorum(_)), "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(6), "took {:?}", t0.elapsed());
    assert!(matches!(c.get("/q/k").await, Err(EtcdError::NoQuorum(_))));
    assert!(matches!(c.lease_grant(5).await, Err(EtcdError::NoQuorum(_))));
    etcd.start_member(1);
    etcd.start_member(2);
    etcd.wait_all_healthy().await;
    wait_for("writes to work again", Duration::from_secs(10), || async {
        c.put("/q/k", b"3", None).await.ok()
    })
    .await;
    assert_eq!(c.get("/q/k").await.unwrap().unwrap().value, b"3");
}
