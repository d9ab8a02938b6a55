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
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

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

/// One name in each namespace the kernel has handlers for (`xattr_resolve_name`), and
/// NFSv4's ACL: a filesystem with a handler for any of them answers something other
/// than EOPNOTSUPP (ENODATA, EPERM, a value).
const PROBES: [&str; 5] = [
    "user.cachefs.probe",
    "trusted.cachefs.probe",
    "security.selinux",
    "system.posix_acl_access",
    "system.nfs4_acl",
];

/// Whether SOURCE can have extended attributes at all. False when its root answers
/// EOPNOTSUPP in every namespace and no other filesystem is mounted below it: a FAT or
/// exFAT disk, NFSv3 without ACLs, and FUSE filesystems that have none (rclone, sshfs),
/// whose kernel already turns every getxattr into EOPNOTSUPP. The mount may then tell
/// the kernel once (ENOSYS) that it has none either, and the kernel's answer, EOPNOTSUPP
/// for every object, is SOURCE's own: `ls -l` costs no request per file.
///
/// The VFS checks `trusted.*` and `user.*` on special files (`xattr_permission`) before
/// any filesystem sees the call, on the mount as on SOURCE. A filesystem mounted below
/// SOURCE later, while the mount is up, would have its attributes hidden until the next
/// mount; the daemon logs it when it meets one (`InodeTable::note_new_devices`).
///
/// ACLs are the exception to "EOPNOTSUPP": the VFS reads them through the filesystem's
/// `get_acl`, and a FUSE filesystem whose server has no getxattr at all (the kernel's
/// `no_getxattr`, after one ENOSYS) answers "no ACL", ENODATA, for every object
/// (fs/fuse/acl.c, `__fuse_get_acl`), as this mount then does too. So on a FUSE SOURCE
/// an ACL probe's ENODATA is no sign of extended attributes. (A FUSE server that
/// answered EOPNOTSUPP in every other namespace but kept ACLs would be misread; no
/// known one does.)
pub(super) fn source_has_xattrs(root: BorrowedFd<'_>, source: &Path) -> bool {
    const FUSE_SUPER_MAGIC: u64 = 0x6573_5546;
    let path = proc_path(root);
    let fuse = rustix::fs::fstatfs(root).is_ok_and(|st| st.f_type as u64 == FUSE_SUPER_MAGIC);
    let supported = |name: &str, r: Result<usize, Errno>| match r {
        Err(Errno::OPNOTSUPP) => false,
        Err(Errno::NODATA) => !(fuse && is_acl(OsStr::new(name))),
        _ => true,
    };
    if PROBES
        .iter()
        .any(|name| supported(name, rustix::fs::getxattr_query(&path, *name)))
    {
        return true;
    }
    if !matches!(
        rustix::fs::listxattr_query(&path),
        Ok(0) | Err(Errno::OPNOTSUPP)
    ) {
        return true;
    }
    match crate::mountinfo::mounts() {
        Ok(all) => has_submounts(&all, source),
        // Cannot tell: pass everything through, as ever.
        Err(_) => true,
    }
}

/// Whether a filesystem is mounted anywhere below `source` (not at it).
fn has_submounts(all: &[crate::mountinfo::MountInfo], source: &Path) -> bool {
    let source = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
    all.iter()
        .any(|m| m.target != source && m.target.starts_with(&source))
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
    /// Whether extended attribute calls go to SOURCE: not with `xattr=nosys`, nor for a
    /// SOURCE that has none (`source_has_xattrs`); the kernel is then told so (ENOSYS).
    pub fn xattrs(&self) -> bool {
        self.xattrs
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo::parse_mountinfo;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
30 22 0:40 / /srv/hdd rw - vfat /dev/sdb1 rw
31 22 0:41 / /srv/hdd2 rw - vfat /dev/sdc1 rw
32 31 0:42 / /srv/hdd2/extra rw - tmpfs tmpfs rw
";

    #[test]
    fn a_filesystem_below_source_is_a_submount_and_source_itself_is_not() {
        let all = parse_mountinfo(MOUNTINFO);
        assert!(
            !has_submounts(&all, Path::new("/srv/hdd")),
            "SOURCE's own mount"
        );
        assert!(has_submounts(&all, Path::new("/srv/hdd2")));
        assert!(has_submounts(&all, Path::new("/srv")), "two below");
        assert!(
            !has_submounts(&all, Path::new("/srv/hdd2/extra")),
            "SOURCE is the submount itself"
        );
        assert!(
            !has_submounts(&all, Path::new("/srv/hd")),
            "a prefix of a name is not a parent"
        );
    }

    #[test]
    fn a_source_with_extended_attributes_is_passed_through() {
        // The test's own temporary directory: a filesystem with `user.*` at least, or
        // one with submounts below `/`; either way not one without any.
        let dir = tempfile::tempdir().expect("tempdir");
        let fd = rustix::fs::open(
            dir.path(),
            rustix::fs::OFlags::PATH,
            rustix::fs::Mode::empty(),
        )
        .expect("open");
        if rustix::fs::getxattr_query(dir.path(), "user.x") == Err(Errno::OPNOTSUPP) {
            return; // a TMPDIR without extended attributes: nothing to tell here
        }
        assert!(source_has_xattrs(fd.as_fd(), dir.path()));
    }
}
