//! The SSD cache as the overlay sees it: the on-disk `store`, the promoter feeding it,
//! the `index` of what it holds, the limits (`max_size`, `min_free`, `max_age`) and pins,
//! and the hit and miss counters.
//!
//! A media file's sidecars (its subtitles and `.nfo`, `policy::sidecar`) live and die
//! with it: the promoter copies them with it, a pin of it pins them, and when its copy is
//! evicted (for room, for `max_age`, by `cachefs evict`) its cached sidecars go too. A
//! sidecar whose media file is cached is never evicted on its own, or a player reading the
//! film from the SSD would wake the disks for its subtitles. What is cached beside a file
//! is found by listing its directory in `CACHE/data`, which mirrors SOURCE's tree.
//!
//! A cache-side failure never reaches a user (invariant 8): every method here logs and
//! degrades to "not cached". An I/O error on the cache or a cache directory removed under
//! the mount marks the cache unusable, and the mount serves SOURCE alone from then on.

pub mod index;
pub mod promoter;
pub mod store;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::config::{Config, MinFree};
use crate::policy::sidecar;
use index::{Entries, Meta};
pub use promoter::Gate;
use promoter::{Events, Job, Priority, Promoter};
use store::{Lookup, Provenance, Store, parent_of};

const INDEX_FILE: &str = "index";
const PINS_FILE: &str = "pins";
/// How often the cache directory's health (and copies' age) is checked.
const MAINTENANCE: Duration = Duration::from_secs(2);

/// The free space of the cache's filesystem as (available, total) bytes: what the ledger
/// weighs `min_free` and the size of a new copy against. The daemon's is statvfs of the
/// cache directory (`Store::space`); the core tests give the ledger a filesystem of their
/// own making, so that its arithmetic is checked to the byte.
pub trait FreeSpace: Send + Sync {
    fn space(&self) -> io::Result<(u64, u64)>;
}

