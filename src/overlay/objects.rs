//! One owner for each source object's serving state (docs/architecture.md, invariant 13).
//!
//! A source object, (st_dev, st_ino), can be open through several kernel inodes (its own
//! node and aliases: see `InodeTable::retire`). Everything that decides how its opens are
//! served lives here, in one `ObjState` per open object, under one lock:
//! - each kernel inode's io mode: its passthrough opens and their backing file (the
//!   cached copy or the SOURCE file) with the kernel's registration of it, its opens
//!   served by the daemon through the page cache, its direct-I/O opens, and the writes
//!   the daemon is serving through it now;
//! - the object's open handles, with counts of writers;
//! - a write generation, bumped by every change through the mount and by every writer's
//!   open and release, which orders an open's choice of the copy against a change that
//!   drops it, and a promotion's publish against a write (`Gate`);
//! - the mirrors: writable descriptors of the copies that passthrough readers still read
//!   while the object is written through another inode.
//!
//! An open takes a `Ticket` (the generation) before it looks for a copy and is admitted
//! with `admit`, which refuses the copy if the generation moved meanwhile: an open can no
//! longer pick a copy that a write is dropping. The rules of `decide` are the kernel's
//! (fs/fuse/iomode.c): all passthrough opens of an inode share one backing file; beside
//! them only direct-I/O opens; no passthrough open beside opens that use the page cache.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::file::FileHandle;

/// A source object: (st_dev, st_ino).
pub type Obj = (u64, u64);

/// The kernel's registration of a backing file (a fuser `BackingId`, opaque here so the
/// core knows nothing of fuser). Dropping the last clone closes the registration.
pub type BackingToken = Arc<dyn std::any::Any + Send + Sync>;

/// How one open is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The kernel reads the cached copy itself.
    PassCopy,
    /// The kernel reads and writes the SOURCE file itself.
    PassSource,
    /// The daemon serves it, through the kernel's page cache.
    Cached,
    /// The daemon serves it, no page cache (O_DIRECT, or beside passthrough opens).
    Direct,
}

impl Mode {
    pub fn is_passthrough(self) -> bool {
        matches!(self, Mode::PassCopy | Mode::PassSource)
    }
}

/// The file a passthrough open is backed by.
#[derive(Clone)]
pub enum BackingFile {
    /// The cached copy.
    Copy(Arc<File>),
    /// The SOURCE file, through the descriptor of the handle that registered it (no
    /// descriptor of its own: the daemon's are counted).
    Source(Arc<OwnedFd>),
}

impl AsFd for BackingFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            BackingFile::Copy(f) => f.as_fd(),
            BackingFile::Source(f) => f.as_fd(),
        }
    }
}

/// A kernel inode's backing file while it has passthrough opens.
struct NodeBacking {
    /// The SOURCE file (else the cached copy); kept after `file` goes.
    source: bool,
    /// Until the kernel has accepted a registration of it (opens then share `token`).
    file: Option<BackingFile>,
    /// Set by the first open whose registration the kernel accepted.
    token: Option<BackingToken>,
}

impl NodeBacking {
    fn share(&self) -> Option<Backing> {
        match (&self.token, &self.file) {
            (Some(t), _) => Some(Ok(t.clone())),
            (None, Some(f)) => Some(Err(f.clone())),
            (None, None) => None,
        }
    }
}

/// One kernel inode of the object.
#[derive(Default)]
struct NodeIo {
    pass: u32,
    cached: u32,
    direct: u32,
    backing: Option<NodeBacking>,
    /// Writes the daemon is serving through this inode now.
    writing: u32,
}

impl NodeIo {
    fn is_idle(&self) -> bool {
        self.pass == 0 && self.cached == 0 && self.direct == 0 && self.writing == 0
    }

    fn pass_kind(&self) -> Option<bool> {
        (self.pass > 0).then(|| self.backing.as_ref().is_some_and(|b| b.source))
    }

