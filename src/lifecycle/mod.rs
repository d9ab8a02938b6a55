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
}

static PROCESS: Process = Process {
    core: OnceLock::new(),
    watchdog: Mutex::new(None),
    ready: Mutex::new(None),
    shut: Once::new(),
    stopping: AtomicBool::new(false),
};

/// Mounts and serves until stopped. Returns once the filesystem is unmounted.
pub fn run_foreground(cfg: Config) -> Result<(), MountError> {
    // Before any thread exists, so every thread inherits the blocked mask and only the
    // signal thread receives the stop signals.
    signals::block()?;
    // Also before any thread, and before /dev/fuse and the cache lock are opened, so the
    // watchdog holds neither.
    watchdog::start(&cfg.mountpoint)?;
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
    let _ = PROCESS.core.set(core.clone());
    // The control socket; it goes (and its file with it) when the process exits.
    let _control = session::serve_control(&cfg, core);
    signals::start(&cfg.mountpoint)?;

    daemonize::notify_ready(Ok(()));
    let r = experiment_swap(session, &cfg);
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

/// EXPERIMENT (issue 22, branch only): with CACHEFS_EXPERIMENT_SWAP_EVERY=SECS, every
/// SECS the session pauses at a request boundary and a new session resumes the same
/// connection in this process, over a duplicate of its descriptor. It checks the kernel
/// mechanics a live restart relies on, under load, before state crosses processes.
fn experiment_swap(
    mut session: fuser::Session<crate::fuse::CachefsFs>,
    cfg: &Arc<Config>,
) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let Some(every) = std::env::var("CACHEFS_EXPERIMENT_SWAP_EVERY")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    else {
        return session.run();
    };
    let mut swaps = 0u64;
    loop {
        let dev = session.as_fd().try_clone_to_owned()?;
        let pauser = session.pauser();
        let no_opendir = true;
        let mnt = cfg.mountpoint.clone();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waker = {
            let done = done.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs_f64(every));
                let t0 = std::time::Instant::now();
                pauser.pause();
                // Wake every worker blocked in read(2): each statfs is one request.
                let mut wakes = 0;
                while !done.load(Ordering::SeqCst) {
                    let mnt = mnt.clone();
                    std::thread::spawn(move || {
                        let _ = rustix::fs::statfs(&mnt);
                    });
                    wakes += 1;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                tracing::info!(
                    "experiment: paused in {:?} after {wakes} wake-ups",
                    t0.elapsed()
                );
            })
        };
        let r = session.run();
        done.store(true, Ordering::SeqCst);
        let _ = waker.join();
        r?;
        if PROCESS.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let core = PROCESS.core.get().expect("core").clone();
        // Requests a worker handed to the SOURCE lane are still being answered: a
        // successor process would wait for them here.
        let mut fcfg = fuser::Config::default();
        fcfg.n_threads = Some(8);
        fcfg.clone_fd = true;
        let acl = if cfg.allow_other {
            fuser::SessionACL::All
        } else {
            fuser::SessionACL::Owner
        };
        session = fuser::Session::resume_from_fd(
            crate::fuse::CachefsFs::resumed(core.clone(), no_opendir),
            dev,
            acl,
            fcfg,
        );
        core.set_invalidator(notify::invalidator(session.notifier()));
        swaps += 1;
        tracing::info!("experiment: session swap {swaps}");
    }
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
