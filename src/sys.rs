//! The only `unsafe` in the crate: the few calls rustix does not wrap safely.
//!
//! Everything else calls rustix directly, whose errors convert to `io::Error` with the
//! errno unchanged. What is left here: per-thread filesystem ids (setfsuid has no safe
//! wrapper; glibc's own credential calls broadcast to every thread), file handles,
//! truncate(2) and sync_file_range(2), byte-range locks (fcntl with a `struct flock`),
//! fork, _exit, signal dispositions and masks,
//! syslog, unsharing a thread's filesystem context (its umask), and unsharing the mount
//! namespace in a test; and the conversion of rustix's
//! stat to the libc layout the FUSE replies are built from.

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::OFlags;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// truncate(2) of a path (used on `/proc/self/fd/N`: an `O_PATH` descriptor cannot be
/// ftruncated, and opening the object for writing would open a device or block on a FIFO).
pub fn truncate_path(path: &CStr, size: u64) -> io::Result<()> {
    // SAFETY: path is NUL-terminated.
    check(unsafe { libc::truncate(path.as_ptr(), size as libc::off_t) }).map(drop)
}

/// Starts writeback of a range and waits for it, so a long copy does not pile up dirty
/// pages that a later fsync (or the kernel, at a bad moment) must flush all at once.
pub fn sync_range(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::sync_file_range(fd.as_raw_fd(), offset as i64, len as i64, flags) })
        .map(drop)
}

// ---- byte-range locks ----

/// The last byte of a lock that runs to the end of the file, as FUSE and the kernel
/// write it (OFFSET_MAX).
pub const LOCK_TO_EOF: u64 = i64::MAX as u64;

/// A byte-range lock: `typ` is F_RDLCK, F_WRLCK or F_UNLCK; `start..=end` the bytes
/// (`end` = `LOCK_TO_EOF`: to the end of the file, however long); `pid` the holder's
/// as fcntl reports it (-1 for an open file description's lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeLock {
    pub typ: i32,
    pub start: u64,
    pub end: u64,
    pub pid: i32,
}

fn to_flock(typ: i32, start: u64, end: u64) -> libc::flock {
    // SAFETY: libc::flock is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { MaybeUninit::zeroed().assume_init() };
    fl.l_type = typ as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start.min(LOCK_TO_EOF) as libc::off_t;
    fl.l_len = if end >= LOCK_TO_EOF {
        0
    } else {
        (end.saturating_sub(start) + 1) as libc::off_t
    };
    fl
}

/// Sets (or with F_UNLCK removes) an open file description lock (F_OFD_SETLK) on
/// `start..=end`, without waiting: EAGAIN when another lock conflicts.
pub fn ofd_setlk(fd: BorrowedFd<'_>, typ: i32, start: u64, end: u64) -> io::Result<()> {
    let mut fl = to_flock(typ, start, end);
    // SAFETY: fl is a valid, initialised struct flock that lives across the call.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) }).map(drop)
}

/// The first lock that would conflict with a `typ` lock on `start..=end` set through
/// `fd`: with `ofd`, as an open file description lock of `fd` (F_OFD_GETLK: `fd`'s own
/// description's locks never conflict); else as a lock of this process (F_GETLK, which
/// reports the holder's pid).
pub fn getlk(
    fd: BorrowedFd<'_>,
    ofd: bool,
    typ: i32,
    start: u64,
    end: u64,
) -> io::Result<Option<RangeLock>> {
    let mut fl = to_flock(typ, start, end);
    let cmd = if ofd {
        libc::F_OFD_GETLK
    } else {
        libc::F_GETLK
    };
    // SAFETY: fl is a valid, initialised struct flock that lives across the call.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut fl) })?;
    if fl.l_type as i32 == libc::F_UNLCK {
        return Ok(None);
    }
    let start = fl.l_start.max(0) as u64;
    let end = match fl.l_len {
        0 => LOCK_TO_EOF,
        len => (fl.l_start + len - 1).max(0) as u64,
    };
    Ok(Some(RangeLock {
        typ: fl.l_type as i32,
        start,
        end,
        pid: fl.l_pid,
    }))
}

// ---- credentials (per thread) ----

/// Sets this thread's filesystem uid and gid (the thread's supplementary groups are
/// `rustix::thread::set_thread_groups`'). Raw syscalls: they change the calling thread
/// only, and switching the fsuid away from 0 drops the thread's filesystem capabilities.
pub fn set_thread_fs_ids(uid: u32, gid: u32) -> io::Result<()> {
    // setfsuid/setfsgid return the previous id and cannot report failure directly; the
    // switch is verified by reading it back.
    // SAFETY: plain syscalls taking integers.
    let now = unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
        // setfsuid(-1) changes nothing and returns the current fsuid.
        libc::syscall(libc::SYS_setfsuid, u32::MAX)
    } as u32;
    if now != uid {
        return Err(errno(libc::EPERM));
    }
    Ok(())
}

