//! The pure lifecycle of one instance: starting, ready, draining, stopped, crashes with backoff, crash loops.
//!
//! No I/O and no clock: the supervisor feeds events with the time in
//! milliseconds and carries out the returned actions. Tests drive it by
//! seeded simulation.

use std::collections::VecDeque;

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Process started, waiting for readiness until `deadline`.
    Starting {
        deadline: u64,
    },
    Ready,
    /// Told to stop; killed at `deadline` if still running.
    Draining {
        deadline: u64,
        killed: bool,
    },
    /// Crashed; restarts at `until`.
    Backoff {
        until: u64,
    },
    /// Too many crashes in the window: not restarted.
    CrashLoop,
    /// Did not become ready before its start deadline: not restarted.
    Failed,
    Stopped,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting { .. } => "starting",
            Phase::Ready => "ready",
            Phase::Draining { .. } => "draining",
            Phase::Backoff { .. } => "crashed",
            Phase::CrashLoop => "crash_loop",
            Phase::Failed => "failed",
            Phase::Stopped => "stopped",
        }
    }

    /// A process may be running in this phase.
    pub fn has_process(self) -> bool {
        matches!(self, Phase::Starting { .. } | Phase::Ready | Phase::Draining { .. })
    }

    /// The instance reached an end and will not run again.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::CrashLoop | Phase::Failed | Phase::Stopped)
    }
}

/// Restart and timing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub start_deadline_ms: u64,
    pub stop_deadline_ms: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// This many crashes within `crash_window_ms` is a crash loop.
    pub crash_loop_count: u32,
    pub crash_window_ms: u64,
}

/// Something that happened to the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The process was started.
    Spawned,
    /// Starting the process failed (e.g. command not found).
    SpawnFailed(String),
    /// The readiness probe passed.
    ProbeOk,
    /// The process exited (`code` is None when killed by a signal or unknown).
    Exited { code: Option<i32> },
    /// Stop (drain) it; `deadline_ms` overrides the policy's stop deadline.
    Stop { deadline_ms: Option<u64> },
    /// Time passed.
    Tick,
}

/// What the supervisor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Spawn,
    /// Keep probing readiness until `ProbeOk` or the deadline.
    Probe,
    /// Tell the app it is draining (POST to its drain path, if configured).
    NotifyDrain,
    /// Send the configured stop signal to the process.
    SignalStop,
    /// SIGKILL the whole process group.
    KillGroup,
    /// The phase changed: persist and report it.
    Report {
        phase: Phase,
        note: Option<String>,
    },
}

/// The lifecycle of one instance.
#[derive(Debug, Clone)]
pub struct Machine {
    pub phase: Phase,
    pub policy: Policy,
    /// Restarts after crashes so far.
    pub restarts: u32,
    crashes: VecDeque<u64>,
}

impl Machine {
    /// A new instance, about to be spawned: call `on(Event::Spawned)` or
    /// `on(Event::SpawnFailed)` next.
    pub fn new(policy: Policy, now: u64) -> Machine {
        Machine {
            phase: Phase::Starting {
                deadline: now + policy.start_deadline_ms,
            },
            policy,
            restarts: 0,
            crashes: VecDeque::new(),
        }
    }

    /// An instance found running after the supervisor restarted.
    pub fn adopted(policy: Policy, phase: Phase, restarts: u32) -> Machine {
        Machine {
            phase,
            policy,
            restarts,
            crashes: VecDeque::new(),
        }
    }

    fn go(&mut self, phase: Phase, note: Option<String>, out: &mut Vec<Action>) {
        if self.phase != phase {
            self.phase = phase;
            out.push(Action::Report { phase, note });
        }
    }

    fn backoff_ms(&self) -> u64 {
        let shift = self.restarts.min(20);
        (self.policy.backoff_base_ms.saturating_mul(1 << shift)).min(self.policy.backoff_max_ms)
    }

