//! The promoter on its own: single flight (every request for a file in flight joins its
//! one job), cancellation (asked for, or the source changed or replaced during the
//! copy), priorities (explicit before policy before prefetch), prefetch of the next
//! files, a media file's sidecars copied within its job, and a clean stop.
//!
//! The promoter asks its `Events` for room before each copy; here that is a `Gate`, which
//! records every call and holds the copies of the paths a test closes it for, so that a
//! test decides what is in flight when. Files, store and copies are real.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use cachefs::cache::promoter::{Events, Job, Priority, Promoter};
use cachefs::cache::store::{Provenance, Store};
use parking_lot::{Condvar, Mutex};

use crate::common::{DEADLINE, Dirs, pattern, wait_until};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Reserve(PathBuf, u64),
    Release(u64, bool),
    Published(PathBuf, u64),
}

#[derive(Default)]
struct GateState {
    closed: HashSet<PathBuf>,
    /// Copies held at the gate now.
    waiting: HashSet<PathBuf>,
    calls: Vec<Call>,
}

#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
    unusable: AtomicBool,
}

impl Gate {
    fn close(&self, rel: &str) {
        self.state.lock().closed.insert(rel.into());
    }

    fn open(&self, rel: &str) {
        self.state.lock().closed.remove(Path::new(rel));
        self.changed.notify_all();
    }

    /// Waits until the copy of `rel` is held at the gate.
    fn wait_held(&self, rel: &str) {
        let end = Instant::now() + DEADLINE;
        let mut s = self.state.lock();
        while !s.waiting.contains(Path::new(rel)) {
            assert!(
                !self.changed.wait_until(&mut s, end).timed_out(),
                "{rel} never reached the gate"
            );
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.state.lock().calls.clone()
    }

    /// The paths reserved, in order.
    fn reserved(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Reserve(p, _) => Some(p.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect()
    }
}

impl Events for Gate {
    fn reserve(
        &self,
        rel: &Path,
        size: u64,
        alloc: &mut dyn FnMut() -> io::Result<()>,
    ) -> Result<(), String> {
        let end = Instant::now() + DEADLINE;
        let mut s = self.state.lock();
        s.calls.push(Call::Reserve(rel.into(), size));
        s.waiting.insert(rel.into());
        self.changed.notify_all();
        while s.closed.contains(rel) {
            // A test that failed before opening the gate must not leave a worker stuck.
            if self.changed.wait_until(&mut s, end).timed_out() {
                s.waiting.remove(rel);
                return Err("the gate never opened".into());
            }
        }
        s.waiting.remove(rel);
        drop(s);
        alloc().map_err(|e| e.to_string())
    }

    fn release(&self, size: u64, no_space: bool) {
        self.state.lock().calls.push(Call::Release(size, no_space));
    }

    fn published(&self, rel: &Path, _prov: &Provenance, size: u64) {
        self.state
            .lock()
            .calls
            .push(Call::Published(rel.into(), size));
    }

    fn usable(&self) -> bool {
        !self.unusable.load(Ordering::Relaxed)
    }
}

struct Fixture {
    dirs: Dirs,
    gate: Arc<Gate>,
    promoter: Promoter,
}

fn fixture(threads: usize, files: &[(&str, usize)]) -> Fixture {
    let dirs = Dirs::new();
    for (i, (name, size)) in files.iter().enumerate() {
        dirs.put(name, &pattern(*size, i as u8));
    }
    let store = Arc::new(Store::open(&dirs.cache).expect("the store opens"));
    let gate = Arc::new(Gate::default());
    let promoter =
        Promoter::start(dirs.source_fd(), store, gate.clone(), threads, 0).expect("workers");
    Fixture {
        dirs,
        gate,
        promoter,
    }
}

fn outcome(job: &Job) -> Result<(), String> {
    job.wait(DEADLINE).expect("the job finishes")
}

#[test]
fn concurrent_requests_join_the_one_copy_in_flight() {
    let f = fixture(2, &[("show/e1.mkv", 100_000)]);
    let rel = Path::new("show/e1.mkv");
    f.gate.close("show/e1.mkv");
    let first = f.promoter.request(rel, Priority::Policy);
    // Before a worker took it, and while it waits for room.
    let queued: Vec<Arc<Job>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| f.promoter.request(rel, Priority::Explicit)))
            .collect();
        hs.into_iter().map(|h| h.join().expect("request")).collect()
    });
    f.gate.wait_held("show/e1.mkv");
    assert!(!first.reader_active.load(Ordering::Relaxed));
    let reader = f.promoter.request_for_reader(rel, 4096, 0);
    for j in queued.iter().chain([&reader]) {
        assert!(Arc::ptr_eq(&first, j), "a second job for the same file");
    }
    // A reader joining marks the job so that the source's pages stay cached for it.
    assert!(first.reader_active.load(Ordering::Relaxed));
    f.gate.open("show/e1.mkv");
    assert_eq!(outcome(&first), Ok(()));
    assert_eq!(
        f.gate.calls(),
        [
            Call::Reserve(rel.into(), 100_000),
            Call::Published(rel.into(), 100_000)
        ]
    );
    assert!(std::fs::read(f.dirs.copy(rel)).is_ok_and(|b| b == pattern(100_000, 0)));
    let stats = f.promoter.stats();
    assert_eq!(
        (
            stats.done.load(Ordering::Relaxed),
            stats.failed.load(Ordering::Relaxed)
        ),
        (1, 0)
    );
    // Once finished, a request is a new job.
    let again = f.promoter.request(rel, Priority::Policy);
    assert!(!Arc::ptr_eq(&first, &again));
    assert_eq!(outcome(&again), Ok(()));
}