    /// How an open of this inode is served, given what the object's other inodes are
    /// doing, the valid copy (if any) and a descriptor of the SOURCE file; the backing
    /// file to share or register with it. `None`: the open cannot be served on this
    /// inode (it has passthrough opens this one cannot share); its node is retired.
    fn decide(
        &mut self,
        want: Want,
        others: &Others,
        copy: Option<&Arc<File>>,
        source: Option<Arc<OwnedFd>>,
    ) -> Option<(Mode, Option<Backing>)> {
        match self.pass_kind() {
            Some(false) => {
                let reads_copy = copy.is_some() && !want.write && !want.o_direct;
                let b = self.backing.as_ref().filter(|_| reads_copy)?;
                Some((Mode::PassCopy, b.share()))
            }
            // Every open of an inode with passthrough opens must be passthrough to the
            // same file. A reader whose reads would count shares it too (they do not
            // count then); a writer whose writes other inodes' readers must see through
            // the daemon goes to a new inode instead.
            Some(true) => {
                if want.write && (others.cached || others.pass_copy) {
                    return None;
                }
                Some((
                    Mode::PassSource,
                    self.backing.as_ref().and_then(NodeBacking::share),
                ))
            }
            None if want.passthrough
                && !want.o_direct
                && self.cached == 0
                && self.direct == 0
                && copy.is_some() =>
            {
                let file = BackingFile::Copy(copy?.clone());
                Some((Mode::PassCopy, Some(Err(self.back(file)))))
            }
            None => {
                // Passthrough to SOURCE: the daemon sees none of its reads or writes. So
                // not for reads the policy counts, not where this inode has opens using
                // the page cache (the kernel refuses it), and not where another inode's
                // cached pages or passthrough readers of a copy would miss its writes.
                let source_ok = want.passthrough
                    && want.source_backing
                    && copy.is_none()
                    && (want.write || !want.counts)
                    && self.cached == 0
                    && !others.cached
                    && !(want.write && others.pass_copy);
                Some(match source.filter(|_| source_ok) {
                    Some(fd) => {
                        let file = BackingFile::Source(fd);
                        (Mode::PassSource, Some(Err(self.back(file))))
                    }
                    // Beside another inode's passthrough to SOURCE, pages kept here would
                    // go stale at its writes, which the daemon never sees.
                    None if others.pass_source || want.o_direct => (Mode::Direct, None),
                    None => (Mode::Cached, None),
                })
            }
        }
    }

    /// Makes `file` this inode's backing file (its first passthrough open).
    fn back(&mut self, file: BackingFile) -> BackingFile {
        self.backing = Some(NodeBacking {
            source: matches!(file, BackingFile::Source(_)),
            file: Some(file.clone()),
            token: None,
        });
        file
    }

    fn count(&mut self, mode: Mode) -> &mut u32 {
        match mode {
            Mode::PassCopy | Mode::PassSource => &mut self.pass,
            Mode::Cached => &mut self.cached,
            Mode::Direct => &mut self.direct,
        }
    }
}

#[derive(Default)]
struct ObjState {
    nodes: HashMap<u64, NodeIo>,
    handles: Vec<Arc<FileHandle>>,
    writers: u32,
    generation: u64,
    /// Copies being made of the object now (the promoter, through `Gate`).
    copying: u32,
    /// By node: a writable descriptor of the copy that node's passthrough readers read.
    mirrors: Vec<(u64, Arc<File>)>,
    /// A writer was sent to a new inode (`Admitted::Retire`) and is about to open it: no
    /// reader opening meanwhile may take the copy there, or the writer's retry would
    /// meet passthrough readers of a copy again (and the caller an ESTALE). Until then.
    writer_due: Option<Instant>,
}

impl ObjState {
    /// Whether every writer is closed by its process, its release still to come from
    /// the kernel (true without writers too: nobody writes).
    fn writers_closing(&self) -> bool {
        self.handles
            .iter()
            .filter(|h| h.writable)
            .all(|h| h.closed.load(Ordering::Relaxed))
    }

    fn is_idle(&self) -> bool {
        self.handles.is_empty()
            && self.copying == 0
            && self.nodes.values().all(NodeIo::is_idle)
            && self.writer_due.is_none_or(|t| Instant::now() >= t)
    }

