//! The inode table: FUSE node ids to source objects, with the kernel's lookup counts.
//!
//! An inode keeps its identity without holding a descriptor, so a library of a million
//! files needs no more descriptors than a small one (`source.rs` bounds them). Each
//! inode records its source object's (st_dev, st_ino), the parent node and name it was
//! last seen under, and, where SOURCE's filesystem gives one and the daemon may open by
//! it, a file handle. A descriptor is made again when an operation needs one:
//! - by handle (`open_by_handle_at`): the object itself, wherever it was renamed to;
//! - else by `openat(parent, name, O_PATH | O_NOFOLLOW)`, the parent resolved the same
//!   way. No path is ever joined, nothing is followed (invariant 7).
//!
//! Either way the result is checked against the recorded (st_dev, st_ino): an object
//! removed or replaced behind the mount answers ESTALE, never another object. The
//! kernel then walks the path again with LOOKUP_REVAL, and the fresh lookup finds what
//! is there now (a renamed object under its new name, with its old node id).
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
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use rustix::fs::{AtFlags, Mode, OFlags, Stat};

use crate::fdio;
use crate::idhash::IdBuild;
use crate::journal::{Journal, Record};
use crate::source::Fds;
use crate::sys;

pub const ROOT: u64 = 1;

/// Alias node ids (see `retire`) have this top byte; other devices below SOURCE use top
/// bytes 1 to 254.
const ALIAS_BASE: u64 = 0xff << 56;

/// Deeper than any path of PATH_MAX bytes can be: a parent chain this long is a cycle
/// (directories moved into each other behind the mount), answered ESTALE.
const MAX_DEPTH: usize = libc::PATH_MAX as usize / 2 + 1;

/// Where an object was last seen: under which node, by which name.
#[derive(Debug)]
struct Loc {
    parent: Arc<Inode>,
    name: Box<OsStr>,
}

/// What names an object in SOURCE: (st_dev, st_ino) and its type, from either stat.
#[derive(Debug, Clone, Copy)]
struct Identity {
    dev: u64,
    ino: u64,
    mode: u32,
}

impl Identity {
    fn of(st: &Stat) -> Identity {
        Identity {
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
        }
    }

    fn of_libc(st: &sys::Stat) -> Identity {
        Identity {
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
        }
    }
}

/// One source object the kernel holds a reference to.
#[derive(Debug)]
pub struct Inode {
    pub nodeid: u64,
    pub dev: u64,
    pub ino: u64,
    /// `st_mode & S_IFMT`. An object's type never changes, but the filesystem may give
    /// a removed object's inode number to a new one of another type while the kernel
    /// still holds the node: then the node takes the new object's type and handle.
    kind: AtomicU32,
    nlookup: AtomicU64,
    /// `None` for the root only.
    loc: Mutex<Option<Loc>>,
    handle: Mutex<Option<sys::FileHandle>>,
}

impl Inode {
    pub fn kind(&self) -> u32 {
        self.kind.load(Ordering::Relaxed)
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }

    pub fn is_symlink(&self) -> bool {
        self.kind() == libc::S_IFLNK
    }

    pub fn is_regular(&self) -> bool {
        self.kind() == libc::S_IFREG
    }

    /// The parent node this object was last seen under (`None` for the root).
    pub fn parent(&self) -> Option<Arc<Inode>> {
        self.loc.lock().as_ref().map(|l| l.parent.clone())
    }
}

#[derive(Default)]
struct Numbering {
    /// Devices seen below SOURCE other than the root's, in order of first sight.
    other_devs: Vec<u64>,
}

pub struct InodeTable {
    by_id: RwLock<HashMap<u64, Arc<Inode>, IdBuild>>,
    numbering: Mutex<Numbering>,
    root: Arc<Inode>,
    /// SOURCE's root, held for the life of the mount; also the mount fd for handles.
    root_fd: Arc<OwnedFd>,
    pub fds: Fds,
    /// SOURCE's root opened for reading: `open_by_handle_at` refuses `O_PATH` mount fds.
    /// `None` when handles are not used.
    mount_fd: Option<OwnedFd>,
    /// Objects with alias nodes (see `retire`).
    aliases: Aliases,
    next_alias: AtomicU64,
    /// Where births, moves and deaths of nodes are published for a successor after a
    /// crash (`journal.rs`); unset until the session serves, and in tests.
    journal: std::sync::OnceLock<Arc<Journal>>,
    /// Logged when a filesystem mounted below SOURCE is first met, if set.
    new_device_note: std::sync::OnceLock<&'static str>,
}

/// An object's alias nodes.
#[derive(Default)]
struct AliasState {
    /// While its own node is retired for new opens: the node id a lookup gives instead.
    current: Option<u64>,
    /// Alias nodes the kernel may still hold: they outlive `unretire` while opens on them
    /// last, and a change through one node must reach the others.
    live: Vec<u64>,
}

/// Alias state by object (st_dev, st_ino). Almost always empty: `len` lets lookups skip
/// the lock then.
#[derive(Default)]
struct Aliases {
    map: Mutex<HashMap<(u64, u64), AliasState>>,
    len: AtomicU64,
}

impl Aliases {
    /// Reads an object's state, without taking the lock while no object has any.
    fn read<T>(&self, key: (u64, u64), f: impl FnOnce(&AliasState) -> T) -> Option<T> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.map.lock().get(&key).map(f)
    }

    /// Changes an object's state; it goes once it holds nothing.
    fn update<T>(&self, key: (u64, u64), f: impl FnOnce(&mut AliasState) -> T) -> T {
        let mut map = self.map.lock();
        let fresh = !map.contains_key(&key);
        let state = map.entry(key).or_default();
        let r = f(state);
        let empty = state.current.is_none() && state.live.is_empty();
        match (fresh, empty) {
            (true, false) => {
                self.len.fetch_add(1, Ordering::Relaxed);
            }
            (false, true) => {
                self.len.fetch_sub(1, Ordering::Relaxed);
                map.remove(&key);
            }
            (true, true) => {
                map.remove(&key);
            }
            (false, false) => {}
        }
        r
    }
}