#[test]
fn a_cancelled_copy_publishes_nothing_and_gives_its_room_back() {
    // The empty file: no chunk to copy, so only the last check before publishing sees it.
    let f = fixture(2, &[("a", 50_000), ("empty", 0)]);
    for rel in ["a", "empty"] {
        f.gate.close(rel);
        let job = f.promoter.request(Path::new(rel), Priority::Explicit);
        f.gate.wait_held(rel);
        f.promoter.cancel(Path::new(rel));
        f.gate.open(rel);
        let e = outcome(&job).expect_err("cancelled");
        assert!(e.contains("cancelled"), "{rel}: {e}");
        assert!(!f.dirs.has_copy(rel), "{rel} published");
    }
    assert_eq!(
        f.gate.calls(),
        [
            Call::Reserve("a".into(), 50_000),
            Call::Release(50_000, false),
            Call::Reserve("empty".into(), 0),
            Call::Release(0, false),
        ]
    );
    assert_eq!(f.dirs.temp_files(), 0, "the temp file was removed");
    let stats = f.promoter.stats();
    assert_eq!(
        stats.failed.load(Ordering::Relaxed),
        0,
        "a cancel is no failure"
    );
}

#[test]
fn a_cancelled_job_still_queued_never_starts() {
    let f = fixture(1, &[("first", 10), ("second", 10)]);
    f.gate.close("first");
    let first = f.promoter.request(Path::new("first"), Priority::Explicit);
    f.gate.wait_held("first");
    let second = f.promoter.request(Path::new("second"), Priority::Explicit);
    assert_eq!(f.promoter.queued(), 1);
    f.promoter.cancel(Path::new("second"));
    f.gate.open("first");
    assert_eq!(outcome(&first), Ok(()));
    assert!(outcome(&second).is_err());
    assert_eq!(f.gate.reserved(), ["first"]);
    assert_eq!(f.promoter.queued(), 0);
}

#[test]
fn cancel_below_a_directory_cancels_the_copies_under_it_only() {
    let f = fixture(3, &[("show/a", 10), ("show/s1/b", 10), ("showtime/c", 10)]);
    let jobs: Vec<Arc<Job>> = ["show/a", "show/s1/b", "showtime/c"]
        .iter()
        .map(|rel| {
            f.gate.close(rel);
            f.promoter.request(Path::new(rel), Priority::Explicit)
        })
        .collect();
    for rel in ["show/a", "show/s1/b", "showtime/c"] {
        f.gate.wait_held(rel);
    }
    // What a rename or removal of `show` through the mount, or an evict of it, does.
    f.promoter.cancel_below(Path::new("show"));
    for rel in ["show/a", "show/s1/b", "showtime/c"] {
        f.gate.open(rel);
    }
    let results: Vec<bool> = jobs.iter().map(|j| outcome(j).is_ok()).collect();
    assert_eq!(results, [false, false, true]);
    assert_eq!(f.dirs.copies(), ["showtime/c"]);
}

#[test]
fn a_source_changed_or_replaced_during_the_copy_is_not_published() {
    let f = fixture(
        2,
        &[("grown", 8192), ("rewritten", 8192), ("replaced", 8192)],
    );
    type Change = dyn Fn(&Path);
    let changes: [(&str, &Change); 3] = [
        ("grown", &|p| {
            let mut b = std::fs::read(p).expect("read");
            b.extend_from_slice(b"more");
            std::fs::write(p, b).expect("append");
        }),
        ("rewritten", &|p| {
            std::fs::write(p, pattern(8192, 99)).expect("rewrite")
        }),
        ("replaced", &|p| {
            let new = p.with_extension("new");
            std::fs::write(&new, pattern(8192, 2)).expect("write");
            std::fs::rename(&new, p).expect("rename over");
        }),
    ];
    for (rel, change) in changes {
        f.gate.close(rel);
        let job = f.promoter.request(Path::new(rel), Priority::Policy);
        // The copy has its source open and its size taken: now the source changes.
        f.gate.wait_held(rel);
        change(&f.dirs.src(rel));
        f.gate.open(rel);
        let e = outcome(&job).expect_err("not published");
        assert!(e.contains("changed"), "{rel}: {e}");
        assert!(!f.dirs.has_copy(rel), "{rel}: a stale copy was published");
    }
    assert_eq!(f.dirs.temp_files(), 0);
    // The next copy is of the source as it is now.
    let job = f.promoter.request(Path::new("rewritten"), Priority::Policy);
    assert_eq!(outcome(&job), Ok(()));
    assert!(std::fs::read(f.dirs.copy("rewritten")).is_ok_and(|b| b == pattern(8192, 99)));
}

