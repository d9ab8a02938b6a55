//! The promoter: worker threads that copy source files into the cache.
//!
//! Requests come on three crossbeam channels, taken in priority order (explicit
//! `cachefs promote` first, then policy, then prefetch). Each path has at most one job
//! in flight (invariant 6): a second request for it joins the first. A job copies with
//! `copy_file_range` where the two filesystems allow it and `pread`/`pwrite` where they
//! do not (EXDEV), in chunks that it writes back and drops from the page cache as it
//! goes, under a shared token-bucket rate limit. It publishes only a whole copy of a
//! source that did not change while it was read (invariant 4).
//!
//! A copy starts at `start_hint`, the offset a foreground reader is at, and wraps
//! around: the reader and the promoter then read the same pages of a slow source once,
//! instead of competing for its bandwidth. While a reader is active, the source's pages
//! are left in the page cache for it.
//!
//! A media file's sidecars (`policy::sidecar`: its subtitles and `.nfo`) are part of its
//! job: the worker lists the directory in SOURCE as the job starts (the same listing
//! feeds the prefetch), and once the media file is published it copies each sidecar that
//! has no valid copy yet, as a job of its own in the in-flight map (so it is copied once,
//! and shows in the status). A sidecar's job still waiting in a queue is taken over and
//! copied at once, so a single worker never waits for itself; one another worker is
//! copying is waited for, after this worker's own, and a sidecar's copy never waits for
//! anything. The media file's job ends (and `promote --wait` returns) after its sidecars.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::num::NonZeroU64;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select_biased};
use parking_lot::{Condvar, Mutex};

use rustix::fs::{Advice, FallocateFlags, FileType};
use rustix::io::Errno;

use super::store::{self, Provenance, Store, parent_of};
use crate::policy::sidecar;
use crate::{fdio, sys};

const CHUNK: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Explicit = 0,
    Policy = 1,
    Prefetch = 2,
}

/// One file's promotion, shared by everyone who asked for it.
pub struct Job {
    pub rel: PathBuf,
    pub bytes_done: AtomicU64,
    /// The source's size, set when the copy starts.
    pub bytes_total: AtomicU64,
    /// When the copy started (room made, temporary file allocated): the status's rate and
    /// ETA count from here, not from the wait in the queue.
    started: OnceLock<Instant>,
    /// Where a foreground reader was when it asked; the copy starts there.
    start_hint: AtomicU64,
    /// A foreground reader is using the file: keep its source pages cached.
    pub reader_active: AtomicBool,
    /// How many next files of the same directory to queue (prefetch) when the job starts.
    prefetch: usize,
    /// A worker has taken the job: from its queue, or to copy it as a media file's
    /// sidecar (see the module's doc). Whoever sets it runs the job.
    claimed: AtomicBool,
    /// The jobs of the sidecars this (media file's) job brought, set before it finishes.
    sidecars: Mutex<Vec<Arc<Job>>>,
    cancelled: AtomicBool,
    /// Cancelled because the source's bytes are being changed through the mount (not
    /// merely moved): a copy published despite the cancel must go.
    changed: AtomicBool,
    outcome: Mutex<Option<Result<(), String>>>,
    finished: Condvar,
}

impl Job {
    fn new(rel: PathBuf, prefetch: usize, start: u64, reader: bool) -> Job {
        Job {
            rel,
            prefetch,
            claimed: AtomicBool::new(false),
            sidecars: Mutex::new(Vec::new()),
            bytes_done: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            started: OnceLock::new(),
            start_hint: AtomicU64::new(start),
            reader_active: AtomicBool::new(reader),
            cancelled: AtomicBool::new(false),
            changed: AtomicBool::new(false),
            outcome: Mutex::new(None),
            finished: Condvar::new(),
        }
    }