impl FreeSpace for Store {
    fn space(&self) -> io::Result<(u64, u64)> {
        Store::space(self)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The ledger: what is cached, what is being copied, and the limits. The promoter asks
/// it for room before every copy.
/// Lock order: `space`, then `pins`, then `entries`; none is held across an eviction.
pub struct Ledger {
    store: Arc<Store>,
    dir: PathBuf,
    /// The cache filesystem's free space (statvfs, unless a test gave another).
    free: Arc<dyn FreeSpace>,
    entries: Mutex<Entries>,
    /// Sizes of copies in progress, counted against the limits before they exist.
    reserved: AtomicU64,
    /// Serialises reservations: the space check and the allocation are one step.
    space: Mutex<()>,
    max_size: Option<u64>,
    min_free: MinFree,
    max_age: Option<Duration>,
    /// Pinned paths, cached or not yet; kept in `CACHE/pins`.
    pins: Mutex<HashSet<PathBuf>>,
    /// Bumped at every publish, so open handles reading from SOURCE notice a new copy
    /// with one atomic load per read.
    generation: AtomicU64,
    pub evictions: AtomicU64,
    usable: AtomicBool,
    /// Files already reported as too large for the limits (logged once each).
    too_big: Mutex<HashSet<PathBuf>>,
}

impl Ledger {
    pub fn generation(&self) -> u64 {
        // SeqCst, as the bump in `published` and the promoter's cancel flag: see the
        // promoter's publish step.
        self.generation.load(Ordering::SeqCst)
    }

    /// (files, bytes, pinned paths).
    pub fn totals(&self) -> (u64, u64, u64) {
        let pinned = self.pins.lock().len() as u64;
        let e = self.entries.lock();
        (e.len(), e.bytes(), pinned)
    }

    pub fn usable(&self) -> bool {
        self.usable.load(Ordering::Relaxed)
    }

    /// Switches the mount to serving SOURCE only.
    pub fn mark_unusable(&self, why: &str) {
        if self.usable.swap(false, Ordering::Relaxed) {
            tracing::error!("cache unusable, serving the source only from now on: {why}");
        }
    }

    fn min_free_bytes(&self, total: u64) -> u64 {
        match self.min_free {
            MinFree::Bytes(b) => b,
            MinFree::Percent(p) => (total as u128 * p as u128 / 100) as u64,
        }
    }

    /// `min_free` in bytes for the cache's filesystem now.
    pub fn min_free_now(&self) -> u64 {
        self.free
            .space()
            .map_or(0, |(_, total)| self.min_free_bytes(total))
    }

    /// The cache filesystem's (available, total) bytes now; (0, 0) if statvfs fails.
    pub fn space_now(&self) -> (u64, u64) {
        self.free.space().unwrap_or((0, 0))
    }

    fn forget(&self, rel: &Path) {
        self.entries.lock().remove(rel);
    }

    /// Drops one copy to make room (or because it is too old), and a media file's
    /// sidecars with it.
    fn evict(&self, rel: &Path, why: &str) {
        if !self.evict_one(rel, why) {
            return;
        }
        for s in self.sidecars_going_with(rel) {
            self.evict_one(&s, &format!("with {}", rel.display()));
        }
    }

    fn evict_one(&self, rel: &Path, why: &str) -> bool {
        match self.store.remove(rel) {
            Ok(_) => {
                self.forget(rel);
                self.evictions.fetch_add(1, Ordering::Relaxed);
                tracing::info!("evicted {} ({why})", rel.display());
                true
            }
            Err(e) => {
                self.mark_unusable(&format!("cannot remove {}: {e}", rel.display()));
                false
            }
        }
    }

    /// The least recently used copy that may be evicted for room: unpinned, and not a
    /// sidecar whose media file is cached (it goes with that file).
    fn victim(&self) -> Option<PathBuf> {
        let mut spared = HashSet::new();
        loop {
            let v = self.entries.lock().victim_where(|p| !spared.contains(p))?;
            if !self.held_by_media(&v) {
                return Some(v);
            }
            spared.insert(v);
        }
    }

    /// Whether `rel` is a sidecar and a media file it belongs to is cached.
    fn held_by_media(&self, rel: &Path) -> bool {
        let (Some(name), dir) = (rel.file_name(), parent_of(rel)) else {
            return false;
        };
        if !sidecar::is_sidecar(name) {
            return false;
        }
        let names = self.store.copies_in(dir).unwrap_or_default();
        let entries = self.entries.lock();
        names
            .iter()
            .any(|m| sidecar::belongs(name, m) && entries.get(&dir.join(m)).is_some())
    }

    /// The cached sidecars that go when the media file `rel`'s copy goes: those not
    /// pinned, nor belonging to another media file still cached (`Film.srt` of both
    /// `Film.mkv` and `Film.avi`).
    fn sidecars_going_with(&self, rel: &Path) -> Vec<PathBuf> {
        let (Some(name), dir) = (rel.file_name(), parent_of(rel)) else {
            return Vec::new();
        };
        if sidecar::is_sidecar(name) {
            return Vec::new();
        }
        let names = match self.store.copies_in(dir) {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!("cannot list the copies beside {}: {e}", rel.display());
                return Vec::new();
            }
        };
        let entries = self.entries.lock();
        let cached = |n: &OsStr| entries.get(&dir.join(n));
        sidecar::of(name, names.iter().map(|n| n.as_os_str()))
            .into_iter()
            .filter(|s| !cached(s).is_some_and(|m| m.pinned))
            .filter(|s| {
                !names
                    .iter()
                    .any(|m| m.as_os_str() != name && sidecar::belongs(s, m) && cached(m).is_some())
            })
            .map(|s| dir.join(s))
            .collect()
    }

    fn evict_older_than(&self, age: Duration) {
        let before = now().saturating_sub(age.as_secs());
        let old = self.entries.lock().older_than(before);
        for rel in old {
            // Gone already with its media file, or kept by it: it goes when that goes.
            if self.entries.lock().get(&rel).is_none() || self.held_by_media(&rel) {
                continue;
            }
            self.evict(&rel, "not opened within max_age");
        }
    }

    fn save_pins(&self) {
        let mut data = Vec::new();
        for p in self.pins.lock().iter() {
            data.extend_from_slice(p.as_os_str().as_bytes());
            data.push(0);
        }
        if let Err(e) = self.store.write_file(PINS_FILE, &data) {
            tracing::warn!("cannot save pins: {e}");
        }
    }

    fn load_pins(&self) {
        let data = match self.store.read_file(PINS_FILE) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return,
            Err(e) => {
                tracing::warn!("cannot read pins: {e}");
                return;
            }
        };
        let mut pins = self.pins.lock();
        let mut entries = self.entries.lock();
        for p in data.split(|&b| b == 0).filter(|p| !p.is_empty()) {
            let p = PathBuf::from(OsStr::from_bytes(p));
            if store::components(&p).is_some() {
                entries.set_pinned(&p, true);
                pins.insert(p);
            }
        }
    }
}

