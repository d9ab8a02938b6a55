//! The failover journal: what a successor needs to take over the FUSE connection of a
//! daemon that died (SIGKILL, a crash), published as the daemon runs.
//!
//! The journal is a memfd the daemon appends to and its watchdog holds (it gets each
//! journal over their socket). When the daemon dies, the watchdog hands it to the
//! successor it starts, which replays it: the nodes the kernel may hold (id, object, type,
//! the parent and name they were last seen under), the devices below SOURCE in order of
//! first sight (they number the nodes to come), and the open handles as last published.
//! Nothing here is read by the daemon that writes it.
//!
//! Records are appended, never rewritten: a record cut short by the daemon's death is the
//! last one and is ignored by the reader. Node records are buffered and written in
//! batches, at once for a directory (a READDIRPLUS on it must find it after a crash, and
//! the kernel does not walk the path again for that) and for the open handles; a node
//! whose record was lost in the last moments before a crash answers ESTALE, and the
//! kernel's path walk looks it up again. When the journal has grown to twice what a fresh
//! one would hold, the inode table writes a fresh one (`InodeTable::compact_journal`)
//! and the watchdog is given it in place of the old.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use parking_lot::Mutex;

/// The first bytes of a journal; a successor that reads another version refuses it.
pub const MAGIC: &[u8] = b"CACHEFS-FAILOVER-1\n";

const NODE: u8 = 1;
const GONE: u8 = 2;
const DEV: u8 = 3;
const HANDLES: u8 = 4;

/// Written once this much is buffered, whatever the records.
const BATCH: usize = 64 << 10;
/// A journal smaller than this is never compacted.
const COMPACT_MIN: u64 = 8 << 20;

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// A node born, or seen under another parent or name, or of another type.
    Node {
        nodeid: u64,
        dev: u64,
        ino: u64,
        kind: u32,
        parent: u64,
        name: &'a [u8],
    },
    /// A node the kernel forgot.
    Gone(u64),
    /// A device below SOURCE other than the root's, the next in order of first sight.
    Dev(u64),
    /// Every open handle, in `Overlay`'s export format; the last one wins.
    Handles(&'a [u8]),
}

impl Record<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Record::Node {
                nodeid,
                dev,
                ino,
                kind,
                parent,
                name,
            } => {
                out.push(NODE);
                for v in [nodeid, dev, ino] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&kind.to_le_bytes());
                out.extend_from_slice(&parent.to_le_bytes());
                out.extend_from_slice(name);
            }
            Record::Gone(n) => {
                out.push(GONE);
                out.extend_from_slice(&n.to_le_bytes());
            }
            Record::Dev(d) => {
                out.push(DEV);
                out.extend_from_slice(&d.to_le_bytes());
            }
            Record::Handles(b) => {
                out.push(HANDLES);
                out.extend_from_slice(b);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Option<Record<'_>> {
        let (&kind, rest) = b.split_first()?;
        let u64_at = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(rest.get(i..i + 8)?.try_into().ok()?))
        };
        Some(match kind {
            NODE => Record::Node {
                nodeid: u64_at(0)?,
                dev: u64_at(8)?,
                ino: u64_at(16)?,
                kind: u32::from_le_bytes(rest.get(24..28)?.try_into().ok()?),
                parent: u64_at(28)?,
                name: rest.get(36..)?,
            },
            GONE => Record::Gone(u64_at(0)?),
            DEV => Record::Dev(u64_at(0)?),
            HANDLES => Record::Handles(rest),
            _ => return None,
        })
    }
}

/// Gives the watchdog a fresh journal in place of the one it holds; returns once it has
/// it, so that nothing is appended to a journal nobody would read.
pub type Rotate = Box<dyn Fn(BorrowedFd<'_>) -> io::Result<()> + Send + Sync>;

struct Inner {
    fd: OwnedFd,
    /// Bytes in `fd`.
    len: u64,
    /// Encoded records not yet in `fd`.
    buf: Vec<u8>,
    /// The size of the journal as last compacted: it is compacted at twice this.
    base: u64,
    /// The last handles published, for a compaction to carry.
    handles: Vec<u8>,
    /// Off for good after a write failed: a successor would read a journal with a gap.
    broken: bool,
}

/// The daemon's end of the journal.
pub struct Journal {
    inner: Mutex<Inner>,
    rotate: Rotate,
}

fn new_memfd() -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("cachefs-failover", rustix::fs::MemfdFlags::CLOEXEC)?;
    crate::fdio::pwrite_all(fd.as_fd(), MAGIC, 0)?;
    Ok(fd)
}

