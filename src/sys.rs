//! The only `unsafe` in the crate: thin wrappers over libc that return `io::Result`.
//!
//! Everything that touches SOURCE goes through a directory file descriptor and a single
//! path component (the `*at` family), never through a joined path string: see invariant 7
//! in ARCHITECTURE.md. `proc_path` names an fd through `/proc/self/fd`, for the few calls
//! that have no `*at` form accepting an `O_PATH` descriptor (chmod, truncate, xattrs, open).

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

pub type Stat = libc::stat;

/// An all-zero stat, for replies that carry no object (negative entries).
pub fn zeroed_stat() -> Stat {
    // SAFETY: libc::stat is plain old data; all-zero is a valid value.
    unsafe { MaybeUninit::<Stat>::zeroed().assume_init() }
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

pub fn cpath(p: &Path) -> io::Result<CString> {
    cstr(p.as_os_str())
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `/proc/self/fd/N` for an fd: a short path that reaches the fd's file whatever its real
/// path length, and that follows no user-controlled symlink.
pub fn proc_path(fd: BorrowedFd<'_>) -> CString {
    // A decimal number never contains a NUL byte.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

pub fn openat(dir: BorrowedFd<'_>, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let name = cstr(name)?;
    // SAFETY: name is a valid NUL-terminated string; the returned fd is owned by us.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode,
        )
    })?;
    // SAFETY: fd was just returned by openat and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens an absolute path (used only for SOURCE's root and for /proc paths).
pub fn open_path(path: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: path is a valid NUL-terminated string; the returned fd is owned by us.
    let fd = check(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: fd was just returned by open and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn fstatat(dir: BorrowedFd<'_>, name: &OsStr, flags: i32) -> io::Result<Stat> {
    let name = cstr(name)?;
    let mut st = MaybeUninit::<Stat>::zeroed();
    // SAFETY: name is NUL-terminated and st points to writable memory of the right size.
    check(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), flags) })?;
    // SAFETY: fstatat succeeded, so it filled the struct.
    Ok(unsafe { st.assume_init() })
}

/// stat of the object an fd (including an `O_PATH` one) refers to, without following it.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    fstatat(
        fd,
        OsStr::new(""),
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
    )
}

