//! The running daemon's answers to the control socket: status, promote, pin, unpin,
//! evict, unmount. Reads the overlay's and the cache's counters into the one `Status`
//! that `cachefs status` and the Prometheus metrics both show; changes nothing but the
//! cache.
//!
//! Any user may promote, but only what they can read themselves: an unprivileged peer's
//! paths are walked and opened with its identity (the overlay's per-thread switch), each
//! file it may not read is a per-path failure, and what it may promote is queued below
//! the policy's own work, so a user's flood never delays what players are reading.
//! Pinned copies are never evicted to make room for any promotion (the ledger's victims
//! are unpinned copies only).
//!
//! A media file's sidecars (its subtitles and `.nfo`) come with it: its promotion's job
//! copies them, and `promote --wait` waits for them and reports them; a media file already
//! cached gets its sidecars that are not (subtitles downloaded after the film was cached);
//! a pin of a media file pins its sidecars too.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::cache::Cache;
use crate::cache::promoter::{Job, Priority};
use crate::control::{
    Evicted, Failure, Handler, Peer, Pinned, Progress, Promoted, Restarting, Status, Stopping,
    Unpinned,
};
use crate::overlay::{Caller, Overlay};

pub struct Daemon {
    pub core: Arc<Overlay>,
    /// Stops the mount as SIGTERM would (given by the mount, which owns the lifecycle).
    pub stop: fn(),
    /// Starts a live restart into a binary (given by the mount, which owns the lifecycle).
    pub restart: fn(Option<&std::path::Path>, Option<&str>) -> Result<PathBuf, String>,
    /// When this daemon started serving (Unix milliseconds).
    pub since_ms: u64,
    /// The metrics listener's bound address, or why it is not listening; unset while
    /// `metrics=` is not given.
    pub metrics: OnceLock<Result<String, String>>,
}

/// How often `promote --wait` reports the copies it waits for.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

fn progress_of(job: &Job) -> Progress {
    Progress {
        path: job.rel.to_string_lossy().into_owned(),
        bytes_done: job.bytes_done.load(Ordering::Relaxed),
        bytes_total: job.bytes_total.load(Ordering::Relaxed),
        elapsed_ms: job.started().map_or(0, |t| {
            t.elapsed().as_millis().try_into().unwrap_or(u64::MAX)
        }),
    }
}

impl Daemon {
    pub fn new(
        core: Arc<Overlay>,
        stop: fn(),
        restart: fn(Option<&std::path::Path>, Option<&str>) -> Result<PathBuf, String>,
    ) -> Daemon {
        Daemon {
            core,
            stop,
            restart,
            since_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            metrics: OnceLock::new(),
        }
    }

    fn cache(&self) -> Result<&Cache, String> {
        match &self.core.cache {
            Some(c) if c.ledger.usable() => Ok(c),
            _ => Err("the cache directory is unusable: see the daemon's log".into()),
        }
    }

    /// The files at or below `paths` that `peer` may read, and a failure for each it may
    /// not (a named path or a file found below one). Walked and opened as the peer, so
    /// a directory it cannot search is neither listed nor counted.
    fn readable_files_below(
        &self,
        peer: &Peer,
        paths: &[PathBuf],
    ) -> Result<(Vec<PathBuf>, Vec<Failure>), String> {
        let caller = Caller {
            uid: peer.uid,
            gid: peer.gid,
            pid: peer.pid,
        };
        let denied = |p: &std::path::Path| Failure {
            path: p.to_string_lossy().into_owned(),
            error: "permission denied: you cannot read it, so you may not promote it".into(),
        };
        let is_denied =
            |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM));
        self.core
            .as_caller(&caller, || {
                let mut files = Vec::new();
                let mut refused = Vec::new();
                for p in paths {
                    match self.core.regular_files_below(p) {
                        Ok(found) => files.extend(found),
                        Err(e) if is_denied(&e) => refused.push(denied(p)),
                        Err(e) => return Err(format!("{}: {e}", p.display())),
                    }
                }
                files.retain(|f| match self.core.open_source(f) {
                    Ok(_) => true,
                    Err(e) => {
                        if is_denied(&e) {
                            refused.push(denied(f));
                        }
                        false
                    }
                });
                Ok((files, refused))
            })
            .map_err(|e| format!("cannot take your identity to check your permissions: {e}"))?
    }

    /// `files` (those at or below `paths`) and the sidecars in SOURCE of each media file
    /// named in `paths`, once each. (A directory's files are all in `files` already.)
    fn with_sidecars(cache: &Cache, paths: &[PathBuf], files: Vec<PathBuf>) -> Vec<PathBuf> {
        let mut seen: HashSet<PathBuf> = files.iter().cloned().collect();
        let mut out = files;
        let named: Vec<&PathBuf> = paths.iter().filter(|p| seen.contains(*p)).collect();
        for p in named {
            for s in cache.promoter.sidecars_in_source(p) {
                if seen.insert(s.clone()) {
                    out.push(s);
                }
            }
        }
        out
    }

    /// Every regular file at or below each path.
    fn files_below(&self, paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
        let mut files = Vec::new();
        for p in paths {
            files.extend(
                self.core
                    .regular_files_below(p)
                    .map_err(|e| format!("{}: {e}", p.display()))?,
            );
        }
        Ok(files)
    }
}

