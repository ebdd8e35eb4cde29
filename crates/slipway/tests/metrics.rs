//! The router's and the control plane's `/metrics` during a real canary deploy, checked by Prometheus' own
//! parser and linter (`promtool check metrics`, Debian's `prometheus` package, which scripts/test installs).

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::TempDir;

fn run(dir: &TempDir, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A part's API address (from its status file) and token.
fn api_of(dir: &TempDir, status: &str, field: &str, token: &str) -> (SocketAddr, String) {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(status)).unwrap()).unwrap();
    let addr = v[field].as_str().unwrap().parse().unwrap();
    (
        addr,
        std::fs::read_to_string(dir.join(token)).unwrap().trim().to_string(),
    )
}

async fn scrape(api: &(SocketAddr, String)) -> String {
    let auth = format!("Bearer {}", api.1);
    let r = testkit::get(api.0, "/metrics", &[("authorization", &auth)])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("text/plain; version=0.0.4")
    );
    // The body as it came (`text()` trims the last newline, which the format needs).
    String::from_utf8(r.body.to_vec()).unwrap()
}

/// `promtool check metrics`: its exit code and everything it said (problems and lint warnings).
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/test installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

#[test]
fn promtool_rejects_what_it_should_so_the_checks_below_can_fail() {
    let (ok, said) = promtool("# TYPE x counter\nx 1\n# TYPE x counter\n");
    assert!(!ok || !said.trim().is_empty(), "{said}");
    let (ok, said) = promtool("# TYPE x_total counter\nx_total 1\n");
    assert!(
        !ok && said.contains("no help text"),
        "a lint warning fails the check: {ok} {said}"
    );
    let (ok, said) = promtool("# HELP a_total As.\n# TYPE a_total counter\na_total 1\n");
    assert!(ok && said.trim().is_empty(), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_the_router_and_the_control_plane_pass_promtool_and_show_the_deploy() {
    let dir = TempDir::new("metrics");
    let demo = testkit::workspace_bin("demo-app");
    std::fs::write(
        dir.join("slipway.toml"),
        format!(
            r#"
[service]
name = "shop"

[[listener]]
name = "web"
kind = "http"
addr = "127.0.0.1:0"

[instance]
count = 2
command = "{}"

[deploy.canary]
instances = 1
steps = [{{ weight = 20, hold = "60s" }}]
"#,
            demo.display()
        ),
    )
    .unwrap();
    for id in ["v1", "v2"] {
        std::fs::create_dir_all(dir.join(id)).unwrap();
        let (code, _, err) = run(&dir, &["release", "add", id, "--id", id]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = run(&dir, &["up"]);
    assert_eq!(code, 0, "{out}{err}");
    let listener: SocketAddr = out
        .lines()
        .find(|l| l.starts_with("listener web"))
        .and_then(|l| l.rsplit("://").next())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (code, out, err) = run(&dir, &["deploy", "v1"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&dir, &["deploy", "v2", "--detach"]);
    assert_eq!(code, 0, "{out}{err}");
    let load = loadgen::Load::start(loadgen::LoadConfig::new(listener, 100.0));
    let control = api_of(
        &dir,
        ".slipway/control/control.json",
        "api",
        ".slipway/control/control.token",
    );
    let router = api_of(
        &dir,
        ".slipway/router/router.json",
        "admin",
        ".slipway/router/admin.token",
    );
    let text = testkit::wait_for("the canary step judged", Duration::from_secs(40), || {
        let control = control.clone();
        async move {
            let t = scrape(&control).await;
            (t.contains("slipway_deploy_phase{phase=\"step\"} 1") && t.contains("slipway_judge_odds{metric="))
                .then_some(t)
        }
    })
    .await;
    let _ = load.stop().await;
    let (ok, said) = promtool(&text);
    assert!(
        ok && said.trim().is_empty(),
        "promtool on the control plane's metrics: {said}\n{text}"
    );
    for needle in [
        "# HELP slipway_deploy_phase ",
        "slipway_deploy_running 1",
        "slipway_release_weight{release=\"v2\",state=\"active\"} 20",
        "slipway_release_weight{release=\"v1\",state=\"active\"} 80",
        "slipway_canary_weight_percent{release=\"v2\"} 20",
        "slipway_judge_verdict{metric=\"\"} ",
        "slipway_instances{release=\"v2\",state=\"ready\"} 1",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let rtext = scrape(&router).await;
    let (ok, said) = promtool(&rtext);
    assert!(
        ok && said.trim().is_empty(),
        "promtool on the router's metrics: {said}\n{rtext}"
    );
    assert!(
        rtext.contains("# TYPE slipway_request_duration_seconds histogram"),
        "{rtext}"
    );
    assert!(rtext.contains("slipway_requests_total{release=\"v2\","), "{rtext}");
    let (code, out, err) = run(&dir, &["down"]);
    assert_eq!(code, 0, "{out}{err}");
}
