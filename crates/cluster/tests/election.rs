//! Leader election and fenced writes against a real 3-member etcd: one of two candidates wins; a frozen
//! (as if SIGSTOPped) leader is replaced within TTL + 2 s; woken, its writes are refused and it steps down.

use std::time::{Duration, Instant};

use cluster::{Candidate, CandidateConfig, Client, ClientConfig, EtcdError, Op, Role};
use testkit::{EtcdCluster, wait_for};

const TTL: Duration = Duration::from_secs(2);

fn candidate(etcd: &EtcdCluster, name: &str) -> Candidate {
    let mut client = ClientConfig::new(etcd.endpoints());
    client.request_timeout = Duration::from_millis(1500);
    let cfg = CandidateConfig {
        key: "/slipway/test/leader".into(),
        name: name.into(),
        ttl: TTL,
        retry: Duration::from_millis(200),
    };
    Candidate::start(Client::new(&client).unwrap(), cfg)
}

fn put(value: &str) -> Vec<Op> {
    vec![Op::Put {
        key: "/slipway/test/data".into(),
        value: value.as_bytes().to_vec(),
        lease: None,
    }]
}

/// Waits until exactly one of `cands` leads; returns its index.
async fn one_leader(cands: [&Candidate; 2], limit: Duration) -> usize {
    wait_for("exactly one leader", limit, || async {
        let leaders: Vec<usize> = (0..cands.len()).filter(|&i| cands[i].fence().is_some()).collect();
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await
}

#[tokio::test]
async fn of_two_candidates_one_leads_and_only_its_writes_land() {
    let etcd = EtcdCluster::start(3).await;
    let (a, b) = (candidate(&etcd, "a"), candidate(&etcd, "b"));
    let (leader, follower) = if one_leader([&a, &b], Duration::from_secs(10)).await == 0 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(follower.role(), Role::Follower);
    leader.write(put("from the leader")).await.unwrap();
    let err = follower.write(put("from the follower")).await.unwrap_err();
    assert!(matches!(err, EtcdError::CompareFailed(_)), "{err:?}");
    let c = Client::new(&ClientConfig::new(etcd.endpoints())).unwrap();
    assert_eq!(
        c.get("/slipway/test/data").await.unwrap().unwrap().value,
        b"from the leader"
    );
    let rec: cluster::LeaderRecord =
        serde_json::from_slice(&c.get("/slipway/test/leader").await.unwrap().unwrap().value).unwrap();
    assert_eq!(rec.format, 1);
    assert!(rec.name == "a" || rec.name == "b");
}

#[tokio::test]
async fn a_frozen_leader_is_replaced_within_ttl_and_its_writes_are_refused_when_it_wakes() {
    let etcd = EtcdCluster::start(3).await;
    let (a, b) = (candidate(&etcd, "a"), candidate(&etcd, "b"));
    let (old, other) = if one_leader([&a, &b], Duration::from_secs(10)).await == 0 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let old_fence = old.fence().unwrap();
    old.write(put("before the pause")).await.unwrap();

    old.freeze();
    let t0 = Instant::now();
    wait_for(
        "the other candidate to take over",
        TTL + Duration::from_secs(2),
        || async { other.fence().is_some().then_some(()) },
    )
    .await;
    let took = t0.elapsed();
    eprintln!("takeover after the leader froze: {took:?} (TTL {TTL:?})");
    let new_fence = other.fence().unwrap();
    assert!(new_fence.term > old_fence.term);
    other.write(put("from the new leader")).await.unwrap();

    // It wakes and sends the write it had decided on before the pause: refused, and it steps down.
    old.thaw();
    let err = old
        .write_with(&old_fence, put("from the deposed leader"))
        .await
        .unwrap_err();
    assert!(matches!(err, EtcdError::CompareFailed(_)), "{err:?}");
    assert_eq!(old.role(), Role::Follower);
    assert!(matches!(
        old.write(put("again")).await,
        Err(EtcdError::CompareFailed(_))
    ));
    let c = Client::new(&ClientConfig::new(etcd.endpoints())).unwrap();
    assert_eq!(
        c.get("/slipway/test/data").await.unwrap().unwrap().value,
        b"from the new leader"
    );
    // The new leader keeps leading; the old one stays a follower.
    tokio::time::sleep(TTL).await; // observation window, not synchronisation: nothing should change in it
    assert!(other.fence().is_some() && old.fence().is_none());
}

#[tokio::test]
async fn a_resigning_leader_hands_over_at_once() {
    let etcd = EtcdCluster::start(1).await;
    let (a, b) = (candidate(&etcd, "a"), candidate(&etcd, "b"));
    let (leader, other) = if one_leader([&a, &b], Duration::from_secs(10)).await == 0 {
        (a, b)
    } else {
        (b, a)
    };
    let t0 = Instant::now();
    leader.resign().await.unwrap();
    wait_for("the other to lead", Duration::from_secs(2), || async {
        other.fence().map(|_| ())
    })
    .await;
    assert!(
        t0.elapsed() < TTL,
        "handover took {:?}, as long as an expiry",
        t0.elapsed()
    );
}
