//! The control socket between a running daemon and the subcommands `status`, `promote`,
//! `pin`, `unpin`, `evict` and `unmount`.
//!
//! This module owns:
//! - where a mount's socket lives ([`socket_path`]: `/run/cachefs/m-<FNV-1a 64 hex>.sock`,
//!   or under `$CACHEFS_RUN_DIR`; hashed because a Unix socket path holds at most 108 bytes);
//! - the wire protocol: newline-delimited JSON over a Unix stream socket. The client sends
//!   one line `{"cmd": "...", "paths": [...], "wait": bool}`; the daemon answers with zero or
//!   more `{"progress": ...}` lines, then exactly one `{"ok": true, "result": ...}` or
//!   `{"ok": false, "error": "..."}` line, and closes. A path is a JSON string, or, when it
//!   is not UTF-8, an array of its bytes;
//! - the daemon's side ([`serve`], [`Server`]): a listener thread, one thread per
//!   connection, request validation (size, JSON, relative paths without `..`), dispatch to a
//!   [`Handler`] that the daemon implements;
//! - the client's side ([`locate`], [`request`]) and the subcommand runner
//!   ([`run_command`]) that `main.rs` calls, with its text output and exit codes.
//!
//! What the commands do to the cache is the handler's business, not this module's.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cli::Command;

/// Where sockets live unless `CACHEFS_RUN_DIR` says otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/cachefs";

/// The environment variable that moves the socket directory (tests, unprivileged setups).
pub const RUN_DIR_ENV: &str = "CACHEFS_RUN_DIR";

/// The longest request line the daemon reads; longer ones get an error reply.
pub const MAX_REQUEST: usize = 1 << 20;

/// The longest reply line the client reads (a status with many promotions in flight is the
/// largest answer; this is far above it).
const MAX_REPLY: usize = 64 << 20;

/// Connections served at once; more get an error reply. Any local user may connect, so one
/// must not be able to make the daemon start threads without bound.
const MAX_CONNECTIONS: usize = 64;

/// How long the daemon waits for a connection's request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one reply write may block on a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the client waits for an answer to a command that does not wait for work.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `cachefs unmount` waits for the mount to leave mountinfo after the daemon said yes.
const UNMOUNT_WAIT: Duration = Duration::from_secs(30);

/// The socket of the daemon serving `mountpoint`.
///
/// `mountpoint` must be absolute and canonical: the `Config`'s after `cli::check_paths`, or a
/// target from mountinfo. It is not resolved here, on purpose: the daemon calls this while
/// its own FUSE session may not be answering yet, and resolving a path through its own mount
/// would hang. Only `.` components and repeated or trailing slashes are normalised.
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    let dir = std::env::var_os(RUN_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), PathBuf::from);
    socket_path_in(&dir, mountpoint)
}

fn socket_path_in(run_dir: &Path, mountpoint: &Path) -> PathBuf {
    let normal: PathBuf = mountpoint.components().collect();
    run_dir.join(format!(
        "m-{:016x}.sock",
        fnv1a64(normal.as_os_str().as_bytes())
    ))
}

/// FNV-1a, 64 bits: stable across builds and versions (unlike `DefaultHasher`), which a
/// client and a daemon of different builds need to agree on a socket name.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// What the daemon does for each command. Paths are relative to the mount's root, already
/// checked: no `..`, not absolute, `.` components removed; the empty path is the root.
pub trait Handler: Send + Sync + 'static {
    /// The `cachefs status --json` object (CONTRACT.md lists the keys).
    fn status(&self) -> Value;
    /// Queue (and with wait, wait for) promotion of paths relative to the mount root.
    /// `progress` may be called repeatedly with a JSON value (e.g.
    /// `{"path":..,"bytes_done":..,"bytes_total":..}`) while waiting. Returns a result value
    /// (e.g. `{"queued": n, "failed": [..]}`) or an error message.
    fn promote(
        &self,
        paths: &[PathBuf],
        wait: bool,
        progress: &mut dyn FnMut(Value),
    ) -> Result<Value, String>;
    fn pin(&self, paths: &[PathBuf]) -> Result<Value, String>;
    fn unpin(&self, paths: &[PathBuf]) -> Result<Value, String>;
    fn evict(&self, paths: &[PathBuf]) -> Result<Value, String>;
    /// Starts the graceful stop. The reply is written after this returns, so this must
    /// return (not exit the process) once the stop is under way; the client then waits for
    /// the mount to leave mountinfo.
    fn unmount(&self) -> Result<Value, String>;
}

/// The running control socket. Dropping it stops the listener and removes the socket file
/// (if it is still the one this server bound). Connections already accepted finish on
/// their own threads.
pub struct Server {
    path: PathBuf,
    /// (st_dev, st_ino) of the socket file as bound, so drop never removes a successor's.
    id: (u64, u64),
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// The socket file this server listens on.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        // A connection wakes the blocked accept; then the thread sees `stop` and returns.
        let woken = ours && UnixStream::connect(&self.path).is_ok();
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("cannot remove control socket {}: {e}", self.path.display());
        }
        // Unwoken, the thread would block join forever; it then ends with the process.
        if let Some(t) = self.thread.take()
            && woken
        {
            let _ = t.join();
        }
    }
}

/// Starts the control socket for the daemon serving `mountpoint` (canonical, see
/// [`socket_path`]). Creates the run directory (0755) if missing. A socket file left by a
/// dead daemon is replaced; a live daemon on it is `io::ErrorKind::AddrInUse`.
pub fn serve(mountpoint: &Path, handler: Arc<dyn Handler>) -> io::Result<Server> {
    let path = socket_path(mountpoint);
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
            })?;
    }
    serve_at(&path, handler).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => io::Error::new(
            e.kind(),
            format!(
                "another cachefs daemon already serves {} (control socket {})",
                mountpoint.display(),
                path.display()
            ),
        ),
        _ => e,
    })
}

