//! `[deploy.pre_traffic]`: the check of a deploy's new instances while they are routed at weight 0 — a GET on each
//! instance's own address and/or a command told their addresses — whose result goes to the machine as
//! `Event::PreTraffic` (a failure aborts the deploy with the check's output).

use std::path::PathBuf;
use std::time::Duration;

use wire::service::PreTrafficCheck;

/// One check to run: what to check, against which instances, with which deploy in the command's environment.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub check: PreTrafficCheck,
    /// The new instances' `host:port`.
    pub instances: Vec<String>,
    pub dir: PathBuf,
    pub env: Vec<(&'static str, String)>,
}

/// Runs the whole check within its timeout: Ok with what it printed, or Err saying what failed, with its output.
pub(crate) async fn run(job: &Job) -> Result<String, String> {
    let limit: Duration = job.check.timeout.0;
    match tokio::time::timeout(limit, checks(job)).await {
        Ok(r) => r,
        Err(_) => Err(format!("it did not end within {}", job.check.timeout)),
    }
}

async fn checks(job: &Job) -> Result<String, String> {
    if job.instances.is_empty() {
        return Err("no ready instance to check".into());
    }
    let mut said = Vec::new();
    if let Some(path) = &job.check.path {
        for addr in &job.instances {
            let a = crate::httpc::request(addr, "GET", path, &[], &[]).await?;
            let what = format!("GET http://{addr}{path}: {} {}", a.status, a.reason);
            if !(200..300).contains(&a.status) {
                return Err(with_body(what, &a.body));
            }
            said.push(what);
        }
    }
    if !job.check.command.is_empty() {
        said.push(command(job).await?);
    }
    Ok(said.join("; "))
}

/// `what`, and the body's first lines if there is one.
fn with_body(what: String, body: &str) -> String {
    if body.is_empty() {
        return what;
    }
    let head: String = body.lines().take(10).collect::<Vec<_>>().join("\n");
    format!("{what}: {}", head.chars().take(2000).collect::<String>())
}

/// The command, killed if the check's time runs out (the future is dropped); its last 20 lines of output.
async fn command(job: &Job) -> Result<String, String> {
    let (program, args) = job.check.command.split_first().ok_or("no command")?;
    let out = tokio::process::Command::new(program)
        .args(args)
        .current_dir(&job.dir)
        .envs(job.env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("SLIPWAY_INSTANCES", job.instances.join(" "))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("the command {program:?} could not start: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    if out.status.success() {
        Ok(tail)
    } else {
        Err(format!("the command failed ({}): {tail}", out.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(path: Option<&str>, command: &[&str], instances: Vec<String>) -> Job {
        Job {
            check: PreTrafficCheck {
                path: path.map(str::to_string),
                command: command.iter().map(|s| s.to_string()).collect(),
                timeout: wire::HumanDuration::from_secs(5),
            },
            instances,
            dir: std::env::temp_dir(),
            env: vec![("SLIPWAY_RELEASE", "v2".into())],
        }
    }

    /// A server answering every connection with `status` and `body`.
    async fn server(status: &'static str, body: &'static str) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut c, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let reply = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                let _ = c.write_all(reply.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_check_passes_only_when_every_instance_answers_2xx_and_the_command_exits_0() {
        let ok = server("200 OK", "fine").await;
        let bad = server("500 Internal Server Error", "cart is broken").await;
        let passed = run(&job(
            Some("/smoke"),
            &["sh", "-c", "echo $SLIPWAY_RELEASE at $SLIPWAY_INSTANCES"],
            vec![ok.clone()],
        ))
        .await
        .unwrap();
        assert!(
            passed.contains("200 OK") && passed.contains(&format!("v2 at {ok}")),
            "{passed}"
        );
        let e = run(&job(Some("/smoke"), &[], vec![ok.clone(), bad.clone()]))
            .await
            .unwrap_err();
        assert!(
            e.contains(&format!("GET http://{bad}/smoke: 500")) && e.contains("cart is broken"),
            "{e}"
        );
        let e = run(&job(None, &["sh", "-c", "echo nope; exit 4"], vec![ok.clone()]))
            .await
            .unwrap_err();
        assert!(e.contains("the command failed") && e.contains("nope"), "{e}");
        let mut slow = job(None, &["sleep", "5"], vec![ok]);
        slow.check.timeout = wire::HumanDuration::from_millis(200);
        assert!(run(&slow).await.unwrap_err().contains("did not end within"));
        assert!(
            run(&job(Some("/"), &[], vec![]))
                .await
                .unwrap_err()
                .contains("no ready instance")
        );
    }
}
