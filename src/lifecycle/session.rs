//! The FUSE session: mount(2) on an open /dev/fuse, the fuser session over the core with
//! its worker threads, the notifier the core invalidates through (see `notify`), and the
//! control socket beside it.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::{MountError, err, stale};
use crate::config::Config;
use crate::control;
use crate::daemon::Daemon;
use crate::fuse::CachefsFs;
use crate::overlay::Overlay;
use crate::sys;

/// FUSE request worker threads. Most of them sleep in a slow source call at any time,
/// so there are more than cores: one slow read must not stall a directory listing.
const FUSE_THREADS: usize = 8;

/// Opens /dev/fuse, mounts MOUNTPOINT on it and makes the session (the handshake with
/// the kernel). On a failed handshake the mount is removed again.
pub(super) fn mount(
    cfg: &Config,
    core: Arc<Overlay>,
) -> Result<fuser::Session<CachefsFs>, MountError> {
    let dev: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| {
            err(format!(
                "cannot open /dev/fuse: {e} (is the fuse module loaded?)"
            ))
        })?
        .into();
    fuse_mount(cfg, &dev)
        .map_err(|e| err(format!("cannot mount on {}: {e}", cfg.mountpoint.display())))?;

    let mut fcfg = fuser::Config::default();
    fcfg.n_threads = Some(FUSE_THREADS);
    fcfg.clone_fd = true;
    let acl = if cfg.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    let session = match fuser::Session::from_fd(CachefsFs::new(core.clone()), dev, acl, fcfg) {
        Ok(s) => s,
        Err(e) => {
            stale::lazy_unmount(&cfg.mountpoint);
            return Err(err(format!("FUSE handshake failed: {e}")));
        }
    };
    tracing::info!(
        "mounted {} at {} (cache {})",
        cfg.source.display(),
        cfg.mountpoint.display(),
        cfg.cache.display()
    );
    core.set_invalidator(super::notify::invalidator(session.notifier()));
    Ok(session)
}

/// The control socket for the mount, or none (with a warning): a mount without one
/// still serves files.
pub(super) fn serve_control(cfg: &Config, core: Arc<Overlay>) -> Option<control::Server> {
    let daemon = Daemon {
        core,
        stop: super::signals::request_stop,
    };
    match control::serve(&cfg.mountpoint, Arc::new(daemon)) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("no control socket, `cachefs status` will not answer: {e}");
            None
        }
    }
}

/// mount(2) of a FUSE filesystem on an open /dev/fuse.
fn fuse_mount(cfg: &Config, dev: &OwnedFd) -> io::Result<()> {
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={}",
        dev.as_raw_fd(),
        sys::geteuid(),
        sys::getegid()
    );
    if cfg.allow_other {
        data.push_str(",allow_other,default_permissions");
    }
    let mut flags = 0u64;
    let k = cfg.kernel_flags;
    if cfg.read_only {
        flags |= libc::MS_RDONLY;
    }
    if k.nodev {
        flags |= libc::MS_NODEV;
    }
    if k.nosuid {
        flags |= libc::MS_NOSUID;
    }
    if k.noexec {
        flags |= libc::MS_NOEXEC;
    }
    if k.noatime {
        flags |= libc::MS_NOATIME;
    }
    // fsname: SOURCE, so `findmnt` and `df` say what is mounted. Commas would split the
    // options, so they are not allowed there; the source path goes in mount's own field.
    let source = CString::new(cfg.source.as_os_str().as_bytes())?;
    let target = sys::cpath(&cfg.mountpoint)?;
    let data = CString::new(data)?;
    sys::mount(&source, &target, c"fuse.cachefs", flags, &data)
}
