//! Open files: open, create, read, write, flush, fsync, release, fallocate, lseek,
//! copy_file_range; and where each open is served from.
//!
//! Every handle owns a descriptor of the source file, opened with the caller's identity
//! through the inode's `O_PATH` descriptor (`/proc/self/fd/N`), so the source decides
//! permissions and no path is resolved twice. A read-only open of a file whose cached
//! copy is valid is served from the copy:
//! - by kernel passthrough when the kernel agreed to it (reads never reach the daemon);
//! - otherwise by the daemon reading the copy, with the kernel's page cache kept.
//!
//! The kernel fixes an inode's mode from its first open until its last release: all
//! passthrough opens of an inode share one backing file, and a non-passthrough open
//! beside them must be direct I/O. `InodeIo` keeps that per inode. A handle reading from
//! SOURCE counts its bytes for the policy (unless the process that opened it is on the
//! ignore list), and switches to the copy once one is published (same bytes, validated).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::num::NonZeroU64;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use parking_lot::Mutex;
use rustix::fs::{Advice, AtFlags, FallocateFlags, OFlags, SeekFrom};

use super::{Caller, Entry, Overlay, check_writable};
use crate::cache::promoter::Job;
use crate::config::PromoteMode;
use crate::{fdio, policy, sys};

/// How an open inode is being served.
#[derive(Default)]
pub(super) struct InodeIo {
    /// Opens served by passthrough, all to `backing`.
    passthrough: u32,
    /// Opens served by the daemon through the kernel's page cache.
    cached: u32,
    /// Direct-I/O opens (beside passthrough ones).
    direct: u32,
    backing: Option<Arc<File>>,
    /// The kernel's registration of `backing`, shared by all passthrough opens and
    /// dropped (closing it) with the last of them, under the same lock that counts them:
    /// an open can never pick up a registration that a release is about to close.
    token: Option<BackingToken>,
}

/// The kernel's registration of a backing file (a fuser `BackingId`, opaque here so the
/// core knows nothing of fuser). Dropping the last clone closes the registration.
pub type BackingToken = Arc<dyn std::any::Any + Send + Sync>;

/// The backing file of a passthrough open.
pub enum Backing {
    /// Already registered with the kernel by an earlier open of the inode.
    Registered(BackingToken),
    /// To be registered by the caller, then handed back with `backing_registered`.
    Unregistered(Arc<File>),
}

impl InodeIo {
    fn is_idle(&self) -> bool {
        self.passthrough == 0 && self.cached == 0 && self.direct == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Passthrough,
    Cached,
    Direct,
}

pub(super) struct FileHandle {
    /// The source file, opened as the caller; also its inode's descriptor while open.
    pub(super) fd: Arc<OwnedFd>,
    nodeid: u64,
    /// The source object: (st_dev, st_ino).
    obj: (u64, u64),
    /// Opened for writing: never reads a copy, and drops any copy published meanwhile.
    writable: bool,
    /// Opened with O_DIRECT: the source's pages are written back and dropped after each
    /// transfer, so nothing of it stays in the page cache.
    o_direct: bool,
    mode: Mutex<Mode>,
    /// Path relative to SOURCE, for the cache; `None` when it has none.
    rel: Option<PathBuf>,
    /// The cached copy reads come from, when set.
    copy: Mutex<Option<Arc<File>>>,
    /// SOURCE's size when opened: a file smaller than `promote_after` is promoted once
    /// this open has read all of it.
    size: u64,
    read_bytes: AtomicU64,
    /// The cache index generation last checked for a new copy.
    seen_generation: AtomicU64,
    /// The policy has nothing (more) to do for this handle: it promoted the file, or it
    /// writes, or its reader is ignored.
    promoted: AtomicBool,
    job: Mutex<Option<Arc<Job>>>,
    /// The file's size when a cached copy was found for it at open (0 otherwise): what a
    /// passthrough open offers, counted as such (the daemon never sees those reads).
    copy_size: u64,
    /// Writes through this handle the daemon is serving now; see `others_changed`.
    writing: AtomicU32,
}

/// A write being served through a handle, counted in its `writing` while it lasts.
struct Writing<'a>(&'a AtomicU32);

