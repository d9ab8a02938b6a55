//! The core: SOURCE shown as it is, every operation passed through to it.
//!
//! Methods take FUSE-level arguments (node ids, names, handles) and return
//! `io::Result`, whose errno is what the caller sees. Nothing here knows about fuser;
//! `crate::fuse` adapts. One file per family of operations:
//! `entry` (lookup, attributes, names), `dir` (directory handles), `file` (open files),
//! `xattr`, `creds` (running as the caller) and `readers` (whose reads the policy
//! ignores).

mod ahead;
mod counters;
mod creds;
mod dir;
mod entry;
mod file;
mod locks;
mod memory;
mod objects;
mod readers;
mod xattr;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use rustix::fs::{FileType, Mode, OFlags};

pub use counters::Counters;
pub use creds::{Caller, NewMode};
pub use dir::DirEntryOut;
pub use entry::{SetAttr, Timestamp};
pub use file::{Opened, Register};
pub use locks::{LockInfo, LockRequest};
pub use memory::{Statfs, needs_source};
pub use objects::BackingToken;
pub use xattr::XattrReply;

use crate::cache::Cache;
use crate::config::{Config, Passthrough};
use crate::inodes::{Inode, InodeTable};
use crate::meta::{MetaCache, MetaStats};
use crate::source::{FdStats, Fds};
use crate::{fdio, sys};

/// Tells the kernel that a node's file changed through another of its nodes: it drops
/// the node's cached attributes and pages and, with a `Tail`, grows its size to the
/// file's if smaller (a fuser notifier, wrapped so that the core knows nothing of fuser).
/// With the flag set, all of it lands before the call returns: a mapping asks the daemon
/// nothing while its pages are cached, and a fault past the kernel's size raises SIGBUS
/// without asking for attributes. Never called for the node a request in flight is about.
pub type Invalidator = Box<dyn Fn(u64, Option<Tail>, bool) + Send + Sync>;

/// The end of a file as SOURCE has it: its size and its last byte. The kernel grows an
/// inode's size only by storing bytes that end there (FUSE_NOTIFY_STORE of nothing
/// leaves the size alone: `fuse_write_update_attr` moves it only for a count above
/// zero), so the growth is told with the true last byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// Above zero.
    pub size: u64,
    pub last: u8,
}

/// A looked-up object: its node id and the source's attributes (in the layout
/// `crate::fuse` reads).
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub nodeid: u64,
    pub stat: sys::Stat,
}

impl Entry {
    fn new(nodeid: u64, st: &rustix::fs::Stat) -> Entry {
        Entry {
            nodeid,
            stat: sys::libc_stat(st),
        }
    }
}

pub struct Overlay {
    pub cfg: Arc<Config>,
    inodes: InodeTable,
    creds: creds::Creds,
    /// Who reads: the callers whose reads never count toward promotion.
    readers: readers::Readers,
    files: Handles<file::FileHandle>,
    dirs: Handles<dir::DirHandle>,
    /// Locks taken through the mount, held on SOURCE; see `locks.rs`.
    locks: locks::Locks,
    /// Directories read without an open handle (the kernel's no-opendir mode), by node,
    /// from the read at offset 0 until a read reaches the end.
    node_dirs: Mutex<HashMap<u64, Arc<dir::DirHandle>>>,
    /// `None` when the cache directory could not be used: SOURCE is served alone.
    pub cache: Option<Arc<Cache>>,
    /// Set once the kernel has agreed to FUSE passthrough.
    passthrough: AtomicBool,
    /// Set once the kernel has agreed to FUSE_POSIX_ACL: it then reads ACLs for its own
    /// permission checks (`xattr.rs`).
    posix_acl: AtomicBool,
    /// Extended attribute calls go to SOURCE (`xattrs`).
    xattrs: bool,
    /// Reads ahead the directory a scan will list next (`ahead.rs`).
    ahead: ahead::Ahead,
    /// How each open source object is served: one owner, one lock (`objects.rs`).
    objects: Arc<objects::Objects>,
    /// Tells the kernel a node's attributes (and data) changed behind it (set once
    /// mounted).
    invalidator: std::sync::OnceLock<Invalidator>,
    /// SOURCE's attributes and listings, answered without SOURCE (`meta_ttl`; `None`
    /// when off).
    meta: Option<MetaCache>,
    /// Bytes served and SOURCE lookups, for the status and the metrics.
    pub counters: Counters,
    /// Where requests that need SOURCE run, and how SOURCE is answering (`crate::lane`).
    pub lane: Arc<crate::lane::Lane>,
    /// SOURCE's statfs as last seen.
    statfs: Arc<memory::StatfsCache>,
    /// Where the open handles are published for a successor after a crash, and the
    /// kernel's number of a passthrough registration (set once the session serves).
    journal: std::sync::OnceLock<(Arc<crate::journal::Journal>, TokenId)>,
    /// Handles are published one snapshot at a time, the newest last.
    publishing: Mutex<()>,
}

