//! HTML building blocks: escaping, the page frame with its navigation, small tables.

use std::fmt::Write;

/// Text made safe for HTML content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Which page the navigation marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Service,
    Deploy,
    History,
    Logs,
    Data,
    Login,
}

const NAV: [(Nav, &str, &str); 5] = [
    (Nav::Service, "/", "Service"),
    (Nav::Deploy, "/deploy", "Deploy"),
    (Nav::History, "/history", "History"),
    (Nav::Logs, "/logs", "Logs"),
    (Nav::Data, "/data", "Data"),
];

/// A whole page. `live` is the server-sent-events URL the script follows, `csrf` the session's token for writes.
pub(crate) fn page(title: &str, nav: Nav, csrf: &str, live: Option<&str>, body: &str) -> String {
    let mut links = String::new();
    if nav != Nav::Login {
        for (n, href, name) in NAV {
            let cur = if n == nav { r#" aria-current="page""# } else { "" };
            let _ = write!(links, r#"<a href="{href}"{cur}>{name}</a>"#);
        }
        links.push_str(r#"<form method="post" action="/logout" class="logout"><input type="hidden" name="csrf" "#);
        let _ = write!(links, r#"value="{}"><button>Log out</button></form>"#, esc(csrf));
    }
    let live = live
        .map(|l| format!(r#"<meta name="live" content="{}">"#, esc(l)))
        .unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"\
            width=device-width, initial-scale=1\"><title>{} · slipway</title><link rel=\"icon\" href=\"\
            data:,\"><link rel=\"stylesheet\" href=\"/assets/style.css\"><meta name=\"csrf\" content=\"\
            {}\">{live}<script src=\"/assets/app.js\" defer></script></head><body><header><span class=\"\
            brand\">slipway</span><nav>{links}</nav><span id=\"conn\" class=\"conn\" title=\"live updates\"\
            >●</span></header><main>{body}</main><div id=\"confirm\" class=\"confirm\" hidden><span \
            id=\"confirm-text\"></span><button type=\"button\" id=\"confirm-yes\">Yes</button><button \
            type=\"button\" id=\"confirm-no\">Cancel</button></div><div id=\"flash\" role=\"status\"\
            ></div></body></html>",
        esc(title),
        esc(csrf),
    )
}

/// A table from a header row and rows of already escaped cells.
pub(crate) fn table(class: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!(r#"<div class="scroll"><table class="{class}"><thead><tr>"#);
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{c}</td>");
        }
        out.push_str("</tr>");
    }
    if rows.is_empty() {
        let _ = write!(
            out,
            r#"<tr><td colspan="{}" class="none">none</td></tr>"#,
            head.len().max(1)
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

/// A section a live update may replace: `<section id=...>`.
pub(crate) fn section(id: &str, inner: &str) -> String {
    format!(r#"<section id="{}" class="live">{inner}</section>"#, esc(id))
}

/// A duration in seconds as "1m 05s".
pub(crate) fn dur(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_every_markup_character() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn a_page_loads_only_its_own_assets_and_no_favicon() {
        let p = page("T", Nav::Service, "tok", Some("/events?page=service"), "<p>x</p>");
        assert!(p.contains(r#"href="/assets/style.css""#) && p.contains(r#"src="/assets/app.js""#));
        assert!(p.contains(r#"rel="icon" href="data:,""#));
        assert!(
            !p.contains("http://") && !p.contains("https://"),
            "nothing from elsewhere"
        );
        assert!(p.contains(r#"<meta name="csrf" content="tok">"#));
        assert!(p.contains(r#"aria-current="page">Service"#));
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(dur(5_400), "5s");
        assert_eq!(dur(65_000), "1m 05s");
        assert_eq!(dur(3_720_000), "1h 02m");
    }
}
