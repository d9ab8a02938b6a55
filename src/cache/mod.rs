//! The SSD cache as the overlay sees it: the on-disk `store`, the promoter feeding it,
//! what is in it (for status), and the hit and miss counters.
//!
//! A cache-side failure never reaches a user (invariant 8): every method here logs and
//! degrades to "not cached" instead of returning an error to the caller's operation.

pub mod store;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::config::Config;
use crate::promoter::{Events, Priority, Promoter};
use crate::sys;
use store::{Lookup, Provenance, Store};

/// What is published, by path relative to the mount root.
#[derive(Default)]
pub struct Index {
    files: Mutex<HashMap<PathBuf, u64>>,
    /// Bumped at every publish, so open handles reading from SOURCE notice a new copy
    /// with one atomic load per read.
    generation: AtomicU64,
}

impl Index {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn totals(&self) -> (u64, u64) {
        let f = self.files.lock();
        (f.len() as u64, f.values().sum())
    }

    fn remove(&self, rel: &Path) {
        self.files.lock().remove(rel);
    }

    fn remove_below(&self, rel: &Path) {
        self.files.lock().retain(|p, _| !p.starts_with(rel));
    }

    fn rename_below(&self, from: &Path, to: &Path) {
        let mut f = self.files.lock();
        let moved: Vec<(PathBuf, u64)> = f
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, s)| (p.clone(), *s))
            .collect();
        for (p, s) in moved {
            f.remove(&p);
            if let Ok(rest) = p.strip_prefix(from) {
                f.insert(to.join(rest), s);
            }
        }
    }
}

impl Events for Index {
    fn published(&self, rel: &Path, _prov: &Provenance, size: u64) {
        self.files.lock().insert(rel.to_path_buf(), size);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

pub struct Cache {
    store: Arc<Store>,
    pub promoter: Promoter,
    pub index: Arc<Index>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl Cache {
    /// Opens the cache directory (taking its lock) and starts the promoter, which reads
    /// SOURCE through `source`, an `O_PATH` descriptor of its root.
    pub fn open(cfg: &Config, source: std::os::fd::OwnedFd) -> std::io::Result<Cache> {
        let store = Arc::new(Store::open(&cfg.cache)?);
        let index = Arc::new(Index::default());
        {
            let mut files = index.files.lock();
            for (rel, size) in store.scan()? {
                files.insert(rel, size);
            }
        }
        let promoter = Promoter::start(
            source,
            store.clone(),
            index.clone(),
            cfg.promote_threads,
            cfg.promote_bw,
        )?;
        Ok(Cache {
            store,
            promoter,
            index,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// The valid copy of `rel`, if there is one; `source` is the source's stat now.
    pub fn lookup(&self, rel: &Path, source: &sys::Stat) -> Option<File> {
        match self.store.lookup(rel, source) {
            Ok(Lookup::Hit(f)) => Some(f),
            Ok(Lookup::Miss) => {
                self.index.remove(rel);
                None
            }
            Err(e) => {
                tracing::warn!(
                    "cache lookup of {} failed, serving the source: {e}",
                    rel.display()
                );
                None
            }
        }
    }

    /// The source of `rel` is about to change through the mount: stop its copy and drop
    /// the published one, before the change is made.
    pub fn invalidate(&self, rel: &Path) {
        self.promoter.cancel(rel);
        match self.store.remove(rel) {
            Ok(true) => tracing::debug!("dropped the copy of {}", rel.display()),
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot drop the copy of {}: {e}", rel.display()),
        }
        self.index.remove(rel);
    }

    /// Everything at or below `rel` is being removed or replaced.
    pub fn invalidate_below(&self, rel: &Path) {
        self.promoter.cancel_below(rel);
        self.store.remove_tree(rel);
        self.index.remove_below(rel);
    }

    /// `from` was renamed to `to` through the mount: the copies move along (they still
    /// match their source: a rename changes neither size, mtime nor inode).
    pub fn renamed(&self, from: &Path, to: &Path) {
        self.promoter.cancel_below(from);
        self.promoter.cancel_below(to);
        // Whatever was cached under the target name was replaced.
        self.store.remove_tree(to);
        self.index.remove_below(to);
        match self.store.rename(from, to) {
            Ok(()) => self.index.rename_below(from, to),
            Err(e) => {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    tracing::warn!("cannot move the copies under {}: {e}", from.display());
                }
                self.store.remove_tree(from);
                self.index.remove_below(from);
            }
        }
    }

    pub fn promote(&self, rel: &Path, priority: Priority) -> Arc<crate::promoter::Job> {
        self.promoter.request(rel, priority)
    }
}
