//! The `slipway` binary as a user runs it: `validate`, and a router that survives its own kill -9.

use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::{TempDir, wait_for};

fn slipway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_slipway"))
}

#[test]
fn validate_lists_every_problem_and_exits_64() {
    let dir = TempDir::new("validate");
    let bad = dir.join("router.toml");
    std::fs::write(
        &bad,
        r#"
state_dir = "s"
admin = { listen = "0.0.0.0:1" }
[[listener]]
name = "web"
kind = "http"
addr = "nowhere"
[upstream]
connect_timeout = 0
"#,
    )
    .unwrap();
    let out = slipway().arg("validate").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 problems"), "{err}");
    for want in ["admin.listen", "listener[0].addr", "upstream.connect_timeout"] {
        assert!(err.contains(want), "{want} missing from: {err}");
    }
    let routes = dir.join("routes.toml");
    std::fs::write(
        &routes,
        "[[release]]\nid = \"v1\"\nweight = 1\ninstance = [{ id = \"a\", addr = \"127.0.0.1:1\" }]\n",
    )
    .unwrap();
    let out = slipway().arg("validate").arg(&routes).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid route table"));
    let out = slipway()
        .arg("validate")
        .arg(dir.join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

fn router_status(state: &std::path::Path) -> Option<wire::api::RouterStatus> {
    serde_json::from_slice(&std::fs::read(state.join("router.json")).ok()?).ok()
}

#[tokio::test]
async fn a_killed_router_process_serves_its_saved_table_when_started_again() {
    let app = demo_app::App::new(demo_app::Config::new("v1"));
    let (app_addr, _server) = demo_app::spawn_local(app).await.unwrap();
    let dir = TempDir::new("router-proc");
    std::fs::write(
        dir.join("routes.toml"),
        format!("[[release]]\nid = \"v1\"\nweight = 100\ninstance = [{{ id = \"v1-0\", addr = \"{app_addr}\" }}]\n"),
    )
    .unwrap();
    let config = dir.join("router.toml");
    std::fs::write(
        &config,
        "state_dir = \"state\"\nworkers = 1\ninitial_routes = \"routes.toml\"\nadmin = { listen = \"127.0.0.1:0\" }\n\
         [[listener]]\nname = \"web\"\nkind = \"http\"\naddr = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let state = dir.join("state");
    let spawn = || {
        slipway()
            .arg("router")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = spawn();
    let pid = first.id();
    let status = wait_for("router up", Duration::from_secs(10), || async {
        router_status(&state).filter(|s| s.pid == pid)
    })
    .await;
    let web: std::net::SocketAddr = status.listeners[0].addr.parse().unwrap();
    assert_eq!(testkit::get(web, "/", &[]).await.unwrap().text(), "v1");
    // Change the table through the admin API, then kill -9 the router.
    let token = std::fs::read_to_string(state.join("admin.token")).unwrap();
    let auth = format!("Bearer {}", token.trim());
    let admin: std::net::SocketAddr = status.admin.parse().unwrap();
    let mut c = testkit::Client::connect(admin).await.unwrap();
    let body = r#"{"ops":[{"op":"set_weight","release":"v1","weight":7}]}"#;
    let r = c
        .send("PATCH", "/v1/routes", &[("authorization", &auth)], body.into())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    first.kill().unwrap();
    first.wait().unwrap();
    // Started again, it serves the saved table (weight 7, same generation).
    let mut second = spawn();
    let pid = second.id();
    let status2 = wait_for("router up again", Duration::from_secs(10), || async {
        router_status(&state).filter(|s| s.pid == pid)
    })
    .await;
    assert_eq!(status2.generation, status.generation + 1);
    let web: std::net::SocketAddr = status2.listeners[0].addr.parse().unwrap();
    assert_eq!(testkit::get(web, "/", &[]).await.unwrap().text(), "v1");
    let admin: std::net::SocketAddr = status2.admin.parse().unwrap();
    let mut c = testkit::Client::connect(admin).await.unwrap();
    let t: wire::RouteTable =
        serde_json::from_slice(&c.get("/v1/routes", &[("authorization", &auth)]).await.unwrap().body).unwrap();
    assert_eq!(t.releases[0].weight, 7);
    // SIGTERM stops it cleanly.
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let code = second.wait().unwrap();
    assert!(code.success(), "{code:?}");
}

#[test]
fn version_names_the_crate_version_and_the_commit() {
    let out = slipway().arg("--version").output().unwrap();
    assert!(out.status.success());
    let v = String::from_utf8_lossy(&out.stdout);
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert!(
        v.starts_with(&format!("slipway {} (", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    if !head.is_empty() {
        assert!(v.contains(&head), "the build's commit {head} is not in: {v}");
    }
}

#[test]
fn completions_are_scripts_the_shell_accepts_and_the_manual_renders() {
    let out = slipway().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let dir = TempDir::new("completions");
    let script = dir.join("slipway.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let check = Command::new("bash").arg("-n").arg(&script).status().unwrap();
    assert!(check.success(), "bash -n refused the completion script");
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["deploy", "rollback", "records", "completions"] {
        assert!(text.contains(sub), "{sub} is not completed");
    }
    let man = slipway().args(["man", "--out"]).arg(dir.join("man")).output().unwrap();
    assert!(man.status.success());
    let page = std::fs::read_to_string(dir.join("man/slipway-deploy.1")).unwrap();
    assert!(page.contains(".TH") && page.contains("release"), "{page}");
}

#[test]
fn a_bad_command_line_exits_64_and_status_without_a_service_file_says_what_to_do() {
    let out = slipway()
        .args(["migrate", "run", "--phase", "sideways"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let dir = TempDir::new("nofile");
    let out = slipway()
        .arg("status")
        .current_dir(dir.path())
        .env_remove("SLIPWAY_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("slipway.toml") && err.contains("-c"), "{err}");
    assert_eq!(err.matches("No such file").count(), 0, "{err}");
}

#[tokio::test]
async fn logs_written_to_a_file_have_no_colour_codes_and_json_logs_are_one_object_a_line() {
    let dir = TempDir::new("router-logs");
    let config = dir.join("router.toml");
    std::fs::write(
        &config,
        "state_dir = \"state\"\nworkers = 1\nadmin = { listen = \"127.0.0.1:0\" }\n\
         [[listener]]\nname = \"web\"\nkind = \"http\"\naddr = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    for format in ["text", "json"] {
        let log = dir.join(format!("router-{format}.log"));
        let mut router = slipway()
            .arg("router")
            .arg("--config")
            .arg(&config)
            .env("SLIPWAY_LOG_FORMAT", format)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let pid = router.id();
        wait_for("router up", Duration::from_secs(10), || async {
            router_status(&dir.join("state")).filter(|s| s.pid == pid)
        })
        .await;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = router.wait();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.trim().is_empty(), "the router logged nothing");
        assert!(!text.contains('\u{1b}'), "colour codes in a log file:\n{text}");
        if format == "json" {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(v.get("level").is_some() && v.get("timestamp").is_some(), "{line}");
            }
        }
    }
}