    /// What the object's other kernel inodes (all but `nodeid`) are doing.
    fn others(&self, nodeid: u64) -> Others {
        let mut o = Others::default();
        for (n, io) in &self.nodes {
            if *n != nodeid {
                o.cached |= io.cached > 0;
                o.pass_source |= io.pass_kind() == Some(true);
                o.pass_copy |= io.pass_kind() == Some(false);
            }
        }
        o
    }

    /// Whether a new open may read the copy.
    fn copy_allowed(&self) -> bool {
        self.writers == 0 && self.writer_due.is_none_or(|t| Instant::now() >= t)
    }

    fn bump(&mut self, global: &mut u64) {
        *global += 1;
        self.generation = *global;
    }
}

/// What the other kernel inodes of an object are doing.
#[derive(Default)]
struct Others {
    /// Opens that use the page cache.
    cached: bool,
    /// Passthrough opens to the SOURCE file.
    pass_source: bool,
    /// Passthrough opens to a copy (whose readers the daemon's writes must reach).
    pass_copy: bool,
}

/// What an open asks for.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    pub write: bool,
    pub o_direct: bool,
    /// Its reads count toward promotion: it must be served by the daemon.
    pub counts: bool,
    /// The kernel agreed to passthrough.
    pub passthrough: bool,
    /// The SOURCE file may be its backing file (a regular file the kernel may write
    /// as the daemon: no setuid/setgid bit to clear).
    pub source_backing: bool,
}

/// How long a writer sent to a new inode has to open it (see `ObjState::writer_due`):
/// the kernel retries at once, after one lookup.
const WRITER_DUE: Duration = Duration::from_secs(1);

/// The object's generation when an open began looking for a copy.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    generation: u64,
    copy_allowed: bool,
    copy_readers: bool,
}

impl Ticket {
    /// A copy may be looked for at all: the object is not open for writing.
    pub fn copy_allowed(&self) -> bool {
        self.copy_allowed
    }

    /// The node already had passthrough readers of a copy (and so its mirror).
    pub fn copy_readers(&self) -> bool {
        self.copy_readers
    }
}

/// The backing file of a passthrough open: the registration its inode shares
/// (`Ok`), or the file to register (`Err`).
pub type Backing = Result<BackingToken, BackingFile>;

/// What an open is to be answered with.
pub enum Admitted {
    /// The node has passthrough readers of a copy this open cannot share: retire the node
    /// and answer ESTALE, so that the kernel opens the object's new inode.
    Retire,
    Serve {
        mode: Mode,
        backing: Option<Backing>,
    },
}

pub struct Objects {
    inner: Mutex<Inner>,
}

impl Inner {
    /// The object's state, made if it has none (with the current generation).
    fn state(map: &mut HashMap<Obj, ObjState>, generation: u64, obj: Obj) -> &mut ObjState {
        map.entry(obj).or_insert_with(|| ObjState {
            generation,
            ..ObjState::default()
        })
    }
}

struct Inner {
    map: HashMap<Obj, ObjState>,
    /// The last generation handed out: generations never repeat, even for an object
    /// that went idle and was forgotten.
    generation: u64,
}

impl Default for Objects {
    fn default() -> Self {
        Objects {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                generation: 0,
            }),
        }
    }
}

impl Objects {
    /// The object's state as an open of it through `nodeid` begins, before it looks for
    /// a copy.
    /// Whether `obj` is open for writing only by handles their processes have closed:
    /// the kernel sends each release after close(2) has returned, so for a moment the
    /// file is still open for writing to the owner.
    pub fn only_closing_writers(&self, obj: Obj) -> bool {
        let inner = self.inner.lock();
        inner
            .map
            .get(&obj)
            .is_some_and(|s| s.writers > 0 && s.writers_closing())
    }

    pub fn ticket(&self, obj: Obj, nodeid: u64) -> Ticket {
        let inner = self.inner.lock();
        match inner.map.get(&obj) {
            Some(s) => Ticket {
                generation: s.generation,
                copy_allowed: s.copy_allowed(),
                copy_readers: s
                    .nodes
                    .get(&nodeid)
                    .is_some_and(|n| n.pass_kind() == Some(false)),
            },
            None => Ticket {
                generation: inner.generation,
                copy_allowed: true,
                copy_readers: false,
            },
        }
    }

