//! Locks taken through the mount: POSIX record locks (fcntl F_SETLK, F_SETLKW, F_GETLK,
//! lockf, and OFD locks taken on the mount) and flock(2), which the kernel sends to the
//! daemon once it has agreed to FUSE_POSIX_LOCKS and FUSE_FLOCK_LOCKS.
//!
//! Why the daemon holds them: one source file can have several kernel inodes (a writer
//! opened beside passthrough readers lands on an alias, see `file.rs`), and the kernel
//! keeps its own locks per inode, so a reader's lock and a later writer's would never
//! meet. Here every lock is held on the SOURCE file itself, through a descriptor the
//! daemon opens per source object, lock owner and kind: POSIX locks as open file
//! description (OFD) locks on the owner's descriptor, flock as flock(2) on a descriptor
//! of its own. The source's kernel then detects conflicts and splits, merges and
//! upgrades ranges exactly as on a plain directory; flock and POSIX locks never conflict
//! with each other (Linux), and processes locking SOURCE directly meet them too.
//!
//! Owners: a POSIX owner is the kernel's lock_owner (one per process's descriptor table,
//! or the open file for an OFD lock taken on the mount); an flock owner is the open file
//! (the request carries FUSE_LK_FLOCK). A POSIX owner's locks on a file go when it
//! closes any descriptor of the file (FLUSH carries the owner); an flock owner's at
//! LOCK_UN or when the open file is released (RELEASE with FUSE_RELEASE_FLOCK_UNLOCK);
//! and every owner that locked through a handle goes once no handle it locked through
//! is open (an OFD lock taken on the mount has no FLUSH of its owner).
//!
//! A wait (F_SETLKW, flock without LOCK_NB) never holds a FUSE worker: its reply moves to
//! a thread of its own that tries again every `RETRY`, and answers EINTR as soon as the
//! waiting thread has a signal to take (or is gone), so the caller stays killable and
//! interruptible (the kernel restarts the call where the signal allows it).
//!
//! F_GETLK reports the conflicting lock's type and range as the source's kernel has
//! them, and the pid of the owner holding it (from that owner's lock requests; an OFD
//! lock reports none), so each owner's ranges are kept here too, as the kernel keeps them.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rustix::fs::{FlockOperation, Mode, OFlags};

use super::Overlay;
use crate::fdio;
use crate::sys::{self, LOCK_TO_EOF, RangeLock};

/// How often a waiting lock request tries again.
const RETRY: Duration = Duration::from_millis(20);

/// A lock request as the kernel sends it: `typ` F_RDLCK, F_WRLCK or F_UNLCK on the bytes
/// `start..=end` (`end` = `sys::LOCK_TO_EOF`: to the end of the file); `pid` is the
/// requesting process's, reported to F_GETLK while the lock is held; `flock` for flock(2)
/// (whole file, owner the open file).
#[derive(Debug, Clone, Copy)]
pub struct LockRequest {
    pub owner: u64,
    pub typ: i32,
    pub start: u64,
    pub end: u64,
    pub pid: u32,
    pub flock: bool,
}

/// F_GETLK's answer: the first conflicting lock and its holder's pid, or `typ` F_UNLCK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockInfo {
    pub typ: i32,
    pub start: u64,
    pub end: u64,
    pub pid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Posix,
    Flock,
}

/// A source object: (st_dev, st_ino).
type Obj = (u64, u64);
/// A lock owner of one kind.
type Key = (u64, Kind);

/// Every lock held through the mount, by source object and owner.
#[derive(Default)]
pub(super) struct Locks {
    table: Mutex<Table>,
}

impl Locks {
    /// Whether no lock is held through the mount (a live restart carries none yet).
    pub(super) fn is_empty(&self) -> bool {
        self.table.lock().objects.values().all(|o| o.is_empty())
    }
}

#[derive(Default)]
struct Table {
    objects: HashMap<Obj, HashMap<Key, Arc<Owner>>>,
    /// The object of each handle a lock was asked for through.
    handles: HashMap<u64, Obj>,
}

/// One owner's locks of one kind on one object: held on `fd`, the owner's own open file
/// description of the source file.
struct Owner {
    kind: Kind,
    fd: OwnedFd,
    state: Mutex<OwnerState>,
}

