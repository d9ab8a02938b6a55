//! The daemon's side of the control socket: the listener thread, one thread per
//! connection (bounded), request validation (size, JSON, relative paths without `..`,
//! privileged commands only for root or the daemon's user), and dispatch to the
//! [`Handler`] the daemon implements.
//!
//! Any local user may connect (an `allow_other` mount is every user's), so a hostile one
//! is planned for: a user holds at most [`MAX_CONNECTIONS_PER_USER`] connections and
//! all users together leave [`RESERVED_FOR_ROOT`] free for root; a request line must be
//! whole within [`REQUEST_TIMEOUT`] in total (not per read, so trickling bytes does not
//! keep a connection); a user's requests are rate-limited by a token bucket per uid.
//! What a user may promote is the handler's business: it is given the [`Peer`].

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::proto::{
    self, Cmd, Evicted, Frame, MAX_REQUEST, Pinned, Progress, Promoted, Reply, Request, Restarting,
    Status, Stopping, Unpinned, WRITE_TIMEOUT,
};
use super::socket_path;

/// Connections served at once; more get an error reply. Any local user may connect, so one
/// must not be able to make the daemon start threads without bound.
const MAX_CONNECTIONS: usize = 64;

/// Connections one unprivileged user may hold at once.
const MAX_CONNECTIONS_PER_USER: usize = 8;

/// Connections unprivileged users together can never take: root can always unmount.
const RESERVED_FOR_ROOT: usize = 8;

/// How long the daemon waits for a connection's whole request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An unprivileged user's requests: a burst of this many, then [`REQUESTS_PER_SEC`].
const REQUEST_BURST: f64 = 32.0;
const REQUESTS_PER_SEC: f64 = 8.0;

/// Who is at the other end of a connection (SO_PEERCRED, as of its connect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Peer {
    fn of(stream: &UnixStream) -> io::Result<Peer> {
        let c = rustix::net::sockopt::socket_peercred(stream)?;
        Ok(Peer {
            uid: c.uid.as_raw(),
            gid: c.gid.as_raw(),
            pid: c.pid.as_raw_nonzero().get() as u32,
        })
    }

    /// Root, or the user the daemon runs as: may do anything, and is never limited.
    pub fn is_privileged(&self) -> bool {
        self.uid == 0 || self.uid == crate::sys::geteuid()
    }
}

