//! Extended attributes: getxattr, listxattr, setxattr, removexattr, on the object the
//! inode's descriptor refers to (through `/proc/self/fd/N`, as `f*xattr` refuse `O_PATH`
//! descriptors).

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;

use rustix::fs::XattrFlags;

use super::{Caller, Overlay, check_writable};
use crate::fdio::proc_path;

/// The answer to a get/list call: the size asked for with a zero-sized buffer, or the
/// bytes themselves.
pub enum XattrReply {
    Size(u32),
    Data(Vec<u8>),
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
        let (_, fd) = self.node(nodeid)?;
        let _as = self.creds.enter(caller)?;
        let mut buf = vec![0u8; size as usize];
        let path = proc_path(fd.as_fd());
        // rustix answers a zero-sized buffer with 0: the size is asked for on its own.
        let n = match size {
            0 => rustix::fs::getxattr_query(path, name)?,
            _ => rustix::fs::getxattr(path, name, &mut buf[..])?,
        };
        reply(buf, n, size)
    }

    pub fn listxattr(&self, caller: &Caller, nodeid: u64, size: u32) -> io::Result<XattrReply> {
        let (_, fd) = self.node(nodeid)?;
        let _as = self.creds.enter(caller)?;
        let mut buf = vec![0u8; size as usize];
        let path = proc_path(fd.as_fd());
        let n = match size {
            0 => rustix::fs::listxattr_query(path)?,
            _ => rustix::fs::listxattr(path, &mut buf[..])?,
        };
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
