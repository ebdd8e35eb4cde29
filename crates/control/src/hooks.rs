//! `[deploy.hooks]`: the operator's commands before a deploy, after it is done and after an abort, with the deploy
//! in their environment, a deadline, and their output kept for the log (or the refusal).

use std::path::PathBuf;
use std::time::Duration;

/// How long a hook may run before it is killed (and, for `pre_deploy`, the deploy refused).
pub(crate) const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// One hook to run: its command, folder and environment.
#[derive(Debug, Clone)]
pub(crate) struct Hook {
    pub name: &'static str,
    pub argv: Vec<String>,
    pub dir: PathBuf,
    pub env: Vec<(&'static str, String)>,
}

/// Runs the hook to its end; Ok with its output, or Err saying how it failed, with its output.
pub(crate) async fn run(h: &Hook) -> Result<String, String> {
    let Some((program, args)) = h.argv.split_first() else {
        return Ok(String::new());
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(&h.dir)
        .envs(h.env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(HOOK_TIMEOUT, child).await {
        Err(_) => {
            return Err(format!(
                "{} hook did not end within {}s",
                h.name,
                HOOK_TIMEOUT.as_secs()
            ));
        }
        Ok(Err(e)) => return Err(format!("{} hook {program:?} could not start: {e}", h.name)),
        Ok(Ok(out)) => out,
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tail: Vec<&str> = text.lines().rev().take(20).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    if out.status.success() {
        Ok(tail)
    } else {
        Err(format!("{} hook failed ({}): {tail}", h.name, out.status))
    }
}

/// Runs a hook in the background, saying how it went in the log.
pub(crate) fn spawn(h: Hook) {
    if h.argv.is_empty() {
        return;
    }
    tokio::spawn(async move {
        match run(&h).await {
            Ok(out) => tracing::info!(hook = h.name, output = %out, "hook ran"),
            Err(e) => tracing::warn!(hook = h.name, "{e}"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(argv: &[&str]) -> Hook {
        Hook {
            name: "pre_deploy",
            argv: argv.iter().map(|s| s.to_string()).collect(),
            dir: std::env::temp_dir(),
            env: vec![("SLIPWAY_RELEASE", "v7".into())],
        }
    }

    #[tokio::test]
    async fn a_hook_sees_the_deploy_and_a_failing_one_says_its_output() {
        assert_eq!(
            run(&hook(&["sh", "-c", "echo release $SLIPWAY_RELEASE"])).await,
            Ok("release v7".into())
        );
        let e = run(&hook(&["sh", "-c", "echo not today; exit 3"])).await.unwrap_err();
        assert!(e.contains("pre_deploy hook failed") && e.contains("not today"), "{e}");
        let e = run(&hook(&["/nonexistent/hook"])).await.unwrap_err();
        assert!(e.contains("could not start"), "{e}");
    }
}
