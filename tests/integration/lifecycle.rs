//! Mount lifecycle on real mounts: daemon mode (returns only once the mount is live, or
//! fails with the reason), `mount -t fuse.cachefs` through mount.fuse3 and `umount` (in a
//! private mount namespace where this build covers /usr/local/bin), stale mounts left by
//! a daemon and watchdog both killed (recovered by the next start and by `cachefs
//! cleanup`), a second start on a live mount, and `-f` as a container's PID 1. Every
//! mount and daemon a test makes has a guard made before it, which removes it in `Drop`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::common::{
    self, BIN, TestMount, describe_status, detach, mounts_at, send_signal, status_at,
    wait_deadline, wait_unmounted,
};

/// Temp SOURCE, CACHE and MNT for a daemon-mode mount, with a file in SOURCE.
struct Dirs {
    _tmp: TempDir,
    root: PathBuf,
    source: PathBuf,
    cache: PathBuf,
    mnt: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::Builder::new()
        .prefix("cachefs-life.")
        .tempdir()
        .unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let (source, cache, mnt) = (root.join("source"), root.join("cache"), root.join("mnt"));
    fs::create_dir(&source).unwrap();
    fs::create_dir(&mnt).unwrap();
    fs::write(source.join("hello.txt"), b"hello\n").unwrap();
    Dirs {
        _tmp: tmp,
        root,
        source,
        cache,
        mnt,
    }
}

/// The daemon-mode mounts a test makes (or must not make) at `mnt`, made before the
/// command that mounts: whatever is mounted there when it drops, the test failed or not,
/// is stopped (`cachefs unmount`), falling back to a lazy unmount and SIGKILL of that
/// mount's daemon, and checked gone.
struct Daemon {
    mnt: PathBuf,
}

/// The pid the daemon at `mnt` reports, if one answers (never panics: used in `Drop`).
fn daemon_pid(mnt: &Path) -> Option<u32> {
    let out = Command::new(BIN)
        .arg("status")
        .arg(mnt)
        .arg("--json")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["pid"].as_u64().map(|p| p as u32)
}

impl Daemon {
    fn expect(mnt: &Path) -> Daemon {
        Daemon {
            mnt: mnt.to_path_buf(),
        }
    }

    /// The pid of the daemon now serving the mount.
    fn pid(&self) -> u32 {
        status_at(&self.mnt)["pid"]
            .as_u64()
            .expect("status names the daemon's pid") as u32
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if mounts_at(&self.mnt).is_empty() {
            return;
        }
        let pid = daemon_pid(&self.mnt);
        let _ = Command::new(BIN)
            .arg("unmount")
            .arg(&self.mnt)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !wait_unmounted(&self.mnt, Duration::from_secs(10)) {
            detach(&self.mnt);
            if let Some(pid) = pid {
                send_signal(pid, libc::SIGKILL);
            }
            if !std::thread::panicking() {
                panic!(
                    "daemon at {} did not stop on `cachefs unmount`",
                    self.mnt.display()
                );
            }
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    // A zombie has exited: only "State: Z" under /proc counts as gone too.
    fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| {
            !s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
        .unwrap_or(false)
}

fn wait_gone(pid: u32) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) {
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Runs a command to completion (with a deadline) and returns (success, stdout+stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn daemon_mount(d: &Dirs, extra: &[&str]) -> (bool, String) {
    run(Command::new(BIN)
        .arg(&d.source)
        .arg(&d.mnt)
        .arg("--cache")
        .arg(&d.cache)
        .args(extra))
}

#[test]
fn daemon_mode_returns_once_the_mount_is_live() {
    if !common::can_mount("daemon_mode_returns_once_the_mount_is_live") {
        return;
    }
    let d = dirs();
    let daemon = Daemon::expect(&d.mnt);
    let (ok, out) = daemon_mount(&d, &[]);
    assert!(ok, "daemon mode failed: {out}");
    // No polling: the mount is there the moment the command returns.
    let at = mounts_at(&d.mnt);
    assert_eq!(at.len(), 1, "right after the command returned: {at:?}");
    assert_eq!(fs::read(d.mnt.join("hello.txt")).unwrap(), b"hello\n");
    let pid = daemon.pid();
    assert!(pid_alive(pid));

    // A second start on the live mount is refused and names the running daemon.
    let (ok, out) = daemon_mount(&d, &[]);
    assert!(!ok, "a second mount on a live one succeeded");
    assert!(
        out.contains(&format!("pid {pid}")) && out.contains(&d.mnt.display().to_string()),
        "the refusal names the mountpoint and the daemon's pid: {out}"
    );

    // `cachefs unmount` stops it: mount gone, daemon (and its watchdog) gone.
    let (ok, out) = run(Command::new(BIN).arg("unmount").arg(&d.mnt));
    assert!(ok, "unmount: {out}");
    assert!(mounts_at(&d.mnt).is_empty());
    assert!(wait_gone(pid), "daemon {pid} still running after unmount");
}

#[test]
fn daemon_mode_reports_an_impossible_mount() {
    if !common::can_mount("daemon_mode_reports_an_impossible_mount") {
        return;
    }
    // A cache path under a regular file cannot exist.
    let d = dirs();
    let _none_expected = Daemon::expect(&d.mnt);
    let bad = d.source.join("hello.txt").join("cache");
    let (ok, out) = run(Command::new(BIN)
        .arg(&d.source)
        .arg(&d.mnt)
        .arg("--cache")
        .arg(&bad));
    assert!(!ok, "mount with cache {} succeeded", bad.display());
    assert!(out.contains("cache"), "the reason names the cache: {out}");
    assert!(mounts_at(&d.mnt).is_empty());

    // A failure that only the daemon can see (the cache is owned by a running mount)
    // comes back through the readiness pipe, with exit 1.
    let first = TestMount::start();
    let (ok, out) = run(Command::new(BIN)
        .arg(&d.source)
        .arg(&d.mnt)
        .arg("--cache")
        .arg(&first.cache));
    assert!(!ok, "a second mount on a cache in use succeeded");
    assert!(
        out.contains("in use"),
        "the daemon's reason reaches the caller: {out}"
    );
    assert!(
        mounts_at(&d.mnt).is_empty(),
        "nothing is mounted after a failure"
    );
}

/// A daemon that the command under test started and had to stop: killed on drop if it
/// is still there (a cachefs whose command line names `mnt`: a pid that has exited and
/// been reused by something else is left alone).
struct Reap {
    pid: u32,
    mnt: PathBuf,
}

impl Drop for Reap {
    fn drop(&mut self) {
        let ours = fs::read(format!("/proc/{}/cmdline", self.pid)).is_ok_and(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"cachefs"))
                && args
                    .iter()
                    .any(|a| *a == self.mnt.as_os_str().as_encoded_bytes())
        });
        if ours && pid_alive(self.pid) {
            send_signal(self.pid, libc::SIGKILL);
        }
    }
}

/// Resumes a stopped daemon on drop, so its mount's teardown works even if the test
/// fails first.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        send_signal(self.0, libc::SIGCONT);
    }
}

