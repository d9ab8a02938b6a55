//! The FUSE session: mount(2) on an open /dev/fuse, the fuser session over the core with
//! its worker threads, the notifier the core invalidates through, and the control socket
//! beside it.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use super::{MountError, err, stale};
use crate::config::Config;
use crate::control;
use crate::daemon::Daemon;
use crate::fuse::CachefsFs;
use crate::overlay::{Overlay, Tail};
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
    core.set_invalidator(invalidator(session.notifier())?);
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

/// How long a change waits for another kernel inode of its file to take a growth in.
/// Storing the last byte locks that inode's last page, which a request in flight there
/// can hold: a read (answered by another worker soon), or a write whose worker is
/// itself waiting here for the first inode's last page (two writers extending the file
/// through two kernel inodes at once). The wait is bounded so that the pair cannot
/// deadlock; the growth then lands just after the call returns.
const GROW_WAIT: Duration = Duration::from_millis(500);

/// A change for the notifier's threads: the node, the end the node must grow to, whether
/// its pages go, and who waits for the growth.
struct Change {
    nodeid: u64,
    tail: Option<Tail>,
    data: bool,
    grown: Option<crossbeam_channel::Sender<()>>,
}

/// The core's way to tell the kernel that another inode of an object changed. The
/// attributes go at once (no inode lock is taken for them). A growth is stored by a
/// thread that the call waits for (`GROW_WAIT`): the kernel's size must be right before
/// the call that grew the file returns, as a mapping's fault past it raises SIGBUS. The
/// pages are dropped by a thread of their own, because dropping them waits for page
/// locks that a read in flight on that inode holds until the daemon answers it; the
/// growth thread hands them on, so that the byte it stored is dropped with them, never
/// left behind by an invalidation that ran first.
fn invalidator(notifier: fuser::Notifier) -> Result<crate::overlay::Invalidator, MountError> {
    let (grow_tx, grow_rx) = crossbeam_channel::unbounded::<Change>();
    let (pages_tx, pages_rx) = crossbeam_channel::unbounded::<u64>();
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map(drop)
            .map_err(|e| err(format!("cannot start the {name} thread: {e}")))
    };
    let pages = notifier.clone();
    spawn(
        "invalidate",
        Box::new(move || {
            for nodeid in pages_rx {
                let _ = pages.inval_inode(fuser::INodeNo(nodeid), 0, 0);
            }
        }),
    )?;
    let store = notifier.clone();
    spawn(
        "grow",
        Box::new(move || {
            for c in grow_rx {
                if let Some(t) = c.tail {
                    // Ends at the size: the kernel's size grows to it, if smaller.
                    let _ = store.store(fuser::INodeNo(c.nodeid), t.size - 1, &[t.last]);
                }
                if let Some(grown) = c.grown {
                    let _ = grown.send(());
                }
                if c.data {
                    let _ = pages_tx.send(c.nodeid);
                }
            }
        }),
    )?;
    Ok(Box::new(move |nodeid, data, tail| {
        let _ = notifier.inval_inode(fuser::INodeNo(nodeid), -1, 0);
        let (grown, wait) = match tail {
            Some(_) => {
                let (tx, rx) = crossbeam_channel::bounded(1);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let _ = grow_tx.send(Change {
            nodeid,
            tail,
            data,
            grown,
        });
        if let Some(rx) = wait
            && rx.recv_timeout(GROW_WAIT).is_err()
        {
            tracing::debug!("node {nodeid:#x} takes a growth in after the change returns");
        }
    }))
}
