//! The control socket's wire protocol: every message as a serde-derived type, and the
//! framing (one JSON object per line, bounded in length).
//!
//! Each JSON key the daemon or a client writes is a field name below and nowhere else, so
//! renaming one is a compile error in the code that builds or reads it, and the golden tests
//! at the bottom fail if a key docs/reference.md promises goes missing.
//!
//! Fields are declared in alphabetical order on purpose: before these types existed the
//! messages were `serde_json::Value` maps, which serialize with sorted keys, and declaration
//! order keeps the bytes on the wire (and `cachefs status --json`'s output) exactly as they
//! were. A client decodes a result strictly (every key below must be there), so a key added
//! later needs `#[serde(default)]`, or a new client could not read an older daemon's answer.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, BufRead, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// The longest request line the daemon reads; longer ones get an error reply.
pub const MAX_REQUEST: usize = 1 << 20;

/// The longest reply line the client reads (a status with many promotions in flight is the
/// largest answer; this is far above it).
pub const MAX_REPLY: usize = 64 << 20;

/// How long one line's write may block on a peer that does not read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// One command of the protocol; its wire name is [`Cmd::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Cmd {
    Status,
    Promote,
    Pin,
    Unpin,
    Evict,
    Unmount,
    Restart,
}

impl Cmd {
    pub const ALL: [Cmd; 7] = [
        Cmd::Status,
        Cmd::Promote,
        Cmd::Pin,
        Cmd::Unpin,
        Cmd::Evict,
        Cmd::Unmount,
        Cmd::Restart,
    ];

    /// The command's name on the wire, which is also the subcommand's name.
    pub fn name(self) -> &'static str {
        match self {
            Cmd::Status => "status",
            Cmd::Promote => "promote",
            Cmd::Pin => "pin",
            Cmd::Unpin => "unpin",
            Cmd::Evict => "evict",
            Cmd::Unmount => "unmount",
            Cmd::Restart => "restart",
        }
    }

    /// Commands that can take the mount or cached copies away from other users.
    pub fn is_privileged(self) -> bool {
        matches!(
            self,
            Cmd::Unmount | Cmd::Restart | Cmd::Evict | Cmd::Pin | Cmd::Unpin
        )
    }

    /// Commands that act on paths, and so need at least one.
    pub fn takes_paths(self) -> bool {
        matches!(self, Cmd::Promote | Cmd::Pin | Cmd::Unpin | Cmd::Evict)
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Cmd> for &'static str {
    fn from(cmd: Cmd) -> &'static str {
        cmd.name()
    }
}

impl TryFrom<String> for Cmd {
    type Error = String;
    fn try_from(s: String) -> Result<Cmd, String> {
        Cmd::ALL
            .into_iter()
            .find(|c| c.name() == s)
            // Escaped: the client prints this line, and a newline or an escape sequence
            // in it would be someone else's text on the user's terminal.
            .ok_or_else(|| format!("unknown command '{}'", s.escape_debug()))
    }
}

/// What a client asks: `{"cmd": "promote", "paths": [...], "wait": false}`. `paths` and
/// `wait` may be missing or null (no paths, no waiting); other keys are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub cmd: Cmd,
    /// As the client gave them; the server checks them (relative, no `..`, no NUL).
    #[serde(default, with = "wire_paths")]
    pub paths: Vec<PathBuf>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub wait: bool,
    /// `restart`: the binary the daemon becomes (absolute); `None`: the one it was
    /// started as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<PathBuf>,
    /// `restart`: mount options the successor takes on top of the running ones (`-o`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
}

impl Request {
    pub fn new(cmd: Cmd, paths: &[PathBuf], wait: bool) -> Request {
        Request {
            cmd,
            paths: paths.to_vec(),
            wait,
            binary: None,
            options: None,
        }
    }