impl Events for Ledger {
    fn reserve(
        &self,
        rel: &Path,
        size: u64,
        alloc: &mut dyn FnMut() -> io::Result<()>,
    ) -> Result<(), String> {
        if !self.usable() {
            return Err("the cache is unusable".into());
        }
        let _one_at_a_time = self.space.lock();
        let too_big = |why: String| {
            if self.too_big.lock().insert(rel.to_path_buf()) {
                tracing::warn!("not promoting {}: {why}", rel.display());
            }
            Err(why)
        };
        // Would it fit once every unpinned copy were gone? If not, evict nothing.
        let (avail, total) = self.free.space().map_err(|e| e.to_string())?;
        let min_free = self.min_free_bytes(total);
        // `reserved` is read under the entries lock: `published` moves a copy from one to
        // the other under it, so the two never miss a copy between them.
        let (bytes, pinned_bytes, reserved) = {
            let e = self.entries.lock();
            (
                e.bytes(),
                e.pinned_bytes(),
                self.reserved.load(Ordering::Relaxed),
            )
        };
        if let Some(max) = self.max_size
            && size + pinned_bytes + reserved > max
        {
            return too_big(format!(
                "{size} bytes do not fit in max_size={max} beside {pinned_bytes} pinned bytes"
            ));
        }
        if avail + (bytes - pinned_bytes) < size + min_free {
            return too_big(format!(
                "{size} bytes do not fit on the cache filesystem while keeping min_free={min_free} bytes free"
            ));
        }
        loop {
            let used = {
                let e = self.entries.lock();
                e.bytes() + self.reserved.load(Ordering::Relaxed)
            };
            let fits_size = self.max_size.is_none_or(|max| used + size <= max);
            let (avail, _) = self.free.space().map_err(|e| e.to_string())?;
            let fits_free = avail >= size + min_free;
            if fits_size && fits_free {
                match alloc() {
                    Ok(()) => {
                        self.reserved.fetch_add(size, Ordering::Relaxed);
                        return Ok(());
                    }
                    Err(e) if e.raw_os_error() != Some(libc::ENOSPC) => return Err(e.to_string()),
                    Err(_) => {} // the filesystem disagrees with statvfs: make more room
                }
            }
            let Some(victim) = self.victim() else {
                return Err(format!("no room for {size} bytes: nothing left to evict"));
            };
            self.evict(&victim, "making room");
        }
    }

    fn release(&self, size: u64, no_space: bool) {
        self.reserved.fetch_sub(size, Ordering::Relaxed);
        if no_space && let Some(victim) = self.victim() {
            self.evict(&victim, "the cache filesystem ran out of space");
        }
    }

