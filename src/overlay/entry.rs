//! Names and attributes: lookup, getattr, setattr, readlink, mknod, mkdir, unlink, rmdir,
//! symlink, rename, link, statfs, access. Each works on a parent's descriptor and one
//! name, or on the object's own descriptor, never on a joined path.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use rustix::fs::{Access, AtFlags, FileType, Gid, Mode, RenameFlags, Timespec, Timestamps, Uid};

use super::creds::Umask;
use super::{Caller, Entry, NewMode, Overlay, check_writable};
use crate::{fdio, sys};

/// A new timestamp in a setattr.
#[derive(Debug, Clone, Copy)]
pub enum Timestamp {
    Now,
    /// Seconds and nanoseconds since the epoch.
    At(i64, u32),
}

/// The changes of one setattr call; `None` leaves a field as it is.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
    pub fh: Option<u64>,
}

fn timespec(t: Option<Timestamp>) -> Timespec {
    let (tv_sec, tv_nsec) = match t {
        None => (0, rustix::fs::UTIME_OMIT),
        Some(Timestamp::Now) => (0, rustix::fs::UTIME_NOW),
        Some(Timestamp::At(s, ns)) => (s, ns.into()),
    };
    Timespec { tv_sec, tv_nsec }
}

/// The permission bits of a mode (its type bits are the file's, never changed here).
fn perm(mode: u32) -> Mode {
    Mode::from_raw_mode(mode & 0o7777)
}

impl Overlay {
    /// `parent/name` looked up in SOURCE (`lookup_from_memory` answers from the metadata
    /// cache, asked first).
    pub fn lookup(&self, caller: &Caller, parent: u64, name: &OsStr) -> io::Result<Entry> {
        let (parent, pfd) = self.node(parent)?;
        let _as = self.creds.enter(caller)?;
        self.lookup_inode(&parent, pfd.as_fd(), name)
    }

    /// Attributes of a node; with `fh`, of that open file (which may be unlinked).
    /// From SOURCE (`getattr_from_memory` answers from the metadata cache, asked first).
    pub fn getattr(&self, nodeid: u64, fh: Option<u64>) -> io::Result<sys::Stat> {
        if let Some(h) = fh.and_then(|fh| self.files.get(fh).ok()) {
            return Ok(sys::libc_stat(&rustix::fs::fstat(&*self.source_of(&h)?)?));
        }
        let (_, fd) = self.node(nodeid)?;
        let since = self.meta.as_ref().map(|m| m.epoch());
        let st = sys::libc_stat(&rustix::fs::fstat(&*fd)?);
        if let (Some(meta), Some(since)) = (&self.meta, since) {
            // Not if a change through the mount (a chmod, an ACL and the mode it implies)
            // overtook this read.
            meta.put_attr_since(since, &st);
        }
        Ok(st)
    }

