//! The watchdog: a process forked while the daemon still has one thread, which outlives
//! the daemon. It waits on a socket to the daemon; when the daemon dies without saying
//! goodbye (SIGKILL, a crash, an abort), it either starts a successor that takes the
//! live FUSE connection over (failover), or lazily unmounts MOUNTPOINT if the daemon left
//! it stale.
//!
//! Failover. Once the session serves, the daemon arms its watchdog (`arm`): it sends a
//! duplicate of its /dev/fuse descriptor, the failover journal (`crate::journal`, the
//! nodes and open handles a successor needs) and how to start a successor (the binary,
//! its arguments, its resolved directories, what INIT negotiated). Holding the
//! descriptor keeps the connection alive when the daemon dies: the kernel ends a FUSE
//! connection only when its last descriptor closes, and until then callers' requests
//! wait in its queue, and the ones the dead daemon had read wait in its processing
//! list. The watchdog then forks and execs the binary with `CACHEFS_FAILOVER` naming
//! the descriptors; the successor replays the journal, serves, asks the kernel to send
//! the lost requests again (FUSE_NOTIFY_RESEND) and says "ok" on a readiness pipe. If no
//! successor says so within [`FAILOVER_WITHIN`] (the binary is gone, or it keeps dying),
//! the watchdog lets the connection go and unmounts, as without failover.
//!
//! Only armed where the kernel can resend (FUSE_HAS_RESEND, Linux 6.9+): elsewhere the
//! requests the dead daemon held would never be answered.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::process;
use super::{MountError, PROCESS, err};
use crate::exit;
use crate::sys;

/// How long the watchdog keeps trying to start a successor before it unmounts.
pub const FAILOVER_WITHIN: Duration = Duration::from_secs(5);
/// Successors tried, at most, in that time.
const ATTEMPTS: u32 = 3;

/// The environment variable that tells a successor it takes over a dead daemon's mount.
pub const FAILOVER_ENV: &str = "CACHEFS_FAILOVER";

/// The daemon's end of the watchdog: its pid and the socket whose closing wakes it.
pub(super) struct Watchdog {
    pid: u32,
    sock: Arc<Mutex<OwnedFd>>,
}

/// How a successor is started, sent when the daemon arms the watchdog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Successor {
    pub exe: PathBuf,
    pub argv: Vec<std::ffi::OsString>,
    /// SOURCE, MOUNTPOINT and CACHE as resolved at the start.
    pub paths: (PathBuf, PathBuf, PathBuf),
    pub passthrough: bool,
    pub no_opendir: bool,
    pub posix_acl: bool,
    /// Failovers since the mount was made, this daemon's own included.
    pub failovers: u64,
}

impl Successor {
    pub(super) fn encode(&self) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt;
        let mut w = crate::codec::Writer::new(b"S1");
        w.bytes(self.exe.as_os_str().as_bytes());
        w.u32(self.argv.len() as u32);
        for a in &self.argv {
            w.bytes(a.as_bytes());
        }
        for p in [&self.paths.0, &self.paths.1, &self.paths.2] {
            w.bytes(p.as_os_str().as_bytes());
        }
        w.u8(u8::from(self.passthrough));
        w.u8(u8::from(self.no_opendir));
        w.u8(u8::from(self.posix_acl));
        w.u64(self.failovers);
        w.finish()
    }

    pub(super) fn decode(b: &[u8]) -> Option<Successor> {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let mut r = crate::codec::Reader::open(b, b"S1")?;
        let path =
            |r: &mut crate::codec::Reader<'_>| Some(PathBuf::from(OsStr::from_bytes(r.bytes()?)));
        let exe = path(&mut r)?;
        let n = r.u32()?;
        let mut argv = Vec::new();
        for _ in 0..n {
            argv.push(OsStr::from_bytes(r.bytes()?).to_os_string());
        }
        let paths = (path(&mut r)?, path(&mut r)?, path(&mut r)?);
        Some(Successor {
            exe,
            argv,
            paths,
            passthrough: r.u8()? != 0,
            no_opendir: r.u8()? != 0,
            posix_acl: r.u8()? != 0,
            failovers: r.u64()?,
        })
    }
}