#[derive(Default)]
struct OwnerState {
    /// The pid of its last lock request, for F_GETLK.
    pid: u32,
    /// Its locks as the source's kernel holds them: sorted, disjoint, adjacent ranges of
    /// one type merged. For flock, the whole file or nothing.
    held: Vec<Held>,
    /// The handles it asked for locks through.
    fhs: Vec<u64>,
    /// Taken out of the table (its locks released): a request that found it before
    /// must look again.
    gone: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    start: u64,
    end: u64,
    typ: i32,
}

impl Owner {
    /// Sets `typ` on `start..=end` on the source, without waiting (EAGAIN on a conflict).
    fn set(&self, typ: i32, start: u64, end: u64) -> io::Result<()> {
        match self.kind {
            Kind::Posix => sys::ofd_setlk(self.fd.as_fd(), typ, start, end),
            Kind::Flock => {
                let op = match typ {
                    libc::F_RDLCK => FlockOperation::NonBlockingLockShared,
                    libc::F_WRLCK => FlockOperation::NonBlockingLockExclusive,
                    libc::F_UNLCK => FlockOperation::Unlock,
                    _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
                };
                Ok(rustix::fs::flock(&self.fd, op)?)
            }
        }
    }

    /// Releases all its locks (closing the descriptor would too, but a request in flight
    /// may still hold it for a moment).
    fn release_all(&self, st: &mut OwnerState) {
        st.gone = true;
        st.held.clear();
        if let Err(e) = self.set(libc::F_UNLCK, 0, LOCK_TO_EOF) {
            tracing::warn!("cannot release locks on a source file: {e}");
        }
    }
}

/// `held` after a lock of `typ` (F_UNLCK: none) is set on `start..=end` by its owner, as
/// the kernel applies a POSIX lock: what it covers is replaced, ranges around it are cut,
/// adjacent ranges of one type are merged.
fn apply(held: &mut Vec<Held>, typ: i32, start: u64, end: u64) {
    let mut out = Vec::with_capacity(held.len() + 2);
    for h in held.drain(..) {
        if h.end < start || h.start > end {
            out.push(h);
            continue;
        }
        if h.start < start {
            out.push(Held {
                end: start - 1,
                ..h
            });
        }
        if h.end > end {
            out.push(Held {
                start: end.saturating_add(1),
                ..h
            });
        }
    }
    if typ != libc::F_UNLCK {
        out.push(Held { start, end, typ });
    }
    out.sort_by_key(|h| h.start);
    for h in out {
        match held.last_mut() {
            Some(last) if last.typ == h.typ && last.end.checked_add(1) == Some(h.start) => {
                last.end = h.end
            }
            _ => held.push(h),
        }
    }
}

fn busy(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES))
}

impl Locks {
    fn find(&self, obj: Obj, key: Key) -> Option<Arc<Owner>> {
        self.table.lock().objects.get(&obj)?.get(&key).cloned()
    }

    /// The owner's entry, made (with `open`, outside the table's lock) if it has none.
    fn get_or_open(
        &self,
        obj: Obj,
        key: Key,
        fh: u64,
        open: impl FnOnce() -> io::Result<OwnedFd>,
    ) -> io::Result<Arc<Owner>> {
        if let Some(o) = self.find(obj, key) {
            self.table.lock().handles.insert(fh, obj);
            return Ok(o);
        }
        let fresh = Arc::new(Owner {
            kind: key.1,
            fd: open()?,
            state: Mutex::new(OwnerState::default()),
        });
        let mut t = self.table.lock();
        t.handles.insert(fh, obj);
        // Another request of the same owner may have made one meanwhile: one wins.
        Ok(t.objects
            .entry(obj)
            .or_default()
            .entry(key)
            .or_insert(fresh)
            .clone())
    }

    /// Takes `owner` out of the table (if it is still the entry for `key`).
    fn remove(&self, obj: Obj, key: Key, owner: &Arc<Owner>) {
        let mut t = self.table.lock();
        let Some(owners) = t.objects.get_mut(&obj) else {
            return;
        };
        if owners.get(&key).is_some_and(|o| Arc::ptr_eq(o, owner)) {
            owners.remove(&key);
        }
        if owners.is_empty() {
            t.objects.remove(&obj);
        }
    }