pub fn stat_path(path: &Path) -> io::Result<Stat> {
    let p = cpath(path)?;
    let mut st = MaybeUninit::<Stat>::zeroed();
    // SAFETY: p is NUL-terminated and st points to writable memory of the right size.
    check(unsafe { libc::stat(p.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: stat succeeded, so it filled the struct.
    Ok(unsafe { st.assume_init() })
}

/// statfs(2) of a path. Unlike stat, FUSE never answers it from the kernel's attribute
/// cache, so on a mount whose daemon is gone it fails with ENOTCONN at once.
pub fn statfs_path(path: &Path) -> io::Result<libc::statfs> {
    let p = cpath(path)?;
    let mut st = MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: p is NUL-terminated and st points to writable memory of the right size.
    check(unsafe { libc::statfs(p.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: statfs succeeded, so it filled the struct.
    Ok(unsafe { st.assume_init() })
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let name = cstr(name)?;
    // SAFETY: name is NUL-terminated.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
    let name = cstr(name)?;
    // SAFETY: name is NUL-terminated.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &OsStr, flags: i32) -> io::Result<()> {
    let name = cstr(name)?;
    // SAFETY: name is NUL-terminated.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &OsStr,
    newdir: BorrowedFd<'_>,
    newname: &OsStr,
    flags: u32,
) -> io::Result<()> {
    let old = cstr(oldname)?;
    let new = cstr(newname)?;
    // SAFETY: both names are NUL-terminated.
    check(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            old.as_ptr(),
            newdir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

pub fn symlinkat(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let target = cstr(target)?;
    let name = cstr(name)?;
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// Hard-links the file an fd refers to as `newdir/newname`. Goes through `/proc/self/fd`
/// with AT_SYMLINK_FOLLOW, which, unlike AT_EMPTY_PATH, needs no CAP_DAC_READ_SEARCH, so
/// it works while the thread runs with a caller's fsuid.
pub fn link_fd(fd: BorrowedFd<'_>, newdir: BorrowedFd<'_>, newname: &OsStr) -> io::Result<()> {
    let src = proc_path(fd);
    let new = cstr(newname)?;
    // SAFETY: both strings are NUL-terminated.
    check(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            src.as_ptr(),
            newdir.as_raw_fd(),
            new.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

/// The target of the symlink an `O_PATH` fd refers to.
pub fn readlink_fd(fd: BorrowedFd<'_>) -> io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: buf is writable for buf.len() bytes; the empty path is NUL-terminated.
    let n = check_size(unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(OsString::from_vec(buf))
}

/// The target of a symlink named by an absolute path (used on `/proc/self/fd/N`).
pub fn readlink_path(path: &CStr) -> io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: path is NUL-terminated; buf is writable for buf.len() bytes.
    let n =
        check_size(unsafe { libc::readlink(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
    buf.truncate(n);
    Ok(OsString::from_vec(buf))
}

pub fn fchownat_fd(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let uid = uid.unwrap_or(u32::MAX);
    let gid = gid.unwrap_or(u32::MAX);
    // SAFETY: the empty path is NUL-terminated; -1 (u32::MAX) leaves an id unchanged.
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub fn chmod_path(path: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: path is NUL-terminated.
    check(unsafe { libc::chmod(path.as_ptr(), mode) }).map(drop)
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

pub fn truncate_path(path: &CStr, size: u64) -> io::Result<()> {
    // SAFETY: path is NUL-terminated.
    check(unsafe { libc::truncate(path.as_ptr(), size as libc::off_t) }).map(drop)
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) }).map(drop)
}

/// A timestamp for `utimensat`: a value, the current time, or unchanged.
#[derive(Debug, Clone, Copy)]
pub enum TimeSpec {
    Set(i64, i64),
    Now,
    Omit,
}

impl TimeSpec {
    fn to_libc(self) -> libc::timespec {
        match self {
            TimeSpec::Set(sec, nsec) => libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            },
            TimeSpec::Now => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            TimeSpec::Omit => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        }
    }
}

/// utimensat on `dir/name` (name may be empty with AT_EMPTY_PATH in flags).
pub fn utimensat(
    dir: RawFd,
    name: &CStr,
    atime: TimeSpec,
    mtime: TimeSpec,
    flags: i32,
) -> io::Result<()> {
    let times = [atime.to_libc(), mtime.to_libc()];
    // SAFETY: name is NUL-terminated and times is a 2-element array as required.
    check(unsafe { libc::utimensat(dir, name.as_ptr(), times.as_ptr(), flags) }).map(drop)
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    // SAFETY: buf is writable for buf.len() bytes.
    check_size(unsafe {
        libc::pread(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            offset as libc::off_t,
        )
    })
}

/// Reads at `offset` until `buf` is full or the file ends; returns the bytes read (fewer
/// only at the end of the file, which is what a short read means to the kernel).
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = pread(fd, &mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<usize> {
    // SAFETY: buf is readable for buf.len() bytes.
    check_size(unsafe {
        libc::pwrite(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            offset as libc::off_t,
        )
    })
}

/// Writes all of `buf` at `offset`; WriteZero if the file takes no more.
pub fn pwrite_all(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match pwrite(fd, &buf[done..], offset + done as u64)? {
            0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            n => done += n,
        }
    }
    Ok(())
}

/// write(2) at the fd's own offset: what O_APPEND files need, where pwrite's offset
/// would be ignored anyway.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is readable for buf.len() bytes.
    check_size(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

/// close(dup(fd)): lets the source filesystem see a close (NFS flushes there) while the
/// handle itself stays open.
pub fn flush(fd: BorrowedFd<'_>) -> io::Result<()> {
    let dup = fd.try_clone_to_owned()?;
    drop(dup);
    Ok(())
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
    .map(drop)
}

pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: plain syscall on a valid fd.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: usize,
) -> io::Result<usize> {
    let mut oi = off_in as libc::loff_t;
    let mut oo = off_out as libc::loff_t;
    // SAFETY: the offset pointers point to live locals.
    check_size(unsafe {
        libc::copy_file_range(
            fd_in.as_raw_fd(),
            &mut oi,
            fd_out.as_raw_fd(),
            &mut oo,
            len,
            0,
        )
    } as libc::ssize_t)
}

pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: st points to writable memory of the right size.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded, so it filled the struct.
    Ok(unsafe { st.assume_init() })
}

/// One directory entry as getdents64 returns it.
pub struct DirEntry {
    pub ino: u64,
    pub kind: u8,
    pub name: OsString,
}

/// The `DT_*` directory-entry type of an `st_mode`.
pub fn dtype_of(mode: u32) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFREG => libc::DT_REG,
        libc::S_IFDIR => libc::DT_DIR,
        libc::S_IFLNK => libc::DT_LNK,
        libc::S_IFCHR => libc::DT_CHR,
        libc::S_IFBLK => libc::DT_BLK,
        libc::S_IFIFO => libc::DT_FIFO,
        libc::S_IFSOCK => libc::DT_SOCK,
        _ => libc::DT_UNKNOWN,
    }
}

/// Reads every entry of an open directory fd from its start (skipping `.` and `..`),
/// with each entry's type (a stat where the filesystem reports `DT_UNKNOWN`).
pub fn read_dir_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<DirEntry>> {
    lseek(fd, 0, libc::SEEK_SET)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is writable for buf.len() bytes.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(out);
        }
        let n = n as usize;
        let mut pos = 0;
        // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        while pos + 19 <= n {
            let ino = u64::from_ne_bytes(buf[pos..pos + 8].try_into().unwrap_or([0; 8]));
            let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
            let kind = buf[pos + 18];
            if reclen == 0 || pos + reclen > n {
                break;
            }
            let name_bytes = &buf[pos + 19..pos + reclen];
            let len = name_bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_bytes.len());
            let name = &name_bytes[..len];
            if name != b"." && name != b".." {
                let name = OsString::from_vec(name.to_vec());
                // Some filesystems (XFS v4, ext4 without filetype, NFS, CIFS, FUSE) do not
                // report types: ask the object, so walks that look for regular files and
                // directories still find them.
                let kind = if kind == libc::DT_UNKNOWN {
                    fstatat(fd, &name, libc::AT_SYMLINK_NOFOLLOW)
                        .map_or(libc::DT_UNKNOWN, |st| dtype_of(st.st_mode))
                } else {
                    kind
                };
                out.push(DirEntry { ino, kind, name });
            }
            pos += reclen;
        }
    }
}

pub fn getxattr(path: &CStr, name: &OsStr, buf: &mut [u8]) -> io::Result<usize> {
    let name = cstr(name)?;
    // SAFETY: strings are NUL-terminated; buf is writable for its length (a null pointer
    // with size 0 asks for the size only).
    check_size(unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

pub fn fgetxattr(fd: BorrowedFd<'_>, name: &OsStr, buf: &mut [u8]) -> io::Result<usize> {
    let name = cstr(name)?;
    // SAFETY: name is NUL-terminated; buf is writable for its length.
    check_size(unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

pub fn fsetxattr(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8]) -> io::Result<()> {
    let name = cstr(name)?;
    // SAFETY: name is NUL-terminated; value is readable for its length.
    check(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
    .map(drop)
}

pub fn listxattr(path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: path is NUL-terminated; buf is writable for its length.
    check_size(unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

pub fn setxattr(path: &CStr, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    let name = cstr(name)?;
    // SAFETY: strings are NUL-terminated; value is readable for its length.
    check(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

pub fn removexattr(path: &CStr, name: &OsStr) -> io::Result<()> {
    let name = cstr(name)?;
    // SAFETY: strings are NUL-terminated.
    check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}

/// access(2) checked with the thread's effective (fs) ids, not the real ones.
pub fn faccess(path: &CStr, mask: i32) -> io::Result<()> {
    // SAFETY: path is NUL-terminated. faccessat2 is used for AT_EACCESS, which the
    // glibc faccessat emulates only partially.
    check(unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            mask,
            libc::AT_EACCESS,
        ) as libc::c_int
    })
    .map(drop)
}

/// Takes an exclusive flock without waiting; EWOULDBLOCK if another holder has it.
pub fn flock_exclusive_nb(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }).map(drop)
}

/// posix_fadvise; advice only, so callers may ignore its failure.
pub fn fadvise(fd: BorrowedFd<'_>, offset: u64, len: u64, advice: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    let r = unsafe {
        libc::posix_fadvise(
            fd.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            advice,
        )
    };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Starts writeback of a range and waits for it, so a long copy does not pile up dirty
/// pages that a later fsync (or the kernel, at a bad moment) must flush all at once.
pub fn sync_range(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe {
        libc::sync_file_range(
            fd.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )
    })
    .map(drop)
}

/// The uid of the process at the other end of a Unix stream socket (SO_PEERCRED).
pub fn peer_uid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut cred = MaybeUninit::<libc::ucred>::zeroed();
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len point to live locals of the sizes getsockopt is told.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            cred.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    // SAFETY: getsockopt succeeded and filled the struct.
    Ok(unsafe { cred.assume_init() }.uid)
}

// ---- credentials (per thread) ----

/// Sets this thread's filesystem uid and gid and supplementary groups. Raw syscalls on
/// purpose: glibc's wrappers broadcast setgroups to every thread of the process.
pub fn set_thread_creds(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: groups points to groups.len() valid gid_t values.
    check(unsafe {
        libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) as libc::c_int
    })?;
    // setfsuid/setfsgid return the previous id and cannot report failure directly; the
    // caller verifies the switch by reading it back.
    // SAFETY: plain syscalls.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
    }
    // SAFETY: setfsuid(-1) changes nothing and returns the current fsuid.
    let now = unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) } as u32;
    if now != uid {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

pub fn geteuid() -> u32 {
    // SAFETY: always succeeds.
    unsafe { libc::geteuid() }
}

pub fn getpid() -> u32 {
    // SAFETY: always succeeds.
    unsafe { libc::getpid() as u32 }
}

pub fn getegid() -> u32 {
    // SAFETY: always succeeds.
    unsafe { libc::getegid() }
}

pub fn set_umask(mask: u32) -> u32 {
    // SAFETY: always succeeds.
    unsafe { libc::umask(mask) }
}

/// The soft and hard RLIMIT_NOFILE.
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = MaybeUninit::<libc::rlimit>::zeroed();
    // SAFETY: lim points to writable memory of the right size.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, lim.as_mut_ptr()) })?;
    // SAFETY: getrlimit succeeded.
    let lim = unsafe { lim.assume_init() };
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft RLIMIT_NOFILE to the hard one and returns it. The hard limit is the
/// administrator's (systemd's `LimitNOFILE=`, `prlimit`) and is never raised: the daemon
/// sizes its descriptor cache from whatever it gets (see `source.rs`).
pub fn raise_nofile_limit() -> io::Result<u64> {
    let (_, hard) = nofile_limit()?;
    let lim = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: lim is a valid rlimit.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    Ok(hard)
}

// ---- file handles ----

/// The most bytes of a file handle kept inline in an inode. ext4 and xfs give 8 or 16,
/// tmpfs 12, btrfs 20; a filesystem with longer handles is resolved by parent and name.
pub const HANDLE_MAX: usize = 24;

/// A filesystem's handle for an object (`name_to_handle_at`), enough to reopen it with
/// `open_by_handle_at` wherever it has been renamed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHandle {
    kind: i32,
    len: u8,
    bytes: [u8; HANDLE_MAX],
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
pub fn name_to_handle_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<FileHandle> {
    handle_at(dir, &cstr(name)?, 0)
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
        return Err(io::Error::from_raw_os_error(libc::EOVERFLOW));
    }
    let mut bytes = [0u8; HANDLE_MAX];
    bytes[..len].copy_from_slice(&raw.f_handle[..len]);
    Ok(FileHandle {
        kind: raw.handle_type,
        len: len as u8,
        bytes,
    })
}

/// Opens the object a handle names, on the filesystem `mount_fd` is on. Needs
/// CAP_DAC_READ_SEARCH (so never while the thread runs with a caller's fsuid); ESTALE
/// when the object no longer exists.
pub fn open_by_handle(
    mount_fd: BorrowedFd<'_>,
    handle: &FileHandle,
    flags: i32,
) -> io::Result<OwnedFd> {
    let mut raw = RawHandle::empty();
    raw.handle_bytes = handle.len as libc::c_uint;
    raw.handle_type = handle.kind;
    raw.f_handle[..handle.len as usize].copy_from_slice(&handle.bytes[..handle.len as usize]);
    // SAFETY: raw is a valid file_handle of handle_bytes bytes; the fd returned is ours.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            &mut raw as *mut RawHandle,
            flags | libc::O_CLOEXEC,
        ) as libc::c_int
    })?;
    // SAFETY: fd was just returned by open_by_handle_at and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// ---- mounting ----

/// mount(2).
pub fn mount(
    source: &CStr,
    target: &CStr,
    fstype: &CStr,
    flags: u64,
    data: &CStr,
) -> io::Result<()> {
    // SAFETY: every string is NUL-terminated.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags as libc::c_ulong,
            data.as_ptr().cast(),
        )
    })
    .map(drop)
}

