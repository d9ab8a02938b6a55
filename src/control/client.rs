//! The client's side of the control socket: finding the cachefs mount a path is under
//! ([`locate`]), and sending one request to its daemon and reading the answer
//! ([`request`]).

use std::fmt;
use std::io::{self, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::proto::{self, Cmd, Frame, MAX_REPLY, Progress, Reply, Request, Status, WRITE_TIMEOUT};
use super::socket_path;
use crate::mountinfo::MountInfo;

/// How long the client waits for an answer to a command that does not wait for work.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request failed; each carries the message to show.
#[derive(Debug)]
pub enum RequestError {
    /// Nobody listens on the socket.
    Unreachable(String),
    /// The daemon closed the connection without a final answer.
    Closed(String),
    /// The daemon's own `{"ok": false}` error.
    Daemon(String),
    /// Any other failure.
    Failed(String),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Unreachable(m)
            | RequestError::Closed(m)
            | RequestError::Daemon(m)
            | RequestError::Failed(m) => f.write_str(m),
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
fn locate_in(mounts: &[MountInfo], path: &Path) -> Option<(PathBuf, PathBuf)> {
    let best = mounts
        .iter()
        .filter(|m| m.fstype == "fuse.cachefs" && path.starts_with(&m.target))
        // On a tie (mounts stacked on one target) the last, the one on top, wins.
        .max_by_key(|m| m.target.components().count())?;
    let rel = path.strip_prefix(&best.target).ok()?.to_path_buf();
    Some((best.target.clone(), rel))
}

/// `path` made absolute and with `.` and `..` removed, without touching the filesystem.
pub fn lexical_absolute(path: &Path) -> PathBuf {
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

/// Sends `req` to the daemon serving `mountpoint` (as [`locate`] returns it) and returns its
/// result, decoded as `R`: the type that answers `req.cmd` (`Status` for status, `Promoted`
/// for promote, and so on). Progress lines go to `on_progress` as they arrive.
pub fn request<R: DeserializeOwned>(
    mountpoint: &Path,
    req: &Request,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<R, RequestError> {
    let socket = socket_path(mountpoint);
    let stream = connect(&socket).map_err(|e| match e {
        RequestError::Unreachable(_) => RequestError::Unreachable(format!(
            "no cachefs daemon answers for {} (socket {}): is it mounted?",
            mountpoint.display(),
            socket.display()
        )),
        other => other,
    })?;
    exchange(&stream, req, on_progress)
}

/// The status of the daemon serving `mountpoint`.
pub fn status(mountpoint: &Path) -> Result<Status, RequestError> {
    request(
        mountpoint,
        &Request::new(Cmd::Status, &[], false),
        &mut |_| {},
    )
}

/// [`request`] on an explicit socket path.
#[cfg(test)]
pub(super) fn request_at<R: DeserializeOwned>(
    socket: &Path,
    req: &Request,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<R, String> {
    let stream = connect(socket).map_err(|e| e.to_string())?;
    exchange(&stream, req, on_progress).map_err(|e| e.to_string())
}

fn connect(socket: &Path) -> Result<UnixStream, RequestError> {
    UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            RequestError::Unreachable(format!("no daemon listens on {}: {e}", socket.display()))
        }
        _ => RequestError::Failed(format!(
            "cannot connect to the cachefs daemon (socket {}): {e}",
            socket.display()
        )),
    })
}

fn exchange<R: DeserializeOwned>(
    mut stream: &UnixStream,
    req: &Request,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<R, RequestError> {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    req.encode()
        .and_then(|line| stream.write_all(&line))
        .map_err(|e| RequestError::Failed(format!("cannot send the request to the daemon: {e}")))?;
    // Waiting for work has no bound; anything else should answer promptly.
    let timeout = if req.wait || req.cmd == Cmd::Unmount {
        None
    } else {
        Some(REPLY_TIMEOUT)
    };
    let _ = stream.set_read_timeout(timeout);

    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        let frame =
            proto::read_line(&mut reader, MAX_REPLY, &mut buf).map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    RequestError::Failed(format!(
                        "the daemon did not answer within {} s",
                        REPLY_TIMEOUT.as_secs()
                    ))
                }
                _ => RequestError::Failed(format!("cannot read the daemon's answer: {e}")),
            })?;
        match frame {
            Frame::Line => {}
            Frame::TooLong => {
                return Err(RequestError::Failed(
                    "the daemon's answer is too long".into(),
                ));
            }
            Frame::Eof | Frame::Unterminated => {
                return Err(RequestError::Closed(
                    "the daemon closed the connection without an answer".into(),
                ));
            }
        }
        match Reply::<R>::decode(&buf).map_err(RequestError::Failed)? {
            Reply::Progress(p) => on_progress(p),
            Reply::Done(Ok(result)) => return Ok(result),
            Reply::Done(Err(msg)) => return Err(RequestError::Daemon(msg)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

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

    /// A "daemon" that reads the request line, answers with `answer` and closes; the
    /// client's error, or its result.
    fn answered_by(answer: Vec<u8>) -> Result<Status, String> {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("fake.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let daemon = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = Vec::new();
            let _ = proto::read_line(&mut BufReader::new(&s), 4096, &mut line);
            // The client stops reading at its limit and hangs up: a broken pipe is fine.
            let _ = s.write_all(&answer);
        });
        let got = request_at(&sock, &Request::new(Cmd::Status, &[], false), &mut |_| {});
        daemon.join().unwrap();
        got
    }

    #[test]
    fn a_bad_answer_is_an_error_not_a_panic() {
        for (answer, want) in [
            (&b"not json\n"[..], "malformed answer"),
            (
                b"{\"ok\":true,\"result\":{\"pid\":1}}\n",
                "malformed answer",
            ),
            (b"{\"progress\":{\"path\":7}}\n", "malformed answer"),
            (b"{\"ok\":true}\n", "malformed answer"),
            (b"{}\n", "malformed answer"),
            (b"\xff\n", "malformed answer"),
            (b"", "without an answer"),
            (b"{\"ok\":false,\"error\":\"x\"}", "without an answer"),
            (b"{\"ok\":false,\"error\":\"busy\"}\n", "busy"),
        ] {
            let err = answered_by(answer.to_vec()).unwrap_err();
            assert!(err.contains(want), "{answer:?}: {err}");
        }
        // One byte over the limit without a newline.
        let mut huge = b"{\"progress\":\"".to_vec();
        huge.resize(MAX_REPLY + 1, b'a');
        let err = answered_by(huge).unwrap_err();
        assert!(err.contains("too long"), "{err}");
    }
}