    /// The request line, newline included.
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        encode_line(self)
    }

    /// A request line (without its newline). The error is the reply's message.
    pub fn decode(line: &[u8]) -> Result<Request, String> {
        // A derived struct would also accept a JSON array of its fields; the protocol has
        // only objects.
        if line.trim_ascii_start().first() != Some(&b'{') {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
                    Ok(_) => "malformed request: expected a JSON object".into(),
                    Err(e) => format!("malformed request (not JSON): {e}"),
                },
            );
        }
        serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))
    }
}

/// One file's promotion as it goes: a `progress` line of `promote --wait`, and an item of
/// the status's `in_flight`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub bytes_done: u64,
    /// 0 until the copy starts (the size is read then).
    pub bytes_total: u64,
    /// Extra: milliseconds since the copy started (0: not started), for a rate and an ETA.
    #[serde(default)]
    pub elapsed_ms: u64,
    /// Relative to the mount's root; not UTF-8 bytes are replaced (U+FFFD).
    pub path: String,
}

/// The `cachefs status --json` object, whose keys docs/reference.md lists. The keys every
/// version has are `CONTRACT_KEYS` in the tests below; the ones marked "extra" are this
/// daemon's own additions (tests, the text status and the Prometheus metrics read them).
/// Counters count since the mount started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub cache: String,
    /// Extra: the cache filesystem's available and total bytes (statvfs; 0 when unknown).
    #[serde(default)]
    pub cache_fs_avail: u64,
    #[serde(default)]
    pub cache_fs_size: u64,
    /// Extra: bytes the daemon read from cached copies for callers (passthrough reads are
    /// not among them: see `passthrough_bytes`).
    #[serde(default)]
    pub cache_read_bytes: u64,
    /// Extra: false once the cache directory failed and everything is served from SOURCE.
    pub cache_usable: bool,
    pub cached_bytes: u64,
    pub cached_files: u64,
    pub evictions: u64,
    /// Extra: the daemon's descriptor limit.
    pub fd_limit: u64,
    /// Extra: the bound of its cache of SOURCE descriptors, and what that cache holds, keeps
    /// for open files, has reopened and has shed.
    /// Extra: times a successor took the mount over from a daemon that died (failover),
    /// since it was mounted.
    #[serde(default)]
    pub failovers: u64,
    pub fds_bound: u64,
    pub fds_cached: u64,
    pub fds_pinned: u64,
    pub fds_reopened: u64,
    pub fds_shed: u64,
    pub hits: u64,
    pub in_flight: Vec<Progress>,
    /// Extra: whether inodes are reopened by file handle (else by parent and name).
    pub inode_handles: bool,
    /// Extra: inodes the kernel remembers.
    pub inodes: u64,
    /// 0: no limit but `min_free`.
    pub max_size: u64,
    /// Extra: the metadata cache (`meta_ttl`): answers given from it, answers it could
    /// not give, objects it holds, and its TTL in seconds (0: off). Defaulted, so a
    /// client reads a daemon from before them.
    #[serde(default)]
    pub meta_hits: u64,
    #[serde(default)]
    pub meta_misses: u64,
    #[serde(default)]
    pub meta_nodes: u64,
    #[serde(default)]
    pub meta_ttl: u64,
    /// Extra: the address the Prometheus listener is bound to, "" when there is none;
    /// `metrics_error` says why when `metrics=` was given and the bind failed.
    #[serde(default)]
    pub metrics: String,
    #[serde(default)]
    pub metrics_error: String,
    /// In bytes, as it applies now (a percentage resolved against the filesystem's size).
    pub min_free: u64,
    pub misses: u64,
    pub mountpoint: String,
    pub passthrough: bool,
    /// Extra: opens the kernel serves by passthrough from a copy, and the sum of their
    /// files' sizes: what the copies offered, since those reads never reach the daemon.
    #[serde(default)]
    pub passthrough_bytes: u64,
    #[serde(default)]
    pub passthrough_opens: u64,
    pub pid: u32,
    pub pinned_files: u64,
    /// Extra: bytes of the copies published, and bytes every copy read from SOURCE
    /// (failed and cancelled ones too).
    #[serde(default)]
    pub promoted_bytes: u64,
    #[serde(default)]
    pub promoter_read_bytes: u64,
    pub promotions_done: u64,
    pub promotions_failed: u64,
    pub queued: u64,
    /// Extra: when this daemon's binary started serving (Unix milliseconds); a live
    /// restart keeps the pid and changes this.
    #[serde(default)]
    pub serving_since_ms: u64,
    pub source: String,
    /// Extra: whether SOURCE answers; when not, since when (unix seconds; 0 while it
    /// answers): a call to it has been in flight for longer than `lane::STALL`.
    #[serde(default = "answering")]
    pub source_answering: bool,
    /// Extra: calls to SOURCE in flight now.
    #[serde(default)]
    pub source_in_flight: u64,
    /// Extra: names resolved against SOURCE (lookups, readdirplus entries), not answered
    /// by the metadata cache; and bytes the daemon read from SOURCE for callers.
    #[serde(default)]
    pub source_lookups: u64,
    /// Extra: requests that needed SOURCE, by operation (`lane::Op`); what the cache
    /// and memory answered is not in here.
    #[serde(default)]
    pub source_ops: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub source_read_bytes: u64,
    #[serde(default)]
    pub source_stalled_since: u64,
    /// Extra: requests waiting for a thread to call SOURCE.
    #[serde(default)]
    pub source_waiting: u64,
}

