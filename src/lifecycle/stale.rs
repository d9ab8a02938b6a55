//! MOUNTPOINT before the mount: a stale mount left by a dead daemon (ENOTCONN) is lazily
//! unmounted, with a line saying so; a live mount there is refused, naming it. Also the
//! one lazy unmount every stop path uses.

use std::path::Path;

use super::process;
use super::{MountError, err};
use crate::control;
use crate::mountinfo::{MountInfo, mounts};

/// What is mounted at MOUNTPOINT, as far as mounting there goes.
#[derive(Debug, PartialEq, Eq)]
enum Occupant {
    /// Nothing, or something cachefs may mount over.
    Free,
    /// A FUSE mount whose daemon is gone (ENOTCONN): removed, then mounted over.
    Stale,
    /// A FUSE mount that answers, cachefs or another: always refused.
    LiveFuse,
    /// Another filesystem mounted whole there: refused unless `nonempty`.
    Filesystem,
}

/// The rule for mounting over what is already at MOUNTPOINT (`top`, the mount on top
/// there, and the error statfs(2) gave on it, if any):
/// - a dead FUSE mount is stale and is removed;
/// - a live FUSE mount is refused, `nonempty` or not: two daemons would fight over one
///   library;
/// - a bind mount of a directory (mountinfo's root is not `/`) is accepted: that is what a
///   container's volume is, and how the host and the media server's container see the
///   mount;
/// - another filesystem mounted whole would be hidden: refused unless `nonempty`.
fn occupant(top: &MountInfo, statfs_errno: Option<i32>, nonempty: bool) -> Occupant {
    if statfs_errno == Some(libc::ENOTCONN) {
        Occupant::Stale
    } else if top.fstype == "fuse" || top.fstype.starts_with("fuse.") || top.fstype == "fuseblk" {
        Occupant::LiveFuse
    } else if top.root != Path::new("/") || nonempty {
        Occupant::Free
    } else {
        Occupant::Filesystem
    }
}

/// Makes MOUNTPOINT ready, or says why it is not.
pub(super) fn prepare_mountpoint(mountpoint: &Path, nonempty: bool) -> Result<(), MountError> {
    let all = mounts().map_err(|e| err(format!("cannot read /proc/self/mountinfo: {e}")))?;
    // The last entry at a target is the one on top.
    let Some(top) = all.iter().rev().find(|m| m.target == mountpoint) else {
        return Ok(());
    };
    let statfs_errno = process::statfs_path(mountpoint)
        .err()
        .and_then(|e| e.raw_os_error());
    match occupant(top, statfs_errno, nonempty) {
        Occupant::Free => Ok(()),
        Occupant::Stale => {
            tracing::warn!(
                "removing a stale {} mount at {} (its daemon is gone)",
                top.fstype,
                mountpoint.display()
            );
            crate::mountinfo::detach_if_dead(mountpoint)
                .map(|_| ())
                .map_err(|e| {
                    err(format!(
                        "cannot remove the stale mount at {}: {e}",
                        mountpoint.display()
                    ))
                })
        }
        Occupant::LiveFuse if top.fstype == "fuse.cachefs" => {
            let pid = control::status(mountpoint)
                .map_or_else(|_| "pid unknown".to_string(), |s| format!("pid {}", s.pid));
            Err(err(format!(
                "{} is already mounted by a running cachefs ({pid}, source {}): `cachefs unmount {}` first, or pick another mountpoint",
                mountpoint.display(),
                top.source,
                mountpoint.display()
            )))
        }
        Occupant::LiveFuse => Err(err(format!(
            "{} is already a live FUSE mount ({} from {}): unmount it first, or pick another mountpoint",
            mountpoint.display(),
            top.fstype,
            top.source
        ))),
        Occupant::Filesystem => Err(err(format!(
            "{} is already mounted ({} from {}) and cachefs would hide it: unmount it first, pick another mountpoint, or add -o nonempty to mount over it",
            mountpoint.display(),
            top.fstype,
            top.source
        ))),
    }
}

/// Detaches MOUNTPOINT: a busy mount goes as soon as its last user lets go, and new users
/// no longer see it. Not mounted (EINVAL) is no failure.
pub(super) fn lazy_unmount(mountpoint: &Path) {
    if let Ok(target) = process::cpath(mountpoint)
        && let Err(e) = process::umount2(&target, libc::MNT_DETACH)
        && e.raw_os_error() != Some(libc::EINVAL)
    {
        tracing::warn!("cannot unmount {}: {e}", mountpoint.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn at(root: &str, fstype: &str) -> MountInfo {
        MountInfo {
            root: PathBuf::from(root),
            target: PathBuf::from("/media"),
            fstype: fstype.to_string(),
            source: "/dev/vda".to_string(),
        }
    }

    #[test]
    fn a_containers_volume_is_a_mountpoint_and_a_whole_filesystem_needs_nonempty() {
        // `-v /mnt/media:/media`: a bind mount of a directory of the host's filesystem.
        assert_eq!(
            occupant(&at("/mnt/media", "ext4"), None, false),
            Occupant::Free
        );
        assert_eq!(
            occupant(&at("/", "ext4"), None, false),
            Occupant::Filesystem
        );
        assert_eq!(occupant(&at("/", "ext4"), None, true), Occupant::Free);
        assert_eq!(occupant(&at("/", "tmpfs"), None, true), Occupant::Free);
    }

    #[test]
    fn a_live_fuse_mount_is_refused_even_with_nonempty_and_a_dead_one_is_stale() {
        for fstype in ["fuse.cachefs", "fuse.sshfs", "fuse", "fuseblk"] {
            for root in ["/", "/sub"] {
                assert_eq!(occupant(&at(root, fstype), None, true), Occupant::LiveFuse);
                assert_eq!(
                    occupant(&at(root, fstype), Some(libc::EACCES), true),
                    Occupant::LiveFuse
                );
                assert_eq!(
                    occupant(&at(root, fstype), Some(libc::ENOTCONN), false),
                    Occupant::Stale
                );
            }
        }
    }
}