impl InodeTable {
    /// A table holding SOURCE's root as node 1. `root` must be an `O_PATH` descriptor.
    /// `use_handles` asks for file handles; they are used only if a probe on the root
    /// shows they work here.
    pub fn new(root: OwnedFd, fds: Fds, use_handles: bool) -> io::Result<InodeTable> {
        let st = rustix::fs::fstat(&root)?;
        let mount_fd = if use_handles {
            probe_handles(root.as_fd())
        } else {
            None
        };
        let inode = Arc::new(Inode {
            nodeid: ROOT,
            dev: st.st_dev,
            ino: st.st_ino,
            kind: AtomicU32::new(st.st_mode & libc::S_IFMT),
            // The root is never forgotten.
            nlookup: AtomicU64::new(1 << 62),
            loc: Mutex::new(None),
            handle: Mutex::new(None),
        });
        let mut map = HashMap::default();
        map.insert(ROOT, inode.clone());
        Ok(InodeTable {
            by_id: RwLock::new(map),
            numbering: Mutex::new(Numbering::default()),
            root: inode,
            root_fd: Arc::new(root),
            fds,
            mount_fd,
            aliases: Aliases::default(),
            next_alias: AtomicU64::new(ALIAS_BASE + 1),
            journal: std::sync::OnceLock::new(),
            new_device_note: std::sync::OnceLock::new(),
        })
    }

    /// Whether inodes are reopened by file handle (else by parent and name).
    pub fn uses_handles(&self) -> bool {
        self.mount_fd.is_some()
    }

    /// Inodes the kernel holds references to (the root included).
    pub fn len(&self) -> usize {
        self.by_id.read().len()
    }

    /// Never: the root is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Retires the node of an object for new opens: from now on a lookup of the object
    /// gives a fresh node id (an alias), so that the kernel makes a new inode for it,
    /// while the opens of the old node go on there. This is how an open the kernel
    /// would refuse on the old inode (a write beside passthrough readers: one backing
    /// file per inode, fs/fuse/iomode.c) is answered: ESTALE, the kernel walks the
    /// path again, and the new open lands on the new inode. Returns the alias.
    /// An alias already given is reused if `reusable` says so.
    pub fn retire(&self, inode: &Inode, reusable: impl Fn(u64) -> bool) -> u64 {
        self.aliases
            .update((inode.dev, inode.ino), |a| match a.current {
                // Already retired, and this is not the alias itself: new opens go there.
                Some(alias) if alias != inode.nodeid && reusable(alias) => alias,
                _ => *a
                    .current
                    .insert(self.next_alias.fetch_add(1, Ordering::Relaxed)),
            })
    }

    /// Ends `retire`: lookups give the object its own node id again.
    pub fn unretire(&self, dev: u64, ino: u64) {
        if self.aliases.read((dev, ino), |a| a.current.is_some()) == Some(true) {
            self.aliases.update((dev, ino), |a| a.current = None);
        }
    }

    /// The node id of a source object (an alias while its own node is retired).
    pub fn nodeid_of(&self, dev: u64, ino: u64) -> u64 {
        self.aliases
            .read((dev, ino), |a| a.current)
            .flatten()
            .unwrap_or_else(|| self.own_nodeid(dev, ino))
    }

    /// The node ids other than `except` that the kernel may hold for an object: its own
    /// and its aliases. Empty for an object that never had an alias (the usual case).
    pub fn other_nodes(&self, dev: u64, ino: u64, except: u64) -> Vec<u64> {
        let Some(live) = self
            .aliases
            .read((dev, ino), |a| a.live.clone())
            .filter(|l| !l.is_empty())
        else {
            return Vec::new();
        };
        std::iter::once(self.own_nodeid(dev, ino))
            .chain(live)
            .filter(|&n| n != except)
            .collect()
    }

    /// The node id derived from (st_dev, st_ino).
    fn own_nodeid(&self, dev: u64, ino: u64) -> u64 {
        let base = if dev == self.root.dev {
            ino
        } else {
            let mut n = self.numbering.lock();
            let idx = match n.other_devs.iter().position(|&d| d == dev) {
                Some(i) => i,
                None => {
                    n.other_devs.push(dev);
                    let i = n.other_devs.len() - 1;
                    drop(n);
                    // After the lock: a compaction takes it before the journal's.
                    self.publish(&Record::Dev(dev), true);
                    if let Some(note) = self.new_device_note.get() {
                        tracing::warn!(
                            "a filesystem mounted below SOURCE (device {dev:#x}): {note}"
                        );
                    }
                    i
                }
            };
            ino ^ (((idx as u64 + 1) & 0xff) << 56)
        };
        if dev == self.root.dev && ino == self.root.ino {
            ROOT
        } else if base == ROOT {
            self.root.ino
        } else {
            base
        }
    }

    /// What to log when a filesystem mounted below SOURCE is first met.
    pub fn note_new_devices(&self, note: &'static str) {
        let _ = self.new_device_note.set(note);
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
        self.root.clone()
    }

