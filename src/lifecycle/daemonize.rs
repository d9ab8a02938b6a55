//! Daemon mode. The process forks before any thread exists and before SOURCE is looked
//! at (a SOURCE that hangs must not hang the caller: mount(8) waits for us). The child
//! checks the paths, detaches, mounts and serves; the parent waits on a readiness pipe
//! for one line ("ok", "usage MSG" or "error MSG") and returns with it, or gives up after
//! `mount_timeout`, having stopped the child.

use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use super::process;
use super::{MountError, PROCESS, err, run_foreground};
use crate::config::Config;
use crate::exit;
use crate::logging;
use crate::sys;

/// How a daemon-mode mount failed.
pub enum DaemonError {
    /// Bad usage found once SOURCE could be looked at (exit 2).
    Usage(String),
    Failed(MountError),
}

/// Daemon mode: see the module doc. `check` validates the paths in the child.
pub fn run_daemon(
    mut cfg: Config,
    check: fn(&mut Config) -> Result<(), String>,
) -> Result<(), DaemonError> {
    let failed = |m: String| DaemonError::Failed(err(m));
    let (rx, tx) = process::pipe().map_err(|e| failed(format!("cannot make a pipe: {e}")))?;
    match sys::fork().map_err(|e| failed(format!("cannot fork the daemon: {e}")))? {
        sys::Forked::Parent(pid) => {
            drop(tx);
            let Some(answer) = read_ready_line(rx, cfg.mount_timeout) else {
                // The child is stuck (on SOURCE, most likely): stop it, so that a mount
                // reported as failed never appears later.
                let _ = process::kill(pid, libc::SIGKILL);
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
            *PROCESS.ready.lock() = Some(tx);
            let target = match &cfg.log {
                Some(p) => logging::Target::File(p),
                None => logging::Target::Syslog,
            };
            let r = process::daemonize_io()
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

/// Tells the waiting parent (daemon mode) that the mount is live, or why it failed. A
/// foreground mount has no parent waiting, and this does nothing.
pub(super) fn notify_ready(r: Result<(), &str>) {
    if let Some(fd) = PROCESS.ready.lock().take() {
        let msg = match r {
            Ok(()) => "ok\n".to_string(),
            Err(e) => format!("error {}\n", e.replace('\n', " ")),
        };
        let _ = std::fs::File::from(fd).write_all(msg.as_bytes());
    }
}

/// Reads the child's one line from the readiness pipe, giving up after `timeout` (zero:
/// never). `None` on timeout.
pub(super) fn read_ready_line(rx: OwnedFd, timeout: Duration) -> Option<String> {
    let deadline = (!timeout.is_zero()).then(|| Instant::now() + timeout);
    let mut f = std::fs::File::from(rx);
    let mut line = Vec::new();
    loop {
        let wait_ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                left.as_millis().clamp(1, i32::MAX as u128) as i32
            }
        };
        match process::wait_readable(f.as_fd(), wait_ms) {
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
