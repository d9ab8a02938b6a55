//! A SOURCE that sleeps or stops answering (invariants 11 and 12, docs/architecture.md).
//! With `meta_ttl` on, a cached film and its subtitles are found, opened and read with no
//! call to SOURCE, and a rescan and a missing-name probe are answered from memory: a
//! spun-down disk stays asleep. A SOURCE that stops answering (here a second cachefs
//! mount whose daemon is SIGSTOPped, as a hung NFS server or a disk that never spins up
//! would) holds up only the requests that need it, and the status says it is stuck. With
//! a short `meta_ttl`, SOURCE's own changes show once it passes, never half old, half new.
//!
//! The mounts under test run with the kernel's caches off (`NO_KERNEL_CACHE`): every
//! lookup, getattr and listing then reaches the daemon, as it does hours after a scan
//! once the kernel's own timeouts have passed, so what is tested is the daemon's metadata
//! cache, not the kernel's. They promote manually: the copies are exactly the ones made.
//!
//! Every step that could block on the stopped SOURCE runs in a child process with a
//! deadline, so that a daemon that waits on SOURCE fails the test instead of hanging it.
//! A process blocked in a FUSE request that a daemon has taken cannot be killed until the
//! request is answered: `Stopped` keeps such steps, resumes the stopped daemon first
//! (also when the test panics, and through a helper process when the test binary dies
//! without unwinding) and only then reaps them.

use std::fs::{self, File};
use std::io::{Read, Seek};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{
    self, BIN, TestMount, describe_status, digest, num, pattern, promote_wait, send_signal, status,
    wait_deadline,
};
use crate::require_mount;

const FILM: &str = "Films/Film (2020)/Film (2020).mkv";
const FILM_DIR: &str = "Films/Film (2020)";
const SRT: &str = "Films/Film (2020)/Film (2020).en.srt";
/// A sidecar a player probes for and does not find.
const MISSING: &str = "Films/Film (2020)/Film (2020).de.srt";
/// Never promoted: reading it needs SOURCE.
const EPISODE: &str = "Show/Season 01/Show - S01E01.mkv";

const NO_KERNEL_CACHE: &str = "attr_timeout=0,entry_timeout=0,negative_timeout=0";

/// How long one step may take while SOURCE is stopped: an answer from memory or the
/// cache takes milliseconds; a request that waits on SOURCE never ends.
const STEP: Duration = Duration::from_secs(5);
/// How long after SOURCE resumes the requests that waited on it may take to end.
const RESUMED: Duration = Duration::from_secs(10);
/// How long SOURCE stays stuck, with a request waiting on it, before the status must say
/// so (the daemon's threshold is about 3 s).
const STALL_REPORTED: Duration = Duration::from_secs(12);

/// A film of 4 MiB and its subtitles, two episodes, artwork and an empty directory.
fn library(src: &Path) {
    for d in [
        FILM_DIR,
        "Films/Other (2019)",
        "Show/Season 01",
        "Show/Extras",
    ] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    fs::write(src.join(FILM), pattern(4 << 20, 1)).unwrap();
    fs::write(
        src.join(SRT),
        "1\n00:00:01,000 --> 00:00:04,000\nA line.\n\n2\n00:00:05,000 --> 00:00:08,000\nAnother.\n",
    )
    .unwrap();
    fs::write(
        src.join("Films/Other (2019)/Other (2019).mkv"),
        pattern(9000, 2),
    )
    .unwrap();
    fs::write(src.join(EPISODE), pattern(256 << 10, 3)).unwrap();
    fs::write(
        src.join("Show/Season 01/Show - S01E02.mkv"),
        pattern(5000, 4),
    )
    .unwrap();
    fs::write(src.join("Show/poster.jpg"), b"jpg").unwrap();
}

/// A scanner's view of the tree below `root`, one sorted line per entry (directories
/// without their size, which is the file system's own), as `find -printf` prints it.
fn find_cmd(root: &Path) -> Command {
    let mut c = Command::new("find");
    c.arg(root).args([
        "-type",
        "d",
        "-printf",
        "d %P %T@\\n",
        "-o",
        "-printf",
        "%y %P %s %T@\\n",
    ]);
    c
}