    /// SOURCE's root directory (an `O_PATH` descriptor).
    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root_fd.as_fd()
    }

    /// A descriptor of the inode's source object (`O_PATH`, or an open handle's own),
    /// made again if none is cached. ESTALE if the object is gone or was replaced.
    ///
    /// Must run with the daemon's own identity, not a caller's: reopening by handle needs
    /// CAP_DAC_READ_SEARCH, and walking a parent chain must not depend on the caller's
    /// search permissions (the operation itself then runs as the caller).
    pub fn fd(&self, inode: &Inode) -> io::Result<Arc<OwnedFd>> {
        self.fd_at_depth(inode, 0)
    }

    fn fd_at_depth(&self, inode: &Inode, depth: usize) -> io::Result<Arc<OwnedFd>> {
        if inode.nodeid == ROOT {
            return Ok(self.root_fd.clone());
        }
        if let Some(fd) = self.fds.get(inode.nodeid) {
            return Ok(fd);
        }
        if depth > MAX_DEPTH {
            return Err(stale());
        }
        let fd = match self.reopen_by_handle(inode)? {
            Some(fd) if self.is_same(inode, fd.as_fd())? => fd,
            // No handle, or a handle that no longer opens its object (gone, or never its
            // own: see `insert`): by name, which answers ESTALE if it is not there either.
            _ => {
                let fd = self.reopen_by_name(inode, depth)?;
                if !self.is_same(inode, fd.as_fd())? {
                    return Err(stale());
                }
                // The object at the name is the node's (a reused inode number, or a
                // handle taken in a race): its own handle serves from now on.
                if self.mount_fd.is_some() && inode.dev == self.root.dev {
                    *inode.handle.lock() = sys::name_to_handle(fd.as_fd()).ok();
                }
                fd
            }
        };
        self.fds.count_reopen();
        let fd = Arc::new(fd);
        self.fds.put(inode.nodeid, fd.clone());
        Ok(fd)
    }

    /// Whether `fd` is the inode's object. By name, an inode number the filesystem reused
    /// for an object of the same type at the same name passes: a fresh lookup would give
    /// it this node id anyway (node ids are inode numbers). A handle also carries the
    /// generation, so it never opens a reused number's new object.
    fn is_same(&self, inode: &Inode, fd: BorrowedFd<'_>) -> io::Result<bool> {
        let st = rustix::fs::fstat(fd)?;
        Ok(st.st_dev == inode.dev
            && st.st_ino == inode.ino
            && st.st_mode & libc::S_IFMT == inode.kind())
    }

    /// `None` when the inode has no handle, handles cannot be used for it, or it opens
    /// no object any more.
    fn reopen_by_handle(&self, inode: &Inode) -> io::Result<Option<OwnedFd>> {
        let (Some(handle), Some(mount_fd)) = (*inode.handle.lock(), &self.mount_fd) else {
            return Ok(None);
        };
        let flags = OFlags::PATH | OFlags::NOFOLLOW;
        match self
            .fds
            .retry(|| sys::open_by_handle(mount_fd.as_fd(), &handle, flags))
        {
            Ok(fd) => Ok(Some(fd)),
            // Removed (and its inode freed) behind the mount; or not allowed after all
            // (capabilities dropped): go by name.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ESTALE | libc::ENOENT | libc::EPERM | libc::EOPNOTSUPP)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn reopen_by_name(&self, inode: &Inode, depth: usize) -> io::Result<OwnedFd> {
        loop {
            let parent = inode.parent().ok_or_else(stale)?;
            let pfd = self.fd_at_depth(&parent, depth + 1)?;
            // The name is copied out: the lock is never held across a SOURCE call, which
            // may hang, while the name is wanted by requests answered from memory.
            let name = match inode.loc.lock().as_ref() {
                Some(l) if Arc::ptr_eq(&l.parent, &parent) => l.name.clone(),
                // Seen under another parent meanwhile: resolve that one instead.
                Some(_) => continue,
                None => return Err(stale()),
            };
            let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let r = self
                .fds
                .retry(|| Ok(rustix::fs::openat(&*pfd, &*name, flags, Mode::empty())?));
            // Moved while being opened: the object's name now is the one to open (a
            // wrong object found here fails the caller's identity check anyway).
            if inode
                .loc
                .lock()
                .as_ref()
                .is_some_and(|l| !Arc::ptr_eq(&l.parent, &parent) || l.name != name)
            {
                continue;
            }
            return match r {
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                    Err(stale())
                }
                r => r,
            };
        }
    }

    /// Looks `name` up under `parent`, whose descriptor is `pfd`, and takes one kernel
    /// reference on the result. Runs as the caller (the lookup is theirs). Opens
    /// nothing and takes no handle: one stat; a descriptor is made when an operation
    /// needs one.
    pub fn lookup(
        &self,
        parent: &Arc<Inode>,
        pfd: BorrowedFd<'_>,
        name: &OsStr,
    ) -> io::Result<(Arc<Inode>, Stat)> {
        let st = rustix::fs::statat(pfd, name, AtFlags::SYMLINK_NOFOLLOW)?;
        let inode = self.insert(parent, name, Identity::of(&st));
        // A directory's handle is taken now: a process may sit in it (its cwd) while it
        // is renamed behind the mount, and only the handle finds it then. A file's
        // waits for its first reopen: most files a scan looks up are never reopened, a
        // handle costs a second walk of the name, and an open file keeps its own
        // descriptor.
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR
            && self.mount_fd.is_some()
            && st.st_dev == self.root.dev
        {
            let mut handle = inode.handle.lock();
            if handle.is_none() {
                *handle = sys::name_to_handle_at(pfd, name).ok();
            }
        }
        Ok((inode, st))
    }

    /// Registers an object whose attributes came from the metadata cache, seen as
    /// `parent/name`, with one kernel reference; SOURCE is not asked. A new node has no
    /// handle: it is reopened by its name when an operation needs it.
    pub fn insert_cached(&self, parent: &Arc<Inode>, name: &OsStr, st: &sys::Stat) -> Arc<Inode> {
        self.insert(parent, name, Identity::of_libc(st))
    }

    /// Registers an object just created and open as `fd` (whose name another process
    /// could already have replaced), seen as `parent/name`, with one kernel reference.
    pub fn insert_open(
        &self,
        parent: &Arc<Inode>,
        name: &OsStr,
        fd: BorrowedFd<'_>,
    ) -> io::Result<(Arc<Inode>, Stat)> {
        let st = rustix::fs::fstat(fd)?;
        let inode = self.insert(parent, name, Identity::of(&st));
        // Set here, also on a known node whose inode number the filesystem gave to this
        // new file.
        if self.mount_fd.is_some() && st.st_dev == self.root.dev {
            *inode.handle.lock() = sys::name_to_handle(fd).ok();
        }
        Ok((inode, st))
    }

    /// Registers the object of `st`, seen as `parent/name`, and takes one kernel
    /// reference. A known object (a hard link, a second lookup) keeps its inode, which
    /// now records this name. A new one has no file handle yet: most objects a scan
    /// looks up are never reopened, and taking a handle would walk the name a second
    /// time. The first reopen, by name, takes it (`fd_at_depth`), from the descriptor
    /// it opened, so a handle always belongs to the object it opens.
    fn insert(&self, parent: &Arc<Inode>, name: &OsStr, id: Identity) -> Arc<Inode> {
        let nodeid = self.nodeid_of(id.dev, id.ino);
        let known = self.by_id.read().get(&nodeid).cloned();
        match known {
            Some(inode) => {
                inode.nlookup.fetch_add(1, Ordering::Relaxed);
                self.moved(&inode, parent, name);
                let kind = id.mode & libc::S_IFMT;
                if inode.kind() != kind {
                    // A removed object's inode number, given to a new object of another
                    // type: the node is the new object now (the kernel makes a new inode
                    // for it too).
                    inode.kind.store(kind, Ordering::Relaxed);
                    *inode.handle.lock() = None;
                    self.fds.forget(nodeid);
                    self.publish_node(&inode, parent.nodeid, name);
                }
                inode
            }
            None => {
                let fresh = Arc::new(Inode {
                    nodeid,
                    dev: id.dev,
                    ino: id.ino,
                    kind: AtomicU32::new(id.mode & libc::S_IFMT),
                    nlookup: AtomicU64::new(0),
                    loc: Mutex::new(Some(Loc {
                        parent: parent.clone(),
                        name: name.into(),
                    })),
                    handle: Mutex::new(None),
                });
                let mut map = self.by_id.write();
                let mut created = false;
                let inode = map
                    .entry(nodeid)
                    .or_insert_with(|| {
                        created = true;
                        fresh
                    })
                    .clone();
                if created {
                    // Under the table's lock, so the journal has births and deaths in
                    // the table's order.
                    self.publish_node(&inode, parent.nodeid, name);
                }
                drop(map);
                if created {
                    self.maybe_compact();
                }
                if created && nodeid >= ALIAS_BASE {
                    // The kernel now holds this alias node: changes must reach it.
                    self.aliases
                        .update((id.dev, id.ino), |a| a.live.push(nodeid));
                }
                inode.nlookup.fetch_add(1, Ordering::Relaxed);
                inode
            }
        }
    }

    /// Whether the name the node was last seen under still leads to its object in
    /// SOURCE; ESTALE if it leads to another object or to none. Opens of files ask
    /// this, so that an object replaced or removed directly in SOURCE (a download client
    /// renaming a new version over the old) is never served under its old name, however
    /// long the kernel keeps that name: ESTALE makes the kernel look the name up again.
    /// A check that cannot be made (SOURCE's own error) lets the open go on.
    pub fn check_named(&self, inode: &Inode) -> io::Result<()> {
        let Some((parent, name)) = inode
            .loc
            .lock()
            .as_ref()
            .map(|l| (l.parent.clone(), l.name.clone()))
        else {
            return Ok(());
        };
        let Ok(pfd) = self.fd(&parent) else {
            return Ok(());
        };
        match rustix::fs::statat(&*pfd, &*name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_dev == inode.dev && st.st_ino == inode.ino => Ok(()),
            Ok(_) => Err(stale()),
            Err(rustix::io::Errno::NOENT) => Err(stale()),
            Err(_) => Ok(()),
        }
    }

    /// Records that an object is now `parent/name` (a lookup found it there, or a rename
    /// through the mount moved it).
    pub fn moved(&self, inode: &Inode, parent: &Arc<Inode>, name: &OsStr) {
        if inode.nodeid == ROOT || inode.nodeid == parent.nodeid {
            return;
        }
        let mut loc = inode.loc.lock();
        if let Some(l) = loc.as_ref()
            && Arc::ptr_eq(&l.parent, parent)
            && &*l.name == name
        {
            return;
        }
        *loc = Some(Loc {
            parent: parent.clone(),
            name: name.into(),
        });
        drop(loc);
        // After the node's lock: a compaction holds the journal's while it reads nodes.
        self.publish_node(inode, parent.nodeid, name);
    }

    fn publish(&self, rec: &Record<'_>, now: bool) {
        if let Some(j) = self.journal.get() {
            j.append(rec, now);
        }
    }

    fn publish_node(&self, inode: &Inode, parent: u64, name: &OsStr) {
        // A directory at once: a READDIRPLUS on it after a crash must find it, and the
        // kernel does not walk its path again first.
        self.publish(&node_record(inode, parent, name), inode.is_dir());
    }

    /// Publishes births, moves and deaths of nodes to `journal` from now on, starting it
    /// with every node already here.
    pub fn set_journal(&self, journal: Arc<Journal>) {
        if self.journal.set(journal).is_ok() {
            self.compact_journal();
        }
    }

    fn maybe_compact(&self) {
        if self.journal.get().is_some_and(|j| j.compaction_due()) {
            self.compact_journal();
        }
    }

    /// Writes the journal afresh from the table: every node, every device.
    pub fn compact_journal(&self) {
        let Some(j) = self.journal.get() else {
            return;
        };
        // Births and deaths wait; moves and devices wait on the journal's own lock,
        // taken after these (see `moved`, `own_nodeid`).
        let map = self.by_id.write();
        let devs = self.numbering.lock().other_devs.clone();
        j.compact(|put| {
            for dev in &devs {
                put(Record::Dev(*dev));
            }
            for inode in map.values().filter(|i| i.nodeid != ROOT) {
                let Some((parent, name)) = inode
                    .loc
                    .lock()
                    .as_ref()
                    .map(|l| (l.parent.nodeid, l.name.clone()))
                else {
                    continue;
                };
                put(node_record(inode, parent, &name));
            }
        });
    }

    /// The name an inode was last seen under (`None` for the root).
    pub fn name_of(&self, inode: &Inode) -> Option<Box<OsStr>> {
        inode.loc.lock().as_ref().map(|l| l.name.clone())
    }

    /// The path of an inode relative to SOURCE, from the names it was last seen under.
    /// `None` for the root, or a chain that does not reach it.
    pub fn path_of(&self, inode: &Inode) -> Option<PathBuf> {
        let mut names: Vec<Box<OsStr>> = Vec::new();
        let mut cur = {
            let loc = inode.loc.lock();
            let l = loc.as_ref()?;
            names.push(l.name.clone());
            l.parent.clone()
        };
        while cur.nodeid != ROOT {
            if names.len() > MAX_DEPTH {
                return None;
            }
            let next = {
                let loc = cur.loc.lock();
                let l = loc.as_ref()?;
                names.push(l.name.clone());
                l.parent.clone()
            };
            cur = next;
        }
        let mut path = Vec::new();
        for (i, n) in names.iter().rev().enumerate() {
            if i > 0 {
                path.push(b'/');
            }
            path.extend_from_slice(n.as_bytes());
        }
        Some(PathBuf::from(OsStr::from_bytes(&path)))
    }

    /// Drops `n` kernel references; the inode (and its cached descriptor) goes at zero.
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
                let gone = map.remove(&nodeid);
                self.publish(&Record::Gone(nodeid), false);
                drop(map);
                self.fds.forget(nodeid);
                if let Some(inode) = gone
                    && nodeid >= ALIAS_BASE
                {
                    self.aliases
                        .update((inode.dev, inode.ino), |a| a.live.retain(|&n| n != nodeid));
                }
            }
        }
    }
}

