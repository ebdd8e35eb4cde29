//! The etcd test cluster itself: members become healthy, quorum is lost and regained by stopping and
//! starting members, and nothing (process or data) is left after drop, a panicking test included.

use std::path::PathBuf;
use std::time::Duration;

use testkit::{EtcdCluster, wait_for};

fn alive(pid: u32) -> bool {
    // A reaped child's /proc entry is gone; a zombie would still show, but drop waits for it.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn one_member_cluster_is_healthy_and_gone_after_drop() {
    let c = EtcdCluster::start(1).await;
    assert_eq!(c.endpoints().len(), 1);
    assert!(c.healthy(0).await);
    let pid = c.pid(0).unwrap();
    let dir: PathBuf = c.dir().to_path_buf();
    assert!(dir.join("m0.data").is_dir());
    drop(c);
    assert!(!alive(pid), "etcd {pid} still runs after drop");
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
}

#[tokio::test]
async fn three_members_lose_quorum_with_two_stopped_and_regain_it() {
    let mut c = EtcdCluster::start(3).await;
    for i in 0..3 {
        assert!(c.healthy(i).await, "member {i} unhealthy after start");
    }
    // One member down: the other two still form a quorum.
    c.stop_member(2);
    c.wait_healthy(0).await;
    // Two down: the last one has no leader and says so.
    c.stop_member(1);
    wait_for("member 0 to report no quorum", Duration::from_secs(10), || async {
        (!c.healthy(0).await).then_some(())
    })
    .await;
    c.start_member(1);
    c.start_member(2);
    c.wait_all_healthy().await;
}

#[test]
fn a_panicking_test_leaves_no_etcd_behind() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = EtcdCluster::start(3).await;
            tx.send((
                (0..3).map(|i| c.pid(i).unwrap()).collect::<Vec<_>>(),
                c.dir().to_path_buf(),
            ))
            .unwrap();
            panic!("the test fails with the cluster up");
        })
    })
    .join();
    assert!(outcome.is_err(), "the thread should have panicked");
    let (pids, dir) = rx.recv().unwrap();
    for pid in pids {
        assert!(!alive(pid), "etcd {pid} outlived the panicking test");
    }
    assert!(!dir.exists(), "{} outlived the panicking test", dir.display());
}
