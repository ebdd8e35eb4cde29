//! `patch::Client`: brings an install folder to a release of a repo. It walks the signed metadata
//! (root versions, timestamp, snapshot, manifest), indexes the files already on disk as seeds, plans
//! and fetches only what is missing, builds the new tree in a staging folder and switches `current`
//! to it in one rename. It also fetches single files on demand, fills the rest in the background and
//! verifies or repairs an install.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::apply::{ApplyError, ApplyOptions, ApplyStats, Exec, NoProgress, Pacer, Progress, tmp_name};
use crate::fsx::Stamp;
use crate::install::{self, FileState, Layout, State};
use crate::manifest::Manifest;
use crate::meta::{self, Root, Snapshot, Timestamp};
use crate::plan::{self, Local};
use crate::repo;
use crate::source::{self, FetchError, Source};
use crate::trust::{self, TrustError};

/// A client failure. Whatever it is, the install's `current` tree is as it was.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} is not in the repo")]
    Missing(String),
    #[error("no trusted root for {0}: give the repo's root.json (shipped with the client) the first time")]
    NoRoot(String),
    #[error("the repo has no release yet")]
    NoRelease,
    #[error(
        "release {want} is older than the installed release {have}; a publisher rolls back by publishing a new release"
    )]
    Downgrade { have: u64, want: u64 },
    #[error("nothing is installed in {0}")]
    NotInstalled(String),
    #[error("{path} is not a file of release {seq}")]
    NotInRelease { path: String, seq: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a client runs.
#[derive(Clone)]
pub struct ClientOptions {
    /// Requests in flight at once (default 4).
    pub concurrency: usize,
    /// Download at most this many bytes per second (default: no limit).
    pub rate: Option<u64>,
    pub progress: Arc<dyn Progress>,
    /// The time for expiry checks, Unix seconds (default: the system clock).
    pub now: Option<u64>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            concurrency: 4,
            rate: None,
            progress: Arc::new(NoProgress),
            now: None,
        }
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientOptions({} in flight, rate {:?})", self.concurrency, self.rate)
    }
}

/// What to update to.
#[derive(Debug, Clone, Default)]
pub struct UpdateRequest {
    /// Only files with one of these tags (plus those already installed); `None`: every file.
    pub tags: Option<Vec<String>>,
    /// A given release (default: the snapshot's latest).
    pub release: Option<u64>,
    /// The root to trust when the install has none yet (the bytes of the repo's `root.json`).
    pub root: Option<Vec<u8>>,
}

/// What an update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateOutcome {
    pub from: Option<u64>,
    pub to: u64,
    pub release: String,
    pub up_to_date: bool,
    /// Files in the new tree.
    pub files: usize,
    pub stats: ApplyStats,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub seq: u64,
    pub checked: usize,
    pub damaged: Vec<String>,
    pub repaired: Vec<String>,
}

/// Verified metadata of one refresh.
struct Fresh {
    root: Root,
    root_bytes: Vec<u8>,
    ts_bytes: Vec<u8>,
    snap: Snapshot,
    snap_bytes: Vec<u8>,
}

/// A client of one repo for one install folder.
pub struct Client {
    layout: Layout,
    source: Box<dyn Source>,
    opts: ClientOptions,
    pacer: Option<Arc<Pacer>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Client({} from {})",
            self.layout.dir.display(),
            self.source.describe()
        )
    }
}

/// Content bytes one background-fill step fetches under the lock.
const FILL_STEP: u64 = 64 << 20;

impl Client {
    /// A client for `dir` reading `repo` (`http://...` or a folder).
    pub fn new(dir: &Path, repo: &str, opts: ClientOptions) -> Result<Client, ClientError> {
        Ok(Client::with_source(dir, source::open(repo)?, opts))
    }

    pub fn with_source(dir: &Path, source: Box<dyn Source>, opts: ClientOptions) -> Client {
        let pacer = opts.rate.map(|r| Arc::new(Pacer::new(r)));
        Client {
            layout: Layout { dir: dir.to_path_buf() },
            source,
            opts,
            pacer,
        }
    }

