//! The overlay's decisions, without FUSE: which mode an open is served in (SOURCE, the
//! copy through the daemon, or passthrough to the copy once the kernel agreed to
//! passthrough), how modes change at open and release, and what a reader holding a copy
//! sees when the file is written or truncated through the mount (docs/architecture.md
//! invariant 10) or changed behind it (invariant 2: a stale copy is never served).
//!
//! Requests go through `kernel::Kernel`, which checks every answer against the kernel's
//! io-mode rules and reads passthrough opens from their backing file, as the kernel
//! would. Where a test must know that a read came from the copy, it rewrites the copy's
//! bytes in place (`tamper`): only a reader of the copy sees those.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use cachefs::cache::Cache;
use cachefs::cache::promoter::Priority;
use cachefs::config::{Config, PromoteMode};
use cachefs::overlay::Overlay;

use crate::common::{DEADLINE, Dirs, errno, pattern, wait_until};
use crate::kernel::{Handle, Kernel};
use crate::model::{Tree, seen};

const RO: i32 = libc::O_RDONLY;
const RW: i32 = libc::O_RDWR;

pub struct Core {
    pub dirs: Dirs,
    pub ov: Overlay,
}

/// An overlay over SOURCE holding `files`, and the model of that tree; `passthrough` is
/// what the kernel agreed to.
pub fn core(
    files: &[(&str, Vec<u8>)],
    passthrough: bool,
    tweak: impl FnOnce(&mut Config),
) -> (Core, Tree) {
    let dirs = Dirs::new();
    let mut model = Tree::new();
    for (rel, bytes) in files {
        dirs.put(rel, bytes);
        model.put(rel, bytes.clone());
    }
    let mut cfg = dirs.config();
    tweak(&mut cfg);
    let ov = Overlay::new(Arc::new(cfg)).expect("the overlay starts");
    ov.set_passthrough(passthrough);
    (Core { dirs, ov }, model)
}

impl Core {
    pub fn kernel(&self) -> Kernel<'_> {
        Kernel::new(&self.ov, self.dirs.caller())
    }

    pub fn cache(&self) -> &Cache {
        self.ov.cache.as_deref().expect("the overlay has a cache")
    }

    pub fn promote(&self, rel: &str) {
        let r = self
            .cache()
            .promote(Path::new(rel), Priority::Explicit)
            .wait(DEADLINE);
        assert_eq!(r, Some(Ok(())), "promoting {rel}");
        assert!(self.dirs.has_copy(rel));
    }

    /// (hits, misses): opens served from a copy, and from SOURCE.
    pub fn counts(&self) -> (u64, u64) {
        let c = self.cache();
        (
            c.hits.load(Ordering::Relaxed),
            c.misses.load(Ordering::Relaxed),
        )
    }

    /// Inverts every byte of the published copy of `rel` in place, its provenance kept:
    /// what a reader of the copy reads from now on. Returns those bytes.
    pub fn tamper(&self, rel: &str) -> Vec<u8> {
        let path = self.dirs.copy(rel);
        let bytes: Vec<u8> = std::fs::read(&path)
            .expect("the copy")
            .iter()
            .map(|b| !b)
            .collect();
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("the copy, for writing");
        f.write_all_at(&bytes, 0).expect("rewriting the copy");
        bytes
    }

    /// The whole file as `h` reads it must be what the model holds.
    pub fn check(&self, model: &Tree, k: &Kernel, h: &Handle) {
        let got = k.read_all(h);
        if let Err(e) = model.check_whole(&h.rel, seen(&got)) {
            panic!("node {:#x}: {e}", h.nodeid);
        }
    }
}

/// Whether `h` reads exactly `bytes` (compared here: a failed assert_eq would print
/// them all).
fn reads(k: &Kernel, h: &Handle, bytes: &[u8]) -> bool {
    k.read_all(h).is_ok_and(|b| b == bytes)
}