    /// Whether `nodeid` has passthrough readers of a copy.
    pub fn copy_readers_on(&self, obj: Obj, nodeid: u64) -> bool {
        let inner = self.inner.lock();
        inner
            .map
            .get(&obj)
            .and_then(|s| s.nodes.get(&nodeid))
            .is_some_and(|n| n.pass_kind() == Some(false))
    }

    /// Whether a writer (or an O_DIRECT open, `write` false) must go to a new inode
    /// because `nodeid` has passthrough readers of a copy; asked before SOURCE is opened,
    /// since an O_TRUNC must reach it only on the open that stays. A writer is then due
    /// on the new inode (see `ObjState::writer_due`).
    pub fn must_retire(&self, obj: Obj, nodeid: u64, write: bool) -> bool {
        let mut inner = self.inner.lock();
        let Some(st) = inner.map.get_mut(&obj) else {
            return false;
        };
        let retire = st
            .nodes
            .get(&nodeid)
            .is_some_and(|n| n.pass_kind() == Some(false));
        if retire && write {
            st.writer_due = Some(Instant::now() + WRITER_DUE);
        }
        retire
    }

    /// Decides how `h` is served and counts it in, in one step under the lock. `copy` is
    /// the valid copy found since `ticket` was taken, if any, with a writable descriptor
    /// of it (`mirror`) that is kept if the open becomes its node's first passthrough
    /// reader of it; `source`, a descriptor of the SOURCE file to register as the backing
    /// file if the open gets passthrough to it.
    pub fn admit(
        &self,
        h: &Arc<FileHandle>,
        want: Want,
        ticket: Ticket,
        (copy, mirror): (Option<Arc<File>>, Option<Arc<File>>),
        source: Option<Arc<OwnedFd>>,
    ) -> Admitted {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let st = Inner::state(&mut inner.map, inner.generation, h.obj);
        // A change (or a writer) came since the copy was looked up: it is not served.
        let copy =
            copy.filter(|_| st.generation == ticket.generation && st.copy_allowed() && !want.write);
        let others = st.others(h.nodeid);
        let node = st.nodes.entry(h.nodeid).or_default();
        let Some((mode, backing)) = node.decide(want, &others, copy.as_ref(), source) else {
            if want.write {
                st.writer_due = Some(Instant::now() + WRITER_DUE);
            }
            return Admitted::Retire;
        };
        *node.count(mode) += 1;
        if mode == Mode::PassCopy
            && let Some(m) = mirror
            && !st.mirrors.iter().any(|(n, _)| *n == h.nodeid)
        {
            st.mirrors.push((h.nodeid, m));
        }
        *h.mode.lock() = mode;
        if mode != Mode::PassCopy {
            *h.copy.lock() = copy;
        }
        if h.writable {
            st.writers += 1;
            st.writer_due = None;
            st.bump(&mut inner.generation);
            // The source is about to change: readers already open leave their copies.
            for o in &st.handles {
                *o.copy.lock() = None;
            }
        }
        st.handles.push(h.clone());
        Admitted::Serve { mode, backing }
    }

    /// What a live restart cannot carry yet, if any: a copy in progress, a writer on its
    /// way to a new inode.
    pub fn handoff_blocker(&self) -> Option<String> {
        let inner = self.inner.lock();
        inner.map.values().find_map(|st| {
            if st.copying > 0 {
                Some("a copy is being made".to_string())
            } else if st.writer_due.is_some_and(|t| Instant::now() < t) {
                Some("a writer is being moved to a new inode".to_string())
            } else {
                None
            }
        })
    }

    /// Every copy's mirror (see `ObjState::mirrors`), for a live restart: the object, the
    /// node whose passthrough readers read the copy, the writable descriptor.
    pub fn mirrors(&self) -> Vec<(Obj, u64, Arc<File>)> {
        let inner = self.inner.lock();
        inner
            .map
            .iter()
            .flat_map(|(obj, st)| st.mirrors.iter().map(|(n, f)| (*obj, *n, f.clone())))
            .collect()
    }

