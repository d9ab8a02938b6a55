//! The SSD cache on a real mount: promotion by policy and by `cachefs promote`, reads
//! served from the copy (status hits, the copy on disk), never a stale byte after the
//! source changes behind the mount or through it, single-flight promotion, readers that
//! opened before a promotion, prefetch, and passthrough on and off.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{self, BIN, TestMount, digest, eventually, num, pattern, promote_wait, status};

const MIB: usize = 1 << 20;

fn copy_path(m: &TestMount, rel: &str) -> PathBuf {
    m.cache.join("data").join(rel)
}

fn read_all(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn with_files(files: &'static [(&'static str, usize, u64)]) -> impl FnOnce(&Path) {
    move |src: &Path| {
        for (rel, len, seed) in files {
            let p = src.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, pattern(*len, *seed)).unwrap();
        }
    }
}

fn promoted_and_served(passthrough: &str) {
    if !common::can_mount("promoted_and_served") {
        return;
    }
    let m = TestMount::builder()
        .option(&format!("passthrough={passthrough}"))
        .option("promote=manual")
        .populate(with_files(&[("Show/S01E01.mkv", 5 * MIB + 123, 1)]))
        .start();
    let want = digest(&pattern(5 * MIB + 123, 1));
    let rel = "Show/S01E01.mkv";

    // Uncached: served from SOURCE, and no copy appears by itself in manual mode.
    assert_eq!(digest(&read_all(&m.path(rel))), want);
    let s = status(&m);
    assert_eq!(num(&s, "misses"), 1, "{s}");
    assert_eq!(num(&s, "hits"), 0, "{s}");
    assert!(!copy_path(&m, rel).exists());

    promote_wait(&m, rel);
    assert_eq!(
        digest(&read_all(&copy_path(&m, rel))),
        want,
        "the copy is whole"
    );
    let s = status(&m);
    assert_eq!(num(&s, "promotions_done"), 1, "{s}");
    assert_eq!(num(&s, "cached_files"), 1, "{s}");
    assert_eq!(num(&s, "cached_bytes"), (5 * MIB + 123) as u64, "{s}");
    assert_eq!(
        s["passthrough"].as_bool(),
        Some(passthrough != "off"),
        "passthrough={passthrough}: {s}"
    );

    // Now served from the copy, with the same bytes, from two handles at once.
    let mut a = fs::File::open(m.path(rel)).unwrap();
    let mut b = fs::File::open(m.path(rel)).unwrap();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    a.read_to_end(&mut x).unwrap();
    b.read_to_end(&mut y).unwrap();
    assert_eq!(digest(&x), want);
    assert_eq!(digest(&y), want);
    // Random access too.
    a.seek(SeekFrom::Start(3 * MIB as u64 + 7)).unwrap();
    let mut buf = vec![0u8; 4096];
    a.read_exact(&mut buf).unwrap();
    assert_eq!(
        buf,
        pattern(5 * MIB + 123, 1)[3 * MIB + 7..3 * MIB + 7 + 4096]
    );
    drop((a, b));
    let s = status(&m);
    assert_eq!(num(&s, "hits"), 2, "{s}");

    // The mount still shows the source's attributes.
    let (mm, sm) = (
        fs::metadata(m.path(rel)).unwrap(),
        fs::metadata(m.src(rel)).unwrap(),
    );
    assert_eq!(
        (mm.len(), mm.mtime(), mm.mtime_nsec(), mm.mode()),
        (sm.len(), sm.mtime(), sm.mtime_nsec(), sm.mode())
    );
}

#[test]
fn promoted_file_is_served_from_cache_with_passthrough() {
    promoted_and_served("auto");
}

#[test]
fn promoted_file_is_served_from_cache_without_passthrough() {
    promoted_and_served("off");
}