// ---- file handles ----

/// The most bytes of a file handle kept inline in an inode. ext4 and xfs give 8 or 16,
/// tmpfs 12, btrfs 20; a filesystem with longer handles is resolved by parent and name.
const HANDLE_MAX: usize = 24;

/// A filesystem's handle for an object (`name_to_handle_at`), enough to reopen it with
/// `open_by_handle_at` wherever it has been renamed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHandle {
    kind: i32,
    len: u8,
    bytes: [u8; HANDLE_MAX],
}

impl FileHandle {
    /// The handle's type and bytes, for a state handed to a successor daemon.
    pub fn parts(&self) -> (i32, &[u8]) {
        (self.kind, &self.bytes[..self.len as usize])
    }

    /// A handle from `parts`; `None` if it is longer than an inode keeps.
    pub fn from_parts(kind: i32, bytes: &[u8]) -> Option<FileHandle> {
        if bytes.len() > HANDLE_MAX {
            return None;
        }
        let mut h = FileHandle {
            kind,
            len: bytes.len() as u8,
            bytes: [0; HANDLE_MAX],
        };
        h.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(h)
    }
}

#[repr(C)]
struct RawHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; libc::MAX_HANDLE_SZ as usize],
}

impl RawHandle {
    fn empty() -> RawHandle {
        RawHandle {
            handle_bytes: libc::MAX_HANDLE_SZ as libc::c_uint,
            handle_type: 0,
            f_handle: [0; libc::MAX_HANDLE_SZ as usize],
        }
    }
}

/// The handle of the object `fd` refers to (any fd, `O_PATH` included).
pub fn name_to_handle(fd: BorrowedFd<'_>) -> io::Result<FileHandle> {
    handle_at(fd, c"", libc::AT_EMPTY_PATH)
}

/// The handle of `dir/name`, not following a symlink there. EOVERFLOW when the
/// filesystem's handle is longer than `HANDLE_MAX`, EOPNOTSUPP when it has none.
pub fn name_to_handle_at(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> io::Result<FileHandle> {
    let name = CString::new(name.as_bytes()).map_err(|_| errno(libc::EINVAL))?;
    handle_at(dir, &name, 0)
}

fn handle_at(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<FileHandle> {
    let mut raw = RawHandle::empty();
    let mut mount_id: libc::c_int = 0;
    // SAFETY: raw is a file_handle with room for MAX_HANDLE_SZ bytes, as handle_bytes
    // says; name is NUL-terminated; mount_id is a live local.
    check(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut raw as *mut RawHandle,
            &mut mount_id as *mut libc::c_int,
            flags,
        ) as libc::c_int
    })?;
    let len = raw.handle_bytes as usize;
    if len > HANDLE_MAX {
        return Err(errno(libc::EOVERFLOW));
    }
    let mut bytes = [0u8; HANDLE_MAX];
    bytes[..len].copy_from_slice(&raw.f_handle[..len]);
    Ok(FileHandle {
        kind: raw.handle_type,
        len: len as u8,
        bytes,
    })
}

/// Opens the object a handle names, on the filesystem `mount_fd` is on, close-on-exec.
/// Needs CAP_DAC_READ_SEARCH (so never while the thread runs with a caller's fsuid);
/// ESTALE when the object no longer exists.
pub fn open_by_handle(
    mount_fd: BorrowedFd<'_>,
    handle: &FileHandle,
    flags: OFlags,
) -> io::Result<OwnedFd> {
    let mut raw = RawHandle::empty();
    raw.handle_bytes = handle.len as libc::c_uint;
    raw.handle_type = handle.kind;
    raw.f_handle[..handle.len as usize].copy_from_slice(&handle.bytes[..handle.len as usize]);
    let flags = (flags | OFlags::CLOEXEC).bits() as libc::c_int;
    // SAFETY: raw is a valid file_handle of handle_bytes bytes.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            &mut raw as *mut RawHandle,
            flags,
        ) as libc::c_int
    })?;
    // SAFETY: fd was just returned by open_by_handle_at and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// ---- processes ----

/// fork(2). Only call it while the process has a single thread.
pub enum Forked {
    Parent(u32),
    Child,
}