/// A SOURCE that hangs (here a cachefs mount whose daemon is stopped, as a dead NFS
/// server would) must not hang `mount -a`: daemon mode gives up after `mount_timeout`,
/// exit 1 with a line naming SOURCE and the option, stops its child, and mounts nothing.
#[test]
fn daemon_mode_times_out_on_a_source_that_hangs() {
    if !common::can_mount("daemon_mode_times_out_on_a_source_that_hangs") {
        return;
    }
    let hung = TestMount::start();
    let d = dirs();
    let _none_expected = Daemon::expect(&d.mnt);
    send_signal(hung.pid(), libc::SIGSTOP);
    let _resume = Resume(hung.pid());
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .arg(&hung.mnt)
        .arg(&d.mnt)
        .arg("--cache")
        .arg(&d.cache)
        .arg("-o")
        .arg("mount_timeout=2")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = wait_deadline(&mut child, Duration::from_secs(20));
    let Some(st) = st else {
        send_signal(child.id(), libc::SIGKILL);
        let _ = child.wait();
        panic!("daemon mode still waiting 20 s after mount_timeout=2");
    };
    // The timed-out daemon may hold our stderr pipe while it waits, unkillable, on the
    // request the stopped daemon had read: resume that one before reading to the end.
    send_signal(hung.pid(), libc::SIGCONT);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(st.code(), Some(1), "{}: {err}", describe_status(&st));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "gave up early: {err}"
    );
    assert!(err.contains("mount_timeout"), "{err}");
    assert!(err.contains(&hung.mnt.display().to_string()), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // The stopped daemon's child was killed; nothing was mounted.
    let pid: u32 = err
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in: {err}"));
    let _child = Reap {
        pid,
        mnt: d.mnt.clone(),
    };
    assert!(
        wait_gone(pid),
        "the timed-out daemon {pid} is still running"
    );
    assert!(mounts_at(&d.mnt).is_empty());
}

/// Where mount.fuse3's `sh -c "'cachefs' ..."` finds the helper when PATH does not say:
/// dash's and bash's default search path starts with these two.
const HELPER_DIRS: [&str; 2] = ["/usr/local/sbin", "/usr/local/bin"];

/// The PATH the mount commands get, so that one naming a user's own bin directory first
/// (where an installed cachefs may be) is not what mount.fuse3 passes on.
const HELPER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A bind mount made in a private mount namespace, undone on drop.
struct Bound(PathBuf);

impl Drop for Bound {
    fn drop(&mut self) {
        detach(&self.0);
    }
}

