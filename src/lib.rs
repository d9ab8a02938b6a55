//! cachefs: a FUSE filesystem that shows a slow SOURCE tree unchanged at MOUNTPOINT and
//! serves files it has copied to a fast CACHE directory from there.
//!
//! - `cli`, `options`, `config`: argv (direct or fstab form) to one validated `Config`.
//! - `lifecycle`: start (foreground or daemon), the stale-mount check, the FUSE session,
//!   the watchdog, a clean stop on signals; the process-wide state in one place.
//! - `control`: the control socket: the typed protocol (`proto`), its server, its client,
//!   what a person sees (`render`, `progress`) and the subcommands (`run`); and the
//!   Prometheus metrics (`metrics`), the same `Status` over HTTP.
//! - `daemon`: the running daemon's answers on the control socket (status, promote...),
//!   read off the core's counters into the one `Status`.
//! - `mountinfo`: /proc/self/mountinfo parsed, mounts found, stale ones removed.
//! - `logging`: stderr, syslog or a log file.
//! - `fuse`: the one `fuser::Filesystem` impl, a thin adapter over `overlay` that logs
//!   each error it answers once.
//! - `overlay`: the core; every operation passed through to SOURCE with the caller's
//!   identity, through directory descriptors and single names (never joined paths).
//! - `meta`: the metadata cache (`meta_ttl`) and its snapshot.
//! - `inodes`: node ids <-> source objects (a file handle, or parent and name, each;
//!   no descriptor held), lookup counts.
//! - `journal`: what a successor needs to take over the FUSE connection after a crash
//!   (nodes, devices, open handles), appended to a memfd the watchdog holds.
//! - `source`: the bounded cache of SOURCE descriptors; shedding it when they run short.
//! - `cache`: the SSD cache: its store, index, ledger (limits, pins), and the promoter
//!   that fills it (`cache::promoter`, steered by `policy`).
//! - `codec`: the sealed little-endian format of the daemon's own files (index, snapshot).
//! - `feed`: `cachefs feed plex|jellyfin`: a media server's On Deck / Next Up / Resume
//!   lists, mapped onto the mount and promoted through the control socket.
//! - `exit`: the exit codes, one documented table.
//! - `man`: the manual page, cachefs(8), from the same tables as `--help`.
//! - `fdio`: descriptor helpers over rustix (whole directories, full reads and writes).
//! - `sys`: the only `unsafe`: what rustix does not wrap safely.
//!
//! Invariants (docs/architecture.md): the source is the truth; no stale bytes; reads never
//! wait for promotion; nothing partial is visible; no path escapes SOURCE.

pub mod cache;
pub mod cli;
pub mod codec;
pub mod config;
pub mod control;
pub mod daemon;
pub mod exit;
pub mod fdio;
pub mod feed;
pub mod fuse;
pub mod idhash;
pub mod inodes;
pub mod journal;
pub mod lane;
pub mod lifecycle;
pub mod logging;
pub mod man;
pub mod meta;
pub mod mountinfo;
pub mod options;
pub mod overlay;
pub mod policy;
pub mod source;
pub mod sys;
