//! The demo app's command line: parse knobs from flags and environment, bind (or take fd 3), serve until a signal.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use clap::builder::BoolishValueParser;
use wire::HumanDuration;

/// A versioned demo HTTP/1.1 + HTTP/2 + WebSocket app with failure knobs.
///
/// Every knob can also be set through the environment variable named in
/// brackets, which is how the agent and the demo set them.
#[derive(Debug, Parser)]
#[command(name = "demo-app", version)]
struct Args {
    /// Port to listen on (127.0.0.1); 0 picks a free one and prints it.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Address to bind.
    #[arg(long, env = "DEMO_BIND", default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Release id answered on `/`.
    #[arg(long, env = "SLIPWAY_RELEASE", default_value = "dev")]
    release: String,
    /// Instance id (defaults to `<release>-<port>`).
    #[arg(long, env = "SLIPWAY_INSTANCE")]
    instance: Option<String>,
    /// Share of requests answered with 500 (0.0 to 1.0); health checks are spared.
    #[arg(long, env = "DEMO_ERROR_RATE", default_value_t = 0.0)]
    error_rate: f64,
    /// Latency added to every request but health checks, e.g. `20ms`.
    #[arg(long, env = "DEMO_LATENCY", default_value = "0ms")]
    latency: HumanDuration,
    /// Exit with status 1 right away instead of starting.
    #[arg(long, env = "DEMO_FAIL_START", value_parser = BoolishValueParser::new(), num_args = 0..=1,
          default_value = "false", default_missing_value = "true")]
    fail_start: bool,
    /// Wait this long before listening (a slow start).
    #[arg(long, env = "DEMO_START_DELAY", default_value = "0ms")]
    start_delay: HumanDuration,
    /// Ignore SIGTERM (only SIGKILL or SIGINT stop it).
    #[arg(long, env = "DEMO_IGNORE_SIGTERM", value_parser = BoolishValueParser::new(), num_args = 0..=1,
          default_value = "false", default_missing_value = "true")]
    ignore_sigterm: bool,
    /// Exit at once on SIGTERM, dropping requests in flight (an app with no graceful shutdown).
    #[arg(long, env = "DEMO_EXIT_ON_SIGTERM", value_parser = BoolishValueParser::new(), num_args = 0..=1,
          default_value = "false", default_missing_value = "true")]
    exit_on_sigterm: bool,
    /// Answered in an `x-greeting` header on every request (shows which environment an instance got).
    #[arg(long, env = "DEMO_GREETING")]
    greeting: Option<String>,
    /// Worker threads.
    #[arg(long, env = "DEMO_THREADS", default_value_t = 2)]
    threads: usize,
    /// Start a `sleep 3600` child (in the same process group) and write its
    /// pid to this file: for tests that check no process is left behind.
    #[arg(long, env = "DEMO_SPAWN_CHILD")]
    spawn_child: Option<std::path::PathBuf>,
    /// Print this many lines of output per second (log rotation tests).
    #[arg(long, env = "DEMO_LOG_RATE", default_value_t = 0)]
    log_rate: u32,
    /// After SIGTERM keep serving this long before closing (a slow shutdown).
    #[arg(long, env = "DEMO_SHUTDOWN_DELAY", default_value = "0ms")]
    shutdown_delay: HumanDuration,
    /// Instead of serving, be a client: hold WebSocket sessions to this
    /// address (a router) that reconnect at once, with their session cookie,
    /// after a 1012 "service restart"; print every event.
    #[arg(long, value_name = "ADDR")]
    ws_client: Option<std::net::SocketAddr>,
    /// With --ws-client: how many sessions.
    #[arg(long, default_value_t = 1, requires = "ws_client")]
    sessions: usize,
    /// With --ws-client: how long to hold them (until Ctrl-C if absent).
    #[arg(long = "for", value_name = "DURATION", requires = "ws_client")]
    hold_for: Option<HumanDuration>,
}

