//! Running a source operation with the caller's identity.
//!
//! The daemon runs as root on behalf of every user of the mount. Before it touches SOURCE
//! for a caller who is not root, the worker thread takes the caller's filesystem uid, gid
//! and supplementary groups, so the source filesystem itself decides permissions and
//! ownership (new files belong to the caller; an NFS source with root_squash sees the
//! user, not a squashed root). Switching fsuid away from 0 also drops the thread's
//! filesystem capabilities, so root's overrides do not leak into a user's request.
//!
//! Every switch is per thread: raw syscalls (`rustix::thread::set_thread_groups`,
//! `sys::set_thread_fs_ids`), never glibc's setgroups or setuid, which apply to every
//! thread of the process.
//!
//! Supplementary groups come from `/proc/PID/status` of the calling process, cached per
//! pid for a second so a burst of calls from one player reads the file once.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::process::Gid;

use crate::sys;

/// Who is asking: the ids and pid from the FUSE request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };
}

const GROUPS_TTL: Duration = Duration::from_secs(1);

struct CachedGroups {
    uid: u32,
    gid: u32,
    groups: Vec<Gid>,
    at: Instant,
}

pub struct Creds {
    /// False when the daemon itself is not root: then it cannot switch, and every
    /// operation runs with the daemon's own identity.
    enabled: bool,
    /// The daemon's own supplementary groups, restored after each switch.
    own_groups: Vec<Gid>,
    groups: Mutex<HashMap<u32, CachedGroups>>,
}

/// Restores the daemon's identity on drop.
pub struct CredGuard<'a> {
    creds: Option<&'a Creds>,
}

impl Drop for CredGuard<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.creds
            && let Err(e) = set_thread_creds(0, 0, &c.own_groups)
        {
            // A thread left with a user's identity would act as that user for the next
            // caller: no way to continue safely.
            tracing::error!("cannot restore the daemon's identity: {e}");
            std::process::abort();
        }
    }
}

impl Creds {
    pub fn new() -> Creds {
        Creds {
            enabled: rustix::process::geteuid().is_root(),
            own_groups: own_groups(),
            groups: Mutex::new(HashMap::new()),
        }
    }

    /// Takes the caller's identity for the current thread until the guard drops.
    pub fn enter(&self, caller: &Caller) -> io::Result<CredGuard<'_>> {
        if !self.enabled || (caller.uid == 0 && caller.gid == 0) {
            return Ok(CredGuard { creds: None });
        }
        let groups = self.groups_of(caller);
        set_thread_creds(caller.uid, caller.gid, &groups)?;
        Ok(CredGuard { creds: Some(self) })
    }

    /// Whether `gid` is the caller's group or one of its supplementary groups.
    pub fn in_group(&self, caller: &Caller, gid: u32) -> bool {
        caller.gid == gid || self.groups_of(caller).contains(&Gid::from_raw(gid))
    }

    fn groups_of(&self, caller: &Caller) -> Vec<Gid> {
        let now = Instant::now();
        let mut cache = self.groups.lock();
        if let Some(c) = cache.get(&caller.pid)
            && c.uid == caller.uid
            && c.gid == caller.gid
            && now.duration_since(c.at) < GROUPS_TTL
        {
            return c.groups.clone();
        }
        let groups = proc_groups(caller.pid).unwrap_or_default();
        if cache.len() > 4096 {
            cache.retain(|_, c| now.duration_since(c.at) < GROUPS_TTL);
        }
        cache.insert(
            caller.pid,
            CachedGroups {
                uid: caller.uid,
                gid: caller.gid,
                groups: groups.clone(),
                at: now,
            },
        );
        groups
    }
}

impl Default for Creds {
    fn default() -> Self {
        Creds::new()
    }
}

/// Sets this thread's supplementary groups, then its filesystem gid and uid.
fn set_thread_creds(uid: u32, gid: u32, groups: &[Gid]) -> io::Result<()> {
    rustix::thread::set_thread_groups(groups)?;
    sys::set_thread_fs_ids(uid, gid)
}

/// The `Groups:` line of /proc/PID/status.
fn proc_groups(pid: u32) -> Option<Vec<Gid>> {
    if pid == 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_groups(&status)
}

fn own_groups() -> Vec<Gid> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_groups(&s))
        .unwrap_or_default()
}

fn parse_groups(status: &str) -> Option<Vec<Gid>> {
    let line = status.lines().find(|l| l.starts_with("Groups:"))?;
    Some(
        line["Groups:".len()..]
            .split_whitespace()
            .filter_map(|g| g.parse().ok().map(Gid::from_raw))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_line() {
        let s = "Name:\tx\nGroups:\t4 24 1000 \nNgid:\t0\n";
        let want = [4, 24, 1000].map(Gid::from_raw).to_vec();
        assert_eq!(parse_groups(s), Some(want));
        assert_eq!(parse_groups("Groups:\t\n"), Some(vec![]));
        assert_eq!(parse_groups("Name: x\n"), None);
    }
}
