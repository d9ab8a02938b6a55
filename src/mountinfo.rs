//! /proc/self/mountinfo: parsing (with its octal escapes), finding mounts, and removing
//! stale cachefs mounts (`cachefs cleanup`). Shared by the mount path, the subcommands
//! and the tests.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One line of /proc/self/mountinfo that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The directory of the mounted filesystem that appears at `target`: `/` for a
    /// filesystem mounted whole, another path for a bind mount of one of its directories
    /// (a container's volume).
    pub root: PathBuf,
    pub target: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash).
pub fn unescape(field: &str) -> OsString {
    OsString::from_vec(unescape_bytes(field.as_bytes()))
}

fn unescape_bytes(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Parses mountinfo text: `ID PARENT MAJ:MIN ROOT TARGET OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER`.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    parse_mountinfo_bytes(text.as_bytes())
}

/// [`parse_mountinfo`] on the file's bytes. The kernel escapes only space, tab, newline
/// and backslash: any other byte of a mount point, UTF-8 or not, is written as it is, so
/// the file is not always UTF-8 and must not be read as a string.
pub fn parse_mountinfo_bytes(text: &[u8]) -> Vec<MountInfo> {
    let lossy = |f: &[u8]| String::from_utf8_lossy(&unescape_bytes(f)).into_owned();
    text.split(|b| *b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
            let dash = fields.iter().position(|f| *f == b"-")?;
            Some(MountInfo {
                root: PathBuf::from(OsString::from_vec(unescape_bytes(fields.get(3)?))),
                target: PathBuf::from(OsString::from_vec(unescape_bytes(fields.get(4)?))),
                fstype: lossy(fields.get(dash + 1)?),
                source: lossy(fields.get(dash + 2)?),
            })
        })
        .collect()
}

pub fn mounts() -> io::Result<Vec<MountInfo>> {
    Ok(parse_mountinfo_bytes(&std::fs::read(
        "/proc/self/mountinfo",
    )?))
}

/// The cachefs mounts in `all`, or those of them at a path in `named`, each path once.
fn cachefs_targets(all: &[MountInfo], named: &[PathBuf]) -> Vec<PathBuf> {
    let mut targets: Vec<PathBuf> = Vec::new();
    for m in all.iter().filter(|m| m.fstype == "fuse.cachefs") {
        if (named.is_empty() || named.contains(&m.target)) && !targets.contains(&m.target) {
            targets.push(m.target.clone());
        }
    }
    targets
}

/// Removes the mount on top at `target` if its daemon is gone, and that mount only.
/// Returns whether it removed one.
///
/// The mount is opened first (O_PATH, which asks the daemon nothing) and checked through
/// that descriptor: fstatfs(2), unlike stat, is never answered from the kernel's
/// attribute cache, so a mount whose daemon is gone fails with ENOTCONN at once. Then the
/// mount the descriptor holds is detached through /proc/self/fd. A new mount put on top
/// between the check and the unmount (a restarted container recovering the same
/// mountpoint) is never the one removed, as it would be by path.
pub fn detach_if_dead(target: &Path) -> io::Result<bool> {
    use rustix::fs::{CWD, Mode, OFlags};
    let fd = rustix::fs::openat(CWD, target, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
    match rustix::fs::fstatfs(&fd) {
        Err(rustix::io::Errno::NOTCONN) => {}
        _ => return Ok(false),
    }
    let held = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::mount::unmount(held.as_str(), rustix::mount::UnmountFlags::DETACH)?;
    Ok(true)
}

/// `cachefs cleanup [MOUNTPOINT...]`: removes stale cachefs mounts (all of them, or the
/// ones named) and reports each. Returns the exit code.
pub fn cleanup(named: &[PathBuf]) -> u8 {
    let all = match mounts() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("cachefs: cannot read /proc/self/mountinfo: {e}");
            return crate::exit::FAILURE;
        }
    };
    let targets = cachefs_targets(&all, named);
    let mut code = crate::exit::SUCCESS;
    for n in named {
        if !targets.contains(n) {
            eprintln!("cachefs: {} is not a cachefs mount", n.display());
            code = crate::exit::FAILURE;
        }
    }
    let mut removed = 0;
    for t in &targets {
        match detach_if_dead(t) {
            Ok(true) => {
                println!("removed the stale mount at {}", t.display());
                removed += 1;
            }
            Ok(false) => println!("{} is live, left alone", t.display()),
            Err(e) => {
                eprintln!("cachefs: cannot unmount {}: {e}", t.display());
                code = crate::exit::FAILURE;
            }
        }
    }
    if targets.is_empty() && named.is_empty() {
        println!("no cachefs mounts");
    } else if removed == 0 && code == crate::exit::SUCCESS {
        println!("no stale cachefs mounts");
    }
    code
}

