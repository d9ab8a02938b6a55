//! The process's life around one mount: start (foreground, or a daemon behind a readiness
//! pipe), serve, and a clean stop however it ends.
//!
//! - [`daemonize`]: daemon mode; the fork before any thread, the readiness pipe, the
//!   parent's `mount_timeout`.
//! - [`watchdog`]: a forked process that unmounts a mount its daemon left stale (SIGKILL).
//! - [`signals`]: the stop signals, the thread that waits for them, the PID 1 reaper.
//! - [`session`]: mount(2) on /dev/fuse and the fuser session with its notifier.
//! - [`notify`]: a change through one kernel inode of a file told to its others.
//! - [`stale`]: a dead predecessor's mount at MOUNTPOINT removed, a live one refused.
//!
//! The order in [`run_foreground`] matters: signals are blocked and the watchdog forked
//! while the process still has one thread, before /dev/fuse or the cache lock is open.
//! What the stop path needs from any thread lives in [`PROCESS`], the one place for
//! process-wide state.

mod daemonize;
mod notify;
mod process;
mod restart;
mod session;
mod signals;
mod stale;
mod watchdog;

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once, OnceLock};

use parking_lot::Mutex;

use crate::config::Config;
use crate::overlay::Overlay;

pub use daemonize::{DaemonError, run_daemon};
pub use restart::{FORMAT as STATE_FORMAT, resuming};
pub use watchdog::taking_over;

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

/// The process-wide state, all of it: what a stop must reach from whichever thread ends
/// the process (the signal thread, the session's end, a daemon child's failure).
struct Process {
    /// The running overlay, for [`shutdown`].
    core: OnceLock<Arc<Overlay>>,
    /// The daemon's end of the watchdog, so a clean stop lets it go and reaps it.
    watchdog: Mutex<Option<watchdog::Watchdog>>,
    /// The pipe to a daemon-mode parent, while it waits for "the mount is live".
    ready: Mutex<Option<OwnedFd>>,
    /// [`shutdown`] runs once.
    shut: Once,
    /// A stop signal came: the session's end, however the kernel reports it, is the
    /// stop's doing (the signal thread exits 0).
    stopping: AtomicBool,
    /// This process's binary and arguments, for a live restart (`restart`).
    exe: OnceLock<std::path::PathBuf>,
    argv: OnceLock<Vec<std::ffi::OsString>>,
    /// Stops the running session's workers at a request boundary.
    pauser: Mutex<Option<fuser::Pauser>>,
    /// A live restart asked for: the binary to become, and its arguments.
    restart: Mutex<Option<std::path::PathBuf>>,
    restart_argv: Mutex<Vec<std::ffi::OsString>>,
    /// The session has returned paused (the workers need no more waking).
    paused: AtomicBool,
}

static PROCESS: Process = Process {
    core: OnceLock::new(),
    watchdog: Mutex::new(None),
    ready: Mutex::new(None),
    shut: Once::new(),
    stopping: AtomicBool::new(false),
    exe: OnceLock::new(),
    argv: OnceLock::new(),
    pauser: Mutex::new(None),
    restart: Mutex::new(None),
    restart_argv: Mutex::new(Vec::new()),
    paused: AtomicBool::new(false),
};

