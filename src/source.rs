//! Descriptors of SOURCE objects, bounded whatever the size of the library.
//!
//! An inode the kernel remembers holds no descriptor of its own (see `inodes.rs`): it is
//! reopened on demand and kept in `Fds`, an LRU whose bound is derived from the
//! daemon's RLIMIT_NOFILE at start, leaving room for open files, the cache store, the
//! control socket and the promoter. Open file and directory handles pin their own
//! descriptor for their inode while they are open, so an open object stays reachable
//! (also once unlinked) without an extra descriptor.
//!
//! The daemon's own bookkeeping never surfaces as EMFILE or ENFILE to a caller
//! (invariant 9): an open that fails so sheds half of the cached descriptors and is tried
//! again. Only when nothing is left to shed does the error reach the caller, and the
//! first time that happens a log line gives the numbers and the fix.

use std::collections::HashMap;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use lru::LruCache;
use parking_lot::Mutex;

/// Descriptors kept for everything but the LRU: stdio, /dev/fuse and its clones, the
/// cache store and its lock, the control socket and its clients, the promoter's copies,
/// the watchdog pipe, logging.
pub const RESERVED: u64 = 64;

/// The LRU never grows past this, however high the limit: a descriptor costs kernel
/// memory, and re-resolving a cold inode costs a syscall or two.
const MAX_CACHED: u64 = 16_384;

/// The LRU's bound for a descriptor limit: half of what the reserve leaves, so that
/// callers' open files have as much room as the cache.
pub fn bound_for(limit: u64) -> usize {
    (limit.saturating_sub(RESERVED) / 2).clamp(8, MAX_CACHED) as usize
}

/// Whether an error is the process running out of descriptors.
pub fn is_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The descriptors of a node's open handles, by handle number.
type Pins = Vec<(u64, Arc<OwnedFd>)>;

pub struct Fds {
    lru: Mutex<LruCache<u64, Arc<OwnedFd>>>,
    pins: Mutex<HashMap<u64, Pins>>,
    bound: usize,
    limit: u64,
    warned: AtomicBool,
    /// Descriptors opened again for an inode that had none cached.
    reopened: AtomicU64,
    /// Times the LRU was shed because an open ran out of descriptors.
    shed: AtomicU64,
}

impl Fds {
    /// A cache sized for the process's descriptor limit `limit`.
    pub fn new(limit: u64) -> Fds {
        let bound = bound_for(limit);
        Fds {
            lru: Mutex::new(LruCache::new(
                NonZeroUsize::new(bound).unwrap_or(NonZeroUsize::MIN),
            )),
            pins: Mutex::new(HashMap::new()),
            bound,
            limit,
            warned: AtomicBool::new(false),
            reopened: AtomicU64::new(0),
            shed: AtomicU64::new(0),
        }
    }

    /// The descriptor of a node, pinned or cached, if there is one.
    pub fn get(&self, nodeid: u64) -> Option<Arc<OwnedFd>> {
        if let Some(v) = self.pins.lock().get(&nodeid)
            && let Some((_, fd)) = v.last()
        {
            return Some(fd.clone());
        }
        self.lru.lock().get(&nodeid).cloned()
    }

    /// Caches a node's descriptor; the least recently used one beyond the bound is closed
    /// (after the lock is released).
    pub fn put(&self, nodeid: u64, fd: Arc<OwnedFd>) {
        let evicted = self.lru.lock().push(nodeid, fd);
        drop(evicted);
    }

    /// Counts a descriptor opened again for a node that had none.
    pub fn count_reopen(&self) {
        self.reopened.fetch_add(1, Ordering::Relaxed);
    }

    /// The kernel forgot a node: close its cached descriptor. Pins stay with their handles.
    pub fn forget(&self, nodeid: u64) {
        let old = self.lru.lock().pop(&nodeid);
        drop(old);
    }

    /// Keeps `fd`, the descriptor of open handle `fh`, as its node's descriptor until
    /// `unpin`.
    pub fn pin(&self, nodeid: u64, fh: u64, fd: Arc<OwnedFd>) {
        self.pins.lock().entry(nodeid).or_default().push((fh, fd));
    }

    pub fn unpin(&self, nodeid: u64, fh: u64) {
        let mut pins = self.pins.lock();
        if let Some(v) = pins.get_mut(&nodeid) {
            v.retain(|(h, _)| *h != fh);
            if v.is_empty() {
                pins.remove(&nodeid);
            }
        }
    }

