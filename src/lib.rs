//! cachefs: a FUSE filesystem that shows a slow SOURCE tree unchanged at MOUNTPOINT and
//! serves files it has copied to a fast CACHE directory from there.
//!
//! - `cli`, `options`, `config`: argv (direct or fstab form) to one validated `Config`.
//! - `lifecycle`: start (foreground or daemon), the stale-mount check, the FUSE session,
//!   the watchdog, a clean stop on signals; the process-wide state in one place.
//! - `mountinfo`: /proc/self/mountinfo parsed, mounts found, stale ones removed.
//! - `fuse`: the one `fuser::Filesystem` impl, a thin adapter over `overlay`.
//! - `overlay`: the core; every operation passed through to SOURCE with the caller's
//!   identity, through directory descriptors and single names (never joined paths).
//! - `inodes`: node ids <-> source objects (a file handle, or parent and name, each;
//!   no descriptor held), lookup counts.
//! - `source`: the bounded cache of SOURCE descriptors; shedding it when they run short.
//! - `cache`: the SSD cache: its store, index, ledger (limits, pins), and the promoter
//!   that fills it (`cache::promoter`, steered by `policy`).
//! - `control`: the control socket (protocol, the daemon's server, the subcommands' client).
//! - `feed`: `cachefs feed plex|jellyfin`: a media server's On Deck / Next Up / Resume
//!   lists, mapped onto the mount and promoted through the control socket.
//! - `exit`: the exit codes, one documented table.
//! - `sys`: the only `unsafe`, thin libc wrappers.
//!
//! Invariants (ARCHITECTURE.md): the source is the truth; no stale bytes; reads never
//! wait for promotion; nothing partial is visible; no path escapes SOURCE.

pub mod cache;
pub mod cli;
pub mod codec;
pub mod config;
pub mod control;
pub mod daemon;
pub mod exit;
pub mod feed;
pub mod fuse;
pub mod inodes;
pub mod lifecycle;
pub mod logging;
pub mod meta;
pub mod mountinfo;
pub mod options;
pub mod overlay;
pub mod policy;
pub mod source;
pub mod sys;