    fn now(&self) -> u64 {
        self.opts.now.unwrap_or_else(repo::unix_now)
    }

    fn apply_opts(&self) -> ApplyOptions {
        ApplyOptions {
            concurrency: self.opts.concurrency,
            pacer: self.pacer.clone(),
            progress: self.opts.progress.clone(),
        }
    }

    /// The folder the game runs from.
    pub fn current(&self) -> PathBuf {
        self.layout.current()
    }

    /// The installed state (release 0 and no files when nothing is installed).
    pub fn state(&self) -> Result<State, ClientError> {
        self.layout.state().map_err(io_err(&self.layout.meta()))
    }

    fn read_local<T: serde::de::DeserializeOwned>(&self, name: &str) -> Option<T> {
        let b = std::fs::read(self.layout.file(name)).ok()?;
        let (_, signed) = meta::open(name, &b).ok()?;
        meta::parse_signed(name, signed).ok()
    }

    /// TUF: walk the root versions, then fetch and check the timestamp and the snapshot.
    fn refresh(&self, pin: Option<&[u8]>) -> Result<Fresh, ClientError> {
        let now = self.now();
        let mut root_bytes = match std::fs::read(self.layout.file("root.json")) {
            Ok(b) => b,
            Err(_) => pin.ok_or_else(|| ClientError::NoRoot(self.source.describe()))?.to_vec(),
        };
        let first = trust::pin_root(&root_bytes)?;
        let mut root = first.clone();
        while let Some(b) = self.source.get(&repo::root_name(root.version + 1), trust::MAX_ROOT)? {
            root = trust::next_root(&root, &b)?;
            root_bytes = b;
        }
        trust::root_is_current(&root, now)?;
        let rotated = trust::online_keys_rotated(&first, &root);
        let (trusted_ts, trusted_snap): (Option<Timestamp>, Option<Snapshot>) = if rotated {
            (None, None)
        } else {
            (self.read_local("timestamp.json"), self.read_local("snapshot.json"))
        };
        let ts_bytes = self
            .source
            .get(repo::TIMESTAMP, trust::MAX_TIMESTAMP)?
            .ok_or_else(|| ClientError::Missing(repo::TIMESTAMP.into()))?;
        let ts = trust::timestamp(&root, &ts_bytes, trusted_ts.as_ref(), now)?;
        let name = repo::snapshot_name(ts.snapshot.version);
        let snap_bytes = self
            .source
            .get(&name, ts.snapshot.length.min(trust::MAX_SNAPSHOT))?
            .ok_or(ClientError::Missing(name))?;
        let snap = trust::snapshot(&root, &ts, &snap_bytes, trusted_snap.as_ref(), now)?;
        Ok(Fresh {
            root,
            root_bytes,
            ts_bytes,
            snap,
            snap_bytes,
        })
    }

    fn save_trust(&self, f: &Fresh) -> Result<(), ClientError> {
        for (name, b) in [
            ("root.json", &f.root_bytes),
            ("timestamp.json", &f.ts_bytes),
            ("snapshot.json", &f.snap_bytes),
        ] {
            let p = self.layout.file(name);
            plumbing::fs::write_atomic(&p, b, 0o600).map_err(|e| ClientError::Io {
                path: p.clone(),
                source: std::io::Error::other(e),
            })?;
        }
        Ok(())
    }

