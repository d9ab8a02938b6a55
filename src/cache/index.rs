//! What the cache holds, in memory: every published copy with its size, the time of its
//! last open through the mount and whether it is pinned, in least-recently-used order
//! (the `lru` crate). Eviction takes the least recently used unpinned copy first.
//!
//! The index file (`CACHE/index`) only speeds up startup (invariant 5). It is written at
//! a clean stop and deleted as soon as it has been read, so a daemon that dies leaves no
//! index behind and the next start rebuilds from `CACHE/data`, which is always the truth.
//! A missing, truncated or garbage file is a rebuild, never a refusal to mount.
//!
//! Format: magic `CACHEFS-INDEX-1\n`, then per entry (least recent first) u32 path length,
//! path bytes, u64 size, u64 last open (s since the epoch), u8 pinned; then u64 entry count
//! and u64 FNV-1a of everything before it. Integers are little-endian.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use lru::LruCache;

use crate::codec::{Reader, Writer};

const MAGIC: &[u8] = b"CACHEFS-INDEX-1\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub size: u64,
    /// Seconds since the epoch of the last open through the mount (or the publish).
    pub last_open: u64,
    pub pinned: bool,
}

pub struct Entries {
    lru: LruCache<PathBuf, Meta>,
    bytes: u64,
    pinned: u64,
    pinned_bytes: u64,
}

impl Default for Entries {
    fn default() -> Self {
        Entries {
            lru: LruCache::unbounded(),
            bytes: 0,
            pinned: 0,
            pinned_bytes: 0,
        }
    }
}

