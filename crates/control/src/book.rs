//! The rollout machine with its journal: every change is journaled before anything acts on it.
//! Beside the state, the state the world has caught up with (what the API shows).

use std::collections::BTreeMap;
use std::path::Path;

use rollout::{Event, Refused, Service, Update};
use wire::agent::InstanceTemplate;

use crate::journal::{Journal, JournalError};

/// Why a command could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Refused(#[from] Refused),
    #[error("{0}")]
    NotFound(String),
    #[error("the journal could not record it, nothing changed: {0}")]
    Journal(#[from] JournalError),
    #[error("the data is not ready for this release, nothing started: {0}")]
    Data(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}; nothing started")]
    Hook(String),
}

/// The machine, its journal, and what is published.
#[derive(Debug)]
pub(crate) struct Book {
    state: Service,
    /// The state as of the last turn whose route table the router confirmed: what the API shows, so a deploy is
    /// never reported further than its routes.
    published: Service,
    journal: Journal,
    /// Sequence number of the last journaled event.
    seq: i64,
    /// What the journal's deploys recorded of their templates.
    templates: Templates,
}

/// Per release, the instance template its last deploy recorded; per deploy, what it changed (in words). Built
/// from the journaled `Deploy` events, so a restarted control plane has the same.
#[derive(Debug, Default)]
pub(crate) struct Templates {
    pub by_release: BTreeMap<String, InstanceTemplate>,
    pub changes: BTreeMap<i64, Vec<String>>,
}

impl Templates {
    /// Notes an accepted event (`st` is the state after it).
    fn note(&mut self, ev: &Event, st: &Service) {
        let Event::Deploy {
            release,
            template: Some(t),
            ..
        } = ev
        else {
            return;
        };
        if let Some(d) = st.deploy.as_ref().filter(|d| &d.release == release) {
            let old = d.from.as_ref().and_then(|f| self.by_release.get(f));
            let changes = old.map(|o| crate::template::changes(o, t)).unwrap_or_default();
            self.changes.insert(d.id, changes);
        }
        self.by_release.insert(release.clone(), (**t).clone());
    }
}

impl Book {
    /// Opens the journal and replays it through the machine.
    pub fn open(path: &Path) -> Result<Book, JournalError> {
        let journal = Journal::open(path)?;
        let mark = journal.published()?;
        let events = journal.events()?;
        let mut state = Service::default();
        let mut published = None;
        let mut seq = 0;
        let mut templates = Templates::default();
        for (s, ev, at) in &events {
            if *s > mark && published.is_none() {
                published = Some(state.clone());
            }
            // Replay goes through the same function; a journaled event was accepted once.
            if state.on(ev, *at).is_ok() {
                templates.note(ev, &state);
            }
            seq = *s;
        }
        if !events.is_empty() {
            let deploy = state.active().map(|d| d.id);
            tracing::info!(events = events.len(), current = ?state.current, ?deploy, "journal replayed");
        }
        Ok(Book {
            published: published.unwrap_or_else(|| state.clone()),
            state,
            journal,
            seq,
            templates,
        })
    }

    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    pub fn state(&self) -> &Service {
        &self.state
    }

