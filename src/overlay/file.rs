//! Open files: open, create, read, write, flush, fsync, release, fallocate, lseek,
//! copy_file_range; and where each open is served from.
//!
//! Every handle owns a descriptor of the source file, opened with the caller's identity
//! through the inode's `O_PATH` descriptor (`/proc/self/fd/N`), so the source decides
//! permissions and no path is resolved twice. How an open is served is decided by the
//! object's owner (`objects.rs`), in one step with everything else that decides it:
//! - a reader of a file whose cached copy is valid reads the copy: by kernel passthrough
//!   where the kernel agreed to it, else through the daemon with the page cache kept;
//! - where the daemon need not see the bytes (writers; readers whose reads do not count
//!   toward promotion), the kernel reads and writes the SOURCE file itself by
//!   passthrough, at native speed;
//! - otherwise the daemon serves it from SOURCE, counting its reads for the policy, and
//!   moves it to the copy once one is published (same bytes, validated).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::num::NonZeroU64;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use rustix::fs::{Advice, AtFlags, FallocateFlags, OFlags, SeekFrom};

use super::objects::{Admitted, Backing, BackingToken, Change, Mode, Obj, Ticket, Want};
use super::{Caller, Entry, Overlay, check_writable};
use crate::cache::promoter::Job;
use crate::cache::store::Provenance;
use crate::config::PromoteMode;
use crate::{fdio, policy, sys};

/// Registers a backing file with the kernel for a passthrough open (fuser's
/// `ReplyOpen::open_backing`), returning the registration as an opaque token.
pub type Register<'a> = &'a dyn Fn(BorrowedFd<'_>) -> io::Result<BackingToken>;

pub(super) struct FileHandle {
    /// The source file, opened as the caller; also its inode's descriptor while open.
    /// Unset for an open of a cached copy answered without SOURCE (`open_from_memory`):
    /// then it is opened the first time something needs it (`Overlay::source_of`).
    source: OnceLock<Arc<OwnedFd>>,
    /// Who opened it and how: what a late open of the source file uses.
    opener: Caller,
    flags: i32,
    pub(super) nodeid: u64,
    /// The source object.
    pub(super) obj: Obj,
    /// Opened for writing: never reads a copy; no copy is published while it is open.
    pub(super) writable: bool,
    /// Opened with O_DIRECT: the source's pages are written back and dropped after each
    /// transfer, so nothing of it stays in the page cache.
    pub(super) o_direct: bool,
    /// Set by the owner (`Objects::admit`), changed only if the kernel refuses the
    /// backing file.
    pub(super) mode: Mutex<Mode>,
    /// Path relative to SOURCE, for the cache; `None` when it has none.
    rel: Option<PathBuf>,
    /// The cached copy a daemon-served open reads from; set and cleared by the owner.
    pub(super) copy: Mutex<Option<Arc<File>>>,
    /// SOURCE's size when opened: a file smaller than `promote_after` is promoted once
    /// this open has read all of it.
    size: u64,
    read_bytes: AtomicU64,
    /// The cache index generation last checked for a new copy.
    seen_generation: AtomicU64,
    /// The policy has nothing (more) to do for this handle: it promoted the file, or it
    /// writes, or its reads do not count.
    promoted: AtomicBool,
    job: Mutex<Option<Arc<Job>>>,
    /// A close(2) of it was seen (FLUSH): its release is probably on its way.
    pub(super) closed: AtomicBool,
}

/// Descriptors a predecessor left open for this process, by number: each is taken once,
/// however many handles name it.
pub(super) type Inherited = std::collections::HashMap<i32, Arc<OwnedFd>>;

/// Takes descriptor `n` a predecessor handed over (shared if already taken).
pub(super) fn inherited(fds: &mut Inherited, n: i32) -> Result<Arc<OwnedFd>, String> {
    use std::os::fd::FromRawFd;
    if let Some(fd) = fds.get(&n) {
        return Ok(fd.clone());
    }
    // SAFETY: only checks that `n` is open.
    if unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
        return Err(format!("descriptor {n} was not handed over"));
    }
    // SAFETY: the predecessor left `n` open for this process to own, and it is taken once.
    let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(n) });
    rustix::io::fcntl_setfd(&*fd, rustix::io::FdFlags::CLOEXEC).map_err(|e| e.to_string())?;
    fds.insert(n, fd.clone());
    Ok(fd)
}

/// A passthrough open's node registration across a restart: whether it is of the SOURCE
/// file, and the kernel's number.
pub(super) type Registration = (bool, u32);

/// A handle a predecessor served: its number, the handle, its mode, its registration.
pub(super) type Carried = (u64, FileHandle, Mode, Option<Registration>);