    /// The pid of the owner (other than `except`) holding `c`, a POSIX lock on `obj`:
    /// the one holding exactly that range, else one holding an overlapping range of its
    /// type.
    fn holder_pid(&self, obj: Obj, except: u64, c: &RangeLock) -> Option<u32> {
        let owners: Vec<Arc<Owner>> = {
            let t = self.table.lock();
            let all = t.objects.get(&obj)?;
            all.iter()
                .filter(|((owner, kind), _)| *kind == Kind::Posix && *owner != except)
                .map(|(_, o)| o.clone())
                .collect()
        };
        let mut overlapping = None;
        for o in owners {
            let st = o.state.lock();
            for h in &st.held {
                if h.typ != c.typ || h.end < c.start || h.start > c.end {
                    continue;
                }
                if h.start == c.start && h.end == c.end {
                    return Some(st.pid);
                }
                overlapping.get_or_insert(st.pid);
            }
        }
        overlapping
    }
}

impl Overlay {
    /// The source descriptor and source object of an open file handle.
    fn lock_target(&self, fh: u64) -> io::Result<(Arc<OwnedFd>, Obj)> {
        let fd = self.source_of(&*self.files.get(fh)?)?;
        let st = rustix::fs::fstat(&*fd)?;
        Ok((fd, (st.st_dev, st.st_ino)))
    }

