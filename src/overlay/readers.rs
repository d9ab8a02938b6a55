//! Who is reading: whether the process behind a FUSE request is on the policy's ignore
//! list (`promote_ignore`), decided from /proc and remembered per pid for a second.
//!
//! The pid in a FUSE request is the calling thread's id, so the names looked at are the
//! thread's own (a media server names its scanner threads: "PMS ScannerPipe"), its
//! process's (the thread group leader's, what `ps` shows) and those of the process's
//! parent and grandparent: a transcoder or prober started by a scanner, directly or
//! through a shell, reads for the scanner. Names are `/proc/PID/comm`: 15 bytes at most.
//!
//! A pid names another process only once the kernel's pid counter has wrapped around
//! (pids are allocated cyclically), which takes far longer than the second a verdict is
//! kept; the second bounds what an exec or a rename (prctl) changes meanwhile. A process
//! the daemon cannot see (pid 0: another pid namespace) is never ignored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::policy::IgnoreList;

/// How long a verdict is kept.
const TTL: Duration = Duration::from_secs(1);
/// Verdicts kept before the expired ones are dropped (all of them, if none expired).
const MAX_ENTRIES: usize = 4096;
/// Ancestors of the process looked at: its parent and its grandparent.
const ANCESTORS: usize = 2;

struct Verdict {
    /// The listed name that matched, for the log; `None`: the reader counts.
    ignored_by: Option<Arc<str>>,
    at: Instant,
}

pub struct Readers {
    list: IgnoreList,
    seen: Mutex<HashMap<u32, Verdict>>,
}

impl Readers {
    pub fn new(names: &[String]) -> Readers {
        Readers {
            list: IgnoreList::new(names),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The listed name that makes thread `tid`'s reads not count, if any.
    pub fn ignored(&self, tid: u32) -> Option<Arc<str>> {
        if self.list.is_empty() || tid == 0 {
            return None;
        }
        let now = Instant::now();
        if let Some(v) = self.seen.lock().get(&tid)
            && now.duration_since(v.at) < TTL
        {
            return v.ignored_by.clone();
        }
        // Outside the lock: /proc reads of many new readers at once need not queue.
        let ignored_by = self.decide(tid);
        let mut seen = self.seen.lock();
        if seen.len() >= MAX_ENTRIES {
            seen.retain(|_, v| now.duration_since(v.at) < TTL);
            if seen.len() >= MAX_ENTRIES {
                seen.clear();
            }
        }
        seen.insert(
            tid,
            Verdict {
                ignored_by: ignored_by.clone(),
                at: now,
            },
        );
        ignored_by
    }

    fn decide(&self, tid: u32) -> Option<Arc<str>> {
        let (thread, mut parent) = proc_stat(tid)?;
        let mut names = vec![thread];
        let tgid = proc_tgid(tid).unwrap_or(tid);
        if tgid != tid
            && let Some((process, _)) = proc_stat(tgid)
        {
            names.push(process);
        }
        for _ in 0..ANCESTORS {
            // Pid 1 is init (or a container's entrypoint), never a scanner's helper.
            if parent <= 1 {
                break;
            }
            let Some((name, next)) = proc_stat(parent) else {
                break;
            };
            names.push(name);
            parent = next;
        }
        let refs: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
        self.list
            .first_match(&refs)
            .map(|n| Arc::from(String::from_utf8_lossy(n).as_ref()))
    }
}

/// A task's name and its process's parent, from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(Vec<u8>, u32)> {
    parse_stat(&std::fs::read(format!("/proc/{pid}/stat")).ok()?)
}

/// `PID (NAME) STATE PPID ...`: NAME may hold spaces and parentheses, so it ends at the
/// last `)`.
fn parse_stat(stat: &[u8]) -> Option<(Vec<u8>, u32)> {
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let name = stat.get(open + 1..close)?.to_vec();
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
    Some((name, ppid))
}

/// The thread group (process) a thread belongs to, from `/proc/TID/status`.
fn proc_tgid(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    parse_tgid(&status)
}

fn parse_tgid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines() {
        type Row<'a> = (&'a [u8], Option<(&'a [u8], u32)>);
        let table: &[Row] = &[
            (
                b"4242 (Plex Media Scan) S 4100 4242 4242 0 -1",
                Some((b"Plex Media Scan", 4100)),
            ),
            (b"7 (a) b) c) R 1 7 7", Some((b"a) b) c", 1))),
            (b"9 () S 2 9", Some((b"", 2))),
            (b"9 (x S 2 9", None),
            (b"9 (x) S", None),
            (b"", None),
        ];
        for (line, want) in table {
            let got = parse_stat(line);
            assert_eq!(
                got.as_ref().map(|(n, p)| (n.as_slice(), *p)),
                *want,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(parse_tgid("Name:\tx\nTgid:\t321\nPid:\t322\n"), Some(321));
        assert_eq!(parse_tgid("Name:\tx\n"), None);
    }

    /// The names are read from the live /proc: a thread's own name, and a process
    /// started by a listed process.
    #[test]
    fn live_names() {
        let readers = Readers::new(&["cachefs-scan".to_string()]);
        let me = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        assert_eq!(readers.ignored(me), None);
        assert_eq!(readers.ignored(0), None);
        let named = std::thread::Builder::new()
            .name("cachefs-scan".into())
            .spawn(move || {
                let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
                Readers::new(&["cachefs-scan".to_string()]).ignored(tid)
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(named.as_deref(), Some("cachefs-scan"));

        // A child of this process (named as this process's main thread is) is ignored
        // when the process's name is listed, and not otherwise.
        let own = std::fs::read(format!("/proc/{}/comm", std::process::id())).unwrap();
        let own = String::from_utf8_lossy(own.strip_suffix(b"\n").unwrap()).into_owned();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id();
        let by_parent = Readers::new(std::slice::from_ref(&own)).ignored(pid);
        let unlisted = Readers::new(&["nothing-here".to_string()]).ignored(pid);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(by_parent.as_deref(), Some(own.as_str()));
        assert_eq!(unlisted, None);
    }

    #[test]
    fn verdicts_are_kept_and_bounded() {
        let readers = Readers::new(&["x".to_string()]);
        // Pids that do not exist: not ignored, remembered, and never more than the bound.
        for pid in 0..(MAX_ENTRIES as u32 + 10) {
            assert_eq!(readers.ignored(u32::MAX - pid), None);
        }
        assert!(readers.seen.lock().len() <= MAX_ENTRIES);
        assert!(Readers::new(&[]).seen.lock().is_empty());
    }
}