    pub fn setattr(&self, caller: &Caller, nodeid: u64, set: &SetAttr) -> io::Result<sys::Stat> {
        check_writable(&self.cfg)?;
        let inode = self.inode(nodeid)?;
        let handle = set.fh.and_then(|fh| self.files.get(fh).ok());
        if set.size.is_some() || set.mtime.is_some() {
            // New content or a new mtime: the copy no longer matches; drop it first.
            self.invalidate_inode(&inode);
        }
        let fd = self.fd(&inode)?;
        let mut as_caller = Some(self.creds.enter(caller)?);
        let proc = fdio::proc_path(fd.as_fd());

        if let Some(mode) = set.mode {
            match &handle {
                Some(h) => rustix::fs::fchmod(&*self.source_of(h)?, perm(mode))?,
                // Symlinks have no mode of their own on Linux.
                None if inode.is_symlink() => {
                    return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
                }
                None => rustix::fs::chmod(&proc, perm(mode))?,
            }
        }
        if set.uid.is_some() || set.gid.is_some() {
            rustix::fs::chownat(
                &*fd,
                c"",
                set.uid.map(Uid::from_raw),
                set.gid.map(Gid::from_raw),
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        if let Some(size) = set.size {
            match &handle {
                Some(h) => rustix::fs::ftruncate(&*self.source_of(h)?, size)?,
                None => sys::truncate_path(&proc, size)?,
            }
            // Readers already open follow the new size; their copies are the daemon's own.
            drop(as_caller.take());
            self.truncated(&inode, size);
            as_caller = Some(self.creds.enter(caller)?);
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let times = Timestamps {
                last_access: timespec(set.atime),
                last_modification: timespec(set.mtime),
            };
            if inode.is_symlink() {
                let flags = AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW;
                rustix::fs::utimensat(&*fd, c"", &times, flags)?;
            } else {
                rustix::fs::utimensat(rustix::fs::CWD, &proc, &times, AtFlags::empty())?;
            }
        }
        drop(as_caller);
        self.meta_changed((inode.dev, inode.ino));
        let st = rustix::fs::fstat(&*fd)?;
        if set.size.is_none()
            && set.mtime.is_none()
            && let (Some(cache), Some(rel)) = (&self.cache, self.rel_of(&inode))
        {
            // A chmod, chown or atime change through the mount: the bytes are the same.
            cache.metadata_changed(&rel, &st);
        }
        Ok(sys::libc_stat(&st))
    }

    pub fn readlink(&self, nodeid: u64) -> io::Result<std::ffi::OsString> {
        let (inode, fd) = self.node(nodeid)?;
        if !inode.is_symlink() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let target = rustix::fs::readlinkat(&*fd, c"", Vec::new())?;
        Ok(std::os::unix::ffi::OsStringExt::from_vec(
            target.into_bytes(),
        ))
    }

    pub fn mknod(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        new: NewMode,
        rdev: u32,
    ) -> io::Result<Entry> {
        check_writable(&self.cfg)?;
        let (parent, pfd) = self.node(parent)?;
        let _as = self.creds.enter(caller)?;
        // SOURCE applies the umask, or the parent's default ACL instead (`creds`).
        let _mask = Umask::enter(new.umask)?;
        let mode = new.mode;
        // No type bits make a regular file, as mknod(2) does.
        let kind = match mode & libc::S_IFMT {
            0 => FileType::RegularFile,
            t => FileType::from_raw_mode(t),
        };
        rustix::fs::mknodat(&*pfd, name, kind, perm(mode), rdev.into())?;
        self.meta_name_changed(&parent, name);
        self.lookup_inode(&parent, pfd.as_fd(), name)
    }

    pub fn mkdir(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        new: NewMode,
    ) -> io::Result<Entry> {
        check_writable(&self.cfg)?;
        let (parent, pfd) = self.node(parent)?;
        let _as = self.creds.enter(caller)?;
        // SOURCE applies the umask, or the parent's default ACL instead (`creds`).
        let _mask = Umask::enter(new.umask)?;
        rustix::fs::mkdirat(&*pfd, name, perm(new.mode))?;
        self.meta_name_changed(&parent, name);
        self.lookup_inode(&parent, pfd.as_fd(), name)
    }

    pub fn symlink(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
    ) -> io::Result<Entry> {
        check_writable(&self.cfg)?;
        let (parent, pfd) = self.node(parent)?;
        let _as = self.creds.enter(caller)?;
        rustix::fs::symlinkat(target, &*pfd, name)?;
        self.meta_name_changed(&parent, name);
        self.lookup_inode(&parent, pfd.as_fd(), name)
    }

    pub fn link(
        &self,
        caller: &Caller,
        nodeid: u64,
        newparent: u64,
        newname: &OsStr,
    ) -> io::Result<Entry> {
        check_writable(&self.cfg)?;
        let (inode, fd) = self.node(nodeid)?;
        let (newparent, npfd) = self.node(newparent)?;
        // The name the copy (if any) is under, before the new link becomes the inode's.
        let rel = self.rel_of(&inode);
        let (linked, st) = {
            let _as = self.creds.enter(caller)?;
            // Through /proc/self/fd with AT_SYMLINK_FOLLOW, which, unlike AT_EMPTY_PATH,
            // needs no CAP_DAC_READ_SEARCH, so it works with the caller's fsuid.
            rustix::fs::linkat(
                rustix::fs::CWD,
                fdio::proc_path(fd.as_fd()),
                &*npfd,
                newname,
                AtFlags::SYMLINK_FOLLOW,
            )?;
            self.meta_changed((inode.dev, inode.ino));
            self.meta_name_changed(&newparent, newname);
            self.inodes.lookup(&newparent, npfd.as_fd(), newname)?
        };
        // A new link changes the file's ctime, not its bytes.
        if let (Some(cache), Some(rel)) = (&self.cache, rel) {
            cache.metadata_changed(&rel, &st);
        }
        Ok(Entry::new(linked.nodeid, &st))
    }

    pub fn unlink(&self, caller: &Caller, parent: u64, name: &OsStr) -> io::Result<()> {
        self.remove(caller, parent, name, AtFlags::empty())
    }

    pub fn rmdir(&self, caller: &Caller, parent: u64, name: &OsStr) -> io::Result<()> {
        self.remove(caller, parent, name, AtFlags::REMOVEDIR)
    }

    fn remove(&self, caller: &Caller, parent: u64, name: &OsStr, flags: AtFlags) -> io::Result<()> {
        check_writable(&self.cfg)?;
        let (parent, pfd) = self.node(parent)?;
        let victim = self.meta_object(pfd.as_fd(), name);
        {
            let _as = self.creds.enter(caller)?;
            rustix::fs::unlinkat(&*pfd, name, flags)?;
        }
        // The object loses a link (another name of it shows the new count and ctime).
        if let Some(obj) = victim {
            self.meta_changed(obj);
        }
        self.meta_name_changed(&parent, name);
        if let (Some(cache), Some(rel)) = (&self.cache, self.rel_child(&parent, name)) {
            cache.invalidate_below(&rel);
        }
        Ok(())
    }

    pub fn rename(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> io::Result<()> {
        check_writable(&self.cfg)?;
        let (parent, pfd) = self.node(parent)?;
        let (newparent, npfd) = self.node(newparent)?;
        // The nodes the rename moves, so their recorded names can follow.
        let moving = self.known_child(pfd.as_fd(), name);
        // The objects both names lead to: the one moved (its ctime, a directory's `..`)
        // and the one replaced or exchanged (its link count and ctime).
        let objects = [
            self.meta_object(pfd.as_fd(), name),
            self.meta_object(npfd.as_fd(), newname),
        ];
        let exchanged = if flags & libc::RENAME_EXCHANGE != 0 {
            self.known_child(npfd.as_fd(), newname)
        } else {
            None
        };
        let from = self.rel_child(&parent, name);
        let to = self.rel_child(&newparent, newname);
        if let Some(cache) = &self.cache {
            // Stop copies of either name before the names change under them.
            for rel in [&from, &to].into_iter().flatten() {
                cache.promoter.cancel_below(rel);
            }
        }
        {
            let _as = self.creds.enter(caller)?;
            let flags = RenameFlags::from_bits_retain(flags);
            rustix::fs::renameat_with(&*pfd, name, &*npfd, newname, flags)?;
        }
        for obj in objects.into_iter().flatten() {
            self.meta_changed(obj);
        }
        self.meta_name_changed(&parent, name);
        self.meta_name_changed(&newparent, newname);
        if let Some(inode) = moving {
            self.inodes.moved(&inode, &newparent, newname);
        }
        if let Some(inode) = exchanged {
            self.inodes.moved(&inode, &parent, name);
        }
        if let Some(cache) = &self.cache {
            match (&from, &to) {
                (Some(from), Some(to)) if flags & libc::RENAME_EXCHANGE == 0 => {
                    cache.renamed(from, to);
                    // A rename changes the moved file's ctime, not its bytes.
                    let st = rustix::fs::statat(&*npfd, newname, AtFlags::SYMLINK_NOFOLLOW);
                    if let Ok(st) = st {
                        cache.metadata_changed(to, &st);
                    }
                }
                _ => {
                    for rel in [&from, &to].into_iter().flatten() {
                        cache.invalidate_below(rel);
                    }
                }
            }
        }
        Ok(())
    }

    /// The object `dir/name` leads to, when the metadata cache is on (it must forget the
    /// object's attributes after a change to one of its names).
    fn meta_object(&self, dir: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> Option<(u64, u64)> {
        self.meta.as_ref()?;
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        Some((st.st_dev, st.st_ino))
    }

    /// The node of `dir/name`, if the kernel knows it.
    fn known_child(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
    ) -> Option<Arc<crate::inodes::Inode>> {
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        self.inodes
            .get(self.inodes.nodeid_of(st.st_dev, st.st_ino))
            .ok()
    }

    /// Drops the cached copy of an inode's file, if it has a path and a copy.
    fn invalidate_inode(&self, inode: &crate::inodes::Inode) {
        if !inode.is_regular() {
            return;
        }
        if let (Some(cache), Some(rel)) = (&self.cache, self.rel_of(inode)) {
            cache.invalidate(&rel);
        }
    }

    /// The filesystem of a node: SOURCE's own, asked through the root's descriptor, for
    /// every node on SOURCE's device (no descriptor of the node is opened for it: a
    /// scanner's statfs must not reach the disk); the node's for one mounted inside.
    pub fn statfs(&self, nodeid: u64) -> io::Result<super::Statfs> {
        Ok(match self.inode(nodeid) {
            Ok(inode) if inode.dev != self.inodes.root().dev => match self.fd(&inode) {
                Ok(fd) => super::Statfs::of(&rustix::fs::fstatvfs(&*fd)?),
                Err(_) => self.statfs.refresh()?,
            },
            _ => self.statfs.refresh()?,
        })
    }

    pub fn access(&self, caller: &Caller, nodeid: u64, mask: i32) -> io::Result<()> {
        let (inode, fd) = self.node(nodeid)?;
        let _as = self.creds.enter(caller)?;
        if inode.is_symlink() {
            // access(2) follows symlinks; the kernel resolves them before asking us.
            return Ok(());
        }
        // With the thread's fs ids (AT_EACCESS, faccessat2), not its real ones.
        let mask = Access::from_bits_retain(mask as u32);
        let path = fdio::proc_path(fd.as_fd());
        Ok(rustix::fs::accessat(
            rustix::fs::CWD,
            &path,
            mask,
            AtFlags::EACCESS,
        )?)
    }
}