#[test]
fn source_changed_behind_the_mount_is_never_served_stale() {
    if !common::can_mount("source_changed_behind_the_mount_is_never_served_stale") {
        return;
    }
    for passthrough in ["auto", "off"] {
        let m = TestMount::builder()
            .option(&format!("passthrough={passthrough}"))
            .option("promote=manual")
            .populate(with_files(&[("a.bin", 2 * MIB, 2)]))
            .start();
        promote_wait(&m, "a.bin");
        assert_eq!(
            digest(&read_all(&m.path("a.bin"))),
            digest(&pattern(2 * MIB, 2))
        );

        // Same size, new content and mtime, written straight to SOURCE.
        let new = pattern(2 * MIB, 3);
        fs::write(m.src("a.bin"), &new).unwrap();
        assert_eq!(
            digest(&read_all(&m.path("a.bin"))),
            digest(&new),
            "passthrough={passthrough}: a new open must see the new source"
        );
        eventually("the stale copy to be dropped", &m, || {
            !copy_path(&m, "a.bin").exists()
        });

        // Only the mtime changes (same size and bytes): the copy is not used.
        promote_wait(&m, "a.bin");
        let f = fs::File::options()
            .write(true)
            .open(m.src("a.bin"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
        drop(f);
        let before = num(&status(&m), "hits");
        assert_eq!(digest(&read_all(&m.path("a.bin"))), digest(&new));
        assert_eq!(
            num(&status(&m), "hits"),
            before,
            "passthrough={passthrough}: a copy whose source mtime changed was used"
        );
    }
}

#[test]
fn write_through_the_mount_drops_the_copy() {
    if !common::can_mount("write_through_the_mount_drops_the_copy") {
        return;
    }
    let m = TestMount::builder()
        .option("promote=manual")
        .populate(with_files(&[("w.bin", MIB, 4), ("t.bin", MIB, 5)]))
        .start();
    promote_wait(&m, "w.bin");
    promote_wait(&m, "t.bin");
    assert!(copy_path(&m, "w.bin").exists());

    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(m.path("w.bin"))
        .unwrap();
    assert!(
        !copy_path(&m, "w.bin").exists(),
        "the copy must go before the first write returns"
    );
    f.write_all(b"XYZ").unwrap();
    drop(f);
    let mut want = pattern(MIB, 4);
    want[..3].copy_from_slice(b"XYZ");
    assert_eq!(digest(&read_all(&m.path("w.bin"))), digest(&want));
    assert_eq!(
        digest(&read_all(&m.src("w.bin"))),
        digest(&want),
        "the write reached SOURCE"
    );

    // truncate(2) on the path drops the copy too.
    truncate(&m.path("t.bin"), 1000);
    assert!(!copy_path(&m, "t.bin").exists());
    assert_eq!(read_all(&m.path("t.bin")), pattern(MIB, 5)[..1000].to_vec());
    assert_eq!(num(&status(&m), "cached_files"), 0);
}

fn truncate(p: &Path, len: i64) {
    let c = common::cpath(p);
    // SAFETY: c is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), len) }, 0, "truncate");
}

#[test]
fn rename_and_unlink_through_the_mount_keep_the_cache_consistent() {
    if !common::can_mount("rename_and_unlink_through_the_mount_keep_the_cache_consistent") {
        return;
    }
    let m = TestMount::builder()
        .option("promote=manual")
        .populate(with_files(&[("d/r.bin", MIB, 6), ("d/u.bin", MIB, 7)]))
        .start();
    promote_wait(&m, "d");
    fs::rename(m.path("d/r.bin"), m.path("d/renamed.bin")).unwrap();
    assert!(!copy_path(&m, "d/r.bin").exists());
    let hits = num(&status(&m), "hits");
    assert_eq!(
        digest(&read_all(&m.path("d/renamed.bin"))),
        digest(&pattern(MIB, 6))
    );
    assert_eq!(
        num(&status(&m), "hits"),
        hits + 1,
        "the copy moves with a rename: it still matches its source"
    );
    fs::remove_file(m.path("d/u.bin")).unwrap();
    assert!(!copy_path(&m, "d/u.bin").exists());
    assert_eq!(num(&status(&m), "cached_files"), 1);
}

#[test]
fn policy_promotes_after_threshold_and_prefetches_the_next_episode() {
    if !common::can_mount("policy_promotes_after_threshold_and_prefetches_the_next_episode") {
        return;
    }
    let m = TestMount::builder()
        .option("promote_after=2M")
        .option("prefetch=1")
        .populate(with_files(&[
            ("S1/Episode 9.mkv", 3 * MIB, 10),
            ("S1/Episode 10.mkv", 3 * MIB, 11),
            ("S1/Episode 11.mkv", 3 * MIB, 12),
            ("S1/Episode 10.nfo", 1000, 13),
        ]))
        .start();
    // A scanner reading a header does not promote.
    let mut f = fs::File::open(m.path("S1/Episode 9.mkv")).unwrap();
    let mut head = vec![0u8; 64 * 1024];
    f.read_exact(&mut head).unwrap();
    drop(f);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(num(&status(&m), "promotions_done"), 0);
    assert!(!copy_path(&m, "S1/Episode 9.mkv").exists());

    // Playback reads past the threshold: the file and the next episode ("10" after "9",
    // in natural order, and not "Episode 10.nfo") are promoted, and Episode 10's .nfo
    // with it, as its sidecar.
    assert_eq!(
        digest(&read_all(&m.path("S1/Episode 9.mkv"))),
        digest(&pattern(3 * MIB, 10))
    );
    eventually("Episode 9 and Episode 10 to be promoted", &m, || {
        num(&status(&m), "promotions_done") == 3
    });
    assert_eq!(
        digest(&read_all(&copy_path(&m, "S1/Episode 9.mkv"))),
        digest(&pattern(3 * MIB, 10))
    );
    assert!(copy_path(&m, "S1/Episode 10.mkv").exists());
    assert!(!copy_path(&m, "S1/Episode 11.mkv").exists());
    assert!(copy_path(&m, "S1/Episode 10.nfo").exists());
    assert_eq!(num(&status(&m), "cached_files"), 3);
}

/// An open for writing cancels the promotion in flight; a reader that opens after it
/// gets a promotion of its own, and the file is cached without any further read (the
/// reader once joined the cancelled job, which published nothing).
#[test]
fn a_read_after_a_write_cancelled_the_promotion_promotes_again() {
    if !common::can_mount("a_read_after_a_write_cancelled_the_promotion_promotes_again") {
        return;
    }
    let len = 3 * MIB;
    let m = TestMount::builder()
        .option("promote_after=0")
        .option("prefetch=0")
        .option("promote_bw=1M")
        .populate(with_files(&[("film.mkv", 3 * MIB, 21)]))
        .start();
    let mut head = vec![0u8; 4096];
    fs::File::open(m.path("film.mkv"))
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    eventually("the first promotion to be under way", &m, || {
        status(&m)["in_flight"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    drop(
        fs::OpenOptions::new()
            .write(true)
            .open(m.path("film.mkv"))
            .unwrap(),
    );
    fs::File::open(m.path("film.mkv"))
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    eventually("the file to be promoted after all", &m, || {
        copy_path(&m, "film.mkv").exists()
    });
    assert_eq!(
        digest(&read_all(&copy_path(&m, "film.mkv"))),
        digest(&pattern(len, 21))
    );
}

#[test]
fn concurrent_readers_share_one_promotion() {
    if !common::can_mount("concurrent_readers_share_one_promotion") {
        return;
    }
    let m = TestMount::builder()
        .option("promote_after=1M")
        .option("prefetch=0")
        // Slow the copy down so both readers cross the threshold while it runs.
        .option("promote_bw=8M")
        .populate(with_files(&[("big.bin", 8 * MIB, 20)]))
        .start();
    let want = digest(&pattern(8 * MIB, 20));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let p = m.path("big.bin");
            std::thread::spawn(move || digest(&fs::read(p).unwrap()))
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), want);
    }
    eventually("the promotion to finish", &m, || {
        num(&status(&m), "promotions_done") >= 1
    });
    std::thread::sleep(Duration::from_millis(300));
    let s = status(&m);
    assert_eq!(num(&s, "promotions_done"), 1, "one copy, not two: {s}");
    assert_eq!(num(&s, "promotions_failed"), 0, "{s}");
    assert_eq!(
        fs::read_dir(m.cache.join("tmp")).unwrap().count(),
        0,
        "no temp file left"
    );
}

#[test]
fn reader_open_before_promotion_reads_correct_bytes_during_and_after() {
    if !common::can_mount("reader_open_before_promotion_reads_correct_bytes_during_and_after") {
        return;
    }
    let len = 6 * MIB;
    let m = TestMount::builder()
        .option("promote=manual")
        .option("passthrough=off")
        .option("promote_bw=16M")
        .populate(with_files(&[("movie.mkv", 6 * MIB, 30)]))
        .start();
    let want = pattern(len, 30);
    let mut f = fs::File::open(m.path("movie.mkv")).unwrap();
    let mut got = vec![0u8; MIB];
    f.read_exact(&mut got).unwrap();

    // Promote from another process while this handle reads on.
    let mnt = m.path("movie.mkv");
    let promoter = std::thread::spawn(move || {
        Command::new(BIN)
            .arg("promote")
            .arg("--wait")
            .arg(mnt)
            .output()
            .unwrap()
            .status
    });
    let mut chunk = vec![0u8; 256 * 1024];
    while got.len() < len / 2 {
        let n = f.read(&mut chunk).unwrap();
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(promoter.join().unwrap().success());
    assert!(copy_path(&m, "movie.mkv").exists());
    f.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), len);
    assert_eq!(digest(&got), digest(&want));
    // Seek back into what was read before the copy existed.
    f.seek(SeekFrom::Start(100)).unwrap();
    let mut again = vec![0u8; 1000];
    f.read_exact(&mut again).unwrap();
    assert_eq!(again, want[100..1100]);
}

#[test]
fn evict_drops_the_copy_and_leaves_the_source() {
    if !common::can_mount("evict_drops_the_copy_and_leaves_the_source") {
        return;
    }
    let m = TestMount::builder()
        .option("promote=manual")
        .populate(with_files(&[("e.bin", MIB, 40)]))
        .start();
    promote_wait(&m, "e.bin");
    let out = Command::new(BIN)
        .arg("evict")
        .arg(m.path("e.bin"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!copy_path(&m, "e.bin").exists());
    assert_eq!(
        digest(&read_all(&m.src("e.bin"))),
        digest(&pattern(MIB, 40))
    );
    assert_eq!(
        digest(&read_all(&m.path("e.bin"))),
        digest(&pattern(MIB, 40))
    );
    assert_eq!(num(&status(&m), "cached_files"), 0);
}

/// Found by review: `cachefs evict MOUNTPOINT` said it evicted every copy and dropped them
/// from the index, but left their files in the cache directory (the root path did not
/// resolve), so `cached_bytes` undercounted what the cache held.
#[test]
fn evict_of_the_mount_root_removes_every_copy_from_the_cache_directory() {
    crate::require_mount!();
    let m = TestMount::builder()
        .option("promote=manual")
        .populate(|src| {
            fs::create_dir(src.join("Show")).unwrap();
            fs::write(src.join("a.bin"), pattern(MIB, 41)).unwrap();
            fs::write(src.join("Show/b.bin"), pattern(MIB, 42)).unwrap();
        })
        .start();
    promote_wait(&m, "a.bin");
    promote_wait(&m, "Show/b.bin");
    let out = Command::new(BIN).arg("evict").arg(&m.mnt).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!copy_path(&m, "a.bin").exists());
    assert!(!copy_path(&m, "Show/b.bin").exists());
    assert_eq!(num(&status(&m), "cached_files"), 0);
    assert_eq!(
        digest(&read_all(&m.path("Show/b.bin"))),
        digest(&pattern(MIB, 42))
    );
}

/// `program` (a copy of `/bin/{tool}` named `name`, so the kernel's comm for it is `name`
/// cut to 15 bytes) run with `args`; it must succeed.
fn run_as(bin: &Path, name: &str, tool: &str, args: &[&std::ffi::OsStr]) {
    let exe = bin.join(name);
    if !exe.exists() {
        fs::copy(Path::new("/bin").join(tool), &exe).expect("copy a tool under a new name");
    }
    let out = Command::new(&exe)
        .args(args)
        .output()
        .expect("run the renamed tool");
    assert!(out.status.success(), "{name}: {out:?}");
}

/// Issue 12: reads by the processes of `promote_ignore` never promote (the default list
/// holds Plex's scanner and ffprobe), whether the process itself is listed or it was
/// started by a listed one; a file smaller than `promote_after` is promoted once one open
/// has read all of it, but not a sidecar file below `policy::WHOLE_FILE_MIN`.
#[test]
fn ignored_readers_never_promote_and_small_files_read_whole_do() {
    if !common::can_mount("ignored_readers_never_promote_and_small_files_read_whole_do") {
        return;
    }
    let m = TestMount::builder()
        .option("prefetch=0")
        .populate(with_files(&[
            ("Album/01 Intro.flac", 2 * MIB, 50),
            ("Album/02 Song.flac", 2 * MIB + 17, 51),
            ("Album/cover.jpg", 100 * 1024, 52),
        ]))
        .start();
    let bin = tempfile::tempdir().expect("temp dir for renamed tools");
    let track = m.path("Album/01 Intro.flac");
    // ffprobe reads the whole track itself; Plex's scanner has a child (cat, through a
    // shell that does not exec it) read it.
    run_as(bin.path(), "ffprobe", "cat", &[track.as_os_str()]);
    run_as(
        bin.path(),
        "Plex Media Scanner",
        "sh",
        &[
            "-c".as_ref(),
            "cat \"$1\" >/dev/null; true".as_ref(),
            "sh".as_ref(),
            track.as_os_str(),
        ],
    );
    // A poster read whole by anyone: below the whole-file minimum.
    assert_eq!(read_all(&m.path("Album/cover.jpg")).len(), 100 * 1024);
    std::thread::sleep(Duration::from_millis(300));
    let s = status(&m);
    assert_eq!(num(&s, "promotions_done") + num(&s, "queued"), 0, "{s}");
    assert!(
        s["in_flight"].as_array().is_some_and(|a| a.is_empty()),
        "{s}"
    );

    // A player reading the track to its end promotes it, though it is far below the
    // 16M of promote_after.
    assert_eq!(digest(&read_all(&track)), digest(&pattern(2 * MIB, 50)));
    eventually("the track read whole to be promoted", &m, || {
        copy_path(&m, "Album/01 Intro.flac").exists()
    });
    // Half of the next track is not all of it.
    let mut half = vec![0u8; MIB];
    fs::File::open(m.path("Album/02 Song.flac"))
        .unwrap()
        .read_exact(&mut half)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!copy_path(&m, "Album/02 Song.flac").exists());
    assert_eq!(num(&status(&m), "promotions_done"), 1);
}

