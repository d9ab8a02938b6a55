//! The reference model of what a reader must see: a tree of paths to bytes, changed as a
//! plain directory would be by the operations a test makes, and asked about every read a
//! reader makes. A read of a name the tree does not hold must fail as a plain directory's
//! would (ENOENT, or ENOTDIR where a component is a file).
//!
//! Shared by the test binaries: the core tier (`tests/core.rs`) drives the overlay in
//! process, the real-mount exerciser (`tests/integration/exerciser.rs`) drives a mount, a
//! soak run drives whatever it likes; each makes its own calls and has the model check
//! what they returned. `Rng` is here too, so that every random driver replays from a seed.
//!
//! A file may be marked failing (`Tree::fail`): SOURCE's disk answers its reads with an
//! errno, and a reader may see that errno, or the right bytes where a cache already held
//! them; never other bytes. `History` is a tree over time, for readers that race changes
//! made behind their backs (SOURCE changed directly, a fault injected): a read is checked
//! against every version between the last one finished before it started and the last
//! one begun before it ended.

// Each test binary uses its own part of the model.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What a reader saw: bytes, or the errno its call failed with.
pub type Seen<'a> = Result<&'a [u8], i32>;

/// An `io::Result` as the model compares it: the errno alone.
pub fn seen<T: AsRef<[u8]>>(r: &io::Result<T>) -> Seen<'_> {
    match r {
        Ok(b) => Ok(b.as_ref()),
        Err(e) => Err(e.raw_os_error().unwrap_or(-1)),
    }
}

fn describe(s: &Seen<'_>) -> String {
    match s {
        Ok(b) => format!("{} bytes", b.len()),
        Err(e) => format!("error {}", io::Error::from_raw_os_error(*e)),
    }
}