/// The kernel's number of a passthrough registration (`fuse::backing_number`).
pub type TokenId = fn(&BackingToken) -> Option<u32>;

/// Objects the metadata cache remembers at most: about 170 MB at a library's typical
/// name lengths.
const META_MAX_NODES: usize = 1 << 20;

/// The first bytes of the open handles handed to a successor daemon.
const HANDLES_MAGIC: &[u8] = b"CACHEFS-HANDLES-1\n";

/// Open handles by number. Numbers are never reused within a mount.
struct Handles<T> {
    map: Mutex<HashMap<u64, Arc<T>>>,
    next: AtomicU64,
}

impl<T> Handles<T> {
    fn new() -> Self {
        Handles {
            map: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    fn insert(&self, value: T) -> u64 {
        let fh = self.reserve();
        self.put(fh, Arc::new(value));
        fh
    }

    /// A number for a handle made before it is put in.
    fn reserve(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn put(&self, fh: u64, value: Arc<T>) {
        self.map.lock().insert(fh, value);
    }

    fn get(&self, fh: u64) -> io::Result<Arc<T>> {
        self.map
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    fn remove(&self, fh: u64) -> Option<Arc<T>> {
        self.map.lock().remove(&fh)
    }

    /// Every open handle with its number, as of now.
    fn snapshot(&self) -> Vec<(u64, Arc<T>)> {
        self.map
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }
}

impl Overlay {
    /// Opens SOURCE's root. The daemon's umask is cleared: a create takes the caller's
    /// umask on its own thread for the call (`creds::Umask`), and the daemon's own files
    /// get exactly the modes it asks for.
    pub fn new(cfg: Arc<Config>) -> io::Result<Overlay> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root: OwnedFd = rustix::fs::open(&cfg.source, flags, Mode::empty())?;
        rustix::process::umask(Mode::empty());
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        let fds = Fds::new(limit.unwrap_or(u64::MAX));
        let xattrs = cfg.xattr && xattr::source_has_xattrs(root.as_fd(), &cfg.source);
        if cfg.xattr && !xattrs {
            tracing::info!(
                "SOURCE has no extended attributes: the kernel is told the mount has none"
            );
        }
        let cache = match Cache::open(&cfg, root.try_clone()?) {
            Ok(c) => Some(c),
            // Another instance owns this cache: refuse, never share (invariant 5).
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(e),
            Err(e) => {
                tracing::error!(
                    "cache directory {} unusable, serving the source only: {e}",
                    cfg.cache.display()
                );
                None
            }
        };
        let statfs = Arc::new(memory::StatfsCache::new(root.try_clone()?));
        let inodes = InodeTable::new(root, fds, cfg.inode_handles)?;
        if cfg.xattr && !xattrs {
            inodes.note_new_devices(
                "its extended attributes stay hidden until the next mount (SOURCE had none)",
            );
        }
        let meta = (!cfg.meta_ttl.is_zero()).then(|| {
            let meta = MetaCache::new(cfg.meta_ttl, META_MAX_NODES);
            let root = inodes.root();
            let n = meta.load(&cfg.cache.join(crate::meta::SNAPSHOT), (root.dev, root.ino));
            if n > 0 {
                tracing::info!("metadata snapshot: {n} objects");
            }
            meta
        });
        let readers = readers::Readers::new(&cfg.promote_ignore);
        let objects = Arc::new(objects::Objects::default());
        if let Some(cache) = &cache {
            cache.set_gate(objects.clone());
        }
        Ok(Overlay {
            cfg,
            inodes,
            creds: creds::Creds::new(),
            readers,
            files: Handles::new(),
            dirs: Handles::new(),
            locks: locks::Locks::default(),
            node_dirs: Mutex::new(HashMap::new()),
            cache,
            passthrough: AtomicBool::new(false),
            posix_acl: AtomicBool::new(false),
            xattrs,
            ahead: ahead::Ahead::start(),
            objects,
            invalidator: std::sync::OnceLock::new(),
            meta,
            counters: Counters::default(),
            lane: Arc::new(crate::lane::Lane::default()),
            statfs,
            journal: std::sync::OnceLock::new(),
            publishing: Mutex::new(()),
        })
    }

    /// Writes the metadata cache's snapshot into the cache directory (a clean stop).
    pub fn save_meta(&self) {
        let Some(meta) = &self.meta else {
            return;
        };
        let root = self.inodes.root();
        let path = self.cfg.cache.join(crate::meta::SNAPSHOT);
        match meta.save(&path, (root.dev, root.ino)) {
            Ok(bytes) => tracing::info!(
                "metadata snapshot saved: {} objects, {bytes} bytes",
                meta.stats().nodes
            ),
            Err(e) => tracing::warn!("cannot save the metadata snapshot {}: {e}", path.display()),
        }
    }

    /// The metadata cache's counters, when it is on.
    pub fn meta_stats(&self) -> Option<MetaStats> {
        self.meta.as_ref().map(MetaCache::stats)
    }

    /// An object changed through the mount: its cached attributes (and listing) go.
    fn meta_changed(&self, obj: (u64, u64)) {
        if let Some(meta) = &self.meta {
            meta.changed(obj);
        }
    }

    /// A name in `parent` was made, removed or replaced through the mount.
    fn meta_name_changed(&self, parent: &Inode, name: &OsStr) {
        if let Some(meta) = &self.meta {
            meta.name_changed((parent.dev, parent.ino), name);
        }
    }

    /// Installs the kernel notifier once the session exists.
    pub fn set_invalidator(&self, f: Invalidator) {
        let _ = self.invalidator.set(f);
    }

    /// Whether to ask the kernel for passthrough at init.
    pub fn wants_passthrough(&self) -> bool {
        self.cfg.passthrough != Passthrough::Off && self.cache.is_some()
    }

    /// Records what the kernel agreed to at init.
    pub fn set_passthrough(&self, on: bool) {
        self.passthrough.store(on, Ordering::Relaxed);
    }

    pub fn passthrough_enabled(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// Records whether the kernel agreed to FUSE_POSIX_ACL at init.
    pub fn set_posix_acl(&self, on: bool) {
        self.posix_acl.store(on, Ordering::Relaxed);
    }

    pub fn posix_acl_enabled(&self) -> bool {
        self.posix_acl.load(Ordering::Relaxed)
    }

    /// Open file and directory handles.
    pub fn open_handles(&self) -> (usize, usize) {
        (self.files.map.lock().len(), self.dirs.map.lock().len())
    }

    /// What a live restart cannot carry yet, if any: a lock held through the mount, or
    /// one of the owner's rarer states (`Objects::handoff_blocker`).
    pub fn handoff_blocker(&self) -> Option<String> {
        if !self.locks.is_empty() {
            return Some("a lock is held through the mount".into());
        }
        self.objects.handoff_blocker()
    }

    /// The open handles for a successor daemon (a live restart), and the descriptors it
    /// names, which must stay open across execve(2). `token_id`: the kernel's number of
    /// a passthrough registration. Refused (why) for what is not carried yet: locks held
    /// through the mount, and the owner's rarer states (`Objects::handoff_blocker`).
    /// Call it with the FUSE workers paused and the SOURCE lane drained.
    pub fn export_handles(
        &self,
        token_id: &dyn Fn(&BackingToken) -> Option<u32>,
    ) -> Result<(Vec<u8>, Vec<i32>), String> {
        if let Some(why) = self.handoff_blocker() {
            return Err(why);
        }
        self.handles_blob(token_id)
    }

    /// Every open handle in the format `import_handles` reads, with the descriptors it
    /// names.
    fn handles_blob(
        &self,
        token_id: &dyn Fn(&BackingToken) -> Option<u32>,
    ) -> Result<(Vec<u8>, Vec<i32>), String> {
        let mut w = crate::codec::Writer::new(HANDLES_MAGIC);
        let mut keep = Vec::new();
        let files = self.files.snapshot();
        w.u64(self.files.next.load(Ordering::Relaxed));
        w.u64(files.len() as u64);
        for (fh, h) in &files {
            let backing = if h.mode.lock().is_passthrough() {
                let (source, token) = self
                    .objects
                    .node_backing(h)
                    .ok_or("a passthrough open has no registration")?;
                Some((
                    source,
                    token_id(&token).ok_or("a registration of another kind")?,
                ))
            } else {
                None
            };
            h.export(*fh, backing, &mut w, &mut keep);
        }
        let dirs = self.dirs.snapshot();
        w.u64(self.dirs.next.load(Ordering::Relaxed));
        w.u64(dirs.len() as u64);
        for (fh, d) in &dirs {
            d.export(*fh, &mut w, &mut keep);
        }
        let mirrors = self.objects.mirrors();
        w.u64(mirrors.len() as u64);
        for ((dev, ino), nodeid, f) in &mirrors {
            use std::os::fd::AsRawFd;
            w.u64(*dev);
            w.u64(*ino);
            w.u64(*nodeid);
            w.u32(f.as_raw_fd() as u32);
            keep.push(f.as_raw_fd());
        }
        Ok((w.finish(), keep))
    }

    /// Publishes the open handles and the nodes' births, moves and deaths to `journal`
    /// from now on, for a successor after a crash.
    pub fn set_journal(&self, journal: Arc<crate::journal::Journal>, token_id: TokenId) {
        if self.journal.set((journal.clone(), token_id)).is_ok() {
            self.inodes.set_journal(journal);
            self.publish_handles();
        }
    }

    /// Publishes every open handle (after an open or a release, before the kernel hears
    /// of it): a successor after a crash serves exactly the handles the kernel knows.
    pub(crate) fn publish_handles(&self) {
        let Some((journal, token_id)) = self.journal.get() else {
            return;
        };
        let _one = self.publishing.lock();
        match self.handles_blob(token_id) {
            Ok((blob, _)) => journal.append(&crate::journal::Record::Handles(&blob), true),
            Err(why) => tracing::debug!("open handles not published: {why}"),
        }
    }

    /// Takes a dead predecessor's open handles, as last published: like `import_handles`,
    /// but none of its descriptors exists any more: each handle opens its SOURCE file
    /// again when it first needs it (`source_of`), a daemon-served reader of a copy reads
    /// SOURCE, and the copies' mirrors are not taken back.
    pub fn import_failover_handles(
        &self,
        data: &[u8],
        wrap: &dyn Fn(u32) -> BackingToken,
    ) -> Result<(usize, usize), String> {
        self.take_handles(data, wrap, false)
    }

    /// Takes a predecessor's open handles (`export_handles`) into this new overlay, each
    /// served as before: its descriptors, its mode, its node's passthrough registration
    /// (wrapped once per number by `wrap`, and shared), its writer's hold on the metadata.
    /// Call it after `import_nodes`, before the session serves.
    pub fn import_handles(
        &self,
        data: &[u8],
        wrap: &dyn Fn(u32) -> BackingToken,
    ) -> Result<(usize, usize), String> {
        self.take_handles(data, wrap, true)
    }

    fn take_handles(
        &self,
        data: &[u8],
        wrap: &dyn Fn(u32) -> BackingToken,
        inherited: bool,
    ) -> Result<(usize, usize), String> {
        let bad = || "the open handles handed over are of another version, or damaged".to_string();
        let mut r = crate::codec::Reader::open(data, HANDLES_MAGIC).ok_or_else(bad)?;
        let mut fds = file::Inherited::new();
        let mut tokens: HashMap<u32, BackingToken> = HashMap::new();
        let next = r.u64().ok_or_else(bad)?;
        let n = r.u64().ok_or_else(bad)?;
        for _ in 0..n {
            let (fh, h, mode, backing) = file::FileHandle::import(&mut r, &mut fds, inherited)?;
            let h = Arc::new(h);
            let backing = backing
                .map(|(source, id)| (source, tokens.entry(id).or_insert_with(|| wrap(id)).clone()));
            self.objects.restore(&h, mode, backing);
            if h.writable {
                self.write_opened(&h);
            }
            if self.has_source(&h) {
                let fd = self.source_of(&h).map_err(|e| e.to_string())?;
                self.inodes.fds.pin(h.nodeid, fh, fd);
            }
            self.files.put(fh, h);
        }
        self.files.next.store(next, Ordering::Relaxed);
        let next = r.u64().ok_or_else(bad)?;
        let d = r.u64().ok_or_else(bad)?;
        for _ in 0..d {
            let (fh, dh) = dir::DirHandle::import(&mut r, &mut fds, inherited)?;
            self.dirs.put(fh, Arc::new(dh));
        }
        self.dirs.next.store(next, Ordering::Relaxed);
        let m = r.u64().ok_or_else(bad)?;
        for _ in 0..m {
            let obj = (r.u64().ok_or_else(bad)?, r.u64().ok_or_else(bad)?);
            let nodeid = r.u64().ok_or_else(bad)?;
            let n = r.u32().ok_or_else(bad)? as i32;
            if !inherited {
                continue;
            }
            let fd = file::inherited(&mut fds, n)?;
            let f = std::fs::File::from(fd.try_clone().map_err(|e| e.to_string())?);
            self.objects.restore_mirror(obj, nodeid, Arc::new(f));
        }
        Ok((n as usize, d as usize))
    }

    /// The node table for a successor daemon (`InodeTable::export`).
    pub fn export_nodes(&self) -> Vec<u8> {
        self.inodes.export()
    }

    /// The nodes a dead predecessor published (`InodeTable::import_failover`).
    pub fn import_failover_nodes(&self, r: &crate::journal::Replayed) -> Result<usize, String> {
        self.inodes.import_failover(r)
    }

    /// A predecessor's node table (`InodeTable::import`).
    pub fn import_nodes(&self, data: &[u8]) -> Result<usize, String> {
        self.inodes.import(data)
    }

    /// The path of a source object relative to SOURCE, from the names it was last seen
    /// under. `None` for the root.
    fn rel_of(&self, inode: &Inode) -> Option<PathBuf> {
        self.inodes.path_of(inode)
    }

    /// The path of `parent/name` relative to SOURCE.
    fn rel_child(&self, parent: &Inode, name: &OsStr) -> Option<PathBuf> {
        if parent.nodeid == crate::inodes::ROOT {
            return Some(PathBuf::from(name));
        }
        Some(self.rel_of(parent)?.join(name))
    }

    fn inode(&self, nodeid: u64) -> io::Result<Arc<Inode>> {
        self.inodes.get(nodeid)
    }

    /// A descriptor of an inode's source object. Call it before taking on a caller's
    /// identity (see `InodeTable::fd`).
    fn fd(&self, inode: &Inode) -> io::Result<Arc<OwnedFd>> {
        self.inodes.fd(inode)
    }

    /// A node and a descriptor of it, for an operation on the object itself.
    fn node(&self, nodeid: u64) -> io::Result<(Arc<Inode>, Arc<OwnedFd>)> {
        let inode = self.inode(nodeid)?;
        let fd = self
            .fd(&inode)
            .inspect_err(|e| self.stale_node(&inode, e))?;
        Ok((inode, fd))
    }

    /// After ESTALE (the node's object is gone from its name in SOURCE), the metadata
    /// cache must not answer the kernel's next lookup of that name from memory.
    fn stale_node(&self, inode: &Inode, e: &io::Error) {
        if e.raw_os_error() == Some(libc::ESTALE)
            && let Some(parent) = inode.parent()
            && let Some(name) = self.inodes.name_of(inode)
        {
            self.meta_changed((inode.dev, inode.ino));
            self.meta_name_changed(&parent, &name);
        }
    }

    pub fn forget(&self, nodeid: u64, n: u64) {
        self.inodes.forget(nodeid, n);
        if self.inodes.get(nodeid).is_err() {
            self.forget_node_dir(nodeid);
        }
    }

    fn lookup_inode(
        &self,
        parent: &Arc<Inode>,
        pfd: BorrowedFd<'_>,
        name: &OsStr,
    ) -> io::Result<Entry> {
        self.counters.source_lookups.fetch_add(1, Ordering::Relaxed);
        let (inode, stat) = self.inodes.lookup(parent, pfd, name)?;
        let entry = Entry::new(inode.nodeid, &stat);
        if let Some(meta) = &self.meta {
            meta.put_attr(&entry.stat);
        }
        Ok(entry)
    }

    /// Inodes the kernel remembers, and the descriptor cache's state.
    pub fn inode_stats(&self) -> (u64, bool, FdStats) {
        (
            self.inodes.len() as u64,
            self.inodes.uses_handles(),
            self.inodes.fds.stats(),
        )
    }
}

/// EROFS for a mutating call on a read-only mount.
fn check_writable(cfg: &Config) -> io::Result<()> {
    if cfg.read_only {
        Err(io::Error::from_raw_os_error(libc::EROFS))
    } else {
        Ok(())
    }
}

impl Overlay {
    /// Runs `f` on this thread with `caller`'s filesystem identity, as a FUSE request of
    /// theirs would run: SOURCE's own permission checks then apply to what `f` opens.
    pub fn as_caller<T>(&self, caller: &Caller, f: impl FnOnce() -> T) -> io::Result<T> {
        let _identity = self.creds.enter(caller)?;
        Ok(f())
    }

    /// Opens `rel` in SOURCE for reading, following no symlink, with this thread's
    /// identity (see [`Overlay::as_caller`]).
    pub fn open_source(&self, rel: &Path) -> io::Result<std::fs::File> {
        crate::cache::store::open_below(self.inodes.root_fd(), rel)
    }

    /// Every regular file at or below `rel` in SOURCE (relative paths), walked by
    /// descriptor without following symlinks. The empty path is the root.
    pub fn regular_files_below(&self, rel: &Path) -> io::Result<Vec<PathBuf>> {
        let start = match crate::cache::store::open_dir_below(self.inodes.root_fd(), rel) {
            Ok(d) => d,
            // Not a directory: a regular file is its own list.
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                let f = crate::cache::store::open_below(self.inodes.root_fd(), rel)?;
                return match rustix::fs::fstat(&f)?.st_mode & libc::S_IFMT {
                    libc::S_IFREG => Ok(vec![rel.to_path_buf()]),
                    _ => Err(io::Error::other("not a regular file or directory")),
                };
            }
            Err(e) => return Err(e),
        };
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut out = Vec::new();
        let mut stack = vec![(start, rel.to_path_buf())];
        while let Some((dir, prefix)) = stack.pop() {
            for e in fdio::read_dir(dir.as_fd())? {
                match e.kind {
                    FileType::RegularFile => out.push(prefix.join(&e.name)),
                    FileType::Directory => {
                        if let Ok(d) = rustix::fs::openat(&dir, &e.name, dir_flags, Mode::empty()) {
                            stack.push((d, prefix.join(&e.name)));
                        }
                    }
                    _ => {}
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether `rel` has a valid cached copy now.
    pub fn is_cached(&self, rel: &Path) -> bool {
        let Some(cache) = &self.cache else {
            return false;
        };
        let Ok(src) = crate::cache::store::open_below(self.inodes.root_fd(), rel) else {
            return false;
        };
        rustix::fs::fstat(&src).is_ok_and(|st| {
            cache
                .lookup(rel, &crate::cache::store::Provenance::of(&st))
                .is_some()
        })
    }
}