/// `promote_ignore=` turns the default list off; `+NAME` adds to it.
#[test]
fn promote_ignore_can_be_emptied_or_extended() {
    if !common::can_mount("promote_ignore_can_be_emptied_or_extended") {
        return;
    }
    let files: &'static [(&'static str, usize, u64)] =
        &[("a.flac", 2 * MIB, 60), ("b.flac", 2 * MIB, 61)];
    let bin = tempfile::tempdir().expect("temp dir for renamed tools");

    let m = TestMount::builder()
        .option("promote_ignore=")
        .option("prefetch=0")
        .populate(with_files(files))
        .start();
    run_as(
        bin.path(),
        "ffprobe",
        "cat",
        &[m.path("a.flac").as_os_str()],
    );
    eventually("ffprobe's read to count", &m, || {
        copy_path(&m, "a.flac").exists()
    });
    drop(m);

    let m = TestMount::builder()
        .option("promote_ignore=+tagger")
        .option("prefetch=0")
        .populate(with_files(files))
        .start();
    run_as(bin.path(), "tagger", "cat", &[m.path("a.flac").as_os_str()]);
    run_as(
        bin.path(),
        "ffprobe",
        "cat",
        &[m.path("b.flac").as_os_str()],
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(num(&status(&m), "promotions_done"), 0);
    run_as(bin.path(), "player", "cat", &[m.path("b.flac").as_os_str()]);
    eventually("the player's read to count", &m, || {
        copy_path(&m, "b.flac").exists()
    });
}