impl Entries {
    pub fn len(&self) -> u64 {
        self.lru.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn pinned(&self) -> u64 {
        self.pinned
    }

    pub fn pinned_bytes(&self) -> u64 {
        self.pinned_bytes
    }

    /// Adds or replaces an entry as the most recently used.
    pub fn insert(&mut self, rel: PathBuf, meta: Meta) {
        if let Some(old) = self.lru.put(rel, meta) {
            self.forget(&old);
        }
        self.bytes += meta.size;
        if meta.pinned {
            self.pinned += 1;
            self.pinned_bytes += meta.size;
        }
    }

    fn forget(&mut self, m: &Meta) {
        self.bytes -= m.size;
        if m.pinned {
            self.pinned -= 1;
            self.pinned_bytes -= m.size;
        }
    }

    pub fn remove(&mut self, rel: &Path) -> Option<Meta> {
        let m = self.lru.pop(rel)?;
        self.forget(&m);
        Some(m)
    }

    /// Marks an open: most recently used now.
    pub fn touch(&mut self, rel: &Path, now: u64) {
        if let Some(m) = self.lru.get_mut(rel) {
            m.last_open = now;
        }
    }

    pub fn get(&self, rel: &Path) -> Option<Meta> {
        self.lru.peek(rel).copied()
    }

    pub fn set_pinned(&mut self, rel: &Path, pinned: bool) -> bool {
        match self.lru.peek_mut(rel) {
            Some(m) => {
                if m.pinned != pinned {
                    m.pinned = pinned;
                    if pinned {
                        self.pinned += 1;
                        self.pinned_bytes += m.size;
                    } else {
                        self.pinned -= 1;
                        self.pinned_bytes -= m.size;
                    }
                }
                true
            }
            None => false,
        }
    }

    /// Paths at or below `rel`.
    pub fn below(&self, rel: &Path) -> Vec<PathBuf> {
        self.lru
            .iter()
            .filter(|(p, _)| p.starts_with(rel))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// The least recently used unpinned entry.
    pub fn victim(&self) -> Option<PathBuf> {
        self.victim_where(|_| true)
    }

    /// The least recently used unpinned entry that `eligible` accepts.
    pub fn victim_where(&self, mut eligible: impl FnMut(&Path) -> bool) -> Option<PathBuf> {
        self.lru
            .iter()
            .rev()
            .find(|(p, m)| !m.pinned && eligible(p))
            .map(|(p, _)| p.clone())
    }

    /// Unpinned entries not opened since `before` (seconds since the epoch).
    pub fn older_than(&self, before: u64) -> Vec<PathBuf> {
        self.lru
            .iter()
            .rev()
            .take_while(|(_, m)| m.pinned || m.last_open < before)
            .filter(|(_, m)| !m.pinned)
            .map(|(p, _)| p.clone())
            .collect()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(MAGIC);
        for (p, m) in self.lru.iter().rev() {
            w.bytes(p.as_os_str().as_bytes());
            w.u64(m.size);
            w.u64(m.last_open);
            w.u8(m.pinned as u8);
        }
        w.u64(self.lru.len() as u64);
        w.finish()
    }

    /// Parses an index file; `None` if it is not a whole, well-formed one.
    pub fn decode(data: &[u8]) -> Option<Entries> {
        let mut r = Reader::open(data, MAGIC)?;
        let mut e = Entries::default();
        // The entry count closes the body: whatever is left after the entries is it.
        while r.remaining() > 8 {
            let path = PathBuf::from(OsStr::from_bytes(r.bytes()?));
            let size = r.u64()?;
            let last_open = r.u64()?;
            let pinned = r.u8()? != 0;
            // A copy's path as a publish records it: plain names below `CACHE/data`, no
            // `.` (which would make "./a" a second key beside "a"), no NUL.
            let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
            if !plain || path.as_os_str().is_empty() || path.as_os_str().as_bytes().contains(&0) {
                return None;
            }
            // Real copies' sizes add up within a filesystem: a sum past u64 is damage,
            // and would wrap the totals every limit is checked against.
            e.bytes.checked_add(size)?;
            e.insert(
                path,
                Meta {
                    size,
                    last_open,
                    pinned,
                },
            );
        }
        let count = r.u64()?;
        (r.is_empty() && e.len() == count).then_some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(size: u64, last_open: u64, pinned: bool) -> Meta {
        Meta {
            size,
            last_open,
            pinned,
        }
    }

    #[test]
    fn lru_order_pins_and_totals() {
        let mut e = Entries::default();
        e.insert("a".into(), m(10, 1, false));
        e.insert("b".into(), m(20, 2, true));
        e.insert("c".into(), m(30, 3, false));
        assert_eq!((e.len(), e.bytes(), e.pinned()), (3, 60, 1));
        assert_eq!(e.victim(), Some("a".into()));
        e.touch(Path::new("a"), 4);
        // b is older but pinned: c goes first.
        assert_eq!(e.victim(), Some("c".into()));
        assert_eq!(e.victim_where(|p| p != Path::new("c")), Some("a".into()));
        assert_eq!(e.victim_where(|_| false), None);
        assert_eq!(e.older_than(4), vec![PathBuf::from("c")]);
        e.set_pinned(Path::new("b"), false);
        assert_eq!(e.victim(), Some("b".into()));
        e.insert("a".into(), m(5, 5, false));
        assert_eq!((e.len(), e.bytes(), e.pinned()), (3, 55, 0));
        assert_eq!(e.remove(Path::new("b")), Some(m(20, 2, false)));
        assert_eq!(e.bytes(), 35);
    }

    #[test]
    fn encode_decode_round_trip_and_garbage() {
        let mut e = Entries::default();
        e.insert("Show/S01/E1.mkv".into(), m(1 << 40, 100, true));
        e.insert("odd\nname\tx".into(), m(7, 200, false));
        let data = e.encode();
        let d = Entries::decode(&data).expect("round trip");
        assert_eq!(d.len(), 2);
        assert_eq!(d.get(Path::new("odd\nname\tx")), Some(m(7, 200, false)));
        // LRU order survives: the least recent is still first out.
        assert_eq!(d.victim(), Some("odd\nname\tx".into()));
        for cut in [0, 5, data.len() / 2, data.len() - 1] {
            assert!(
                Entries::decode(&data[..cut]).is_none(),
                "truncated at {cut}"
            );
        }
        let mut flipped = data.clone();
        flipped[MAGIC.len() + 6] ^= 1;
        assert!(Entries::decode(&flipped).is_none());
        assert!(Entries::decode(b"garbage garbage garbage garbage").is_none());
    }

    /// Found by tests/fuzz.rs (`fuzz_index_sealed_bodies`): a well-sealed index whose
    /// sizes add up past u64 panicked on the overflow (debug) or wrapped the byte total
    /// that max_size is checked against (release).
    #[test]
    fn index_sizes_that_overflow_are_refused() {
        let mut e = Entries::default();
        e.insert("a".into(), m(u64::MAX / 2 + 1, 1, false));
        let mut data = e.encode();
        let mut f = Entries::default();
        f.insert("b".into(), m(u64::MAX / 2 + 1, 1, false));
        assert!(Entries::decode(&data).is_some());
        // Splice b's entry in after a's and fix the count and the seal.
        let body = |d: &[u8]| d[MAGIC.len()..d.len() - 16].to_vec();
        let (a, b) = (body(&data), body(&f.encode()));
        let mut w = Writer::new(MAGIC);
        w.out.extend(a);
        w.out.extend(b);
        w.u64(2);
        data = w.finish();
        assert!(Entries::decode(&data).is_none());
    }

    /// Found by tests/fuzz.rs (`fuzz_index_sealed_bodies`): paths no publish records
    /// decoded as copies: empty (the data directory itself), `./a` (a second key beside
    /// `a`, its bytes counted twice) and names holding a NUL.
    #[test]
    fn index_paths_no_publish_records_are_refused() {
        for bad in [&b""[..], b"./", b"./a", b"a\0b", b"/a", b"a/../b"] {
            let mut w = Writer::new(MAGIC);
            w.bytes(bad);
            w.u64(1);
            w.u64(1);
            w.u8(0);
            w.u64(1);
            assert!(Entries::decode(&w.finish()).is_none(), "{bad:?}");
        }
    }
}
