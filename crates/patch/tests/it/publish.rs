//! Publisher rules: the report warns about files that download far more than changed, --max-bytes
//! refuses a regression without publishing it, k-of-n root rotation is followed by clients and a root
//! signed by too few keys is refused, and bad builds are refused with every problem listed.

use patch::{Client, ClientError, ClientOptions, Expiry, Role, UpdateRequest};

use crate::support::*;

/// A pack file with small edits every 75 KB (an offset table rewritten all over the file).
fn scattered(v: &[u8]) -> Vec<u8> {
    let mut out = v.to_vec();
    for at in (1000..out.len()).step_by(75_000) {
        out[at..at + 8].copy_from_slice(b"OFFSET!!");
    }
    out
}

#[test]
fn the_report_names_files_that_download_much_more_than_changed_and_max_bytes_refuses_them() {
    let fx = Fixture::new("patch-report");
    let mut v1 = Tree::new();
    v1.insert("data/pack.bin".into(), text(41, 3_000_000));
    v1.insert("bin/game".into(), text(42, 200_000));
    write_tree(&fx.build_dir("b1"), &v1);
    fx.publish(&fx.build_dir("b1"), "v1");
    let mut v2 = v1.clone();
    v2.insert("data/pack.bin".into(), scattered(&v1["data/pack.bin"]));
    write_tree(&fx.build_dir("b2"), &v2);

    // Chunks alone: every edit costs a whole chunk.
    let err = fx
        .publish_with(&fx.build_dir("b2"), "v2", Some(100_000), 0)
        .unwrap_err();
    let patch::PublishError::TooBig {
        from: 1, bytes, report, ..
    } = err
    else {
        panic!("{err}")
    };
    assert!(bytes > 300_000, "{bytes}");
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(report.warnings[0].contains("data/pack.bin"), "{}", report.warnings[0]);
    assert!(!report.warnings[0].contains("bin/game"));
    // Nothing was published: clients still see release 1 only.
    assert_eq!(fx.repo.snapshot().unwrap().latest, 1);

    // With deltas the same change is small, and there is no warning.
    let p = fx.try_publish(&fx.build_dir("b2"), "v2", Some(100_000)).unwrap();
    let path = p.report.paths.iter().find(|x| x.from == Some(1)).unwrap();
    assert!(path.download < 20_000 && path.delta_bytes > 0, "{path:?}");
    assert!(p.report.warnings.is_empty(), "{:?}", p.report.warnings);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.repo.dir.join("reports/2.json")).unwrap()).unwrap();
    assert_eq!(json["paths"][1]["download"].as_u64(), Some(path.download));
}

#[test]
fn clients_follow_k_of_n_root_rotations_and_refuse_a_root_signed_by_too_few_keys() {
    let fx = Fixture::new("patch-rotate");
    let mut v1 = Tree::new();
    v1.insert("a".into(), text(51, 100_000));
    write_tree(&fx.build_dir("b1"), &v1);
    fx.publish(&fx.build_dir("b1"), "v1");
    let dir = fx.install("inst");
    let c = Client::new(&dir, fx.repo.dir.to_str().unwrap(), ClientOptions::default()).unwrap();
    c.update(&UpdateRequest {
        root: Some(fx.root_bytes()),
        ..Default::default()
    })
    .unwrap();

    let mut ring = fx.keyring();
    let (root1, _) = fx.repo.root().unwrap();
    let revoked = root1.keyids(Role::Root)[0].clone();
    let root2 = patch::rotate(
        &fx.repo,
        &mut ring,
        Role::Root,
        Some(&revoked[..12]),
        fx.now,
        &Expiry::default(),
    )
    .unwrap();
    assert!(!root2.keyids(Role::Root).contains(&revoked) && root2.keyids(Role::Root).len() == 3);
    let root3 = patch::rotate(&fx.repo, &mut ring, Role::Targets, None, fx.now, &Expiry::default()).unwrap();
    assert_ne!(root3.keyids(Role::Targets), root1.keyids(Role::Targets));
    let mut v2 = v1.clone();
    v2.insert("b".into(), text(52, 50_000));
    write_tree(&fx.build_dir("b2"), &v2);
    fx.publish(&fx.build_dir("b2"), "v2");
    // The client pinned root v1 and walks v2 and v3 (old manifests were re-signed by the new key).
    c.update(&UpdateRequest::default()).unwrap();
    assert_eq!(read_tree(&c.current()), v2);

    // A root v4 signed by one root key only (threshold 2).
    let mut root4 = root3.clone();
    root4.version = 4;
    let one = ring.for_role(&root3, Role::Root)[0].clone();
    std::fs::write(fx.repo.dir.join(patch::root_name(4)), patch::seal(&root4, &[&one])).unwrap();
    let err = c.update(&UpdateRequest::default()).unwrap_err();
    assert!(matches!(err, ClientError::Trust(_)), "{err}");
    assert!(
        err.to_string()
            .contains("1 valid signature(s) from root keys of root v3, 2 needed"),
        "{err}"
    );
    assert_eq!(read_tree(&c.current()), v2);
}

#[test]
fn a_build_with_symlinks_or_a_bad_spec_is_refused_with_every_problem() {
    let fx = Fixture::new("patch-badbuild");
    let b = fx.build_dir("b");
    let mut t = Tree::new();
    t.insert("ok".into(), b"x".to_vec());
    write_tree(&b, &t);
    std::os::unix::fs::symlink("/etc/passwd", b.join("link1")).unwrap();
    std::os::unix::fs::symlink("ok", b.join("link2")).unwrap();
    let msg = fx.try_publish(&b, "v1", None).unwrap_err().to_string();
    assert!(msg.contains("link1") && msg.contains("link2"), "{msg}");
    std::fs::remove_file(b.join("link1")).unwrap();
    std::fs::remove_file(b.join("link2")).unwrap();
    std::fs::write(b.join("patch.toml"), "[[files]]\nglob = \"/x\"\ntags = [\"bad tag\"]\n").unwrap();
    let msg = fx.try_publish(&b, "v1", None).unwrap_err().to_string();
    assert!(msg.contains("files[0].glob") && msg.contains("bad tag"), "{msg}");
    assert_eq!(fx.repo.snapshot().unwrap().latest, 0);
}
