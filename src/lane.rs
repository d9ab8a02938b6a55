//! Where requests that need SOURCE run, so that a SOURCE that stops answering (a NAS gone
//! offline, a disk whose spin-up never ends) stops only them (invariant 12).
//!
//! The FUSE workers answer what the cache and memory can answer themselves (`crate::fuse`
//! asks the core for that first). A request that needs SOURCE goes through [`Lane::run`]:
//! it runs on the worker that took it while fewer than [`INLINE`] workers are inside a
//! SOURCE call, else on a pool of at most [`POOL`] threads behind a queue. So at least
//! `FUSE_THREADS - INLINE` workers are always free for the cache, however long SOURCE
//! hangs; requests for SOURCE wait in the queue, as they would on a plain mount of it.
//! Nothing times out: a call to SOURCE returns when SOURCE answers.
//!
//! Every call in flight records when it started; one older than [`STALL`] means SOURCE is
//! not answering since then (`cachefs status`, the metrics). Each request that needed
//! SOURCE is counted by operation.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};

/// FUSE workers that may be inside a SOURCE call at once; the others stay free.
pub const INLINE: usize = 6;
/// Threads that run SOURCE calls once those workers are taken.
pub const POOL: usize = 16;
/// A SOURCE call in flight for longer than this means SOURCE is not answering.
pub const STALL: Duration = Duration::from_secs(3);

/// What a request that needed SOURCE was, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Fsyncdir,
    Statfs,
    Xattr,
    Access,
    Create,
    Lock,
    Fallocate,
    Lseek,
    CopyFileRange,
}

impl Op {
    pub const ALL: [Op; 28] = [
        Op::Lookup,
        Op::Getattr,
        Op::Setattr,
        Op::Readlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Link,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Release,
        Op::Fsync,
        Op::Opendir,
        Op::Readdir,
        Op::Fsyncdir,
        Op::Statfs,
        Op::Xattr,
        Op::Access,
        Op::Create,
        Op::Lock,
        Op::Fallocate,
        Op::Lseek,
        Op::CopyFileRange,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Fsyncdir => "fsyncdir",
            Op::Statfs => "statfs",
            Op::Xattr => "xattr",
            Op::Access => "access",
            Op::Create => "create",
            Op::Lock => "lock",
            Op::Fallocate => "fallocate",
            Op::Lseek => "lseek",
            Op::CopyFileRange => "copy_file_range",
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

struct Queue {
    jobs: VecDeque<Job>,
    /// Pool threads started, and those waiting for a job.
    threads: usize,
    idle: usize,
}

pub struct Lane {
    /// When each SOURCE call in flight started (ms since the epoch; 0: free): the first
    /// `INLINE` are the FUSE workers' slots, then one per pool thread.
    busy: Box<[AtomicU64]>,
    queue: Mutex<Queue>,
    wake: Condvar,
    ops: [AtomicU64; Op::ALL.len()],
    /// Requests waiting in the queue now.
    waiting: AtomicUsize,
}

/// Frees a slot of `busy` when its call returns.
struct Slot<'a>(&'a AtomicU64);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
        .max(1)
}

impl Default for Lane {
    fn default() -> Self {
        Lane {
            busy: (0..INLINE + POOL).map(|_| AtomicU64::new(0)).collect(),
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                threads: 0,
                idle: 0,
            }),
            wake: Condvar::new(),
            ops: std::array::from_fn(|_| AtomicU64::new(0)),
            waiting: AtomicUsize::new(0),
        }
    }
}

impl Lane {
    /// Runs `f`, a request that needs SOURCE: here if a worker slot is free, else on the
    /// pool. Counted as `op`.
    pub fn run(self: &Arc<Self>, op: Op, f: impl FnOnce() + Send + 'static) {
        self.count(op);
        if let Some(slot) = self.claim() {
            f();
            drop(slot);
            return;
        }
        self.queue_job(Box::new(f));
    }

    /// Runs `f` on the pool (never here): SOURCE work a worker must not wait for.
    pub fn spawn(self: &Arc<Self>, op: Op, f: impl FnOnce() + Send + 'static) {
        self.count(op);
        self.queue_job(Box::new(f));
    }

