//! Cache capacity and durability on a real mount: `max_size` is never exceeded, the least
//! recently used unpinned copy goes first, pins stay (and survive restarts), `max_age`
//! evicts, a restart serves from the cache without copying again, a damaged index is
//! rebuilt, a SIGKILL mid-copy leaves nothing partial, and a cache directory that breaks
//! under a running mount leaves reads working from SOURCE.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::common::{self, BIN, TestMount, digest, eventually, num, pattern, promote_wait, status};

const MIB: usize = 1 << 20;

fn cli(m: &TestMount, args: &[&str], rel: &str) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg(m.path(rel))
        .output()
        .expect("run cachefs")
}

fn cached(m: &TestMount, rel: &str) -> bool {
    m.cache.join("data").join(rel).exists()
}

fn files(n: usize, len: usize) -> impl FnOnce(&Path) {
    move |src: &Path| {
        for i in 0..n {
            fs::write(src.join(format!("f{i}.bin")), pattern(len, i as u64)).unwrap();
        }
    }
}

/// Bytes in the cache's data and tmp directories (apparent sizes: a temp file is
/// allocated at its full size before the copy starts), never more than were there at
/// once: a temp file counts only if it is in tmp both before and after data is walked,
/// so a copy renamed into data meanwhile is not counted twice.
fn cache_bytes(cache: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(rd) = fs::read_dir(p) else { return 0 };
        rd.flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path()),
                Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
                _ => 0,
            })
            .sum()
    }
    fn temps(tmp: &Path) -> std::collections::HashMap<std::ffi::OsString, u64> {
        let Ok(rd) = fs::read_dir(tmp) else {
            return Default::default();
        };
        rd.flatten()
            .filter_map(|e| Some((e.file_name(), e.metadata().ok()?.len())))
            .collect()
    }
    let before = temps(&cache.join("tmp"));
    let data = walk(&cache.join("data"));
    let after = temps(&cache.join("tmp"));
    let tmp: u64 = before
        .iter()
        .filter(|(name, _)| after.contains_key(*name))
        .map(|(name, len)| (*len).max(after[name]))
        .sum();
    data + tmp
}

fn read_ok(m: &TestMount, i: usize, len: usize) {
    let got = fs::read(m.path(format!("f{i}.bin"))).unwrap();
    assert_eq!(digest(&got), digest(&pattern(len, i as u64)), "f{i}.bin");
}

#[test]
fn max_size_is_never_exceeded_while_three_times_as_much_is_promoted() {
    if !common::can_mount("max_size_is_never_exceeded") {
        return;
    }
    let m = TestMount::builder()
        .option("promote=manual")
        .option("max_size=4M")
        .populate(files(6, 2 * MIB))
        .start();
    // Watch the cache's disk use the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (stop, peak, cache) = (stop.clone(), peak.clone(), m.cache.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(cache_bytes(&cache), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let out = cli(&m, &["promote", "--wait"], "");
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = status(&m);
    assert!(
        peak.load(Ordering::Relaxed) <= 4 * MIB as u64,
        "peak {} bytes in the cache, max_size 4 MiB",
        peak.load(Ordering::Relaxed)
    );
    assert!(num(&s, "cached_bytes") <= 4 * MIB as u64, "{s}");
    assert_eq!(num(&s, "promotions_done"), 6, "{s}");
    assert_eq!(num(&s, "cached_files"), 2, "{s}");
    assert_eq!(num(&s, "evictions"), 4, "{s}");
    for i in 0..6 {
        read_ok(&m, i, 2 * MIB);
    }
}

