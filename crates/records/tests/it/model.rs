//! The player record the tests use, in the versions two releases know, and stores on both backends.

use records::{AnyBackend, KindSchema, Schema, Store, Versioned};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use testkit::TempDir;

/// What release v1 of the game knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayerV1 {
    pub name: String,
    pub gold: i64,
    pub hp: i64,
}

impl Versioned for PlayerV1 {
    const KIND: &'static str = "player";
    const VERSION: u32 = 1;
}

/// What release v3 knows: v2 added `xp` (readable by v1), v3 renamed `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayerV3 {
    pub display_name: String,
    pub gold: i64,
    pub hp: i64,
    pub xp: i64,
}

impl Versioned for PlayerV3 {
    const KIND: &'static str = "player";
    const VERSION: u32 = 3;
}

fn rename(v: &mut Value, from: &str, to: &str) -> Result<(), String> {
    let obj = v.as_object_mut().ok_or("not an object")?;
    if let Some(x) = obj.remove(from) {
        obj.insert(to.to_string(), x);
    }
    Ok(())
}

/// The chain as Rust functions.
pub fn schema() -> Schema {
    Schema::new()
        .with(
            KindSchema::new("player", 1)
                .up(1, |v| {
                    v.as_object_mut()
                        .ok_or("not an object")?
                        .entry("xp")
                        .or_insert(json!(0));
                    Ok(())
                })
                .down(1, |v| {
                    v.as_object_mut().ok_or("not an object")?.remove("xp");
                    Ok(())
                })
                .readable_by(2, 1)
                .up(2, |v| rename(v, "name", "display_name"))
                .down(2, |v| rename(v, "display_name", "name")),
        )
        .unwrap()
}

/// The same chain as a steps file (what a non-Rust app ships).
pub const STEPS: &str = r#"
[kinds.player]
fields = { name = "string", gold = "int", hp = "int" }

[[kinds.player.versions]]
version = 2
readable_by = 1
up = [{ add = "xp", default = 0 }]
down = [{ remove = "xp" }]

[[kinds.player.versions]]
version = 3
up = [{ rename = "name", to = "display_name" }]
down = [{ rename = "display_name", to = "name" }]
fields = { display_name = "string", gold = "int", hp = "int", xp = "int" }
"#;

/// Where a test's records live.
pub enum Db {
    Sqlite(TempDir),
    Postgres(String),
}

impl Db {
    pub fn sqlite() -> Db {
        Db::Sqlite(TempDir::new("records"))
    }
    pub fn postgres(tag: &str) -> Db {
        Db::Postgres(testkit::pg_database(tag))
    }
    pub fn url(&self) -> String {
        match self {
            Db::Sqlite(d) => format!("sqlite:{}", d.join("records.db").display()),
            Db::Postgres(u) => u.clone(),
        }
    }
    /// A store for code released as `writer`.
    pub fn store(&self, writer: &str) -> Store<AnyBackend> {
        Store::new(records::open(&self.url()).unwrap(), schema(), writer)
    }
}

/// Both backends, for tests that must hold on each.
pub fn both(tag: &str) -> Vec<Db> {
    vec![Db::sqlite(), Db::postgres(tag)]
}