pub fn fork() -> io::Result<Forked> {
    // SAFETY: the caller guarantees the process is single-threaded, so the child's copy
    // of the address space holds no lock another thread owned.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid as u32)),
    }
}

/// Ends the process at once, without running destructors or atexit handlers (for a
/// forked child, which must not flush or drop anything its parent owns).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Opens the connection to syslog (journald reads it) under the name `cachefs`.
pub fn open_syslog() {
    // SAFETY: the identifier is a static NUL-terminated string, as openlog keeps the pointer.
    unsafe { libc::openlog(c"cachefs".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
}

/// Sends one message to syslog.
pub fn syslog(priority: i32, msg: &str) {
    let Ok(m) = CString::new(msg.replace('\0', "")) else {
        return;
    };
    // SAFETY: the format is a literal "%s" and m is NUL-terminated.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), m.as_ptr()) };
}

/// Gives the calling thread a filesystem context (cwd, root and umask) of its own, a copy
/// of the one it shared: a umask it sets from then on is its alone.
pub fn unshare_fs() -> io::Result<()> {
    // SAFETY: only CLONE_FS is unshared (cwd, root, umask); the descriptor table stays
    // shared, so every thread keeps seeing the same descriptors.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
        .map_err(io::Error::from)
}

/// Moves the calling thread into a mount namespace of its own (a copy of the current
/// one), where its mounts vanish with it.
#[cfg(test)]
pub fn unshare_mount_namespace() -> io::Result<()> {
    // SAFETY: only the mount namespace is unshared; the descriptor table stays shared,
    // so every thread keeps seeing the same descriptors.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .map_err(io::Error::from)
}

// ---- signals ----

fn sigset(signals: &[i32]) -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: set points to a sigset_t; sigemptyset initialises it.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for &s in signals {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        set.assume_init()
    }
}

/// Blocks `signals` in the calling thread; threads spawned afterwards inherit the mask,
/// so only a thread calling `wait_signal` receives them.
pub fn block_signals(signals: &[i32]) -> io::Result<()> {
    // A handler, even one that does nothing, so the signals are never "ignored by
    // default": as PID 1 in a container the kernel would drop them before sigwait saw them.
    extern "C" fn noop(_: libc::c_int) {}
    for &sig in signals {
        // SAFETY: sa is zeroed and then filled; noop is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = noop as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    let set = sigset(signals);
    // SAFETY: set is initialised; the old mask is not needed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(errno(r));
    }
    Ok(())
}

/// Waits for one of `signals` (which must be blocked) and returns it.
pub fn wait_signal(signals: &[i32]) -> io::Result<i32> {
    let set = sigset(signals);
    let mut sig = 0;
    // SAFETY: set is initialised and sig is a valid out pointer.
    let r = unsafe { libc::sigwait(&set, &mut sig) };
    if r != 0 {
        return Err(errno(r));
    }
    Ok(sig)
}

// ---- safe wrappers kept for `mount`, `control` and `fuse` until they call rustix ----

/// The attributes `crate::fuse` turns into replies, in libc's layout as it reads them.
pub type Stat = libc::stat;

/// An all-zero stat, for replies that carry no object (negative entries).
pub fn zeroed_stat() -> Stat {
    // SAFETY: libc::stat is plain old data; all-zero is a valid value.
    unsafe { MaybeUninit::<Stat>::zeroed().assume_init() }
}

/// rustix's stat in libc's layout, for what the overlay hands to `crate::fuse`.
pub fn libc_stat(st: &rustix::fs::Stat) -> Stat {
    let mut s = zeroed_stat();
    s.st_dev = st.st_dev as _;
    s.st_ino = st.st_ino as _;
    s.st_nlink = st.st_nlink as _;
    s.st_mode = st.st_mode as _;
    s.st_uid = st.st_uid as _;
    s.st_gid = st.st_gid as _;
    s.st_rdev = st.st_rdev as _;
    s.st_size = st.st_size as _;
    s.st_blksize = st.st_blksize as _;
    s.st_blocks = st.st_blocks as _;
    (s.st_atime, s.st_atime_nsec) = (st.st_atime as _, st.st_atime_nsec as _);
    (s.st_mtime, s.st_mtime_nsec) = (st.st_mtime as _, st.st_mtime_nsec as _);
    (s.st_ctime, s.st_ctime_nsec) = (st.st_ctime as _, st.st_ctime_nsec as _);
    s
}

/// The uid of the process at the other end of a Unix stream socket (SO_PEERCRED).
pub fn peer_uid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(rustix::net::sockopt::socket_peercred(fd)?.uid.as_raw())
}

pub fn geteuid() -> u32 {
    rustix::process::geteuid().as_raw()
}
