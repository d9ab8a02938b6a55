//! Open files: open, create, read, write, flush, fsync, release, fallocate, lseek,
//! copy_file_range. A handle owns a real descriptor of the source file, opened through
//! the inode's `O_PATH` descriptor (`/proc/self/fd/N`), so no path is resolved again.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use super::{Caller, Entry, Overlay, check_writable};
use crate::sys;

pub(super) struct FileHandle {
    pub(super) fd: OwnedFd,
}

/// Flags that only make sense to the kernel's own open path, or that would make the
/// open through `/proc/self/fd` fail (O_NOFOLLOW: that path is a magic link).
const STRIP: i32 = libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW;

fn is_write(flags: i32) -> bool {
    matches!(flags & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR) || flags & libc::O_TRUNC != 0
}

impl Overlay {
    pub fn open(&self, caller: &Caller, nodeid: u64, flags: i32) -> io::Result<u64> {
        if is_write(flags) {
            check_writable(&self.cfg)?;
        }
        let inode = self.inode(nodeid)?;
        let _as = self.creds.enter(caller)?;
        let fd = sys::open_path(&sys::proc_path(inode.fd()), flags & !STRIP, 0)?;
        Ok(self.files.insert(FileHandle { fd }))
    }

    pub fn create(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> io::Result<(Entry, u64)> {
        check_writable(&self.cfg)?;
        let parent = self.inode(parent)?;
        let _as = self.creds.enter(caller)?;
        let fd = sys::openat(
            parent.fd(),
            name,
            (flags & !(libc::O_NOCTTY)) | libc::O_CREAT | libc::O_NOFOLLOW,
            mode,
        )?;
        // The inode's O_PATH descriptor comes from the open file itself, not from the name,
        // which another process could already have replaced.
        let path_fd = sys::open_path(&sys::proc_path(fd.as_fd()), libc::O_PATH, 0)?;
        let stat = sys::fstat(path_fd.as_fd())?;
        let inode = self.inodes.insert(path_fd, &stat);
        let fh = self.files.insert(FileHandle { fd });
        Ok((
            Entry {
                nodeid: inode.nodeid,
                stat,
            },
            fh,
        ))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let h = self.files.get(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        // A short read means end of file to the kernel, so fill the buffer unless the
        // source really ends.
        while done < buf.len() {
            let n = sys::pread(h.fd.as_fd(), &mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> io::Result<u32> {
        let h = self.files.get(fh)?;
        let mut done = 0;
        while done < data.len() {
            let n = sys::pwrite(h.fd.as_fd(), &data[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done as u32)
    }

    pub fn flush(&self, fh: u64) -> io::Result<()> {
        sys::flush(self.files.get(fh)?.fd.as_fd())
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> io::Result<()> {
        sys::fsync(self.files.get(fh)?.fd.as_fd(), datasync)
    }

    pub fn release(&self, fh: u64) {
        self.files.remove(fh);
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> io::Result<()> {
        check_writable(&self.cfg)?;
        sys::fallocate(self.files.get(fh)?.fd.as_fd(), mode, offset, length)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> io::Result<i64> {
        sys::lseek(self.files.get(fh)?.fd.as_fd(), offset, whence)
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
        sys::copy_file_range(fin.fd.as_fd(), off_in, fout.fd.as_fd(), off_out, len).map(|n| n as u32)
    }
}
