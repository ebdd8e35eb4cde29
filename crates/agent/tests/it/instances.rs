//! Instances: start, stop and their deadlines, crashes and crash loops, drain hooks, LISTEN_FDS, logs, re-adoption.

use std::time::{Duration, Instant};

use wire::agent::{InstanceState, StopRequest};

use crate::harness::{Harness, alive, kill_group};

fn addr(i: &wire::agent::InstanceInfo) -> std::net::SocketAddr {
    i.addr.parse().unwrap()
}

#[tokio::test]
async fn instances_start_become_ready_serve_and_stop() {
    let h = Harness::start("").await;
    h.add_release("v1", "");
    let started = h.start_instances("v1", 2).await;
    assert_eq!(started.len(), 2);
    assert_ne!(started[0].port, started[1].port);
    for i in &started {
        let ready = h.wait_state(&i.id, InstanceState::Ready, Duration::from_secs(10)).await;
        assert!(ready.pid.is_some());
        let r = testkit::get(addr(&ready), "/", &[]).await.unwrap();
        assert_eq!(r.text(), "v1");
        assert_eq!(
            r.header("x-instance"),
            Some(i.id.as_str()),
            "SLIPWAY_INSTANCE reaches the app"
        );
    }
    let pids: Vec<u32> = h.list().await.iter().filter_map(|i| i.pid).collect();
    h.stop(StopRequest {
        release: Some("v1".into()),
        ..Default::default()
    })
    .await;
    for i in &started {
        let stopped = h
            .wait_state(&i.id, InstanceState::Stopped, Duration::from_secs(10))
            .await;
        assert_eq!(stopped.pid, None);
    }
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived its stop");
    }
}

