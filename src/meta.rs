//! The daemon's metadata cache (`meta_ttl`): SOURCE's attributes by object and its
//! directory listings, answered without a call to SOURCE while younger than the TTL, so
//! a library rescan leaves the disks asleep. Off (`meta_ttl=0`, the default) there is no
//! cache at all and every answer comes from SOURCE.
//!
//! Exactness: every change made through the mount drops what it changes before it
//! returns (`changed`, `name_changed`); a change made directly in SOURCE shows once the
//! entry is older than the TTL. Bounded: at most `max_nodes` objects are remembered; past
//! that, expired entries go first, then the oldest.
//!
//! A listing is keyed by the directory's object; a name in it resolves to the child
//! object `(the directory's st_dev, d_ino)`, whose attributes must be cached and fresh
//! too. A child on another filesystem (a mount point inside SOURCE) never resolves, so
//! it is always asked of SOURCE, which is slower but never wrong.
//!
//! The snapshot (`CACHE/meta`) is the cache written at a clean stop and read, then
//! deleted, at the next start: a daemon that dies leaves none, so changes it made
//! through the mount are never hidden behind an older snapshot. Entries keep their wall
//! clock fetch times, so the TTL counts across the restart. A missing, damaged or
//! foreign (another SOURCE root) snapshot is ignored: it only costs speed.
//!
//! Snapshot format (little-endian, sealed by `codec`): magic `CACHEFS-META-2\n`, root
//! st_dev and st_ino, node count, then per node: st_dev, st_ino, attribute fetch time
//! (ms since the epoch, 0 for none) and, if set, the attributes; a listing flag and, if
//! set, its fetch time, its names as one byte string and per entry (name offset u32,
//! name length u8, type (S_IFMT >> 12) u8, d_ino u64), sorted by name; then the fresh
//! extended attributes: a count u32 and per name its fetch time, the name, an errno u32
//! (0: a value follows as a byte string); and a list flag with, if set, its fetch time
//! and bytes. A snapshot of another version is ignored (it only costs speed).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;

use crate::codec::{Reader, Writer};
use rustix::fs::FileType;

use crate::fdio::DirEntry;
use crate::sys::{self, Stat};

/// An object of SOURCE: (st_dev, st_ino).
pub type Key = (u64, u64);

type Nodes = HashMap<Key, Node, crate::idhash::IdBuild>;

const MAGIC: &[u8] = b"CACHEFS-META-2\n";

/// The file name of the snapshot in the cache directory.
pub const SNAPSHOT: &str = "meta";

/// The attributes a stat reply needs, in 88 bytes rather than a `stat`'s 144.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Attr {
    size: u64,
    blocks: u64,
    rdev: u64,
    atime: i64,
    mtime: i64,
    ctime: i64,
    atime_ns: u32,
    mtime_ns: u32,
    ctime_ns: u32,
    mode: u32,
    nlink: u32,
    uid: u32,
    gid: u32,
    blksize: u32,
}

impl Attr {
    fn of(st: &Stat) -> Attr {
        Attr {
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            rdev: st.st_rdev,
            atime: st.st_atime,
            mtime: st.st_mtime,
            ctime: st.st_ctime,
            atime_ns: st.st_atime_nsec as u32,
            mtime_ns: st.st_mtime_nsec as u32,
            ctime_ns: st.st_ctime_nsec as u32,
            mode: st.st_mode,
            nlink: st.st_nlink.min(u32::MAX as u64) as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            blksize: st.st_blksize as u32,
        }
    }

    fn stat(&self, (dev, ino): Key) -> Stat {
        let mut st = sys::zeroed_stat();
        st.st_dev = dev;
        st.st_ino = ino;
        st.st_size = self.size as i64;
        st.st_blocks = self.blocks as i64;
        st.st_rdev = self.rdev;
        st.st_atime = self.atime;
        st.st_mtime = self.mtime;
        st.st_ctime = self.ctime;
        st.st_atime_nsec = self.atime_ns as i64;
        st.st_mtime_nsec = self.mtime_ns as i64;
        st.st_ctime_nsec = self.ctime_ns as i64;
        st.st_mode = self.mode;
        st.st_nlink = self.nlink as u64;
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        st.st_blksize = self.blksize as i64;
        st
    }