impl Journal {
    /// An empty journal; `rotate` hands each fresh one to the watchdog.
    pub fn new(rotate: Rotate) -> io::Result<Journal> {
        Ok(Journal {
            inner: Mutex::new(Inner {
                fd: new_memfd()?,
                len: MAGIC.len() as u64,
                buf: Vec::new(),
                base: 0,
                handles: Vec::new(),
                broken: false,
            }),
            rotate,
        })
    }

    /// A descriptor of the current journal (for the watchdog).
    pub fn fd(&self) -> io::Result<OwnedFd> {
        self.inner.lock().fd.try_clone()
    }

    /// Appends a record; `now` writes it (and what is buffered) at once.
    pub fn append(&self, rec: &Record<'_>, now: bool) {
        let mut inner = self.inner.lock();
        if inner.broken {
            return;
        }
        if let Record::Handles(b) = rec {
            inner.handles = b.to_vec();
        }
        rec.encode(&mut inner.buf);
        if now || inner.buf.len() >= BATCH {
            write_out(&mut inner);
        }
    }

    /// Writes what is buffered.
    pub fn flush(&self) {
        let mut inner = self.inner.lock();
        if !inner.buf.is_empty() && !inner.broken {
            write_out(&mut inner);
        }
    }

    /// Whether the journal has grown enough to be written afresh.
    pub fn compaction_due(&self) -> bool {
        let inner = self.inner.lock();
        !inner.broken && inner.len + inner.buf.len() as u64 > COMPACT_MIN.max(2 * inner.base)
    }

