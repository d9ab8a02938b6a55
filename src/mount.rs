//! Mount lifecycle: the mountpoint check (stale predecessor or live mount), mount(2) on
//! /dev/fuse, the session's worker threads, and a clean stop on SIGTERM, SIGINT or SIGHUP
//! (lazy unmount, then exit 0).

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::control;
use crate::daemon::Daemon;
use crate::exit;
use crate::fuse::CachefsFs;
use crate::logging;
use crate::mountinfo::mounts;
use crate::overlay::Overlay;
use crate::sys;

/// The signals that stop the daemon cleanly.
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// FUSE request worker threads. Most of them sleep in a slow source call at any time,
/// so there are more than cores: one slow read must not stall a directory listing.
const FUSE_THREADS: usize = 8;

/// A failure to mount or run, with a message for the user.
#[derive(Debug)]
pub struct MountError(pub String);

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(msg: impl Into<String>) -> MountError {
    MountError(msg.into())
}

/// Makes MOUNTPOINT ready: a stale mount left by a dead daemon (ENOTCONN) is lazily
/// unmounted, with a line saying so; a live mount there is an error naming it.
fn prepare_mountpoint(mountpoint: &Path) -> Result<(), MountError> {
    let all = mounts().map_err(|e| err(format!("cannot read /proc/self/mountinfo: {e}")))?;
    // The last entry at a target is the one on top.
    let Some(top) = all.iter().rev().find(|m| m.target == mountpoint) else {
        return Ok(());
    };
    match sys::statfs_path(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(
                "removing a stale {} mount at {} (its daemon is gone)",
                top.fstype,
                mountpoint.display()
            );
            let target = sys::cpath(mountpoint).map_err(|e| err(e.to_string()))?;
            sys::umount2(&target, libc::MNT_DETACH).map_err(|e| {
                err(format!(
                    "cannot remove the stale mount at {}: {e}",
                    mountpoint.display()
                ))
            })
        }
        _ if top.fstype == "fuse.cachefs" => {
            let pid = control::status(mountpoint)
                .map_or_else(|_| "pid unknown".to_string(), |s| format!("pid {}", s.pid));
            Err(err(format!(
                "{} is already mounted by a running cachefs ({pid}, source {}): `cachefs unmount {}` first, or pick another mountpoint",
                mountpoint.display(),
                top.source,
                mountpoint.display()
            )))
        }
        _ => Err(err(format!(
            "{} is already mounted ({} from {}): unmount it first, or pick another mountpoint",
            mountpoint.display(),
            top.fstype,
            top.source
        ))),
    }
}

/// mount(2) of a FUSE filesystem on an open /dev/fuse.
fn fuse_mount(cfg: &Config, dev: &OwnedFd) -> io::Result<()> {
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={}",
        dev.as_raw_fd(),
        sys::geteuid(),
        sys::getegid()
    );
    if cfg.allow_other {
        data.push_str(",allow_other,default_permissions");
    }
    let mut flags = 0u64;
    let k = cfg.kernel_flags;
    if cfg.read_only {
        flags |= libc::MS_RDONLY;
    }
    if k.nodev {
        flags |= libc::MS_NODEV;
    }
    if k.nosuid {
        flags |= libc::MS_NOSUID;
    }
    if k.noexec {
        flags |= libc::MS_NOEXEC;
    }
    if k.noatime {
        flags |= libc::MS_NOATIME;
    }
    // fsname: SOURCE, so `findmnt` and `df` say what is mounted. Commas would split the
    // options, so they are not allowed there; the source path goes in mount's own field.
    let source = CString::new(cfg.source.as_os_str().as_bytes())?;
    let target = sys::cpath(&cfg.mountpoint)?;
    let data = CString::new(data)?;
    sys::mount(&source, &target, c"fuse.cachefs", flags, &data)
}