/// [`serve`] on an explicit socket path (the directory must exist).
fn serve_at(path: &Path, handler: Arc<dyn Handler>) -> io::Result<Server> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("a daemon already listens on {}", path.display()),
                ));
            }
            // Left by a daemon that died without cleaning up.
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {}: {e}", path.display())))?;
    // Any user may connect: `status` and `promote` are for everyone (no command reads or
    // changes SOURCE data, and a promotion copies only what the daemon would cache on a
    // read anyway). Commands that take something away (unmount, evict, pin, unpin) are
    // checked against the peer's uid in `serve_connection`. Until the socket is chmodded
    // it has the umask's mode, which is the stricter one, so there is no window.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    let meta = std::fs::symlink_metadata(path)?;
    let id = (meta.dev(), meta.ino());
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(listener, handler, stop))
    };
    match thread {
        Ok(t) => Ok(Server {
            path: path.to_path_buf(),
            id,
            stop,
            thread: Some(t),
        }),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

fn accept_loop(listener: UnixListener, handler: Arc<dyn Handler>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: do not spin.
                tracing::warn!("control socket: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = write_line(
                &stream,
                &json!({"ok": false, "error": "the daemon is busy with too many control connections; try again"}),
            );
            continue;
        }
        let guard = ActiveGuard(active.clone());
        let handler = handler.clone();
        let spawned = std::thread::Builder::new()
            .name("control-conn".into())
            .spawn(move || {
                let _guard = guard;
                serve_connection(&stream, &*handler);
            });
        if let Err(e) = spawned {
            tracing::warn!("control socket: cannot start a connection thread: {e}");
        }
    }
}

struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One command of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Status,
    Promote,
    Pin,
    Unpin,
    Evict,
    Unmount,
}

impl Cmd {
    fn parse(s: &str) -> Option<Cmd> {
        Some(match s {
            "status" => Cmd::Status,
            "promote" => Cmd::Promote,
            "pin" => Cmd::Pin,
            "unpin" => Cmd::Unpin,
            "evict" => Cmd::Evict,
            "unmount" => Cmd::Unmount,
            _ => return None,
        })
    }

    /// Commands that can take the mount or cached copies away from other users.
    fn is_privileged(self) -> bool {
        matches!(self, Cmd::Unmount | Cmd::Evict | Cmd::Pin | Cmd::Unpin)
    }

    fn takes_paths(self) -> bool {
        matches!(self, Cmd::Promote | Cmd::Pin | Cmd::Unpin | Cmd::Evict)
    }
}

#[derive(Debug)]
struct Request {
    cmd: Cmd,
    paths: Vec<PathBuf>,
    wait: bool,
}

fn write_line(mut stream: &UnixStream, v: &Value) -> io::Result<()> {
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    stream.write_all(&line)
}

fn serve_connection(stream: &UnixStream, handler: &dyn Handler) {
    let reply = |v: Value| {
        if let Err(e) = write_line(stream, &v) {
            tracing::debug!("control socket: cannot reply: {e}");
        }
    };
    let line = match read_request_line(stream) {
        Ok(Some(line)) => line,
        Ok(None) => return, // connected and closed without a word
        Err(msg) => return reply(json!({"ok": false, "error": msg})),
    };
    let req = match parse_request(&line) {
        Ok(r) => r,
        Err(msg) => return reply(json!({"ok": false, "error": msg})),
    };
    tracing::debug!("control request: {req:?}");
    if req.cmd.is_privileged() {
        let peer = crate::sys::peer_uid(std::os::fd::AsFd::as_fd(stream));
        if !matches!(peer, Ok(uid) if uid == 0 || uid == crate::sys::geteuid()) {
            return reply(json!({
                "ok": false,
                "error": "permission denied: only root (or the daemon's user) may unmount, evict, pin or unpin"
            }));
        }
    }

    // Once the client has gone, progress lines are dropped; the work itself goes on.
    let mut broken = false;
    let mut progress = |v: Value| {
        if !broken && write_line(stream, &json!({ "progress": v })).is_err() {
            broken = true;
        }
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match req.cmd {
        Cmd::Status => Ok(handler.status()),
        Cmd::Promote => handler.promote(&req.paths, req.wait, &mut progress),
        Cmd::Pin => handler.pin(&req.paths),
        Cmd::Unpin => handler.unpin(&req.paths),
        Cmd::Evict => handler.evict(&req.paths),
        Cmd::Unmount => handler.unmount(),
    }));
    match outcome {
        Ok(Ok(result)) => reply(json!({"ok": true, "result": result})),
        Ok(Err(msg)) => reply(json!({"ok": false, "error": msg})),
        Err(_) => {
            tracing::error!("control socket: the handler panicked on {:?}", req.cmd);
            reply(json!({"ok": false, "error": "internal error in the daemon (see its log)"}))
        }
    }
}

/// Reads the request line: `Ok(None)` on a connection closed before any byte.
fn read_request_line(stream: &UnixStream) -> Result<Option<Vec<u8>>, String> {
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let mut reader = BufReader::new(stream).take(MAX_REQUEST as u64 + 1);
    let mut buf = Vec::new();
    match reader.read_until(b'\n', &mut buf) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(format!(
                "no complete request line within {} s",
                REQUEST_TIMEOUT.as_secs()
            ));
        }
        Err(e) => return Err(format!("cannot read the request: {e}")),
    }
    if buf.is_empty() {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    // (A last line without a newline, from a client that shut down its side, is accepted.)
    Ok(Some(buf))
}