/// `mount -t fuse.cachefs` through mount.fuse3, the fstab form through `mount -T`, and
/// `umount`. mount.fuse3 runs the helper by name, so the test runs in a private mount
/// namespace where a temp directory holding only this build's `cachefs` covers
/// /usr/local/sbin and /usr/local/bin: nothing outside temp dirs is written, and a
/// cachefs installed anywhere neither stops the test nor is what it runs (the daemon's
/// executable is checked to be this build).
#[test]
fn mount_t_fuse_cachefs_and_umount() {
    if !common::can_mount("mount_t_fuse_cachefs_and_umount") {
        return;
    }
    if Command::new("mount.fuse3").arg("-h").output().is_err() {
        panic!("mount.fuse3 is missing: install fuse3 (scripts/prereqs.sh does)");
    }
    let d = dirs();
    let bin = d.root.join("bin");
    fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("cachefs")).unwrap();
    common::in_private_mount_ns(|| {
        let mut bound = Vec::new();
        for dir in HELPER_DIRS
            .map(Path::new)
            .into_iter()
            .filter(|p| p.is_dir())
        {
            common::bind_mount(&bin, dir)
                .unwrap_or_else(|e| panic!("bind {} over {}: {e}", bin.display(), dir.display()));
            bound.push(Bound(dir.to_path_buf()));
        }
        assert!(
            !bound.is_empty(),
            "neither of {HELPER_DIRS:?} exists to hold the helper"
        );
        mount_umount_through_mount_8(&d);
    });
}

/// The body of `mount_t_fuse_cachefs_and_umount`, in its mount namespace.
fn mount_umount_through_mount_8(d: &Dirs) {
    let daemon = Daemon::expect(&d.mnt);
    assert!(mounts_at(&d.mnt).is_empty());
    let opts = format!(
        "cache={},allow_other,nofail,_netdev,x-systemd.automount,x-systemd.requires=local-fs.target,noatime",
        d.cache.display()
    );
    let (ok, out) = run(Command::new("mount")
        .env("PATH", HELPER_PATH)
        .args(["-t", "fuse.cachefs"])
        .arg(&d.source)
        .arg(&d.mnt)
        .arg("-o")
        .arg(&opts));
    assert!(ok, "mount -t fuse.cachefs: {out}");
    let at = mounts_at(&d.mnt);
    assert_eq!(at.len(), 1, "{at:?}");
    let pid = daemon.pid();
    let (exe, ours) = (
        fs::metadata(format!("/proc/{pid}/exe")).unwrap(),
        fs::metadata(BIN).unwrap(),
    );
    assert_eq!(
        (exe.dev(), exe.ino()),
        (ours.dev(), ours.ino()),
        "mount.fuse3 ran another cachefs than this build ({BIN})"
    );
    let findmnt = run(Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE,SOURCE,OPTIONS"])
        .arg(&d.mnt))
    .1;
    assert!(
        findmnt.starts_with("fuse.cachefs ") && findmnt.contains(&d.source.display().to_string()),
        "{findmnt}"
    );
    assert!(
        findmnt.contains("noatime") && findmnt.contains("allow_other"),
        "{findmnt}"
    );
    assert_eq!(fs::read(d.mnt.join("hello.txt")).unwrap(), b"hello\n");

    let (ok, out) = run(Command::new("umount").arg(&d.mnt));
    assert!(ok, "umount: {out}");
    assert!(mounts_at(&d.mnt).is_empty());
    assert!(wait_gone(pid), "daemon {pid} still running after umount");

    // The fstab form of the same line, through mount(8) with a private fstab.
    let fstab = d.root.join("fstab");
    fs::write(
        &fstab,
        format!(
            "{} {} fuse.cachefs cache={},nofail,_netdev 0 0\n",
            d.source.display(),
            d.mnt.display(),
            d.cache.display()
        ),
    )
    .unwrap();
    let (ok, out) = run(Command::new("mount")
        .env("PATH", HELPER_PATH)
        .arg("-T")
        .arg(&fstab)
        .arg(&d.mnt));
    assert!(ok, "mount -T fstab: {out}");
    assert_eq!(fs::read(d.mnt.join("hello.txt")).unwrap(), b"hello\n");
    let pid = daemon.pid();
    let (ok, out) = run(Command::new("umount").arg(&d.mnt));
    assert!(ok, "umount: {out}");
    assert!(wait_gone(pid), "daemon {pid} still running after umount");
}

/// The pid of the daemon's watchdog: its child named `cachefs-watch`.
fn watchdog_of(pid: u32) -> u32 {
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    children
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .find(|c| {
            fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == "cachefs-watch")
        })
        .expect("the daemon has a watchdog child")
}