/// The core's way to tell the kernel that another inode of an object changed. The
/// attributes go at once (no inode lock is taken for them); the pages are dropped by a
/// thread of their own, because dropping them waits for page locks that a read in flight
/// on that inode holds until the daemon answers it.
fn invalidator(notifier: fuser::Notifier) -> Result<crate::overlay::Invalidator, MountError> {
    let (tx, rx) = crossbeam_channel::unbounded::<u64>();
    let pages = notifier.clone();
    std::thread::Builder::new()
        .name("invalidate".into())
        .spawn(move || {
            for nodeid in rx {
                let _ = pages.inval_inode(fuser::INodeNo(nodeid), 0, 0);
            }
        })
        .map_err(|e| err(format!("cannot start the invalidation thread: {e}")))?;
    Ok(Box::new(move |nodeid, data, size| {
        let _ = notifier.inval_inode(fuser::INodeNo(nodeid), -1, 0);
        if let Some(size) = size {
            // Storing nothing at `size` grows the kernel's size to it, if smaller.
            let _ = notifier.store(fuser::INodeNo(nodeid), size, &[]);
        }
        if data {
            let _ = tx.send(nodeid);
        }
    }))
}

/// Mounts and serves until stopped. Returns once the filesystem is unmounted.
pub fn run_foreground(cfg: Config) -> Result<(), MountError> {
    // Before any thread exists, so every thread inherits the blocked mask and only the
    // signal thread below receives the stop signals.
    sys::block_signals(&STOP_SIGNALS).map_err(|e| err(format!("cannot block signals: {e}")))?;
    // Also before any thread, and before /dev/fuse and the cache lock are opened, so the
    // watchdog holds neither.
    let watchdog = spawn_watchdog(&cfg.mountpoint)
        .map_err(|e| err(format!("cannot start the watchdog: {e}")))?;
    *WATCHDOG.lock() = Some(watchdog);
    match sys::raise_nofile_limit() {
        Ok(n) => tracing::debug!("open-file limit {n}"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    prepare_mountpoint(&cfg.mountpoint)?;

    let cfg = Arc::new(cfg);
    let core = Arc::new(
        Overlay::new(cfg.clone())
            .map_err(|e| err(format!("cannot open source {}: {e}", cfg.source.display())))?,
    );
    let dev: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| {
            err(format!(
                "cannot open /dev/fuse: {e} (is the fuse module loaded?)"
            ))
        })?
        .into();
    fuse_mount(&cfg, &dev)
        .map_err(|e| err(format!("cannot mount on {}: {e}", cfg.mountpoint.display())))?;

    let mut fcfg = fuser::Config::default();
    fcfg.n_threads = Some(FUSE_THREADS);
    fcfg.clone_fd = true;
    let acl = if cfg.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    let session = match fuser::Session::from_fd(CachefsFs::new(core.clone()), dev, acl, fcfg) {
        Ok(s) => s,
        Err(e) => {
            lazy_unmount(&cfg.mountpoint);
            return Err(err(format!("FUSE handshake failed: {e}")));
        }
    };
    tracing::info!(
        "mounted {} at {} (cache {})",
        cfg.source.display(),
        cfg.mountpoint.display(),
        cfg.cache.display()
    );

    core.set_invalidator(invalidator(session.notifier())?);
    let _ = CORE.set(core.clone());
    // The control socket; it goes (and its file with it) when the process exits.
    let _control = match control::serve(
        &cfg.mountpoint,
        Arc::new(Daemon {
            core,
            stop: request_stop,
        }),
    ) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("no control socket, `cachefs status` will not answer: {e}");
            None
        }
    };

    if sys::getpid() == 1 {
        // A container's entrypoint: orphans are ours to reap.
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(|| {
                loop {
                    if sys::reap_any().is_none() {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            })
            .map_err(|e| err(format!("cannot start the reaper thread: {e}")))?;
    }

    let mountpoint = cfg.mountpoint.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || stop_on_signal(&mountpoint))
        .map_err(|e| err(format!("cannot start the signal thread: {e}")))?;

    notify_ready(Ok(()));
    let r = session.run();
    shutdown();
    release_watchdog();
    r.map_err(|e| err(format!("FUSE session failed: {e}")))?;
    tracing::info!("unmounted {}", cfg.mountpoint.display());
    Ok(())
}

/// The running overlay, for the stop path (which runs on the signal thread).
static CORE: std::sync::OnceLock<Arc<Overlay>> = std::sync::OnceLock::new();

/// Stops the promoter (temp files removed) and saves the cache index. Runs once.
fn shutdown() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        if let Some(cache) = CORE.get().and_then(|c| c.cache.as_ref()) {
            cache.shutdown();
        }
    });
}

