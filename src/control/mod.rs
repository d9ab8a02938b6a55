//! The control socket between a running daemon and the subcommands `status`, `promote`,
//! `pin`, `unpin`, `evict` and `unmount`; and the Prometheus metrics, which show the same
//! status over HTTP.
//!
//! The protocol is newline-delimited JSON over a Unix stream socket. The client sends one
//! line `{"cmd": "...", "paths": [...], "wait": bool}`; the daemon answers with zero or more
//! `{"progress": ...}` lines, then exactly one `{"ok": true, "result": ...}` or
//! `{"error": "...", "ok": false}` line, and closes. A path is a JSON string, or, when it is
//! not UTF-8, an array of its bytes.
//!
//! - this file: where a mount's socket lives ([`socket_path`]);
//! - [`proto`]: every message as a typed struct, and the line framing;
//! - [`server`]: the daemon's side: listener, connection threads, request validation,
//!   dispatch to the [`Handler`] the daemon implements (`crate::daemon`);
//! - [`client`]: finding the mount a path is under ([`locate`]) and asking its daemon
//!   ([`request`]);
//! - [`render`]: what a person sees: the status text, progress lines, summaries;
//! - [`progress`]: `promote --wait`'s bars on a terminal, plain lines elsewhere;
//! - [`metrics`]: the status in Prometheus' text format, and its HTTP listener;
//! - [`run`]: the subcommands `main.rs` hands over ([`run_command`]), with exit codes.
//!
//! What the commands do to the cache is the handler's business, not this module's.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub mod client;
pub mod metrics;
pub mod progress;
pub mod proto;
pub mod render;
pub mod run;
pub mod server;

pub use client::{RequestError, locate, request, status};
pub use metrics::{MetricsServer, serve_metrics};
pub use proto::{
    Cmd, Evicted, Failure, Pinned, Progress, Promoted, Request, Restarting, Status, Stopping,
    Unpinned,
};
pub use run::run_command;
pub use server::{Handler, Peer, Server, serve};

/// Where sockets live unless `CACHEFS_RUN_DIR` says otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/cachefs";

/// The environment variable that moves the socket directory (tests, unprivileged setups).
pub const RUN_DIR_ENV: &str = "CACHEFS_RUN_DIR";

/// The socket of the daemon serving `mountpoint`: `/run/cachefs/m-<FNV-1a 64 hex>.sock`, or
/// under `$CACHEFS_RUN_DIR`; hashed because a Unix socket path holds at most 108 bytes.
///
/// `mountpoint` must be absolute and canonical: the `Config`'s after `cli::check_paths`, or a
/// target from mountinfo. It is not resolved here, on purpose: the daemon calls this while
/// its own FUSE session may not be answering yet, and resolving a path through its own mount
/// would hang. Only `.` components and repeated or trailing slashes are normalised.
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    let dir = std::env::var_os(RUN_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), PathBuf::from);
    socket_path_in(&dir, mountpoint)
}

fn socket_path_in(run_dir: &Path, mountpoint: &Path) -> PathBuf {
    let normal: PathBuf = mountpoint.components().collect();
    run_dir.join(format!(
        "m-{:016x}.sock",
        // Stable across builds and versions (unlike `DefaultHasher`): a client and a
        // daemon of different builds must agree on the name.
        crate::codec::fnv1a64(normal.as_os_str().as_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_path_is_stable_short_and_hashed() {
        let run = Path::new("/run/cachefs");
        let a = socket_path_in(run, Path::new("/mnt/media"));
        assert_eq!(a, socket_path_in(run, Path::new("/mnt/media")));
        assert_eq!(a, socket_path_in(run, Path::new("/mnt//media/")));
        assert_ne!(a, socket_path_in(run, Path::new("/mnt/media2")));
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("m-") && name.ends_with(".sock"), "{name}");
        assert_eq!(name.len(), "m-".len() + 16 + ".sock".len());

        let long = PathBuf::from(format!("/{}", "x/".repeat(2000)));
        let p = socket_path_in(run, &long);
        assert!(p.as_os_str().len() < 108, "{p:?}");
        // The name of a known mountpoint, as every build before this one made it.
        assert_eq!(
            socket_path_in(run, Path::new("/mnt/media")),
            Path::new(&format!(
                "/run/cachefs/m-{:016x}.sock",
                crate::codec::fnv1a64(b"/mnt/media")
            ))
        );
    }
}