/// Kills the watchdog, then the daemon: the mount stays behind, stale.
fn leave_stale_mount(m: &mut TestMount) {
    let watchdog = watchdog_of(m.pid());
    send_signal(watchdog, libc::SIGKILL);
    assert!(wait_gone(watchdog));
    let st = m.signal_and_wait(libc::SIGKILL);
    assert_eq!(st.code(), None, "{}", describe_status(&st));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(mounts_at(&m.mnt).len(), 1, "the mount is left behind");
    let err = fs::metadata(m.mnt.join("x")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "stale: {err}");
}

#[test]
fn stale_mount_is_recovered_by_the_next_start_and_by_cleanup() {
    if !common::can_mount("stale_mount_is_recovered_by_the_next_start_and_by_cleanup") {
        return;
    }
    let mut m = TestMount::builder()
        .populate(|s: &Path| fs::write(s.join("f"), b"data").unwrap())
        .start();
    leave_stale_mount(&mut m);
    m.respawn();
    assert!(
        m.log_contents()
            .contains("removing a stale fuse.cachefs mount"),
        "{}",
        m.log_contents()
    );
    assert_eq!(mounts_at(&m.mnt).len(), 1, "exactly one mount, the new one");
    assert_eq!(fs::read(m.path("f")).unwrap(), b"data");

    leave_stale_mount(&mut m);
    let (ok, out) = run(Command::new(BIN).arg("cleanup").arg(&m.mnt));
    assert!(ok, "cleanup: {out}");
    assert!(
        out.contains(&format!("removed the stale mount at {}", m.mnt.display())),
        "{out}"
    );
    assert!(mounts_at(&m.mnt).is_empty());
    // Named again, it is no cachefs mount any more: an error that says so.
    let (ok, out) = run(Command::new(BIN).arg("cleanup").arg(&m.mnt));
    assert!(!ok && out.contains("is not a cachefs mount"), "{out}");
    // And the mountpoint is usable again.
    m.respawn();
}

/// `cachefs cleanup --watch` run as a host-side service: it ends (by pid) when dropped.
struct Watcher {
    child: Child,
    out: PathBuf,
    _dir: TempDir,
}