    fn write(&self, w: &mut Writer) {
        for v in [self.size, self.blocks, self.rdev] {
            w.u64(v);
        }
        for v in [self.atime, self.mtime, self.ctime] {
            w.i64(v);
        }
        for v in [
            self.atime_ns,
            self.mtime_ns,
            self.ctime_ns,
            self.mode,
            self.nlink,
            self.uid,
            self.gid,
            self.blksize,
        ] {
            w.u32(v);
        }
    }

    fn read(r: &mut Reader<'_>) -> Option<Attr> {
        Some(Attr {
            size: r.u64()?,
            blocks: r.u64()?,
            rdev: r.u64()?,
            atime: r.i64()?,
            mtime: r.i64()?,
            ctime: r.i64()?,
            atime_ns: r.u32()?,
            mtime_ns: r.u32()?,
            ctime_ns: r.u32()?,
            mode: r.u32()?,
            nlink: r.u32()?,
            uid: r.u32()?,
            gid: r.u32()?,
            blksize: r.u32()?,
        })
    }
}

/// One name of a listing: where it lies in the listing's name bytes, its type (the
/// `S_IFMT` bits shifted down to fit a byte) and d_ino.
#[derive(Debug, Clone, Copy)]
struct Kid {
    off: u32,
    len: u8,
    kind: u8,
    ino: u64,
}

/// A directory's names, sorted, in one allocation for the names and one for the rest
/// (about 16 bytes per name beyond its bytes).
#[derive(Debug)]
struct Listing {
    at: u64,
    names: Box<[u8]>,
    kids: Box<[Kid]>,
}

impl Listing {
    fn of(at: u64, entries: &[DirEntry]) -> Option<Listing> {
        let mut sorted: Vec<&DirEntry> = entries.iter().collect();
        sorted.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        let mut names = Vec::with_capacity(sorted.iter().map(|e| e.name.len()).sum());
        let mut kids = Vec::with_capacity(sorted.len());
        for e in sorted {
            let b = e.name.as_bytes();
            kids.push(Kid {
                off: u32::try_from(names.len()).ok()?,
                // NAME_MAX is 255; a longer name is not a name this cache can hold.
                len: u8::try_from(b.len()).ok()?,
                kind: (e.kind.as_raw_mode() >> 12) as u8,
                ino: e.ino,
            });
            names.extend_from_slice(b);
        }
        Some(Listing {
            at,
            names: names.into(),
            kids: kids.into(),
        })
    }

    fn name(&self, k: &Kid) -> &[u8] {
        &self.names[k.off as usize..k.off as usize + k.len as usize]
    }

    fn find(&self, name: &[u8]) -> Option<&Kid> {
        self.kids
            .binary_search_by(|k| self.name(k).cmp(name))
            .ok()
            .map(|i| &self.kids[i])
    }

    fn entries(&self) -> Vec<DirEntry> {
        self.kids
            .iter()
            .map(|k| DirEntry {
                ino: k.ino,
                kind: FileType::from_raw_mode((k.kind as u32) << 12),
                name: OsString::from(OsStr::from_bytes(self.name(k))),
            })
            .collect()
    }

    /// Well-formed: every name inside the bytes, non-empty, and strictly sorted (the
    /// binary search depends on it).
    fn valid(&self) -> bool {
        let inside = self
            .kids
            .iter()
            .all(|k| k.len > 0 && (k.off as usize + k.len as usize) <= self.names.len());
        inside
            && self
                .kids
                .windows(2)
                .all(|w| self.name(&w[0]) < self.name(&w[1]))
    }
}

#[derive(Debug, Default)]
struct Node {
    /// When `attr` was fetched (ms since the epoch); 0: not known.
    attr_at: u64,
    attr: Attr,
    listing: Option<Box<Listing>>,
    /// Writers open through the mount (`hold`): the attributes are never answered from
    /// here while they last, since their writes move them unseen.
    held: u32,
    /// Extended attributes asked for (`ls -l` asks for a file's ACL and security label at
    /// every listing), boxed: most objects never have any asked, and a small node keeps
    /// a scan's lookups in cache. Not in the snapshot.
    xattrs: Option<Box<Xattrs>>,
}

/// Each name's value or errno, and the list, with their fetch times.
#[derive(Debug, Default)]
struct Xattrs {
    names: Vec<XattrEntry>,
    list: Option<(u64, Box<[u8]>)>,
}

/// What SOURCE answered for one extended attribute of an object.
#[derive(Debug)]
struct XattrEntry {
    at: u64,
    name: Box<[u8]>,
    value: Result<Box<[u8]>, i32>,
}

