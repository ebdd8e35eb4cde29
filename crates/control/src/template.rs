//! What a deploy changes in the instance template (in words, env values never shown), and what in slipway.toml
//! a deploy cannot apply live.

use wire::agent::InstanceTemplate;
use wire::service::ServiceFile;

/// The template's changes from `old` to `new`, one line each; env variables by name only.
pub(crate) fn changes(old: &InstanceTemplate, new: &InstanceTemplate) -> Vec<String> {
    let mut out = Vec::new();
    if old.command != new.command {
        out.push(format!("command {:?} -> {:?}", old.command, new.command));
    }
    if old.args != new.args {
        out.push(format!("args {:?} -> {:?}", old.args, new.args));
    }
    for (k, v) in &new.env {
        match old.env.get(k) {
            None => out.push(format!("env {k} added")),
            Some(o) if o != v => out.push(format!("env {k} changed")),
            Some(_) => {}
        }
    }
    for k in old.env.keys().filter(|k| !new.env.contains_key(*k)) {
        out.push(format!("env {k} removed"));
    }
    if old.listen_fds != new.listen_fds {
        out.push(format!("listen_fds {} -> {}", old.listen_fds, new.listen_fds));
    }
    let words = |what: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{what} {a:?} -> {b:?}");
    if old.readiness != new.readiness {
        out.push(words("readiness", &old.readiness, &new.readiness));
    }
    if old.drain != new.drain {
        out.push(words("drain", &old.drain, &new.drain));
    }
    if old.restart != new.restart {
        out.push(words("restart", &old.restart, &new.restart));
    }
    out
}

/// What changed in slipway.toml since the control plane started that a deploy cannot apply, with why; empty when
/// a deploy can go ahead (instance, deploy and cohort settings ship with it).
pub(crate) fn not_live(running: &ServiceFile, file: &ServiceFile) -> Vec<String> {
    let mut out = Vec::new();
    if running.listeners != file.listeners {
        out.push("[[listener]] (the router's listening sockets are bound when it starts)".to_string());
    }
    let (a, b) = (&running.routing, &file.routing);
    if a.affinity != b.affinity {
        out.push("[routing.affinity] (the router signs and reads session cookies with it)".to_string());
    }
    if a.client_version_header != b.client_version_header || a.health != b.health {
        out.push("[routing] client_version_header or health (the router reads them when it starts)".to_string());
    }
    if running.service != file.service {
        out.push("[service] (the name, state folder and API address of what runs)".to_string());
    }
    if running.logs != file.logs {
        out.push("[logs] (the agent reads them when it starts)".to_string());
    }
    if running.data != file.data {
        out.push("[data] (the control plane reads it when it starts)".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_changes_are_named_without_their_values() {
        let mut old = InstanceTemplate::default();
        old.env.insert("KEEP".into(), "same".into());
        old.env.insert("TOKEN".into(), "old-secret".into());
        old.env.insert("GONE".into(), "x".into());
        let mut new = old.clone();
        new.env.insert("TOKEN".into(), "new-secret".into());
        new.env.remove("GONE");
        new.env.insert("NEW".into(), "y".into());
        new.args = vec!["--fast".into()];
        let c = changes(&old, &new);
        assert_eq!(
            c,
            [
                "args [] -> [\"--fast\"]",
                "env NEW added",
                "env TOKEN changed",
                "env GONE removed"
            ]
        );
        assert!(!c.join(" ").contains("secret"));
        assert!(changes(&old, &old).is_empty());
    }
}