    fn published(&self, rel: &Path, _prov: &Provenance, size: u64) {
        let pinned = self.pins.lock().contains(rel);
        // From reserved to cached in one step under the entries lock, where `reserve`
        // reads both: a reservation read between two separate steps saw the copy in
        // neither and let the cache exceed max_size by one copy.
        let mut entries = self.entries.lock();
        entries.insert(
            rel.to_path_buf(),
            Meta {
                size,
                last_open: now(),
                pinned,
            },
        );
        self.reserved.fetch_sub(size, Ordering::Relaxed);
        drop(entries);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn withdrawn(&self, rel: &Path) {
        if self.store.remove(rel).is_ok() {
            self.forget(rel);
        }
    }

    fn usable(&self) -> bool {
        Ledger::usable(self)
    }
}

pub struct Cache {
    store: Arc<Store>,
    pub promoter: Promoter,
    pub ledger: Arc<Ledger>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Copies whose source's ctime alone changed, to compare with it in the background.
    verify: crossbeam_channel::Sender<PathBuf>,
    /// Those queued or being compared, so that each is compared once.
    verifying: Arc<Mutex<HashSet<PathBuf>>>,
}

/// The background re-check of copies whose source's ctime alone changed (a chmod or
/// chown over the library, or a rewrite that restored the mtime): each is compared with
/// its source byte for byte, kept if identical, dropped if not. SOURCE is served
/// meanwhile. Ends when the cache is dropped.
fn spawn_verifier(
    source: std::os::fd::OwnedFd,
    store: Arc<Store>,
    ledger: Arc<Ledger>,
    verifying: Arc<Mutex<HashSet<PathBuf>>>,
) -> io::Result<crossbeam_channel::Sender<PathBuf>> {
    let (tx, rx) = crossbeam_channel::unbounded::<PathBuf>();
    std::thread::Builder::new()
        .name("cache-verify".into())
        .spawn(move || {
            for rel in rx {
                let r = store::open_below(std::os::fd::AsFd::as_fd(&source), &rel)
                    .and_then(|src| store.reverify(&src, &rel));
                match r {
                    Ok(true) => {
                        tracing::info!(
                            "kept the copy of {}: its source's metadata changed, not its bytes",
                            rel.display()
                        );
                        // Handles reading SOURCE may move to the copy again.
                        ledger.generation.fetch_add(1, Ordering::Release);
                    }
                    Ok(false) => {
                        tracing::info!("dropped the copy of {}: its source changed", rel.display());
                        ledger.forget(&rel);
                    }
                    Err(e) => {
                        tracing::warn!("cannot re-check the copy of {}: {e}", rel.display());
                        let _ = store.remove(&rel);
                        ledger.forget(&rel);
                    }
                }
                verifying.lock().remove(&rel);
            }
        })?;
    Ok(tx)
}

impl Cache {
    /// Opens the cache directory (taking its lock), loads the index (or rebuilds it from
    /// `CACHE/data`), and starts the promoter, which reads SOURCE through `source`, an
    /// `O_PATH` descriptor of its root.
    pub fn open(cfg: &Config, source: std::os::fd::OwnedFd) -> io::Result<Arc<Cache>> {
        Cache::open_with(cfg, source, None)
    }

    /// `open`, with the ledger reading the cache filesystem's free space from `free`
    /// instead of statvfs when it is given (the core tests' seam).
    pub fn open_with(
        cfg: &Config,
        source: std::os::fd::OwnedFd,
        free: Option<Arc<dyn FreeSpace>>,
    ) -> io::Result<Arc<Cache>> {
        let store = Arc::new(Store::open(&cfg.cache)?);
        let entries = load_index(&store)?;
        let ledger = Arc::new(Ledger {
            store: store.clone(),
            dir: cfg.cache.clone(),
            free: free.unwrap_or_else(|| store.clone()),
            entries: Mutex::new(entries),
            reserved: AtomicU64::new(0),
            space: Mutex::new(()),
            max_size: cfg.max_size,
            min_free: cfg.min_free,
            max_age: cfg.max_age,
            pins: Mutex::new(HashSet::new()),
            generation: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            usable: AtomicBool::new(true),
            too_big: Mutex::new(HashSet::new()),
        });
        ledger.load_pins();
        let verifying = Arc::new(Mutex::new(HashSet::new()));
        let verify = spawn_verifier(
            source.try_clone()?,
            store.clone(),
            ledger.clone(),
            verifying.clone(),
        )?;
        let promoter = Promoter::start(
            source,
            store.clone(),
            ledger.clone(),
            cfg.promote_threads,
            cfg.promote_bw,
        )?;
        let cache = Arc::new(Cache {
            store,
            promoter,
            ledger,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            verify,
            verifying,
        });
        // Pinned files whose copy is missing (never made, or dropped) come back.
        let missing: Vec<PathBuf> = {
            let pins = cache.ledger.pins.lock();
            let entries = cache.ledger.entries.lock();
            pins.iter()
                .filter(|p| entries.get(p).is_none())
                .cloned()
                .collect()
        };
        for p in missing {
            cache.promote(&p, Priority::Explicit);
        }
        let weak = Arc::downgrade(&cache);
        std::thread::Builder::new()
            .name("cache-maint".into())
            .spawn(move || {
                while let Some(c) = weak.upgrade() {
                    c.maintain();
                    drop(c);
                    std::thread::sleep(MAINTENANCE);
                }
            })?;
        Ok(cache)
    }

