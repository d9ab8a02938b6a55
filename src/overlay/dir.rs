//! Directory handles: opendir, readdir, readdirplus, releasedir, fsyncdir.
//!
//! A handle reads the whole directory on its first readdir (and again on a rewind to
//! offset 0) and serves the kernel's offsets as indexes into that listing, so entries
//! added or removed while a scan is under way never make it skip or repeat a name.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use rustix::fs::{FileType, Mode, OFlags};

use super::memory::needs_source_error;
use super::{Caller, Entry, Overlay};
use crate::inodes::Inode;
use crate::{fdio, sys};

pub(super) struct DirHandle {
    /// The directory, opened as the caller; also its inode's descriptor while open.
    /// With the metadata cache on and the listing fresh in it, opendir opens nothing
    /// (SOURCE is not touched); the directory is opened, as the daemon, only if a
    /// listing must be read from SOURCE after all.
    fd: OnceLock<Arc<OwnedFd>>,
    nodeid: u64,
    /// Read on the first readdir of the handle, at whatever offset (the kernel goes on
    /// from its own cache of the directory with a new handle), and again at offset 0.
    listing: Mutex<Option<Vec<fdio::DirEntry>>>,
}

impl DirHandle {
    /// Writes what a successor needs (a live restart): its number, node, and its
    /// descriptor's number, which the caller keeps open (`keep`). The listing is read
    /// again if the kernel asks past its own cache.
    pub(super) fn export(&self, fh: u64, w: &mut crate::codec::Writer, keep: &mut Vec<i32>) {
        use std::os::fd::AsRawFd;
        w.u64(fh);
        w.u64(self.nodeid);
        let n = self.fd.get().map_or(-1, |f| f.as_raw_fd());
        if n >= 0 {
            keep.push(n);
        }
        w.u32(n as u32);
    }

    pub(super) fn import(
        r: &mut crate::codec::Reader<'_>,
        fds: &mut super::file::Inherited,
        handed: bool,
    ) -> Result<(u64, DirHandle), String> {
        let bad = || "the open directories handed over are damaged".to_string();
        let fh = r.u64().ok_or_else(bad)?;
        let nodeid = r.u64().ok_or_else(bad)?;
        let n = r.u32().ok_or_else(bad)? as i32;
        let fd = OnceLock::new();
        if n >= 0 && handed {
            let _ = fd.set(super::file::inherited(fds, n)?);
        }
        Ok((
            fh,
            DirHandle {
                fd,
                nodeid,
                listing: Mutex::new(None),
            },
        ))
    }
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

/// The handle of a directory read the kernel did not open (no-opendir mode).
const NO_HANDLE: u64 = 0;

const DOT: &[u8] = b".";
const DOTDOT: &[u8] = b"..";

impl Overlay {
    pub fn opendir(&self, caller: &Caller, nodeid: u64) -> io::Result<u64> {
        let fd = OnceLock::new();
        let inode = self.inode(nodeid)?;
        let cached = self
            .meta
            .as_ref()
            .is_some_and(|m| m.listing((inode.dev, inode.ino)).is_some());
        if !cached {
            let _ = fd.set(self.open_dir(Some(caller), &inode)?);
        }
        let pinned = fd.get().cloned();
        let fh = self.dirs.insert(DirHandle {
            fd,
            nodeid,
            listing: Mutex::new(None),
        });
        if let Some(fd) = pinned {
            self.inodes.fds.pin(nodeid, fh, fd);
        }
        self.publish_handles();
        Ok(fh)
    }

    /// Opens a directory for reading, as `caller` (or as the daemon).
    fn open_dir(&self, caller: Option<&Caller>, inode: &Inode) -> io::Result<Arc<OwnedFd>> {
        let path_fd = self.fd(inode)?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        if caller.is_none() {
            // As the daemon: `.` of the directory itself, one step where the
            // /proc/self/fd path below is a walk through procfs (once per directory
            // of a scan). EACCES (a daemon that is not root, a directory it may not
            // search) takes the path below.
            let dot = || Ok(rustix::fs::openat(&*path_fd, c".", flags, Mode::empty())?);
            match self.inodes.fds.retry(dot) {
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => {}
                r => return r.map(Arc::new),
            }
        }
        let _as = caller.map(|c| self.creds.enter(c)).transpose()?;
        // Through /proc/self/fd, as a file is opened: reading a directory needs read
        // permission only, where openat(dir, ".") would also need search permission.
        let proc = fdio::proc_path(path_fd.as_fd());
        let open = || Ok(rustix::fs::open(&proc, flags, Mode::empty())?);
        Ok(Arc::new(self.inodes.fds.retry(open)?))
    }