    /// Waits up to `timeout` for the outcome; `None` while still running.
    pub fn wait(&self, timeout: Duration) -> Option<Result<(), String>> {
        let mut o = self.outcome.lock();
        if o.is_none() {
            self.finished.wait_for(&mut o, timeout);
        }
        o.clone()
    }

    /// The outcome, without waiting; `None` while it runs or waits.
    pub fn outcome(&self) -> Option<Result<(), String>> {
        self.outcome.lock().clone()
    }

    /// When its copy started; `None` while it waits for a worker or for room.
    pub fn started(&self) -> Option<Instant> {
        self.started.get().copied()
    }

    /// The jobs of the sidecars that came with this media file's; complete once the job
    /// has finished.
    pub fn sidecars(&self) -> Vec<Arc<Job>> {
        self.sidecars.lock().clone()
    }

    /// Waits for the outcome, however long the copy takes.
    fn wait_done(&self) -> Result<(), String> {
        loop {
            if let Some(r) = self.wait(Duration::from_secs(1)) {
                return r;
            }
        }
    }

    fn finish(&self, r: Result<(), String>) {
        *self.outcome.lock() = Some(r);
        self.finished.notify_all();
    }
}

/// What the promoter asks of, and tells, the rest of the daemon.
pub trait Events: Send + Sync + 'static {
    /// Makes room for a copy of `size` bytes within the cache's limits, evicting as
    /// needed, then calls `alloc` (which creates and allocates the temporary file) in the
    /// same step. `Err(reason)` if the copy cannot fit.
    fn reserve(
        &self,
        rel: &Path,
        size: u64,
        alloc: &mut dyn FnMut() -> io::Result<()>,
    ) -> Result<(), String>;
    /// A reserved copy failed; `no_space` if the cache filesystem ran out of room.
    fn release(&self, size: u64, no_space: bool);
    /// A copy of `rel` was published (its reservation becomes a cached copy).
    fn published(&self, rel: &Path, prov: &Provenance, size: u64);
    /// A copy just published was cancelled as it was published (a write began): it goes.
    /// Fakes that keep no copies need not care.
    fn withdrawn(&self, _rel: &Path) {}
    /// Whether copies may be made at all.
    fn usable(&self) -> bool;
}

/// Who decides whether a finished copy may be published: the owner of the source
/// object's state (the overlay's `Objects`). A copy is published only if its object did
/// not change through the mount, nor was open for writing, from `copy_started` to the
/// publish, which runs under the owner's lock, so no write can begin between the check
/// and the rename.
pub trait Gate: Send + Sync {
    /// A copy of `obj` (st_dev, st_ino) starts: a token for `copy_ended`; or, while the
    /// object is open for writing (no copy is made then), `Err(closing)`: whether every
    /// writer has been closed by its process (the kernel has yet to release it).
    fn copy_started(&self, obj: (u64, u64)) -> Result<u64, bool>;
    /// The copy ends: `publish` runs if the object is unchanged since `started`. Returns
    /// whether it ran (and its error, if it failed).
    fn copy_ended(
        &self,
        obj: (u64, u64),
        started: u64,
        publish: Option<&mut dyn FnMut() -> io::Result<()>>,
    ) -> io::Result<bool>;
}

/// A copy counted in by `Gate::copy_started`, counted out when dropped unpublished.
struct Gated<'a> {
    gate: Option<&'a dyn Gate>,
    obj: (u64, u64),
    started: u64,
}

impl Gated<'_> {
    /// Publishes through the gate (or directly, without one). `Ok(false)`: the object
    /// changed meanwhile.
    fn publish(mut self, publish: &mut dyn FnMut() -> io::Result<()>) -> io::Result<bool> {
        match self.gate.take() {
            Some(g) => g.copy_ended(self.obj, self.started, Some(publish)),
            None => publish().map(|()| true),
        }
    }
}

impl Drop for Gated<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.gate.take() {
            let _ = g.copy_ended(self.obj, self.started, None);
        }
    }
}