/// Whether `h` reads SOURCE: through the daemon, or by passthrough to the SOURCE file
/// itself (never to a copy).
fn served_from_source(c: &Core, h: &Handle) -> bool {
    !h.keep_cache
        && h.backing.as_ref().is_none_or(|f| {
            let src = std::fs::metadata(c.dirs.src(&h.rel)).expect("the source file");
            Kernel::identity(f) == (src.dev(), src.ino())
        })
}

#[test]
fn an_uncached_file_is_served_from_source() {
    let (c, model) = core(&[("a", pattern(5000, 1))], true, |_| {});
    let mut k = c.kernel();
    let h = k.open("a", RO).expect("open");
    assert!(served_from_source(&c, &h) && !h.direct_io);
    assert_eq!(c.counts(), (0, 1));
    c.check(&model, &k, &h);
    k.release(h);
    assert!(k.violations.is_empty(), "{:?}", k.violations);
}

#[test]
fn a_valid_copy_is_served_by_the_daemon_where_the_kernel_has_no_passthrough() {
    let (c, _) = core(&[("a", pattern(5000, 1))], false, |_| {});
    c.promote("a");
    let tampered = c.tamper("a");
    let mut k = c.kernel();
    let h = k.open("a", RO).expect("open");
    assert!(h.backing.is_none() && h.keep_cache && !h.direct_io);
    assert_eq!(c.counts(), (1, 0));
    assert!(reads(&k, &h, &tampered), "read from the copy");
    k.release(h);
}

#[test]
fn passthrough_opens_of_an_inode_share_one_registration_until_the_last_release() {
    let (c, model) = core(&[("a", pattern(5000, 1))], true, |_| {});
    c.promote("a");
    let copy = Kernel::identity(&File::open(c.dirs.copy("a")).expect("the copy"));
    let mut k = c.kernel();
    let first = k.open("a", RO).expect("open");
    let second = k.open("a", RO).expect("open");
    for h in [&first, &second] {
        let backing = h.backing.as_ref().expect("passthrough");
        assert_eq!(Kernel::identity(backing), copy, "backed by the copy");
        assert!(!h.keep_cache);
    }
    assert_eq!(first.nodeid, second.nodeid);
    assert_eq!(
        k.registrations(),
        (1, 1),
        "the second open reused the first's"
    );
    c.check(&model, &k, &second);
    k.release(first);
    assert_eq!(k.registrations(), (1, 1), "kept while an open lasts");
    k.release(second);
    assert_eq!(k.registrations(), (1, 0), "closed with the last release");
    // The next open starts over: a new registration.
    let third = k.open("a", RO).expect("open");
    assert!(third.backing.is_some());
    assert_eq!(k.registrations(), (2, 1));
    k.release(third);
    assert!(k.violations.is_empty(), "{:?}", k.violations);
}

#[test]
fn a_refused_backing_file_is_served_by_the_daemon_from_the_same_copy() {
    let (c, _) = core(&[("a", pattern(5000, 1))], true, |_| {});
    c.promote("a");
    let tampered = c.tamper("a");
    let mut k = c.kernel();
    k.refuse_next_backing = true;
    let h = k.open("a", RO).expect("open");
    assert!(h.backing.is_none());
    assert!(reads(&k, &h, &tampered), "read from the copy");
    // With a daemon-served open on the inode, the next is one too.
    let h2 = k.open("a", RO).expect("open");
    assert!(h2.backing.is_none());
    k.release(h);
    k.release(h2);
    assert!(k.violations.is_empty(), "{:?}", k.violations);
}

