//! Release folders: added from folders and archives, immutable, an atomic `current` switch, pruning rules.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use agent::{ReleaseError, ReleaseStore};
use testkit::TempDir;

fn source_tree(dir: &TempDir, name: &str) -> std::path::PathBuf {
    let src = dir.join(name);
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("bin/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(src.join("bin/run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(src.join("slipway.release.toml"), "client_versions = \">=2.0\"\n").unwrap();
    std::os::unix::fs::symlink("bin/run.sh", src.join("run")).unwrap();
    src
}

fn tarball(src: &std::path::Path, out: &std::path::Path, compress: &str) {
    let file = std::fs::File::create(out).unwrap();
    let writer: Box<dyn Write> = match compress {
        "gz" => Box::new(flate2::write::GzEncoder::new(file, flate2::Compression::fast())),
        _ => Box::new(zstd::stream::write::Encoder::new(file, 3).unwrap().auto_finish()),
    };
    let mut b = tar::Builder::new(writer);
    b.follow_symlinks(false);
    b.append_dir_all("app-1.0", src).unwrap();
    b.into_inner().unwrap().flush().unwrap();
}

#[test]
fn releases_come_from_folders_and_archives_whole_and_immutable() {
    let dir = TempDir::new("releases");
    let store = ReleaseStore::new(dir.join("root"));
    let src = source_tree(&dir, "src");
    store.add(&src, "v1").unwrap();
    tarball(&src, &dir.join("v2.tar.gz"), "gz");
    store.add(&dir.join("v2.tar.gz"), "v2").unwrap();
    tarball(&src, &dir.join("v3.tar.zst"), "zst");
    store.add(&dir.join("v3.tar.zst"), "v3").unwrap();
    for id in ["v1", "v2", "v3"] {
        let p = store.path(id);
        // The archive's single top-level folder is unwrapped.
        assert!(p.join("bin/run.sh").is_file(), "{id}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(p.join("bin/run.sh")).unwrap().permissions().mode() & 0o111,
            0o111
        );
        assert_eq!(
            std::fs::read_link(p.join("run")).unwrap(),
            std::path::Path::new("bin/run.sh")
        );
        assert_eq!(store.manifest(id).unwrap().client_versions.as_deref(), Some(">=2.0"));
    }
    assert!(matches!(store.add(&src, "v1"), Err(ReleaseError::Exists(_))));
    assert!(matches!(store.add(&src, "../evil"), Err(ReleaseError::BadId(_))));
    assert!(matches!(
        store.add(&dir.join("nope.zip"), "v9"),
        Err(ReleaseError::Io { .. })
    ));
    // A bad manifest refuses the release and leaves nothing behind.
    std::fs::write(src.join("slipway.release.toml"), "client_versions = \">>>\"\n").unwrap();
    assert!(matches!(store.add(&src, "v4"), Err(ReleaseError::BadManifest { .. })));
    assert!(!store.path("v4").exists());
    let listed: Vec<String> = std::fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(listed.len(), 3, "no staging leftovers: {listed:?}");
}

#[test]
fn current_switches_atomically_and_previous_follows() {
    let dir = TempDir::new("current");
    let store = ReleaseStore::new(dir.join("root"));
    let src = source_tree(&dir, "src");
    store.add(&src, "a").unwrap();
    store.add(&src, "b").unwrap();
    store.set_current("a").unwrap();
    assert!(matches!(store.set_current("zzz"), Err(ReleaseError::Missing(_))));
    let link = dir.join("root/current");
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, reads, link) = (stop.clone(), reads.clone(), link.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let target = std::fs::read_link(&link).expect("current is never missing");
                assert!(std::fs::metadata(&link).is_ok(), "current resolves to {target:?}");
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    for i in 0..500 {
        store.set_current(if i % 2 == 0 { "b" } else { "a" }).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("reader never saw a missing link");
    assert!(reads.load(Ordering::Relaxed) > 100);
    assert_eq!(store.link("current").as_deref(), Some("a"));
    assert_eq!(store.link("previous").as_deref(), Some("b"));
}

#[test]
fn prune_never_removes_current_previous_or_releases_with_instances() {
    let dir = TempDir::new("prune");
    let store = ReleaseStore::new(dir.join("root"));
    let src = source_tree(&dir, "src");
    for (i, id) in ["r0", "r1", "r2", "r3", "r4", "r5"].iter().enumerate() {
        store.add(&src, id).unwrap();
        // Distinct creation times, oldest first.
        let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + i as u64 * 10);
        std::fs::File::open(store.path(id)).unwrap().set_modified(t).unwrap();
    }
    store.set_current("r2").unwrap();
    store.set_current("r3").unwrap();
    let running: HashSet<String> = ["r1".to_string()].into();
    // keep 5: r1 (running), r2 (previous), r3 (current) stay; of r0, r4, r5 the newest two stay.
    assert_eq!(store.prune(5, &running).unwrap(), vec!["r0"]);
    // keep 1: everything removable goes.
    assert_eq!(store.prune(1, &running).unwrap(), vec!["r4", "r5"]);
    let left: Vec<String> = store.list(&|_| 0).unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(left, vec!["r1", "r2", "r3"]);
}

/// An archive entry as written: name, kind, link target, data.
type RawEntry<'a> = (&'a str, tar::EntryType, &'a str, &'a [u8]);

