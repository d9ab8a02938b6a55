//! Shared harness: `TestMount` (temp SOURCE/CACHE/MNT, the real binary in the foreground,
//! readiness by polling mountinfo, teardown in `Drop` even on panic), `skip` (the one way
//! a test skips, a failure under `CI=true`), a private mount namespace for a test, guards
//! for mounts a command must not leave, running code as another user in a child process,
//! errno capture, and the outcome recorder that parity tests compare.

#![allow(dead_code)]

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_cachefs");

/// The second user of the `users` tests. It need not exist in /etc/passwd.
pub const OTHER_UID: u32 = 1000;
pub const OTHER_GID: u32 = 1000;

/// How long a mount may take to appear, and a stopped daemon to exit.
const MOUNT_DEADLINE: Duration = Duration::from_secs(10);
const EXIT_DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Reports that `test` cannot run here because of `why`. Under `CI=true` that is a
/// failure (a panic), never a silent skip; elsewhere it prints why the test is skipped,
/// and the caller returns. Every skip in the suite goes through here.
pub fn skip(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: cannot run under CI=true: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
}

/// The name libtest gave the running test (its thread's name), for `skip`.
pub fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string()
}

/// Whether this test can mount: root and a usable /dev/fuse (see `skip`).
pub fn can_mount(test: &str) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("not running as root".to_string());
    }
    match fs::metadata("/dev/fuse") {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()) => {}
        Ok(_) => missing.push("/dev/fuse is not a character device".to_string()),
        Err(e) => missing.push(format!("/dev/fuse: {e}")),
    }
    if missing.is_empty() {
        return true;
    }
    skip(test, &missing.join("; "));
    false
}

/// Early return from a test that cannot mount here (see `can_mount`).
#[macro_export]
macro_rules! require_mount {
    () => {
        if !$crate::common::can_mount(&$crate::common::test_name()) {
            return;
        }
    };
}

// ---------------------------------------------------------------------------------------
// mountinfo

/// Undo mountinfo's octal escapes, as the daemon does (`cachefs::mountinfo`).
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    std::os::unix::ffi::OsStringExt::into_vec(cachefs::mountinfo::unescape(field))
}

/// One mountinfo line, the parts the tests look at.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    /// Per-mount options (field 6): `rw,nosuid,nodev,...`.
    pub mount_options: String,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

/// The mount table of the calling thread's mount namespace: a test may run in a private
/// one (`in_private_mount_ns`), which /proc/self (the process's first thread) does not
/// show.
const MOUNTINFO: &str = "/proc/thread-self/mountinfo";

/// Every mount in the thread's mountinfo whose mount point is `path`, in mount order.
pub fn mounts_at(path: &Path) -> Vec<MountEntry> {
    let text = fs::read_to_string(MOUNTINFO).expect("read /proc/thread-self/mountinfo");
    let want = path.as_os_str().as_bytes();
    let mut found = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 6 || r.len() < 3 {
            continue;
        }
        let mp = unescape_mountinfo(l[4]);
        if mp != want {
            continue;
        }
        found.push(MountEntry {
            mount_point: PathBuf::from(OsStr::from_bytes(&mp)),
            mount_options: l[5].to_string(),
            fstype: r[0].to_string(),
            source: String::from_utf8_lossy(&unescape_mountinfo(r[1])).into_owned(),
            super_options: r[2].to_string(),
        });
    }
    found
}

/// Whether statfs on `path` succeeds (a stale FUSE mount fails with ENOTCONN).
pub fn statfs_ok(path: &Path) -> bool {
    let c = cpath(path);
    // SAFETY: c is NUL-terminated; st is a zeroed statfs the call fills.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0
    }
}

/// The fstype of the topmost mount at `path`, if anything is mounted there.
pub fn fstype_at(path: &Path) -> Option<String> {
    mounts_at(path).pop().map(|m| m.fstype)
}

/// Lazily unmount whatever is at `path`; errors are ignored (nothing may be mounted).
pub fn detach(path: &Path) {
    let c = cpath(path);
    // SAFETY: c is a valid NUL-terminated path.
    unsafe {
        libc::umount2(c.as_ptr(), libc::MNT_DETACH);
    }
}