#[test]
fn explicit_requests_go_before_policy_before_prefetch() {
    let names = ["blocker", "p1", "q1", "e1", "p2", "q2", "e2"];
    let f = fixture(1, &names.map(|n| (n, 10)));
    f.gate.close("blocker");
    let mut jobs = vec![f.promoter.request(Path::new("blocker"), Priority::Policy)];
    f.gate.wait_held("blocker");
    for n in &names[1..] {
        let priority = match n.as_bytes()[0] {
            b'e' => Priority::Explicit,
            b'q' => Priority::Policy,
            _ => Priority::Prefetch,
        };
        jobs.push(f.promoter.request(Path::new(n), priority));
    }
    assert_eq!(f.promoter.queued(), 6);
    f.gate.open("blocker");
    for j in &jobs {
        assert_eq!(outcome(j), Ok(()));
    }
    assert_eq!(
        f.gate.reserved(),
        ["blocker", "e1", "e2", "q1", "q2", "p1", "p2"]
    );
}

#[test]
fn a_reader_request_prefetches_the_next_files_of_its_directory() {
    let f = fixture(
        1,
        &[
            ("show/E1.mkv", 10),
            ("show/E2.mkv", 10),
            ("show/E10.mkv", 10),
            ("show/E3.mkv", 10),
            ("show/E2.srt", 10),
            ("other/E2.mkv", 10),
        ],
    );
    let job = f
        .promoter
        .request_for_reader(Path::new("show/E1.mkv"), 0, 2);
    assert_eq!(outcome(&job), Ok(()));
    wait_until("the prefetches", || f.gate.reserved().len() == 4);
    wait_until("the queue to drain", || {
        f.promoter.queued() == 0 && f.promoter.running().is_empty()
    });
    // E2.srt is no next file, but E2.mkv's sidecar: it comes with E2.mkv, in its job.
    assert_eq!(
        f.gate.reserved(),
        ["show/E1.mkv", "show/E2.mkv", "show/E2.srt", "show/E3.mkv"]
    );
}

/// A film, its sidecars, and files that only look like them.
const FILM: &[(&str, usize)] = &[
    ("film/Film.mkv", 50_000),
    ("film/Film.en.srt", 300),
    ("film/Film.en.forced.srt", 200),
    ("film/Film.nfo", 100),
    ("film/Film 2.srt", 100),
    ("film/Film2.mkv.srt", 100),
    ("film/Other.srt", 100),
];

const FILM_SIDECARS: [&str; 3] = [
    "film/Film.en.forced.srt",
    "film/Film.en.srt",
    "film/Film.nfo",
];

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Issue 18: promoting a media file copies its sidecars (whatever their size) in the
/// same job, after it: the job ends, with one worker, once they are all published.
#[test]
fn a_media_files_job_copies_its_sidecars_before_it_ends() {
    let f = fixture(1, FILM);
    let job = f
        .promoter
        .request(Path::new("film/Film.mkv"), Priority::Explicit);
    assert_eq!(outcome(&job), Ok(()));
    // No waiting: they are in place when the film's job ends.
    let mut want = vec!["film/Film.mkv".to_string()];
    want.extend(FILM_SIDECARS.map(String::from));
    let want = sorted(want);
    assert_eq!(f.dirs.copies(), want);
    assert_eq!(f.gate.reserved()[0], "film/Film.mkv", "the film first");
    assert_eq!(sorted(f.gate.reserved()), want);
    for (rel, _) in FILM.iter().filter(|(r, _)| want.iter().any(|w| w == r)) {
        assert_eq!(
            std::fs::read(f.dirs.copy(rel)).ok(),
            std::fs::read(f.dirs.src(rel)).ok(),
            "{rel}"
        );
    }
    let sidecars = job.sidecars();
    assert_eq!(
        sorted(
            sidecars
                .iter()
                .map(|j| j.rel.to_string_lossy().into_owned())
                .collect()
        ),
        FILM_SIDECARS
    );
    assert!(sidecars.iter().all(|j| j.outcome() == Some(Ok(()))));
    assert_eq!(f.promoter.stats().done.load(Ordering::Relaxed), 4);

    // Again: the sidecars with a valid copy are not copied twice.
    let again = f
        .promoter
        .request(Path::new("film/Film.mkv"), Priority::Explicit);
    assert_eq!(outcome(&again), Ok(()));
    assert!(again.sidecars().is_empty());
    assert_eq!(f.gate.reserved().len(), 5);

    // A sidecar promoted on its own brings nothing.
    let srt = f
        .promoter
        .request(Path::new("film/Other.srt"), Priority::Explicit);
    assert_eq!(outcome(&srt), Ok(()));
    assert!(srt.sidecars().is_empty());
    assert_eq!(f.gate.reserved().len(), 6);
}