/// Mounts and serves until stopped. Returns once the filesystem is unmounted.
pub fn run_foreground(cfg: Config) -> Result<(), MountError> {
    // Before any thread exists, so every thread inherits the blocked mask and only the
    // signal thread receives the stop signals.
    signals::block()?;
    // Also before any thread, and before /dev/fuse and the cache lock are opened, so the
    // watchdog holds neither.
    watchdog::start(&cfg.mountpoint, &[])?;
    match process::raise_nofile_limit() {
        Ok(n) => tracing::debug!("open-file limit {n}"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    stale::prepare_mountpoint(&cfg.mountpoint, cfg.nonempty)?;

    let cfg = Arc::new(cfg);
    let core = Arc::new(
        Overlay::new(cfg.clone())
            .map_err(|e| err(format!("cannot open source {}: {e}", cfg.source.display())))?,
    );
    let session = session::mount(&cfg, core.clone())?;
    serve(&cfg, core, session)
}

/// Resumes the mount a predecessor handed over through execve(2) (`restart`): no mount,
/// no INIT, no new watchdog; the node table taken, then served as any mount.
pub fn resume(mut cfg: Config) -> Result<(), MountError> {
    signals::block()?;
    let handed = restart::take_handed().map_err(err)?;
    // The predecessor's resolved paths: the arguments may be relative to a directory
    // it has left, and the mountpoint cannot be looked at until this process serves it.
    cfg.source = handed.paths.0.clone();
    cfg.mountpoint = handed.paths.1.clone();
    cfg.cache = handed.paths.2.clone();
    let (wpid, wpipe) = handed.watchdog;
    watchdog::adopt(wpid, wpipe);
    if let Err(e) = process::raise_nofile_limit() {
        tracing::warn!("cannot raise the open-file limit: {e}");
    }
    let cfg = Arc::new(cfg);
    let core = Arc::new(
        Overlay::new(cfg.clone())
            .map_err(|e| err(format!("cannot open source {}: {e}", cfg.source.display())))?,
    );
    let nodes = core.import_nodes(&handed.state).map_err(err)?;
    let session = session::resume(&cfg, core.clone(), handed.dev, handed.negotiated);
    let wrap = |id: u32| {
        // SAFETY: the predecessor handed this registration over; only this process holds
        // its number now, and `import_handles` wraps each number once.
        crate::fuse::backing_token(unsafe { session.wrap_backing(id) })
    };
    let (files, dirs) = core.import_handles(&handed.handles, &wrap).map_err(err)?;
    tracing::info!(
        "restarted: serving {} again with {nodes} nodes the kernel holds, \
         {files} open files \
         and {dirs} open directories",
        cfg.mountpoint.display()
    );
    serve(&cfg, core, session)
}

/// Takes over the mount of a daemon that died, started by its watchdog (failover): the
/// live FUSE connection the watchdog held, the nodes and open handles the dead daemon
/// published (`crate::journal`), then the requests it had read and not answered, which
/// the kernel sends again. Says "ok" to the watchdog once it serves.
pub fn take_over(mut cfg: Config) -> Result<(), MountError> {
    use std::os::fd::AsRawFd;
    signals::block()?;
    let t = watchdog::take_over_env().map_err(err)?;
    let s = &t.successor;
    cfg.source = s.paths.0.clone();
    cfg.mountpoint = s.paths.1.clone();
    cfg.cache = s.paths.2.clone();
    *PROCESS.ready.lock() = Some(t.ready);
    // Before any thread; the new watchdog holds neither the connection nor the journal
    // until this process arms it.
    watchdog::start(&cfg.mountpoint, &[t.dev.as_raw_fd(), t.journal.as_raw_fd()])?;
    if let Err(e) = process::raise_nofile_limit() {
        tracing::warn!("cannot raise the open-file limit: {e}");
    }
    let failed = |e: String| {
        daemonize::notify_ready(Err(&e));
        err(e)
    };
    let replayed = crate::journal::read_all(std::os::fd::AsFd::as_fd(&t.journal))
        .map_err(|e| e.to_string())
        .and_then(|data| crate::journal::replay(&data))
        .map_err(failed)?;
    drop(t.journal);
    let cfg = Arc::new(cfg);
    let core = Arc::new(
        Overlay::new(cfg.clone())
            .map_err(|e| failed(format!("cannot open source {}: {e}", cfg.source.display())))?,
    );
    let nodes = core.import_failover_nodes(&replayed).map_err(failed)?;
    let negotiated = session::Negotiated {
        passthrough: s.passthrough,
        no_opendir: s.no_opendir,
        resend: true,
        posix_acl: s.posix_acl,
    };
    let session = session::resume(&cfg, core.clone(), t.dev, negotiated);
    let wrap = |id: u32| {
        // SAFETY: the dead daemon made this registration on this connection, and nothing
        // else in this process holds its number: `import_failover_handles` wraps each
        // number once.
        crate::fuse::backing_token(unsafe { session.wrap_backing(id) })
    };
    let (files, dirs) = match &replayed.handles {
        Some(h) => core.import_failover_handles(h, &wrap).map_err(failed)?,
        None => (0, 0),
    };
    core.counters
        .failovers
        .store(t.failovers, std::sync::atomic::Ordering::Relaxed);
    // The requests the dead daemon had read and not answered come again, marked.
    let resent = match session.notifier().resend() {
        Ok(()) => "requests it held are sent again".to_string(),
        Err(e) => format!("the kernel cannot send again the requests it held: {e}"),
    };
    tracing::warn!(
        "failover {}: took over {} from a daemon that died: {nodes} nodes the kernel holds, \
         {files} open files and {dirs} open directories; {resent}",
        t.failovers,
        cfg.mountpoint.display()
    );
    serve(&cfg, core, session)
}

/// Gives the watchdog what it needs to start a successor if this daemon dies, and
/// publishes the nodes and open handles to the journal it holds from now on. Only where
/// the kernel can send lost requests again.
fn arm_failover(
    cfg: &Config,
    core: &Arc<Overlay>,
    dev: std::os::fd::BorrowedFd<'_>,
    negotiated: session::Negotiated,
) {
    if !cfg.failover {
        watchdog::disarm();
        return;
    }
    if !negotiated.resend {
        watchdog::disarm();
        tracing::info!(
            "no crash failover: this kernel cannot send lost requests again (Linux 6.9+)"
        );
        return;
    }
    let successor = watchdog::Successor {
        exe: PROCESS.exe.get().cloned().unwrap_or_default(),
        argv: PROCESS.argv.get().cloned().unwrap_or_default(),
        paths: (
            cfg.source.clone(),
            cfg.mountpoint.clone(),
            cfg.cache.clone(),
        ),
        passthrough: negotiated.passthrough,
        no_opendir: negotiated.no_opendir,
        posix_acl: negotiated.posix_acl,
        failovers: core
            .counters
            .failovers
            .load(std::sync::atomic::Ordering::Relaxed),
    };
    let journal = match crate::journal::Journal::new(Box::new(watchdog::rotate_journal)) {
        Ok(j) => Arc::new(j),
        Err(e) => {
            tracing::warn!("no crash failover: cannot make its journal: {e}");
            return;
        }
    };
    if let Err(e) = watchdog::arm(dev, &successor) {
        tracing::warn!("no crash failover: cannot arm the watchdog: {e}");
        return;
    }
    core.set_journal(journal.clone(), crate::fuse::backing_number);
    // Node records are written in batches; this bounds how old the newest one can be.
    std::thread::Builder::new()
        .name("cachefs-journal".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(20));
                journal.flush();
            }
        })
        .ok();
}

