//! Reads upgrade, unknown fields survive, old code refuses to clobber, writes follow the gate, both formats.

use std::time::Duration;

use records::{Backend, Error, Expect, Format, Store, Versioned, Write};
use serde_json::json;

use crate::model::{Db, PlayerV1, PlayerV3, both, schema};

fn ann() -> PlayerV1 {
    PlayerV1 {
        name: "ann".into(),
        gold: 5,
        hp: 40,
    }
}

#[test]
fn a_v1_record_reads_as_v3_and_saves_as_v3() {
    for db in both("upgrade_on_read") {
        let (old, new) = (db.store("v1"), db.store("v3"));
        old.create("p1", ann()).unwrap();
        let mut rec = new.get::<PlayerV3>("p1").unwrap().unwrap();
        assert_eq!(rec.stored_version(), 1);
        assert_eq!(
            rec.value,
            PlayerV3 {
                display_name: "ann".into(),
                gold: 5,
                hp: 40,
                xp: 0
            }
        );
        rec.value.xp = 12;
        new.save(&mut rec).unwrap();
        let stored = new.backend().get("player", "p1").unwrap().unwrap();
        assert_eq!(
            (stored.version, stored.min_reader, stored.writer.as_str()),
            (3, 3, "v3")
        );
        assert_eq!(stored.etag, 2);
    }
}

#[test]
fn old_code_keeps_the_fields_it_does_not_know() {
    for db in both("unknown_fields") {
        let (old, new) = (db.store("v1"), db.store("v3"));
        // Release v2-era code wrote xp and a field nobody declared.
        new.create_value(
            "player",
            "p1",
            json!({"name": "ann", "gold": 5, "hp": 40, "xp": 77, "pet": {"kind": "cat"}}),
            2,
        )
        .unwrap();
        let mut rec = old.get::<PlayerV1>("p1").unwrap().unwrap();
        assert_eq!(rec.stored_version(), 2, "v1 code reads v2 because v2 is readable by v1");
        rec.value.gold += 1;
        old.save(&mut rec).unwrap();
        let back = new.read_value("player", "p1", 2).unwrap().unwrap();
        assert_eq!(back.stored_version, 2, "written back at the version it was read at");
        assert_eq!(
            back.value,
            json!({"name": "ann", "gold": 6, "hp": 40, "xp": 77, "pet": {"kind": "cat"}})
        );
    }
}