impl<'a> Writing<'a> {
    fn start(h: &'a FileHandle) -> Writing<'a> {
        h.writing.fetch_add(1, Ordering::SeqCst);
        Writing(&h.writing)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How the kernel is to serve an open.
pub struct Opened {
    pub fh: u64,
    /// Serve by passthrough to this file (shared by all passthrough opens of the inode).
    pub passthrough: Option<Backing>,
    pub direct_io: bool,
    pub keep_cache: bool,
}

/// Flags that only make sense to the kernel's own open path, or that would make the
/// open through `/proc/self/fd` fail (O_NOFOLLOW: that path is a magic link). O_DIRECT
/// is honoured as direct I/O between the caller and the daemon (no page cache in the
/// mount) and by dropping the source's pages after each transfer; passed to the source
/// it would impose its alignment on the daemon's own buffers (EINVAL).
const STRIP: i32 =
    libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW | libc::O_DIRECT;

/// FUSE's open flags (an i32) as rustix's, close-on-exec.
fn oflags(flags: i32) -> OFlags {
    OFlags::from_bits_retain(flags as u32) | OFlags::CLOEXEC
}

fn is_write(flags: i32) -> bool {
    matches!(flags & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR) || flags & libc::O_TRUNC != 0
}

impl Overlay {
    pub fn open(&self, caller: &Caller, nodeid: u64, flags: i32) -> io::Result<Opened> {
        let write = is_write(flags);
        if write {
            check_writable(&self.cfg)?;
        }
        let (inode, path_fd) = self.node(nodeid)?;
        if inode.is_regular() {
            self.inodes.check_named(&inode)?;
        }
        if write || flags & libc::O_DIRECT != 0 {
            // Before the source is opened: O_TRUNC must reach it only on the open that
            // stays.
            self.refuse_beside_passthrough(&inode)?;
        }
        let fd = {
            let _as = self.creds.enter(caller)?;
            let proc = fdio::proc_path(path_fd.as_fd());
            let open = || {
                Ok(rustix::fs::open(
                    &proc,
                    oflags(flags & !STRIP),
                    rustix::fs::Mode::empty(),
                )?)
            };
            Arc::new(self.inodes.fds.retry(open)?)
        };
        drop(path_fd);
        let regular = inode.is_regular();
        if regular && flags & libc::O_TRUNC != 0 {
            // Emptied by this open (FUSE_ATOMIC_O_TRUNC: no SETATTR comes): readers open
            // on the object's other kernel inodes, passthrough ones on their copies, see
            // it as on a plain directory, as after a truncate.
            self.truncated(&inode, 0);
        }
        let rel = if regular && self.cache.is_some() {
            self.rel_of(&inode)
        } else {
            None
        };
        let mut copy_size = 0;
        // The copy to serve from: only for reading, and only while it matches the source.
        let mut size = 0;
        let copy = match (&self.cache, &rel) {
            (Some(cache), Some(rel)) => {
                if write {
                    self.meta_changed((inode.dev, inode.ino));
                    // The source is about to change: no copy of it may outlive this open,
                    // nor be read any more by readers already open.
                    cache.invalidate(rel);
                    self.readers_leave_copies((inode.dev, inode.ino));
                    None
                } else {
                    let st = rustix::fs::fstat(&*fd)?;
                    size = st.st_size as u64;
                    let found = cache.lookup(rel, &st).map(Arc::new);
                    if found.is_some() {
                        copy_size = size;
                    }
                    found
                }
            }
            _ => None,
        };
        if let Some(cache) = &self.cache
            && regular
        {
            let counter = if copy.is_some() {
                &cache.hits
            } else {
                &cache.misses
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }

        // Passthrough readers are kept coherent only with writes that start after them
        // (the mirror starts at the conflicting open): while the object is open for
        // writing, through this node or another, new readers are served by the daemon.
        let writer_open = copy.is_some() && !write && self.has_writer((inode.dev, inode.ino));
        let mut new_backing = None;
        let mut io = self.io.lock();
        let state = io.entry(nodeid).or_default();
        let (mode, passthrough) = if state.passthrough > 0 {
            // Passthrough opens are live: a further one must share their backing file;
            // anything else must be direct I/O to coexist with them.
            match (&copy, &state.backing, &state.token) {
                (Some(_), _, Some(t)) => (Mode::Passthrough, Some(Backing::Registered(t.clone()))),
                (Some(_), Some(b), None) => {
                    (Mode::Passthrough, Some(Backing::Unregistered(b.clone())))
                }
                // No valid copy to share (the source changed): the kernel would refuse
                // any other kind of open beside them.
                _ => {
                    drop(io);
                    self.refuse_beside_passthrough(&inode)?;
                    return Err(io::Error::from_raw_os_error(libc::ESTALE));
                }
            }
        } else if flags & libc::O_DIRECT != 0 {
            (Mode::Direct, None)
        } else if state.cached > 0 || state.direct > 0 {
            (Mode::Cached, None)
        } else if copy.is_some() && self.passthrough_enabled() && !writer_open {
            state.backing = copy.clone();
            new_backing = copy.clone();
            (Mode::Passthrough, copy.clone().map(Backing::Unregistered))
        } else {
            (Mode::Cached, None)
        };
        match mode {
            Mode::Passthrough => state.passthrough += 1,
            Mode::Cached => state.cached += 1,
            Mode::Direct => state.direct += 1,
        }
        drop(io);
        if let Some(b) = &new_backing {
            self.start_mirror((inode.dev, inode.ino), nodeid, b);
        }

        // Another kernel inode of the object may be written meanwhile: no page cache kept.
        let keep_cache = mode == Mode::Cached && copy.is_some() && !writer_open;
        let ignored = !write && rel.is_some() && self.reader_ignored(caller);
        let generation = self.cache.as_ref().map_or(0, |c| c.ledger.generation());
        let fh = self.files.insert(FileHandle {
            fd: fd.clone(),
            nodeid,
            obj: (inode.dev, inode.ino),
            writable: write,
            o_direct: flags & libc::O_DIRECT != 0,
            mode: Mutex::new(mode),
            rel,
            copy: Mutex::new(if mode == Mode::Passthrough {
                None
            } else {
                copy
            }),
            size,
            read_bytes: AtomicU64::new(0),
            seen_generation: AtomicU64::new(generation),
            promoted: AtomicBool::new(write || ignored),
            job: Mutex::new(None),
            copy_size,
            writing: AtomicU32::new(0),
        });
        self.inodes.fds.pin(nodeid, fh, fd);
        Ok(Opened {
            fh,
            passthrough,
            direct_io: mode == Mode::Direct,
            keep_cache,
        })
    }

    /// Whether a handle has `obj` open for writing, through any of its nodes.
    fn has_writer(&self, obj: (u64, u64)) -> bool {
        self.files
            .map
            .lock()
            .values()
            .any(|h| h.writable && h.obj == obj)
    }

    /// The bytes of the object `obj` (st_dev, st_ino) are about to change through the
    /// mount: handles the daemon serves from a cached copy, on any of its nodes, read
    /// SOURCE from now on, so every reader already open sees the change as on a plain
    /// directory (invariant 10). Passthrough readers are served by the kernel from the
    /// backing copy; see `truncated` and `refuse_beside_passthrough`.
    pub(super) fn readers_leave_copies(&self, obj: (u64, u64)) {
        for h in self.files.map.lock().values() {
            if h.obj == obj {
                *h.copy.lock() = None;
            }
        }
    }

    /// `nodeid` was truncated to `size` through the mount. Passthrough readers read the
    /// backing copy, which no longer matches: it is truncated the same way (the copy is
    /// already out of the cache, its open readers keep it until they close), so they
    /// see the new size, not the old bytes. A cache-side failure is logged; readers then
    /// keep the old bytes past `size` until they reopen.
    pub(super) fn truncated(&self, inode: &crate::inodes::Inode, size: u64) {
        self.readers_leave_copies((inode.dev, inode.ino));
        let obj = (inode.dev, inode.ino);
        self.mirror(obj, |m| Ok(rustix::fs::ftruncate(m, size)?));
        if let Ok(fd) = self.fd(inode) {
            self.others_changed(obj, inode.nodeid, fd.as_fd());
        }
    }

    /// An open the kernel would refuse on an inode that has passthrough opens (anything
    /// but passthrough to the same backing file): the node is retired for new opens
    /// (`InodeTable::retire`) and the open answered ESTALE, which makes the kernel walk
    /// the path again and open the object's new inode, served from SOURCE. The readers
    /// go on with their backing copy, which gets every write and truncate made through
    /// the mount (its mirror, see `start_mirror`), so they read what a plain directory
    /// would show them (invariant 10). Ok when there is no conflict.
    fn refuse_beside_passthrough(&self, inode: &crate::inodes::Inode) -> io::Result<()> {
        match self.io.lock().get(&inode.nodeid) {
            Some(s) if s.passthrough > 0 => {}
            _ => return Ok(()),
        }
        let alias = self.inodes.retire(inode);
        tracing::debug!(
            "node {} has passthrough readers: new opens go to node {alias:#x}",
            inode.nodeid
        );
        Err(io::Error::from_raw_os_error(libc::ESTALE))
    }

    /// Node `nodeid` of `obj` starts serving passthrough readers from `backing`: from
    /// now on every change to the object through the mount, through whichever of its
    /// nodes, is applied to that copy too, until the node's last passthrough reader
    /// closes (`end_mirror`). Started with the first passthrough open, not at a
    /// conflict, because after the conflict the object can have several kernel inodes,
    /// more than one with passthrough readers of its own copy.
    fn start_mirror(&self, obj: (u64, u64), nodeid: u64, backing: &File) {
        let mut mirrors = self.mirrors.lock();
        if mirrors
            .get(&obj)
            .is_some_and(|v| v.iter().any(|(n, _)| *n == nodeid))
        {
            return;
        }
        // The daemon's own identity: the copy is the daemon's file.
        let proc = fdio::proc_path(backing.as_fd());
        match rustix::fs::open(&proc, oflags(libc::O_WRONLY), rustix::fs::Mode::empty()) {
            Ok(fd) => {
                mirrors
                    .entry(obj)
                    .or_default()
                    .push((nodeid, Arc::new(File::from(fd))));
                self.mirror_count.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(
                "cannot open the copy passthrough readers use for writing: {e}; they may \
                 read old bytes until they reopen"
            ),
        }
    }

    /// Applies a change to every copy passthrough readers of `obj` use. A cache-side
    /// failure drops that mirror (logged); it never fails the caller's write.
    fn mirror(&self, obj: (u64, u64), f: impl Fn(&File) -> io::Result<()>) {
        if self.mirror_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Some(copies) = self.mirrors.lock().get(&obj).cloned() else {
            return;
        };
        for (nodeid, m) in copies {
            if let Err(e) = f(&m) {
                tracing::warn!("cannot update the copy passthrough readers use: {e}");
                self.end_mirror(obj, nodeid);
            }
        }
    }

    /// The object's bytes or size changed through node `via`: its other kernel inodes
    /// (its own node and its aliases, see `refuse_beside_passthrough`) drop their cached
    /// attributes and pages and grow to the new size, so their readers, mappings too, see
    /// the change as on a plain directory.
    ///
    /// That takes page locks of those inodes, and a write in flight there holds one (the
    /// kernel keeps a partly written page locked until the daemon answers): if its worker
    /// were waiting here too, for this node's pages, which this call's own write holds,
    /// neither would ever go on. So the call waits for the kernel only on nodes with no
    /// write being served; another's change lands there just after that write returns (the
    /// two writes ran at once). Of two such writes, at least one sees the other (the
    /// counts are sequentially consistent), so they never wait for each other.
    pub(super) fn others_changed(&self, obj: (u64, u64), via: u64, fd: BorrowedFd<'_>) {
        self.meta_changed(obj);
        let Some(invalidate) = self.invalidator.get() else {
            return;
        };
        let others = self.inodes.other_nodes(obj.0, obj.1, via);
        if others.is_empty() {
            return;
        }
        let tail = tail(fd);
        for n in others {
            invalidate(n, tail, !self.writing_through(n));
        }
    }

    /// Whether a write through `nodeid` is being served now.
    fn writing_through(&self, nodeid: u64) -> bool {
        self.files
            .map
            .lock()
            .values()
            .any(|h| h.nodeid == nodeid && h.writing.load(Ordering::SeqCst) > 0)
    }

    /// Node `nodeid` of `obj` has no passthrough reader left. Returns whether no node of
    /// the object has any.
    fn end_mirror(&self, obj: (u64, u64), nodeid: u64) -> bool {
        let mut mirrors = self.mirrors.lock();
        let Some(v) = mirrors.get_mut(&obj) else {
            return true;
        };
        let before = v.len();
        v.retain(|(n, _)| *n != nodeid);
        self.mirror_count
            .fetch_sub((before - v.len()) as u64, Ordering::Relaxed);
        if v.is_empty() {
            mirrors.remove(&obj);
            true
        } else {
            false
        }
    }

    /// The kernel registered the backing file of a passthrough open of `nodeid` as
    /// `token`. Returns the registration all its passthrough opens are to use: `token`,
    /// or the one another open registered first (then `token` is dropped, closing it).
    pub fn backing_registered(&self, nodeid: u64, token: BackingToken) -> BackingToken {
        let mut io = self.io.lock();
        match io.get_mut(&nodeid) {
            Some(state) if state.passthrough > 0 => state.token.get_or_insert(token).clone(),
            _ => token,
        }
    }

    /// The kernel accepted the backing file of a passthrough open: its reads will never
    /// reach the daemon, so the file's size is counted as what the copy offered.
    pub fn passthrough_started(&self, fh: u64) {
        let Ok(h) = self.files.get(fh) else { return };
        let c = &self.counters;
        c.passthrough_opens.fetch_add(1, Ordering::Relaxed);
        c.passthrough_bytes
            .fetch_add(h.copy_size, Ordering::Relaxed);
    }

    /// The kernel refused the backing file of a passthrough open: serve that handle (and
    /// the inode's later opens) through the daemon instead, reading the same copy.
    pub fn passthrough_failed(&self, fh: u64) {
        let Ok(h) = self.files.get(fh) else { return };
        let mut mode = h.mode.lock();
        if *mode != Mode::Passthrough {
            return;
        }
        let mut io = self.io.lock();
        let mut closing = None;
        let mut last = false;
        if let Some(state) = io.get_mut(&h.nodeid) {
            state.passthrough -= 1;
            state.cached += 1;
            *h.copy.lock() = state.backing.clone();
            if state.passthrough == 0 {
                state.backing = None;
                closing = state.token.take();
                last = true;
            }
        }
        *mode = Mode::Cached;
        drop(io);
        drop(closing);
        if last && self.end_mirror(h.obj, h.nodeid) {
            self.inodes.unretire(h.obj.0, h.obj.1);
        }
    }

    pub fn create(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> io::Result<(Entry, Opened)> {
        check_writable(&self.cfg)?;
        let (parent, pfd) = self.node(parent)?;
        // O_CREAT of an existing file that readers have open by passthrough: as in `open`.
        if let Ok(st) = rustix::fs::statat(&*pfd, name, AtFlags::SYMLINK_NOFOLLOW)
            && let Ok(existing) = self.inode(self.inodes.nodeid_of(st.st_dev, st.st_ino))
        {
            self.refuse_beside_passthrough(&existing)?;
        }
        let fd = {
            let _as = self.creds.enter(caller)?;
            let flags =
                (flags & !(libc::O_NOCTTY | libc::O_DIRECT)) | libc::O_CREAT | libc::O_NOFOLLOW;
            let create = || Ok(rustix::fs::openat(&*pfd, name, oflags(flags), mode.into())?);
            Arc::new(self.inodes.fds.retry(create)?)
        };
        // The inode's identity comes from the open file itself, not from the name, which
        // another process could already have replaced.
        self.meta_name_changed(&parent, name);
        let (inode, stat) = self.inodes.insert_open(&parent, name, fd.as_fd())?;
        // O_CREAT of an existing file (with O_TRUNC, a new size).
        self.meta_changed((inode.dev, inode.ino));
        let rel = self.rel_child(&parent, name);
        if let (Some(cache), Some(rel)) = (&self.cache, &rel) {
            // O_CREAT on an existing file, possibly with O_TRUNC.
            cache.invalidate(rel);
            self.readers_leave_copies((inode.dev, inode.ino));
        }
        if flags & libc::O_TRUNC != 0 {
            // As in `open`.
            self.truncated(&inode, 0);
        }
        // O_CREAT can open an existing file that readers have open by passthrough: then
        // this open must be direct I/O to coexist with them, as in `open`.
        let mode = {
            let mut io = self.io.lock();
            let state = io.entry(inode.nodeid).or_default();
            if state.passthrough > 0 || flags & libc::O_DIRECT != 0 {
                state.direct += 1;
                Mode::Direct
            } else {
                state.cached += 1;
                Mode::Cached
            }
        };
        let fh = self.files.insert(FileHandle {
            fd: fd.clone(),
            nodeid: inode.nodeid,
            obj: (inode.dev, inode.ino),
            writable: true,
            o_direct: flags & libc::O_DIRECT != 0,
            mode: Mutex::new(mode),
            rel,
            copy: Mutex::new(None),
            size: 0,
            read_bytes: AtomicU64::new(0),
            seen_generation: AtomicU64::new(
                self.cache.as_ref().map_or(0, |c| c.ledger.generation()),
            ),
            promoted: AtomicBool::new(true),
            job: Mutex::new(None),
            copy_size: 0,
            writing: AtomicU32::new(0),
        });
        self.inodes.fds.pin(inode.nodeid, fh, fd);
        Ok((
            Entry::new(inode.nodeid, &stat),
            Opened {
                fh,
                passthrough: None,
                direct_io: mode == Mode::Direct,
                keep_cache: false,
            },
        ))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let h = self.files.get(fh)?;
        self.maybe_switch_to_copy(&h);
        let copy = h.copy.lock().clone();
        let mut buf = vec![0u8; size as usize];
        let counters = &self.counters;
        let n = match &copy {
            Some(c) => match fdio::pread_full(c.as_fd(), &mut buf, offset) {
                Ok(n) => {
                    counters
                        .cache_read_bytes
                        .fetch_add(n as u64, Ordering::Relaxed);
                    n
                }
                // A cache-side failure never reaches the reader (invariant 8).
                Err(e) => {
                    if let Some(cache) = &self.cache {
                        cache
                            .ledger
                            .mark_unusable(&format!("reading a cached copy: {e}"));
                    }
                    *h.copy.lock() = None;
                    read_source(counters, &h, &mut buf, offset)?
                }
            },
            None => read_source(counters, &h, &mut buf, offset)?,
        };
        if h.o_direct && copy.is_none() {
            drop_pages(&h, offset, n as u64, false);
        }
        buf.truncate(n);
        if copy.is_none() {
            self.count_read(&h, offset, n as u64);
        }
        Ok(buf)
    }

    /// Whether the policy ignores reads by `caller` (`promote_ignore`); asked only where
    /// they could count.
    fn reader_ignored(&self, caller: &Caller) -> bool {
        if self.cfg.promote != PromoteMode::Auto || self.cache.is_none() {
            return false;
        }
        match self.readers.ignored(caller.pid) {
            Some(name) => {
                tracing::debug!("reads by pid {} ({name}) do not count", caller.pid);
                true
            }
            None => false,
        }
    }

    /// Policy: once one open has read `policy::promote_threshold` bytes from SOURCE
    /// (`promote_after`, or all of a smaller file), promote the file, starting where this
    /// reader is, and queue the next files of its directory.
    fn count_read(&self, h: &FileHandle, offset: u64, n: u64) {
        let Some(cache) = &self.cache else { return };
        if self.cfg.promote != PromoteMode::Auto || h.promoted.load(Ordering::Relaxed) {
            return;
        }
        let total = h.read_bytes.fetch_add(n, Ordering::Relaxed) + n;
        let threshold = policy::promote_threshold(h.size, self.cfg.promote_after);
        if total < threshold || h.promoted.swap(true, Ordering::Relaxed) {
            return;
        }
        let Some(rel) = &h.rel else { return };
        let job = cache
            .promoter
            .request_for_reader(rel, offset, self.cfg.prefetch as usize);
        *h.job.lock() = Some(job);
    }

    /// A handle reading from SOURCE moves to the copy once one is published and still
    /// matches the source.
    fn maybe_switch_to_copy(&self, h: &FileHandle) {
        let (Some(cache), Some(rel)) = (&self.cache, &h.rel) else {
            return;
        };
        if h.writable || *h.mode.lock() != Mode::Cached {
            return;
        }
        let generation = cache.ledger.generation();
        if h.seen_generation.swap(generation, Ordering::Relaxed) == generation {
            return;
        }
        if h.copy.lock().is_some() {
            return;
        }
        let Ok(st) = rustix::fs::fstat(&*h.fd) else {
            return;
        };
        if let Some(copy) = cache.lookup(rel, &st) {
            tracing::debug!("open handle of {} now reads the cached copy", rel.display());
            *h.copy.lock() = Some(Arc::new(copy));
        }
    }

    /// Writes to the source. `kill_suidgid`: the kernel says the writer may not keep the
    /// file's setuid/setgid bits (FUSE_HANDLE_KILLPRIV_V2). The write then runs with the
    /// writer's identity, so the source filesystem clears the bits exactly as it would for
    /// that writer (setgid too where the writer is not in the file's group). Truncates
    /// always run with the caller's identity, so the same holds for them.
    pub fn write(
        &self,
        caller: &Caller,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
    ) -> io::Result<u32> {
        let h = self.files.get(fh)?;
        let _writing = Writing::start(&h);
        let as_caller = if kill_suidgid {
            Some(self.creds.enter(caller)?)
        } else {
            None
        };
        self.before_change(&h);
        let mut done = 0;
        while done < data.len() {
            let n = rustix::io::pwrite(&*h.fd, &data[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        // What follows is the daemon's own bookkeeping (reading the file's end included).
        drop(as_caller);
        self.mirror(h.obj, |m| {
            fdio::pwrite_all(m.as_fd(), &data[..done], offset)
        });
        self.others_changed(h.obj, h.nodeid, h.fd.as_fd());
        if h.o_direct {
            drop_pages(&h, offset, done as u64, true);
        }
        Ok(done as u32)
    }

    /// The bytes of `h`'s file are about to change through it. A copy published since
    /// the handle opened (another open read enough to promote it) is made stale by the
    /// change: it is dropped first. A copy in flight is cancelled: it may have taken its
    /// "before" stat after this change's timestamps moved and read some of its bytes
    /// before they land, and its "after" stat would then match (a write moves the
    /// timestamps once, before its bytes): a copy the source never held.
    fn before_change(&self, h: &FileHandle) {
        let (Some(cache), Some(rel)) = (&self.cache, &h.rel) else {
            return;
        };
        cache.promoter.cancel(rel);
        let generation = cache.ledger.generation();
        if h.seen_generation.swap(generation, Ordering::Relaxed) != generation {
            cache.invalidate(rel);
            self.readers_leave_copies(h.obj);
        }
    }

    /// close(dup(fd)): lets the source filesystem see a close (NFS flushes there) while
    /// the handle itself stays open.
    pub fn flush(&self, fh: u64) -> io::Result<()> {
        drop(self.files.get(fh)?.fd.try_clone()?);
        Ok(())
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> io::Result<()> {
        fdio::sync(self.files.get(fh)?.fd.as_fd(), datasync)
    }

    /// Closes a handle. The last passthrough open of an inode closes its backing file's
    /// registration with the kernel.
    pub fn release(&self, fh: u64) {
        let Some(h) = self.files.remove(fh) else {
            return;
        };
        self.inodes.fds.unpin(h.nodeid, fh);
        if let Some(job) = h.job.lock().take() {
            job.reader_active.store(false, Ordering::Relaxed);
        }
        let mode = *h.mode.lock();
        let mut io = self.io.lock();
        let Some(state) = io.get_mut(&h.nodeid) else {
            return;
        };
        match mode {
            Mode::Passthrough => state.passthrough -= 1,
            Mode::Cached => state.cached -= 1,
            Mode::Direct => state.direct -= 1,
        }
        let mut closing = None;
        let last_passthrough = mode == Mode::Passthrough && state.passthrough == 0;
        if last_passthrough {
            state.backing = None;
            closing = state.token.take();
        }
        if state.is_idle() {
            io.remove(&h.nodeid);
        }
        drop(io);
        drop(closing);
        // No reader is left on this node's backing copy: stop mirroring into it; once no
        // node of the object has passthrough readers, lookups give it its own node again.
        if last_passthrough && self.end_mirror(h.obj, h.nodeid) {
            self.inodes.unretire(h.obj.0, h.obj.1);
        }
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> io::Result<()> {
        check_writable(&self.cfg)?;
        let h = self.files.get(fh)?;
        self.before_change(&h);
        let mode = FallocateFlags::from_bits_retain(mode as u32);
        rustix::fs::fallocate(&*h.fd, mode, offset, length)?;
        self.mirror(h.obj, |m| {
            Ok(rustix::fs::fallocate(m, mode, offset, length)?)
        });
        self.others_changed(h.obj, h.nodeid, h.fd.as_fd());
        Ok(())
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> io::Result<i64> {
        let h = self.files.get(fh)?;
        // Offsets pass through as the kernel's signed ones: a negative one is its EINVAL.
        let pos = match whence {
            libc::SEEK_SET => SeekFrom::Start(offset as u64),
            libc::SEEK_CUR => SeekFrom::Current(offset),
            libc::SEEK_END => SeekFrom::End(offset),
            libc::SEEK_DATA => SeekFrom::Data(offset as u64),
            libc::SEEK_HOLE => SeekFrom::Hole(offset as u64),
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        Ok(rustix::fs::seek(&*h.fd, pos)? as i64)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> io::Result<u32> {
        check_writable(&self.cfg)?;
        let fin = self.files.get(fh_in)?;
        let fout = self.files.get(fh_out)?;
        // The reply carries a u32 count; the kernel asks again for the rest.
        let len = len.min(1 << 30) as usize;
        self.before_change(&fout);
        let (mut at_in, mut at_out) = (off_in, off_out);
        let n = rustix::fs::copy_file_range(
            &*fin.fd,
            Some(&mut at_in),
            &*fout.fd,
            Some(&mut at_out),
            len,
        )?;
        // Passthrough readers of the target follow: the bytes, as they landed.
        self.mirror(fout.obj, |m| {
            let mut buf = vec![0u8; n];
            let got = fdio::pread_full(fout.fd.as_fd(), &mut buf, off_out)?;
            fdio::pwrite_all(m.as_fd(), &buf[..got], off_out)
        });
        self.others_changed(fout.obj, fout.nodeid, fout.fd.as_fd());
        Ok(n as u32)
    }
}

/// A read of the source file, counted.
fn read_source(
    counters: &super::Counters,
    h: &FileHandle,
    buf: &mut [u8],
    offset: u64,
) -> io::Result<usize> {
    let n = fdio::pread_full(h.fd.as_fd(), buf, offset)?;
    counters
        .source_read_bytes
        .fetch_add(n as u64, Ordering::Relaxed);
    Ok(n)
}

/// The end of the file open as `fd` (any descriptor of it, `O_PATH` or write-only too),
/// for the object's other kernel inodes to grow to. `None` for an empty file, or when
/// the byte cannot be read (then those inodes learn the size at their next getattr).
/// Runs as the daemon: the reopen is the daemon's, not the caller's.
fn tail(fd: BorrowedFd<'_>) -> Option<super::Tail> {
    let size = rustix::fs::fstat(fd).ok()?.st_size as u64;
    let at = size.checked_sub(1)?;
    let mut last = [0u8];
    let n = match fdio::pread_full(fd, &mut last, at) {
        Ok(n) => n,
        Err(_) => {
            let proc = fdio::proc_path(fd);
            let readable =
                rustix::fs::open(&proc, oflags(libc::O_RDONLY), rustix::fs::Mode::empty())
                    .map_err(|e| tracing::debug!("cannot reopen a file to read its last byte: {e}"))
                    .ok()?;
            fdio::pread_full(readable.as_fd(), &mut last, at).ok()?
        }
    };
    // Shortened meanwhile: the change that did it tells the other inodes.
    (n == 1).then_some(super::Tail {
        size,
        last: last[0],
    })
}

/// O_DIRECT's meaning on the source: the range's pages written back (`written`) and
/// dropped. Advice only: a failure changes nothing the caller sees.
fn drop_pages(h: &FileHandle, offset: u64, len: u64, written: bool) {
    if len == 0 {
        return;
    }
    if written {
        let _ = sys::sync_range(h.fd.as_fd(), offset, len);
    }
    let _ = rustix::fs::fadvise(&*h.fd, offset, NonZeroU64::new(len), Advice::DontNeed);
}
