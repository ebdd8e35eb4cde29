//! `slipway dashboard`: a one-time login link to the running control plane's dashboard, opened in a browser when
//! one is available.

use anyhow::Context;
use control::ServiceConfig;
use plumbing::client::ApiClient;

/// Asks the dashboard for a one-time link (with the control plane's token) and prints or opens it.
pub async fn login_link(cfg: &ServiceConfig, no_open: bool) -> anyhow::Result<()> {
    control::control_running(cfg).with_context(|| {
        format!(
            "no control plane runs for {} (start it with `slipway up`)",
            cfg.path.display()
        )
    })?;
    let running = control::dashboard_running(cfg).context(
        "the control plane serves no dashboard (service.dashboard is \"off\", or it started before it had one)",
    )?;
    let token = std::fs::read_to_string(cfg.layout.control_token()).context("cannot read the control plane's token")?;
    let client = ApiClient::new(&running.addr, Some(token.trim().to_string()))?;
    let answer: serde_json::Value = client.post("/api/login-link", &serde_json::json!({})).await?;
    let path = answer["path"]
        .as_str()
        .context("the dashboard answered without a link")?;
    let url = format!("http://{}{path}", running.addr);
    let graphical = std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !no_open && graphical && open(&url) {
        println!("opened the dashboard in your browser (the link works once, for 5 minutes)");
    } else {
        println!("{url}");
        println!("(a one-time login link: it works once, for 5 minutes)");
    }
    Ok(())
}

fn open(url: &str) -> bool {
    std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