/// Runs `f` on a thread of its own in a private mount namespace: `unshare(CLONE_NEWNS)`
/// (per thread: it implies only CLONE_FS), every mount made private, so what `f` and the
/// processes it starts mount or cover there is seen nowhere else and goes with the
/// namespace when they are all gone. The namespace starts as a copy of every mount,
/// other tests' included: the copies of FUSE mounts and of mounts below the temp dir are
/// detached first, or they would keep those filesystems (and their daemons) alive after
/// their owners unmount them. A panic in `f` is the caller's.
pub fn in_private_mount_ns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let name = test_name();
    std::thread::scope(|scope| {
        let t = std::thread::Builder::new()
            .name(name)
            .spawn_scoped(scope, || {
                // SAFETY: unshare has no memory-safety preconditions.
                let r = unsafe { libc::unshare(libc::CLONE_NEWNS) };
                assert_eq!(r, 0, "unshare(CLONE_NEWNS): {}", io::Error::last_os_error());
                // SAFETY: constant NUL-terminated strings; no data argument.
                let r = unsafe {
                    libc::mount(
                        c"none".as_ptr(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    )
                };
                assert_eq!(r, 0, "make / private: {}", io::Error::last_os_error());
                let tmp = std::env::temp_dir();
                let text = fs::read_to_string(MOUNTINFO).expect("read mountinfo");
                let mut foreign: Vec<PathBuf> = text
                    .lines()
                    .filter_map(|l| {
                        let (left, right) = l.split_once(" - ")?;
                        let mp = PathBuf::from(OsStr::from_bytes(&unescape_mountinfo(
                            left.split(' ').nth(4)?,
                        )));
                        let fuse = right.split(' ').next()?.starts_with("fuse");
                        (fuse || (mp.starts_with(&tmp) && mp != tmp)).then_some(mp)
                    })
                    .collect();
                // Deepest first, so that each one is still reachable.
                foreign.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
                for mp in &foreign {
                    detach(mp);
                }
                f()
            })
            .expect("spawn a thread for the mount namespace");
        match t.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Bind-mounts `from` over `to`; in a private mount namespace only.
pub fn bind_mount(from: &Path, to: &Path) -> io::Result<()> {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: NUL-terminated paths; no filesystem type or data for a bind mount.
    let r = unsafe {
        libc::mount(
            a.as_ptr(),
            b.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Lazily unmounts whatever is still mounted at its path when it drops: made before a
/// command that must not mount there, so that one that does (and exits, leaving the
/// mount to a watchdog) leaves nothing behind when the test fails on it.
pub struct DetachOnDrop(pub PathBuf);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        // Stacked mounts come off one at a time.
        for _ in 0..8 {
            if mounts_at(&self.0).is_empty() {
                break;
            }
            detach(&self.0);
        }
    }
}

/// Poll until nothing is mounted at `path`, up to `deadline`. True when it is clear.
pub fn wait_unmounted(path: &Path, deadline: Duration) -> bool {
    wait_mounts_at_most(path, 0, deadline)
}

/// Poll until at most `n` mounts are at `path`, up to `deadline`.
pub fn wait_mounts_at_most(path: &Path, n: usize, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if mounts_at(path).len() <= n {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------
// processes

pub fn send_signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill with a pid we spawned and still hold (not yet reaped), so it cannot
    // have been reused.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Wait for `child` up to `deadline`; `None` if it is still running.
pub fn wait_deadline(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + deadline;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(e) => panic!("wait for pid {}: {e}", child.id()),
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Describe an exit status for messages: `exit 2` or `signal 9`.
pub fn describe_status(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => format!("{st:?}"),
    }
}

/// Run the binary with `args` and no mount expected: waits up to the exit deadline, and if it
/// is still running (it mounted something it should not have), stops it, detaches
/// `mnt_to_clean` and fails.
pub fn run_cachefs(args: &[OsString], mnt_to_clean: Option<&Path>) -> (ExitStatus, String) {
    let dir = TempDir::new().expect("tempdir for log");
    let log = dir.path().join("stderr.log");
    let f = fs::File::create(&log).expect("create log");
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(f)
        .spawn()
        .expect("spawn cachefs");
    let st = match wait_deadline(&mut child, EXIT_DEADLINE) {
        Some(st) => st,
        None => {
            send_signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
            if let Some(m) = mnt_to_clean {
                detach(m);
            }
            panic!(
                "cachefs {:?} still running after {:?}; stderr:\n{}",
                args,
                EXIT_DEADLINE,
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
    };
    (st, fs::read_to_string(&log).unwrap_or_default())
}

// ---------------------------------------------------------------------------------------
// TestMount

/// A step that fills SOURCE before mounting.
type Populate = Box<dyn FnOnce(&Path)>;

/// Builds a `TestMount`: options, extra arguments, and SOURCE contents before mounting.
#[derive(Default)]
pub struct Builder {
    allow_other: bool,
    fstab_form: bool,
    options: Vec<String>,
    args: Vec<OsString>,
    populate: Vec<Populate>,
    prepare_mnt: Vec<Populate>,
    nofile: Option<u64>,
    source: Option<PathBuf>,
    binary_copy: bool,
}

impl Builder {
    /// Mount with `--allow-other` (or `allow_other` in the fstab form). Also makes the temp
    /// dirs traversable by other users.
    pub fn allow_other(mut self) -> Self {
        self.allow_other = true;
        self
    }

    /// Give the cache and every option through one `-o cache=DIR,...`, as mount.fuse3 does.
    pub fn fstab_form(mut self) -> Self {
        self.fstab_form = true;
        self
    }

    /// An `-o` option, `k=v` or a bare flag. All of them go in one `-o` argument.
    pub fn option(mut self, opt: &str) -> Self {
        self.options.push(opt.to_string());
        self
    }

    /// A raw extra argument, e.g. `--max-size`.
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Start the daemon with RLIMIT_NOFILE `n:n` (soft and hard), as `prlimit` would.
    pub fn nofile(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }

    /// Use `dir` (which must exist: another mount's MNT, say) as SOURCE instead of a fresh
    /// temp dir. The mount neither owns nor removes it.
    pub fn source(mut self, dir: &Path) -> Self {
        self.source = Some(dir.to_path_buf());
        self
    }

    /// Run a copy of the binary (`TestMount::bin`, in the temp dir), which the test may
    /// remove or replace.
    pub fn binary_copy(mut self) -> Self {
        self.binary_copy = true;
        self
    }

    /// Run `f(SOURCE)` before mounting.
    pub fn populate(mut self, f: impl FnOnce(&Path) + 'static) -> Self {
        self.populate.push(Box::new(f));
        self
    }

    /// Run `f(MNT)` before mounting: a bind mount there stands for a container's volume.
    /// What it mounts stays under the cachefs mount and goes with the test's temp dir.
    pub fn prepare_mountpoint(mut self, f: impl FnOnce(&Path) + 'static) -> Self {
        self.prepare_mnt.push(Box::new(f));
        self
    }

    pub fn start(self) -> TestMount {
        TestMount::start_with(self)
    }
}

/// A live cachefs mount of a temp SOURCE at a temp MNT. Dropping it stops the daemon with
/// SIGTERM, falls back to a lazy unmount and SIGKILL of that one pid, reaps it and checks
/// that nothing is left mounted.
pub struct TestMount {
    pub root: PathBuf,
    pub source: PathBuf,
    pub cache: PathBuf,
    pub mnt: PathBuf,
    pub log: PathBuf,
    /// The daemon's arguments, for restarts.
    argv: Vec<OsString>,
    nofile: Option<u64>,
    /// How many mounts the test put at MNT before cachefs's (`prepare_mountpoint`).
    under: usize,
    /// The binary the daemon runs.
    pub bin: PathBuf,
    child: Option<Child>,
    /// A daemon that took the mount over after `child` died (failover): not a child of
    /// the test, stopped by pid in Drop.
    successor: Option<u32>,
    // Last: removed after Drop::drop has unmounted.
    _tmp: TempDir,
}

impl TestMount {
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A mount with default options and an empty SOURCE.
    pub fn start() -> TestMount {
        Builder::default().start()
    }

    fn start_with(b: Builder) -> TestMount {
        let tmp = tempfile::Builder::new()
            .prefix("cachefs-test.")
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().canonicalize().expect("canonicalize tempdir");
        let source = b.source.clone().unwrap_or_else(|| root.join("source"));
        let cache = root.join("cache");
        let mnt = root.join("mnt");
        if b.source.is_none() {
            fs::create_dir(&source).expect("mkdir");
        }
        fs::create_dir(&mnt).expect("mkdir");
        if b.allow_other {
            // Other users must be able to reach MNT (and SOURCE, for the checks).
            for d in [&root, &source, &mnt] {
                fs::set_permissions(d, fs::Permissions::from_mode(0o755)).expect("chmod");
            }
        }
        for f in b.populate {
            f(&source);
        }
        for f in b.prepare_mnt {
            f(&mnt);
        }
        let under = mounts_at(&mnt).len();
        let log = root.join("cachefs.log");
        let bin = if b.binary_copy {
            let copy = root.join("cachefs-bin");
            fs::copy(BIN, &copy).expect("copy the binary");
            copy
        } else {
            PathBuf::from(BIN)
        };

        let mut cmd = Command::new(&bin);
        cmd.arg(&source).arg(&mnt);
        let mut opts = b.options.clone();
        if b.fstab_form {
            let mut all = vec![format!("cache={}", cache.display())];
            if b.allow_other {
                all.push("allow_other".into());
            }
            all.append(&mut opts);
            cmd.arg("-o").arg(all.join(","));
        } else {
            cmd.arg("--cache").arg(&cache);
            if b.allow_other {
                cmd.arg("--allow-other");
            }
            if !opts.is_empty() {
                cmd.arg("-o").arg(opts.join(","));
            }
        }
        cmd.args(&b.args).arg("-f");
        let argv: Vec<OsString> = cmd.get_args().map(|a| a.to_os_string()).collect();
        let _ = fs::File::create(&log).expect("create log");

        let mut m = TestMount {
            root,
            source,
            cache,
            mnt,
            log,
            argv,
            nofile: b.nofile,
            under,
            bin,
            child: None,
            successor: None,
            _tmp: tmp,
        };
        m.respawn();
        m
    }

    /// Starts the daemon with this mount's arguments (its log appended to) and waits for
    /// the mount; after a stop with `signal_and_wait`, this starts it again.
    pub fn respawn(&mut self) {
        let out = fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("open log");
        let err = out.try_clone().expect("dup log");
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.argv)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some(n) = self.nofile {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe; lim lives in this closure.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                });
            }
        }
        // If the test binary dies without running Drop (a signal, an abort), the daemon
        // gets SIGTERM and unmounts, instead of outliving the test with its mount.
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        // A copy of the binary just written (`binary_copy`) is busy while another test's
        // fork holds its write descriptor, until that child execs.
        let mut tries = 0;
        let child = loop {
            match cmd.spawn() {
                Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => break r.expect("spawn cachefs"),
            }
        };
        self.child = Some(child);
        self.wait_mounted();
    }

    /// Stops the daemon with SIGTERM (it must exit 0 and unmount) and starts it again on
    /// the same SOURCE, CACHE and MNT.
    pub fn restart(&mut self) {
        let st = self.signal_and_wait(libc::SIGTERM);
        assert!(st.success(), "cachefs exited with {}", describe_status(&st));
        assert!(
            wait_unmounted(&self.mnt, Duration::from_secs(5)),
            "still mounted after a clean stop"
        );
        self.respawn();
    }

    /// Kills the daemon with SIGKILL and waits for the successor its watchdog starts
    /// (failover) to serve the mount, which never leaves mountinfo; then stops that one
    /// cleanly and starts the daemon again as the test's child, on the same SOURCE, CACHE
    /// and MNT. Both starts after the crash (the successor's and this one) are a start on
    /// what the dead daemon left.
    pub fn kill_and_restart(&mut self) {
        let st = self.signal_and_wait(libc::SIGKILL);
        assert_eq!(st.signal(), Some(libc::SIGKILL));
        assert!(
            self.wait_successor(Duration::from_secs(10)).is_some(),
            "no successor took the mount over after SIGKILL; log:\n{}",
            self.log_contents()
        );
        if let Some(p) = self.stop_successor() {
            panic!("{p}");
        }
        assert!(
            wait_unmounted(&self.mnt, Duration::from_secs(5)),
            "the successor left its mount behind"
        );
        self.respawn();
    }

    /// Stops a successor (not the test's child: its watchdog's) by pid with SIGTERM, as
    /// `cachefs unmount` would, and kills it if it does not go. What went wrong, if
    /// anything.
    fn stop_successor(&mut self) -> Option<String> {
        let pid = self.successor.take()?;
        let alive = || {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        };
        if !alive() {
            return None;
        }
        send_signal(pid, libc::SIGTERM);
        let end = Instant::now() + EXIT_DEADLINE;
        while alive() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive() {
            detach(&self.mnt);
            send_signal(pid, libc::SIGKILL);
            return Some(format!(
                "the successor {pid} ignored SIGTERM for {EXIT_DEADLINE:?}; killed it"
            ));
        }
        None
    }

    /// Poll mountinfo until MNT shows `fuse.cachefs`. Panics (and `Drop` cleans up) on a
    /// dead child, a wrong fstype or the deadline.
    fn wait_mounted(&mut self) {
        let end = Instant::now() + MOUNT_DEADLINE;
        loop {
            // A stale mount still there (one the new daemon is about to replace) answers
            // statfs with ENOTCONN; mount ids are reused, so they cannot tell the two apart.
            let at = mounts_at(&self.mnt);
            let top = (at.len() > self.under)
                .then(|| at.last().cloned())
                .flatten()
                .filter(|_| statfs_ok(&self.mnt));
            if let Some(fstype) = top.map(|m| m.fstype) {
                if fstype == "fuse.cachefs" {
                    return;
                }
                panic!(
                    "{} is mounted with fstype {fstype:?}, want \"fuse.cachefs\"; log:\n{}",
                    self.mnt.display(),
                    self.log_contents()
                );
            }
            // std keeps the status once reaped, so Drop still sees the exit and never
            // signals a pid that may have been reused.
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(st) = exited {
                panic!(
                    "cachefs exited ({}) before the mount appeared; log:\n{}",
                    describe_status(&st),
                    self.log_contents()
                );
            }
            if Instant::now() >= end {
                panic!(
                    "no fuse.cachefs mount at {} after {:?}; log:\n{}",
                    self.mnt.display(),
                    MOUNT_DEADLINE,
                    self.log_contents()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    pub fn pid(&self) -> u32 {
        self.serving_pid().unwrap_or(0)
    }

    /// `MNT/rel`.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mnt.join(rel)
    }

    /// `SOURCE/rel`.
    pub fn src(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.source.join(rel)
    }

    pub fn log_contents(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Send `sig` to the daemon and wait for it to exit (deadline); returns its status.
    /// Panics if it does not exit in time (Drop then falls back to SIGKILL).
    pub fn signal_and_wait(&mut self, sig: libc::c_int) -> ExitStatus {
        let child = self.child.as_mut().expect("daemon already reaped");
        if let Ok(None) = child.try_wait() {
            send_signal(child.id(), sig);
        }
        match wait_deadline(child, EXIT_DEADLINE) {
            Some(st) => {
                self.child = None;
                st
            }
            None => panic!(
                "cachefs did not exit within {:?} of signal {sig}; log:\n{}",
                EXIT_DEADLINE,
                self.log_contents()
            ),
        }
    }

    /// After the daemon was killed: waits (up to `within`) for a successor to serve the
    /// mount (failover), and returns its pid, which Drop then stops. `None` if none came.
    pub fn wait_successor(&mut self, within: Duration) -> Option<u32> {
        let before = self
            .successor
            .or_else(|| self.child.as_ref().map(Child::id));
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Some(pid) = status_pid(&self.mnt)
                && Some(pid) != before
            {
                self.successor = Some(pid);
                return Some(pid);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The daemon serving the mount now: the child, or the successor that took over.
    pub fn serving_pid(&self) -> Option<u32> {
        self.successor
            .or_else(|| self.child.as_ref().map(Child::id))
    }

    /// Stop the daemon now (as Drop would) and report a leftover mount as a panic.
    fn teardown(&mut self) -> Option<String> {
        let mut problem = self.stop_successor();
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            // Signal only a child not yet reaped: a reaped pid may belong to someone else.
            if let Ok(None) = child.try_wait() {
                send_signal(pid, libc::SIGTERM);
            }
            match wait_deadline(&mut child, EXIT_DEADLINE) {
                Some(st) if st.success() => {}
                Some(st) => {
                    problem = Some(format!(
                        "cachefs exited with {} after SIGTERM",
                        describe_status(&st)
                    ))
                }
                None => {
                    detach(&self.mnt);
                    send_signal(pid, libc::SIGKILL);
                    let _ = child.wait();
                    problem = Some(format!(
                        "cachefs ignored SIGTERM for {EXIT_DEADLINE:?}; killed pid {pid}"
                    ));
                }
            }
        }
        // The daemon unmounts before it exits; a watchdog may take a moment after a kill.
        if !wait_mounts_at_most(&self.mnt, self.under, Duration::from_secs(5)) {
            detach(&self.mnt);
            let msg = format!(
                "{} was still mounted after cachefs exited",
                self.mnt.display()
            );
            problem = Some(match problem {
                Some(p) => format!("{p}; {msg}"),
                None => msg,
            });
        }
        problem
    }
}

/// Every mount point strictly below `root`, deepest first.
fn mounts_below(root: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string(MOUNTINFO).unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|f| PathBuf::from(OsStr::from_bytes(&unescape_mountinfo(f))))
        .filter(|p| p.starts_with(root) && p != root)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    out.dedup();
    out
}

impl Drop for TestMount {
    fn drop(&mut self) {
        let problem = self.teardown();
        // Filesystems a test mounted inside its tree (a small cache filesystem) go too,
        // so that the temp dir can be removed whole.
        for m in mounts_below(&self.root) {
            detach(&m);
        }
        if std::thread::panicking() {
            eprintln!(
                "--- cachefs log ({}) ---\n{}\n--- end of log ---",
                self.log.display(),
                self.log_contents()
            );
            if let Some(p) = problem {
                eprintln!("teardown: {p}");
            }
            return;
        }
        if let Some(p) = problem {
            // A leftover mount or a daemon that does not stop cleanly is a failure of the
            // test that owned the mount.
            panic!("teardown: {p}; log:\n{}", self.log_contents());
        }
    }
}

// ---------------------------------------------------------------------------------------
// errno

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// The calling thread's errno. Async-signal-safe (usable in a `pre_exec` child).
pub fn errno() -> i32 {
    // SAFETY: __errno_location returns the thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Name of an errno value, for readable outcome logs.
pub fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOLCK => "ENOLCK",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETXTBSY => "ETXTBSY",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::E2BIG => "E2BIG",
        libc::EFAULT => "EFAULT",
        libc::EDEADLK => "EDEADLK",
        _ => return format!("errno {e}"),
    };
    n.to_string()
}

/// `Ok(ret)` for a libc return value that is not -1, else `Err(errno)`.
pub fn check(ret: libc::c_int) -> Result<libc::c_int, i32> {
    if ret == -1 { Err(errno()) } else { Ok(ret) }
}

/// Like `check` for `ssize_t` returns.
pub fn check_size(ret: libc::ssize_t) -> Result<usize, i32> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret as usize)
    }
}

/// The errno of an `io::Result`, `0` for success.
pub fn errno_of<T>(r: &io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

// ---------------------------------------------------------------------------------------
// running code as another user

/// Credentials for `in_child`. `groups` are the supplementary groups.
#[derive(Debug, Clone)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Creds {
    pub fn user(uid: u32, gid: u32) -> Creds {
        Creds {
            uid,
            gid,
            groups: Vec::new(),
        }
    }

    /// The test's second user, with no supplementary groups.
    pub fn other() -> Creds {
        Creds::user(OTHER_UID, OTHER_GID)
    }

    pub fn with_groups(mut self, groups: &[u32]) -> Creds {
        self.groups = groups.to_vec();
        self
    }
}

/// Run `f` in a forked child process, after switching to `creds` if given, and return the
/// code `f` returned: `0` for success, otherwise by convention an errno (any non-zero i32
/// is carried back unchanged).
///
/// `f` runs between fork and exec, so it must be async-signal-safe: raw `libc` calls on
/// data prepared beforehand (`CString`s, buffers), no allocation, no locks, no printing.
/// The code travels back through std's exec-error pipe: a non-zero code becomes the
/// `spawn()` error; on zero the child execs `/bin/true`.
pub fn in_child<F>(creds: Option<Creds>, f: F) -> i32
where
    F: FnMut() -> i32 + Send + Sync + 'static,
{
    match try_in_child(creds, f) {
        Ok(code) => code,
        Err(st) => panic!("/bin/true in child: {st:?}"),
    }
}

/// `in_child`, for a child that may die of a signal (a mapping's SIGBUS): that is the
/// `Err`, reported by the caller instead of a panic here.
pub fn try_in_child<F>(creds: Option<Creds>, mut f: F) -> Result<i32, ExitStatus>
where
    F: FnMut() -> i32 + Send + Sync + 'static,
{
    let mut cmd = Command::new("/bin/true");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let groups: Vec<libc::gid_t> = creds.as_ref().map(|c| c.groups.clone()).unwrap_or_default();
    let ids = creds.map(|c| (c.uid, c.gid));
    // SAFETY: the closure only makes async-signal-safe libc calls on memory allocated
    // before the fork (the `groups` vector is moved in, not grown).
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = ids
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0)
            {
                // Distinct from any errno so a failed switch is never mistaken for
                // the operation's result.
                return Err(io::Error::from_raw_os_error(CREDS_FAILED));
            }
            match f() {
                0 => Ok(()),
                code => Err(io::Error::from_raw_os_error(code)),
            }
        });
    }
    match cmd.spawn() {
        Ok(mut child) => {
            let st = child.wait().expect("wait for child");
            if st.success() { Ok(0) } else { Err(st) }
        }
        Err(e) => {
            let code = e.raw_os_error().unwrap_or_else(|| panic!("spawn: {e}"));
            assert_ne!(
                code, CREDS_FAILED,
                "switching credentials in the child failed"
            );
            Ok(code)
        }
    }
}