    fn count(&self, op: Op) {
        self.ops[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn claim(&self) -> Option<Slot<'_>> {
        let now = now_ms();
        self.busy[..INLINE]
            .iter()
            .find(|s| {
                s.compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .map(Slot)
    }

    fn queue_job(self: &Arc<Self>, job: Job) {
        let mut q = self.queue.lock();
        q.jobs.push_back(job);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        if q.idle > 0 {
            self.wake.notify_one();
        } else if q.threads < POOL {
            let index = INLINE + q.threads;
            q.threads += 1;
            let lane = self.clone();
            let spawned = std::thread::Builder::new()
                .name("cachefs-source".into())
                .spawn(move || lane.worker(index));
            if let Err(e) = spawned {
                // The queue is served by the threads already there (there is at least one
                // unless none could ever start; then the next request tries again).
                q.threads -= 1;
                tracing::warn!("cannot start a SOURCE thread: {e}");
            }
        }
    }

    fn worker(&self, index: usize) {
        let slot = &self.busy[index];
        loop {
            let job = {
                let mut q = self.queue.lock();
                loop {
                    if let Some(job) = q.jobs.pop_front() {
                        break job;
                    }
                    q.idle += 1;
                    self.wake.wait(&mut q);
                    q.idle -= 1;
                }
            };
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            // A slot whose last job panicked is stale; start afresh.
            slot.store(now_ms(), Ordering::Release);
            let guard = Slot(slot);
            // A panic in a request (a bug) must not take the thread and its slot with it.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                tracing::error!("a request to SOURCE panicked");
            }
            drop(guard);
        }
    }

    /// The start of the oldest SOURCE call in flight, if it has been running for longer
    /// than [`STALL`] (ms since the epoch): SOURCE is not answering since then.
    pub fn stalled_since_ms(&self) -> Option<u64> {
        let now = now_ms();
        self.busy
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .filter(|&t| t != 0 && now.saturating_sub(t) > STALL.as_millis() as u64)
            .min()
    }

    /// SOURCE calls in flight and requests waiting for one.
    pub fn load(&self) -> (usize, usize) {
        let busy = self
            .busy
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) != 0)
            .count();
        (busy, self.waiting.load(Ordering::Relaxed))
    }

    /// Requests that needed SOURCE, by operation (every operation, zeros included).
    pub fn ops(&self) -> Vec<(&'static str, u64)> {
        Op::ALL
            .iter()
            .map(|&op| (op.name(), self.ops[op as usize].load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_hung_source_leaves_the_workers_free() {
        let lane = Arc::new(Lane::default());
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        // More hung calls than the workers' slots and the pool together.
        let (done_tx, done_rx) = mpsc::channel();
        for _ in 0..INLINE + POOL + 10 {
            let lane2 = lane.clone();
            let rx = release_rx.clone();
            let done = done_tx.clone();
            // Each hung call comes in on a worker thread of its own, as FUSE requests do.
            std::thread::spawn(move || {
                lane2.run(Op::Read, move || {
                    let _ = rx.lock().recv();
                    let _ = done.send(());
                });
            });
        }
        // Every worker slot fills, and the rest wait on the pool: a new request for
        // SOURCE is queued, never run here.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lane.load().0 < INLINE + POOL {
            assert!(
                std::time::Instant::now() < deadline,
                "slots: {:?}",
                lane.load()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let ran_here = Arc::new(AtomicU64::new(0));
        let r = ran_here.clone();
        let me = std::thread::current().id();
        lane.run(Op::Open, move || {
            if std::thread::current().id() == me {
                r.store(1, Ordering::SeqCst);
            }
        });
        assert_eq!(ran_here.load(Ordering::SeqCst), 0, "ran on the worker");
        // All hung calls finish once SOURCE answers.
        for _ in 0..INLINE + POOL + 10 {
            release_tx.send(()).unwrap();
        }
        for _ in 0..INLINE + POOL + 10 {
            done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        let ops: std::collections::HashMap<_, _> = lane.ops().into_iter().collect();
        assert_eq!(ops["read"], (INLINE + POOL + 10) as u64);
        assert_eq!(ops["open"], 1);
    }

    #[test]
    fn a_call_older_than_the_stall_time_is_reported() {
        let lane = Lane::default();
        assert_eq!(lane.stalled_since_ms(), None);
        let old = now_ms() - STALL.as_millis() as u64 - 1000;
        lane.busy[2].store(old, Ordering::SeqCst);
        lane.busy[INLINE + 1].store(now_ms(), Ordering::SeqCst);
        assert_eq!(lane.stalled_since_ms(), Some(old));
        lane.busy[2].store(0, Ordering::SeqCst);
        assert_eq!(lane.stalled_since_ms(), None, "a young call is no stall");
    }
}
