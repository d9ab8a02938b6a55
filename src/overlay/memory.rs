//! What the daemon answers without SOURCE (invariants 11 and 12): from the metadata cache
//! (`meta_ttl`), from cached copies, from open handles, and statfs from its last value.
//! `crate::fuse` asks here first, on the FUSE worker, and sends a request on to the
//! SOURCE lane (`crate::lane`) only when the answer is `None` (or [`needs_source`]),
//! so a SOURCE that does not answer holds up only the requests that need it.
//!
//! Each answer here is one SOURCE would give within `meta_ttl`: the mount shows SOURCE
//! as the metadata cache last saw it, and a cached copy is used only while it matches
//! those attributes (see `open_from_memory`).

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{Caller, Entry, Overlay};
use crate::lane::{Lane, Op};
use crate::meta::Lookup;
use crate::sys;

/// The marker of an answer that needs SOURCE, from a core call made memory-only.
#[derive(Debug)]
struct NeedsSource;

impl fmt::Display for NeedsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the answer needs SOURCE")
    }
}

impl std::error::Error for NeedsSource {}

pub(super) fn needs_source_error() -> io::Error {
    io::Error::other(NeedsSource)
}

/// Whether a memory-only call found that it needs SOURCE (and did nothing).
pub fn needs_source(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|r| r.is::<NeedsSource>())
}

/// A filesystem's statfs, as the kernel is told it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namemax: u32,
    pub frsize: u32,
}

impl Statfs {
    pub(super) fn of(s: &rustix::fs::StatVfs) -> Statfs {
        Statfs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namemax: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
        }
    }
}

/// SOURCE's statfs as last seen. A scanner asks for it at every directory; it is
/// answered from here while younger than [`STATFS_FRESH`], else refreshed on the SOURCE
/// lane and waited for at most [`STATFS_WAIT`]; while a refresh waits for SOURCE, every
/// other statfs gets the last value at once.
pub(super) struct StatfsCache {
    root: OwnedFd,
    last: Mutex<Option<(Instant, Statfs)>>,
    updated: Condvar,
    refreshing: AtomicBool,
}

const STATFS_FRESH: Duration = Duration::from_secs(1);
const STATFS_WAIT: Duration = Duration::from_millis(100);

impl StatfsCache {
    /// Reads SOURCE's statfs once (mounting may touch SOURCE).
    pub(super) fn new(root: OwnedFd) -> StatfsCache {
        let first = rustix::fs::fstatvfs(&root).ok().map(|s| Statfs::of(&s));
        StatfsCache {
            root,
            last: Mutex::new(first.map(|s| (Instant::now(), s))),
            updated: Condvar::new(),
            refreshing: AtomicBool::new(false),
        }
    }

    /// Reads SOURCE's statfs now (on the SOURCE lane) and keeps it.
    pub(super) fn refresh(&self) -> io::Result<Statfs> {
        let r = rustix::fs::fstatvfs(&self.root).map(|s| Statfs::of(&s));
        if let Ok(s) = r {
            *self.last.lock() = Some((Instant::now(), s));
        }
        self.refreshing.store(false, Ordering::Release);
        self.updated.notify_all();
        Ok(r?)
    }

    /// The value to answer with now, refreshing it on `lane` if it is old.
    fn answer(self: &Arc<Self>, lane: &Arc<Lane>) -> Option<Statfs> {
        let mut last = self.last.lock();
        let seen = *last;
        if let Some((at, s)) = seen
            && at.elapsed() < STATFS_FRESH
        {
            return Some(s);
        }
        if self.refreshing.swap(true, Ordering::AcqRel) {
            // A refresh already waits for SOURCE: the last value, at once.
            return seen.map(|(_, s)| s);
        }
        let me = self.clone();
        lane.spawn(Op::Statfs, move || {
            let _ = me.refresh();
        });
        let _ = self.updated.wait_for(&mut last, STATFS_WAIT);
        last.map(|(_, s)| s)
    }
}

