//! What the operator-level tests share: the slipway binary run in a service folder, and `down` at the end.

use std::process::Command;

use testkit::TempDir;

/// `slipway` in `dir` with `env` added, without colour.
pub fn slipway(dir: &TempDir, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_slipway"));
    c.current_dir(dir.path()).env("NO_COLOR", "1").envs(env.iter().copied());
    c
}

/// Runs `slipway args…` in `dir`: exit code, stdout, stderr.
pub fn run(dir: &TempDir, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = slipway(dir, env).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Runs `slipway down` when the test ends, passed or not (a failed test used to leave the service running).
pub struct Down<'a>(pub &'a TempDir);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = run(self.0, &["down"], &[]);
    }
}
