//! The client against real HTTP servers: Debian's nginx serving the repo folder as static files, and
//! `slipway patch serve`. Range requests, several connections, the same trees as from a folder.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use patch::{Client, ClientOptions, UpdateRequest};

use crate::support::*;

/// Publishes v1 and v2 and updates a fresh install through `url` to v1, then v2.
fn update_through(fx: &Fixture, url: &str, v1: &Tree, v2: &Tree, tag: &str) {
    let dir = fx.install(tag);
    let c = Client::new(
        &dir,
        url,
        ClientOptions {
            concurrency: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let o = c
        .update(&UpdateRequest {
            release: Some(1),
            root: Some(fx.root_bytes()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(&read_tree(&c.current()), v1);
    assert!(o.stats.requests >= 2, "{o:?}");
    let o = c.update(&UpdateRequest::default()).unwrap();
    assert_eq!(&read_tree(&c.current()), v2);
    assert!(o.stats.downloaded > 0);
    // An on-demand install through the same server.
    let lazy = fx.install(&format!("{tag}-lazy"));
    let c = Client::new(&lazy, url, ClientOptions::default()).unwrap();
    c.update(&UpdateRequest {
        tags: Some(vec!["core".into()]),
        root: Some(fx.root_bytes()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(read_tree(&c.current()).keys().collect::<Vec<_>>(), vec!["bin/game"]);
    let p = c.fetch("data/big.pak").unwrap();
    assert_eq!(std::fs::read(p).unwrap(), v2["data/big.pak"]);
    c.fill(&std::sync::atomic::AtomicBool::new(false)).unwrap();
    assert_eq!(&read_tree(&c.current()), v2);
}

fn releases(fx: &Fixture) -> (Tree, Tree) {
    let mut v1 = Tree::new();
    v1.insert("bin/game".into(), text(31, 600_000));
    v1.insert("data/big.pak".into(), text(32, 5_000_000));
    v1.insert("data/small.txt".into(), text(33, 1000));
    v1.insert(
        "patch.toml".into(),
        b"[[files]]\nglob = \"bin/**\"\npriority = 0\ntags = [\"core\"]\n".to_vec(),
    );
    let mut v2 = v1.clone();
    v2.get_mut("data/big.pak")
        .unwrap()
        .splice(2_000_000..2_000_000, text(34, 300_000));
    v2.get_mut("bin/game").unwrap()[5000] ^= 1;
    write_tree(&fx.build_dir("b1"), &v1);
    fx.publish(&fx.build_dir("b1"), "v1");
    write_tree(&fx.build_dir("b2"), &v2);
    fx.publish(&fx.build_dir("b2"), "v2");
    // The spec file is not part of the release.
    v1.remove("patch.toml");
    v2.remove("patch.toml");
    (v1, v2)
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a throwaway nginx serving `root` on a free loopback port.
fn nginx(root: &Path, work: &Path) -> (Nginx, SocketAddr) {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| Path::new(p).exists()).unwrap_or_else(|| {
        panic!("nginx is not installed: run ./scripts/test (it installs Debian's nginx-light) or apt-get install nginx-light")
    });
    std::fs::create_dir_all(work.join("logs")).unwrap();
    for _ in 0..5 {
        let port = free_port();
        let w = work.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {w}/nginx.pid;\nerror_log {w}/logs/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {w}/body;\n  proxy_temp_path {w}/proxy;\n  fastcgi_temp_path {w}/fcgi;\n\
               uwsgi_temp_path {w}/uwsgi;\n  scgi_temp_path {w}/scgi;\n\
               server {{ listen 127.0.0.1:{port}; root {root}; location / {{ }} }}\n}}\n",
            root = root.display()
        );
        std::fs::write(work.join("nginx.conf"), conf).unwrap();
        let child = Command::new(bin)
            .args([
                "-p",
                &work.display().to_string(),
                "-c",
                &work.join("nginx.conf").display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut ng = Nginx(child);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ng.0.try_wait().unwrap().is_some() {
                break;
            }
            if std::net::TcpStream::connect(addr).is_ok() {
                return (ng, addr);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = ng.0.kill();
    }
    panic!("nginx did not start; see {}", work.join("logs/error.log").display());
}

#[test]
fn the_client_updates_through_debians_nginx_serving_the_repo_folder() {
    let fx = Fixture::new("patch-nginx");
    let (v1, v2) = releases(&fx);
    let (_nginx, addr) = nginx(&fx.repo.dir, &fx.dir.join("nginx"));
    update_through(&fx, &format!("http://{addr}"), &v1, &v2, "via-nginx");
}

#[test]
fn the_client_updates_through_slipway_patch_serve() {
    let fx = Fixture::new("patch-serve");
    let (v1, v2) = releases(&fx);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (addr, task) = rt
        .block_on(patch::start_server(fx.repo.dir.clone(), "127.0.0.1:0".parse().unwrap()))
        .unwrap();
    update_through(&fx, &format!("http://{addr}/"), &v1, &v2, "via-serve");
    // What a plain HTTP client gets: ranges, 416, 404 and no way out of the folder.
    rt.block_on(async {
        let r = testkit::get(addr, "/packs/00000000.pack", &[("range", "bytes=0-9")])
            .await
            .unwrap();
        assert_eq!((r.status.as_u16(), r.body.len()), (206, 10));
        assert!(r.header("content-range").unwrap().starts_with("bytes 0-9/"));
        let r = testkit::get(addr, "/packs/00000000.pack", &[("range", "bytes=999999999-")])
            .await
            .unwrap();
        assert_eq!(r.status.as_u16(), 416);
        assert_eq!(testkit::get(addr, "/../keys", &[]).await.unwrap().status.as_u16(), 404);
        assert_eq!(
            testkit::get(addr, "/nope.json", &[]).await.unwrap().status.as_u16(),
            404
        );
        let r = testkit::get(addr, "/timestamp.json", &[]).await.unwrap();
        assert_eq!(r.header("cache-control"), Some("no-cache"));
    });
    task.abort();
}