    /// A new open file description of the source file `src` is open as, by the daemon
    /// (whose identity may open it whatever its mode), for one owner's locks: read-write
    /// for POSIX locks (a write lock needs a writable descriptor, a read lock a readable
    /// one), else what the source allows; never blocking (a lease) and never a
    /// controlling terminal.
    fn open_lock_fd(&self, kind: Kind, src: BorrowedFd<'_>) -> io::Result<OwnedFd> {
        let proc = fdio::proc_path(src);
        let modes = match kind {
            Kind::Posix => [OFlags::RDWR, OFlags::RDONLY, OFlags::WRONLY],
            Kind::Flock => [OFlags::RDONLY, OFlags::WRONLY, OFlags::RDWR],
        };
        let mut first = None;
        for mode in modes {
            let flags = mode | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
            let open = || Ok(rustix::fs::open(&proc, flags, Mode::empty())?);
            match self.inodes.fds.retry(open) {
                Ok(fd) => return Ok(fd),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        let e = first.unwrap_or_else(|| io::Error::from_raw_os_error(libc::ENOLCK));
        tracing::warn!("cannot open a source file to hold a lock on it: {e}");
        Err(io::Error::from_raw_os_error(libc::ENOLCK))
    }

    /// F_GETLK through handle `fh` for `owner`: the first lock of another owner (through
    /// the mount or on SOURCE directly) that a `typ` lock on `start..=end` would conflict
    /// with.
    pub fn getlk(
        &self,
        fh: u64,
        owner: u64,
        typ: i32,
        start: u64,
        end: u64,
    ) -> io::Result<LockInfo> {
        let (src, obj) = self.lock_target(fh)?;
        let mine = self.locks.find(obj, (owner, Kind::Posix));
        // The owner's own description, whose locks never conflict with it; without
        // one, the handle's own, which holds no lock.
        let fd = mine.as_ref().map_or(src.as_fd(), |o| o.fd.as_fd());
        let Some(c) = sys::getlk(fd, true, typ, start, end)? else {
            return Ok(LockInfo {
                typ: libc::F_UNLCK,
                start,
                end,
                pid: 0,
            });
        };
        // A lock nobody took through the mount: a process's lock on SOURCE reports its
        // pid to F_GETLK (an OFD lock, -1, shows as none).
        let pid = self.locks.holder_pid(obj, owner, &c).or_else(|| {
            sys::getlk(src.as_fd(), false, typ, start, end)
                .ok()
                .flatten()
                .filter(|o| o.pid > 0 && o.start <= c.end && c.start <= o.end)
                .map(|o| o.pid as u32)
        });
        Ok(LockInfo {
            typ: c.typ,
            start: c.start,
            end: c.end,
            pid: pid.unwrap_or(0),
        })
    }

    /// F_SETLK (or flock with LOCK_NB) through handle `fh`: EAGAIN on a conflict.
    pub fn setlk(&self, fh: u64, req: &LockRequest) -> io::Result<()> {
        self.try_setlk(fh, req, false)
    }

    /// F_SETLKW (or flock without LOCK_NB) through handle `fh`, for the waiting thread
    /// `waiter`: `done` gets the outcome, at once if there is no conflict, else from a
    /// thread of its own once the lock is set, or with EINTR once `waiter` has a signal
    /// to take.
    pub fn setlk_wait(
        self: Arc<Self>,
        fh: u64,
        req: LockRequest,
        waiter: u32,
        done: impl FnOnce(io::Result<()>) + Send + 'static,
    ) {
        match self.try_setlk(fh, &req, true) {
            Err(e) if busy(&e) => {}
            Err(e) => {
                self.lock_wait_ended(fh, &req);
                return done(Err(e));
            }
            ok => return done(ok),
        }
        let wait = move || {
            let r = loop {
                std::thread::sleep(RETRY);
                if interrupted(waiter) {
                    break Err(io::Error::from_raw_os_error(libc::EINTR));
                }
                match self.try_setlk(fh, &req, true) {
                    Err(e) if busy(&e) => continue,
                    r => break r,
                }
            };
            if r.is_err() {
                self.lock_wait_ended(fh, &req);
            }
            done(r)
        };
        let spawned = std::thread::Builder::new()
            .name("cachefs-lockwait".into())
            .spawn(wait);
        if let Err(e) = spawned {
            // The reply goes with the closure: fuser answers EIO for it.
            tracing::warn!("cannot start a thread for a lock wait: {e}");
        }
    }

    /// Sets or removes a lock without waiting. `waiting`: the request waits for its lock,
    /// so an owner holding nothing keeps its descriptor across its tries.
    fn try_setlk(&self, fh: u64, req: &LockRequest, waiting: bool) -> io::Result<()> {
        let (src, obj) = self.lock_target(fh)?;
        let kind = if req.flock { Kind::Flock } else { Kind::Posix };
        let key = (req.owner, kind);
        loop {
            let owner = if req.typ == libc::F_UNLCK {
                match self.locks.find(obj, key) {
                    Some(o) => o,
                    None => return Ok(()),
                }
            } else {
                self.locks
                    .get_or_open(obj, key, fh, || self.open_lock_fd(kind, src.as_fd()))?
            };
            let mut st = owner.state.lock();
            if st.gone {
                continue;
            }
            let r = owner.set(req.typ, req.start, req.end);
            match (&r, kind) {
                (Ok(()), Kind::Posix) => apply(&mut st.held, req.typ, req.start, req.end),
                (Ok(()), Kind::Flock) => {
                    st.held.clear();
                    if req.typ != libc::F_UNLCK {
                        st.held.push(Held {
                            start: 0,
                            end: LOCK_TO_EOF,
                            typ: req.typ,
                        });
                    }
                }
                // A failed flock conversion has dropped the lock it was to convert
                // (Linux's flock semantics, which the source's kernel applied).
                (Err(_), Kind::Flock) => st.held.retain(|h| h.typ == req.typ),
                (Err(_), Kind::Posix) => {}
            }
            if req.typ != libc::F_UNLCK {
                if r.is_ok() {
                    st.pid = req.pid;
                }
                if !st.fhs.contains(&fh) {
                    st.fhs.push(fh);
                }
            }
            if st.held.is_empty() && !(waiting && r.is_err()) {
                st.gone = true;
                drop(st);
                self.locks.remove(obj, key, &owner);
            }
            return r;
        }
    }

    /// A wait ended without its lock: an owner it left holding nothing goes.
    fn lock_wait_ended(&self, fh: u64, req: &LockRequest) {
        let Ok((_, obj)) = self.lock_target(fh) else {
            return;
        };
        let kind = if req.flock { Kind::Flock } else { Kind::Posix };
        let key = (req.owner, kind);
        let Some(owner) = self.locks.find(obj, key) else {
            return;
        };
        let mut st = owner.state.lock();
        if !st.gone && st.held.is_empty() {
            st.gone = true;
            drop(st);
            self.locks.remove(obj, key, &owner);
        }
    }

    /// A descriptor of handle `fh` is being closed by `owner`: its POSIX locks on the
    /// file go, whichever descriptor they were set through (POSIX: any close releases).
    pub fn locks_flush(&self, fh: u64, owner: u64) {
        let known = {
            let t = self.locks.table.lock();
            if t.objects.is_empty() {
                return;
            }
            t.handles.get(&fh).copied()
        };
        let obj = match known {
            Some(obj) => obj,
            // The handle's object, without SOURCE: a close of a file answered from the
            // cache must not reach it.
            None => match self.files.get(fh) {
                Ok(h) => h.obj,
                Err(_) => return,
            },
        };
        let key = (owner, Kind::Posix);
        let Some(o) = self.locks.find(obj, key) else {
            return;
        };
        let mut st = o.state.lock();
        if !st.gone {
            o.release_all(&mut st);
        }
        drop(st);
        self.locks.remove(obj, key, &o);
    }

    /// Handle `fh` is released (no descriptor or mapping of its open file is left).
    /// `flock_owner`: the kernel says the open file held flock locks, as that owner.
    /// They go, and so does every owner that has no other handle it locked through.
    pub fn locks_release(&self, fh: u64, flock_owner: Option<u64>) {
        let (obj, owners) = {
            let mut t = self.locks.table.lock();
            let Some(obj) = t.handles.remove(&fh) else {
                return;
            };
            let owners: Vec<(Key, Arc<Owner>)> = t
                .objects
                .get(&obj)
                .map(|m| m.iter().map(|(k, o)| (*k, o.clone())).collect())
                .unwrap_or_default();
            (obj, owners)
        };
        for (key, o) in owners {
            let mut st = o.state.lock();
            if st.gone {
                continue;
            }
            st.fhs.retain(|&f| f != fh);
            let this_files_flock = key.1 == Kind::Flock && flock_owner == Some(key.0);
            if st.fhs.is_empty() || this_files_flock {
                o.release_all(&mut st);
                drop(st);
                self.locks.remove(obj, key, &o);
            }
        }
    }
}

/// Whether thread `tid` (a FUSE request's) has a signal it does not block pending, or is
/// gone: a lock wait of its is to end with EINTR. Signals it ignores are never queued.
fn interrupted(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return true;
    };
    let (mut pending, mut blocked) = (0u64, 0u64);
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let mask = || u64::from_str_radix(value, 16).unwrap_or(0);
        match key {
            "State" if value.starts_with(['Z', 'X']) => return true,
            "SigPnd" | "ShdPnd" => pending |= mask(),
            "SigBlk" => blocked = mask(),
            _ => {}
        }
    }
    pending & !blocked != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: i32 = libc::F_RDLCK;
    const W: i32 = libc::F_WRLCK;
    const U: i32 = libc::F_UNLCK;

