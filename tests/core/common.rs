//! What every core test needs: temp SOURCE and CACHE directories owned by the test
//! process, a configuration for them, the cache filesystem as a test decides it
//! (`SimulatedFs`), and polling with a deadline (never a bare sleep).

#![allow(dead_code)]

use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cachefs::cache::FreeSpace;
use cachefs::config::{Config, MinFree, PromoteMode};
use cachefs::overlay::Caller;
use tempfile::TempDir;

/// How long anything a test waits for may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub struct Dirs {
    _tmp: TempDir,
    pub src: PathBuf,
    pub cache: PathBuf,
    pub mnt: PathBuf,
}

impl Dirs {
    /// SOURCE (empty) and a CACHE path the cache creates.
    pub fn new() -> Dirs {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let src = tmp.path().join("src");
        fs::create_dir(&src).expect("SOURCE");
        Dirs {
            src,
            cache: tmp.path().join("cache"),
            // Never mounted: the core does not look at it.
            mnt: tmp.path().join("mnt"),
            _tmp: tmp,
        }
    }

    /// The defaults, except: nothing promoted unless a test asks (`promote=manual`), no
    /// prefetch, and no min_free (the temp dir's real filesystem is not the test's).
    pub fn config(&self) -> Config {
        let mut cfg = Config::new(self.src.clone(), self.mnt.clone(), self.cache.clone());
        cfg.promote = PromoteMode::Manual;
        cfg.prefetch = 0;
        cfg.min_free = MinFree::Bytes(0);
        cfg
    }

    pub fn src(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.src.join(rel)
    }

    /// Writes a SOURCE file, making its directories.
    pub fn put(&self, rel: impl AsRef<Path>, bytes: &[u8]) {
        let p = self.src(rel);
        if let Some(dir) = p.parent() {
            fs::create_dir_all(dir).expect("SOURCE directories");
        }
        fs::write(&p, bytes).expect("a SOURCE file");
    }

    /// A SOURCE file of `len` bytes, all a hole: large, and cheap to make.
    pub fn put_sparse(&self, rel: impl AsRef<Path>, len: u64) {
        File::create(self.src(rel))
            .and_then(|f| f.set_len(len))
            .expect("a sparse SOURCE file");
    }

    /// SOURCE's root as the promoter and the cache take it.
    pub fn source_fd(&self) -> OwnedFd {
        OwnedFd::from(File::open(&self.src).expect("SOURCE's root"))
    }

    /// Where the published copy of `rel` lives.
    pub fn copy(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.cache.join("data").join(rel)
    }

    pub fn has_copy(&self, rel: impl AsRef<Path>) -> bool {
        self.copy(rel).is_file()
    }

    /// Every published copy, sorted.
    pub fn copies(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.cache.join("data"), Path::new(""), &mut |rel, _| {
            out.push(rel.to_string_lossy().into_owned())
        });
        out.sort();
        out
    }

    /// Files in the cache's `tmp/` (copies in progress, or left behind).
    pub fn temp_files(&self) -> usize {
        fs::read_dir(self.cache.join("tmp")).map_or(0, |d| d.count())
    }

    /// The test process itself, as the caller of every request.
    pub fn caller(&self) -> Caller {
        let m = fs::metadata(&self.src).expect("SOURCE's root");
        Caller {
            uid: m.uid(),
            gid: m.gid(),
            pid: std::process::id(),
        }
    }
}

/// Calls `f` for every regular file below `dir`, with its path relative to `dir` and
/// its size. A missing directory holds nothing.
fn walk(dir: &Path, rel: &Path, f: &mut dyn FnMut(&Path, u64)) {
    let Ok(entries) = fs::read_dir(dir.join(rel)) else {
        return;
    };
    for e in entries.flatten() {
        let p = rel.join(e.file_name());
        match e.metadata() {
            Ok(m) if m.is_dir() => walk(dir, &p, f),
            Ok(m) if m.is_file() => f(&p, m.len()),
            _ => {}
        }
    }
}

/// A cache filesystem of `total` bytes that holds the cache's copies (published, and in
/// progress in `tmp/`, by apparent size) and `other` bytes of other files. Unlike
/// statvfs of the real temp dir it is exact and private to one test, so the ledger's
/// arithmetic can be checked to the byte.
pub struct SimulatedFs {
    cache: PathBuf,
    pub total: u64,
    pub other: AtomicU64,
}

impl SimulatedFs {
    pub fn new(dirs: &Dirs, total: u64, other: u64) -> SimulatedFs {
        SimulatedFs {
            cache: dirs.cache.clone(),
            total,
            other: AtomicU64::new(other),
        }
    }

    /// Bytes the cache's copies take.
    pub fn cached(&self) -> u64 {
        let mut n = 0;
        for sub in ["data", "tmp"] {
            walk(&self.cache.join(sub), Path::new(""), &mut |_, len| n += len);
        }
        n
    }

    pub fn avail(&self) -> u64 {
        self.total
            .saturating_sub(self.other.load(Ordering::Relaxed))
            .saturating_sub(self.cached())
    }
}

impl FreeSpace for SimulatedFs {
    fn space(&self) -> io::Result<(u64, u64)> {
        Ok((self.avail(), self.total))
    }
}

/// Polls `f` until it holds; fails the test after `DEADLINE`.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn errno<T>(r: &io::Result<T>) -> Option<i32> {
    r.as_ref().err().map(|e| e.raw_os_error().unwrap_or(-1))
}

/// `n` bytes that differ from file to file (by `seed`) and from offset to offset.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