/// `cachefs cleanup --watch [--every SECS] [MOUNTPOINT...]`: checks the cachefs mounts
/// (all, or those named, whenever they are mounted) every `every` until stopped, and
/// removes each one whose daemon is gone, with a line saying so.
///
/// This is the host's side of a container: when a container is killed, its cachefs dies
/// with everything else in it, and the mount it propagated to the host stays behind,
/// answering "Transport endpoint is not connected", until something unmounts it. Nothing
/// in the container can, and the kernel never does on its own.
///
/// Each check runs on a thread of its own: the statfs of a live mount whose daemon is
/// stopped (SIGSTOP, a debugger) waits for it, and must not hold up the others. A mount
/// whose check has not answered is not checked again until it does.
pub fn watch(named: &[PathBuf], every: Duration) -> u8 {
    let which = if named.is_empty() {
        "all cachefs mounts".to_string()
    } else {
        named
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "watching {which} for stale mounts, every {} s",
        every.as_secs()
    );
    let (tx, rx) = mpsc::channel::<(PathBuf, io::Result<bool>)>();
    let mut pending: HashSet<PathBuf> = HashSet::new();
    loop {
        let all = match mounts() {
            Ok(m) => m,
            Err(e) => {
                eprintln!("cachefs: cannot read /proc/self/mountinfo: {e}");
                return crate::exit::FAILURE;
            }
        };
        for t in cachefs_targets(&all, named) {
            if pending.insert(t.clone()) {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let r = detach_if_dead(&t);
                    let _ = tx.send((t, r));
                });
            }
        }
        let round = Instant::now() + every;
        while let Ok((t, r)) = rx.recv_timeout(round.saturating_duration_since(Instant::now())) {
            pending.remove(&t);
            match r {
                Ok(true) => println!("removed the stale mount at {}", t.display()),
                Ok(false) => {}
                // Gone by itself between the listing and the check.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => eprintln!("cachefs: cannot unmount {}: {e}", t.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn mountinfo_escapes_and_fields() {
        let text = "36 35 98:0 / /mnt/my\\040media rw,noatime master:1 - fuse.cachefs /srv/hdd\\011x rw,user_id=0\n\
                    37 35 98:0 / /a\\134b rw - ext4 /dev/sda1 rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].target, PathBuf::from("/mnt/my media"));
        assert_eq!(m[0].root, PathBuf::from("/"));
        let bind = parse_mountinfo("38 35 254:0 /srv/vol /media rw shared:7 - ext4 /dev/vda rw\n");
        assert_eq!(bind[0].root, PathBuf::from("/srv/vol"));
        assert_eq!(m[0].fstype, "fuse.cachefs");
        assert_eq!(m[0].source, "/srv/hdd\tx");
        assert_eq!(m[1].target, PathBuf::from("/a\\b"));
        assert_eq!(unescape("a\\012b"), OsString::from("a\nb"));
        assert_eq!(unescape("trailing\\04"), OsString::from("trailing\\04"));
    }

    /// Found by tests/fuzz.rs (`fuzz_mountinfo_escapes_round_trip`): the kernel writes a
    /// mount point's non-UTF-8 bytes as they are, and reading the file as a string failed
    /// on them, so one such mount anywhere on the host (any user can make one with
    /// fusermount3) made `cachefs status`, `cleanup` and the stale-mount check fail.
    #[test]
    fn mountinfo_with_a_non_utf8_mount_point_is_read() {
        let text = b"36 35 98:0 / /home/u/caf\xe9\\040x rw - fuse /dev/fuse rw\n\
                     37 35 98:0 / /mnt/media rw - fuse.cachefs /srv/hdd rw\n";
        let m = parse_mountinfo_bytes(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].target.as_os_str().as_bytes(), b"/home/u/caf\xe9 x");
        assert_eq!(m[1].target, PathBuf::from("/mnt/media"));
        assert_eq!(m[1].fstype, "fuse.cachefs");
    }
}