impl Overlay {
    /// `parent/name` from the metadata cache, with a kernel reference taken; `None` when
    /// it does not know (or is off).
    pub fn lookup_from_memory(&self, parent: u64, name: &OsStr) -> Option<io::Result<Entry>> {
        let meta = self.meta.as_ref()?;
        let parent = self.inode(parent).ok()?;
        match meta.lookup((parent.dev, parent.ino), name) {
            Lookup::Found(_, stat) => {
                let inode = self.inodes.insert_cached(&parent, name, &stat);
                Some(Ok(Entry {
                    nodeid: inode.nodeid,
                    stat,
                }))
            }
            Lookup::Missing => Some(Err(io::Error::from_raw_os_error(libc::ENOENT))),
            Lookup::Unknown => None,
        }
    }

    /// A node's attributes from the metadata cache: for a path, or for an open handle
    /// answered without SOURCE (a player's fstat).
    pub fn getattr_from_memory(&self, nodeid: u64, fh: Option<u64>) -> Option<sys::Stat> {
        let meta = self.meta.as_ref()?;
        if let Some(fh) = fh {
            let h = self.files.get(fh).ok()?;
            if self.has_source(&h) {
                // The open file itself answers, which may be unlinked or written.
                return None;
            }
        }
        let inode = self.inode(nodeid).ok()?;
        meta.attr((inode.dev, inode.ino))
    }

    /// A read of a handle that reads a copy through the daemon (no SOURCE needed); `None`
    /// for any other handle.
    pub fn read_from_memory(&self, fh: u64, offset: u64, size: u32) -> Option<io::Result<Vec<u8>>> {
        let h = self.files.get(fh).ok()?;
        if h.writable || h.copy.lock().is_none() {
            return None;
        }
        Some(self.read_handle(&h, offset, size))
    }

    /// Whether the handle reads a copy through the daemon: its seeks need no SOURCE.
    pub fn reads_from_memory(&self, fh: u64) -> bool {
        self.files
            .get(fh)
            .is_ok_and(|h| !h.writable && h.copy.lock().is_some())
    }

    /// Whether the handle's SOURCE file was never opened (an open answered from the
    /// cache): its flush, fsync and release touch nothing of SOURCE.
    pub fn handle_without_source(&self, fh: u64) -> bool {
        self.files.get(fh).is_ok_and(|h| !self.has_source(&h))
    }

    /// SOURCE's statfs from memory (see [`StatfsCache`]); `None` for a node of another
    /// filesystem mounted inside SOURCE, or before SOURCE ever answered one.
    pub fn statfs_from_memory(&self, nodeid: u64) -> Option<Statfs> {
        match self.inode(nodeid) {
            Ok(inode) if inode.dev != self.inodes.root().dev => None,
            _ => self.statfs.answer(&self.lane),
        }
    }

    /// access(2) from the metadata cache's mode bits where they grant it (reading and
    /// searching; a write asks SOURCE, which may be read-only).
    pub fn access_from_memory(&self, caller: &Caller, nodeid: u64, mask: i32) -> Option<()> {
        let meta = self.meta.as_ref()?;
        if mask & libc::W_OK != 0 {
            return None;
        }
        let inode = self.inode(nodeid).ok()?;
        let st = meta.attr((inode.dev, inode.ino))?;
        let want = ((mask & libc::R_OK != 0) as u32) << 2 | (mask & libc::X_OK != 0) as u32;
        self.mode_grants(caller, &st, want).then_some(())
    }

    /// Whether the mode bits of `st` grant `caller` all of `want` (`0o4` read, `0o1`
    /// search or execute), where the daemon must check that itself: the kernel checks
    /// every open with `allow_other` or `allow_root` (default_permissions).
    pub(super) fn mode_grants(&self, caller: &Caller, st: &sys::Stat, want: u32) -> bool {
        if self.cfg.allow_other || self.cfg.allow_root {
            return true;
        }
        if caller.uid == 0 {
            // Root reads anything; it executes a file only if someone may.
            return want & 1 == 0
                || st.st_mode & 0o111 != 0
                || st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        }
        let bits = if st.st_uid == caller.uid {
            st.st_mode >> 6
        } else if self.creds.in_group(caller, st.st_gid) {
            st.st_mode >> 3
        } else {
            st.st_mode
        };
        bits & want == want
    }
}
