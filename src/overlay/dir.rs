//! Directory handles: opendir, readdir, readdirplus, releasedir, fsyncdir.
//!
//! A handle reads the whole directory on its first readdir (and again on a rewind to
//! offset 0) and serves the kernel's offsets as indexes into that listing, so entries
//! added or removed while a scan is under way never make it skip or repeat a name.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use parking_lot::Mutex;
use rustix::fs::{FileType, Mode, OFlags};

use super::{Caller, Entry, Overlay};
use crate::fdio;

pub(super) struct DirHandle {
    /// The directory, opened as the caller; also its inode's descriptor while open.
    fd: Arc<OwnedFd>,
    nodeid: u64,
    listing: Mutex<Vec<fdio::DirEntry>>,
}

/// One entry for a plain readdir reply.
pub struct DirEntryOut<'a> {
    pub ino: u64,
    /// `DT_*` value from getdents.
    pub kind: u8,
    pub name: &'a OsStr,
    /// The offset of the entry after this one.
    pub next: u64,
}

/// The `DT_*` value of an entry's type.
fn dtype(kind: FileType) -> u8 {
    match kind {
        FileType::RegularFile => libc::DT_REG,
        FileType::Directory => libc::DT_DIR,
        FileType::Symlink => libc::DT_LNK,
        FileType::CharacterDevice => libc::DT_CHR,
        FileType::BlockDevice => libc::DT_BLK,
        FileType::Fifo => libc::DT_FIFO,
        FileType::Socket => libc::DT_SOCK,
        FileType::Unknown => libc::DT_UNKNOWN,
    }
}

const DOT: &[u8] = b".";
const DOTDOT: &[u8] = b"..";

impl Overlay {
    pub fn opendir(&self, caller: &Caller, nodeid: u64) -> io::Result<u64> {
        let (_, path_fd) = self.node(nodeid)?;
        let fd = {
            let _as = self.creds.enter(caller)?;
            // Through /proc/self/fd, as a file is opened: reading a directory needs read
            // permission only, where openat(dir, ".") would also need search permission.
            let proc = fdio::proc_path(path_fd.as_fd());
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let open = || Ok(rustix::fs::open(&proc, flags, Mode::empty())?);
            Arc::new(self.inodes.fds.retry(open)?)
        };
        let fh = self.dirs.insert(DirHandle {
            fd: fd.clone(),
            nodeid,
            listing: Mutex::new(Vec::new()),
        });
        self.inodes.fds.pin(nodeid, fh, fd);
        Ok(fh)
    }

    pub fn releasedir(&self, fh: u64) {
        if let Some(d) = self.dirs.remove(fh) {
            self.inodes.fds.unpin(d.nodeid, fh);
        }
    }

    pub fn fsyncdir(&self, fh: u64, datasync: bool) -> io::Result<()> {
        fdio::sync(self.dirs.get(fh)?.fd.as_fd(), datasync)
    }

    /// The listing from `offset` on: `.`, `..`, then the directory's names. `add` returns
    /// true once the reply buffer is full.
    pub fn readdir(
        &self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(DirEntryOut<'_>) -> bool,
    ) -> io::Result<()> {
        let inode = self.inode(nodeid)?;
        let dir = self.dirs.get(fh)?;
        let mut listing = dir.listing.lock();
        if offset == 0 {
            *listing = fdio::read_dir(dir.fd.as_fd())?;
        }
        let dots = [(DOT, nodeid), (DOTDOT, nodeid)];
        let mut i = offset as usize;
        while i < 2 {
            let (name, ino) = dots[i];
            let name = OsStr::from_bytes(name);
            if add(DirEntryOut {
                ino,
                kind: libc::DT_DIR,
                name,
                next: i as u64 + 1,
            }) {
                return Ok(());
            }
            i += 1;
        }
        for (j, e) in listing.iter().enumerate().skip(i - 2) {
            let out = DirEntryOut {
                ino: self.inodes.nodeid_of(inode.dev, e.ino),
                kind: dtype(e.kind),
                name: &e.name,
                next: j as u64 + 3,
            };
            if add(out) {
                break;
            }
        }
        Ok(())
    }

    /// Like `readdir`, with each entry looked up (one kernel reference taken per entry
    /// but `.` and `..`, as READDIRPLUS requires). `add` gets the entry, the offset after
    /// it and whether it is a dot entry, and returns true if it did not fit; the reference
    /// of an entry that did not fit is given back here.
    pub fn readdirplus(
        &self,
        caller: &Caller,
        nodeid: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&OsStr, &Entry, u64) -> bool,
    ) -> io::Result<()> {
        let inode = self.inode(nodeid)?;
        let dir = self.dirs.get(fh)?;
        let _as = self.creds.enter(caller)?;
        let mut listing = dir.listing.lock();
        if offset == 0 {
            *listing = fdio::read_dir(dir.fd.as_fd())?;
        }
        let mut i = offset as usize;
        if i < 2 {
            let this = Entry::new(nodeid, &rustix::fs::fstat(&*dir.fd)?);
            while i < 2 {
                let name = OsStr::from_bytes(if i == 0 { DOT } else { DOTDOT });
                if add(name, &this, i as u64 + 1) {
                    return Ok(());
                }
                i += 1;
            }
        }
        for (j, e) in listing.iter().enumerate().skip(i - 2) {
            let entry = match self.lookup_inode(&inode, dir.fd.as_fd(), &e.name) {
                Ok(entry) => entry,
                // Gone since the listing was read: leave it out, as a fresh listing would.
                Err(_) => continue,
            };
            if add(&e.name, &entry, j as u64 + 3) {
                self.inodes.forget(entry.nodeid, 1);
                break;
            }
        }
        Ok(())
    }
}
