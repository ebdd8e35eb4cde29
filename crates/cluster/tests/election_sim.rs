//! Seeded simulations of the pure election against a model of etcd (leases that expire, a leader key, fenced
//! writes), with network delays, lost answers and frozen (SIGSTOPped) candidates: nobody ever believes it
//! leads unless etcd says so, accepted writes never go back a term, a refused writer steps down, and once the
//! disruptions stop one candidate leads for good.

use std::collections::HashMap;
use std::time::Duration;

use cluster::{Action, Election, Outcome, Role};

const TTL: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(250);
const STEP: Duration = Duration::from_millis(10);

#[derive(Default)]
struct Store {
    leases: HashMap<i64, Duration>,
    leader: Option<(i64, i64)>,
    rev: i64,
    next_lease: i64,
}

impl Store {
    fn expire(&mut self, now: Duration) {
        self.leases.retain(|_, exp| *exp > now);
        if let Some((lease, _)) = self.leader
            && !self.leases.contains_key(&lease)
        {
            self.leader = None;
            self.rev += 1;
        }
    }

    fn apply(&mut self, action: Action, now: Duration) -> Outcome {
        self.expire(now);
        match action {
            Action::Grant => {
                self.next_lease += 1;
                self.leases.insert(self.next_lease, now + TTL);
                Outcome::Granted {
                    lease: self.next_lease,
                    ttl: TTL,
                }
            }
            Action::Campaign { lease } if !self.leases.contains_key(&lease) => Outcome::LeaseGone,
            Action::Campaign { lease } => match self.leader {
                None => {
                    self.rev += 1;
                    self.leader = Some((lease, self.rev));
                    Outcome::Won { term: self.rev }
                }
                Some((holder_lease, term)) => Outcome::Lost { holder_lease, term },
            },
            Action::Renew { lease } => match self.leases.get_mut(&lease) {
                Some(exp) => {
                    *exp = now + TTL;
                    Outcome::Renewed
                }
                None => Outcome::LeaseGone,
            },
        }
    }

    fn write(&mut self, term: i64, now: Duration) -> bool {
        self.expire(now);
        self.leader.is_some_and(|(_, t)| t == term)
    }
}

enum Msg {
    Call {
        who: usize,
        action: Action,
        arrive: Duration,
        reply_after: Duration,
        lose: bool,
    },
    Write {
        who: usize,
        term: i64,
        arrive: Duration,
        reply_after: Duration,
    },
}

struct Sim {
    rng: fastrand::Rng,
    store: Store,
    cands: Vec<Election>,
    frozen_until: Vec<Duration>,
    inbox: Vec<Vec<(Duration, Outcome)>>,
    wire: Vec<Msg>,
    accepted: Vec<i64>,
}

impl Sim {
    fn new(seed: u64, n: usize) -> Sim {
        Sim {
            rng: fastrand::Rng::with_seed(seed),
            store: Store::default(),
            cands: (0..n).map(|_| Election::new(TTL, RETRY)).collect(),
            frozen_until: vec![Duration::ZERO; n],
            inbox: (0..n).map(|_| Vec::new()).collect(),
            wire: Vec::new(),
            accepted: Vec::new(),
        }
    }

    fn delay(&mut self) -> Duration {
        Duration::from_millis(self.rng.u64(0..60))
    }

    fn deliver(&mut self, now: Duration) {
        let (due, rest): (Vec<Msg>, Vec<Msg>) = std::mem::take(&mut self.wire).into_iter().partition(|m| match m {
            Msg::Call { arrive, .. } | Msg::Write { arrive, .. } => *arrive <= now,
        });
        self.wire = rest;
        for m in due {
            match m {
                Msg::Call {
                    who,
                    action,
                    arrive,
                    reply_after,
                    lose,
                } => {
                    let out = self.store.apply(action, arrive);
                    let out = if lose { Outcome::Unavailable } else { out };
                    self.inbox[who].push((arrive + reply_after, out));
                }
                Msg::Write {
                    who,
                    term,
                    arrive,
                    reply_after,
                } => {
                    if self.store.write(term, arrive) {
                        assert!(
                            self.accepted.last().is_none_or(|&t| t <= term),
                            "a write went back a term"
                        );
                        self.accepted.push(term);
                    } else {
                        self.inbox[who].push((arrive + reply_after, Outcome::WriteRefused { term }));
                    }
                }
            }
        }
    }

