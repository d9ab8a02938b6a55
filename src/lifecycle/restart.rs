//! Live restart (`cachefs restart MOUNTPOINT [--binary PATH]`): the daemon becomes a new
//! binary on the same FUSE connection, and the mount never leaves mountinfo.
//!
//! The process stays the same one: after the FUSE workers pause at a request boundary
//! (`fuser::Pauser`) and the SOURCE lane has drained, the daemon saves what a stop saves
//! (the cache index, the metadata snapshot), writes its node table to a memfd, and
//! execve(2)s the new binary with the /dev/fuse descriptor, that memfd and its watchdog's
//! pipe left open, named in `CACHEFS_RESUME`. The successor resumes the connection
//! without a new INIT (`fuser::Session::resume_from_fd`), takes the node table, so that
//! every node id the kernel holds answers as before, and serves. Requests that arrive
//! meanwhile wait in the kernel's queue. Keeping the process keeps its pid (systemd's
//! main pid, a container's PID 1), its watchdog child and its descriptors.
//!
//! Open files and directories go on as they were: their descriptors stay open across
//! execve(2), and the successor takes back each handle with its mode, its node's
//! passthrough registration (which belongs to the connection) and the copies' mirrors
//! (`Overlay::export_handles`). Locks are not carried yet: a restart is refused while
//! one is held through the mount.
//!
//! Refused, with the daemon serving on, when the binary cannot take this state (it does
//! not list [`FORMAT`] in `cachefs state-formats`), or while the mount is in a state a
//! restart does not carry yet (`Overlay::handoff_blocker`).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::session::Negotiated;
use super::{PROCESS, watchdog};

/// The state this binary writes and reads; `cachefs state-formats` lists it.
pub const FORMAT: &str = "CACHEFS-RESUME-2";

/// The environment variable that tells a successor what it resumes.
pub const RESUME_ENV: &str = "CACHEFS_RESUME";

/// How long the lane may take to finish the SOURCE calls under way.
const DRAIN: Duration = Duration::from_secs(30);

/// Starts a live restart from the control socket's thread: checks, then pauses the
/// FUSE workers; `run_foreground` does the rest once the session has returned. The
/// binary to become, made absolute.
pub(super) fn request(binary: Option<&Path>, options: Option<&str>) -> Result<PathBuf, String> {
    let binary = match binary {
        Some(b) => b.to_path_buf(),
        None => PROCESS
            .exe
            .get()
            .cloned()
            .ok_or("the daemon does not know its own binary: give --binary")?,
    };
    if !binary.is_absolute() {
        return Err(format!(
            "--binary {} is not an absolute path",
            binary.display()
        ));
    }
    let core = PROCESS.core.get().ok_or("the mount is not serving yet")?;
    let argv = successor_argv(&core.cfg, options)?;
    refuse_what_is_not_carried(core)?;
    check_successor(&binary)?;
    let pauser = PROCESS
        .pauser
        .lock()
        .clone()
        .ok_or("the mount is not serving yet")?;
    {
        let mut due = PROCESS.restart.lock();
        if due.is_some() {
            return Err("a restart is already under way".into());
        }
        *due = Some(binary.clone());
        *PROCESS.restart_argv.lock() = argv;
    }
    tracing::info!("restart into {}: pausing", binary.display());
    pauser.pause();
    wake_workers(core.cfg.mountpoint.clone());
    Ok(binary)
}