fn parse_request(line: &[u8]) -> Result<Request, String> {
    let v: Value =
        serde_json::from_slice(line).map_err(|e| format!("malformed request (not JSON): {e}"))?;
    let obj = v
        .as_object()
        .ok_or("malformed request: expected a JSON object")?;
    let cmd = match obj.get("cmd") {
        Some(Value::String(s)) => Cmd::parse(s).ok_or_else(|| format!("unknown command '{s}'"))?,
        Some(_) => return Err("malformed request: 'cmd' must be a string".into()),
        None => return Err("malformed request: no 'cmd'".into()),
    };
    let wait = match obj.get("wait") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("malformed request: 'wait' must be true or false".into()),
    };
    let paths = match obj.get("paths") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|p| path_from_json(p).and_then(|p| check_relative(&p)))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err("malformed request: 'paths' must be an array".into()),
    };
    if cmd.takes_paths() && paths.is_empty() {
        return Err("no paths given".into());
    }
    Ok(Request { cmd, paths, wait })
}

/// A path on the wire: a string when it is UTF-8, else an array of its bytes (Linux names
/// are bytes, JSON strings are not).
fn path_to_json(p: &Path) -> Value {
    match p.to_str() {
        Some(s) => Value::String(s.to_string()),
        None => Value::Array(p.as_os_str().as_bytes().iter().map(|&b| json!(b)).collect()),
    }
}

fn path_from_json(v: &Value) -> Result<PathBuf, String> {
    match v {
        Value::String(s) => Ok(PathBuf::from(s)),
        Value::Array(items) => items
            .iter()
            .map(|b| {
                b.as_u64()
                    .and_then(|b| u8::try_from(b).ok())
                    .ok_or_else(|| "malformed request: a byte path holds a non-byte".to_string())
            })
            .collect::<Result<Vec<u8>, _>>()
            .map(|bytes| PathBuf::from(OsString::from_vec(bytes))),
        _ => Err("malformed request: a path must be a string or an array of bytes".into()),
    }
}

/// A request path made safe for a daemon running as root: relative, no `..`, no NUL; `.`
/// components dropped. The empty path is the mount's root.
fn check_relative(p: &Path) -> Result<PathBuf, String> {
    if p.as_os_str().as_bytes().contains(&0) {
        return Err(format!("path {:?} contains a NUL byte", p));
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("path {:?} contains '..': not allowed", p));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "path {:?} is absolute: paths must be relative to the mount's root",
                    p
                ));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Client side.

/// Why a request failed.
#[derive(Debug)]
enum ReqError {
    /// Nobody listens on the socket.
    Unreachable(String),
    /// The daemon closed the connection without a final answer.
    Closed(String),
    /// The daemon's own `{"ok": false}` error.
    Daemon(String),
    /// Any other failure.
    Failed(String),
}

impl ReqError {
    fn into_message(self) -> String {
        match self {
            ReqError::Unreachable(m)
            | ReqError::Closed(m)
            | ReqError::Daemon(m)
            | ReqError::Failed(m) => m,
        }
    }
}

/// Finds the cachefs mount that contains `path` (the longest matching target among
/// /proc/self/mountinfo entries with fstype "fuse.cachefs") and returns (mountpoint, path
/// relative to it; empty for the mountpoint itself). `path` is canonicalized first, through
/// the FUSE mount. A path on another filesystem mounted inside a cachefs mount is not under it.
pub fn locate(path: &Path) -> Result<(PathBuf, PathBuf), String> {
    let mounts =
        crate::mountinfo::mounts().map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let stale = |mp: &Path| {
        format!(
            "no cachefs daemon answers for {} (socket {}): is it mounted? It is a stale mount \
             whose daemon is gone; 'cachefs cleanup {}' removes it",
            mp.display(),
            socket_path(mp).display(),
            mp.display()
        )
    };
    let is_enotconn = |e: &io::Error| e.raw_os_error() == Some(libc::ENOTCONN);
    let canonical = match std::fs::canonicalize(path) {
        Ok(p) => p,
        // A stale mount (its daemon is gone): find which one lexically, to say so.
        Err(e) if is_enotconn(&e) => {
            return Err(match locate_in(&mounts, &lexical_absolute(path)) {
                Some((mp, _)) => stale(&mp),
                None => format!("cannot resolve {}: {e}", path.display()),
            });
        }
        Err(e) => return Err(format!("cannot resolve {}: {e}", path.display())),
    };
    let not_under = || format!("{} is not under a cachefs mount", path.display());
    let (mp, rel) = locate_in(&mounts, &canonical).ok_or_else(not_under)?;
    // Something mounted inside the cachefs mount has a device number of its own. (realpath
    // never asks a mount's root about itself, so a stale mountpoint shows up only here.)
    match (std::fs::metadata(&canonical), std::fs::metadata(&mp)) {
        (Err(e), _) | (_, Err(e)) if is_enotconn(&e) => return Err(stale(&mp)),
        (Ok(inner), Ok(top)) if inner.dev() != top.dev() => {
            return Err(format!(
                "{} (on another filesystem mounted inside {})",
                not_under(),
                mp.display()
            ));
        }
        _ => {}
    }
    Ok((mp, rel))
}

/// The pure part of [`locate`]: the deepest cachefs mount target that is a prefix of
/// `path` (absolute, canonical), and the rest of `path`.
fn locate_in(mounts: &[crate::mountinfo::MountInfo], path: &Path) -> Option<(PathBuf, PathBuf)> {
    let best = mounts
        .iter()
        .filter(|m| m.fstype == "fuse.cachefs" && path.starts_with(&m.target))
        // On a tie (mounts stacked on one target) the last, the one on top, wins.
        .max_by_key(|m| m.target.components().count())?;
    let rel = path.strip_prefix(&best.target).ok()?.to_path_buf();
    Some((best.target.clone(), rel))
}