#[test]
fn least_recently_used_unpinned_copy_goes_first_and_pins_stay() {
    if !common::can_mount("least_recently_used_unpinned_copy_goes_first") {
        return;
    }
    let m = TestMount::builder()
        .option("promote=manual")
        .option("max_size=5M")
        .populate(files(5, 2 * MIB))
        .start();
    promote_wait(&m, "f0.bin");
    promote_wait(&m, "f1.bin");
    // f0 is opened after f1 was promoted: f1 is now the least recently used.
    read_ok(&m, 0, 2 * MIB);
    promote_wait(&m, "f2.bin");
    assert!(cached(&m, "f0.bin") && cached(&m, "f2.bin"));
    assert!(!cached(&m, "f1.bin"), "f1 was the least recently used");

    // Pin f2; f0 is now the only evictable copy and goes first, twice over.
    let out = cli(&m, &["pin"], "f2.bin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    promote_wait(&m, "f3.bin");
    assert!(cached(&m, "f2.bin") && cached(&m, "f3.bin") && !cached(&m, "f0.bin"));
    promote_wait(&m, "f4.bin");
    assert!(cached(&m, "f2.bin"), "a pinned copy is never evicted");
    assert!(cached(&m, "f4.bin") && !cached(&m, "f3.bin"));
    assert_eq!(num(&status(&m), "pinned_files"), 1);

    // A file that cannot fit beside the pin is not promoted, and evicts nothing.
    let out = cli(&m, &["pin"], "f4.bin");
    assert!(out.status.success());
    let out = cli(&m, &["promote", "--wait"], "f0.bin");
    assert!(!out.status.success(), "f0 cannot fit beside 4 MiB of pins");
    assert!(cached(&m, "f2.bin") && cached(&m, "f4.bin"));

    // Pins survive a restart; unpin makes the copy evictable again.
    let mut m = m;
    m.restart();
    assert_eq!(num(&status(&m), "pinned_files"), 2);
    let out = cli(&m, &["unpin"], "f2.bin");
    assert!(out.status.success());
    promote_wait(&m, "f0.bin");
    assert!(!cached(&m, "f2.bin") && cached(&m, "f0.bin") && cached(&m, "f4.bin"));
}

#[test]
fn max_age_evicts_copies_not_opened_and_spares_pins() {
    if !common::can_mount("max_age_evicts_copies_not_opened_and_spares_pins") {
        return;
    }
    let m = TestMount::builder()
        .option("promote=manual")
        .option("max_age=3s")
        .populate(files(2, MIB))
        .start();
    promote_wait(&m, "f0.bin");
    let out = cli(&m, &["pin"], "f1.bin");
    assert!(out.status.success());
    eventually("f1 to be pinned and cached", &m, || cached(&m, "f1.bin"));
    eventually("f0 to age out", &m, || !cached(&m, "f0.bin"));
    assert!(
        cached(&m, "f1.bin"),
        "pinned copies are exempt from max_age"
    );
    // The copy goes first, the count a moment after it.
    eventually("the eviction to be counted", &m, || {
        num(&status(&m), "evictions") >= 1
    });
    read_ok(&m, 0, MIB);
}

#[test]
fn restart_serves_from_cache_without_copying_again() {
    if !common::can_mount("restart_serves_from_cache_without_copying_again") {
        return;
    }
    let mut m = TestMount::builder()
        .option("promote=manual")
        .populate(files(3, MIB))
        .start();
    promote_wait(&m, "");
    m.restart();
    assert!(
        m.log_contents().contains("cache index loaded: 3 copies"),
        "{}",
        m.log_contents()
    );
    for i in 0..3 {
        read_ok(&m, i, MIB);
    }
    let s = status(&m);
    assert_eq!(num(&s, "hits"), 3, "{s}");
    assert_eq!(num(&s, "misses"), 0, "{s}");
    assert_eq!(num(&s, "promotions_done"), 0, "{s}");
    assert_eq!(num(&s, "cached_files"), 3, "{s}");
}

#[test]
fn damaged_index_is_rebuilt_from_the_cache_directory() {
    if !common::can_mount("damaged_index_is_rebuilt_from_the_cache_directory") {
        return;
    }
    let mut m = TestMount::builder()
        .option("promote=manual")
        .populate(files(2, MIB))
        .start();
    promote_wait(&m, "");
    for damage in ["truncate", "garbage"] {
        // A clean stop writes the index; damage it while the daemon is down.
        let st = m.signal_and_wait(libc::SIGTERM);
        assert!(st.success());
        let index = m.cache.join("index");
        let data = fs::read(&index).expect("a clean stop writes the index");
        match damage {
            "truncate" => fs::write(&index, &data[..data.len() / 2]).unwrap(),
            _ => fs::write(&index, b"\x00garbage\xffnot an index at all").unwrap(),
        }
        m.respawn();
        assert!(
            m.log_contents()
                .contains("the index file is damaged: rebuilt the cache index from the cache directory: 2 copies"),
            "{damage}: {}",
            m.log_contents()
        );
        let before = num(&status(&m), "hits");
        read_ok(&m, 0, MIB);
        read_ok(&m, 1, MIB);
        let s = status(&m);
        assert_eq!(num(&s, "hits"), before + 2, "{damage}: {s}");
        assert_eq!(num(&s, "promotions_done"), 0, "{damage}: {s}");
    }
}

#[test]
fn sigkill_during_a_copy_leaves_no_temp_file_and_serves_correct_bytes() {
    if !common::can_mount("sigkill_during_a_copy") {
        return;
    }
    let len = 24 * MIB;
    let mut m = TestMount::builder()
        .option("promote=manual")
        .option("promote_bw=4M")
        .populate(move |src: &Path| {
            fs::write(src.join("big.mkv"), pattern(len, 77)).unwrap();
        })
        .start();
    let out = cli(&m, &["promote"], "big.mkv");
    assert!(out.status.success());
    eventually("the copy to be under way", &m, || {
        let s = status(&m);
        s["in_flight"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|j| j["bytes_done"].as_u64())
            .is_some_and(|d| d > 0)
    });
    assert!(
        fs::read_dir(m.cache.join("tmp")).unwrap().count() > 0,
        "a temp file exists mid-copy"
    );
    m.kill_and_restart();
    let tmp: Vec<PathBuf> = fs::read_dir(m.cache.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(tmp.is_empty(), "temp files left after restart: {tmp:?}");
    assert!(!cached(&m, "big.mkv"), "no partial copy was published");
    let got = fs::read(m.path("big.mkv")).unwrap();
    assert_eq!(digest(&got), digest(&pattern(len, 77)));
    let s = status(&m);
    assert_eq!(num(&s, "cached_files"), 0, "{s}");
    assert_eq!(num(&s, "misses"), 1, "{s}");
}

#[test]
fn cache_directory_removed_under_the_mount_leaves_reads_working() {
    if !common::can_mount("cache_directory_removed_under_the_mount") {
        return;
    }
    let m = TestMount::builder()
        .option("promote=manual")
        .populate(files(2, MIB))
        .start();
    promote_wait(&m, "f0.bin");
    fs::remove_dir_all(&m.cache).unwrap();
    read_ok(&m, 0, MIB);
    read_ok(&m, 1, MIB);
    eventually("status to show the cache unusable", &m, || {
        status(&m)["cache_usable"] == Value::Bool(false)
    });
    // Promotions now fail cleanly; reads go on.
    let out = cli(&m, &["promote", "--wait"], "f1.bin");
    assert!(!out.status.success());
    read_ok(&m, 1, MIB);
    read_ok(&m, 0, MIB);
}

#[test]
fn unwritable_cache_directory_leaves_reads_working() {
    if !common::can_mount("unwritable_cache_directory_leaves_reads_working") {
        return;
    }
    let m = TestMount::builder()
        .option("promote_after=1M")
        .populate(files(2, 3 * MIB))
        .start();
    let data = m.cache.join("data");
    // Immutable: not even root can add a file there.
    let ok = Command::new("chattr").arg("+i").arg(&data).status();
    if !matches!(ok, Ok(s) if s.success()) {
        common::skip(
            "unwritable_cache_directory_leaves_reads_working",
            "chattr +i is not supported here",
        );
        return;
    }
    struct Unlock(PathBuf);
    impl Drop for Unlock {
        fn drop(&mut self) {
            let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
        }
    }
    let _unlock = Unlock(data);
    read_ok(&m, 0, 3 * MIB);
    eventually("the failed promotion to be counted", &m, || {
        num(&status(&m), "promotions_failed") >= 1
    });
    read_ok(&m, 0, 3 * MIB);
    read_ok(&m, 1, 3 * MIB);
    assert_eq!(num(&status(&m), "cached_files"), 0);
    assert_eq!(
        fs::read_dir(m.cache.join("tmp")).unwrap().count(),
        0,
        "the failed copy's temp file was removed"
    );
}

/// A small tmpfs mounted as CACHE for one test, unmounted when dropped (after the
/// `TestMount` that uses it, which must be declared after it).
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> SmallFs {
        fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs at {}", dir.display());
        SmallFs(dir.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(p: &Path) -> u64 {
    let c = common::cpath(p);
    // SAFETY: c is NUL-terminated; st is a zeroed statvfs the call fills.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0);
        st.f_bavail * st.f_frsize
    }
}

#[test]
fn min_free_is_kept_on_the_cache_filesystem() {
    if !common::can_mount("min_free_is_kept_on_the_cache_filesystem") {
        return;
    }
    let small: Arc<parking_lot::Mutex<Option<SmallFs>>> = Arc::default();
    let holder = small.clone();
    let m = TestMount::builder()
        .option("promote=manual")
        .option("min_free=25%")
        .populate(files(4, 4 * MIB))
        .populate(move |src: &Path| {
            let cache = src.parent().unwrap().join("cache");
            *holder.lock() = Some(SmallFs::mount(&cache, "16M"));
        })
        .start();
    let min_free = 4 * MIB as u64;
    assert_eq!(num(&status(&m), "min_free"), min_free);
    for i in 0..4 {
        promote_wait(&m, &format!("f{i}.bin"));
        assert!(
            free_bytes(&m.cache) >= min_free,
            "after f{i}: {} bytes free, min_free {min_free}",
            free_bytes(&m.cache)
        );
    }
    // 16 MiB holds 3 copies with 4 MiB kept free: f0 went first.
    assert!(!cached(&m, "f0.bin"));
    assert!(cached(&m, "f1.bin") && cached(&m, "f2.bin") && cached(&m, "f3.bin"));

    // Something else fills the cache filesystem: the next copy evicts what it needs.
    fs::write(m.cache.join("junk"), vec![1u8; 3 * MIB]).unwrap();
    promote_wait(&m, "f0.bin");
    assert!(free_bytes(&m.cache) >= min_free);
    assert!(cached(&m, "f0.bin"));
    assert!(
        !cached(&m, "f1.bin") && !cached(&m, "f2.bin"),
        "the two oldest went"
    );
    for i in 0..4 {
        read_ok(&m, i, 4 * MIB);
    }
    drop(m);
    drop(small);
}