    /// Takes back a mirror a predecessor kept (after the handles it serves).
    pub fn restore_mirror(&self, obj: Obj, nodeid: u64, file: Arc<File>) {
        let mut inner = self.inner.lock();
        if let Some(st) = inner.map.get_mut(&obj) {
            st.mirrors.push((nodeid, file));
        }
    }

    /// The backing file of `h`'s node, for a live restart: whether it is the SOURCE file,
    /// and the kernel's registration of it.
    pub fn node_backing(&self, h: &FileHandle) -> Option<(bool, BackingToken)> {
        let inner = self.inner.lock();
        let b = inner
            .map
            .get(&h.obj)?
            .nodes
            .get(&h.nodeid)?
            .backing
            .as_ref()?;
        Some((b.source, b.token.clone()?))
    }

    /// Takes back an open handle a predecessor served, as it served it: its mode, and a
    /// passthrough open's registration (shared by its node's passthrough opens).
    pub fn restore(&self, h: &Arc<FileHandle>, mode: Mode, backing: Option<(bool, BackingToken)>) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let st = Inner::state(&mut inner.map, inner.generation, h.obj);
        let node = st.nodes.entry(h.nodeid).or_default();
        *node.count(mode) += 1;
        if let Some((source, token)) = backing
            && node.backing.is_none()
        {
            node.backing = Some(NodeBacking {
                source,
                file: None,
                token: Some(token),
            });
        }
        *h.mode.lock() = mode;
        if h.writable {
            st.writers += 1;
            st.bump(&mut inner.generation);
        }
        st.handles.push(h.clone());
    }

    /// The kernel registered the backing file of a passthrough open of `h`'s node as
    /// `token`: the registration all its passthrough opens are to use (`token`, or the one
    /// another open registered first, and then `token` is dropped, closing it).
    pub fn registered(&self, h: &FileHandle, token: BackingToken) -> BackingToken {
        let mut inner = self.inner.lock();
        match inner
            .map
            .get_mut(&h.obj)
            .and_then(|s| s.nodes.get_mut(&h.nodeid))
            .and_then(|n| n.backing.as_mut())
        {
            Some(b) => {
                // Opens share the registration from now on; the file is no longer needed.
                b.file = None;
                b.token.get_or_insert(token).clone()
            }
            None => token,
        }
    }

    /// The kernel refused the backing file of `h`. If another open of its node had its
    /// registration accepted meanwhile, that one is shared (returned); otherwise `h` is
    /// served by the daemon instead, from the same file (a copy is read as one; the
    /// SOURCE file through its handle).
    pub fn refused(&self, h: &FileHandle) -> Option<BackingToken> {
        let mut inner = self.inner.lock();
        let st = inner.map.get_mut(&h.obj)?;
        let others_pass_source = st.others(h.nodeid).pass_source;
        let node = st.nodes.get_mut(&h.nodeid)?;
        let mut mode = h.mode.lock();
        if !mode.is_passthrough() {
            return None;
        }
        if let Some(t) = node.backing.as_ref().and_then(|b| b.token.clone()) {
            return Some(t);
        }
        node.pass -= 1;
        let backing = if node.pass == 0 {
            node.backing.take()
        } else {
            None
        };
        if *mode == Mode::PassCopy {
            *h.copy.lock() = match backing.as_ref().and_then(|b| b.file.clone()) {
                Some(BackingFile::Copy(f)) => Some(f),
                _ => None,
            };
            st.mirrors.retain(|(n, _)| *n != h.nodeid || node.pass > 0);
        }
        *mode = if others_pass_source || h.o_direct {
            Mode::Direct
        } else {
            Mode::Cached
        };
        *node.count(*mode) += 1;
        // Closed outside the lock: the kernel's registration goes with the last clone.
        drop(mode);
        drop(inner);
        drop(backing);
        None
    }

    /// `h` is closed. Returns whether it was its node's last passthrough open of a copy
    /// and no node of the object has any left (the object's node may be unretired).
    pub fn release(&self, h: &FileHandle) -> bool {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let Some(st) = inner.map.get_mut(&h.obj) else {
            return false;
        };
        st.handles.retain(|o| !std::ptr::eq(o.as_ref(), h));
        if h.writable {
            st.writers -= 1;
            st.bump(&mut inner.generation);
        }
        let mode = *h.mode.lock();
        let mut closing = None;
        let mut unretire = false;
        if let Some(node) = st.nodes.get_mut(&h.nodeid) {
            *node.count(mode) -= 1;
            if mode.is_passthrough() && node.pass == 0 {
                closing = node.backing.take();
                if mode == Mode::PassCopy {
                    st.mirrors.retain(|(n, _)| *n != h.nodeid);
                    unretire = true;
                }
            }
            if node.is_idle() {
                st.nodes.remove(&h.nodeid);
            }
        }
        unretire &= !st.nodes.values().any(|n| n.pass_kind() == Some(false));
        if st.is_idle() {
            inner.map.remove(&h.obj);
        }
        drop(guard);
        drop(closing);
        unretire
    }

    /// A copy was published since `h`, served by the daemon from SOURCE, opened: it reads
    /// the copy from now on, unless the object changed (or was opened for writing) since
    /// `ticket` was taken, before the copy was looked up. Returns whether it does.
    pub fn adopt(&self, h: &FileHandle, ticket: Ticket, copy: Arc<File>) -> bool {
        let inner = self.inner.lock();
        let ok = inner
            .map
            .get(&h.obj)
            .is_some_and(|s| s.generation == ticket.generation && s.writers == 0);
        if ok {
            *h.copy.lock() = Some(copy);
        }
        ok
    }

    /// A mirror failed: that node's readers keep what they have until they reopen.
    pub fn drop_mirror(&self, obj: Obj, nodeid: u64) {
        if let Some(st) = self.inner.lock().map.get_mut(&obj) {
            st.mirrors.retain(|(n, _)| *n != nodeid);
        }
    }

    /// The object's bytes are about to change through the mount (through `via`, or by a
    /// path when `None`): the generation moves, so no open in progress picks the copy and
    /// no copy in progress is published; handles the daemon serves from a copy read
    /// SOURCE from now on (invariant 10). Returns the change, to be ended with `changed`.
    pub fn change(&self, obj: Obj, via: Option<u64>) -> Change {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let Some(st) = inner.map.get_mut(&obj) else {
            inner.generation += 1;
            return Change {
                obj,
                ..Change::default()
            };
        };
        st.bump(&mut inner.generation);
        // With a writer open, no handle holds a copy (its admission took them all away,
        // and none is taken since): a write through it has none to take away.
        if st.writers == 0 {
            for h in &st.handles {
                *h.copy.lock() = None;
            }
        }
        if let Some(n) = via.and_then(|v| st.nodes.get_mut(&v)) {
            n.writing += 1;
        }
        Change {
            obj,
            via,
            mirrors: st.mirrors.clone(),
        }
    }

    /// Ends `change`.
    pub fn changed(&self, c: &Change) {
        let Some(via) = c.via else { return };
        let mut inner = self.inner.lock();
        if let Some(st) = inner.map.get_mut(&c.obj) {
            if let Some(n) = st.nodes.get_mut(&via) {
                n.writing -= 1;
                if n.is_idle() {
                    st.nodes.remove(&via);
                }
            }
            if st.is_idle() {
                inner.map.remove(&c.obj);
            }
        }
    }

    /// Whether the daemon is serving a write through `nodeid` of `obj` now.
    pub fn writing_through(&self, obj: Obj, nodeid: u64) -> bool {
        let inner = self.inner.lock();
        inner
            .map
            .get(&obj)
            .and_then(|s| s.nodes.get(&nodeid))
            .is_some_and(|n| n.writing > 0)
    }
}