/// What the daemon does for each command. Paths are relative to the mount's root, already
/// checked: no `..`, not absolute, `.` components removed; the empty path is the root.
/// An `Err` is the message the client shows.
pub trait Handler: Send + Sync + 'static {
    /// The `cachefs status --json` object.
    fn status(&self) -> Status;
    /// Queue (and with `wait`, wait for) promotion of the files at or below `paths`, for
    /// `peer`, who may promote only what it can read itself. `progress` may be called
    /// repeatedly while waiting; each call is one progress line.
    fn promote(
        &self,
        peer: &Peer,
        paths: &[PathBuf],
        wait: bool,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Promoted, String>;
    fn pin(&self, paths: &[PathBuf]) -> Result<Pinned, String>;
    fn unpin(&self, paths: &[PathBuf]) -> Result<Unpinned, String>;
    fn evict(&self, paths: &[PathBuf]) -> Result<Evicted, String>;
    /// Starts the graceful stop. The reply is written after this returns, so this must
    /// return (not exit the process) once the stop is under way; the client then waits for
    /// the mount to leave mountinfo.
    fn unmount(&self) -> Result<Stopping, String>;
    /// Starts a live restart into `binary` (absolute; `None`: the binary the daemon was
    /// started as): checks it, pauses the FUSE workers, and returns; the process then
    /// becomes the new binary on the same connection. An error leaves the daemon serving.
    /// `options`: mount options (`-o`) the successor takes on top of the running ones.
    fn restart(&self, binary: Option<&Path>, options: Option<&str>) -> Result<Restarting, String>;
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

/// What a connection may cost the daemon; tests shorten the timeout.
#[derive(Clone, Copy)]
struct Limits {
    request_timeout: Duration,
}

const LIMITS: Limits = Limits {
    request_timeout: REQUEST_TIMEOUT,
};

/// [`serve`] on an explicit socket path (the directory must exist).
fn serve_at(path: &Path, handler: Arc<dyn Handler>) -> io::Result<Server> {
    serve_with(path, handler, LIMITS)
}

fn serve_with(path: &Path, handler: Arc<dyn Handler>, limits: Limits) -> io::Result<Server> {
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
            .spawn(move || accept_loop(listener, handler, stop, limits))
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

/// Open connections, by uid; and the request buckets of unprivileged uids.
#[derive(Default)]
struct Users {
    open: HashMap<u32, usize>,
    total: usize,
    buckets: HashMap<u32, Bucket>,
}

/// A token bucket: `tokens` requests may be made now; it refills with time.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Users {
    /// Takes a connection slot for `peer`, or says why not.
    fn admit(&mut self, peer: Option<Peer>) -> Result<(), &'static str> {
        let privileged = peer.is_some_and(|p| p.is_privileged());
        let uid = peer.map_or(u32::MAX, |p| p.uid);
        let busy = "the daemon is busy with too many control connections; try again";
        if self.total >= MAX_CONNECTIONS
            || (!privileged && self.total >= MAX_CONNECTIONS - RESERVED_FOR_ROOT)
        {
            return Err(busy);
        }
        let mine = self.open.entry(uid).or_default();
        if !privileged && *mine >= MAX_CONNECTIONS_PER_USER {
            return Err("too many control connections from your user at once; try again");
        }
        *mine += 1;
        self.total += 1;
        Ok(())
    }

    fn release(&mut self, uid: u32) {
        self.total -= 1;
        if let Some(n) = self.open.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(&uid);
            }
        }
    }

    /// Whether an unprivileged `uid` may make a request now (and takes a token).
    fn allow(&mut self, uid: u32, now: Instant) -> bool {
        // Full buckets are forgotten, so the map holds only users who asked recently.
        if self.buckets.len() > 1024 {
            let full = |b: &Bucket| {
                b.tokens + now.duration_since(b.at).as_secs_f64() * REQUESTS_PER_SEC
                    >= REQUEST_BURST
            };
            self.buckets.retain(|_, b| !full(b));
        }
        let b = self.buckets.entry(uid).or_insert(Bucket {
            tokens: REQUEST_BURST,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * REQUESTS_PER_SEC;
        b.tokens = (b.tokens + refill).min(REQUEST_BURST);
        b.at = now;
        if b.tokens < 1.0 {
            return false;
        }
        b.tokens -= 1.0;
        true
    }
}

fn accept_loop(
    listener: UnixListener,
    handler: Arc<dyn Handler>,
    stop: Arc<AtomicBool>,
    limits: Limits,
) {
    let users = Arc::new(Mutex::new(Users::default()));
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
        let peer = Peer::of(&stream).ok();
        if let Err(why) = users.lock().admit(peer) {
            refuse(&stream, why);
            continue;
        }
        let guard = ActiveGuard {
            users: users.clone(),
            uid: peer.map_or(u32::MAX, |p| p.uid),
        };
        let handler = handler.clone();
        let spawned = std::thread::Builder::new()
            .name("control-conn".into())
            .spawn(move || {
                let guard = guard;
                serve_connection(&stream, &*handler, peer, &guard.users, limits);
            });
        if let Err(e) = spawned {
            tracing::warn!("control socket: cannot start a connection thread: {e}");
        }
    }
}

/// Gives the connection's slot back, however its thread ends.
struct ActiveGuard {
    users: Arc<Mutex<Users>>,
    uid: u32,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.users.lock().release(self.uid);
    }
}