/// The daemon's end of the watchdog: its pid and the pipe whose closing wakes it.
struct Watchdog {
    pid: u32,
    pipe: OwnedFd,
}

/// Held here so that whichever thread ends the process can let the watchdog go and reap
/// it (a clean stop leaves no zombie behind).
static WATCHDOG: parking_lot::Mutex<Option<Watchdog>> = parking_lot::Mutex::new(None);

/// Wakes the watchdog (after the unmount, so it finds nothing to do) and reaps it.
fn release_watchdog() {
    if let Some(w) = WATCHDOG.lock().take() {
        drop(w.pipe);
        if let Err(e) = sys::waitpid(w.pid) {
            tracing::debug!("watchdog {}: {e}", w.pid);
        }
    }
}

/// Forks a watchdog that outlives the daemon by a moment: it waits for the returned pipe
/// end to close (the daemon exits, however it dies: SIGKILL, a crash, an abort) and then
/// lazily unmounts MOUNTPOINT if it was left stale. Must be called while the process has
/// one thread.
fn spawn_watchdog(mountpoint: &Path) -> io::Result<Watchdog> {
    let (rx, tx) = sys::pipe()?;
    match sys::fork()? {
        sys::Forked::Parent(pid) => {
            drop(rx);
            tracing::debug!("watchdog pid {pid}");
            Ok(Watchdog { pid, pipe: tx })
        }
        sys::Forked::Child => {
            drop(tx);
            // Not the watchdog's to hold: a daemon-mode parent waits for it to close.
            drop(READY.lock().take());
            sys::set_thread_name(c"cachefs-watch");
            sys::wait_eof(std::os::fd::AsFd::as_fd(&rx));
            // The daemon is gone. A clean stop has unmounted already; a dead daemon left
            // a mount whose statfs fails with ENOTCONN (stat could still be answered from
            // the kernel's attribute cache). Anything else (a new live mount there) is not
            // ours to touch.
            if let Err(e) = sys::statfs_path(mountpoint)
                && e.raw_os_error() == Some(libc::ENOTCONN)
            {
                lazy_unmount(mountpoint);
                eprintln!(
                    "cachefs watchdog: the daemon died; unmounted {}",
                    mountpoint.display()
                );
            }
            sys::exit_now(exit::SUCCESS.into())
        }
    }
}

/// The pipe to a daemon's waiting parent, while it waits.
static READY: parking_lot::Mutex<Option<OwnedFd>> = parking_lot::Mutex::new(None);

/// Tells the waiting parent (daemon mode) that the mount is live, or why it failed.
fn notify_ready(r: Result<(), &str>) {
    if let Some(fd) = READY.lock().take() {
        let msg = match r {
            Ok(()) => "ok\n".to_string(),
            Err(e) => format!("error {}\n", e.replace('\n', " ")),
        };
        let _ = std::fs::File::from(fd).write_all(msg.as_bytes());
    }
}

/// How a daemon-mode mount failed.
pub enum DaemonError {
    /// Bad usage found once SOURCE could be looked at (exit 2).
    Usage(String),
    Failed(MountError),
}

