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
//!
//! A create (mknod, mkdir, create) also takes the caller's umask ([`Umask::enter`]):
//! with FUSE_DONT_MASK the kernel sends the mode unmasked and the umask beside it, and
//! SOURCE's own filesystem then decides, as it would for the caller: it ignores the
//! umask under a directory with a default ACL (the ACL's entries and mask apply) and
//! applies it elsewhere. The umask belongs to a thread's filesystem context, which
//! threads share; a thread that creates takes a context of its own once (unshare
//! CLONE_FS), so the umask it sets is seen by no other thread, and sets it back to the
//! daemon's 0 after the call.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::fs::Mode;
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

/// What a create (mknod, mkdir, create) asks for: the mode, and the caller's umask the
/// kernel sends beside it (with FUSE_DONT_MASK, not yet applied to the mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewMode {
    pub mode: u32,
    pub umask: u32,
}

thread_local! {
    /// Whether this thread has a filesystem context (and so a umask) of its own.
    static OWN_FS: Cell<bool> = const { Cell::new(false) };
}

/// The caller's umask on the current thread, until it drops: then the daemon's own, 0.
pub struct Umask {
    set: bool,
}

impl Umask {
    /// Takes `umask` (the permission bits of the one the kernel sent with a create) for
    /// the current thread. A umask of 0 is the daemon's own: nothing to do.
    pub fn enter(umask: u32) -> io::Result<Umask> {
        let umask = umask & 0o777;
        if umask == 0 {
            return Ok(Umask { set: false });
        }
        if !OWN_FS.get() {
            sys::unshare_fs()?;
            OWN_FS.set(true);
        }
        rustix::process::umask(Mode::from_raw_mode(umask));
        Ok(Umask { set: true })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        if self.set {
            rustix::process::umask(Mode::empty());
        }
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
    fn umask_is_the_threads_own() {
        let own = |m| rustix::process::umask(Mode::from_raw_mode(m)).as_raw_mode();
        let before = own(0o022);
        std::thread::spawn(move || {
            let guard = Umask::enter(0o077).unwrap();
            let path = std::env::temp_dir().join(format!("cachefs-umask-{}", std::process::id()));
            let _ = std::fs::remove_file(&path);
            std::fs::File::create(&path).unwrap();
            let mode = std::fs::metadata(&path)
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
            let _ = std::fs::remove_file(&path);
            assert_eq!(mode.unwrap() & 0o777, 0o600, "the caller's umask applies");
            drop(guard);
            assert_eq!(own(0), 0, "back to the daemon's 0");
        })
        .join()
        .unwrap();
        assert_eq!(own(before), 0o022, "other threads keep theirs");
    }

    #[test]
    fn groups_line() {
        let s = "Name:\tx\nGroups:\t4 24 1000 \nNgid:\t0\n";
        let want = [4, 24, 1000].map(Gid::from_raw).to_vec();
        assert_eq!(parse_groups(s), Some(want));
        assert_eq!(parse_groups("Groups:\t\n"), Some(vec![]));
        assert_eq!(parse_groups("Name: x\n"), None);
    }
}
