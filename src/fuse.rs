//! The one `impl fuser::Filesystem`: convert the kernel's arguments, call the core,
//! convert the answer. No logic lives here.

use std::ffi::OsStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use fuser::BackingId;

use crate::config::Passthrough;
use crate::lane::Op;
use crate::overlay::{
    BackingToken, Caller, Entry, LockRequest, NewMode, Opened, Overlay, SetAttr, Statfs, Timestamp,
    XattrReply, needs_source,
};
use crate::sys;

pub struct CachefsFs {
    core: Arc<Overlay>,
    ttls: Ttls,
    /// The kernel reads directories without opening them (set at init): no OPENDIR and
    /// RELEASEDIR round trip per directory of a rescan.
    no_opendir: bool,
    /// The kernel can send again the requests a dead daemon held (FUSE_HAS_RESEND,
    /// Linux 6.9+): what crash failover needs.
    resend: bool,
}

/// The kernel cache lifetimes every answer carries.
#[derive(Clone, Copy)]
struct Ttls {
    attr: Duration,
    entry: Duration,
    negative: Duration,
}

impl Ttls {
    fn reply_entry(self, reply: ReplyEntry, op: &'static str, parent: u64, r: io::Result<Entry>) {
        match r {
            Ok(e) => reply.entry_with_ttls(
                &self.attr,
                &self.entry,
                &attr(e.nodeid, &e.stat),
                Generation(0),
            ),
            // A negative entry: the kernel remembers the miss, so a scanner probing for
            // missing subtitles does not ask again and again.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !self.negative.is_zero() => {
                let mut a = attr(0, &sys::zeroed_stat());
                a.ino = INodeNo(0);
                reply.entry_with_ttls(&Duration::ZERO, &self.negative, &a, Generation(0))
            }
            Err(e) => reply.error(fail(op, parent, &e)),
        }
    }
}

impl CachefsFs {
    pub fn new(core: Arc<Overlay>) -> CachefsFs {
        let cfg = core.cfg.clone();
        CachefsFs {
            core,
            ttls: Ttls {
                attr: cfg.attr_timeout,
                entry: cfg.entry_timeout,
                negative: cfg.negative_timeout,
            },
            no_opendir: false,
            resend: false,
        }
    }

    /// The filesystem of a session that resumes a connection another session initialized
    /// (`fuser::Session::resume_from_fd`): what that INIT negotiated is given, as `init`
    /// is not called again.
    pub fn resumed(core: Arc<Overlay>, no_opendir: bool, resend: bool) -> CachefsFs {
        CachefsFs {
            no_opendir,
            resend,
            ..CachefsFs::new(core)
        }
    }

    /// Whether INIT negotiated FUSE_NO_OPENDIR_SUPPORT.
    pub fn no_opendir(&self) -> bool {
        self.no_opendir
    }

    /// Whether the kernel announced FUSE_HAS_RESEND at INIT.
    pub fn resend(&self) -> bool {
        self.resend
    }

