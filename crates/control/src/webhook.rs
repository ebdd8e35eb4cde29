//! `[deploy.webhook]`: deploy events POSTed as JSON, in order, from a bounded queue and one delivery task, with a
//! timeout and retries; nothing here ever waits in the control loop, and the secret is never logged.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::mpsc;
use wire::Problem;
use wire::service::Webhook;

/// Events waiting for delivery at most; more are dropped with a warning (a webhook that is down for long).
const QUEUE: usize = 256;

/// One event to deliver, with where and how.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub event: &'static str,
    pub url: String,
    /// The header and the secret (never logged).
    pub secret: Option<(String, String)>,
    pub timeout: Duration,
    pub attempts: u32,
    pub body: serde_json::Value,
}

/// The queue to the delivery task (started with the first event).
#[derive(Debug, Default)]
pub(crate) struct Webhooks {
    tx: OnceLock<mpsc::Sender<Delivery>>,
}

impl Webhooks {
    /// Queues an event; never waits.
    pub(crate) fn send(&self, d: Delivery) {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(deliver_all(rx));
            tx
        });
        if let Err(e) = tx.try_send(d) {
            tracing::warn!(url = %url_of(&e), "webhook: {QUEUE} events wait already; this one is dropped");
        }
    }
}

fn url_of(e: &mpsc::error::TrySendError<Delivery>) -> String {
    match e {
        mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d) => d.url.clone(),
    }
}

async fn deliver_all(mut rx: mpsc::Receiver<Delivery>) {
    while let Some(d) = rx.recv().await {
        if let Err(why) = deliver(&d).await {
            tracing::warn!(url = %d.url, event = d.event, "webhook: event dropped after {} tries: {why}", d.attempts);
        }
    }
}

/// POSTs one event until it gets a 2xx or its tries run out (1 s, 2 s, 4 s... apart).
async fn deliver(d: &Delivery) -> Result<(), String> {
    let (addr, target) = crate::httpc::split_url(&d.url)?;
    let mut headers = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        ("X-Slipway-Event".to_string(), d.event.to_string()),
    ];
    headers.extend(d.secret.clone());
    let body = serde_json::to_vec(&d.body).unwrap_or_default();
    let mut last = String::new();
    for attempt in 0..d.attempts.max(1) {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1).min(5))).await;
        }
        let sent = crate::httpc::request(&addr, "POST", &target, &headers, &body);
        last = match tokio::time::timeout(d.timeout, sent).await {
            Ok(Ok(a)) if (200..300).contains(&a.status) => return Ok(()),
            Ok(Ok(a)) => format!("answered {} {}", a.status, a.reason),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {}s", d.timeout.as_secs_f64()),
        };
    }
    Err(last)
}

/// What is wrong with `[deploy.webhook]`, `base` being slipway.toml's folder.
pub(crate) fn problems(w: &Webhook, base: &Path) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Err(e) = crate::httpc::split_url(&w.url) {
        out.push(Problem::new("deploy.webhook.url", e));
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if w.secret_header.is_empty() || !w.secret_header.chars().all(token) {
        out.push(Problem::new("deploy.webhook.secret_header", "is not a header name"));
    }
    if let Some(f) = &w.secret_file
        && let Err(e) = crate::envfile::read_secret(&base.join(f))
    {
        out.push(Problem::new("deploy.webhook.secret_file", e.to_string()));
    }
    if w.timeout.0.is_zero() {
        out.push(Problem::new("deploy.webhook.timeout", "must be more than 0"));
    }
    if w.attempts == 0 || w.attempts > 10 {
        out.push(Problem::new("deploy.webhook.attempts", "must be between 1 and 10"));
    }
    out
}

/// The delivery of one event to the configured webhook, its secret read now (the file may have been rotated).
pub(crate) fn delivery(w: &Webhook, base: &Path, event: &'static str, body: serde_json::Value) -> Delivery {
    let secret = w
        .secret_file
        .as_ref()
        .and_then(|f| match crate::envfile::read_secret(&base.join(f)) {
            Ok(s) => Some((w.secret_header.clone(), s)),
            Err(e) => {
                tracing::warn!("webhook: the secret is left out: {e}");
                None
            }
        });
    Delivery {
        event,
        url: w.url.clone(),
        secret,
        timeout: w.timeout.0,
        attempts: w.attempts,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn hook(url: &str) -> Webhook {
        Webhook {
            url: url.into(),
            secret_file: Some("hook.secret".into()),
            secret_header: "X-Slipway-Secret".into(),
            timeout: wire::HumanDuration::from_secs(5),
            attempts: 3,
        }
    }

    #[test]
    fn a_readable_secret_file_an_https_url_and_a_bad_header_are_refused_without_the_secret() {
        let dir = testkit::TempDir::new("webhook-cfg");
        let f = dir.join("hook.secret");
        std::fs::write(&f, "s3cr3t-value\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut w = hook("https://hooks.example.com/x");
        w.secret_header = "X Bad".into();
        let p: Vec<String> = problems(&w, dir.path()).iter().map(|p| p.to_string()).collect();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p.iter()
                .any(|p| p.contains("deploy.webhook.secret_file") && p.contains("chmod 600")),
            "{p:?}"
        );
        assert!(p.iter().all(|p| !p.contains("s3cr3t")), "{p:?}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ok = hook("http://127.0.0.1:9/x");
        assert!(problems(&ok, dir.path()).is_empty());
        let d = delivery(&ok, dir.path(), "step", serde_json::json!({}));
        assert_eq!(d.secret, Some(("X-Slipway-Secret".into(), "s3cr3t-value".into())));
    }

    #[tokio::test]
    async fn a_dead_webhook_is_tried_as_often_as_asked_then_given_up() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        let mut d = delivery(&hook(&url), Path::new("/nonexistent"), "step", serde_json::json!({}));
        d.timeout = Duration::from_millis(100);
        d.attempts = 2;
        let t = std::time::Instant::now();
        let e = deliver(&d).await.unwrap_err();
        assert!(e.contains("no answer within"), "{e}");
        assert!(t.elapsed() >= Duration::from_millis(1200) && t.elapsed() < Duration::from_secs(3));
    }
}