/// `path` made absolute and with `.` and `..` removed, without touching the filesystem.
fn lexical_absolute(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Sends one command to the daemon serving `mountpoint` (as [`locate`] returns it) and
/// returns its result. Progress lines go to `on_progress` as they arrive.
pub fn request(
    mountpoint: &Path,
    cmd: &str,
    paths: &[PathBuf],
    wait: bool,
    on_progress: &mut dyn FnMut(&Value),
) -> Result<Value, String> {
    request_inner(mountpoint, cmd, paths, wait, on_progress).map_err(ReqError::into_message)
}

fn request_inner(
    mountpoint: &Path,
    cmd: &str,
    paths: &[PathBuf],
    wait: bool,
    on_progress: &mut dyn FnMut(&Value),
) -> Result<Value, ReqError> {
    let socket = socket_path(mountpoint);
    let stream = connect(&socket).map_err(|e| match e {
        ReqError::Unreachable(_) => ReqError::Unreachable(format!(
            "no cachefs daemon answers for {} (socket {}): is it mounted?",
            mountpoint.display(),
            socket.display()
        )),
        other => other,
    })?;
    exchange(&stream, cmd, paths, wait, on_progress)
}

/// [`request`] on an explicit socket path.
#[cfg(test)]
fn request_at(
    socket: &Path,
    cmd: &str,
    paths: &[PathBuf],
    wait: bool,
    on_progress: &mut dyn FnMut(&Value),
) -> Result<Value, String> {
    let stream = connect(socket).map_err(ReqError::into_message)?;
    exchange(&stream, cmd, paths, wait, on_progress).map_err(ReqError::into_message)
}

fn connect(socket: &Path) -> Result<UnixStream, ReqError> {
    UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ReqError::Unreachable(format!("no daemon listens on {}: {e}", socket.display()))
        }
        _ => ReqError::Failed(format!(
            "cannot connect to the cachefs daemon (socket {}): {e}",
            socket.display()
        )),
    })
}

fn exchange(
    stream: &UnixStream,
    cmd: &str,
    paths: &[PathBuf],
    wait: bool,
    on_progress: &mut dyn FnMut(&Value),
) -> Result<Value, ReqError> {
    let req = json!({
        "cmd": cmd,
        "paths": paths.iter().map(|p| path_to_json(p)).collect::<Vec<_>>(),
        "wait": wait,
    });
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    write_line(stream, &req)
        .map_err(|e| ReqError::Failed(format!("cannot send the request to the daemon: {e}")))?;
    // Waiting for work has no bound; anything else should answer promptly.
    let timeout = if wait || cmd == "unmount" {
        None
    } else {
        Some(REPLY_TIMEOUT)
    };
    let _ = stream.set_read_timeout(timeout);

    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_REPLY as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ReqError::Failed(format!(
                    "the daemon did not answer within {} s",
                    REPLY_TIMEOUT.as_secs()
                )),
                _ => ReqError::Failed(format!("cannot read the daemon's answer: {e}")),
            })?;
        if n == 0 || buf.last() != Some(&b'\n') {
            if buf.len() > MAX_REPLY {
                return Err(ReqError::Failed("the daemon's answer is too long".into()));
            }
            return Err(ReqError::Closed(
                "the daemon closed the connection without an answer".into(),
            ));
        }
        let v: Value = serde_json::from_slice(&buf)
            .map_err(|e| ReqError::Failed(format!("malformed answer from the daemon: {e}")))?;
        if let Some(p) = v.get("progress") {
            on_progress(p);
            continue;
        }
        return match v.get("ok") {
            Some(Value::Bool(true)) => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
            Some(Value::Bool(false)) => Err(ReqError::Daemon(
                v.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("the daemon reported an error without a message")
                    .to_string(),
            )),
            _ => Err(ReqError::Failed(format!(
                "malformed answer from the daemon: {v}"
            ))),
        };
    }
}

// ---------------------------------------------------------------------------------------
// The subcommands.

/// Runs a control subcommand and returns its exit code (CONTRACT.md: 0 success, 1 runtime
/// failure). Messages go to stderr, results to stdout.
pub fn run_command(cmd: Command) -> u8 {
    match cmd {
        Command::Status { mountpoint, json } => run_status(&mountpoint, json),
        Command::Promote { wait, paths } => run_paths("promote", &paths, wait),
        Command::Pin { paths } => run_paths("pin", &paths, false),
        Command::Unpin { paths } => run_paths("unpin", &paths, false),
        Command::Evict { paths } => run_paths("evict", &paths, false),
        Command::Unmount { mountpoint } => run_unmount(&mountpoint),
        Command::Cleanup { mountpoints } => {
            // Absolute without resolving: a stale mountpoint cannot be stat'ed.
            let cwd = std::env::current_dir().unwrap_or_default();
            let abs: Vec<PathBuf> = mountpoints.iter().map(|m| cwd.join(m)).collect();
            crate::mountinfo::cleanup(&abs)
        }
        Command::Mount(_) => {
            eprintln!("cachefs: mounting is not a control command");
            1
        }
    }
}

fn run_status(path: &Path, as_json: bool) -> u8 {
    let (mp, _) = match locate(path) {
        Ok(l) => l,
        Err(msg) => return fail(&msg),
    };
    match ask(&mp, "status", &[], false, &mut |_| {}) {
        Ok(v) if as_json => {
            println!("{v}");
            0
        }
        Ok(v) => {
            print!("{}", status_text(&mp, &v));
            0
        }
        Err(msg) => fail(&msg),
    }
}

