//! Publish a few releases and update installs between them through a local repo folder.

use patch::{Client, ClientOptions, UpdateRequest};

use crate::support::*;

#[test]
fn an_install_updates_from_nothing_and_then_fetches_only_the_change() {
    let fx = Fixture::new("patch-rt");
    let mut v1 = Tree::new();
    v1.insert("bin/game".into(), text(1, 900_000));
    v1.insert("data/level1.pak".into(), text(2, 400_000));
    v1.insert("readme.txt".into(), b"hello".to_vec());
    let b1 = fx.build_dir("b1");
    write_tree(&b1, &v1);
    let p1 = fx.publish(&b1, "v1");
    assert_eq!(p1.seq, 1);

    let mut v2 = v1.clone();
    v2.get_mut("bin/game")
        .unwrap()
        .splice(300_000..300_010, b"a one-line change".iter().copied());
    v2.insert("data/level2.pak".into(), text(3, 100_000));
    v2.remove("readme.txt");
    let b2 = fx.build_dir("b2");
    write_tree(&b2, &v2);
    let p2 = fx.publish(&b2, "v2");
    print!("{}", p2.report.render());
    let from1 = p2.report.paths.iter().find(|p| p.from == Some(1)).unwrap();
    assert!(from1.delta_bytes > 0, "a delta was chosen for bin/game");
    assert!(
        from1.download < 120_000,
        "downloads {} for a small change",
        from1.download
    );

    let dir = fx.install("inst");
    let c = Client::new(&dir, fx.repo.dir.to_str().unwrap(), ClientOptions::default()).unwrap();
    let req = UpdateRequest {
        release: Some(1),
        root: Some(fx.root_bytes()),
        ..Default::default()
    };
    let o = c.update(&req).unwrap();
    assert_eq!((o.from, o.to), (None, 1));
    assert_eq!(read_tree(&c.current()), v1);

    let o = c.update(&UpdateRequest::default()).unwrap();
    assert_eq!((o.from, o.to), (Some(1), 2));
    assert_eq!(read_tree(&c.current()), v2);
    assert_eq!(
        o.stats.downloaded, from1.download,
        "the client fetched what the report said"
    );
    let again = c.update(&UpdateRequest::default()).unwrap();
    assert!(again.up_to_date);
    assert_eq!(c.verify(false).unwrap().damaged, Vec::<String>::new());
}

#[test]
fn two_paths_with_the_same_new_content_are_both_built() {
    // numpy 2.2.6 ships two identical new .pyi files: they once shared one staging file.
    let fx = Fixture::new("patch-dup");
    let mut v1 = Tree::new();
    v1.insert("a.txt".into(), text(61, 70_000));
    write_tree(&fx.build_dir("b1"), &v1);
    fx.publish(&fx.build_dir("b1"), "v1");
    let mut v2 = v1.clone();
    let same = text(62, 90_000);
    v2.insert("x/one.pyi".into(), same.clone());
    v2.insert("y/two.pyi".into(), same);
    v2.insert("e1".into(), Vec::new());
    v2.insert("e2".into(), Vec::new());
    write_tree(&fx.build_dir("b2"), &v2);
    fx.publish(&fx.build_dir("b2"), "v2");
    for (tag, start) in [("fresh", None), ("upgrade", Some(1))] {
        let c = Client::new(
            &fx.install(tag),
            fx.repo.dir.to_str().unwrap(),
            ClientOptions::default(),
        )
        .unwrap();
        if start.is_some() {
            c.update(&UpdateRequest {
                release: start,
                root: Some(fx.root_bytes()),
                ..Default::default()
            })
            .unwrap();
        }
        c.update(&UpdateRequest {
            root: Some(fx.root_bytes()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(read_tree(&c.current()), v2, "{tag}");
    }
}