/// The successor's arguments: this daemon's, and `-o OPTIONS` after them (a later
/// option wins). Refused, naming it, if an option would change what a live mount cannot:
/// its directories, who may use it, the kernel's mount flags, what INIT negotiated, how
/// nodes are reopened.
fn successor_argv(
    running: &crate::config::Config,
    options: Option<&str>,
) -> Result<Vec<OsString>, String> {
    let mut argv: Vec<OsString> = PROCESS.argv.get().cloned().unwrap_or_default();
    let Some(options) = options else {
        return Ok(argv);
    };
    argv.push("-o".into());
    argv.push(options.into());
    let mut next = match crate::cli::parse(argv.clone()) {
        Ok(crate::cli::Command::Mount(cfg)) => cfg,
        Ok(_) => return Err("the restarted daemon's arguments are not a mount".into()),
        Err(crate::cli::CliError::Usage(msg) | crate::cli::CliError::Info(msg)) => {
            return Err(msg);
        }
    };
    // Relative directories were resolved at the start; the successor gets them resolved.
    next.source = running.source.clone();
    next.mountpoint = running.mountpoint.clone();
    next.cache = running.cache.clone();
    let fixed: [(&str, bool); 8] = [
        ("allow_other", next.allow_other != running.allow_other),
        ("allow_root", next.allow_root != running.allow_root),
        ("ro", next.read_only != running.read_only),
        ("fsname", next.fsname != running.fsname),
        ("passthrough", next.passthrough != running.passthrough),
        ("xattr", next.xattr != running.xattr),
        ("inode_handles", next.inode_handles != running.inode_handles),
        (
            "the kernel's mount flags",
            next.kernel_flags != running.kernel_flags,
        ),
    ];
    match fixed.iter().find(|(_, changed)| *changed) {
        Some((name, _)) => Err(format!(
            "{name} cannot change on a live mount: unmount and mount again to change it"
        )),
        None => Ok(argv),
    }
}

fn refuse_what_is_not_carried(core: &crate::overlay::Overlay) -> Result<(), String> {
    match core.handoff_blocker() {
        None => Ok(()),
        Some(why) => Err(format!(
            "{why}, which a live restart does not carry yet: try again in a moment"
        )),
    }
}

/// Runs `BINARY state-formats`: the successor must read [`FORMAT`], or the daemon never
/// lets go.
fn check_successor(binary: &Path) -> Result<(), String> {
    let out = std::process::Command::new(binary)
        .arg("state-formats")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let formats = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && formats.lines().any(|l| l.trim() == FORMAT) {
        Ok(())
    } else {
        Err(format!(
            "{} cannot take this daemon's state ({FORMAT}): it reads {}; the daemon serves on",
            binary.display(),
            match formats.trim() {
                "" => "none".to_string(),
                f => f.replace('\n', ", "),
            }
        ))
    }
}

/// A worker blocked in read(2) returns only with a request: statfs(2) on the mountpoint,
/// one at a time from short threads, until the session has returned (a statfs that
/// finds every worker gone waits for the successor, which answers it).
fn wake_workers(mountpoint: PathBuf) {
    std::thread::spawn(move || {
        while !PROCESS.paused.load(Ordering::SeqCst) {
            let m = mountpoint.clone();
            std::thread::spawn(move || {
                let _ = rustix::fs::statfs(&m);
            });
            std::thread::sleep(Duration::from_millis(2));
        }
    });
}