    /// Health check and age-based eviction, every few seconds.
    fn maintain(&self) {
        if self.ledger.usable() && !self.store.intact(&self.ledger.dir) {
            self.ledger.mark_unusable(&format!(
                "cache directory {} was removed or replaced",
                self.ledger.dir.display()
            ));
        }
        if let Some(age) = self.ledger.max_age
            && self.ledger.usable()
        {
            self.ledger.evict_older_than(age);
        }
    }

    /// The valid copy of `rel`, if there is one; `source` is what the source is now (its
    /// stat, or the metadata cache's attributes for it).
    pub fn lookup(&self, rel: &Path, source: &Provenance) -> Option<File> {
        if !self.ledger.usable() {
            return None;
        }
        match self.store.lookup(rel, source) {
            Ok(Lookup::Hit(f)) => {
                self.ledger.entries.lock().touch(rel, now());
                Some(f)
            }
            Ok(Lookup::Recheck) => {
                if self.verifying.lock().insert(rel.to_path_buf()) {
                    let _ = self.verify.send(rel.to_path_buf());
                }
                None
            }
            Ok(Lookup::Miss) => {
                self.ledger.forget(rel);
                None
            }
            // The daemon short of descriptors is no fault of the cache: serve SOURCE.
            Err(e) if crate::source::is_exhaustion(&e) => {
                tracing::debug!("lookup of {}: {e}", rel.display());
                None
            }
            Err(e) => {
                self.ledger
                    .mark_unusable(&format!("lookup of {}: {e}", rel.display()));
                None
            }
        }
    }

    /// The source of `rel` is about to change through the mount: stop its copy and drop
    /// the published one, before the change is made.
    pub fn invalidate(&self, rel: &Path) {
        self.promoter.cancel(rel);
        match self.store.remove(rel) {
            Ok(true) => tracing::debug!("dropped the copy of {}", rel.display()),
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot drop the copy of {}: {e}", rel.display()),
        }
        self.ledger.forget(rel);
    }

    /// Everything at or below `rel` is being removed or replaced.
    pub fn invalidate_below(&self, rel: &Path) {
        self.promoter.cancel_below(rel);
        self.store.remove_tree(rel);
        let gone = self.ledger.entries.lock().below(rel);
        for p in gone {
            self.ledger.forget(&p);
        }
    }

    /// `from` was renamed to `to` through the mount: the copies move along (they still
    /// match their source: a rename changes neither size, mtime nor inode), and so do pins.
    /// `rel`'s source, now `st`, changed in its metadata only, through the mount.
    pub fn metadata_changed(&self, rel: &Path, st: &rustix::fs::Stat) {
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return;
        }
        if let Err(e) = self.store.metadata_changed(rel, st) {
            tracing::debug!("cannot refresh the provenance of {}: {e}", rel.display());
        }
    }