/// Reads `n` bytes at `off` of the open file `fd` through a shared mapping, in a child
/// process, so that a fault the kernel answers with SIGBUS (the range lies past the size
/// the file's kernel inode has) kills the child, not the test binary: that is the `Err`.
/// The child copies the bytes into a shared anonymous mapping that the caller reads.
pub fn mmap_read_in_child(fd: RawFd, off: u64, n: usize) -> Result<Vec<u8>, String> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let flags = libc::MAP_SHARED | libc::MAP_ANONYMOUS;
    // SAFETY: a fresh anonymous mapping of n bytes, unmapped below.
    let buf = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            n,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if buf == libc::MAP_FAILED {
        return Err(format!("mmap of a buffer: {}", io::Error::last_os_error()));
    }
    let to = buf as usize;
    let r = try_in_child(None, move || {
        // SAFETY: async-signal-safe calls; the copy stays within two mappings of n bytes.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                n,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                off as libc::off_t,
            );
            if p == libc::MAP_FAILED {
                return errno();
            }
            std::ptr::copy_nonoverlapping(p as *const u8, to as *mut u8, n);
            libc::munmap(p, n);
        }
        0
    });
    let out = match r {
        // SAFETY: buf is n bytes the child filled; no one else writes it now.
        Ok(0) => Ok(unsafe { std::slice::from_raw_parts(buf as *const u8, n) }.to_vec()),
        Ok(e) => Err(format!("mmap: {}", io::Error::from_raw_os_error(e))),
        Err(st) => Err(match st.signal() {
            Some(libc::SIGBUS) => "the mapping's read raised SIGBUS".to_string(),
            _ => format!("the child reading the mapping ended with {st:?}"),
        }),
    };
    // SAFETY: buf is the mapping made above, no longer used.
    unsafe { libc::munmap(buf, n) };
    out
}