/// The journal's record of a node seen as `parent/name`.
fn node_record<'a>(inode: &Inode, parent: u64, name: &'a OsStr) -> Record<'a> {
    Record::Node {
        nodeid: inode.nodeid,
        dev: inode.dev,
        ino: inode.ino,
        kind: inode.kind(),
        parent,
        name: name.as_bytes(),
    }
}

fn stale() -> io::Error {
    io::Error::from_raw_os_error(libc::ESTALE)
}

/// The mount fd for handles, if handles work on this filesystem for this process: one is
/// made for the root and opened again.
fn probe_handles(root: BorrowedFd<'_>) -> Option<OwnedFd> {
    let probe = || -> io::Result<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mount_fd = rustix::fs::open(fdio::proc_path(root), flags, Mode::empty())?;
        let h = sys::name_to_handle(root)?;
        let again = sys::open_by_handle(mount_fd.as_fd(), &h, OFlags::PATH)?;
        let (a, b) = (rustix::fs::fstat(&again)?, rustix::fs::fstat(root)?);
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
            return Err(io::Error::other("the root's handle opens another object"));
        }
        Ok(mount_fd)
    };
    match probe() {
        Ok(fd) => {
            tracing::debug!("inodes are reopened by file handle");
            Some(fd)
        }
        Err(e) => {
            tracing::info!("inodes are reopened by parent and name: no file handles here ({e})");
            None
        }
    }
}