impl Watcher {
    fn start(mountpoints: &[&Path]) -> Watcher {
        let dir = TempDir::new().expect("tempdir");
        let out = dir.path().join("watch.out");
        let f = fs::File::create(&out).expect("create");
        let child = Command::new(BIN)
            .args(["cleanup", "--watch", "--every", "1"])
            .args(mountpoints)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup"))
            .stderr(f)
            .spawn()
            .expect("spawn cachefs cleanup --watch");
        Watcher {
            child,
            out,
            _dir: dir,
        }
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A killed container takes cachefs and its watchdog with it, and the mount it propagated
/// to the host stays behind, dead ("Transport endpoint is not connected"), until something
/// on the host removes it: `cachefs cleanup --watch` does, within its interval, and leaves
/// live mounts alone, a new one at the same place included.
#[test]
fn cleanup_watch_removes_a_dead_mount_soon_and_leaves_live_ones_alone() {
    if !common::can_mount("cleanup_watch_removes_a_dead_mount_soon_and_leaves_live_ones_alone") {
        return;
    }
    let populate = |s: &Path| fs::write(s.join("f"), b"data").unwrap();
    let mut dead = TestMount::builder().populate(populate).start();
    let live = TestMount::builder().populate(populate).start();
    // Dead before the watcher starts, so that it is seen dead before the watcher acts.
    leave_stale_mount(&mut dead);
    let w = Watcher::start(&[&dead.mnt, &live.mnt]);
    assert!(
        wait_unmounted(&dead.mnt, Duration::from_secs(10)),
        "the dead mount is still there; watcher said:\n{}",
        w.output()
    );
    let line = format!("removed the stale mount at {}", dead.mnt.display());
    let end = Instant::now() + Duration::from_secs(5);
    while !w.output().contains(&line) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(w.output().contains(&line), "{}", w.output());
    // The mountpoint takes a new mount, which, like the other live one, stays.
    dead.respawn();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(mounts_at(&dead.mnt).len(), 1, "{}", w.output());
    assert_eq!(mounts_at(&live.mnt).len(), 1, "{}", w.output());
    assert_eq!(fs::read(dead.path("f")).unwrap(), b"data");
    assert_eq!(fs::read(live.path("f")).unwrap(), b"data");
    assert_eq!(w.output().matches("removed").count(), 1, "{}", w.output());
}

/// `unshare` running cachefs as its PID 1 on `mnt`. If the test ends before the daemon
/// has stopped, drop kills `unshare` (`--kill-child` takes cachefs, and its watchdog, with
/// it) and detaches the mount they leave.
struct Container {
    outer: Child,
    mnt: PathBuf,
}

impl Drop for Container {
    fn drop(&mut self) {
        // std keeps a reaped child's status: a pid already waited for is never signalled.
        if let Ok(None) = self.outer.try_wait() {
            let _ = self.outer.kill();
            let _ = self.outer.wait();
        }
        if !wait_unmounted(&self.mnt, Duration::from_secs(5)) {
            detach(&self.mnt);
        }
    }
}

#[test]
fn foreground_as_container_pid_1_stops_cleanly_on_sigterm() {
    if !common::can_mount("foreground_as_container_pid_1_stops_cleanly_on_sigterm") {
        return;
    }
    let d = dirs();
    // A new PID namespace: cachefs is its PID 1, as a container's entrypoint is.
    let outer = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child"])
        .arg(BIN)
        .arg(&d.source)
        .arg(&d.mnt)
        .arg("--cache")
        .arg(&d.cache)
        .arg("-f")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux)");
    let mut c = Container {
        outer,
        mnt: d.mnt.clone(),
    };
    let end = Instant::now() + Duration::from_secs(10);
    while mounts_at(&d.mnt).is_empty() {
        if Instant::now() > end || c.outer.try_wait().unwrap().is_some() {
            let _ = c.outer.kill();
            let mut err = String::new();
            if let Some(mut e) = c.outer.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("no mount from cachefs as PID 1: {err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let inner: u32 = fs::read_to_string(format!("/proc/{0}/task/{0}/children", c.outer.id()))
        .unwrap()
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("unshare's child");
    let nspid = fs::read_to_string(format!("/proc/{inner}/status")).unwrap();
    assert!(
        nspid
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.split_whitespace().last() == Some("1")),
        "cachefs is PID 1 in its namespace: {nspid}"
    );
    // Hold a file open, as a player would, then stop the container.
    let held = fs::File::open(d.mnt.join("hello.txt")).unwrap();
    send_signal(inner, libc::SIGTERM);
    let st = wait_deadline(&mut c.outer, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("cachefs as PID 1 ignored SIGTERM for 10 s"));
    drop(held);
    assert!(st.success(), "exit status {}", describe_status(&st));
    assert!(
        wait_unmounted(&d.mnt, Duration::from_secs(2)),
        "still mounted after SIGTERM"
    );
}

/// `scripts/install.sh` with this build (`CACHEFS_BIN`, so nothing is built), in a private
/// mount namespace where temp directories cover /usr/local/bin, /usr/local/share/man and
/// /var/cache/man (mandb's index, copied): the binary lands in /usr/local/bin, its manual
/// page in /usr/local/share/man/man8, `man cachefs` opens it and `whatis` finds it.
/// Nothing outside temp dirs is written.
#[test]
fn install_script_installs_the_binary_and_its_manual_page() {
    if !common::can_mount("install_script_installs_the_binary_and_its_manual_page") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let covers = [
        ("/usr/local/bin", "bin"),
        ("/usr/local/share/man", "man"),
        ("/var/cache/man", "man-cache"),
    ];
    let has_man = Command::new("man").arg("-w").output().is_ok();
    common::in_private_mount_ns(|| {
        let mut bound = Vec::new();
        for (dir, name) in covers {
            let (dir, cover) = (Path::new(dir), tmp.path().join(name));
            fs::create_dir(&cover).unwrap();
            if name == "man-cache" && dir.is_dir() {
                // mandb updates the index it finds; from an empty one it would rebuild the
                // whole system's (half a minute).
                let (ok, out) = run(Command::new("cp").arg("-a").arg(dir.join(".")).arg(&cover));
                assert!(ok, "copy {}: {out}", dir.display());
            }
            if !dir.is_dir() {
                assert!(
                    name == "man-cache",
                    "{} is missing: nothing to cover",
                    dir.display()
                );
                continue;
            }
            common::bind_mount(&cover, dir)
                .unwrap_or_else(|e| panic!("bind {} over {}: {e}", cover.display(), dir.display()));
            bound.push(Bound(dir.to_path_buf()));
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh");
        let (ok, out) = run(Command::new("bash").arg(&script).env("CACHEFS_BIN", BIN));
        assert!(ok, "install.sh: {out}");
        assert_eq!(
            fs::read(tmp.path().join("bin/cachefs")).unwrap(),
            fs::read(BIN).unwrap(),
            "the installed binary is this build"
        );
        let page = fs::read_to_string(tmp.path().join("man/man8/cachefs.8")).unwrap();
        assert!(
            page.contains("\n.TH CACHEFS 8 "),
            "{}",
            &page[..200.min(page.len())]
        );
        if !has_man {
            common::skip(
                "install_script_installs_the_binary_and_its_manual_page (man part)",
                "man is not installed",
            );
            return;
        }
        let (ok, path) = run(Command::new("man").args(["-w", "cachefs"]));
        assert!(ok, "man -w cachefs: {path}");
        assert!(
            path.trim().ends_with("/man8/cachefs.8"),
            "man -w cachefs: {path}"
        );
        let (ok, text) = run(Command::new("man")
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .arg("cachefs"));
        assert!(ok, "man cachefs: {text}");
        for want in [
            "promote_ignore",
            "KERNEL MOUNT FLAGS",
            "EXIT STATUS",
            "cachefs status",
        ] {
            assert!(text.contains(want), "man cachefs lacks {want:?}:\n{text}");
        }
        // mandb indexed it: whatis finds it.
        let (ok, text) = run(Command::new("whatis").arg("cachefs"));
        assert!(
            ok && text.starts_with("cachefs (8)"),
            "whatis cachefs: {text}"
        );
        drop(bound);
    });
}

/// Every entry below `dir`, counted by a plain walk; an error is returned, not skipped.
fn walk(dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        n += 1;
        if e.file_type()?.is_dir() {
            n += walk(&e.path())?;
        }
        fs::symlink_metadata(e.path())?;
    }
    Ok(n)
}

/// Reads `path` whole in 1 MiB steps: its sha256 (by `sha256sum` of the bytes read) and
/// the longest single read.
fn read_whole(path: &Path) -> std::io::Result<(Vec<u8>, Duration)> {
    use std::io::Read;
    let mut f = fs::File::open(path)?;
    let (mut all, mut buf, mut worst) = (Vec::new(), vec![0u8; 1 << 20], Duration::ZERO);
    loop {
        let t = Instant::now();
        let n = f.read(&mut buf)?;
        worst = worst.max(t.elapsed());
        if n == 0 {
            return Ok((all, worst));
        }
        all.extend_from_slice(&buf[..n]);
    }
}

/// Four clients of a library, run until `finish`: a reader the daemon serves and a
/// passthrough reader streaming films (bytes compared), a scanner walking the library
/// (313 entries), and a writer appending with fsync (content compared at the end).
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<std::thread::JoinHandle<(&'static str, u32, Vec<String>)>>,
    appended: std::sync::Arc<std::sync::Mutex<u32>>,
    log: PathBuf,
}

/// A mount of that library, with the load running. `served.mkv` is read by the daemon:
/// its reads count toward promotion, and it is bigger than `max_size`, so no copy of it
/// is ever made (a copy being made would hold a live restart off). The copy of
/// `cached.mkv` is made first and read by passthrough.
fn mount_under_load(options: &[&str], binary_copy: bool) -> (TestMount, Load) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let big: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let (big, film) = (Arc::new(big.clone()), Arc::new(big[..12 << 20].to_vec()));
    let mut b = TestMount::builder().option("max_size=16M");
    for o in options {
        b = b.option(o);
    }
    if binary_copy {
        b = b.binary_copy();
    }
    let m = {
        let (big, film) = (big.clone(), film.clone());
        b.populate(move |s: &Path| {
            fs::write(s.join("served.mkv"), &*big).unwrap();
            fs::write(s.join("cached.mkv"), &*film).unwrap();
            for d in 0..10 {
                fs::create_dir(s.join(format!("d{d}"))).unwrap();
                for f in 0..30 {
                    fs::write(s.join(format!("d{d}/e{f}.mkv")), b"x").unwrap();
                }
            }
        })
        .start()
    };
    let (ok, out) = run(Command::new(BIN)
        .args(["promote", "--wait"])
        .arg(m.path("cached.mkv")));
    assert!(ok, "{out}");

    let stop = Arc::new(AtomicBool::new(false));
    let client = |name: &'static str, f: Box<dyn Fn() -> Result<(), String> + Send>| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut runs, mut bad) = (0u32, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                if let Err(e) = f() {
                    bad.push(e);
                }
                runs += 1;
            }
            (name, runs, bad)
        })
    };
    let reader =
        |path: PathBuf, film: Arc<Vec<u8>>| -> Box<dyn Fn() -> Result<(), String> + Send> {
            Box::new(move || match read_whole(&path) {
                Ok((b, _)) if b == *film => Ok(()),
                Ok(_) => Err("wrong bytes".into()),
                Err(e) => Err(e.to_string()),
            })
        };
    let mnt = m.mnt.clone();
    let log = m.path("append.log");
    let appended = Arc::new(std::sync::Mutex::new(0u32));
    let writer: Box<dyn Fn() -> Result<(), String> + Send> = {
        let (log, appended) = (log.clone(), appended.clone());
        let f = std::sync::Mutex::new(
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap(),
        );
        Box::new(move || {
            use std::io::Write;
            let mut n = appended.lock().unwrap();
            let mut f = f.lock().unwrap();
            f.write_all(format!("{:08}\n", *n).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| e.to_string())?;
            *n += 1;
            std::thread::sleep(Duration::from_millis(5));
            Ok(())
        })
    };
    let clients = vec![
        client(
            "daemon-served reader",
            reader(m.path("served.mkv"), big.clone()),
        ),
        client("passthrough reader", reader(m.path("cached.mkv"), film)),
        client(
            "scanner",
            Box::new(move || match walk(&mnt) {
                Ok(313) => Ok(()),
                other => Err(format!("{other:?}")),
            }),
        ),
        client("writer", writer),
    ];
    let load = Load {
        stop,
        clients,
        appended,
        log,
    };
    (m, load)
}