/// Names remembered per object at most (a listing asks for two or three).
const XATTRS_PER_NODE: usize = 8;

impl Node {
    /// The newest fetch time in the node, for pruning.
    fn newest(&self) -> u64 {
        if self.held > 0 {
            return u64::MAX;
        }
        self.attr_at.max(self.listing.as_ref().map_or(0, |l| l.at))
    }
}

/// Forgets what is known of `key`; a held node stays, knowing nothing.
fn forget(nodes: &mut Nodes, key: Key) {
    match nodes.get_mut(&key) {
        Some(n) if n.held > 0 => {
            n.attr_at = 0;
            n.listing = None;
            n.xattrs = None;
        }
        Some(_) => {
            nodes.remove(&key);
        }
        None => {}
    }
}

/// What the cache knows of a name in a directory.
#[derive(Debug)]
pub enum Lookup {
    /// The name's object and its attributes.
    Found(Key, Stat),
    /// The name is not there (ENOENT).
    Missing,
    /// Not known, or not fresh: ask SOURCE.
    Unknown,
}

/// Counters for the status.
#[derive(Debug, Default, Clone, Copy)]
pub struct MetaStats {
    pub nodes: u64,
    pub hits: u64,
    pub misses: u64,
}

pub struct MetaCache {
    ttl_ms: u64,
    max_nodes: usize,
    nodes: RwLock<Nodes>,
    /// Changes made through the mount so far (`changed`, `name_changed`), moved under the
    /// nodes' write lock: an answer read from SOURCE before a change is not kept after it
    /// (`epoch`, and the `since` of the puts that take one).
    changes: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl MetaCache {
    pub fn new(ttl: Duration, max_nodes: usize) -> MetaCache {
        MetaCache {
            ttl_ms: ttl.as_millis().min(u64::MAX as u128) as u64,
            max_nodes: max_nodes.max(1),
            nodes: RwLock::new(Nodes::default()),
            changes: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn fresh(&self, at: u64, now: u64) -> bool {
        at != 0 && now.saturating_sub(at) < self.ttl_ms
    }

    fn count(&self, hit: bool) {
        let c = if hit { &self.hits } else { &self.misses };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The attributes of `key`, if fresh.
    pub fn attr(&self, key: Key) -> Option<Stat> {
        let now = now_ms();
        let r = self
            .nodes
            .read()
            .get(&key)
            .filter(|n| self.fresh(n.attr_at, now))
            .map(|n| n.attr.stat(key));
        self.count(r.is_some());
        r
    }

    /// `name` in the directory `parent`, from a fresh listing and fresh attributes.
    pub fn lookup(&self, parent: Key, name: &OsStr) -> Lookup {
        let now = now_ms();
        let nodes = self.nodes.read();
        let r = match nodes
            .get(&parent)
            .and_then(|n| n.listing.as_deref())
            .filter(|l| self.fresh(l.at, now))
        {
            None => Lookup::Unknown,
            Some(l) => match l.find(name.as_bytes()) {
                None => Lookup::Missing,
                Some(k) => {
                    let key = (parent.0, k.ino);
                    match nodes.get(&key).filter(|n| self.fresh(n.attr_at, now)) {
                        Some(n) => Lookup::Found(key, n.attr.stat(key)),
                        None => Lookup::Unknown,
                    }
                }
            },
        };
        drop(nodes);
        self.count(!matches!(r, Lookup::Unknown));
        r
    }

    /// The names of the directory `key` (without `.` and `..`), if fresh.
    pub fn listing(&self, key: Key) -> Option<Vec<DirEntry>> {
        let now = now_ms();
        let r = self
            .nodes
            .read()
            .get(&key)
            .and_then(|n| n.listing.as_deref())
            .filter(|l| self.fresh(l.at, now))
            .map(Listing::entries);
        self.count(r.is_some());
        r
    }

    /// Records attributes just read from SOURCE.
    pub fn put_attr(&self, st: &Stat) {
        self.put_attr_since(u64::MAX, st);
    }

    /// The count of changes made through the mount so far: taken before a call to
    /// SOURCE whose answer is then put with it, so that an answer a change overtook
    /// (read before the change, put after it dropped the entry) is not kept.
    pub fn epoch(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Whether a put read under `since` (an `epoch`; `u64::MAX`: unchecked) may be kept.
    /// Called under the nodes' write lock, which `changed` and `name_changed` move the
    /// count under.
    fn current(&self, since: u64) -> bool {
        since == u64::MAX || self.changes.load(Ordering::Acquire) == since
    }

    /// `put_attr` of attributes read from SOURCE at `epoch` `since`.
    pub fn put_attr_since(&self, since: u64, st: &Stat) {
        let mut nodes = self.nodes.write();
        if !self.current(since) {
            return;
        }
        let n = nodes.entry((st.st_dev, st.st_ino)).or_default();
        if n.held > 0 {
            return;
        }
        n.attr_at = now_ms();
        n.attr = Attr::of(st);
        self.bound(&mut nodes);
    }

    /// The answer SOURCE gave for the extended attribute `name` of `key` (its value, or
    /// an errno such as ENODATA), if fresh.
    pub fn xattr(&self, key: Key, name: &[u8]) -> Option<Result<Vec<u8>, i32>> {
        let now = now_ms();
        let nodes = self.nodes.read();
        let r = nodes
            .get(&key)
            .filter(|n| n.held == 0)
            .and_then(|n| n.xattrs.as_deref())
            .and_then(|x| {
                x.names
                    .iter()
                    .find(|x| &*x.name == name && self.fresh(x.at, now))
                    .map(|x| x.value.as_ref().map(|v| v.to_vec()).map_err(|e| *e))
            });
        drop(nodes);
        self.count(r.is_some());
        r
    }

    /// Records SOURCE's answer for the extended attribute `name` of `key`, read at `epoch`
    /// `since`: an ACL (`system.posix_acl_*`) or any other value that a change through
    /// the mount overtook is not kept.
    pub fn put_xattr(&self, since: u64, key: Key, name: &[u8], value: Result<&[u8], i32>) {
        let mut nodes = self.nodes.write();
        if !self.current(since) {
            return;
        }
        let n = nodes.entry(key).or_default();
        if n.held > 0 {
            return;
        }
        let x = n.xattrs.get_or_insert_default();
        x.names.retain(|x| &*x.name != name);
        if x.names.len() >= XATTRS_PER_NODE {
            x.names.remove(0);
        }
        x.names.push(XattrEntry {
            at: now_ms(),
            name: name.into(),
            value: value.map(Into::into),
        });
        self.bound(&mut nodes);
    }

    /// The names of `key`'s extended attributes (listxattr's bytes), if fresh.
    pub fn xattr_list(&self, key: Key) -> Option<Vec<u8>> {
        let now = now_ms();
        let r = self
            .nodes
            .read()
            .get(&key)
            .filter(|n| n.held == 0)
            .and_then(|n| n.xattrs.as_deref())
            .and_then(|x| x.list.as_ref())
            .filter(|(at, _)| self.fresh(*at, now))
            .map(|(_, l)| l.to_vec());
        self.count(r.is_some());
        r
    }

    /// Records `key`'s list of extended attribute names as SOURCE gave it.
    pub fn put_xattr_list(&self, since: u64, key: Key, list: &[u8]) {
        let mut nodes = self.nodes.write();
        if !self.current(since) {
            return;
        }
        let n = nodes.entry(key).or_default();
        if n.held == 0 {
            n.xattrs.get_or_insert_default().list = Some((now_ms(), list.into()));
        }
        self.bound(&mut nodes);
    }

    /// Records a whole listing just read from SOURCE.
    pub fn put_listing(&self, key: Key, entries: &[DirEntry]) {
        let Some(l) = Listing::of(now_ms(), entries) else {
            return;
        };
        let mut nodes = self.nodes.write();
        nodes.entry(key).or_default().listing = Some(Box::new(l));
        self.bound(&mut nodes);
    }

    /// The object changed (its attributes, or its names if a directory): forget both.
    pub fn changed(&self, key: Key) {
        let mut nodes = self.nodes.write();
        self.changes.fetch_add(1, Ordering::AcqRel);
        forget(&mut nodes, key);
    }

    /// A writer of `key` opened: its attributes are not answered from here until the
    /// matching `unhold`.
    pub fn hold(&self, key: Key) {
        let mut nodes = self.nodes.write();
        let n = nodes.entry(key).or_default();
        n.held += 1;
        n.attr_at = 0;
    }

    /// A writer of `key` closed: what was known of it goes (its writes changed it).
    pub fn unhold(&self, key: Key) {
        let mut nodes = self.nodes.write();
        if let Some(n) = nodes.get_mut(&key) {
            n.held = n.held.saturating_sub(1);
            n.attr_at = 0;
            if n.held == 0 && n.listing.is_none() {
                nodes.remove(&key);
            }
        }
    }

    /// A name in `parent` was made, removed or replaced: forget the directory (its
    /// listing and its mtime) and the object the name had (its link count and ctime).
    pub fn name_changed(&self, parent: Key, name: &OsStr) {
        let mut nodes = self.nodes.write();
        self.changes.fetch_add(1, Ordering::AcqRel);
        if let Some(ino) = nodes
            .get(&parent)
            .and_then(|n| n.listing.as_deref())
            .and_then(|l| l.find(name.as_bytes()))
            .map(|k| k.ino)
        {
            forget(&mut nodes, (parent.0, ino));
        }
        forget(&mut nodes, parent);
    }

    pub fn stats(&self) -> MetaStats {
        MetaStats {
            nodes: self.nodes.read().len() as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// Keeps the map within `max_nodes`: expired entries go first, then the oldest, down
    /// to three quarters of the bound so that this runs rarely.
    fn bound(&self, nodes: &mut Nodes) {
        if nodes.len() <= self.max_nodes {
            return;
        }
        let now = now_ms();
        nodes.retain(|_, n| self.fresh(n.newest(), now));
        let keep = self.max_nodes / 4 * 3;
        if nodes.len() > keep {
            let mut ages: Vec<(u64, Key)> = nodes.iter().map(|(k, n)| (n.newest(), *k)).collect();
            let cut = ages.len() - keep;
            ages.select_nth_unstable(cut);
            for (_, key) in &ages[..cut] {
                nodes.remove(key);
            }
        }
    }

    /// The snapshot of every fresh entry, for SOURCE's root `root`.
    pub fn encode(&self, root: Key) -> Vec<u8> {
        let now = now_ms();
        let nodes = self.nodes.read();
        let fresh: Vec<_> = nodes
            .iter()
            .filter(|(_, n)| self.fresh(n.newest(), now))
            .collect();
        let mut w = Writer::new(MAGIC);
        w.u64(root.0);
        w.u64(root.1);
        w.u64(fresh.len() as u64);
        for (key, n) in fresh {
            w.u64(key.0);
            w.u64(key.1);
            let attr_at = if self.fresh(n.attr_at, now) {
                n.attr_at
            } else {
                0
            };
            w.u64(attr_at);
            if attr_at != 0 {
                n.attr.write(&mut w);
            }
            match n.listing.as_deref().filter(|l| self.fresh(l.at, now)) {
                None => w.u8(0),
                Some(l) => {
                    w.u8(1);
                    w.u64(l.at);
                    w.bytes(&l.names);
                    w.u32(l.kids.len() as u32);
                    for k in &*l.kids {
                        w.u32(k.off);
                        w.u8(k.len);
                        w.u8(k.kind);
                        w.u64(k.ino);
                    }
                }
            }
            self.encode_xattrs(&mut w, n.xattrs.as_deref(), now);
        }
        w.finish()
    }

    fn encode_xattrs(&self, w: &mut Writer, x: Option<&Xattrs>, now: u64) {
        let names: Vec<&XattrEntry> = x
            .map(|x| x.names.iter().filter(|e| self.fresh(e.at, now)).collect())
            .unwrap_or_default();
        w.u32(names.len() as u32);
        for e in names {
            w.u64(e.at);
            w.bytes(&e.name);
            match &e.value {
                Ok(v) => {
                    w.u32(0);
                    w.bytes(v);
                }
                Err(errno) => w.u32(*errno as u32),
            }
        }
        match x
            .and_then(|x| x.list.as_ref())
            .filter(|(at, _)| self.fresh(*at, now))
        {
            None => w.u8(0),
            Some((at, list)) => {
                w.u8(1);
                w.u64(*at);
                w.bytes(list);
            }
        }
    }

    /// Loads a snapshot made for the same root; false (and nothing loaded) if it is not
    /// a whole, well-formed snapshot of this root.
    pub fn decode_into(&self, data: &[u8], root: Key) -> bool {
        match decode(data, root) {
            Some(loaded) => {
                let mut nodes = self.nodes.write();
                nodes.extend(loaded);
                self.bound(&mut nodes);
                true
            }
            None => false,
        }
    }

    /// Writes the snapshot to `path` (through a temp file and a rename, so a crash
    /// mid-write leaves no half file).
    pub fn save(&self, path: &Path, root: Key) -> io::Result<u64> {
        let data = self.encode(root);
        let tmp = path.with_extension("tmp");
        // The daemon runs with umask 0: the names of every user's files are in here.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&data)?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        Ok(data.len() as u64)
    }

    /// Reads and deletes the snapshot at `path`; the number of objects loaded (0 when
    /// there is none or it does not fit).
    pub fn load(&self, path: &Path, root: Key) -> usize {
        let Ok(data) = std::fs::read(path) else {
            return 0;
        };
        if let Err(e) = std::fs::remove_file(path) {
            // Left in place, it could later hide changes made through the mount.
            tracing::warn!(
                "cannot remove the metadata snapshot {}: {e}",
                path.display()
            );
            return 0;
        }
        let before = self.nodes.read().len();
        if !self.decode_into(&data, root) {
            tracing::info!("ignoring a damaged metadata snapshot {}", path.display());
            return 0;
        }
        self.nodes.read().len() - before
    }
}

/// A node's extended attributes as `encode_xattrs` wrote them (`None` inside: none).
fn decode_xattrs(r: &mut Reader<'_>) -> Option<Option<Box<Xattrs>>> {
    let count = r.u32()? as usize;
    let mut names = Vec::with_capacity(count.min(XATTRS_PER_NODE));
    for _ in 0..count {
        let at = r.u64()?;
        let name: Box<[u8]> = r.bytes()?.into();
        let value = match r.u32()? {
            0 => Ok(r.bytes()?.into()),
            errno => Err(i32::try_from(errno).ok()?),
        };
        names.push(XattrEntry { at, name, value });
    }
    let list = match r.u8()? {
        0 => None,
        1 => Some((r.u64()?, r.bytes()?.into())),
        _ => return None,
    };
    Some((!names.is_empty() || list.is_some()).then(|| Box::new(Xattrs { names, list })))
}

fn decode(data: &[u8], root: Key) -> Option<Vec<(Key, Node)>> {
    let mut r = Reader::open(data, MAGIC)?;
    if (r.u64()?, r.u64()?) != root {
        return None;
    }
    let count = r.u64()?;
    let mut out = Vec::with_capacity(count.min(1 << 24) as usize);
    for _ in 0..count {
        let key = (r.u64()?, r.u64()?);
        let attr_at = r.u64()?;
        let attr = if attr_at != 0 {
            Attr::read(&mut r)?
        } else {
            Attr::default()
        };
        let listing = match r.u8()? {
            0 => None,
            1 => {
                let at = r.u64()?;
                let names: Box<[u8]> = r.bytes()?.into();
                let n = r.u32()? as usize;
                let mut kids = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    kids.push(Kid {
                        off: r.u32()?,
                        len: r.u8()?,
                        kind: r.u8()?,
                        ino: r.u64()?,
                    });
                }
                let l = Listing {
                    at,
                    names,
                    kids: kids.into(),
                };
                if !l.valid() {
                    return None;
                }
                Some(Box::new(l))
            }
            _ => return None,
        };
        let xattrs = decode_xattrs(&mut r)?;
        out.push((
            key,
            Node {
                attr_at,
                attr,
                listing,
                xattrs,
                ..Node::default()
            },
        ));
    }
    r.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(dev: u64, ino: u64, size: i64, mode: u32) -> Stat {
        let mut st = sys::zeroed_stat();
        st.st_dev = dev;
        st.st_ino = ino;
        st.st_size = size;
        st.st_mode = mode;
        st.st_nlink = 1;
        st.st_mtime = 1_700_000_000;
        st.st_mtime_nsec = 123_456_789;
        st
    }

    fn entry(name: &str, ino: u64, kind: FileType) -> DirEntry {
        DirEntry {
            ino,
            kind,
            name: name.into(),
        }
    }

    /// A directory (1, 10) holding a.mkv (1, 11) and b.srt (1, 12), all cached.
    fn filled() -> MetaCache {
        let m = MetaCache::new(Duration::from_secs(3600), 1000);
        m.put_attr(&stat(1, 10, 4096, libc::S_IFDIR | 0o755));
        m.put_listing(
            (1, 10),
            &[
                entry("b.srt", 12, FileType::RegularFile),
                entry("a.mkv", 11, FileType::RegularFile),
            ],
        );
        m.put_attr(&stat(1, 11, 700 << 20, libc::S_IFREG | 0o644));
        m.put_attr(&stat(1, 12, 2000, libc::S_IFREG | 0o644));
        m
    }

    fn found_size(l: Lookup) -> Option<i64> {
        match l {
            Lookup::Found(_, st) => Some(st.st_size),
            _ => None,
        }
    }

    #[test]
    fn lookups_answer_found_missing_and_unknown() {
        let m = filled();
        assert_eq!(
            found_size(m.lookup((1, 10), "a.mkv".as_ref())),
            Some(700 << 20)
        );
        assert!(matches!(
            m.lookup((1, 10), "a.srt".as_ref()),
            Lookup::Missing
        ));
        // A directory with no listing: not known, never "missing".
        assert!(matches!(m.lookup((1, 11), "x".as_ref()), Lookup::Unknown));
        let st = m.attr((1, 12)).expect("cached");
        assert_eq!((st.st_dev, st.st_ino, st.st_size), (1, 12, 2000));
        assert_eq!(st.st_mtime_nsec, 123_456_789);
        let names: Vec<_> = m
            .listing((1, 10))
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["a.mkv", "b.srt"]);
    }

    #[test]
    fn a_name_resolves_only_with_the_childs_attributes() {
        let m = MetaCache::new(Duration::from_secs(3600), 1000);
        m.put_listing((1, 10), &[entry("sub", 20, FileType::Directory)]);
        assert!(matches!(m.lookup((1, 10), "sub".as_ref()), Lookup::Unknown));
    }

    #[test]
    fn changes_forget_what_they_change() {
        let m = filled();
        m.name_changed((1, 10), "a.mkv".as_ref());
        assert!(m.attr((1, 10)).is_none(), "the directory's mtime changed");
        assert!(
            m.attr((1, 11)).is_none(),
            "the name's object changed (nlink)"
        );
        assert!(matches!(
            m.lookup((1, 10), "a.mkv".as_ref()),
            Lookup::Unknown
        ));
        assert!(m.attr((1, 12)).is_some(), "the other name is untouched");
        m.changed((1, 12));
        assert!(m.attr((1, 12)).is_none());
    }

    #[test]
    fn extended_attributes_are_remembered_until_a_change() {
        let m = filled();
        assert_eq!(m.xattr((1, 11), b"security.selinux"), None);
        m.put_xattr(m.epoch(), (1, 11), b"security.selinux", Err(libc::ENODATA));
        m.put_xattr(m.epoch(), (1, 11), b"user.tag", Ok(b"v"));
        m.put_xattr_list(m.epoch(), (1, 11), b"user.tag\0");
        assert_eq!(
            m.xattr((1, 11), b"security.selinux"),
            Some(Err(libc::ENODATA))
        );
        assert_eq!(m.xattr((1, 11), b"user.tag"), Some(Ok(b"v".to_vec())));
        assert_eq!(m.xattr_list((1, 11)), Some(b"user.tag\0".to_vec()));
        m.changed((1, 11));
        assert_eq!(m.xattr((1, 11), b"user.tag"), None, "a change forgets them");
        assert_eq!(m.xattr_list((1, 11)), None);
        m.put_xattr(m.epoch(), (1, 12), b"user.tag", Ok(b"w"));
        m.hold((1, 12));
        assert_eq!(m.xattr((1, 12), b"user.tag"), None, "not while written");
    }

    #[test]
    fn an_answer_a_change_overtook_is_not_kept() {
        let m = filled();
        // An ACL read from SOURCE, then a setfacl through the mount before it is put.
        let since = m.epoch();
        m.changed((1, 11));
        m.put_xattr(since, (1, 11), b"system.posix_acl_access", Ok(b"old"));
        m.put_xattr_list(since, (1, 11), b"system.posix_acl_access\0");
        m.put_attr_since(since, &stat(1, 11, 1, libc::S_IFREG | 0o644));
        assert_eq!(m.xattr((1, 11), b"system.posix_acl_access"), None);
        assert_eq!(m.xattr_list((1, 11)), None);
        assert!(
            m.attr((1, 11)).is_none(),
            "nor the mode from before the change"
        );
        // A change to another name moves the count too: the put is dropped (a miss later,
        // never a stale answer).
        let since = m.epoch();
        m.name_changed((1, 10), "b".as_ref());
        m.put_xattr(since, (1, 11), b"user.tag", Ok(b"v"));
        assert_eq!(m.xattr((1, 11), b"user.tag"), None);
        let since = m.epoch();
        m.put_xattr(since, (1, 11), b"user.tag", Ok(b"v"));
        assert_eq!(m.xattr((1, 11), b"user.tag"), Some(Ok(b"v".to_vec())));
    }

    #[test]
    fn nothing_is_served_past_the_ttl() {
        let m = MetaCache::new(Duration::ZERO, 1000);
        m.put_attr(&stat(1, 11, 1, libc::S_IFREG));
        m.put_listing((1, 10), &[entry("a", 11, FileType::RegularFile)]);
        assert!(m.attr((1, 11)).is_none());
        assert!(matches!(m.lookup((1, 10), "a".as_ref()), Lookup::Unknown));
        assert!(m.listing((1, 10)).is_none());
    }

    #[test]
    fn the_bound_holds() {
        let m = MetaCache::new(Duration::from_secs(3600), 100);
        for ino in 0..1000 {
            m.put_attr(&stat(1, ino, 1, libc::S_IFREG));
            assert!(m.stats().nodes <= 100);
        }
        assert!(m.stats().nodes >= 75);
        // The newest survive.
        assert!(m.attr((1, 999)).is_some());
    }

    #[test]
    fn snapshot_round_trip_root_check_and_damage() {
        let m = filled();
        let data = m.encode((1, 10));
        let n = MetaCache::new(Duration::from_secs(3600), 1000);
        assert!(n.decode_into(&data, (1, 10)));
        assert_eq!(n.stats().nodes, 3);
        assert_eq!(
            found_size(n.lookup((1, 10), "a.mkv".as_ref())),
            Some(700 << 20)
        );
        assert!(matches!(n.lookup((1, 10), "zz".as_ref()), Lookup::Missing));
        assert_eq!(
            n.attr((1, 10)).map(|s| s.st_mode),
            Some(libc::S_IFDIR | 0o755)
        );

        let other = MetaCache::new(Duration::from_secs(3600), 1000);
        assert!(!other.decode_into(&data, (2, 10)), "another SOURCE's root");
        // Extended attributes travel too: a value, an errno and a list.
        m.put_xattr(m.epoch(), (1, 11), b"user.tag", Ok(b"v"));
        m.put_xattr(m.epoch(), (1, 11), b"security.selinux", Err(libc::ENODATA));
        m.put_xattr_list(m.epoch(), (1, 11), b"user.tag\0");
        let x = MetaCache::new(Duration::from_secs(3600), 1000);
        assert!(x.decode_into(&m.encode((1, 10)), (1, 10)));
        assert_eq!(x.xattr((1, 11), b"user.tag"), Some(Ok(b"v".to_vec())));
        assert_eq!(
            x.xattr((1, 11), b"security.selinux"),
            Some(Err(libc::ENODATA))
        );
        assert_eq!(x.xattr_list((1, 11)), Some(b"user.tag\0".to_vec()));
        for cut in [0, 10, data.len() / 2, data.len() - 1] {
            assert!(!other.decode_into(&data[..cut], (1, 10)), "cut at {cut}");
        }
        let mut flipped = data.clone();
        flipped[40] ^= 0x40;
        assert!(!other.decode_into(&flipped, (1, 10)));
        assert_eq!(other.stats().nodes, 0);
    }

    #[test]
    fn snapshot_file_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SNAPSHOT);
        filled().save(&path, (1, 10)).unwrap();
        let n = MetaCache::new(Duration::from_secs(3600), 1000);
        assert_eq!(n.load(&path, (1, 10)), 3);
        assert!(!path.exists(), "deleted once read");
        assert_eq!(n.load(&path, (1, 10)), 0);
    }

    #[test]
    fn an_unsorted_listing_in_a_snapshot_is_refused() {
        let m = MetaCache::new(Duration::from_secs(3600), 1000);
        m.put_listing(
            (1, 10),
            &[
                entry("a", 1, FileType::RegularFile),
                entry("b", 2, FileType::RegularFile),
            ],
        );
        let mut data = m.encode((1, 10));
        // Swap the two names' bytes ("ab" -> "ba") and reseal.
        let body = data.len() - 8;
        let pos = data[..body]
            .windows(2)
            .position(|w| w == b"ab")
            .expect("names");
        data[pos] = b'b';
        data[pos + 1] = b'a';
        let sum = crate::codec::fnv1a64(&data[..body]);
        data[body..].copy_from_slice(&sum.to_le_bytes());
        assert!(!MetaCache::new(Duration::from_secs(3600), 1000).decode_into(&data, (1, 10)));
    }
}