/// Serves the mount until it ends; a live restart asked for meanwhile execs the new
/// binary from here, or, if it cannot, serves on with a new session.
fn serve(
    cfg: &Arc<Config>,
    core: Arc<Overlay>,
    mut session: fuser::Session<crate::fuse::CachefsFs>,
) -> Result<(), MountError> {
    use std::os::fd::AsFd;
    let _ = PROCESS.core.set(core.clone());
    let _ = PROCESS.argv.set(std::env::args_os().collect());
    if let Ok(exe) = std::env::current_exe() {
        let _ = PROCESS.exe.set(exe);
    }
    // The control socket; it goes (and its file with it) when the process exits.
    let _control = session::serve_control(cfg, core.clone());
    signals::start(&cfg.mountpoint)?;

    let negotiated = session::Negotiated {
        passthrough: core.passthrough_enabled(),
        no_opendir: session
            .filesystem()
            .is_some_and(crate::fuse::CachefsFs::no_opendir),
        resend: session
            .filesystem()
            .is_some_and(crate::fuse::CachefsFs::resend),
        posix_acl: core.posix_acl_enabled(),
    };
    arm_failover(cfg, &core, session.as_fd(), negotiated);
    daemonize::notify_ready(Ok(()));
    let r = loop {
        let dev = session
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| err(format!("cannot keep the FUSE descriptor: {e}")))?;
        *PROCESS.pauser.lock() = Some(session.pauser());
        let r = session.run();
        let due = PROCESS.restart.lock().clone();
        match (due, &r) {
            (Some(binary), Ok(())) if !PROCESS.stopping.load(Ordering::SeqCst) => {
                let why = restart::exec(&binary, &dev, negotiated);
                tracing::error!(
                    "restart into {} refused: {why}; serving on",
                    binary.display()
                );
                PROCESS.restart.lock().take();
                PROCESS.paused.store(false, Ordering::SeqCst);
                session = session::resume(cfg, core.clone(), dev, negotiated);
            }
            _ => break r,
        }
    };
    shutdown();
    watchdog::release();
    match r {
        // The lazy unmount of a stop can end the connection as aborted (ECONNABORTED)
        // rather than unmounted (ENODEV): the stop exits 0 all the same.
        Err(e) if PROCESS.stopping.load(Ordering::SeqCst) => {
            tracing::debug!("FUSE session ended during the stop: {e}");
        }
        r => r.map_err(|e| err(format!("FUSE session failed: {e}")))?,
    }
    tracing::info!("unmounted {}", cfg.mountpoint.display());
    Ok(())
}

/// Stops the promoter (temp files removed) and saves the cache index and the metadata
/// snapshot. Runs once.
fn shutdown() {
    PROCESS.shut.call_once(|| {
        let Some(core) = PROCESS.core.get() else {
            return;
        };
        if let Some(cache) = &core.cache {
            cache.shutdown();
        }
        core.save_meta();
    });
}
