//! The FUSE session: mount(2) on an open /dev/fuse, the fuser session over the core with
//! its worker threads, the notifier the core invalidates through (see `notify`), and the
//! control socket beside it.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::process;
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

    let (acl, fcfg) = fuser_config(cfg);
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

/// The fuser session's settings: worker threads, and who may use the mount.
fn fuser_config(cfg: &Config) -> (fuser::SessionACL, fuser::Config) {
    let mut fcfg = fuser::Config::default();
    fcfg.n_threads = Some(FUSE_THREADS);
    // One /dev/fuse descriptor for every worker, not a clone each: the kernel keeps the
    // requests a daemon has read and not answered per descriptor, and ends them with
    // ECONNABORTED when that descriptor closes. The watchdog holds a duplicate of this
    // one, so after a crash they wait for a successor (FUSE_NOTIFY_RESEND) instead.
    fcfg.clone_fd = false;
    let acl = if cfg.allow_other {
        fuser::SessionACL::All
    } else if cfg.allow_root {
        // The kernel knows only allow_other: fuser answers anyone but root and the
        // owner EACCES, as libfuse does for allow_root.
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    (acl, fcfg)
}

/// A session over a connection whose INIT a predecessor answered (a live restart): the
/// core is told what was negotiated, as `init` is not called again.
pub(super) fn resume(
    cfg: &Config,
    core: Arc<Overlay>,
    dev: OwnedFd,
    negotiated: Negotiated,
) -> fuser::Session<CachefsFs> {
    let (acl, fcfg) = fuser_config(cfg);
    core.set_passthrough(negotiated.passthrough);
    core.set_posix_acl(negotiated.posix_acl);
    let session = fuser::Session::resume_from_fd(
        CachefsFs::resumed(core.clone(), negotiated.no_opendir, negotiated.resend),
        dev,
        acl,
        fcfg,
    );
    core.set_invalidator(super::notify::invalidator(session.notifier()));
    session
}

/// What the kernel and the daemon agreed at INIT that the daemon's answers depend on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Negotiated {
    pub passthrough: bool,
    pub no_opendir: bool,
    /// The kernel can resend lost requests (FUSE_HAS_RESEND): failover is armed.
    pub resend: bool,
    /// FUSE_POSIX_ACL: the kernel reads ACLs for its permission checks.
    pub posix_acl: bool,
}

/// The control socket for the mount, or none (with a warning): a mount without one
/// still serves files. With `metrics=`, the Prometheus listener beside it, answering from
/// the same daemon.
pub(super) fn serve_control(cfg: &Config, core: Arc<Overlay>) -> Option<control::Server> {
    let daemon = Arc::new(Daemon::new(
        core,
        super::signals::request_stop,
        super::restart::request,
    ));
    if let Some(addr) = &cfg.metrics {
        serve_metrics(addr, &daemon);
    }
    match control::serve(&cfg.mountpoint, daemon) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("no control socket, `cachefs status` will not answer: {e}");
            None
        }
    }
}

/// Starts the metrics listener. A failure to bind is logged and shown by `cachefs status`,
/// and the mount goes on: the files matter more than their graphs, and a mount at boot
/// must not fail because another program holds a port (Prometheus shows the target down).
fn serve_metrics(addr: &str, daemon: &Arc<Daemon>) {
    let outcome = match control::serve_metrics(addr, daemon.clone()) {
        Ok(server) => {
            let bound = server.local_addr().to_string();
            tracing::info!("metrics at http://{bound}/metrics");
            Ok(bound)
        }
        Err(e) => {
            let why = format!("cannot listen on {addr}: {e}");
            tracing::error!("metrics: {why}; the mount goes on without metrics");
            Err(why)
        }
    };
    let _ = daemon.metrics.set(outcome);
}

/// mount(2) of a FUSE filesystem on an open /dev/fuse.
fn fuse_mount(cfg: &Config, dev: &OwnedFd) -> io::Result<()> {
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={}",
        dev.as_raw_fd(),
        sys::geteuid(),
        process::getegid()
    );
    if cfg.allow_other || cfg.allow_root {
        data.push_str(",allow_other,default_permissions");
    }
    let flags = cfg.mount_flags();
    // fsname: SOURCE unless given, so `findmnt` and `df` say what is mounted. Commas would
    // split the options, so it goes in mount's own source argument, not in `data`.
    let source = match &cfg.fsname {
        Some(name) => CString::new(name.as_bytes())?,
        None => CString::new(cfg.source.as_os_str().as_bytes())?,
    };
    let target = process::cpath(&cfg.mountpoint)?;
    let data = CString::new(data)?;
    process::mount(&source, &target, c"fuse.cachefs", flags, &data)
}