    fn crashed(&mut self, now: u64, note: String, out: &mut Vec<Action>) {
        // Whatever the main process left behind goes too.
        out.push(Action::KillGroup);
        self.crashes.push_back(now);
        while self
            .crashes
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > self.policy.crash_window_ms)
        {
            self.crashes.pop_front();
        }
        if self.crashes.len() as u32 >= self.policy.crash_loop_count {
            let n = self.crashes.len();
            let window = self.policy.crash_window_ms / 1000;
            self.go(
                Phase::CrashLoop,
                Some(format!(
                    "{note}; {n} crashes within {window}s: crash loop, not restarting"
                )),
                out,
            );
        } else {
            let until = now + self.backoff_ms();
            self.go(Phase::Backoff { until }, Some(note), out);
        }
    }

    /// Feeds one event at time `now` (ms); returns what to do.
    pub fn on(&mut self, event: Event, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        match (self.phase, event) {
            (Phase::Starting { .. }, Event::Spawned) => out.push(Action::Probe),
            (Phase::Starting { .. }, Event::SpawnFailed(why)) => {
                self.crashed(now, format!("could not start: {why}"), &mut out);
            }
            (Phase::Starting { .. }, Event::ProbeOk) => self.go(Phase::Ready, None, &mut out),
            (Phase::Starting { deadline }, Event::Tick) if now >= deadline => {
                out.push(Action::KillGroup);
                let secs = self.policy.start_deadline_ms as f64 / 1000.0;
                self.go(Phase::Failed, Some(format!("not ready within {secs}s")), &mut out);
            }
            (Phase::Starting { .. } | Phase::Ready, Event::Exited { code }) => {
                let how = match code {
                    Some(c) => format!("exited with status {c}"),
                    None => "was killed or vanished".to_string(),
                };
                self.crashed(now, how, &mut out);
            }
            (Phase::Backoff { until }, Event::Tick) if now >= until => {
                self.restarts += 1;
                self.phase = Phase::Starting {
                    deadline: now + self.policy.start_deadline_ms,
                };
                out.push(Action::Report {
                    phase: self.phase,
                    note: Some(format!("restart {}", self.restarts)),
                });
                out.push(Action::Spawn);
            }
            (Phase::Starting { .. } | Phase::Ready, Event::Stop { deadline_ms }) => {
                let deadline = now + deadline_ms.unwrap_or(self.policy.stop_deadline_ms);
                self.go(
                    Phase::Draining {
                        deadline,
                        killed: false,
                    },
                    None,
                    &mut out,
                );
                out.push(Action::NotifyDrain);
                out.push(Action::SignalStop);
            }
            (
                Phase::Draining {
                    deadline,
                    killed: false,
                },
                Event::Tick,
            ) if now >= deadline => {
                self.phase = Phase::Draining { deadline, killed: true };
                out.push(Action::KillGroup);
            }
            (Phase::Draining { killed, .. }, Event::Exited { .. }) => {
                // Children the app left behind must not outlive it.
                out.push(Action::KillGroup);
                let note = killed.then(|| "killed after the stop deadline".to_string());
                self.go(Phase::Stopped, note, &mut out);
            }
            (Phase::Backoff { .. } | Phase::CrashLoop | Phase::Failed, Event::Stop { .. }) => {
                self.go(Phase::Stopped, None, &mut out);
            }
            // Everything else changes nothing (a late probe, a repeated stop, ...).
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            start_deadline_ms: 5_000,
            stop_deadline_ms: 10_000,
            backoff_base_ms: 100,
            backoff_max_ms: 2_000,
            crash_loop_count: 4,
            crash_window_ms: 30_000,
        }
    }

    fn phases(actions: &[Action]) -> Vec<&'static str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Report { phase, .. } => Some(phase.name()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn start_ready_stop() {
        let mut m = Machine::new(policy(), 0);
        assert_eq!(m.on(Event::Spawned, 0), vec![Action::Probe]);
        assert_eq!(phases(&m.on(Event::ProbeOk, 300)), vec!["ready"]);
        let a = m.on(Event::Stop { deadline_ms: None }, 1_000);
        assert_eq!(phases(&a), vec!["draining"]);
        assert!(a.contains(&Action::NotifyDrain) && a.contains(&Action::SignalStop));
        assert!(m.on(Event::Tick, 5_000).is_empty());
        let a = m.on(Event::Exited { code: Some(0) }, 6_000);
        assert_eq!(
            a,
            vec![
                Action::KillGroup,
                Action::Report {
                    phase: Phase::Stopped,
                    note: None
                }
            ]
        );
    }

    #[test]
    fn a_process_that_ignores_the_stop_signal_is_killed_at_the_deadline() {
        let mut m = Machine::new(policy(), 0);
        m.on(Event::Spawned, 0);
        m.on(Event::ProbeOk, 10);
        m.on(
            Event::Stop {
                deadline_ms: Some(2_000),
            },
            100,
        );
        assert!(m.on(Event::Tick, 2_099).is_empty());
        assert_eq!(m.on(Event::Tick, 2_100), vec![Action::KillGroup]);
        assert!(m.on(Event::Tick, 2_200).is_empty(), "killed once");
        let a = m.on(Event::Exited { code: None }, 2_150);
        assert_eq!(phases(&a), vec!["stopped"]);
    }

    #[test]
    fn crashes_back_off_exponentially_then_a_crash_loop_stops_restarts() {
        let mut m = Machine::new(policy(), 0);
        m.on(Event::Spawned, 0);
        m.on(Event::ProbeOk, 10);
        let mut now = 1_000;
        let mut waits = Vec::new();
        loop {
            let a = m.on(Event::Exited { code: Some(1) }, now);
            if m.phase == Phase::CrashLoop {
                assert!(
                    matches!(&a[..], [Action::KillGroup, Action::Report { note: Some(n), .. }]
                        if n.contains("crash loop"))
                );
                break;
            }
            let Phase::Backoff { until } = m.phase else {
                panic!("{:?}", m.phase)
            };
            waits.push(until - now);
            assert!(m.on(Event::Tick, until - 1).is_empty());
            let a = m.on(Event::Tick, until);
            assert!(a.contains(&Action::Spawn));
            now = until;
            m.on(Event::Spawned, now);
            now += 50;
        }
        assert_eq!(waits, vec![100, 200, 400]);
        assert_eq!(m.restarts, 3);
        // A crash loop is final until stopped.
        assert!(m.on(Event::Tick, now + 100_000).is_empty());
        assert_eq!(phases(&m.on(Event::Stop { deadline_ms: None }, now)), vec!["stopped"]);
    }

    #[test]
    fn crashes_far_apart_are_not_a_loop() {
        let mut m = Machine::new(policy(), 0);
        m.on(Event::Spawned, 0);
        let mut now = 0;
        for _ in 0..10 {
            now += 40_000;
            m.on(Event::Exited { code: Some(1) }, now);
            let Phase::Backoff { until } = m.phase else {
                panic!("{:?}", m.phase)
            };
            m.on(Event::Tick, until);
            m.on(Event::Spawned, until);
        }
        assert!(matches!(m.phase, Phase::Starting { .. }));
    }

    #[test]
    fn not_ready_in_time_is_a_failed_start() {
        let mut m = Machine::new(policy(), 0);
        m.on(Event::Spawned, 0);
        assert!(m.on(Event::Tick, 4_999).is_empty());
        let a = m.on(Event::Tick, 5_000);
        assert_eq!(a[0], Action::KillGroup);
        assert_eq!(phases(&a), vec!["failed"]);
        assert!(m.on(Event::ProbeOk, 5_001).is_empty(), "a late probe changes nothing");
    }

    /// Seeded random event streams: the machine never reaches an impossible
    /// state, stopping always ends in Stopped, and every exit of a running
    /// process is followed by a group kill.
    #[test]
    fn random_event_streams_keep_the_invariants() {
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..2_000 {
            let mut m = Machine::new(policy(), 0);
            let mut now = 0;
            let mut running = false;
            let mut stop_sent = false;
            for step in 0..60 {
                now += rng.u64(0..3_000);
                let ev = match rng.u8(0..7) {
                    0 => Event::Spawned,
                    1 => Event::ProbeOk,
                    2 if running => Event::Exited {
                        code: Some(rng.i32(0..3)),
                    },
                    3 if step > 40 => {
                        stop_sent = true;
                        Event::Stop { deadline_ms: None }
                    }
                    _ => Event::Tick,
                };
                let was_running = m.phase.has_process();
                let exited = matches!(ev, Event::Exited { .. });
                let actions = m.on(ev, now);
                if actions.contains(&Action::Spawn) {
                    running = true;
                }
                if exited && was_running {
                    assert!(
                        actions.contains(&Action::KillGroup),
                        "exit without group kill: {actions:?}"
                    );
                    running = false;
                }
                if let Phase::Draining { deadline, .. } = m.phase {
                    assert!(deadline <= now + policy().stop_deadline_ms);
                }
            }
            if stop_sent {
                // Drive to the end: time passes, the process dies.
                m.on(Event::Tick, now + 20_000);
                m.on(Event::Exited { code: None }, now + 20_001);
                m.on(Event::Stop { deadline_ms: None }, now + 20_002);
                assert!(m.phase == Phase::Stopped || m.phase.is_final(), "{:?}", m.phase);
            }
        }
    }
}