fn answering() -> bool {
    true
}

impl Status {
    /// The one-line JSON `cachefs status --json` prints.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}

/// A file that failed to promote while `promote --wait` waited for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub error: String,
    /// Relative to the mount's root; not UTF-8 bytes are replaced (U+FFFD).
    pub path: String,
}

/// `promote`'s result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promoted {
    /// Files that already had a valid copy, so were not queued.
    pub already_cached: u64,
    /// Only filled when the client waited.
    pub failed: Vec<Failure>,
    /// Regular files at or below the paths given.
    pub files: u64,
    pub queued: u64,
}

/// `pin`'s result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pinned {
    pub pinned: u64,
    /// Pinned files not cached yet, queued for promotion.
    pub queued: u64,
}

/// `unpin`'s result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unpinned {
    pub unpinned: u64,
}

/// `evict`'s result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evicted {
    pub evicted: u64,
}

/// `unmount`'s result: the stop is under way (the client then watches mountinfo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopping {
    pub stopping: bool,
}

/// The answer to `restart`: the daemon has paused and is about to become `binary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restarting {
    pub binary: String,
}

/// One line from the daemon: zero or more progress reports, then one final answer, the
/// command's result `R` or an error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<R> {
    Progress(Progress),
    Done(Result<R, String>),
}

/// [`Reply`] as it is on the wire: `{"progress": ...}`, `{"ok": true, "result": ...}` or
/// `{"error": "...", "ok": false}`.
#[derive(Serialize, Deserialize)]
struct ReplyLine<R> {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ok: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<Progress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<R>,
}

impl<R: Serialize> Reply<R> {
    /// The reply line, newline included.
    pub fn encode(self) -> io::Result<Vec<u8>> {
        let (error, ok, progress, result) = match self {
            Reply::Progress(p) => (None, None, Some(p), None),
            Reply::Done(Ok(r)) => (None, Some(true), None, Some(r)),
            Reply::Done(Err(e)) => (Some(e), Some(false), None, None),
        };
        encode_line(&ReplyLine {
            error,
            ok,
            progress,
            result,
        })
    }
}

impl<R: DeserializeOwned> Reply<R> {
    /// A reply line (without its newline). The error says what is wrong with it.
    pub fn decode(line: &[u8]) -> Result<Reply<R>, String> {
        let malformed = |why: &dyn fmt::Display| format!("malformed answer from the daemon: {why}");
        let line: ReplyLine<R> = serde_json::from_slice(line).map_err(|e| malformed(&e))?;
        if let Some(p) = line.progress {
            return Ok(Reply::Progress(p));
        }
        match (line.ok, line.result) {
            (Some(true), Some(r)) => Ok(Reply::Done(Ok(r))),
            (Some(true), None) => Err(malformed(&"no result")),
            (Some(false), _) => Ok(Reply::Done(Err(line
                .error
                .unwrap_or_else(|| "the daemon reported an error without a message".into())))),
            (None, _) => Err(malformed(&"neither progress nor a final answer")),
        }
    }
}

