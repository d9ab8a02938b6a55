//! Libraries larger than the daemon's descriptor limit: inodes hold no descriptor, the
//! descriptors the daemon caches stay under their bound, and its own bookkeeping never
//! shows a caller EMFILE. Objects renamed, removed or swapped for symlinks behind the
//! mount: the documented behaviour, and never an object outside SOURCE.
//!
//! Each test runs with inodes reopened by file handle (the default where SOURCE allows
//! it, as on these temp dirs as root) and by parent and name (`inode_handles=off`).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{TestMount, num, promote_wait, status};

/// The reserve the daemon keeps beside its descriptor cache (src/source.rs).
const RESERVED: u64 = 64;

/// `shows` shows of 10 seasons of 50 episodes: sparse files whose sizes differ.
fn library(src: &Path, shows: u32) {
    for show in 1..=shows {
        for season in 1..=10 {
            let d = src.join(format!("Show {show:04}/Season {season:02}"));
            fs::create_dir_all(&d).unwrap();
            for ep in 1..=50 {
                let f =
                    fs::File::create(d.join(format!("Show {show:04} - S{season:02}E{ep:02}.mkv")))
                        .unwrap();
                f.set_len(u64::from(100 + (show * 7 + season * 13 + ep * 31) % 1000) << 20)
                    .unwrap();
            }
        }
    }
}

