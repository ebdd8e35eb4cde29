//! The records HTTP service refuses each bad input up front: the status, the reason in the body, nothing stored.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use records::{AnyBackend, KindSchema, Schema, Store};
use serde_json::{Value, json};
use testkit::TempDir;

use crate::model::STEPS;

/// A records service on port 0 over a fresh SQLite file, with the model's steps file as its schema.
pub struct Service {
    pub addr: SocketAddr,
    pub token: String,
    pub dir: TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// A response: status, JSON body (null if none), etag header.
pub type Answer = (u16, Value, Option<String>);

impl Service {
    pub async fn start() -> Service {
        Service::with_schema(records::parse_steps(STEPS, "model").unwrap()).await
    }

    pub async fn with_schema(schema: Schema) -> Service {
        let dir = TempDir::new("records-service");
        let store = Store::new(records::open(&Service::url_in(&dir)).unwrap(), schema, "service");
        let token = "test-token".to_string();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let listen = plumbing::api::Listen::Tcp("127.0.0.1:0".parse().unwrap());
        let (addr, _task) = records::serve(store, token.clone(), &listen, stop_rx).await.unwrap();
        Service {
            addr: addr.parse().unwrap(),
            token,
            dir,
            _stop: stop,
        }
    }

    fn url_in(dir: &TempDir) -> String {
        format!("sqlite:{}", dir.join("records.db").display())
    }

    pub fn url(&self) -> String {
        Service::url_in(&self.dir)
    }

    /// Sends one request on a fresh connection with the token; `body` is sent as given.
    pub async fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Bytes) -> Answer {
        let auth = format!("Bearer {}", self.token);
        let mut hs = vec![("authorization", auth.as_str()), ("content-type", "application/json")];
        hs.extend_from_slice(headers);
        self.exchange(method, path, &hs, body).await
    }

    /// Sends one request with exactly `headers` (no token added) on a fresh connection.
    pub async fn exchange(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Bytes) -> Answer {
        let mut c = testkit::Client::connect(self.addr).await.unwrap();
        let r = c
            .send(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: no answer ({e}): did the service die?"));
        let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status.as_u16(), v, r.header("etag").map(str::to_string))
    }