fn encode_line<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    Ok(line)
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole line; the buffer holds it without its newline.
    Line,
    /// The peer closed after some bytes but before a newline; the buffer holds them.
    Unterminated,
    /// The peer closed before any byte.
    Eof,
    /// More than the limit without a newline.
    TooLong,
}

/// Reads one line of at most `max` bytes (newline not counted) into `buf`, which it clears.
/// Reads at most `max + 1` bytes, so a peer cannot make it buffer without bound.
pub fn read_line(reader: &mut impl BufRead, max: usize, buf: &mut Vec<u8>) -> io::Result<Frame> {
    buf.clear();
    reader.take(max as u64 + 1).read_until(b'\n', buf)?;
    Ok(if buf.last() == Some(&b'\n') {
        buf.pop();
        Frame::Line
    } else if buf.len() > max {
        Frame::TooLong
    } else if buf.is_empty() {
        Frame::Eof
    } else {
        Frame::Unterminated
    })
}

/// A missing key and `null` both mean the type's default.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Paths on the wire: a JSON string when the path is UTF-8, else an array of its bytes
/// (Linux names are bytes, JSON strings are not). A missing or null list is empty.
mod wire_paths {
    use super::*;

    pub fn serialize<S: Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(paths.iter().map(|p| WirePath(p)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
        let paths: Option<Vec<OwnedWirePath>> = Option::deserialize(d)?;
        Ok(paths.unwrap_or_default().into_iter().map(|p| p.0).collect())
    }

    struct WirePath<'a>(&'a Path);