    /// The handle's descriptor, opened now if opendir did not need one.
    fn dir_fd(&self, dir: &DirHandle, fh: u64, inode: &Inode) -> io::Result<Arc<OwnedFd>> {
        if let Some(fd) = dir.fd.get() {
            return Ok(fd.clone());
        }
        let fd = self.open_dir(None, inode)?;
        if dir.fd.set(fd.clone()).is_ok() {
            self.inodes.fds.pin(dir.nodeid, fh, fd.clone());
        }
        Ok(dir.fd.get().cloned().unwrap_or(fd))
    }

    /// The handle's listing: read on its first readdir at whatever offset (the kernel
    /// goes on from its own cache of the directory with a new handle), and again at
    /// offset 0; from the metadata cache while fresh there, else from SOURCE (unless
    /// `memory_only`: then `needs_source`).
    fn listing<'a>(
        &self,
        dir: &DirHandle,
        fh: u64,
        inode: &Inode,
        listing: &'a mut Option<Vec<fdio::DirEntry>>,
        (offset, memory_only): (u64, bool),
    ) -> io::Result<&'a [fdio::DirEntry]> {
        if offset == 0 || listing.is_none() {
            let key = (inode.dev, inode.ino);
            let cached = self.meta.as_ref().and_then(|m| m.listing(key));
            *listing = Some(match cached {
                Some(l) => l,
                None if memory_only => return Err(needs_source_error()),
                None => {
                    let fd = self.dir_fd(dir, fh, inode)?;
                    let l = fdio::read_dir(fd.as_fd())?;
                    if let Some(meta) = &self.meta {
                        meta.put_listing(key, &l);
                    }
                    self.ahead.listed(&self.inodes, inode, &fd, &l);
                    l
                }
            });
        }
        Ok(listing.as_deref().unwrap_or_default())
    }

    /// The handle's listing, locked. A memory-only read does not wait for it: the holder
    /// may be reading the directory from SOURCE.
    fn lock_listing<'a>(
        &self,
        dir: &'a DirHandle,
        memory_only: bool,
    ) -> io::Result<parking_lot::MutexGuard<'a, Option<Vec<fdio::DirEntry>>>> {
        if memory_only {
            dir.listing.try_lock().ok_or_else(needs_source_error)
        } else {
            Ok(dir.listing.lock())
        }
    }

    pub fn releasedir(&self, fh: u64) {
        if let Some(d) = self.dirs.remove(fh) {
            self.publish_handles();
            self.inodes.fds.unpin(d.nodeid, fh);
        }
    }

    pub fn fsyncdir(&self, nodeid: u64, fh: u64, datasync: bool) -> io::Result<()> {
        let inode = self.inode(nodeid)?;
        if fh == NO_HANDLE {
            return fdio::sync(self.open_dir(None, &inode)?.as_fd(), datasync);
        }
        let dir = self.dirs.get(fh)?;
        fdio::sync(self.dir_fd(&dir, fh, &inode)?.as_fd(), datasync)
    }

    /// The listing from `offset` on: `.`, `..`, then the directory's names. `add` returns
    /// true once the reply buffer is full. `memory_only`: `needs_source` (before anything
    /// is added) where the listing must come from SOURCE.
    pub fn readdir(
        &self,
        nodeid: u64,
        fh: u64,
        (offset, memory_only): (u64, bool),
        mut add: impl FnMut(DirEntryOut<'_>) -> bool,
    ) -> io::Result<()> {
        let inode = self.inode(nodeid)?;
        let dir = self.dir_handle(nodeid, fh)?;
        let mut guard = self.lock_listing(&dir, memory_only)?;
        let listing = self.listing(&dir, fh, &inode, &mut guard, (offset, memory_only))?;
        let mut eof = true;
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
                eof = false;
                break;
            }
        }
        drop(guard);
        self.read_to_end(nodeid, fh, eof);
        Ok(())
    }

    /// Like `readdir`, with each entry looked up (one kernel reference taken per entry
    /// but `.` and `..`, as READDIRPLUS requires). `add` gets the entry, the offset after
    /// it and whether it is a dot entry, and returns true if it did not fit; the reference
    /// of an entry that did not fit is given back here. `memory_only`: the reply stops at
    /// the first entry that needs SOURCE (the kernel asks again from there), and is
    /// `needs_source` if that is the first one.
    pub fn readdirplus(
        &self,
        caller: &Caller,
        nodeid: u64,
        fh: u64,
        (offset, memory_only): (u64, bool),
        mut add: impl FnMut(&OsStr, &Entry, u64) -> bool,
    ) -> io::Result<()> {
        let inode = self.inode(nodeid)?;
        let dir = self.dir_handle(nodeid, fh)?;
        let _as = self.creds.enter(caller)?;
        let mut eof = true;
        let mut guard = self.lock_listing(&dir, memory_only)?;
        let listing = self.listing(&dir, fh, &inode, &mut guard, (offset, memory_only))?;
        let mut i = offset as usize;
        if i < 2 {
            let stat = match self
                .meta
                .as_ref()
                .and_then(|m| m.attr((inode.dev, inode.ino)))
            {
                Some(st) => st,
                None if memory_only => return Err(needs_source_error()),
                None => sys::libc_stat(&rustix::fs::fstat(&*self.dir_fd(&dir, fh, &inode)?)?),
            };
            let this = Entry { nodeid, stat };
            while i < 2 {
                let name = OsStr::from_bytes(if i == 0 { DOT } else { DOTDOT });
                if add(name, &this, i as u64 + 1) {
                    return Ok(());
                }
                i += 1;
            }
        }
        // The dots went in above.
        let mut added = offset < 2;
        for (j, e) in listing.iter().enumerate().skip(i - 2) {
            let found = match self.entry_cached(&inode, e) {
                Some(entry) => Ok(entry),
                None if memory_only && !added => return Err(needs_source_error()),
                None if memory_only => {
                    eof = false;
                    break;
                }
                None => self
                    .dir_fd(&dir, fh, &inode)
                    .and_then(|fd| self.lookup_inode(&inode, fd.as_fd(), &e.name)),
            };
            let entry = match found {
                Ok(entry) => entry,
                // Gone since the listing was read: leave it out, as a fresh listing would.
                Err(_) => continue,
            };
            if add(&e.name, &entry, j as u64 + 3) {
                self.inodes.forget(entry.nodeid, 1);
                eof = false;
                break;
            }
            added = true;
        }
        drop(guard);
        self.read_to_end(nodeid, fh, eof);
        Ok(())
    }

    /// An entry of a listing of `parent` answered by the metadata cache, with one kernel
    /// reference taken: the listing names the object (`d_ino` on the directory's device),
    /// so only its attributes are looked for. A mount point inside SOURCE (another
    /// device) is never found so, and is asked of SOURCE.
    fn entry_cached(&self, parent: &Arc<Inode>, e: &fdio::DirEntry) -> Option<Entry> {
        let stat = self.meta.as_ref()?.attr((parent.dev, e.ino))?;
        let inode = self.inodes.insert_cached(parent, &e.name, &stat);
        Some(Entry {
            nodeid: inode.nodeid,
            stat,
        })
    }

    /// The handle a read comes with; handle 0 (the kernel no longer opens directories,
    /// see `fuse.rs` init) is the node's own, made on its first read.
    fn dir_handle(&self, nodeid: u64, fh: u64) -> io::Result<Arc<DirHandle>> {
        if fh != NO_HANDLE {
            return self.dirs.get(fh);
        }
        Ok(self
            .node_dirs
            .lock()
            .entry(nodeid)
            .or_insert_with(|| {
                Arc::new(DirHandle {
                    fd: OnceLock::new(),
                    nodeid,
                    listing: Mutex::new(None),
                })
            })
            .clone())
    }

    /// A node's own listing goes once a read has reached its end: the kernel keeps the
    /// entries from there (FOPEN_CACHE_DIR), and the next read from offset 0 is a new
    /// scan that must see the directory as it is then.
    fn read_to_end(&self, nodeid: u64, fh: u64, eof: bool) {
        if fh == NO_HANDLE && eof {
            self.forget_node_dir(nodeid);
        }
    }

    /// Drops a node's own directory handle and its pinned descriptor, if it has one.
    pub(super) fn forget_node_dir(&self, nodeid: u64) {
        if self.node_dirs.lock().remove(&nodeid).is_some() {
            self.inodes.fds.unpin(nodeid, NO_HANDLE);
        }
    }
}
