//! The **pure** leader election: one candidate's view, time passed in, one action out at a time. A
//! candidate holds a lease it keeps alive, and campaigns by creating the leader key under it; the leader key's
//! create revision is its *term*, which every fenced write compares (see `fence`).
//!
//! Safety rule: a candidate believes it leads only until `sent + ttl`, where `sent` is when the last
//! successful grant or keep-alive *left* it. etcd expires the lease no earlier than `received + ttl`, so
//! while the belief holds nobody else can have been elected (clocks running at the same rate). A paused
//! process that wakes past that point steps down before it acts; a write already on its way is refused by
//! the fence.

use std::time::Duration;

use crate::kv::LeaseId;

/// What the executor does next for this candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Grant a lease of the configured TTL.
    Grant,
    /// Create the leader key under `lease` if it does not exist, else read it.
    Campaign { lease: LeaseId },
    /// Keep `lease` alive once.
    Renew { lease: LeaseId },
}

/// What came of the last action (or of a fenced write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Granted {
        lease: LeaseId,
        ttl: Duration,
    },
    /// The leader key was created under our lease at revision `term`.
    Won {
        term: i64,
    },
    /// The leader key exists: held under `holder_lease`, created at `term`.
    Lost {
        holder_lease: LeaseId,
        term: i64,
    },
    Renewed,
    /// The lease is gone (expired or revoked).
    LeaseGone,
    /// etcd unreachable or without quorum: nothing learnt.
    Unavailable,
    /// A fenced write of `term` was refused: that term is over.
    WriteRefused {
        term: i64,
    },
}

/// The candidate's role as of some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Leads with this term (the leader key's create revision) under this lease.
    Leader { term: i64, lease: LeaseId },
    /// Does not lead (someone else may, or nobody can be seen).
    Follower,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// No lease: grant one at `next_try`.
    Idle { next_try: Duration },
    /// Holds a lease (valid until `valid_until`), does not lead; campaigns at `next_try`.
    Candidate {
        lease: LeaseId,
        valid_until: Duration,
        next_try: Duration,
        next_renew: Duration,
    },
    /// Leads with `term` while `now < valid_until`.
    Leader {
        lease: LeaseId,
        term: i64,
        valid_until: Duration,
        next_renew: Duration,
    },
}

/// One candidate's election state machine.
#[derive(Debug, Clone)]
pub struct Election {
    ttl: Duration,
    retry: Duration,
    state: State,
    /// The action in flight and when it was sent.
    pending: Option<(Action, Duration)>,
}

impl Election {
    /// A candidate asking for leases of `ttl`, campaigning (and retrying failures) every `retry`.
    pub fn new(ttl: Duration, retry: Duration) -> Election {
        Election {
            ttl,
            retry,
            state: State::Idle {
                next_try: Duration::ZERO,
            },
            pending: None,
        }
    }

    /// The role at `now` (a leader whose validity ran out is a follower already).
    pub fn role(&self, now: Duration) -> Role {
        match self.state {
            State::Leader {
                lease,
                term,
                valid_until,
                ..
            } if now < valid_until => Role::Leader { term, lease },
            _ => Role::Follower,
        }
    }

    /// The lease held now, if any (leading or not).
    pub fn lease(&self) -> Option<LeaseId> {
        match self.state {
            State::Idle { .. } => None,
            State::Candidate { lease, .. } | State::Leader { lease, .. } => Some(lease),
        }
    }

    /// When `poll` next has something to do (if nothing is in flight).
    pub fn next_wake(&self) -> Duration {
        match self.state {
            State::Idle { next_try } => next_try,
            State::Candidate {
                valid_until,
                next_try,
                next_renew,
                ..
            } => next_try.min(next_renew).min(valid_until),
            State::Leader {
                valid_until,
                next_renew,
                ..
            } => next_renew.min(valid_until),
        }
    }

    fn expire(&mut self, now: Duration) {
        match self.state {
            State::Candidate { valid_until, .. } | State::Leader { valid_until, .. } if now >= valid_until => {
                self.state = State::Idle { next_try: now };
            }
            _ => {}
        }
    }

    /// The action to carry out now, if any; `None` while one is in flight.
    pub fn poll(&mut self, now: Duration) -> Option<Action> {
        self.expire(now);
        if self.pending.is_some() {
            return None;
        }
        let action = match self.state {
            State::Idle { next_try } if now >= next_try => Action::Grant,
            State::Candidate { lease, next_renew, .. } if now >= next_renew => Action::Renew { lease },
            State::Candidate { lease, next_try, .. } if now >= next_try => Action::Campaign { lease },
            State::Leader { lease, next_renew, .. } if now >= next_renew => Action::Renew { lease },
            _ => return None,
        };
        self.pending = Some((action, now));
        Some(action)
    }