/// Writes one encoded line; a client that has gone is only worth a debug line.
fn send(mut stream: &UnixStream, line: io::Result<Vec<u8>>) -> io::Result<()> {
    let sent = line.and_then(|l| stream.write_all(&l));
    if let Err(e) = &sent {
        tracing::debug!("control socket: cannot reply: {e}");
    }
    sent
}

/// The final answer, for any command's result type.
fn answer<R: serde::Serialize>(result: Result<R, String>) -> io::Result<Vec<u8>> {
    Reply::Done(result).encode()
}

fn refuse(stream: &UnixStream, msg: impl Into<String>) {
    let _ = send(stream, answer::<()>(Err(msg.into())));
}

fn serve_connection(
    stream: &UnixStream,
    handler: &dyn Handler,
    peer: Option<Peer>,
    users: &Mutex<Users>,
    limits: Limits,
) {
    let line = match read_request(stream, limits.request_timeout) {
        Ok(Some(line)) => line,
        Ok(None) => return, // connected and closed without a word
        Err(msg) => return refuse(stream, msg),
    };
    let req = match Request::decode(&line).and_then(validate) {
        Ok(r) => r,
        Err(msg) => return refuse(stream, msg),
    };
    tracing::debug!("control request from {peer:?}: {req:?}");
    // Without its credentials a peer is nobody in particular: the least privileged.
    let Some(peer) = peer else {
        return refuse(
            stream,
            "cannot tell which user is asking (SO_PEERCRED failed)",
        );
    };
    if req.cmd.is_privileged() && !peer.is_privileged() {
        return refuse(
            stream,
            "permission denied: only root (or the daemon's user) may unmount, restart, evict, pin or unpin",
        );
    }
    if !peer.is_privileged() && !users.lock().allow(peer.uid, Instant::now()) {
        return refuse(
            stream,
            format!(
                "too many requests from uid {}: at most {REQUESTS_PER_SEC} a second; try again",
                peer.uid
            ),
        );
    }

    // Once the client has gone, progress lines are dropped; the work itself goes on.
    let mut broken = false;
    let mut progress = |p: Progress| {
        if !broken && send(stream, Reply::<()>::Progress(p).encode()).is_err() {
            broken = true;
        }
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match req.cmd {
        Cmd::Status => answer(Ok(handler.status())),
        Cmd::Promote => answer(handler.promote(&peer, &req.paths, req.wait, &mut progress)),
        Cmd::Pin => answer(handler.pin(&req.paths)),
        Cmd::Unpin => answer(handler.unpin(&req.paths)),
        Cmd::Evict => answer(handler.evict(&req.paths)),
        Cmd::Unmount => answer(handler.unmount()),
        Cmd::Restart => answer(handler.restart(req.binary.as_deref(), req.options.as_deref())),
    }));
    match outcome {
        Ok(line) => {
            let _ = send(stream, line);
        }
        Err(_) => {
            tracing::error!("control socket: the handler panicked on {}", req.cmd);
            refuse(stream, "internal error in the daemon (see its log)");
        }
    }
}

/// Reads the request line: `Ok(None)` on a connection closed before any byte. (A last line
/// without a newline, from a client that shut down its side, is accepted.)
fn read_request(stream: &UnixStream, timeout: Duration) -> Result<Option<Vec<u8>>, String> {
    let mut buf = Vec::new();
    let mut reader = BufReader::new(Deadline {
        stream,
        end: Instant::now() + timeout,
    });
    match proto::read_line(&mut reader, MAX_REQUEST, &mut buf) {
        Ok(Frame::Line | Frame::Unterminated) => Ok(Some(buf)),
        Ok(Frame::Eof) => Ok(None),
        Ok(Frame::TooLong) => Err(format!("request longer than {MAX_REQUEST} bytes")),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(format!(
                "no complete request line within {} s",
                timeout.as_secs_f64()
            ))
        }
        Err(e) => Err(format!("cannot read the request: {e}")),
    }
}

