//! The daemon's side of the control socket: the listener thread, one thread per
//! connection (bounded), request validation (size, JSON, relative paths without `..`,
//! privileged commands only for root or the daemon's user), and dispatch to the
//! [`Handler`] the daemon implements.

use std::io::{self, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::proto::{
    self, Cmd, Evicted, Frame, MAX_REQUEST, Pinned, Progress, Promoted, Reply, Request, Status,
    Stopping, Unpinned, WRITE_TIMEOUT,
};
use super::socket_path;

/// Connections served at once; more get an error reply. Any local user may connect, so one
/// must not be able to make the daemon start threads without bound.
const MAX_CONNECTIONS: usize = 64;

/// How long the daemon waits for a connection's request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the daemon does for each command. Paths are relative to the mount's root, already
/// checked: no `..`, not absolute, `.` components removed; the empty path is the root.
/// An `Err` is the message the client shows.
pub trait Handler: Send + Sync + 'static {
    /// The `cachefs status --json` object.
    fn status(&self) -> Status;
    /// Queue (and with `wait`, wait for) promotion of the files at or below `paths`.
    /// `progress` may be called repeatedly while waiting; each call is one progress line.
    fn promote(
        &self,
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
            refuse(
                &stream,
                "the daemon is busy with too many control connections; try again",
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

fn serve_connection(stream: &UnixStream, handler: &dyn Handler) {
    let line = match read_request(stream) {
        Ok(Some(line)) => line,
        Ok(None) => return, // connected and closed without a word
        Err(msg) => return refuse(stream, msg),
    };
    let req = match Request::decode(&line).and_then(validate) {
        Ok(r) => r,
        Err(msg) => return refuse(stream, msg),
    };
    tracing::debug!("control request: {req:?}");
    if req.cmd.is_privileged() {
        let peer = crate::sys::peer_uid(std::os::fd::AsFd::as_fd(stream));
        if !matches!(peer, Ok(uid) if uid == 0 || uid == crate::sys::geteuid()) {
            return refuse(
                stream,
                "permission denied: only root (or the daemon's user) may unmount, evict, pin or unpin",
            );
        }
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
        Cmd::Promote => answer(handler.promote(&req.paths, req.wait, &mut progress)),
        Cmd::Pin => answer(handler.pin(&req.paths)),
        Cmd::Unpin => answer(handler.unpin(&req.paths)),
        Cmd::Evict => answer(handler.evict(&req.paths)),
        Cmd::Unmount => answer(handler.unmount()),
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
fn read_request(stream: &UnixStream) -> Result<Option<Vec<u8>>, String> {
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let mut buf = Vec::new();
    match proto::read_line(&mut BufReader::new(stream), MAX_REQUEST, &mut buf) {
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
                REQUEST_TIMEOUT.as_secs()
            ))
        }
        Err(e) => Err(format!("cannot read the request: {e}")),
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
}
