//! Descriptor helpers that the overlay, the inode table and the cache share, on top of
//! rustix: a directory read whole with each entry's type, reads and writes that go on
//! until done, and `/proc/self/fd/N` names for calls that take no `O_PATH` descriptor.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, RawDir, SeekFrom};

/// `/proc/self/fd/N` for an fd: a short path that reaches the fd's file whatever its real
/// path length, and that follows no user-controlled symlink. For the few calls that have
/// no `*at` form accepting an `O_PATH` descriptor (chmod, truncate, xattrs, open, link).
pub fn proc_path(fd: BorrowedFd<'_>) -> CString {
    // A decimal number never contains a NUL byte.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// One directory entry as getdents64 returns it.
pub struct DirEntry {
    pub ino: u64,
    pub kind: FileType,
    pub name: OsString,
}

/// Reads every entry of an open directory fd from its start (skipping `.` and `..`),
/// with each entry's type (a stat where the filesystem does not report it).
pub fn read_dir(fd: BorrowedFd<'_>) -> io::Result<Vec<DirEntry>> {
    rustix::fs::seek(fd, SeekFrom::Start(0))?;
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 * 1024];
    let mut dir = RawDir::new(fd, &mut buf);
    let mut out = Vec::new();
    while let Some(e) = dir.next() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name);
        // Some filesystems (XFS v4, ext4 without filetype, NFS, CIFS, FUSE) do not report
        // types: ask the object, so walks that look for regular files and directories
        // still find them.
        let kind = match e.file_type() {
            FileType::Unknown => rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_or(FileType::Unknown, |st| FileType::from_raw_mode(st.st_mode)),
            kind => kind,
        };
        out.push(DirEntry {
            ino: e.ino(),
            kind,
            name: name.to_owned(),
        });
    }
    Ok(out)
}

/// Reads at `offset` until `buf` is full or the file ends; returns the bytes read (fewer
/// only at the end of the file, which is what a short read means to the kernel).
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = rustix::io::pread(fd, &mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// Writes all of `buf` at `offset`; WriteZero if the file takes no more.
pub fn pwrite_all(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pwrite(fd, &buf[done..], offset + done as u64)? {
            0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            n => done += n,
        }
    }
    Ok(())
}

/// fsync, or fdatasync with `datasync`.
pub fn sync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    let r = if datasync {
        rustix::fs::fdatasync(fd)
    } else {
        rustix::fs::fsync(fd)
    };
    Ok(r?)
}