fn mode_code(m: Mode) -> u8 {
    match m {
        Mode::PassCopy => 0,
        Mode::PassSource => 1,
        Mode::Cached => 2,
        Mode::Direct => 3,
    }
}

impl FileHandle {
    /// Writes what a successor needs to serve this handle on as before (a live restart):
    /// its identity, how it is served, and the numbers of its descriptors, which the
    /// caller keeps open across execve(2) (`keep`). `backing`: its node's registration
    /// (whether of the SOURCE file, and the kernel's number), for a passthrough open.
    pub(super) fn export(
        &self,
        fh: u64,
        backing: Option<Registration>,
        w: &mut crate::codec::Writer,
        keep: &mut Vec<i32>,
    ) {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let mut fd = |f: Option<i32>| {
            let n = f.unwrap_or(-1);
            if n >= 0 {
                keep.push(n);
            }
            w.u32(n as u32);
        };
        fd(self.source.get().map(|f| f.as_raw_fd()));
        fd(self.copy.lock().as_ref().map(|f| f.as_raw_fd()));
        w.u64(fh);
        w.u64(self.nodeid);
        w.u64(self.obj.0);
        w.u64(self.obj.1);
        w.u32(self.flags as u32);
        w.u32(self.opener.uid);
        w.u32(self.opener.gid);
        w.u32(self.opener.pid);
        w.u8(u8::from(self.writable));
        w.u8(u8::from(self.o_direct));
        w.u8(mode_code(*self.mode.lock()));
        match &self.rel {
            Some(r) => {
                w.u8(1);
                w.bytes(r.as_os_str().as_bytes());
            }
            None => w.u8(0),
        }
        w.u64(self.size);
        w.u64(self.read_bytes.load(Ordering::Relaxed));
        w.u8(u8::from(self.promoted.load(Ordering::Relaxed)));
        match backing {
            Some((source, id)) => {
                w.u8(1);
                w.u8(u8::from(source));
                w.u32(id);
            }
            None => w.u8(0),
        }
    }

    /// Reads one handle `export` wrote: the handle, its number, its mode and its node's
    /// registration (whether of the SOURCE file, and the kernel's number).
    /// `handed`: the descriptors were handed over (a live restart); else they died
    /// with a predecessor and none is taken.
    pub(super) fn import(
        r: &mut crate::codec::Reader<'_>,
        fds: &mut Inherited,
        handed: bool,
    ) -> Result<Carried, String> {
        use std::os::unix::ffi::OsStrExt;
        let bad = || "the open files handed over are damaged".to_string();
        let mut source = r.u32().ok_or_else(bad)? as i32;
        let mut copy = r.u32().ok_or_else(bad)? as i32;
        if !handed {
            (source, copy) = (-1, -1);
        }
        let source = (source >= 0).then(|| inherited(fds, source)).transpose()?;
        let copy = (copy >= 0).then(|| inherited(fds, copy)).transpose()?;
        let fh = r.u64().ok_or_else(bad)?;
        let nodeid = r.u64().ok_or_else(bad)?;
        let obj = (r.u64().ok_or_else(bad)?, r.u64().ok_or_else(bad)?);
        let flags = r.u32().ok_or_else(bad)? as i32;
        let opener = Caller {
            uid: r.u32().ok_or_else(bad)?,
            gid: r.u32().ok_or_else(bad)?,
            pid: r.u32().ok_or_else(bad)?,
        };
        let writable = r.u8().ok_or_else(bad)? != 0;
        let o_direct = r.u8().ok_or_else(bad)? != 0;
        let mode = match r.u8().ok_or_else(bad)? {
            0 => Mode::PassCopy,
            1 => Mode::PassSource,
            2 => Mode::Cached,
            3 => Mode::Direct,
            _ => return Err(bad()),
        };
        let rel = match r.u8().ok_or_else(bad)? {
            0 => None,
            _ => Some(PathBuf::from(OsStr::from_bytes(r.bytes().ok_or_else(bad)?))),
        };
        let size = r.u64().ok_or_else(bad)?;
        let read_bytes = r.u64().ok_or_else(bad)?;
        let promoted = r.u8().ok_or_else(bad)? != 0;
        let backing = match r.u8().ok_or_else(bad)? {
            0 => None,
            _ => Some((r.u8().ok_or_else(bad)? != 0, r.u32().ok_or_else(bad)?)),
        };
        let copy = copy.map(|fd| {
            // The copy's descriptor, as the File the handle reads it through.
            Arc::new(File::from(
                fd.try_clone().expect("dup of an inherited descriptor"),
            ))
        });
        let h = FileHandle {
            source: source.map(OnceLock::from).unwrap_or_default(),
            opener,
            flags,
            nodeid,
            obj,
            writable,
            o_direct,
            mode: Mutex::new(mode),
            rel,
            copy: Mutex::new(copy),
            size,
            read_bytes: AtomicU64::new(read_bytes),
            seen_generation: AtomicU64::new(0),
            promoted: AtomicBool::new(promoted),
            job: Mutex::new(None),
            closed: AtomicBool::new(false),
        };
        Ok((fh, h, mode, backing))
    }
}