    pub async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Value) -> Answer {
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        self.raw(method, path, headers, body).await
    }

    /// Creates `player/{key}` at version 1.
    pub async fn create_v1(&self, key: &str) -> String {
        let (status, body, etag) = self
            .call(
                "PUT",
                &format!("/v1/records/player/{key}?version=1"),
                &[("if-none-match", "*")],
                json!({"name": "ann", "gold": 5, "hp": 40}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        etag.unwrap()
    }
}

/// Everything the database holds, to show a refused request changed nothing.
pub fn snapshot(url: &str) -> Vec<String> {
    let path = url.strip_prefix("sqlite:").unwrap();
    let c = rusqlite::Connection::open(path).unwrap();
    let mut out = Vec::new();
    for (table, order) in [
        ("records", "id"),
        ("record_leases", "kind, key"),
        ("record_gates", "kind"),
        ("record_crawls", "kind, target"),
    ] {
        let mut st = c.prepare(&format!("SELECT * FROM {table} ORDER BY {order}")).unwrap();
        let n = st.column_count();
        let rows = st
            .query_map([], |r| {
                let cols: Vec<String> = (0..n)
                    .map(|i| match r.get_ref(i) {
                        Ok(rusqlite::types::ValueRef::Text(t)) => String::from_utf8_lossy(t).into_owned(),
                        Ok(v) => format!("{:?}", v.to_owned()),
                        Err(e) => e.to_string(),
                    })
                    .collect();
                Ok(format!("{table}: {}", cols.join(", ")))
            })
            .unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out
}

/// Asserts a request is refused with `status`, a reason containing `reason`, and no change to the database.
async fn refused_with(
    svc: &Service,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    status: u16,
    reason: &str,
) {
    let before = snapshot(&svc.url());
    let (got, answer, _) = svc.raw(method, path, headers, body).await;
    assert_eq!(got, status, "{method} {path}: {answer}");
    let message = answer["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(reason),
        "{method} {path}: the reason should say {reason:?}: {answer}"
    );
    assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{answer}");
    assert_eq!(snapshot(&svc.url()), before, "{method} {path} changed the database");
}

/// Asserts that a request without extra headers is refused (see [`refused_with`]).
async fn refused(svc: &Service, method: &str, path: &str, body: Bytes, status: u16, reason: &str) {
    refused_with(svc, method, path, &[], body, status, reason).await;
}

/// Asserts that creating a record at `path` with `body` is refused (see [`refused_with`]).
async fn refused_create(svc: &Service, path: &str, body: Bytes, status: u16, reason: &str) {
    refused_with(svc, "PUT", path, &[("if-none-match", "*")], body, status, reason).await;
}

fn json_body(v: Value) -> Bytes {
    Bytes::from(v.to_string())
}

fn v1() -> Value {
    json!({"name": "ann", "gold": 5, "hp": 40})
}

#[tokio::test]
async fn an_update_at_a_version_the_code_does_not_know_is_refused_and_the_record_stays_readable() {
    let svc = Service::start().await;
    let etag = svc.create_v1("ann").await;
    let path = "/v1/records/player/ann?version=999";
    refused_with(
        &svc,
        "PUT",
        path,
        &[("if-match", &etag)],
        json_body(v1()),
        400,
        "player has no version 999",
    )
    .await;
    // Every read still works, and the record decodes for every known reader (what `records verify` checks).
    for reader in 1..=3 {
        let (status, body, _) = svc
            .call(
                "GET",
                &format!("/v1/records/player/ann?reader={reader}"),
                &[],
                Value::Null,
            )
            .await;
        assert_eq!(status, 200, "reader {reader}: {body}");
    }
    let store = Store::new(
        records::open(&svc.url()).unwrap(),
        records::parse_steps(STEPS, "m").unwrap(),
        "verify",
    );
    let kind = store.schema().kind("player").unwrap();
    for s in records::Backend::page(store.backend(), "player", 0, 100).unwrap() {
        let v = store.view(&s, kind.head()).unwrap();
        assert!(kind.check_fields(v.version, &v.value).is_empty(), "{:?}", v.value);
    }
}

#[tokio::test]
async fn a_create_at_a_version_the_code_does_not_know_is_refused() {
    let svc = Service::start().await;
    let path = "/v1/records/player/bob?version=999";
    refused_create(&svc, path, json_body(v1()), 400, "player has no version 999").await;
    let path = "/v1/records/player/bob?version=0";
    refused_create(&svc, path, json_body(v1()), 400, "player has no version 0").await;
}

#[tokio::test]
async fn a_read_as_a_version_the_code_does_not_know_is_refused() {
    let svc = Service::start().await;
    svc.create_v1("ann").await;
    refused(
        &svc,
        "GET",
        "/v1/records/player/ann?reader=999",
        Bytes::new(),
        400,
        "no version 999",
    )
    .await;
    refused(
        &svc,
        "GET",
        "/v1/records/player/ann?reader=abc",
        Bytes::new(),
        400,
        "bad query",
    )
    .await;
}

#[tokio::test]
async fn a_field_of_the_wrong_type_is_refused() {
    let svc = Service::start().await;
    let body = json_body(json!({"name": "ann", "gold": "lots", "hp": 40}));
    let path = "/v1/records/player/ann?version=1";
    refused_create(&svc, path, body, 400, "field 'gold' should be an int but is a string").await;
    // The same for an update of a record that exists.
    let etag = svc.create_v1("bob").await;
    let body = json_body(json!({"name": 7, "gold": 1, "hp": 40}));
    let path = "/v1/records/player/bob?version=1";
    refused_with(
        &svc,
        "PUT",
        path,
        &[("if-match", &etag)],
        body,
        400,
        "field 'name' should be a string but is an int",
    )
    .await;
}

#[tokio::test]
async fn a_top_level_array_is_refused() {
    let svc = Service::start().await;
    let path = "/v1/records/player/ann?version=1";
    refused_with(
        &svc,
        "PUT",
        path,
        &[("if-none-match", "*")],
        json_body(json!([v1()])),
        400,
        "a record is a JSON object, not an array",
    )
    .await;
    // Also at a version that declares no fields: a record is always an object.
    let path = "/v1/records/player/ann?version=2";
    refused_create(
        &svc,
        path,
        json_body(json!(3)),
        400,
        "a record is a JSON object, not an int",
    )
    .await;
}

#[tokio::test]
async fn a_missing_declared_field_is_refused() {
    let svc = Service::start().await;
    let path = "/v1/records/player/ann?version=3";
    let body = json_body(json!({"display_name": "ann", "gold": 1, "hp": 2}));
    refused_create(&svc, path, body, 400, "field 'xp' is missing").await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_refused() {
    let svc = Service::start().await;
    let path = "/v1/records/player/ann?version=1";
    refused_create(
        &svc,
        path,
        Bytes::from_static(b"{\"name\": "),
        400,
        "not a valid record",
    )
    .await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused() {
    let svc = Service::start().await;
    let big = format!(
        "{{\"name\": \"{}\", \"gold\": 1, \"hp\": 1}}",
        "x".repeat(records::MAX_BODY_BYTES)
    );
    let path = "/v1/records/player/ann?version=1";
    refused_create(&svc, path, Bytes::from(big), 413, "at most 1048576 bytes").await;
}

#[tokio::test]
async fn both_preconditions_at_once_are_refused() {
    let svc = Service::start().await;
    let etag = svc.create_v1("ann").await;
    let headers = [("if-match", etag.as_str()), ("if-none-match", "*")];
    refused_with(
        &svc,
        "PUT",
        "/v1/records/player/ann?version=1",
        &headers,
        json_body(v1()),
        400,
        "not both",
    )
    .await;
    let headers = [("if-none-match", "\"1\"")];
    refused_with(
        &svc,
        "PUT",
        "/v1/records/player/ann?version=1",
        &headers,
        json_body(v1()),
        400,
        "must be *",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_query_parameter_is_refused_rather_than_ignored() {
    let svc = Service::start().await;
    let path = "/v1/records/player/ann?verison=1";
    refused_create(&svc, path, json_body(v1()), 400, "unknown field `verison`").await;
}

#[tokio::test]
async fn a_lease_longer_than_the_maximum_is_refused_and_does_not_hand_the_record_to_the_next_holder() {
    let svc = Service::start().await;
    svc.create_v1("ann").await;
    let huge = json_body(json!({"holder": "s1", "ttl_ms": u64::MAX}));
    refused(
        &svc,
        "POST",
        "/v1/leases/player/ann",
        huge,
        400,
        "outside 1 ms to 3600000 ms",
    )
    .await;
    let (status, body, _) = svc
        .call(
            "POST",
            "/v1/leases/player/ann",
            &[],
            json!({"holder": "s1", "ttl_ms": 60_000}),
        )
        .await;
    assert_eq!((status, body["held"].as_bool()), (200, Some(true)), "{body}");
    // A lease just over the maximum is refused too; it neither overflows nor frees the record.
    let over = json_body(json!({"holder": "s1", "ttl_ms": records::MAX_LEASE.as_millis() as u64 + 1}));
    refused(&svc, "POST", "/v1/leases/player/ann", over, 400, "outside 1 ms").await;
    let (status, body, _) = svc
        .call("POST", "/v1/leases/player/ann", &[], json!({"holder": "s2"}))
        .await;
    assert_eq!(status, 409, "s1 still holds it: {body}");
}

#[tokio::test]
async fn a_lease_of_no_time_is_refused() {
    let svc = Service::start().await;
    let body = json_body(json!({"holder": "s1", "ttl_ms": 0}));
    refused(&svc, "POST", "/v1/leases/player/ann", body, 400, "outside 1 ms").await;
}

#[tokio::test]
async fn a_lease_with_a_control_character_in_its_holder_is_refused() {
    let svc = Service::start().await;
    let body = json_body(json!({"holder": "s1\u{0}"}));
    refused(&svc, "POST", "/v1/leases/player/ann", body, 400, "bad lease holder").await;
    let body = json_body(json!({"holder": "s1", "until": 5}));
    refused(
        &svc,
        "POST",
        "/v1/leases/player/ann",
        body,
        400,
        "unknown field `until`",
    )
    .await;
}

#[tokio::test]
async fn a_crawl_of_an_unknown_kind_is_refused_and_nothing_starts() {
    let svc = Service::start().await;
    let body = json_body(json!({"kind": "guild", "to": 2}));
    refused(&svc, "POST", "/v1/crawls", body, 404, "unknown record kind 'guild'").await;
    let (_, crawls, _) = svc.call("GET", "/v1/crawls", &[], Value::Null).await;
    assert_eq!(crawls, json!([]));
}

#[tokio::test]
async fn a_crawl_to_a_version_the_code_does_not_know_is_refused() {
    let svc = Service::start().await;
    let body = json_body(json!({"kind": "player", "to": 9}));
    refused(&svc, "POST", "/v1/crawls", body, 400, "player has no version 9").await;
}

#[tokio::test]
async fn a_crawl_with_a_negative_rate_is_refused() {
    let svc = Service::start().await;
    let body = json_body(json!({"kind": "player", "to": 2, "rate": -5.0}));
    refused(
        &svc,
        "POST",
        "/v1/crawls",
        body,
        400,
        "-5 records per second is outside",
    )
    .await;
}

#[tokio::test]
async fn a_crawl_with_a_zero_rate_is_refused() {
    let svc = Service::start().await;
    let body = json_body(json!({"kind": "player", "to": 2, "rate": 0}));
    refused(&svc, "POST", "/v1/crawls", body, 400, "0 records per second is outside").await;
}

#[tokio::test]
async fn a_crawl_with_a_rate_that_is_not_a_number_is_refused() {
    let svc = Service::start().await;
    let body = Bytes::from_static(b"{\"kind\": \"player\", \"to\": 2, \"rate\": NaN}");
    refused(&svc, "POST", "/v1/crawls", body, 400, "not a valid crawl request").await;
    let body = json_body(json!({"kind": "player", "to": 2, "rate": 1e-300}));
    refused(&svc, "POST", "/v1/crawls", body, 400, "records per second is outside").await;
}

#[tokio::test]
async fn a_crawl_above_the_write_gate_is_refused() {
    let svc = Service::start().await;
    let (status, body, _) = svc.call("PUT", "/v1/gates/player", &[], json!({"version": 1})).await;
    assert_eq!(status, 200, "{body}");
    let body = json_body(json!({"kind": "player", "to": 3}));
    refused(&svc, "POST", "/v1/crawls", body, 422, "the write gate is 1").await;
}

#[tokio::test]
async fn a_key_of_60_kb_is_refused() {
    let svc = Service::start().await;
    let path = format!("/v1/records/player/{}?version=1", "k".repeat(60 * 1024));
    refused_create(&svc, &path, json_body(v1()), 400, "61440 bytes long; at most 256").await;
    let path = format!("/v1/records/player/{}", "k".repeat(60 * 1024));
    refused(&svc, "GET", &path, Bytes::new(), 400, "at most 256").await;
}

#[tokio::test]
async fn a_key_with_a_nul_byte_is_refused() {
    let svc = Service::start().await;
    let path = "/v1/records/player/a%00b?version=1";
    refused_create(&svc, path, json_body(v1()), 400, "control character U+0000 at byte 1").await;
}

#[tokio::test]
async fn a_key_with_another_control_character_is_refused() {
    let svc = Service::start().await;
    for key in ["a%0Ab", "a%1Bb", "a%7F", "a%C2%85", "a%E2%80%AEb"] {
        let path = format!("/v1/records/player/{key}?version=1");
        refused_create(&svc, &path, json_body(v1()), 400, "control character").await;
        let path = format!("/v1/leases/player/{key}");
        refused(
            &svc,
            "POST",
            &path,
            json_body(json!({"holder": "s1"})),
            400,
            "bad record key",
        )
        .await;
    }
    let path = "/v1/records/player/%20ann?version=1";
    refused_create(&svc, path, json_body(v1()), 400, "white space").await;
}

#[tokio::test]
async fn a_kind_of_60_kb_or_with_control_characters_is_refused() {
    let svc = Service::start().await;
    let long = "k".repeat(60 * 1024);
    for kind in [long.as_str(), "pla%00yer", "play%20er"] {
        let path = format!("/v1/records/{kind}/ann?version=1");
        refused_create(&svc, &path, json_body(v1()), 400, "bad record kind").await;
        let path = format!("/v1/gates/{kind}");
        refused(
            &svc,
            "PUT",
            &path,
            json_body(json!({"version": 1})),
            400,
            "bad record kind",
        )
        .await;
    }
}

#[tokio::test]
async fn a_path_that_is_not_utf8_is_refused() {
    let svc = Service::start().await;
    refused(&svc, "GET", "/v1/records/player/%FF", Bytes::new(), 400, "bad path").await;
    refused(
        &svc,
        "POST",
        "/v1/crawls/player/two/pause",
        Bytes::new(),
        400,
        "bad path",
    )
    .await;
}

#[tokio::test]
async fn a_gate_above_what_the_schema_knows_or_without_a_version_is_refused() {
    let svc = Service::start().await;
    let body = json_body(json!({"version": 7}));
    refused(
        &svc,
        "PUT",
        "/v1/gates/player",
        body,
        400,
        "newer than the newest version 3",
    )
    .await;
    refused(
        &svc,
        "PUT",
        "/v1/gates/player",
        json_body(json!({})),
        400,
        "needs \"version\"",
    )
    .await;
    refused(
        &svc,
        "PUT",
        "/v1/gates/guild",
        json_body(json!({"version": 1})),
        404,
        "unknown record kind",
    )
    .await;
}

#[tokio::test]
async fn a_pause_of_a_crawl_that_does_not_exist_is_a_404() {
    let svc = Service::start().await;
    refused(
        &svc,
        "POST",
        "/v1/crawls/player/2/pause",
        Bytes::new(),
        404,
        "no crawl of player to version 2",
    )
    .await;
    refused(
        &svc,
        "POST",
        "/v1/crawls/player/2/stop",
        Bytes::new(),
        404,
        "pause or resume",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_endpoint_or_method_gets_a_json_reason() {
    let svc = Service::start().await;
    refused(&svc, "GET", "/v1/nope", Bytes::new(), 404, "no such endpoint").await;
    refused(
        &svc,
        "DELETE",
        "/v1/kinds",
        Bytes::new(),
        405,
        "does not take that method",
    )
    .await;
    refused(
        &svc,
        "GET",
        "/v1/records/player/",
        Bytes::new(),
        404,
        "no such endpoint",
    )
    .await;
}

/// A schema whose upgrader panics on a marked record: the app's bug, which this process must survive.
fn panicking_schema() -> Schema {
    Schema::new()
        .with(KindSchema::new("player", 1).up(1, |v| {
            assert!(v.get("boom").is_none(), "an upgrader bug");
            Ok(())
        }))
        .unwrap()
}

#[tokio::test]
async fn a_worker_that_panics_is_a_500_with_its_reason_and_the_service_goes_on() {
    let svc = Service::with_schema(panicking_schema()).await;
    let (status, body, _) = svc
        .call(
            "PUT",
            "/v1/records/player/bad?version=1",
            &[("if-none-match", "*")],
            json!({"boom": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = svc.call("GET", "/v1/records/player/bad", &[], Value::Null).await;
    assert_eq!((status, body["error"].as_str()), (500, Some("worker_failed")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("worker failed"), "{body}");
    let (status, body, _) = svc
        .call("GET", "/v1/records/player/bad?reader=1", &[], Value::Null)
        .await;
    assert_eq!(status, 200, "the service still answers: {body}");
}

#[tokio::test]
async fn a_crawl_whose_worker_panics_ends_and_a_new_crawl_can_start() {
    let svc = Service::with_schema(panicking_schema()).await;
    let (status, body, _) = svc
        .call(
            "PUT",
            "/v1/records/player/bad?version=1",
            &[("if-none-match", "*")],
            json!({"boom": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let start = || svc.call("POST", "/v1/crawls", &[], json!({"kind": "player", "to": 2}));
    let (status, body, _) = start().await;
    assert_eq!(status, 202, "{body}");
    // The failed crawl leaves the service's running set: a new one is accepted, not 409 for ever.
    testkit::wait_for("the failed crawl to end", Duration::from_secs(30), || async {
        let (status, _, _) = start().await;
        (status == 202).then_some(())
    })
    .await;
    let store: Store<AnyBackend> = Store::new(records::open(&svc.url()).unwrap(), panicking_schema(), "check");
    let crawl = records::Backend::crawl(store.backend(), "player", 2).unwrap().unwrap();
    assert_eq!(crawl.upgraded, 0, "{crawl:?}");
}