/// Code returned by `in_child` when the credential switch itself failed.
const CREDS_FAILED: i32 = 0x7ead_0001;

/// `in_child` as the given user; returns 0 or the errno of the operation.
pub fn as_user<F>(creds: &Creds, f: F) -> i32
where
    F: FnMut() -> i32 + Send + Sync + 'static,
{
    in_child(Some(creds.clone()), f)
}

/// Helper for `in_child` closures: 0 if `ret` is not -1, else errno.
pub fn rc(ret: libc::c_int) -> i32 {
    if ret == -1 { errno() } else { 0 }
}

/// Run `sh -c script` as the given user; for steps where an exact errno is not needed.
pub fn sh_as(creds: &Creds, script: &str) -> std::process::Output {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(script).uid(creds.uid).gid(creds.gid);
    cmd.output().expect("run sh")
}

// ---------------------------------------------------------------------------------------
// recording outcomes

/// An ordered log of observed outcomes, one line per step, free of anything that differs
/// between two roots (paths, inode numbers, timestamps).
#[derive(Debug, Default)]
pub struct Outcomes {
    pub lines: Vec<String>,
}

impl Outcomes {
    pub fn note(&mut self, step: &str, what: impl std::fmt::Display) {
        self.lines.push(format!("{step}: {what}"));
    }