#[tokio::test]
async fn a_process_ignoring_sigterm_and_its_children_are_killed_at_the_deadline() {
    let h = Harness::start("").await;
    let pidfile = h.dir.join("child.pid");
    h.add_release(
        "stubborn",
        &format!(
            "[start.env]\nDEMO_IGNORE_SIGTERM = \"1\"\nDEMO_SPAWN_CHILD = \"{}\"\n",
            pidfile.display()
        ),
    );
    let i = &h.start_instances("stubborn", 1).await[0];
    let ready = h.wait_state(&i.id, InstanceState::Ready, Duration::from_secs(10)).await;
    let pid = ready.pid.unwrap();
    let child: u32 = testkit::wait_for("child pid file", Duration::from_secs(5), || async {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    })
    .await;
    assert!(alive(child));
    let t0 = Instant::now();
    h.stop(StopRequest {
        ids: vec![i.id.clone()],
        deadline: Some(wire::HumanDuration::from_millis(800)),
        ..Default::default()
    })
    .await;
    // It ignores SIGTERM, so it keeps serving until the deadline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.instance(&i.id).await.state, InstanceState::Draining);
    assert!(testkit::get(addr(&ready), "/", &[]).await.is_ok());
    let stopped = h
        .wait_state(&i.id, InstanceState::Stopped, Duration::from_secs(10))
        .await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(750),
        "killed before the deadline: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(stopped.note.as_deref(), Some("killed after the stop deadline"));
    testkit::wait_for("no process left", Duration::from_secs(5), || async {
        (!alive(pid) && !alive(child)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_crashing_instance_is_restarted_with_backoff_until_a_crash_loop() {
    let h = Harness::start("").await;
    h.add_release("bad", "[start.env]\nDEMO_FAIL_START = \"1\"\n");
    let i = &h.start_instances("bad", 1).await[0];
    let looped = h
        .wait_state(&i.id, InstanceState::CrashLoop, Duration::from_secs(10))
        .await;
    assert_eq!(looped.restarts, 2, "3 crashes: the first start and 2 restarts");
    assert!(
        looped.note.as_deref().unwrap_or("").contains("crash loop"),
        "{looped:?}"
    );
    assert!(
        looped
            .last_output
            .iter()
            .any(|l| l.contains("failing to start as asked")),
        "last output: {:?}",
        looped.last_output
    );
    // It stays down: no restarts after a crash loop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.instance(&i.id).await.restarts, 2);
}

#[tokio::test]
async fn an_instance_killed_after_it_was_ready_comes_back() {
    let h = Harness::start("").await;
    h.add_release("v1", "");
    let i = &h.start_instances("v1", 1).await[0];
    let first = h.wait_state(&i.id, InstanceState::Ready, Duration::from_secs(10)).await;
    let old_pid = first.pid.unwrap();
    kill_group(Some(old_pid));
    let again = testkit::wait_for("restarted and ready", Duration::from_secs(10), || async {
        let now = h.instance(&i.id).await;
        (now.state == InstanceState::Ready && now.pid != Some(old_pid)).then_some(now)
    })
    .await;
    assert_eq!(again.restarts, 1);
    assert_eq!(again.port, first.port, "a restart keeps the port");
    assert_eq!(testkit::get(addr(&again), "/", &[]).await.unwrap().text(), "v1");
    kill_group(again.pid);
}

#[tokio::test]
async fn an_instance_not_ready_by_its_deadline_is_a_failed_start() {
    let h = Harness::start_with(|c| c.instance.readiness.start_deadline = wire::HumanDuration::from_millis(600)).await;
    h.add_release("slow", "[start.env]\nDEMO_START_DELAY = \"30s\"\n");
    let i = &h.start_instances("slow", 1).await[0];
    let failed = h
        .wait_state(&i.id, InstanceState::Failed, Duration::from_secs(10))
        .await;
    assert!(
        failed.note.as_deref().unwrap_or("").contains("not ready within"),
        "{failed:?}"
    );
    testkit::wait_for("slow process killed", Duration::from_secs(5), || async {
        (!failed.pid.is_some_and(alive)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn draining_calls_the_drain_hook_before_the_stop_signal() {
    let h = Harness::start_with(|c| c.instance.drain.path = Some("/drain".into())).await;
    h.add_release("game", "[start.env]\nDEMO_SHUTDOWN_DELAY = \"2s\"\n");
    let i = &h.start_instances("game", 1).await[0];
    let ready = h.wait_state(&i.id, InstanceState::Ready, Duration::from_secs(10)).await;
    // A player connected before the drain stays connected through it.
    let mut player = testkit::Client::connect(addr(&ready)).await.unwrap();
    assert_eq!(player.get("/", &[]).await.unwrap().header("x-draining"), None);
    h.stop(StopRequest {
        ids: vec![i.id.clone()],
        ..Default::default()
    })
    .await;
    h.wait_state(&i.id, InstanceState::Draining, Duration::from_secs(5))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let during = loop {
        let r = player
            .get("/", &[])
            .await
            .expect("the player's connection survives the drain");
        if r.header("x-draining") == Some("1") {
            break r;
        }
        assert!(Instant::now() < deadline, "drain hook never reached the app");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(during.text(), "game");
    h.wait_state(&i.id, InstanceState::Stopped, Duration::from_secs(10))
        .await;
    let log = std::fs::read_to_string(agent::log_path(&h.root(), &i.id)).unwrap();
    assert!(log.contains("SIGTERM, shutting down"), "{log}");
}

#[tokio::test]
async fn instances_can_get_their_listening_socket_as_fd_3() {
    let h = Harness::start_with(|c| c.instance.listen_fds = true).await;
    h.add_release("v1", "");
    let i = &h.start_instances("v1", 1).await[0];
    let ready = h.wait_state(&i.id, InstanceState::Ready, Duration::from_secs(10)).await;
    assert_eq!(testkit::get(addr(&ready), "/", &[]).await.unwrap().text(), "v1");
    // The app did not bind a port of its own: it serves on the one the agent bound.
    let log = std::fs::read_to_string(agent::log_path(&h.root(), &i.id)).unwrap();
    assert!(log.contains(&format!("listening on {}", ready.addr)), "{log}");
    // A restart hands it a socket on the same port again.
    kill_group(ready.pid);
    let again = testkit::wait_for("restarted", Duration::from_secs(10), || async {
        let now = h.instance(&i.id).await;
        (now.state == InstanceState::Ready && now.pid != ready.pid).then_some(now)
    })
    .await;
    assert_eq!(testkit::get(addr(&again), "/", &[]).await.unwrap().text(), "v1");
    kill_group(again.pid);
}

#[tokio::test]
async fn instance_output_goes_to_size_rotated_files() {
    let h = Harness::start_with(|c| {
        c.logs.max_bytes = 4096;
        c.logs.keep = 2;
    })
    .await;
    h.add_release("chatty", "[start.env]\nDEMO_LOG_RATE = \"2000\"\n");
    let i = &h.start_instances("chatty", 1).await[0];
    let ready = h.wait_state(&i.id, InstanceState::Ready, Duration::from_secs(10)).await;
    let dir = agent::log_dir(&h.root(), &i.id);
    testkit::wait_for("two rotations", Duration::from_secs(10), || async {
        dir.join("output.log.2").exists().then_some(())
    })
    .await;
    assert!(!dir.join("output.log.3").exists(), "keeps 2 rotated files");
    let tail = agent::log_tail(&dir, 5);
    assert_eq!(tail.len(), 5);
    assert!(tail.iter().all(|l| l.contains("log line")), "{tail:?}");
    kill_group(ready.pid);
}

#[tokio::test]
async fn an_agent_killed_between_spawning_an_instance_and_saving_its_pid_started_it_twice() {
    let mut h = Harness::start("").await;
    h.add_release("v1", "");
    let started = h.start_instances("v1", 2).await;
    let mut ready = Vec::new();
    for i in &started {
        ready.push(h.wait_state(&i.id, InstanceState::Ready, Duration::from_secs(10)).await);
    }
    h.shutdown().await;
    // As an agent killed at that moment leaves it: instance 0 saved without its pid, instance 1 not saved at all.
    let state = h.root().join("agent/instances.json");
    let mut saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let list = saved["instances"].as_array_mut().unwrap();
    list.retain(|i| i["info"]["id"] != ready[1].id.as_str());
    list[0]["info"]["pid"] = serde_json::Value::Null;
    list[0]["info"]["state"] = serde_json::json!("starting");
    list[0]["start_time"] = serde_json::Value::Null;
    std::fs::write(&state, serde_json::to_vec(&saved).unwrap()).unwrap();

    let dir = std::mem::replace(&mut h.dir, testkit::TempDir::new("unused"));
    let h2 = Harness::start_in(dir, "").await;
    let now = h2
        .wait_state(&ready[0].id, InstanceState::Ready, Duration::from_secs(10))
        .await;
    assert_eq!(
        (now.pid, now.restarts),
        (ready[0].pid, 0),
        "its running process adopted, not a second one"
    );
    assert_eq!(testkit::get(addr(&now), "/", &[]).await.unwrap().text(), "v1");
    testkit::wait_for(
        "the unknown instance process stopped",
        Duration::from_secs(5),
        || async { (!alive(ready[1].pid.unwrap())).then_some(()) },
    )
    .await;
    assert_eq!(h2.list().await.len(), 1);
    kill_group(now.pid);
}

#[tokio::test]
async fn a_restarted_agent_re_adopts_running_instances_and_never_a_reused_pid() {
    let mut h = Harness::start("").await;
    h.add_release("v1", "");
    let started = h.start_instances("v1", 3).await;
    let mut ready = Vec::new();
    for i in &started {
        ready.push(h.wait_state(&i.id, InstanceState::Ready, Duration::from_secs(10)).await);
    }
    h.shutdown().await;
    // The instances do not depend on the agent.
    for r in &ready {
        assert_eq!(testkit::get(addr(r), "/", &[]).await.unwrap().text(), "v1");
    }
    // Instance 2's process dies while the agent is away, and an unrelated
    // process gets "its" pid in the saved table (pid reuse).
    kill_group(ready[2].pid);
    testkit::wait_for("instance 2 gone", Duration::from_secs(5), || async {
        (!alive(ready[2].pid.unwrap())).then_some(())
    })
    .await;
    let mut decoy = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    let state = h.root().join("agent/instances.json");
    let mut saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    for inst in saved["instances"].as_array_mut().unwrap() {
        if inst["info"]["id"] == ready[2].id.as_str() {
            inst["info"]["pid"] = serde_json::json!(decoy.id());
        }
    }
    std::fs::write(&state, serde_json::to_vec(&saved).unwrap()).unwrap();

    let dir = std::mem::replace(&mut h.dir, testkit::TempDir::new("unused"));
    let h2 = Harness::start_in(dir, "").await;
    for r in &ready[..2] {
        let now = h2.instance(&r.id).await;
        assert_eq!(
            (now.state, now.pid, now.restarts),
            (InstanceState::Ready, r.pid, 0),
            "{now:?}"
        );
    }
    let replaced = testkit::wait_for("instance 2 restarted", Duration::from_secs(10), || async {
        let now = h2.instance(&ready[2].id).await;
        (now.state == InstanceState::Ready).then_some(now)
    })
    .await;
    assert_ne!(replaced.pid, Some(decoy.id()), "the decoy was adopted");
    assert_ne!(replaced.pid, ready[2].pid);
    assert_eq!(replaced.restarts, 1);
    assert!(alive(decoy.id()), "the agent touched an unrelated process");
    assert_eq!(h2.list().await.len(), 3, "no instance started twice");
    // Adopted instances can still be stopped through the new agent.
    h2.stop(StopRequest {
        release: Some("v1".into()),
        ..Default::default()
    })
    .await;
    for r in &ready {
        h2.wait_state(&r.id, InstanceState::Stopped, Duration::from_secs(10))
            .await;
    }
    for r in &ready[..2] {
        assert!(!alive(r.pid.unwrap()));
    }
    let _ = decoy.kill();
    let _ = decoy.wait();
}

#[tokio::test]
async fn notify_drain_warns_open_websockets_at_drain_start_and_the_stop_does_not_repeat_it() {
    let h = Harness::start_with(|c| c.instance.drain.path = Some("/drain".into())).await;
    h.add_release("game", "");
    let i = &h.start_instances("game", 1).await[0];
    let ready = h.wait_state(&i.id, InstanceState::Ready, Duration::from_secs(10)).await;
    let mut player = demo_app::ws_client::WsClient::connect(addr(&ready), &[]).await.unwrap();
    assert_eq!(player.release().await.unwrap(), "game");
    let told: wire::agent::InstanceList = h
        .api
        .post(
            "/v1/instances/notify-drain",
            &wire::agent::NotifyDrainRequest {
                ids: vec![i.id.clone()],
            },
        )
        .await
        .unwrap();
    assert!(told.instances[0].drain_notified);
    assert_eq!(told.instances[0].state, InstanceState::Ready, "told, not stopped");
    // The player got the app's warning and is still connected.
    let deadline = Instant::now() + Duration::from_secs(5);
    while player.notices == 0 {
        // round_trip skips notices and counts them.
        assert_eq!(player.round_trip("still here").await.unwrap(), "still here");
        assert!(Instant::now() < deadline, "the warning never reached the player");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unknown: Result<wire::agent::InstanceList, _> = h
        .api
        .post(
            "/v1/instances/notify-drain",
            &wire::agent::NotifyDrainRequest {
                ids: vec!["nope-9".into()],
            },
        )
        .await;
    assert!(unknown.unwrap_err().to_string().contains("no instance nope-9"));
    h.stop(StopRequest {
        ids: vec![i.id.clone()],
        ..Default::default()
    })
    .await;
    h.wait_state(&i.id, InstanceState::Stopped, Duration::from_secs(10))
        .await;
    let log = std::fs::read_to_string(agent::log_path(&h.root(), &i.id)).unwrap();
    assert_eq!(log.matches("drain hook called").count(), 1, "the hook runs once: {log}");
}

#[tokio::test]
async fn an_agent_started_on_an_instance_table_of_the_previous_format_carries_on_with_it() {
    // The table an agent of the previous format left behind: a ready instance whose process is gone since,
    // a stopped one and a crash-looping one.
    let dir = testkit::TempDir::new("agent");
    let state = dir.join("root/agent/instances.json");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/instances-v0.json"),
        &state,
    )
    .unwrap();
    let src = dir.join("src-v1");
    std::fs::create_dir_all(&src).unwrap();
    agent::ReleaseStore::new(dir.join("root")).add(&src, "v1").unwrap();
    let h = Harness::start_in(dir, "").await;
    let looped = h.instance("bad-0").await;
    assert_eq!(
        looped.state,
        InstanceState::CrashLoop,
        "a final state stays: {looped:?}"
    );
    let gone = h.instance("v1-0").await;
    assert_ne!(
        gone.state,
        InstanceState::Ready,
        "a process that is gone is not adopted: {gone:?}"
    );
    // Instance numbers go on from the saved ones: nothing is started under an id that was used.
    let started = h.start_instances("v1", 1).await;
    assert_eq!(started[0].id, "v1-2");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["format"], 1, "written back in this agent's format");
    for i in h.list().await {
        kill_group(i.pid);
    }
}
