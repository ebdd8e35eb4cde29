//! Every route of every admin API (router, agent, control plane, records service) refuses a request without the
//! token or with a wrong one. The routes are read from the sources that declare them, so a route added without
//! the token check fails here.

use std::time::Duration;

use http::{Method, StatusCode};
use plumbing::client::{ApiClient, ClientError};

use crate::harness::Fixture;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// `(method, path)` of every `.route("path", get(..).post(..))` in an axum source file, with path parameters filled.
fn routes_in(source: &str) -> Vec<(Method, String)> {
    let mut out = Vec::new();
    for line in source.lines() {
        let Some(start) = line.find(".route(\"") else { continue };
        let rest = &line[start + 8..];
        let Some(end) = rest.find('"') else { continue };
        let path = rest[..end].replace("{id}", "1");
        let path: String = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let handlers = &rest[end..];
        for m in METHODS {
            let found = handlers.match_indices(m).any(|(i, _)| {
                let before = handlers[..i].chars().last();
                let after = handlers[i + m.len()..].chars().next();
                before.is_none_or(|c| !c.is_alphanumeric() && c != '_') && after == Some('(')
            });
            if found {
                out.push((m.to_uppercase().parse().unwrap(), path.clone()));
            }
        }
    }
    out
}

fn source(rel: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Each route answers 401 without the token and with a wrong one.
async fn refuses(api: &str, addr: &str, routes: &[(Method, String)]) {
    for token in [None, Some("wrong-token".to_string())] {
        let client = ApiClient::new(addr, token.clone())
            .unwrap()
            .with_timeout(Duration::from_secs(5));
        for (method, path) in routes {
            let answer = client
                .call::<_, serde_json::Value>(method.clone(), path, Some(&serde_json::json!({})))
                .await;
            match answer {
                Err(ClientError::Api { status, .. }) if status == StatusCode::UNAUTHORIZED => {}
                other => panic!("{api} {method} {path} with token {token:?}: {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_every_api_refuses_a_missing_or_wrong_token() {
    let mut f = Fixture::new("");
    f.start().await;
    let router = routes_in(&source("router/src/admin.rs"));
    let agent = routes_in(&source("agent/src/api.rs"));
    let records = routes_in(&source("records/src/service.rs"));
    let control: Vec<(Method, String)> = control::ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_uppercase().parse().unwrap(), p.replace("{id}", "1")))
        .collect();
    // The lists are what the sources declare today (at least): a parser that finds nothing fails here.
    assert!(router.len() >= 8, "{router:?}");
    assert!(agent.len() >= 8, "{agent:?}");
    assert!(records.len() >= 10, "{records:?}");
    assert!(control.len() >= 10, "{control:?}");
    let r = control::router_running(&f.cfg).unwrap();
    refuses("router", &r.addr, &router).await;
    let a = control::agent_running(&f.cfg).unwrap();
    refuses("agent", &a.addr, &agent).await;
    refuses("control", &f.control.as_ref().unwrap().api_addr, &control).await;
    let store = records::Store::new(
        records::open(&format!("sqlite:{}", f.dir.join("records.db").display())).unwrap(),
        records::Schema::default(),
        "auth-test",
    );
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let listen = plumbing::api::Listen::Tcp("127.0.0.1:0".parse().unwrap());
    let (addr, _task) = records::serve(store, "the-token".into(), &listen, stop_rx)
        .await
        .unwrap();
    refuses("records", &addr, &records).await;
}