#[test]
fn old_code_refuses_to_read_or_overwrite_a_record_it_cannot_read() {
    for db in both("too_new") {
        let (old, new) = (db.store("v1"), db.store("v3"));
        let mut stale = old.create("p1", ann()).unwrap();
        new.update::<PlayerV3>("p1", |p| p.gold = 100).unwrap();
        let err = old.get::<PlayerV1>("p1").unwrap_err();
        assert!(
            matches!(
                err,
                Error::TooNew {
                    stored: 3,
                    min_reader: 3,
                    reader: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("refuses to read or overwrite"), "{err}");
        stale.value.gold = 0;
        let err = old.save(&mut stale).unwrap_err();
        assert!(
            matches!(err, Error::TooNew { .. }),
            "a stale write is refused as too new, not as a conflict: {err}"
        );
        assert_eq!(
            new.get::<PlayerV3>("p1").unwrap().unwrap().value.gold,
            100,
            "nothing clobbered"
        );
    }
}

#[test]
fn writes_stay_at_the_gate_until_the_old_release_is_gone() {
    for db in both("gate") {
        let (old, new) = (db.store("v1"), db.store("v3").with_gate_ttl(Duration::ZERO));
        old.create("p1", ann()).unwrap();
        new.set_gate("player", Some(1)).unwrap();
        // v3 is not readable by v1 and v2 has a downgrader to 1: writes go down to... v2 is readable by v1.
        new.update::<PlayerV3>("p1", |p| p.xp = 9).unwrap();
        let s = new.backend().get("player", "p1").unwrap().unwrap();
        assert_eq!((s.version, s.min_reader), (2, 1), "v3 code writes v2 while v1 is live");
        let seen = old.get::<PlayerV1>("p1").unwrap().unwrap();
        assert_eq!(seen.value, ann());
        assert_eq!(seen.raw()["xp"], json!(9), "v1 sees and keeps xp");
        new.set_gate("player", Some(3)).unwrap();
        new.update::<PlayerV3>("p1", |p| p.xp = 10).unwrap();
        assert_eq!(
            new.backend().get("player", "p1").unwrap().unwrap().version,
            3,
            "the gate rose"
        );
        // A gate below what a downgrader chain reaches is a clear error.
        let strict = Store::new(
            records::open(&db.url()).unwrap(),
            records::Schema::new()
                .with(
                    records::KindSchema::new("player", 1)
                        .up(1, |_| Ok(()))
                        .up(2, |_| Ok(())),
                )
                .unwrap(),
            "strict",
        )
        .with_gate_ttl(Duration::ZERO);
        strict.set_gate("player", Some(1)).unwrap();
        let err = strict
            .create_value("player", "p2", json!({}), 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no downgrader from version 3"), "{err}");
    }
}

#[test]
fn compare_and_swap_refuses_a_stale_etag_and_a_taken_key() {
    for db in both("cas") {
        let s = db.store("v3");
        let mut a = s.create("p1", ann()).unwrap();
        let mut b = s.get::<PlayerV1>("p1").unwrap().unwrap();
        a.value.gold = 1;
        s.save(&mut a).unwrap();
        b.value.gold = 2;
        assert!(matches!(s.save(&mut b).unwrap_err(), Error::Conflict { etag: 1, .. }));
        assert!(matches!(s.create("p1", ann()).unwrap_err(), Error::Exists { .. }));
        assert_eq!(s.get::<PlayerV1>("p1").unwrap().unwrap().value.gold, 1);
        assert!(s.get::<PlayerV1>("nobody").unwrap().is_none());
    }
}

#[test]
fn messagepack_and_json_records_live_side_by_side() {
    for db in both("formats") {
        let json_store = db.store("v1");
        let mp = db.store("v3").with_format(Format::Msgpack);
        json_store.create("p1", ann()).unwrap();
        mp.create(
            "p2",
            PlayerV3 {
                display_name: "bob".into(),
                gold: 1,
                hp: 2,
                xp: 3,
            },
        )
        .unwrap();
        let raw = mp.backend().get("player", "p2").unwrap().unwrap();
        assert_eq!(raw.format, Format::Msgpack);
        // Named fields: the key names are in the bytes.
        assert!(raw.payload.windows(12).any(|w| w == b"display_name"));
        assert_eq!(json_store.get::<PlayerV3>("p2").unwrap().unwrap().value.xp, 3);
        assert_eq!(mp.get::<PlayerV3>("p1").unwrap().unwrap().value.display_name, "ann");
    }
}

#[test]
fn counts_by_version_and_leases() {
    for db in both("counts") {
        let (old, new) = (db.store("v1"), db.store("v3"));
        for i in 0..5 {
            old.create(&format!("a{i}"), ann()).unwrap();
        }
        new.update::<PlayerV3>("a0", |p| p.xp = 1).unwrap();
        let counts = new.backend().counts().unwrap();
        let pairs: Vec<_> = counts.iter().map(|c| (c.version, c.records)).collect();
        assert_eq!(pairs, vec![(1, 4), (3, 1)]);
        assert!(new.lease("player", "a1", "server-1", Duration::from_secs(30)).unwrap());
        assert!(
            !new.lease("player", "a1", "server-2", Duration::from_secs(30)).unwrap(),
            "held by server-1"
        );
        assert!(
            new.lease("player", "a1", "server-1", Duration::from_secs(30)).unwrap(),
            "renewed by its holder"
        );
        new.unlease("player", "a1", "server-1").unwrap();
        assert!(new.lease("player", "a1", "server-2", Duration::from_secs(30)).unwrap());
        let expired = db.store("v3").with_clock(|| records::now_ms() + 60_000);
        assert!(
            expired
                .lease("player", "a1", "server-3", Duration::from_secs(1))
                .unwrap(),
            "expired lease"
        );
    }
}

#[test]
fn the_kind_of_a_typed_record_comes_from_its_type() {
    assert_eq!(<PlayerV3 as Versioned>::KIND, "player");
    let s = schema();
    assert_eq!(s.kind("player").unwrap().head(), 3);
    let _ = Db::sqlite();
}

#[test]
fn a_batch_of_compare_and_swap_writes_lands_each_write_on_its_own_etag() {
    for db in both("batch_cas") {
        let s = db.store("v3");
        let b = s.backend();
        // 40 records: more than one bulk statement's worth on PostgreSQL.
        let write = |key: String, version: u32, gold: i64, expect: Expect, reader: Option<u32>| Write {
            kind: "player".into(),
            key,
            version,
            min_reader: version,
            format: Format::Json,
            payload: Format::Json
                .encode(&json!({"name": "n", "gold": gold, "hp": 1}))
                .unwrap(),
            writer: "batch".into(),
            expect,
            last_active: None,
            reader,
        };
        let created: Vec<_> = (0..40)
            .map(|i| write(format!("p{i:02}"), 1, 0, Expect::Absent, None))
            .collect();
        assert!(b.write_batch(&created, None).unwrap().iter().all(|r| *r == Some(1)));
        // p07 moved on since; p11 was rewritten at v5, which a v3 reader cannot read.
        b.write(&write("p07".into(), 1, 7, Expect::Etag(1), None))
            .unwrap()
            .unwrap();
        b.write(&write("p11".into(), 5, 11, Expect::Etag(1), None))
            .unwrap()
            .unwrap();
        let batch: Vec<_> = (0..40)
            .map(|i| write(format!("p{i:02}"), 3, 100 + i, Expect::Etag(1), Some(3)))
            .collect();
        let out = b.write_batch(&batch, None).unwrap();
        for (i, r) in out.iter().enumerate() {
            let stored = b.get("player", &format!("p{i:02}")).unwrap().unwrap();
            let gold = Format::Json.decode(&stored.payload).unwrap()["gold"].as_i64().unwrap();
            match i {
                7 => assert_eq!((*r, stored.etag, gold), (None, 2, 7), "stale etag: untouched"),
                11 => assert_eq!((*r, stored.version, gold), (None, 5, 11), "too new for the writer"),
                _ => assert_eq!((*r, stored.etag, stored.version, gold), (Some(2), 2, 3, 100 + i as i64)),
            }
        }
        // The same record twice in one batch: the second write sees the first's etag.
        let twice = vec![
            write("p00".into(), 3, 1, Expect::Etag(2), None),
            write("p00".into(), 3, 2, Expect::Etag(3), None),
        ];
        assert_eq!(b.write_batch(&twice, None).unwrap(), vec![Some(3), Some(4)]);
    }
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_sqlite_database_and_its_wal_and_shm_files_are_private_to_their_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = testkit::TempDir::new("records-mode");
    let db = dir.join("state/records.db");
    let url = format!("sqlite:{}", db.display());
    let store = Store::new(records::open(&url).unwrap(), schema(), "v1");
    store.create("p1", ann()).unwrap();
    assert_eq!(mode(&dir.join("state")), 0o700, "the folder made for it");
    for f in ["records.db", "records.db-wal", "records.db-shm"] {
        assert_eq!(mode(&dir.join("state").join(f)), 0o600, "{f} holds player data");
    }
    drop(store);
    // A database left readable by others (an older slipway) is made private when opened.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = Store::new(records::open(&url).unwrap(), schema(), "v1");
    assert!(store.get::<PlayerV1>("p1").unwrap().is_some());
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(&dir.join("state/records.db-wal")), 0o600);
}

#[test]
fn a_read_only_view_created_the_tables_and_could_write() {
    for db in both("read_only") {
        if let Db::Sqlite(d) = &db {
            let e = records::open_read_only(&db.url()).unwrap_err().to_string();
            assert!(e.contains("no records database yet"), "{e}");
            assert!(!d.join("records.db").exists(), "opening to look created the file");
        } else {
            // A fresh database: looking finds no table, and makes none.
            for _ in 0..2 {
                let view = records::open_read_only(&db.url()).unwrap();
                assert!(view.counts().is_err(), "no records table was made");
            }
        }
        db.store("v1").create("p1", ann()).unwrap();
        let view = Store::new(records::open_read_only(&db.url()).unwrap(), schema(), "dashboard");
        assert_eq!(view.get::<PlayerV1>("p1").unwrap().unwrap().value, ann(), "it reads");
        let counts = records::open_read_only(&db.url()).unwrap().counts().unwrap();
        assert_eq!(counts.iter().map(|c| c.records).sum::<u64>(), 1);
        assert!(
            view.create("p2", ann()).is_err(),
            "a write through a read-only view fails"
        );
        assert!(db.store("v1").get::<PlayerV1>("p2").unwrap().is_none());
    }
}