pub fn umount2(target: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: target is NUL-terminated.
    check(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

// ---- processes ----

/// A pipe: (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

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

/// Waits for a child process to exit.
pub fn waitpid(pid: u32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out pointer.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if r >= 0 {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reaps any exited child, waiting if there is none yet; `None` when there are no
/// children at all.
pub fn reap_any() -> Option<u32> {
    let mut status = 0;
    // SAFETY: status is a valid out pointer.
    let r = unsafe { libc::waitpid(-1, &mut status, 0) };
    (r > 0).then_some(r as u32)
}

/// Detaches from the controlling terminal and the caller's session, works from `/`, and
/// points stdin, stdout and stderr at /dev/null (a daemon's logs go elsewhere).
pub fn daemonize_io() -> io::Result<()> {
    // SAFETY: plain syscalls; the fds are checked.
    unsafe {
        if libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        check(libc::chdir(c"/".as_ptr()))?;
        let null = check(libc::open(c"/dev/null".as_ptr(), libc::O_RDWR))?;
        for fd in 0..3 {
            check(libc::dup2(null, fd))?;
        }
        if null > 2 {
            libc::close(null);
        }
    }
    Ok(())
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

/// Names the calling thread (what `ps -L` and `top` show).
pub fn set_thread_name(name: &CStr) {
    // SAFETY: name is NUL-terminated; PR_SET_NAME copies at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// Reads until end of file or error, discarding the bytes.
pub fn wait_eof(fd: BorrowedFd<'_>) {
    let mut b = [0u8; 64];
    loop {
        // SAFETY: b is writable for its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
        if n == 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted) {
            return;
        }
    }
}

/// Ends the process at once, without running destructors or atexit handlers (for a
/// forked child, which must not flush or drop anything its parent owns).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
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
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Sends `sig` to a process this one started.
pub fn kill(pid: u32, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::kill(pid as libc::pid_t, sig) }).map(drop)
}

/// Waits up to `timeout_ms` (negative: forever) for `fd` to be readable or closed.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: p is one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if r >= 0 {
            return Ok(r > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends `sig` to this process (a stop request reaches the signal thread this way).
pub fn signal_self(sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::kill(libc::getpid(), sig) }).map(drop)
}

/// Waits for one of `signals` (which must be blocked) and returns it.
pub fn wait_signal(signals: &[i32]) -> io::Result<i32> {
    let set = sigset(signals);
    let mut sig = 0;
    // SAFETY: set is initialised and sig is a valid out pointer.
    let r = unsafe { libc::sigwait(&set, &mut sig) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(sig)
}