/// [`request`], with the daemon's own errors prefixed by what was asked of which mount.
fn ask(
    mp: &Path,
    cmd: &str,
    paths: &[PathBuf],
    wait: bool,
    on_progress: &mut dyn FnMut(&Value),
) -> Result<Value, String> {
    request_inner(mp, cmd, paths, wait, on_progress).map_err(|e| match e {
        ReqError::Daemon(msg) => format!("{cmd} {}: {msg}", mp.display()),
        other => other.into_message(),
    })
}

fn fail(msg: &str) -> u8 {
    eprintln!("cachefs: {msg}");
    1
}

/// `promote`, `pin`, `unpin`, `evict`: paths grouped by mount, one request per mount.
fn run_paths(cmd: &str, paths: &[PathBuf], wait: bool) -> u8 {
    let mut code = 0;
    let mut groups: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for p in paths {
        match locate(p) {
            Ok((mp, rel)) => groups.entry(mp).or_default().push(rel),
            Err(msg) => code = fail(&msg),
        }
    }
    for (mp, rels) in &groups {
        let mut print_progress = |v: &Value| eprintln!("{}", progress_line(v));
        match ask(mp, cmd, rels, wait, &mut print_progress) {
            Ok(result) => {
                println!("{}", summary(cmd, mp, &result));
                for (path, why) in failures(&result) {
                    let full = mp.join(path);
                    match why {
                        Some(why) => eprintln!("cachefs: {cmd} {}: {why}", full.display()),
                        None => eprintln!("cachefs: {cmd} {}: failed", full.display()),
                    }
                }
                if failed_count(&result) > 0 {
                    code = 1;
                }
            }
            Err(msg) => code = fail(&msg),
        }
    }
    code
}

fn run_unmount(path: &Path) -> u8 {
    let (mp, _) = match locate(path) {
        Ok(l) => l,
        Err(msg) => return fail(&msg),
    };
    let before = cachefs_mounts_at(&mp);
    match request_inner(&mp, "unmount", &[], false, &mut |_| {}) {
        Ok(_) => {}
        // A daemon that exits as soon as it is unmounted may not get to answer.
        Err(ReqError::Closed(msg)) => {
            if !wait_unmounted(&mp, before, Duration::from_secs(2)) {
                return fail(&msg);
            }
            return 0;
        }
        Err(e) => return fail(&e.into_message()),
    }
    if wait_unmounted(&mp, before, UNMOUNT_WAIT) {
        0
    } else {
        fail(&format!(
            "asked the daemon to unmount {}, but it is still mounted after {} s",
            mp.display(),
            UNMOUNT_WAIT.as_secs()
        ))
    }
}

fn cachefs_mounts_at(mp: &Path) -> usize {
    crate::mountinfo::mounts()
        .map(|all| {
            all.iter()
                .filter(|m| m.fstype == "fuse.cachefs" && m.target == mp)
                .count()
        })
        .unwrap_or(0)
}