    /// Updates the install to the latest (or the requested) release.
    pub fn update(&self, req: &UpdateRequest) -> Result<UpdateOutcome, ClientError> {
        let _lock = self.layout.lock().map_err(io_err(&self.layout.meta()))?;
        let mut state = self.state()?;
        let fresh = self.refresh(req.root.as_deref())?;
        let seq = req.release.unwrap_or(fresh.snap.latest);
        if seq == 0 {
            return Err(ClientError::NoRelease);
        }
        if seq < state.seq {
            return Err(ClientError::Downgrade {
                have: state.seq,
                want: seq,
            });
        }
        let r = *fresh.snap.releases.get(&seq).ok_or(TrustError::NotListed {
            seq,
            snapshot: fresh.snap.version,
        })?;
        let name = repo::manifest_name(seq, r.version);
        let mbytes = self
            .source
            .get(&name, r.length.min(trust::MAX_MANIFEST))?
            .ok_or(ClientError::Missing(name))?;
        let m = trust::manifest(&fresh.root, &fresh.snap, seq, &mbytes, self.now())?;
        let from = (state.seq > 0).then_some(state.seq);
        if seq == state.seq && self.layout.current_seq() == Some(seq) {
            return self.refresh_same(req, &fresh, &m, &mbytes, &mut state, r);
        }
        let selected = select(&m, req.tags.as_deref(), &state);
        let stats = self.build_release(&m, &selected, &state)?;
        let tree = self.layout.release(seq);
        let mut next = State {
            seq,
            release: m.release.id.clone(),
            manifest: Some(r),
            present: BTreeMap::new(),
        };
        for &i in &selected {
            let f = &m.files[i];
            let stamp = Stamp::of(&tree.join(&f.path)).map_err(io_err(&tree.join(&f.path)))?;
            next.present.insert(f.path.clone(), FileState { hash: f.hash, stamp });
        }
        self.save_trust(&fresh)?;
        self.layout
            .switch(seq, &next, &mbytes)
            .map_err(io_err(&self.layout.dir))?;
        self.cleanup(seq);
        Ok(UpdateOutcome {
            from,
            to: seq,
            release: m.release.id.clone(),
            up_to_date: false,
            files: selected.len(),
            stats,
        })
    }

    /// Already on `seq`: keep the fresher metadata and fetch newly tagged files in place.
    fn refresh_same(
        &self,
        req: &UpdateRequest,
        fresh: &Fresh,
        m: &Manifest,
        mbytes: &[u8],
        state: &mut State,
        r: meta::MetaRef,
    ) -> Result<UpdateOutcome, ClientError> {
        self.save_trust(fresh)?;
        if state.manifest != Some(r) {
            plumbing::fs::write_atomic(&self.layout.file("manifest.json"), mbytes, 0o600).map_err(|e| {
                ClientError::Io {
                    path: self.layout.file("manifest.json"),
                    source: std::io::Error::other(e),
                }
            })?;
            state.manifest = Some(r);
            self.layout.save_state(state).map_err(io_err(&self.layout.meta()))?;
        }
        let want: Vec<String> = select(m, req.tags.as_deref(), state)
            .into_iter()
            .map(|i| m.files[i].path.clone())
            .filter(|p| !state.present.contains_key(p))
            .collect();
        let stats = if want.is_empty() {
            ApplyStats::default()
        } else {
            self.fetch_locked(m, &want, &HashSet::new())?
        };
        let state = self.state()?;
        Ok(UpdateOutcome {
            from: Some(state.seq),
            to: state.seq,
            release: m.release.id.clone(),
            up_to_date: want.is_empty(),
            files: state.present.len(),
            stats,
        })
    }