const FILM_DIR: &str = "Movies/Film (2019)";
const FILM: &str = "Movies/Film (2019)/Film (2019).mkv";
/// The film's sidecars: subtitles with a language and a flag tag, and its `.nfo`.
const FILM_SIDECARS: [&str; 3] = [
    "Movies/Film (2019)/Film (2019).en.srt",
    "Movies/Film (2019)/Film (2019).en.forced.srt",
    "Movies/Film (2019)/Film (2019).nfo",
];
/// Subtitles beside the film that are not its own.
const NOT_FILM_SIDECAR: &str = "Movies/Film (2019)/Film (2019) - Extras.en.srt";

/// A film of 3 MiB in SOURCE, its three small sidecars and an unrelated `.srt`.
fn film(src: &Path) {
    fs::create_dir_all(src.join(FILM_DIR)).unwrap();
    fs::write(src.join(FILM), pattern(3 * MIB, 60)).unwrap();
    for (i, rel) in FILM_SIDECARS.iter().enumerate() {
        let text = format!("1\n00:00:0{i},000 --> 00:00:0{i},500\nLine {i} of {rel}\n");
        fs::write(src.join(rel), text.repeat(20 + i)).unwrap();
    }
    fs::write(
        src.join(NOT_FILM_SIDECAR),
        "1\n00:00:01,000 --> 00:00:02,000\nExtras\n",
    )
    .unwrap();
}