/// Runs the demo app with these command-line arguments (the first is the program name).
pub fn main(argv: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if args.fail_start {
        eprintln!("demo-app {}: failing to start as asked (--fail-start)", args.release);
        return ExitCode::from(1);
    }
    if !(0.0..=1.0).contains(&args.error_rate) {
        eprintln!(
            "demo-app: --error-rate must be between 0 and 1, got {}",
            args.error_rate
        );
        return ExitCode::from(64);
    }
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo-app: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(addr) = args.ws_client {
        return match runtime.block_on(ws_clients(addr, args.sessions, args.hold_for.map(|d| d.0))) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("demo-app: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-app: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The listening socket handed over as fd 3 (`LISTEN_FDS=1` with our pid in
/// `LISTEN_PID`), systemd style.
#[allow(unsafe_code)]
fn inherited_listener() -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let ours = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    if std::env::var("LISTEN_FDS").as_deref() != Ok("1") || !ours {
        return Ok(None);
    }
    use std::os::fd::FromRawFd;
    // SAFETY: with LISTEN_FDS=1 and LISTEN_PID naming this process, fd 3 is a
    // listening socket passed to us and owned by nobody else in this process.
    let std_listener = unsafe { std::net::TcpListener::from_raw_fd(3) };
    std_listener.set_nonblocking(true)?;
    Ok(Some(tokio::net::TcpListener::from_std(std_listener)?))
}

/// `--ws-client`: holds `n` reconnecting sessions and prints what happens
/// to them. True when no session saw an error.
async fn ws_clients(addr: std::net::SocketAddr, n: usize, hold: Option<Duration>) -> anyhow::Result<bool> {
    use crate::ws_client::ReconnectingWs;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut logs = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..n.max(1) {
        let s = ReconnectingWs::new(addr, Duration::from_secs(1));
        logs.push(s.log());
        tasks.push(tokio::spawn(s.run(stop_rx.clone())));
    }
    let start = std::time::Instant::now();
    let mut seen = vec![(0usize, 0usize, 0usize, 0usize); logs.len()];
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let stamp = |t: std::time::Instant| t.duration_since(start).as_secs_f64();
    loop {
        let done = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => hold.is_some_and(|h| start.elapsed() >= h),
            _ = int.recv() => true,
        };
        for (i, log) in logs.iter().enumerate() {
            let l = log.lock().unwrap_or_else(|e| e.into_inner());
            let (c, x, m, e) = &mut seen[i];
            for (t, r) in &l.connects[*c..] {
                let verb = if *c == 0 { "connected" } else { "reconnected" };
                println!("{:8.3}s session {i}: {verb} to {r}", stamp(*t));
            }
            for (t, code, why) in &l.closes[*x..] {
                println!("{:8.3}s session {i}: server closed with {code} ({why})", stamp(*t));
            }
            for (t, text) in &l.notices[*m..] {
                println!("{:8.3}s session {i}: notice from the app: {text}", stamp(*t));
            }
            for (t, err) in &l.errors[*e..] {
                println!("{:8.3}s session {i}: ERROR {err}", stamp(*t));
            }
            *c = l.connects.len();
            *x = l.closes.len();
            *m = l.notices.len();
            *e = l.errors.len();
        }
        if done {
            break;
        }
    }
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let errors: usize = logs
        .iter()
        .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()).errors.len())
        .sum();
    let reconnects: usize = logs
        .iter()
        .map(|l| {
            l.lock()
                .unwrap_or_else(|e| e.into_inner())
                .connects
                .len()
                .saturating_sub(1)
        })
        .sum();
    println!("{} sessions, {reconnects} reconnects, {errors} errors", logs.len());
    Ok(errors == 0)
}

async fn run(args: Args) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    if !args.start_delay.0.is_zero() {
        tokio::time::sleep(args.start_delay.0).await;
    }
    let listener = match inherited_listener()? {
        Some(l) => l,
        None => tokio::net::TcpListener::bind((args.bind, args.port)).await?,
    };
    let addr = listener.local_addr()?;
    if let Some(pidfile) = &args.spawn_child {
        let child = std::process::Command::new("sleep").arg("3600").spawn()?;
        std::fs::write(pidfile, child.id().to_string())?;
    }
    if args.log_rate > 0 {
        let every = Duration::from_micros(1_000_000 / args.log_rate as u64);
        let release = args.release.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                tokio::time::sleep(every).await;
                n += 1;
                println!("demo-app {release}: log line {n} padding padding padding padding padding padding");
            }
        });
    }
    let instance = args
        .instance
        .unwrap_or_else(|| format!("{}-{}", args.release, addr.port()));
    let mut config = crate::Config::new(args.release.clone());
    config.instance = instance.clone();
    config.error_rate = args.error_rate;
    config.latency = args.latency.0;
    config.shutdown_delay = args.shutdown_delay.0;
    config.greeting = args.greeting;
    let app = crate::App::new(config);
    println!(
        "demo-app release={} instance={instance} listening on {addr}",
        args.release
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let ignore_term = args.ignore_sigterm;
    let exit_on_term = args.exit_on_sigterm;
    let shutdown = async move {
        loop {
            tokio::select! {
                _ = term.recv() => {
                    if ignore_term {
                        eprintln!("demo-app: ignoring SIGTERM as asked (--ignore-sigterm)");
                        continue;
                    }
                    if exit_on_term {
                        eprintln!("demo-app: SIGTERM, exiting at once as asked (--exit-on-sigterm)");
                        std::process::exit(0);
                    }
                    eprintln!("demo-app: SIGTERM, shutting down");
                    return;
                }
                _ = int.recv() => {
                    eprintln!("demo-app: SIGINT, shutting down");
                    return;
                }
            }
        }
    };
    crate::serve(listener, app, shutdown).await;
    // Give the log line a chance to reach a pipe before exit.
    tokio::time::sleep(Duration::from_millis(1)).await;
    Ok(())
}
