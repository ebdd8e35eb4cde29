//! Which page is shown, and its sections from the backend's data and the recorder.

use std::fmt::Write;

use crate::html::{Nav, esc, page, table};
use crate::pages::{self, Sections};
use crate::server::Shared;

/// A page of the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum View {
    Service,
    /// A deploy by id, or the running (else the last) one.
    Deploy(Option<i64>),
    History,
    Logs(Option<String>),
    Data,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn deploy_sections(s: &Shared, id: Option<i64>) -> Sections {
    let st = s.backend.status();
    let d = match id {
        Some(id) => st
            .deploy
            .clone()
            .filter(|d| d.id == id)
            .or_else(|| s.backend.deploy(id)),
        None => st.deploy.clone().or_else(|| s.backend.history(1).into_iter().next()),
    };
    let Some(d) = d else {
        let what = id.map_or("no deploy yet".to_string(), |id| format!("no deploy {id}"));
        return vec![(
            "dep-head",
            format!("<h1>Deploy</h1><p class=\"none\" id=\"no-deploy\">{}</p>", esc(&what)),
        )];
    };
    let can_rollback = st.previous.is_some() && st.deploy.as_ref().is_none_or(|x| x.finished());
    let cfg = s.backend.judge_config();
    let plot = s.plot(d.id);
    pages::deploy(&d, plot.as_deref(), &cfg, can_rollback)
}

fn data_sections(s: &Shared) -> Sections {
    let st = s.backend.status();
    let cfg = s.backend.data_settings();
    let mut out = String::from("<h1>Data</h1>");
    let rows: Vec<Vec<String>> = [
        ("database", cfg.database.as_deref().map(redact)),
        ("migrations", cfg.migrations.as_ref().map(|p| p.display().to_string())),
        ("records", cfg.records.as_deref().map(redact)),
        ("lock timeout", cfg.lock_timeout.map(|d| d.to_string())),
    ]
    .into_iter()
    .map(|(k, v)| vec![esc(k), esc(v.as_deref().unwrap_or("not set"))])
    .collect();
    out.push_str(&table("data", &["[data]", "value"], &rows));
    let _ = write!(
        out,
        "<h2>Last data move</h2><p id=\"data-note\">{}</p>",
        esc(st.data.as_deref().unwrap_or("nothing done yet (or [data] is not set)"))
    );
    let mut sections = vec![("data", out)];
    sections.extend(crate::data::sections(&s.backend.data()));
    sections
}

/// A database URL without its password.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn logs_body(s: &Shared, instance: Option<&str>) -> String {
    let st = s.backend.status();
    let mut out = String::from("<h1>Logs</h1><ul class=\"pick\">");
    for i in &st.instances {
        let cur = if Some(i.id.as_str()) == instance {
            " aria-current=\"true\""
        } else {
            ""
        };
        let _ = write!(
            out,
            "<li><a href=\"/logs?instance={id}\"{cur}>{id}</a> <small>{rel} {state}</small></li>",
            id = esc(&i.id),
            rel = esc(&i.release),
            state = i.state.as_str()
        );
    }
    out.push_str("</ul>");
    match instance {
        Some(i) => {
            let _ = write!(out, "<h2>{}</h2><pre id=\"log\" class=\"log\"></pre>", esc(i));
        }
        None => out.push_str("<p class=\"none\">pick an instance to follow its output</p>"),
    }
    out
}

/// The live sections of a page.
pub(crate) fn sections(s: &Shared, view: &View) -> Sections {
    match view {
        View::Service => {
            let st = s.backend.status();
            let (rates, open) = {
                let rec = lock(&s.recorder);
                (rec.rates.clone(), rec.open.clone())
            };
            pages::service(&st, &rates, &open)
        }
        View::Deploy(id) => deploy_sections(s, *id),
        View::History => pages::history(&s.backend.history(100)),
        View::Data => data_sections(s),
        View::Logs(_) => Vec::new(),
    }
}

/// A whole page for a session with CSRF token `csrf`.
pub(crate) fn render_page(s: &Shared, view: &View, csrf: &str) -> String {
    let (title, nav) = match view {
        View::Service => ("Service", Nav::Service),
        View::Deploy(_) => ("Deploy", Nav::Deploy),
        View::History => ("History", Nav::History),
        View::Logs(_) => ("Logs", Nav::Logs),
        View::Data => ("Data", Nav::Data),
    };
    let live = match view {
        View::Service => Some("/events?page=service".to_string()),
        View::Deploy(Some(id)) => Some(format!("/events?page=deploy&id={id}")),
        View::Deploy(None) => Some("/events?page=deploy".to_string()),
        View::History => Some("/events?page=history".to_string()),
        View::Data => Some("/events?page=data".to_string()),
        View::Logs(i) => i.as_ref().map(|i| format!("/events/log?instance={}", url_component(i))),
    };
    let body = match view {
        View::Logs(i) => logs_body(s, i.as_deref()),
        v => pages::join(&sections(s, v)),
    };
    page(title, nav, csrf, live.as_deref(), &body)
}

/// Percent-encodes everything but unreserved characters.
fn url_component(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_password_is_never_shown() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("sqlite:data/app.db"), "sqlite:data/app.db");
    }

    #[test]
    fn instance_ids_are_encoded_in_urls() {
        assert_eq!(url_component("v1-0"), "v1-0");
        assert_eq!(url_component("a&b c"), "a%26b%20c");
    }
}