    /// Replaces the journal with a fresh one holding `fill`'s records and the last
    /// handles published, given to the watchdog before anything more is appended. The
    /// caller keeps the journal's writers out meanwhile (the inode table's lock).
    pub fn compact(&self, fill: impl FnOnce(&mut dyn FnMut(Record<'_>))) {
        let mut inner = self.inner.lock();
        let mut buf = Vec::with_capacity(1 << 20);
        fill(&mut |r| r.encode(&mut buf));
        if !inner.handles.is_empty() {
            Record::Handles(&inner.handles.clone()).encode(&mut buf);
        }
        let fresh = new_memfd().and_then(|fd| {
            crate::fdio::pwrite_all(fd.as_fd(), &buf, MAGIC.len() as u64)?;
            (self.rotate)(fd.as_fd())?;
            Ok(fd)
        });
        match fresh {
            Ok(fd) => {
                inner.fd = fd;
                inner.len = (MAGIC.len() + buf.len()) as u64;
                inner.base = inner.len;
                inner.buf.clear();
                inner.broken = false;
            }
            Err(e) => {
                tracing::warn!("failover journal: cannot write a fresh one: {e}; failover is off");
                inner.broken = true;
            }
        }
    }
}

fn write_out(inner: &mut Inner) {
    match crate::fdio::pwrite_all(inner.fd.as_fd(), &inner.buf, inner.len) {
        Ok(()) => {
            inner.len += inner.buf.len() as u64;
            inner.buf.clear();
        }
        Err(e) => {
            tracing::warn!("failover journal: {e}; failover is off");
            inner.broken = true;
        }
    }
}

/// What a journal says, replayed: the nodes (by id: object, type, parent, name), the
/// devices in order, and the last handles published.
#[derive(Debug, Default)]
pub struct Replayed {
    pub nodes: std::collections::HashMap<u64, NodeRec>,
    pub devs: Vec<u64>,
    pub handles: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRec {
    pub dev: u64,
    pub ino: u64,
    pub kind: u32,
    pub parent: u64,
    pub name: Vec<u8>,
}

/// Reads a journal. A record cut short at the end is ignored; anything else that does
/// not decode refuses the whole journal.
pub fn replay(data: &[u8]) -> Result<Replayed, String> {
    let body = data
        .strip_prefix(MAGIC)
        .ok_or("the failover journal is of another version, or damaged")?;
    let mut r = Replayed::default();
    let mut at = 0usize;
    while let Some(len) = body.get(at..at + 4) {
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(rec) = body.get(at + 4..at + 4 + len) else {
            break;
        };
        match Record::decode(rec).ok_or("the failover journal is damaged")? {
            Record::Node {
                nodeid,
                dev,
                ino,
                kind,
                parent,
                name,
            } => {
                r.nodes.insert(
                    nodeid,
                    NodeRec {
                        dev,
                        ino,
                        kind,
                        parent,
                        name: name.to_vec(),
                    },
                );
            }
            Record::Gone(n) => {
                r.nodes.remove(&n);
            }
            Record::Dev(d) => {
                if !r.devs.contains(&d) {
                    r.devs.push(d);
                }
            }
            Record::Handles(b) => r.handles = Some(b.to_vec()),
        }
        at += 4 + len;
    }
    Ok(r)
}

/// Reads the whole of a journal's memfd.
pub fn read_all(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let size = rustix::fs::fstat(fd)?.st_size as usize;
    let mut data = vec![0u8; size];
    let n = crate::fdio::pread_full(fd, &mut data, 0)?;
    data.truncate(n);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal() -> Journal {
        Journal::new(Box::new(|_| Ok(()))).unwrap()
    }

    fn node(nodeid: u64, parent: u64, name: &[u8]) -> Record<'_> {
        Record::Node {
            nodeid,
            dev: 7,
            ino: nodeid,
            kind: libc::S_IFREG,
            parent,
            name,
        }
    }

    #[test]
    fn replay_gives_the_last_word_on_each_node_and_the_last_handles() {
        let j = journal();
        j.append(&node(5, 1, b"a"), false);
        j.append(&node(6, 5, b"b"), false);
        j.append(&Record::Dev(9), false);
        j.append(&Record::Handles(b"one"), true);
        j.append(&node(6, 1, b"moved"), false);
        j.append(&Record::Gone(5), false);
        j.append(&Record::Handles(b"two"), false);
        j.flush();
        let r = replay(&read_all(j.fd().unwrap().as_fd()).unwrap()).unwrap();
        assert_eq!(r.nodes.len(), 1);
        assert_eq!(r.nodes[&6].name, b"moved");
        assert_eq!(r.nodes[&6].parent, 1);
        assert_eq!(r.devs, vec![9]);
        assert_eq!(r.handles.as_deref(), Some(&b"two"[..]));
    }

    #[test]
    fn buffered_records_are_not_in_the_journal_until_written() {
        let j = journal();
        j.append(&node(5, 1, b"a"), false);
        let r = replay(&read_all(j.fd().unwrap().as_fd()).unwrap()).unwrap();
        assert!(r.nodes.is_empty());
        j.append(&node(6, 1, b"dir"), true);
        let r = replay(&read_all(j.fd().unwrap().as_fd()).unwrap()).unwrap();
        assert_eq!(r.nodes.len(), 2);
    }

    #[test]
    fn a_record_cut_short_by_a_crash_is_ignored_and_a_garbled_one_refused() {
        let j = journal();
        j.append(&node(5, 1, b"a"), false);
        j.append(&node(6, 1, b"bb"), true);
        let data = read_all(j.fd().unwrap().as_fd()).unwrap();
        for cut in MAGIC.len()..data.len() {
            let r = replay(&data[..cut]).unwrap();
            assert!(r.nodes.len() <= 2, "cut at {cut}");
        }
        assert_eq!(replay(&data).unwrap().nodes.len(), 2);
        let mut bad = data.clone();
        bad[MAGIC.len() + 4] = 99;
        assert!(replay(&bad).is_err());
        assert!(replay(b"CACHEFS-FAILOVER-0\n").is_err());
    }

    #[test]
    fn compaction_starts_a_fresh_journal_with_what_fill_gives_and_the_handles() {
        let given = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let g = given.clone();
        let j = Journal::new(Box::new(move |_| {
            g.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }))
        .unwrap();
        for i in 0..100 {
            j.append(&node(10 + i, 1, b"old"), false);
        }
        j.append(&Record::Handles(b"h"), true);
        j.compact(|put| put(node(3, 1, b"kept")));
        assert_eq!(given.load(std::sync::atomic::Ordering::SeqCst), 1);
        let r = replay(&read_all(j.fd().unwrap().as_fd()).unwrap()).unwrap();
        assert_eq!(r.nodes.len(), 1);
        assert_eq!(r.nodes[&3].name, b"kept");
        assert_eq!(r.handles.as_deref(), Some(&b"h"[..]));
        assert!(!j.compaction_due());
    }
}
