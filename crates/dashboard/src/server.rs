//! The dashboard's HTTP side (axum): login, pages, the commands' API, server-sent events, the embedded assets.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::watch;

use crate::auth::{self, Refusal, Sessions};
use crate::backend::{Action, Backend};
use crate::html::{Nav, esc, page};
use crate::series::{Recorder, Track};
use crate::{logs, views};

const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The dashboard's state.
pub(crate) struct Shared {
    pub backend: Arc<dyn Backend>,
    sessions: Mutex<Sessions>,
    pub recorder: Mutex<Recorder>,
    /// The deploy whose plot was last saved, and when (unix ms).
    saved: Mutex<Option<(i64, u64)>>,
    /// Saved plots of past deploys read back for their pages, the last few.
    old_plots: Mutex<Vec<(i64, Arc<Track>)>>,
    /// Bumped once the recorder took in a loop turn: live pages render then.
    pub updated: watch::Sender<u64>,
    pub stop: watch::Receiver<bool>,
}

impl Shared {
    pub(crate) fn new(backend: Arc<dyn Backend>, stop: watch::Receiver<bool>) -> Arc<Shared> {
        Arc::new(Shared {
            backend,
            sessions: Mutex::new(Sessions::default()),
            recorder: Mutex::new(Recorder::default()),
            saved: Mutex::new(None),
            old_plots: Mutex::new(Vec::new()),
            updated: watch::channel(0).0,
            stop,
        })
    }

    /// One loop turn seen: the recorder takes in the status, the deploy's plot is saved when it changed, then live
    /// pages are told.
    pub(crate) fn observe(&self) {
        let st = self.backend.status();
        let cfg = self.backend.judge_config();
        let metrics = self.backend.metrics();
        let id = st.deploy.as_ref().map(|d| d.id);
        // A deploy this dashboard has not seen yet may have been watched by a control plane before a restart.
        let unseen = id.filter(|id| !lock(&self.recorder).tracks.contains_key(id));
        let saved = unseen.and_then(|id| self.backend.saved_plot(id).filter(Track::is_sane));
        let mut rec = lock(&self.recorder);
        if let (Some(id), Some(t)) = (unseen, saved) {
            rec.tracks.entry(id).or_insert(t);
        }
        let before = id.and_then(|id| rec.tracks.get(&id)).map(Track::size);
        let now = now_ms();
        rec.observe(&st, &cfg, now);
        if let Some(m) = metrics {
            rec.observe_metrics(&m, now);
        }
        let after = id.and_then(|id| rec.tracks.get(&id).map(|t| (id, t.size(), t)));
        let save = after.and_then(|(id, size, t)| self.due(id, before, size, now).then(|| (id, t.clone())));
        drop(rec);
        if let Some((id, t)) = save {
            self.backend.save_plot(id, &t);
        }
        self.updated.send_modify(|n| *n += 1);
    }

    /// Whether deploy `id`'s plot is to be saved now: a move, a decision or its end at once, new points every 5 s.
    fn due(&self, id: i64, before: Option<crate::series::Size>, after: crate::series::Size, now: u64) -> bool {
        let mut saved = lock(&self.saved);
        let b = before.unwrap_or_default();
        let marks = (b.0, b.1, b.3) != (after.0, after.1, after.3);
        let points = b.2 != after.2 && saved.is_none_or(|(i, at)| i != id || now.saturating_sub(at) >= 5_000);
        let due = marks || points;
        if due {
            *saved = Some((id, now));
        }
        due
    }

    /// Deploy `id`'s plot: the recorder's, else the one the control plane saved (read once, the last few kept).
    pub(crate) fn plot(&self, id: i64) -> Option<Arc<Track>> {
        if let Some(t) = lock(&self.recorder).tracks.get(&id) {
            return Some(Arc::new(t.clone()));
        }
        if let Some((_, t)) = lock(&self.old_plots).iter().find(|(i, _)| *i == id) {
            return Some(t.clone());
        }
        let t = Arc::new(self.backend.saved_plot(id).filter(Track::is_sane)?);
        let mut old = lock(&self.old_plots);
        old.push((id, t.clone()));
        if old.len() > 4 {
            old.remove(0);
        }
        Some(t)
    }

    /// The session's `(id, csrf)` from the request's cookie.
    fn session(&self, headers: &HeaderMap) -> Result<(String, String), Refusal> {
        let cookie = headers.get(header::COOKIE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let id = auth::session_cookie(cookie).ok_or(Refusal::NoSession)?;
        let csrf = lock(&self.sessions).check(id, now_ms())?;
        Ok((id.to_string(), csrf))
    }
}

type S = State<Arc<Shared>>;

fn new_ids() -> Result<(String, String), Box<Response>> {
    let make = || plumbing::fs::new_token().map_err(|e| Box::new(internal(&format!("no randomness: {e}"))));
    Ok((make()?, make()?))
}

fn internal(msg: &str) -> Response {
    json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg)
}