/// Forks the watchdog and keeps its end in [`PROCESS`]. Must be called while the process
/// has one thread, and before it opens /dev/fuse or the cache lock (the watchdog must
/// hold neither); `close` names descriptors the process already has that the watchdog
/// must not hold either (a successor's inherited ones).
pub(super) fn start(mountpoint: &Path, close: &[i32]) -> Result<(), MountError> {
    let w = spawn(mountpoint, close).map_err(|e| err(format!("cannot start the watchdog: {e}")))?;
    *PROCESS.watchdog.lock() = Some(w);
    Ok(())
}

/// Arms failover: the watchdog gets the connection and how to start a successor; the
/// journal follows (`rotate_journal`), and failover needs all three.
pub(super) fn arm(dev: BorrowedFd<'_>, successor: &Successor) -> io::Result<()> {
    let sock = socket()?;
    let s = sock.lock();
    send(s.as_fd(), b"F", Some(dev))?;
    let mut msg = b"X".to_vec();
    msg.extend_from_slice(&successor.encode());
    send(s.as_fd(), &msg, None)
}

/// Disarms failover: the watchdog lets go of what a predecessor gave it (a live restart
/// into a daemon with `failover=off`, or on a kernel that cannot resend).
pub(super) fn disarm() {
    if let Ok(sock) = socket() {
        let _ = send(sock.lock().as_fd(), b"D", None);
    }
}

/// Hands the watchdog a fresh journal in place of the one it holds, and waits until it
/// has it.
pub(super) fn rotate_journal(journal: BorrowedFd<'_>) -> io::Result<()> {
    give_journal(socket()?.lock().as_fd(), journal)
}

/// The daemon's end of the watchdog's socket.
fn socket() -> io::Result<Arc<Mutex<OwnedFd>>> {
    PROCESS
        .watchdog
        .lock()
        .as_ref()
        .map(|w| w.sock.clone())
        .ok_or_else(|| io::Error::other("no watchdog"))
}

fn give_journal(sock: BorrowedFd<'_>, journal: BorrowedFd<'_>) -> io::Result<()> {
    send(sock, b"J", Some(journal))?;
    let mut b = [0u8; 8];
    match recv(sock, &mut b)? {
        (1, None) if b[0] == b'A' => Ok(()),
        _ => Err(io::Error::other("the watchdog did not take the journal")),
    }
}

/// Tells the watchdog the daemon stops cleanly (after the unmount: it lets the
/// connection go and exits) and reaps it, so a clean stop leaves no zombie behind.
pub(super) fn release() {
    if let Some(w) = PROCESS.watchdog.lock().take() {
        let _ = send(w.sock.lock().as_fd(), b"B", None);
        if let Err(e) = process::waitpid(w.pid) {
            tracing::debug!("watchdog {}: {e}", w.pid);
        }
    }
}

/// The watchdog's pid and the raw descriptor of its socket, for a live restart: the
/// socket stays open across execve(2), so the watchdog goes on watching the same process.
pub(super) fn keep_across_exec() -> Option<(u32, i32)> {
    PROCESS
        .watchdog
        .lock()
        .as_ref()
        .map(|w| (w.pid, w.sock.lock().as_raw_fd()))
}

/// Takes over the watchdog a predecessor handed over through execve(2).
pub(super) fn adopt(pid: u32, sock: OwnedFd) {
    *PROCESS.watchdog.lock() = Some(Watchdog {
        pid,
        sock: Arc::new(Mutex::new(sock)),
    });
}