/// After the session returned paused: drains the lane, saves, and execs `binary`. Returns
/// only if the restart cannot go on; the caller then serves on with a new session.
pub(super) fn exec(binary: &Path, dev: &OwnedFd, negotiated: Negotiated) -> String {
    PROCESS.paused.store(true, Ordering::SeqCst);
    let Some(core) = PROCESS.core.get() else {
        return "no mount".into();
    };
    let end = Instant::now() + DRAIN;
    while core.lane.load() != (0, 0) {
        if Instant::now() > end {
            return format!("SOURCE calls still under way after {} s", DRAIN.as_secs());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Came between the check and the pause.
    if let Err(why) = refuse_what_is_not_carried(core) {
        return why;
    }
    // What a stop saves, the successor loads as any start does; copies in progress end.
    super::shutdown();
    let (handles, keep) = match core.export_handles(&crate::fuse::backing_number) {
        Ok(h) => h,
        Err(why) => return format!("{why} (promotion stays off until the next start)"),
    };
    let state = core.export_nodes();
    let memfd = match state_fd(&core.cfg, &state, &handles) {
        Ok(fd) => fd,
        Err(e) => return format!("cannot keep the state for the successor: {e}"),
    };
    let Some((watchdog_pid, watchdog_fd)) = watchdog::keep_across_exec() else {
        return "no watchdog".into();
    };
    for fd in [dev.as_raw_fd(), memfd.as_raw_fd(), watchdog_fd]
        .into_iter()
        .chain(keep)
    {
        if let Err(e) = clear_cloexec(fd) {
            return format!("cannot keep descriptor {fd} open: {e}");
        }
    }
    let resume = format!(
        "fuse={},state={},watchdog_pid={},watchdog_fd={},passthrough={},no_opendir={},resend={},posix_acl={}",
        dev.as_raw_fd(),
        memfd.as_raw_fd(),
        watchdog_pid,
        watchdog_fd,
        u8::from(negotiated.passthrough),
        u8::from(negotiated.no_opendir),
        u8::from(negotiated.resend),
        u8::from(negotiated.posix_acl)
    );
    let argv: Vec<OsString> = PROCESS.restart_argv.lock().clone();
    tracing::info!(
        "restart: handing over the node table ({} bytes); becoming {}",
        state.len(),
        binary.display()
    );
    let mut cmd = std::process::Command::new(binary);
    if let Some((arg0, rest)) = argv.split_first() {
        cmd.arg0(arg0).args(rest);
    }
    let e = cmd.env(RESUME_ENV, resume).exec();
    // The promoter has stopped; the copies go on being served.
    format!(
        "cannot execute {}: {e} (promotion stays off until the next start)",
        binary.display()
    )
}

/// The first bytes of what a predecessor hands over: its resolved paths, then the node
/// table.
const HANDED_MAGIC: &[u8] = b"CACHEFS-RESUME-2\n";

fn state_fd(cfg: &crate::config::Config, nodes: &[u8], handles: &[u8]) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let mut w = crate::codec::Writer::new(HANDED_MAGIC);
    for p in [&cfg.source, &cfg.mountpoint, &cfg.cache] {
        w.bytes(p.as_os_str().as_bytes());
    }
    w.bytes(nodes);
    w.bytes(handles);
    let data = w.finish();
    let fd = rustix::fs::memfd_create("cachefs-state", rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut f = std::fs::File::from(fd);
    io::Write::write_all(&mut f, &data)?;
    Ok(f.into())
}

fn clear_cloexec(fd: i32) -> io::Result<()> {
    // SAFETY: a descriptor this process owns; F_SETFD has no memory effects.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// What a predecessor handed over, from `CACHEFS_RESUME` (removed from the environment,
/// so that no child of the successor sees it).
pub(super) struct Handed {
    pub dev: OwnedFd,
    /// SOURCE, MOUNTPOINT and CACHE as the predecessor resolved them.
    pub paths: (PathBuf, PathBuf, PathBuf),
    /// The node table.
    pub state: Vec<u8>,
    /// The open handles.
    pub handles: Vec<u8>,
    pub watchdog: (u32, OwnedFd),
    pub negotiated: Negotiated,
}

/// Whether this process was exec'd by a predecessor to resume its mount.
pub fn resuming() -> bool {
    std::env::var_os(RESUME_ENV).is_some()
}

pub(super) fn take_handed() -> Result<Handed, String> {
    let env = super::process::HandedEnv::take(RESUME_ENV)?;
    let dev = env.fd("fuse")?;
    let memfd = env.fd("state")?;
    let wpid: u32 = env.get("watchdog_pid")?;
    let wfd = env.fd("watchdog_fd")?;
    let mut data = Vec::new();
    let mut f = std::fs::File::from(memfd);
    io::Seek::seek(&mut f, io::SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    io::Read::read_to_end(&mut f, &mut data).map_err(|e| e.to_string())?;
    let damaged = || "the state handed over is of another version, or damaged".to_string();
    let mut r = crate::codec::Reader::open(&data, HANDED_MAGIC).ok_or_else(damaged)?;
    let mut path = || -> Result<PathBuf, String> {
        use std::os::unix::ffi::OsStrExt;
        let b = r.bytes().ok_or_else(damaged)?;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(b)))
    };
    let paths = (path()?, path()?, path()?);
    let state = r.bytes().ok_or_else(damaged)?.to_vec();
    let handles = r.bytes().ok_or_else(damaged)?.to_vec();
    Ok(Handed {
        dev,
        paths,
        state,
        handles,
        watchdog: (wpid, wfd),
        negotiated: Negotiated {
            passthrough: env.flag("passthrough"),
            no_opendir: env.flag("no_opendir"),
            resend: env.flag("resend"),
            // Absent from a predecessor that did not ask for it: not negotiated.
            posix_acl: env.flag("posix_acl"),
        },
    })
}