fn sorted_lines(out: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = String::from_utf8_lossy(out)
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// The tree below a plain directory (never a mount that may hang), as `find_cmd` sees it.
fn scan_plain(root: &Path) -> Vec<String> {
    let out = find_cmd(root).output().expect("run find");
    assert!(out.status.success(), "find {}", root.display());
    sorted_lines(&out.stdout)
}

/// `None` when `got` (a scan through the mount) is `want`; else what differs.
fn scan_differs(got: &[String], want: &[String]) -> Option<String> {
    if got == want {
        return None;
    }
    let missing: Vec<_> = want.iter().filter(|l| !got.contains(l)).take(5).collect();
    let extra: Vec<_> = got.iter().filter(|l| !want.contains(l)).take(5).collect();
    Some(format!(
        "the scan differs from SOURCE: missing {missing:?}, not in SOURCE {extra:?}"
    ))
}

fn cat(path: &Path) -> Command {
    let mut c = Command::new("cat");
    c.arg(path);
    c
}

fn status_cmd(mnt: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("status").arg(mnt).arg("--json");
    c
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

// ---------------------------------------------------------------------------------------
// steps with deadlines, and a stopped daemon

/// What a step's process did.
struct Done {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl Done {
    /// Its output if it succeeded; else a line naming the step.
    fn ok(self, what: &str) -> Result<Vec<u8>, String> {
        if self.status.success() {
            Ok(self.stdout)
        } else {
            Err(format!(
                "{what}: {} ({})",
                describe_status(&self.status),
                self.stderr.trim()
            ))
        }
    }
}

/// A step's process, its output going to anonymous files (a pipe would need a reader
/// that may block).
struct Step {
    what: String,
    child: Child,
    out: File,
    err: File,
}

impl Step {
    fn spawn(what: &str, cmd: &mut Command) -> Step {
        let out = tempfile::tempfile().expect("temp file");
        let err = tempfile::tempfile().expect("temp file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(err.try_clone().expect("dup"))
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: spawn {cmd:?}: {e}"));
        Step {
            what: what.to_string(),
            child,
            out,
            err,
        }
    }

    fn collect(mut self, status: ExitStatus) -> Done {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        for (f, buf) in [(&mut self.out, &mut stdout), (&mut self.err, &mut stderr)] {
            f.rewind().expect("rewind");
            f.read_to_end(buf).expect("read output");
        }
        Done {
            status,
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

/// The process state letter in /proc/PID/stat (`T` when stopped), if it exists.
fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold spaces and parentheses.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether `pid` has /dev/fuse open: the process that answers its mount's requests.
fn holds_dev_fuse(pid: u32) -> bool {
    fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l == Path::new("/dev/fuse")))
    })
}

/// A daemon stopped with SIGSTOP while this lives, and the steps that did not end by
/// their deadline. Dropping it (made after the mounts, so it drops before them) resumes
/// the daemon, then kills and reaps those steps: a mount's teardown would otherwise wait
/// behind the stopped daemon forever.
struct Stopped {
    pid: u32,
    stopped: bool,
    /// `sh` waiting for EOF on its stdin, then sending SIGCONT to `pid`: if the test
    /// binary dies without unwinding (an abort, SIGKILL), the pipe closes and the daemon
    /// still resumes (and gets the SIGTERM its death signal left pending), instead of
    /// staying stopped with its mount and every process waiting on it.
    resumer: Child,
    stragglers: Vec<(String, Child)>,
}

impl Stopped {
    /// Stops `pid` (a daemon this test started and has not reaped) and waits until the
    /// kernel reports it stopped.
    fn stop(pid: u32) -> Stopped {
        assert!(
            holds_dev_fuse(pid),
            "pid {pid} is not the process serving the mount (it holds no /dev/fuse)"
        );
        let resumer = Command::new("/bin/sh")
            .arg("-c")
            .arg("cat >/dev/null; kill -CONT \"$0\" 2>/dev/null")
            .arg(pid.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh");
        let s = Stopped {
            pid,
            stopped: true,
            resumer,
            stragglers: Vec::new(),
        };
        send_signal(pid, libc::SIGSTOP);
        let end = Instant::now() + STEP;
        while proc_state(pid) != Some('T') {
            assert!(Instant::now() < end, "daemon {pid} did not stop on SIGSTOP");
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }

    fn resume(&mut self) {
        if self.stopped {
            send_signal(self.pid, libc::SIGCONT);
            self.stopped = false;
        }
    }

    /// Runs `cmd` and waits up to `deadline`. One still running then is killed and kept
    /// for reaping once the daemon runs again; the `Err` says which step it was.
    fn run(&mut self, what: &str, cmd: &mut Command, deadline: Duration) -> Result<Done, String> {
        self.finish(Step::spawn(what, cmd), deadline)
    }

    /// Waits for a step spawned earlier, as `run` does.
    fn finish(&mut self, mut step: Step, deadline: Duration) -> Result<Done, String> {
        match wait_deadline(&mut step.child, deadline) {
            Some(st) => Ok(step.collect(st)),
            None => {
                let what = step.what.clone();
                send_signal(step.child.id(), libc::SIGKILL);
                self.stragglers.push((what.clone(), step.child));
                Err(format!("{what}: no answer within {deadline:?}"))
            }
        }
    }

    /// After `resume`: waits for the killed steps to end, and says which did not.
    fn reap(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for (what, mut child) in self.stragglers.drain(..) {
            // One that does not end is left to the mounts' teardown: nothing else can
            // end a process blocked in a FUSE request.
            if wait_deadline(&mut child, RESUMED).is_none() {
                problems.push(format!(
                    "{what}: killed, still not ended {RESUMED:?} after SOURCE resumed"
                ));
            }
        }
        problems
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.resume();
        for p in self.reap() {
            eprintln!("teardown: {p}");
        }
        // EOF for the resumer: it sends one more (harmless) SIGCONT and exits.
        drop(self.resumer.stdin.take());
        if wait_deadline(&mut self.resumer, RESUMED).is_none() {
            send_signal(self.resumer.id(), libc::SIGKILL);
            let _ = self.resumer.wait();
        }
    }
}

/// Polls the outer mount's status (each call within `STEP`) until `source_answering` is
/// `want`, for up to `limit`. The status object, or why not.
fn status_until_answering(
    stopped: &mut Stopped,
    mnt: &Path,
    want: bool,
    limit: Duration,
) -> Result<serde_json::Value, String> {
    let end = Instant::now() + limit;
    loop {
        let out = stopped
            .run("cachefs status --json", &mut status_cmd(mnt), STEP)?
            .ok("cachefs status --json")?;
        let v: serde_json::Value = serde_json::from_slice(&out)
            .map_err(|e| format!("status --json is not JSON ({e}): {out:?}"))?;
        match v.get("source_answering").and_then(|a| a.as_bool()) {
            Some(a) if a == want => return Ok(v),
            Some(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(200)),
            Some(a) => {
                return Err(format!(
                    "status still reports \"source_answering\": {a} after {limit:?}: {v}"
                ));
            }
            None => return Err(format!("status has no boolean \"source_answering\": {v}")),
        }
    }
}

/// Scans the mount in a child, within `STEP`, and compares the result with `want`.
fn rescan_matches(
    stopped: &mut Stopped,
    mnt: &Path,
    want: &[String],
    when: &str,
) -> Result<(), String> {
    let what = format!("{when}: a rescan (find)");
    let out = stopped.run(&what, &mut find_cmd(mnt), STEP)?.ok(&what)?;
    match scan_differs(&sorted_lines(&out), want) {
        None => Ok(()),
        Some(d) => Err(format!("{what}: {d}")),
    }
}

/// Reads `rel` through the mount in a child, within `deadline`, and compares it with
/// the same file in the plain directory behind SOURCE.
fn read_matches(
    stopped: &mut Stopped,
    mnt: &Path,
    plain: &Path,
    rel: &str,
    when: &str,
) -> Result<(), String> {
    let what = format!("{when}: reading {rel}");
    let got = stopped
        .run(&what, &mut cat(&mnt.join(rel)), STEP)?
        .ok(&what)?;
    same_bytes(
        &what,
        &got,
        &fs::read(plain.join(rel)).expect("read the plain file"),
    )
}

fn same_bytes(what: &str, got: &[u8], want: &[u8]) -> Result<(), String> {
    if digest(got) == digest(want) {
        Ok(())
    } else {
        Err(format!(
            "{what}: {} bytes, not SOURCE's {} bytes",
            got.len(),
            want.len()
        ))
    }
}

/// `stat` of a missing name through the mount, in a child within `STEP`: ENOENT.
fn probe_missing(stopped: &mut Stopped, path: &Path) -> Result<(), String> {
    let mut probe = Command::new("stat");
    probe.arg("--format=%n").arg(path);
    let d = stopped.run("a probe of a missing name", &mut probe, STEP)?;
    if !d.status.success() && d.stderr.contains("No such file or directory") {
        Ok(())
    } else {
        Err(format!(
            "a probe of the missing {}: want ENOENT, got {} ({})",
            path.display(),
            describe_status(&d.status),
            d.stderr.trim()
        ))
    }
}

/// A status that reports SOURCE stuck says since when: a unix time (seconds) between
/// the test's start and now.
fn stalled_since_is_plausible(
    v: &serde_json::Value,
    t_start: u64,
    stopped_at: u64,
) -> Result<(), String> {
    match v.get("source_stalled_since").and_then(|s| s.as_u64()) {
        Some(s) if (t_start..=unix_now() + 1).contains(&s) => Ok(()),
        Some(s) => Err(format!(
            "\"source_stalled_since\": {s} is no unix time between the test's start \
             ({t_start}) and now (SOURCE stopped at {stopped_at})"
        )),
        None => Err(format!(
            "status reports SOURCE stuck without a numeric \"source_stalled_since\": {v}"
        )),
    }
}

// ---------------------------------------------------------------------------------------
// the tests

/// Invariants 11 and 12 with SOURCE stopped outright: SOURCE is a cachefs mount (kernel
/// caches off, served by its daemon alone) whose daemon is SIGSTOPped. A rescan, a
/// missing-name probe and playback of a cached film and its subtitles still answer
/// within seconds, with SOURCE's bytes; a read of an uncached episode waits (as on a
/// plain mount of that SOURCE) without holding up the cached film; the status answers
/// and reports SOURCE stuck. Once SOURCE resumes, the waiting read ends with the right
/// bytes and the status reports SOURCE answering again.
#[test]
fn a_stopped_source_does_not_stop_cached_playback() {
    require_mount!();
    // In a mount namespace of its own: while SOURCE's daemon is stopped, whatever stats
    // every mount point (mkfs making sure its device is not mounted, df) would hang on
    // these two mounts, other tests' processes included.
    common::in_private_mount_ns(stopped_source);
}

/// The body of `a_stopped_source_does_not_stop_cached_playback`, in its namespace.
fn stopped_source() {
    let t_start = unix_now();
    let inner = TestMount::builder()
        .option(NO_KERNEL_CACHE)
        .option("promote=manual,passthrough=off")
        .populate(library)
        .start();
    let outer = TestMount::builder()
        .source(&inner.mnt)
        .option(NO_KERNEL_CACHE)
        .option("promote=manual,meta_ttl=3600")
        .start();
    let plain = inner.source.clone();
    promote_wait(&outer, FILM);
    promote_wait(&outer, SRT);
    assert!(
        !outer.cache.join("data").join(EPISODE).exists(),
        "the episode must stay uncached"
    );
    let want = scan_plain(&plain);
    let first = find_cmd(&outer.mnt).output().expect("run find");
    assert!(first.status.success(), "the first scan failed");
    if let Some(d) = scan_differs(&sorted_lines(&first.stdout), &want) {
        panic!("before SOURCE stopped: {d}");
    }

    // Declared after the mounts: it drops (resumes SOURCE) before they are torn down.
    let mut stopped = Stopped::stop(inner.pid());
    let mut failures: Vec<String> = Vec::new();
    let mut note = |r: Result<(), String>| {
        if let Err(e) = r {
            failures.push(e);
        }
    };
    let stopped_at = unix_now();

    note(rescan_matches(
        &mut stopped,
        &outer.mnt,
        &want,
        "SOURCE stopped",
    ));

    note(probe_missing(&mut stopped, &outer.path(MISSING)));

    for rel in [FILM, SRT] {
        let r = read_matches(&mut stopped, &outer.mnt, &plain, rel, "SOURCE stopped");
        note(r);
    }

    // A read that needs SOURCE: it waits, and the cached film still plays beside it.
    let mut episode = Step::spawn(
        "reading the uncached episode",
        &mut cat(&outer.path(EPISODE)),
    );
    std::thread::sleep(Duration::from_millis(500));
    let r = read_matches(
        &mut stopped,
        &outer.mnt,
        &plain,
        FILM,
        "SOURCE stopped, a read of an uncached file waiting",
    );
    note(r);

    // The status answers, and says SOURCE is stuck (a request has waited since the
    // episode's read began).
    let r = status_until_answering(&mut stopped, &outer.mnt, false, STALL_REPORTED)
        .and_then(|v| stalled_since_is_plausible(&v, t_start, stopped_at));
    note(r);

    if let Ok(Some(st)) = episode.child.try_wait() {
        let d = episode.collect(st);
        note(Err(format!(
            "the read of the uncached episode ended while SOURCE was stopped: {}, {} bytes \
             ({})",
            describe_status(&d.status),
            d.stdout.len(),
            d.stderr.trim()
        )));
    } else {
        // SOURCE runs again: the waiting read ends, with SOURCE's bytes.
        stopped.resume();
        let r = stopped
            .finish(episode, RESUMED)
            .and_then(|d| d.ok("the uncached episode's read, once SOURCE resumed"))
            .and_then(|got| {
                let what = "the uncached episode's read, once SOURCE resumed";
                same_bytes(what, &got, &fs::read(plain.join(EPISODE)).unwrap())
            });
        note(r);
    }
    stopped.resume();
    for p in stopped.reap() {
        note(Err(p));
    }

    // Everything works again.
    note(rescan_matches(
        &mut stopped,
        &outer.mnt,
        &want,
        "SOURCE resumed",
    ));
    for rel in [FILM, SRT, EPISODE] {
        let r = read_matches(&mut stopped, &outer.mnt, &plain, rel, "SOURCE resumed");
        note(r);
    }
    let r = status_until_answering(&mut stopped, &outer.mnt, true, RESUMED).map(|_| ());
    note(r);

    assert!(
        failures.is_empty(),
        "with SOURCE stopped (meta_ttl=3600, the film and its .srt cached), {} check(s) \
         failed:\n  {}\nlog:\n{}",
        failures.len(),
        failures.join("\n  "),
        outer.log_contents()
    );
}

/// Sets `path`'s mtime, as a download client that keeps the remote file's time does.
fn set_mtime(path: &Path, t: SystemTime) {
    File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(t))
        .expect("set mtime");
}

/// Replaces `rel`'s contents in SOURCE directly (same file, rewritten in place) with
/// `new`, at an mtime `shift` away from the old one; then polls the mount until it shows
/// `new` whole and its size. Every read through the mount meanwhile is `old` or `new`
/// whole, and once `new` shows it stays.
fn change_shows(m: &TestMount, rel: &str, old: &[u8], new: &[u8], shift: Duration, back: bool) {
    let src = m.src(rel);
    let before = fs::metadata(&src).unwrap().modified().unwrap();
    fs::write(&src, new).unwrap();
    set_mtime(&src, if back { before - shift } else { before + shift });
    let end = Instant::now() + Duration::from_secs(10);
    let mut reads = 0;
    loop {
        let got = fs::read(m.path(rel)).expect("read through the mount");
        reads += 1;
        let size = fs::metadata(m.path(rel))
            .expect("stat through the mount")
            .len();
        if got == new && size == new.len() as u64 {
            break;
        }
        assert!(
            got == old || got == new,
            "read {reads} through the mount returned {} bytes that are neither the old \
             ({} bytes) nor the new ({} bytes) contents (a prefix of the old: {}, of the \
             new: {})",
            got.len(),
            old.len(),
            new.len(),
            old.starts_with(&got[..got.len().min(old.len())]),
            new.starts_with(&got[..got.len().min(new.len())]),
        );
        assert!(
            Instant::now() < end,
            "SOURCE's change to {rel} ({} -> {} bytes) does not show 10 s later (meta_ttl=2): \
             the mount reads {} bytes ({}), stats {size} bytes; log:\n{}",
            old.len(),
            new.len(),
            got.len(),
            if got == old {
                "the old contents"
            } else {
                "the new contents"
            },
            m.log_contents()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..3 {
        assert_eq!(
            digest(&fs::read(m.path(rel)).unwrap()),
            digest(new),
            "{rel}: the old contents came back after the new had shown"
        );
    }
}

/// Invariants 2 and 11 together: within `meta_ttl` the mount may show SOURCE as last
/// fetched, but once it passes a change made directly in SOURCE to a cached file shows,
/// with its new bytes and size; never the copy's bytes under the new size or the
/// reverse. Once with the same size (only the bytes and the mtime differ: the mtime set
/// back in time, as a download client keeping the remote file's time would), once with
/// another size.
#[test]
fn with_a_short_meta_ttl_a_change_in_source_shows_with_its_new_bytes() {
    require_mount!();
    const REL: &str = "Film.mkv";
    let v0 = pattern(1 << 20, 11);
    let v1 = pattern(1 << 20, 12);
    let v2 = pattern((1 << 20) + 300_000, 13);
    let first = v0.clone();
    let m = TestMount::builder()
        .option(NO_KERNEL_CACHE)
        .option("promote=manual,meta_ttl=2")
        .populate(move |src| fs::write(src.join(REL), &first).unwrap())
        .start();

    for (old, new, back) in [(&v0, &v1, true), (&v1, &v2, false)] {
        promote_wait(&m, REL);
        let hits = num(&status(&m), "hits");
        assert_eq!(
            digest(&fs::read(m.path(REL)).unwrap()),
            digest(old),
            "the promoted file reads back"
        );
        assert!(
            num(&status(&m), "hits") > hits,
            "the read was not served from the copy; log:\n{}",
            m.log_contents()
        );
        change_shows(&m, REL, old, new, Duration::from_secs(3600), back);
    }
}

/// Invariant 11 by the daemon's own count: with `meta_ttl` on, after the promotion and a
/// scan, finding, opening and reading a cached film and its subtitles, probing for a
/// missing sidecar and listing the film's directory make no call to SOURCE
/// (`source_ops` in `cachefs status --json`: SOURCE calls per FUSE operation).
#[test]
fn playing_a_cached_film_and_its_subtitles_asks_source_nothing() {
    require_mount!();
    let m = TestMount::builder()
        .option(NO_KERNEL_CACHE)
        .option("promote=manual,meta_ttl=3600")
        .populate(library)
        .start();
    promote_wait(&m, FILM);
    promote_wait(&m, SRT);
    let out = find_cmd(&m.mnt).output().expect("run find");
    assert!(out.status.success(), "the scan failed");
    assert_eq!(sorted_lines(&out.stdout), scan_plain(&m.source));

    let before = status(&m);
    for rel in [FILM, SRT] {
        let mut f = File::open(m.path(rel)).expect("open through the mount");
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert_eq!(
            digest(&got),
            digest(&fs::read(m.src(rel)).unwrap()),
            "{rel} reads back"
        );
    }
    let played = status(&m);
    let e = fs::metadata(m.path(MISSING)).expect_err("the missing sidecar is missing");
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
    let names: Vec<_> = fs::read_dir(m.path(FILM_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let probed = status(&m);

    let mut problems = Vec::new();
    if num(&played, "hits") < num(&before, "hits") + 2 {
        problems.push("the film and its .srt were not both opened from their copies".into());
    }
    for (what, a, b) in [
        ("playing the film and its .srt", &before, &played),
        (
            "probing a missing .srt and listing the film's directory",
            &played,
            &probed,
        ),
    ] {
        problems.extend(source_calls(what, a, b));
    }
    assert!(
        problems.is_empty(),
        "with meta_ttl=3600 and the film and its .srt cached:\n  {}\nstatus: {probed}\nlog:\n{}",
        problems.join("\n  "),
        m.log_contents()
    );
}

/// What the status says SOURCE was asked between `a` and `b`: every `source_ops`
/// counter that moved (a missing `source_ops` is a problem of its own), and the older
/// `source_lookups` and `source_read_bytes` if they moved.
fn source_calls(what: &str, a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    match (a["source_ops"].as_object(), b["source_ops"].as_object()) {
        (Some(x), Some(y)) => {
            for (op, n) in y {
                let (n0, n1) = (x.get(op).and_then(|v| v.as_u64()), n.as_u64());
                if n0 != n1 {
                    out.push(format!(
                        "{what}: source_ops.{op} went from {n0:?} to {n1:?}"
                    ));
                }
            }
        }
        _ => out.push(format!(
            "{what}: status --json has no \"source_ops\" object (SOURCE calls per FUSE \
             operation), so it cannot show that SOURCE was left alone"
        )),
    }
    for key in ["source_lookups", "source_read_bytes"] {
        let (n0, n1) = (a[key].as_u64(), b[key].as_u64());
        if n0 != n1 {
            out.push(format!("{what}: {key} went from {n0:?} to {n1:?}"));
        }
    }
    out
}
