//! The one integration test binary: the real `cachefs` binary on real FUSE mounts.
//!
//! Modules, one per area:
//! - `common`: `TestMount` (temp SOURCE/CACHE/MNT, start, wait for the mount, teardown in
//!   `Drop`), `skip`, a private mount namespace, running code as another user, errno
//!   capture.
//! - `parity`: the same script of file-system calls on the mount and on a plain directory,
//!   compared outcome by outcome (results, errno values, ownership, mode bits); again on
//!   a promoting mount, where each script proves its promotions and reads from copies.
//! - `users`: a second user through an `--allow-other` mount, compared with a plain directory
//!   (mode bits and named-user ACL entries).
//! - `acl`: POSIX ACLs the kernel keeps (FUSE_POSIX_ACL): one request per file's ACL while
//!   its attributes are fresh, SOURCE's changes shown with a chmod's, the mount's at once.
//! - `hostile`: the control socket under a hostile second user: promotes only what it can
//!   read, no privileged commands, floods and bad connections limited, root served.
//! - `cli`: argument validation, both option forms, signals.
//! - `stale`: with promotion on first read, changes in SOURCE and writes through the mount
//!   show on the next open (never a stale or partial cached copy).
//! - `cache`: promotion, reads from the copy, staleness, single flight, prefetch.
//! - `capacity`: limits, LRU eviction, pins, max_age, restarts, crashes, cache faults.
//! - `lifecycle`: daemon mode, mount -t fuse.cachefs, stale mounts, cleanup, PID 1.
//! - `scale`: libraries past the descriptor limit, objects renamed, removed or swapped for
//!   symlinks behind the mount.
//! - `regress`: regression tests for defects outside suites found, named after them.
//! - `locks`: fcntl, lockf and flock locks meet across the kernel inodes of one file (a
//!   passthrough reader's and a later writer's), released, waited for and reported as on
//!   a plain directory.
//! - `scan`: library scans; the kernel's caches and the metadata cache (`meta_ttl`) and
//!   its snapshot stay exact for changes through the mount, and show SOURCE's own changes
//!   once their lifetime passes.
//! - `feed`: `cachefs feed plex|jellyfin` against a fake media server: exactly the listed
//!   files, mapped by `--map`, and the next ones of their directories are promoted; wrong
//!   tokens, HTTP errors and unreachable servers are one line and exit 1.
//! - `metrics`: the Prometheus listener scraped on a real mount, `status --json` failures
//!   as JSON, `promote --wait` as plain lines off a terminal.
//! - `media`: real episodes made by ffmpeg: an ffprobe library scan promotes nothing,
//!   ffmpeg playing an episode promotes it and the next one, and plays it again from
//!   the copy.
//! - `offline`: a sleeping or stopped SOURCE: with `meta_ttl`, a cached film and its
//!   subtitles play, a rescan and a missing-name probe answer, with no call to SOURCE
//!   (the daemon's `source_ops` count) and while SOURCE's daemon is SIGSTOPped; what
//!   needs SOURCE waits, and the status says SOURCE is stuck; a short `meta_ttl` shows
//!   SOURCE's own changes, never half old and half new.
//! - `container`: the README's container recipe run as printed with podman and runc, the
//!   image built from scripts/Dockerfile: the host and a second container see the mount,
//!   reads promote and then pass through, `podman stop` exits 0, a killed container's
//!   dead mount is removed by the host-side watcher, a crashed one is restarted.
//! - `exerciser`: random reads, writes, truncates, mmaps and reopens checked against a
//!   model while promotions churn.
//! - `faults`: daemon kills, SOURCE changed, failing and slow, the cache full, removed or
//!   made read-only, each while readers stream and copies run, every read checked
//!   against the model (`model`, shared with the core tier); and the soak run
//!   (`scripts/soak.sh`, ignored here).
//!
//! Tests that mount need root and /dev/fuse. Without them (or anything else a test needs)
//! a test panics under `CI=true` and otherwise prints why it is skipped and returns
//! (`common::skip`).

#[path = "integration/common.rs"]
mod common;

/// What a reader must see, shared with the core tier (tests/core.rs).
#[path = "model/mod.rs"]
mod model;

#[path = "integration/parity.rs"]
mod parity;

#[path = "integration/users.rs"]
mod users;

#[path = "integration/acl.rs"]
mod acl;

#[path = "integration/hostile.rs"]
mod hostile;

#[path = "integration/cli.rs"]
mod cli;

#[path = "integration/container.rs"]
mod container;

#[path = "integration/cache.rs"]
mod cache;

#[path = "integration/stale.rs"]
mod stale;

#[path = "integration/capacity.rs"]
mod capacity;

#[path = "integration/lifecycle.rs"]
mod lifecycle;

#[path = "integration/scale.rs"]
mod scale;

#[path = "integration/regress.rs"]
mod regress;

#[path = "integration/locks.rs"]
mod locks;

#[path = "integration/exerciser.rs"]
mod exerciser;

#[path = "integration/scan.rs"]
mod scan;

#[path = "integration/feed.rs"]
mod feed;

#[path = "integration/metrics.rs"]
mod metrics;

#[path = "integration/faults.rs"]
mod faults;

#[path = "integration/media.rs"]
mod media;

#[path = "integration/offline.rs"]
mod offline;
