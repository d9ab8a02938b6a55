//! Process-level calls of the lifecycle over rustix, safe and short: paths as C strings,
//! mount(2) and umount2(2), statfs, pipes, children (wait, reap, kill), a signal to self,
//! detaching a daemon from its terminal, thread names, and waiting on a pipe.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::retry_on_intr;
use rustix::process::{Pid, Signal, WaitOptions};

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

pub(super) fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| errno(libc::EINVAL))
}

/// statfs(2) of a path. Unlike stat, FUSE never answers it from the kernel's attribute
/// cache, so on a mount whose daemon is gone it fails with ENOTCONN at once.
pub(super) fn statfs_path(path: &Path) -> io::Result<rustix::fs::StatFs> {
    Ok(rustix::fs::statfs(path)?)
}

pub(super) fn mount(
    src: &CStr,
    target: &CStr,
    fstype: &CStr,
    flags: u64,
    data: &CStr,
) -> io::Result<()> {
    let flags = rustix::mount::MountFlags::from_bits_retain(flags as _);
    Ok(rustix::mount::mount(src, target, fstype, flags, data)?)
}

pub(super) fn umount2(target: &CStr, flags: i32) -> io::Result<()> {
    let flags = rustix::mount::UnmountFlags::from_bits_retain(flags as _);
    Ok(rustix::mount::unmount(target, flags)?)
}

pub(super) fn getegid() -> u32 {
    rustix::process::getegid().as_raw()
}

pub(super) fn getpid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// Raises the soft RLIMIT_NOFILE to the hard one and returns it. The hard limit is the
/// administrator's (systemd's `LimitNOFILE=`, `prlimit`) and is never raised: the daemon
/// sizes its descriptor cache from whatever it gets (see `source.rs`).
pub(super) fn raise_nofile_limit() -> io::Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    setrlimit(Resource::Nofile, lim)?;
    Ok(lim.maximum.unwrap_or(u64::MAX))
}

/// A pipe: (read end, write end), both close-on-exec.
pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

fn pid(pid: u32) -> io::Result<Pid> {
    Pid::from_raw(pid as i32).ok_or_else(|| errno(libc::EINVAL))
}

/// Waits for a child process to exit; returns its raw wait status.
pub(super) fn waitpid(child: u32) -> io::Result<i32> {
    let child = pid(child)?;
    let r = retry_on_intr(|| rustix::process::waitpid(Some(child), WaitOptions::empty()))?;
    Ok(r.map_or(0, |(_, status)| status.as_raw()))
}

/// Reaps any exited child, waiting if there is none yet; `None` when there are no
/// children at all (or the wait was interrupted).
pub(super) fn reap_any() -> Option<u32> {
    let (child, _) = rustix::process::wait(WaitOptions::empty()).ok()??;
    Some(child.as_raw_nonzero().get() as u32)
}

/// Sends `sig` to a process this one started.
pub(super) fn kill(child: u32, sig: i32) -> io::Result<()> {
    let sig = Signal::from_named_raw(sig).ok_or_else(|| errno(libc::EINVAL))?;
    Ok(rustix::process::kill_process(pid(child)?, sig)?)
}

/// Sends `sig` to this process (a stop request reaches the signal thread this way).
pub(super) fn signal_self(sig: i32) -> io::Result<()> {
    kill(getpid(), sig)
}

/// Detaches from the controlling terminal and the caller's session, works from `/`, and
/// points stdin, stdout and stderr at /dev/null (a daemon's logs go elsewhere).
pub(super) fn daemonize_io() -> io::Result<()> {
    rustix::process::setsid()?;
    rustix::process::chdir("/")?;
    let null = rustix::fs::open("/dev/null", OFlags::RDWR, Mode::empty())?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(&null)?;
    rustix::stdio::dup2_stderr(&null)?;
    if null.as_raw_fd() <= 2 {
        // It is one of the three now: closing it would undo its dup2.
        let _ = null.into_raw_fd();
    }
    Ok(())
}

/// Names the calling thread (what `ps -L` and `top` show).
pub(super) fn set_thread_name(name: &CStr) {
    let _ = rustix::thread::set_name(name);
}

/// Waits up to `timeout_ms` (negative: forever) for `fd` to be readable or closed.
pub(super) fn wait_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let timeout = (timeout_ms >= 0).then(|| Timespec {
        tv_sec: (timeout_ms / 1000).into(),
        tv_nsec: (timeout_ms % 1000 * 1_000_000).into(),
    });
    let mut p = [PollFd::new(&fd, PollFlags::IN)];
    Ok(retry_on_intr(|| poll(&mut p, timeout.as_ref()))? > 0)
}

/// What a predecessor handed this process in the environment variable `var` (removed, so
/// that no child sees it): `key=value` fields, and the descriptors some of them name.
pub(super) struct HandedEnv {
    var: &'static str,
    fields: std::collections::HashMap<String, String>,
}

impl HandedEnv {
    /// Must run before any thread starts (it changes the environment).
    pub(super) fn take(var: &'static str) -> Result<HandedEnv, String> {
        let text = std::env::var(var).map_err(|_| format!("{var} is not set"))?;
        // SAFETY: single-threaded here (before any thread starts), as remove_var requires.
        unsafe { std::env::remove_var(var) };
        let mut fields = std::collections::HashMap::new();
        for kv in text.split(',') {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("{var} is malformed: {text}"))?;
            fields.insert(k.to_string(), v.to_string());
        }
        Ok(HandedEnv { var, fields })
    }

    pub(super) fn get<T: std::str::FromStr>(&self, k: &str) -> Result<T, String> {
        self.fields
            .get(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{} is malformed: no {k}", self.var))
    }

    pub(super) fn flag(&self, k: &str) -> bool {
        self.fields.get(k).is_some_and(|v| v == "1")
    }

    /// The descriptor field `k` names, owned by this process from now on (close-on-exec).
    pub(super) fn fd(&self, k: &str) -> Result<OwnedFd, String> {
        use std::os::fd::FromRawFd;
        let n: i32 = self.get(k)?;
        // SAFETY: only looks whether `n` is open.
        let open = rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(n) }).is_ok();
        if !open {
            return Err(format!("descriptor {n} ({k}) was not handed over"));
        }
        // SAFETY: the predecessor left this descriptor open for this process to own, and
        // each field is taken once.
        let owned = unsafe { OwnedFd::from_raw_fd(n) };
        rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)
            .map_err(|e| format!("descriptor {n}: {e}"))?;
        Ok(owned)
    }
}