    fn held(ops: &[(i32, u64, u64)]) -> Vec<(u64, u64, i32)> {
        let mut h = Vec::new();
        for &(typ, start, end) in ops {
            apply(&mut h, typ, start, end);
        }
        h.iter().map(|h| (h.start, h.end, h.typ)).collect()
    }

    #[test]
    fn a_lock_inside_another_of_another_type_splits_it() {
        assert_eq!(
            held(&[(R, 0, 99), (W, 10, 19)]),
            [(0, 9, R), (10, 19, W), (20, 99, R)]
        );
    }

    #[test]
    fn adjacent_and_overlapping_locks_of_one_type_merge() {
        assert_eq!(held(&[(R, 0, 9), (R, 10, 19)]), [(0, 19, R)]);
        assert_eq!(held(&[(W, 0, 9), (W, 5, 30)]), [(0, 30, W)]);
        assert_eq!(
            held(&[(R, 0, 9), (W, 20, 29), (R, 10, 19)]),
            [(0, 19, R), (20, 29, W)]
        );
    }

    #[test]
    fn an_unlock_cuts_and_removes() {
        assert_eq!(held(&[(W, 0, 99), (U, 10, 19)]), [(0, 9, W), (20, 99, W)]);
        assert_eq!(held(&[(W, 0, 99), (U, 0, LOCK_TO_EOF)]), []);
        assert_eq!(
            held(&[(W, 0, LOCK_TO_EOF), (U, 100, LOCK_TO_EOF)]),
            [(0, 99, W)]
        );
    }

    #[test]
    fn an_upgrade_or_downgrade_replaces_the_range() {
        assert_eq!(held(&[(R, 0, 99), (W, 0, 99)]), [(0, 99, W)]);
        assert_eq!(
            held(&[(W, 0, LOCK_TO_EOF), (R, 0, 99)]),
            [(0, 99, R), (100, LOCK_TO_EOF, W)]
        );
    }

    #[test]
    fn a_thread_without_pending_signals_is_not_interrupted() {
        // This test's own thread: nothing pending.
        let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        assert!(!interrupted(tid));
        assert!(interrupted(u32::MAX >> 1), "a thread that does not exist");
    }
}
