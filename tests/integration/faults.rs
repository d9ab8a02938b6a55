//! Faults injected into running mounts while readers stream and the promoter copies:
//! the daemon SIGKILLed at seeded random points, SOURCE files rewritten, truncated,
//! renamed and deleted mid-copy, the cache filesystem filled from outside mid-copy (with
//! and without fallocate), the cache directory removed or made immutable mid-copy, SOURCE
//! failing reads with EIO (its loop device shrunk under it) and SOURCE very slow (a blkio
//! throttle on its loop device). Every read a reader makes is checked against the model
//! (`model::History`): bytes are always SOURCE's at that moment, errors only SOURCE's own,
//! or the mount's absence while the daemon is down. After each fault `settle` checks that
//! every file read through the mount is SOURCE's (no stale copy served), that SOURCE
//! holds the model's bytes, that every copy in the cache is its source's, and that a clean
//! stop leaves no temp file, no mount and no process.
//!
//! `soak` (ignored; `scripts/soak.sh SECONDS` runs it) churns readers, writers,
//! promotions and evictions for `SOAK_SECS` and prints "N operations, M errors".

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::common::{self, BIN, TestMount, digest, eventually, num, pattern, status};
use crate::exerciser::read_at_most;
use crate::model::{History, Rng, Tree, seen};

const MIB: usize = 1 << 20;

/// Options every fault mount takes: SOURCE is changed behind the mount, and a fresh open
/// must see that at once, not after the kernel's timeouts.
const EXACT: [&str; 3] = ["attr_timeout=0", "entry_timeout=0", "negative_timeout=0"];

fn builder() -> common::Builder {
    EXACT.iter().fold(TestMount::builder(), |b, o| b.option(o))
}

fn files(names: &[(&str, usize)], seed: u64) -> Vec<(String, Vec<u8>)> {
    names
        .iter()
        .enumerate()
        .map(|(i, (n, len))| (n.to_string(), pattern(*len, seed + i as u64)))
        .collect()
}

fn write_tree(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (n, b) in files {
        fs::write(dir.join(n), b).expect("write a SOURCE file");
    }
}

/// An ext4 SOURCE has its lost+found too.
fn image_tree_of(files: &[(String, Vec<u8>)]) -> Tree {
    let mut t = tree_of(files);
    t.mkdir("lost+found");
    t
}