impl Handler for Daemon {
    fn status(&self) -> Status {
        let core = &self.core;
        let cfg = &core.cfg;
        let (metrics, metrics_error) = match self.metrics.get() {
            Some(Ok(addr)) => (addr.clone(), String::new()),
            Some(Err(e)) => (String::new(), e.clone()),
            None => (String::new(), String::new()),
        };
        let counter = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let counters = &core.counters;
        let (inodes, by_handle, fds) = core.inode_stats();
        let meta = core.meta_stats().unwrap_or_default();
        let mut s = Status {
            mountpoint: cfg.mountpoint.to_string_lossy().into_owned(),
            source: cfg.source.to_string_lossy().into_owned(),
            cache: cfg.cache.to_string_lossy().into_owned(),
            pid: std::process::id(),
            serving_since_ms: self.since_ms,
            failovers: counter(&counters.failovers),
            passthrough: core.passthrough_enabled(),
            // 0: no limit but min_free.
            max_size: cfg.max_size.unwrap_or(0),
            meta_hits: meta.hits,
            meta_misses: meta.misses,
            meta_nodes: meta.nodes,
            meta_ttl: cfg.meta_ttl.as_secs(),
            metrics,
            metrics_error,
            cache_read_bytes: counter(&counters.cache_read_bytes),
            source_read_bytes: counter(&counters.source_read_bytes),
            passthrough_opens: counter(&counters.passthrough_opens),
            passthrough_bytes: counter(&counters.passthrough_bytes),
            source_lookups: counter(&counters.source_lookups),
            inodes,
            inode_handles: by_handle,
            fd_limit: fds.limit,
            fds_bound: fds.bound,
            fds_cached: fds.cached,
            fds_pinned: fds.pinned,
            fds_reopened: fds.reopened,
            fds_shed: fds.shed,
            ..Status::default()
        };
        let stalled = core.lane.stalled_since_ms();
        s.source_answering = stalled.is_none();
        s.source_stalled_since = stalled.map_or(0, |ms| ms / 1000);
        let (busy, waiting) = core.lane.load();
        (s.source_in_flight, s.source_waiting) = (busy as u64, waiting as u64);
        s.source_ops = core
            .lane
            .ops()
            .into_iter()
            .map(|(op, n)| (op.to_string(), n))
            .collect();
        if let Some(c) = &core.cache {
            (s.cached_files, s.cached_bytes, s.pinned_files) = c.ledger.totals();
            (s.cache_fs_avail, s.cache_fs_size) = c.ledger.space_now();
            s.cache_usable = c.ledger.usable();
            s.evictions = counter(&c.ledger.evictions);
            s.min_free = c.ledger.min_free_now();
            s.hits = counter(&c.hits);
            s.misses = counter(&c.misses);
            let stats = c.promoter.stats();
            s.promotions_done = counter(&stats.done);
            s.promotions_failed = counter(&stats.failed);
            s.promoted_bytes = counter(&stats.done_bytes);
            s.promoter_read_bytes = counter(&stats.read_bytes);
            s.queued = c.promoter.queued();
            let mut in_flight: Vec<Progress> = c
                .promoter
                .running()
                .iter()
                .map(|j| progress_of(j))
                .collect();
            // Stable for a person reading it twice, and for the metrics' labels.
            in_flight.sort_by(|a, b| a.path.cmp(&b.path));
            s.in_flight = in_flight;
        }
        s
    }