/// Reads the child's one line from the readiness pipe, giving up after `timeout` (zero:
/// never). `None` on timeout.
fn read_ready_line(rx: OwnedFd, timeout: Duration) -> Option<String> {
    let deadline = (!timeout.is_zero()).then(|| std::time::Instant::now() + timeout);
    let mut f = std::fs::File::from(rx);
    let mut line = Vec::new();
    loop {
        let wait_ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return None;
                }
                left.as_millis().clamp(1, i32::MAX as u128) as i32
            }
        };
        match sys::wait_readable(std::os::fd::AsFd::as_fd(&f), wait_ms) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => break,
        }
        let mut b = [0u8; 256];
        match io::Read::read(&mut f, &mut b) {
            Ok(0) => break,
            Ok(n) => {
                line.extend_from_slice(&b[..n]);
                // One line; the pipe may stay open in the daemon after it.
                if line.contains(&b'\n') {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let s = String::from_utf8_lossy(&line).into_owned();
    Some(s.lines().next().unwrap_or("").to_string())
}

/// Daemon mode: forks before any thread exists and before SOURCE is looked at (a SOURCE
/// that hangs must not hang the caller); the child checks the paths with `check`, mounts
/// and serves, the parent returns once the child says the mount is live, with the
/// child's error, or after `mount_timeout`, having stopped the child.
pub fn run_daemon(
    mut cfg: Config,
    check: fn(&mut Config) -> Result<(), String>,
) -> Result<(), DaemonError> {
    let failed = |m: String| DaemonError::Failed(err(m));
    let (rx, tx) = sys::pipe().map_err(|e| failed(format!("cannot make a pipe: {e}")))?;
    match sys::fork().map_err(|e| failed(format!("cannot fork the daemon: {e}")))? {
        sys::Forked::Parent(pid) => {
            drop(tx);
            let Some(answer) = read_ready_line(rx, cfg.mount_timeout) else {
                // The child is stuck (on SOURCE, most likely): stop it, so that a mount
                // reported as failed never appears later.
                let _ = sys::kill(pid, libc::SIGKILL);
                return Err(failed(format!(
                    "the mount was not live after {} s (is SOURCE {} responding?); the daemon \
                     (pid {pid}) was stopped. mount_timeout=SECS sets how long to wait",
                    cfg.mount_timeout.as_secs(),
                    cfg.source.display()
                )));
            };
            match answer.as_str() {
                "ok" => Ok(()),
                a if a.starts_with("usage ") => Err(DaemonError::Usage(a["usage ".len()..].into())),
                a if a.starts_with("error ") => Err(failed(a["error ".len()..].into())),
                _ => Err(failed(format!(
                    "the daemon (pid {pid}) exited before the mount was live: see its log"
                ))),
            }
        }
        sys::Forked::Child => {
            drop(rx);
            if let Err(msg) = check(&mut cfg) {
                let mut f = std::fs::File::from(tx);
                let _ = f.write_all(format!("usage {}\n", msg.replace('\n', " ")).as_bytes());
                sys::exit_now(exit::USAGE.into())
            }
            *READY.lock() = Some(tx);
            let target = match &cfg.log {
                Some(p) => logging::Target::File(p),
                None => logging::Target::Syslog,
            };
            let r = sys::daemonize_io()
                .map_err(|e| err(format!("cannot detach: {e}")))
                .and_then(|()| {
                    logging::init(cfg.debug, target)
                        .map_err(|e| err(format!("cannot open the log file: {e}")))
                })
                .and_then(|()| run_foreground(cfg));
            let code = match r {
                Ok(()) => exit::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    notify_ready(Err(&e.0));
                    exit::FAILURE
                }
            };
            // No destructors: the parent's copies of everything are its own.
            sys::exit_now(code.into())
        }
    }
}

/// Asks the daemon to stop as if it got SIGTERM (`cachefs unmount`).
fn request_stop() {
    if let Err(e) = sys::signal_self(libc::SIGTERM) {
        tracing::error!("cannot signal the stop: {e}");
    }
}

fn lazy_unmount(mountpoint: &Path) {
    if let Ok(target) = sys::cpath(mountpoint)
        && let Err(e) = sys::umount2(&target, libc::MNT_DETACH)
        && e.raw_os_error() != Some(libc::EINVAL)
    {
        tracing::warn!("cannot unmount {}: {e}", mountpoint.display());
    }
}

/// Waits for a stop signal, unmounts lazily (a busy mount goes as soon as its last user
/// lets go, and new users no longer see it), then gives in-flight requests a moment and
/// exits 0. The session would end by itself once the kernel drops the connection, but a
/// reader holding a file open keeps it alive, and a stop must not wait for a reader.
fn stop_on_signal(mountpoint: &Path) {
    let sig = match sys::wait_signal(&STOP_SIGNALS) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("waiting for signals failed: {e}");
            return;
        }
    };
    tracing::info!("signal {sig}: unmounting {}", mountpoint.display());
    lazy_unmount(mountpoint);
    let _ = std::fs::remove_file(control::socket_path(mountpoint));
    shutdown();
    release_watchdog();
    std::thread::sleep(Duration::from_millis(200));
    std::process::exit(exit::SUCCESS.into());
}