#[test]
fn a_write_open_beside_passthrough_readers_gets_a_new_node_and_the_readers_follow() {
    let (c, mut model) = core(&[("a", pattern(300_000, 1))], true, |_| {});
    c.promote("a");
    let mut k = c.kernel();
    let reader = k.open("a", RO).expect("open");
    assert!(reader.backing.is_some());
    // The kernel would fail anything but passthrough on this inode: the core says ESTALE.
    let who = c.dirs.caller();
    assert_eq!(
        errno(&c.ov.open(&who, reader.nodeid, RW, &|_| Err(
            io::ErrorKind::Other.into()
        ))),
        Some(libc::ESTALE)
    );
    // The kernel looks the name up again and opens the object's new node.
    let writer = k.open_with("a", RW, true).expect("open for writing");
    assert_ne!(writer.nodeid, reader.nodeid);
    assert!(served_from_source(&c, &writer));
    assert!(
        !c.dirs.has_copy("a"),
        "the copy left the cache before any write"
    );

    k.write(&writer, 200_000, b"written through the mount")
        .expect("write");
    model.write("a", 200_000, b"written through the mount");
    c.check(&model, &k, &reader);
    // A new reader beside them is served from SOURCE, on the new node.
    let late = k.open("a", RO).expect("open");
    assert_eq!(late.nodeid, writer.nodeid);
    assert!(served_from_source(&c, &late));
    c.check(&model, &k, &late);
    k.ftruncate(&writer, 1000).expect("ftruncate");
    model.truncate("a", 1000);
    c.check(&model, &k, &reader);
    c.check(&model, &k, &late);
    k.truncate("a", 5).expect("truncate by path");
    model.truncate("a", 5);
    c.check(&model, &k, &reader);

    let own = reader.nodeid;
    k.release(reader);
    assert_eq!(k.registrations(), (1, 0));
    // No passthrough reader left: lookups give the object its own node again.
    assert_eq!(k.lookup("a").expect("lookup"), own);
    k.release(late);
    k.release(writer);
    assert!(k.violations.is_empty(), "{:?}", k.violations);
}

#[test]
fn a_write_while_a_daemon_reader_holds_the_copy_reaches_that_reader() {
    let (c, mut model) = core(&[("a", pattern(300_000, 1))], false, |_| {});
    c.promote("a");
    let mut k = c.kernel();
    let reader = k.open("a", RO).expect("open");
    assert!(reader.keep_cache, "served from the copy");
    let tampered = c.tamper("a");
    assert!(reads(&k, &reader, &tampered), "read from the copy");
    let writer = k.open("a", RW).expect("open for writing");
    assert_eq!(writer.nodeid, reader.nodeid, "no passthrough: one node");
    assert!(!c.dirs.has_copy("a"));
    k.write(&writer, 1000, b"new bytes").expect("write");
    model.write("a", 1000, b"new bytes");
    // Every byte, not only those written: the reader left the copy for SOURCE.
    c.check(&model, &k, &reader);
    k.release(writer);
    k.release(reader);
}

/// A copy made while a writer has the file open could hold some of its writes and not
/// others: none is published until the writer closes, and the readers then move to it.
#[test]
fn a_file_open_for_writing_is_not_promoted_until_its_writer_closes() {
    let (c, mut model) = core(&[("a", pattern(100_000, 1))], false, |_| {});
    let mut k = c.kernel();
    let writer = k.open("a", RW).expect("open for writing");
    let reader = k.open("a", RO).expect("open");
    assert!(served_from_source(&c, &reader));
    let r = c
        .cache()
        .promote(Path::new("a"), Priority::Explicit)
        .wait(DEADLINE);
    assert!(
        matches!(r, Some(Err(_))),
        "promoted while open for writing: {r:?}"
    );
    assert!(!c.dirs.has_copy("a"));
    k.write(&writer, 10, b"x").expect("write");
    model.write("a", 10, b"x");
    c.check(&model, &k, &reader);
    k.release(writer);
    c.promote("a");
    let tampered = c.tamper("a");
    // The reader moves to the new copy.
    assert!(reads(&k, &reader, &tampered), "read from the copy");
    k.release(reader);
}