    /// Whether an open handle pins this node.
    pub fn is_pinned(&self, nodeid: u64) -> bool {
        self.pins.lock().contains_key(&nodeid)
    }

    /// Closes half of the cached descriptors (at least one). False if none was cached.
    fn shed(&self) -> bool {
        let mut dropped = Vec::new();
        {
            let mut lru = self.lru.lock();
            let n = lru.len().div_ceil(2);
            for _ in 0..n {
                if let Some((_, fd)) = lru.pop_lru() {
                    dropped.push(fd);
                }
            }
        }
        self.shed.fetch_add(1, Ordering::Relaxed);
        !dropped.is_empty()
    }

    /// Runs `op`, which opens a descriptor, shedding cached descriptors and trying again
    /// while it fails for want of descriptors.
    pub fn retry<T>(&self, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        loop {
            match op() {
                Err(e) if is_exhaustion(&e) => {
                    if !self.shed() {
                        self.warn_exhausted(&e);
                        return Err(e);
                    }
                }
                r => return r,
            }
        }
    }

    fn warn_exhausted(&self, e: &io::Error) {
        if self.warned.swap(true, Ordering::Relaxed) {
            return;
        }
        let pinned: usize = self.pins.lock().values().map(Vec::len).sum();
        tracing::error!(
            "out of file descriptors ({e}): limit {}, {} held by open files and directories, \
             none left to shed; raise the daemon's limit (systemd LimitNOFILE=, prlimit --nofile)",
            self.limit,
            pinned
        );
    }

    pub fn stats(&self) -> FdStats {
        FdStats {
            limit: self.limit,
            bound: self.bound as u64,
            cached: self.lru.lock().len() as u64,
            pinned: self.pins.lock().values().map(|v| v.len() as u64).sum(),
            reopened: self.reopened.load(Ordering::Relaxed),
            shed: self.shed.load(Ordering::Relaxed),
        }
    }
}

/// What `cachefs status` shows of the descriptor cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct FdStats {
    pub limit: u64,
    pub bound: u64,
    pub cached: u64,
    pub pinned: u64,
    pub reopened: u64,
    pub shed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn devnull() -> Arc<OwnedFd> {
        Arc::new(std::fs::File::open("/dev/null").unwrap().into())
    }

    #[test]
    fn bound_leaves_room_for_open_files() {
        assert_eq!(bound_for(256), 96);
        assert_eq!(bound_for(1024), 480);
        assert_eq!(bound_for(20_000), 9_968);
        assert_eq!(bound_for(1 << 20), MAX_CACHED as usize);
        assert_eq!(bound_for(10), 8);
    }

    #[test]
    fn lru_never_holds_more_than_its_bound() {
        let fds = Fds::new(RESERVED + 2 * 8);
        for n in 0..100 {
            fds.put(n, devnull());
        }
        assert_eq!(fds.stats().cached, 8);
        assert!(fds.get(99).is_some());
        assert!(fds.get(0).is_none());
    }

    #[test]
    fn pins_win_over_the_lru_and_outlive_forget() {
        let fds = Fds::new(1024);
        let cached = devnull();
        let pinned = devnull();
        fds.put(7, cached);
        fds.pin(7, 1, pinned.clone());
        let got = fds.get(7).unwrap();
        assert_eq!(
            std::os::fd::AsRawFd::as_raw_fd(&got.as_fd()),
            std::os::fd::AsRawFd::as_raw_fd(&pinned.as_fd())
        );
        fds.forget(7);
        assert!(fds.get(7).is_some());
        fds.unpin(7, 1);
        assert!(fds.get(7).is_none());
        assert!(!fds.is_pinned(7));
    }

    #[test]
    fn retry_sheds_then_gives_up_with_the_error() {
        let fds = Fds::new(1024);
        for n in 0..10 {
            fds.put(n, devnull());
        }
        let mut tries = 0;
        let r: io::Result<()> = fds.retry(|| {
            tries += 1;
            Err(io::Error::from_raw_os_error(libc::EMFILE))
        });
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EMFILE));
        assert_eq!(fds.stats().cached, 0);
        // 10 -> 5 -> 2 -> 1 -> 0, then nothing left: five failing tries and the last one.
        assert_eq!(tries, 5);

        let mut tries = 0;
        fds.put(1, devnull());
        let r = fds.retry(|| {
            tries += 1;
            if tries == 1 {
                Err(io::Error::from_raw_os_error(libc::ENFILE))
            } else {
                Ok(42)
            }
        });
        assert_eq!(r.unwrap(), 42);
    }
}