/// The promoter's counters, since the mount started.
#[derive(Default)]
pub struct Stats {
    pub done: AtomicU64,
    pub failed: AtomicU64,
    /// Bytes of the copies published.
    pub done_bytes: AtomicU64,
    /// Bytes read from SOURCE by every copy, published, failed or cancelled.
    pub read_bytes: AtomicU64,
}

/// A token bucket shared by all workers: `rate` bytes per second, 0 for unlimited.
struct RateLimit {
    rate: u64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    fn new(rate: u64) -> RateLimit {
        RateLimit {
            rate,
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    /// Takes `n` bytes' worth of tokens, sleeping while the bucket is short.
    fn take(&self, n: u64) {
        if self.rate == 0 {
            return;
        }
        let wait = {
            let mut s = self.state.lock();
            let now = Instant::now();
            let rate = self.rate as f64;
            // At most one second of burst.
            s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * rate).min(rate);
            s.1 = now;
            s.0 -= n as f64;
            if s.0 < 0.0 { -s.0 / rate } else { 0.0 }
        };
        if wait > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
    }
}

struct Shared {
    senders: [Sender<Arc<Job>>; 3],
    source: OwnedFd,
    store: Arc<Store>,
    events: Arc<dyn Events>,
    inflight: Mutex<HashMap<PathBuf, Arc<Job>>>,
    queued: AtomicU64,
    /// Set at a clean stop: no new copy starts.
    stopping: AtomicBool,
    stats: Stats,
    limit: RateLimit,
    gate: OnceLock<Arc<dyn Gate>>,
}

/// The workers hold the senders too (they queue prefetches), so they run for the life
/// of the process; a clean stop cancels their jobs instead.
pub struct Promoter {
    shared: Arc<Shared>,
}

impl Promoter {
    /// Starts `threads` workers copying from `source` (an `O_PATH` directory descriptor
    /// of SOURCE's root) into `store`.
    pub fn start(
        source: OwnedFd,
        store: Arc<Store>,
        events: Arc<dyn Events>,
        threads: usize,
        bandwidth: u64,
    ) -> io::Result<Promoter> {
        let chans = [(); 3].map(|()| crossbeam_channel::unbounded::<Arc<Job>>());
        let shared = Arc::new(Shared {
            senders: [chans[0].0.clone(), chans[1].0.clone(), chans[2].0.clone()],
            source,
            store,
            events,
            inflight: Mutex::new(HashMap::new()),
            queued: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            stats: Stats::default(),
            limit: RateLimit::new(bandwidth),
            gate: OnceLock::new(),
        });
        for i in 0..threads.max(1) {
            let rx: [Receiver<Arc<Job>>; 3] =
                [chans[0].1.clone(), chans[1].1.clone(), chans[2].1.clone()];
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("promote-{i}"))
                .spawn(move || worker(&shared, &rx))?;
        }
        Ok(Promoter { shared })
    }

    /// Asks for `rel` to be promoted; joins the job in flight if there is one.
    pub fn request(&self, rel: &Path, priority: Priority) -> Arc<Job> {
        self.shared.request_with(rel, priority, 0, 0, false)
    }

    /// The policy's request for a file a reader is playing, at `offset`: the copy starts
    /// there (set before any worker can see the job), the reader's pages are left cached,
    /// and when the copy starts the worker queues the next `prefetch` files of the same
    /// directory, so that directory listing never runs on the reader's thread.
    pub fn request_for_reader(&self, rel: &Path, offset: u64, prefetch: usize) -> Arc<Job> {
        self.shared
            .request_with(rel, Priority::Policy, prefetch, offset, true)
    }

    /// The sidecars of the media file `rel` in SOURCE now (none for a sidecar, or if its
    /// directory cannot be listed).
    pub fn sidecars_in_source(&self, rel: &Path) -> Vec<PathBuf> {
        let (Some(name), parent) = (rel.file_name(), parent_of(rel)) else {
            return Vec::new();
        };
        if sidecar::is_sidecar(name) {
            return Vec::new();
        }
        let names = self.shared.list_files(parent).unwrap_or_default();
        sidecar::of(name, names.iter().map(|n| n.as_os_str()))
            .into_iter()
            .map(|s| parent.join(s))
            .collect()
    }

