//! The running daemon's answers to the control socket: status, promote, evict,
//! unmount. Reads the overlay's and the cache's counters; changes nothing but the cache.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{Config, MinFree};
use crate::control::Handler;
use crate::overlay::Overlay;
use crate::promoter::{Job, Priority};
use crate::sys;

pub struct Daemon {
    pub core: Arc<Overlay>,
}

/// `min_free` in bytes, for the cache's filesystem as it is now.
pub fn min_free_bytes(cfg: &Config) -> u64 {
    match cfg.min_free {
        MinFree::Bytes(b) => b,
        MinFree::Percent(p) => {
            let total = sys::cpath(&cfg.cache)
                .and_then(|c| sys::open_path(&c, libc::O_PATH | libc::O_DIRECTORY, 0))
                .and_then(|fd| sys::fstatvfs(std::os::fd::AsFd::as_fd(&fd)))
                .map(|s| s.f_blocks * s.f_frsize)
                .unwrap_or(0);
            total / 100 * p as u64
        }
    }
}

fn progress_of(job: &Job) -> Value {
    json!({
        "path": job.rel.to_string_lossy(),
        "bytes_done": job.bytes_done.load(Ordering::Relaxed),
        "bytes_total": job.bytes_total.load(Ordering::Relaxed),
    })
}

impl Handler for Daemon {
    fn status(&self) -> Value {
        let core = &self.core;
        let cfg = &core.cfg;
        let (files, bytes) = core.cache.as_ref().map_or((0, 0), |c| c.index.totals());
        let (hits, misses, done, failed, queued, in_flight) = match &core.cache {
            Some(c) => (
                c.hits.load(Ordering::Relaxed),
                c.misses.load(Ordering::Relaxed),
                c.promoter.stats().done.load(Ordering::Relaxed),
                c.promoter.stats().failed.load(Ordering::Relaxed),
                c.promoter.queued(),
                c.promoter
                    .running()
                    .iter()
                    .map(|j| progress_of(j))
                    .collect(),
            ),
            None => (0, 0, 0, 0, 0, Vec::new()),
        };
        json!({
            "mountpoint": cfg.mountpoint.to_string_lossy(),
            "source": cfg.source.to_string_lossy(),
            "cache": cfg.cache.to_string_lossy(),
            "pid": std::process::id(),
            "passthrough": core.passthrough_enabled(),
            "cache_usable": core.cache.is_some(),
            "cached_files": files,
            "cached_bytes": bytes,
            "pinned_files": 0,
            // 0: no limit but min_free.
            "max_size": cfg.max_size.unwrap_or(0),
            "min_free": min_free_bytes(cfg),
            "hits": hits,
            "misses": misses,
            "promotions_done": done,
            "promotions_failed": failed,
            "queued": queued,
            "in_flight": Value::Array(in_flight),
            "evictions": 0,
        })
    }

    fn promote(
        &self,
        paths: &[PathBuf],
        wait: bool,
        progress: &mut dyn FnMut(Value),
    ) -> Result<Value, String> {
        let cache = self
            .core
            .cache
            .as_ref()
            .ok_or("the cache directory is unusable: see the daemon's log")?;
        let mut files = Vec::new();
        for p in paths {
            files.extend(
                self.core
                    .regular_files_below(p)
                    .map_err(|e| format!("{}: {e}", p.display()))?,
            );
        }
        let mut already = 0;
        let mut jobs = Vec::new();
        for f in &files {
            if self.core.is_cached(f) {
                already += 1;
            } else {
                jobs.push(cache.promote(f, Priority::Explicit));
            }
        }
        let mut failed = Vec::new();
        if wait {
            for job in &jobs {
                loop {
                    match job.wait(Duration::from_millis(500)) {
                        Some(Ok(())) => break,
                        Some(Err(e)) => {
                            failed.push(json!({"path": job.rel.to_string_lossy(), "error": e}));
                            break;
                        }
                        None => progress(progress_of(job)),
                    }
                }
                progress(progress_of(job));
            }
        }
        Ok(json!({
            "files": files.len(),
            "already_cached": already,
            "queued": jobs.len(),
            "failed": failed,
        }))
    }

    fn pin(&self, _paths: &[PathBuf]) -> Result<Value, String> {
        Err("pin is not available yet: it lands with cache capacity and pins (issue 4)".into())
    }

    fn unpin(&self, _paths: &[PathBuf]) -> Result<Value, String> {
        Err("unpin is not available yet: it lands with cache capacity and pins (issue 4)".into())
    }

    fn evict(&self, paths: &[PathBuf]) -> Result<Value, String> {
        let cache = self
            .core
            .cache
            .as_ref()
            .ok_or("the cache directory is unusable: see the daemon's log")?;
        for p in paths {
            cache.invalidate_below(p);
        }
        Ok(json!({"evicted": paths.len()}))
    }

    fn unmount(&self) -> Result<Value, String> {
        crate::mount::request_stop();
        Ok(json!({"stopping": true}))
    }
}
