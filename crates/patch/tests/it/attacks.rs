//! TUF's attacks against an installed client: each is refused with a clear error and the install is
//! left exactly as it was.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use patch::{Client, ClientError, ClientOptions, KeyPair, Role, TrustError, UpdateRequest};

use crate::support::*;

/// A repo with v1 and v2 published, a copy of the repo as it was with v1 only, and an install on v1.
struct Scene {
    fx: Fixture,
    v1: Tree,
    v2: Tree,
    old_repo: PathBuf,
    install: PathBuf,
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    for (p, bytes) in read_tree(from) {
        let dst = to.join(p);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::write(dst, bytes).unwrap();
    }
}

fn scene(tag: &str) -> Scene {
    let fx = Fixture::new(tag);
    let mut v1 = Tree::new();
    v1.insert("bin/game".into(), text(11, 500_000));
    v1.insert("data/a.pak".into(), text(12, 300_000));
    write_tree(&fx.build_dir("b1"), &v1);
    fx.publish(&fx.build_dir("b1"), "v1");
    let old_repo = fx.dir.join("repo-at-v1");
    copy_dir(&fx.repo.dir, &old_repo);
    let install = fx.install("inst");
    let c = client(&install, &fx.repo.dir);
    c.update(&UpdateRequest {
        root: Some(fx.root_bytes()),
        ..Default::default()
    })
    .unwrap();
    let mut v2 = v1.clone();
    v2.insert("data/b.pak".into(), text(13, 200_000));
    v2.get_mut("bin/game").unwrap()[1000] ^= 1;
    write_tree(&fx.build_dir("b2"), &v2);
    fx.publish(&fx.build_dir("b2"), "v2");
    Scene {
        fx,
        v1,
        v2,
        old_repo,
        install,
    }
}

fn client(install: &Path, repo: &Path) -> Client {
    Client::new(install, repo.to_str().unwrap(), ClientOptions::default()).unwrap()
}

/// A copy of the current repo to tamper with.
fn mirror(s: &Scene, name: &str) -> PathBuf {
    let m = s.fx.dir.join(name);
    copy_dir(&s.fx.repo.dir, &m);
    m
}

/// The visible install and what it says it runs, to compare before and after an attack.
fn look(install: &Path) -> (Tree, u64, Vec<u8>) {
    let c = client(install, install);
    (
        read_tree(&c.current()),
        c.state().unwrap().seq,
        std::fs::read(install.join(".slipway-patch/state.json")).unwrap(),
    )
}

fn refused(s: &Scene, from: &Path, opts: ClientOptions, req: UpdateRequest) -> ClientError {
    let before = look(&s.install);
    let c = Client::new(&s.install, from.to_str().unwrap(), opts).unwrap();
    let err = c.update(&req).expect_err("the attack was accepted");
    assert_eq!(look(&s.install), before, "the install changed after: {err}");
    assert_eq!(before.0, s.v1);
    err
}

#[test]
fn a_tampered_chunk_is_refused_and_the_install_stays_on_its_release() {
    let s = scene("patch-atk-chunk");
    let m = mirror(&s, "mirror");
    // Flip one byte in every pack the v2 publish wrote (pack 1 onwards).
    for e in std::fs::read_dir(m.join("packs")).unwrap() {
        let p = e.unwrap().path();
        if !p.ends_with("00000000.pack") {
            let mut b = std::fs::read(&p).unwrap();
            let i = b.len() / 2;
            b[i] ^= 0x40;
            std::fs::write(&p, b).unwrap();
        }
    }
    let err = refused(&s, &m, ClientOptions::default(), UpdateRequest::default());
    assert!(matches!(err, ClientError::Apply(_)), "{err}");
    assert!(err.to_string().contains("does not match the signed manifest"), "{err}");
    // The real repo still works afterwards.
    client(&s.install, &s.fx.repo.dir)
        .update(&UpdateRequest::default())
        .unwrap();
    assert_eq!(read_tree(&client(&s.install, &s.install).current()), s.v2);
}

#[test]
fn a_tampered_or_replayed_manifest_is_refused() {
    let s = scene("patch-atk-manifest");
    let m = mirror(&s, "mirror");
    let name = m.join(patch::manifest_name(2, 1));
    let text = String::from_utf8(std::fs::read(&name).unwrap()).unwrap();
    std::fs::write(&name, text.replacen("\"mode\":420", "\"mode\":511", 1)).unwrap();
    let err = refused(&s, &m, ClientOptions::default(), UpdateRequest::default());
    assert!(matches!(err, ClientError::Trust(TrustError::Mismatch { .. })), "{err}");
    // Replaying release 1's (validly signed) manifest as release 2's.
    std::fs::copy(m.join(patch::manifest_name(1, 1)), &name).unwrap();
    let err = refused(&s, &m, ClientOptions::default(), UpdateRequest::default());
    assert!(matches!(err, ClientError::Trust(TrustError::Mismatch { .. })), "{err}");
}