#[cfg(test)]
impl FileHandle {
    /// A handle of `obj` through `nodeid` on `fd`, for the owner's tests.
    pub(super) fn for_test(fd: OwnedFd, nodeid: u64, obj: Obj, writable: bool) -> FileHandle {
        FileHandle {
            source: OnceLock::from(Arc::new(fd)),
            opener: Caller::ROOT,
            flags: 0,
            nodeid,
            obj,
            writable,
            o_direct: false,
            mode: Mutex::new(Mode::Cached),
            rel: None,
            copy: Mutex::new(None),
            size: 0,
            read_bytes: AtomicU64::new(0),
            seen_generation: AtomicU64::new(0),
            promoted: AtomicBool::new(true),
            job: Mutex::new(None),
            closed: AtomicBool::new(false),
        }
    }
}

/// How the kernel is to serve an open.
pub struct Opened {
    pub fh: u64,
    /// Serve by passthrough to the file this registration stands for (shared by all
    /// passthrough opens of the inode).
    pub passthrough: Option<BackingToken>,
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

/// How long a reader's open waits for the release of writers already closed by their
/// processes (`await_closing_writers`): the kernel sends it right after close(2) returns.
const CLOSING_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// FUSE's open flags (an i32) as rustix's, close-on-exec.
fn oflags(flags: i32) -> OFlags {
    OFlags::from_bits_retain(flags as u32) | OFlags::CLOEXEC
}

fn is_write(flags: i32) -> bool {
    matches!(flags & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR) || flags & libc::O_TRUNC != 0
}

/// Ends a change (`Objects::change`) when the operation that made it returns.
struct Changing<'a> {
    ov: &'a Overlay,
    change: Change,
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.ov.objects.changed(&self.change);
    }
}

/// What an open found out before asking the owner.
struct Request {
    nodeid: u64,
    obj: Obj,
    flags: i32,
    write: bool,
    rel: Option<PathBuf>,
    /// A regular file's attributes: from SOURCE, or from the metadata cache for an open
    /// answered without SOURCE.
    attrs: Option<Attrs>,
}

#[derive(Clone, Copy)]
struct Attrs {
    mode: u32,
    prov: Provenance,
}

impl Attrs {
    fn of(st: &rustix::fs::Stat) -> Attrs {
        Attrs {
            mode: st.st_mode,
            prov: Provenance::of(st),
        }
    }
}