    /// Record an `io::Result`: the value's `Debug`, or the errno name.
    pub fn io<T: std::fmt::Debug>(&mut self, step: &str, r: io::Result<T>) -> Option<T> {
        match r {
            Ok(v) => {
                self.lines.push(format!("{step}: ok {v:?}"));
                Some(v)
            }
            Err(e) => {
                let what = match e.raw_os_error() {
                    Some(n) => errno_name(n),
                    None => format!("{:?}", e.kind()),
                };
                self.lines.push(format!("{step}: ERR {what}"));
                None
            }
        }
    }

    /// Record a `Result<T, errno>` as from `check`.
    pub fn sys<T: std::fmt::Debug>(&mut self, step: &str, r: Result<T, i32>) -> Option<T> {
        match r {
            Ok(v) => {
                self.lines.push(format!("{step}: ok {v:?}"));
                Some(v)
            }
            Err(e) => {
                self.lines.push(format!("{step}: ERR {}", errno_name(e)));
                None
            }
        }
    }

    /// Record an `in_child` code.
    pub fn code(&mut self, step: &str, code: i32) {
        if code == 0 {
            self.lines.push(format!("{step}: ok"));
        } else {
            self.lines.push(format!("{step}: ERR {}", errno_name(code)));
        }
    }

    /// Record `lstat(path)`: type, permission bits, owner, size, link count.
    pub fn lstat(&mut self, step: &str, path: &Path) {
        let r = fs::symlink_metadata(path).map(|m| describe_meta(&m));
        match r {
            Ok(s) => self.lines.push(format!("{step}: {s}")),
            Err(e) => self.io::<()>(step, Err(e)).unwrap_or(()),
        }
    }
}

