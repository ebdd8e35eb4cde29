//! Random requests against a real records service: never a 5xx, and every 4xx has a reason and changes nothing.

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use crate::service::{Service, snapshot};

#[derive(Debug, Clone)]
struct Request {
    method: &'static str,
    path: String,
    /// `None`: no token; `Some(false)`: a wrong one.
    token: Option<bool>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn percent(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A path segment: known names most of the time, else anything (percent-encoded), long or with control bytes.
fn segment() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop_oneof![Just("player"), Just("ann"), Just("bob"), Just("p1")].prop_map(str::to_string),
        2 => "[a-z]{1,8}",
        2 => proptest::collection::vec(any::<u8>(), 1..12).prop_map(|b| percent(&b)),
        1 => (250usize..300).prop_map(|n| "k".repeat(n)),
        1 => prop_oneof![Just("%00"), Just("%FF"), Just("a%0Ab"), Just("%20a"), Just("%E2%80%AE")]
            .prop_map(str::to_string),
    ]
    .boxed()
}

fn kind() -> BoxedStrategy<String> {
    prop_oneof![8 => Just("player".to_string()), 2 => segment()].boxed()
}

fn key() -> BoxedStrategy<String> {
    prop_oneof![6 => prop_oneof![Just("ann"), Just("bob")].prop_map(str::to_string), 2 => segment()].boxed()
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        prop_oneof![Just("1"), Just("2"), Just("3")].prop_map(str::to_string),
        prop_oneof![
            Just("0"),
            Just("999"),
            Just("-1"),
            Just("abc"),
            Just("4294967296"),
            Just("")
        ]
        .prop_map(str::to_string),
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        3 => number().prop_map(|n| format!("?version={n}")),
        2 => number().prop_map(|n| format!("?reader={n}")),
        1 => Just("?version=1&version=2".to_string()),
        1 => Just("?x=1".to_string()),
    ]
}

/// JSON of every shape, with the field names the model's records use.
fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| json!(n)),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ];
    let names = prop_oneof![
        Just("name"),
        Just("gold"),
        Just("hp"),
        Just("xp"),
        Just("display_name"),
        Just("kind"),
        Just("to"),
        Just("rate"),
        Just("holder"),
        Just("ttl_ms"),
        Just("version"),
        Just("extra"),
    ];
    leaf.prop_recursive(3, 24, 5, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(names.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
    .boxed()
}

fn rate() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!(1e6)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(1e-300)),
        Just(json!(1e12))
    ]
}

fn record_body() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => (any::<i64>(), "[a-z]{0,8}").prop_map(|(g, n)| json!({"name": n, "gold": g, "hp": 1})),
        1 => (any::<i64>(), "[a-z]{0,8}").prop_map(|(x, n)| json!({"display_name": n, "gold": 1, "hp": 1, "xp": x})),
        2 => json_value(),
    ]
    .prop_map(|v| v.to_string().into_bytes())
    .boxed()
}

fn crawl_body() -> impl Strategy<Value = Vec<u8>> {
    (prop_oneof![4 => Just("player"), 1 => Just("guild")], 0u32..5, rate())
        .prop_map(|(k, to, rate)| json!({"kind": k, "to": to, "rate": rate}).to_string().into_bytes())
}

fn lease_body() -> impl Strategy<Value = Vec<u8>> {
    let ttl = prop_oneof![
        Just(json!(30_000)),
        Just(json!(30_000)),
        Just(json!(30_000)),
        Just(json!(0)),
        Just(json!(u64::MAX)),
        Just(json!(-5)),
        Just(json!(3_600_001))
    ];
    (
        prop_oneof![Just("s1".to_string()), Just("s2".to_string()), segment()],
        ttl,
    )
        .prop_map(|(h, ttl)| json!({"holder": h, "ttl_ms": ttl}).to_string().into_bytes())
}

fn gate_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(json!({"version": 2})),
        Just(json!({"version": 3})),
        Just(json!({"version": null})),
        Just(json!({"version": 9})),
        Just(json!({})),
    ]
    .prop_map(|v| v.to_string().into_bytes())
}

fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