/// Reads from a stream until a deadline for all the reads together: a socket's own read
/// timeout counts per read, so a client sending a byte now and then would never time out.
struct Deadline<'a> {
    stream: &'a UnixStream,
    end: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut s = self.stream;
        s.read(buf)
    }
}

/// A request as the handler may see it: every path made relative and safe, and paths
/// present where the command needs them.
fn validate(mut req: Request) -> Result<Request, String> {
    req.paths = req
        .paths
        .iter()
        .map(|p| check_relative(p))
        .collect::<Result<_, _>>()?;
    if req.cmd.takes_paths() && req.paths.is_empty() {
        return Err("no paths given".into());
    }
    Ok(req)
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

#[cfg(test)]
mod tests {
    use super::super::client::request_at;
    use super::*;
    use parking_lot::Mutex;
    use serde_json::{Value, json};
    use std::ffi::OsString;
    use std::io::BufRead;
    use std::os::unix::ffi::OsStringExt;

    /// A handler that records the paths it was given.
    #[derive(Default)]
    struct Fake {
        seen: Mutex<Vec<PathBuf>>,
    }

    fn fake_status() -> Status {
        Status {
            cache: "/ssd".into(),
            cache_usable: true,
            hits: 3,
            misses: 1,
            mountpoint: "/mnt/media".into(),
            pid: 42,
            source: "/hdd".into(),
            ..Status::default()
        }
    }

    impl Handler for Fake {
        fn status(&self) -> Status {
            fake_status()
        }
        fn promote(
            &self,
            _peer: &Peer,
            paths: &[PathBuf],
            wait: bool,
            progress: &mut dyn FnMut(Progress),
        ) -> Result<Promoted, String> {
            self.seen.lock().extend_from_slice(paths);
            if wait {
                for i in 1..=3u64 {
                    progress(Progress {
                        bytes_done: i * 100,
                        bytes_total: 300,
                        elapsed_ms: 0,
                        path: "a.mkv".into(),
                    });
                }
            }
            Ok(Promoted {
                already_cached: 0,
                failed: Vec::new(),
                files: paths.len() as u64,
                queued: paths.len() as u64,
            })
        }
        fn pin(&self, paths: &[PathBuf]) -> Result<Pinned, String> {
            self.seen.lock().extend_from_slice(paths);
            Err("no room to pin".into())
        }
        fn unpin(&self, paths: &[PathBuf]) -> Result<Unpinned, String> {
            Ok(Unpinned {
                unpinned: paths.len() as u64,
            })
        }
        fn evict(&self, _: &[PathBuf]) -> Result<Evicted, String> {
            panic!("evict blew up");
        }
        fn unmount(&self) -> Result<Stopping, String> {
            Ok(Stopping { stopping: true })
        }
        fn restart(&self, _: Option<&Path>, _: Option<&str>) -> Result<Restarting, String> {
            Err("no restart here".into())
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

    fn req(cmd: Cmd, paths: &[&str], wait: bool) -> Request {
        let paths: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
        Request::new(cmd, &paths, wait)
    }

    #[test]
    fn round_trip_status_and_errors() {
        let (_dir, sock, _server, fake) = start();
        let s: Status = request_at(&sock, &req(Cmd::Status, &[], false), &mut |_| {}).unwrap();
        assert_eq!(s.pid, 42);

        let err =
            request_at::<Pinned>(&sock, &req(Cmd::Pin, &["x"], false), &mut |_| {}).unwrap_err();
        assert_eq!(err, "no room to pin");
        assert_eq!(*fake.seen.lock(), vec![PathBuf::from("x")]);

        let v: Unpinned =
            request_at(&sock, &req(Cmd::Unpin, &["a", "b"], false), &mut |_| {}).unwrap();
        assert_eq!(v, Unpinned { unpinned: 2 });

        // A panicking handler gives an error answer, and the server carries on.
        let err =
            request_at::<Evicted>(&sock, &req(Cmd::Evict, &["x"], false), &mut |_| {}).unwrap_err();
        assert!(err.contains("internal error"), "{err}");
        let v: Stopping = request_at(&sock, &req(Cmd::Unmount, &[], false), &mut |_| {}).unwrap();
        assert!(v.stopping);

        // A client cannot send an unknown command; another program can.
        let lines = raw(&sock, b"{\"cmd\":\"frobnicate\"}\n");
        let err = lines[0]["error"].as_str().unwrap();
        assert!(err.contains("unknown command"), "{err}");

        // A result of another shape than the client expects is its error, not a panic.
        let err =
            request_at::<Status>(&sock, &req(Cmd::Unpin, &["a"], false), &mut |_| {}).unwrap_err();
        assert!(err.contains("malformed answer"), "{err}");
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
            json!({"ok": true, "result": {"already_cached": 0, "failed": [], "files": 1, "queued": 1}})
        );

        let mut seen = Vec::new();
        let v: Promoted = request_at(&sock, &req(Cmd::Promote, &["a.mkv"], true), &mut |p| {
            seen.push(p)
        })
        .unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(v.queued, 1);
        assert_eq!(
            super::super::render::progress_line(&seen[0]),
            "a.mkv 33% (100 B / 300 B)"
        );
    }

    #[test]
    fn malformed_requests_get_an_error_reply() {
        let (_dir, sock, _server, fake) = start();
        for bad in [
            &b"not json\n"[..],
            b"[1,2]\n",
            b"[\"status\"]\n",
            b"{\"paths\":[]}\n",
            b"{\"cmd\":7}\n",
            b"{\"cmd\":\"promote\",\"paths\":\"a\"}\n",
            b"{\"cmd\":\"promote\",\"paths\":[]}\n",
            b"{\"cmd\":\"promote\",\"paths\":[[300]]}\n",
            b"{\"cmd\":\"status\",\"wait\":1}\n",
            b"\xff\xfe\n",
            b"\n",
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
        assert!(request_at::<Status>(&sock, &req(Cmd::Status, &[], false), &mut |_| {}).is_ok());
    }

    #[test]
    fn paths_are_checked_and_normalised() {
        let (_dir, sock, _server, fake) = start();
        for bad in ["a/../b", "..", "/etc/passwd"] {
            let err = request_at::<Promoted>(&sock, &req(Cmd::Promote, &[bad], false), &mut |_| {})
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
        request_at::<Promoted>(
            &sock,
            &Request::new(Cmd::Promote, &paths, false),
            &mut |_| {},
        )
        .unwrap();
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
        let status = req(Cmd::Status, &[], false);
        assert!(request_at::<Status>(&sock, &status, &mut |_| {}).is_ok());
        drop(server);

        // Nobody there: the client says so.
        let err = request_at::<Status>(&sock, &status, &mut |_| {}).unwrap_err();
        assert!(err.contains("no daemon listens"), "{err}");

        // A file that is not a socket is not removed.
        let plain = dir.path().join("plain.sock");
        std::fs::write(&plain, b"x").unwrap();
        assert!(serve_at(&plain, Arc::new(Fake::default())).is_err());
        assert!(plain.exists());
    }

    fn user(uid: u32) -> Option<Peer> {
        Some(Peer {
            uid,
            gid: uid,
            pid: 1,
        })
    }

    /// A user holds at most MAX_CONNECTIONS_PER_USER at once, and all users together
    /// leave RESERVED_FOR_ROOT slots that only root may take.
    #[test]
    fn connection_slots_per_user_and_reserved_for_root() {
        let mut u = Users::default();
        for _ in 0..MAX_CONNECTIONS_PER_USER {
            u.admit(user(1000)).unwrap();
        }
        let err = u.admit(user(1000)).unwrap_err();
        assert!(err.contains("your user"), "{err}");
        // Unknown credentials count as one more unprivileged user.
        u.admit(None).unwrap();
        let mut uid = 2000;
        while u.total < MAX_CONNECTIONS - RESERVED_FOR_ROOT {
            u.admit(user(uid)).unwrap();
            uid += 1;
        }
        assert!(u.admit(user(uid)).unwrap_err().contains("busy"));
        for _ in 0..RESERVED_FOR_ROOT {
            u.admit(user(0)).unwrap();
        }
        assert!(u.admit(user(0)).unwrap_err().contains("busy"));
        u.release(1000);
        u.release(0);
        assert!(u.admit(user(1000)).unwrap_err().contains("busy"));
        u.admit(user(0)).unwrap();
        u.admit(user(0)).unwrap();
        assert_eq!(u.total, MAX_CONNECTIONS);
    }

    /// An unprivileged uid's requests: a burst, then a steady rate; others unaffected.
    #[test]
    fn requests_are_rate_limited_per_uid() {
        let mut u = Users::default();
        let t = Instant::now();
        let burst = REQUEST_BURST as usize;
        assert!((0..burst).all(|_| u.allow(1000, t)));
        assert!(!u.allow(1000, t));
        assert!(u.allow(1001, t), "another user has a bucket of its own");
        let later = t + Duration::from_secs_f64(1.0 / REQUESTS_PER_SEC);
        assert!(u.allow(1000, later));
        assert!(!u.allow(1000, later));
        let much_later = t + Duration::from_secs(3600);
        assert!((0..burst).all(|_| u.allow(1000, much_later)));
        assert!(
            !u.allow(1000, much_later),
            "the bucket holds no more than a burst"
        );
    }

    /// The request timeout is for the whole line: a client that sends half a line and
    /// sleeps, or trickles a byte at a time, is answered with the timeout error on time,
    /// and the server goes on serving others.
    #[test]
    fn request_timeout_is_for_the_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("m.sock");
        let limits = Limits {
            request_timeout: Duration::from_millis(600),
        };
        let _server = serve_with(&sock, Arc::new(Fake::default()), limits).unwrap();
        let half = UnixStream::connect(&sock).unwrap();
        (&half).write_all(b"{\"cmd\":\"sta").unwrap();
        let trickle = UnixStream::connect(&sock).unwrap();
        let t = Instant::now();
        let writer = trickle.try_clone().unwrap();
        let w = std::thread::spawn(move || {
            for _ in 0..40 {
                if (&writer).write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        for s in [&half, &trickle] {
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            assert!(v["error"].as_str().unwrap().contains("within"), "{v}");
        }
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        let _ = w.join();
        assert!(request_at::<Status>(&sock, &req(Cmd::Status, &[], false), &mut |_| {}).is_ok());
    }

    /// Connections beyond MAX_CONNECTIONS get the busy error at once, nothing crashes, and
    /// the slots come back when the clients go.
    #[test]
    fn connections_beyond_the_limit_are_refused_then_served() {
        let (_dir, sock, _server, _fake) = start();
        let held: Vec<UnixStream> = (0..MAX_CONNECTIONS)
            .map(|_| UnixStream::connect(&sock).unwrap())
            .collect();
        // The accept loop admits in order: wait until it has taken all of them.
        let mut refused = None;
        for _ in 0..100 {
            let extra = UnixStream::connect(&sock).unwrap();
            let mut line = String::new();
            BufReader::new(&extra).read_line(&mut line).unwrap();
            if line.contains("busy") {
                refused = Some(line);
                break;
            }
        }
        assert!(refused.is_some(), "never refused");
        drop(held);
        let mut ok = false;
        for _ in 0..100 {
            if request_at::<Status>(&sock, &req(Cmd::Status, &[], false), &mut |_| {}).is_ok() {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(ok, "slots never came back");
    }
}