fn send(sock: BorrowedFd<'_>, msg: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        anc.push(SendAncillaryMessage::ScmRights(&fds));
    }
    rustix::io::retry_on_intr(|| {
        sendmsg(
            sock,
            &[io::IoSlice::new(msg)],
            &mut anc,
            SendFlags::NOSIGNAL,
        )
    })?;
    Ok(())
}

/// One message: its length (0 at the end) and the descriptor it carried.
fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let r = rustix::io::retry_on_intr(|| {
        recvmsg(
            sock,
            &mut [io::IoSliceMut::new(buf)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        )
    })?;
    let mut fd = None;
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for f in fds {
                fd.get_or_insert(f);
            }
        }
    }
    Ok((r.bytes, fd))
}

fn spawn(mountpoint: &Path, close: &[i32]) -> io::Result<Watchdog> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    match sys::fork()? {
        sys::Forked::Parent(pid) => {
            drop(theirs);
            tracing::debug!("watchdog pid {pid}");
            Ok(Watchdog {
                pid,
                sock: Arc::new(Mutex::new(ours)),
            })
        }
        sys::Forked::Child => {
            drop(ours);
            for &fd in close {
                // SAFETY: descriptors of this (forked) process that it must not hold; none
                // is used by anything in it.
                unsafe { libc::close(fd) };
            }
            // Not the watchdog's to hold: a daemon-mode parent waits for it to close.
            drop(PROCESS.ready.lock().take());
            process::set_thread_name(c"cachefs-watch");
            watch(mountpoint, theirs)
        }
    }
}

/// The watchdog's life: hold what the daemon sends until it says goodbye or dies.
fn watch(mountpoint: &Path, sock: OwnedFd) -> ! {
    let mut dev: Option<OwnedFd> = None;
    let mut journal: Option<OwnedFd> = None;
    let mut successor: Option<Successor> = None;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let (n, fd) = match recv(sock.as_fd(), &mut buf) {
            Ok(m) => m,
            Err(_) => break,
        };
        match (n, buf.first()) {
            (0, _) => break,
            (_, Some(b'F')) => dev = fd,
            (_, Some(b'J')) => {
                journal = fd;
                let _ = send(sock.as_fd(), b"A", None);
            }
            (_, Some(b'X')) => successor = Successor::decode(&buf[1..n]),
            (_, Some(b'D')) => (dev, journal, successor) = (None, None, None),
            // A clean stop: the daemon has unmounted.
            (_, Some(b'B')) => sys::exit_now(exit::SUCCESS.into()),
            _ => {}
        }
    }
    // The daemon is gone without a goodbye.
    if let (Some(dev), Some(journal), Some(s)) = (&dev, &journal, &successor)
        && fail_over(dev.as_fd(), journal.as_fd(), s)
    {
        sys::exit_now(exit::SUCCESS.into());
    }
    // Let the connection go: with its last descriptor closed the kernel ends it, and
    // the mount answers ENOTCONN.
    drop(dev);
    drop(journal);
    // A clean stop has unmounted already; a dead daemon left a mount whose statfs fails
    // with ENOTCONN (stat could still be answered from the kernel's attribute cache).
    // Anything else (a new live mount there, or a successor serving this one) is not
    // ours to touch, and the check and the unmount are of one mount (`detach_if_dead`).
    if let Ok(true) = crate::mountinfo::detach_if_dead(mountpoint) {
        eprintln!(
            "cachefs watchdog: the daemon died; unmounted {}",
            mountpoint.display()
        );
    }
    sys::exit_now(exit::SUCCESS.into())
}

