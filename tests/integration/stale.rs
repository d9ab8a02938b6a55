//! Stale-read checks, layout-agnostic. The cache never shows stale or partial bytes: with `promote_after=0` a read promotes the
//! file; once a copy is in CACHE, changes to SOURCE (behind the mount's back) and writes
//! through the mount must show on the next open. Layout-agnostic: a copy is "in the cache"
//! when some regular file under CACHE has the same contents.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{TestMount, pattern};
use crate::require_mount;

/// Whether any regular file under `dir` has exactly `want` as contents.
fn cache_holds(dir: &Path, want: &[u8]) -> bool {
    let Ok(rd) = fs::read_dir(dir) else {
        return false;
    };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let p = e.path();
        if ft.is_dir() && cache_holds(&p, want) {
            return true;
        }
        if ft.is_file()
            && e.metadata().map(|m| m.len()).ok() == Some(want.len() as u64)
            && fs::read(&p).ok().as_deref() == Some(want)
        {
            return true;
        }
    }
    false
}

/// Read `rel` through the mount until CACHE holds a copy of `want` (deadline 20 s).
fn wait_cached(m: &TestMount, rel: &str, want: &[u8]) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let got = fs::read(m.path(rel)).expect("read through mount");
        assert!(got == want, "{rel}: read through mount differs from SOURCE");
        if cache_holds(&m.cache, want) {
            return;
        }
        assert!(
            Instant::now() < end,
            "{rel} was never promoted into {} with promote_after=0",
            m.cache.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn promoting_mount(files: &[(&'static str, Vec<u8>)]) -> TestMount {
    let files = files.to_vec();
    TestMount::builder()
        .option("promote_after=0")
        .populate(move |src| {
            for (rel, data) in files {
                fs::write(src.join(rel), data).expect("populate");
            }
        })
        .start()
}

#[test]
fn source_change_shows_on_next_open() {
    require_mount!();
    let a = pattern(2 << 20, 1);
    let m = promoting_mount(&[("a.mkv", a.clone())]);
    wait_cached(&m, "a.mkv", &a);
    // Same size, new bytes, written in place in SOURCE: the copy no longer matches.
    let b = pattern(2 << 20, 2);
    fs::OpenOptions::new()
        .write(true)
        .open(m.src("a.mkv"))
        .and_then(|f| f.write_all_at(&b, 0))
        .expect("rewrite SOURCE in place");
    let got = fs::read(m.path("a.mkv")).expect("read after SOURCE changed");
    assert!(
        got == b,
        "the open after SOURCE changed served stale bytes (cached copy)"
    );
}

#[test]
fn source_replaced_by_rename_shows_on_next_open() {
    require_mount!();
    let a = pattern(1 << 20, 3);
    let m = promoting_mount(&[("a.mkv", a.clone())]);
    wait_cached(&m, "a.mkv", &a);
    // A download client replaces the file atomically: new inode, same size and mtime.
    let b = pattern(1 << 20, 4);
    let old_mtime = fs::metadata(m.src("a.mkv"))
        .and_then(|md| md.modified())
        .expect("mtime");
    fs::write(m.src(".a.mkv.part"), &b).expect("write new version");
    fs::File::options()
        .write(true)
        .open(m.src(".a.mkv.part"))
        .and_then(|f| f.set_modified(old_mtime))
        .expect("set mtime");
    fs::rename(m.src(".a.mkv.part"), m.src("a.mkv")).expect("rename in SOURCE");
    // The name may be cached by the kernel for entry_timeout; poll, never time it.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let got = fs::read(m.path("a.mkv")).expect("read");
        if got == b {
            break;
        }
        assert!(got == a, "read returned neither version (partial or mixed)");
        assert!(
            Instant::now() < end,
            "10 s after SOURCE replaced the file, the mount still serves the old copy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn writes_through_mount_drop_the_cached_copy() {
    require_mount!();
    let a = pattern(1 << 20, 5);
    let m = promoting_mount(&[("a.mkv", a.clone()), ("t.mkv", a.clone())]);
    wait_cached(&m, "a.mkv", &a);
    // Overwrite a range through the mount: the next open sees it, and so does SOURCE.
    {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.path("a.mkv"))
            .expect("open rw");
        f.seek(SeekFrom::Start(4096)).expect("seek");
        f.write_all(b"written through the mount").expect("write");
        f.seek(SeekFrom::Start(4096)).expect("seek");
        let mut buf = [0u8; 25];
        f.read_exact(&mut buf).expect("read back");
        assert_eq!(&buf, b"written through the mount");
    }
    let mut want = a.clone();
    want[4096..4096 + 25].copy_from_slice(b"written through the mount");
    assert!(
        fs::read(m.path("a.mkv")).expect("reopen") == want,
        "next open after a write through the mount served old bytes"
    );
    assert!(
        fs::read(m.src("a.mkv")).expect("SOURCE") == want,
        "write through the mount did not land in SOURCE"
    );
    // Truncate through the mount.
    wait_cached(&m, "t.mkv", &a);
    fs::OpenOptions::new()
        .write(true)
        .open(m.path("t.mkv"))
        .and_then(|f| f.set_len(1000))
        .expect("truncate");
    assert!(
        fs::read(m.path("t.mkv")).expect("reopen") == a[..1000],
        "next open after a truncate through the mount served old bytes"
    );
}