impl Load {
    /// Stops the clients: each ran, none saw an error or a wrong byte, and the appended
    /// file holds every line once, in order. The served film was read by the daemon and
    /// the cached one by passthrough, as the serving daemon's own counts show.
    fn finish(self, m: &TestMount) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.clients {
            let (name, runs, bad) = c.join().unwrap();
            assert!(runs > 0, "{name} never ran");
            assert!(
                bad.is_empty(),
                "{name}: {} of {runs} went wrong: {bad:?}",
                bad.len()
            );
        }
        let n = *self.appended.lock().unwrap();
        let want: String = (0..n).map(|i| format!("{i:08}\n")).collect();
        assert_eq!(
            fs::read_to_string(&self.log).unwrap(),
            want,
            "the appended file"
        );
        // Counted from 0 again by each new daemon: the last one's own count.
        let now = status_at(&m.mnt);
        let some = |k: &str| now[k].as_u64().unwrap() > 0;
        assert!(
            some("passthrough_opens"),
            "the cached film was not read by passthrough: {now}"
        );
        assert!(
            some("source_read_bytes"),
            "the daemon did not serve the uncached film: {now}"
        );
    }
}

/// `cachefs restart` into another copy of the binary, five times, while four clients
/// run: a reader the daemon serves and a passthrough reader streaming films (bytes
/// compared), a scanner walking the library, and a writer appending with fsync (content
/// compared). None sees an error or a wrong byte; the mount never leaves mountinfo and
/// the daemon keeps its pid. Refused, one line, with the daemon serving on: while a lock
/// is held through the mount (not carried yet), and into a binary that cannot read this
/// daemon's state.
#[test]
fn restart_under_load_keeps_every_client_and_refuses_what_it_cannot_carry() {
    if !common::can_mount("restart_under_load_keeps_every_client_and_refuses_what_it_cannot_carry")
    {
        return;
    }
    let (m, load) = mount_under_load(&[], false);
    let successor = m.root.join("cachefs-next");
    fs::copy(BIN, &successor).unwrap();
    let pid = m.pid();
    let since = |m: &TestMount| status_at(&m.mnt)["serving_since_ms"].as_u64().unwrap();
    for i in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        let before = since(&m);
        let binary = if i % 2 == 0 {
            successor.as_path()
        } else {
            Path::new(BIN)
        };
        let (ok, out) = run(Command::new(BIN)
            .arg("restart")
            .arg(&m.mnt)
            .arg("--binary")
            .arg(binary));
        assert!(ok, "restart {i}: {out}\n{}", m.log_contents());
        assert!(out.contains("restarted"), "{out}");
        assert_eq!(mounts_at(&m.mnt).len(), 1, "restart {i}");
        assert_eq!(status_at(&m.mnt)["pid"].as_u64(), Some(pid as u64));
        assert_ne!(since(&m), before, "restart {i} did not start a new binary");
        assert_eq!(fs::read_link(format!("/proc/{pid}/exe")).unwrap(), binary);
    }
    std::thread::sleep(Duration::from_millis(300));
    load.finish(&m);

    // A lock held through the mount: refused, the daemon serving on.
    let held = fs::OpenOptions::new()
        .write(true)
        .open(m.path("d0/e0.mkv"))
        .unwrap();
    let lk = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: fcntl on an open descriptor with a valid flock.
    assert_eq!(
        unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&held), libc::F_SETLK, &lk) },
        0
    );
    let before = since(&m);
    let (ok, out) = run(Command::new(BIN).arg("restart").arg(&m.mnt));
    assert!(!ok);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("a lock is held through the mount"), "{out}");
    drop(held);
    // A binary that reads another state: refused before the daemon lets go.
    let older = m.root.join("cachefs-older");
    fs::write(&older, "#!/bin/sh\necho CACHEFS-RESUME-1\n").unwrap();
    fs::set_permissions(&older, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (ok, out) = run(Command::new(BIN)
        .arg("restart")
        .arg(&m.mnt)
        .arg("--binary")
        .arg(&older));
    assert!(!ok);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("cannot take this daemon's state"), "{out}");
    assert_eq!(since(&m), before, "a refused restart restarted");
    assert_eq!(walk(&m.mnt).unwrap(), 313);
}