/// Type, mode bits, owner, size and link count; no inode numbers or times.
pub fn describe_meta(m: &fs::Metadata) -> String {
    let ft = m.file_type();
    use std::os::unix::fs::FileTypeExt;
    let kind = if ft.is_file() {
        "file"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "chardev"
    } else if ft.is_block_device() {
        "blockdev"
    } else {
        "?"
    };
    // Directory sizes are file-system specific but SOURCE and the plain dir share one.
    let size = if ft.is_dir() {
        "-".to_string()
    } else {
        m.size().to_string()
    };
    format!(
        "{kind} mode={:04o} uid={} gid={} size={size} nlink={} rdev={:#x}",
        m.mode() & 0o7777,
        m.uid(),
        m.gid(),
        m.nlink(),
        m.rdev()
    )
}

/// Compare two outcome logs line by line; on mismatch, fail listing every differing step.
pub fn assert_same(what: &str, mount: &Outcomes, plain: &Outcomes) {
    if mount.lines == plain.lines {
        return;
    }
    let mut diff = String::new();
    let n = mount.lines.len().max(plain.lines.len());
    for i in 0..n {
        let a = mount
            .lines
            .get(i)
            .map(String::as_str)
            .unwrap_or("(missing)");
        let b = plain
            .lines
            .get(i)
            .map(String::as_str)
            .unwrap_or("(missing)");
        if a != b {
            diff.push_str(&format!("  step {i}:\n    mount: {a}\n    plain: {b}\n"));
        }
    }
    panic!(
        "{what}: the mount differs from a plain directory in {} step(s):\n{diff}",
        diff.matches("step ").count()
    );
}