    pub fn published(&self) -> &Service {
        &self.published
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The state and the last event it comes from, to publish once the world caught up with it.
    pub fn snapshot(&self) -> (Service, i64) {
        (self.state.clone(), self.seq)
    }

    /// Applies an event; journals it before anything acts on it (a journal failure changes nothing).
    pub fn apply(&mut self, ev: &Event, now: u64) -> Result<Update, CommandError> {
        let before = self.state.clone();
        let update = self.state.on(ev, now)?;
        if update.changed {
            match self.journal.append(ev, now) {
                Ok(seq) => self.seq = seq,
                Err(e) => {
                    self.state = before;
                    return Err(e.into());
                }
            }
            self.templates.note(ev, &self.state);
        }
        Ok(update)
    }

    /// `st`, as of event `seq`, is what the world now runs: the API shows it, and so will a restarted control plane.
    pub fn publish(&mut self, st: Service, seq: i64) -> Result<(), JournalError> {
        if st != self.published {
            self.journal.mark_published(seq)?;
            self.published = st;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use rollout::{GroupObs, Phase, Plan, Transition};
    use wire::service::{DeployPhase, Strategy};

    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("slipway-book-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("journal.sqlite")
    }

    /// The journal the code at 9ba8ce0 (format 0) wrote for five deploys, dumped with `sqlite3 .dump`.
    fn format_0(name: &str) -> PathBuf {
        let path = temp(name);
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(include_str!("../tests/fixtures/journal-v0.sql"))
            .unwrap();
        path
    }

    fn user_version(path: &Path) -> i64 {
        let db = rusqlite::Connection::open(path).unwrap();
        db.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap()
    }

    fn rendered(d: &rollout::Deploy) -> Vec<String> {
        d.log
            .iter()
            .map(|(at, t)| format!("+{}s {t}", at.saturating_sub(d.started_ms) / 1000))
            .collect()
    }

    #[test]
    fn a_journal_written_before_formats_were_versioned_is_upgraded_and_replays_to_the_same_deploys() {
        let path = format_0("v0");
        assert_eq!(user_version(&path), 0);
        let book = Book::open(&path).unwrap();
        assert_eq!(user_version(&path), crate::journal::FORMAT);
        let st = book.state();
        assert_eq!(
            (st.current.as_deref(), st.previous.as_deref()),
            (Some("v2"), Some("v3"))
        );
        let d = st.active().expect("deploy 5 is running");
        assert_eq!((d.id, d.release.as_str(), d.phase.kind()), (5, "v4", DeployPhase::Step));
        assert_eq!(book.published(), st, "format 0 showed the whole journal");
        // Each deploy's story, told by today's transitions, reads as the old code wrote it.
        let history: BTreeMap<i64, Vec<String>> = book
            .journal()
            .deploys(10)
            .unwrap()
            .into_iter()
            .map(|i| (i.id, i.events))
            .collect();
        assert_eq!(history.len(), 5);
        let mut replay = Service::default();
        let mut told = BTreeMap::new();
        for (_, ev, at) in book.journal().events().unwrap() {
            replay.on(&ev, at).unwrap();
            let d = replay.deploy.as_ref().unwrap();
            told.insert(d.id, rendered(d));
        }
        assert_eq!(told, history);
        drop(book);
        let again = Book::open(&path).unwrap();
        assert_eq!(again.state(), &replay, "an upgraded journal opens as it is");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_journal_from_a_newer_slipway_is_refused_with_its_format_and_left_as_it_is() {
        let path = temp("newer");
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch("CREATE TABLE events2 (x); PRAGMA user_version = 7;")
            .unwrap();
        drop(db);
        let err = Book::open(&path).unwrap_err();
        assert!(matches!(err, JournalError::Newer { found: 7, .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("journal format 7, newer than the {}", crate::journal::FORMAT)),
            "{msg}"
        );
        assert_eq!(user_version(&path), 7);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_format_2_journal_is_upgraded_replays_the_same_and_its_releases_have_no_recorded_template() {
        let path = temp("v2");
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(include_str!("../tests/fixtures/journal-v2.sql"))
            .unwrap();
        drop(db);
        assert_eq!(user_version(&path), 2);
        let v0 = Book::open(&format_0("v0-for-v2")).unwrap();
        let book = Book::open(&path).unwrap();
        assert_eq!(user_version(&path), crate::journal::FORMAT);
        assert_eq!(book.state(), v0.state(), "the same events, the same state");
        assert!(
            book.templates().by_release.is_empty(),
            "the agent's template serves them"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_deploy_records_its_template_and_its_changes_and_a_reopened_journal_has_both() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp("templates");
        let mut book = Book::open(&path).unwrap();
        let with_token = |token: &str| {
            let mut t = InstanceTemplate::default();
            t.env.insert("TOKEN".into(), token.into());
            t.env.insert("MODE".into(), "a".into());
            Some(Box::new(t))
        };
        let deploy = |release: &str, template| Event::Deploy {
            release: release.into(),
            strategy: Strategy::Canary,
            plan: plan(),
            template,
        };
        book.apply(&deploy("v1", with_token("first-secret")), 1_000).unwrap();
        let ready = Event::Groups {
            groups: vec![GroupObs {
                release: "v1".into(),
                group: "v1".into(),
                live: 1,
                ready: 1,
                failed: None,
            }],
        };
        book.apply(&ready, 2_000).unwrap();
        assert_eq!(book.state().current.as_deref(), Some("v1"));
        book.apply(&deploy("v2", with_token("second-secret")), 3_000).unwrap();
        let check = |b: &Book| {
            let t = &b.templates();
            assert_eq!(t.by_release["v1"].env["TOKEN"], "first-secret");
            assert_eq!(t.by_release["v2"].env["TOKEN"], "second-secret");
            assert_eq!(t.changes[&1], Vec::<String>::new(), "nothing to compare the first with");
            assert_eq!(t.changes[&2], ["env TOKEN changed"]);
        };
        check(&book);
        drop(book);
        check(&Book::open(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the journal holds env values");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    fn plan() -> Plan {
        Plan {
            count: 1,
            steps: vec![(10, 1_000)],
            canary_count: 1,
            fresh_baseline: false,
            extension_ms: 1_000,
            max_extensions: 0,
            continue_when_inconclusive: false,
            max_surge: 1,
            max_unavailable: 0,
            bake_ms: 0,
            check_ms: 0,
            rollback_window_ms: 0,
            drain_deadline_ms: 0,
            session_idle_ms: 0,
            start_timeout_ms: 60_000,
            pre_traffic: false,
        }
    }

    #[test]
    fn a_restarted_control_plane_shows_what_was_published_not_what_was_only_journaled() {
        let path = temp("published");
        let mut book = Book::open(&path).unwrap();
        let deploy = |release: &str| Event::Deploy {
            release: release.into(),
            strategy: Strategy::Canary,
            plan: plan(),
            template: None,
        };
        book.apply(&deploy("v1"), 1_000).unwrap();
        let ready = Event::Groups {
            groups: vec![GroupObs {
                release: "v1".into(),
                group: "v1".into(),
                live: 1,
                ready: 1,
                failed: None,
            }],
        };
        let u = book.apply(&ready, 2_000).unwrap();
        assert!(u.transitions.contains(&Transition::Promoted { release: "v1".into() }));
        let (st, seq) = book.snapshot();
        book.publish(st, seq).unwrap();
        // Journaled, but the router never confirmed its routes.
        book.apply(&deploy("v2"), 3_000).unwrap();
        assert_eq!(book.published().current.as_deref(), Some("v1"));
        drop(book);
        let book = Book::open(&path).unwrap();
        assert_eq!(book.state().active().map(|d| d.release.as_str()), Some("v2"));
        let shown = book.published();
        assert!(shown.active().is_none(), "{:?}", shown.deploy);
        assert_eq!(shown.deploy.as_ref().map(|d| (d.id, &d.phase)), Some((1, &Phase::Done)));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
