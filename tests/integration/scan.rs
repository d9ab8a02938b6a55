//! Library scans: the kernel's caches (long lifetimes, kept directory listings) and the
//! daemon's metadata cache (`meta_ttl`) with its snapshot. Changes made through the mount
//! must show at once, whatever the lifetimes; changes made directly in SOURCE show once
//! the lifetime that covers them has passed; a rescan after a restart is answered from
//! the snapshot.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::{TestMount, eventually, num, status};

/// What a scanner sees of one entry: type, size, mode, owner, links and times (ns).
type Seen = (u32, u64, u32, u32, u64, i64, i64);

/// Every entry below `root`, as `find -printf` would report it, by relative path.
fn scan(root: &Path) -> BTreeMap<PathBuf, Seen> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Seen>) {
        for e in fs::read_dir(dir).expect("read_dir") {
            let e = e.expect("entry");
            let md = fs::symlink_metadata(e.path()).expect("lstat");
            let seen = (
                md.mode() & libc::S_IFMT,
                if md.is_dir() { 0 } else { md.size() },
                md.mode() & 0o7777,
                md.uid(),
                md.nlink(),
                md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                md.ctime() * 1_000_000_000 + md.ctime_nsec(),
            );
            out.insert(e.path().strip_prefix(root).unwrap().to_path_buf(), seen);
            if md.is_dir() {
                walk(root, &e.path(), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Two shows of two seasons of three episodes, with artwork.
fn library(src: &Path) {
    for show in ["Show A", "Show B"] {
        for season in ["Season 01", "Season 02"] {
            let dir = src.join(show).join(season);
            fs::create_dir_all(&dir).unwrap();
            for ep in 1..=3 {
                fs::write(dir.join(format!("E{ep:02}.mkv")), vec![ep as u8; 1000 * ep]).unwrap();
            }
        }
        fs::write(src.join(show).join("poster.jpg"), b"jpg").unwrap();
    }
}

fn mount(options: &str) -> TestMount {
    let mut b = TestMount::builder()
        .option("promote=manual")
        .populate(library);
    for o in options.split(',').filter(|o| !o.is_empty()) {
        b = b.option(o);
    }
    b.start()
}

/// The mount and SOURCE show the same tree, entry by entry.
fn assert_scan_matches(m: &TestMount, after: &str) {
    let (through, direct) = (scan(&m.mnt), scan(&m.source));
    for (path, seen) in &direct {
        assert_eq!(
            through.get(path),
            Some(seen),
            "{path:?} after {after}: the mount shows another state than SOURCE"
        );
    }
    let extra: Vec<_> = through
        .keys()
        .filter(|p| !direct.contains_key(*p))
        .collect();
    assert!(extra.is_empty(), "after {after}, still shown: {extra:?}");
}

/// Every kind of change a user makes through the mount, each checked at once against
/// SOURCE with every cache warm: the kernel's (60 s by default) and, with `meta_ttl`,
/// the daemon's.
fn changes_through_the_mount_show_at_once(options: &str) {
    crate::require_mount!();
    let m = mount(options);
    let a = m.path("Show A/Season 01");
    assert_scan_matches(&m, "the first scan");
    // Twice: the second is answered from the caches.
    assert_scan_matches(&m, "a warm scan");

    fs::rename(a.join("E01.mkv"), a.join("E01 renamed.mkv")).unwrap();
    assert_scan_matches(&m, "a rename within a directory");
    fs::rename(a.join("E02.mkv"), m.path("Show B/Season 02/E02.mkv")).unwrap();
    assert_scan_matches(&m, "a rename across directories (over an existing name)");
    fs::rename(m.path("Show A/Season 02"), m.path("Show B/Season 03")).unwrap();
    assert_scan_matches(&m, "a directory renamed into another");
    fs::remove_file(a.join("E03.mkv")).unwrap();
    assert_scan_matches(&m, "an unlink");
    fs::set_permissions(
        m.path("Show B/poster.jpg"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    assert_scan_matches(&m, "a chmod");
    fs::OpenOptions::new()
        .append(true)
        .open(m.path("Show B/Season 01/E01.mkv"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"more bytes"))
        .unwrap();
    assert_scan_matches(&m, "a write");
    fs::OpenOptions::new()
        .write(true)
        .open(m.path("Show B/Season 01/E02.mkv"))
        .and_then(|f| f.set_len(10))
        .unwrap();
    assert_scan_matches(&m, "a truncate");
    fs::write(a.join("new.srt"), b"subtitles").unwrap();
    fs::create_dir(a.join("Extras")).unwrap();
    fs::hard_link(m.path("Show B/poster.jpg"), a.join("poster link.jpg")).unwrap();
    assert_scan_matches(&m, "a create, a mkdir and a link");
    fs::remove_dir(a.join("Extras")).unwrap();
    assert_scan_matches(&m, "an rmdir");
    // A name looked up while missing (a negative entry), then made.
    assert!(fs::metadata(a.join("E09.mkv")).is_err());
    fs::write(a.join("E09.mkv"), b"nine").unwrap();
    assert_eq!(fs::read(a.join("E09.mkv")).unwrap(), b"nine");
    assert_scan_matches(&m, "a create of a name probed while missing");
}

#[test]
fn changes_through_the_mount_show_at_once_with_kernel_caches() {
    changes_through_the_mount_show_at_once("");
}

#[test]
fn changes_through_the_mount_show_at_once_with_meta_ttl() {
    changes_through_the_mount_show_at_once("meta_ttl=1h");
}

/// Changes made directly in SOURCE, behind every cache, each of a kind a download client
/// or a second host makes.
fn change_source_directly(m: &TestMount) {
    fs::write(m.src("Show A/Season 01/E04.mkv"), b"new episode").unwrap();
    fs::remove_file(m.src("Show A/Season 01/E01.mkv")).unwrap();
    fs::write(m.src("Show A/Season 01/E02.mkv"), b"a smaller new version").unwrap();
    fs::set_permissions(
        m.src("Show B/poster.jpg"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
}

fn matches_source(m: &TestMount) -> bool {
    scan(&m.mnt) == scan(&m.source)
}

#[test]
fn a_change_in_source_shows_once_the_kernel_timeouts_pass() {
    crate::require_mount!();
    let m = mount("attr_timeout=1,entry_timeout=1,negative_timeout=1");
    assert_scan_matches(&m, "the first scan");
    change_source_directly(&m);
    eventually("the mount to show SOURCE's changes", &m, || {
        matches_source(&m)
    });
}

#[test]
fn a_change_in_source_shows_once_meta_ttl_passes() {
    crate::require_mount!();
    let m = mount("attr_timeout=1,entry_timeout=1,negative_timeout=1,meta_ttl=3");
    assert_scan_matches(&m, "the first scan");
    let before = num(&status(&m), "meta_hits");
    change_source_directly(&m);
    eventually("the mount to show SOURCE's changes", &m, || {
        matches_source(&m)
    });
    // In between, the daemon answered the kernel from its own cache.
    assert!(
        num(&status(&m), "meta_hits") > before,
        "meta_ttl=3 answered nothing from the metadata cache"
    );
}

#[test]
fn a_rescan_after_a_restart_is_answered_from_the_snapshot() {
    crate::require_mount!();
    let mut m = mount("meta_ttl=1h");
    assert_scan_matches(&m, "the first scan");
    let nodes = num(&status(&m), "meta_nodes");
    assert!(
        nodes >= 20,
        "the scan filled the metadata cache with {nodes} objects"
    );
    m.restart();
    assert!(
        !m.cache.join("meta").exists(),
        "the snapshot is deleted once loaded (a crash must not leave it behind)"
    );
    let s = status(&m);
    assert_eq!(
        num(&s, "meta_nodes"),
        nodes,
        "the snapshot holds the whole cache"
    );
    assert_scan_matches(&m, "a restart");
    let s = status(&m);
    assert_eq!(
        num(&s, "meta_misses"),
        0,
        "a lookup after the restart went to SOURCE"
    );
    assert!(num(&s, "meta_hits") >= nodes, "{s}");
    // And changes through the restarted mount still show at once.
    fs::write(m.path("Show A/new.nfo"), b"nfo").unwrap();
    fs::remove_file(m.path("Show B/poster.jpg")).unwrap();
    assert_scan_matches(&m, "changes after the restart");
}

#[test]
fn a_damaged_snapshot_only_costs_speed() {
    crate::require_mount!();
    let mut m = mount("meta_ttl=1h");
    assert_scan_matches(&m, "the first scan");
    let nodes = num(&status(&m), "meta_nodes");
    let st = m.signal_and_wait(libc::SIGTERM);
    assert!(st.success());
    let snap = m.cache.join("meta");
    let mut data = fs::read(&snap).expect("a clean stop writes the snapshot");
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    fs::write(&snap, &data).unwrap();
    // Also a change made while the daemon was down: SOURCE is read afresh.
    fs::write(m.src("Show A/while down.mkv"), b"x").unwrap();
    m.respawn();
    // Only what this start has looked up since (the root) is cached.
    assert!(
        num(&status(&m), "meta_nodes") < nodes / 2,
        "a damaged snapshot was loaded"
    );
    assert!(
        m.log_contents()
            .contains("ignoring a damaged metadata snapshot"),
        "{}",
        m.log_contents()
    );
    assert_scan_matches(&m, "a restart with a damaged snapshot");
    assert!(!snap.exists());
}

/// Found by pjdfstest (link/00, rename/23) with `meta_ttl` on: an unlink, or a rename
/// over a name, changes the link count of an object that other names still show; with
/// the directory never listed, the metadata cache had no way to tell which object a
/// name led to, and kept its old attributes.
#[test]
fn meta_ttl_link_counts_follow_unlinks_and_renames_over_a_name() {
    crate::require_mount!();
    let m = mount("meta_ttl=1h");
    let d = m.path("Show A");
    let nlink = |p: &str| fs::symlink_metadata(d.join(p)).expect("lstat").nlink();
    fs::write(d.join("n0"), b"x").unwrap();
    fs::hard_link(d.join("n0"), d.join("n1")).unwrap();
    fs::hard_link(d.join("n1"), d.join("n2")).unwrap();
    assert_eq!((nlink("n0"), nlink("n1"), nlink("n2")), (3, 3, 3));
    fs::remove_file(d.join("n0")).unwrap();
    assert_eq!((nlink("n1"), nlink("n2")), (2, 2));
    fs::remove_file(d.join("n2")).unwrap();
    assert_eq!(nlink("n1"), 1, "after the second unlink");
    // A rename over a name whose object has another link.
    fs::write(d.join("dst"), b"d").unwrap();
    fs::hard_link(d.join("dst"), d.join("dstlnk")).unwrap();
    assert_eq!(nlink("dstlnk"), 2);
    fs::write(d.join("src"), b"s").unwrap();
    fs::rename(d.join("src"), d.join("dst")).unwrap();
    assert_eq!(nlink("dstlnk"), 1, "the replaced object lost a link");
}

/// A scanner that reads a whole listing before it stats (find, fts, a media server's
/// walk) gets every entry's attributes with the listing, however large the directory:
/// no LOOKUP round trip per entry. (With FUSE_READDIRPLUS_AUTO the kernel asked for
/// attributes only with the first reply, about 180 entries, and each entry after those
/// cost a LOOKUP.)
#[test]
fn a_scan_of_a_large_directory_costs_no_lookup_per_entry() {
    crate::require_mount!();
    let m = TestMount::builder()
        .populate(|src| {
            let dir = src.join("Movies");
            fs::create_dir(&dir).expect("mkdir");
            for i in 0..1000 {
                fs::write(dir.join(format!("Film {i:04} (2020).mkv")), b"x").expect("write");
            }
        })
        .start();
    assert!(m.path("Movies").is_dir());
    let before = num(&status(&m)["source_ops"], "lookup");
    let names: Vec<PathBuf> = fs::read_dir(m.path("Movies"))
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(names.len(), 1000);
    for p in &names {
        assert_eq!(fs::symlink_metadata(p).expect("lstat").len(), 1);
    }
    let lookups = num(&status(&m)["source_ops"], "lookup") - before;
    assert_eq!(
        lookups, 0,
        "LOOKUP requests for entries the listing had already given"
    );
}

/// A directory's names in the order its listing gives them.
fn listing(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect()
}

/// Sets a directory's atime two days back, so that its next read updates it (relatime).
fn age_atime(dir: &Path) {
    let old = libc::timespec {
        tv_sec: fs::metadata(dir).expect("stat").atime() - 2 * 86_400,
        tv_nsec: 0,
    };
    let omit = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    };
    let p = crate::common::cpath(dir);
    // SAFETY: a NUL-terminated path and two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), [old, omit].as_ptr(), 0) };
    assert_eq!(rc, 0, "utimensat {}", dir.display());
}

/// A first scan's next directory is read from SOURCE ahead of the walker (`ahead.rs`),
/// and only that one: after a show's listing, its first season (in listing order); after
/// that season, a leaf, the next. Seen in SOURCE as the directories' atimes, which a
/// read updates (relatime, with atimes two days old).
#[test]
fn a_first_scan_reads_the_next_directory_ahead_and_only_that_one() {
    crate::require_mount!();
    let m = TestMount::builder()
        .populate(|src| {
            for s in 1..=3 {
                let season = src.join(format!("Show/Season {s:02}"));
                fs::create_dir_all(&season).expect("mkdir");
                fs::write(season.join("e1.mkv"), b"x").expect("write");
            }
        })
        .start();
    let order = listing(&m.src("Show"));
    assert_eq!(order.len(), 3);
    let atime = |name: &str| {
        fs::metadata(m.src("Show").join(name))
            .expect("stat")
            .atime()
    };
    for name in &order {
        age_atime(&m.src("Show").join(name));
    }
    let aged: Vec<i64> = order.iter().map(|n| atime(n)).collect();
    let listed = listing(&m.path("Show"));
    assert_eq!(listed, order, "the mount lists in SOURCE's order");
    eventually("the first season read ahead", &m, || {
        atime(&order[0]) != aged[0]
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        atime(&order[1]),
        aged[1],
        "the second season is not read yet"
    );
    assert_eq!(atime(&order[2]), aged[2], "nor the third");
    assert_eq!(
        fs::read_dir(m.path("Show").join(&order[0]))
            .expect("read_dir")
            .count(),
        1
    );
    eventually("the second season read ahead", &m, || {
        atime(&order[1]) != aged[1]
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        atime(&order[2]),
        aged[2],
        "the third season is not read yet"
    );
}