/// A mount (`promote=manual`) of [`film`].
fn film_mount() -> TestMount {
    TestMount::builder()
        .option("promote=manual")
        .populate(film)
        .start()
}

fn cachefs(args: &[&str], path: &Path) {
    let out = Command::new(BIN).args(args).arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "cachefs {args:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 18: `cachefs promote --wait` of a film returns once the film and its sidecars
/// (subtitles with language and flag tags, its `.nfo`: far below the policy's 1 MiB
/// minimum) are cached with SOURCE's bytes, and leaves other subtitles alone; subtitles
/// added later come with the next promote of the film; `cachefs evict` of the film takes
/// its sidecars too.
#[test]
fn promote_wait_of_a_film_brings_its_sidecars_and_evict_takes_them() {
    crate::require_mount!();
    let m = film_mount();
    promote_wait(&m, FILM);
    // No waiting beyond --wait: everything is in place when it returns.
    for rel in std::iter::once(FILM).chain(FILM_SIDECARS) {
        assert!(copy_path(&m, rel).exists(), "no copy of {rel} after --wait");
        assert_eq!(
            digest(&read_all(&copy_path(&m, rel))),
            digest(&read_all(&m.src(rel))),
            "the copy of {rel} differs from SOURCE"
        );
    }
    assert!(!copy_path(&m, NOT_FILM_SIDECAR).exists());
    let s = status(&m);
    assert_eq!(num(&s, "cached_files"), 4, "{s}");
    assert_eq!(num(&s, "promotions_done"), 4, "{s}");
    // The subtitles are read from the SSD.
    let hits = num(&s, "hits");
    assert_eq!(
        read_all(&m.path(FILM_SIDECARS[0])),
        read_all(&m.src(FILM_SIDECARS[0]))
    );
    assert_eq!(num(&status(&m), "hits"), hits + 1);

    // Subtitles downloaded after the film was cached come with its next promote.
    let late = "Movies/Film (2019)/Film (2019).pt-BR.srt";
    fs::write(m.src(late), "1\n00:00:01,000 --> 00:00:02,000\nOla\n").unwrap();
    promote_wait(&m, FILM);
    assert_eq!(read_all(&copy_path(&m, late)), read_all(&m.src(late)));
    assert_eq!(num(&status(&m), "cached_files"), 5);

    cachefs(&["evict"], &m.path(FILM));
    for rel in std::iter::once(FILM).chain(FILM_SIDECARS).chain([late]) {
        assert!(!copy_path(&m, rel).exists(), "{rel} stayed in the cache");
        assert!(m.src(rel).exists(), "{rel} left SOURCE");
    }
    let s = status(&m);
    assert_eq!(num(&s, "cached_files"), 0, "{s}");
    assert_eq!(num(&s, "evictions"), 5, "{s}");
}

/// Issue 18: `cachefs pin` of a film pins its sidecars too (they are copied and stay),
/// and `cachefs unpin` of the film unpins them.
#[test]
fn pin_of_a_film_pins_its_sidecars() {
    crate::require_mount!();
    let m = film_mount();
    cachefs(&["pin"], &m.path(FILM));
    assert_eq!(num(&status(&m), "pinned_files"), 4);
    eventually("the film and its sidecars to be cached", &m, || {
        std::iter::once(FILM)
            .chain(FILM_SIDECARS)
            .all(|rel| copy_path(&m, rel).exists())
    });
    for rel in FILM_SIDECARS {
        assert_eq!(
            read_all(&copy_path(&m, rel)),
            read_all(&m.src(rel)),
            "{rel}"
        );
    }
    assert!(!copy_path(&m, NOT_FILM_SIDECAR).exists());
    eventually("the copies to be counted", &m, || {
        num(&status(&m), "cached_files") == 4
    });

    cachefs(&["unpin"], &m.path(FILM));
    assert_eq!(num(&status(&m), "pinned_files"), 0);
}