    /// Runs `f`, a request that needs SOURCE, where such requests run (`crate::lane`):
    /// a request the cache or memory can answer is answered before this, on the worker.
    fn on_source(&self, op: Op, f: impl FnOnce(&Arc<Overlay>) + Send + 'static) {
        let core = self.core.clone();
        self.core.lane.run(op, move || f(&core));
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

/// A request the kernel sends again after a failover (`Request::is_resend`) that made a
/// name the dead daemon may have made already: EEXIST then answers the name that is
/// there, as the first answer would have.
fn made_before(
    again: bool,
    r: io::Result<Entry>,
    found: impl FnOnce() -> io::Result<Entry>,
) -> io::Result<Entry> {
    match r {
        Err(e) if again && e.raw_os_error() == Some(libc::EEXIST) => found().or(Err(e)),
        r => r,
    }
}

/// The same for a request that removed a name: ENOENT is the removal done before.
fn gone_before(again: bool, r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if again && e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// Every error the adapter answers the kernel with passes through here, and is logged
/// here, once: the core returns errors and does not log them itself. What callers cause
/// in normal use (a missing name, a refused permission, a non-empty directory, a stale
/// handle the kernel retries) is logged at debug level; anything else (EIO, ENOSPC,
/// ENOMEM, a descriptor limit) says at warn level that something is wrong below.
fn fail(op: &'static str, ino: u64, e: &io::Error) -> Errno {
    let code = e.raw_os_error().unwrap_or(libc::EIO);
    if callers_own(code) {
        tracing::debug!("{op} node {ino}: {e}");
    } else {
        tracing::warn!("{op} node {ino}: {e}");
    }
    Errno::from_i32(code)
}

/// Errors that the plain directory would give the same caller: part of normal use.
fn callers_own(code: i32) -> bool {
    matches!(
        code,
        libc::ENOENT
            | libc::EEXIST
            | libc::ENOTEMPTY
            | libc::ENOTDIR
            | libc::EISDIR
            | libc::EACCES
            | libc::EPERM
            | libc::EINVAL
            | libc::ENAMETOOLONG
            | libc::ELOOP
            | libc::EXDEV
            | libc::ESTALE
            | libc::ENODATA
            | libc::ERANGE
            | libc::E2BIG
            | libc::ENOTSUP
            | libc::ENOSYS
            | libc::ENXIO
            | libc::ENOTTY
            | libc::ESPIPE
            | libc::EROFS
            | libc::EBUSY
            | libc::ETXTBSY
            | libc::EMLINK
            | libc::EFBIG
            | libc::EBADF
            | libc::EAGAIN
            | libc::EINTR
    )
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn dtype_kind(d: u8) -> FileType {
    match d {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// The kernel's view of a source object: the source's attributes under our node id.
fn attr(nodeid: u64, st: &sys::Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(nodeid),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: kind(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn timestamp(t: Option<TimeOrNow>) -> Option<Timestamp> {
    t.map(|t| match t {
        TimeOrNow::Now => Timestamp::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp::At(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                // Before the epoch: whole seconds down, nanoseconds up.
                let (s, ns) = (d.as_secs() as i64, d.subsec_nanos());
                if ns == 0 {
                    Timestamp::At(-s, 0)
                } else {
                    Timestamp::At(-s - 1, 1_000_000_000 - ns)
                }
            }
        },
    })
}

impl Filesystem for CachefsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Each capability is asked for only if the kernel offers it; the ones it lacks are
        // simply not used. Writeback cache is never asked for: it would disable passthrough
        // and let the kernel hold writes the source has not seen.
        // READDIRPLUS for every read of a directory, not only the first (no
        // FUSE_READDIRPLUS_AUTO): with "auto" the kernel asks for attributes only at
        // offset 0 and after a lookup in the directory, so a scanner that reads a whole
        // listing before it stats (find, fts) got the rest of a directory larger than one
        // reply without them, and each of those entries cost a LOOKUP round trip.
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_AUTO_INVAL_DATA
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_MAX_PAGES
            // Symlink targets are kept in the page cache: a symlink's target never
            // changes (a new target is a new object).
            | InitFlags::FUSE_CACHE_SYMLINKS
            // Directories are read without OPENDIR (answered ENOSYS once, then never sent
            // again): the kernel opens them itself with FOPEN_CACHE_DIR|FOPEN_KEEP_CACHE,
            // and reads come with handle 0. Read permission is the kernel's to check
            // (default_permissions, with allow_other) or the mount owner's alone.
            | InitFlags::FUSE_NO_OPENDIR_SUPPORT
            // The daemon clears setuid/setgid on a non-owner's write itself, as the source
            // filesystem would; without it the kernel asks for a chmod as the writer, which
            // a non-owner may not do, and the write fails.
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2
            // Locks are the daemon's to hold (on SOURCE, see `overlay::locks`): one
            // source file can have several kernel inodes, and the kernel keeps its own
            // locks per inode, so a passthrough reader's and a later writer's would
            // never meet. flock comes as lock requests with FUSE_LK_FLOCK.
            | InitFlags::FUSE_POSIX_LOCKS
            | InitFlags::FUSE_FLOCK_LOCKS
            // Every FUSE superblock has SB_POSIXACL (fs/fuse/inode.c,
            // `fuse_fill_super_common`: "Handle umasking inside the fuse code"), so the
            // VFS never applies the caller's umask to a create; FUSE does it itself in
            // `fuse_mknod`, `fuse_mkdir` and `fuse_create_open` (fs/fuse/dir.c,
            // `mode &= ~current_umask()`) unless FUSE_DONT_MASK, and sends the umask
            // beside the mode either way (not for a symlink, which has no mode). Masked by
            // the kernel, a create under a directory with a default ACL lost the bits the
            // ACL grants (ext4 ignores the umask there). With it, the daemon creates with
            // the caller's umask on its own thread (`overlay::creds::Umask`), so SOURCE's
            // filesystem decides as it would for the caller: the ACL where there is a
            // default one, the umask elsewhere. Asked for with or without xattrs: with
            // `xattr=nosys` SOURCE's default ACLs still apply to what is created there.
            | InitFlags::FUSE_DONT_MASK;
        // POSIX ACLs (fs/fuse/inode.c, `process_init_reply`; fs/fuse/acl.c), with
        // extended attributes only (not `xattr=nosys`, where there are none to read):
        // - default_permissions is forced on: the kernel checks permissions itself
        //   (`generic_permission`), now with each inode's ACL (`fuse_get_inode_acl`,
        //   which answers "no ACL" without FUSE_POSIX_ACL: a user granted access by a
        //   named entry alone was refused on an allow_other mount). A mount without
        //   allow_other is its owner's (root's) alone, who passes either way.
        // - the kernel keeps the ACLs it read per inode: a getxattr of
        //   `system.posix_acl_access` (ls -l asks for it for every file) is answered from
        //   there instead of a round trip. It forgets them whenever it takes new
        //   attributes from the daemon: `fuse_update_get_attr` once the attribute timeout
        //   has passed, `fuse_perm_getattr`, `fuse_dentry_revalidate`, a READDIRPLUS
        //   entry (fs/fuse/readdir.c), and on `fuse_reverse_inval_inode`; so an ACL
        //   changed directly in SOURCE shows when a chmod there would (attr_timeout,
        //   meta_ttl). It forgets them after a chmod through the mount (`fuse_setattr`),
        //   and after an ACL set through it (`fuse_set_acl`), which also invalidates the
        //   attributes: the mode SOURCE derived from an access ACL is read back at once.
        // - a getxattr of an ACL that fails with EOPNOTSUPP fails the permission check
        //   being made: `overlay::xattr` answers ENODATA ("no ACL") for a SOURCE without.
        let acl = self.core.xattrs()
            && config.capabilities().contains(InitFlags::FUSE_POSIX_ACL)
            && config.add_capabilities(InitFlags::FUSE_POSIX_ACL).is_ok();
        self.core.set_posix_acl(acl);
        let offered = config.capabilities() & wanted;
        if let Err(missing) = config.add_capabilities(offered) {
            tracing::debug!("kernel lacks FUSE capabilities {missing:?}");
        }
        self.no_opendir = offered.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        // Announced by the kernel, nothing to ask for: FUSE_NOTIFY_RESEND works.
        self.resend = config.capabilities().contains(InitFlags::FUSE_HAS_RESEND);
        let want_pt = self.core.wants_passthrough();
        let has_pt = config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH);
        let pt = want_pt
            && has_pt
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        if want_pt && !pt {
            if self.core.cfg.passthrough == Passthrough::On {
                return Err(io::Error::other(
                    "passthrough=on, but this kernel does not offer FUSE passthrough (Linux 6.9+); use passthrough=auto",
                ));
            }
            tracing::warn!(
                "the kernel does not offer FUSE passthrough: cached files are served by the daemon"
            );
        }
        self.core.set_passthrough(pt);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let t = self.ttls;
        if let Some(r) = self.core.lookup_from_memory(parent.0, name) {
            return t.reply_entry(reply, "lookup", parent.0, r);
        }
        let (c, name) = (caller(req), name.to_owned());
        self.on_source(Op::Lookup, move |core| {
            t.reply_entry(reply, "lookup", parent.0, core.lookup(&c, parent.0, &name));
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let t = self.ttls;
        let fh = fh.map(|f| f.0);
        if let Some(st) = self.core.getattr_from_memory(ino.0, fh) {
            return reply.attr(&t.attr, &attr(ino.0, &st));
        }
        self.on_source(Op::Getattr, move |core| match core.getattr(ino.0, fh) {
            Ok(st) => reply.attr(&t.attr, &attr(ino.0, &st)),
            Err(e) => reply.error(fail("getattr", ino.0, &e)),
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: timestamp(atime),
            mtime: timestamp(mtime),
            fh: fh.map(|f| f.0),
        };
        let (t, c) = (self.ttls, caller(req));
        self.on_source(Op::Setattr, move |core| {
            match core.setattr(&c, ino.0, &set) {
                Ok(st) => reply.attr(&t.attr, &attr(ino.0, &st)),
                Err(e) => reply.error(fail("setattr", ino.0, &e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.on_source(Op::Readlink, move |core| match core.readlink(ino.0) {
            Ok(t) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str())),
            Err(e) => reply.error(fail("readlink", ino.0, &e)),
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (t, c, name, again) = (self.ttls, caller(req), name.to_owned(), req.is_resend());
        self.on_source(Op::Mknod, move |core| {
            let r = core.mknod(&c, parent.0, &name, NewMode { mode, umask }, rdev);
            let r = made_before(again, r, || core.lookup(&c, parent.0, &name));
            t.reply_entry(reply, "mknod", parent.0, r);
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (t, c, name, again) = (self.ttls, caller(req), name.to_owned(), req.is_resend());
        self.on_source(Op::Mkdir, move |core| {
            let r = core.mkdir(&c, parent.0, &name, NewMode { mode, umask });
            let r = made_before(again, r, || core.lookup(&c, parent.0, &name));
            t.reply_entry(reply, "mkdir", parent.0, r);
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (c, name, again) = (caller(req), name.to_owned(), req.is_resend());
        self.on_source(Op::Unlink, move |core| {
            let r = gone_before(again, core.unlink(&c, parent.0, &name));
            empty(reply, "unlink", parent.0, r);
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (c, name, again) = (caller(req), name.to_owned(), req.is_resend());
        self.on_source(Op::Rmdir, move |core| {
            let r = gone_before(again, core.rmdir(&c, parent.0, &name));
            empty(reply, "rmdir", parent.0, r);
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (t, c, again) = (self.ttls, caller(req), req.is_resend());
        let (name, target) = (link_name.to_owned(), target.as_os_str().to_owned());
        self.on_source(Op::Symlink, move |core| {
            let r = core.symlink(&c, parent.0, &name, &target);
            let r = made_before(again, r, || core.lookup(&c, parent.0, &name));
            t.reply_entry(reply, "symlink", parent.0, r);
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (c, again) = (caller(req), req.is_resend());
        let (name, newname) = (name.to_owned(), newname.to_owned());
        self.on_source(Op::Rename, move |core| {
            let r = core.rename(&c, parent.0, &name, newparent.0, &newname, flags.bits());
            // Done before if the old name is gone and the new one is there.
            let r = match r {
                Err(e) if again && e.raw_os_error() == Some(libc::ENOENT) => {
                    match core.lookup(&c, newparent.0, &newname) {
                        Ok(found) => {
                            core.forget(found.nodeid, 1);
                            Ok(())
                        }
                        Err(_) => Err(e),
                    }
                }
                r => r,
            };
            empty(reply, "rename", parent.0, r);
        });
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (t, c, newname, again) = (self.ttls, caller(req), newname.to_owned(), req.is_resend());
        self.on_source(Op::Link, move |core| {
            let r = core.link(&c, ino.0, newparent.0, &newname);
            let r = made_before(again, r, || core.lookup(&c, newparent.0, &newname));
            t.reply_entry(reply, "link", ino.0, r);
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let c = caller(req);
        let memory = {
            let register = |f: BorrowedFd<'_>| register(reply.open_backing(f));
            self.core.open_from_memory(&c, ino.0, flags.0, &register)
        };
        if let Some(r) = memory {
            return reply_open(reply, ino.0, r);
        }
        self.on_source(Op::Open, move |core| {
            let register = |f: BorrowedFd<'_>| register(reply.open_backing(f));
            let r = core.open(&c, ino.0, flags.0, &register);
            reply_open(reply, ino.0, r);
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let answer = move |reply: ReplyData, r: io::Result<Vec<u8>>| match r {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(fail("read", ino.0, &e)),
        };
        match self.core.read_from_memory(fh.0, offset, size) {
            Some(r) => answer(reply, r),
            None => self.on_source(Op::Read, move |core| {
                answer(reply, core.read(fh.0, offset, size));
            }),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill_suidgid = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let (c, data, again) = (caller(req), data.to_vec(), req.is_resend());
        self.on_source(Op::Write, move |core| {
            match core.write(&c, fh.0, offset, &data, kill_suidgid, again) {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(fail("write", ino.0, &e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // A close by `lock_owner`: its POSIX locks on the file go (any close releases).
        let answer = move |core: &Arc<Overlay>| {
            core.locks_flush(fh.0, lock_owner.0);
            empty(reply, "flush", ino.0, core.flush(fh.0));
        };
        if self.core.handle_without_source(fh.0) {
            answer(&self.core);
        } else {
            self.on_source(Op::Flush, answer);
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // `lock_owner` is set when the open file held flock locks (as that owner); the
        // kernel flushed it before (`_flush` is for a release without a flush). Closing
        // the SOURCE file can wait for SOURCE (an NFS or FUSE SOURCE flushes at close).
        let answer = move |core: &Arc<Overlay>| {
            core.locks_release(fh.0, lock_owner.map(|o| o.0));
            core.release(fh.0);
            reply.ok();
        };
        if self.core.handle_without_source(fh.0) {
            answer(&self.core);
        } else {
            self.on_source(Op::Release, answer);
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let answer =
            move |core: &Arc<Overlay>| empty(reply, "fsync", ino.0, core.fsync(fh.0, datasync));
        if self.core.handle_without_source(fh.0) {
            answer(&self.core);
        } else {
            self.on_source(Op::Fsync, answer);
        }
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        _flock: bool,
        reply: ReplyLock,
    ) {
        self.on_source(Op::Lock, move |core| {
            match core.getlk(fh.0, lock_owner.0, typ, start, end) {
                Ok(l) => reply.locked(l.start, l.end, l.typ, l.pid),
                Err(e) => reply.error(fail("getlk", ino.0, &e)),
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        flock: bool,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let lk = LockRequest {
            owner: lock_owner.0,
            typ,
            start,
            end,
            // The lock's process (what F_GETLK reports); the kernel sends none with an
            // unlock.
            pid: if pid != 0 { pid } else { req.pid() },
            flock,
        };
        let waiter = req.pid();
        self.on_source(Op::Lock, move |core| {
            if sleep {
                // Answered from a thread of its own once the lock is set or the waiter
                // has a signal: nothing waits here for another process's unlock.
                let ino = ino.0;
                core.clone()
                    .setlk_wait(fh.0, lk, waiter, move |r| empty(reply, "setlk", ino, r));
            } else {
                empty(reply, "setlk", ino.0, core.setlk(fh.0, &lk));
            }
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir {
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        let c = caller(req);
        self.on_source(Op::Opendir, move |core| match core.opendir(&c, ino.0) {
            // The kernel keeps the listing, across opens, while the directory's mtime
            // and change counter stay the same: a change through the mount bumps the
            // counter, one in SOURCE shows with the mtime once `attr_timeout` passes.
            Ok(fh) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(fail("opendir", ino.0, &e)),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let answer = move |core: &Overlay, mut reply: ReplyDirectory, memory_only: bool| {
            let r = core.readdir(ino.0, fh.0, (offset, memory_only), |e| {
                reply.add(INodeNo(e.ino), e.next, dtype_kind(e.kind), e.name)
            });
            match r {
                // Nothing was added: the whole request goes to SOURCE.
                Err(e) if needs_source(&e) => return Some(reply),
                Ok(()) => reply.ok(),
                Err(e) => reply.error(fail("readdir", ino.0, &e)),
            }
            None
        };
        if let Some(reply) = answer(&self.core, reply, true) {
            self.on_source(Op::Readdir, move |core| {
                let _ = answer(core, reply, false);
            });
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let (t, c) = (self.ttls, caller(req));
        let answer = move |core: &Overlay, mut reply: ReplyDirectoryPlus, memory_only: bool| {
            let r = core.readdirplus(&c, ino.0, fh.0, (offset, memory_only), |name, e, next| {
                // fuser gives one TTL per entry; the shorter keeps attributes honest.
                let ttl = t.attr.min(t.entry);
                reply.add(
                    INodeNo(e.nodeid),
                    next,
                    name,
                    &ttl,
                    &attr(e.nodeid, &e.stat),
                    Generation(0),
                )
            });
            match r {
                // Nothing was added: the whole request goes to SOURCE.
                Err(e) if needs_source(&e) => return Some(reply),
                Ok(()) => reply.ok(),
                Err(e) => reply.error(fail("readdirplus", ino.0, &e)),
            }
            None
        };
        if let Some(reply) = answer(&self.core, reply, true) {
            self.on_source(Op::Readdir, move |core| {
                let _ = answer(core, reply, false);
            });
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.on_source(Op::Fsyncdir, move |core| {
            empty(
                reply,
                "fsyncdir",
                ino.0,
                core.fsyncdir(ino.0, fh.0, datasync),
            );
        });
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let answer = |reply: ReplyStatfs, s: Statfs| {
            reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namemax, s.frsize,
            )
        };
        if let Some(s) = self.core.statfs_from_memory(ino.0) {
            return answer(reply, s);
        }
        self.on_source(Op::Statfs, move |core| match core.statfs(ino.0) {
            Ok(s) => answer(reply, s),
            Err(e) => reply.error(fail("statfs", ino.0, &e)),
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if !self.core.xattrs() {
            // xattr=nosys, or a SOURCE without any: the kernel stops asking after this.
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        let (c, name, value) = (caller(req), name.to_owned(), value.to_vec());
        self.on_source(Op::Xattr, move |core| {
            let r = core.setxattr(&c, ino.0, &name, &value, flags);
            empty(reply, "setxattr", ino.0, r);
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if !self.core.xattrs() {
            // xattr=nosys, or a SOURCE without any: the kernel stops asking after this.
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        if let Some(r) = self.core.getxattr_from_memory(ino.0, name, size) {
            return xattr(reply, "getxattr", ino.0, r);
        }
        let (c, name) = (caller(req), name.to_owned());
        self.on_source(Op::Xattr, move |core| {
            let r = core.getxattr(&c, ino.0, &name, size);
            xattr(reply, "getxattr", ino.0, r);
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if !self.core.xattrs() {
            // xattr=nosys, or a SOURCE without any: the kernel stops asking after this.
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        if let Some(r) = self.core.listxattr_from_memory(ino.0, size) {
            return xattr(reply, "listxattr", ino.0, r);
        }
        let c = caller(req);
        self.on_source(Op::Xattr, move |core| {
            xattr(reply, "listxattr", ino.0, core.listxattr(&c, ino.0, size));
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if !self.core.xattrs() {
            // xattr=nosys, or a SOURCE without any: the kernel stops asking after this.
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        let (c, name) = (caller(req), name.to_owned());
        self.on_source(Op::Xattr, move |core| {
            empty(
                reply,
                "removexattr",
                ino.0,
                core.removexattr(&c, ino.0, &name),
            );
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let c = caller(req);
        if let Some(()) = self.core.access_from_memory(&c, ino.0, mask.bits()) {
            return reply.ok();
        }
        self.on_source(Op::Access, move |core| {
            empty(reply, "access", ino.0, core.access(&c, ino.0, mask.bits()));
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (t, c, name) = (self.ttls, caller(req), name.to_owned());
        // Sent again after a failover: the dead daemon may have made the file already,
        // and an exclusive create would then fail the caller who asked for it.
        let flags = if req.is_resend() {
            flags & !libc::O_EXCL
        } else {
            flags
        };
        self.on_source(Op::Create, move |core| {
            let register = |f: BorrowedFd<'_>| register(reply.open_backing(f));
            match core.create(
                &c,
                parent.0,
                &name,
                NewMode { mode, umask },
                flags,
                &register,
            ) {
                Ok((e, o)) => {
                    let attr = attr(e.nodeid, &e.stat);
                    match backing_id(&o) {
                        Some(id) => reply.created_passthrough(
                            &t.entry,
                            &attr,
                            Generation(0),
                            FileHandle(o.fh),
                            FopenFlags::empty(),
                            id,
                        ),
                        None => reply.created(
                            &t.entry,
                            &attr,
                            Generation(0),
                            FileHandle(o.fh),
                            fopen_flags(&o),
                        ),
                    }
                }
                Err(e) => reply.error(fail("create", parent.0, &e)),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.on_source(Op::Fallocate, move |core| {
            let r = core.fallocate(fh.0, offset, length, mode);
            empty(reply, "fallocate", ino.0, r);
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let answer = move |core: &Arc<Overlay>| match core.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(fail("lseek", ino.0, &e)),
        };
        if self.core.reads_from_memory(fh.0) {
            answer(&self.core);
        } else {
            self.on_source(Op::Lseek, answer);
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.on_source(Op::CopyFileRange, move |core| {
            match core.copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len) {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(fail("copy_file_range", ino_in.0, &e)),
            }
        });
    }
}

/// An open's answer to the kernel.
fn reply_open(reply: ReplyOpen, ino: u64, r: io::Result<Opened>) {
    match r {
        Ok(o) => match backing_id(&o) {
            Some(id) => reply.opened_passthrough(FileHandle(o.fh), FopenFlags::empty(), id),
            None => reply.opened(FileHandle(o.fh), fopen_flags(&o)),
        },
        Err(e) => reply.error(fail("open", ino, &e)),
    }
}

/// The kernel's registration of a backing file, as the core's opaque token.
fn register(id: io::Result<BackingId>) -> io::Result<BackingToken> {
    Ok(Arc::new(id?))
}

/// The kernel's number of a registration the core holds (a token `register` made), for a
/// live restart.
pub fn backing_number(t: &BackingToken) -> Option<u32> {
    t.downcast_ref::<BackingId>().map(BackingId::raw)
}

/// A registration a predecessor made, as the core's token again.
pub fn backing_token(id: BackingId) -> BackingToken {
    Arc::new(id)
}

/// The registration an open is to be answered with, if passthrough. Every token the core
/// holds was made by `register`.
fn backing_id(o: &Opened) -> Option<&BackingId> {
    o.passthrough.as_ref()?.downcast_ref::<BackingId>()
}

fn fopen_flags(o: &Opened) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if o.direct_io {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    }
    if o.keep_cache {
        f |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    f
}

fn empty(reply: ReplyEmpty, op: &'static str, ino: u64, r: io::Result<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(fail(op, ino, &e)),
    }
}

fn xattr(reply: ReplyXattr, op: &'static str, ino: u64, r: io::Result<XattrReply>) {
    match r {
        Ok(XattrReply::Size(n)) => reply.size(n),
        Ok(XattrReply::Data(d)) => reply.data(&d),
        Err(e) => reply.error(fail(op, ino, &e)),
    }
}