/// The first bytes of a node table handed to a successor daemon (`export`); a successor
/// that reads another version refuses it, and the running daemon goes on.
const NODES_MAGIC: &[u8] = b"CACHEFS-NODES-1\n";

impl InodeTable {
    /// Every node the kernel holds, for a successor daemon that takes the live FUSE
    /// connection over and must answer the node ids the kernel already has: each node's
    /// id, object, type, lookup count, handle and the parent and name it was last seen
    /// under, parents before children; also the device numbering and the aliases, which
    /// decide the ids of nodes to come. Call it with the FUSE workers paused: a lookup or
    /// forget during the walk would be half in it.
    pub fn export(&self) -> Vec<u8> {
        let map = self.by_id.read();
        // Parents first: a node's depth is its parent chain's length.
        let depth = |inode: &Arc<Inode>| {
            let mut d = 0usize;
            let mut cur = inode.parent();
            while let Some(p) = cur {
                d += 1;
                if d > MAX_DEPTH {
                    break;
                }
                cur = p.parent();
            }
            d
        };
        let mut nodes: Vec<(usize, &Arc<Inode>)> = map
            .values()
            .filter(|i| i.nodeid != ROOT)
            .map(|i| (depth(i), i))
            .collect();
        nodes.sort_by_key(|(d, i)| (*d, i.nodeid));
        let mut w = crate::codec::Writer::new(NODES_MAGIC);
        w.u64(self.root.dev);
        w.u64(self.root.ino);
        let numbering = self.numbering.lock();
        w.u32(numbering.other_devs.len() as u32);
        for dev in &numbering.other_devs {
            w.u64(*dev);
        }
        drop(numbering);
        w.u64(self.next_alias.load(Ordering::Relaxed));
        let aliases = self.aliases.map.lock();
        w.u32(aliases.len() as u32);
        for ((dev, ino), a) in aliases.iter() {
            w.u64(*dev);
            w.u64(*ino);
            w.u64(a.current.unwrap_or(0));
            w.u32(a.live.len() as u32);
            for n in &a.live {
                w.u64(*n);
            }
        }
        drop(aliases);
        w.u64(nodes.len() as u64);
        for (_, inode) in nodes {
            let (parent, name) = match inode.loc.lock().as_ref() {
                Some(l) => (l.parent.nodeid, l.name.as_bytes().to_vec()),
                None => (ROOT, Vec::new()),
            };
            w.u64(inode.nodeid);
            w.u64(inode.dev);
            w.u64(inode.ino);
            w.u32(inode.kind());
            w.u64(inode.nlookup.load(Ordering::Relaxed));
            w.u64(parent);
            w.bytes(&name);
            match *inode.handle.lock() {
                Some(h) => {
                    let (kind, bytes) = h.parts();
                    w.u8(1);
                    w.u32(kind as u32);
                    w.bytes(bytes);
                }
                None => w.u8(0),
            }
        }
        w.finish()
    }

