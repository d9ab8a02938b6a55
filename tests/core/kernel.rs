//! A stand-in for the kernel's side of FUSE, as far as the core's answers decide what a
//! reader sees: path walks by lookup, a dentry cache (used or not, as the test says),
//! the retry of an open that failed with ESTALE after a fresh lookup (`do_filp_open`
//! with LOOKUP_REVAL), registration of backing files for passthrough opens, reads and
//! writes split in FUSE-sized requests, and truncates by path or by handle.
//!
//! Every open the core answers is checked against the io-mode rules of fs/fuse/iomode.c
//! (docs/architecture.md, "One backing file per inode"): an inode with passthrough opens
//! takes only passthrough opens to the same backing registration; an inode with cached
//! (not direct-I/O) opens takes no passthrough open; FOPEN_KEEP_CACHE never comes with
//! passthrough. The real kernel fails such an open with EIO; so does this one, and it
//! records why in `violations`.
//!
//! What it does not model: the page cache (no read is served from it), FORGET, and
//! concurrency (one request at a time).

#![allow(dead_code)]

use std::any::Any;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use cachefs::overlay::{BackingToken, Caller, Opened, Overlay, SetAttr};

/// The largest read or write the kernel sends in one request (fuser's default max_write,
/// and max_read with max_pages at its default).
const MAX_IO: usize = 128 << 10;

/// What fuser's `BackingId` is to the core: an opaque registration of a backing file.
pub struct FakeBackingId(pub Arc<File>);

#[derive(Default)]
struct NodeIo {
    passthrough: u32,
    /// The registration all passthrough opens share, by address (alive while they last:
    /// the core keeps it until their last release).
    backing: Option<usize>,
    cached: u32,
}

/// An open file as the kernel holds it.
pub struct Handle {
    pub fh: u64,
    pub nodeid: u64,
    pub rel: PathBuf,
    /// Passthrough: reads go to this file, never to the daemon.
    pub backing: Option<Arc<File>>,
    pub direct_io: bool,
    pub keep_cache: bool,
}

pub struct Kernel<'a> {
    pub ov: &'a Overlay,
    who: Caller,
    dentries: HashMap<PathBuf, u64>,
    nodes: HashMap<u64, NodeIo>,
    registrations: Vec<Weak<dyn Any + Send + Sync>>,
    /// Set to refuse the next backing file (as `open_backing` can): the open is then
    /// served by the daemon instead.
    pub refuse_next_backing: bool,
    /// Opens the real kernel would have failed, and why.
    pub violations: Vec<String>,
    /// Opens answered with passthrough, and opens tried again after ESTALE.
    pub passthrough_opens: u64,
    pub retried_opens: u64,
}

fn token_addr(t: &BackingToken) -> usize {
    Arc::as_ptr(t) as *const () as usize
}