/// A plain .tar with entries written as given (no checks by the builder).
fn raw_tar(out: &std::path::Path, entries: &[RawEntry<'_>]) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    let ok: [RawEntry<'_>; 1] = [("slipway.release.toml", tar::EntryType::Regular, "", b"")];
    for (name, kind, link, data) in ok.iter().chain(entries) {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap();
}

#[test]
fn malicious_archives_are_refused_whole_and_nothing_lands_outside_the_releases_folder() {
    use tar::EntryType::{Block, Char, Fifo, Link, Regular, Symlink};
    let dir = TempDir::new("evil-archives");
    let store = ReleaseStore::new(dir.join("root"));
    let outside = dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let abs = format!("{}/abs.txt", outside.display());
    let abs_link = outside.display().to_string();
    let cases: Vec<(&str, Vec<RawEntry<'_>>, &str)> = vec![
        (
            "dotdot",
            vec![("../../outside/escape.txt", Regular, "", b"x")],
            "climbs out with '..'",
        ),
        (
            "inner-dotdot",
            vec![("bin/../../x.txt", Regular, "", b"x")],
            "climbs out with '..'",
        ),
        (
            "absolute",
            vec![(abs.as_str(), Regular, "", b"x")],
            "has an absolute path",
        ),
        (
            "symlink-up",
            vec![("bin/up", Symlink, "../../outside", b"")],
            "symlink pointing outside",
        ),
        (
            "symlink-abs-then-through",
            vec![
                ("out", Symlink, abs_link.as_str(), b""),
                ("out/through.txt", Regular, "", b"x"),
            ],
            "symlink pointing outside",
        ),
        ("hardlink", vec![("hl", Link, "../outside/abs.txt", b"")], "hard link"),
        ("chardev", vec![("null", Char, "", b"")], "is a device file"),
        ("blockdev", vec![("disk", Block, "", b"")], "is a device file"),
        ("fifo", vec![("pipe", Fifo, "", b"")], "named pipe"),
    ];
    for (id, entries, why) in cases {
        let archive = dir.join(format!("{id}.tar"));
        raw_tar(&archive, &entries);
        let err = store.add(&archive, id).unwrap_err();
        assert!(matches!(err, ReleaseError::UnsafeEntry { .. }), "{id}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(why) && msg.contains("nothing was added"), "{id}: {msg}");
        assert!(!store.path(id).exists(), "{id}: the release was added");
    }
    let left: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "written outside: {left:?}");
    assert!(!dir.join("x.txt").exists() && !dir.join("root/x.txt").exists());
    let staging: Vec<_> = std::fs::read_dir(store.dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(staging.is_empty(), "left behind: {staging:?}");
    // A link that stays inside is fine.
    let archive = dir.join("fine.tar");
    raw_tar(
        &archive,
        &[
            ("bin/run.sh", Regular, "", b"#!/bin/sh\n"),
            ("run", Symlink, "bin/run.sh", b""),
        ],
    );
    store.add(&archive, "fine").unwrap();
    assert_eq!(
        std::fs::read_link(store.path("fine").join("run")).unwrap(),
        std::path::Path::new("bin/run.sh")
    );
}