    /// Takes the nodes of a predecessor's `export` into this (new, empty) table, with
    /// their ids and lookup counts, so that every node id the kernel holds answers as
    /// before. Nothing of SOURCE is touched: each node is reopened, by handle or by
    /// parent and name, when an operation needs it, as any node is. Returns how many
    /// nodes it took, or why it refuses the state (another version, a damaged one, a
    /// different SOURCE root).
    pub fn import(&self, data: &[u8]) -> Result<usize, String> {
        let bad = || "the node table is damaged".to_string();
        let mut r = crate::codec::Reader::open(data, NODES_MAGIC)
            .ok_or("the node table is of another version, or damaged")?;
        let root = (r.u64().ok_or_else(bad)?, r.u64().ok_or_else(bad)?);
        if root != (self.root.dev, self.root.ino) {
            return Err("the node table is of another SOURCE".to_string());
        }
        let ndevs = r.u32().ok_or_else(bad)?;
        let mut devs = Vec::new();
        for _ in 0..ndevs {
            devs.push(r.u64().ok_or_else(bad)?);
        }
        let next_alias = r.u64().ok_or_else(bad)?;
        let naliases = r.u32().ok_or_else(bad)?;
        let mut aliases = Vec::new();
        for _ in 0..naliases {
            let key = (r.u64().ok_or_else(bad)?, r.u64().ok_or_else(bad)?);
            let current = r.u64().ok_or_else(bad)?;
            let nlive = r.u32().ok_or_else(bad)?;
            let mut live = Vec::new();
            for _ in 0..nlive {
                live.push(r.u64().ok_or_else(bad)?);
            }
            aliases.push((key, current, live));
        }
        let count = r.u64().ok_or_else(bad)?;
        let mut map = self.by_id.write();
        if map.len() != 1 {
            return Err("the node table to import into is not new".to_string());
        }
        for _ in 0..count {
            let nodeid = r.u64().ok_or_else(bad)?;
            let dev = r.u64().ok_or_else(bad)?;
            let ino = r.u64().ok_or_else(bad)?;
            let kind = r.u32().ok_or_else(bad)?;
            let nlookup = r.u64().ok_or_else(bad)?;
            let parent = r.u64().ok_or_else(bad)?;
            let name = r.bytes().ok_or_else(bad)?;
            let handle = match r.u8().ok_or_else(bad)? {
                0 => None,
                _ => {
                    let kind = r.u32().ok_or_else(bad)? as i32;
                    sys::FileHandle::from_parts(kind, r.bytes().ok_or_else(bad)?)
                }
            };
            let parent = map
                .get(&parent)
                .cloned()
                .ok_or_else(|| format!("node {nodeid} comes before its parent {parent}"))?;
            if nodeid == ROOT || name.is_empty() {
                return Err(bad());
            }
            map.insert(
                nodeid,
                Arc::new(Inode {
                    nodeid,
                    dev,
                    ino,
                    kind: AtomicU32::new(kind),
                    nlookup: AtomicU64::new(nlookup),
                    loc: Mutex::new(Some(Loc {
                        parent,
                        name: OsStr::from_bytes(name).into(),
                    })),
                    // A handle is only used where this table may open by handle.
                    handle: Mutex::new(handle.filter(|_| self.mount_fd.is_some())),
                }),
            );
        }
        drop(map);
        self.numbering.lock().other_devs = devs;
        self.next_alias.store(next_alias, Ordering::Relaxed);
        for (key, current, live) in aliases {
            self.aliases.update(key, |a| {
                a.current = (current != 0).then_some(current);
                a.live = live;
            });
        }
        Ok(count as usize)
    }
}

/// A node taken over after a crash has an unknown kernel lookup count: it is kept until
/// the mount ends (a forget of a smaller count never drops it).
const COUNT_UNKNOWN: u64 = 1 << 48;

impl InodeTable {
    /// Takes the nodes a dead predecessor published (`journal::replay`) into this new
    /// table, parents before children, so that the node ids the kernel holds answer as
    /// before; each is reopened by parent and name when an operation needs it (no
    /// handle was published), and checked to be its object. A node whose parent chain
    /// does not reach the root is left out (it answers ESTALE, and the kernel looks it
    /// up again). Returns how many nodes it took.
    pub fn import_failover(&self, r: &crate::journal::Replayed) -> Result<usize, String> {
        let mut map = self.by_id.write();
        if map.len() != 1 {
            return Err("the node table to take over into is not new".to_string());
        }
        let mut left: Vec<(&u64, &crate::journal::NodeRec)> = r
            .nodes
            .iter()
            .filter(|(id, n)| **id != ROOT && !n.name.is_empty())
            .collect();
        let mut taken = 0;
        loop {
            let before = left.len();
            left.retain(|(nodeid, n)| {
                let Some(parent) = map.get(&n.parent).cloned() else {
                    return true;
                };
                map.insert(
                    **nodeid,
                    Arc::new(Inode {
                        nodeid: **nodeid,
                        dev: n.dev,
                        ino: n.ino,
                        kind: AtomicU32::new(n.kind),
                        nlookup: AtomicU64::new(COUNT_UNKNOWN),
                        loc: Mutex::new(Some(Loc {
                            parent,
                            name: OsStr::from_bytes(&n.name).into(),
                        })),
                        handle: Mutex::new(None),
                    }),
                );
                taken += 1;
                false
            });
            if left.is_empty() || left.len() == before {
                break;
            }
        }
        let aliases = map.keys().filter(|&&n| n >= ALIAS_BASE).max().copied();
        drop(map);
        self.numbering.lock().other_devs = r.devs.clone();
        if let Some(a) = aliases {
            self.next_alias.fetch_max(a + 1, Ordering::Relaxed);
        }
        Ok(taken)
    }
}

#[cfg(test)]
mod tests {
    //! The table on a real directory, in process: no FUSE, no root needed (the handle
    //! cases run only where this process may open by handle).
    use super::*;
    use std::fs;
    use std::path::Path;

    fn table(dir: &Path, handles: bool, limit: u64) -> InodeTable {
        let flags = OFlags::PATH | OFlags::CLOEXEC;
        let root = rustix::fs::open(dir, flags, Mode::empty()).unwrap();
        InodeTable::new(root, Fds::new(limit), handles).unwrap()
    }

    fn lookup(t: &InodeTable, parent: &Arc<Inode>, name: &str) -> io::Result<Arc<Inode>> {
        let pfd = t.fd(parent)?;
        t.lookup(parent, pfd.as_fd(), OsStr::new(name))
            .map(|(i, _)| i)
    }

    fn errno<T>(r: io::Result<T>) -> Option<i32> {
        r.err().and_then(|e| e.raw_os_error())
    }

    /// Both ways of reopening, or only by name where handles are not allowed here.
    fn modes(dir: &Path) -> Vec<bool> {
        if table(dir, true, 1024).uses_handles() {
            vec![false, true]
        } else {
            vec![false]
        }
    }