/// Files and directories by path relative to the tree's root (which always exists).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    files: BTreeMap<PathBuf, Vec<u8>>,
    dirs: BTreeSet<PathBuf>,
    /// Files whose reads SOURCE fails, with the errno.
    failing: BTreeMap<PathBuf, i32>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Directories that hold `path`, root excluded, outermost first.
    fn parents(path: &Path) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = path
            .ancestors()
            .skip(1)
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .collect();
        out.reverse();
        out
    }

    /// What a lookup of `path` finds: Ok(true) for a file, Ok(false) for a directory, or
    /// the errno of the walk.
    fn lookup(&self, path: &Path) -> Result<bool, i32> {
        for dir in Self::parents(path) {
            if self.files.contains_key(&dir) {
                return Err(libc::ENOTDIR);
            }
            if !self.dirs.contains(&dir) {
                return Err(libc::ENOENT);
            }
        }
        if self.files.contains_key(path) {
            Ok(true)
        } else if path.as_os_str().is_empty() || self.dirs.contains(path) {
            Ok(false)
        } else {
            Err(libc::ENOENT)
        }
    }

    fn file_mut(&mut self, path: &Path) -> &mut Vec<u8> {
        match self.files.get_mut(path) {
            Some(f) => f,
            None => panic!("model: {} is not a file the test made", path.display()),
        }
    }

    /// Creates or replaces a file (its directories too), as a test populating a tree.
    pub fn put(&mut self, path: impl AsRef<Path>, bytes: impl Into<Vec<u8>>) {
        let path = path.as_ref();
        for dir in Self::parents(path) {
            self.dirs.insert(dir);
        }
        self.files.insert(path.to_path_buf(), bytes.into());
    }

    pub fn mkdir(&mut self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        for dir in Self::parents(path) {
            self.dirs.insert(dir);
        }
        self.dirs.insert(path.to_path_buf());
    }

    /// A write of `data` at `off`; a hole before it reads as zeros.
    pub fn write(&mut self, path: impl AsRef<Path>, off: u64, data: &[u8]) {
        let f = self.file_mut(path.as_ref());
        let (off, end) = (off as usize, off as usize + data.len());
        if f.len() < end {
            f.resize(end, 0);
        }
        f[off..end].copy_from_slice(data);
    }

    pub fn truncate(&mut self, path: impl AsRef<Path>, len: u64) {
        self.file_mut(path.as_ref()).resize(len as usize, 0);
    }

    /// Removes a file, or a directory and everything below it.
    pub fn remove(&mut self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        self.files.retain(|p, _| !p.starts_with(path));
        self.dirs.retain(|p| !p.starts_with(path));
    }

    /// SOURCE fails reads of `path` with `errno` from now on (a bad disk block).
    pub fn fail(&mut self, path: impl AsRef<Path>, errno: i32) {
        self.failing.insert(path.as_ref().to_path_buf(), errno);
    }

    /// SOURCE reads `path` again.
    pub fn heal(&mut self, path: impl AsRef<Path>) {
        self.failing.remove(path.as_ref());
    }

    /// Renames a file (a tree renamed as a whole is not needed by any test yet).
    pub fn rename(&mut self, from: impl AsRef<Path>, to: impl AsRef<Path>) {
        let from = from.as_ref();
        let Some(bytes) = self.files.remove(from) else {
            panic!("model: {} is not a file the test made", from.display());
        };
        self.put(to, bytes);
    }

    pub fn files(&self) -> impl Iterator<Item = (&Path, &[u8])> {
        self.files.iter().map(|(p, b)| (p.as_path(), b.as_slice()))
    }

    /// A file's bytes, or the errno of opening it.
    pub fn bytes(&self, path: impl AsRef<Path>) -> Result<&[u8], i32> {
        let path = path.as_ref();
        match self.lookup(path)? {
            true => Ok(&self.files[path]),
            false => Err(libc::EISDIR),
        }
    }

    pub fn len(&self, path: impl AsRef<Path>) -> Result<u64, i32> {
        self.bytes(path).map(|b| b.len() as u64)
    }

    /// What a read of up to `len` bytes at `off` must return: the bytes there, short only
    /// at the end of the file.
    pub fn read(&self, path: impl AsRef<Path>, off: u64, len: usize) -> Seen<'_> {
        let b = self.bytes(path)?;
        let start = (off as usize).min(b.len());
        let end = start.saturating_add(len).min(b.len());
        Ok(&b[start..end])
    }

    /// Checks one read of up to `len` bytes at `off` (a read that looped until it had
    /// them all or reached the end): `Err` says how it differs from the model.
    pub fn check_read(
        &self,
        path: impl AsRef<Path>,
        off: u64,
        len: usize,
        got: Seen<'_>,
    ) -> Result<(), String> {
        let path = path.as_ref();
        let want = self.read(path, off, len);
        if got == want || self.failing.get(path).is_some_and(|e| got == Err(*e)) {
            return Ok(());
        }
        let at = match (got, want) {
            (Ok(g), Ok(w)) => {
                let k = g.iter().zip(w).position(|(a, b)| a != b);
                format!(
                    "; first difference at +{}",
                    k.unwrap_or(g.len().min(w.len()))
                )
            }
            _ => String::new(),
        };
        Err(format!(
            "{}: read of {len} at {off} saw {}, the model has {}{at}",
            path.display(),
            describe(&got),
            describe(&want)
        ))
    }

    /// Checks a read of the whole file.
    pub fn check_whole(&self, path: impl AsRef<Path>, got: Seen<'_>) -> Result<(), String> {
        self.check_read(path, 0, usize::MAX, got)
    }

    /// Checks a directory on disk (SOURCE, or a mount) against the whole model: the same
    /// files with the same bytes, the same directories, nothing more.
    pub fn check_dir(&self, root: &Path) -> Result<(), String> {
        let mut files = BTreeSet::new();
        let mut dirs = BTreeSet::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let entries = fs::read_dir(root.join(&rel))
                .map_err(|e| format!("{}: cannot list: {e}", rel.display()))?;
            for e in entries {
                let e = e.map_err(|e| format!("{}: cannot list: {e}", rel.display()))?;
                let p = rel.join(e.file_name());
                let kind = e.file_type().map_err(|e| format!("{}: {e}", p.display()))?;
                if kind.is_dir() {
                    dirs.insert(p.clone());
                    stack.push(p);
                } else {
                    files.insert(p);
                }
            }
        }
        if dirs != self.dirs {
            return Err(format!(
                "directories differ: on disk {dirs:?}, model {:?}",
                self.dirs
            ));
        }
        let want: BTreeSet<PathBuf> = self.files.keys().cloned().collect();
        if files != want {
            return Err(format!("files differ: on disk {files:?}, model {want:?}"));
        }
        for p in &files {
            self.check_whole(p, seen(&fs::read(root.join(p))))?;
        }
        Ok(())
    }
}

/// A tree over time. A change made behind the readers' backs is begun (a new version
/// pushed) before it is made and finished after it is made; a read started after
/// version `lo` was finished and ended before version `hi + 1` was begun must match one
/// of versions `lo..=hi`: a single version for most reads, or, for a read a change cut
/// through (a truncate in its middle), byte by byte some version in that span, with a
/// length one of them allows.
#[derive(Debug, Clone)]
pub struct History {
    versions: Vec<Tree>,
    finished: usize,
}

impl History {
    pub fn new(first: Tree) -> History {
        History {
            versions: vec![first],
            finished: 0,
        }
    }

    /// The version a read starting now must at least see.
    pub fn start(&self) -> usize {
        self.finished
    }

    /// The newest version a read ending now may see.
    pub fn end(&self) -> usize {
        self.versions.len() - 1
    }

    pub fn now(&self) -> &Tree {
        &self.versions[self.end()]
    }