    impl Serialize for WirePath<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self.0.to_str() {
                Some(text) => s.serialize_str(text),
                None => s.collect_seq(self.0.as_os_str().as_bytes()),
            }
        }
    }

    struct OwnedWirePath(PathBuf);

    impl<'de> Deserialize<'de> for OwnedWirePath {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(PathVisitor)
        }
    }

    struct PathVisitor;

    impl<'de> Visitor<'de> for PathVisitor {
        type Value = OwnedWirePath;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a path: a string, or an array of bytes")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<OwnedWirePath, E> {
            Ok(OwnedWirePath(PathBuf::from(s)))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OwnedWirePath, A::Error> {
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element::<u8>()? {
                bytes.push(b);
            }
            Ok(OwnedWirePath(PathBuf::from(OsString::from_vec(bytes))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::collections::BTreeSet;

    /// The keys docs/reference.md's status JSON lists: every one must be there.
    const CONTRACT_KEYS: [&str; 17] = [
        "mountpoint",
        "source",
        "cache",
        "pid",
        "passthrough",
        "cached_files",
        "cached_bytes",
        "pinned_files",
        "max_size",
        "min_free",
        "hits",
        "misses",
        "promotions_done",
        "promotions_failed",
        "queued",
        "in_flight",
        "evictions",
    ];

    /// What the daemon sends beyond the contract (tests and the text status read them).
    const EXTRA_KEYS: [&str; 31] = [
        "cache_fs_avail",
        "cache_fs_size",
        "cache_read_bytes",
        "metrics",
        "metrics_error",
        "passthrough_bytes",
        "passthrough_opens",
        "promoted_bytes",
        "promoter_read_bytes",
        "source_lookups",
        "source_read_bytes",
        "source_answering",
        "source_stalled_since",
        "source_in_flight",
        "source_waiting",
        "source_ops",
        "cache_usable",
        "meta_hits",
        "meta_misses",
        "meta_nodes",
        "meta_ttl",
        "inode_handles",
        "fd_limit",
        "fds_bound",
        "fds_cached",
        "fds_pinned",
        "fds_reopened",
        "fds_shed",
        "inodes",
        "serving_since_ms",
        "failovers",
    ];

    /// docs/reference.md, the reference that ships with the code, explains every key the
    /// status object has.
    #[test]
    fn the_reference_explains_every_status_key() {
        let doc = include_str!("../../docs/reference.md");
        let Value::Object(keys) = serde_json::to_value(sample_status()).unwrap() else {
            panic!("status is an object");
        };
        for key in keys.keys() {
            assert!(
                doc.contains(&format!("`\"{key}\"`")),
                "{key} is not in docs/reference.md"
            );
        }
    }

    fn sample_status() -> Status {
        Status {
            cache: "/ssd/cachefs".into(),
            cache_fs_avail: 50,
            cache_fs_size: 100,
            cache_read_bytes: 1000,
            cache_usable: true,
            cached_bytes: 123_456_789,
            cached_files: 12,
            evictions: 3,
            fd_limit: 1024,
            fds_bound: 480,
            fds_cached: 17,
            fds_pinned: 2,
            fds_reopened: 5,
            fds_shed: 0,
            hits: 40,
            in_flight: vec![Progress {
                bytes_done: 1_048_576,
                bytes_total: 734_003_200,
                elapsed_ms: 1500,
                path: "Show/S01E02.mkv".into(),
            }],
            inode_handles: true,
            inodes: 99,
            max_size: 536_870_912_000,
            meta_hits: 0,
            meta_misses: 0,
            meta_nodes: 0,
            meta_ttl: 0,
            metrics: "127.0.0.1:9100".into(),
            metrics_error: String::new(),
            min_free: 10_737_418_240,
            misses: 7,
            mountpoint: "/mnt/media".into(),
            passthrough: true,
            passthrough_bytes: 2000,
            passthrough_opens: 3,
            pid: 1234,
            serving_since_ms: 5,
            failovers: 0,
            pinned_files: 1,
            promoted_bytes: 4000,
            promoter_read_bytes: 5000,
            promotions_done: 12,
            promotions_failed: 0,
            queued: 2,
            source: "/mnt/hdd".into(),
            source_lookups: 6,
            source_read_bytes: 7000,
            source_answering: true,
            source_stalled_since: 0,
            source_in_flight: 1,
            source_waiting: 0,
            source_ops: [("lookup".to_string(), 6), ("read".to_string(), 9)].into(),
        }
    }

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn status_has_exactly_the_contract_keys_plus_the_extras() {
        let v = serde_json::to_value(sample_status()).unwrap();
        let want: BTreeSet<String> = CONTRACT_KEYS
            .iter()
            .chain(&EXTRA_KEYS)
            .map(|k| k.to_string())
            .collect();
        assert_eq!(keys(&v), want);
        assert_eq!(
            keys(&v["in_flight"][0]),
            ["path", "bytes_done", "bytes_total", "elapsed_ms"]
                .map(String::from)
                .into()
        );
        // "numbers are integers"
        for k in CONTRACT_KEYS.iter().chain(&EXTRA_KEYS) {
            let x = &v[k];
            assert!(
                x.is_u64() || x.is_boolean() || x.is_string() || x.is_array() || x.is_object(),
                "{k}: {x}"
            );
        }
    }

    /// The exact bytes on the wire, keys sorted as the untyped encoder wrote them before
    /// (the extras added since in their sorted places): a status, each kind of reply line,
    /// and a request.
    #[test]
    fn golden_bytes() {
        let status = Reply::Done(Ok(sample_status())).encode().unwrap();
        let want = concat!(
            r#"{"ok":true,"result":{"cache":"/ssd/cachefs","cache_fs_avail":50,"#,
            r#""cache_fs_size":100,"cache_read_bytes":1000,"cache_usable":true,"#,
            r#""cached_bytes":123456789,"cached_files":12,"evictions":3,"fd_limit":1024,"#,
            r#""failovers":0,"#,
            r#""fds_bound":480,"fds_cached":17,"fds_pinned":2,"fds_reopened":5,"fds_shed":0,"#,
            r#""hits":40,"in_flight":[{"bytes_done":1048576,"bytes_total":734003200,"#,
            r#""elapsed_ms":1500,"path":"Show/S01E02.mkv"}],"inode_handles":true,"inodes":99,"#,
            r#""max_size":536870912000,"meta_hits":0,"meta_misses":0,"meta_nodes":0,"#,
            r#""meta_ttl":0,"metrics":"127.0.0.1:9100","metrics_error":"","#,
            r#""min_free":10737418240,"misses":7,"#,
            r#""mountpoint":"/mnt/media","passthrough":true,"passthrough_bytes":2000,"#,
            r#""passthrough_opens":3,"pid":1234,"pinned_files":1,"promoted_bytes":4000,"#,
            r#""promoter_read_bytes":5000,"#,
            r#""promotions_done":12,"promotions_failed":0,"queued":2,"serving_since_ms":5,"#,
            r#""source":"/mnt/hdd","#,
            r#""source_answering":true,"source_in_flight":1,"source_lookups":6,"#,
            r#""source_ops":{"lookup":6,"read":9},"source_read_bytes":7000,"#,
            r#""source_stalled_since":0,"source_waiting":0}}"#,
            "\n"
        );
        assert_eq!(String::from_utf8(status).unwrap(), want);

        let golden = |line: io::Result<Vec<u8>>, want: &str| {
            assert_eq!(
                String::from_utf8(line.unwrap()).unwrap(),
                format!("{want}\n")
            );
        };
        golden(
            Reply::<()>::Done(Err("no room".into())).encode(),
            r#"{"error":"no room","ok":false}"#,
        );
        golden(
            Reply::<()>::Progress(Progress {
                bytes_done: 1,
                bytes_total: 2,
                elapsed_ms: 3,
                path: "a".into(),
            })
            .encode(),
            r#"{"progress":{"bytes_done":1,"bytes_total":2,"elapsed_ms":3,"path":"a"}}"#,
        );
        golden(
            Reply::Done(Ok(Promoted {
                already_cached: 1,
                failed: vec![Failure {
                    error: "gone".into(),
                    path: "b".into(),
                }],
                files: 3,
                queued: 2,
            }))
            .encode(),
            r#"{"ok":true,"result":{"already_cached":1,"failed":[{"error":"gone","path":"b"}],"files":3,"queued":2}}"#,
        );
        golden(
            Reply::Done(Ok(Pinned {
                pinned: 3,
                queued: 1,
            }))
            .encode(),
            r#"{"ok":true,"result":{"pinned":3,"queued":1}}"#,
        );
        golden(
            Reply::Done(Ok(Unpinned { unpinned: 2 })).encode(),
            r#"{"ok":true,"result":{"unpinned":2}}"#,
        );
        golden(
            Reply::Done(Ok(Evicted { evicted: 4 })).encode(),
            r#"{"ok":true,"result":{"evicted":4}}"#,
        );
        golden(
            Reply::Done(Ok(Stopping { stopping: true })).encode(),
            r#"{"ok":true,"result":{"stopping":true}}"#,
        );
        let odd = PathBuf::from(OsString::from_vec(b"caf\xe9".to_vec()));
        golden(
            Request::new(Cmd::Promote, &[PathBuf::from("a b"), odd], true).encode(),
            r#"{"cmd":"promote","paths":["a b",[99,97,102,233]],"wait":true}"#,
        );
        golden(
            Request::new(Cmd::Status, &[], false).encode(),
            r#"{"cmd":"status","paths":[],"wait":false}"#,
        );
    }

    fn strip(mut line: Vec<u8>) -> Vec<u8> {
        assert_eq!(line.pop(), Some(b'\n'));
        assert!(!line.contains(&b'\n'));
        line
    }

    #[test]
    fn requests_round_trip() {
        let odd = PathBuf::from(OsString::from_vec(b"dir/caf\xe9.mkv\xff".to_vec()));
        for cmd in Cmd::ALL {
            for req in [
                Request::new(cmd, &[], false),
                Request::new(
                    cmd,
                    &[
                        PathBuf::from("Show/S01/e1.mkv"),
                        odd.clone(),
                        PathBuf::new(),
                    ],
                    true,
                ),
            ] {
                let line = strip(req.encode().unwrap());
                assert_eq!(Request::decode(&line).unwrap(), req);
            }
        }
        // Absent and null mean none and false; other keys are ignored.
        for line in [
            &br#"{"cmd":"status"}"#[..],
            br#"{"cmd":"status","paths":null,"wait":null}"#,
            br#" {"cmd":"status","extra":{"x":[1]}}"#,
        ] {
            assert_eq!(
                Request::decode(line).unwrap(),
                Request::new(Cmd::Status, &[], false)
            );
        }
    }

    #[test]
    fn replies_round_trip() {
        fn again<R: Serialize + DeserializeOwned>(r: Reply<R>) -> Reply<R> {
            Reply::decode(&strip(r.encode().unwrap())).unwrap()
        }
        let s = Reply::Done(Ok(sample_status()));
        assert_eq!(again(s.clone()), s);
        let p = Reply::<Status>::Progress(sample_status().in_flight[0].clone());
        assert_eq!(again(p.clone()), p);
        let e = Reply::<Status>::Done(Err("the cache directory is unusable".into()));
        assert_eq!(again(e.clone()), e);
        let promoted = Reply::Done(Ok(Promoted {
            already_cached: 0,
            failed: vec![Failure {
                error: "EIO".into(),
                path: "caf\u{fffd}.mkv".into(),
            }],
            files: 1,
            queued: 1,
        }));
        assert_eq!(again(promoted.clone()), promoted);
        // A final error without a message still is one.
        assert_eq!(
            Reply::<Evicted>::decode(br#"{"ok":false}"#).unwrap(),
            Reply::Done(Err("the daemon reported an error without a message".into()))
        );
    }

    /// A status from a daemon before the extras (and a progress without `elapsed_ms`)
    /// still decodes, the missing keys as zero or empty.
    #[test]
    fn older_daemons_answers_decode() {
        let mut v = serde_json::to_value(sample_status()).unwrap();
        let obj = v.as_object_mut().unwrap();
        for k in &EXTRA_KEYS[..11] {
            assert!(obj.remove(*k).is_some(), "{k}");
        }
        obj["in_flight"][0]
            .as_object_mut()
            .unwrap()
            .remove("elapsed_ms");
        let line = json!({"ok": true, "result": v}).to_string();
        let Reply::Done(Ok(s)) = Reply::<Status>::decode(line.as_bytes()).unwrap() else {
            panic!("not a status");
        };
        assert_eq!(
            s,
            Status {
                cache_fs_avail: 0,
                cache_fs_size: 0,
                cache_read_bytes: 0,
                metrics: String::new(),
                passthrough_bytes: 0,
                passthrough_opens: 0,
                promoted_bytes: 0,
                promoter_read_bytes: 0,
                source_lookups: 0,
                source_read_bytes: 0,
                in_flight: vec![Progress {
                    elapsed_ms: 0,
                    ..sample_status().in_flight[0].clone()
                }],
                ..sample_status()
            }
        );
    }

    #[test]
    fn malformed_requests_are_errors() {
        for bad in [
            &b""[..],
            b"not json",
            b"[1,2]",
            br#"["status"]"#,
            b"\"status\"",
            b"{",
            br#"{"paths":[]}"#,
            br#"{"cmd":7}"#,
            br#"{"cmd":"frobnicate"}"#,
            br#"{"cmd":"promote","paths":"a"}"#,
            br#"{"cmd":"promote","paths":[7]}"#,
            br#"{"cmd":"promote","paths":[[300]]}"#,
            br#"{"cmd":"promote","paths":[[-1]]}"#,
            br#"{"cmd":"promote","paths":[{"a":1}]}"#,
            br#"{"cmd":"status","wait":1}"#,
            br#"{"cmd":"status"} trailing"#,
            b"\xff\xfe",
            b"{\"cmd\":\"stat\xffus\"}",
        ] {
            let err = Request::decode(bad).unwrap_err();
            assert!(err.starts_with("malformed request"), "{bad:?}: {err}");
        }
        let err = Request::decode(br#"{"cmd":"frobnicate"}"#).unwrap_err();
        assert!(err.contains("unknown command 'frobnicate'"), "{err}");
        // Deep nesting neither recurses without bound nor panics: ignored where a key is
        // unknown, an error anywhere else.
        let (open, close) = ("[".repeat(100_000), "]".repeat(100_000));
        let ignored = format!(r#"{{"cmd":"status","x":{open}{close}}}"#);
        assert!(Request::decode(ignored.as_bytes()).is_ok());
        for deep in [
            format!(r#"{{"cmd":"promote","paths":{open}{close}}}"#),
            format!("{open}{close}"),
            format!(r#"{{"cmd":{open}{close}}}"#),
        ] {
            assert!(Request::decode(deep.as_bytes()).is_err());
        }
    }

    /// Found by tests/fuzz.rs (`fuzz_proto_near_valid_requests`): a command name with a
    /// JSON `\n` (or an escape sequence) came back raw in the error, several lines long.
    #[test]
    fn unknown_command_with_control_characters_is_one_line() {
        let err = Request::decode(br#"{"cmd":"u\nmount\u001b[2J"}"#).unwrap_err();
        assert!(!err.contains(char::is_control), "{err:?}");
        assert!(
            err.contains(r"unknown command 'u\nmount\u{1b}[2J'"),
            "{err}"
        );
    }

    #[test]
    fn malformed_replies_are_errors() {
        let mut missing_key = serde_json::to_value(sample_status()).unwrap();
        missing_key.as_object_mut().unwrap().remove("pid");
        let missing_key = json!({"ok": true, "result": missing_key}).to_string();
        let mut negative = serde_json::to_value(sample_status()).unwrap();
        negative["hits"] = json!(-1);
        let negative = json!({"ok": true, "result": negative}).to_string();
        for bad in [
            &b""[..],
            b"not json",
            b"[]",
            b"{}",
            br#"{"ok":true}"#,
            br#"{"ok":true,"result":null}"#,
            br#"{"ok":"yes","result":{}}"#,
            br#"{"ok":true,"result":{"pid":1}}"#,
            br#"{"progress":{"path":"a"}}"#,
            br#"{"progress":7}"#,
            br#"{"error":7,"ok":false}"#,
            missing_key.as_bytes(),
            negative.as_bytes(),
            b"\xff",
        ] {
            let err = Reply::<Status>::decode(bad).unwrap_err();
            assert!(err.starts_with("malformed answer"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn lines_are_bounded() {
        let mut buf = Vec::new();
        let mut r = io::Cursor::new(b"abc\ndef\nxyz".to_vec());
        assert_eq!(read_line(&mut r, 8, &mut buf).unwrap(), Frame::Line);
        assert_eq!(buf, b"abc");
        assert_eq!(read_line(&mut r, 3, &mut buf).unwrap(), Frame::Line);
        assert_eq!(buf, b"def");
        assert_eq!(read_line(&mut r, 8, &mut buf).unwrap(), Frame::Unterminated);
        assert_eq!(buf, b"xyz");
        assert_eq!(read_line(&mut r, 8, &mut buf).unwrap(), Frame::Eof);
        assert!(buf.is_empty());

        let mut r = io::Cursor::new(b"abcdefgh\n".to_vec());
        assert_eq!(read_line(&mut r, 4, &mut buf).unwrap(), Frame::TooLong);
        assert_eq!(buf.len(), 5, "reads one byte past the limit, no more");
    }
}