#[test]
fn a_truncate_through_the_mount_reaches_readers_of_the_copy() {
    for passthrough in [false, true] {
        let (c, mut model) = core(&[("a", pattern(200_000, 1))], passthrough, |_| {});
        c.promote("a");
        let mut k = c.kernel();
        let reader = k.open("a", RO).expect("open");
        assert_eq!(reader.backing.is_some(), passthrough);
        assert_eq!(reader.keep_cache, !passthrough);
        k.truncate("a", 70_000).expect("truncate");
        model.truncate("a", 70_000);
        assert!(!c.dirs.has_copy("a"));
        c.check(&model, &k, &reader);
        k.release(reader);
        assert!(k.violations.is_empty(), "{:?}", k.violations);
    }
}

#[test]
fn a_copy_whose_source_changed_behind_the_mount_is_never_served() {
    let size = 20_000;
    let names = ["grown", "rewritten", "replaced", "restored_mtime"];
    let files: Vec<(&str, Vec<u8>)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, pattern(size, i as u8)))
        .collect();
    let (c, mut model) = core(&files, true, |_| {});
    let mut k = c.kernel();
    for name in names {
        c.promote(name);
        let path = c.dirs.src(name);
        let mtime = std::fs::metadata(&path)
            .expect("stat")
            .modified()
            .expect("mtime");
        let new = match name {
            "grown" => [pattern(size, 0), b"more".to_vec()].concat(),
            _ => pattern(size, 77),
        };
        match name {
            "replaced" => {
                // Same size and mtime, another inode.
                let tmp = path.with_extension("new");
                std::fs::write(&tmp, &new).expect("write");
                File::options()
                    .write(true)
                    .open(&tmp)
                    .and_then(|f| f.set_modified(mtime))
                    .expect("mtime");
                std::fs::rename(&tmp, &path).expect("rename over");
            }
            "restored_mtime" => {
                // Same size, same mtime, same inode: only the ctime tells.
                std::fs::write(&path, &new).expect("rewrite");
                File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(mtime))
                    .expect("mtime");
            }
            _ => std::fs::write(&path, &new).expect("rewrite"),
        }
        model.put(name, new);
        let (hits, misses) = c.counts();
        let h = k.open(name, RO).expect("open");
        assert!(
            served_from_source(&c, &h),
            "{name}: served from a stale copy"
        );
        assert_eq!(c.counts(), (hits, misses + 1), "{name}");
        c.check(&model, &k, &h);
        k.release(h);
        // Dropped at once, or once the background check compared the bytes.
        wait_until(&format!("the stale copy of {name} to go"), || {
            !c.dirs.has_copy(name)
        });
    }
    assert!(k.violations.is_empty(), "{:?}", k.violations);
}

#[test]
fn a_copy_whose_source_changed_in_metadata_only_is_served_again_once_compared() {
    let (c, model) = core(&[("a", pattern(20_000, 1))], true, |_| {});
    c.promote("a");
    // A chmod behind the mount: the ctime moves, the bytes do not.
    let path = c.dirs.src("a");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o640))
        .expect("chmod");
    let mut k = c.kernel();
    let h = k.open("a", RO).expect("open");
    assert!(
        served_from_source(&c, &h),
        "not served before it is compared"
    );
    k.release(h);
    wait_until("the copy to be compared and kept", || {
        c.ov.is_cached(Path::new("a"))
    });
    let h = k.open("a", RO).expect("open");
    assert!(h.backing.is_some(), "served from the copy again");
    c.check(&model, &k, &h);
    k.release(h);
}

#[test]
fn o_direct_opens_are_direct_io_never_passthrough() {
    let (c, model) = core(&[("a", pattern(8192, 1))], true, |_| {});
    c.promote("a");
    let mut k = c.kernel();
    let h = k.open("a", RO | libc::O_DIRECT).expect("open");
    assert!(h.direct_io && h.backing.is_none() && !h.keep_cache);
    c.check(&model, &k, &h);
    // A passthrough open beside a direct-I/O one is one the kernel allows.
    let p = k.open("a", RO).expect("open");
    assert!(
        p.backing.is_none(),
        "the core serves it through the daemon all the same"
    );
    k.release(p);
    k.release(h);
    // Beside passthrough readers, an O_DIRECT open goes to a new node.
    let p = k.open("a", RO).expect("open");
    assert!(p.backing.is_some());
    let d = k.open_with("a", RO | libc::O_DIRECT, true).expect("open");
    assert!(d.direct_io && d.nodeid != p.nodeid);
    c.check(&model, &k, &d);
    k.release(d);
    k.release(p);
    assert!(k.violations.is_empty(), "{:?}", k.violations);
}

