//! The versioned files in the state folder: older formats are read and upgraded, newer ones refused.

use testkit::TempDir;
use wire::api::{BoundListener, RouterStatus};
use wire::router_config::{ListenerKind, RouterConfigFile};

use crate::harness::{App, Harness, config_text, release, table};

/// `routes.json` exactly as the router wrote it before the file had a format.
fn format_0_routes(dir: &TempDir, app: &App) -> serde_json::Value {
    let mut t = table(vec![release("v1", 100, &[app])]);
    t.generation = 7;
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::write(dir.join("state/routes.json"), serde_json::to_vec_pretty(&t).unwrap()).unwrap();
    serde_json::to_value(&t).unwrap()
}

fn read_json(path: std::path::PathBuf) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test]
async fn a_routes_file_from_before_format_versions_is_served_and_saved_again_at_format_1() {
    let app = App::start("v1").await;
    let dir = TempDir::new("state-format-0");
    let old = format_0_routes(&dir, &app);
    let text = config_text(&dir, "");
    let h = Harness::start_with_text(dir, &text).await;
    assert_eq!(h.routes().await.generation, 7, "the saved table is served as it was");
    assert_eq!(h.get("/", &[]).await.text(), "v1");
    let saved = read_json(h.dir.join("state/routes.json"));
    assert_eq!(saved["format"], 1);
    assert_eq!(saved["table"], old);
    let status = read_json(h.dir.join("state/router.json"));
    assert_eq!(status["format"], 1);
    assert_eq!(router::read_status(&h.dir.join("state")).unwrap().generation, 7);
}

#[tokio::test]
async fn a_routes_file_of_a_newer_format_is_refused_with_its_name_and_left_alone() {
    let app = App::start("v1").await;
    let dir = TempDir::new("state-format-2");
    let old = format_0_routes(&dir, &app);
    let newer = serde_json::json!({ "format": 2, "table": old, "something": "new" }).to_string();
    std::fs::write(dir.join("state/routes.json"), &newer).unwrap();
    let raw: RouterConfigFile = toml::from_str(&config_text(&dir, "")).unwrap();
    let config = router::Config::from_raw(&raw, dir.path()).unwrap();
    let err = router::start(config)
        .await
        .expect_err("a newer format is refused")
        .to_string();
    assert!(err.contains("routes.json") && err.contains("format 2"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("state/routes.json")).unwrap(), newer);
}

#[test]
fn a_status_file_from_before_format_versions_reads_and_a_newer_one_is_refused() {
    let dir = TempDir::new("status-format");
    let status = RouterStatus {
        router_id: "r1".into(),
        pid: 42,
        version: "0.1.0".into(),
        generation: 3,
        uptime_ms: 10,
        admin: "127.0.0.1:9".into(),
        listeners: vec![BoundListener {
            name: "web".into(),
            kind: ListenerKind::Http,
            addr: "127.0.0.1:8".into(),
            tls: false,
        }],
        open_websockets: 0,
        open_tcp: 0,
        took_over_from: None,
    };
    let file = dir.join("router.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&status).unwrap()).unwrap();
    assert_eq!(router::read_status(dir.path()).unwrap(), status);
    let mut v = serde_json::to_value(&status).unwrap();
    v["format"] = 9.into();
    std::fs::write(&file, v.to_string()).unwrap();
    let err = router::read_status(dir.path()).unwrap_err().to_string();
    assert!(err.contains("router.json") && err.contains("format 9"), "{err}");
}

#[tokio::test]
async fn the_state_folder_is_0700_and_its_files_0600_even_if_it_was_made_open() {
    use std::os::unix::fs::PermissionsExt;
    let app = App::start("v1").await;
    let dir = TempDir::new("state-modes");
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::set_permissions(dir.join("state"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = config_text(&dir, "");
    let h = Harness::start_with_text(dir, &text).await;
    h.put(&table(vec![release("v1", 100, &[&app])])).await;
    let mode = |p: &str| std::fs::metadata(h.dir.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("state"), 0o700);
    for f in [
        "state/routes.json",
        "state/router.json",
        "state/cookie.key",
        "state/admin.token",
    ] {
        assert_eq!(mode(f), 0o600, "{f}");
    }
}