    /// Cancels the job for `rel`, if any: the source is being changed through the mount.
    pub fn cancel(&self, rel: &Path) {
        if let Some(job) = self.shared.inflight.lock().get(rel) {
            job.changed.store(true, Ordering::SeqCst);
            job.cancelled.store(true, Ordering::SeqCst);
        }
    }

    /// Cancels every job at or below `rel` (a directory renamed or removed).
    pub fn cancel_below(&self, rel: &Path) {
        for (p, job) in self.shared.inflight.lock().iter() {
            if p.starts_with(rel) {
                job.cancelled.store(true, Ordering::SeqCst);
            }
        }
    }

    /// A clean stop: cancels every job and waits up to `timeout` for the workers to let
    /// go of their temporary files.
    pub fn stop(&self, timeout: Duration) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        for job in self.shared.inflight.lock().values() {
            job.cancelled.store(true, Ordering::SeqCst);
        }
        let end = Instant::now() + timeout;
        while !self.running().is_empty() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Installs the gate every publish goes through (once; the daemon's overlay).
    pub fn set_gate(&self, gate: Arc<dyn Gate>) {
        let _ = self.shared.gate.set(gate);
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> u64 {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Jobs being copied now.
    pub fn running(&self) -> Vec<Arc<Job>> {
        self.shared
            .inflight
            .lock()
            .values()
            .filter(|j| j.started().is_some())
            .cloned()
            .collect()
    }
}

impl Shared {
    fn request_with(
        &self,
        rel: &Path,
        priority: Priority,
        prefetch: usize,
        start: u64,
        reader: bool,
    ) -> Arc<Job> {
        let mut inflight = self.inflight.lock();
        // A job cancelled by a change through the mount will publish nothing: a request
        // made after the change gets a job of its own, which replaces it.
        if let Some(job) = inflight
            .get(rel)
            .filter(|j| !j.cancelled.load(Ordering::Relaxed))
        {
            if reader {
                job.reader_active.store(true, Ordering::Relaxed);
            }
            return job.clone();
        }
        let job = Arc::new(Job::new(rel.to_path_buf(), prefetch, start, reader));
        inflight.insert(rel.to_path_buf(), job.clone());
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.senders[priority as usize].send(job.clone()).is_err() {
            // No worker left.
            inflight.remove(rel);
            self.queued.fetch_sub(1, Ordering::Relaxed);
            job.finish(Err("the promoter has stopped".into()));
        }
        job
    }

    /// The names of the regular files of `dir` in SOURCE.
    fn list_files(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let entries = store::open_dir_below(self.source.as_fd(), dir)
            .and_then(|d| fdio::read_dir(d.as_fd()))?;
        Ok(entries
            .into_iter()
            .filter(|e| e.kind == FileType::RegularFile)
            .map(|e| e.name)
            .collect())
    }

    /// Queues the `n` files that follow `rel` among `names` (its directory's files; same
    /// extension, natural order) as prefetches.
    fn prefetch_after(&self, rel: &Path, names: &[OsString], n: usize) {
        let Some(name) = rel.file_name() else { return };
        let names: Vec<&OsStr> = names.iter().map(|n| n.as_os_str()).collect();
        for next in crate::policy::next_files(name, &names, n) {
            self.request_with(&parent_of(rel).join(next), Priority::Prefetch, 0, 0, false);
        }
    }

    /// Whether `rel` has a copy that matches its source now.
    fn has_valid_copy(&self, rel: &Path) -> bool {
        store::open_below(self.source.as_fd(), rel)
            .and_then(|src| Ok(rustix::fs::fstat(&src)?))
            .and_then(|st| self.store.lookup(rel, &Provenance::of(&st)))
            .is_ok_and(|l| matches!(l, store::Lookup::Hit(_)))
    }

    /// Runs a job its worker has claimed: copies the file, then (a media file) copies its
    /// sidecars, then finishes it.
    fn run(&self, job: &Arc<Job>) {
        let live = || !job.cancelled.load(Ordering::Relaxed);
        // A media file's directory, listed once: for the prefetch and for its sidecars.
        let names = match job.rel.file_name() {
            Some(name) if !sidecar::is_sidecar(name) && live() => {
                match self.list_files(parent_of(&job.rel)) {
                    Ok(names) => Some(names),
                    Err(e) => {
                        tracing::debug!("no prefetch nor sidecars for {}: {e}", job.rel.display());
                        None
                    }
                }
            }
            _ => None,
        };
        if let Some(names) = &names
            && job.prefetch > 0
            && live()
        {
            self.prefetch_after(&job.rel, names, job.prefetch);
        }
        let r = self.copy_job(job);
        // Not for a copy cancelled meanwhile: withdrawn, or moved with its name.
        if r.is_ok()
            && live()
            && let Some(names) = &names
        {
            self.bring_sidecars(job, names);
        }
        let mut inflight = self.inflight.lock();
        // Unless a later request has replaced this (cancelled) job.
        if inflight.get(&job.rel).is_some_and(|j| Arc::ptr_eq(j, job)) {
            inflight.remove(&job.rel);
        }
        drop(inflight);
        job.finish(r);
    }

    /// Copies the sidecars of `job`'s media file found among `names` that have no valid
    /// copy, each as a job in the in-flight map: a new one, or the one already there
    /// (taken over if it still waits in a queue, else waited for). See the module's doc.
    fn bring_sidecars(&self, job: &Job, names: &[OsString]) {
        let Some(name) = job.rel.file_name() else {
            return;
        };
        let parent = parent_of(&job.rel);
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        for s in sidecar::of(name, names.iter().map(|n| n.as_os_str())) {
            let rel = parent.join(s);
            if self.has_valid_copy(&rel) {
                continue;
            }
            let mut inflight = self.inflight.lock();
            match inflight
                .get(&rel)
                .filter(|j| !j.cancelled.load(Ordering::Relaxed))
            {
                Some(j) if !j.claimed.swap(true, Ordering::SeqCst) => {
                    // Out of its queue: its worker will skip it.
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    mine.push(j.clone());
                }
                Some(j) => theirs.push(j.clone()),
                None => {
                    let j = Arc::new(Job::new(rel.clone(), 0, 0, false));
                    j.claimed.store(true, Ordering::SeqCst);
                    inflight.insert(rel, j.clone());
                    mine.push(j);
                }
            }
        }
        *job.sidecars.lock() = mine.iter().chain(&theirs).cloned().collect();
        for j in &mine {
            self.run(j);
        }
        for j in &theirs {
            let _ = j.wait_done();
        }
    }

    /// Copies a claimed job's file (or gives up on a cancelled one), and counts and logs
    /// the outcome.
    fn copy_job(&self, job: &Job) -> Result<(), String> {
        let r = if job.cancelled.load(Ordering::Relaxed) || self.stopping.load(Ordering::Relaxed) {
            job.cancelled.store(true, Ordering::SeqCst);
            Err("cancelled".to_string())
        } else if !self.events.usable() {
            Err("the cache is unusable".to_string())
        } else {
            copy(self, job).map_err(|e| e.to_string())
        };
        match &r {
            Ok(()) => {
                self.stats.done.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .done_bytes
                    .fetch_add(job.bytes_total.load(Ordering::Relaxed), Ordering::Relaxed);
                tracing::info!("promoted {}", job.rel.display());
            }
            Err(e) if job.cancelled.load(Ordering::Relaxed) => {
                tracing::debug!("promotion of {} cancelled: {e}", job.rel.display());
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("cannot promote {}: {e}", job.rel.display());
            }
        }
        r
    }
}

fn worker(shared: &Shared, rx: &[Receiver<Arc<Job>>; 3]) {
    loop {
        let job = select_biased! {
            recv(rx[0]) -> j => j,
            recv(rx[1]) -> j => j,
            recv(rx[2]) -> j => j,
        };
        let Ok(job) = job else { return };
        // Taken over as a media file's sidecar: that worker counted it out of the queue.
        if job.claimed.swap(true, Ordering::SeqCst) {
            continue;
        }
        shared.queued.fetch_sub(1, Ordering::Relaxed);
        shared.run(&job);
    }
}

/// How long a copy waits for writers of its file that their processes have closed: the
/// kernel tells the daemon of a close (RELEASE) just after close(2) returns, so a read or
/// a `cachefs promote` right after a writer's close must not find it still open and give
/// up. A writer still open fails the copy at once.
const WRITER_WAIT: Duration = Duration::from_millis(500);

/// `Gate::copy_started`, waiting up to `WRITER_WAIT` for writers that are closing.
fn start_when_no_writer(
    shared: &Shared,
    job: &Job,
    gate: &dyn Gate,
    obj: (u64, u64),
) -> io::Result<u64> {
    let end = Instant::now() + WRITER_WAIT;
    loop {
        match gate.copy_started(obj) {
            Ok(started) => return Ok(started),
            Err(true) if Instant::now() < end => {}
            Err(_) => return Err(io::Error::other("the file is open for writing")),
        }
        if job.cancelled.load(Ordering::Relaxed) || shared.stopping.load(Ordering::Relaxed) {
            return Err(cancelled());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn cancelled() -> io::Error {
    io::Error::new(
        io::ErrorKind::Interrupted,
        "cancelled: the file changed through the mount",
    )
}

fn changed() -> io::Error {
    io::Error::other("the source changed while it was copied")
}

/// Copies one file into a temporary file and publishes it.
fn copy(shared: &Shared, job: &Job) -> io::Result<()> {
    let src = store::open_below(shared.source.as_fd(), &job.rel)?;
    let before = rustix::fs::fstat(&src)?;
    if before.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::other("not a regular file"));
    }
    let total = before.st_size as u64;
    let obj = (before.st_dev, before.st_ino);
    let gate = shared.gate.get().map(|g| g.as_ref());
    let gated = Gated {
        gate,
        obj,
        started: match gate {
            Some(g) => start_when_no_writer(shared, job, g, obj)?,
            None => 0,
        },
    };
    let mut temp = None;
    shared
        .events
        .reserve(&job.rel, total, &mut || {
            let (f, name) = shared.store.temp_file()?;
            // Allocating the whole size now makes a full disk fail here, not mid-copy.
            if let Err(e) = allocate(&f, total) {
                shared.store.discard_temp(&name);
                return Err(e);
            }
            temp = Some((f, name));
            Ok(())
        })
        .map_err(io::Error::other)?;
    let Some((tmp, tmp_name)) = temp else {
        return Err(io::Error::other("no temporary file was made"));
    };
    job.bytes_total.store(total, Ordering::Relaxed);
    let _ = job.started.set(Instant::now());
    let r = copy_into(shared, job, &src, &tmp, total).and_then(|()| {
        tmp.sync_all()?;
        let after = rustix::fs::fstat(&src)?;
        // Still the same file, unchanged, and still at the same path.
        let now_at_path = rustix::fs::fstat(store::open_below(shared.source.as_fd(), &job.rel)?)?;
        let prov = Provenance::of(&before);
        if Provenance::of(&after) != prov || Provenance::of(&now_at_path) != prov {
            return Err(changed());
        }
        if job.cancelled.load(Ordering::SeqCst) {
            return Err(cancelled());
        }
        // Renamed into place under the gate; made durable outside it.
        let mut placed = None;
        let published = gated.publish(&mut || {
            placed = Some(
                shared
                    .store
                    .rename_into_place(&tmp, &tmp_name, &job.rel, &prov)?,
            );
            Ok(())
        })?;
        if let Some(p) = placed {
            p.sync();
        }
        if !published {
            return Err(changed());
        }
        shared.events.published(&job.rel, &prov, total);
        // A write through the mount cancels the job, then reads the generation that
        // `published` bumped (file.rs, `before_change`), all sequentially consistent:
        // a cancel that came after the checks above is seen here, or the writer sees the
        // new generation and drops the copy itself. Either way no copy of bytes the
        // source no longer holds stays in the cache. (A rename's cancel leaves the copy
        // to be moved with its name.)
        if job.changed.load(Ordering::SeqCst) {
            tracing::debug!(
                "{} changed as it was published: withdrawn",
                job.rel.display()
            );
            shared.events.withdrawn(&job.rel);
        }
        Ok(())
    });
    if let Err(e) = &r {
        shared.store.discard_temp(&tmp_name);
        shared
            .events
            .release(total, e.raw_os_error() == Some(libc::ENOSPC));
    }
    r
}

/// Gives the temporary file its final size, with blocks allocated where the filesystem
/// can (fallocate), else as a sparse file.
fn allocate(f: &File, size: u64) -> io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(f, FallocateFlags::empty(), 0, size) {
        Err(Errno::OPNOTSUPP) => Ok(rustix::fs::ftruncate(f, size)?),
        r => Ok(r?),
    }
}

fn copy_into(shared: &Shared, job: &Job, src: &File, dst: &File, total: u64) -> io::Result<()> {
    let _ = rustix::fs::fadvise(src, 0, None, Advice::Sequential);
    let start = (job.start_hint.load(Ordering::Relaxed) / CHUNK * CHUNK).min(total);
    let mut use_cfr = true;
    let mut buf = Vec::new();
    for (from, to) in [(start, total), (0, start)] {
        let mut off = from;
        while off < to {
            if job.cancelled.load(Ordering::SeqCst) {
                return Err(cancelled());
            }
            let n = CHUNK.min(to - off);
            shared.limit.take(n);
            copy_chunk(src, dst, off, n, &mut use_cfr, &mut buf)?;
            let _ = sys::sync_range(dst.as_fd(), off, n);
            let _ = rustix::fs::fadvise(dst, off, NonZeroU64::new(n), Advice::DontNeed);
            if !job.reader_active.load(Ordering::Relaxed) {
                let _ = rustix::fs::fadvise(src, off, NonZeroU64::new(n), Advice::DontNeed);
            }
            off += n;
            job.bytes_done.fetch_add(n, Ordering::Relaxed);
            shared.stats.read_bytes.fetch_add(n, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Copies exactly `n` bytes at `off`; a source that ends early has changed.
fn copy_chunk(
    src: &File,
    dst: &File,
    off: u64,
    n: u64,
    use_cfr: &mut bool,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let mut done = 0u64;
    while done < n {
        let at = off + done;
        let want = (n - done) as usize;
        if *use_cfr {
            let (mut off_in, mut off_out) = (at, at);
            match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want)
            {
                Ok(0) => return Err(changed()),
                Ok(k) => {
                    done += k as u64;
                    continue;
                }
                // Across filesystems, or a filesystem without it: copy by hand from now on.
                Err(Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP | Errno::INVAL) => {
                    *use_cfr = false;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if buf.len() < CHUNK as usize {
            buf.resize(CHUNK as usize, 0);
        }
        let k = rustix::io::pread(src, &mut buf[..want], at)?;
        if k == 0 {
            return Err(changed());
        }
        let mut w = 0;
        while w < k {
            w += rustix::io::pwrite(dst, &buf[w..k], at + w as u64)?;
        }
        done += k as u64;
    }
    Ok(())
}