fn json_error(status: StatusCode, error: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": error, "message": message });
    (status, axum::Json(body)).into_response()
}

fn refused(r: Refusal) -> Response {
    let status = match r {
        Refusal::NoSession | Refusal::BadToken | Refusal::BadLink => StatusCode::UNAUTHORIZED,
        Refusal::BadCsrf => StatusCode::FORBIDDEN,
    };
    json_error(status, "refused", r.message())
}

fn redirect(to: &str, cookie: Option<String>) -> Response {
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response();
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

fn html(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// `key=value&...` of a form body, percent-decoded.
pub(crate) fn form_field(body: &[u8], key: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(x) => {
                        out.push(x);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn login_page(message: Option<&str>) -> String {
    let msg = message
        .map(|m| format!("<p class=\"fail\" id=\"login-error\">{}</p>", esc(m)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Log in</h1>{msg}<form method=\"post\" action=\"/login\" class=\"login\"><label>Control \
            plane token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"current-password\" \
            required></label><button id=\"login\">Log in</button></form><p><small>The token is in <code>\
            .slipway/control/control.token</code>; <code>slipway dashboard</code> prints a one-time \
            link instead.</small></p>"
    );
    page("Log in", Nav::Login, "", None, &body)
}

async fn get_login() -> Response {
    html(StatusCode::OK, login_page(None))
}

async fn post_login(State(s): S, body: Bytes) -> Response {
    let given = form_field(&body, "token").unwrap_or_default();
    let ids = match new_ids() {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let id = ids.0.clone();
    let token = s.backend.token();
    match lock(&s.sessions).login(&given, &token, ids, now_ms()) {
        Ok(()) => redirect("/", Some(auth::set_cookie(&id))),
        Err(r) => html(StatusCode::UNAUTHORIZED, login_page(Some(r.message()))),
    }
}

#[derive(Deserialize)]
struct Code {
    code: Option<String>,
}

async fn login_once(State(s): S, Query(q): Query<Code>) -> Response {
    let ids = match new_ids() {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let id = ids.0.clone();
    let code = q.code.unwrap_or_default();
    match lock(&s.sessions).redeem(&code, ids, now_ms()) {
        Ok(()) => redirect("/", Some(auth::set_cookie(&id))),
        Err(r) => html(StatusCode::UNAUTHORIZED, login_page(Some(r.message()))),
    }
}

/// `POST /api/login-link` with the admin token as a bearer: a one-time login path.
async fn login_link(State(s): S, headers: HeaderMap) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !auth::same(given, &s.backend.token()) {
        return refused(Refusal::BadToken);
    }
    let code = match plumbing::fs::new_token() {
        Ok(c) => c,
        Err(e) => return internal(&format!("no randomness: {e}")),
    };
    lock(&s.sessions).issue_link(code.clone(), now_ms());
    axum::Json(serde_json::json!({ "path": format!("/login/once?code={code}") })).into_response()
}

async fn logout(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    let (id, _) = match s.session(&headers) {
        Ok(x) => x,
        Err(_) => return redirect("/login", Some(auth::clear_cookie())),
    };
    let given = form_field(&body, "csrf").unwrap_or_default();
    if let Err(r) = lock(&s.sessions).check_write(&id, &given, now_ms()) {
        return refused(r);
    }
    lock(&s.sessions).logout(&id);
    redirect("/login", Some(auth::clear_cookie()))
}

/// A page behind the login: the login page's redirect without a session. The backend's reads (the control
/// plane's locks, the Data page's databases) run off the async threads.
async fn page_or_login(s: &Arc<Shared>, headers: &HeaderMap, view: views::View) -> Response {
    match s.session(headers) {
        Ok((_, csrf)) => {
            let s = s.clone();
            match tokio::task::spawn_blocking(move || views::render_page(&s, &view, &csrf)).await {
                Ok(body) => html(StatusCode::OK, body),
                Err(_) => json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the page failed to render",
                ),
            }
        }
        Err(_) => redirect("/login", None),
    }
}

async fn service_page(State(s): S, headers: HeaderMap) -> Response {
    page_or_login(&s, &headers, views::View::Service).await
}

async fn deploy_current(State(s): S, headers: HeaderMap) -> Response {
    page_or_login(&s, &headers, views::View::Deploy(None)).await
}

async fn deploy_page(State(s): S, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    page_or_login(&s, &headers, views::View::Deploy(Some(id))).await
}

async fn history_page(State(s): S, headers: HeaderMap) -> Response {
    page_or_login(&s, &headers, views::View::History).await
}

async fn data_page(State(s): S, headers: HeaderMap) -> Response {
    page_or_login(&s, &headers, views::View::Data).await
}

#[derive(Deserialize)]
struct LogQuery {
    instance: Option<String>,
}

async fn logs_page(State(s): S, headers: HeaderMap, Query(q): Query<LogQuery>) -> Response {
    page_or_login(&s, &headers, views::View::Logs(q.instance)).await
}

#[derive(Deserialize)]
struct LiveQuery {
    page: Option<String>,
    id: Option<i64>,
}

/// `GET /events`: the changed sections of a live page after every loop turn.
async fn events(State(s): S, headers: HeaderMap, Query(q): Query<LiveQuery>) -> Response {
    if let Err(r) = s.session(&headers) {
        return refused(r);
    }
    let view = match q.page.as_deref() {
        Some("service") => views::View::Service,
        Some("deploy") => views::View::Deploy(q.id),
        Some("history") => views::View::History,
        Some("data") => views::View::Data,
        _ => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "page is service, deploy, history or data",
            );
        }
    };
    let rx = s.updated.subscribe();
    let stop = s.stop.clone();
    let start = (s, rx, stop, view, HashMap::<&'static str, String>::new(), true);
    let stream = futures_util::stream::unfold(start, |(s, mut rx, mut stop, view, mut last, first)| async move {
        loop {
            if !first || !last.is_empty() {
                tokio::select! {
                    r = rx.changed() => r.ok()?,
                    _ = stop.wait_for(|x| *x) => return None,
                }
            }
            let mut changed = serde_json::Map::new();
            let (s2, v2) = (s.clone(), view.clone());
            let sections = tokio::task::spawn_blocking(move || views::sections(&s2, &v2))
                .await
                .ok()?;
            for (id, h) in sections {
                if last.get(id) != Some(&h) {
                    changed.insert(id.to_string(), serde_json::Value::String(h.clone()));
                    last.insert(id, h);
                }
            }
            if !changed.is_empty() || first {
                let data = serde_json::Value::Object(changed).to_string();
                let ev = Event::default().event("sections").data(data);
                return Some((Ok::<_, Infallible>(ev), (s, rx, stop, view, last, false)));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// `GET /events/log?instance=ID`: the log's last lines, then every new one.
async fn log_events(State(s): S, headers: HeaderMap, Query(q): Query<LogQuery>) -> Response {
    if let Err(r) = s.session(&headers) {
        return refused(r);
    }
    let Some(path) = q.instance.as_deref().and_then(|i| s.backend.log_file(i)) else {
        return json_error(StatusCode::NOT_FOUND, "not_found", "no such instance");
    };
    Sse::new(logs::follow(path, s.stop.clone()))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `POST /api/deploy/{action}` and `POST /api/rollback`: a session and its CSRF token in `x-csrf-token`.
async fn command(State(s): S, headers: HeaderMap, Path(action): Path<String>, body: Bytes) -> Response {
    let (id, _) = match s.session(&headers) {
        Ok(x) => x,
        Err(r) => return refused(r),
    };
    let given = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    if let Err(r) = lock(&s.sessions).check_write(&id, given, now_ms()) {
        return refused(r);
    }
    let Some(action) = Action::parse(&action) else {
        return json_error(StatusCode::NOT_FOUND, "not_found", "no such action");
    };
    let reason = (action == Action::Abort)
        .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .flatten()
        .and_then(|v| v["reason"].as_str().map(|r| r.chars().take(200).collect()))
        .or_else(|| (action == Action::Abort).then(|| "aborted from the dashboard".to_string()));
    match s.backend.command(action, reason).await {
        Ok(()) => axum::Json(serde_json::json!({ "ok": true, "action": action.as_str() })).into_response(),
        Err(m) => json_error(StatusCode::CONFLICT, "refused", &m),
    }
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// Every route of the dashboard.
pub(crate) fn router(s: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(service_page))
        .route("/login", get(get_login).post(post_login))
        .route("/login/once", get(login_once))
        .route("/logout", post(logout))
        .route("/deploy", get(deploy_current))
        .route("/deploy/{id}", get(deploy_page))
        .route("/history", get(history_page))
        .route("/logs", get(logs_page))
        .route("/data", get(data_page))
        .route("/events", get(events))
        .route("/events/log", get(log_events))
        .route("/api/login-link", post(login_link))
        .route("/api/deploy/{action}", post(command))
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not_found", "no such page") })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_percent_decoded_and_bad_escapes_kept() {
        assert_eq!(form_field(b"a=1&token=ab%2Fc+d", "token").as_deref(), Some("ab/c d"));
        assert_eq!(form_field(b"token=%zz%4", "token").as_deref(), Some("%zz%4"));
        assert_eq!(form_field(b"token", "token"), None);
        assert_eq!(form_field(&[0xff, b'='], "token"), None);
    }
}