fn tree_of(files: &[(String, Vec<u8>)]) -> Tree {
    let mut t = Tree::new();
    for (n, b) in files {
        t.put(n, b.clone());
    }
    t
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// ---------------------------------------------------------------------------------------
// readers

/// What the readers share: the mount, the names they read, the model over time, and the
/// daemon's epoch (odd while it is down).
struct World {
    mnt: PathBuf,
    names: Vec<String>,
    hist: Mutex<History>,
    epoch: AtomicU64,
    stop: AtomicBool,
    reads: AtomicU64,
    /// Calls that failed while the daemon was down or on a descriptor of a dead daemon.
    down: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl World {
    fn new(mnt: &Path, names: &[&str], first: Tree) -> Arc<World> {
        Arc::new(World {
            mnt: mnt.to_path_buf(),
            names: names.iter().map(|s| s.to_string()).collect(),
            hist: Mutex::new(History::new(first)),
            epoch: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            reads: AtomicU64::new(0),
            down: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
        })
    }

    /// Makes a change behind the readers' backs: the model first, then `act`, then the
    /// change counts as made.
    fn change(&self, model: impl FnOnce(&mut Tree), act: impl FnOnce()) {
        self.hist.lock().begin(model);
        act();
        self.hist.lock().finish();
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Judges one call: bytes must always be the model's; an error must be the model's
    /// unless the daemon was down (or the descriptor is a dead daemon's).
    fn judge(
        &self,
        what: &str,
        rel: &str,
        span: (usize, usize),
        at: (u64, usize),
        got: crate::model::Seen<'_>,
        up: bool,
    ) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if got.is_err() && !up {
            self.down.fetch_add(1, Ordering::Relaxed);
            // No busy loop on an absent mount: the daemon's restart needs the cores.
            std::thread::sleep(Duration::from_millis(2));
            return;
        }
        let r = self
            .hist
            .lock()
            .check_read(span.0, span.1, rel, at.0, at.1, got);
        if let Err(e) = r {
            let mut errs = self.errors.lock();
            if errs.len() < 20 {
                errs.push(format!("{what}: {e}"));
            }
        }
    }

    fn span_start(&self) -> (usize, u64) {
        (self.hist.lock().start(), self.epoch())
    }

    fn span_end(&self) -> (usize, u64) {
        (self.hist.lock().end(), self.epoch())
    }
}

/// A descriptor a reader keeps: the name, when it was opened (model version and daemon
/// epoch), the file.
struct Held {
    rel: String,
    lo: usize,
    epoch: u64,
    file: File,
}

fn reader(w: &World, seed: u64) {
    let mut rng = Rng(seed);
    let mut held: Option<Held> = None;
    let mut buf = vec![0u8; 256 << 10];
    while !w.stop.load(Ordering::Relaxed) {
        let rel = w.names[rng.below(w.names.len())].clone();
        if rng.below(4) == 0 {
            // A whole read by path: a new open, served from a copy where there is one.
            let (lo, e0) = w.span_start();
            let got = fs::read(w.mnt.join(&rel));
            let (hi, e1) = w.span_end();
            w.judge(
                "whole read",
                &rel,
                (lo, hi),
                (0, usize::MAX),
                seen(&got),
                e0 == e1 && e0.is_multiple_of(2),
            );
            continue;
        }
        if held.as_ref().is_none_or(|h| h.rel != rel) || rng.below(8) == 0 {
            held = None;
            let (lo, e0) = w.span_start();
            match File::open(w.mnt.join(&rel)) {
                Ok(file) => {
                    held = Some(Held {
                        rel: rel.clone(),
                        lo,
                        epoch: e0,
                        file,
                    });
                }
                Err(e) => {
                    let (hi, e1) = w.span_end();
                    let r: std::io::Result<Vec<u8>> = Err(e);
                    w.judge(
                        "open",
                        &rel,
                        (lo, hi),
                        (0, 0),
                        seen(&r),
                        e0 == e1 && e0.is_multiple_of(2),
                    );
                    continue;
                }
            }
        }
        let Some(h) = held.as_ref() else { continue };
        let len = w.hist.lock().now().len(&rel).unwrap_or(0) as usize;
        let off = rng.below(len + 4096) as u64;
        let n = 1 + rng.below(buf.len());
        // The descriptor reads the file it opened: a rename or unlink behind it leaves
        // it reading the version it opened.
        let e0 = w.epoch();
        let got = read_at_most(&h.file, &mut buf[..n], off);
        let (hi, e1) = w.span_end();
        let up = e0 == e1 && e0.is_multiple_of(2) && h.epoch == e0;
        let failed = got.is_err();
        let got = got.map(|k| &buf[..k]);
        w.judge("pread", &rel, (h.lo, hi), (off, n), seen(&got), up);
        if failed {
            held = None;
        }
    }
}

/// Reader threads over a `World`, stopped and joined by `finish` (or when dropped).
struct Readers {
    world: Arc<World>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Readers {
    fn start(world: &Arc<World>, n: usize, seed: u64) -> Readers {
        let threads = (0..n)
            .map(|i| {
                let w = world.clone();
                std::thread::spawn(move || reader(&w, seed.wrapping_add(i as u64 * 7919)))
            })
            .collect();
        Readers {
            world: world.clone(),
            threads,
        }
    }

    /// Waits until the readers have made `n` more calls (they are running, not stuck).
    fn wait_reads(&self, m: &TestMount, n: u64) {
        let from = self.world.reads.load(Ordering::Relaxed);
        eventually("the readers to go on reading", m, || {
            self.world.reads.load(Ordering::Relaxed) >= from + n
        });
    }

    /// Stops the readers and fails on any read the model does not allow.
    fn finish(mut self, m: &TestMount) -> (u64, u64) {
        self.join();
        let errs = self.world.errors.lock().clone();
        assert!(
            errs.is_empty(),
            "reads the model does not allow:\n{}\nlog:\n{}",
            errs.join("\n"),
            m.log_contents()
        );
        let w = &self.world;
        let r = (
            w.reads.load(Ordering::Relaxed),
            w.down.load(Ordering::Relaxed),
        );
        assert!(r.0 > 0, "the readers made no reads");
        r
    }

    fn join(&mut self) {
        self.world.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.join();
    }
}

// ---------------------------------------------------------------------------------------
// the daemon's state

/// The copy of `rel` in flight: (bytes done, bytes total).
fn in_flight(m: &TestMount, rel: &str) -> Option<(u64, u64)> {
    let s = status(m);
    s["in_flight"].as_array()?.iter().find_map(|j| {
        (j["path"].as_str() == Some(rel)).then(|| {
            (
                j["bytes_done"].as_u64().unwrap_or(0),
                j["bytes_total"].as_u64().unwrap_or(0),
            )
        })
    })
}

/// Queues `rel` for promotion and waits until its copy has a temp file and `done` bytes.
fn copy_under_way(m: &TestMount, rel: &str, done: u64) {
    let out = Command::new(BIN)
        .arg("promote")
        .arg(m.path(rel))
        .output()
        .expect("run cachefs promote");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(&format!("the copy of {rel} to be under way"), m, || {
        in_flight(m, rel).is_some_and(|(d, t)| t > 0 && d >= done)
    });
}

fn copy_over(m: &TestMount, rel: &str) {
    eventually(&format!("the copy of {rel} to end"), m, || {
        in_flight(m, rel).is_none()
    });
}

fn temps(cache: &Path) -> Vec<String> {
    fs::read_dir(cache.join("tmp"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every regular file below `dir`, by path relative to it, with its digest.
fn hashes(dir: &Path) -> BTreeMap<PathBuf, u64> {
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, u64>) {
        let Ok(rd) = fs::read_dir(root.join(rel)) else {
            return;
        };
        for e in rd.flatten() {
            let p = rel.join(e.file_name());
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(root, &p, out),
                Ok(t) if t.is_file() => {
                    if let Ok(b) = fs::read(root.join(&p)) {
                        out.insert(p, digest(&b));
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, Path::new(""), &mut out);
    out
}

/// Processes whose command line names `root` (the daemon, its watchdog).
fn processes_under(root: &Path) -> Vec<String> {
    let needle = root.as_os_str().as_encoded_bytes();
    let me = std::process::id().to_string();
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
                return None;
            }
            let cmd = fs::read(e.path().join("cmdline")).ok()?;
            cmd.windows(needle.len()).any(|w| w == needle).then(|| {
                format!(
                    "{pid}: {}",
                    String::from_utf8_lossy(&cmd).replace('\0', " ")
                )
            })
        })
        .collect()
}

/// After a fault: SOURCE holds the model's newest version (bit for bit), every file read
/// through the mount is SOURCE's, every copy in the cache is its source's; then a clean
/// stop leaves no temp file, no mount and no process behind.
fn settle(m: &mut TestMount, world: &World) {
    let want = world.hist.lock().now().clone();
    if let Err(e) = want.check_dir(&m.source) {
        panic!("SOURCE is not what the test made it: {e}");
    }
    let src = hashes(&m.source);
    let through = hashes(&m.mnt);
    assert_eq!(
        through,
        src,
        "the mount serves other bytes than SOURCE; log:\n{}",
        m.log_contents()
    );
    for (rel, h) in hashes(&m.cache.join("data")) {
        assert_eq!(
            src.get(&rel),
            Some(&h),
            "the cache holds {} with other bytes than SOURCE",
            rel.display()
        );
    }
    let st = m.signal_and_wait(libc::SIGTERM);
    assert!(
        st.success(),
        "cachefs exited with {}; log:\n{}",
        common::describe_status(&st),
        m.log_contents()
    );
    assert!(
        common::wait_unmounted(&m.mnt, Duration::from_secs(5)),
        "still mounted after a clean stop"
    );
    assert_eq!(
        temps(&m.cache),
        Vec::<String>::new(),
        "temp files after a clean stop"
    );
    let end = Instant::now() + Duration::from_secs(10);
    while !processes_under(&m.root).is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        processes_under(&m.root),
        Vec::<String>::new(),
        "processes left behind"
    );
}

// ---------------------------------------------------------------------------------------
// loop devices and cgroups

/// A filesystem image on a loop device, mounted at `dir` for one test (held in an
/// `Arc<Mutex<Option<_>>>` declared before the `TestMount`, so that it goes after it).
/// Dropping it unmounts it lazily and detaches the loop device (at once, or when the
/// last user lets go).
struct Image {
    dir: PathBuf,
    /// None for a filesystem without a device (tmpfs).
    dev: Option<String>,
}

impl Image {
    /// `mkfs` (with `mkfs_args`, `-d content` if given) on a `size`-byte image at `img`,
    /// attached to a loop device and mounted at `dir` with `opts`.
    fn mount(
        img: &Path,
        size: u64,
        mkfs: &str,
        mkfs_args: &[&str],
        content: Option<&Path>,
        dir: &Path,
        opts: &str,
    ) -> Image {
        File::create(img)
            .and_then(|f| f.set_len(size))
            .expect("make an image");
        let mut args: Vec<String> = vec!["-q".into(), "-F".into(), "-b".into(), "4096".into()];
        args.extend(mkfs_args.iter().map(|s| s.to_string()));
        if let Some(c) = content {
            args.push("-d".into());
            args.push(c.display().to_string());
        }
        args.push(img.display().to_string());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        sh(mkfs, &a);
        let dev = sh("losetup", &["--find", "--show", &img.display().to_string()]);
        fs::create_dir_all(dir).expect("mkdir for an image");
        let image = Image {
            dir: dir.to_path_buf(),
            dev: Some(dev.clone()),
        };
        sh("mount", &["-o", opts, &dev, &dir.display().to_string()]);
        image
    }

    /// The loop device's `MAJ:MIN`.
    fn dev(&self) -> &str {
        self.dev.as_deref().expect("a loop device")
    }

    fn majmin(&self) -> String {
        let name = Path::new(self.dev()).file_name().expect("a device name");
        fs::read_to_string(Path::new("/sys/block").join(name).join("dev"))
            .expect("the loop device's number")
            .trim()
            .to_string()
    }

    /// Limits the loop device to its first `bytes` (0: the whole backing file): reads past
    /// the limit fail with EIO, as a disk's bad sectors do. The backing file is untouched.
    fn limit(&self, bytes: u64) {
        // struct loop_info64 (linux/loop.h): lo_sizelimit is the fifth u64.
        const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
        const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
        let f = File::open(self.dev()).expect("open the loop device");
        let mut info = [0u64; 29];
        // SAFETY: info is 232 bytes, the size of struct loop_info64, which the kernel fills.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_GET_STATUS64, info.as_mut_ptr()) };
        assert_eq!(
            r,
            0,
            "LOOP_GET_STATUS64: {}",
            std::io::Error::last_os_error()
        );
        info[4] = bytes;
        // SAFETY: as above; the kernel only reads it.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_SET_STATUS64, info.as_ptr()) };
        assert_eq!(
            r,
            0,
            "LOOP_SET_STATUS64: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .stderr(std::process::Stdio::null())
            .status();
        if let Some(dev) = &self.dev {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
    }
}

type Holder<T> = Arc<Mutex<Option<T>>>;

/// First block of `rel` and last block, in the image (before it is mounted).
fn blocks_of(img: &Path, rel: &str, len: usize) -> (u64, u64) {
    let bmap = |blk: usize| -> u64 {
        let out = sh(
            "debugfs",
            &[
                "-R",
                &format!("bmap /{rel} {blk}"),
                &img.display().to_string(),
            ],
        );
        out.lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("debugfs bmap {rel}: {out:?}"))
    };
    (bmap(0), bmap(len.div_ceil(4096) - 1))
}

const BLKIO: &str = "/sys/fs/cgroup/blkio";

/// A blkio (cgroup v1) group whose reads of one device are capped; the processes put in
/// it go back to the root group, and the group is removed, when it drops.
struct Throttle {
    dir: PathBuf,
    majmin: String,
}

impl Throttle {
    fn new(majmin: &str, bps: u64) -> Result<Throttle, String> {
        let root = Path::new(BLKIO);
        if !root.join("blkio.throttle.read_bps_device").exists() {
            return Err(format!("no blkio throttle at {BLKIO}"));
        }
        let dir = root.join(format!("cachefs-faults-{}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let t = Throttle {
            dir,
            majmin: majmin.to_string(),
        };
        t.set(bps).map_err(|e| format!("throttle {majmin}: {e}"))?;
        Ok(t)
    }

    fn set(&self, bps: u64) -> std::io::Result<()> {
        fs::write(
            self.dir.join("blkio.throttle.read_bps_device"),
            format!("{} {bps}", self.majmin),
        )
    }

    fn add(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("join the blkio group");
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        let _ = self.set(0);
        if let Ok(procs) = fs::read_to_string(self.dir.join("cgroup.procs")) {
            for p in procs.lines() {
                let _ = fs::write(Path::new(BLKIO).join("cgroup.procs"), p);
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// the faults

/// The readers read on after the fault, then stop (every read allowed), and `settle`.
fn end(readers: Readers, m: &mut TestMount, world: &World) {
    readers.wait_reads(m, 20);
    let (reads, down) = readers.finish(m);
    eprintln!(
        "{}: {} reads checked, {down} more failed while the daemon was down",
        common::test_name(),
        reads - down
    );
    settle(m, world);
}

/// Drops `p`'s clean pages from the page cache, so that its next reads reach the device.
fn drop_pages(p: &Path) {
    let f = File::open(p).expect("open a SOURCE file");
    let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
}

/// SIGKILLs the daemon and starts it again, the readers told it is down meanwhile; the
/// killed daemon's temp files are gone once the new one is up.
fn kill(m: &mut TestMount, world: &World, n: usize) {
    let old = format!("{}-", m.pid());
    world.epoch.fetch_add(1, Ordering::SeqCst);
    m.kill_and_restart();
    world.epoch.fetch_add(1, Ordering::SeqCst);
    let left: Vec<String> = temps(&m.cache)
        .into_iter()
        .filter(|t| t.starts_with(&old))
        .collect();
    assert!(
        left.is_empty(),
        "kill {n}: the killed daemon's temp files survived the restart: {left:?}"
    );
}

/// A clean restart, the readers told the daemon is down meanwhile.
fn restart(m: &mut TestMount, world: &World) {
    world.epoch.fetch_add(1, Ordering::SeqCst);
    m.restart();
    world.epoch.fetch_add(1, Ordering::SeqCst);
}

/// Writes to `f` until its filesystem is full: at once (neither ext2 nor tmpfs delays
/// allocation, so a write past the free space fails there), before the copy writes next.
fn fill(f: &mut File) {
    let chunk = vec![0x5au8; 1 << 20];
    let full = loop {
        if let Err(e) = f.write_all(&chunk) {
            break e;
        }
    };
    assert_eq!(
        full.raw_os_error(),
        Some(libc::ENOSPC),
        "filling the cache: {full}"
    );
}

/// The one copy the test made failed, and nothing is cached.
fn one_failed_copy(m: &TestMount) {
    let s = status(m);
    assert_eq!(num(&s, "promotions_failed"), 1, "{s}");
    assert_eq!(num(&s, "cached_files"), 0, "{s}");
}

#[test]
fn sigkill_at_seeded_points_while_readers_stream_and_copies_run() {
    crate::require_mount!();
    let seed = 0xfa17_0001;
    let names = ["a.mkv", "b.mkv", "c.mkv", "d.mkv", "e.mkv", "f.mkv"];
    let data = files(&names.map(|n| (n, 3 * MIB)), 10);
    let init = data.clone();
    let mut m = builder()
        .option("promote_after=64K")
        .option("promote_bw=8M")
        .option("max_size=12M")
        .populate(move |src| write_tree(src, &init))
        .start();
    let world = World::new(&m.mnt, &names, tree_of(&data));
    let readers = Readers::start(&world, 3, seed);
    let mut rng = Rng(seed);
    for n in 0..5 {
        if rng.below(2) == 0 {
            let out = Command::new(BIN)
                .arg("promote")
                .arg(&m.mnt)
                .output()
                .expect("promote");
            assert!(out.status.success());
        }
        // Some point in the copies and reads under way.
        std::thread::sleep(Duration::from_millis(rng.below(1200) as u64));
        kill(&mut m, &world, n);
        readers.wait_reads(&m, 20);
    }
    end(readers, &mut m, &world);
}

#[test]
fn source_rewritten_truncated_renamed_and_deleted_mid_copy() {
    crate::require_mount!();
    let names = ["rewrite.mkv", "truncate.mkv", "rename.mkv", "delete.mkv"];
    let data = files(&names.map(|n| (n, 8 * MIB)), 20);
    let init = data.clone();
    let mut m = builder()
        .option("promote=manual")
        .option("promote_bw=2M")
        .option("prefetch=0")
        .populate(move |src| write_tree(src, &init))
        .start();
    let mut all = names.to_vec();
    all.push("renamed.mkv");
    let world = World::new(&m.mnt, &all, tree_of(&data));
    let readers = Readers::start(&world, 3, 0xfa17_0002);
    for rel in names {
        let failed = num(&status(&m), "promotions_failed");
        copy_under_way(&m, rel, 1);
        let src = m.src(rel);
        match rel {
            // In place, same size: only the mtime tells.
            "rewrite.mkv" => {
                let new = pattern(8 * MIB, 99);
                let n2 = new.clone();
                world.change(
                    |t| t.put(rel, n2),
                    || {
                        let f = OpenOptions::new().write(true).open(&src).unwrap();
                        f.write_all_at(&new, 0).unwrap();
                    },
                );
            }
            "truncate.mkv" => world.change(
                |t| t.truncate(rel, 3 * MIB as u64 + 17),
                || {
                    OpenOptions::new()
                        .write(true)
                        .open(&src)
                        .unwrap()
                        .set_len(3 * MIB as u64 + 17)
                        .unwrap()
                },
            ),
            "rename.mkv" => world.change(
                |t| t.rename(rel, "renamed.mkv"),
                || fs::rename(&src, m.src("renamed.mkv")).unwrap(),
            ),
            _ => world.change(|t| t.remove(rel), || fs::remove_file(&src).unwrap()),
        }
        copy_over(&m, rel);
        let s = status(&m);
        assert!(
            num(&s, "promotions_failed") > failed,
            "{rel}: the copy of a changed source did not fail: {s}"
        );
        if let Ok(b) = fs::read(m.cache.join("data").join(rel)) {
            let now = world.hist.lock().now().bytes(rel).map(digest);
            assert_eq!(
                Ok(digest(&b)),
                now,
                "{rel}: a copy of what SOURCE no longer holds"
            );
        }
        readers.wait_reads(&m, 20);
    }
    end(readers, &mut m, &world);
}

/// The cache on ext2 (no extents: fallocate is EOPNOTSUPP, so the promoter's temp file is
/// sparse and takes blocks as the copy writes): filled from outside after the temp file
/// exists and before the copy writes, the copy meets ENOSPC mid-way.
#[test]
fn cache_full_mid_copy_without_fallocate_fails_the_copy_only() {
    crate::require_mount!();
    let holder: Holder<Image> = Arc::default();
    let h = holder.clone();
    let names = ["f0.mkv", "f1.mkv"];
    let data = files(&names.map(|n| (n, 8 * MIB)), 30);
    let init = data.clone();
    let mut m = builder()
        .option("promote=manual")
        .option("promote_bw=1M")
        .option("min_free=0")
        .populate(move |src| {
            write_tree(src, &init);
            let root = src.parent().unwrap();
            *h.lock() = Some(Image::mount(
                &root.join("cache.img"),
                24 << 20,
                "mkfs.ext2",
                &[],
                None,
                &root.join("cache"),
                "noatime",
            ));
        })
        .start();
    let probe = m.cache.join("probe");
    let r = File::create(&probe).and_then(|f| {
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, 4096).map_err(Into::into)
    });
    assert_eq!(
        r.map_err(|e| e.raw_os_error()),
        Err(Some(libc::EOPNOTSUPP)),
        "ext2 has no fallocate"
    );
    fs::remove_file(&probe).unwrap();
    let world = World::new(&m.mnt, &names, tree_of(&data));
    let readers = Readers::start(&world, 2, 0xfa17_0003);
    // The temp file exists, no byte is written yet (the first 4 MiB wait 4 s for tokens).
    copy_under_way(&m, "f0.mkv", 0);
    let junk = m.cache.join("junk");
    let mut f = File::create(&junk).unwrap();
    fill(&mut f);
    copy_over(&m, "f0.mkv");
    one_failed_copy(&m);
    assert!(
        m.log_contents().contains("No space left on device"),
        "the copy met ENOSPC mid-way; log:\n{}",
        m.log_contents()
    );
    assert_eq!(
        temps(&m.cache),
        Vec::<String>::new(),
        "the failed copy's temp file went"
    );
    readers.wait_reads(&m, 50);
    drop(f);
    fs::remove_file(&junk).unwrap();
    // Room again: the next copy is whole.
    common::promote_wait(&m, "f0.mkv");
    end(readers, &mut m, &world);
    drop(m);
    drop(holder);
}

/// The cache on tmpfs, which fallocates: the same fill mid-copy takes the space left, not
/// the copy's, which completes.
#[test]
fn cache_full_mid_copy_with_fallocate_completes_the_copy() {
    crate::require_mount!();
    let holder: Holder<Image> = Arc::default();
    let h = holder.clone();
    let names = ["f0.mkv", "f1.mkv"];
    let data = files(&names.map(|n| (n, 8 * MIB)), 40);
    let init = data.clone();
    let mut m = builder()
        .option("promote=manual")
        .option("promote_bw=2M")
        .option("min_free=0")
        .populate(move |src| {
            write_tree(src, &init);
            let cache = src.parent().unwrap().join("cache");
            fs::create_dir_all(&cache).unwrap();
            sh(
                "mount",
                &[
                    "-t",
                    "tmpfs",
                    "-o",
                    "size=16M",
                    "tmpfs",
                    &cache.display().to_string(),
                ],
            );
            *h.lock() = Some(Image {
                dir: cache,
                dev: None,
            });
        })
        .start();
    let world = World::new(&m.mnt, &names, tree_of(&data));
    let readers = Readers::start(&world, 2, 0xfa17_0004);
    copy_under_way(&m, "f0.mkv", 0);
    let mut f = File::create(m.cache.join("junk")).unwrap();
    fill(&mut f);
    copy_over(&m, "f0.mkv");
    let s = status(&m);
    assert_eq!(num(&s, "promotions_done"), 1, "{s}");
    assert_eq!(num(&s, "promotions_failed"), 0, "{s}");
    readers.wait_reads(&m, 50);
    drop(f);
    fs::remove_file(m.cache.join("junk")).unwrap();
    readers.finish(&m);
    settle(&mut m, &world);
    drop(m);
    drop(holder);
}

/// capacity.rs removes the cache directory between copies; here it goes mid-copy, and a
/// restart makes a new one.
#[test]
fn cache_directory_removed_mid_copy() {
    crate::require_mount!();
    let names = ["f0.mkv", "f1.mkv"];
    let data = files(&names.map(|n| (n, 8 * MIB)), 50);
    let init = data.clone();
    let mut m = builder()
        .option("promote_after=64K")
        .option("promote_bw=2M")
        .populate(move |src| write_tree(src, &init))
        .start();
    let world = World::new(&m.mnt, &names, tree_of(&data));
    let readers = Readers::start(&world, 3, 0xfa17_0005);
    copy_under_way(&m, "f0.mkv", 1);
    fs::remove_dir_all(&m.cache).unwrap();
    copy_over(&m, "f0.mkv");
    readers.wait_reads(&m, 50);
    let s = status(&m);
    assert_eq!(num(&s, "cached_files"), 0, "{s}");
    assert!(!m.cache.join("data/f0.mkv").exists());
    // A restart makes a new cache directory, and copies work again.
    restart(&mut m, &world);
    common::promote_wait(&m, "f1.mkv");
    end(readers, &mut m, &world);
}

/// capacity.rs makes `data/` immutable before any copy; here the temp file, `tmp/` and
/// `data/` become immutable mid-copy (read-only even to root): the copy's next write
/// fails, and its temp file cannot even be removed until a restart after the cache is
/// writable again.
#[test]
fn cache_made_read_only_mid_copy() {
    crate::require_mount!();
    let names = ["f0.mkv", "f1.mkv"];
    let data = files(&names.map(|n| (n, 8 * MIB)), 60);
    let init = data.clone();
    let mut m = builder()
        .option("promote=manual")
        .option("promote_bw=2M")
        .populate(move |src| write_tree(src, &init))
        .start();
    let world = World::new(&m.mnt, &names, tree_of(&data));
    let readers = Readers::start(&world, 3, 0xfa17_0006);
    copy_under_way(&m, "f0.mkv", 1);
    let mut frozen: Vec<PathBuf> = fs::read_dir(m.cache.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    frozen.push(m.cache.join("tmp"));
    frozen.push(m.cache.join("data"));
    struct Thaw(Vec<PathBuf>);
    impl Drop for Thaw {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = Command::new("chattr").arg("-i").arg(p).status();
            }
        }
    }
    let thaw = Thaw(frozen.clone());
    for p in &frozen {
        let ok = Command::new("chattr").arg("+i").arg(p).status();
        if !matches!(ok, Ok(s) if s.success()) {
            common::skip(&common::test_name(), "chattr +i is not supported here");
            return;
        }
    }
    copy_over(&m, "f0.mkv");
    one_failed_copy(&m);
    readers.wait_reads(&m, 50);
    drop(thaw);
    // The temp file the daemon could not remove goes at the next start.
    restart(&mut m, &world);
    assert_eq!(
        temps(&m.cache),
        Vec::<String>::new(),
        "startup empties tmp/"
    );
    common::promote_wait(&m, "f0.mkv");
    end(readers, &mut m, &world);
}

/// SOURCE on ext4 on a loop device, which is then shrunk to end where one file's blocks
/// begin: reads of that file fail with EIO, as a disk's bad sectors would, mid-copy. The
/// other file reads on; the copy fails; once the device is whole again the file copies.
#[test]
fn source_eio_mid_copy() {
    crate::require_mount!();
    let holder: Holder<Image> = Arc::default();
    let h = holder.clone();
    let spec = [("x.mkv", 8 * MIB), ("y.mkv", 8 * MIB)];
    let data = files(&spec, 70);
    let init = data.clone();
    let bad: Arc<Mutex<(String, u64)>> = Arc::default();
    let b = bad.clone();
    let mut m = builder()
        .option("promote=manual")
        .option("promote_bw=2M")
        .populate(move |src| {
            let root = src.parent().unwrap();
            let stage = root.join("stage");
            fs::create_dir(&stage).unwrap();
            write_tree(&stage, &init);
            let img = root.join("source.img");
            // No journal: nothing but the files' own blocks lies past the limit.
            let image = Image::mount(
                &img,
                40 << 20,
                "mkfs.ext4",
                &["-O", "^has_journal"],
                Some(&stage),
                src,
                "ro,noatime",
            );
            fs::remove_dir_all(&stage).unwrap();
            let (x, y) = (
                blocks_of(&img, "x.mkv", 8 * MIB),
                blocks_of(&img, "y.mkv", 8 * MIB),
            );
            *b.lock() = if x.0 > y.1 {
                ("x.mkv".into(), x.0 * 4096)
            } else {
                assert!(y.0 > x.1, "the files' blocks interleave: {x:?} {y:?}");
                ("y.mkv".into(), y.0 * 4096)
            };
            *h.lock() = Some(image);
        })
        .start();
    let (rel, limit) = bad.lock().clone();
    let world = World::new(&m.mnt, &["x.mkv", "y.mkv"], image_tree_of(&data));
    let readers = Readers::start(&world, 3, 0xfa17_0007);
    copy_under_way(&m, &rel, 1);
    {
        let img = holder.lock();
        let img = img.as_ref().unwrap();
        world.change(
            |t| t.fail(&rel, libc::EIO),
            || {
                img.limit(limit);
                drop_pages(&m.src(&rel));
            },
        );
    }
    let direct = fs::read(m.src(&rel));
    assert_eq!(
        direct.map(|_| ()).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EIO)),
        "SOURCE itself fails"
    );
    copy_over(&m, &rel);
    one_failed_copy(&m);
    let through = fs::read(m.path(&rel));
    assert_eq!(
        through.map(|_| ()).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EIO)),
        "the mount passes SOURCE's EIO on"
    );
    readers.wait_reads(&m, 100);
    world.change(
        |t| t.heal(&rel),
        || holder.lock().as_ref().unwrap().limit(0),
    );
    common::promote_wait(&m, &rel);
    assert_eq!(num(&status(&m), "cached_files"), 1);
    end(readers, &mut m, &world);
    drop(m);
    drop(holder);
}

/// SOURCE on a loop device read through a blkio throttle of 1 MiB/s for the daemon: an
/// open of another file is answered while a copy crawls, a SIGKILL lands mid-crawl, and a
/// truncate behind the mount fails the next slow copy.
#[test]
fn source_very_slow() {
    crate::require_mount!();
    let holder: Holder<Image> = Arc::default();
    let h = holder.clone();
    let spec = [
        ("s0.mkv", 8 * MIB),
        ("s1.mkv", 8 * MIB),
        ("s2.mkv", 2 * MIB),
    ];
    let data = files(&spec, 80);
    let init = data.clone();
    let mut m = builder()
        .option("promote=manual")
        .populate(move |src| {
            let root = src.parent().unwrap();
            let stage = root.join("stage");
            fs::create_dir(&stage).unwrap();
            write_tree(&stage, &init);
            let image = Image::mount(
                &root.join("source.img"),
                40 << 20,
                "mkfs.ext4",
                &[],
                Some(&stage),
                src,
                "noatime",
            );
            fs::remove_dir_all(&stage).unwrap();
            *h.lock() = Some(image);
        })
        .start();
    let majmin = holder.lock().as_ref().unwrap().majmin();
    let throttle = match Throttle::new(&majmin, 1 << 20) {
        Ok(t) => t,
        Err(why) => {
            common::skip(&common::test_name(), &why);
            return;
        }
    };
    throttle.add(m.pid());
    let world = World::new(
        &m.mnt,
        &["s0.mkv", "s1.mkv", "s2.mkv"],
        image_tree_of(&data),
    );
    copy_under_way(&m, "s0.mkv", 0);
    // Reads never wait for a copy: a new open of another file is served from SOURCE.
    let mut buf = vec![0u8; 64 << 10];
    let f = File::open(m.path("s2.mkv")).unwrap();
    let k = read_at_most(&f, &mut buf, 0).unwrap();
    world.judge(
        "slow read",
        "s2.mkv",
        (0, 0),
        (0, buf.len()),
        Ok(&buf[..k]),
        true,
    );
    drop(f);
    assert!(
        in_flight(&m, "s0.mkv").is_some(),
        "the 8 MiB copy at 1 MiB/s is still crawling"
    );
    // The readers read the small file only: their reads (in their own cgroup, through
    // passthrough to SOURCE) would warm the page cache under the slow copies.
    let small = World::new(&m.mnt, &["s2.mkv"], image_tree_of(&data));
    let readers = Readers::start(&small, 2, 0xfa17_0008);
    readers.wait_reads(&m, 20);
    kill(&mut m, &small, 0);
    throttle.add(m.pid());
    let failed = num(&status(&m), "promotions_failed");
    drop_pages(&m.src("s1.mkv"));
    copy_under_way(&m, "s1.mkv", 0);
    let src = m.src("s1.mkv");
    world.change(
        |t| t.truncate("s1.mkv", MIB as u64),
        || {
            OpenOptions::new()
                .write(true)
                .open(&src)
                .unwrap()
                .set_len(MIB as u64)
                .unwrap()
        },
    );
    throttle.set(0).unwrap();
    copy_over(&m, "s1.mkv");
    assert!(
        num(&status(&m), "promotions_failed") > failed,
        "the truncated source's copy failed"
    );
    end(readers, &mut m, &world);
    drop(m);
    drop(throttle);
    drop(holder);
}

// ---------------------------------------------------------------------------------------
// the soak run

/// One file of the soak tree: its model, held while a call on it runs, so that each read
/// is checked against exactly what the file held.
struct SoakFile {
    rel: String,
    model: Mutex<Tree>,
}

struct Soak {
    m: TestMount,
    files: Vec<SoakFile>,
    ops: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

impl Soak {
    fn error(&self, what: String) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 20 {
            eprintln!("soak error: {what}");
        }
    }

    fn read(&self, rng: &mut Rng) {
        let f = &self.files[rng.below(self.files.len())];
        let t = f.model.lock();
        let r = if rng.below(2) == 0 {
            let got = fs::read(self.m.path(&f.rel));
            t.check_whole(&f.rel, seen(&got))
        } else {
            let len = t.len(&f.rel).unwrap_or(0) as usize;
            let off = rng.below(len + 4096) as u64;
            let mut buf = vec![0u8; 1 + rng.below(256 << 10)];
            let got = File::open(self.m.path(&f.rel))
                .and_then(|h| read_at_most(&h, &mut buf, off))
                .map(|k| buf[..k].to_vec());
            t.check_read(&f.rel, off, buf.len(), seen(&got))
        };
        if let Err(e) = r {
            self.error(e);
        }
    }

    fn write(&self, rng: &mut Rng) {
        let f = &self.files[rng.below(self.files.len())];
        let mut t = f.model.lock();
        let path = self.m.path(&f.rel);
        let len = t.len(&f.rel).unwrap_or(0) as usize;
        let r = match rng.below(10) {
            0..=5 => {
                let off = rng.below((len + 8192).min(2 * MIB)) as u64;
                let n = 1 + rng.below(64 << 10);
                let data = rng.bytes(n);
                t.write(&f.rel, off, &data);
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|h| h.write_all_at(&data, off))
            }
            6..=7 => {
                let to = rng.below(2 * MIB) as u64;
                t.truncate(&f.rel, to);
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|h| h.set_len(to))
            }
            _ => {
                let n = 64 << 10 | rng.below(2 * MIB);
                let data = rng.bytes(n);
                t.put(&f.rel, data.clone());
                fs::write(&path, &data)
            }
        };
        if let Err(e) = r {
            self.error(format!("write {}: {e}", f.rel));
        }
    }

    fn evict(&self, rng: &mut Rng) {
        let f = &self.files[rng.below(self.files.len())];
        let out = Command::new(BIN)
            .arg("evict")
            .arg(self.m.path(&f.rel))
            .output();
        if !matches!(out, Ok(o) if o.status.success()) {
            self.error(format!("evict {}", f.rel));
        }
    }
}

/// What one soak thread does over and over.
type SoakOp = fn(&Soak, &mut Rng);

#[test]
#[ignore = "the soak run: scripts/soak.sh SECONDS"]
fn soak() {
    crate::require_mount!();
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x50a6);
    let mut rng = Rng(seed);
    let data: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            let n = 64 << 10 | rng.below(2 * MIB);
            (format!("d{}/f{i}.mkv", i % 3), rng.bytes(n))
        })
        .collect();
    let init = data.clone();
    let m = TestMount::builder()
        .option("promote_after=64K")
        .option("max_size=4M")
        .option("prefetch=1")
        .populate(move |src| {
            for (n, b) in &init {
                let p = src.join(n);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, b).unwrap();
            }
        })
        .start();
    let soak = Arc::new(Soak {
        files: data
            .iter()
            .map(|(n, b)| {
                let mut t = Tree::new();
                t.put(n, b.clone());
                SoakFile {
                    rel: n.clone(),
                    model: Mutex::new(t),
                }
            })
            .collect(),
        m,
        ops: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let roles: [(SoakOp, usize); 3] = [(Soak::read, 4), (Soak::write, 2), (Soak::evict, 1)];
    let mut threads = Vec::new();
    for (k, (op, n)) in roles.into_iter().enumerate() {
        for i in 0..n {
            let s = soak.clone();
            let mut rng = Rng(seed ^ ((k * 16 + i + 1) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            threads.push(std::thread::spawn(move || {
                while !s.stop.load(Ordering::Relaxed) {
                    op(&s, &mut rng);
                    s.ops.fetch_add(1, Ordering::Relaxed);
                    if k == 2 {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }));
        }
    }
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
    soak.stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    // SOURCE and the mount hold the model at the end.
    for f in &soak.files {
        let t = f.model.lock();
        for p in [soak.m.src(&f.rel), soak.m.path(&f.rel)] {
            soak.ops.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = t.check_whole(&f.rel, seen(&fs::read(&p))) {
                soak.error(format!("at the end, {}: {e}", p.display()));
            }
        }
    }
    let s = status(&soak.m);
    let (ops, errors) = (
        soak.ops.load(Ordering::Relaxed),
        soak.errors.load(Ordering::Relaxed),
    );
    println!(
        "soak: {} promotions, {} evictions, {} hits, {} misses",
        num(&s, "promotions_done"),
        num(&s, "evictions"),
        num(&s, "hits"),
        num(&s, "misses")
    );
    println!("{ops} operations, {errors} errors");
    assert_eq!(
        errors,
        0,
        "{errors} errors in {ops} operations; log:\n{}",
        soak.m.log_contents()
    );
}
