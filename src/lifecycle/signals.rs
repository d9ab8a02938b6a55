//! Signals: SIGTERM, SIGINT and SIGHUP stop the daemon cleanly. They are blocked in every
//! thread and taken by one thread that waits for them (sigwait), so a stop runs as plain
//! code, not in a handler. Also the PID 1 reaper of a container's entrypoint.

use std::path::Path;
use std::time::Duration;

use super::process;
use super::{MountError, err, shutdown, stale, watchdog};
use crate::control;
use crate::exit;
use crate::sys;

/// The signals that stop the daemon cleanly.
const STOP_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Blocks the stop signals. Before any thread exists, so every thread inherits the mask.
pub(super) fn block() -> Result<(), MountError> {
    sys::block_signals(&STOP_SIGNALS).map_err(|e| err(format!("cannot block signals: {e}")))
}

/// Starts the thread that waits for a stop signal and, when the process is PID 1 (a
/// container's entrypoint), the thread that reaps the orphans it inherits.
pub(super) fn start(mountpoint: &Path) -> Result<(), MountError> {
    if process::getpid() == 1 {
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(|| {
                loop {
                    if process::reap_any().is_none() {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            })
            .map_err(|e| err(format!("cannot start the reaper thread: {e}")))?;
    }
    let mountpoint = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || stop_on_signal(&mountpoint))
        .map_err(|e| err(format!("cannot start the signal thread: {e}")))?;
    Ok(())
}

/// Asks the daemon to stop as if it got SIGTERM (`cachefs unmount`).
pub(super) fn request_stop() {
    if let Err(e) = process::signal_self(libc::SIGTERM) {
        tracing::error!("cannot signal the stop: {e}");
    }
}

/// Waits for a stop signal, unmounts lazily, then gives in-flight requests a moment and
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
    super::PROCESS
        .stopping
        .store(true, std::sync::atomic::Ordering::SeqCst);
    stale::lazy_unmount(mountpoint);
    let _ = std::fs::remove_file(control::socket_path(mountpoint));
    shutdown();
    watchdog::release();
    std::thread::sleep(Duration::from_millis(200));
    std::process::exit(exit::SUCCESS.into());
}
