//! The inode table: FUSE node ids to source objects, with the kernel's lookup counts.
//!
//! Each inode the kernel knows holds an `O_PATH | O_NOFOLLOW` descriptor of its source
//! object, so every later operation reaches the object itself, whatever renames happen
//! around it and however long its path is (invariant 7), and the source's inode number
//! cannot be reused while the kernel can still name it.
//!
//! Node ids are derived from the source's (st_dev, st_ino), so a hard link is the same
//! node and a node keeps its number for the life of the mount (and across restarts) even
//! after the kernel forgets it. The source root is node 1, as FUSE requires; a source
//! object whose inode number is 1 takes the root's number in exchange. Objects on other
//! devices below SOURCE (submounts) get their device's index in the top byte.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::sys;

pub const ROOT: u64 = 1;

/// One source object the kernel holds a reference to.
#[derive(Debug)]
pub struct Inode {
    pub nodeid: u64,
    /// `O_PATH | O_NOFOLLOW` descriptor of the source object.
    pub fd: OwnedFd,
    pub dev: u64,
    pub ino: u64,
    /// `st_mode & S_IFMT` at lookup; an object's type never changes.
    pub kind: u32,
    nlookup: AtomicU64,
}

impl Inode {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    pub fn is_symlink(&self) -> bool {
        self.kind == libc::S_IFLNK
    }
}

#[derive(Default)]
struct Numbering {
    /// Devices seen below SOURCE other than the root's, in order of first sight.
    other_devs: Vec<u64>,
}

pub struct InodeTable {
    by_id: RwLock<HashMap<u64, Arc<Inode>>>,
    numbering: Mutex<Numbering>,
    root_dev: u64,
    root_ino: u64,
}

impl InodeTable {
    /// A table holding SOURCE's root as node 1. `root` must be an `O_PATH` descriptor.
    pub fn new(root: OwnedFd) -> io::Result<InodeTable> {
        let st = sys::fstat(root.as_fd())?;
        let inode = Arc::new(Inode {
            nodeid: ROOT,
            fd: root,
            dev: st.st_dev,
            ino: st.st_ino,
            kind: st.st_mode & libc::S_IFMT,
            // The root is never forgotten.
            nlookup: AtomicU64::new(1 << 62),
        });
        let mut map = HashMap::new();
        map.insert(ROOT, inode);
        Ok(InodeTable {
            by_id: RwLock::new(map),
            numbering: Mutex::new(Numbering::default()),
            root_dev: st.st_dev,
            root_ino: st.st_ino,
        })
    }

    /// The node id of a source object.
    pub fn nodeid_of(&self, dev: u64, ino: u64) -> u64 {
        let base = if dev == self.root_dev {
            ino
        } else {
            let mut n = self.numbering.lock();
            let idx = match n.other_devs.iter().position(|&d| d == dev) {
                Some(i) => i,
                None => {
                    n.other_devs.push(dev);
                    n.other_devs.len() - 1
                }
            };
            ino ^ (((idx as u64 + 1) & 0xff) << 56)
        };
        if dev == self.root_dev && ino == self.root_ino {
            ROOT
        } else if base == ROOT {
            self.root_ino
        } else {
            base
        }
    }

    pub fn get(&self, nodeid: u64) -> io::Result<Arc<Inode>> {
        self.by_id
            .read()
            .get(&nodeid)
            .cloned()
            // The kernel named a node it had forgotten: a protocol error on its side.
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))
    }

    pub fn root(&self) -> Arc<Inode> {
        // Node 1 is inserted at construction and never removed.
        self.by_id.read()[&ROOT].clone()
    }

    /// Looks `name` up under `parent` and takes one kernel reference on the result.
    pub fn lookup(&self, parent: &Inode, name: &OsStr) -> io::Result<(Arc<Inode>, sys::Stat)> {
        let fd = sys::openat(parent.fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let st = sys::fstat(fd.as_fd())?;
        Ok((self.insert(fd, &st), st))
    }

    /// Registers an object by its open `O_PATH` descriptor and takes one kernel reference.
    /// If the object is known already (a hard link, a second lookup), the known inode
    /// is used and `fd` closed.
    pub fn insert(&self, fd: OwnedFd, st: &sys::Stat) -> Arc<Inode> {
        let nodeid = self.nodeid_of(st.st_dev, st.st_ino);
        if let Some(inode) = self.by_id.read().get(&nodeid) {
            inode.nlookup.fetch_add(1, Ordering::Relaxed);
            return inode.clone();
        }
        let mut map = self.by_id.write();
        let inode = map.entry(nodeid).or_insert_with(|| {
            Arc::new(Inode {
                nodeid,
                fd,
                dev: st.st_dev,
                ino: st.st_ino,
                kind: st.st_mode & libc::S_IFMT,
                nlookup: AtomicU64::new(0),
            })
        });
        inode.nlookup.fetch_add(1, Ordering::Relaxed);
        inode.clone()
    }

    /// Drops `n` kernel references; the inode (and its descriptor) goes at zero.
    pub fn forget(&self, nodeid: u64, n: u64) {
        if nodeid == ROOT {
            return;
        }
        let mut map = self.by_id.write();
        if let Some(inode) = map.get(&nodeid) {
            let prev = inode.nlookup.fetch_sub(
                n.min(inode.nlookup.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            if prev <= n {
                map.remove(&nodeid);
            }
        }
    }
}
