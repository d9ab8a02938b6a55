//! Extended attributes: getxattr, listxattr, setxattr, removexattr, on the object the
//! inode's descriptor refers to (through `/proc/self/fd/N`, as `f*xattr` refuse `O_PATH`
//! descriptors), each as the caller.
//!
//! POSIX ACLs are the extended attributes `system.posix_acl_access` and
//! `system.posix_acl_default`, passed through like the others. With FUSE_POSIX_ACL (see
//! `fuse.rs`, `init`) only the kernel asks for them: it keeps them per inode, checks
//! permissions with them, and sets them with SETXATTR as the caller, so SOURCE's
//! filesystem updates the mode an access ACL implies (and clears setgid) as it would
//! for the caller natively. Every change through the mount drops the object's attributes
//! and extended attributes from the metadata cache, and an answer read from SOURCE that
//! such a change overtook is not kept (`MetaCache::epoch`).

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;

use std::os::unix::ffi::OsStrExt;

use rustix::fs::XattrFlags;
use rustix::io::Errno;

use super::{Caller, Overlay, check_writable};
use crate::fdio::proc_path;

/// The answer to a get/list call: the size asked for with a zero-sized buffer, or the
/// bytes themselves.
pub enum XattrReply {
    Size(u32),
    Data(Vec<u8>),
}

/// Whether the metadata cache may keep the answer for `name`: not for `trusted.*`, which
/// SOURCE shows only to some callers.
fn remembered(name: &OsStr) -> bool {
    !name.as_bytes().starts_with(b"trusted.")
}

/// The names the kernel reads itself with FUSE_POSIX_ACL (fs/fuse/acl.c, `fuse_get_acl`).
fn is_acl(name: &OsStr) -> bool {
    matches!(
        name.as_bytes(),
        b"system.posix_acl_access" | b"system.posix_acl_default"
    )
}

fn reply(buf: Vec<u8>, n: usize, size: u32) -> io::Result<XattrReply> {
    if size == 0 {
        Ok(XattrReply::Size(n as u32))
    } else if n > size as usize {
        Err(io::Error::from_raw_os_error(libc::ERANGE))
    } else {
        let mut buf = buf;
        buf.truncate(n);
        Ok(XattrReply::Data(buf))
    }
}

impl Overlay {
    pub fn getxattr(
        &self,
        caller: &Caller,
        nodeid: u64,
        name: &OsStr,
        size: u32,
    ) -> io::Result<XattrReply> {
        let (inode, fd) = self.node(nodeid)?;
        let _as = self.creds.enter(caller)?;
        let since = self.meta.as_ref().map(|m| m.epoch());
        let mut buf = vec![0u8; size as usize];
        let path = proc_path(fd.as_fd());
        // rustix answers a zero-sized buffer with 0: the size is asked for on its own.
        let mut n = match size {
            0 => rustix::fs::getxattr_query(path, name),
            _ => rustix::fs::getxattr(path, name, &mut buf[..]),
        };
        if n == Err(Errno::OPNOTSUPP) && self.posix_acl_enabled() && is_acl(name) {
            // A SOURCE without ACLs. Only the kernel asks for these names with
            // FUSE_POSIX_ACL, and it takes ENODATA as "no ACL" but fails the permission
            // check it was reading the ACL for with EOPNOTSUPP (`fuse_get_acl`).
            n = Err(Errno::NODATA);
        }
        if let (Some(meta), Some(since)) = (self.meta.as_ref().filter(|_| remembered(name)), since)
        {
            let key = (inode.dev, inode.ino);
            match n {
                Ok(n) if size > 0 => meta.put_xattr(since, key, name.as_bytes(), Ok(&buf[..n])),
                Err(e) if matches!(e, Errno::NODATA | Errno::OPNOTSUPP) => {
                    meta.put_xattr(since, key, name.as_bytes(), Err(e.raw_os_error()));
                }
                _ => {}
            }
        }
        reply(buf, n?, size)
    }

    /// An extended attribute's value from the metadata cache, with `meta_ttl` (answered
    /// as SOURCE answered it last; `trusted.*`, which only some callers may read, never).
    pub fn getxattr_from_memory(
        &self,
        nodeid: u64,
        name: &OsStr,
        size: u32,
    ) -> Option<io::Result<XattrReply>> {
        let meta = self.meta.as_ref().filter(|_| remembered(name))?;
        let inode = self.inode(nodeid).ok()?;
        Some(match meta.xattr((inode.dev, inode.ino), name.as_bytes())? {
            Ok(value) => {
                let n = value.len();
                reply(value, n, size)
            }
            Err(errno) => Err(io::Error::from_raw_os_error(errno)),
        })
    }

    /// The list of extended attribute names from the metadata cache, with `meta_ttl`.
    pub fn listxattr_from_memory(&self, nodeid: u64, size: u32) -> Option<io::Result<XattrReply>> {
        let meta = self.meta.as_ref()?;
        let inode = self.inode(nodeid).ok()?;
        let list = meta.xattr_list((inode.dev, inode.ino))?;
        let n = list.len();
        Some(reply(list, n, size))
    }

    pub fn listxattr(&self, caller: &Caller, nodeid: u64, size: u32) -> io::Result<XattrReply> {
        let (inode, fd) = self.node(nodeid)?;
        let _as = self.creds.enter(caller)?;
        let since = self.meta.as_ref().map(|m| m.epoch());
        let mut buf = vec![0u8; size as usize];
        let path = proc_path(fd.as_fd());
        let n = match size {
            0 => rustix::fs::listxattr_query(path)?,
            _ => rustix::fs::listxattr(path, &mut buf[..])?,
        };
        if let (Some(meta), Some(since)) = (&self.meta, since)
            && size > 0
        {
            meta.put_xattr_list(since, (inode.dev, inode.ino), &buf[..n]);
        }
        reply(buf, n, size)
    }

    pub fn setxattr(
        &self,
        caller: &Caller,
        nodeid: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> io::Result<()> {
        check_writable(&self.cfg)?;
        let (inode, fd) = self.node(nodeid)?;
        {
            let _as = self.creds.enter(caller)?;
            let flags = XattrFlags::from_bits_retain(flags as u32);
            rustix::fs::setxattr(proc_path(fd.as_fd()), name, value, flags)?;
        }
        self.xattrs_changed(&inode, fd.as_fd());
        Ok(())
    }

    pub fn removexattr(&self, caller: &Caller, nodeid: u64, name: &OsStr) -> io::Result<()> {
        check_writable(&self.cfg)?;
        let (inode, fd) = self.node(nodeid)?;
        {
            let _as = self.creds.enter(caller)?;
            rustix::fs::removexattr(proc_path(fd.as_fd()), name)?;
        }
        self.xattrs_changed(&inode, fd.as_fd());
        Ok(())
    }

    /// An extended attribute changed through the mount: the file's ctime moved, its
    /// bytes did not, so its copy stays usable (as after a chmod) instead of costing the
    /// next open a miss and a re-read of the whole file from SOURCE.
    fn xattrs_changed(&self, inode: &crate::inodes::Inode, fd: std::os::fd::BorrowedFd<'_>) {
        self.meta_changed((inode.dev, inode.ino));
        if let (Some(cache), Some(rel), Ok(st)) =
            (&self.cache, self.rel_of(inode), rustix::fs::fstat(fd))
        {
            cache.metadata_changed(&rel, &st);
        }
    }
}