/// A plain directory to run the same script on, traversable by other users if asked.
pub fn plain_dir(world: bool) -> TempDir {
    let d = tempfile::Builder::new()
        .prefix("cachefs-plain.")
        .tempdir()
        .expect("tempdir");
    if world {
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    d
}

/// A simple 64-bit FNV-1a digest, to compare contents without printing them.
pub fn digest(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Deterministic non-repeating test data.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// the running daemon, through its command line

/// `cachefs status MNT --json`, parsed.
/// The pid `cachefs status` reports for the mount, if it answers.
pub fn status_pid(mnt: &Path) -> Option<u32> {
    let out = Command::new(BIN)
        .arg("status")
        .arg(mnt)
        .arg("--json")
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["pid"].as_u64().map(|p| p as u32)
}

pub fn status_at(mnt: &Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("status")
        .arg(mnt)
        .arg("--json")
        .output()
        .expect("run cachefs status");
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status prints one JSON object")
}

/// The mount's status; on failure the daemon's log is in the panic message.
pub fn status(m: &TestMount) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("status")
        .arg(&m.mnt)
        .arg("--json")
        .output()
        .expect("run cachefs status");
    assert!(
        out.status.success(),
        "status failed: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log_contents()
    );
    serde_json::from_slice(&out.stdout).expect("status prints one JSON object")
}

/// An integer field of a status object.
pub fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("status key {key} is not an integer: {v}"))
}