#[test]
fn an_expired_timestamp_is_refused_as_a_freeze_attack() {
    let s = scene("patch-atk-expired");
    let opts = ClientOptions {
        now: Some(s.fx.now + 2 * 86_400),
        ..Default::default()
    };
    let err = refused(&s, &s.fx.repo.dir, opts, UpdateRequest::default());
    assert!(matches!(err, ClientError::Trust(TrustError::Expired { .. })), "{err}");
    assert!(err.to_string().contains("freeze attack"), "{err}");
}

#[test]
fn a_rollback_to_an_older_snapshot_is_refused() {
    let s = scene("patch-atk-rollback");
    // The client sees the newest metadata once (it is already on... v1, and now learns of v2).
    client(&s.install, &s.fx.repo.dir)
        .update(&UpdateRequest {
            release: Some(1),
            ..Default::default()
        })
        .unwrap();
    // A mirror serves the metadata as it was before v2: validly signed, but older.
    let err = refused(&s, &s.old_repo, ClientOptions::default(), UpdateRequest::default());
    assert!(matches!(err, ClientError::Trust(TrustError::Rollback { .. })), "{err}");
}

#[test]
fn a_manifest_the_snapshot_does_not_list_is_refused_as_mix_and_match() {
    let s = scene("patch-atk-mix");
    // The old metadata (listing only release 1) with release 2's validly signed manifest and packs.
    let m = s.fx.dir.join("mix");
    copy_dir(&s.fx.repo.dir, &m);
    for f in ["timestamp.json", "snapshots/2.json"] {
        std::fs::copy(s.old_repo.join(f), m.join(f)).unwrap();
    }
    let _ = std::fs::remove_file(m.join("snapshots/3.json"));
    let err = refused(
        &s,
        &m,
        ClientOptions::default(),
        UpdateRequest {
            release: Some(2),
            ..Default::default()
        },
    );
    assert!(
        matches!(err, ClientError::Trust(TrustError::NotListed { seq: 2, .. })),
        "{err}"
    );
}

#[test]
fn metadata_signed_by_a_revoked_key_is_refused() {
    let s = scene("patch-atk-revoked");
    let old_ts_key = std::fs::read_dir(&s.fx.keys)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("timestamp-"))
        .map(|p| KeyPair::load(&p).unwrap())
        .unwrap();
    let mut ring = s.fx.keyring();
    let root = patch::rotate(
        &s.fx.repo,
        &mut ring,
        Role::Timestamp,
        None,
        s.fx.now,
        &patch::Expiry::default(),
    )
    .unwrap();
    assert!(!root.keyids(Role::Timestamp).contains(&old_ts_key.id()));
    // Whoever stole the old timestamp key signs a fresh-looking timestamp with it.
    let m = mirror(&s, "mirror");
    let mut ts = s.fx.repo.timestamp().unwrap();
    ts.version += 10;
    std::fs::write(m.join("timestamp.json"), patch::seal(&ts, &[&old_ts_key])).unwrap();
    let err = refused(&s, &m, ClientOptions::default(), UpdateRequest::default());
    assert!(
        err.to_string()
            .contains("0 valid signature(s) from timestamp keys of root v2"),
        "{err}"
    );
    // The rotated repo itself is accepted: the client follows root v2.
    client(&s.install, &s.fx.repo.dir)
        .update(&UpdateRequest::default())
        .unwrap();
}

#[test]
fn an_endless_response_is_cut_at_the_size_limit() {
    let s = scene("patch-atk-endless");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        // Answers one request with 200 and then up to 64 MiB of body, stopping when the client hangs up.
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        let junk = vec![b'x'; 1 << 16];
        let mut sent = 0u64;
        while sent < 64 << 20 && conn.write_all(&junk).is_ok() {
            sent += junk.len() as u64;
        }
        sent
    });
    let err = refused(
        &s,
        Path::new(&format!("http://{addr}")),
        ClientOptions::default(),
        UpdateRequest::default(),
    );
    assert!(
        matches!(err, ClientError::Fetch(patch::FetchError::TooLarge { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("1048576-byte limit"), "{err}");
    let sent = server.join().unwrap();
    assert!(
        sent < 64 << 20,
        "the client read on after its limit ({sent} bytes sent)"
    );
}