    fn promote(
        &self,
        peer: &Peer,
        paths: &[PathBuf],
        wait: bool,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Promoted, String> {
        let cache = self.cache()?;
        let (files, mut failed, priority) = if peer.is_privileged() {
            (self.files_below(paths)?, Vec::new(), Priority::Explicit)
        } else {
            let (files, refused) = self.readable_files_below(peer, paths)?;
            (files, refused, Priority::Prefetch)
        };
        let refused = failed.len();
        let mut already = 0;
        let mut jobs = Vec::new();
        let named: HashSet<&PathBuf> = paths.iter().collect();
        let listed: HashSet<&PathBuf> = files.iter().collect();
        for f in &files {
            if self.core.is_cached(f) {
                already += 1;
                // A media file's sidecars come with its promotion; those added since (the
                // subtitles of a film cached before) come now. (A directory's are listed.)
                if named.contains(f) {
                    for s in cache.promoter.sidecars_in_source(f) {
                        if !listed.contains(&s) && !self.core.is_cached(&s) {
                            jobs.push(cache.promote(&s, priority));
                        }
                    }
                }
            } else {
                jobs.push(cache.promote(f, priority));
            }
        }
        if wait {
            // Every copy waited for is reported at each tick, not only the first one not
            // yet done: a client shows them side by side.
            // A media file's job ends after its sidecars': their outcomes are known then.
            let mut pending: Vec<Arc<Job>> = jobs.clone();
            let mut reported: HashSet<*const Job> = jobs.iter().map(Arc::as_ptr).collect();
            while let Some(first) = pending.first() {
                first.wait(PROGRESS_EVERY);
                let mut sidecars = Vec::new();
                pending.retain(|job| match job.outcome() {
                    Some(Ok(())) => {
                        let mut last = progress_of(job);
                        last.bytes_done = last.bytes_total;
                        progress(last);
                        sidecars.extend(job.sidecars());
                        false
                    }
                    Some(Err(e)) => {
                        failed.push(Failure {
                            path: job.rel.to_string_lossy().into_owned(),
                            error: e,
                        });
                        false
                    }
                    None => {
                        if job.started().is_some() {
                            progress(progress_of(job));
                        }
                        true
                    }
                });
                // Reported as the files asked for are (done by now: not waited for again),
                // once: a sidecar may also be asked for, or come with two media files.
                pending.extend(
                    sidecars
                        .into_iter()
                        .filter(|j| reported.insert(Arc::as_ptr(j))),
                );
            }
        }
        Ok(Promoted {
            files: (files.len() + refused) as u64,
            already_cached: already,
            queued: jobs.len() as u64,
            failed,
        })
    }

    fn pin(&self, paths: &[PathBuf]) -> Result<Pinned, String> {
        let cache = self.cache()?;
        let files = Self::with_sidecars(cache, paths, self.files_below(paths)?);
        let queued = cache.pin(&files).len();
        Ok(Pinned {
            pinned: files.len() as u64,
            queued: queued as u64,
        })
    }

    fn unpin(&self, paths: &[PathBuf]) -> Result<Unpinned, String> {
        Ok(Unpinned {
            unpinned: self.cache()?.unpin(paths) as u64,
        })
    }

    fn evict(&self, paths: &[PathBuf]) -> Result<Evicted, String> {
        Ok(Evicted {
            evicted: self.cache()?.evict(paths),
        })
    }

    fn unmount(&self) -> Result<Stopping, String> {
        (self.stop)();
        Ok(Stopping { stopping: true })
    }

    fn restart(
        &self,
        binary: Option<&std::path::Path>,
        options: Option<&str>,
    ) -> Result<Restarting, String> {
        (self.restart)(binary, options).map(|b| Restarting {
            binary: b.display().to_string(),
        })
    }
}