#[test]
fn the_policy_promotes_after_promote_after_bytes_and_the_reader_moves_to_the_copy() {
    let (c, _) = core(&[("a", pattern(256 << 10, 1))], false, |cfg| {
        cfg.promote = PromoteMode::Auto;
        cfg.promote_after = 64 << 10;
    });
    let mut k = c.kernel();
    let h = k.open("a", RO).expect("open");
    assert_eq!(
        k.read(&h, 0, (64 << 10) - 1).expect("read").len(),
        (64 << 10) - 1
    );
    assert!(c.cache().promoter.running().is_empty() && c.cache().promoter.queued() == 0);
    assert!(!c.dirs.has_copy("a"), "one byte short of promote_after");
    k.read(&h, 100_000, 1).expect("read");
    // Published and counted: the copy exists, and open handles can know it.
    wait_until("the policy's copy", || {
        c.cache().promoter.stats().done.load(Ordering::Relaxed) == 1
    });
    let tampered = c.tamper("a");
    assert!(reads(&k, &h, &tampered), "moved to the copy");
    let again = k.open("a", RO).expect("open");
    assert!(again.keep_cache);
    k.release(again);
    k.release(h);
}

#[test]
fn a_write_open_during_a_copy_cancels_it() {
    // 32 MiB at 8 MiB/s (one second of burst): 3 s or more unless cancelled.
    let (c, _) = core(&[], false, |cfg| cfg.promote_bw = 8 << 20);
    c.dirs.put_sparse("big", 32 << 20);
    let job = c.cache().promote(Path::new("big"), Priority::Policy);
    wait_until("the copy to start", || {
        job.bytes_total.load(Ordering::Relaxed) > 0
    });
    let mut k = c.kernel();
    let w = k.open("big", RW).expect("open for writing");
    let r = job.wait(DEADLINE).expect("the copy ends");
    assert!(r.as_ref().is_err_and(|e| e.contains("cancelled")), "{r:?}");
    assert!(!c.dirs.has_copy("big"));
    assert_eq!(c.dirs.temp_files(), 0);
    k.release(w);
}

#[test]
fn a_read_only_mount_refuses_writes_and_an_unusable_cache_serves_source() {
    let (c, model) = core(&[("a", pattern(100, 1))], true, |cfg| cfg.read_only = true);
    c.promote("a");
    let mut k = c.kernel();
    assert_eq!(errno(&k.open("a", RW)), Some(libc::EROFS));
    assert_eq!(errno(&k.truncate("a", 0)), Some(libc::EROFS));
    c.cache().ledger.mark_unusable("a test");
    let h = k.open("a", RO).expect("open");
    assert!(served_from_source(&c, &h));
    c.check(&model, &k, &h);
    k.release(h);
}

