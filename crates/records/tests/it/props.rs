//! Seeded property tests: the upgrader chain, down(up(x)) = x, unknown fields round-trip through old code.

use serde_json::{Map, Value, json};

use crate::model::{Db, PlayerV1, STEPS, schema};

fn word(rng: &mut fastrand::Rng) -> String {
    (0..rng.usize(1..8)).map(|_| rng.alphabetic()).collect()
}

fn random_value(rng: &mut fastrand::Rng, depth: u32) -> Value {
    match rng.u8(0..if depth > 2 { 4 } else { 6 }) {
        0 => Value::Null,
        1 => json!(rng.bool()),
        2 => json!(rng.i64(-1_000_000..1_000_000)),
        3 => json!(word(rng)),
        4 => Value::Array((0..rng.usize(0..4)).map(|_| random_value(rng, depth + 1)).collect()),
        _ => random_object(rng, depth + 1),
    }
}

fn random_object(rng: &mut fastrand::Rng, depth: u32) -> Value {
    let mut m = Map::new();
    for _ in 0..rng.usize(0..5) {
        m.insert(format!("x_{}", word(rng)), random_value(rng, depth));
    }
    Value::Object(m)
}

/// A random version-1 player with random extra fields.
fn random_v1(rng: &mut fastrand::Rng) -> Value {
    let mut v = random_object(rng, 0);
    v["name"] = json!(word(rng));
    v["gold"] = json!(rng.i64(0..1_000_000));
    v["hp"] = json!(rng.i64(0..100));
    v
}

#[test]
fn the_chain_runs_every_step_and_down_of_up_gives_x_back() {
    let from_steps = records::parse_steps(STEPS, "model").unwrap();
    let from_rust = schema();
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..2_000 {
        let v1 = random_v1(&mut rng);
        for s in [&from_rust, &from_steps] {
            let k = s.kind("player").unwrap();
            let mut v3 = v1.clone();
            k.convert(&mut v3, 1, 3).unwrap();
            // 1→3 equals 1→2 then 2→3.
            let mut stepwise = v1.clone();
            k.convert(&mut stepwise, 1, 2).unwrap();
            let v2 = stepwise.clone();
            k.convert(&mut stepwise, 2, 3).unwrap();
            assert_eq!(stepwise, v3);
            assert_eq!(v3["display_name"], v1["name"]);
            assert!(v3.get("name").is_none());
            assert!(k.check_fields(3, &v3).is_empty(), "{v3}");
            // down(up(x)) = x for each step.
            let mut back = v3.clone();
            k.convert(&mut back, 3, 2).unwrap();
            assert_eq!(back, v2);
            k.convert(&mut back, 2, 1).unwrap();
            assert_eq!(back, v1);
        }
        // The steps file and the Rust functions agree.
        let (mut a, mut b) = (v1.clone(), v1.clone());
        from_rust.kind("player").unwrap().convert(&mut a, 1, 3).unwrap();
        from_steps.kind("player").unwrap().convert(&mut b, 1, 3).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn unknown_fields_round_trip_through_code_that_does_not_know_them() {
    let db = Db::sqlite();
    let old = db.store("v1");
    let mut rng = fastrand::Rng::with_seed(11);
    for i in 0..300 {
        let key = format!("p{i}");
        let raw_before = random_v1(&mut rng);
        old.create_value("player", &key, raw_before.clone(), 1).unwrap();
        let mut typed = old.get::<PlayerV1>(&key).unwrap().unwrap();
        typed.value.gold += 1;
        old.save(&mut typed).unwrap();
        let raw = old.read_value("player", &key, 1).unwrap().unwrap().value;
        let (before, after) = (raw_before.as_object().unwrap(), raw.as_object().unwrap());
        assert_eq!(before.len(), after.len());
        for (k, v) in before {
            if k == "gold" {
                assert_eq!(after[k], json!(v.as_i64().unwrap() + 1));
            } else {
                assert_eq!(&after[k], v, "field {k} changed");
            }
        }
    }
}