/// A change in progress (see `Objects::change`).
#[derive(Default)]
pub struct Change {
    obj: Obj,
    via: Option<u64>,
    /// The copies passthrough readers read, to receive the change too.
    pub mirrors: Vec<(u64, Arc<File>)>,
}

impl Change {
    pub fn obj(&self) -> Obj {
        self.obj
    }
}

/// The promoter's side: a copy is published only if its object did not change, and is
/// not open for writing, from the start of the copy to its publish.
impl crate::cache::Gate for Objects {
    fn copy_started(&self, obj: Obj) -> Result<u64, bool> {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let fresh = inner.generation;
        let st = inner.map.entry(obj).or_insert_with(|| ObjState {
            generation: fresh,
            ..ObjState::default()
        });
        if st.writers > 0 {
            return Err(st.writers_closing());
        }
        st.copying += 1;
        Ok(st.generation)
    }

    fn copy_ended(
        &self,
        obj: Obj,
        started: u64,
        publish: Option<&mut dyn FnMut() -> io::Result<()>>,
    ) -> io::Result<bool> {
        let mut inner = self.inner.lock();
        let Some(st) = inner.map.get_mut(&obj) else {
            return Ok(false);
        };
        st.copying -= 1;
        let unchanged = st.generation == started && st.writers == 0;
        // Published under the lock: no write can begin between the check and the rename.
        let r = match publish {
            Some(p) if unchanged => p().map(|()| true),
            _ => Ok(false),
        };
        if st.is_idle() {
            inner.map.remove(&obj);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Gate;

    const OBJ: Obj = (1, 42);
    const NODE: u64 = 7;
    const ALIAS: u64 = 0xff00_0000_0000_0001;

    fn file() -> Arc<File> {
        Arc::new(tempfile::tempfile().expect("a temporary file"))
    }

    fn handle(nodeid: u64, writable: bool) -> Arc<FileHandle> {
        let fd = tempfile::tempfile().expect("a temporary file").into();
        Arc::new(FileHandle::for_test(fd, nodeid, OBJ, writable))
    }

    fn reader() -> Want {
        Want {
            write: false,
            o_direct: false,
            counts: false,
            passthrough: true,
            source_backing: true,
        }
    }

    fn writer() -> Want {
        Want {
            write: true,
            ..reader()
        }
    }

    /// Admits `h`, returning its mode (`None`: retire its node).
    fn admit(
        o: &Objects,
        h: &Arc<FileHandle>,
        want: Want,
        copy: Option<Arc<File>>,
    ) -> Option<Mode> {
        let t = o.ticket(h.obj, h.nodeid);
        let source = Arc::new(OwnedFd::from(
            tempfile::tempfile().expect("a temporary file"),
        ));
        match o.admit(h, want, t, (copy, None), Some(source)) {
            Admitted::Retire => None,
            Admitted::Serve { mode, .. } => Some(mode),
        }
    }

    /// The fsx failure: an open looked up the copy, a write dropped it, then the open
    /// was admitted. It must not read the copy.
    #[test]
    fn a_copy_looked_up_before_a_change_is_never_served() {
        let o = Objects::default();
        let w = handle(NODE, true);
        assert_eq!(
            admit(
                &o,
                &w,
                Want {
                    passthrough: false,
                    ..writer()
                },
                None
            ),
            Some(Mode::Cached)
        );
        o.release(&w);
        let r = handle(NODE, false);
        let ticket = o.ticket(OBJ, NODE);
        let change = o.change(OBJ, Some(NODE));
        o.changed(&change);
        let copy = Some(file());
        let Admitted::Serve { mode, .. } = o.admit(&r, reader(), ticket, (copy, None), None) else {
            panic!("retired");
        };
        assert_eq!(mode, Mode::Cached);
        assert!(
            r.copy.lock().is_none(),
            "the reader got the copy the change dropped"
        );
    }

    #[test]
    fn a_change_takes_daemon_served_readers_off_their_copy() {
        let o = Objects::default();
        let r = handle(NODE, false);
        let want = Want {
            passthrough: false,
            ..reader()
        };
        assert_eq!(admit(&o, &r, want, Some(file())), Some(Mode::Cached));
        assert!(r.copy.lock().is_some());
        let c = o.change(OBJ, Some(NODE));
        assert!(r.copy.lock().is_none());
        o.changed(&c);
        // A copy published later is adopted only with a ticket taken after the change.
        let stale = Ticket {
            generation: 0,
            copy_allowed: true,
            copy_readers: false,
        };
        assert!(!o.adopt(&r, stale, file()));
        assert!(o.adopt(&r, o.ticket(OBJ, NODE), file()));
    }

    #[test]
    fn no_copy_is_published_while_a_writer_is_open_or_after_a_change() {
        let o = Objects::default();
        let mut published = 0;
        let started = o.copy_started(OBJ).expect("no writer yet");
        let w = handle(NODE, true);
        admit(&o, &w, writer(), None);
        assert_eq!(
            o.copy_started(OBJ),
            Err(false),
            "a copy started beside a writer"
        );
        // Its process closed it (FLUSH): the copy may wait for the release.
        w.closed.store(true, Ordering::Relaxed);
        assert_eq!(o.copy_started(OBJ), Err(true));
        let ran = o.copy_ended(
            OBJ,
            started,
            Some(&mut || {
                published += 1;
                Ok(())
            }),
        );
        assert!(
            !ran.unwrap(),
            "a copy begun before the writer opened was published"
        );
        o.release(&w);
        // Without a writer: a change during the copy stops the publish too.
        let started = o.copy_started(OBJ).expect("no writer");
        o.changed(&o.change(OBJ, None));
        assert!(!o.copy_ended(OBJ, started, Some(&mut || Ok(()))).unwrap());
        let started = o.copy_started(OBJ).expect("no writer");
        assert!(
            o.copy_ended(
                OBJ,
                started,
                Some(&mut || {
                    published += 1;
                    Ok(())
                })
            )
            .unwrap()
        );
        assert_eq!(published, 1);
        assert!(
            o.inner.lock().map.is_empty(),
            "an idle object stays in the table"
        );
    }

    #[test]
    fn counted_readers_are_served_by_the_daemon_and_others_by_passthrough_to_source() {
        let o = Objects::default();
        let counted = handle(NODE, false);
        assert_eq!(
            admit(
                &o,
                &counted,
                Want {
                    counts: true,
                    ..reader()
                },
                None
            ),
            Some(Mode::Cached)
        );
        // The inode uses the page cache now: a writer may not have passthrough there.
        let w = handle(NODE, true);
        assert_eq!(admit(&o, &w, writer(), None), Some(Mode::Cached));
        o.release(&w);
        o.release(&counted);
        let scanner = handle(NODE, false);
        assert_eq!(admit(&o, &scanner, reader(), None), Some(Mode::PassSource));
        // Every later open of that inode shares its passthrough to SOURCE.
        let w = handle(NODE, true);
        assert_eq!(admit(&o, &w, writer(), None), Some(Mode::PassSource));
        let player = handle(NODE, false);
        assert_eq!(
            admit(
                &o,
                &player,
                Want {
                    counts: true,
                    ..reader()
                },
                None
            ),
            Some(Mode::PassSource)
        );
        // Another inode of the object keeps no pages beside them.
        let other = handle(ALIAS, false);
        assert_eq!(
            admit(
                &o,
                &other,
                Want {
                    passthrough: false,
                    ..reader()
                },
                None
            ),
            Some(Mode::Direct)
        );
    }

    #[test]
    fn a_writer_beside_passthrough_readers_of_a_copy_goes_to_a_new_inode_served_by_the_daemon() {
        let o = Objects::default();
        let r = handle(NODE, false);
        assert_eq!(admit(&o, &r, reader(), Some(file())), Some(Mode::PassCopy));
        assert!(o.must_retire(OBJ, NODE, true));
        // Until the writer arrives, a reader on the new inode does not take the copy
        // there (the writer's retry would meet it and fail).
        let early = handle(ALIAS, false);
        assert_eq!(
            admit(&o, &early, reader(), Some(file())),
            Some(Mode::PassSource)
        );
        o.release(&early);
        // The writer's writes must reach the copy's readers: through the daemon.
        let w = handle(ALIAS, true);
        assert_eq!(admit(&o, &w, writer(), None), Some(Mode::Cached));
        assert!(!o.release(&w));
        assert!(
            o.release(&r),
            "the last reader of the copy: the node may be unretired"
        );
    }
}