    /// Feeds what came of the action in flight (or a fenced write's refusal, at any time).
    pub fn on(&mut self, outcome: Outcome, now: Duration) {
        if let Outcome::WriteRefused { term } = outcome {
            self.refused(term, now);
            return;
        }
        let Some((action, sent)) = self.pending.take() else {
            return;
        };
        self.expire(now);
        self.state = self.answered(action, outcome, sent, now);
    }

    /// A fenced write of `term` was refused: if that is the term it leads, it leads no more.
    fn refused(&mut self, term: i64, now: Duration) {
        if let State::Leader {
            lease,
            term: t,
            valid_until,
            next_renew,
        } = self.state
            && t == term
        {
            self.state = State::Candidate {
                lease,
                valid_until,
                next_try: now + self.retry,
                next_renew,
            };
        }
    }

    /// The state after `action`, sent at `sent`, came out as `outcome`.
    fn answered(&mut self, action: Action, outcome: Outcome, sent: Duration, now: Duration) -> State {
        let renew_at = sent + self.ttl / 3;
        match (action, outcome, self.state) {
            (Action::Grant, Outcome::Granted { lease, ttl }, _) => {
                self.ttl = ttl.max(Duration::from_secs(1));
                State::Candidate {
                    lease,
                    valid_until: sent + self.ttl,
                    next_try: now,
                    next_renew: sent + self.ttl / 3,
                }
            }
            (Action::Campaign { lease }, Outcome::Won { .. } | Outcome::Lost { .. }, State::Candidate { .. }) => {
                self.campaigned(lease, outcome, now)
            }
            (Action::Renew { lease }, Outcome::Renewed, State::Candidate { lease: l, next_try, .. }) if l == lease => {
                State::Candidate {
                    lease,
                    valid_until: sent + self.ttl,
                    next_try,
                    next_renew: renew_at,
                }
            }
            (Action::Renew { lease }, Outcome::Renewed, State::Leader { lease: l, term, .. }) if l == lease => {
                State::Leader {
                    lease,
                    term,
                    valid_until: sent + self.ttl,
                    next_renew: renew_at,
                }
            }
            (_, Outcome::LeaseGone, State::Candidate { .. } | State::Leader { .. }) => State::Idle { next_try: now },
            (_, Outcome::Unavailable, state) => self.retry_later(action, state, now),
            // Anything else answers a state that is gone (expired meanwhile): keep the current one.
            (_, _, state) => state,
        }
    }

    /// A campaign under `lease` came out as `outcome` (won or lost) while a candidate.
    fn campaigned(&self, lease: LeaseId, outcome: Outcome, now: Duration) -> State {
        let State::Candidate {
            lease: l,
            valid_until,
            next_renew,
            ..
        } = self.state
        else {
            return self.state;
        };
        if l != lease {
            return self.state; // answers a lease that is gone
        }
        match outcome {
            Outcome::Won { term } => State::Leader {
                lease,
                term,
                valid_until,
                next_renew,
            },
            // An earlier campaign of ours created the key and its answer was lost.
            Outcome::Lost { holder_lease, term } if holder_lease == lease => State::Leader {
                lease,
                term,
                valid_until,
                next_renew,
            },
            _ => State::Candidate {
                lease,
                valid_until,
                next_try: now + self.retry,
                next_renew,
            },
        }
    }

    /// The failed `action` is tried again after `retry`; the rest of the schedule stays.
    fn retry_later(&self, action: Action, state: State, now: Duration) -> State {
        let next = now + self.retry;
        match (action, state) {
            (_, State::Idle { .. }) => State::Idle { next_try: next },
            (
                Action::Renew { .. },
                State::Candidate {
                    lease,
                    valid_until,
                    next_try,
                    ..
                },
            ) => State::Candidate {
                lease,
                valid_until,
                next_try,
                next_renew: next,
            },
            (
                _,
                State::Candidate {
                    lease,
                    valid_until,
                    next_renew,
                    ..
                },
            ) => State::Candidate {
                lease,
                valid_until,
                next_try: next,
                next_renew,
            },
            (
                _,
                State::Leader {
                    lease,
                    term,
                    valid_until,
                    ..
                },
            ) => State::Leader {
                lease,
                term,
                valid_until,
                next_renew: next.min(valid_until),
            },
        }
    }
}