/// `cachefs restart -o`: options that can change on a live mount (lifetimes, limits) take
/// effect in the new binary; one that cannot (who may use the mount) and a bad one are
/// refused with one line, the daemon serving on.
#[test]
fn restart_takes_options_that_can_change_live_and_refuses_the_others() {
    if !common::can_mount("restart_takes_options_that_can_change_live_and_refuses_the_others") {
        return;
    }
    let m = TestMount::start();
    let st = status_at(&m.mnt);
    assert_eq!(st["meta_ttl"].as_u64(), Some(0));
    let restart = |opts: &str| {
        run(Command::new(BIN)
            .arg("restart")
            .arg(&m.mnt)
            .args(["-o", opts]))
    };
    let (ok, out) = restart("meta_ttl=1d,max_size=1G");
    assert!(ok, "{out}\n{}", m.log_contents());
    let st = status_at(&m.mnt);
    assert_eq!(st["meta_ttl"].as_u64(), Some(86400), "{st}");
    assert_eq!(st["max_size"].as_u64(), Some(1 << 30), "{st}");
    let since = st["serving_since_ms"].as_u64();
    for (opts, says) in [
        ("allow_other", "allow_other cannot change on a live mount"),
        (
            "nosuid",
            "the kernel's mount flags cannot change on a live mount",
        ),
        ("meta_ttl=soon", "meta_ttl"),
    ] {
        let (ok, out) = restart(opts);
        assert!(!ok, "{opts}: {out}");
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains(says), "{opts}: {out}");
        assert_eq!(
            status_at(&m.mnt)["serving_since_ms"].as_u64(),
            since,
            "{opts}"
        );
    }
    assert_eq!(status_at(&m.mnt)["meta_ttl"].as_u64(), Some(86400));
}