/// `find . -printf '%p %s %T@\n'` in `dir`, sorted; panics on any line on stderr.
fn scan(dir: &Path) -> Vec<String> {
    let out = Command::new("find")
        .arg(".")
        .arg("-printf")
        .arg("%p %s %T@\n")
        .current_dir(dir)
        .output()
        .expect("run find");
    assert!(
        out.stderr.is_empty() && out.status.success(),
        "find in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

fn fd_count(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// Counts the daemon's descriptors every 5 ms until dropped; `peak()` is the most seen.
struct FdSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FdSampler {
    fn start(pid: u32) -> FdSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(fd_count(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        FdSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn peak(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for FdSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn errno_of<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn film() -> Vec<u8> {
    (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn library_scan_under_nofile_256(handles: bool) {
    let mut b = TestMount::builder()
        .nofile(256)
        .option("promote=manual")
        .populate(|src| {
            library(src, 60);
            fs::create_dir_all(src.join("Movies")).unwrap();
            fs::write(src.join("Movies/Film (2020).mkv"), film()).unwrap();
        });
    if !handles {
        b = b.option("inode_handles=off");
    }
    let m = b.start();
    promote_wait(&m, "Movies/Film (2020).mkv");
    let st = status(&m);
    assert_eq!(st["inode_handles"].as_bool(), Some(handles), "{st}");
    assert_eq!(num(&st, "fd_limit"), 256);
    let bound = num(&st, "fds_bound");

    let native = scan(&m.source);
    assert!(native.len() > 30_000, "{} entries", native.len());
    let sampler = FdSampler::start(m.pid());
    let first = scan(&m.mnt);
    let warm = scan(&m.mnt);
    let peak = sampler.peak();
    assert_eq!(first, native, "the first scan differs from SOURCE's");
    assert_eq!(warm, native, "the warm scan differs from SOURCE's");
    assert!(
        peak <= 256 && peak <= bound + RESERVED,
        "peak of {peak} descriptors, bound {bound} + {RESERVED}, limit 256"
    );
    let st = status(&m);
    // Far more inodes remembered than the daemon could ever hold descriptors for.
    assert!(num(&st, "inodes") > 30_000, "{st}");
    assert!(num(&st, "fds_cached") <= bound, "{st}");

    // After the scan: a cached read and a missing-name probe, both as on SOURCE.
    let hits = num(&st, "hits");
    assert_eq!(fs::read(m.path("Movies/Film (2020).mkv")).unwrap(), film());
    assert_eq!(num(&status(&m), "hits"), hits + 1);
    for ep in 1..=50 {
        let p = m.path(format!("Show 0042/Season 03/Show 0042 - S03E{ep:02}.srt"));
        assert_eq!(
            errno_of(fs::metadata(&p)),
            Some(libc::ENOENT),
            "{}",
            p.display()
        );
    }
}

#[test]
fn descriptors_stay_bounded_over_30000_entries_under_nofile_256_by_handle() {
    crate::require_mount!();
    library_scan_under_nofile_256(true);
}

#[test]
fn descriptors_stay_bounded_over_30000_entries_under_nofile_256_by_name() {
    crate::require_mount!();
    library_scan_under_nofile_256(false);
}

fn daemon_descriptors_never_surface_as_emfile(handles: bool) {
    let mut b = TestMount::builder()
        .nofile(256)
        .option("promote=manual")
        .populate(|src| {
            library(src, 4);
            fs::create_dir_all(src.join("many")).unwrap();
            for i in 0..400 {
                fs::write(src.join(format!("many/{i:03}")), format!("file {i}")).unwrap();
            }
        });
    if !handles {
        b = b.option("inode_handles=off");
    }
    let m = b.start();
    // Fill the descriptor cache to its bound: a lookup opens nothing, an open resolves
    // the node's descriptor and keeps it cached after the close.
    for season in 1..=10 {
        for ep in 1..=50 {
            let p = format!("Show 0001/Season {season:02}/Show 0001 - S{season:02}E{ep:02}.mkv");
            drop(fs::File::open(m.path(p)).unwrap());
        }
    }
    let st = status(&m);
    assert_eq!(num(&st, "fds_cached"), num(&st, "fds_bound"), "{st}");
    // Open files beyond what the limit leaves beside a full cache: the daemon sheds its
    // cached descriptors instead of failing the opens.
    let room = 256 - num(&st, "fds_bound") - 24;
    let mut open = Vec::new();
    for i in 0..room + 40 {
        let f = fs::File::open(m.path(format!("many/{i:03}"))).unwrap_or_else(|e| {
            panic!("open #{i} of many/{i:03}: {e}; log:\n{}", m.log_contents())
        });
        open.push(f);
    }
    let st = status(&m);
    assert!(num(&st, "fds_shed") >= 1, "{st}");
    for (i, f) in open.iter_mut().enumerate() {
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, format!("file {i}"));
    }
    // The scan still works with every cached descriptor shed and the files open.
    scan(&m.mnt.join("Show 0001"));
    // Past the limit itself the caller gets EMFILE, as it would from any process out of
    // descriptors, and the log says why and what to do.
    let mut failed = None;
    for i in open.len()..400 {
        match fs::File::open(m.path(format!("many/{i:03}"))) {
            Ok(f) => open.push(f),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let e = failed.expect("400 files open under a limit of 256");
    assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
    drop(open);
    // Once files close, everything works again.
    assert_eq!(fs::read_to_string(m.path("many/399")).unwrap(), "file 399");
    let log = m.log_contents();
    assert_eq!(
        log.matches("out of file descriptors").count(),
        1,
        "want one log line; log:\n{log}"
    );
    assert!(log.contains("LimitNOFILE"), "{log}");
}

#[test]
fn emfile_never_reaches_callers_while_the_daemon_can_shed_by_handle() {
    crate::require_mount!();
    daemon_descriptors_never_surface_as_emfile(true);
}

#[test]
fn emfile_never_reaches_callers_while_the_daemon_can_shed_by_name() {
    crate::require_mount!();
    daemon_descriptors_never_surface_as_emfile(false);
}

/// Pushes every cached descriptor out (the bound is 96 under a limit of 256): opens
/// resolve nodes' descriptors, lookups alone do not.
fn churn(m: &TestMount) {
    for show in 1..=2 {
        for season in 1..=2 {
            for ep in 1..=50 {
                let p = format!(
                    "Show {show:04}/Season {season:02}/Show {show:04} - S{season:02}E{ep:02}.mkv"
                );
                drop(fs::File::open(m.path(p)).unwrap());
            }
        }
    }
}

fn eventually_enoent(m: &TestMount, p: &Path) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match errno_of(fs::symlink_metadata(p)) {
            Some(libc::ENOENT) => return,
            Some(e) => panic!("stat {}: errno {e}, want ENOENT", p.display()),
            None => {}
        }
        assert!(
            Instant::now() < end,
            "{} still there; log:\n{}",
            p.display(),
            m.log_contents()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn renamed_and_removed_behind_the_mount(handles: bool) {
    // Names changed directly in SOURCE show once the kernel's name cache lapses.
    let mut b = TestMount::builder()
        .nofile(256)
        .option("promote=manual")
        .option("entry_timeout=1,attr_timeout=1,negative_timeout=1")
        .populate(|src| {
            library(src, 2);
            fs::create_dir_all(src.join("a/sub")).unwrap();
            for n in ["f", "held", "gone", "gone-held", "sub/x"] {
                fs::write(src.join("a").join(n), format!("content of {n}")).unwrap();
            }
        });
    if !handles {
        b = b.option("inode_handles=off");
    }
    let m = b.start();
    let ino = |rel: &str| fs::symlink_metadata(m.path(rel)).unwrap().ino();
    let (f, held, sub) = (ino("a/f"), ino("a/held"), ino("a/sub"));
    ino("a/gone");
    let mut held_file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("a/held"))
        .unwrap();
    let mut gone_held = fs::File::open(m.path("a/gone-held")).unwrap();
    let dir = fs::File::open(m.path("a/sub")).unwrap();

    for (from, to) in [("a/f", "a/f2"), ("a/held", "a/held2"), ("a/sub", "a/sub2")] {
        fs::rename(m.src(from), m.src(to)).unwrap();
    }
    fs::remove_file(m.src("a/gone")).unwrap();
    fs::remove_file(m.src("a/gone-held")).unwrap();
    churn(&m);

    // Old names: gone (after at most the entry timeout), never another object.
    for old in ["a/f", "a/held", "a/sub", "a/gone", "a/gone-held"] {
        eventually_enoent(&m, &m.path(old));
    }
    // New names: the same objects, under their old node ids.
    assert_eq!(ino("a/f2"), f);
    assert_eq!(ino("a/held2"), held);
    assert_eq!(ino("a/sub2"), sub);
    assert_eq!(fs::read_to_string(m.path("a/f2")).unwrap(), "content of f");
    assert_eq!(
        fs::read_to_string(m.path("a/sub2/x")).unwrap(),
        "content of sub/x"
    );

    // Open files and directories keep their objects while open, renamed or removed.
    let mut s = String::new();
    held_file.read_to_string(&mut s).unwrap();
    assert_eq!(s, "content of held");
    held_file.write_all(b" and more").unwrap();
    held_file
        .set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    assert_eq!(
        fs::read_to_string(m.src("a/held2")).unwrap(),
        "content of held and more"
    );
    assert_eq!(
        fs::metadata(m.src("a/held2")).unwrap().mode() & 0o777,
        0o600
    );
    let mut s = String::new();
    gone_held.read_to_string(&mut s).unwrap();
    assert_eq!(s, "content of gone-held");
    assert_eq!(gone_held.metadata().unwrap().nlink(), 0);
    gone_held.seek(SeekFrom::Start(0)).unwrap();
    churn(&m);
    assert_eq!(dir.metadata().unwrap().ino(), sub);
}

#[test]
fn renamed_or_removed_behind_the_mount_then_found_under_new_names_by_handle() {
    crate::require_mount!();
    renamed_and_removed_behind_the_mount(true);
}

#[test]
fn renamed_or_removed_behind_the_mount_then_found_under_new_names_by_name() {
    crate::require_mount!();
    renamed_and_removed_behind_the_mount(false);
}

/// Invariant 7 under a race: SOURCE/d flips between a directory and a symlink to a
/// directory outside SOURCE while readers look up, stat, open and list through the
/// mount. The kernel may follow the symlink itself (then the object is on the outside
/// directory's own filesystem, not the mount); the daemon must never: nothing read
/// through the mount's own device may be the outside file.
fn symlink_swap_race(handles: bool) {
    // The smallest descriptor cache (8), so that nodes are reopened all the time.
    let mut b = TestMount::builder()
        .nofile(80)
        .option("promote=manual")
        .option("entry_timeout=1,attr_timeout=1,negative_timeout=1");
    if !handles {
        b = b.option("inode_handles=off");
    }
    let m = b
        .populate(|src| {
            fs::create_dir_all(src.join("d/e")).unwrap();
            fs::write(src.join("d/f"), "INSIDE").unwrap();
            fs::write(src.join("d/e/g"), "INSIDE").unwrap();
            library(src, 1);
        })
        .start();
    let outside = m.root.join("outside");
    fs::create_dir_all(outside.join("e")).unwrap();
    fs::write(outside.join("f"), "OUTSIDE").unwrap();
    fs::write(outside.join("e/g"), "OUTSIDE").unwrap();
    let outside_inos = [
        fs::metadata(outside.join("f")).unwrap().ino(),
        fs::metadata(outside.join("e/g")).unwrap().ino(),
        fs::metadata(outside.join("e")).unwrap().ino(),
    ];
    let mnt_dev = fs::metadata(&m.mnt).unwrap().dev();

    let stop = Arc::new(AtomicBool::new(false));
    let escapes = Arc::new(AtomicU64::new(0));
    let checks = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for r in 0..3 {
        let (stop, escapes, checks) = (stop.clone(), escapes.clone(), checks.clone());
        let mnt = m.mnt.clone();
        readers.push(std::thread::spawn(move || {
            let escaped =
                |md: &fs::Metadata| md.dev() == mnt_dev && outside_inos.contains(&md.ino());
            while !stop.load(Ordering::Relaxed) {
                for rel in ["d/f", "d/e/g", "d/e"] {
                    let p = mnt.join(rel);
                    if let Ok(md) = fs::symlink_metadata(&p)
                        && escaped(&md)
                    {
                        escapes.fetch_add(1, Ordering::Relaxed);
                    }
                    if rel != "d/e"
                        && let Ok(mut f) = fs::OpenOptions::new()
                            .read(true)
                            .custom_flags(libc::O_NOFOLLOW)
                            .open(&p)
                    {
                        let mut s = String::new();
                        let md = f.metadata().unwrap();
                        if f.read_to_string(&mut s).is_ok() && md.dev() == mnt_dev && s == "OUTSIDE"
                        {
                            escapes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if let Ok(entries) = fs::read_dir(mnt.join("d")) {
                        for e in entries.flatten() {
                            if let Ok(md) = e.metadata()
                                && escaped(&md)
                            {
                                escapes.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    checks.fetch_add(1, Ordering::Relaxed);
                }
                if r == 0 {
                    // Push cached descriptors out, so nodes are reopened by name mid-race.
                    for season in ["Season 01"] {
                        if let Ok(d) = fs::read_dir(mnt.join("Show 0001").join(season)) {
                            for e in d.flatten() {
                                drop(fs::File::open(e.path()));
                            }
                        }
                    }
                }
            }
        }));
    }
    let (d, real) = (m.src("d"), m.src("d.real"));
    let end = Instant::now() + Duration::from_secs(3);
    let mut swaps = 0;
    while Instant::now() < end {
        fs::rename(&d, &real).unwrap();
        std::os::unix::fs::symlink(&outside, &d).unwrap();
        std::thread::sleep(Duration::from_micros(300));
        fs::remove_file(&d).unwrap();
        fs::rename(&real, &d).unwrap();
        std::thread::sleep(Duration::from_micros(300));
        swaps += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(swaps > 100 && checks.load(Ordering::Relaxed) > 100);
    assert_eq!(
        escapes.load(Ordering::Relaxed),
        0,
        "the daemon served an object outside SOURCE ({swaps} swaps)"
    );
    // Settled: the directory is back and reads as before, once the kernel's entry for `d`
    // (which may still be the symlink, for up to entry_timeout) has expired.
    let end = Instant::now() + Duration::from_secs(10);
    while fs::read_to_string(m.path("d/f")).ok().as_deref() != Some("INSIDE") {
        assert!(Instant::now() < end, "d/f never read INSIDE again");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fs::read_to_string(m.path("d/e/g")).unwrap(), "INSIDE");
    assert_eq!(fs::read_to_string(outside.join("f")).unwrap(), "OUTSIDE");
}

#[test]
fn directory_swapped_for_symlink_never_steers_the_daemon_outside_source_by_handle() {
    crate::require_mount!();
    symlink_swap_race(true);
}

#[test]
fn directory_swapped_for_symlink_never_steers_the_daemon_outside_source_by_name() {
    crate::require_mount!();
    symlink_swap_race(false);
}