    /// Builds release `m` (the `selected` files) in its staging tree, reusing what a killed run left.
    fn build_release(&self, m: &Manifest, selected: &[usize], state: &State) -> Result<ApplyStats, ClientError> {
        let seq = m.release.seq;
        let stage = self.layout.stage(seq);
        let tree = stage.join("tree");
        let released = self.layout.release(seq);
        // A tree a killed run finished but did not switch to is picked up again.
        if released.exists() && !tree.exists() {
            std::fs::create_dir_all(&stage).map_err(io_err(&stage))?;
            std::fs::rename(&released, &tree).map_err(io_err(&released))?;
        }
        self.clean_other_stages(seq);
        let mut local = Local::default();
        if let Some(old) = self.layout.manifest().map_err(io_err(&self.layout.meta()))? {
            let files: Vec<_> = old
                .files
                .iter()
                .filter(|f| state.present.contains_key(&f.path))
                .collect();
            install::scan_tree(
                &self.layout.release(state.seq),
                &files,
                &state.present,
                false,
                &mut local,
            );
        }
        // Files already finished in the staging tree are kept if they are right.
        let mut todo = Vec::new();
        for &i in selected {
            let f = &m.files[i];
            let p = tree.join(&f.path);
            match install::chunk_file(&p) {
                Ok((h, _)) if h == f.hash => continue,
                Ok(_) => {
                    let _ = std::fs::remove_file(&p);
                }
                Err(_) => {}
            }
            todo.push(i);
        }
        let in_place: HashMap<usize, Vec<bool>> = todo
            .iter()
            .filter_map(|&i| {
                install::in_place(&stage.join("tmp").join(tmp_name(&m.files[i])), &m.files[i]).map(|v| (i, v))
            })
            .collect();
        let plan = plan::plan(m, &todo, &local, &in_place);
        let exec = Exec {
            m,
            plan: &plan,
            local: &local,
            tmp: stage.join("tmp"),
            out: tree.clone(),
            source: self.source.as_ref(),
            opts: &self.apply_opts(),
        };
        let stats = exec.run()?;
        std::fs::create_dir_all(&tree).map_err(io_err(&tree))?;
        if let Some(d) = released.parent() {
            std::fs::create_dir_all(d).map_err(io_err(d))?;
        }
        std::fs::rename(&tree, &released).map_err(io_err(&released))?;
        Ok(stats)
    }