impl<'a> Kernel<'a> {
    pub fn new(ov: &'a Overlay, who: Caller) -> Kernel<'a> {
        Kernel {
            ov,
            who,
            dentries: HashMap::new(),
            nodes: HashMap::new(),
            registrations: Vec::new(),
            refuse_next_backing: false,
            violations: Vec::new(),
            passthrough_opens: 0,
            retried_opens: 0,
        }
    }

    /// Walks `rel` from the root by lookups (as after a dentry expired) and caches the
    /// result.
    pub fn lookup(&mut self, rel: impl AsRef<Path>) -> io::Result<u64> {
        let rel = rel.as_ref();
        let mut node = cachefs::inodes::ROOT;
        for name in rel.iter() {
            // As `crate::fuse` does: from memory first, else from SOURCE.
            node = match self.ov.lookup_from_memory(node, name) {
                Some(r) => r?.nodeid,
                None => self.ov.lookup(&self.who, node, name)?.nodeid,
            };
        }
        self.dentries.insert(rel.to_path_buf(), node);
        Ok(node)
    }

    /// The node the dentry cache holds for `rel`, or a fresh lookup.
    pub fn node(&mut self, rel: impl AsRef<Path>) -> io::Result<u64> {
        match self.dentries.get(rel.as_ref()) {
            Some(&n) => Ok(n),
            None => self.lookup(rel),
        }
    }

    /// Opens `rel`, from the dentry cache if `cached_dentry`, else after a fresh lookup;
    /// an ESTALE answer makes one more try after a fresh lookup.
    pub fn open_with(
        &mut self,
        rel: impl AsRef<Path>,
        flags: i32,
        cached_dentry: bool,
    ) -> io::Result<Handle> {
        let rel = rel.as_ref();
        let mut nodeid = if cached_dentry {
            self.node(rel)?
        } else {
            self.lookup(rel)?
        };
        let refuse = std::mem::take(&mut self.refuse_next_backing);
        let made = std::cell::RefCell::new(Vec::new());
        // As fuser's `open_backing`: a registration of the file, or the kernel's refusal.
        let register = |f: std::os::fd::BorrowedFd<'_>| -> io::Result<BackingToken> {
            if refuse {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            // The kernel keeps its own reference to the file: here, a duplicate.
            let file = File::from(f.try_clone_to_owned()?);
            let t: BackingToken = Arc::new(FakeBackingId(Arc::new(file)));
            made.borrow_mut().push(Arc::downgrade(&t));
            Ok(t)
        };
        // As `crate::fuse` does: without SOURCE where the core can, else with it.
        let (ov, who) = (self.ov, self.who);
        let open = |nodeid| match ov.open_from_memory(&who, nodeid, flags, &register) {
            Some(r) => r,
            None => ov.open(&who, nodeid, flags, &register),
        };
        let opened = match open(nodeid) {
            Err(e) if e.raw_os_error() == Some(libc::ESTALE) => {
                self.retried_opens += 1;
                nodeid = self.lookup(rel)?;
                open(nodeid)?
            }
            r => r?,
        };
        self.registrations.extend(made.into_inner());
        self.admit(rel, nodeid, opened)
    }

    pub fn open(&mut self, rel: impl AsRef<Path>, flags: i32) -> io::Result<Handle> {
        self.open_with(rel, flags, false)
    }

    /// Takes the core's answer to an open as the kernel would, registering its backing
    /// file; EIO where the kernel would refuse it.
    fn admit(&mut self, rel: &Path, nodeid: u64, opened: Opened) -> io::Result<Handle> {
        let mut handle = Handle {
            fh: opened.fh,
            nodeid,
            rel: rel.to_path_buf(),
            backing: None,
            direct_io: opened.direct_io,
            keep_cache: opened.keep_cache,
        };
        let io = self.nodes.entry(nodeid).or_default();
        let mut broken = None;
        match opened.passthrough {
            Some(token) => {
                if opened.keep_cache {
                    broken = Some("FOPEN_KEEP_CACHE with passthrough");
                } else if io.cached > 0 {
                    broken = Some("a passthrough open beside cached opens");
                } else if io.passthrough > 0 && io.backing != Some(token_addr(&token)) {
                    broken = Some("a second backing file for one inode");
                }
                let Some(file) = token.downcast_ref::<FakeBackingId>() else {
                    panic!("the core handed back a registration this kernel did not make");
                };
                handle.backing = Some(file.0.clone());
                io.backing = Some(token_addr(&token));
                io.passthrough += 1;
                self.passthrough_opens += 1;
            }
            None => {
                if io.passthrough > 0 {
                    broken = Some("an open without passthrough beside passthrough opens");
                }
                if !opened.direct_io {
                    io.cached += 1;
                }
            }
        }
        if let Some(why) = broken {
            self.violations
                .push(format!("{}: node {nodeid:#x}: {why}", rel.display()));
            self.release(handle);
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(handle)
    }

    /// Reads up to `len` bytes at `off`, in requests of at most `MAX_IO`, until the end
    /// of the file.
    pub fn read(&self, h: &Handle, off: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while out.len() < len {
            let at = off + out.len() as u64;
            let want = (len - out.len()).min(MAX_IO);
            let got = match &h.backing {
                Some(f) => {
                    let mut buf = vec![0u8; want];
                    let n = f.read_at(&mut buf, at)?;
                    buf.truncate(n);
                    buf
                }
                None => self.ov.read(h.fh, at, want as u32)?,
            };
            if got.is_empty() {
                break;
            }
            out.extend_from_slice(&got);
        }
        Ok(out)
    }

    pub fn read_all(&self, h: &Handle) -> io::Result<Vec<u8>> {
        self.read(h, 0, usize::MAX)
    }

    pub fn write(&self, h: &Handle, off: u64, data: &[u8]) -> io::Result<()> {
        for (i, chunk) in data.chunks(MAX_IO).enumerate() {
            let at = off + (i * MAX_IO) as u64;
            let n = self.ov.write(&self.who, h.fh, at, chunk, false, false)?;
            if n as usize != chunk.len() {
                return Err(io::Error::other(format!("short write: {n}")));
            }
        }
        Ok(())
    }

    /// truncate(2) of a path: a SETATTR of the node its dentry names.
    pub fn truncate(&mut self, rel: impl AsRef<Path>, len: u64) -> io::Result<()> {
        let nodeid = self.node(rel)?;
        let set = SetAttr {
            size: Some(len),
            ..SetAttr::default()
        };
        self.ov.setattr(&self.who, nodeid, &set).map(drop)
    }

    /// ftruncate(2) of an open file.
    pub fn ftruncate(&self, h: &Handle, len: u64) -> io::Result<()> {
        let set = SetAttr {
            size: Some(len),
            fh: Some(h.fh),
            ..SetAttr::default()
        };
        self.ov.setattr(&self.who, h.nodeid, &set).map(drop)
    }

    pub fn release(&mut self, h: Handle) {
        self.ov.release(h.fh);
        let io = self.nodes.entry(h.nodeid).or_default();
        if h.backing.is_some() {
            io.passthrough -= 1;
            if io.passthrough == 0 {
                io.backing = None;
            }
        } else if !h.direct_io {
            io.cached -= 1;
        }
    }

    /// Backing registrations made so far, and those still open (the core closes one with
    /// the last passthrough release of its inode).
    pub fn registrations(&self) -> (usize, usize) {
        let live = self
            .registrations
            .iter()
            .filter(|w| w.strong_count() > 0)
            .count();
        (self.registrations.len(), live)
    }

    /// The (st_dev, st_ino) of a file, to tell which file a backing descriptor is.
    pub fn identity(f: &File) -> (u64, u64) {
        let m = f.metadata().expect("fstat");
        (m.dev(), m.ino())
    }
}