    fn turn(&mut self, who: usize, now: Duration, disrupt: bool) {
        if now < self.frozen_until[who] {
            return;
        }
        if disrupt && self.rng.u32(0..3000) == 0 {
            self.frozen_until[who] = now + Duration::from_millis(self.rng.u64(100..3 * TTL.as_millis() as u64));
            return;
        }
        let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.inbox[who])
            .into_iter()
            .partition(|(t, _)| *t <= now);
        self.inbox[who] = later;
        for (_, out) in ready {
            self.cands[who].on(out, now);
            if let Outcome::WriteRefused { term } = out {
                assert_ne!(
                    self.cands[who].role(now),
                    Role::Leader {
                        term,
                        lease: self.cands[who].lease().unwrap_or(0)
                    }
                );
            }
        }
        if let Some(action) = self.cands[who].poll(now) {
            let (d1, d2) = (self.delay(), self.delay());
            let lose = disrupt && self.rng.u32(0..20) == 0;
            self.wire.push(Msg::Call {
                who,
                action,
                arrive: now + d1,
                reply_after: d2,
                lose,
            });
        }
        if let Role::Leader { term, .. } = self.cands[who].role(now)
            && self.rng.u32(0..10) == 0
        {
            let (d1, d2) = (self.delay(), self.delay());
            self.wire.push(Msg::Write {
                who,
                term,
                arrive: now + d1,
                reply_after: d2,
            });
        }
    }

    /// Nobody believes it leads unless the store's leader key is its term under its lease.
    fn check_beliefs(&mut self, now: Duration) {
        self.store.expire(now);
        for (i, c) in self.cands.iter().enumerate() {
            if let Role::Leader { term, lease } = c.role(now) {
                assert_eq!(
                    self.store.leader,
                    Some((lease, term)),
                    "candidate {i} believes it leads at {now:?}"
                );
            }
        }
    }

    fn leaders(&self, now: Duration) -> Vec<usize> {
        (0..self.cands.len())
            .filter(|&i| matches!(self.cands[i].role(now), Role::Leader { .. }))
            .collect()
    }
}

fn run(seed: u64) {
    let mut sim = Sim::new(seed, 3);
    let disrupted = Duration::from_secs(40);
    let quiet_until = disrupted + 6 * TTL;
    let mut now = Duration::ZERO;
    let mut settled_at = None;
    while now < quiet_until {
        let disrupt = now < disrupted;
        sim.deliver(now);
        for who in 0..3 {
            sim.turn(who, now, disrupt);
        }
        sim.check_beliefs(now);
        if !disrupt && now >= disrupted + 3 * TTL {
            let leaders = sim.leaders(now);
            assert_eq!(
                leaders.len(),
                1,
                "seed {seed}: leaders {leaders:?} at {now:?} after the disruptions ended"
            );
            settled_at.get_or_insert((now, leaders[0]));
            assert_eq!(
                settled_at.map(|s| s.1),
                Some(leaders[0]),
                "seed {seed}: leadership flapped"
            );
        }
        now += STEP;
    }
    assert!(!sim.accepted.is_empty(), "seed {seed}: no write was ever accepted");
}

#[test]
fn seeded_elections_are_safe_and_settle() {
    for seed in 0..150 {
        run(seed);
    }
}

#[test]
fn a_lone_candidate_leads_within_one_round_trip_and_renews_before_expiry() {
    let mut e = Election::new(TTL, RETRY);
    let t0 = Duration::ZERO;
    assert_eq!(e.poll(t0), Some(Action::Grant));
    assert_eq!(e.poll(t0), None, "one call in flight at a time");
    e.on(Outcome::Granted { lease: 7, ttl: TTL }, t0);
    assert_eq!(e.poll(t0), Some(Action::Campaign { lease: 7 }));
    e.on(Outcome::Won { term: 42 }, t0);
    assert_eq!(e.role(t0), Role::Leader { term: 42, lease: 7 });
    // Without renewal, it stops believing at sent + TTL.
    assert_eq!(e.role(TTL - STEP), Role::Leader { term: 42, lease: 7 });
    assert_eq!(e.role(TTL), Role::Follower);
    // It renews at a third of the TTL.
    assert_eq!(e.poll(TTL / 3 - STEP), None);
    assert_eq!(e.poll(TTL / 3), Some(Action::Renew { lease: 7 }));
    e.on(Outcome::Renewed, TTL / 3);
    assert_eq!(e.role(TTL + TTL / 3 - STEP), Role::Leader { term: 42, lease: 7 });
}

#[test]
fn a_refused_write_ends_that_term_only() {
    let mut e = Election::new(TTL, RETRY);
    e.poll(Duration::ZERO);
    e.on(Outcome::Granted { lease: 1, ttl: TTL }, Duration::ZERO);
    e.poll(Duration::ZERO);
    e.on(Outcome::Won { term: 5 }, Duration::ZERO);
    e.on(Outcome::WriteRefused { term: 4 }, STEP);
    assert_eq!(
        e.role(STEP),
        Role::Leader { term: 5, lease: 1 },
        "an older term's refusal changes nothing"
    );
    e.on(Outcome::WriteRefused { term: 5 }, STEP);
    assert_eq!(e.role(STEP), Role::Follower);
}

#[test]
fn a_won_campaign_whose_answer_was_lost_is_recognised() {
    let mut e = Election::new(TTL, RETRY);
    e.poll(Duration::ZERO);
    e.on(Outcome::Granted { lease: 3, ttl: TTL }, Duration::ZERO);
    e.poll(Duration::ZERO);
    e.on(Outcome::Unavailable, STEP);
    assert_eq!(e.poll(STEP), None, "waits before retrying");
    assert_eq!(e.poll(STEP + RETRY), Some(Action::Campaign { lease: 3 }));
    e.on(
        Outcome::Lost {
            holder_lease: 3,
            term: 9,
        },
        STEP + RETRY,
    );
    assert_eq!(e.role(STEP + RETRY), Role::Leader { term: 9, lease: 3 });
}
