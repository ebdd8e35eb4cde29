//! How a slipway service process lives: its runtime, and the signals it stops or upgrades on.

use std::future::Future;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// What a caught signal asks of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM.
    Terminate,
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGUSR2: hand over to a new binary.
    Upgrade,
}

/// The signals a service process acts on, caught from the moment this is
/// made (a signal that arrives before the loop waits must not meet the
/// default action, which ends the process). `None` where one could not be caught.
#[derive(Debug, Default)]
pub struct Signals {
    term: Option<Signal>,
    int: Option<Signal>,
    usr2: Option<Signal>,
}

impl Signals {
    /// Catches SIGTERM and SIGINT, and SIGUSR2 too when `upgrade`. Needs a
    /// tokio runtime.
    pub fn catch(upgrade: bool) -> Signals {
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
            usr2: if upgrade {
                signal(SignalKind::user_defined2()).ok()
            } else {
                None
            },
        }
    }

    /// The next signal caught.
    pub async fn next(&mut self) -> Stop {
        async fn recv(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.term) => Stop::Terminate,
            _ = recv(&mut self.int) => Stop::Interrupt,
            _ = recv(&mut self.usr2) => Stop::Upgrade,
        }
    }
}

/// Runs `f` on the two-worker runtime every slipway process uses.
pub fn block_on<F: Future>(f: F) -> std::io::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f))
}

/// Starts a service with `start`, says it is up with `up`, waits for SIGTERM
/// or SIGINT, then says so with `leaving` and runs `stop` on it.
pub async fn serve_until_signal<R, E, S, D>(start: S, up: impl FnOnce(&R), leaving: &str, stop: D) -> Result<(), E>
where
    S: Future<Output = Result<R, E>>,
    D: AsyncFnOnce(R),
{
    let mut signals = Signals::catch(false);
    let running = start.await?;
    up(&running);
    signals.next().await;
    println!("{leaving}");
    stop(running).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_runs_until_sigterm_then_is_stopped() {
        let stopped = block_on(async {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let t = tokio::spawn(serve_until_signal(
                async { Ok::<_, std::io::Error>(tx) },
                |_| {
                    nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGTERM).unwrap();
                },
                "leaving",
                async |tx: tokio::sync::oneshot::Sender<()>| {
                    let _ = tx.send(());
                },
            ));
            t.await.unwrap().unwrap();
            rx.await.is_ok()
        })
        .unwrap();
        assert!(stopped);
    }
}