/// `cachefs promote --wait MNT/rel`, which must succeed.
pub fn promote_wait(m: &TestMount, rel: &str) {
    let out = Command::new(BIN)
        .arg("promote")
        .arg("--wait")
        .arg(m.path(rel))
        .output()
        .expect("run cachefs promote");
    assert!(
        out.status.success(),
        "promote --wait {rel} failed: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log_contents()
    );
}

/// A mount (promote=manual) whose SOURCE holds `name` with `data`, promoted.
pub fn with_cached_file(name: &'static str, data: &[u8]) -> TestMount {
    let d = data.to_vec();
    let m = TestMount::builder()
        .option("promote=manual")
        .populate(move |src| fs::write(src.join(name), &d).unwrap())
        .start();
    promote_wait(&m, name);
    m
}

/// Fails a test that needs reads served by kernel passthrough where they are not.
pub fn require_passthrough(m: &TestMount) {
    assert_eq!(
        status(m)["passthrough"].as_bool(),
        Some(true),
        "this test needs FUSE passthrough (Linux 6.9+, root)"
    );
}

/// In a child process, opens `path` with `flags` and returns 0 if `f(fd)` returns 0, else
/// the errno. Async-signal-safe.
pub fn child_on(path: &Path, flags: i32, f: fn(libc::c_int) -> libc::c_int) -> i32 {
    let c = cpath(path);
    in_child(None, move || {
        // SAFETY: async-signal-safe calls on a prepared path.
        unsafe {
            let fd = libc::open(c.as_ptr(), flags);
            if fd < 0 {
                return errno();
            }
            if f(fd) != 0 {
                return errno();
            }
            0
        }
    })
}

/// Polls `cond` for up to 20 s (promotion and maintenance run in the background).
pub fn eventually(what: &str, m: &TestMount, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}; log:\n{}",
            m.log_contents()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}