/// A sidecar's own job still waiting in a queue is taken over by its media file's job,
/// copied once, and with a single worker nothing waits for itself.
#[test]
fn a_queued_sidecar_job_is_taken_over_by_its_media_files_job() {
    let mut files = FILM.to_vec();
    files.push(("blocker", 10));
    let f = fixture(1, &files);
    f.gate.close("blocker");
    let blocker = f.promoter.request(Path::new("blocker"), Priority::Explicit);
    f.gate.wait_held("blocker");
    // Queued behind the blocker; the film (explicit) goes first.
    let srt = f
        .promoter
        .request(Path::new("film/Film.en.srt"), Priority::Prefetch);
    let film = f
        .promoter
        .request(Path::new("film/Film.mkv"), Priority::Explicit);
    assert_eq!(f.promoter.queued(), 2);
    f.gate.open("blocker");
    assert_eq!(outcome(&blocker), Ok(()));
    assert_eq!(outcome(&film), Ok(()));
    // The queued job was the film's sidecar, done when the film's job ended.
    assert_eq!(srt.outcome(), Some(Ok(())));
    assert!(film.sidecars().iter().any(|j| Arc::ptr_eq(j, &srt)));
    wait_until("the queue to drain", || f.promoter.queued() == 0);
    let reserved = f.gate.reserved();
    assert_eq!(reserved[..2], ["blocker", "film/Film.mkv"]);
    assert_eq!(
        reserved
            .iter()
            .filter(|r| r.as_str() == "film/Film.en.srt")
            .count(),
        1,
        "copied once: {reserved:?}"
    );
    assert_eq!(reserved.len(), 5, "{reserved:?}");
}

/// A sidecar another worker is copying is not copied again: the media file's job waits
/// for it before it ends.
#[test]
fn a_media_files_job_waits_for_its_sidecar_copied_by_another_worker() {
    let f = fixture(2, FILM);
    f.gate.close("film/Film.nfo");
    let nfo = f
        .promoter
        .request(Path::new("film/Film.nfo"), Priority::Explicit);
    f.gate.wait_held("film/Film.nfo");
    let film = f
        .promoter
        .request(Path::new("film/Film.mkv"), Priority::Explicit);
    wait_until("the film's other sidecars", || {
        FILM_SIDECARS
            .iter()
            .filter(|s| **s != "film/Film.nfo")
            .all(|s| f.dirs.has_copy(s))
    });
    assert_eq!(
        film.wait(std::time::Duration::from_millis(200)),
        None,
        "the film's job ended before its .nfo was copied"
    );
    f.gate.open("film/Film.nfo");
    assert_eq!(outcome(&film), Ok(()));
    assert!(f.dirs.has_copy("film/Film.nfo"));
    assert_eq!(nfo.outcome(), Some(Ok(())));
    assert!(film.sidecars().iter().any(|j| Arc::ptr_eq(j, &nfo)));
    assert_eq!(
        sorted(f.gate.reserved()).len(),
        4,
        "{:?}",
        f.gate.reserved()
    );
}

#[test]
fn a_stopped_promoter_starts_no_copy_and_an_unusable_cache_none_either() {
    let f = fixture(1, &[("a", 10), ("b", 10)]);
    f.gate.close("a");
    let a = f.promoter.request(Path::new("a"), Priority::Explicit);
    f.gate.wait_held("a");
    // A clean stop cancels what runs; its copy lets go of its temp file.
    f.promoter.stop(DEADLINE);
    f.gate.open("a");
    assert!(outcome(&a).expect_err("cancelled").contains("cancelled"));
    let b = f.promoter.request(Path::new("b"), Priority::Explicit);
    assert!(outcome(&b).is_err());
    assert_eq!(f.gate.reserved(), ["a"]);
    assert_eq!(f.dirs.temp_files(), 0);

    let g = fixture(1, &[("a", 10)]);
    g.gate.unusable.store(true, Ordering::Relaxed);
    let a = g.promoter.request(Path::new("a"), Priority::Explicit);
    assert!(outcome(&a).expect_err("unusable").contains("unusable"));
    assert!(g.gate.calls().is_empty());
}