    /// Begins a change: the next version is `change` applied to the newest.
    pub fn begin(&mut self, change: impl FnOnce(&mut Tree)) {
        let mut next = self.now().clone();
        change(&mut next);
        self.versions.push(next);
    }

    /// The change begun last is made: reads from now on see it.
    pub fn finish(&mut self) {
        self.finished = self.end();
    }

    /// Checks a read that started at `lo = start()` and ended at `hi = end()`.
    pub fn check_read(
        &self,
        lo: usize,
        hi: usize,
        path: impl AsRef<Path>,
        off: u64,
        len: usize,
        got: Seen<'_>,
    ) -> Result<(), String> {
        let path = path.as_ref();
        let span = &self.versions[lo..=hi.max(lo)];
        let mut first = None;
        for t in span {
            match t.check_read(path, off, len, got) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        // A change cut through the read: each byte from some version.
        if let Ok(g) = got {
            let wants: Vec<&[u8]> = span
                .iter()
                .filter_map(|t| t.read(path, off, len).ok())
                .collect();
            let fits = wants.iter().any(|w| w.len() <= g.len())
                && wants.iter().any(|w| w.len() >= g.len())
                && g.iter()
                    .enumerate()
                    .all(|(i, b)| wants.iter().any(|w| w.get(i) == Some(b)));
            if fits {
                return Ok(());
            }
        }
        Err(format!(
            "{} (versions {lo}..={hi})",
            first.unwrap_or_default()
        ))
    }
}

/// xorshift64*: deterministic from the seed, so a failure can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_writes_truncates_and_errnos() {
        let mut t = Tree::new();
        t.put("d/f", b"hello".to_vec());
        assert_eq!(t.read("d/f", 1, 3), Ok(&b"ell"[..]));
        assert_eq!(t.read("d/f", 3, 10), Ok(&b"lo"[..]));
        assert_eq!(t.read("d/f", 9, 10), Ok(&b""[..]));
        t.write("d/f", 7, b"!");
        assert_eq!(t.bytes("d/f"), Ok(&b"hello\0\0!"[..]));
        t.truncate("d/f", 2);
        assert_eq!(t.bytes("d/f"), Ok(&b"he"[..]));
        assert_eq!(t.read("d/g", 0, 1), Err(libc::ENOENT));
        assert_eq!(t.read("d/f/x", 0, 1), Err(libc::ENOTDIR));
        assert_eq!(t.read("d", 0, 1), Err(libc::EISDIR));
        assert!(t.check_read("d/f", 0, 10, Ok(b"he")).is_ok());
        // A read that stops early is a difference, not a short file.
        assert!(t.check_read("d/f", 0, 10, Ok(b"h")).is_err());
        assert!(t.check_read("d/f", 0, 10, Err(libc::EIO)).is_err());
        assert!(t.check_read("e", 0, 1, Err(libc::ENOENT)).is_ok());
        t.remove("d");
        assert_eq!(t.bytes("d/f"), Err(libc::ENOENT));
    }

    #[test]
    fn failing_files_and_history() {
        let mut t = Tree::new();
        t.put("f", b"abcd".to_vec());
        t.fail("f", libc::EIO);
        assert!(t.check_whole("f", Err(libc::EIO)).is_ok());
        assert!(
            t.check_whole("f", Ok(b"abcd")).is_ok(),
            "bytes a cache held"
        );
        assert!(t.check_whole("f", Ok(b"abce")).is_err());
        assert!(t.check_whole("f", Err(libc::ENOENT)).is_err());
        t.heal("f");
        assert!(t.check_whole("f", Err(libc::EIO)).is_err());

        let mut h = History::new(t);
        let lo = h.start();
        h.begin(|t| t.truncate("f", 2));
        // Begun, not finished: either version.
        assert!(h.check_read(lo, h.end(), "f", 0, 9, Ok(b"abcd")).is_ok());
        assert!(h.check_read(lo, h.end(), "f", 0, 9, Ok(b"ab")).is_ok());
        // Cut through: a length between the two, bytes from either.
        assert!(h.check_read(lo, h.end(), "f", 0, 9, Ok(b"abc")).is_ok());
        assert!(h.check_read(lo, h.end(), "f", 0, 9, Ok(b"abx")).is_err());
        h.finish();
        assert!(
            h.check_read(h.start(), h.end(), "f", 0, 9, Ok(b"abcd"))
                .is_err()
        );
        h.begin(|t| t.rename("f", "g"));
        h.finish();
        assert!(
            h.check_read(h.start(), h.end(), "f", 0, 9, Err(libc::ENOENT))
                .is_ok()
        );
        assert!(
            h.check_read(h.start(), h.end(), "g", 0, 9, Ok(b"ab"))
                .is_ok()
        );
    }
}