/// Starts successors until one serves the connection, for at most [`FAILOVER_WITHIN`].
fn fail_over(dev: BorrowedFd<'_>, journal: BorrowedFd<'_>, s: &Successor) -> bool {
    let start = Instant::now();
    let n = s.failovers + 1;
    for attempt in 1..=ATTEMPTS {
        let left = FAILOVER_WITHIN.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        eprintln!(
            "cachefs watchdog: the daemon died; failover {n}: starting {} (attempt {attempt})",
            s.exe.display()
        );
        match start_successor(dev, journal, s, n, left) {
            Ok(()) => {
                eprintln!(
                    "cachefs watchdog: failover {n}: the successor serves {}",
                    s.paths.1.display()
                );
                return true;
            }
            Err(why) => eprintln!("cachefs watchdog: failover {n}: {why}"),
        }
    }
    eprintln!(
        "cachefs watchdog: no successor serves {} after {} ms; unmounting",
        s.paths.1.display(),
        start.elapsed().as_millis()
    );
    false
}

fn start_successor(
    dev: BorrowedFd<'_>,
    journal: BorrowedFd<'_>,
    s: &Successor,
    n: u64,
    within: Duration,
) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let (rx, tx) = process::pipe().map_err(|e| e.to_string())?;
    match sys::fork().map_err(|e| e.to_string())? {
        sys::Forked::Child => {
            drop(rx);
            for fd in [dev, journal, tx.as_fd()] {
                let _ = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty());
            }
            let mut hex = String::new();
            for b in s.encode() {
                hex.push_str(&format!("{b:02x}"));
            }
            let env = format!(
                "fuse={},journal={},ready={},failovers={n},successor={hex}",
                dev.as_raw_fd(),
                journal.as_raw_fd(),
                tx.as_raw_fd()
            );
            let mut cmd = std::process::Command::new(&s.exe);
            if let Some((arg0, rest)) = s.argv.split_first() {
                cmd.arg0(arg0).args(rest);
            }
            let e = cmd.env(FAILOVER_ENV, env).exec();
            eprintln!("cachefs watchdog: cannot execute {}: {e}", s.exe.display());
            sys::exit_now(127)
        }
        sys::Forked::Parent(pid) => {
            drop(tx);
            let line = super::daemonize::read_ready_line(rx, within);
            if line.as_deref() == Some("ok") {
                return Ok(());
            }
            let _ = process::kill(pid, libc::SIGKILL);
            let status = process::waitpid(pid).unwrap_or(0);
            Err(match line {
                None => format!("no answer within {} ms", within.as_millis()),
                Some(l) if l.is_empty() => format!("the successor exited (status {status:#x})"),
                Some(l) => l,
            })
        }
    }
}

/// What a watchdog handed its successor, from `CACHEFS_FAILOVER` (removed from the
/// environment, so that no child sees it).
pub(super) struct TakenOver {
    pub dev: OwnedFd,
    pub journal: OwnedFd,
    pub ready: OwnedFd,
    pub successor: Successor,
    pub failovers: u64,
}

/// Whether this process was started by a watchdog to take over a dead daemon's mount.
pub fn taking_over() -> bool {
    std::env::var_os(FAILOVER_ENV).is_some()
}

pub(super) fn take_over_env() -> Result<TakenOver, String> {
    let env = process::HandedEnv::take(FAILOVER_ENV)?;
    let hex: String = env.get("successor")?;
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    let successor = bytes
        .as_deref()
        .and_then(Successor::decode)
        .ok_or_else(|| format!("{FAILOVER_ENV} is malformed: its successor"))?;
    Ok(TakenOver {
        dev: env.fd("fuse")?,
        journal: env.fd("journal")?,
        ready: env.fd("ready")?,
        failovers: env.get("failovers")?,
        successor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_round_trips_and_a_cut_one_is_refused() {
        let s = Successor {
            exe: "/usr/local/bin/cachefs".into(),
            argv: vec!["cachefs".into(), "/srv".into(), "-o".into(), "a,b".into()],
            paths: ("/srv".into(), "/mnt/m".into(), "/var/cache/c".into()),
            passthrough: true,
            no_opendir: false,
            posix_acl: true,
            failovers: 2,
        };
        let b = s.encode();
        assert_eq!(Successor::decode(&b), Some(s));
        assert_eq!(Successor::decode(&b[..b.len() - 1]), None);
    }
}