impl Overlay {
    pub fn open(
        &self,
        caller: &Caller,
        nodeid: u64,
        flags: i32,
        register: Register<'_>,
    ) -> io::Result<Opened> {
        let write = is_write(flags);
        if write {
            check_writable(&self.cfg)?;
        }
        let (inode, path_fd) = self.node(nodeid)?;
        let obj = (inode.dev, inode.ino);
        if inode.is_regular() {
            self.inodes.check_named(&inode)?;
            // Before SOURCE is opened: an O_TRUNC must reach it only on the open that
            // stays.
            if (write || flags & libc::O_DIRECT != 0)
                && self.objects.must_retire(obj, nodeid, write)
            {
                return Err(self.retire(&inode));
            }
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
        let req = Request {
            nodeid,
            obj,
            flags,
            write,
            rel: (regular && self.cache.is_some())
                .then(|| self.rel_of(&inode))
                .flatten(),
            attrs: if regular {
                Some(Attrs::of(&rustix::fs::fstat(&*fd)?))
            } else {
                None
            },
        };
        if !write {
            self.await_closing_writers(obj);
        }
        let ticket = self.objects.ticket(obj, nodeid);
        let copy = self.copy_for(&req, &ticket);
        self.serve(caller, req, Some(fd), (ticket, copy), register)
            .map_err(|retire| retire.unwrap_or_else(|| self.retire(&inode)))
    }

    /// An open answered without SOURCE (invariant 11): a reader of a regular file whose
    /// attributes are fresh in the metadata cache and whose cached copy matches them. The
    /// mount shows SOURCE as the metadata cache last saw it, and the copy is those very
    /// bytes; SOURCE is opened later only if something needs it (`source_of`). `None`
    /// when the open needs SOURCE (nothing was done then).
    pub fn open_from_memory(
        &self,
        caller: &Caller,
        nodeid: u64,
        flags: i32,
        register: Register<'_>,
    ) -> Option<io::Result<Opened>> {
        let meta = self.meta.as_ref()?;
        if is_write(flags) || flags & (libc::O_DIRECT | libc::O_TRUNC) != 0 {
            return None;
        }
        self.cache.as_ref()?;
        let inode = self.inode(nodeid).ok()?;
        if !inode.is_regular() {
            return None;
        }
        let obj = (inode.dev, inode.ino);
        let st = meta.attr(obj)?;
        if !self.mode_grants(caller, &st, 0o4) {
            // Only SOURCE can say (an ACL may allow what the mode bits do not).
            return None;
        }
        let req = Request {
            nodeid,
            obj,
            flags,
            write: false,
            rel: Some(self.rel_of(&inode)?),
            attrs: Some(Attrs {
                mode: st.st_mode,
                prov: Provenance::of_libc(&st),
            }),
        };
        let ticket = self.objects.ticket(obj, nodeid);
        let copy = self.copy_for(&req, &ticket)?;
        Some(
            self.serve(caller, req, None, (ticket, Some(copy)), register)
                .map_err(|retire| retire.unwrap_or_else(|| self.retire(&inode))),
        )
    }

    /// A reader that opens right after the file's last writer closed it: waits (up to
    /// CLOSING_WAIT) for the kernel's release of that writer. Opened while the writer's
    /// passthrough open was still live, the reader would have been given the same SOURCE
    /// backing (one per inode), read by the kernel alone: its reads would never count
    /// toward promotion, nor could it move to a copy.
    fn await_closing_writers(&self, obj: (u64, u64)) {
        let end = std::time::Instant::now() + CLOSING_WAIT;
        while self.objects.only_closing_writers(obj) && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// The copy an open of `req` would read: only for reading, only while the owner
    /// allows one (`ticket`), and only while it matches the source's attributes.
    fn copy_for(&self, req: &Request, ticket: &Ticket) -> Option<Arc<File>> {
        match (&self.cache, &req.rel, &req.attrs) {
            (Some(cache), Some(rel), Some(a)) if !req.write && ticket.copy_allowed() => {
                cache.lookup(rel, &a.prov).map(Arc::new)
            }
            _ => None,
        }
    }

    /// Admits an open handle of `req` with its owner and answers how it is served.
    /// `source`: the SOURCE file, `None` for an open answered without SOURCE.
    /// `Err(None)`: its node must be retired (see `retire`).
    fn serve(
        &self,
        caller: &Caller,
        req: Request,
        source: Option<Arc<OwnedFd>>,
        (ticket, copy): (Ticket, Option<Arc<File>>),
        register: Register<'_>,
    ) -> Result<Opened, Option<io::Error>> {
        let Request {
            nodeid,
            obj,
            flags,
            write,
            rel,
            attrs,
        } = req;
        let size = attrs.map_or(0, |a| a.prov.size);
        let ignored = !write && rel.is_some() && self.reader_ignored(caller);
        let counts = !write && !ignored && self.reads_count(rel.is_some(), size);
        let suid = attrs.is_some_and(|a| a.mode & (libc::S_ISUID | libc::S_ISGID) != 0);
        let want = Want {
            write,
            o_direct: flags & libc::O_DIRECT != 0,
            counts,
            passthrough: self.passthrough_enabled(),
            // The kernel writes a passthrough file as the daemon, which keeps the setuid
            // and setgid bits a writer without CAP_FSETID must lose: such writes go
            // through the daemon, which writes as the caller.
            source_backing: attrs.is_some() && !(write && suid),
        };
        // A writable descriptor of the copy, kept as its mirror if this open becomes its
        // node's first passthrough reader of it.
        let mirror = copy
            .as_ref()
            .filter(|_| want.passthrough && !ticket.copy_readers())
            .and_then(|c| open_mirror(c));
        let backing_source = source
            .as_ref()
            .filter(|_| want.passthrough && want.source_backing && copy.is_none())
            .cloned();
        let fh = self.files.reserve();
        let h = Arc::new(FileHandle {
            source: source.clone().map(OnceLock::from).unwrap_or_default(),
            opener: *caller,
            flags,
            nodeid,
            obj,
            writable: write,
            o_direct: want.o_direct,
            mode: Mutex::new(Mode::Cached),
            rel,
            copy: Mutex::new(None),
            size,
            read_bytes: AtomicU64::new(0),
            seen_generation: AtomicU64::new(
                self.cache.as_ref().map_or(0, |c| c.ledger.generation()),
            ),
            promoted: AtomicBool::new(!counts),
            job: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        let Admitted::Serve { mode, backing } =
            self.objects
                .admit(&h, want, ticket, (copy, mirror), backing_source)
        else {
            return Err(None);
        };
        if write {
            self.write_opened(&h);
        }
        let token = backing.and_then(|b| self.backing_token(&h, b, register));
        let mode = if token.is_some() {
            mode
        } else {
            *h.mode.lock()
        };
        self.count_open(&h, mode);
        let reads_copy = h.copy.lock().is_some();
        self.files.put(fh, h);
        if let Some(fd) = source {
            self.inodes.fds.pin(nodeid, fh, fd);
        }
        self.publish_handles();
        Ok(Opened {
            fh,
            passthrough: token,
            direct_io: mode == Mode::Direct,
            keep_cache: mode == Mode::Cached && reads_copy,
        })
    }

    /// The handle's SOURCE file. An open answered without SOURCE opens it now, the first
    /// time something needs it (a read after a cache error, a lock, a fsync), as the
    /// caller who opened the handle and with the same flags; ESTALE if the name no
    /// longer leads to the handle's object.
    pub(super) fn source_of(&self, h: &FileHandle) -> io::Result<Arc<OwnedFd>> {
        if let Some(fd) = h.source.get() {
            return Ok(fd.clone());
        }
        let (_, path_fd) = self.node(h.nodeid)?;
        let fd = {
            let _as = self.creds.enter(&h.opener)?;
            let proc = fdio::proc_path(path_fd.as_fd());
            // Never O_TRUNC: a truncate asked for at the open was done then, and a
            // handle taken over after a crash opens again here.
            let flags = oflags(h.flags & !(STRIP | libc::O_TRUNC));
            let open = || Ok(rustix::fs::open(&proc, flags, rustix::fs::Mode::empty())?);
            self.inodes.fds.retry(open)?
        };
        let st = rustix::fs::fstat(&fd)?;
        if (st.st_dev, st.st_ino) != h.obj {
            return Err(io::Error::from_raw_os_error(libc::ESTALE));
        }
        let _ = h.source.set(Arc::new(fd));
        Ok(h.source.get().cloned().expect("set above"))
    }

    /// Whether the handle has its SOURCE file open (else it was answered from memory and
    /// nothing of it touched SOURCE yet).
    pub(super) fn has_source(&self, h: &FileHandle) -> bool {
        h.source.get().is_some()
    }

    /// The registration a passthrough open of `h` is answered with: the one its inode
    /// shares, or `file` registered now. `None` if the kernel refuses it (then `h` is
    /// served by the daemon).
    fn backing_token(
        &self,
        h: &FileHandle,
        backing: Backing,
        register: Register<'_>,
    ) -> Option<BackingToken> {
        let file = match backing {
            Ok(shared) => return Some(shared),
            Err(file) => file,
        };
        match register(file.as_fd()) {
            Ok(t) => Some(self.objects.registered(h, t)),
            Err(e) => {
                let shared = self.objects.refused(h);
                if shared.is_none() {
                    tracing::warn!(
                        "kernel refused a passthrough backing file, serving it through the daemon: {e}"
                    );
                }
                shared
            }
        }
    }

    /// Counts an open of a regular file as served from the cache or from SOURCE.
    fn count_open(&self, h: &FileHandle, mode: Mode) {
        let Some(cache) = &self.cache else { return };
        if h.rel.is_none() {
            return;
        }
        let hit = mode == Mode::PassCopy || h.copy.lock().is_some();
        let counter = if hit { &cache.hits } else { &cache.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        if mode == Mode::PassCopy {
            let c = &self.counters;
            c.passthrough_opens.fetch_add(1, Ordering::Relaxed);
            c.passthrough_bytes.fetch_add(h.size, Ordering::Relaxed);
        }
    }

    /// An open the kernel would refuse on an inode that has passthrough readers of a
    /// copy (anything but passthrough to the same copy): the node is retired for new opens
    /// (`InodeTable::retire`) and the open answered ESTALE, which makes the kernel walk
    /// the path again and open the object's new inode. The readers go on with their copy,
    /// which gets every write and truncate made through the mount (its mirror), so they
    /// read what a plain directory would show them (invariant 10).
    fn retire(&self, inode: &crate::inodes::Inode) -> io::Error {
        // An alias whose own passthrough readers of a copy came meanwhile would refuse
        // the retried open again: a fresh one then.
        let obj = (inode.dev, inode.ino);
        let alias = self
            .inodes
            .retire(inode, |alias| !self.objects.copy_readers_on(obj, alias));
        tracing::debug!(
            "node {} has passthrough readers of a copy: new opens go to node {alias:#x}",
            inode.nodeid
        );
        io::Error::from_raw_os_error(libc::ESTALE)
    }

    /// A writer was admitted: the source is about to change, so its copy goes (and a copy
    /// in flight stops), and the metadata cache stops answering for the object until the
    /// writer closes: its size and times move without the daemon seeing each write.
    pub(super) fn write_opened(&self, h: &FileHandle) {
        if let Some(meta) = &self.meta {
            meta.hold(h.obj);
        }
        if let (Some(cache), Some(rel)) = (&self.cache, &h.rel) {
            cache.invalidate(rel);
        }
    }

    /// Whether reads of a file of `size` bytes can count toward its promotion: the
    /// policy is on, and one open could read enough.
    fn reads_count(&self, has_path: bool, size: u64) -> bool {
        has_path
            && self.cache.is_some()
            && self.cfg.promote == PromoteMode::Auto
            && size > 0
            && policy::promote_threshold(size, self.cfg.promote_after) <= size
    }

    /// Applies a change to every copy passthrough readers of the object use. A
    /// cache-side failure drops that mirror (logged); it never fails the caller's write.
    fn mirror(&self, c: &Changing<'_>, f: impl Fn(&File) -> io::Result<()>) {
        for (nodeid, m) in &c.change.mirrors {
            if let Err(e) = f(m) {
                tracing::warn!("cannot update the copy passthrough readers use: {e}");
                self.objects.drop_mirror(c.change.obj(), *nodeid);
            }
        }
    }

    /// Starts a change of `obj` through the mount (through node `via`, or by a path),
    /// ended when the returned guard drops.
    fn change(&self, obj: Obj, via: Option<u64>) -> Changing<'_> {
        Changing {
            ov: self,
            change: self.objects.change(obj, via),
        }
    }

    /// `nodeid` was truncated to `size` through the mount. Passthrough readers read the
    /// backing copy, which no longer matches: it is truncated the same way (the copy is
    /// already out of the cache, its open readers keep it until they close), so they
    /// see the new size, not the old bytes. A cache-side failure is logged; readers then
    /// keep the old bytes past `size` until they reopen.
    pub(super) fn truncated(&self, inode: &crate::inodes::Inode, size: u64) {
        let obj = (inode.dev, inode.ino);
        let c = self.change(obj, None);
        self.mirror(&c, |m| Ok(rustix::fs::ftruncate(m, size)?));
        if let Ok(fd) = self.fd(inode) {
            self.others_changed(obj, inode.nodeid, fd.as_fd());
        }
    }

    /// The object's bytes or size changed through node `via`: its other kernel inodes
    /// (its own node and its aliases, see `retire`) drop their cached attributes and
    /// pages and grow to the new size, so their readers, mappings too, see the change as
    /// on a plain directory.
    ///
    /// That takes page locks of those inodes, and a write in flight there holds one (the
    /// kernel keeps a partly written page locked until the daemon answers): if its worker
    /// were waiting here too, for this node's pages, which this call's own write holds,
    /// neither would ever go on. So the call waits for the kernel only on nodes with no
    /// write being served; another's change lands there just after that write returns (the
    /// two writes ran at once). Of two such writes, at least one sees the other (both
    /// count under the owner's lock), so they never wait for each other.
    pub(super) fn others_changed(&self, obj: Obj, via: u64, fd: BorrowedFd<'_>) {
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
            invalidate(n, tail, !self.objects.writing_through(obj, n));
        }
    }

    pub fn create(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        new: super::NewMode,
        flags: i32,
        register: Register<'_>,
    ) -> io::Result<(Entry, Opened)> {
        check_writable(&self.cfg)?;
        let (parent, pfd) = self.node(parent)?;
        // O_CREAT of an existing file that readers have open by passthrough: as in `open`.
        if let Ok(st) = rustix::fs::statat(&*pfd, name, AtFlags::SYMLINK_NOFOLLOW)
            && let Ok(existing) = self.inode(self.inodes.nodeid_of(st.st_dev, st.st_ino))
            && self
                .objects
                .must_retire((existing.dev, existing.ino), existing.nodeid, true)
        {
            return Err(self.retire(&existing));
        }
        let fd = {
            let _as = self.creds.enter(caller)?;
            // SOURCE applies the umask, or the parent's default ACL instead (`creds`).
            let _mask = super::creds::Umask::enter(new.umask)?;
            let mode = new.mode;
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
        if flags & libc::O_TRUNC != 0 {
            // As in `open`.
            self.truncated(&inode, 0);
        }
        let req = Request {
            nodeid: inode.nodeid,
            obj: (inode.dev, inode.ino),
            flags,
            write: is_write(flags),
            rel: self.cache.as_ref().and(self.rel_child(&parent, name)),
            attrs: Some(Attrs::of(&rustix::fs::fstat(&*fd)?)),
        };
        let ticket = self.objects.ticket(req.obj, req.nodeid);
        let copy = self.copy_for(&req, &ticket);
        let opened = self
            .serve(caller, req, Some(fd), (ticket, copy), register)
            .map_err(|retire| retire.unwrap_or_else(|| self.retire(&inode)))?;
        Ok((Entry::new(inode.nodeid, &stat), opened))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        self.read_handle(&*self.files.get(fh)?, offset, size)
    }

    pub(super) fn read_handle(
        &self,
        h: &FileHandle,
        offset: u64,
        size: u32,
    ) -> io::Result<Vec<u8>> {
        self.maybe_switch_to_copy(h);
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
                    read_source(counters, &*self.source_of(h)?, &mut buf, offset)?
                }
            },
            None => {
                let fd = self.source_of(h)?;
                let n = read_source(counters, &fd, &mut buf, offset)?;
                if h.o_direct {
                    drop_pages(fd.as_fd(), offset, n as u64, false);
                }
                n
            }
        };
        buf.truncate(n);
        if copy.is_none() {
            self.count_read(h, offset, n as u64);
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
    /// matches the source (through the owner: not if a change came meanwhile).
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
        let ticket = self.objects.ticket(h.obj, h.nodeid);
        if !ticket.copy_allowed() {
            return;
        }
        let Some(fd) = h.source.get() else { return };
        let Ok(st) = rustix::fs::fstat(&**fd) else {
            return;
        };
        if let Some(copy) = cache.lookup(rel, &Provenance::of(&st))
            && self.objects.adopt(h, ticket, Arc::new(copy))
        {
            tracing::debug!("open handle of {} now reads the cached copy", rel.display());
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
        again: bool,
    ) -> io::Result<u32> {
        let h = self.files.get(fh)?;
        let fd = self.source_of(&h)?;
        // Sent again after a failover (see `fuse.rs`): an append the dead daemon made
        // already is there, at the offset the kernel gave (the file's end when it was
        // sent); appending it again would write it twice. Other writes land at their
        // offset and may simply be done again.
        if again && h.flags & libc::O_APPEND != 0 && appended_already(fd.as_fd(), offset, data) {
            return Ok(data.len() as u32);
        }
        let c = self.change(h.obj, Some(h.nodeid));
        let as_caller = if kill_suidgid {
            Some(self.creds.enter(caller)?)
        } else {
            None
        };
        let mut done = 0;
        while done < data.len() {
            let n = rustix::io::pwrite(&*fd, &data[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        // What follows is the daemon's own bookkeeping (reading the file's end included).
        drop(as_caller);
        self.mirror(&c, |m| fdio::pwrite_all(m.as_fd(), &data[..done], offset));
        self.others_changed(h.obj, h.nodeid, fd.as_fd());
        if h.o_direct {
            drop_pages(fd.as_fd(), offset, done as u64, true);
        }
        Ok(done as u32)
    }

    /// close(dup(fd)): lets the source filesystem see a close (NFS flushes there) while
    /// the handle itself stays open.
    /// Also marks a writer as closed by its process: its release follows (unless the
    /// descriptor was duplicated), and a copy may wait for it (`promoter::Gate`).
    pub fn flush(&self, fh: u64) -> io::Result<()> {
        let h = self.files.get(fh)?;
        if h.writable {
            h.closed.store(true, Ordering::Relaxed);
        }
        // Not opened: SOURCE has nothing to flush.
        if let Some(fd) = h.source.get() {
            drop(fd.try_clone()?);
        }
        Ok(())
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> io::Result<()> {
        let h = self.files.get(fh)?;
        match h.source.get() {
            Some(fd) => fdio::sync(fd.as_fd(), datasync),
            // A reader answered without SOURCE wrote nothing there.
            None => Ok(()),
        }
    }

    /// Closes a handle. The last passthrough open of an inode closes its backing file's
    /// registration with the kernel.
    pub fn release(&self, fh: u64) {
        let Some(h) = self.files.remove(fh) else {
            return;
        };
        self.publish_handles();
        self.inodes.fds.unpin(h.nodeid, fh);
        if let Some(job) = h.job.lock().take() {
            job.reader_active.store(false, Ordering::Relaxed);
        }
        // No node of the object has passthrough readers of a copy left: lookups give it
        // its own node again.
        if self.objects.release(&h) {
            self.inodes.unretire(h.obj.0, h.obj.1);
        }
        if h.writable {
            if let Some(meta) = &self.meta {
                meta.unhold(h.obj);
            }
            if *h.mode.lock() == Mode::PassSource {
                // Its writes went kernel to SOURCE: every kernel inode of the object,
                // this one too (its page cache from earlier opens), takes them in.
                if let Some(fd) = h.source.get() {
                    self.others_changed(h.obj, h.nodeid, fd.as_fd());
                }
                if let Some(invalidate) = self.invalidator.get() {
                    invalidate(h.nodeid, None, false);
                }
            } else {
                self.meta_changed(h.obj);
            }
        }
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> io::Result<()> {
        check_writable(&self.cfg)?;
        let h = self.files.get(fh)?;
        let fd = self.source_of(&h)?;
        let c = self.change(h.obj, Some(h.nodeid));
        let mode = FallocateFlags::from_bits_retain(mode as u32);
        rustix::fs::fallocate(&*fd, mode, offset, length)?;
        self.mirror(&c, |m| Ok(rustix::fs::fallocate(m, mode, offset, length)?));
        self.others_changed(h.obj, h.nodeid, fd.as_fd());
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
        // A reader of a copy seeks in the copy (the same bytes, so the same data and
        // holes as far as a reader can tell), without SOURCE.
        let copy = h.copy.lock().clone();
        if let Some(copy) = copy {
            return Ok(rustix::fs::seek(&*copy, pos)? as i64);
        }
        Ok(rustix::fs::seek(&*self.source_of(&h)?, pos)? as i64)
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
        let (fd_in, fd_out) = (self.source_of(&fin)?, self.source_of(&fout)?);
        // The reply carries a u32 count; the kernel asks again for the rest.
        let len = len.min(1 << 30) as usize;
        let c = self.change(fout.obj, Some(fout.nodeid));
        let (mut at_in, mut at_out) = (off_in, off_out);
        let n = rustix::fs::copy_file_range(
            &*fd_in,
            Some(&mut at_in),
            &*fd_out,
            Some(&mut at_out),
            len,
        )?;
        // Passthrough readers of the target follow: the bytes, as they landed, read
        // through a descriptor of the daemon's own (the caller's may be write-only).
        if !c.change.mirrors.is_empty() {
            match reopen_readable(fd_out.as_fd()) {
                Ok(src) => self.mirror(&c, |m| {
                    let mut buf = vec![0u8; n];
                    let got = fdio::pread_full(src.as_fd(), &mut buf, off_out)?;
                    fdio::pwrite_all(m.as_fd(), &buf[..got], off_out)
                }),
                Err(e) => self.mirror(&c, |_| {
                    Err(io::Error::other(format!("reopening the target: {e}")))
                }),
            }
        }
        self.others_changed(fout.obj, fout.nodeid, fd_out.as_fd());
        Ok(n as u32)
    }
}

/// A read of the source file, counted.
fn read_source(
    counters: &super::Counters,
    fd: &OwnedFd,
    buf: &mut [u8],
    offset: u64,
) -> io::Result<usize> {
    let n = fdio::pread_full(fd.as_fd(), buf, offset)?;
    counters
        .source_read_bytes
        .fetch_add(n as u64, Ordering::Relaxed);
    Ok(n)
}

/// A readable descriptor of the file open as `fd` (any descriptor of it, write-only
/// too), opened as the daemon.
fn reopen_readable(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let proc = fdio::proc_path(fd);
    Ok(rustix::fs::open(
        &proc,
        oflags(libc::O_RDONLY),
        rustix::fs::Mode::empty(),
    )?)
}

/// Whether `data` is at `offset` of the file already.
fn appended_already(fd: BorrowedFd<'_>, offset: u64, data: &[u8]) -> bool {
    let Ok(st) = rustix::fs::fstat(fd) else {
        return false;
    };
    if (st.st_size as u64) < offset + data.len() as u64 {
        return false;
    }
    let mut there = vec![0u8; data.len()];
    matches!(fdio::pread_full(fd, &mut there, offset), Ok(n) if n == data.len()) && there == data
}

/// A writable descriptor of a cached copy (the daemon's own file), for its mirror.
fn open_mirror(copy: &File) -> Option<Arc<File>> {
    let proc = fdio::proc_path(copy.as_fd());
    match rustix::fs::open(&proc, oflags(libc::O_WRONLY), rustix::fs::Mode::empty()) {
        Ok(fd) => Some(Arc::new(File::from(fd))),
        Err(e) => {
            tracing::warn!(
                "cannot open the copy passthrough readers use for writing: {e}; they may \
                 read old bytes until they reopen"
            );
            None
        }
    }
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
            let readable = reopen_readable(fd)
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
fn drop_pages(fd: BorrowedFd<'_>, offset: u64, len: u64, written: bool) {
    if len == 0 {
        return;
    }
    if written {
        let _ = sys::sync_range(fd, offset, len);
    }
    let _ = rustix::fs::fadvise(fd, offset, NonZeroU64::new(len), Advice::DontNeed);
}
