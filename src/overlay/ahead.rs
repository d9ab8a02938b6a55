//! Stat-ahead for first scans.
//!
//! In a first scan the work alternates between two sides. The daemon reads a directory
//! from SOURCE and stats every entry: SOURCE's kernel reads and builds its inodes. Then
//! the scanner's kernel turns the READDIRPLUS reply into FUSE inodes and dentries. Each
//! side waits for the other, so one of two cores sits idle.
//!
//! Meanwhile, a thread here reads the directory that a depth-first walker (find, fts, a
//! media server's scan) will ask for next, and stats its entries. SOURCE's inodes are
//! then in its kernel's cache when that READDIRPLUS comes, and the two sides run at once.
//!
//! The next directory is predicted from the listings read so far:
//! - a directory's first subdirectory, in listing order (the order walkers descend);
//! - for a directory without subdirectories, its next sibling;
//! - after the last sibling, the parent's next sibling, and so on up.
//!
//! Only a listing read from SOURCE predicts. An answer from the metadata cache touches
//! no disk, and neither should what follows it. The thread is at most one directory
//! ahead, so a one-off `ls -l` of a leaf costs one more directory read, never a subtree.
//! It only warms SOURCE's caches and keeps nothing: every answer is still made from
//! SOURCE as before.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};

use parking_lot::Mutex;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::fdio::{self, DirEntry};
use crate::inodes::{Inode, InodeTable};

/// Directories whose subdirectories are remembered for predictions. A depth-first walk
/// needs only the chain above where it is; the oldest go first.
const KEPT: usize = 16;

/// Predicted directories waiting for the thread. Beyond this they are dropped: the
/// walk has moved on.
const QUEUED: usize = 4;

/// A directory read from SOURCE that has subdirectories.
struct Parent {
    nodeid: u64,
    /// Open for reading. It is held while remembered (at most KEPT descriptors, besides
    /// the daemon's bounded cache of them).
    fd: Arc<OwnedFd>,
    subdirs: Vec<OsString>,
}

/// A directory to read ahead: `name` in `parent`.
struct Job {
    parent: Arc<OwnedFd>,
    name: OsString,
}

pub(super) struct Ahead {
    parents: Mutex<VecDeque<Parent>>,
    /// The thread's queue; `None` if the thread could not start (scans are then as
    /// they were without it).
    queue: Option<SyncSender<Job>>,
}

impl Ahead {
    /// Starts the thread. It is started here, with the daemon's own credentials, not by
    /// a request: a request's thread runs as its caller (`creds`), and a thread inherits
    /// the credentials of the one that starts it. It ends when the overlay goes.
    pub(super) fn start() -> Ahead {
        let (tx, rx) = sync_channel::<Job>(QUEUED);
        let spawned = std::thread::Builder::new()
            .name("cachefs-ahead".into())
            .spawn(move || rx.into_iter().for_each(|job| warm(&job)));
        Ahead {
            parents: Mutex::new(VecDeque::new()),
            queue: spawned.is_ok().then_some(tx),
        }
    }

    /// `dir`, open as `fd`, was just listed from SOURCE: predict the directory a walker
    /// reads next, and read it ahead.
    pub(super) fn listed(
        &self,
        inodes: &InodeTable,
        dir: &Inode,
        fd: &Arc<OwnedFd>,
        listing: &[DirEntry],
    ) {
        let subdirs: Vec<OsString> = listing
            .iter()
            .filter(|e| e.kind == FileType::Directory)
            .map(|e| e.name.clone())
            .collect();
        if let Some(first) = subdirs.first().cloned() {
            let mut parents = self.parents.lock();
            parents.retain(|p| p.nodeid != dir.nodeid);
            if parents.len() == KEPT {
                parents.pop_front();
            }
            parents.push_back(Parent {
                nodeid: dir.nodeid,
                fd: fd.clone(),
                subdirs,
            });
            drop(parents);
            self.send(Job {
                parent: fd.clone(),
                name: first,
            });
            return;
        }
        // A leaf: the next sibling, going up past parents whose last one this was.
        let (mut parent, mut name) = (dir.parent(), inodes.name_of(dir));
        for _ in 0..KEPT {
            let (Some(p), Some(n)) = (parent, name) else {
                return;
            };
            let mut parents = self.parents.lock();
            let Some(i) = parents.iter().position(|x| x.nodeid == p.nodeid) else {
                return;
            };
            let Some(at) = parents[i].subdirs.iter().position(|s| s.as_os_str() == &*n) else {
                return; // renamed since: no guess
            };
            if let Some(next) = parents[i].subdirs.get(at + 1) {
                let job = Job {
                    parent: parents[i].fd.clone(),
                    name: next.clone(),
                };
                drop(parents);
                self.send(job);
                return;
            }
            parents.remove(i);
            drop(parents);
            (parent, name) = (p.parent(), inodes.name_of(&p));
        }
    }

    fn send(&self, job: Job) {
        if let Some(tx) = &self.queue {
            let _ = tx.try_send(job);
        }
    }
}

/// Reads the directory and stats each entry, as the READDIRPLUS for it will, keeping
/// nothing. Any failure ends it quietly: the READDIRPLUS then does the work itself.
fn warm(job: &Job) {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(fd) = rustix::fs::openat(&*job.parent, job.name.as_os_str(), flags, Mode::empty())
    else {
        return;
    };
    let Ok(listing) = fdio::read_dir(fd.as_fd()) else {
        return;
    };
    for e in &listing {
        let _ = rustix::fs::statat(&fd, e.name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW);
    }
}
