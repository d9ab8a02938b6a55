//! MOUNTPOINT before the mount: a stale mount left by a dead daemon (ENOTCONN) is lazily
//! unmounted, with a line saying so; a live mount there is refused, naming it. Also the
//! one lazy unmount every stop path uses.

use std::path::Path;

use super::process;
use super::{MountError, err};
use crate::control;
use crate::mountinfo::mounts;

/// Makes MOUNTPOINT ready, or says why it is not.
pub(super) fn prepare_mountpoint(mountpoint: &Path) -> Result<(), MountError> {
    let all = mounts().map_err(|e| err(format!("cannot read /proc/self/mountinfo: {e}")))?;
    // The last entry at a target is the one on top.
    let Some(top) = all.iter().rev().find(|m| m.target == mountpoint) else {
        return Ok(());
    };
    match process::statfs_path(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(
                "removing a stale {} mount at {} (its daemon is gone)",
                top.fstype,
                mountpoint.display()
            );
            let target = process::cpath(mountpoint).map_err(|e| err(e.to_string()))?;
            process::umount2(&target, libc::MNT_DETACH).map_err(|e| {
                err(format!(
                    "cannot remove the stale mount at {}: {e}",
                    mountpoint.display()
                ))
            })
        }
        _ if top.fstype == "fuse.cachefs" => {
            let pid = control::status(mountpoint)
                .map_or_else(|_| "pid unknown".to_string(), |s| format!("pid {}", s.pid));
            Err(err(format!(
                "{} is already mounted by a running cachefs ({pid}, source {}): `cachefs unmount {}` first, or pick another mountpoint",
                mountpoint.display(),
                top.source,
                mountpoint.display()
            )))
        }
        _ => Err(err(format!(
            "{} is already mounted ({} from {}): unmount it first, or pick another mountpoint",
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