    pub fn renamed(&self, from: &Path, to: &Path) {
        self.promoter.cancel_below(from);
        self.promoter.cancel_below(to);
        // Whatever was cached under the target name was replaced.
        self.invalidate_below(to);
        let moved = self.store.rename(from, to);
        let mut entries = self.ledger.entries.lock();
        for p in entries.below(from) {
            if let Some(m) = entries.remove(&p)
                && moved.is_ok()
                && let Ok(rest) = p.strip_prefix(from)
            {
                entries.insert(to.join(rest), m);
            }
        }
        drop(entries);
        let mut pins = self.ledger.pins.lock();
        let renamed: Vec<PathBuf> = pins
            .iter()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        for p in &renamed {
            pins.remove(p);
            if let Ok(rest) = p.strip_prefix(from) {
                pins.insert(to.join(rest));
            }
        }
        drop(pins);
        if !renamed.is_empty() {
            self.ledger.save_pins();
        }
        if let Err(e) = moved
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::warn!("cannot move the copies under {}: {e}", from.display());
            self.store.remove_tree(from);
        }
    }

    /// See `promoter::Gate`.
    pub fn set_gate(&self, gate: Arc<dyn Gate>) {
        self.promoter.set_gate(gate);
    }

    pub fn promote(&self, rel: &Path, priority: Priority) -> Arc<Job> {
        self.promoter.request(rel, priority)
    }

    /// Pins files: they are promoted (if not cached) and never evicted.
    pub fn pin(&self, files: &[PathBuf]) -> Vec<Arc<Job>> {
        {
            let mut pins = self.ledger.pins.lock();
            let mut entries = self.ledger.entries.lock();
            for f in files {
                pins.insert(f.clone());
                entries.set_pinned(f, true);
            }
        }
        self.ledger.save_pins();
        let missing: Vec<&PathBuf> = {
            let entries = self.ledger.entries.lock();
            files.iter().filter(|f| entries.get(f).is_none()).collect()
        };
        missing
            .into_iter()
            .map(|f| self.promote(f, Priority::Explicit))
            .collect()
    }

    /// Unpins everything at or below each path, and the sidecars of each media file
    /// unpinned; returns how many pins went.
    pub fn unpin(&self, paths: &[PathBuf]) -> usize {
        let mut n = 0;
        {
            let mut pins = self.ledger.pins.lock();
            let mut entries = self.ledger.entries.lock();
            let below: Vec<&PathBuf> = pins
                .iter()
                .filter(|p| paths.iter().any(|q| p.starts_with(q)))
                .collect();
            let gone: Vec<PathBuf> = pins
                .iter()
                .filter(|p| {
                    below.contains(p)
                        || below.iter().any(|m| {
                            parent_of(p) == parent_of(m)
                                && matches!((p.file_name(), m.file_name()),
                                    (Some(s), Some(m)) if sidecar::belongs(s, m))
                        })
                })
                .cloned()
                .collect();
            for p in gone {
                pins.remove(&p);
                entries.set_pinned(&p, false);
                n += 1;
            }
        }
        self.ledger.save_pins();
        n
    }

    /// Drops the copies (and pins) at or below each path, and the sidecars of each media
    /// file dropped; the source is untouched.
    pub fn evict(&self, paths: &[PathBuf]) -> u64 {
        self.unpin(paths);
        let mut n = 0;
        for p in paths {
            let below = self.ledger.entries.lock().below(p);
            n += below.len() as u64;
            self.invalidate_below(p);
            for media in &below {
                for s in self.ledger.sidecars_going_with(media) {
                    self.invalidate(&s);
                    n += 1;
                }
            }
        }
        self.ledger.evictions.fetch_add(n, Ordering::Relaxed);
        n
    }

    /// A clean stop: copies in progress are cancelled and their temp files removed, and
    /// the index is written for a fast next start.
    pub fn shutdown(&self) {
        self.promoter.stop(Duration::from_secs(3));
        if let Err(e) = self.store.clean_tmp() {
            tracing::warn!("cannot clean the cache's tmp/: {e}");
        }
        let data = self.ledger.entries.lock().encode();
        match self.store.write_file(INDEX_FILE, &data) {
            Ok(()) => tracing::info!(
                "saved the cache index ({} copies)",
                self.ledger.entries.lock().len()
            ),
            Err(e) => tracing::warn!("cannot save the cache index: {e}"),
        }
    }
}

/// The index from a clean stop, or else one rebuilt from `CACHE/data`. The file is removed
/// once read: if this run dies, the next one must not trust a stale index.
fn load_index(store: &Store) -> io::Result<Entries> {
    let why = match store.read_file(INDEX_FILE) {
        Ok(data) => match Entries::decode(&data) {
            Some(e) => {
                store.remove_file(INDEX_FILE)?;
                tracing::info!("cache index loaded: {} copies", e.len());
                return Ok(e);
            }
            None => "the index file is damaged".to_string(),
        },
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            "no index file (first start, or the last run did not stop cleanly)".to_string()
        }
        Err(e) => format!("cannot read the index file: {e}"),
    };
    let mut found = store.scan()?;
    found.sort_by_key(|(_, _, mtime)| *mtime);
    let mut e = Entries::default();
    for (rel, size, mtime) in found {
        e.insert(
            rel,
            Meta {
                size,
                last_open: mtime.max(0) as u64,
                pinned: false,
            },
        );
    }
    tracing::info!(
        "{why}: rebuilt the cache index from the cache directory: {} copies",
        e.len()
    );
    store.remove_file(INDEX_FILE)?;
    Ok(e)
}