/// Issue 22: the daemon killed with SIGKILL, twice (the successor too), while the four
/// clients of `mount_under_load` run: each time its watchdog starts a successor that
/// takes the live connection over (open files, node ids, the requests the dead daemon
/// held, which the kernel sends again). No client sees an error or a wrong byte, the
/// appended file has every line once, the mount never leaves mountinfo, and the status
/// counts the failovers. Then, with the binary removed, a third kill unmounts.
#[test]
fn sigkill_under_load_fails_over_and_no_client_sees_an_error() {
    if !common::can_mount("sigkill_under_load_fails_over_and_no_client_sees_an_error") {
        return;
    }
    let (mut m, load) = mount_under_load(&[], true);
    for i in 1..=2u64 {
        std::thread::sleep(Duration::from_millis(400));
        let dead = m.pid();
        if i == 1 {
            let st = m.signal_and_wait(libc::SIGKILL);
            assert_eq!(st.code(), None, "{}", describe_status(&st));
        } else {
            send_signal(dead, libc::SIGKILL);
        }
        let pid = m
            .wait_successor(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no successor after kill {i}:\n{}", m.log_contents()));
        assert_ne!(pid, dead);
        assert_eq!(mounts_at(&m.mnt).len(), 1, "kill {i}");
        let st = status_at(&m.mnt);
        assert_eq!(st["failovers"].as_u64(), Some(i), "{st}");
        assert!(
            m.log_contents()
                .contains(&format!("failover {i}: took over")),
            "{}",
            m.log_contents()
        );
    }
    std::thread::sleep(Duration::from_millis(400));
    load.finish(&m);
    // No binary to start: the watchdog unmounts, as without failover.
    fs::remove_file(&m.bin).unwrap();
    send_signal(m.pid(), libc::SIGKILL);
    assert!(
        wait_unmounted(&m.mnt, Duration::from_secs(2)),
        "still mounted 2 s after a kill with no binary:\n{}",
        m.log_contents()
    );
}

/// `cachefs unmount` returns once the daemon has let go of its cache directory, which it
/// holds while it saves its state after the unmount: mounting the same cache right
/// after it is not refused as "in use". (A metadata snapshot of 20,000 objects makes
/// that save long enough to meet.)
#[test]
fn unmount_returns_once_the_cache_can_be_mounted_again() {
    if !common::can_mount("unmount_returns_once_the_cache_can_be_mounted_again") {
        return;
    }
    let d = dirs();
    for i in 0..20_000 {
        fs::write(d.source.join(format!("e{i:05}.mkv")), b"").unwrap();
    }
    for round in 0..3 {
        let _daemon = Daemon::expect(&d.mnt);
        let (ok, out) = daemon_mount(&d, &["-o", "meta_ttl=1d"]);
        assert!(ok, "round {round}: the mount of the same cache: {out}");
        let mut listed = 0;
        for e in fs::read_dir(&d.mnt).unwrap() {
            e.unwrap().metadata().unwrap();
            listed += 1;
        }
        assert_eq!(listed, 20_001, "round {round}");
        let (ok, out) = run(Command::new(BIN).arg("unmount").arg(&d.mnt));
        assert!(ok, "round {round}: unmount: {out}");
    }
}