/// A request for one of the service's endpoints (the method, path and body it takes), or anything at all.
fn endpoint() -> BoxedStrategy<(&'static str, String, Vec<u8>)> {
    let action = prop_oneof![Just("pause"), Just("resume"), Just("stop")];
    let record = || (kind(), key(), query()).prop_map(|(k, key, q)| format!("/v1/records/{k}/{key}{q}"));
    let lease = (kind(), key()).prop_map(|(k, key)| format!("/v1/leases/{k}/{key}"));
    let method = prop_oneof![Just("GET"), Just("PUT"), Just("POST"), Just("DELETE"), Just("PATCH")];
    prop_oneof![
        4 => record().prop_map(|p| ("GET", p, Vec::new())).boxed(),
        6 => (record(), record_body()).prop_map(|(p, b)| ("PUT", p, b)).boxed(),
        1 => Just(("GET", "/v1/kinds".to_string(), Vec::new())).boxed(),
        1 => Just(("GET", "/v1/crawls".to_string(), Vec::new())).boxed(),
        2 => crawl_body().prop_map(|b| ("POST", "/v1/crawls".to_string(), b)).boxed(),
        1 => (kind(), number(), action)
            .prop_map(|(k, to, a)| ("POST", format!("/v1/crawls/{k}/{to}/{a}"), Vec::new()))
            .boxed(),
        1 => Just(("GET", "/v1/gates".to_string(), Vec::new())).boxed(),
        1 => (kind(), gate_body()).prop_map(|(k, b)| ("PUT", format!("/v1/gates/{k}"), b)).boxed(),
        3 => (prop_oneof![3 => Just("POST"), 1 => Just("DELETE")], lease, lease_body()).boxed(),
        1 => (method, segment(), any_body()).prop_map(|(m, s, b)| (m, format!("/{s}"), b)).boxed(),
    ]
    .boxed()
}

fn request() -> BoxedStrategy<Request> {
    let method = prop_oneof![Just("GET"), Just("PUT"), Just("POST"), Just("DELETE"), Just("PATCH")];
    let token = prop_oneof![18 => Just(Some(true)), 1 => Just(Some(false)), 1 => Just(None)];
    let if_match = proptest::option::weighted(
        0.3,
        prop_oneof![Just("\"1\""), Just("\"2\""), Just("W/\"1\""), Just("abc"), Just("*")],
    );
    let if_none = prop_oneof![6 => Just(Some("*")), 1 => Just(Some("\"1\"")), 3 => Just(None)];
    // Now and then the wrong method or body for the endpoint.
    let other_method = proptest::option::weighted(0.1, method);
    let other_body = proptest::option::weighted(0.1, any_body());
    (endpoint(), other_method, other_body, token, if_match, if_none)
        .prop_map(|((method, path, body), other_method, other_body, token, m, n)| {
            let mut headers = vec![("content-type", "application/json".to_string())];
            headers.extend(m.map(|m| ("if-match", m.to_string())));
            headers.extend(n.map(|n| ("if-none-match", n.to_string())));
            Request {
                method: other_method.unwrap_or(method),
                path,
                token,
                headers,
                body: other_body.unwrap_or(body),
            }
        })
        .boxed()
}

/// Waits until no crawl is running, so that the next request's "nothing changed" is the request's own doing.
async fn settle(svc: &Service) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, crawls, _) = svc.call("GET", "/v1/crawls", &[], Value::Null).await;
        let running = crawls.as_array().into_iter().flatten().any(|c| c["status"] != "done");
        if !running {
            return;
        }
        assert!(Instant::now() < deadline, "a crawl did not end: {crawls}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn random_requests_never_get_a_5xx_and_every_4xx_has_a_reason_and_changes_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let svc = rt.block_on(Service::start());
    let mut runner = TestRunner::new(Config {
        cases: 500,
        failure_persistence: None,
        ..Config::default()
    });
    let token = format!("Bearer {}", svc.token);
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    runner
        .run(&request(), |req| {
            let mut headers: Vec<(&str, &str)> = req.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            match req.token {
                Some(true) => headers.push(("authorization", &token)),
                Some(false) => headers.push(("authorization", "Bearer wrong")),
                None => {}
            }
            let before = snapshot(&svc.url());
            let (status, answer, _) =
                rt.block_on(svc.exchange(req.method, &req.path, &headers, Bytes::from(req.body.clone())));
            *seen.lock().unwrap().entry(status).or_default() += 1;
            prop_assert!(status < 500, "{status} for {req:?}: {answer}");
            if (400..500).contains(&status) {
                let reason = answer["message"].as_str().unwrap_or_default();
                prop_assert!(
                    !reason.is_empty() && answer["error"].is_string(),
                    "{status} without a reason: {answer}"
                );
                let after = snapshot(&svc.url());
                let changed: Vec<_> = after.iter().filter(|r| !before.contains(r)).collect();
                let gone: Vec<_> = before.iter().filter(|r| !after.contains(r)).collect();
                prop_assert!(
                    changed.is_empty() && gone.is_empty(),
                    "{status} for {req:?} changed the database: new {changed:?}, gone {gone:?}"
                );
            }
            if status == 202 {
                rt.block_on(settle(&svc));
            }
            Ok(())
        })
        .unwrap();
    // The requests reached every part of the service: stored, started, refused in each way.
    let seen = seen.into_inner().unwrap();
    eprintln!("statuses: {seen:?}");
    for want in [200, 202, 400, 401, 404, 405, 409, 428] {
        assert!(seen.contains_key(&want), "no request got {want}: {seen:?}");
    }
    // Still serving after all of it.
    let (status, _, _) = rt.block_on(svc.call("GET", "/v1/kinds", &[], Value::Null));
    assert_eq!(status, 200);
}