/// Waits until fewer cachefs mounts sit at `mp` than `before`.
fn wait_unmounted(mp: &Path, before: usize, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        if cachefs_mounts_at(mp) < before {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One line per progress report: `Show/S01E02.mkv 45% (330 MiB / 700 MiB)`.
fn progress_line(v: &Value) -> String {
    let path = v.get("path").map(display_json_path);
    let done = v.get("bytes_done").and_then(Value::as_u64);
    let total = v.get("bytes_total").and_then(Value::as_u64);
    match (path, done, total, v.get("error")) {
        (Some(p), _, _, Some(err)) => format!("{p}: failed: {}", display_text(err)),
        (Some(p), Some(d), Some(t), None) => {
            let pct = if t == 0 {
                100
            } else {
                (u128::from(d.min(t)) * 100 / u128::from(t)) as u64
            };
            format!("{p} {pct}% ({} / {})", fmt_bytes(d), fmt_bytes(t))
        }
        (Some(p), _, _, None) if v.get("done").and_then(Value::as_bool) == Some(true) => {
            format!("{p} done")
        }
        _ => v.to_string(),
    }
}

/// A path the daemon sent (string, or array of bytes) for display.
fn display_json_path(v: &Value) -> String {
    match path_from_json(v) {
        Ok(p) => p.display().to_string(),
        Err(_) => v.to_string(),
    }
}

fn display_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The one-line summary of a command's result: its integer fields, e.g.
/// `pin /mnt/media: pinned 3, queued 2`.
fn summary(cmd: &str, mp: &Path, result: &Value) -> String {
    let head = format!("{cmd} {}", mp.display());
    match result {
        Value::Object(obj) => {
            let mut parts: Vec<String> = obj
                .iter()
                .filter_map(|(k, v)| v.as_u64().map(|n| format!("{} {n}", k.replace('_', " "))))
                .collect();
            if !obj.get("failed").is_some_and(Value::is_u64) {
                let n = failed_count(result);
                if n > 0 {
                    parts.push(format!("failed {n}"));
                }
            }
            if parts.is_empty() {
                format!("{head}: done")
            } else {
                format!("{head}: {}", parts.join(", "))
            }
        }
        Value::Null => format!("{head}: done"),
        other => format!("{head}: {}", display_text(other)),
    }
}

/// The failures listed in a result's `failed`: paths (strings or byte arrays), or
/// `{"path", "error"}` objects; each as (path relative to the mount, reason).
fn failures(result: &Value) -> Vec<(PathBuf, Option<String>)> {
    let Some(Value::Array(items)) = result.get("failed") else {
        return Vec::new();
    };
    let path = |v: &Value| path_from_json(v).unwrap_or_else(|_| PathBuf::from(v.to_string()));
    items
        .iter()
        .map(|f| match f {
            Value::Object(o) => (
                o.get("path").map_or_else(PathBuf::new, path),
                o.get("error").map(display_text),
            ),
            other => (path(other), None),
        })
        .collect()
}

fn failed_count(result: &Value) -> u64 {
    match result.get("failed") {
        Some(Value::Array(items)) => items.len() as u64,
        Some(v) => v.as_u64().unwrap_or(0),
        None => 0,
    }
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `330 MiB`.
fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if v < 9.95 {
        format!("{v:.1} {}", UNITS[i])
    } else {
        format!("{v:.0} {}", UNITS[i])
    }
}

/// `cachefs status` without `--json`. Keys the daemon does not send are left out.
fn status_text(mp: &Path, s: &Value) -> String {
    let num = |k: &str| s.get(k).and_then(Value::as_u64);
    let text = |k: &str| s.get(k).map(display_text);
    let mount = text("mountpoint").unwrap_or_else(|| mp.display().to_string());
    let mut out = format!("cachefs mounted at {mount}");
    if let Some(pid) = num("pid") {
        out.push_str(&format!(" (daemon pid {pid})"));
    }
    out.push('\n');
    let line = |out: &mut String, label: &str, value: String| {
        out.push_str(&format!("  {label:<12}{value}\n"))
    };

    if let Some(v) = text("source") {
        line(&mut out, "source", v);
    }
    if let Some(v) = text("cache") {
        line(&mut out, "cache", v);
    }
    if let Some(b) = s.get("passthrough").and_then(Value::as_bool) {
        line(&mut out, "passthrough", if b { "on" } else { "off" }.into());
    }
    if let (Some(f), Some(b)) = (num("cached_files"), num("cached_bytes")) {
        let mut v = format!("{f} files, {}", fmt_bytes(b));
        if let Some(p) = num("pinned_files") {
            v.push_str(&format!(" ({p} pinned)"));
        }
        line(&mut out, "cached", v);
    }
    let mut limits = Vec::new();
    if let Some(m) = num("max_size") {
        limits.push(format!("max size {}", fmt_bytes(m)));
    }
    if let Some(m) = num("min_free") {
        limits.push(format!("min free {}", fmt_bytes(m)));
    }
    if !limits.is_empty() {
        line(&mut out, "limits", limits.join(", "));
    }
    if let (Some(h), Some(m)) = (num("hits"), num("misses")) {
        let (h128, m128) = (u128::from(h), u128::from(m));
        let pct = (h128 * 100).checked_div(h128 + m128).unwrap_or(0);
        line(
            &mut out,
            "opens",
            format!("{h} hits, {m} misses ({pct}% from cache)"),
        );
    }
    let promo: Vec<String> = [
        ("promotions_done", "done"),
        ("promotions_failed", "failed"),
        ("queued", "queued"),
    ]
    .iter()
    .filter_map(|(k, label)| num(k).map(|n| format!("{n} {label}")))
    .collect();
    if !promo.is_empty() {
        line(&mut out, "promotions", promo.join(", "));
    }
    if let Some(e) = num("evictions") {
        line(&mut out, "evictions", e.to_string());
    }
    if let Some(n) = num("inodes") {
        let how = match s.get("inode_handles").and_then(Value::as_bool) {
            Some(true) => " (reopened by file handle)",
            Some(false) => " (reopened by parent and name)",
            None => "",
        };
        line(&mut out, "inodes", format!("{n} known to the kernel{how}"));
    }
    if let (Some(c), Some(b), Some(l)) = (num("fds_cached"), num("fds_bound"), num("fd_limit")) {
        let pinned = num("fds_pinned").unwrap_or(0);
        line(
            &mut out,
            "descriptors",
            format!("{c} cached of {b}, {pinned} held by open files (limit {l})"),
        );
    }
    if let Some(Value::Array(items)) = s.get("in_flight")
        && !items.is_empty()
    {
        out.push_str("  in flight:\n");
        for item in items {
            out.push_str(&format!("    {}\n", progress_line(item)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    /// A handler that records the paths it was given.
    #[derive(Default)]
    struct Fake {
        seen: Mutex<Vec<PathBuf>>,
    }

    impl Handler for Fake {
        fn status(&self) -> Value {
            json!({"mountpoint": "/mnt/media", "pid": 42, "hits": 3, "misses": 1})
        }
        fn promote(
            &self,
            paths: &[PathBuf],
            wait: bool,
            progress: &mut dyn FnMut(Value),
        ) -> Result<Value, String> {
            self.seen.lock().extend_from_slice(paths);
            if wait {
                for i in 1..=3u64 {
                    progress(json!({"path": "a.mkv", "bytes_done": i * 100, "bytes_total": 300}));
                }
            }
            Ok(json!({"queued": paths.len(), "failed": []}))
        }
        fn pin(&self, paths: &[PathBuf]) -> Result<Value, String> {
            self.seen.lock().extend_from_slice(paths);
            Err("no room to pin".into())
        }
        fn unpin(&self, paths: &[PathBuf]) -> Result<Value, String> {
            Ok(json!({"unpinned": paths.len()}))
        }
        fn evict(&self, _: &[PathBuf]) -> Result<Value, String> {
            panic!("evict blew up");
        }
        fn unmount(&self) -> Result<Value, String> {
            Ok(Value::Null)
        }
    }

    fn start() -> (tempfile::TempDir, PathBuf, Server, Arc<Fake>) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("m.sock");
        let fake = Arc::new(Fake::default());
        let server = serve_at(&sock, fake.clone()).unwrap();
        (dir, sock, server, fake)
    }

    /// Sends raw bytes, returns every reply line.
    fn raw(sock: &Path, bytes: &[u8]) -> Vec<Value> {
        let stream = UnixStream::connect(sock).unwrap();
        let writer = stream.try_clone().unwrap();
        let bytes = bytes.to_vec();
        // A writer thread, so that a server replying early never deadlocks the test.
        let w = std::thread::spawn(move || {
            let _ = (&writer).write_all(&bytes);
            let _ = writer.shutdown(std::net::Shutdown::Write);
        });
        let mut lines = Vec::new();
        for line in BufReader::new(&stream).lines() {
            lines.push(serde_json::from_str(&line.unwrap()).unwrap());
        }
        let _ = w.join();
        lines
    }

    #[test]
    fn socket_path_is_stable_short_and_hashed() {
        let run = Path::new("/run/cachefs");
        let a = socket_path_in(run, Path::new("/mnt/media"));
        assert_eq!(a, socket_path_in(run, Path::new("/mnt/media")));
        assert_eq!(a, socket_path_in(run, Path::new("/mnt//media/")));
        assert_ne!(a, socket_path_in(run, Path::new("/mnt/media2")));
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("m-") && name.ends_with(".sock"), "{name}");
        assert_eq!(name.len(), "m-".len() + 16 + ".sock".len());

        let long = PathBuf::from(format!("/{}", "x/".repeat(2000)));
        let p = socket_path_in(run, &long);
        assert!(p.as_os_str().len() < 108, "{p:?}");

        // FNV-1a 64 reference values.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn round_trip_status_and_errors() {
        let (_dir, sock, _server, fake) = start();
        let v = request_at(&sock, "status", &[], false, &mut |_| {}).unwrap();
        assert_eq!(v["pid"], 42);

        let err = request_at(&sock, "pin", &[PathBuf::from("x")], false, &mut |_| {}).unwrap_err();
        assert_eq!(err, "no room to pin");
        assert_eq!(*fake.seen.lock(), vec![PathBuf::from("x")]);

        let v = request_at(
            &sock,
            "unpin",
            &[PathBuf::from("a"), PathBuf::from("b")],
            false,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(v, json!({"unpinned": 2}));

        // A panicking handler gives an error answer, and the server carries on.
        let err =
            request_at(&sock, "evict", &[PathBuf::from("x")], false, &mut |_| {}).unwrap_err();
        assert!(err.contains("internal error"), "{err}");
        assert!(
            request_at(&sock, "unmount", &[], false, &mut |_| {})
                .unwrap()
                .is_null()
        );

        let err = request_at(&sock, "frobnicate", &[], false, &mut |_| {}).unwrap_err();
        assert!(err.contains("unknown command"), "{err}");
    }

    #[test]
    fn progress_comes_before_the_result() {
        let (_dir, sock, _server, _fake) = start();
        let lines = raw(
            &sock,
            b"{\"cmd\":\"promote\",\"paths\":[\"a.mkv\"],\"wait\":true}\n",
        );
        assert_eq!(lines.len(), 4, "{lines:?}");
        for (i, l) in lines[..3].iter().enumerate() {
            assert_eq!(l["progress"]["bytes_done"], (i as u64 + 1) * 100, "{l}");
        }
        assert_eq!(
            lines[3],
            json!({"ok": true, "result": {"queued": 1, "failed": []}})
        );

        let mut seen = Vec::new();
        let v = request_at(
            &sock,
            "promote",
            &[PathBuf::from("a.mkv")],
            true,
            &mut |p| seen.push(p.clone()),
        )
        .unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(v["queued"], 1);
        assert_eq!(progress_line(&seen[0]), "a.mkv 33% (100 B / 300 B)");
    }

    #[test]
    fn malformed_requests_get_an_error_reply() {
        let (_dir, sock, _server, fake) = start();
        for bad in [
            &b"not json\n"[..],
            b"[1,2]\n",
            b"{\"paths\":[]}\n",
            b"{\"cmd\":7}\n",
            b"{\"cmd\":\"promote\",\"paths\":\"a\"}\n",
            b"{\"cmd\":\"promote\",\"paths\":[]}\n",
            b"{\"cmd\":\"promote\",\"paths\":[[300]]}\n",
            b"{\"cmd\":\"status\",\"wait\":1}\n",
            b"\xff\xfe\n",
        ] {
            let lines = raw(&sock, bad);
            assert_eq!(lines.len(), 1, "{bad:?}: {lines:?}");
            assert_eq!(lines[0]["ok"], false, "{bad:?}");
            assert!(lines[0]["error"].is_string(), "{bad:?}");
        }
        // Over 1 MiB without a newline.
        let mut huge = b"{\"cmd\":\"status\",\"x\":\"".to_vec();
        huge.resize(MAX_REQUEST + 100, b'a');
        let lines = raw(&sock, &huge);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0]["error"].as_str().unwrap().contains("longer"),
            "{:?}",
            lines[0]
        );
        // A connection closed without a word gets nothing, and breaks nothing.
        assert!(raw(&sock, b"").is_empty());
        assert!(fake.seen.lock().is_empty());
        assert!(request_at(&sock, "status", &[], false, &mut |_| {}).is_ok());
    }

    #[test]
    fn paths_are_checked_and_normalised() {
        let (_dir, sock, _server, fake) = start();
        for bad in ["a/../b", "..", "/etc/passwd"] {
            let err = request_at(&sock, "promote", &[PathBuf::from(bad)], false, &mut |_| {})
                .unwrap_err();
            assert!(
                err.contains("..") || err.contains("absolute"),
                "{bad}: {err}"
            );
        }
        let lines = raw(
            &sock,
            b"{\"cmd\":\"promote\",\"paths\":[[47,101,116,99]]}\n",
        );
        assert!(
            lines[0]["error"].as_str().unwrap().contains("absolute"),
            "{lines:?}"
        );
        let lines = raw(&sock, b"{\"cmd\":\"promote\",\"paths\":[\"a\\u0000b\"]}\n");
        assert!(
            lines[0]["error"].as_str().unwrap().contains("NUL"),
            "{lines:?}"
        );
        assert!(fake.seen.lock().is_empty());

        let odd = PathBuf::from(OsString::from_vec(b"dir/caf\xe9.mkv".to_vec()));
        let paths = [
            PathBuf::from("./Show//S01/./e1.mkv"),
            PathBuf::new(),
            odd.clone(),
        ];
        request_at(&sock, "promote", &paths, false, &mut |_| {}).unwrap();
        assert_eq!(
            *fake.seen.lock(),
            vec![PathBuf::from("Show/S01/e1.mkv"), PathBuf::new(), odd]
        );
    }

    #[test]
    fn socket_file_lifecycle() {
        let (dir, sock, server, _fake) = start();
        assert_eq!(server.socket_path(), sock);
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o666);

        // A live daemon on the socket: refused.
        let err = serve_at(&sock, Arc::new(Fake::default())).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);

        drop(server);
        assert!(!sock.exists(), "socket left behind");

        // A stale socket file (its listener gone) is replaced.
        drop(UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        let server = serve_at(&sock, Arc::new(Fake::default())).unwrap();
        assert!(request_at(&sock, "status", &[], false, &mut |_| {}).is_ok());
        drop(server);

        // Nobody there: the client says so.
        let err = request_at(&sock, "status", &[], false, &mut |_| {}).unwrap_err();
        assert!(err.contains("no daemon listens"), "{err}");

        // A file that is not a socket is not removed.
        let plain = dir.path().join("plain.sock");
        std::fs::write(&plain, b"x").unwrap();
        assert!(serve_at(&plain, Arc::new(Fake::default())).is_err());
        assert!(plain.exists());
    }

    #[test]
    fn locate_picks_the_deepest_cachefs_mount() {
        let text = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
                    2 1 0:40 / /mnt/media rw - fuse.cachefs /srv/hdd rw\n\
                    3 2 0:41 / /mnt/media/inner\\040x rw - fuse.cachefs /srv/other rw\n\
                    4 1 0:42 / /mnt/mediax rw - fuse.cachefs /srv/x rw\n";
        let mounts = crate::mountinfo::parse_mountinfo(text);
        let got = |p: &str| locate_in(&mounts, Path::new(p));
        assert_eq!(
            got("/mnt/media/Show/a.mkv"),
            Some((PathBuf::from("/mnt/media"), PathBuf::from("Show/a.mkv")))
        );
        assert_eq!(
            got("/mnt/media"),
            Some((PathBuf::from("/mnt/media"), PathBuf::new()))
        );
        assert_eq!(
            got("/mnt/media/inner x/f"),
            Some((PathBuf::from("/mnt/media/inner x"), PathBuf::from("f")))
        );
        assert_eq!(
            got("/mnt/mediax/f").unwrap().0,
            PathBuf::from("/mnt/mediax")
        );
        assert_eq!(got("/mnt"), None);
        assert_eq!(got("/home/x"), None);

        let err = locate(Path::new("/")).unwrap_err();
        assert_eq!(err, "/ is not under a cachefs mount");
    }

    #[test]
    fn text_output() {
        assert_eq!(fmt_bytes(0), "0 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(330 << 20), "330 MiB");
        assert_eq!(fmt_bytes(500 << 30), "500 GiB");
        assert_eq!(
            progress_line(
                &json!({"path": "Show/S01E02.mkv", "bytes_done": 315u64 << 20, "bytes_total": 700u64 << 20})
            ),
            "Show/S01E02.mkv 45% (315 MiB / 700 MiB)"
        );
        assert_eq!(
            progress_line(&json!({"path": "x", "error": "EIO"})),
            "x: failed: EIO"
        );
        let r = json!({"queued": 2, "failed": [{"path": "b", "error": "gone"}, "c"]});
        assert_eq!(
            summary("promote", Path::new("/m"), &r),
            "promote /m: queued 2, failed 2"
        );
        assert_eq!(
            failures(&r),
            vec![
                (PathBuf::from("b"), Some("gone".to_string())),
                (PathBuf::from("c"), None)
            ]
        );
        assert_eq!(failed_count(&json!({"failed": 0})), 0);
        assert_eq!(
            summary("evict", Path::new("/m"), &Value::Null),
            "evict /m: done"
        );

        let s = json!({
            "mountpoint": "/mnt/media", "source": "/mnt/hdd", "cache": "/ssd", "pid": 9,
            "passthrough": true, "cached_files": 2, "cached_bytes": 2048, "pinned_files": 1,
            "max_size": 1u64 << 30, "min_free": 10u64 << 30, "hits": 3, "misses": 1,
            "promotions_done": 2, "promotions_failed": 0, "queued": 1, "evictions": 0,
            "in_flight": [{"path": "a", "bytes_done": 0, "bytes_total": 10}],
        });
        let t = status_text(Path::new("/mnt/media"), &s);
        assert!(
            t.starts_with("cachefs mounted at /mnt/media (daemon pid 9)\n"),
            "{t}"
        );
        assert!(t.contains("2 files, 2.0 KiB (1 pinned)"), "{t}");
        assert!(t.contains("3 hits, 1 misses (75% from cache)"), "{t}");
        assert!(t.contains("    a 0% (0 B / 10 B)\n"), "{t}");
    }
}