    fn clean_other_stages(&self, keep: u64) {
        if let Ok(rd) = std::fs::read_dir(self.layout.meta().join("stage")) {
            for e in rd.flatten() {
                if e.file_name().to_str() != Some(&keep.to_string()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }

    /// Removes every release tree but `seq`'s, and its finished staging folder.
    fn cleanup(&self, seq: u64) {
        if let Ok(rd) = std::fs::read_dir(self.layout.meta().join("releases")) {
            for e in rd.flatten() {
                if e.file_name().to_str() != Some(&seq.to_string()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.layout.stage(seq));
    }

    fn installed(&self) -> Result<(State, Manifest), ClientError> {
        let state = self.state()?;
        let m = self.layout.manifest().map_err(io_err(&self.layout.meta()))?;
        match m {
            Some(m) if state.seq > 0 && m.release.seq == state.seq => Ok((state, m)),
            _ => Err(ClientError::NotInstalled(self.layout.dir.display().to_string())),
        }
    }

    /// Brings one file of the installed release at first use (Guild Wars style); returns its path.
    pub fn fetch(&self, path: &str) -> Result<PathBuf, ClientError> {
        let _lock = self.layout.lock().map_err(io_err(&self.layout.meta()))?;
        let (state, m) = self.installed()?;
        if m.file(path).is_none() {
            return Err(ClientError::NotInRelease {
                path: path.into(),
                seq: state.seq,
            });
        }
        let p = self.layout.release(state.seq).join(path);
        let fresh = state
            .present
            .get(path)
            .is_some_and(|k| Stamp::of(&p).is_ok_and(|s| s == k.stamp));
        if !fresh {
            self.fetch_locked(&m, &[path.to_string()], &HashSet::new())?;
        }
        Ok(p)
    }

    /// Fetches `paths` of the installed release into the live tree (each appears whole, by rename).
    /// `suspect` paths are re-read rather than trusted by their stamp.
    fn fetch_locked(
        &self,
        m: &Manifest,
        paths: &[String],
        suspect: &HashSet<String>,
    ) -> Result<ApplyStats, ClientError> {
        let mut state = self.state()?;
        let tree = self.layout.release(state.seq);
        let mut known = state.present.clone();
        known.retain(|p, _| !suspect.contains(p));
        let present: Vec<_> = m.files.iter().filter(|f| state.present.contains_key(&f.path)).collect();
        let mut local = Local::default();
        install::scan_tree(&tree, &present, &known, false, &mut local);
        let idx = install::by_path(m);
        let want: Vec<usize> = paths.iter().filter_map(|p| idx.get(p.as_str()).copied()).collect();
        let stage = self.layout.stage(state.seq).join("tmp");
        let in_place: HashMap<usize, Vec<bool>> = want
            .iter()
            .filter_map(|&i| install::in_place(&stage.join(tmp_name(&m.files[i])), &m.files[i]).map(|v| (i, v)))
            .collect();
        let plan = plan::plan(m, &want, &local, &in_place);
        let exec = Exec {
            m,
            plan: &plan,
            local: &local,
            tmp: stage,
            out: tree.clone(),
            source: self.source.as_ref(),
            opts: &self.apply_opts(),
        };
        let stats = exec.run()?;
        for &i in &want {
            let f = &m.files[i];
            let stamp = Stamp::of(&tree.join(&f.path)).map_err(io_err(&tree.join(&f.path)))?;
            state.present.insert(f.path.clone(), FileState { hash: f.hash, stamp });
        }
        self.layout.save_state(&state).map_err(io_err(&self.layout.meta()))?;
        let _ = std::fs::remove_dir_all(self.layout.stage(state.seq));
        Ok(stats)
    }

    /// Fetches every file of the installed release that is not there yet, in priority order, a step
    /// at a time (so `fetch` calls get their turn), until done or `stop` is set. Throttled by the
    /// client's rate. Returns the files fetched.
    pub fn fill(&self, stop: &AtomicBool) -> Result<usize, ClientError> {
        let mut done = 0;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(done);
            }
            let _lock = self.layout.lock().map_err(io_err(&self.layout.meta()))?;
            let (state, m) = self.installed()?;
            let mut missing: Vec<&crate::manifest::FileEntry> = m
                .files
                .iter()
                .filter(|f| !state.present.contains_key(&f.path))
                .collect();
            if missing.is_empty() {
                return Ok(done);
            }
            missing.sort_by(|a, b| (a.priority, &a.path).cmp(&(b.priority, &b.path)));
            let mut step = Vec::new();
            let mut bytes = 0;
            for f in missing {
                if bytes >= FILL_STEP && !step.is_empty() {
                    break;
                }
                bytes += f.size;
                step.push(f.path.clone());
            }
            self.fetch_locked(&m, &step, &HashSet::new())?;
            done += step.len();
        }
    }

    /// Re-reads every installed file and compares it with the manifest; `repair` fetches the
    /// damaged ones again (each replaced whole, by rename).
    pub fn verify(&self, repair: bool) -> Result<VerifyReport, ClientError> {
        let _lock = self.layout.lock().map_err(io_err(&self.layout.meta()))?;
        let (state, m) = self.installed()?;
        let tree = self.layout.release(state.seq);
        let present: Vec<_> = m.files.iter().filter(|f| state.present.contains_key(&f.path)).collect();
        let scanned = install::scan_tree(&tree, &present, &state.present, true, &mut Local::default());
        let mut report = VerifyReport {
            seq: state.seq,
            checked: present.len(),
            damaged: scanned.damaged.clone(),
            repaired: Vec::new(),
        };
        if repair && !report.damaged.is_empty() {
            let suspect: HashSet<String> = report.damaged.iter().cloned().collect();
            self.fetch_locked(&m, &report.damaged, &suspect)?;
            report.repaired = report.damaged.clone();
        } else if !scanned.good.is_empty() {
            // Refresh the stamps of the files that checked out.
            let mut st = state.clone();
            for (p, fs) in scanned.good {
                st.present.insert(p, fs);
            }
            self.layout.save_state(&st).map_err(io_err(&self.layout.meta()))?;
        }
        Ok(report)
    }
}

/// The files an update installs: all, or those with one of `tags` plus those already installed.
fn select(m: &Manifest, tags: Option<&[String]>, state: &State) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..m.files.len())
        .filter(|&i| {
            let f = &m.files[i];
            match tags {
                None => true,
                Some(t) => f.tags.iter().any(|x| t.contains(x)) || state.present.contains_key(&f.path),
            }
        })
        .collect();
    idx.sort_by(|&a, &b| (m.files[a].priority, &m.files[a].path).cmp(&(m.files[b].priority, &m.files[b].path)));
    idx
}