    #[test]
    fn inodes_hold_no_descriptor_beyond_the_bound() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..300 {
            fs::write(d.path().join(format!("f{i}")), b"x").unwrap();
        }
        for handles in modes(d.path()) {
            // Bound 8: 300 inodes, at most 8 cached descriptors.
            let t = table(d.path(), handles, RESERVED_FOR_TEST + 16);
            let root = t.root();
            let inodes: Vec<_> = (0..300)
                .map(|i| lookup(&t, &root, &format!("f{i}")).unwrap())
                .collect();
            assert_eq!(t.len(), 301);
            // A lookup opens nothing.
            assert_eq!(t.fds.stats().cached, 0);
            // Every one still resolves to its own object.
            for (i, inode) in inodes.iter().enumerate() {
                let fd = t.fd(inode).unwrap();
                let st = rustix::fs::fstat(&*fd).unwrap();
                let want = fs::symlink_metadata(d.path().join(format!("f{i}"))).unwrap();
                assert_eq!(st.st_ino, std::os::unix::fs::MetadataExt::ino(&want));
            }
            assert_eq!(t.fds.stats().cached, 8);
        }
    }

    const RESERVED_FOR_TEST: u64 = crate::source::RESERVED;

    #[test]
    fn replaced_object_answers_estale_never_the_new_one() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("dir")).unwrap();
        fs::write(d.path().join("dir/f"), b"old").unwrap();
        for handles in modes(d.path()) {
            let t = table(d.path(), handles, RESERVED_FOR_TEST + 16);
            let root = t.root();
            let dir = lookup(&t, &root, "dir").unwrap();
            let f = lookup(&t, &dir, "f").unwrap();
            // Replace f behind the table's back (the new file exists before the old one
            // goes, so its inode number differs), with its descriptor out of the cache.
            t.fd(&f).unwrap();
            t.fds.forget(f.nodeid);
            fs::write(d.path().join("dir/f.new"), b"new").unwrap();
            fs::rename(d.path().join("dir/f.new"), d.path().join("dir/f")).unwrap();
            assert_eq!(errno(t.fd(&f)), Some(libc::ESTALE));
            // A fresh lookup finds the new object, under a new node id.
            let g = lookup(&t, &dir, "f").unwrap();
            assert_ne!(g.nodeid, f.nodeid);
            // Replaced by an object of another type, even one that reuses the number.
            fs::remove_file(d.path().join("dir/f")).unwrap();
            fs::create_dir(d.path().join("dir/f")).unwrap();
            assert_eq!(errno(t.fd(&g)), Some(libc::ESTALE));
            fs::remove_dir(d.path().join("dir/f")).unwrap();
            fs::write(d.path().join("dir/f"), b"old").unwrap();
        }
    }

    #[test]
    fn renamed_object_estale_by_name_found_by_handle_and_under_its_new_name() {
        let d = tempfile::tempdir().unwrap();
        for handles in modes(d.path()) {
            fs::create_dir_all(d.path().join("a/sub")).unwrap();
            fs::write(d.path().join("a/f"), b"x").unwrap();
            fs::write(d.path().join("a/h"), b"y").unwrap();
            let t = table(d.path(), handles, RESERVED_FOR_TEST + 16);
            let root = t.root();
            let a = lookup(&t, &root, "a").unwrap();
            let f = lookup(&t, &a, "f").unwrap();
            let h = lookup(&t, &a, "h").unwrap();
            let sub = lookup(&t, &a, "sub").unwrap();
            // h is reopened once (its handle taken then); f and sub never were.
            assert!(t.fd(&h).is_ok());
            for (from, to) in [("f", "g"), ("h", "i"), ("sub", "sub2")] {
                fs::rename(d.path().join("a").join(from), d.path().join("a").join(to)).unwrap();
            }
            for n in [&f, &h, &sub] {
                t.fds.forget(n.nodeid);
            }
            if handles {
                // A handle names the object itself, wherever it went: a directory's
                // from its lookup, a file's from its first reopen.
                assert!(t.fd(&sub).is_ok());
                assert!(t.fd(&h).is_ok());
            } else {
                assert_eq!(errno(t.fd(&sub)), Some(libc::ESTALE));
                assert_eq!(errno(t.fd(&h)), Some(libc::ESTALE));
            }
            // A file never reopened has no handle yet: ESTALE, and the kernel's fresh
            // lookup finds it under its new name (below).
            assert_eq!(errno(t.fd(&f)), Some(libc::ESTALE));
            // A lookup of the new name gives the same node, which now resolves there.
            let g = lookup(&t, &a, "g").unwrap();
            assert_eq!(g.nodeid, f.nodeid);
            t.fds.forget(f.nodeid);
            assert!(t.fd(&f).is_ok());
            assert_eq!(t.path_of(&f), Some(PathBuf::from("a/g")));
            fs::remove_dir_all(d.path().join("a")).unwrap();
        }
    }

    #[test]
    fn directory_swapped_for_a_symlink_is_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let outside = d.path().join("outside");
        fs::create_dir_all(src.join("dir")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(src.join("dir/f"), b"inside").unwrap();
        fs::write(outside.join("f"), b"outside").unwrap();
        // By name only: the handle case never looks at names.
        let t = table(&src, false, RESERVED_FOR_TEST + 16);
        let root = t.root();
        let dir = lookup(&t, &root, "dir").unwrap();
        let f = lookup(&t, &dir, "f").unwrap();
        fs::rename(src.join("dir"), src.join("dir.real")).unwrap();
        std::os::unix::fs::symlink(&outside, src.join("dir")).unwrap();
        t.fds.forget(dir.nodeid);
        t.fds.forget(f.nodeid);
        // The parent now names a symlink: not followed, not mistaken for the directory.
        assert_eq!(errno(t.fd(&f)), Some(libc::ESTALE));
        assert_eq!(errno(t.fd(&dir)), Some(libc::ESTALE));
        // A lookup under the symlink's node cannot reach outside either: it is no
        // directory to the daemon.
        let link = lookup(&t, &root, "dir").unwrap();
        assert!(link.is_symlink());
        assert_eq!(errno(lookup(&t, &link, "f")), Some(libc::ENOTDIR));
    }

    #[test]
    fn path_of_follows_renames_through_the_table() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("Show/Season 01")).unwrap();
        fs::create_dir_all(d.path().join("Other")).unwrap();
        fs::write(d.path().join("Show/Season 01/E01.mkv"), b"x").unwrap();
        let t = table(d.path(), false, 1024);
        let root = t.root();
        let show = lookup(&t, &root, "Show").unwrap();
        let season = lookup(&t, &show, "Season 01").unwrap();
        let ep = lookup(&t, &season, "E01.mkv").unwrap();
        assert_eq!(
            t.path_of(&ep),
            Some(PathBuf::from("Show/Season 01/E01.mkv"))
        );
        assert_eq!(t.path_of(&root), None);
        let other = lookup(&t, &root, "Other").unwrap();
        t.moved(&season, &other, OsStr::new("S1"));
        assert_eq!(t.path_of(&ep), Some(PathBuf::from("Other/S1/E01.mkv")));
    }

    #[test]
    fn inode_number_reused_for_another_type_takes_the_new_type() {
        let d = tempfile::tempdir().unwrap();
        for handles in modes(d.path()) {
            let t = table(d.path(), handles, 1024);
            let root = t.root();
            // The filesystem hands a freed inode number out again soon; try until it
            // does (a directory's number to a file), as the kernel still holds the node.
            let mut reused = false;
            for i in 0..50 {
                let name = format!("x{handles}{i}");
                fs::create_dir(d.path().join(&name)).unwrap();
                let dir = lookup(&t, &root, &name).unwrap();
                fs::remove_dir(d.path().join(&name)).unwrap();
                fs::write(d.path().join(&name), b"now a file").unwrap();
                let file = lookup(&t, &root, &name).unwrap();
                if file.nodeid == dir.nodeid {
                    assert!(file.is_regular());
                    let fd = t.fd(&file).unwrap();
                    assert_eq!(
                        rustix::fs::fstat(&*fd).unwrap().st_mode & libc::S_IFMT,
                        libc::S_IFREG
                    );
                    reused = true;
                    break;
                }
            }
            assert!(reused, "no inode number was reused in 50 tries");
        }
    }

    #[test]
    fn retired_node_gives_lookups_an_alias_until_unretired() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), b"x").unwrap();
        let t = table(d.path(), false, 1024);
        let root = t.root();
        let own = lookup(&t, &root, "f").unwrap();
        assert!(t.other_nodes(own.dev, own.ino, own.nodeid).is_empty());
        let alias = t.retire(&own, |_| true);
        assert!(alias >= ALIAS_BASE);
        // Retiring again from the own node keeps the alias; from the alias, a fresh one.
        assert_eq!(t.retire(&own, |_| true), alias);
        let a = lookup(&t, &root, "f").unwrap();
        assert_eq!(a.nodeid, alias);
        assert_eq!((a.dev, a.ino), (own.dev, own.ino));
        assert_eq!(t.other_nodes(own.dev, own.ino, alias), vec![own.nodeid]);
        assert_eq!(t.other_nodes(own.dev, own.ino, own.nodeid), vec![alias]);
        let second = t.retire(&a, |_| true);
        assert_ne!(second, alias);
        t.unretire(own.dev, own.ino);
        assert_eq!(lookup(&t, &root, "f").unwrap().nodeid, own.nodeid);
        // The alias node lives on while the kernel holds it (the second alias was never
        // looked up, so the kernel never had it), then goes.
        assert_eq!(t.other_nodes(own.dev, own.ino, own.nodeid), vec![alias]);
        t.forget(alias, 1);
        assert!(t.other_nodes(own.dev, own.ino, own.nodeid).is_empty());
    }

    #[test]
    fn forget_drops_the_inode_and_its_descriptor() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), b"x").unwrap();
        let t = table(d.path(), false, 1024);
        let root = t.root();
        let f = lookup(&t, &root, "f").unwrap();
        let again = lookup(&t, &root, "f").unwrap();
        assert_eq!(f.nodeid, again.nodeid);
        t.forget(f.nodeid, 1);
        assert!(t.get(f.nodeid).is_ok());
        t.forget(f.nodeid, 1);
        assert_eq!(errno(t.get(f.nodeid)), Some(libc::ESTALE));
        assert_eq!(t.fds.stats().cached, 0);
    }

    #[test]
    fn node_table_exported_to_a_successor_answers_the_same_node_ids() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("Show/Season 1")).unwrap();
        fs::write(d.path().join("Show/Season 1/E01.mkv"), b"x").unwrap();
        fs::write(d.path().join("film.mkv"), b"y").unwrap();
        for handles in modes(d.path()) {
            let old = table(d.path(), handles, 64);
            let show = lookup(&old, &old.root(), "Show").unwrap();
            let season = lookup(&old, &show, "Season 1").unwrap();
            let ep = lookup(&old, &season, "E01.mkv").unwrap();
            let film = lookup(&old, &old.root(), "film.mkv").unwrap();
            lookup(&old, &old.root(), "film.mkv").unwrap();
            old.fd(&film).unwrap();
            let state = old.export();

            let new = table(d.path(), handles, 64);
            assert_eq!(new.import(&state), Ok(4), "handles {handles}");
            for (inode, path) in [
                (&show, "Show"),
                (&season, "Show/Season 1"),
                (&ep, "Show/Season 1/E01.mkv"),
                (&film, "film.mkv"),
            ] {
                let got = new.get(inode.nodeid).unwrap();
                assert_eq!(
                    (got.dev, got.ino, got.kind()),
                    (inode.dev, inode.ino, inode.kind())
                );
                assert_eq!(new.path_of(&got).unwrap(), PathBuf::from(path));
                // Reopened from SOURCE when needed: the same object.
                let st = rustix::fs::fstat(&*new.fd(&got).unwrap()).unwrap();
                assert_eq!((st.st_dev, st.st_ino), (inode.dev, inode.ino));
            }
            // Lookup counts came along: the film was looked up twice.
            new.forget(film.nodeid, 1);
            assert!(new.get(film.nodeid).is_ok());
            new.forget(film.nodeid, 1);
            assert_eq!(errno(new.get(film.nodeid)), Some(libc::ESTALE));
            // A lookup in the successor finds the imported node, not a new one.
            let again = lookup(&new, &new.get(season.nodeid).unwrap(), "E01.mkv").unwrap();
            assert_eq!(again.nodeid, ep.nodeid);
        }
    }

    #[test]
    fn node_table_of_another_version_source_or_damaged_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), b"x").unwrap();
        let old = table(d.path(), false, 64);
        lookup(&old, &old.root(), "f").unwrap();
        let state = old.export();
        let mut older = state.clone();
        older[..NODES_MAGIC.len()].copy_from_slice(b"CACHEFS-NODES-0\n");
        for (bad, why) in [
            (older, "another version"),
            (
                state[..state.len() - 3].to_vec(),
                "another version, or damaged",
            ),
        ] {
            let new = table(d.path(), false, 64);
            let err = new.import(&bad).unwrap_err();
            assert!(err.contains(why), "{err}");
            assert_eq!(new.len(), 1, "nothing taken from a refused table");
        }
        let elsewhere = table(other.path(), false, 64);
        let err = elsewhere.import(&state).unwrap_err();
        assert!(err.contains("another SOURCE"), "{err}");
    }
}