/// A copy that starts while a write is landing: the write moves the source's timestamps
/// once, before its bytes, so a copy whose "before" stat came after that and whose reads
/// overlapped the bytes landing would pass the promoter's "after" check with bytes the
/// source never held. The write cancels the copy in flight. Before it did, 4 rounds in
/// 60 served such a copy here; now it must be none in 100.
#[test]
fn a_copy_racing_a_write_through_the_mount_is_never_served_mixed() {
    const LEN: usize = 8 << 20;
    let (c, _) = core(&[("a", pattern(LEN, 1))], false, |_| {});
    let mut k = c.kernel();
    let w = k.open("a", RW).expect("open for writing");
    let who = c.dirs.caller();
    let versions: Vec<Vec<u8>> = (0..2).map(|i| pattern(LEN, 50 + i)).collect();
    for round in 0..100 {
        let data = &versions[round % 2];
        let job = c.cache().promote(Path::new("a"), Priority::Explicit);
        // One request, one pwrite of the whole file.
        c.ov.write(&who, w.fh, 0, data, false, false)
            .expect("write");
        let _ = job.wait(DEADLINE);
        let st = rustix::fs::stat(c.dirs.src("a")).expect("stat");
        if let Some(copy) = c
            .cache()
            .lookup(Path::new("a"), &cachefs::cache::store::Provenance::of(&st))
        {
            let mut got = vec![0u8; LEN];
            copy.read_exact_at(&mut got, 0).expect("read the copy");
            assert!(&got == data, "round {round}: a copy the source never held");
        }
    }
    k.release(w);
}

/// With `meta_ttl`, an open of a cached file is answered without SOURCE: from the copy
/// whose provenance matches the attributes the kernel was shown. A change made directly
/// in SOURCE behind the mount (new bytes, a new size) therefore shows only once the
/// entry expires; before that the reader gets the whole old file, never a mix. Without
/// `meta_ttl` the same open checks SOURCE and reads the new bytes.
#[test]
fn with_meta_ttl_an_open_of_a_cached_file_reads_the_view_the_kernel_was_shown() {
    let old = pattern(2 << 20, 1);
    let new = pattern(3 << 20, 2);
    for meta_ttl in [3600, 0] {
        let (c, _) = core(&[("d/a", old.clone())], true, |cfg| {
            cfg.meta_ttl = std::time::Duration::from_secs(meta_ttl);
        });
        c.promote("d/a");
        let mut k = c.kernel();
        k.lookup("d/a").expect("lookup");
        // Behind the mount: another file at the name, with other bytes and size.
        let tmp = c.dirs.src("d/a.new");
        std::fs::write(&tmp, &new).expect("write the new file");
        std::fs::rename(&tmp, c.dirs.src("d/a")).expect("replace the source");
        // The kernel's dentry still names the old object (as does the metadata cache).
        let h = k.open_with("d/a", RO, true).expect("open");
        let got = k.read_all(&h).expect("read");
        if meta_ttl > 0 {
            assert!(got == old, "meta_ttl on: the bytes of the attributes shown");
            assert!(
                !served_from_source(&c, &h),
                "meta_ttl on: served from the copy"
            );
            assert!(
                c.dirs.has_copy("d/a"),
                "the copy stays while its entry is fresh"
            );
        } else {
            assert!(got == new, "meta_ttl off: the open checks SOURCE");
            assert!(served_from_source(&c, &h));
        }
        k.release(h);
        assert!(k.violations.is_empty(), "{:?}", k.violations);
    }
}

/// A handle opened from memory has no SOURCE file until something needs one: a lock
/// opens it then (as the caller who opened the handle), on the same object.
#[test]
fn a_handle_opened_from_memory_opens_source_only_when_needed() {
    let bytes = pattern(2 << 20, 3);
    let (c, _) = core(&[("a", bytes.clone())], true, |cfg| {
        cfg.meta_ttl = std::time::Duration::from_secs(3600);
    });
    c.promote("a");
    let mut k = c.kernel();
    let h = k.open("a", RO).expect("open");
    assert!(c.ov.handle_without_source(h.fh), "answered from memory");
    assert!(reads(&k, &h, &bytes));
    let lk = cachefs::overlay::LockRequest {
        owner: 7,
        typ: libc::F_RDLCK,
        start: 0,
        end: u64::MAX,
        pid: std::process::id(),
        flock: false,
    };
    c.ov.setlk(h.fh, &lk).expect("a read lock");
    assert!(!c.ov.handle_without_source(h.fh), "the lock opened SOURCE");
    k.release(h);
}
