//! The watchdog: a process forked while the daemon still has one thread, which outlives
//! the daemon by a moment. It waits for a pipe to close (the daemon exits, however it
//! dies: SIGKILL, a crash, an abort) and then lazily unmounts MOUNTPOINT if the daemon
//! left it stale.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use super::process;
use super::{MountError, PROCESS, err};
use crate::exit;
use crate::sys;

/// The daemon's end of the watchdog: its pid and the pipe whose closing wakes it.
pub(super) struct Watchdog {
    pid: u32,
    pipe: OwnedFd,
}

/// Forks the watchdog and keeps its end in [`PROCESS`]. Must be called while the process
/// has one thread, and before it opens /dev/fuse or the cache lock (the watchdog must
/// hold neither).
pub(super) fn start(mountpoint: &Path) -> Result<(), MountError> {
    let w = spawn(mountpoint).map_err(|e| err(format!("cannot start the watchdog: {e}")))?;
    *PROCESS.watchdog.lock() = Some(w);
    Ok(())
}

/// Wakes the watchdog (after the unmount, so it finds nothing to do) and reaps it, so a
/// clean stop leaves no zombie behind.
pub(super) fn release() {
    if let Some(w) = PROCESS.watchdog.lock().take() {
        drop(w.pipe);
        if let Err(e) = process::waitpid(w.pid) {
            tracing::debug!("watchdog {}: {e}", w.pid);
        }
    }
}

/// The watchdog's pid and the raw descriptor of its pipe, for a live restart: the pipe
/// stays open across execve(2), so the watchdog goes on watching the same process.
pub(super) fn keep_across_exec() -> Option<(u32, i32)> {
    use std::os::fd::AsRawFd;
    PROCESS
        .watchdog
        .lock()
        .as_ref()
        .map(|w| (w.pid, w.pipe.as_raw_fd()))
}

/// Takes over the watchdog a predecessor handed over through execve(2).
pub(super) fn adopt(pid: u32, pipe: OwnedFd) {
    *PROCESS.watchdog.lock() = Some(Watchdog { pid, pipe });
}

fn spawn(mountpoint: &Path) -> io::Result<Watchdog> {
    let (rx, tx) = process::pipe()?;
    match sys::fork()? {
        sys::Forked::Parent(pid) => {
            drop(rx);
            tracing::debug!("watchdog pid {pid}");
            Ok(Watchdog { pid, pipe: tx })
        }
        sys::Forked::Child => {
            drop(tx);
            // Not the watchdog's to hold: a daemon-mode parent waits for it to close.
            drop(PROCESS.ready.lock().take());
            process::set_thread_name(c"cachefs-watch");
            process::wait_eof(rx.as_fd());
            // The daemon is gone. A clean stop has unmounted already; a dead daemon left
            // a mount whose statfs fails with ENOTCONN (stat could still be answered from
            // the kernel's attribute cache). Anything else (a new live mount there, or a
            // successor serving this one) is not ours to touch, and the check and the
            // unmount are of one mount (`detach_if_dead`).
            if let Ok(true) = crate::mountinfo::detach_if_dead(mountpoint) {
                eprintln!(
                    "cachefs watchdog: the daemon died; unmounted {}",
                    mountpoint.display()
                );
            }
            sys::exit_now(exit::SUCCESS.into())
        }
    }
}
